"""A COCO-format dataset read as multi-label classification data (pycocotools).

Layout: `ROOT/annotations/instances_<split>.json` and the images under `ROOT/<split>/<file_name>` (the COCO
2014/2017 layout, e.g. split `val2017`). An image's label for a category is 1 when it has a non-crowd
instance of it, 0 (ignored, like VOC's difficult) when its only instances are crowd regions, -1 otherwise.
Classes are the categories in id order. Annotations naming an unknown image or category, duplicate image
ids or file names, and file names that leave the image folder are errors naming the JSON file.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path, PurePosixPath

import numpy as np

from .voc import check_class_names


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


def read_coco_classification(root: str | Path, split: str) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image paths, (N, C) labels in {1, 0 crowd only, -1}, class names) of one COCO split, images in id order."""
    root = Path(root)
    path = annotation_path(root, split)
    coco = _load(path)
    _check_references(coco, path)
    cat_ids = sorted(coco.cats)
    names = check_class_names([str(coco.cats[c].get("name", "")) for c in cat_ids], str(path))
    column = {c: j for j, c in enumerate(cat_ids)}
    img_ids = sorted(coco.imgs)
    row = {i: r for r, i in enumerate(img_ids)}
    labels = np.full((len(img_ids), len(cat_ids)), -1, dtype=np.int8)
    for ann in coco.dataset.get("annotations", []):
        r, c = row[ann["image_id"]], column[ann["category_id"]]
        labels[r, c] = 1 if not ann.get("iscrowd", 0) else max(labels[r, c], 0)
    paths = [_image_path(root / split, coco.imgs[i].get("file_name", ""), path) for i in img_ids]
    if len(set(paths)) != len(paths):
        raise ValueError(f"{path}: two images share a file_name")
    return paths, labels, names
