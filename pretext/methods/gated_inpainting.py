"""Free-form inpainting (Yu et al., ICCV 2019): a coarse-to-fine gated generator with contextual attention, trained
with pixel-wise L1 on the coarse and the refined output plus an SN-PatchGAN hinge loss.

Holes are filled with the dataset mean, as for the context encoder, and the hole mask is an input channel. The
discriminator sees the refined output pasted into the real image (or the real image) with the mask, and returns a
dense grid of patch outputs. Joint loss: (1 - w) * (L1(coarse) + L1(refined)) + w * hinge, w =
loss.adversarial_weight (the paper weighs both terms 1: w = 0.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PretrainConfig
from ..engine.distributed import unwrap
from ..losses import hinge_discriminator_loss, hinge_generator_loss, joint_loss, match_layout
from ..models.gated import GatedGenerator, SNPatchDiscriminator, flow_to_color
from .base import GeneratorDiscriminator, PretextMethod, StepContext
from .context_encoder import build_masks


def build_gated_generator(cfg: PretrainConfig) -> GatedGenerator:
    """The gated generator of a config's model section."""
    m = cfg.model
    return GatedGenerator(cfg.data.fine_size, m.cnum, m.dilations, m.attention, m.attention_rate, m.attention_fuse,
                          m.attention_scale)


def whole_image_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean L1 (or L2) over every pixel and channel."""
    diff = pred.float() - target.float()
    return diff.abs().mean() if kind == "l1" else diff.square().mean()


class GatedInpaintingMethod(GeneratorDiscriminator, PretextMethod):
    """Gated convolutions + contextual attention + SN-PatchGAN."""

    name = "gated_inpainting"
    center = False  # predicts the whole image: every mask kind can be scored

    def __init__(self, cfg: PretrainConfig, fill_mean: list[float]) -> None:
        super().__init__(cfg, fill_mean)
        self.generator = build_gated_generator(cfg)
        self.masks = build_masks(cfg)
        self.discriminator = None
        if cfg.loss.adversarial_weight > 0:
            self.discriminator = SNPatchDiscriminator(cfg.model.disc_widths)

    def corrupt(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(input with the hole filled by the mean, hole mask)."""
        b, _, h, w = images.shape
        hole = self.masks(b, h, w, generator, images.device)
        return torch.where(match_layout(hole, images), self.fill.to(images.dtype), images), hole

    def _reconstruction(self, coarse: torch.Tensor, refined: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        kind = self.cfg.loss.reconstruction
        return whole_image_loss(coarse, images, kind) + whole_image_loss(refined, images, kind)

    def training_step(self, images: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        x, hole = self.corrupt(images, ctx.generator)
        with ctx.autocast():
            coarse, refined, _ = self.generator(x, hole)
        rec = self._reconstruction(coarse, refined, images)
        if self.discriminator is None:
            ctx.optimize("generator", rec)
            return {"loss": rec.detach(), "rec": rec.detach()}
        complete = torch.where(match_layout(hole, images), refined.to(images.dtype), images)
        with ctx.autocast():
            real = self.discriminator(images, hole)
            fake = self.discriminator(complete.detach(), hole)
        d_loss = hinge_discriminator_loss(real, fake)
        ctx.optimize("discriminator", d_loss)
        with ctx.autocast(), ctx.no_sync(self.discriminator):
            adv = hinge_generator_loss(self.discriminator(complete, hole))
        loss = joint_loss(rec, adv, self.cfg.loss.adversarial_weight)
        ctx.optimize("generator", loss)
        # Mean patch logits (the hinge margins are +-1); the trainer's collapse monitor reads sigmoid probabilities
        # of a BCE discriminator (d_real / d_fake), which a hinge discriminator does not produce.
        return {"loss": loss.detach(), "rec": rec.detach(), "adv": adv.detach(), "disc": d_loss.detach(),
                "d_real_logit": real.detach().float().mean(), "d_fake_logit": fake.detach().float().mean()}

    @torch.no_grad()
    def validate(self, images: torch.Tensor, generator: torch.Generator,
                 labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Held-out reconstruction loss (coarse + refined, as in training) and the refined L1 on the hole."""
        x, hole = self.corrupt(images, generator)
        coarse, refined, _ = self.generator(x, hole)
        m = hole.expand_as(images).float()
        hole_l1 = ((refined.float() - images.float()).abs() * m).sum() / m.sum().clamp_min(1)
        return {"rec": self._reconstruction(coarse, refined, images), "hole_l1": hole_l1}

    @torch.no_grad()
    def inpaint(self, images: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """Fill `hole` (bool (B,1,H,W)) of normalised images; returns normalised composites."""
        return self.inpaint_with_attention(images, hole)[0]

    @torch.no_grad()
    def inpaint_with_attention(self, images: torch.Tensor,
                               hole: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One generator pass: the normalised composites and the colour-coded contextual-attention offsets
        (B, 3, H, W) in [0, 1] (flow_to_color: hue = direction of the most attended background patch, saturation =
        its distance), None for a model without attention."""
        x = torch.where(hole, self.fill.to(images.dtype), images)
        _, refined, flow = self.generator(x, hole)
        filled = torch.where(hole, refined.float().to(images.dtype), images)
        if flow is None:
            return filled, None
        return filled, F.interpolate(flow_to_color(flow), size=images.shape[-2:], mode="nearest")

    def encoder_export(self) -> tuple[nn.Module, str, dict]:
        """The coarse network's encoder (RGB in: ones and an empty mask are appended)."""
        enc = unwrap(self.generator).encoder
        return enc, "gated", {"input_size": enc.input_size, "cnum": enc.cnum, "dilations": list(enc.dilations)}

    @torch.no_grad()
    def sample_grid(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Rows: masked input, coarse composite, refined composite, attention offsets (when present), original."""
        was_training = self.generator.training
        self.generator.eval()
        x, hole = self.corrupt(images, generator)
        coarse, refined, flow = self.generator(x, hole)
        self.generator.train(was_training)
        to01 = lambda t: t.float().add(1).div(2).clamp(0, 1)  # noqa: E731
        rows = [to01(x), to01(torch.where(hole, coarse.float(), images.float())),
                to01(torch.where(hole, refined.float(), images.float()))]
        if flow is not None:
            rows.append(F.interpolate(flow_to_color(flow), size=images.shape[-2:]))
        return torch.cat([*rows, to01(images)])
