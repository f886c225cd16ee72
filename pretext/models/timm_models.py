"""timm registry entries, so `timm.create_model("cebench_alexnet", checkpoint_path="encoder.safetensors")` works.

Importing `pretext.models` registers them. No weights are downloadable: load an exported encoder with
`checkpoint_path`, passing the spec fields it was trained with (see its encoder.json) as keyword arguments.
"""

from __future__ import annotations

from timm.models import register_model

from .alexnet import PAPER_WIDTHS, TORCHVISION_WIDTHS, AlexNetEncoder

# Keys timm adds for its own bookkeeping; everything else must be an AlexNetSpec field.
_TIMM_KEYS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _create(defaults: dict, pretrained: bool, kwargs: dict) -> AlexNetEncoder:
    if pretrained:
        raise ValueError("cebench encoders have no downloadable weights; pass checkpoint_path=<encoder.safetensors>")
    spec = {**defaults, **{k: v for k, v in kwargs.items() if k not in _TIMM_KEYS}}
    return AlexNetEncoder(**spec)


@register_model
def cebench_alexnet(pretrained: bool = False, **kwargs) -> AlexNetEncoder:
    """Paper AlexNet encoder (96-256-384-384-256, Caffe layout), 227 px in, pool5 256x6x6."""
    return _create({"widths": PAPER_WIDTHS, "input_size": 227}, pretrained, kwargs)


@register_model
def cebench_alexnet_tv(pretrained: bool = False, **kwargs) -> AlexNetEncoder:
    """torchvision-width AlexNet encoder (64-192-384-256-256); weights load into torchvision's alexnet().features."""
    return _create({"widths": TORCHVISION_WIDTHS, "input_size": 227, "layout": "torchvision"}, pretrained, kwargs)


@register_model
def cebench_alexnet_small(pretrained: bool = False, **kwargs) -> AlexNetEncoder:
    """Small-image AlexNet encoder (same five convs) for 32-128 px inputs; 64 px by default."""
    return _create({"widths": PAPER_WIDTHS, "input_size": 64, "small": True}, pretrained, kwargs)
