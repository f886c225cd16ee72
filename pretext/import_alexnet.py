"""`cebench import-alexnet`: a torchvision AlexNet state dict from the user's disk as an exported encoder.

This is how a "supervised" row enters the suite: e.g. ImageNet weights saved with
`torch.save(torchvision.models.alexnet(weights=...).state_dict(), "alexnet.pth")` on a machine with internet.
The file is read with `weights_only=True` (or as safetensors); `module.`, `model.` and `encoder.` prefixes are
stripped; the `features.*` tensors are kept (the classifier is dropped); widths and grouped convolutions are
read off the weight shapes. The result is an `encoder.safetensors` + `encoder.json` pair that every transfer
command loads like a pretrained one, with ImageNet input normalisation by default.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from .arguments import command_main
from .export import export_encoder, sha256_file
from .models.alexnet import AlexNetEncoder, AlexNetSpec

log = logging.getLogger("cebench")

CONV_INDICES = (0, 3, 6, 8, 10)  # torchvision's features.N of conv1..conv5
PREFIXES = ("module.", "model.", "encoder.")
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "scale": "pixels / 255"}


class WeightsImportError(ValueError):
    """A weights file that is not a usable AlexNet state dict."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch file loaded with weights_only=True (a pickle payload is refused)."""
    if not path.is_file():
        raise WeightsImportError(f"weights file not found: {path}")
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                                       weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, SafetensorError: the file is not plain weights
        raise WeightsImportError(f"cannot load {path} as weights: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsImportError(f"{path} does not hold a state dict of tensors")
    return state


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without DDP / wrapper prefixes."""
    out = {}
    for key, value in state.items():
        while key.startswith(PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def infer_spec(features: dict[str, torch.Tensor], input_size: int, path: Path) -> AlexNetSpec:
    """Widths, grouping and layout from the conv weight shapes (torchvision: 11x11 conv1 with padding 2)."""
    missing = [f"features.{i}.weight" for i in CONV_INDICES if f"features.{i}.weight" not in features]
    if missing:
        raise WeightsImportError(f"{path}: not an AlexNet state dict; missing {missing}")
    shapes = [tuple(features[f"features.{i}.weight"].shape) for i in CONV_INDICES]
    if shapes[0][1:] != (3, 11, 11):
        raise WeightsImportError(f"{path}: conv1 weight has shape {shapes[0]}, expected (C, 3, 11, 11)")
    widths = tuple(s[0] for s in shapes)
    groups = shapes[1][1] * 2 == widths[0]  # the original two-GPU AlexNet splits conv2, conv4, conv5
    return AlexNetSpec(widths=widths, input_size=input_size, groups=groups, layout="torchvision")


def import_alexnet(path: str | Path, out_dir: str | Path, input_size: int = 224,
                   normalization: str = "imagenet") -> Path:
    """Export the features of a torchvision AlexNet state dict as a cebench encoder; returns encoder.json."""
    path = Path(path)
    state = strip_prefixes(read_state_dict(path))
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    spec = infer_spec(features, input_size, path)
    encoder = AlexNetEncoder(spec)
    result = encoder.load_state_dict(features, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsImportError(f"{path}: does not fit AlexNet {spec.widths}; missing {result.missing_keys}, "
                           f"unexpected {result.unexpected_keys}")
    dropped = sorted(set(state) - set(features))
    if dropped:
        log.info("kept %d feature tensors; dropped %d others (%s ...)", len(features), len(dropped), dropped[0])
    meta = {"method": "supervised", "normalization": IMAGENET if normalization == "imagenet" else None,
            "pretrain": {"imported_from": str(path.resolve()), "source_sha256": sha256_file(path)}}
    if meta["normalization"] is None:
        del meta["normalization"]
    return export_encoder(encoder, "alexnet", spec.to_dict(), out_dir, meta)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Arguments of import-alexnet."""
    p = argparse.ArgumentParser(prog=prog, description="Import a torchvision AlexNet state dict as an encoder.")
    p.add_argument("weights", type=Path, help="state dict file (.pth/.pt via weights_only=True, or .safetensors)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory for encoder.safetensors/json")
    p.add_argument("--input-size", type=int, default=224, help="input side the encoder expects (default: 224)")
    p.add_argument("--normalization", choices=("imagenet", "cebench"), default="imagenet",
                   help="input normalisation: ImageNet mean/std (torchvision weights) or cebench's [-1, 1]")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse, import, print where the encoder went; bad weights or options: exit code 2."""
    return command_main(build_parser(prog), argv,
                        lambda args: import_alexnet(args.weights, args.out, args.input_size, args.normalization),
                        lambda out, _args: f"encoder -> {out}", errors=(ValueError,))


if __name__ == "__main__":
    raise SystemExit(main())
