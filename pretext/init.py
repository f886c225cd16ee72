"""Data-dependent initialisation (Krahenbuhl et al., ICLR 2016) for any stack of conv / linear layers.

1. Within-layer, for *new* layers only: going forward layer by layer, each output channel's pre-activation
   is rescaled and shifted to mean `bias` (0) and unit variance on real images. Pretrained layers keep
   their weights: a per-channel shift would change which units fire, i.e. the features themselves.
2. Between-layer, over new and pretrained layers alike: every layer should learn at the same relative rate,
   C_k = E||dL/dW_k||^2 / ||W_k||^2 for a random linear loss at the output. Scaling layer k by a_k divides
   its own C_k by a_k^2 and multiplies every other layer's by a_k^2 (ReLU networks are positively
   homogeneous), so ln C_k moves by -4 ln a_k relative to the rest: a_k = (C_k / C*)^(1/4), damped by
   `alpha`. The target C* is the geometric mean of the rates times s^(2/L), s the output's mean per-channel
   std, so that the product of the factors pulls the output towards unit scale (s^(-1/2) per full step), as
   their `calibrateGradientRatio` does: a rescaled network starts with logits of order 1.
   A layer's bias must follow the scale change of its input, or the network stops being a rescaled copy of
   itself: before layer k is scaled, its bias is multiplied by (mean |input| now) / (mean |input| before),
   measured in one forward pass in which every earlier layer already has its new weights. In a pure ReLU
   chain this is the product of the earlier factors; pooling is homogeneous too, LRN is not (hence a few
   iterations rather than one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

AFFINE = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)


def affine_layers(model: nn.Module) -> list[nn.Module]:
    """Conv / linear layers of `model` in registration order (forward order for sequential stacks)."""
    return [m for m in model.modules() if isinstance(m, AFFINE)]


def _channel_dims(t: torch.Tensor) -> tuple[int, ...]:
    return (0,) if t.dim() == 2 else (0, *range(2, t.dim()))


def output_scale(out: torch.Tensor) -> float:
    """Mean over channels of each channel's std over samples (and positions): the network's output scale."""
    out = out.detach().float()
    return float(out.std(_channel_dims(out)).mean())


@torch.no_grad()
def within_layer_init(model: nn.Module, forward: Callable[[Any], Any], images: Any,
                      layers: Sequence[nn.Module] | None = None, eps: float = 1e-8, bias: float = 0.0) -> None:
    """Per output channel: pre-activations on `images` get mean `bias` and std 1 (one layer at a time).
    `images` is whatever `forward` takes: a batch, or a list of images of different sizes."""
    for layer in layers if layers is not None else affine_layers(model):
        captured: list[torch.Tensor] = []
        # A copy: an in-place activation after the layer (ReLU(inplace=True)) would overwrite its output. Every
        # call counts (a forward over images of different sizes calls a layer once per image): (C, values).
        handle = layer.register_forward_hook(
            lambda _m, _i, out, buf=captured: buf.append(out.detach().float().transpose(0, 1).flatten(1).clone()))
        try:
            forward(images)
        finally:
            handle.remove()
        z = torch.cat(captured, 1)
        mean, std = z.mean(1), z.std(1).clamp_min(eps)
        out_dim = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
        shape = [1] * layer.weight.dim()
        shape[out_dim] = -1
        layer.weight.div_(std.view(shape).to(layer.weight.dtype))
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros_like(mean))
        layer.bias.sub_(mean.to(layer.bias.dtype)).div_(std.to(layer.bias.dtype)).add_(bias)


class _InputScales:
    """Forward pre-hooks recording mean |input| of each layer's first call in a pass."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        self.layers, self.scales = list(layers), [0.0] * len(layers)
        self.handles = [layer.register_forward_pre_hook(self._hook(i)) for i, layer in enumerate(self.layers)]
        self.seen: set[int] = set()

    def _hook(self, i: int) -> Callable:
        def hook(_module: nn.Module, inputs: tuple) -> None:
            if i not in self.seen:
                self.seen.add(i)
                self.scales[i] = float(inputs[0].detach().float().abs().mean())
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def change_rates(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                 layers: Sequence[nn.Module], generator: torch.Generator | None = None) -> torch.Tensor:
    """C_k = ||dL/dW_k||^2 / ||W_k||^2 per layer for a random linear loss L = <z, output>, z ~ N(0, 1)."""
    return _rates_and_scales(model, forward, images, layers, generator)[0]


