"""Typed pretraining configuration: dataclass sections, YAML presets, `key=value` overrides, strict validation."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key and the problem."""


def _opt(default: Any, *, choices: tuple | None = None, min: float | None = None, max: float | None = None,
         doc: str = "") -> Any:
    meta = {"choices": choices, "min": min, "max": max, "doc": doc}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    """Unlabelled images and their augmentation."""

    root: str | None = _opt(None, doc="image folder, ImageFolder tree, VOC root or list file; null = built-in demo data")
    source: str = _opt("auto", choices=("auto", "folder", "imagefolder", "voc", "list"))
    split: str = _opt("trainval", doc="VOC split list (ImageSets/Main/<split>.txt)")
    load_size: int = _opt(72, min=8, doc="shorter side after resizing")
    fine_size: int = _opt(64, min=8, doc="random square crop")
    flip: bool = _opt(True)
    on_bad_image: str = _opt("error", choices=("error", "skip"))
    workers: int = _opt(2, min=0)
    mean: list[float] | None = _opt(None, doc="RGB fill mean in [0,1]; null = estimated from the data")
    mean_images: int = _opt(256, min=1, doc="images used to estimate the dataset mean")
    max_image_pixels: int = _opt(89_478_485, min=1, doc="refuse larger images (decompression bombs)")
    demo_dir: str | None = _opt(None, doc="where the demo data lives; null = ~/.cache/cebench/demo")
    demo_images: int = _opt(3000, min=8)
    holdout: int = _opt(0, min=0, doc="images held out of training for the method's validation metrics")


@dataclass
class ModelConfig:
    """Encoder and decoder architecture."""

    arch: str = _opt("alexnet_small", choices=("alexnet", "alexnet_small", "dcgan", "gated"),
                     doc="gated = the free-form inpainting generator (method=gated_inpainting)")
    backbone: str | None = _opt(None, doc="timm:NAME or torchvision:NAME (e.g. timm:resnet18): the encoder of the "
                                          "context encoder or the autoencoder instead of model.arch's AlexNet, "
                                          "randomly initialised; its deepest stage feeds the channel-wise FC (model.widths, layout, lrn "
                                          "and groups, the AlexNet's, are then unused)")
    widths: list[int] | None = _opt(None, min=1, doc="encoder widths; null = the architecture's default")
    layout: str = _opt("caffe", choices=("caffe", "torchvision"))
    lrn: bool = _opt(False)
    groups: bool = _opt(False)
    output: str = _opt("full", choices=("full", "center"), doc="predict the whole image or the central quarter")
    decoder_widths: list[int] = _opt([128, 64, 64, 32], min=1, doc="channels of the first four up-convolutions")
    decoder_norm: str = _opt("none", choices=("none", "batch"))
    dropout: float = _opt(0.5, min=0.0, max=0.99, doc="dropout of the context encoder's bottleneck and of the fc "
                                                         "heads (context prediction, supervised)")
    bottleneck: int = _opt(4000, min=1, doc="DCGAN bottleneck units")
    disc_widths: list[int] = _opt([64, 128, 256, 512], min=1, doc="discriminator widths (DCGAN, or SN-PatchGAN's "
                                                                   "5x5 stride-2 convolutions for arch=gated)")
    cnum: int = _opt(48, min=2, doc="arch=gated: base width c (the 1/4-resolution layers have 4c channels)")
    dilations: list[int] = _opt([2, 4, 8, 16], min=1, doc="arch=gated: dilation rates of the dilated gated convolutions")
    attention: bool = _opt(True, doc="arch=gated: the refinement's contextual-attention branch (false = ablation)")
    attention_rate: int = _opt(2, min=1, doc="arch=gated: attention matches on features downsampled by this factor")
    attention_fuse: int = _opt(3, min=1, doc="arch=gated: attention propagation kernel size (1 = none)")
    attention_scale: float = _opt(10.0, min=0.0, doc="arch=gated: softmax scale of the cosine similarities")
    init: str = _opt("gaussian", choices=("gaussian", "data_dependent"), doc="method=random: Gaussian or Krahenbuhl et al.")
    init_std: float = _opt(0.01, min=0.0, doc="method=random: std of the Gaussian weights")


