"""The devkit's classification results files of a PASCAL VOC-format root, and that root's readers.

Results files follow the devkit: `comp1_cls_<split>_<cls>.txt` with lines `<image_id> <score>`, one file per class
(its name made file-safe by `safe_class_name`). The readers of the root itself (classes, split lists, label lists,
annotations) live in `pretext.data.voc`, shared with method=supervised, and are importable from here as before.
Every problem is a `ValueError` that names the file (and line) and what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pretext.data.voc import (  # re-exported: the transfer tasks and their tests read VOC roots through this module
    BACKGROUND_NAMES,
    VOC_CLASSES,
    check_class_names,
    check_split,
    read_class_list,
    read_classification_labels,
    read_lines,
    read_objects,
    read_split_ids,
    read_table,
    row_index,
    safe_class_name,
)
from pretext.engine.checkpoint import atomic_write_text

__all__ = ["BACKGROUND_NAMES", "RESULTS_PREFIX", "VOC_CLASSES", "check_class_names", "check_split", "read_class_list",
           "read_classification_labels", "read_cls_results", "read_lines", "read_objects", "read_split_ids",
           "read_table", "results_path", "row_index", "safe_class_name", "write_cls_results"]

RESULTS_PREFIX = "comp1_cls_"  # comp1: the devkit's "trained on the VOC data only" competition


def _parse_score(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"score is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"score must be finite, got {text!r}")
    return value


def results_path(results_dir: Path, split: str, name: str) -> Path:
    """The devkit results file comp1_cls_<split>_<cls>.txt of one class."""
    return results_dir / f"{RESULTS_PREFIX}{check_split(split)}_{safe_class_name(name)}.txt"


def write_cls_results(out_dir: str | Path, split: str, class_names: Sequence[str], ids: Sequence[str],
                      scores: np.ndarray) -> list[Path]:
    """Write one devkit results file per class from (N, C) scores; returns the paths."""
    scores, out_dir = np.asarray(scores, dtype=np.float64), Path(out_dir)
    check_class_names(class_names, "class_names")
    row_index(ids)
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
    index = row_index(ids)
    return np.stack([read_table(results_path(results_dir, split, name), index, _parse_score,
                                f"results file of class {name!r}") for name in class_names], axis=1)


def _check_results_classes(results_dir: Path, split: str, class_names: Sequence[str]) -> None:
    known, prefix = {safe_class_name(n) for n in class_names}, f"{RESULTS_PREFIX}{check_split(split)}_"
    for path in sorted(results_dir.iterdir()):
        if path.name.startswith(prefix) and path.name.endswith(".txt") and path.name[len(prefix):-4] not in known:
            raise ValueError(f"{path}: results for unknown class {path.name[len(prefix):-4]!r} "
                             f"(classes: {', '.join(class_names)})")
