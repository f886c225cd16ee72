"""Inpainting losses (masked reconstruction with the overlap ring, the adversarial terms) and the classification
losses that method=supervised and the classification transfer task share."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .models.kernels import is_channels_last


def match_layout(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`mask` (B, 1, H, W) with the memory format of `like` (B, C, H, W): the same values, strides that let an
    elementwise op broadcast it over channels_last images at full speed (mixed formats are much slower on CPU)."""
    return mask.contiguous(memory_format=torch.channels_last) if is_channels_last(like) else mask


def region_weights(hole: torch.Tensor, region: torch.Tensor, overlap_weight: float = 10.0) -> torch.Tensor:
    """Loss weight per pixel: 1 in the hole, `overlap_weight` on the known ring (region minus hole), 0 elsewhere.

    hole, region: bool (B, 1, H, W), region = the predicted area (the hole dilated by the overlap).
    """
    if hole.shape != region.shape:
        raise ValueError(f"hole {tuple(hole.shape)} and region {tuple(region.shape)} differ in shape")
    ring = region & ~hole
    return hole.float() + overlap_weight * ring.float()


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Weighted mean error over the predicted region: sum(w * err) / (C * #pixels with w > 0).

    pred, target: (B, C, H, W); weights: (B, 1, H, W). Normalising by the region size keeps the loss
    scale independent of the hole size, as the original code's MSE over the predicted patch does.
    """
    if pred.shape != target.shape or weights.shape[0] != pred.shape[0] or weights.shape[-2:] != pred.shape[-2:]:
        raise ValueError(f"shapes differ: pred {tuple(pred.shape)}, target {tuple(target.shape)}, weights {tuple(weights.shape)}")
    if kind not in ("l2", "l1"):
        raise ValueError(f"reconstruction loss must be l2 or l1, got {kind!r}")
    count = ((weights > 0).sum() * pred.shape[1]).clamp_min(1)
    return _WeightedError.apply(pred, target, match_layout(weights, pred), count, kind)


class _WeightedError(torch.autograd.Function):
    """sum(w * err(pred - target)) / count in fp32, with a backward that keeps pred's memory format (autograd's
    own, through a broadcast weight, mixes formats and runs far slower on channels_last images)."""

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, count: torch.Tensor,
                kind: str) -> torch.Tensor:
        diff = pred.float() - target.float()
        err = diff.square() if kind == "l2" else diff.abs()
        ctx.save_for_backward(diff, weights, count)
        ctx.kind, ctx.dtypes = kind, (pred.dtype, target.dtype)
        return (err * weights).sum() / count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        diff, weights, count = ctx.saved_tensors
        scale = grad / count
        grad_diff = (diff * weights) * (2 * scale) if ctx.kind == "l2" else diff.sign() * weights * scale
        grad_pred = grad_diff.to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        grad_target = (-grad_diff).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return grad_pred, grad_target, None, None, None


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy: real -> 1, fake -> 0 (mean of both halves)."""
    real = F.binary_cross_entropy_with_logits(real_logits.float(), torch.ones_like(real_logits, dtype=torch.float32))
    fake = F.binary_cross_entropy_with_logits(fake_logits.float(), torch.zeros_like(fake_logits, dtype=torch.float32))
    return 0.5 * (real + fake)


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: fake -> 1."""
    return F.binary_cross_entropy_with_logits(fake_logits.float(), torch.ones_like(fake_logits, dtype=torch.float32))


def joint_loss(rec: torch.Tensor, adv: torch.Tensor | None, adversarial_weight: float) -> torch.Tensor:
    """(1 - w) * rec + w * adv, the paper's 0.999 / 0.001 split for w = 0.001; rec alone when w = 0."""
    if adversarial_weight == 0 or adv is None:
        return rec
    return (1.0 - adversarial_weight) * rec + adversarial_weight * adv


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """SN-PatchGAN's hinge loss: mean(relu(1 - D(real))) + mean(relu(1 + D(fake))) over every patch output."""
    return F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's side of the hinge loss: -mean(D(fake))."""
    return -fake_logits.float().mean()


def masked_sigmoid_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy of (N, C) logits and VOC labels {1, 0, -1}: 0 entries ignored, sum / N (as Caffe)."""
    if logits.shape != labels.shape or logits.dim() != 2:
        raise ValueError(f"logits and labels must both be (N, C), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    valid = (labels != 0).to(logits.dtype)  # (N, C)
    per_entry = F.binary_cross_entropy_with_logits(logits, (labels > 0).to(logits.dtype), reduction="none")
    return (per_entry * valid).sum() / logits.shape[0]


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked sigmoid cross-entropy for (N, C) multi-label rows, softmax cross-entropy for (N,) class indices."""
    if labels.dim() == 2:
        return masked_sigmoid_cross_entropy(logits.float(), labels)
    return F.cross_entropy(logits.float(), labels.long())
