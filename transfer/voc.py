"""A PASCAL VOC-format root read for classification, and the devkit's classification results files.

A root holds `ImageSets/Main/<split>.txt` (image ids), per-class label lists `ImageSets/Main/<cls>_<split>.txt`
(lines `<image_id> <label>`, label 1 present, 0 difficult only, -1 absent) and/or `Annotations/<id>.xml`, and
optionally `classes.txt` (one class per line; a leading `background` line is dropped). Results files follow the
devkit: `comp1_cls_<split>_<cls>.txt` with lines `<image_id> <score>`. Where a class name meets a file name,
'/', '\\' and whitespace become '_' (`safe_class_name`): labelme's `tv/monitor` is `tv_monitor` on disk.
Every problem is a `ValueError` that names the file (and line) and what is wrong.
"""

from __future__ import annotations

import logging
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pretext.data.sources import read_id_list
from pretext.engine.checkpoint import atomic_write_text

log = logging.getLogger("cebench")

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
BACKGROUND_NAMES = ("background", "_background_")  # the second is labelme's spelling
RESULTS_PREFIX = "comp1_cls_"  # comp1: the devkit's "trained on the VOC data only" competition


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


def _row_index(ids: Sequence[str]) -> dict[str, int]:
    index = {image_id: row for row, image_id in enumerate(ids)}
    if len(index) != len(ids):
        raise ValueError(f"duplicate image ids among the {len(ids)} given")
    return index


def _read_table(path: Path, index: dict[str, int], parse: Callable[[str], float], what: str) -> np.ndarray:
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


def _parse_score(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"score is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"score must be finite, got {text!r}")
    return value


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
        index = _row_index(ids)
        return ids, np.stack([_read_table(p, index, _parse_label, "label list") for p in lists], 1).astype(np.int8)
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


def results_path(results_dir: Path, split: str, name: str) -> Path:
    """The devkit results file comp1_cls_<split>_<cls>.txt of one class."""
    return results_dir / f"{RESULTS_PREFIX}{check_split(split)}_{safe_class_name(name)}.txt"


def write_cls_results(out_dir: str | Path, split: str, class_names: Sequence[str], ids: Sequence[str],
                      scores: np.ndarray) -> list[Path]:
    """Write one devkit results file per class from (N, C) scores; returns the paths."""
    scores, out_dir = np.asarray(scores, dtype=np.float64), Path(out_dir)
    check_class_names(class_names, "class_names")
    _row_index(ids)
    if scores.shape != (len(ids), len(class_names)) or not np.isfinite(scores).all():
        raise ValueError(f"scores must be finite and (N, C) = ({len(ids)}, {len(class_names)}), got {scores.shape}")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [results_path(out_dir, split, name) for name in class_names]
    for c, path in enumerate(paths):
        # repr: the shortest text that reads back as the same double, so write -> read is exact.
        atomic_write_text(path, "".join(f"{i} {float(s)!r}\n" for i, s in zip(ids, scores[:, c])))
    return paths


def read_cls_results(results_dir: str | Path, split: str, class_names: Sequence[str],
                     ids: Sequence[str]) -> np.ndarray:
    """(N, C) scores from devkit results files; a missing, unknown-class or inconsistent file is an error."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ValueError(f"results directory not found: {results_dir}")
    _check_results_classes(results_dir, split, class_names)
    index = _row_index(ids)
    return np.stack([_read_table(results_path(results_dir, split, name), index, _parse_score,
                                 f"results file of class {name!r}") for name in class_names], axis=1)


def _check_results_classes(results_dir: Path, split: str, class_names: Sequence[str]) -> None:
    known, prefix = {safe_class_name(n) for n in class_names}, f"{RESULTS_PREFIX}{check_split(split)}_"
    for path in sorted(results_dir.iterdir()):
        if path.name.startswith(prefix) and path.name.endswith(".txt") and path.name[len(prefix):-4] not in known:
            raise ValueError(f"{path}: results for unknown class {path.name[len(prefix):-4]!r} "
                             f"(classes: {', '.join(class_names)})")
