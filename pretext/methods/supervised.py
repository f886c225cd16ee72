"""Supervised reference, the "ImageNet labels" row of the paper's Table 2: the encoder learns the pretraining data's
class labels through AlexNet's fc6-fc7-fc8 head, with the trainer, checkpoints and encoder export of every method.

An ImageFolder tree gives one class per image: softmax cross-entropy, and top-1 accuracy as `acc`. A VOC root gives
multi-label rows {1, 0 = difficult only, -1}: the masked sigmoid cross-entropy (difficult-only entries ignored),
logged as `loss` alone: a per-batch mAP over a few dozen images would be noise, and the transfer tasks measure mAP
properly. Both losses are `pretext.losses.classification_loss`, the one the classification transfer task trains
with, so the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from ..config import PretrainConfig
from ..data.labels import LabelSpace
from ..losses import classification_loss
from ..models import alexnet_spec
from ..models.alexnet import AlexNetEncoder
from ..models.supervised import SupervisedNet
from .base import PretextMethod, SingleNetwork, StepContext


class SupervisedMethod(SingleNetwork, PretextMethod):
    """Image classification on the pretraining data's own labels."""

    name = "supervised"
    uses_labels = True

    def __init__(self, cfg: PretrainConfig, fill_mean: list[float], labels: LabelSpace) -> None:
        super().__init__(cfg, fill_mean)
        m = cfg.model
        encoder = AlexNetEncoder(alexnet_spec(m.arch, m.widths, cfg.data.fine_size, m.layout, m.lrn, m.groups))
        self.multilabel = labels.multilabel
        self.net = SupervisedNet(encoder, cfg.supervised.fc_widths, len(labels.classes), m.dropout)

    def _scores(self, images: torch.Tensor, labels: torch.Tensor,
                autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, torch.Tensor]:
        with autocast():
            logits = self.net(images)
        scores = {"loss": classification_loss(logits, labels)}
        if not self.multilabel:
            scores["acc"] = (logits.argmax(1) == labels).float().mean()
        return scores

    def training_step(self, images: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        scores = self._scores(images, ctx.labels, ctx.autocast)
        ctx.optimize("net", scores["loss"])
        return {k: v.detach() for k, v in scores.items()}

    @torch.no_grad()
    def validate(self, images: torch.Tensor, generator: torch.Generator,
                 labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Held-out loss, and top-1 accuracy for single-label data."""
        return self._scores(images, labels, contextlib.nullcontext)
