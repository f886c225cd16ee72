"""Free-form inpainting networks: gated convolutions (Yu et al., ICCV 2019, "DeepFill v2"), contextual attention
(Yu et al., CVPR 2018) and the SN-PatchGAN discriminator.

The generator is coarse-to-fine. The coarse network (`GatedEncoder`, then an upsampling gated decoder) fills the hole
roughly; the refinement network sees the coarse result pasted into the hole and runs two branches at 1/4 resolution:
dilated gated convolutions, and contextual attention, which fills each position from the background patches its
features are most similar to. The branches are concatenated and decoded to the refined image.

Inputs are images in [-1, 1] with the hole filled, plus a channel of ones (so the network can tell the image border
from zero padding) and the hole mask (1 = hole).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

GATED_STAGES = ("conv1", "conv3", "conv6", "dilated", "conv12", "pool5")
POOL5_GRID = 6  # the exported encoder's pool5: its last map max-pooled to AlexNet's 6 x 6 grid
IN_CHANNELS = 5  # RGB + ones + mask


class GatedConv2d(nn.Module):
    """phi(conv_f(x)) * sigmoid(conv_g(x)): a learned soft gate per output channel and position.

    One convolution computes both halves (its first `out_channels` outputs are conv_f, the rest conv_g). With
    `gated=False` it is a plain convolution followed by phi (no gate: the generators' output layers)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1,
                 activation: str | None = "elu", gated: bool = True) -> None:
        super().__init__()
        if activation not in ("elu", "relu", "lrelu", None):
            raise ValueError(f"unknown activation {activation!r}; choose elu, relu, lrelu or None")
        self.out_channels, self.gated, self.activation = cout, gated, activation
        pad = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(cin, 2 * cout if gated else cout, kernel_size, stride, pad, dilation)

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        """The feature activation."""
        if self.activation == "elu":
            return F.elu(x)
        if self.activation == "relu":
            return F.relu(x)
        if self.activation == "lrelu":
            return F.leaky_relu(x, 0.2)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if not self.gated:
            return self.phi(y)
        feature, gate = y.split(self.out_channels, dim=1)
        return self.phi(feature) * torch.sigmoid(gate)


def gated_init(module: nn.Module, out_scale: float = 0.1) -> None:
    """Variance-preserving initialisation of every GatedConv2d in `module`: feature weights N(0, 2 * sqrt(2 / fan_in))
    (He's ReLU initialisation, doubled because the gate, sigmoid of N(0, 1/fan_in)-initialised weights, halves the
    output on average), gate weights N(0, sqrt(1 / fan_in)), zero biases; ungated output layers N(0, out_scale *
    sqrt(1 / fan_in)) so the first predictions are near 0 (the mean colour). PyTorch's default initialisation shrinks
    the signal ~10x through the coarse network's 17 gated layers, which stalls short CPU trainings."""
    for m in module.modules():
        if not isinstance(m, GatedConv2d):
            continue
        w = m.conv.weight
        fan_in = w[0].numel()
        with torch.no_grad():
            if m.gated:
                w[: m.out_channels].normal_(0.0, 2 * math.sqrt(2.0 / fan_in))
                w[m.out_channels :].normal_(0.0, math.sqrt(1.0 / fan_in))
            else:
                w.normal_(0.0, out_scale * math.sqrt(1.0 / fan_in))
            m.conv.bias.zero_()


