"""Autoencoder baseline: the context encoder's network reconstructing the whole, unmasked image."""

from __future__ import annotations

import torch

from ..config import ConfigError
from .context_encoder import ContextEncoderMethod


class AutoencoderMethod(ContextEncoderMethod):
    """Same encoder, channel-wise layer and decoder as the context encoder; no hole, loss on every pixel."""

    name = "autoencoder"

    def __init__(self, cfg, fill_mean: list[float]) -> None:
        if cfg.model.output != "full":
            raise ConfigError("method=autoencoder reconstructs the whole image: it needs model.output=full")
        super().__init__(cfg, fill_mean)

    def corrupt(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The input is the image itself; the 'hole' and the predicted region are the whole image."""
        everything = torch.ones_like(images[:, :1], dtype=torch.bool)
        return images, everything, everything

    @torch.no_grad()
    def sample_grid(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        was_training = self.generator.training
        self.generator.eval()
        recon = self.generator(images).float()
        self.generator.train(was_training)
        return torch.cat([images.float(), recon]).add(1).div(2).clamp(0, 1)
