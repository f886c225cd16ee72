"""Object crops of a VOC-format root as ImageFolders: one square crop per non-difficult box, filed by its class.

Image-level multi-label classification of scenes with several small objects asks an encoder to find the objects
before it can name them; the crops ask it to name them. `cebench run demo` evaluates its encoders on the demo
data's crops (`data.labelled: objects` in a suite), and `cebench data objects ROOT --out DIR` writes them for any
VOC root. Each crop is the box's bounding square enlarged by `margin` on every side, moved inside the image where
the image is large enough (else padded with black), resized to `size` x `size` and saved as PNG:
`OUT/<name>/<class>/<image id>_<object number>.png` for each (split, name) pair, e.g. trainval -> train and
test -> test, the layout `cebench probe --train OUT/train --test OUT/test` and the suites read.

The folder is written under a temporary name and renamed into place when complete, so a crash or a concurrent
writer never leaves a folder that looks finished; `ensure_object_crops` keys it by the root's contents (split
lists, and every listed annotation's and image's size and modification time), so an edited root gets new crops.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pretext.data.fingerprint import data_fingerprint
from pretext.data.sources import voc_images
from pretext.data.voc import read_class_list, safe_class_name
from pretext.engine.checkpoint import install_dir

from .detection_eval import read_detection_annotations

log = logging.getLogger(__name__)

MARKER = ".cebench-objects.json"
FORMAT_VERSION = 1
DEFAULT_SPLITS: dict[str, str] = {"trainval": "train", "test": "test"}


@dataclass(frozen=True)
class ObjectCrops:
    """What `write_object_crops` wrote: the folder, crops per output split, skipped difficult objects."""

    root: Path
    counts: dict[str, int]
    difficult_skipped: int


def crop_box(width: int, height: int, box: tuple[float, float, float, float], margin: float) -> tuple[int, ...]:
    """(left, top, right, bottom) of the square around a 1-based inclusive VOC box, enlarged by `margin` of the
    box's longer side on every side, shifted inside a `width` x `height` image where it fits."""
    xmin, ymin, xmax, ymax = box
    side = math.floor(max(xmax - xmin + 1, ymax - ymin + 1) * (1 + 2 * margin) + 0.5)
    # the box covers [xmin - 1, xmax) in pixel-edge coordinates
    left = math.floor((xmin - 1 + xmax) / 2 - side / 2 + 0.5)
    top = math.floor((ymin - 1 + ymax) / 2 - side / 2 + 0.5)
    if side <= width:
        left = min(max(left, 0), width - side)
    if side <= height:
        top = min(max(top, 0), height - side)
    return left, top, left + side, top + side


