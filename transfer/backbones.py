"""Any backbone as an encoder of the transfer tasks: a module with named stages (`forward(x, out=STAGE)`), its input
size and normalisation, from a spec string.

- a run directory, `encoder.json` or `encoder.safetensors`: the suite's own exported encoders (pretext.export), or
  a backbone's record (`write_backbone_record`: a suite's backbone row, with its weights file and seed);
- `timm:NAME`: a timm model (no download: random init, or `--weights FILE`), stages = its `feature_info` modules
  (e.g. resnet18: act1, layer1 ... layer4; a ViT: blocks.0 ... blocks.11), computed by `forward_intermediates`;
- `torchvision:NAME`: a torchvision classification model (random init, or `--weights FILE`), stages = the top-level
  modules (or those of `features`) whose output is a feature map.

`--weights` takes a state dict saved by any trainer (safetensors, or a torch checkpoint read with
weights_only=True): nested under state_dict / model / teacher / student (DINO: the teacher) / VISSL's
classy_state_dict; prefixes such as `module.`, `backbone.`, `encoder.`, `model.`, `encoder_q.`, `_orig_mod.` are
stripped where stripping makes more keys match; projector, predictor, prototype, momentum, EMA and classifier keys are
ignored and listed; anything else that does not fit is an error listing the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import torch
from torch import nn

from pretext.engine.checkpoint import atomic_write_text
from pretext.export import EncoderLoadError, load_encoder, sha256_file
from pretext.models.backbones import BackboneSpecError, build_backbone, is_backbone_spec

# Containers a checkpoint may nest its weights in, most preferred first (DINO: the teacher is the eval model).
NESTS = ("state_dict", "model", "teacher", "target_encoder", "student", "network", "classy_state_dict", "base_model",
         "trunk", "model_state")
WRAPPERS = ("module.", "_orig_mod.", "model.", "net.")  # DDP, torch.compile and generic wrappers
# Prefixes naming the backbone inside a training model: once one is stripped, every key outside it is the trainer's
# (heads, losses, momentum copies) and is ignored and listed.
BACKBONE_PREFIXES = ("backbone.", "encoder_q.", "base_encoder.", "encoder.", "trunk.", "_feature_blocks.")
PREFIXES = WRAPPERS + BACKBONE_PREFIXES
# First name components of keys that belong to a training-time head or a momentum / EMA copy, not the backbone.
IGNORED = ("projector", "projection", "projection_head", "prediction_head", "predictor", "prototypes", "head",
           "heads", "fc", "classifier", "momentum_backbone", "momentum_encoder", "momentum_projector", "encoder_k",
           "ema", "ema_model", "teacher", "target_encoder", "queue", "queue_ptr", "center", "loss")
# A backbone's own keys that a feature extractor never uses, so a file may leave them out.
UNUSED = ("fc.", "head.", "classifier.", "avgpool.", "head_drop.", "fc_norm.")


class BackboneError(EncoderLoadError):
    """A backbone spec, a model name or a weights file that cannot be used."""


# ---- weights of other trainers ------------------------------------------------------------------------------------

def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unnested (see NESTS); BackboneError naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        else:
            import argparse

            # trainers store their arguments beside the weights (DINO: an argparse.Namespace): harmless to read
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise BackboneError(f"{path}: not a readable weights file ({str(exc).splitlines()[0]})") from exc
        unsupported = next((line.strip() for line in str(exc).splitlines() if "Unsupported global" in line), "")
        raise BackboneError(f"{path}: holds Python objects other than tensors, which a weights_only load refuses "
                            f"({unsupported}); save its state dict alone, e.g. torch.save(torch.load("
                            f"PATH, weights_only=False)['state_dict'], 'weights.pth') for a file you trust") from exc
    except Exception as exc:  # zip and safetensors errors differ by version: name the file either way
        raise BackboneError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from exc
    seen = []
    while isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        key = next((k for k in NESTS if isinstance(obj.get(k), dict)), None)
        if key is None:
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:
                return tensors
            raise BackboneError(f"{path}: no tensors found (top-level keys: {sorted(map(str, obj))[:12]})")
        seen.append(key)
        obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise BackboneError(f"{path}: no state dict found" + (f" under {'/'.join(seen)}" if seen else ""))
    return dict(obj)


def _strip(keys: dict[str, torch.Tensor], model_keys: set[str]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Strip PREFIXES from every key that has them, one at a time, while it makes more keys match the model, or
    every key carries the prefix (a wrapper's, such as DDP's `module.` in front of `backbone.`) and stripping it
    loses no match. Returns the keys and those left outside a stripped BACKBONE_PREFIXES prefix."""
    def score(names: list[str]) -> int:
        return sum(n in model_keys for n in names)

    names, outside = list(keys), [False] * len(keys)
    improved = True
    while improved:
        improved = False
        for prefix in PREFIXES:
            stripped = [n[len(prefix):] if n.startswith(prefix) else n for n in names]
            if len(set(stripped)) != len(stripped):  # two keys would collide: not this prefix
                continue
            wrapper = all(n.startswith(prefix) for n in names)
            if score(stripped) > score(names) or (wrapper and score(stripped) >= score(names)):
                if prefix in BACKBONE_PREFIXES:
                    outside = [o or not n.startswith(prefix) for n, o in zip(names, outside)]
                names, improved = stripped, True
    values = list(keys.values())
    return dict(zip(names, values)), {n for n, o in zip(names, outside) if o}


