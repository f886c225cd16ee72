"""The PASCAL VOC2007 detection evaluation, exactly as the MATLAB devkit's `VOCevaldet.m` computes it.

Ground truth comes from a VOC-format root (`ImageSets/Main/<split>.txt`, `Annotations/<id>.xml`); detections from
devkit results files `comp4_det_<split>_<cls>.txt` (comp4: trained on outside data too), one line per box:
`<image_id> <score> <x1> <y1> <x2> <y2>`. Boxes, in the XML and in results files, are 1-based inclusive pixel
coordinates: a box is `x2 - x1 + 1` wide (the devkit's +1 convention), and so are intersections.

Per class, following `VOCevaldet.m` line by line:
- npos counts the non-difficult ground-truth boxes of the class.
- Detections are ranked by score, descending, with a stable sort (MATLAB's `sort(-confidence)` is stable):
  tied scores keep the order of the results file. py-faster-rcnn's `voc_eval.py` uses an unstable argsort.
- Each detection goes to the ground-truth box of the same image and class with the highest IoU among those it
  overlaps (on equal IoU the first box of the XML, as the devkit's strict `ov > ovmax`). The devkit does not fall
  back to the next-best box when that one is taken: a second detection of it is a false positive.
- It counts when IoU >= the threshold, the devkit's `ovmax >= VOCopts.minoverlap` (voc_eval.py's `>` differs
  for an IoU of exactly 0.5). A match to a difficult box is neither a true nor a false positive; one below the
  threshold, or on an image without ground truth of the class, is a false positive.
- Precision is tp / (tp + fp); where both are still 0 (only ignored detections so far) MATLAB gets NaN, which
  its `max` skips. We use 0, which gives the same AP except when every detection of a class is ignored: the
  devkit's 11-point AP is NaN there and ours 0.
- AP: VOC2007 11-point interpolation (`VOCevaldet.m`) and the VOC2010+ area under the precision envelope
  (`VOCap.m`). A class without non-difficult ground truth has no AP (NaN) and is left out of the mean.
Every problem with the input files is a `ValueError` naming the file (and line or object).
"""

from __future__ import annotations

import json
import logging
import math
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretext.data.sources import check_id
from pretext.engine.checkpoint import atomic_write_text

from .evaluate import json_safe, provenance
from .metrics import VOC07_RECALLS
from .voc import (
    check_split,
    read_lines,
    check_class_names,
    read_class_list,
    read_objects,
    read_split_ids,
    safe_class_name,
)

log = logging.getLogger("cebench")

RESULTS_PREFIX = "comp4_det_"
BOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")
_CHUNK = 1 << 22  # IoU matrix entries computed at once (32 MiB of float64 per temporary)


@dataclass(frozen=True)
class ImageObjects:
    """Ground truth of one image: boxes (N, 4) 1-based inclusive xmin ymin xmax ymax, class indices, difficult."""

    boxes: np.ndarray  # (N, 4) float64
    labels: np.ndarray  # (N,) int64, index into the class list
    difficult: np.ndarray  # (N,) bool


def read_detection_annotations(root: str | Path, split: str, classes: Sequence[str],
                               unknown: str = "error") -> dict[str, ImageObjects]:
    """Boxes of every image of ImageSets/Main/<split>.txt; unknown="skip" drops (and counts) objects of other classes."""
    if unknown not in ("error", "skip"):
        raise ValueError(f"unknown must be 'error' or 'skip', got {unknown!r}")
    root, column = Path(root), {name: c for c, name in enumerate(check_class_names(classes, "classes"))}
    gt, dropped = {}, Counter()
    for image_id in read_split_ids(root, split):
        path = root / "Annotations" / f"{image_id}.xml"
        objects = read_objects(path)  # (name, difficult), validated as for classification
        boxes = read_boxes(path)  # (N, 4), same <object> order
        keep = []
        for n, (name, _) in enumerate(objects):
            if name in column:
                keep.append(n)
            elif unknown == "skip":
                dropped[name] += 1
            else:
                raise ValueError(f"{path}: object {n + 1}: unknown class {name!r} (classes: {', '.join(classes)})")
        gt[image_id] = ImageObjects(boxes[keep].reshape(-1, 4), np.array([column[objects[n][0]] for n in keep],
                                    dtype=np.int64), np.array([objects[n][1] for n in keep], dtype=bool))
    if dropped:
        log.warning("%s: dropped %d object(s) of classes not in the class list: %s", root / "Annotations",
                    sum(dropped.values()), ", ".join(f"{name} ({k})" for name, k in sorted(dropped.items())))
    return gt


