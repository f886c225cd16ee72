"""Supervised classifier: AlexNet's own head (fc6 -> fc7 -> fc8) on the encoder, trained on class labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .alexnet import AlexNetEncoder, fc_block, init_kaiming


class SupervisedNet(nn.Module):
    """encoder -> flattened pool5 -> fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout -> fc8: logits per class."""

    def __init__(self, encoder: AlexNetEncoder, fc_widths: Sequence[int], num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        if len(fc_widths) != 2 or num_classes < 1:
            raise ValueError(f"fc_widths must be (fc6, fc7) and num_classes >= 1, got {list(fc_widths)}, {num_classes}")
        c, h, w = encoder.feature_shapes()["pool5"]
        fc6, fc7 = (int(v) for v in fc_widths)
        self.encoder = encoder
        self.fc6 = fc_block(c * h * w, fc6, dropout)
        self.fc7 = fc_block(fc6, fc7, dropout)
        self.fc8 = nn.Linear(fc7, num_classes)
        for block in (self.fc6, self.fc7, self.fc8):  # the encoder initialises itself
            init_kaiming(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, num_classes) logits."""
        return self.fc8(self.fc7(self.fc6(torch.flatten(self.encoder(x), 1))))
