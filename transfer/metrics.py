"""Classification metrics: the three VOC average precisions and top-1 accuracy, exact and validated.

Labels follow PASCAL VOC: 1 = present, -1 = absent, 0 = present only as "difficult" instances, which are
ignored (neither a true nor a false positive, and not counted among the positives).

- `voc07_11pt_ap`: the VOC2007 devkit's official metric (`VOCevalcls.m`), precision interpolated at the
  11 recalls 0, 0.1, ..., 1.
- `voc_area_ap`: the VOC2010+ devkit's metric (`VOCap.m`), the area under the monotone precision envelope.
- `non_interpolated_ap`: `sklearn.metrics.average_precision_score` with difficult images removed, the
  number the 2016 self-supervision papers printed.

Ties: the devkit ranks with MATLAB's stable `sort(-scores)`, so images with equal scores keep the order of
the image list; the two devkit metrics do the same with a stable sort, so their value can depend on the order
of tied images. sklearn instead treats tied scores as one threshold (order-independent).
A class without positives has no AP: NaN, left out of the means with a warning naming the class.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score

VOC_LABELS = (-1, 0, 1)
# The devkit's `t = 0:0.1:1` as MATLAB's colon builds it: a + k*d up to the middle, b - k*d after it. Its 4th
# value is 3*0.1 = 0.30000000000000004, so a recall of exactly 0.3 does not reach it there, nor here.
# (np.linspace / np.arange differ from it at 0.6 and 0.7; k / 10 differs at 0.3.)
VOC07_RECALLS = tuple([k * 0.1 for k in range(5)] + [0.5] + [1 - k * 0.1 for k in range(4, -1, -1)])


def _check_ranking(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {scores.shape} and {labels.shape}")
    _check_values(scores, labels)
    return scores, labels.astype(np.int8)


def _check_values(scores: np.ndarray, labels: np.ndarray) -> None:
    if not np.isfinite(scores).all():
        raise ValueError(f"scores must be finite; {np.count_nonzero(~np.isfinite(scores))} are not")
    bad = ~np.isin(labels, VOC_LABELS)
    if bad.any():
        raise ValueError(f"labels must be in {{-1, 0, 1}}, got {labels[bad].flat[0]!r}")


def _precision_recall(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Devkit precision and recall after each ranked image; None without positives."""
    scores, labels = _check_ranking(scores, labels)
    npos = np.count_nonzero(labels > 0)
    if npos == 0:
        return None
    gt = labels[np.argsort(-scores, kind="stable")]  # (N,), stable: ties keep the image-list order
    tp, fp = np.cumsum(gt > 0), np.cumsum(gt < 0)  # (N,) each; difficult images add to neither
    # Before the first non-difficult image tp = fp = 0: MATLAB gives NaN, which its max() skips; 0 is equivalent.
    prec = np.divide(tp, tp + fp, out=np.zeros(len(tp)), where=(tp + fp) > 0)
    return prec, tp / npos


def voc07_11pt_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """VOC2007 11-point interpolated AP of one class, in [0, 1]; NaN without positives."""
    curve = _precision_recall(scores, labels)
    if curve is None:
        return float("nan")
    prec, rec = curve
    # initial=0 is the devkit's `if isempty(p), p = 0`. It accumulates ap + p/11 instead of sum / 11: a few ulp
    # apart at most, and this way a perfect ranking gives exactly 1.
    return float(sum(prec[rec >= t].max(initial=0.0) for t in VOC07_RECALLS) / 11)


def voc_area_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """VOC2010+ area under the monotone precision envelope of one class, in [0, 1]; NaN without positives."""
    curve = _precision_recall(scores, labels)
    if curve is None:
        return float("nan")
    prec, rec = curve
    mrec = np.concatenate([[0.0], rec, [1.0]])  # (N + 2,)
    mpre = np.maximum.accumulate(np.concatenate([[0.0], prec, [0.0]])[::-1])[::-1]  # envelope, right to left
    step = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1  # where recall changes
    return float(np.sum((mrec[step] - mrec[step - 1]) * mpre[step]))


def non_interpolated_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """sklearn's average_precision_score on the non-difficult images, in [0, 1]; NaN without positives."""
    scores, labels = _check_ranking(scores, labels)
    keep = labels != 0
    if not np.any(labels[keep] > 0):
        return float("nan")
    return float(average_precision_score(labels[keep] > 0, scores[keep]))


AP_FUNCTIONS = {"voc07_11pt": voc07_11pt_ap, "area": voc_area_ap, "sklearn": non_interpolated_ap}


def _check_matrix(scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(f"scores and labels must both be (N, C), got {scores.shape} and {labels.shape}")
    if len(class_names) != scores.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {scores.shape[1]} score columns")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"duplicate class names in {list(class_names)}")
    _check_values(scores, labels)
    return scores, labels


def _mean(values: list[float]) -> float:
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def classification_metrics(scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
    """Per-class and mean VOC07 11-point, area and sklearn APs in percent; scores and labels are (N, C)."""
    scores, labels = _check_matrix(scores, labels, class_names)
    per_class: dict[str, dict[str, float]] = {}
    for c, name in enumerate(class_names):
        per_class[name] = {k: 100 * ap(scores[:, c], labels[:, c]) for k, ap in AP_FUNCTIONS.items()}
        if np.isnan(per_class[name]["area"]):
            warnings.warn(f"class {name!r} has no positive images: its AP is undefined (NaN) and left out "
                          f"of the mean", UserWarning, stacklevel=2)
    means = {f"map_{k}": _mean([per_class[n][k] for n in class_names]) for k in AP_FUNCTIONS}
    undefined = [n for n in class_names if np.isnan(per_class[n]["area"])]
    return {**means, "per_class": per_class, "undefined_classes": undefined}


def top1_accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Percent of rows whose highest score (first one on ties) is the target class; scores (N, C), targets (N,)."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    if scores.ndim != 2 or targets.shape != scores.shape[:1] or len(targets) == 0:
        raise ValueError(f"need scores (N, C) and targets (N,) with N > 0, got {scores.shape} and {targets.shape}")
    if not np.issubdtype(targets.dtype, np.integer) or targets.min() < 0 or targets.max() >= scores.shape[1]:
        raise ValueError(f"targets must be integer class indices in [0, {scores.shape[1]})")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return 100 * float(np.mean(scores.argmax(axis=1) == targets))
