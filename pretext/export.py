"""Exported encoders: `encoder.safetensors` (weights) + `encoder.json` (architecture, input, normalisation)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .engine.checkpoint import atomic_write_bytes, atomic_write_text
from .models import build_encoder

FORMAT = "cebench-encoder/1"
NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "scale": "pixels / 255"}


class EncoderLoadError(ValueError):
    """An exported encoder is missing, corrupt or does not match its metadata."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_encoder(encoder: nn.Module, arch: str, spec: dict, out_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Write `out_dir/encoder.safetensors` and `encoder.json`; returns the JSON path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    weights = out_dir / "encoder.safetensors"
    tmp = out_dir / ".encoder.safetensors.partial"
    save_file(tensors, str(tmp))
    atomic_write_bytes(weights, tmp.read_bytes())
    tmp.unlink(missing_ok=True)
    doc = {"format": FORMAT, "arch": arch, "spec": spec, "normalization": NORMALIZATION,
           "input_size": spec.get("input_size"), "weights": weights.name, "sha256": sha256_file(weights), **meta}
    path = out_dir / "encoder.json"
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def _json_path(path: Path) -> Path:
    if path.is_dir():
        return path / "encoder.json"
    return path.with_suffix(".json") if path.suffix == ".safetensors" else path


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Encoder from a run directory, `encoder.json` or `encoder.safetensors`; checks the sha256."""
    meta_path = _json_path(Path(path))
    if not meta_path.is_file():
        raise EncoderLoadError(f"encoder metadata not found: {meta_path}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise EncoderLoadError(f"{meta_path}: invalid JSON: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise EncoderLoadError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT}")
    weights = meta_path.parent / meta["weights"]
    if not weights.is_file():
        raise EncoderLoadError(f"{meta_path}: weights file {weights} not found")
    if sha256_file(weights) != meta["sha256"]:
        raise EncoderLoadError(f"{weights}: sha256 does not match {meta_path} (file corrupt or replaced)")
    try:
        encoder = build_encoder(meta["arch"], meta["spec"])
        result = encoder.load_state_dict(load_file(str(weights)), strict=False)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise EncoderLoadError(f"{weights}: architecture mismatch with {meta_path}: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise EncoderLoadError(f"{weights}: architecture mismatch; missing keys {result.missing_keys}, "
                               f"unexpected keys {result.unexpected_keys}")
    return encoder.to(map_location), meta
