"""`cebench evaluate`: score results files written by any model against a dataset's ground truth.

`cebench evaluate classification --voc-root ROOT --split test --results DIR --out OUT_DIR` reads the labels
of a VOC-format root (`transfer.voc`), the devkit results files `DIR/comp1_cls_<split>_<cls>.txt`, and writes
`OUT_DIR/metrics.json` with the VOC07 11-point, area and sklearn (non-interpolated) mAPs in percent, per class
and averaged over the classes that have positives. Bad input is one error line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sklearn

from pretext.engine.checkpoint import atomic_write_text
from pretext.engine.provenance import git_commit, versions

from .metrics import classification_metrics
from .voc import read_class_list, read_classification_labels, read_cls_results

log = logging.getLogger("cebench")

AP_COLUMNS = (("voc07_11pt", "VOC07 11-pt"), ("area", "area"), ("sklearn", "sklearn"))


def score_classification(voc_root: Path, split: str, results: Path, classes: Sequence[str] | None = None) -> dict:
    """Labels, results files and metrics of one VOC-format split, as the metrics.json record."""
    class_names = read_class_list(voc_root, classes)
    ids, labels = read_classification_labels(voc_root, split, class_names)
    scores = read_cls_results(results, split, class_names, ids)
    with warnings.catch_warnings(record=True) as caught:  # classes without positives: say so in the log
        warnings.simplefilter("always")
        metrics = classification_metrics(scores, labels, class_names)
    for warning in caught:
        log.warning("%s", warning.message)
    counts = {"positives": labels == 1, "difficult_only": labels == 0}
    return {"task": "voc_classification", "voc_root": str(voc_root), "split": split, "results": str(results),
            "n_images": len(ids), "classes": class_names,
            **{k: dict(zip(class_names, v.sum(axis=0).tolist())) for k, v in counts.items()},
            **metrics, **provenance()}


def provenance() -> dict:
    """Git commit and library versions, as every results row records them."""
    return {"git_commit": git_commit(), "versions": {**versions(), "scikit-learn": sklearn.__version__}}


def json_safe(value: object) -> object:
    """Non-finite floats (NaN: an undefined AP) -> None, recursively, so metrics.json is strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def run_classification(voc_root: Path, split: str, results: Path, out: Path,
                       classes: Sequence[str] | None = None) -> dict:
    """Score and write OUT/metrics.json; returns the record."""
    record = score_classification(voc_root, split, results, classes)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(json_safe(record), indent=2, allow_nan=False) + "\n")
    return record


def _percent(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.2f}"


def format_table(record: dict) -> str:
    """Markdown table: per-class positives and the three APs, then the means."""
    lines = ["| class | positives | " + " | ".join(f"{title} AP" for _, title in AP_COLUMNS) + " |",
             "| --- | --- |" + " --- |" * len(AP_COLUMNS)]
    for name, aps in record["per_class"].items():
        cells = [_percent(aps[key]) for key, _ in AP_COLUMNS]
        lines.append(f"| {name} | {record['positives'][name]} | " + " | ".join(cells) + " |")
    means = [_percent(record[f"map_{key}"]) for key, _ in AP_COLUMNS]
    lines.append(f"| **mean** | {sum(record['positives'].values())} | " + " | ".join(means) + " |")
    return "\n".join(lines)


def class_list(text: str) -> list[str]:
    """--classes a,b,c -> ['a', 'b', 'c']."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty class name in {text!r}")
    return names


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Arguments of the evaluate command; one subcommand per task."""
    parser = argparse.ArgumentParser(prog=prog, description="Score results files against ground-truth labels.")
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    cls = tasks.add_parser("classification", help="VOC classification mAP (VOC07 11-point, area, non-interpolated)",
                           description="Score devkit results files comp1_cls_<split>_<cls>.txt (`<image_id> <score>`).")
    cls.add_argument("--voc-root", type=Path, required=True, metavar="ROOT",
                     help="VOC-format root (ImageSets/Main, Annotations, optional classes.txt)")
    cls.add_argument("--split", default="test", help="image set scored: ImageSets/Main/<split>.txt (default: test)")
    cls.add_argument("--results", type=Path, required=True, metavar="DIR",
                     help="directory of comp1_cls_<split>_<cls>.txt files")
    cls.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="directory for metrics.json")
    cls.add_argument("--classes", type=class_list, default=None, metavar="A,B,C",
                     help="comma-separated class list for roots without classes.txt (default: the 20 VOC classes)")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Score, print a table and write metrics.json."""
    from pretext.cli import setup_logging

    setup_logging()
    args = build_parser(prog).parse_args(argv)
    try:
        record = run_classification(args.voc_root, args.split, args.results, args.out, args.classes)
    except (ValueError, OSError) as exc:  # missing or malformed label, list, XML or results files
        log.error("%s", exc)
        return 2
    print(format_table(record))
    print(f"{record['n_images']} images, {len(record['classes'])} classes, mAP: "
          + ", ".join(f"{title} {_percent(record['map_' + key])}" for key, title in AP_COLUMNS)
          + f" -> {args.out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
