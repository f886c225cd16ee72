"""Any timm or torchvision model as an encoder with named stages (`forward(x, out=STAGE)`: its feature maps), its
input size and normalisation: what the transfer tasks evaluate (`transfer.backbones` adds the weights of other
trainers) and what the context encoder and the autoencoder can pretrain (`model.backbone`).

- `timm:NAME`: a timm model (random init), stages = its `feature_info` modules (e.g. resnet18: act1, layer1 ...
  layer4; a ViT: blocks.0 ... blocks.11), computed by `forward_intermediates`;
- `torchvision:NAME`: a torchvision classification model (random init), stages = the top-level modules (or those
  of `features`) whose output is a feature map.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "scale": "pixels / 255"}
KINDS = ("timm", "torchvision")


class BackboneSpecError(ValueError):
    """A backbone spec or model name that cannot be built."""


class TimmBackbone(nn.Module):
    """A timm model's feature maps by stage name (its feature_info modules), through forward_intermediates."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        info = list(model.feature_info)
        self.stages = tuple(f["module"] for f in info)
        self.channels = {f["module"]: int(f["num_chs"]) for f in info}
        self.strides = {f["module"]: int(f["reduction"]) for f in info}

    def forward(self, x: torch.Tensor, out: str | Sequence[str] = "") -> torch.Tensor | dict[str, torch.Tensor]:
        names = (out or self.stages[-1],) if isinstance(out, str) else tuple(out)
        _check_stages(names, self.stages)
        indices = sorted({self.stages.index(n) for n in names})
        maps = self.model.forward_intermediates(x, indices=indices, intermediates_only=True, stop_early=True)
        found = dict(zip((self.stages[i] for i in indices), maps))
        return found[names[0]] if isinstance(out, str) else {n: found[n] for n in names}


class _Stop(Exception):
    pass


class TorchvisionBackbone(nn.Module):
    """A torchvision model's feature maps by stage name (module outputs caught by hooks; the forward pass stops
    after the deepest stage asked for)."""

    def __init__(self, model: nn.Module, input_size: int) -> None:
        super().__init__()
        self.model = model
        self.stages, self.channels, self.strides = _map_stages(model, input_size)
        if not self.stages:
            raise BackboneSpecError(f"{type(model).__name__}: no module gives a feature map")
        self._modules_by_name = dict(model.named_modules())

    def forward(self, x: torch.Tensor, out: str | Sequence[str] = "") -> torch.Tensor | dict[str, torch.Tensor]:
        names = (out or self.stages[-1],) if isinstance(out, str) else tuple(out)
        _check_stages(names, self.stages)
        last = max(self.stages.index(n) for n in names)
        found: dict[str, torch.Tensor] = {}

        def catch(name: str):
            def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
                found[name] = output if name == self.stages[last] else output.clone()
                if name == self.stages[last]:
                    raise _Stop

            return hook

        handles = [self._modules_by_name[n].register_forward_hook(catch(n)) for n in names]
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return found[names[0]] if isinstance(out, str) else {n: found[n] for n in names}


def _check_stages(names: Sequence[str], stages: Sequence[str]) -> None:
    unknown = [n for n in names if n not in stages]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {', '.join(stages)}")


def _candidates(model: nn.Module) -> list[str]:
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return [f"features.{name}" for name, _ in features.named_children()]
    return [name for name, _ in model.named_children()]