@dataclass
class MaskConfig:
    """Hole shapes (see pretext.masks)."""

    kind: str = _opt("region", choices=("central", "block", "region", "freeform", "mixed"),
                     doc="freeform = random brush strokes (Yu et al. 2019); mixed = a kind of `mix` per image")
    overlap: int = _opt(4, min=0, doc="width of the known ring predicted with extra loss weight")
    overlap_weight: float = _opt(10.0, min=0.0)
    max_coverage: float = _opt(0.25, min=0.0, max=1.0)
    min_coverage: float = _opt(0.05, min=0.0, max=1.0)
    max_blocks: int = _opt(6, min=1)
    region_bank: str | None = _opt(None, doc="VOC root or PNG folder of segmentation masks; 'data' = the training "
                                               "data's SegmentationObject masks if it has them, else blobs; null = blobs")
    deform: float = _opt(0.15, min=0.0)
    strokes: int = _opt(4, min=1, doc="freeform: at most this many strokes per image")
    vertices: list[int] = _opt([4, 12], min=1, doc="freeform: min and max segments per stroke (vertices = segments + 1)")
    brush_width: list[float] = _opt([12 / 256, 40 / 256], min=0.0, max=1.0,
                                    doc="freeform: min and max brush width, fractions of the image side")
    mix: list[str] = _opt(["central", "region", "freeform"], doc="mixed: the kinds drawn from, uniformly per image")


@dataclass
class LossConfig:
    """Reconstruction and adversarial loss."""

    reconstruction: str = _opt("l2", choices=("l2", "l1"))
    adversarial_weight: float = _opt(0.0, min=0.0, max=1.0, doc="joint loss (1-w)*rec + w*adv; paper: 0.001")


@dataclass
class ContextConfig:
    """Context prediction (Doersch et al. 2015): the 3x3 patch grid and the relative-position classifier."""

    gap_ratio: float = _opt(0.5, min=0.0, max=2.0, doc="gap between patches / patch side (paper: 48/96)")
    jitter_ratio: float = _opt(7 / 96, min=0.0, max=0.5, doc="max jitter per axis / patch side (paper: 7/96)")
    chroma: str = _opt("drop", choices=("drop", "project", "none"),
                       doc="chromatic-aberration guard: keep one channel + noise, or project out green-magenta")
    drop_noise: float = _opt(0.01, min=0.0, doc="std of the noise in dropped channels / std of the kept channel")
    normalize: bool = _opt(True, doc="subtract each patch's channel means and divide by its std")
    patch_input: int | None = _opt(None, min=8, doc="side each patch is resized to for the encoder; null = patch side")
    fc_widths: list[int] = _opt([4096, 4096], min=1, doc="fc6 (per patch) and fc7 (on the pair) widths")
    head_norm: str = _opt("batch", choices=("none", "batch"), doc="batch norm without scale/shift after fc6, fc7")

    def geometry(self, grid_size: int) -> tuple[int, int, int]:
        """(patch side, gap, max jitter) in pixels for a `grid_size` crop: the jittered 3x3 grid fits inside."""
        patch = int(grid_size / (3 + 2 * self.gap_ratio + 2 * self.jitter_ratio)) + 1
        while True:  # rounding the gap and jitter may overflow the crop by a pixel: shrink the patch
            gap, jitter = round(self.gap_ratio * patch), round(self.jitter_ratio * patch)
            if 3 * patch + 2 * gap + 2 * jitter <= grid_size or patch <= 1:
                return patch, gap, jitter
            patch -= 1

    def input_size(self, grid_size: int) -> int:
        """Encoder input side: `patch_input`, or the patch side itself."""
        return self.patch_input if self.patch_input is not None else self.geometry(grid_size)[0]


@dataclass
class SupervisedConfig:
    """The supervised reference (method=supervised): the pretraining data's class labels through fc6-fc7-fc8."""

    fc_widths: list[int] = _opt([4096, 4096], min=1, doc="fc6 and fc7 widths (fc8: one output per class)")