def _rates_and_scales(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                      layers: Sequence[nn.Module], generator: torch.Generator | None
                      ) -> tuple[torch.Tensor, list[float], float]:
    """(change rates, mean |input| of each layer, output scale) from one forward and backward pass."""
    model.zero_grad(set_to_none=True)
    probe = _InputScales(layers)
    try:
        out = forward(images)
    finally:
        probe.remove()
    z = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
    (out * z).sum().backward()
    missing = [i for i, layer in enumerate(layers) if layer.weight.grad is None]
    if missing:
        raise ValueError(f"data-dependent init: layer(s) {missing} of the list got no gradient: not used by the "
                         f"forward pass, or frozen (requires_grad=False)")
    with torch.no_grad():
        rates = torch.stack([layer.weight.grad.float().square().sum() / layer.weight.float().square().sum().clamp_min(1e-20)
                             for layer in layers])
    model.zero_grad(set_to_none=True)
    return rates, probe.scales, output_scale(out)


@torch.no_grad()
def _rescale(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, layers: Sequence[nn.Module],
             factors: Sequence[float], before: Sequence[float]) -> None:
    """Scale layer k by factors[k] in one forward pass, its bias also by its input's scale change."""
    done: set[int] = set()

    def hook_for(i: int) -> Callable:
        def hook(layer: nn.Module, inputs: tuple) -> None:
            if i in done:
                return
            done.add(i)
            now = float(inputs[0].detach().float().abs().mean())
            follow = now / before[i] if before[i] > 0 and now > 0 else 1.0
            layer.weight.mul_(factors[i])
            if layer.bias is not None:
                layer.bias.mul_(factors[i] * follow)
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(i)) for i, layer in enumerate(layers)]
    try:
        forward(images)
    finally:
        for handle in handles:
            handle.remove()


def between_layer_init(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                       layers: Sequence[nn.Module] | None = None, iterations: int = 10, alpha: float = 1.0,
                       seed: int = 0, unit_output: bool = True) -> list[torch.Tensor]:
    """Iterations towards equal change rates (and unit output scale with `unit_output`); returns the rates
    measured before each iteration and after the last."""
    layers = list(layers if layers is not None else affine_layers(model))
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(iterations):
        rates, scales, out_std = _rates_and_scales(model, forward, images, layers, gen)
        history.append(rates)
        log_rates = rates.double().clamp_min(1e-30).log()
        log_target = log_rates.mean()
        if unit_output and out_std > 0:
            log_target = log_target + 2.0 * torch.tensor(out_std).double().log() / len(layers)
        factors = [float(v) for v in ((log_rates - log_target) * (alpha / 4)).exp()]
        _rescale(forward, images, layers, factors, scales)
    history.append(change_rates(model, forward, images, layers, gen))
    return history


def data_dependent_init(model: nn.Module, images: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                        layers: Sequence[nn.Module] | None = None, iterations: int = 10, seed: int = 0,
                        new_layers: Sequence[nn.Module] | None = None, unit_output: bool = True) -> list[torch.Tensor]:
    """Within-layer init of `new_layers` (default: all of `layers`), then between-layer calibration of `layers`
    (default: all conv/linear layers); returns the between-layer history of change rates."""
    forward = forward or model
    layers = list(layers if layers is not None else affine_layers(model))
    if not layers:
        raise ValueError("data_dependent_init: the model has no conv or linear layers to initialise")
    new_layers = layers if new_layers is None else list(new_layers)
    was_training = model.training
    model.eval()  # dropout off, BatchNorm on running statistics: the rates must be deterministic
    try:
        within_layer_init(model, forward, images, new_layers)
        return between_layer_init(model, forward, images, layers, iterations, seed=seed, unit_output=unit_output)
    finally:
        model.train(was_training)


def _unseen(norm: nn.modules.batchnorm._BatchNorm) -> bool:
    """A batch norm whose running statistics are still their reset values (mean 0, variance 1): it has never
    seen data, and in eval mode it would pass its input through unnormalised."""
    return (norm.track_running_stats and norm.running_mean is not None and bool((norm.running_mean == 0).all())
            and bool((norm.running_var == 1).all()))


def has_unseen_norms(module: nn.Module) -> bool:
    """Whether `module` has a batch norm that has never seen data."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and _unseen(m) for m in module.modules())


@torch.no_grad()
def estimate_unseen_norms(module: nn.Module, forward: Callable[[torch.Tensor], Any], images: torch.Tensor) -> int:
    """Running statistics, from `images`, for the batch norms of `module` that have never seen data (a random
    init's); returns how many the forward reached (the others keep their reset statistics). Their statistics are
    then what a training-mode forward of the batch uses, so an eval-mode calibration (`data_dependent_init`) or
    start measurement sees the activations training will, not unnormalised ones. A forward in several calls
    (one image each) averages the calls' statistics. Norms with statistics of their own (a trained model's) are
    untouched."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and _unseen(m)]
    if not norms:
        return 0
    modes = {m: m.training for m in module.modules()}
    momenta = [m.momentum for m in norms]
    module.eval()  # dropout off; the other norms on their own statistics
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: one batch gives exactly its statistics
            m.train()
        forward(images)
    finally:
        for m, training in modes.items():
            m.training = training
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return sum(int(m.num_batches_tracked) > 0 for m in norms)
