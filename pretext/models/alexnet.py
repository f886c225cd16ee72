"""AlexNet encoder (conv1..pool5) with named stages, in paper, torchvision and small-image variants, and the
fully-connected block of the heads put on it (fc6, fc7).

Parameter names follow `torchvision.models.alexnet().features` (features.0 = conv1, .3 = conv2,
.6 = conv3, .8 = conv4, .10 = conv5), so weights move between the two; optional LRN is folded into
the parameter-free slots so it never shifts those indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

STAGES = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")
# Index in `features` whose output is each stage (torchvision layout).
_STAGE_INDEX = {"conv1": 1, "pool1": 2, "conv2": 4, "pool2": 5, "conv3": 7, "conv4": 9, "conv5": 11, "pool5": 12}
PAPER_WIDTHS = (96, 256, 384, 384, 256)
TORCHVISION_WIDTHS = (64, 192, 384, 256, 256)


@dataclass(frozen=True)
class AlexNetSpec:
    """Architecture of an AlexNet encoder; serialised into exported encoder metadata."""

    widths: tuple[int, ...] = PAPER_WIDTHS
    input_size: int = 227
    small: bool = False
    lrn: bool = False
    groups: bool = False
    layout: str = "caffe"  # "caffe": conv1 without padding; "torchvision": conv1 padding 2, as torchvision

    def __post_init__(self) -> None:
        if len(self.widths) != 5 or any(int(w) <= 0 for w in self.widths):
            raise ValueError(f"AlexNet widths must be 5 positive ints, got {self.widths}")
        if self.layout not in ("caffe", "torchvision"):
            raise ValueError(f"AlexNet layout must be 'caffe' or 'torchvision', got {self.layout!r}")
        if self.small and (self.input_size < 32 or self.input_size % 32):
            raise ValueError(f"small AlexNet needs input_size a multiple of 32 (>= 32), got {self.input_size}")
        if not self.small and self.input_size < 195:
            raise ValueError(f"AlexNet needs input_size >= 195 (use small=true below that), got {self.input_size}")
        if self.groups and any(w % 2 for w in self.widths):
            raise ValueError(f"groups=true needs even widths (conv2, conv4, conv5 and their inputs), got {self.widths}")

    def to_dict(self) -> dict:
        """Plain-JSON form of the spec."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AlexNetSpec":
        """Inverse of `to_dict`; unknown keys are errors."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown AlexNet spec keys {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if "widths" in d:
            d["widths"] = tuple(int(w) for w in d["widths"])
        return cls(**d)


def _relu(lrn: bool) -> nn.Module:
    # LRN lives inside the ReLU slot (conv-relu-norm-pool as in the original AlexNet) so indices stay torchvision's.
    if not lrn:
        return nn.ReLU(inplace=True)
    return nn.Sequential(nn.ReLU(inplace=True), nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0))


def _conv1(spec: AlexNetSpec) -> nn.Conv2d:
    if spec.small:
        # 5x5 conv at stride input/32 keeps the 32 px path of the same five-conv design.
        return nn.Conv2d(3, spec.widths[0], 5, stride=spec.input_size // 32, padding=2)
    return nn.Conv2d(3, spec.widths[0], 11, stride=4, padding=2 if spec.layout == "torchvision" else 0)


def _pool(small: bool) -> nn.MaxPool2d:
    return nn.MaxPool2d(3, stride=2, padding=1) if small else nn.MaxPool2d(3, stride=2)


def build_features(spec: AlexNetSpec) -> nn.Sequential:
    """The conv1..pool5 stack with torchvision's module indices."""
    w1, w2, w3, w4, w5 = (int(w) for w in spec.widths)
    g = 2 if spec.groups else 1
    k2 = 5 if not spec.small else 3
    return nn.Sequential(
        _conv1(spec), _relu(spec.lrn), _pool(spec.small),
        nn.Conv2d(w1, w2, k2, padding=k2 // 2, groups=g), _relu(spec.lrn), _pool(spec.small),
        nn.Conv2d(w2, w3, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(w3, w4, 3, padding=1, groups=g), nn.ReLU(inplace=True),
        nn.Conv2d(w4, w5, 3, padding=1, groups=g), nn.ReLU(inplace=True),
        _pool(spec.small),
    )


class AlexNetEncoder(nn.Module):
    """AlexNet conv1..pool5; `forward(x, out=("conv3", "pool5"))` returns a dict of named stages."""

    def __init__(self, spec: AlexNetSpec | None = None, **kwargs) -> None:
        super().__init__()
        if spec is not None and kwargs:
            raise ValueError(f"pass either a spec or spec fields, not both ({sorted(kwargs)})")
        self.spec = spec if spec is not None else AlexNetSpec.from_dict(kwargs)
        self.features = build_features(self.spec)
        init_kaiming(self)

    @property
    def out_channels(self) -> int:
        """Channels of pool5."""
        return int(self.spec.widths[-1])

    def stage_layers(self, stage: str) -> list[nn.Module]:
        """The layers from the input up to and including `stage` (one of STAGES)."""
        if stage not in _STAGE_INDEX:
            raise ValueError(f"unknown stage {stage!r}; choose from {STAGES}")
        return list(self.features[: _STAGE_INDEX[stage] + 1])

    def feature_shapes(self) -> dict[str, tuple[int, int, int]]:
        """(C, H, W) of every stage for the configured input size."""
        x = torch.zeros(1, 3, self.spec.input_size, self.spec.input_size)
        with torch.no_grad():
            feats = self.forward(x, out=STAGES)
        return {k: tuple(v.shape[1:]) for k, v in feats.items()}

    def forward(self, x: torch.Tensor, out: str | Sequence[str] = "pool5") -> torch.Tensor | dict[str, torch.Tensor]:
        """Run up to the deepest requested stage; a str returns a tensor, a sequence a dict."""
        names = (out,) if isinstance(out, str) else tuple(out)
        unknown = [n for n in names if n not in _STAGE_INDEX]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; choose from {STAGES}")
        wanted = {_STAGE_INDEX[n]: n for n in names}
        feats: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.features[: max(wanted) + 1]):
            x = layer(x)
            if i in wanted:
                # Clone where a later in-place ReLU would otherwise overwrite a returned stage.
                feats[wanted[i]] = x if i == max(wanted) else x.clone()
        return feats[out] if isinstance(out, str) else feats


def fc_block(n_in: int, n_out: int, dropout: float, batch_norm: bool = False) -> nn.Sequential:
    """AlexNet's fully-connected stage: Linear -> (batch norm) -> ReLU -> (dropout)."""
    # Batch norm without scale and shift, as in Doersch et al., keeps activations varying across examples.
    layers: list[nn.Module] = [nn.Linear(n_in, n_out)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(n_out, affine=False))
    layers.append(nn.ReLU(inplace=True))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def init_gaussian(module: nn.Module, std: float = 0.01) -> None:
    """Gaussian N(0, std) weights and zero biases for every conv/linear layer (the 'random Gaussian' baseline)."""
    gen_modules = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    for m in module.modules():
        if isinstance(m, gen_modules):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_kaiming(module: nn.Module) -> None:
    """He-normal weights and zero biases, the default for training from scratch with Adam."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