def read_boxes(path: Path) -> np.ndarray:
    """(N, 4) <bndbox> of each <object>; missing, non-numeric or inverted coordinates are errors."""
    try:
        objects = ET.parse(path).getroot().findall("object")
    except ET.ParseError as exc:
        raise ValueError(f"{path}: malformed XML ({exc})") from None
    boxes = np.zeros((len(objects), 4))
    for n, obj in enumerate(objects):
        where = f"{path}: object {n + 1} ({(obj.findtext('name') or '').strip()})"
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"{where}: no <bndbox>")
        for k, field in enumerate(BOX_FIELDS):
            text = (bndbox.findtext(field) or "").strip()
            try:
                boxes[n, k] = float(text)
            except ValueError:
                raise ValueError(f"{where}: <{field}> is not a number: {text!r}") from None
        if not np.isfinite(boxes[n]).all() or boxes[n, 2] < boxes[n, 0] or boxes[n, 3] < boxes[n, 1]:
            raise ValueError(f"{where}: invalid box {boxes[n].tolist()} (need finite xmin <= xmax, ymin <= ymax)")
    return boxes


def det_results_path(results_dir: Path, split: str, name: str) -> Path:
    """The devkit results file comp4_det_<split>_<cls>.txt of one class."""
    return Path(results_dir) / f"{RESULTS_PREFIX}{check_split(split)}_{safe_class_name(name)}.txt"


def write_det_results(out_dir: str | Path, split: str, classes: Sequence[str],
                      detections: Mapping[str, Sequence[np.ndarray]]) -> list[Path]:
    """One results file per class from image_id -> per-class (K, 5) [x1, y1, x2, y2, score]; returns the paths."""
    classes, out_dir = check_class_names(classes, "classes"), Path(out_dir)
    lines: list[list[str]] = [[] for _ in classes]
    for image_id, per_class in detections.items():
        check_id(image_id, "detections")
        if any(ch.isspace() for ch in image_id) or len(per_class) != len(classes):
            raise ValueError(f"detections of image {image_id!r}: need a space-free id and {len(classes)} "
                             f"per-class arrays, got {len(per_class)}")
        for c, dets in enumerate(per_class):
            dets = np.asarray(dets, dtype=np.float64).reshape(-1, 5)
            _check_boxes(dets[:, :4], dets[:, 4], f"detections of image {image_id!r}, class {classes[c]!r}")
            # repr: the shortest text that reads back as the same double, so the files re-score exactly to the
            # numbers the run computed in memory (rounded scores re-order near-ties; rounded boxes move IoUs)
            lines[c] += [f"{image_id} {s!r} {x1!r} {y1!r} {x2!r} {y2!r}\n"
                         for x1, y1, x2, y2, s in dets.tolist()]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [det_results_path(out_dir, split, name) for name in classes]
    for path, text in zip(paths, lines):
        atomic_write_text(path, "".join(text))
    return paths


def _check_boxes(boxes: np.ndarray, scores: np.ndarray, where: str) -> None:
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"{where}: scores and boxes must be finite")
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if inverted.any():
        raise ValueError(f"{where}: box {boxes[inverted][0].tolist()} has x2 < x1 or y2 < y1")


