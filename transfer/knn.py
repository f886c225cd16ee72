"""Weighted kNN classification on frozen features (Wu et al. 2018, as in lightly's `benchmarking/knn.py`).

Features are L2-normalised, so the inner product is the cosine similarity; a FAISS exact inner-product index
(`IndexFlatIP`) finds the k nearest training images of each test image. Neighbour j votes for its classes
with weight exp(sim_j / T), T = 0.07. Single-label: the class with the largest summed vote wins (top-1
accuracy). Multi-label (VOC): a class's score is the weighted fraction of neighbours that are positives
for it (difficult-only and absent neighbours do not vote); these per-class scores give the VOC mAPs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import faiss
import numpy as np

from .features import Features
from .metrics import classification_metrics, top1_accuracy

log = logging.getLogger("cebench")

DEFAULT_KS = (20, 200)
TEMPERATURE = 0.07


def nearest(train_x: np.ndarray, test_x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, k) inner products and (M, k) training indices of each test row's k best matches, best first."""
    index = faiss.IndexFlatIP(train_x.shape[1])
    index.add(np.ascontiguousarray(train_x, dtype=np.float32))
    sims, idx = index.search(np.ascontiguousarray(test_x, dtype=np.float32), k)
    return sims, idx


def vote_targets(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, C) 0/1 votes: one-hot class indices, or VOC labels where only 1 (present) votes."""
    if labels.ndim == 2:
        return (labels == 1).astype(np.float64)
    return np.eye(n_classes)[labels]


def weighted_votes(sims: np.ndarray, idx: np.ndarray, targets: np.ndarray,
                   temperature: float = TEMPERATURE) -> np.ndarray:
    """(M, C) class scores: sum over the k neighbours of exp(sim / T) * target, divided by the weights' sum."""
    # Subtracting each row's best similarity keeps exp() finite; it cancels in the division.
    weights = np.exp((sims - sims[:, :1]) / temperature)  # (M, k)
    scores = np.einsum("mk,mkc->mc", weights, targets[idx])  # (M, C)
    return scores / weights.sum(axis=1, keepdims=True)


def knn_scores(train: Features, test: Features, k: int, temperature: float = TEMPERATURE) -> np.ndarray:
    """(M, C) weighted-vote scores of the test features from their k nearest training features."""
    sims, idx = nearest(train.x, test.x, k)
    return weighted_votes(sims.astype(np.float64), idx, vote_targets(train.labels, len(train.classes)), temperature)


def knn_probe(train: Features, test: Features, ks: Sequence[int] = DEFAULT_KS,
              temperature: float = TEMPERATURE) -> dict:
    """Top-1 accuracy (single-label) or the three VOC mAPs (multi-label) for each k, keyed 'k<k>'."""
    results = {}
    for k in ks:
        used = min(k, len(train.x))
        if used < k:
            log.warning("k = %d but only %d training images: using k = %d", k, len(train.x), used)
        scores = knn_scores(train, test, used, temperature)
        if test.labels.ndim == 2:
            metrics = classification_metrics(scores, test.labels, list(test.classes))
        else:
            metrics = {"top1": top1_accuracy(scores, test.labels)}
        results[f"k{k}"] = {"k": k, "k_used": used, **metrics}
    return {"temperature": temperature, "results": results}