def load_backbone_weights(model: nn.Module, path: Path) -> dict:
    """Load a trainer's weights file into `model`; returns {"loaded": n, "ignored": [keys]}. BackboneError listing
    missing, unexpected and mis-shaped keys when the file does not fit."""
    own = model.state_dict()
    keys, outside = _strip(read_state_dict(path), set(own))
    # a classifier of another size (MoCo v1's 128-d fc, a Places365 head) is as unused as an absent one
    misfit_head = {k for k, v in keys.items() if k in own and k.startswith(UNUSED) and v.shape != own[k].shape}
    ignored = sorted(k for k in keys if (k not in own and (k.split(".")[0] in IGNORED or k in outside))
                     or k in misfit_head)
    unexpected = sorted(k for k in keys if k not in own and k not in ignored)
    missing = sorted(k for k in own if k not in keys and not k.startswith(UNUSED)
                     and not k.endswith("num_batches_tracked"))
    shapes = sorted(f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}" for k, v in keys.items()
                    if k in own and k not in misfit_head and v.shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing ({', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''})" if missing
                 else "", f"{len(unexpected)} unexpected ({', '.join(unexpected[:8])}"
                 f"{' ...' if len(unexpected) > 8 else ''})" if unexpected else "",
                 f"mis-shaped: {'; '.join(shapes[:8])}" if shapes else ""]
        raise BackboneError(f"{path}: the weights do not fit {type(model).__name__}: "
                            + "; ".join(p for p in parts if p))
    usable = {k: v for k, v in keys.items() if k in own and k not in misfit_head}
    model.load_state_dict(usable, strict=False)
    return {"loaded": len(usable), "ignored": ignored}


# ---- specs --------------------------------------------------------------------------------------------------------

def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


def open_backbone(spec: str, weights: Path | None = None, seed: int = 0) -> tuple[nn.Module, dict]:
    """(module with `stages` and `forward(x, out=STAGE)`, metadata as pretext.export's) for `timm:NAME` or
    `torchvision:NAME`; random init from `seed` unless `weights` is given."""
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's random state
        torch.manual_seed(seed)
        try:
            backbone, size, norm = build_backbone(spec)
        except BackboneSpecError as exc:
            raise BackboneError(str(exc)) from None
    loaded = load_backbone_weights(backbone.model, Path(weights)) if weights is not None else None
    versions = f"timm {_version('timm')}, torchvision {_version('torchvision')}"
    source = f"weights {sha256_file(Path(weights))}" if weights is not None else f"random init, seed {seed}, {versions}"
    identity = hashlib.sha256(f"{spec} {source}".encode()).hexdigest()  # the feature cache's key
    meta = {"format": "external", "arch": spec, "method": "external", "input_size": size, "normalization": norm,
            "sha256": identity, "weights": str(weights) if weights is not None else None,
            "stages": {s: {"channels": backbone.channels[s], "stride": backbone.strides[s]} for s in backbone.stages},
            "ignored_keys": loaded["ignored"] if loaded else []}
    return backbone.eval(), meta


BACKBONE_RECORD = "backbone"  # encoder.json's format for a backbone named by spec (a suite's backbone row)


def write_backbone_record(run_dir: Path, spec: str, weights: Path | None, seed: int) -> dict:
    """run_dir/encoder.json naming a backbone, its weights file and the seed of its random init, so that a run
    directory stands for it wherever the transfer tasks take one; the model is built once here to check it."""
    _, meta = open_backbone(spec, weights, seed)
    record = {"format": BACKBONE_RECORD, "backbone": spec, "weights": str(Path(weights).resolve()) if weights else None,
              "seed": seed, "arch": spec, "method": "backbone", "input_size": meta["input_size"],
              "normalization": meta["normalization"], "sha256": meta["sha256"]}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "encoder.json", json.dumps(record, indent=2) + "\n")
    return record