class GatedUp(nn.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 gated convolution (DeepFill v2's gen_deconv)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = GatedConv2d(cin, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _check_size(size: int, multiple: int, what: str) -> None:
    if size < multiple or size % multiple:
        raise ValueError(f"{what}: input side must be a multiple of {multiple}, got {size}")


def with_mask_channels(x: torch.Tensor, hole: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3, H, W) image + ones + hole mask (zeros when `hole` is None) -> (B, 5, H, W)."""
    ones = torch.ones_like(x[:, :1])
    mask = torch.zeros_like(ones) if hole is None else hole.to(x.dtype)
    return torch.cat([x, ones, mask], dim=1)


class GatedEncoder(nn.Module):
    """The coarse network's encoder: gated convolutions down to 1/4 resolution, dilated gated convolutions, two more.

    Stages (DeepFill's layer numbers): conv1 (full resolution, c channels), conv3 (1/2, 2c), conv6 (1/4, 4c),
    dilated (after the dilated convolutions), conv12 (the encoder's output), pool5 (conv12 max-pooled to 6 x 6: the
    slot the transfer tasks read, like AlexNet's pool5). Given 3 channels (an RGB image, as the transfer tasks pass)
    it appends the ones channel and an empty mask."""

    def __init__(self, input_size: int = 256, cnum: int = 48, dilations: Sequence[int] = (2, 4, 8, 16)) -> None:
        super().__init__()
        _check_size(input_size, 4, "gated encoder")
        if cnum < 2 or not dilations or min(dilations) < 1:
            raise ValueError(f"gated encoder needs cnum >= 2 and dilations >= 1, got {cnum}, {list(dilations)}")
        c = cnum
        self.input_size, self.cnum, self.dilations = input_size, cnum, tuple(int(d) for d in dilations)
        self.conv1 = GatedConv2d(IN_CHANNELS, c, 5)
        self.conv3 = nn.Sequential(GatedConv2d(c, 2 * c, 3, stride=2), GatedConv2d(2 * c, 2 * c, 3))
        self.conv6 = nn.Sequential(GatedConv2d(2 * c, 4 * c, 3, stride=2), GatedConv2d(4 * c, 4 * c, 3),
                                   GatedConv2d(4 * c, 4 * c, 3))
        self.dilated = nn.Sequential(*(GatedConv2d(4 * c, 4 * c, 3, dilation=d) for d in self.dilations))
        self.conv12 = nn.Sequential(GatedConv2d(4 * c, 4 * c, 3), GatedConv2d(4 * c, 4 * c, 3))
        self.out_channels = 4 * c
        gated_init(self)

    @property
    def stages(self) -> tuple[str, ...]:
        return GATED_STAGES

    def forward(self, x: torch.Tensor, out: str | Sequence[str] = "pool5") -> torch.Tensor | dict[str, torch.Tensor]:
        """(B, 5 or 3, S, S) -> the stage `out` (a str gives a tensor, a sequence a dict of tensors)."""
        names = (out,) if isinstance(out, str) else tuple(out)
        unknown = [n for n in names if n not in GATED_STAGES]
        if unknown:
            raise ValueError(f"unknown gated encoder stage(s) {unknown}; choose from {GATED_STAGES}")
        if x.shape[1] == 3:
            x = with_mask_channels(x)
        elif x.shape[1] != IN_CHANNELS:
            raise ValueError(f"gated encoder takes 3 (RGB) or 5 (RGB, ones, mask) channels, got {x.shape[1]}")
        feats: dict[str, torch.Tensor] = {}
        deepest = max(GATED_STAGES.index(n) for n in names)
        for name in GATED_STAGES[: deepest + 1]:
            x = F.adaptive_max_pool2d(x, POOL5_GRID) if name == "pool5" else getattr(self, name)(x)
            feats[name] = x
        return feats[names[0]] if isinstance(out, str) else {n: feats[n] for n in names}

    def feature_shapes(self) -> dict[str, tuple[int, int, int]]:
        """(C, H, W) of every stage for the configured input size."""
        with torch.no_grad():
            feats = self.forward(torch.zeros(1, 3, self.input_size, self.input_size), out=GATED_STAGES)
        return {k: tuple(v.shape[1:]) for k, v in feats.items()}


def _decoder(c: int) -> nn.Sequential:
    """4c channels at 1/4 resolution -> RGB at full resolution in [-1, 1]."""
    return nn.Sequential(GatedUp(4 * c, 2 * c), GatedConv2d(2 * c, 2 * c, 3), GatedUp(2 * c, c),
                         GatedConv2d(c, max(1, c // 2), 3), GatedConv2d(max(1, c // 2), 3, 3, activation=None,
                                                                         gated=False), nn.Tanh())


def _propagate(scores: torch.Tensor, k: int, dims: tuple[int, int]) -> torch.Tensor:
    """Attention propagation: scores[..., i, ..., j] summed with scores[..., i+d, ..., j+d] for |d| <= k // 2 along
    a foreground axis and the matching background axis (a k x k identity kernel), zeros past the borders."""
    out = scores.clone()
    a, b = dims
    for d in range(1, k // 2 + 1):
        n_a, n_b = scores.shape[a], scores.shape[b]
        if d >= n_a or d >= n_b:
            break
        # out[i, j] += s[i + d, j + d] and out[i + d, j + d] += s[i, j]
        lo = scores.narrow(a, 0, n_a - d).narrow(b, 0, n_b - d)
        hi = scores.narrow(a, d, n_a - d).narrow(b, d, n_b - d)
        out.narrow(a, 0, n_a - d).narrow(b, 0, n_b - d).add_(hi)
        out.narrow(a, d, n_a - d).narrow(b, d, n_b - d).add_(lo)
    return out


class ContextualAttention(nn.Module):
    """Contextual attention (Yu et al. 2018): every foreground position is rebuilt from background patches.

    3x3 patches of the background features (the positions whose patch holds no hole pixel) act as filters: their
    cosine similarity with the 3x3 foreground patch at each position, propagated along k x k diagonals
    (neighbouring positions that attend to neighbouring patches reinforce each other), scaled and soft-maxed over
    the background positions, weights the background patches, which a transposed convolution (F.fold) pastes back,
    averaged where they overlap. With `rate` r > 1, matching runs on features downsampled by r, and the patches
    pasted back are the 2r x 2r full-resolution ones (stride r), as in the paper's rate 2. No parameters."""

    def __init__(self, ksize: int = 3, rate: int = 1, fuse_k: int = 3, softmax_scale: float = 10.0) -> None:
        super().__init__()
        if ksize < 1 or ksize % 2 == 0 or rate < 1 or (rate > 1 and rate % 2) or fuse_k < 1 or fuse_k % 2 == 0 \
                or softmax_scale <= 0:
            raise ValueError(f"contextual attention needs an odd ksize, rate 1 or even, an odd fuse_k and a positive "
                             f"scale, got {ksize}, {rate}, {fuse_k}, {softmax_scale}")
        self.ksize, self.rate, self.fuse_k, self.scale = ksize, rate, fuse_k, softmax_scale

    def forward(self, f: torch.Tensor, b: torch.Tensor, hole: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f, b: (B, C, H, W) foreground and background features; hole: (B, 1, h, w) with 1 = hole, any size
        (resized to the features). Returns (the rebuilt features (B, C, H, W), the offset (dy, dx) in feature pixels
        of each position's most attended background patch (B, 2, H/r, W/r), for visualisation)."""
        if f.shape != b.shape:
            raise ValueError(f"foreground {tuple(f.shape)} and background {tuple(b.shape)} features differ")
        # Cosine similarities, softmax and the pasting run in fp32 even under autocast (bf16 would move the argmax).
        with torch.autocast(f.device.type, enabled=False):
            y, flow = self._attend(f.float(), b.float(), hole)
        return y.to(f.dtype), flow

    def _attend(self, f: torch.Tensor, b: torch.Tensor, hole: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = f.shape
        r, k = self.rate, self.ksize
        if h % r or w % r:
            raise ValueError(f"contextual attention: feature size {h}x{w} is not a multiple of rate {r}")
        kr = 2 * r if r > 1 else k  # side of the full-resolution patches pasted back
        pad = (kr - r) // 2 if r > 1 else k // 2
        raw = F.unfold(b, kr, padding=pad, stride=r)  # (B, C*kr*kr, L)
        fs, bs = (F.interpolate(t, scale_factor=1 / r, mode="nearest") if r > 1 else t for t in (f, b))
        hs, ws = fs.shape[-2:]
        # A background patch is usable when no pixel of its window is in the hole (any hole pixel in a cell counts).
        m = F.adaptive_max_pool2d(hole.float(), (hs, ws)) if tuple(hole.shape[-2:]) != (hs, ws) else hole.float()
        valid = F.max_pool2d(m, k, stride=1, padding=k // 2).flatten(1) < 0.5  # (B, L)
        q = F.normalize(F.unfold(fs, k, padding=k // 2).float(), dim=1, eps=1e-4)  # (B, C*k*k, L)
        key = F.normalize(F.unfold(bs, k, padding=k // 2).float(), dim=1, eps=1e-4)
        scores = torch.bmm(q.transpose(1, 2), key)  # (B, L_fg, L_bg): cosine similarities
        if self.fuse_k > 1:
            s = scores.view(n, hs, ws, hs, ws)
            s = _propagate(s, self.fuse_k, (2, 4))  # left-right neighbours
            s = _propagate(s, self.fuse_k, (1, 3))  # top-down neighbours
            scores = s.reshape(n, hs * ws, hs * ws)
        logits = (scores * self.scale).masked_fill(~valid[:, None, :], float("-inf"))
        # An image without any usable background patch (a hole over everything) attends uniformly.
        logits = torch.where(valid.any(1)[:, None, None], logits, torch.zeros_like(logits))
        attn = torch.softmax(logits, dim=-1)
        best = attn.argmax(-1)  # (B, L_fg)
        pos = torch.arange(hs * ws, device=f.device)
        flow = torch.stack([(best // ws - pos // ws), (best % ws - pos % ws)], 1).view(n, 2, hs, ws) * r
        pasted = torch.bmm(raw.float(), attn.transpose(1, 2))  # (B, C*kr*kr, L_fg)
        y = F.fold(pasted, (h, w), kr, padding=pad, stride=r)
        cover = F.fold(torch.ones_like(pasted[:1, :kr * kr]), (h, w), kr, padding=pad, stride=r)
        return y / cover, flow


class GatedGenerator(nn.Module):
    """Coarse-to-fine free-form inpainting generator (DeepFill v2 at a configurable width `cnum`)."""

    def __init__(self, input_size: int = 256, cnum: int = 48, dilations: Sequence[int] = (2, 4, 8, 16),
                 attention: bool = True, attention_rate: int = 2, attention_fuse: int = 3,
                 attention_scale: float = 10.0) -> None:
        super().__init__()
        _check_size(input_size, 4 * attention_rate if attention else 4, "gated generator (4 x attention rate)")
        c = cnum
        self.encoder = GatedEncoder(input_size, cnum, dilations)
        self.coarse_decoder = _decoder(c)
        self.refine_conv = nn.Sequential(
            GatedConv2d(IN_CHANNELS, c, 5), GatedConv2d(c, c, 3, stride=2), GatedConv2d(c, 2 * c, 3),
            GatedConv2d(2 * c, 2 * c, 3, stride=2), GatedConv2d(2 * c, 4 * c, 3), GatedConv2d(4 * c, 4 * c, 3),
            *(GatedConv2d(4 * c, 4 * c, 3, dilation=d) for d in self.encoder.dilations))
        self.attention = None
        if attention:
            self.refine_attn_in = nn.Sequential(
                GatedConv2d(IN_CHANNELS, c, 5), GatedConv2d(c, c, 3, stride=2), GatedConv2d(c, 2 * c, 3),
                GatedConv2d(2 * c, 4 * c, 3, stride=2), GatedConv2d(4 * c, 4 * c, 3),
                GatedConv2d(4 * c, 4 * c, 3, activation="relu"))
            self.attention = ContextualAttention(3, attention_rate, attention_fuse, attention_scale)
            self.refine_attn_out = nn.Sequential(GatedConv2d(4 * c, 4 * c, 3), GatedConv2d(4 * c, 4 * c, 3))
        merged = 8 * c if attention else 4 * c
        self.refine_merge = nn.Sequential(GatedConv2d(merged, 4 * c, 3), GatedConv2d(4 * c, 4 * c, 3))
        self.refine_decoder = _decoder(c)
        self.input_size = input_size
        for name, child in self.named_children():
            if name != "encoder":
                gated_init(child)

    def forward(self, x: torch.Tensor, hole: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x: (B, 3, S, S) images in [-1, 1] with the hole filled; hole: bool (B, 1, S, S).
        Returns (coarse, refined) full images in [-1, 1] and the attention offsets (None without attention)."""
        m = hole.to(x.dtype)
        coarse = self.coarse_decoder(self.encoder(with_mask_channels(x, hole), out="conv12"))
        pasted = coarse * m + x * (1 - m)
        xin = with_mask_channels(pasted, hole)
        branch = self.refine_conv(xin)
        flow = None
        if self.attention is not None:
            a = self.refine_attn_in(xin)
            a, flow = self.attention(a, a, hole)
            branch = torch.cat([branch, self.refine_attn_out(a)], dim=1)
        refined = self.refine_decoder(self.refine_merge(branch))
        return coarse, refined, flow


class SNPatchDiscriminator(nn.Module):
    """SN-PatchGAN: 5x5 stride-2 convolutions with spectral normalisation and leaky ReLU on the image and its mask;
    the last map is a dense grid of patch outputs (every element a GAN output), flattened to (B, N)."""

    def __init__(self, widths: Sequence[int] = (64, 128, 256, 256, 256, 256), in_channels: int = 4) -> None:
        super().__init__()
        if not widths or min(widths) < 1:
            raise ValueError(f"SN-PatchGAN needs at least one positive width, got {list(widths)}")
        chans = [in_channels, *widths]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])):
            layers.append(spectral_norm(nn.Conv2d(a, b, 5, stride=2, padding=2)))
            if i < len(widths) - 1:
                layers.append(nn.LeakyReLU(0.2, inplace=True))
        self.net = nn.Sequential(*layers)
        self.n_layers = len(widths)

    def forward(self, images: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images and bool (B, 1, S, S) holes -> (B, N) patch logits."""
        return self.net(torch.cat([images, hole.to(images.dtype)], dim=1)).flatten(1)


def flow_to_color(flow: torch.Tensor) -> torch.Tensor:
    """Offsets (B, 2, H, W) as (dy, dx) -> RGB (B, 3, H, W) in [0, 1] with the Middlebury colour wheel the attention
    figures of Yu et al. use (torchvision's flow_to_image): hue = direction, saturation = length relative to the
    batch's longest, white = no offset."""
    from torchvision.utils import flow_to_image

    return flow_to_image(flow.flip(1).float()).float() / 255
