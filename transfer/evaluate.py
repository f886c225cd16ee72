"""`cebench evaluate`: score results files written by any model against a dataset's ground truth.

`cebench evaluate classification --voc-root ROOT --split test --results DIR --out OUT_DIR` reads the labels
of a VOC-format root (`transfer.voc`), the devkit results files `DIR/comp1_cls_<split>_<cls>.txt`, and writes
`OUT_DIR/metrics.json` with the VOC07 11-point, area and sklearn (non-interpolated) mAPs in percent, per class
and averaged over the classes that have positives.

`cebench evaluate detection --voc-root ROOT --split test --results DIR --out OUT_DIR [--iou 0.5]` reads the boxes
of `ROOT/Annotations/<id>.xml` and the devkit results files `DIR/comp4_det_<split>_<cls>.txt` and writes the VOC07
11-point and area detection mAPs in percent (`transfer.detection_eval`, the devkit's matching rules).

`cebench evaluate segmentation --voc-root ROOT --split val --results DIR --out OUT_DIR` scores `DIR/<image_id>.png`
label maps with one confusion matrix over the split: mIoU, pixel and mean accuracy, per-class IoU in percent
(`transfer.segmentation_eval`).
Bad input is one error line and exit code 2.
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

from .arguments import command_main, parse_number
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


def format_detection_table(record: dict) -> str:
    """Markdown table: per-class ground truth, detections and the two detection APs, then the means."""
    lines = ["| class | ground truth | detections | true positives | VOC07 11-pt AP | area AP |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, m in record["per_class"].items():
        lines.append(f"| {name} | {m['npos']} | {m['n_det']} | {m['tp']} | {_percent(m['voc07_11pt'])} "
                     f"| {_percent(m['area'])} |")
    total = {k: sum(m[k] for m in record["per_class"].values()) for k in ("npos", "n_det", "tp")}
    lines.append(f"| **mean** | {total['npos']} | {total['n_det']} | {total['tp']} "
                 f"| {_percent(record['map_voc07_11pt'])} | {_percent(record['map_area'])} |")
    return "\n".join(lines)


def class_list(text: str) -> list[str]:
    """--classes a,b,c -> ['a', 'b', 'c']."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty class name in {text!r}")
    return names


def iou_threshold(text: str) -> float:
    """--iou: a number in (0, 1]."""
    value = parse_number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def _add_common_arguments(task: argparse.ArgumentParser, results_files: str) -> None:
    task.add_argument("--voc-root", type=Path, required=True, metavar="ROOT",
                      help="VOC-format root (ImageSets/Main, Annotations, optional classes.txt)")
    task.add_argument("--split", default="test", help="image set scored: ImageSets/Main/<split>.txt (default: test)")
    task.add_argument("--results", type=Path, required=True, metavar="DIR", help=f"directory of {results_files} files")
    task.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="directory for metrics.json")
    task.add_argument("--classes", type=class_list, default=None, metavar="A,B,C",
                      help="comma-separated class list for roots without classes.txt (default: the 20 VOC classes)")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Arguments of the evaluate command; one subcommand per task."""
    parser = argparse.ArgumentParser(prog=prog, description="Score results files against ground-truth labels.")
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    cls = tasks.add_parser("classification", help="VOC classification mAP (VOC07 11-point, area, non-interpolated)",
                           description="Score devkit results files comp1_cls_<split>_<cls>.txt (`<image_id> <score>`).")
    _add_common_arguments(cls, "comp1_cls_<split>_<cls>.txt")
    det = tasks.add_parser("detection", help="VOC detection mAP (VOC07 11-point and area, the devkit's matching)",
                           description="Score devkit results files comp4_det_<split>_<cls>.txt "
                                       "(`<image_id> <score> <x1> <y1> <x2> <y2>`, 1-based inclusive pixels).")
    _add_common_arguments(det, "comp4_det_<split>_<cls>.txt")
    det.add_argument("--iou", type=iou_threshold, default=0.5,
                     help="IoU a detection needs with a ground-truth box, in (0, 1] (default: 0.5)")
    seg = tasks.add_parser("segmentation", help="semantic segmentation mIoU, pixel and mean accuracy (one confusion "
                                                "matrix over the split, 255 ignored)",
                           description="Score a folder of <image_id>.png label maps (palette or grey PNGs of class "
                                       "indices, the size of their images).")
    seg.add_argument("--voc-root", type=Path, required=True, metavar="ROOT",
                     help="segmentation root: VOC (ImageSets/Segmentation, SegmentationClass), SBD (cls/, img/), "
                          "COCO (annotations/instances_<split>.json) or a folder pair (images/, masks/)")
    seg.add_argument("--split", default="val", help="split scored (default: val)")
    seg.add_argument("--results", type=Path, required=True, metavar="DIR", help="directory of <image_id>.png files")
    seg.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="directory for metrics.json")
    seg.add_argument("--classes", type=class_list, default=None, metavar="A,B,C",
                     help="class list for roots without classes.txt (background first or added; default for VOC "
                          "and SBD roots: the 20 VOC classes)")
    seg.add_argument("--ids", type=Path, default=None, metavar="FILE",
                     help="score only these ids of the split (one per line), e.g. a segment run's predictions/ids.txt")
    return parser


def run_task(args: argparse.Namespace) -> dict:
    """Score the chosen task and write its metrics.json; returns the record."""
    if args.task == "classification":
        return run_classification(args.voc_root, args.split, args.results, args.out, args.classes)
    # Imported on use: detection_eval and segmentation_eval build on json_safe / provenance above.
    if args.task == "segmentation":
        from .segmentation_eval import run_segmentation

        return run_segmentation(args.voc_root, args.split, args.results, args.out, args.classes, args.ids)
    from .detection_eval import run_detection

    return run_detection(args.voc_root, args.split, args.results, args.out, args.classes, args.iou)


def summary(record: dict, out: Path) -> str:
    """The printed result: a table, then the mean APs (or IoU) and where metrics.json went."""
    if record["task"] == "segmentation":
        from .segmentation_eval import format_segmentation_table

        return (f"{format_segmentation_table(record)}\n{record['n_images']} images, {len(record['classes'])} classes: "
                f"mIoU {record['miou']:.2f}, pixel accuracy {record['pixel_acc']:.2f}, mean accuracy "
                f"{record['mean_acc']:.2f} -> {out / 'metrics.json'}")
    if record["task"] == "voc_detection":
        columns, table = (("voc07_11pt", "VOC07 11-pt"), ("area", "area")), format_detection_table(record)
        scope = f"IoU >= {record['iou']:g}, "
    else:
        columns, table, scope = AP_COLUMNS, format_table(record), ""
    return (f"{table}\n{record['n_images']} images, {len(record['classes'])} classes, {scope}mAP: "
            + ", ".join(f"{title} {_percent(record['map_' + key])}" for key, title in columns)
            + f" -> {out / 'metrics.json'}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Score, print a table and write metrics.json; missing or malformed label, list, XML or results files: exit
    code 2."""
    return command_main(build_parser(prog), argv, run_task, lambda record, args: summary(record, args.out),
                        errors=(ValueError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())