@dataclass
class OptimConfig:
    """Adam settings."""

    lr: float = _opt(1e-3, min=0.0)
    lr_disc: float | None = _opt(None, doc="discriminator lr; null = lr / 10 as in the original code")
    beta1: float = _opt(0.5, min=0.0, max=1.0)
    beta2: float = _opt(0.999, min=0.0, max=1.0)
    weight_decay: float = _opt(0.0, min=0.0)
    grad_clip: float = _opt(0.0, min=0.0, doc="max gradient norm; 0 = off")


@dataclass
class TrainConfig:
    """Loop, devices, precision and outputs."""

    max_steps: int = _opt(1000, min=0)
    batch_size: int = _opt(64, min=1, doc="per process")
    seed: int = _opt(0, min=0)
    device: str = _opt("auto", doc="auto, cpu, cuda or cuda:N")
    precision: str = _opt("fp32", choices=("fp32", "bf16", "fp16", "auto"),
                          doc="auto = bf16 where the hardware has it natively (AVX512-BF16 / AMX CPUs, bf16 GPUs), "
                              "fp32 elsewhere; the run records what it used")
    channels_last: bool = _opt(True, doc="inputs in NHWC: oneDNN and cuDNN's fast convolution and pooling paths "
                                          "(CPU max-pooling is 10-20x slower in NCHW); false = the plain layout")
    compile: bool = _opt(False)
    fast_kernels: bool = _opt(True, doc="whole-input convolutions as matrix products and fused Adam (same results); "
                                        "false = plain PyTorch modules, the speed benchmark's reference")
    deterministic: bool = _opt(False, doc="torch.use_deterministic_algorithms")
    ckpt_every: int = _opt(500, min=1)
    log_every: int = _opt(10, min=1)
    sample_every: int = _opt(500, min=1)
    keep_checkpoints: int = _opt(0, min=0, doc="step-numbered checkpoints kept besides checkpoint.pt")
    resume: bool = _opt(False)
    ddp_timeout_s: int = _opt(600, min=1)
    progress: bool = _opt(True)
    eval_every: int = _opt(0, min=0, doc="validate on the held-out images every N steps (and at the end); 0 = end only")
    eval_batches: int = _opt(4, min=1, doc="held-out batches per validation")


class ConfigRoot:
    """What every root config (pretraining, fine-tuning) shares: dict form, hash, building and validation."""

    def to_dict(self) -> dict:
        """Plain nested dict (YAML/JSON safe)."""
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Short stable hash of the whole config."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def check(self) -> None:
        """Per-field ranges and choices; subclasses add the rules that tie fields together."""
        check_fields(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "ConfigRoot":
        """Build and validate from a nested dict; unknown keys are errors."""
        cfg = _build(cls, d, where)
        cfg.check()
        return cfg


@dataclass
class PretrainConfig(ConfigRoot):
    """Everything `cebench pretrain` needs."""

    method: str = _opt("context_encoder", choices=("context_encoder", "autoencoder", "context_prediction", "random",
                                                   "gated_inpainting", "supervised"))
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def encoder_input_size(self) -> int:
        """Side of the encoder's input: the crop, or for context prediction the (resized) patch."""
        if self.method == "context_prediction":
            return self.context.input_size(self.data.fine_size)
        return self.data.fine_size

    def check(self) -> None:
        """Per-field ranges and choices, then the rules that tie fields together."""
        validate(self)


def with_defaults(old: dict, defaults: dict) -> dict:
    """A stored config (a checkpoint's) completed from `defaults`: the sections and keys added since it was written
    had their default values then, so a resume compares what the runs set, not which code wrote them."""
    merged = {**defaults, **old}
    return {s: ({**defaults[s], **v} if isinstance(v, dict) and isinstance(defaults.get(s), dict) else v)
            for s, v in merged.items()}


def _sections(root: type | None = None) -> dict[str, type]:
    """Section name -> dataclass of a root config class (PretrainConfig by default)."""
    root = root or PretrainConfig
    return {f.name: _hint(root, f.name) for f in dataclasses.fields(root) if dataclasses.is_dataclass(_hint(root, f.name))}


def _hint(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(known))}"
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


