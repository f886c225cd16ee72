"""Semantic segmentation scores from one confusion matrix over a whole split (FCN's evaluation).

`confusion` adds an image's (ground truth, prediction) pixels to a C x C matrix (rows: ground truth), skipping
ground-truth 255; `segmentation_scores` turns the matrix into, in percent:

- `pixel_acc`: correct pixels / labelled pixels;
- `mean_acc`: mean over classes with ground-truth pixels of their recall;
- `miou`: mean over classes present in the ground truth or the predictions of TP / (TP + FP + FN);
- `fw_iou`: IoU weighted by each class's share of the labelled pixels;
- `per_class_iou` (null for a class that neither occurs nor is predicted).

`cebench evaluate segmentation --voc-root ROOT --split val --results DIR --out OUT_DIR` scores a folder of
`<image_id>.png` label maps (palette or grey PNGs, the size of their images) against ROOT's split (any layout of
`transfer.segmentation_data`), or against the ids listed by `--ids FILE`, and writes OUT_DIR/metrics.json.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from pretext.engine.checkpoint import atomic_write_text

from .segmentation_data import IGNORE, SegmentationSet, check_labels, open_segmentation_set, read_label_png


def confusion(gt: np.ndarray, pred: np.ndarray, n_classes: int, out: np.ndarray | None = None) -> np.ndarray:
    """(C, C) int64 counts [true class, predicted class] of the pixels whose ground truth is not 255, added to
    `out` when given. Shapes must match; predictions must be class indices."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    keep = gt != IGNORE
    g, p = gt[keep].astype(np.int64), pred[keep].astype(np.int64)
    if g.size and (g.min() < 0 or g.max() >= n_classes):
        raise ValueError(f"ground-truth values outside 0..{n_classes - 1} (and not {IGNORE})")
    if p.size and (p.min() < 0 or p.max() >= n_classes):
        raise ValueError(f"predicted values outside 0..{n_classes - 1}")
    counts = np.bincount(g * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    if out is None:
        return counts
    out += counts
    return out


def _mean(values: np.ndarray) -> float:
    v = values[~np.isnan(values)]
    return float(v.mean()) if v.size else math.nan


def segmentation_scores(conf: np.ndarray, classes: Sequence[str]) -> dict:
    """miou, pixel_acc, mean_acc, fw_iou and per_class_iou (percent) of a confusion matrix."""
    conf = np.asarray(conf, dtype=np.float64)
    if conf.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix {conf.shape} does not match {len(classes)} classes")
    total = conf.sum()
    if total == 0:
        raise ValueError("no labelled pixel to score (every ground-truth pixel is 255)")
    tp, gt, pred = np.diag(conf), conf.sum(1), conf.sum(0)
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        recall = np.where(gt > 0, tp / gt, np.nan)
    present = gt > 0
    return {"miou": 100 * _mean(iou), "pixel_acc": 100 * float(tp.sum() / total), "mean_acc": 100 * _mean(recall),
            "fw_iou": 100 * float(np.nansum(np.where(present, gt / total * iou, 0.0))),
            "per_class_iou": {c: (None if math.isnan(v) else 100 * float(v)) for c, v in zip(classes, iou)},
            "per_class_acc": {c: (None if math.isnan(v) else 100 * float(v)) for c, v in zip(classes, recall)},
            "labelled_pixels": int(total)}


def score_folder(data: SegmentationSet, results: Path) -> tuple[np.ndarray, int]:
    """Confusion matrix of RESULTS/<id>.png against every image of `data`; a missing file, a size mismatch or a
    value outside the classes is a ValueError naming the file."""
    if not results.is_dir():
        raise ValueError(f"results directory not found: {results}")
    n = len(data.classes)
    conf = np.zeros((n, n), dtype=np.int64)
    for i, image_id in enumerate(data.ids):
        path = results / f"{image_id}.png"
        pred = read_label_png(path)
        gt = data.label(i)
        if pred.shape != gt.shape:
            raise ValueError(f"{path}: prediction is {pred.shape[1]}x{pred.shape[0]} but the ground truth "
                             f"{data.labels.where(i)} is {gt.shape[1]}x{gt.shape[0]}")
        if (pred == IGNORE).any():
            raise ValueError(f"{path}: predictions must be class indices, found {IGNORE} (the ignore label)")
        check_labels(pred, n, str(path))
        confusion(gt, pred, n, conf)
    return conf, len(data.ids)


def select_ids(data: SegmentationSet, ids_file: Path) -> SegmentationSet:
    """The images of `data` named in `ids_file` (one id per line, e.g. a segment run's predictions/ids.txt); an id
    outside the split is an error naming it."""
    from pretext.data.sources import read_id_list

    wanted = read_id_list(ids_file)
    index = {k: i for i, k in enumerate(data.ids)}
    unknown = [k for k in wanted if k not in index]
    if unknown:
        raise ValueError(f"{ids_file}: id {unknown[0]!r} is not in {data.root} split {data.split} "
                         f"({len(unknown)} unknown)")
    if not wanted:
        raise ValueError(f"{ids_file}: no image ids")
    return data.subset([index[k] for k in wanted])


def run_segmentation(voc_root: Path, split: str, results: Path, out: Path,
                     classes: Sequence[str] | None = None, ids_file: Path | None = None) -> dict:
    """Score a folder of label maps against ROOT's split (or the ids of `ids_file` in it), write OUT/metrics.json,
    return the record."""
    from .evaluate import json_safe, provenance

    t0 = time.perf_counter()
    data = open_segmentation_set(voc_root, split, classes)
    if ids_file is not None:
        data = select_ids(data, ids_file)
    conf, n = score_folder(data, results)
    record = {"task": "segmentation", "root": str(voc_root), "split": split, "kind": data.kind,
              "ids": str(ids_file) if ids_file else None,
              "results": str(results), "n_images": n, "classes": list(data.classes),
              **segmentation_scores(conf, data.classes), "confusion": conf.tolist(),
              "wall_seconds": round(time.perf_counter() - t0, 3), **provenance()}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(json_safe(record), indent=2, allow_nan=False) + "\n")
    return record


def format_segmentation_table(record: dict) -> str:
    """Markdown table: per-class IoU and accuracy, then the means."""
    lines = ["| class | IoU | accuracy |", "| --- | ---: | ---: |"]
    for c in record["classes"]:
        iou, acc = record["per_class_iou"][c], record["per_class_acc"][c]
        lines.append(f"| {c} | {'-' if iou is None else f'{iou:.2f}'} | {'-' if acc is None else f'{acc:.2f}'} |")
    return "\n".join(lines)
