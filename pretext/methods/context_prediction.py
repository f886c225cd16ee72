"""Context prediction (Doersch et al. 2015): which of the 8 grid neighbours of a centre patch is the second patch?

Each S x S training crop holds a 3x3 grid of P px patches separated by G px gaps. A pair (centre, one
random neighbour) is cropped with independent jitter, stripped of colour cues (chromatic aberration
points to the image centre), normalised, and both patches go through one shared AlexNet tower to fc6;
the concatenated fc6 pair -> fc7 -> fc8 classifies the neighbour's position.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PretrainConfig
from ..engine.distributed import unwrap
from ..models import alexnet_spec
from ..models.alexnet import AlexNetEncoder, init_kaiming
from .base import PretextMethod, StepContext

# Label k -> (dy, dx) of the neighbour, in raster order around the centre (Doersch's pos2lbl, 0-based).
OFFSETS = torch.tensor([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])
# Dropped channels become Gaussian noise at 1/100 of the kept channel's std (the paper's value): not exactly
# constant, so no channel is a dead input, yet far too weak to carry any image signal.
DROP_NOISE = 0.01
# Flat patches have zero std; eps keeps them at zero instead of dividing by it.
NORM_EPS = 1e-5
# The smallest patch worth classifying; below it the grid holds little more than a few pixels.
MIN_PATCH = 8


@dataclass(frozen=True)
class PatchGrid:
    """Pixel geometry of the 3x3 patch grid centred in a `size` x `size` crop."""

    size: int
    patch: int
    gap: int
    jitter: int

    @property
    def stride(self) -> int:
        """Distance between the top-left corners of neighbouring grid cells."""
        return self.patch + self.gap

    @property
    def centre(self) -> int:
        """Top-left coordinate (y and x) of the unjittered centre patch."""
        return (self.size - 3 * self.patch - 2 * self.gap) // 2 + self.stride

    def corners(self, labels: torch.Tensor, jitter: torch.Tensor) -> torch.Tensor:
        """Top-left (y, x) of (centre, neighbour) per image: (B, 2, 2), jittered and clamped into the crop."""
        nominal = torch.stack([torch.zeros_like(OFFSETS[labels]), OFFSETS[labels]], dim=1) * self.stride
        return (self.centre + nominal + jitter).clamp(0, self.size - self.patch)


def patch_grid(size: int, gap_ratio: float, jitter_ratio: float) -> PatchGrid:
    """Grid for a crop of `size` px: the paper's 96/48/7 px at 384 px, scaled linearly below and above."""
    # 3 patches + 2 gaps span the crop; floor so the grid always fits (384 px -> 96, 128 px -> 32).
    patch = math.floor(size / (3 + 2 * gap_ratio))
    gap = min(round(gap_ratio * patch), (size - 3 * patch) // 2)
    jitter = round(jitter_ratio * patch)
    if patch < MIN_PATCH:
        raise ValueError(f"data.fine_size={size} with patches.gap_ratio={gap_ratio} gives {patch} px patches; "
                         f"the 3x3 grid needs patches of at least {MIN_PATCH} px: raise data.fine_size")
    if 2 * jitter > gap:
        raise ValueError(f"patches.jitter_ratio={jitter_ratio} jitters {patch} px patches by up to {jitter} px, so "
                         f"neighbours could touch across the {gap} px gap (patches.gap_ratio={gap_ratio}); "
                         f"keep 2 * jitter <= gap")
    return PatchGrid(size, patch, gap, jitter)


def sample_corners(grid: PatchGrid, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(corners (B, 2, 2) of centre and neighbour, labels (B,)) drawn from `generator`."""
    labels = torch.randint(0, 8, (batch,), generator=generator)
    jitter = torch.randint(-grid.jitter, grid.jitter + 1, (batch, 2, 2), generator=generator)
    return grid.corners(labels, jitter), labels


def crop_patches(images: torch.Tensor, corners: torch.Tensor, patch: int) -> torch.Tensor:
    """Square crops (B, N, C, P, P) of images (B, C, S, S) at top-left corners (B, N, 2), in one gather."""
    r = torch.arange(patch, device=images.device)
    corners = corners.to(images.device)
    ys = (corners[..., 0, None] + r)[..., :, None]  # (B, N, P, 1)
    xs = (corners[..., 1, None] + r)[..., None, :]  # (B, N, 1, P)
    b = torch.arange(images.shape[0], device=images.device).view(-1, 1, 1, 1)
    return images.permute(0, 2, 3, 1)[b, ys, xs].permute(0, 1, 4, 2, 3)


def drop_colour(patches: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Keep one random channel per patch (..., 3, H, W); the other two become weak Gaussian noise."""
    lead = patches.shape[:-3]
    keep = torch.randint(0, 3, lead, generator=generator).to(patches.device)
    noise = torch.randn(patches.shape, generator=generator).to(patches.device, patches.dtype)
    kept = patches.gather(-3, keep[..., None, None, None].expand(*lead, 1, *patches.shape[-2:]))
    noise = noise * DROP_NOISE * kept.std(dim=(-3, -2, -1), keepdim=True)
    mask = F.one_hot(keep, 3).bool()[..., None, None]
    return torch.where(mask, patches, noise)


GREEN_MAGENTA = torch.tensor([-1.0, 2.0, -1.0]) / math.sqrt(6.0)


def project_colour(patches: torch.Tensor) -> torch.Tensor:
    """Remove every pixel's component along the green-magenta axis (-1, 2, -1) / sqrt(6)."""
    axis = GREEN_MAGENTA.to(patches.device, patches.dtype).view(3, 1, 1)
    return patches - (patches * axis).sum(dim=-3, keepdim=True) * axis


def normalise_patches(patches: torch.Tensor) -> torch.Tensor:
    """Per-channel zero mean, then divide by the patch's std over all its channels and pixels."""
    # One std for the whole patch, not one per channel: per-channel scaling would blow colour-dropped noise
    # channels up to the kept channel's level. Normalising at all takes away brightness and contrast cues.
    centred = patches - patches.mean(dim=(-2, -1), keepdim=True)
    return centred / (centred.std(dim=(-3, -2, -1), keepdim=True) + NORM_EPS)


def _fc(n_in: int, n_out: int, dropout: float, batchnorm: bool = False) -> nn.Sequential:
    norm = [nn.BatchNorm1d(n_out)] if batchnorm else []
    return nn.Sequential(nn.Linear(n_in, n_out), *norm, nn.ReLU(inplace=True), nn.Dropout(dropout))


class ContextPredictionNet(nn.Module):
    """Shared AlexNet tower + fc6 per patch; the concatenated pair -> fc7 -> fc8 (8 positions)."""

    def __init__(self, tower: AlexNetEncoder, fc_dim: int, dropout: float, batchnorm: bool = False) -> None:
        super().__init__()
        c, h, w = tower.feature_shapes()["pool5"]
        self.tower = tower
        self.fc6 = _fc(c * h * w, fc_dim, dropout, batchnorm)
        self.fc7 = _fc(2 * fc_dim, fc_dim, dropout, batchnorm)
        self.fc8 = nn.Linear(fc_dim, len(OFFSETS))
        init_kaiming(self.fc6)
        init_kaiming(self.fc7)
        # Small final weights start the softmax near uniform (loss ln 8) instead of at huge random logits.
        nn.init.normal_(self.fc8.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc8.bias)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """Logits (B, 8) for pairs (B, 2, 3, s, s) of (centre, neighbour) patches."""
        both = pairs.transpose(0, 1).flatten(0, 1)  # all centres, then all neighbours: one tower pass
        fc6 = self.fc6(self.tower(both).flatten(1))
        centre, neighbour = fc6.chunk(2)
        return self.fc8(self.fc7(torch.cat([centre, neighbour], dim=1)))


def build_model(cfg: PretrainConfig, patch: int) -> ContextPredictionNet:
    """The pair classifier for `patch` px patches resized to `patches.input_size`."""
    m, size = cfg.model, cfg.patches.input_size or patch
    if m.arch == "dcgan":
        raise ValueError("method=context_prediction needs model.arch alexnet or alexnet_small, got dcgan")
    if m.arch == "alexnet_small" and size % 32:
        raise ValueError(f"model.arch=alexnet_small needs patches.input_size (null = the {patch} px patch) "
                         f"a multiple of 32, got {size}")
    if m.arch == "alexnet" and size < 195:
        raise ValueError(f"model.arch=alexnet needs patches.input_size >= 195 (227 in the paper), got {size}"
                         + ("" if cfg.patches.input_size else f" (null = the {patch} px patch)"))
    tower = AlexNetEncoder(alexnet_spec(m.arch, m.widths, size, m.layout, m.lrn, m.groups))
    return ContextPredictionNet(tower, cfg.patches.fc_dim, m.dropout)


class ContextPredictionMethod(PretextMethod):
    """Relative patch position as an 8-way classification."""

    name = "context_prediction"

    def __init__(self, cfg: PretrainConfig, fill_mean: list[float]) -> None:
        super().__init__(cfg, fill_mean)
        p = cfg.patches
        self.grid = patch_grid(cfg.data.fine_size, p.gap_ratio, p.jitter_ratio)
        self.input_size = p.input_size or self.grid.patch
        self.model = build_model(cfg, self.grid.patch)

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        o = self.cfg.optim
        return {"model": torch.optim.Adam(self.model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2),
                                          weight_decay=o.weight_decay)}

    def sample_pairs(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw patch pairs (B, 2, 3, P, P), labels (B,)) from normalised images (B, 3, S, S)."""
        corners, labels = sample_corners(self.grid, images.shape[0], generator)
        return crop_patches(images, corners, self.grid.patch), labels.to(images.device)

    def prepare(self, pairs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Colour guard, resize to the tower's input, normalise: (B, 2, 3, P, P) -> (B, 2, 3, s, s)."""
        pairs = pairs.float()
        if self.cfg.patches.color == "drop":
            pairs = drop_colour(pairs, generator)
        elif self.cfg.patches.color == "project":
            pairs = project_colour(pairs)
        if self.input_size != self.grid.patch:
            size = (self.input_size, self.input_size)
            pairs = F.interpolate(pairs.flatten(0, 1), size, mode="bilinear", align_corners=False)
            pairs = pairs.unflatten(0, (-1, 2))
        return normalise_patches(pairs)

    def _loss(self, images: torch.Tensor, generator: torch.Generator,
              autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
              ) -> dict[str, torch.Tensor]:
        pairs, labels = self.sample_pairs(images, generator)
        x = self.prepare(pairs, generator)
        with autocast():
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), labels)
        return {"loss": loss, "acc": (logits.argmax(1) == labels).float().mean()}

    def training_step(self, images: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        out = self._loss(images, ctx.generator, ctx.autocast)
        ctx.optimize("model", out["loss"])
        return {k: v.detach() for k, v in out.items()}

    @torch.no_grad()
    def validate(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Held-out 8-way loss and accuracy with the training sampling (the trainer sets eval mode)."""
        return self._loss(images, generator)  # the trainer's validate already runs under its autocast

    def encoder_export(self) -> tuple[nn.Module, str, dict]:
        tower = unwrap(self.model).tower
        return tower, "alexnet", tower.spec.to_dict()

    @torch.no_grad()
    def sample_grid(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Rows: centre patches, neighbour patches, then the same pairs as the tower sees them."""
        pairs, _ = self.sample_pairs(images, generator)
        inputs = self.prepare(pairs, generator)
        raw = F.interpolate(pairs.flatten(0, 1).float(), inputs.shape[-2:], mode="bilinear", align_corners=False)
        raw = raw.unflatten(0, (-1, 2)).add(1).div(2)
        lo = inputs.amin(dim=(-3, -2, -1), keepdim=True)
        hi = inputs.amax(dim=(-3, -2, -1), keepdim=True)
        seen = (inputs - lo) / (hi - lo).clamp_min(NORM_EPS)
        rows = [raw[:, 0], raw[:, 1], seen[:, 0], seen[:, 1]]
        return torch.cat(rows).clamp(0, 1)