def _build(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key not in fields:
            raise _unknown(str(key), list(fields), where)
        hint = _hint(cls, key)
        path = f"{where}.{key}" if where != "config" else key
        kwargs[key] = _build(hint, value, path) if dataclasses.is_dataclass(hint) else _coerce(value, hint, path)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against a type hint, converting int->float and tuple->list only."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float:
        return _to_float(value, key)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _to_float(value: Any, key: str) -> float:
    # YAML 1.1 reads `1e-3` (no dot) as a string, so numeric strings are accepted here.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None


def _check_field(obj: Any, f: dataclasses.Field, where: str) -> None:
    value, meta = getattr(obj, f.name), f.metadata
    key = f"{where}.{f.name}"
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, meta['choices']))}")
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if meta.get("min") is not None and v < meta["min"]:
                raise ConfigError(f"{key}: {v!r} is below the minimum {meta['min']}")
            if meta.get("max") is not None and v > meta["max"]:
                raise ConfigError(f"{key}: {v!r} is above the maximum {meta['max']}")


def check_fields(cfg: Any) -> None:
    """Per-field ranges and choices of any root config (sections and top-level fields)."""
    sections = _sections(type(cfg))
    for name in sections:
        section = getattr(cfg, name)
        for f in dataclasses.fields(section):
            _check_field(section, f, name)
    for f in dataclasses.fields(cfg):
        if f.name not in sections:
            _check_field(cfg, f, "config")


def validate(cfg: PretrainConfig) -> None:
    """Per-field ranges and choices, then the rules that tie fields together."""
    check_fields(cfg)
    _validate_cross(cfg)


def _validate_cross(cfg: PretrainConfig) -> None:
    d, m, k = cfg.data, cfg.model, cfg.mask
    if d.load_size < d.fine_size:
        raise ConfigError(f"data.load_size ({d.load_size}) must be >= data.fine_size ({d.fine_size})")
    if k.min_coverage > k.max_coverage:
        raise ConfigError(f"mask.min_coverage ({k.min_coverage}) must be <= mask.max_coverage ({k.max_coverage})")
    if d.mean is not None and (len(d.mean) != 3 or not all(0 <= v <= 1 for v in d.mean)):
        raise ConfigError(f"data.mean must be 3 values in [0, 1], got {d.mean}")
    if m.output == "center" and k.kind != "central":
        raise ConfigError("model.output=center predicts only the central quarter: it needs mask.kind=central")
    _validate_gated(cfg)
    if m.arch == "dcgan" and (d.fine_size < 32 or d.fine_size & (d.fine_size - 1)):
        raise ConfigError(f"model.arch=dcgan needs data.fine_size a power of two >= 32, got {d.fine_size}")
    _validate_encoder_input(cfg)
    _validate_backbone(cfg)
    if m.widths is not None and m.arch != "dcgan" and len(m.widths) != 5:
        raise ConfigError(f"model.widths must list 5 conv widths for {m.arch}, got {m.widths}")
    if len(m.decoder_widths) != 4:
        raise ConfigError(f"model.decoder_widths must list 4 widths, got {m.decoder_widths}")
    if cfg.method == "random" and cfg.train.max_steps != 0:
        raise ConfigError(f"method=random is not trained: train.max_steps must be 0, got {cfg.train.max_steps}")
    check_device(cfg.train.device)


def _validate_backbone(cfg: PretrainConfig) -> None:
    m = cfg.model
    if m.backbone is None:
        return
    from .models.backbones import is_backbone_spec

    if not is_backbone_spec(m.backbone):
        raise ConfigError(f"model.backbone must be timm:NAME or torchvision:NAME, got {m.backbone!r}")
    if cfg.method not in ("context_encoder", "autoencoder") or m.arch in ("dcgan", "gated"):
        raise ConfigError(f"model.backbone is the encoder of the context encoder and the autoencoder (model.arch "
                          f"alexnet or alexnet_small, replaced), not of method={cfg.method} with model.arch={m.arch}")