def read_det_results(results_dir: str | Path, split: str, classes: Sequence[str],
                     ids: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
    """Per class {"image_ids": (K,) str, "scores": (K,), "boxes": (K, 4)} in file order; files must all exist."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ValueError(f"results directory not found: {results_dir}")
    classes = check_class_names(classes, "classes")
    _check_results_classes(results_dir, split, classes)
    known = None if ids is None else set(ids)
    return [_read_det_file(det_results_path(results_dir, split, name), name, known) for name in classes]


def _check_results_classes(results_dir: Path, split: str, classes: Sequence[str]) -> None:
    # A results file of a class outside the list would be silently ignored: refuse it instead.
    prefix, known = f"{RESULTS_PREFIX}{check_split(split)}_", {safe_class_name(name) for name in classes}
    for path in sorted(results_dir.glob(f"{prefix}*.txt")):
        if path.name[len(prefix):-4] not in known:
            raise ValueError(f"{path}: results for unknown class {path.name[len(prefix):-4]!r} "
                             f"(classes: {', '.join(classes)})")


def _read_det_file(path: Path, name: str, known: set[str] | None) -> dict[str, np.ndarray]:
    image_ids, values = [], []
    for n, line in enumerate(read_lines(path, f"results file of class {name!r}"), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise ValueError(f"{path}:{n}: expected '<image_id> <score> <x1> <y1> <x2> <y2>', got {line.strip()!r}")
        if known is not None and fields[0] not in known:
            raise ValueError(f"{path}:{n}: image {fields[0]!r} is not in the split")
        try:
            row = [float(field) for field in fields[1:]]
        except ValueError:
            raise ValueError(f"{path}:{n}: not a number in {line.strip()!r}") from None
        if not all(math.isfinite(v) for v in row) or row[3] < row[1] or row[4] < row[2]:
            raise ValueError(f"{path}:{n}: need finite values with x1 <= x2 and y1 <= y2, got {line.strip()!r}")
        image_ids.append(fields[0])
        values.append(row)
    table = np.array(values, dtype=np.float64).reshape(-1, 5)
    return {"image_ids": np.array(image_ids, dtype=str), "scores": table[:, 0], "boxes": table[:, 1:]}


def ap_11pt(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC2007 11-point AP from the ranked recall and precision: mean of max precision at recall >= t."""
    return float(sum(prec[rec >= t].max(initial=0.0) for t in VOC07_RECALLS) / 11)


def ap_area(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC2010+ AP (`VOCap.m`): area under the monotone precision envelope, summed where recall steps."""
    mrec = np.concatenate([[0.0], rec, [1.0]])  # (K + 2,)
    mpre = np.maximum.accumulate(np.concatenate([[0.0], prec, [0.0]])[::-1])[::-1]  # envelope, right to left
    step = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[step] - mrec[step - 1]) * mpre[step]))


def _class_boxes(gt: Mapping[str, ImageObjects], class_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes of one class per image (row of `gt`), padded to (M, G, 4); validity and difficult masks (M, G)."""
    masks = [objects.labels == class_index for objects in gt.values()]
    width = max([1, *(int(m.sum()) for m in masks)])
    boxes = np.zeros((len(gt), width, 4))  # padding: a valid 1x1 box, masked out, so no 0/0 below
    valid, difficult = np.zeros((len(gt), width), dtype=bool), np.zeros((len(gt), width), dtype=bool)
    for row, (objects, mask) in enumerate(zip(gt.values(), masks)):
        k = int(mask.sum())
        boxes[row, :k], valid[row, :k], difficult[row, :k] = objects.boxes[mask], True, objects.difficult[mask]
    return boxes, valid, difficult


def _best_overlap(det: np.ndarray, gt_boxes: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Highest IoU (+1 convention, -inf without overlap) and its first box, for det (D, 4) vs gt_boxes (D, G, 4)."""
    b, g = det[:, None, :], gt_boxes
    iw = np.minimum(b[..., 2], g[..., 2]) - np.maximum(b[..., 0], g[..., 0]) + 1  # (D, G)
    ih = np.minimum(b[..., 3], g[..., 3]) - np.maximum(b[..., 1], g[..., 1]) + 1
    overlaps = valid & (iw > 0) & (ih > 0)
    inter = np.where(overlaps, iw * ih, 0.0)
    # The devkit's order of operations, so IoUs match it to the last bit.
    union = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1) + (g[..., 2] - g[..., 0] + 1) * (
        g[..., 3] - g[..., 1] + 1) - inter
    iou = np.where(overlaps, inter / union, -np.inf)
    return iou.max(axis=1), iou.argmax(axis=1)  # argmax: first of equal maxima, as the devkit's `ov > ovmax`


def _check_detections(gt: Mapping[str, ImageObjects], class_index: int, image_ids: Sequence[str],
                      scores: np.ndarray, boxes: np.ndarray, iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores, boxes = np.asarray(scores, dtype=np.float64), np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if scores.ndim != 1 or len(image_ids) != len(scores) or len(boxes) != len(scores):
        raise ValueError(f"need K image ids, scores (K,) and boxes (K, 4), got {len(image_ids)}, {scores.shape}, "
                         f"{boxes.shape}")
    if not 0 < iou <= 1:
        raise ValueError(f"IoU threshold must be in (0, 1], got {iou}")
    if class_index < 0:
        raise ValueError(f"class index must be >= 0, got {class_index}")
    _check_boxes(boxes, scores, "detections")
    row = {image_id: r for r, image_id in enumerate(gt)}
    missing = [i for i in image_ids if i not in row]
    if missing:  # the devkit stops here too ('unrecognized image')
        raise ValueError(f"detections on image {missing[0]!r}, which has no ground truth entry")
    return np.array([row[i] for i in image_ids], dtype=np.int64), scores, boxes


def voc_detection_ap(gt: Mapping[str, ImageObjects], class_index: int, image_ids: Sequence[str],
                     scores: np.ndarray, boxes: np.ndarray, iou: float = 0.5) -> dict:
    """Devkit AP of one class as fractions: {"ap_11pt", "ap_area", "npos", "n_det", "tp", "fp"}; NaN if npos = 0."""
    rows, scores, boxes = _check_detections(gt, class_index, image_ids, scores, boxes, iou)
    gt_boxes, valid, difficult = _class_boxes(gt, class_index)
    npos = int((valid & ~difficult).sum())
    order = np.argsort(-scores, kind="stable")  # ties keep file order, as MATLAB's sort
    rows, boxes = rows[order], boxes[order]
    ovmax, jmax = np.full(len(rows), -np.inf), np.zeros(len(rows), dtype=np.int64)
    step = max(1, _CHUNK // gt_boxes.shape[1])
    for start in range(0, len(rows), step):
        part = slice(start, start + step)
        ovmax[part], jmax[part] = _best_overlap(boxes[part], gt_boxes[rows[part]], valid[rows[part]])
    hit = ovmax >= iou  # the MATLAB devkit's `>=`
    candidate = hit & ~difficult[rows, jmax]  # a hit on a difficult box counts for nothing
    # Only the first (highest-ranked) candidate of each ground-truth box is a true positive; later ones duplicates.
    first = np.unique(rows[candidate] * gt_boxes.shape[1] + jmax[candidate], return_index=True)[1]
    tp = np.zeros(len(rows), dtype=bool)
    tp[np.flatnonzero(candidate)[first]] = True
    fp = ~hit | (candidate & ~tp)
    ap = {"ap_11pt": float("nan"), "ap_area": float("nan")}
    if npos > 0:
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        prec = np.divide(ctp, ctp + cfp, out=np.zeros(len(ctp)), where=(ctp + cfp) > 0)  # MATLAB: NaN, skipped
        ap = {"ap_11pt": ap_11pt(ctp / npos, prec), "ap_area": ap_area(ctp / npos, prec)}
    return {**ap, "npos": npos, "n_det": len(rows), "tp": int(tp.sum()), "fp": int(fp.sum())}


def _mean(values: list[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def detection_metrics(gt: Mapping[str, ImageObjects], classes: Sequence[str],
                      results_per_class: Sequence[Mapping[str, np.ndarray]], iou: float = 0.5) -> dict:
    """Per-class and mean (over classes with ground truth) VOC07 11-point and area APs, in percent."""
    if len(results_per_class) != len(classes):
        raise ValueError(f"{len(results_per_class)} results for {len(classes)} classes")
    per_class = {}
    for c, (name, res) in enumerate(zip(classes, results_per_class)):
        ap = voc_detection_ap(gt, c, res["image_ids"], res["scores"], res["boxes"], iou)
        per_class[name] = {"voc07_11pt": 100 * ap["ap_11pt"], "area": 100 * ap["ap_area"], "npos": ap["npos"],
                           "n_det": ap["n_det"], "tp": ap["tp"], "fp": ap["fp"]}
    undefined = [name for name in classes if per_class[name]["npos"] == 0]
    if undefined:
        log.warning("no non-difficult ground truth for %s: AP undefined (NaN), left out of the mean",
                    ", ".join(undefined))
    return {"map_voc07_11pt": _mean([v["voc07_11pt"] for v in per_class.values()]),
            "map_area": _mean([v["area"] for v in per_class.values()]), "per_class": per_class,
            "undefined_classes": undefined, "iou": iou, "n_images": len(gt), "classes": list(classes)}


def score_detection(voc_root: str | Path, split: str, results_dir: str | Path,
                    classes: Sequence[str] | None = None, iou: float = 0.5) -> dict:
    """Annotations, results files and metrics of one VOC-format split, as the metrics.json record."""
    class_names = read_class_list(voc_root, classes)
    gt = read_detection_annotations(voc_root, split, class_names)
    results = read_det_results(results_dir, split, class_names, list(gt))
    return {"task": "voc_detection", "voc_root": str(voc_root), "split": split, "results": str(results_dir),
            **detection_metrics(gt, class_names, results, iou), **provenance()}


def run_detection(voc_root: Path, split: str, results: Path, out: Path, classes: Sequence[str] | None = None,
                  iou: float = 0.5) -> dict:
    """Score and write OUT/metrics.json; returns the record."""
    record = score_detection(voc_root, split, results, classes, iou)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(json_safe(record), indent=2, allow_nan=False) + "\n")
    return record
