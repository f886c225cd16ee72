"""Data-dependent initialisation (Krahenbuhl et al., ICLR 2016) for any stack of conv / linear layers.

1. Within-layer: going forward layer by layer, each output channel's pre-activation is rescaled and
   shifted to zero mean and unit variance on real images.
2. Between-layer: every layer should learn at the same relative rate, C_k = E||dL/dW_k||^2 / ||W_k||^2
   for a random linear loss at the output. Scaling layer k (weights and bias) by a divides its own
   C_k by a^2 and multiplies every other layer's by a^2 (ReLU networks are positively homogeneous),
   so ln C_k moves by -4 ln a relative to the rest. Each iteration scales layer k by
   (C_k / geometric mean C)^(alpha / 4), which with alpha = 1 equalises the rates in one step for a
   pure ReLU chain; pooling and LRN make it approximate, hence a few damped iterations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

AFFINE = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)


def affine_layers(model: nn.Module) -> list[nn.Module]:
    """Conv / linear layers of `model` in registration order (forward order for sequential stacks)."""
    return [m for m in model.modules() if isinstance(m, AFFINE)]


def _channel_dims(t: torch.Tensor) -> tuple[int, ...]:
    return (0,) if t.dim() == 2 else (0, *range(2, t.dim()))


@torch.no_grad()
def within_layer_init(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                      layers: Sequence[nn.Module] | None = None, eps: float = 1e-8) -> None:
    """Per output channel: pre-activations on `images` get mean 0 and std 1 (one layer at a time)."""
    for layer in layers if layers is not None else affine_layers(model):
        captured: list[torch.Tensor] = []
        # A copy: an in-place activation after the layer (ReLU(inplace=True)) would overwrite its output.
        handle = layer.register_forward_hook(
            lambda _m, _i, out, buf=captured: buf.append(out.detach().to(torch.float32, copy=True)))
        try:
            forward(images)
        finally:
            handle.remove()
        z = captured[0]
        mean, std = z.mean(_channel_dims(z)), z.std(_channel_dims(z)).clamp_min(eps)
        out_dim = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
        shape = [1] * layer.weight.dim()
        shape[out_dim] = -1
        layer.weight.div_(std.view(shape).to(layer.weight.dtype))
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros_like(mean))
        layer.bias.sub_(mean.to(layer.bias.dtype)).div_(std.to(layer.bias.dtype))


def change_rates(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                 layers: Sequence[nn.Module], generator: torch.Generator | None = None) -> torch.Tensor:
    """C_k = ||dL/dW_k||^2 / ||W_k||^2 per layer for a random linear loss L = <z, output>, z ~ N(0, 1)."""
    model.zero_grad(set_to_none=True)
    out = forward(images)
    z = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
    (out * z).sum().backward()
    with torch.no_grad():
        rates = torch.stack([layer.weight.grad.float().square().sum() / layer.weight.float().square().sum().clamp_min(1e-20)
                             for layer in layers])
    model.zero_grad(set_to_none=True)
    return rates


@torch.no_grad()
def _scale(layer: nn.Module, factor: float) -> None:
    layer.weight.mul_(factor)
    if layer.bias is not None:
        layer.bias.mul_(factor)


def between_layer_init(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                       layers: Sequence[nn.Module] | None = None, iterations: int = 10, alpha: float = 0.5,
                       seed: int = 0) -> list[torch.Tensor]:
    """Damped iterations towards equal change rates; returns the rates measured before each iteration."""
    layers = list(layers if layers is not None else affine_layers(model))
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(iterations):
        rates = change_rates(model, forward, images, layers, gen)
        history.append(rates)
        target = rates.clamp_min(1e-30).log().mean().exp()
        for layer, rate in zip(layers, rates):
            _scale(layer, float((rate.clamp_min(1e-30) / target) ** (alpha / 4)))
    history.append(change_rates(model, forward, images, layers, gen))
    return history


def data_dependent_init(model: nn.Module, images: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                        layers: Sequence[nn.Module] | None = None, iterations: int = 10, seed: int = 0) -> list[torch.Tensor]:
    """Within-layer then between-layer initialisation of `layers` (default: all conv/linear layers)."""
    forward = forward or model
    layers = list(layers if layers is not None else affine_layers(model))
    if not layers:
        raise ValueError("data_dependent_init: the model has no conv or linear layers to initialise")
    was_training = model.training
    model.eval()  # dropout off, BatchNorm on running statistics: the rates must be deterministic
    try:
        within_layer_init(model, forward, images, layers)
        return between_layer_init(model, forward, images, layers, iterations, seed=seed)
    finally:
        model.train(was_training)
