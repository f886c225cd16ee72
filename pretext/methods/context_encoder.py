"""Context encoder (Pathak et al. 2016): fill a hole with the dataset mean, predict it, masked L2 (+ adversarial)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError, PretrainConfig
from ..engine.distributed import unwrap
from ..losses import (discriminator_loss, generator_adversarial_loss, joint_loss, match_layout, reconstruction_loss,
                      region_weights)
from ..masks import MaskGenerator, build_mask_generator, prediction_region
from ..models import alexnet_spec
from ..models.alexnet import AlexNetEncoder
from ..models.backbones import BACKBONES, build_backbone, freeze_parameters, unreached_parameters
from ..models.context_encoder import ContextEncoderNet
from ..models.dcgan import DCGAN_WIDTHS, DCGANDiscriminator, DCGANGenerator
from .base import GeneratorDiscriminator, PretextMethod, StepContext


def build_generator(cfg: PretrainConfig) -> nn.Module:
    """AlexNet context encoder ('alexnet', 'alexnet_small'), a context encoder on `model.backbone`'s deepest stage,
    or the DCGAN inpainting generator ('dcgan')."""
    m, size = cfg.model, cfg.data.fine_size
    out = size if m.output == "full" else size // 2
    if m.backbone:
        encoder, _, _ = build_backbone(m.backbone)
        with torch.no_grad():
            c, h, w = encoder.eval()(torch.zeros(1, 3, size, size)).shape[1:]
        if h != w:
            raise ConfigError(f"model.backbone={m.backbone} gives a {h}x{w} map at {size} px: not square")
        # layers after the deepest stage (a torchvision classifier, a ViT's last norm) never get a gradient
        freeze_parameters(encoder, unreached_parameters(encoder, encoder.stages[-1], size))
        return ContextEncoderNet(encoder.train(), c, h, out, m.decoder_widths, m.dropout, m.decoder_norm)
    if m.arch == "dcgan":
        widths = m.widths or _dcgan_widths(size)
        return DCGANGenerator(size, widths, m.bottleneck, m.output)
    encoder = AlexNetEncoder(alexnet_spec(m.arch, m.widths, size, m.layout, m.lrn, m.groups))
    c, n, _ = encoder.feature_shapes()["pool5"]
    return ContextEncoderNet(encoder, c, n, out, m.decoder_widths, m.dropout, m.decoder_norm)


def build_masks(cfg: PretrainConfig, kind: str | None = None, overlap: int | None = None) -> MaskGenerator:
    """The mask generator of a config's mask section; `kind` and `overlap` replace the config's when given."""
    k = cfg.mask
    return build_mask_generator(kind or k.kind, overlap=k.overlap if overlap is None else overlap,
                                max_coverage=k.max_coverage, min_coverage=k.min_coverage, max_blocks=k.max_blocks,
                                region_bank=k.region_bank, deform=k.deform, seed=cfg.train.seed, strokes=k.strokes,
                                vertices=k.vertices, brush_width=k.brush_width, mix=k.mix)


def _dcgan_widths(size: int) -> list[int]:
    # The paper's 64-64-128-256-512 for 128 px; drop leading layers for smaller inputs.
    n_down = (size // 4).bit_length() - 1
    return list(DCGAN_WIDTHS[len(DCGAN_WIDTHS) - n_down :]) if n_down <= 5 else [64] * (n_down - 5) + list(DCGAN_WIDTHS)


class ContextEncoderMethod(GeneratorDiscriminator, PretextMethod):
    """Masked-region reconstruction with an optional discriminator on the predicted content only."""

    name = "context_encoder"
    disc_lr_divisor = 10  # the original code's discriminator lr: the generator's / 10

    def __init__(self, cfg: PretrainConfig, fill_mean: list[float]) -> None:
        super().__init__(cfg, fill_mean)
        self.generator = build_generator(cfg)
        self.masks = build_masks(cfg)
        self.center = cfg.model.output == "center"
        size = cfg.data.fine_size
        self.discriminator = None
        if cfg.loss.adversarial_weight > 0:
            self.discriminator = DCGANDiscriminator(size // 2 if self.center else size, cfg.model.disc_widths)

    def corrupt(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input with the hole filled by the mean, hole mask, predicted-region mask)."""
        b, _, h, w = images.shape
        hole = self.masks(b, h, w, generator, images.device)
        region = prediction_region(hole, self.cfg.mask.overlap)
        return torch.where(match_layout(hole, images), self.fill.to(images.dtype), images), hole, region

    def _crop(self, t: torch.Tensor) -> torch.Tensor:
        # The centre-output generator predicts exactly the central quarter.
        h, w = t.shape[-2:]
        return t[..., h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] if self.center else t

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Generator output (central quarter or full image)."""
        return self.generator(x)

    def paste(self, images: torch.Tensor, pred: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """Known pixels from `images`, hole pixels from the prediction."""
        canvas = images.clone()
        if self.center:
            self._crop(canvas).copy_(pred.to(canvas.dtype))
        else:
            canvas = pred.to(canvas.dtype)
        return torch.where(hole, canvas, images)

    @torch.no_grad()
    def inpaint(self, images: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """Fill `hole` (bool (B,1,H,W)) of normalised images; returns normalised composites."""
        x = torch.where(hole, self.fill.to(images.dtype), images)
        return self.paste(images, self.predict(x).float(), hole)

    def _disc_view(self, t: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        # The discriminator sees only predicted (or real) content, never the context: `t` is in prediction
        # coordinates (the centre crop, or the full image whose region is shown on a blank canvas).
        return t if self.center else t * region.to(t.dtype)

    def training_step(self, images: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        x, hole, region = self.corrupt(images, ctx.generator)
        weights = self._crop(region_weights(hole, region, self.cfg.mask.overlap_weight))
        target = self._crop(images)
        with ctx.autocast():
            pred = self.generator(x)
        rec = reconstruction_loss(pred, target, weights, self.cfg.loss.reconstruction)
        if self.discriminator is None:
            ctx.optimize("generator", rec)
            return {"loss": rec.detach(), "rec": rec.detach()}
        d_loss, d_real, d_fake = self._discriminator_step(target, pred, region, ctx)
        with ctx.autocast(), ctx.no_sync(self.discriminator):
            adv = generator_adversarial_loss(self.discriminator(self._disc_view(pred, region)))
        loss = joint_loss(rec, adv, self.cfg.loss.adversarial_weight)
        ctx.optimize("generator", loss)
        return {"loss": loss.detach(), "rec": rec.detach(), "adv": adv.detach(), "disc": d_loss.detach(),
                "d_real": d_real, "d_fake": d_fake}

    @torch.no_grad()
    def validate(self, images: torch.Tensor, generator: torch.Generator,
                 labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Held-out reconstruction loss with this run's masks."""
        x, hole, region = self.corrupt(images, generator)
        weights = self._crop(region_weights(hole, region, self.cfg.mask.overlap_weight))
        return {"rec": reconstruction_loss(self.generator(x), self._crop(images), weights, self.cfg.loss.reconstruction)}

    def _discriminator_step(self, target: torch.Tensor, pred: torch.Tensor, region: torch.Tensor,
                            ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One discriminator update; its loss and mean outputs (probabilities) on real and predicted content."""
        with ctx.autocast():
            real = self.discriminator(self._disc_view(target, region))
            fake = self.discriminator(self._disc_view(pred.detach(), region))
        d_loss = discriminator_loss(real, fake)
        ctx.optimize("discriminator", d_loss)
        return d_loss, real.detach().float().sigmoid().mean(), fake.detach().float().sigmoid().mean()

    def encoder_export(self) -> tuple[nn.Module, str, dict]:
        enc = unwrap(self.generator).encoder
        if isinstance(enc, AlexNetEncoder):
            return enc, "alexnet", enc.spec.to_dict()
        if isinstance(enc, BACKBONES):
            return enc, "backbone", {"backbone": self.cfg.model.backbone, "input_size": self.cfg.data.fine_size}
        return enc, "dcgan", {"input_size": enc.input_size, "widths": [m.out_channels for m in enc.features
                                                                        if isinstance(m, nn.Conv2d)],
                              "bottleneck": enc.out_channels}

    @torch.no_grad()
    def sample_grid(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        was_training = self.generator.training
        self.generator.eval()
        x, hole, _ = self.corrupt(images, generator)
        filled = self.inpaint(images, hole)
        self.generator.train(was_training)
        return torch.cat([x, filled, images]).float().add(1).div(2).clamp(0, 1)