def _validate_gated(cfg: PretrainConfig) -> None:
    m, k = cfg.model, cfg.mask
    if (cfg.method == "gated_inpainting") != (m.arch == "gated"):
        raise ConfigError(f"method=gated_inpainting and model.arch=gated go together, got method={cfg.method} with "
                          f"model.arch={m.arch}")
    if len(k.vertices) != 2 or k.vertices[0] > k.vertices[1]:
        raise ConfigError(f"mask.vertices must be [min, max] with min <= max, got {k.vertices}")
    if len(k.brush_width) != 2 or not 0 < k.brush_width[0] <= k.brush_width[1]:
        raise ConfigError(f"mask.brush_width must be [min, max] with 0 < min <= max <= 1, got {k.brush_width}")
    known = ("central", "block", "region", "freeform")
    if not k.mix or any(kind not in known for kind in k.mix) or len(set(k.mix)) != len(k.mix):
        raise ConfigError(f"mask.mix must list distinct kinds among {', '.join(known)}, got {k.mix}")
    if m.arch != "gated":
        return
    if not m.dilations or not m.disc_widths:
        raise ConfigError(f"model.dilations and model.disc_widths must each list at least one value, got "
                          f"{m.dilations} and {m.disc_widths}")
    if m.attention_rate > 1 and m.attention_rate % 2:
        raise ConfigError(f"model.attention_rate must be 1 or even (the pasted patches are 2 x rate wide, stride "
                          f"rate), got {m.attention_rate}")
    if m.attention_fuse % 2 == 0:
        raise ConfigError(f"model.attention_fuse must be odd (a centred propagation kernel), got {m.attention_fuse}")
    side = 4 * m.attention_rate if m.attention else 4
    if cfg.data.fine_size % side:
        raise ConfigError(f"model.arch=gated needs data.fine_size a multiple of {side} (4 x model.attention_rate), "
                          f"got {cfg.data.fine_size}")
    if m.output != "full":
        raise ConfigError("model.arch=gated predicts the whole image: model.output must be full")
    if m.attention_scale <= 0:
        raise ConfigError(f"model.attention_scale must be > 0, got {m.attention_scale}")


def check_device(device: str, key: str = "train.device") -> None:
    """auto, cpu, cuda or cuda:N."""
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"{key}: {device!r} is not auto, cpu, cuda or cuda:N")


def _validate_encoder_input(cfg: PretrainConfig) -> None:
    m, size = cfg.model, cfg.encoder_input_size()
    key = "data.fine_size"
    if cfg.method == "context_prediction":
        key = "context.patch_input (or the patch side it defaults to)"
        _validate_context(cfg)
    if cfg.method == "supervised":
        _validate_head(cfg, "classifies images with AlexNet's fc6-fc7-fc8", "supervised.fc_widths",
                       cfg.supervised.fc_widths)
    if m.backbone:  # the AlexNet's size rules do not apply; the backbone's own show when it is built
        return
    if m.arch == "alexnet_small" and size % 32:
        raise ConfigError(f"model.arch=alexnet_small needs {key} a multiple of 32, got {size}")
    if m.arch == "alexnet" and size < 195:
        raise ConfigError(f"model.arch=alexnet needs {key} >= 195 (227 in the paper), got {size}")


def _validate_context(cfg: PretrainConfig) -> None:
    c = cfg.context
    _validate_head(cfg, "runs an AlexNet tower per patch", "context.fc_widths", c.fc_widths)
    patch = c.geometry(cfg.data.fine_size)[0]
    if patch < 4:
        raise ConfigError(f"data.fine_size={cfg.data.fine_size} leaves {patch} px patches for the 3x3 grid "
                          f"(gap_ratio {c.gap_ratio}, jitter_ratio {c.jitter_ratio}); use a larger crop")


def _validate_head(cfg: PretrainConfig, what: str, key: str, fc_widths: list[int]) -> None:
    """A method with an fc6-fc7 head on the AlexNet encoder: `what` it does with it, `key` of its widths."""
    if cfg.model.arch == "dcgan":
        raise ConfigError(f"method={cfg.method} {what}: use model.arch=alexnet or alexnet_small")
    if len(fc_widths) != 2:
        raise ConfigError(f"{key} must list 2 widths (fc6, fc7), got {fc_widths}")


PRESET_DIR = "presets"


def preset_names(package: str = "pretext", folder: str = PRESET_DIR) -> list[str]:
    """Names of the YAML presets shipped in a package's presets/ (or `folder`) folder."""
    files = resources.files(package).joinpath(folder).iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".yaml"))


