"""The contract between a pretext method and the shared trainer."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..config import PretrainConfig
from ..engine.distributed import unwrap


@dataclass
class StepContext:
    """What the trainer hands a method for one step."""

    step: int
    generator: torch.Generator  # CPU generator seeded from (seed, step, rank): masks and other sampling
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    optimize: Callable[[str, torch.Tensor], None]  # backward + clip + step of the named optimiser
    no_sync: Callable[[nn.Module], contextlib.AbstractContextManager]
    labels: torch.Tensor | None = None  # on the device, for methods with `uses_labels`: (B,) classes or (B, C) rows


class PretextMethod(nn.Module, abc.ABC):
    """A pretext task in one file: config in, losses out. Networks named in `networks()` get DDP-wrapped."""

    name: str = ""
    # True: the trainer reads the data's class labels (pretext.data.labels), passes their LabelSpace to __init__
    # after `fill_mean`, and each batch's labels as StepContext.labels and validate's `labels`.
    uses_labels: bool = False

    def __init__(self, cfg: PretrainConfig, fill_mean: list[float]) -> None:
        super().__init__()
        self.cfg = cfg
        # Images are normalised to [-1, 1]; the fill value is the dataset mean in that space.
        self.register_buffer("fill", torch.tensor(fill_mean, dtype=torch.float32).view(1, 3, 1, 1) * 2 - 1)

    def adam(self, params, lr: float) -> torch.optim.Adam:
        """Adam with the run's betas and weight decay; the fused implementation (one kernel for the whole update)
        with `train.fast_kernels`, torch's default one otherwise."""
        o = self.cfg.optim
        fused = bool(self.cfg.train.fast_kernels)
        return torch.optim.Adam(params, lr=lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay,
                                **({"fused": True} if fused else {}))

    def use_fast_kernels(self, enabled: bool) -> None:
        """The fast layers of every network (pretext.models.kernels) on their fast path, or as plain PyTorch."""
        from pretext.models.kernels import set_fast_kernels

        set_fast_kernels(self, enabled)

    @abc.abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """Trained networks by attribute name."""

    @abc.abstractmethod
    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers by name (the names `ctx.optimize` is called with)."""

    @abc.abstractmethod
    def training_step(self, images: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        """One optimisation step on normalised images (B, 3, H, W); returns scalar metrics."""

    @abc.abstractmethod
    def encoder_export(self) -> tuple[nn.Module, str, dict]:
        """(encoder module, architecture name, architecture spec) for the exported encoder."""

    def initialize(self, images: torch.Tensor) -> None:
        """Called once on real training images before a fresh run starts (not on resume)."""

    def validate(self, images: torch.Tensor, generator: torch.Generator,
                 labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Metrics on held-out images (eval mode, no gradients), with their labels for `uses_labels`; none by default."""
        return {}

    def sample_grid(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """Rows of images in [0, 1] for the progress PNG, or None."""
        return None


class GeneratorDiscriminator:
    """networks() and build_optimizers() of a method with a `generator` and an optional `discriminator` (None when
    the loss has no adversarial term). The discriminator's Adam runs at optim.lr_disc, or optim.lr divided by
    `disc_lr_divisor` when that is unset."""

    disc_lr_divisor = 1
    generator: nn.Module
    discriminator: nn.Module | None
    cfg: PretrainConfig

    def networks(self) -> dict[str, nn.Module]:
        nets = {"generator": self.generator}
        if self.discriminator is not None:
            nets["discriminator"] = self.discriminator
        return nets

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        o = self.cfg.optim
        opts = {"generator": self.adam(self.generator.parameters(), o.lr)}
        if self.discriminator is not None:
            lr_disc = o.lr_disc if o.lr_disc is not None else o.lr / self.disc_lr_divisor
            opts["discriminator"] = self.adam(self.discriminator.parameters(), lr_disc)
        return opts


class SingleNetwork:
    """networks(), build_optimizers() and encoder_export() of a method that trains one network `net` (Adam at
    optim.lr) and exports its AlexNet `net.encoder`."""

    net: nn.Module
    cfg: PretrainConfig
    adam: Callable[..., torch.optim.Adam]

    def networks(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": self.adam(self.net.parameters(), self.cfg.optim.lr)}

    def encoder_export(self) -> tuple[nn.Module, str, dict]:
        enc = unwrap(self.net).encoder
        return enc, "alexnet", enc.spec.to_dict()
