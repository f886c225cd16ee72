"""Context prediction (Doersch et al. 2015): which of the 8 neighbours of a centre patch is the second patch?

A 3x3 grid of patches with gaps is laid at a random place in the crop, every patch jittered on its own;
the centre patch is paired with one of its 8 neighbours, drawn uniformly. Against trivial shortcuts:
the gaps and jitter hide continuing edges and exact alignment; colour dropping (or projection) hides
chromatic aberration; per-patch normalisation hides brightness trends.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from ..config import PretrainConfig
from ..models import alexnet_spec
from ..models.alexnet import AlexNetEncoder
from ..models.context_prediction import ContextPredictionNet
from .base import PretextMethod, SingleNetwork, StepContext

# (row, column) offset of the neighbour from the centre patch, by class index: reading order.
OFFSETS = torch.tensor([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])
GREEN_MAGENTA = torch.tensor([-1.0, 2.0, -1.0]) / math.sqrt(6.0)
MIN_PATCH_STD = 1 / 64  # about two grey levels in [-1, 1]: flat patches are not blown up into noise


def crop_patches(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, size, size) squares of `images` (B, C, H, W) at per-image corners `top`, `left` (B,)."""
    offsets = torch.arange(size, device=images.device)
    rows = (top.to(images.device)[:, None] + offsets)[:, :, None]  # (B, size, 1)
    cols = (left.to(images.device)[:, None] + offsets)[:, None, :]  # (B, 1, size)
    batch = torch.arange(images.shape[0], device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def sample_pair_corners(batch: int, height: int, width: int, geometry: tuple[int, int, int],
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corners (B, 2) of the centre and neighbour patches (top, left), and the position labels (B,)."""
    patch, gap, jitter = geometry
    span, stride = 3 * patch + 2 * gap, patch + gap
    if span + 2 * jitter > min(height, width):
        raise ValueError(f"a {span}+2x{jitter} px patch grid does not fit in {height}x{width} images")
    origin = torch.stack([torch.randint(jitter, size - span - jitter + 1, (batch,), generator=generator)
                          for size in (height, width)], dim=1)
    labels = torch.randint(0, len(OFFSETS), (batch,), generator=generator)
    shake = torch.randint(-jitter, jitter + 1, (batch, 4), generator=generator)
    centre = origin + stride + shake[:, :2]
    neighbour = origin + (1 + OFFSETS[labels]) * stride + shake[:, 2:]
    return centre, neighbour, labels


def drop_colour(x: torch.Tensor, noise_std: float, generator: torch.Generator) -> torch.Tensor:
    """Keep one random channel per patch; the others become Gaussian noise scaled to the kept channel's std."""
    b, c = x.shape[:2]
    keep = torch.randint(0, c, (b,), generator=generator)
    onehot = F.one_hot(keep, c).to(x.device, x.dtype)[:, :, None, None]
    kept = (x * onehot).sum(1, keepdim=True)
    std = kept.std(dim=(2, 3), keepdim=True)
    device_gen = torch.Generator(x.device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    noise = torch.randn(x.shape, generator=device_gen, device=x.device, dtype=x.dtype) * (noise_std * std)
    return x * onehot + noise * (1 - onehot)


def project_colour(x: torch.Tensor) -> torch.Tensor:
    """Remove each pixel's green-magenta component, the axis chromatic aberration moves along."""
    axis = GREEN_MAGENTA.to(x.device, x.dtype)
    return x - torch.einsum("bchw,c->bhw", x, axis)[:, None] * axis[None, :, None, None]


def normalise_patches(x: torch.Tensor) -> torch.Tensor:
    """Zero mean per channel and unit std per patch."""
    x = x - x.mean(dim=(2, 3), keepdim=True)
    return x / x.flatten(1).std(dim=1).clamp_min(MIN_PATCH_STD)[:, None, None, None]


class ContextPredictionMethod(SingleNetwork, PretextMethod):
    """Relative-position classification of patch pairs with a shared AlexNet tower."""

    name = "context_prediction"

    def __init__(self, cfg: PretrainConfig, fill_mean: list[float]) -> None:
        super().__init__(cfg, fill_mean)
        m, c = cfg.model, cfg.context
        self.geometry = c.geometry(cfg.data.fine_size)
        self.input_size = c.input_size(cfg.data.fine_size)
        encoder = AlexNetEncoder(alexnet_spec(m.arch, m.widths, self.input_size, m.layout, m.lrn, m.groups))
        self.net = ContextPredictionNet(encoder, c.fc_widths, m.dropout, batch_norm=c.head_norm == "batch")

    def _prepare(self, patches: torch.Tensor, generator: torch.Generator, guard: bool) -> torch.Tensor:
        """Resize to the encoder input; guard against chromatic aberration and normalise (unless `guard` is off)."""
        size = self.input_size
        if patches.shape[-1] != size:
            patches = F.interpolate(patches, size=(size, size), mode="bilinear", align_corners=False,
                                    antialias=size < patches.shape[-1])
        c = self.cfg.context
        if not guard:
            return patches
        if c.chroma == "drop":
            patches = drop_colour(patches, c.drop_noise, generator)
        elif c.chroma == "project":
            patches = project_colour(patches)
        return normalise_patches(patches) if c.normalize else patches

    def sample(self, images: torch.Tensor, generator: torch.Generator,
               guard: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(centre patches, neighbour patches, labels) as the network sees them (`guard=False`: plain crops)."""
        b, _, h, w = images.shape
        centre, neighbour, labels = sample_pair_corners(b, h, w, self.geometry, generator)
        pair = [self._prepare(crop_patches(images.float(), at[:, 0], at[:, 1], self.geometry[0]), generator, guard)
                for at in (centre, neighbour)]
        if self.cfg.train.channels_last:
            pair = [p.contiguous(memory_format=torch.channels_last) for p in pair]
        return pair[0], pair[1], labels.to(images.device)

    def _scores(self, images: torch.Tensor, generator: torch.Generator, autocast) -> dict[str, torch.Tensor]:
        first, second, labels = self.sample(images, generator)
        with autocast():
            logits = self.net(first, second)
        loss = F.cross_entropy(logits.float(), labels)
        return {"loss": loss, "acc": (logits.argmax(1) == labels).float().mean()}

    def training_step(self, images: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        scores = self._scores(images, ctx.generator, ctx.autocast)
        ctx.optimize("net", scores["loss"])
        return {k: v.detach() for k, v in scores.items()}

    @torch.no_grad()
    def validate(self, images: torch.Tensor, generator: torch.Generator,
                 labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Held-out cross-entropy and 8-way accuracy (chance: 0.125)."""
        return self._scores(images, generator, contextlib.nullcontext)

    @torch.no_grad()
    def sample_grid(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Rows: centre patches and their paired neighbours, as cropped (before the colour guard)."""
        first, second, _ = self.sample(images, generator, guard=False)
        return torch.cat([first, second]).float().add(1).div(2).clamp(0, 1)