def _map_stages(model: nn.Module, size: int) -> tuple[tuple[str, ...], dict[str, int], dict[str, int]]:
    """The candidate modules whose output on a size x size image is a map of more than one pixel, in the order they
    run, with channels and strides."""
    modules = dict(model.named_modules())
    shapes: dict[str, torch.Size] = {}

    def record(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:  # returns None: output unchanged
            if isinstance(output, torch.Tensor):
                shapes.setdefault(name, output.shape)

        return hook

    handles = [modules[n].register_forward_hook(record(n)) for n in _candidates(model)]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    stages = tuple(n for n in shapes if len(shapes[n]) == 4 and shapes[n][-1] > 1)
    return (stages, {n: int(shapes[n][1]) for n in stages},
            {n: max(1, round(size / int(shapes[n][-1]))) for n in stages})


def is_backbone_spec(spec: str | Path) -> bool:
    """Whether `spec` names a timm / torchvision model rather than a path."""
    return isinstance(spec, str) and spec.split(":", 1)[0] in KINDS and ":" in spec


def _build_model(kind: str, name: str) -> tuple[nn.Module, int, dict]:
    if kind == "timm":
        import timm

        if not timm.is_model(name):
            raise BackboneSpecError(f"timm has no model {name!r} (timm.list_models() lists them; a tag such as "
                                f"vit_small_patch16_224.dino picks the pretrained config: input size, mean, std)")
        model = timm.create_model(name, pretrained=False, num_classes=0)
        if not hasattr(model, "feature_info") or not hasattr(model, "forward_intermediates"):
            raise BackboneSpecError(f"timm model {name!r} exposes no feature stages (feature_info and "
                                f"forward_intermediates)")
        cfg = model.pretrained_cfg or {}
        size = int((cfg.get("input_size") or (3, 224, 224))[-1])
        norm = {"mean": [float(v) for v in cfg.get("mean", IMAGENET["mean"])],
                "std": [float(v) for v in cfg.get("std", IMAGENET["std"])], "scale": "pixels / 255"}
        return model, size, norm
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise BackboneSpecError(f"torchvision has no classification model {name!r} "
                            f"(torchvision.models.list_models() lists them)")
    model = torchvision.models.get_model(name, weights=None)
    transformers = (torchvision.models.VisionTransformer, torchvision.models.SwinTransformer, torchvision.models.MaxVit)
    if isinstance(model, transformers):  # token or NHWC outputs: not feature maps by module
        raise BackboneSpecError(f"torchvision's {name} is a transformer whose stages are not NCHW feature maps; use the "
                            f"timm model of the same name (timm:NAME), whose stages timm exposes")
    return model, 224, dict(IMAGENET)


BACKBONES = (TimmBackbone, TorchvisionBackbone)


def unreached_parameters(encoder: nn.Module, stage: str, size: int) -> list[str]:
    """Names of the trainable parameters of `encoder` that its output at `stage` does not depend on (a backbone's
    layers after the stage, its classifier), found by one backward pass of a size x size input in eval mode: they
    get no gradient, which DDP and the data-dependent calibration refuse, so callers freeze them."""
    params = dict(encoder.named_parameters())
    saved = {n: p.grad for n, p in params.items()}
    was_training = encoder.training
    encoder.eval()
    try:
        for p in params.values():
            p.grad = None
        with torch.enable_grad():
            encoder(torch.zeros(1, 3, size, size), out=stage).float().sum().backward()
        return [n for n, p in params.items() if p.requires_grad and p.grad is None]
    finally:
        for n, p in params.items():
            p.grad = saved[n]
        encoder.train(was_training)


def freeze_parameters(module: nn.Module, names: Sequence[str]) -> None:
    """No gradients for the named parameters of `module`."""
    params = dict(module.named_parameters())
    for name in names:
        params[name].requires_grad_(False)


def build_backbone(spec: str) -> tuple[TimmBackbone | TorchvisionBackbone, int, dict]:
    """(the backbone with its stages, its input size, its normalisation) of `timm:NAME` or `torchvision:NAME`,
    randomly initialised from torch's current random state."""
    if not is_backbone_spec(spec):
        raise BackboneSpecError(f"{spec!r} is not a backbone spec: timm:NAME or torchvision:NAME")
    kind, name = spec.split(":", 1)
    model, size, norm = _build_model(kind, name)
    return (TimmBackbone(model) if kind == "timm" else TorchvisionBackbone(model, size)), size, norm
