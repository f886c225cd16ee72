"""Labelled image sets for probes, and frozen-encoder features extracted once and cached on disk.

Three kinds of labelled data (`LabelledImages`, read by pretext.data.labels for an ImageFolder or a VOC root, the
readers method=supervised pretrains with):
- an ImageFolder (`DIR/<class>/<image>`, single-label; the directory itself is the split, e.g.
  `cifar10/train`), labels are (N,) class indices;
- a PASCAL VOC-format root (recognised by `ImageSets/Main`) and a split, multi-label from `pretext.data.voc`,
  labels are (N, C) in {1, 0 = difficult only, -1};
- a COCO root (recognised by `annotations/instances_*.json`) and a split, multi-label from `transfer.coco`
  (0 = crowd regions only).

Features: each image's shorter side is resized to the encoder's input size, the centre square is cut, then
the chosen stage runs in eval mode without gradients. pool5 is kept as it is and flattened; an earlier stage
is average-pooled (as Goyal et al. 2019 do for the VOC07 SVM) to the largest square grid that keeps the
dimension at most `MAX_DIMS` (~9k, their size), so every layer gives a vector of comparable, modest size.
Each vector is L2-normalised.

Cache: one `.npz` (no pickle) per (encoder sha256, layer, pooling, data root, split, subset, sizes) under
`$CEBENCH_CACHE/features` (default `~/.cache/cebench/features`), written atomically; the key is stored inside and
checked on load, and each image's size and modification time beside its features: a changed image is extracted
again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pretext.data.dataset import crop_flip, image_batches, resize_shorter, to_uint8_tensor
from pretext.data.fingerprint import file_stamp, fingerprint_mode, stamp_words
from pretext.data.images import BadImageError, load_rgb
from pretext.data.labels import LabelledDataError, LabelledImages, open_image_folder, open_voc
from pretext.data.sources import fixed_subset
from pretext.engine.checkpoint import atomic_write_bytes

from .coco import annotation_path, is_coco_root, read_coco_classification

log = logging.getLogger("cebench")

# One error class for the readers and the probes' own checks, so every `except ProbeError` catches both.
ProbeError = LabelledDataError

MAX_DIMS = 9216  # Goyal et al. 2019 pool every AlexNet layer to about 9k dimensions
CACHE_FORMAT = "cebench-features/2"  # 2: per-image size and modification time beside the features


@dataclass(frozen=True)
class Features:
    """L2-normalised (N, D) float32 features of a labelled set, with its labels."""

    x: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    source: LabelledImages


def is_voc_root(root: Path) -> bool:
    """A VOC-format root has ImageSets/Main."""
    return (root / "ImageSets" / "Main").is_dir()


def open_labelled(root: str | Path, split: str) -> LabelledImages:
    """A VOC root or a COCO root (with `split`), or an ImageFolder directory (`split` unused)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ProbeError(f"data directory not found: {root}")
    if is_voc_root(root):
        return open_voc(root, split)
    return open_coco(root, split) if is_coco_root(root) else open_image_folder(root)


def open_coco(root: Path, split: str) -> LabelledImages:
    """Multi-label COCO split: ROOT/annotations/instances_<split>.json, images in ROOT/<split>/."""
    paths, labels, classes = read_coco_classification(root, split)
    if not paths:
        raise ProbeError(f"{annotation_path(root, split)}: no images")
    return LabelledImages("coco", root, split, tuple(paths), labels, tuple(classes))


def subset(data: LabelledImages, max_images: int | None, seed: int) -> LabelledImages:
    """The first `max_images` of a fixed shuffle by `seed` (in file order); all images when None or enough."""
    if max_images is None or max_images >= len(data.paths):
        return data
    if max_images < 1:
        raise ProbeError(f"--max-images must be >= 1, got {max_images}")
    keep = np.asarray(fixed_subset(len(data.paths), max_images, seed), dtype=np.int64)
    return LabelledImages(data.kind, data.root, data.split, tuple(data.paths[i] for i in keep),
                          data.labels[keep], data.classes)


def check_train_test(train: LabelledImages, test: LabelledImages) -> None:
    """Refuse to test on the training split, and train / test sets of different kinds or classes."""
    if (train.root, train.split) == (test.root, test.split):
        raise ProbeError(f"the test set is the training set ({test.name}): a probe must be tested on "
                         f"features of another split")
    if train.kind != test.kind or train.classes != test.classes:
        raise ProbeError(f"training set {train.name} ({train.kind}, classes {list(train.classes)}) and test set "
                         f"{test.name} ({test.kind}, classes {list(test.classes)}) do not match")