def _backbone_record(spec: str | Path) -> dict | None:
    """The backbone record at a run directory or encoder.json, or None for anything else."""
    path = Path(spec)
    path = path / "encoder.json" if path.is_dir() else path
    if path.name != "encoder.json" or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # load_encoder reports it
    return record if isinstance(record, dict) and record.get("format") == BACKBONE_RECORD else None


def open_encoder(spec: str | Path, weights: Path | None = None) -> tuple[nn.Module, dict]:
    """Any encoder the transfer tasks take: a run directory / encoder.json (the suite's exported encoders, or a
    backbone record), or a backbone spec."""
    if is_backbone_spec(str(spec)):
        return open_backbone(str(spec), weights)
    if weights is not None:
        raise BackboneError(f"--weights is for timm:NAME / torchvision:NAME encoders; {spec} carries its own")
    record = _backbone_record(spec)
    if record is not None:
        try:
            return open_backbone(record["backbone"], record["weights"], int(record["seed"]))
        except KeyError as exc:
            raise BackboneError(f"{spec}: backbone record without {exc}") from None
    return load_encoder(spec)


def eval_norms(module: nn.Module) -> None:
    """Batch-norm layers of `module` to eval mode: they normalise with their running statistics and keep them."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def encoder_stages(encoder: nn.Module) -> tuple[str, ...]:
    """The stages `encoder(x, out=STAGE)` gives, shallowest first: a backbone's, or those of the suite's AlexNet,
    DCGAN and gated encoders."""
    from pretext.models.alexnet import STAGES
    from pretext.models.dcgan import DCGANEncoder
    from pretext.models.gated import GATED_STAGES, GatedEncoder

    if getattr(encoder, "stages", None):
        return tuple(encoder.stages)
    if isinstance(encoder, DCGANEncoder):
        return ("conv", "bottleneck")
    return tuple(GATED_STAGES) if isinstance(encoder, GatedEncoder) else STAGES


def default_layer(encoder: nn.Module) -> str:
    """The stage probed when none is asked for: pool5 for the suite's AlexNets, the last stage otherwise."""
    stages = encoder_stages(encoder)
    return "pool5" if "pool5" in stages else stages[-1]


def encoder_record(meta: dict) -> dict:
    """What a metrics.json says of a backbone encoder beyond its path and sha256: its weights file and the keys of
    that file left out (projectors, momentum copies ...); nothing for the suite's own encoders."""
    if meta.get("format") != "external":
        return {}
    return {"encoder_weights": meta["weights"], "encoder_ignored_keys": meta["ignored_keys"]}
