"""timm registry entries, so `timm.create_model("cebench_alexnet", checkpoint_path="encoder.safetensors")` works.

Importing `pretext.models` registers them. No weights are downloadable: load an exported encoder with
`checkpoint_path`, passing the spec fields it was trained with (see its encoder.json) as keyword arguments.
Each model carries a `pretrained_cfg` with the preprocessing the suite trains with (its input size, mean and std
0.5: pixels / 255 mapped to [-1, 1]; bilinear resize), so `timm.data.resolve_data_config(model=m)` and
`timm.data.create_transform` give an exported encoder the inputs it was trained on.
"""

from __future__ import annotations

from timm.models import generate_default_cfgs, register_model, resolve_pretrained_cfg

from .alexnet import PAPER_WIDTHS, TORCHVISION_WIDTHS, AlexNetEncoder

# Keys timm adds for its own bookkeeping; everything else must be an AlexNetSpec field.
_TIMM_KEYS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
MEAN = STD = (0.5, 0.5, 0.5)  # pretext.export.NORMALIZATION (a test keeps them equal)


def _cfg(size: int) -> dict:
    return {"input_size": (3, size, size), "mean": MEAN, "std": STD, "interpolation": "bilinear", "crop_pct": 1.0,
            "num_classes": 0, "first_conv": "features.0", "classifier": ""}


default_cfgs = generate_default_cfgs({"cebench_alexnet": _cfg(227), "cebench_alexnet_tv": _cfg(227),
                                      "cebench_alexnet_small": _cfg(64)})


def _create(name: str, defaults: dict, pretrained: bool, kwargs: dict) -> AlexNetEncoder:
    if pretrained:
        raise ValueError("cebench encoders have no downloadable weights; pass checkpoint_path=<encoder.safetensors>")
    spec = {**defaults, **{k: v for k, v in kwargs.items() if k not in _TIMM_KEYS}}
    model = AlexNetEncoder(**spec)
    cfg = resolve_pretrained_cfg(name, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay")).to_dict()
    size = int(spec["input_size"])
    model.pretrained_cfg = {**cfg, "input_size": (3, size, size)}  # the spec's size, where a kwarg changed it
    return model


@register_model
def cebench_alexnet(pretrained: bool = False, **kwargs) -> AlexNetEncoder:
    """Paper AlexNet encoder (96-256-384-384-256, Caffe layout), 227 px in, pool5 256x6x6."""
    return _create("cebench_alexnet", {"widths": PAPER_WIDTHS, "input_size": 227}, pretrained, kwargs)


@register_model
def cebench_alexnet_tv(pretrained: bool = False, **kwargs) -> AlexNetEncoder:
    """torchvision-width AlexNet encoder (64-192-384-256-256); weights load into torchvision's alexnet().features."""
    return _create("cebench_alexnet_tv", {"widths": TORCHVISION_WIDTHS, "input_size": 227, "layout": "torchvision"},
                   pretrained, kwargs)


@register_model
def cebench_alexnet_small(pretrained: bool = False, **kwargs) -> AlexNetEncoder:
    """Small-image AlexNet encoder (same five convs) for 32-128 px inputs; 64 px by default."""
    return _create("cebench_alexnet_small", {"widths": PAPER_WIDTHS, "input_size": 64, "small": True}, pretrained,
                   kwargs)
