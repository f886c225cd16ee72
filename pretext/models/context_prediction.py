"""Context-prediction network (Doersch et al. 2015): a shared AlexNet tower per patch, then a pair classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .alexnet import AlexNetEncoder, fc_block

NUM_POSITIONS = 8


class ContextPredictionNet(nn.Module):
    """encoder -> fc6 per patch; [fc6(a), fc6(b)] -> fc7 -> fc8: logits over the 8 relative positions."""

    def __init__(self, encoder: AlexNetEncoder, fc_widths: Sequence[int] = (4096, 4096), dropout: float = 0.5,
                 batch_norm: bool = True) -> None:
        super().__init__()
        if len(fc_widths) != 2:
            raise ValueError(f"fc_widths must be (fc6, fc7), got {list(fc_widths)}")
        c, h, w = encoder.feature_shapes()["pool5"]
        fc6, fc7 = (int(v) for v in fc_widths)
        self.encoder = encoder
        self.fc6 = fc_block(c * h * w, fc6, dropout, batch_norm)
        self.fc7 = fc_block(2 * fc6, fc7, dropout, batch_norm)
        self.fc8 = nn.Linear(fc7, NUM_POSITIONS)

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """(B, 3, s, s) centre patches and (B, 3, s, s) neighbours -> (B, 8) logits."""
        if first.shape != second.shape:
            raise ValueError(f"patch pairs must have one shape, got {tuple(first.shape)} and {tuple(second.shape)}")
        # One tower pass over both patches: shared weights, and batch statistics over the pair.
        feats = self.fc6(torch.flatten(self.encoder(torch.cat([first, second])), 1))
        a, b = feats.chunk(2)
        return self.fc8(self.fc7(torch.cat([a, b], dim=1)))
