"""A COCO-format dataset read with pycocotools: as multi-label classification data, or as detection data
scored with both the VOC07 AP and COCO's own AP (`COCOeval`).

Layout: `ROOT/annotations/instances_<split>.json` and the images under `ROOT/<split>/<file_name>` (the COCO
2014/2017 layout, e.g. split `val2017`). Classes are the categories in id order. Annotations naming an unknown
image or category, duplicate image ids or file names, and file names that leave the image folder are errors
naming the JSON file.

Classification: an image's label for a category is 1 when it has a non-crowd instance of it, 0 (ignored, like
VOC's difficult) when its only instances are crowd regions, -1 otherwise.

Detection: boxes become `ImageObjects` in the VOC convention (1-based, inclusive ends), crowd regions are
difficult (ignored by the VOC07 AP and left out of training, as COCOeval ignores them), and detections go back to
COCO's [x, y, w, h] for `COCOeval` and the results JSON; see `read_coco_detection` and `to_coco_results`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .detection_eval import ImageObjects
from .voc import check_class_names

log = logging.getLogger("cebench")


def annotation_path(root: Path, split: str) -> Path:
    """ROOT/annotations/instances_<split>.json."""
    return root / "annotations" / f"instances_{split}.json"


def is_coco_root(root: Path) -> bool:
    """A COCO root has an annotations/ folder with instances_*.json files."""
    return any((root / "annotations").glob("instances_*.json")) if (root / "annotations").is_dir() else False


def _load(path: Path):
    """pycocotools' COCO index of a JSON file; its progress prints are swallowed, JSON errors name the file."""
    from pycocotools.coco import COCO

    if not path.is_file():
        raise ValueError(f"COCO annotation file not found: {path}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    except (KeyError, TypeError, AssertionError) as exc:
        raise ValueError(f"{path}: not a COCO instances file ({type(exc).__name__}: {exc})") from exc


def _check_references(coco, path: Path) -> None:
    """Every annotation must name a listed image and category."""
    for ann in coco.dataset.get("annotations", []):
        if ann.get("image_id") not in coco.imgs:
            raise ValueError(f"{path}: annotation {ann.get('id')} names unknown image id {ann.get('image_id')}")
        if ann.get("category_id") not in coco.cats:
            raise ValueError(f"{path}: annotation {ann.get('id')} names unknown category id {ann.get('category_id')}")
    if len(coco.imgs) != len(coco.dataset.get("images", [])):
        raise ValueError(f"{path}: duplicate image ids")


def _image_path(folder: Path, file_name: object, path: Path) -> Path:
    """The image file of one entry, refused when the name is absolute or climbs out of the folder."""
    name = PurePosixPath(str(file_name))
    if not str(file_name) or name.is_absolute() or ".." in name.parts:
        raise ValueError(f"{path}: image file_name {file_name!r} must be a relative path inside {folder}")
    return folder / name


@dataclass(frozen=True)
class _Split:
    """One checked split: pycocotools' index, its JSON file, categories and images (both in id order)."""

    coco: Any
    path: Path
    cat_ids: list[int]
    classes: list[str]
    img_ids: list
    paths: list[Path]


def open_split(root: Path, split: str) -> _Split:
    """Load and check ROOT/annotations/instances_<split>.json: references, class names, image file names."""
    path = annotation_path(root, split)
    coco = _load(path)
    _check_references(coco, path)
    cat_ids = sorted(coco.cats)
    classes = check_class_names([str(coco.cats[c].get("name", "")) for c in cat_ids], str(path))
    img_ids = sorted(coco.imgs)
    paths = [_image_path(root / split, coco.imgs[i].get("file_name", ""), path) for i in img_ids]
    if len(set(paths)) != len(paths):
        raise ValueError(f"{path}: two images share a file_name")
    return _Split(coco, path, cat_ids, classes, img_ids, paths)


def read_coco_classification(root: str | Path, split: str) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image paths, (N, C) labels in {1, 0 crowd only, -1}, class names) of one COCO split, images in id order."""
    s = open_split(Path(root), split)
    column = {c: j for j, c in enumerate(s.cat_ids)}
    row = {i: r for r, i in enumerate(s.img_ids)}
    labels = np.full((len(s.img_ids), len(s.cat_ids)), -1, dtype=np.int8)
    for ann in s.coco.dataset.get("annotations", []):
        r, c = row[ann["image_id"]], column[ann["category_id"]]
        labels[r, c] = 1 if not ann.get("iscrowd", 0) else max(labels[r, c], 0)
    return s.paths, labels, s.classes


# --- detection ------------------------------------------------------------------------------------

def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _image_size(image: dict, path: Path) -> tuple[float, float]:
    """(width, height) of an image entry; both must be positive numbers (boxes are clipped to them)."""
    w, h = image.get("width"), image.get("height")
    if not (_is_number(w) and _is_number(h) and w > 0 and h > 0):
        raise ValueError(f"{path}: image {image.get('id')} needs a positive width and height, got {w!r} x {h!r}")
    return float(w), float(h)


def _voc_box(ann: dict, size: tuple[float, float], path: Path) -> np.ndarray | None:
    """An annotation's [x, y, w, h] clipped to the image, as a 1-based inclusive box; None when clipping empties it.
    Also checks the fields COCOeval reads (`area`, `iscrowd`), so scoring cannot fail after training."""
    where = f"{path}: annotation {ann.get('id')}"
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))) or bbox[2] < 0 or bbox[3] < 0:
        raise ValueError(f"{where}: bbox must be 4 finite numbers [x, y, w, h] with w, h >= 0, got {bbox!r}")
    if not (_is_number(ann.get("area")) and ann["area"] >= 0) or ann.get("iscrowd") not in (0, 1):
        raise ValueError(f"{where}: needs a number area >= 0 and iscrowd 0 or 1, got {ann.get('area')!r} and "
                         f"{ann.get('iscrowd')!r}")
    x, y, w, h = map(float, bbox)
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, size[0]), min(y + h, size[1])
    if x2 <= x1 or y2 <= y1:
        return None
    return np.array([x1 + 1, y1 + 1, x2, y2])


def read_coco_detection(root: str | Path, split: str) -> tuple[list[str], list[Path], dict[str, ImageObjects],
                                                                 list[str], dict[str, int], list[int]]:
    """(image ids as strings, image paths, ground truth per id, class names, id -> COCO image id, category id per
    class) of one COCO split, images in id order; images without annotations are kept (no ground truth).

    A COCO box [x, y, w, h] (0-based, continuous) becomes the VOC-style box (x + 1, y + 1, x + w, y + h): the
    detector's 0-based exclusive box (`gt_boxes` subtracts 1 from the start) is then exactly [x, x + w) x
    [y, y + h), and the VOC07 AP's +1 widths are w and h. Boxes are first clipped to the image's width and height;
    boxes left empty (zero size, or wholly outside) are dropped and counted in a warning (COCOeval still sees them,
    as pycocotools reads the file). Crowd regions (iscrowd=1) are difficult. Image ids must be integers; a bbox
    that is not 4 finite numbers, a negative size, a missing area or iscrowd are errors naming the annotation.
    """
    s = open_split(Path(root), split)
    bad = [i for i in s.img_ids if not isinstance(i, int) or isinstance(i, bool)]
    if bad:
        raise ValueError(f"{s.path}: image ids must be integers, got {bad[0]!r}")
    sizes = {i: _image_size(s.coco.imgs[i], s.path) for i in s.img_ids}
    column = {c: k for k, c in enumerate(s.cat_ids)}
    rows: dict[int, list[tuple[np.ndarray, int, bool]]] = {i: [] for i in s.img_ids}
    dropped = 0
    for ann in s.coco.dataset.get("annotations", []):
        box = _voc_box(ann, sizes[ann["image_id"]], s.path)
        if box is None:
            dropped += 1
        else:
            rows[ann["image_id"]].append((box, column[ann["category_id"]], bool(ann["iscrowd"])))
    if dropped:
        log.warning("%s: %d annotation(s) with no area inside their image dropped", s.path, dropped)
    gt = {str(i): ImageObjects(np.array([b for b, _, _ in r], dtype=np.float64).reshape(-1, 4),
                               np.array([c for _, c, _ in r], dtype=np.int64),
                               np.array([d for _, _, d in r], dtype=bool)) for i, r in rows.items()}
    return [str(i) for i in s.img_ids], s.paths, gt, s.classes, {str(i): i for i in s.img_ids}, s.cat_ids


def to_coco_results(detections: Mapping[str, Sequence[np.ndarray]], coco_ids: Mapping[str, int],
                    category_ids: Sequence[int]) -> list[dict]:
    """COCO results entries {image_id, category_id, bbox [x, y, w, h], score} from per-image, per-class (K, 5)
    [x1, y1, x2, y2, score] in 1-based inclusive coordinates: [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1]."""
    out = []
    for image_id, per_class in detections.items():
        for category, dets in zip(category_ids, per_class, strict=True):
            for x1, y1, x2, y2, score in np.asarray(dets, dtype=np.float64).reshape(-1, 5).tolist():
                out.append({"image_id": coco_ids[image_id], "category_id": category,
                            "bbox": [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1], "score": score})
    return out


def coco_detection_metrics(root: str | Path, split: str, results: list[dict], img_ids: Sequence[int]) -> dict:
    """COCOeval (bbox) on the images `img_ids` of a split, in percent: coco_map (AP@[.5:.95]), coco_ap50, coco_ap75;
    NaN where no image has ground truth."""
    from pycocotools.cocoeval import COCOeval

    gt = _load(annotation_path(Path(root), split))
    if not results:  # loadRes refuses an empty list; no detections score 0 where there is ground truth to find
        found = any(not a["iscrowd"] for a in gt.loadAnns(gt.getAnnIds(imgIds=list(img_ids))))
        return dict.fromkeys(("coco_map", "coco_ap50", "coco_ap75"), 0.0 if found else float("nan"))
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "bbox")
        evaluator.params.imgIds = list(img_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [100 * float(v) if v >= 0 else float("nan") for v in evaluator.stats[:3]]  # -1: nothing to score
    return dict(zip(("coco_map", "coco_ap50", "coco_ap75"), stats))
