"""`cebench probe knn|linear|svm`: judge a frozen encoder by a classifier trained on its features.

- `knn`: weighted kNN (`transfer.knn`), k = 20 and 200 by default.
- `svm`: the VOC07 SVM protocol (Goyal et al. 2019): one LinearSVC per class on the L2-normalised features,
  squared hinge, class_weight {1: 2, -1: 1}, cost chosen per class by 3-fold cross-validated AP on the
  training split, refit on all of it -> the three VOC mAPs (single-label data: one-vs-rest, plus top-1 from
  the largest decision value). Difficult-only training images are left out (`--difficult exclude`, default)
  or used as negatives (`negative`). `--low-shot 1,2,4,...`: the low-shot variant, k positives per class
  drawn at random (`--low-shot-samples` independent draws), the class's other positives left out of its
  training set, all negatives kept; mean and std of the mAPs over the draws.
- `linear`: single-label data: multinomial logistic regression on standardised features, C chosen by 3-fold
  cross-validated accuracy on the training split -> top-1 accuracy; multi-label data: the SVM protocol.

Costs are never chosen on the test split, and the test split must differ from the training split.
Writes OUT_DIR/metrics.json; bad input is one error line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from pretext.engine.checkpoint import atomic_write_text
from pretext.engine.distributed import select_device
from pretext.engine.trainer import resolve_precision
from pretext.models.alexnet import STAGES
from pretext.models.gated import GATED_STAGES

from .arguments import add_extraction_arguments, command_main, max_images, number_list
from .backbones import default_layer, encoder_record, encoder_stages, open_encoder
from .evaluate import json_safe, provenance
from .features import Features, cached_features, check_train_test, open_labelled
from .knn import DEFAULT_KS, TEMPERATURE, knn_probe
from .metrics import classification_metrics, top1_accuracy

log = logging.getLogger("cebench")

LOGISTIC_COSTS = (0.001, 0.01, 0.1, 1.0)
SVM_COSTS = (0.01, 0.1, 1.0, 10.0)
FOLDS = 3


def fit_logistic(train: Features, costs: tuple[float, ...], seed: int, n_jobs: int) -> GridSearchCV:
    """Standardise + multinomial logistic regression, C by 3-fold CV accuracy on the training features."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    search = GridSearchCV(model, {"logisticregression__C": list(costs)}, cv=cv, scoring="accuracy", n_jobs=n_jobs)
    return search.fit(train.x, train.labels)


def logistic_probe(train: Features, test: Features, costs: tuple[float, ...], seed: int, n_jobs: int) -> dict:
    """Top-1 accuracy of the cross-validated logistic regression."""
    search = fit_logistic(train, costs, seed, n_jobs)
    scores = search.predict_proba(test.x)  # (M, C); columns follow search.classes_ = 0..C-1
    if len(search.classes_) != len(train.classes):
        raise ValueError(f"training features cover {len(search.classes_)} of {len(train.classes)} classes")
    cv = {str(c): 100 * float(a) for c, a in zip(costs, search.cv_results_["mean_test_score"])}
    return {"top1": top1_accuracy(scores, test.labels), "C": float(search.best_params_["logisticregression__C"]),
            "cv_top1": cv}


def _svm(cost: float) -> LinearSVC:
    return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, loss="squared_hinge", max_iter=2000)


