"""Pretext methods, one file each, selected by name (`method=...`)."""

from __future__ import annotations

from .base import PretextMethod, StepContext
from .autoencoder import AutoencoderMethod
from .context_encoder import ContextEncoderMethod
from .context_prediction import ContextPredictionMethod
from .gated_inpainting import GatedInpaintingMethod
from .random_init import RandomInitMethod
from .supervised import SupervisedMethod

METHODS: dict[str, type[PretextMethod]] = {
    ContextEncoderMethod.name: ContextEncoderMethod,
    AutoencoderMethod.name: AutoencoderMethod,
    ContextPredictionMethod.name: ContextPredictionMethod,
    RandomInitMethod.name: RandomInitMethod,
    GatedInpaintingMethod.name: GatedInpaintingMethod,
    SupervisedMethod.name: SupervisedMethod,
}


def get_method(name: str) -> type[PretextMethod]:
    """The method class registered under `name`."""
    if name not in METHODS:
        raise ValueError(f"unknown pretext method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["METHODS", "PretextMethod", "StepContext", "get_method"]
