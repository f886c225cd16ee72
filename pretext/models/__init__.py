"""Networks of the suite and builders from config or exported metadata."""

from __future__ import annotations

from torch import nn

from .alexnet import PAPER_WIDTHS, AlexNetEncoder, AlexNetSpec
from .dcgan import DCGAN_WIDTHS, DCGANEncoder
from .gated import GatedEncoder

ENCODER_ARCHS = ("alexnet", "dcgan", "gated", "backbone")


def alexnet_spec(arch: str, widths: list[int] | None, input_size: int, layout: str = "caffe", lrn: bool = False,
                 groups: bool = False) -> AlexNetSpec:
    """Spec of the paper ('alexnet') or small-image ('alexnet_small') AlexNet for an input size."""
    return AlexNetSpec(widths=tuple(widths or PAPER_WIDTHS), input_size=input_size, small=arch == "alexnet_small",
                       layout=layout, lrn=lrn, groups=groups)


def build_encoder(arch: str, spec: dict) -> nn.Module:
    """Encoder from exported metadata: arch 'alexnet' (AlexNetSpec dict), 'dcgan' (DCGANEncoder kwargs), 'gated'
    (GatedEncoder kwargs: the free-form inpainting model's coarse encoder) or 'backbone' (a timm / torchvision
    model pretrained by the context encoder or the autoencoder: {backbone: SPEC, input_size})."""
    if arch == "alexnet":
        return AlexNetEncoder(AlexNetSpec.from_dict(spec))
    if arch == "dcgan":
        unknown = set(spec) - {"input_size", "widths", "bottleneck"}
        if unknown:
            raise ValueError(f"unknown DCGAN encoder spec keys {sorted(unknown)}")
        kwargs = {**spec, "widths": tuple(spec.get("widths", DCGAN_WIDTHS))}
        return DCGANEncoder(**kwargs)
    if arch == "backbone":
        from .backbones import build_backbone

        unknown = set(spec) - {"backbone", "input_size"}
        if unknown or "backbone" not in spec:
            raise ValueError(f"a backbone encoder spec has backbone and input_size, got keys {sorted(spec)}")
        return build_backbone(spec["backbone"])[0]
    if arch == "gated":
        unknown = set(spec) - {"input_size", "cnum", "dilations"}
        if unknown:
            raise ValueError(f"unknown gated encoder spec keys {sorted(unknown)}")
        return GatedEncoder(**spec)
    raise ValueError(f"unknown encoder architecture {arch!r}; known: {', '.join(ENCODER_ARCHS)}")


def timm_name(spec: AlexNetSpec) -> str:
    """The timm model name that builds this spec (with the spec's fields as keyword arguments)."""
    if spec.small:
        return "cebench_alexnet_small"
    return "cebench_alexnet_tv" if spec.layout == "torchvision" else "cebench_alexnet"


from . import timm_models  # noqa: E402,F401  (registers the timm entries)