def fit_class_svm(x: np.ndarray, labels: np.ndarray, test_x: np.ndarray, costs: tuple[float, ...], seed: int,
                  difficult: str) -> dict:
    """One class of the VOC07 SVM protocol: cost by cross-validated AP, refit, (M,) test decision values."""
    keep = labels != 0 if difficult == "exclude" else np.ones(len(labels), dtype=bool)
    x, y = x[keep], np.where(labels[keep] == 1, 1, -1)
    folds = min(FOLDS, int((y == 1).sum()), int((y == -1).sum()))
    if folds < 1:
        return {"cost": None, "cv_ap": None, "scores": np.zeros(len(test_x)), "note": "one label only: not trained"}
    if folds < 2:  # too few positives (or negatives) to cross-validate: the middle cost, and say so
        cost, cv_ap, note = costs[len(costs) // 2], None, "too few positives for cross-validation"
    else:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        aps = [cross_val_score(_svm(c), x, y, cv=cv, scoring="average_precision").mean() for c in costs]
        best = int(np.argmax(aps))  # first best: the smallest such cost
        cost, cv_ap, note = costs[best], 100 * float(aps[best]), None
    scores = _svm(cost).fit(x, y).decision_function(test_x)
    return {"cost": cost, "cv_ap": cv_ap, "scores": scores, "note": note}


def one_vs_rest(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, C) labels in {1, -1} from (N,) class indices; (N, C) labels pass through."""
    if labels.ndim == 2:
        return labels
    return np.where(np.eye(n_classes, dtype=bool)[labels], 1, -1).astype(np.int8)


def svm_scores(x: np.ndarray, labels: np.ndarray, test_x: np.ndarray, costs: tuple[float, ...], seed: int,
               n_jobs: int, difficult: str) -> tuple[np.ndarray, list[dict]]:
    """(M, C) test decision values of per-class LinearSVCs fitted in parallel, and each class's fit record."""
    fits = Parallel(n_jobs=n_jobs)(delayed(fit_class_svm)(x, labels[:, c], test_x, costs, seed, difficult)
                                   for c in range(labels.shape[1]))
    return np.stack([f["scores"] for f in fits], axis=1), fits


def svm_probe(train: Features, test: Features, costs: tuple[float, ...], seed: int, n_jobs: int,
              difficult: str) -> dict:
    """The three VOC mAPs (and top-1 for single-label data) of per-class LinearSVCs."""
    n = len(train.classes)
    scores, fits = svm_scores(train.x, one_vs_rest(train.labels, n), test.x, costs, seed, n_jobs, difficult)
    for name, fit in zip(train.classes, fits):
        if fit["note"]:
            log.warning("class %r: %s", name, fit["note"])
    per_class = {n: {k: f[k] for k in ("cost", "cv_ap", "note")} for n, f in zip(train.classes, fits)}
    result = {**classification_metrics(scores, one_vs_rest(test.labels, n), list(test.classes)), "svm": per_class,
              "difficult_in_training": difficult}
    if test.labels.ndim == 1:
        result["top1"] = top1_accuracy(scores, test.labels)
    return result


def low_shot_labels(labels: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
    """Per class, `shots` random positives kept; the other positives become 0 (left out); negatives kept."""
    out = labels.copy()
    for c in range(labels.shape[1]):
        positives = np.flatnonzero(labels[:, c] == 1)
        if len(positives) > shots:
            out[rng.choice(positives, len(positives) - shots, replace=False), c] = 0
    return out


def low_shot_probe(train: Features, test: Features, shots: tuple[int, ...], samples: int, costs: tuple[float, ...],
                   seed: int, n_jobs: int) -> dict:
    """Low-shot SVM: for each k, the mAPs of `samples` independent draws of k positives per class, mean and std."""
    n = len(train.classes)
    labels, test_labels = one_vs_rest(train.labels, n), one_vs_rest(test.labels, n)
    results = {}
    for k in shots:
        runs = []
        for draw in range(samples):
            drawn = low_shot_labels(labels, k, np.random.default_rng([seed, k, draw]))
            scores, _ = svm_scores(train.x, drawn, test.x, costs, seed, n_jobs, "exclude")
            m = classification_metrics(scores, test_labels, list(test.classes))
            runs.append({key: m[key] for key in ("map_voc07_11pt", "map_area", "map_sklearn")})
        summary = {f"{key}_{stat}": float(fn([r[key] for r in runs]))
                   for key in runs[0] for stat, fn in (("mean", np.mean), ("std", np.std))}
        results[f"k{k}"] = {"shots": k, "samples": samples, **summary, "draws": runs}
    return {"low_shot": results}


def build_record(args: argparse.Namespace, meta: dict, train: Features, test: Features) -> dict:
    """Everything metrics.json says besides the probe's own results."""
    return {"probe": args.probe, "layer": args.layer, "feature_dim": int(train.x.shape[1]),
            "encoder": str(args.encoder), "encoder_sha256": meta["sha256"], "encoder_method": meta.get("method"),
            **encoder_record(meta),
            "train": train.source.describe(args.max_images[0]), "test": test.source.describe(args.max_images[1]),
            "classes": list(train.classes), "seed": args.seed, "feature_precision": args.precision, **provenance()}


def load_features(args: argparse.Namespace) -> tuple[dict, Features, Features]:
    """Encoder metadata and the cached training and test features; refuses to test on the training split."""
    train_set, test_set = open_labelled(args.train, args.train_split), open_labelled(args.test, args.test_split)
    check_train_test(train_set, test_set)
    device = select_device(args.device)
    encoder, meta = open_encoder(args.encoder, args.weights)
    args.layer = args.layer or default_layer(encoder)
    stages = encoder_stages(encoder)
    if args.layer not in stages:
        raise ValueError(f"{args.encoder}: unknown layer {args.layer!r} for a {meta.get('arch')} encoder; choose from "
                         f"{', '.join(stages)}")
    args.precision = resolve_precision(args.precision, device)
    feats = [cached_features(encoder, meta, data, args.layer, args.cache, limit, args.seed, args.batch_size, device,
                             precision=args.precision, workers=args.workers, progress=True)
             for data, limit in ((train_set, args.max_images[0]), (test_set, args.max_images[1]))]
    return meta, feats[0], feats[1]


def run_probe(args: argparse.Namespace) -> dict:
    """Extract (or reuse) features, run the probe, write OUT/metrics.json; returns the record."""
    meta, train, test = load_features(args)
    if args.probe == "knn":
        result = knn_probe(train, test, args.k, args.temperature)
    elif args.low_shot:
        result = low_shot_probe(train, test, args.low_shot, args.low_shot_samples, args.costs or SVM_COSTS,
                                args.seed, args.n_jobs)
    elif args.probe == "svm" or train.labels.ndim == 2:
        result = svm_probe(train, test, args.costs or SVM_COSTS, args.seed, args.n_jobs, args.difficult)
    else:
        result = logistic_probe(train, test, args.costs or LOGISTIC_COSTS, args.seed, args.n_jobs)
    record = {**build_record(args, meta, train, test), **result}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "metrics.json", json.dumps(json_safe(record), indent=2, allow_nan=False) + "\n")
    return record


def summary(record: dict) -> str:
    """One line per result: top-1 accuracy or the three mAPs."""
    def numbers(r: dict) -> str:
        if "top1" in r:
            return f"top-1 {r['top1']:.2f}%"
        return f"mAP VOC07 11-pt {r['map_voc07_11pt']:.2f}, area {r['map_area']:.2f}, sklearn {r['map_sklearn']:.2f}"

    head = (f"{record['probe']} probe, {record['layer']} ({record['feature_dim']} dims), "
            f"{record['train']['n_images']} train / {record['test']['n_images']} test images")
    if record["probe"] == "knn":
        return "\n".join([head] + [f"  k={r['k_used']}: {numbers(r)}" for r in record["results"].values()])
    if "low_shot" in record:
        return "\n".join([head] + [f"  {r['shots']} positives/class ({r['samples']} draws): mAP VOC07 11-pt "
                                    f"{r['map_voc07_11pt_mean']:.2f} +- {r['map_voc07_11pt_std']:.2f}"
                                    for r in record["low_shot"].values()])
    chosen = f"C={record['C']}" if "C" in record else "SVM cost per class by 3-fold CV"
    return f"{head}\n  {chosen}: {numbers(record)}"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Arguments of the probe command."""
    p = argparse.ArgumentParser(prog=prog, description="Linear probe or weighted kNN on frozen encoder features.")
    p.add_argument("probe", choices=("knn", "linear", "svm"))
    p.add_argument("--encoder", required=True, metavar="RUN_DIR|timm:NAME|torchvision:NAME",
                   help="run directory or encoder.json, or a timm / torchvision model by name")
    p.add_argument("--weights", type=Path, default=None, metavar="FILE",
                   help="weights of a timm: / torchvision: encoder: a state dict of any trainer (random init without)")
    p.add_argument("--layer", default=None,
                   help=f"encoder stage (default: pool5, or a backbone's last stage); AlexNet: {', '.join(STAGES)}; "
                        f"the free-form inpainting model's coarse encoder: {', '.join(GATED_STAGES)}; a backbone's "
                        f"stages are listed when a wrong one is asked for")
    p.add_argument("--train", type=Path, required=True, metavar="ROOT_OR_DIR",
                   help="VOC-format root (has ImageSets/Main) or ImageFolder directory DIR/<class>/<image>")
    p.add_argument("--train-split", default="trainval", help="VOC split to train on (default: trainval)")
    p.add_argument("--test", type=Path, required=True, metavar="ROOT_OR_DIR")
    p.add_argument("--test-split", default="test", help="VOC split to test on (default: test)")
    p.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="directory for metrics.json")
    p.add_argument("--max-images", type=max_images, default=(None, None), metavar="N[,M]",
                   help="use a fixed random subset of N training (M test) images (default: all)")
    p.add_argument("--k", type=number_list, default=DEFAULT_KS, metavar="K1,K2")
    p.add_argument("--temperature", type=float, default=TEMPERATURE, help="kNN vote temperature (default: 0.07)")
    p.add_argument("--costs", type=lambda t: number_list(t, float), default=None, metavar="C1,C2",
                   help=f"cost grid (default: logistic {LOGISTIC_COSTS}, SVM {SVM_COSTS})")
    p.add_argument("--low-shot", type=number_list, default=None, metavar="K1,K2",
                   help="svm only: low-shot variant with K positives per class (e.g. 1,2,4,8,16)")
    p.add_argument("--low-shot-samples", type=int, default=5, help="independent draws per K (default: 5)")
    p.add_argument("--difficult", choices=("exclude", "negative"), default="exclude",
                   help="VOC difficult-only training images: left out or negatives (default: exclude)")
    add_extraction_arguments(p)
    p.add_argument("--n-jobs", type=int, default=1, help="parallel classes / costs (joblib; -1 = all cores)")
    p.add_argument("--seed", type=int, default=0, help="subset and cross-validation seed")
    return p


def _usage_problem(args: argparse.Namespace) -> str | None:
    return "--low-shot applies to the svm probe only" if args.low_shot and args.probe != "svm" else None


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse, run the probe, print a summary; bad data roots, images, encoders or devices: exit code 2."""
    return command_main(build_parser(prog), argv, run_probe,
                        lambda record, args: f"{summary(record)}\n-> {args.out / 'metrics.json'}",
                        check=_usage_problem)


if __name__ == "__main__":
    raise SystemExit(main())