def write_object_crops(voc_root: str | Path, out: str | Path, splits: Mapping[str, str] | None = None,
                       size: int = 72, margin: float = 0.15) -> ObjectCrops:
    """Write the crops of each split of `voc_root` (`splits`: VOC split -> output folder name) into `out`,
    atomically: `out` appears complete or not at all. Unknown classes and malformed annotations are errors that
    name the file; a class with no crop in some split is an error (its ImageFolder could not be read)."""
    voc_root, out = Path(voc_root), Path(out)
    splits = dict(splits or DEFAULT_SPLITS)
    if len(set(splits.values())) != len(splits):
        raise ValueError(f"object crops: two splits would share a folder name: {splits}")
    if size < 8 or not 0 <= margin <= 2:
        raise ValueError(f"object crops: size must be >= 8 and margin in [0, 2], got size={size} margin={margin}")
    if out.exists() and not (out / MARKER).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder; choose another --out")  # before any work
    classes = read_class_list(voc_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        counts, difficult = {}, 0
        for split, name in splits.items():
            written, skipped = _write_split(voc_root, split, tmp / name, classes, size, margin)
            counts[name], difficult = sum(written.values()), difficult + skipped
            empty = [c for c in classes if not written[c]]
            if empty:
                raise ValueError(f"{voc_root} split {split}: no non-difficult object of class(es) {', '.join(empty)}; "
                                 f"an ImageFolder needs every class")
        meta = {"format": FORMAT_VERSION, "voc_root": str(voc_root), "splits": splits, "size": size,
                "margin": margin, "classes": classes, "counts": counts, "difficult_skipped": difficult}
        (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
        if not (out / MARKER).is_file():  # else a concurrent writer finished first: its crops are the same
            install_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("object crops of %s: %s (%d difficult object(s) skipped) in %s", voc_root,
             ", ".join(f"{name} {n}" for name, n in counts.items()), difficult, out)
    return ObjectCrops(out, counts, difficult)


def _write_split(voc_root: Path, split: str, out: Path, classes: list[str], size: int,
                 margin: float) -> tuple[Counter, int]:
    gt = read_detection_annotations(voc_root, split, classes)
    written, difficult = Counter({c: 0 for c in classes}), 0
    for c in classes:
        (out / safe_class_name(c)).mkdir(parents=True)
    for (image_id, objects), path in zip(gt.items(), voc_images(voc_root, split)):  # both in the list's order
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        for n, (box, label, hard) in enumerate(zip(objects.boxes, objects.labels, objects.difficult), 1):
            if hard:
                difficult += 1
                continue
            crop = image.crop(crop_box(image.width, image.height, tuple(box), margin))
            name = classes[int(label)]
            crop = crop.resize((size, size), Image.Resampling.BICUBIC)
            crop.save(out / safe_class_name(name) / f"{image_id}_{n}.png")
            written[name] += 1
    return written, difficult


def default_cache() -> Path:
    """$CEBENCH_CACHE/objects, else ~/.cache/cebench/objects."""
    from pretext.cache import cache_root

    return cache_root() / "objects"


def object_crops_dir(voc_root: str | Path, splits: Mapping[str, str] | None = None, size: int = 72,
                     margin: float = 0.15, cache: str | Path | None = None) -> Path:
    """Where the crops of `voc_root` live in the cache: a folder name per (root, contents, splits, size, margin),
    so an edited root (split lists, annotations, images) maps to a new folder."""
    voc_root, splits = Path(voc_root).resolve(), dict(splits or DEFAULT_SPLITS)
    prints = [data_fingerprint(voc_root, split) for split in splits]
    key = hashlib.sha256(json.dumps([FORMAT_VERSION, str(voc_root), prints, splits, size, margin]).encode()
                         ).hexdigest()[:16]
    return Path(cache or default_cache()) / f"{voc_root.name}-{key}"


def ensure_object_crops(voc_root: str | Path, splits: Mapping[str, str] | None = None, size: int = 72,
                        margin: float = 0.15, cache: str | Path | None = None) -> Path:
    """`object_crops_dir`, written first unless a complete copy is there."""
    out = object_crops_dir(voc_root, splits, size, margin, cache)
    if (out / MARKER).is_file():
        log.info("object crops of %s: reusing %s", voc_root, out)
    else:
        write_object_crops(voc_root, out, splits, size, margin)
    return out


def _split_pairs(text: str) -> dict[str, str]:
    pairs = {}
    for item in text.split(","):
        split, _, name = item.partition(":")
        if not split.strip():
            raise argparse.ArgumentTypeError(f"--splits: empty split in {text!r}")
        pairs[split.strip()] = (name or split).strip()
    return pairs


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`cebench data objects ROOT --out DIR`."""
    p = sub.add_parser("objects", help="object crops of a VOC root as ImageFolders (one folder per class)",
                       description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="VOC-format root (Annotations/, ImageSets/Main/, JPEGImages/)")
    p.add_argument("--out", type=Path, required=True, help="output folder (OUT/<name>/<class>/...)")
    p.add_argument("--splits", type=_split_pairs, default=dict(DEFAULT_SPLITS),
                   help="VOC split -> folder name pairs (default trainval:train,test:test)")
    p.add_argument("--size", type=int, default=72, help="crop side in pixels (default 72)")
    p.add_argument("--margin", type=float, default=0.15, help="context on every side, as a fraction of the box's "
                                                               "longer side (default 0.15)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if (args.out / MARKER).is_file():
        raise ValueError(f"{args.out}: object crops are already there; remove the folder to write them again")
    crops = write_object_crops(args.root, args.out, args.splits, args.size, args.margin)
    print(f"object crops: {', '.join(f'{k} {v}' for k, v in crops.counts.items())} "
          f"({crops.difficult_skipped} difficult object(s) skipped) in {crops.root}")
    return 0