def pooled_grid(channels: int, height: int, max_dims: int = MAX_DIMS) -> int:
    """Side of the square grid a (channels, height, height) map is average-pooled to: C * g^2 <= max_dims."""
    return max(1, min(height, math.isqrt(max_dims // channels)))


def load_view(path: Path, size: int) -> torch.Tensor:
    """(3, size, size) uint8: shorter side resized to `size`, centre crop; a bad file raises BadImageError."""
    return to_uint8_tensor(crop_flip(resize_shorter(load_rgb(path, min_side=size), size), size, None, False))


def load_batch(paths: Sequence[Path], size: int) -> torch.Tensor:
    """(B, 3, size, size) uint8 `load_view`s of the files."""
    return torch.stack([load_view(p, size) for p in paths])


class CentreViews(torch.utils.data.Dataset):
    """The files' `load_view`s as `(image, ())` items, for `image_batches` (loader workers, progress, every bad
    file named in one pass)."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, tuple]:
        return load_view(self.paths[index], self.size), ()


def normalise_input(batch: torch.Tensor, meta: dict, device: torch.device) -> torch.Tensor:
    norm = meta["normalization"]
    mean = torch.tensor(norm["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"], device=device).view(1, 3, 1, 1)
    return (batch.to(device).float() / 255 - mean) / std


def pool_features(feats: torch.Tensor, layer: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, D) L2-normalised; pool5 flattened as is, other layers average-pooled to a grid."""
    if layer != "pool5":
        feats = F.adaptive_avg_pool2d(feats, pooled_grid(feats.shape[1], feats.shape[2]))
    return F.normalize(feats.flatten(1).float(), dim=1)


def fill_value(meta: dict) -> list[float]:
    """RGB in [0, 1] a hole is filled with before encoding: the encoder's training fill mean, else 0.5 grey."""
    return [float(v) for v in meta.get("fill_mean") or (0.5, 0.5, 0.5)]


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}  # a resolved precision -> its autocast dtype


@torch.no_grad()
def encode_batch(encoder: nn.Module, meta: dict, batch: torch.Tensor, layer: str, device: torch.device,
                 hole: torch.Tensor | None = None, precision: str = "fp32") -> np.ndarray:
    """(B, D) L2-normalised float32 features of uint8 images; `hole` (1, 1, S, S) pixels are set to `fill_value`
    first. The batch runs in channels_last (oneDNN's and cuDNN's fast convolution and pooling paths) and under
    autocast for a resolved `precision` of bf16 / fp16."""
    x = normalise_input(batch, meta, device)
    if hole is not None:  # filled after normalisation, as the context encoder fills its input in training
        fill = normalise_input(torch.tensor(fill_value(meta)).view(1, 3, 1, 1) * 255, meta, device)
        x = torch.where(hole.to(device), fill, x)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=AUTOCAST.get(precision), enabled=precision in AUTOCAST):
        feats = encoder(x, out=layer)
    return pool_features(feats, layer).cpu().numpy()


def extract_features(encoder: nn.Module, meta: dict, images: Sequence[Path], layer: str, batch_size: int,
                     device: torch.device, hole: torch.Tensor | None = None, precision: str = "fp32",
                     workers: int | None = None, progress: bool = False) -> np.ndarray:
    """(N, D) float32 L2-normalised features of `layer` for the image files, encoder in eval mode; the images are
    decoded by `workers` loader processes (None: one per core but one, at most 4) while the encoder runs, with a
    progress bar when `progress`. Unreadable files: one ProbeError naming each of them, after the whole pass."""
    encoder.eval().to(device)
    chunks = []
    try:
        for _, batch in image_batches(CentreViews(images, int(meta["input_size"])), batch_size, workers, progress,
                                      desc=f"{layer} features"):
            chunks.append(encode_batch(encoder, meta, batch, layer, device, hole, precision))
    except BadImageError as exc:
        raise ProbeError(str(exc)) from None
    return np.concatenate(chunks).astype(np.float32)


def cache_key(meta: dict, data: LabelledImages, layer: str, max_images: int | None, seed: int) -> dict:
    """Everything the cached features depend on but the images' contents (`file_stamps` checks those per image)."""
    return {"format": CACHE_FORMAT, "encoder_sha256": meta["sha256"], "layer": layer, "max_dims": MAX_DIMS,
            "pool": "avg", "root": str(data.root), "split": data.split,
            "images_sha256": hashlib.sha256("\n".join(p.relative_to(data.root).as_posix() for p in data.paths)
                                            .encode()).hexdigest(),
            "max_images": max_images, "seed": seed, "input_size": int(meta["input_size"]),
            "normalization": meta["normalization"]}


def file_stamps(paths: Sequence[Path]) -> np.ndarray:
    """(N, 2) int64: each file's size and modification time in ns, or with $CEBENCH_FINGERPRINT=content its size
    and a hash of its bytes. A file whose stamp changes (a replaced image; in stat mode also one rewritten with the
    same bytes) has its cached features extracted again."""
    return np.array([file_stamp(p) or (-1, -1) for p in paths], dtype=np.int64).reshape(len(paths), 2)


def default_cache() -> Path:
    """$CEBENCH_CACHE/features, else ~/.cache/cebench/features."""
    from pretext.cache import cache_root

    return cache_root() / "features"


def cache_path(cache_dir: Path | None, key: dict) -> Path:
    """File of one key: the sha256 of its canonical JSON, in `cache_dir` (None: `default_cache()`)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return Path(cache_dir or default_cache()).expanduser() / f"{digest}.npz"


def _read_cache(path: Path, key: dict, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(features, stamps) stored for `key`, or None (absent, unreadable, or for other images)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            stored, x, stamps = json.loads(str(f["key"])), f["x"], f["stamps"]
    except (OSError, ValueError, KeyError) as exc:
        log.warning("feature cache %s unreadable (%s): extracting again", path, exc)
        return None
    if stored != key or x.shape[0] != n or stamps.shape != (n, 2):
        log.warning("feature cache %s holds other features: extracting again", path)
        return None
    return x, stamps


def _write_cache(path: Path, key: dict, x: np.ndarray, stamps: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, x=x, stamps=stamps, key=np.array(json.dumps(key, sort_keys=True)))
    atomic_write_bytes(path, buf.getvalue())


def cached_features(encoder: nn.Module, meta: dict, data: LabelledImages, layer: str, cache_dir: Path | None,
                    max_images: int | None = None, seed: int = 0, batch_size: int = 64,
                    device: torch.device = torch.device("cpu"), hole: torch.Tensor | None = None,
                    precision: str = "fp32", workers: int | None = None, progress: bool = False) -> Features:
    """Features of (a subset of) a labelled set, from the cache when there, else extracted and cached. `precision`
    is a resolved one (fp32, bf16, fp16): features of another precision are other features."""
    data = subset(data, max_images, seed)
    key = cache_key(meta, data, layer, max_images, seed)
    if hole is not None:  # only then, so the keys of unmasked features stay as they were
        key["hole"] = {"sha256": hashlib.sha256(hole.cpu().numpy().tobytes()).hexdigest(), "fill": fill_value(meta)}
    if precision != "fp32":  # likewise
        key["precision"] = precision
    if (mode := fingerprint_mode()) != "stat":  # another mode's stamps are other stamps: a clean miss, not "changed"
        key["fingerprint"] = mode
    path, stamps = cache_path(cache_dir, key), file_stamps(data.paths)
    cached = _read_cache(path, key, len(data.paths))
    if cached is None:
        log.info("extracting %s features of %d images of %s (%s)", layer, len(data.paths), data.name, precision)
        x = extract_features(encoder, meta, data.paths, layer, batch_size, device, hole, precision, workers, progress)
        _write_cache(path, key, x, stamps)
        return Features(x, data.labels, data.classes, data)
    x, stored = cached
    changed = np.flatnonzero((stored != stamps).any(axis=1))
    if len(changed):
        log.warning("feature cache %s: %d of %d images of %s changed since their features were cached (%s; first: "
                    "%s): extracting those again", path, len(changed), len(data.paths), data.name, stamp_words(),
                    data.paths[changed[0]])
        x = x.copy()
        x[changed] = extract_features(encoder, meta, [data.paths[i] for i in changed], layer, batch_size, device,
                                      hole, precision, workers, progress)
        _write_cache(path, key, x, stamps)
    else:
        log.info("%s features of %s from cache %s", layer, data.name, path)
    return Features(x, data.labels, data.classes, data)