def _read_yaml(path: Path | Any, where: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load_raw(name_or_path: str, _seen: tuple = (), package: str = "pretext", folder: str = PRESET_DIR) -> dict:
    """Nested dict of a preset name (of `package`/`folder`) or YAML file, following `base:` (a preset or file)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        raw, where = _read_yaml(path, str(path)), str(path)
    elif name_or_path in preset_names(package, folder):
        res = resources.files(package).joinpath(folder, f"{name_or_path}.yaml")
        raw, where = _read_yaml(res, f"preset {name_or_path}"), f"preset {name_or_path}"
    else:
        raise ConfigError(f"{name_or_path!r} is neither a preset ({', '.join(preset_names(package, folder))}) "
                          f"nor a .yaml file")
    base = raw.pop("base", None)
    if base is None:
        return raw
    base = str(base)
    if Path(base).suffix in (".yaml", ".yml") and not Path(base).is_absolute() and path.suffix in (".yaml", ".yml"):
        base = str(path.parent / base)  # relative to the file that names it
    if base in _seen or base == name_or_path:
        raise ConfigError(f"{where}: circular base {base!r}")
    return deep_merge(load_raw(base, _seen + (name_or_path,), package, folder), raw)


def deep_merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base`, recursively for mappings."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve_key(key: str, root: type | None = None) -> tuple[str, ...]:
    """'train.max_steps' or an unambiguous leaf name like 'max_steps' -> path tuple."""
    sections = _sections(root)
    top = [f.name for f in dataclasses.fields(root or PretrainConfig) if f.name not in sections]
    parts = tuple(key.split("."))
    if len(parts) == 2 and parts[0] in sections:
        leaves = [f.name for f in dataclasses.fields(sections[parts[0]])]
        if parts[1] not in leaves:
            raise _unknown(parts[1], leaves, parts[0])
        return parts
    if len(parts) == 1 and parts[0] in top:
        return parts
    if len(parts) == 1:
        owners = [s for s, cls in sections.items() if parts[0] in {f.name for f in dataclasses.fields(cls)}]
        if len(owners) == 1:
            return owners[0], parts[0]
        if len(owners) > 1:
            raise ConfigError(f"override {key!r} is ambiguous; write one of {', '.join(o + '.' + key for o in owners)}")
    every = top + [f"{s}.{f.name}" for s, cls in sections.items() for f in dataclasses.fields(cls)]
    raise _unknown(key, every, "override")


def apply_overrides(raw: dict, overrides: list[str], root: type | None = None,
                    resolve: Callable[[str], tuple[str, ...]] | None = None) -> dict:
    """Apply `key=value` strings (values parsed as YAML scalars/lists) to a copy of a nested dict. Keys are
    resolved against the root config class `root` (PretrainConfig), or by `resolve` (key -> path)."""
    out = copy.deepcopy(raw)
    resolve = resolve or (lambda key: _resolve_key(key, root))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse value: {exc}") from exc
        path = resolve(key.strip())
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[path[-1]] = value
    return out


def load_config(name_or_path: str, overrides: list[str] | None = None) -> PretrainConfig:
    """Preset or YAML file + overrides -> validated config."""
    raw = apply_overrides(load_raw(name_or_path), list(overrides or []))
    return PretrainConfig.from_dict(raw)


def describe(root: type | None = None) -> str:
    """Every key with its default and documentation, for `--help-config`."""
    lines = []
    root = root or PretrainConfig
    for f in dataclasses.fields(root):
        hint = _hint(root, f.name)
        if not dataclasses.is_dataclass(hint):
            lines.append(f"{f.name} = {f.default!r}  {_doc(f)}")
            continue
        for g in dataclasses.fields(hint):
            default = g.default if g.default is not dataclasses.MISSING else g.default_factory()
            lines.append(f"{f.name}.{g.name} = {default!r}  {_doc(g)}")
    return "\n".join(lines)


def _doc(f: dataclasses.Field) -> str:
    bits = []
    if f.metadata.get("choices"):
        bits.append("one of " + "|".join(map(str, f.metadata["choices"])))
    if f.metadata.get("doc"):
        bits.append(f.metadata["doc"])
    return ("# " + "; ".join(bits)) if bits else ""
