"""Random-initialisation baseline: the encoder with Gaussian (or data-dependent) weights, never trained."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError, PretrainConfig
from ..engine.distributed import unwrap
from ..init import data_dependent_init
from ..models import alexnet_spec
from ..models.alexnet import AlexNetEncoder, init_gaussian
from .base import PretextMethod, StepContext


class RandomInitMethod(PretextMethod):
    """Exports an untrained encoder as a checkpoint of its own, so every evaluation treats it like the others."""

    name = "random"

    def __init__(self, cfg: PretrainConfig, fill_mean: list[float]) -> None:
        super().__init__(cfg, fill_mean)
        m = cfg.model
        if m.arch == "dcgan":
            raise ConfigError("method=random builds an AlexNet encoder: use model.arch=alexnet or alexnet_small")
        self.encoder = AlexNetEncoder(alexnet_spec(m.arch, m.widths, cfg.data.fine_size, m.layout, m.lrn, m.groups))
        init_gaussian(self.encoder, std=m.init_std)

    def networks(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder}

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def initialize(self, images: torch.Tensor) -> None:
        """Krahenbuhl et al. data-dependent rescaling of every layer on real images (model.init=data_dependent)."""
        if self.cfg.model.init == "data_dependent":
            data_dependent_init(unwrap(self.encoder), images, seed=self.cfg.train.seed)

    def training_step(self, images: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        raise ConfigError("method=random is not trained: run it with train.max_steps=0")

    def encoder_export(self) -> tuple[nn.Module, str, dict]:
        enc = unwrap(self.encoder)
        return enc, "alexnet", enc.spec.to_dict()
