"""A PASCAL VOC-format root read for classification: its classes, split lists, per-class label lists and
annotations.

A root holds `ImageSets/Main/<split>.txt` (image ids), per-class label lists `ImageSets/Main/<cls>_<split>.txt`
(lines `<image_id> <label>`, label 1 present, 0 difficult only, -1 absent) and/or `Annotations/<id>.xml`, and
optionally `classes.txt` (one class per line; a leading `background` line is dropped). Where a class name meets a
file name, '/', '\\' and whitespace become '_' (`safe_class_name`): labelme's `tv/monitor` is `tv_monitor` on disk.
Every problem is a `ValueError` that names the file (and line) and what is wrong. Here, in pretext, so that
method=supervised and the transfer tasks (`transfer.voc`, which adds the devkit's results files) read a root alike.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .sources import read_id_list

log = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
BACKGROUND_NAMES = ("background", "_background_")  # the second is labelme's spelling


def safe_class_name(name: str) -> str:
    """A class name as it appears in file names: '/', '\\' and whitespace replaced by '_'."""
    return re.sub(r"[/\\\s]", "_", name)


def check_class_names(names: Sequence[str], where: str) -> list[str]:
    """Refuse an empty list, empty or padded names, duplicates, and names that collide once made file-safe."""
    if not names:
        raise ValueError(f"{where}: no class names")
    seen: dict[str, str] = {}
    for name in names:
        if not name or name != name.strip():
            raise ValueError(f"{where}: invalid class name {name!r}")
        safe = safe_class_name(name)
        if safe in seen:
            raise ValueError(f"{where}: class {name!r} duplicates {seen[safe]!r} (file name {safe!r})")
        seen[safe] = name
    return list(names)


def read_class_list(root: str | Path, classes: Sequence[str] | None = None) -> list[str]:
    """ROOT/classes.txt when present, else `classes` (a --classes option), else the 20 PASCAL VOC classes."""
    path = Path(root) / "classes.txt"
    if not path.is_file():
        return check_class_names(classes, "--classes") if classes is not None else list(VOC_CLASSES)
    names = [line.strip() for line in read_lines(path, "class list") if line.strip()]
    if names and names[0] in BACKGROUND_NAMES:
        names = names[1:]
    names = check_class_names(names, str(path))
    if classes is not None and list(classes) != names:
        raise ValueError(f"{path} lists {names} but --classes gave {list(classes)}; drop one of them")
    return names


def read_lines(path: Path, what: str) -> list[str]:
    """Lines of a UTF-8 text file; a missing file or bad encoding is a ValueError naming it (`what` it is)."""
    if not path.is_file():
        raise ValueError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def check_split(split: str) -> str:
    """`split` unchanged, or a ValueError when it could reach outside ImageSets/ (it becomes part of file names)."""
    if not split or "/" in split or "\\" in split or split in (".", "..") or "\x00" in split:
        raise ValueError(f"invalid split name {split!r}")
    return split


def read_split_ids(root: str | Path, split: str) -> list[str]:
    """Image ids of ImageSets/Main/<split>.txt; missing file, duplicate or path-like ids are errors."""
    list_file = Path(root) / "ImageSets" / "Main" / f"{check_split(split)}.txt"
    ids = read_id_list(list_file)  # refuses ids with separators or '..' and duplicates
    if not ids:
        raise ValueError(f"{list_file}: no image ids")
    return ids


def row_index(ids: Sequence[str]) -> dict[str, int]:
    """Row of each image id; repeated ids are a ValueError."""
    index = {image_id: row for row, image_id in enumerate(ids)}
    if len(index) != len(ids):
        raise ValueError(f"duplicate image ids among the {len(ids)} given")
    return index


def read_table(path: Path, index: dict[str, int], parse: Callable[[str], float], what: str) -> np.ndarray:
    """(N,) values from `<image_id> <value>` lines, one per split image; other, repeated or missing ids are errors."""
    values, seen = np.zeros(len(index)), np.zeros(len(index), dtype=bool)
    for n, line in enumerate(read_lines(path, what), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(f"{path}:{n}: expected '<image_id> <value>', got {line.strip()!r}")
        row = index.get(fields[0])
        if row is None:
            raise ValueError(f"{path}:{n}: image {fields[0]!r} is not in the split")
        if seen[row]:
            raise ValueError(f"{path}:{n}: duplicate image {fields[0]!r}")
        try:
            values[row], seen[row] = parse(fields[1]), True
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: {exc}") from None
    if not seen.all():
        missing = [i for i, row in index.items() if not seen[row]]
        raise ValueError(f"{path}: {len(missing)} image(s) of the split missing, first {missing[0]!r}")
    return values


_LABELS = {"-1": -1.0, "0": 0.0, "1": 1.0, "+1": 1.0}


def _parse_label(text: str) -> float:
    if text not in _LABELS:
        raise ValueError(f"label must be -1, 0 or 1, got {text!r}")
    return _LABELS[text]


def label_list_path(root: Path, name: str, split: str) -> Path:
    """ImageSets/Main/<cls>_<split>.txt of one class."""
    return root / "ImageSets" / "Main" / f"{safe_class_name(name)}_{split}.txt"


def read_classification_labels(root: str | Path, split: str,
                               classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Split ids and (N, C) int8 labels in {1, 0, -1}: from the per-class lists when all exist, else from XML."""
    root, classes = Path(root), check_class_names(classes, "classes")
    ids = read_split_ids(root, split)
    lists = [label_list_path(root, name, split) for name in classes]
    missing = [path for path in lists if not path.is_file()]
    if not missing:
        index = row_index(ids)
        return ids, np.stack([read_table(p, index, _parse_label, "label list") for p in lists], 1).astype(np.int8)
    if not (root / "Annotations").is_dir():
        raise ValueError(f"label list not found: {missing[0]} (and no {root / 'Annotations'} to read labels from)")
    if len(missing) < len(lists):  # a partial set of lists is suspicious: say which source is used
        log.warning("%d of %d label lists missing (first %s): reading labels from %s",
                    len(missing), len(lists), missing[0], root / "Annotations")
    return ids, _labels_from_annotations(root, ids, classes)


def _labels_from_annotations(root: Path, ids: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    column = {name: c for c, name in enumerate(classes)}
    labels = np.full((len(ids), len(classes)), -1, dtype=np.int8)  # (N, C)
    for row, image_id in enumerate(ids):
        path = root / "Annotations" / f"{image_id}.xml"
        for name, difficult in read_objects(path):
            if name not in column:
                raise ValueError(f"{path}: unknown class {name!r} (classes: {', '.join(classes)})")
            # 1 beats 0 beats -1: one non-difficult instance makes the image a positive.
            labels[row, column[name]] = max(labels[row, column[name]], 0 if difficult else 1)
    return labels


def read_objects(path: Path) -> list[tuple[str, bool]]:
    """(class name, difficult) of each <object> of a VOC annotation; an empty or absent <difficult> is 0."""
    if not path.is_file():
        raise ValueError(f"annotation not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: malformed XML ({exc})") from None
    if root.tag != "annotation":
        raise ValueError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    objects = []
    for n, obj in enumerate(root.findall("object"), 1):
        name, difficult = (obj.findtext("name") or "").strip(), (obj.findtext("difficult") or "0").strip() or "0"
        if not name:
            raise ValueError(f"{path}: object {n} has no <name>")
        if difficult not in ("0", "1"):
            raise ValueError(f"{path}: object {n} ({name}): <difficult> must be 0 or 1, got {difficult!r}")
        objects.append((name, difficult == "1"))
    return objects
