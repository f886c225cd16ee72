"""Evaluation tasks a suite can name, by registry: each runs one existing command and reads its metrics.json.

A task gets the encoder's run directory, the suite's datasets, its own options (from the suite file), the
seed and a work directory; it returns the cell's numbers: a headline (the Table 2 column), all metrics and,
where the command has them, per-class numbers.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("cebench")


class TaskError(RuntimeError):
    """A task's command failed; the message is the command's last error line."""


@dataclass(frozen=True)
class Datasets:
    """The suite's labelled data: a VOC/COCO root (splits) or train and test ImageFolders."""

    train: Path
    test: Path
    train_split: str = "trainval"
    test_split: str = "test"
    scenes: Path | None = None  # data.labelled=objects: the VOC root whose boxes the train/test crops come from

    def whole_images(self) -> Datasets:
        """The data of the tasks on whole images (inpainting, NN inpainting): the VOC root of object crops."""
        return self if self.scenes is None else Datasets(self.scenes, self.scenes, self.train_split, self.test_split)


@dataclass(frozen=True)
class TaskResult:
    """What a cell stores besides its bookkeeping."""

    kind: str
    headline_name: str
    headline: float
    metrics: dict[str, Any]
    per_class: dict[str, float] | None = None


@dataclass(frozen=True)
class Task:
    """A registered task: which options it takes and how it runs."""

    name: str
    kind: str  # classification | probe | retrieval | inpainting | detection | segmentation
    options: dict[str, Any]  # option -> default
    run: Callable[..., TaskResult] | None = None
    needs: tuple[str, ...] = field(default_factory=tuple)  # encoder capabilities: "decoder"


@contextlib.contextmanager
def captured_errors() -> Iterator[list[str]]:
    """Collect the messages of the ERROR records logged inside the block (the commands log their failures)."""
    errors: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record.getMessage())

    handler = Catch(level=logging.ERROR)
    log.addHandler(handler)
    try:
        yield errors
    finally:
        log.removeHandler(handler)


def _call(module: str, argv: list[str], out: Path) -> dict:
    """Run a command's main() in this process; its metrics.json, or TaskError with its last error line."""
    import importlib

    with captured_errors() as errors:
        try:
            code = importlib.import_module(module).main(argv + ["--out", str(out)], prog=module)
        except SystemExit as exc:  # argparse errors
            code = exc.code if isinstance(exc.code, int) else 2
    if code != 0 or not (out / "metrics.json").is_file():
        raise TaskError(errors[-1] if errors else f"{module} exited with code {code}")
    return json.loads((out / "metrics.json").read_text())


def _max_images(opts: dict) -> list[str]:
    n = opts.get("max_images")
    return [] if n is None else ["--max-images", ",".join(str(v) for v in (n if isinstance(n, list) else [n]))]


def _data_args(data: Datasets, train_flag: str, test_flag: str, split_flags: tuple[str, str]) -> list[str]:
    return [train_flag, str(data.train), test_flag, str(data.test), split_flags[0], data.train_split,
            split_flags[1], data.test_split]


def _scores(m: dict) -> tuple[str, float, dict[str, Any], dict[str, float] | None]:
    """(headline suffix, value, metrics, per-class) of a classification-style result: top-1 or mAP."""
    if "top1" in m:
        return "top-1 (%)", float(m["top1"]), {"top1": m["top1"]}, None
    keys = ("map_voc07_11pt", "map_area", "map_sklearn")
    per_class = {c: v["sklearn"] for c, v in m.get("per_class", {}).items() if v.get("sklearn") is not None}
    return "mAP (%)", float(m["map_sklearn"]), {k: m[k] for k in keys}, per_class or None


def _training(m: dict) -> dict[str, Any]:
    """What a fine-tuning run's metrics.json says of its training: did the loss flatten (`converged`, `loss_change`
    over the last tenth), its start (loss and logit std before the first update), and the precision it ran in."""
    training, start = m.get("training") or {}, m.get("start") or {}
    out = {"converged": training.get("converged"), "loss_change": training.get("loss_change"),
           "final_loss": training.get("final_loss"), "precision": m.get("precision")}
    if start:
        out.update(start_loss=start.get("loss"), start_logit_std=start.get("logit_std"))
    return out


def run_classify(encoder: Path, data: Datasets, opts: dict, seed: int, out: Path) -> TaskResult:
    """`cebench transfer classify` with the task's preset and overrides."""
    argv = ["--encoder", str(encoder), "--data", str(data.train), "--test-data", str(data.test),
            "--train-split", data.train_split, "--test-split", data.test_split, "--preset", opts["preset"],
            *_max_images(opts), *opts["overrides"], f"train.seed={seed}", "train.progress=false",
            f"train.resume={'true' if (out / 'checkpoint.pt').exists() else 'false'}"]
    m = _call("transfer.classify", argv, out)
    suffix, value, metrics, per_class = _scores(m)
    metrics.update(layers=m["layers"], steps=m["steps"], train_seconds=m["train_seconds"], **_training(m))
    return TaskResult("classification", f"Fine-tune {suffix}", value, metrics, per_class)


def run_detection(encoder: Path, data: Datasets, opts: dict, seed: int, out: Path) -> TaskResult:
    """`cebench transfer detect` (Fast R-CNN) with the task's preset and overrides: VOC07 11-point mAP."""
    data = data.whole_images()  # boxes in whole images, also when the suite's labelled data is object crops
    argv = ["--encoder", str(encoder), "--data", str(data.train), "--test-data", str(data.test),
            "--train-split", data.train_split, "--test-split", data.test_split, "--preset", opts["preset"],
            *_max_images(opts), *opts["overrides"], f"train.seed={seed}", "train.progress=false",
            f"train.resume={'true' if (out / 'checkpoint.pt').exists() else 'false'}"]
    m = _call("transfer.detect", argv, out)
    per_class = {c: v["voc07_11pt"] for c, v in m["per_class"].items() if v.get("npos")}
    metrics = {**{k: m[k] for k in ("map_voc07_11pt", "map_area", "steps", "train_seconds",
                                    "inference_seconds_per_image")}, **_training(m)}
    return TaskResult("detection", "Detection mAP (%)", float(m["map_voc07_11pt"]), metrics, per_class or None)


def run_segmentation(encoder: Path, data: Datasets, opts: dict, seed: int, out: Path) -> TaskResult:
    """`cebench transfer segment` (FCN-32s) with the task's preset and overrides: mIoU. The task's `root`,
    `test_root`, `train_split` and `test_split` options replace the suite's (segmentation data is SBD or VOC2012,
    train -> val, beside a VOC2007 classification root)."""
    data = data.whole_images()
    train = Path(opts["root"]) if opts["root"] else data.train
    test = Path(opts["test_root"]) if opts["test_root"] else (train if opts["root"] else data.test)
    argv = ["--encoder", str(encoder), "--data", str(train), "--test-data", str(test),
            "--train-split", opts["train_split"] or data.train_split,
            "--test-split", opts["test_split"] or data.test_split, "--preset", opts["preset"],
            *_max_images(opts), *opts["overrides"], f"train.seed={seed}", "train.progress=false",
            f"train.resume={'true' if (out / 'checkpoint.pt').exists() else 'false'}"]
    m = _call("transfer.segment", argv, out)
    per_class = {c: v for c, v in m["per_class_iou"].items() if v is not None}
    metrics = {**{k: m[k] for k in ("miou", "pixel_acc", "mean_acc", "steps", "train_seconds",
                                    "train_seconds_per_image", "inference_seconds_per_image")}, **_training(m)}
    return TaskResult("segmentation", "Segmentation mIoU (%)", float(m["miou"]), metrics, per_class or None)


def _layer(opts: dict) -> list[str]:
    """--layer of the task's `layer` option; none (the encoder's default: pool5 of the suite's AlexNets, the
    deepest stage of another backbone) when it is null."""
    return [] if opts.get("layer") is None else ["--layer", str(opts["layer"])]


def _probe(kind: str, label: str) -> Callable[..., TaskResult]:
    def run(encoder: Path, data: Datasets, opts: dict, seed: int, out: Path) -> TaskResult:
        argv = [kind, "--encoder", str(encoder), *_layer(opts),
                *_data_args(data, "--train", "--test", ("--train-split", "--test-split")), *_max_images(opts),
                "--seed", str(seed), "--n-jobs", str(opts["n_jobs"]), "--precision", opts["precision"]]
        if kind == "knn":
            argv += ["--k", str(opts["k"])]
        m = _call("transfer.probe", argv, out)
        layer = m.get("layer", opts["layer"])
        if kind == "knn":
            m = m["results"][f"k{opts['k']}"]
        suffix, value, metrics, per_class = _scores(m)
        return TaskResult("probe", f"{label} {suffix}", value, {**metrics, "layer": layer}, per_class)

    return run


def run_retrieval(encoder: Path, data: Datasets, opts: dict, seed: int, out: Path) -> TaskResult:
    """`cebench retrieve`: precision@k of the queries' neighbours in the database (labelled data)."""
    argv = ["--encoder", str(encoder), *_layer(opts), "--k", str(opts["k"]), "--mask", opts["mask"],
            *_data_args(data, "--database", "--queries", ("--database-split", "--query-split")),
            *_max_images(opts), "--seed", str(seed), "--precision", opts["precision"]]
    m = _call("transfer.retrieve", argv, out)
    if m.get("precision_at_k") is None:
        raise TaskError(f"retrieval gave no precision@k: {m.get('precision_note')}")
    return TaskResult("retrieval", f"Retrieval P@{opts['k']} (%)", float(m["precision_at_k"]),
                      {"precision_at_k": m["precision_at_k"], "mask": opts["mask"],
                       "layer": m.get("layer", opts["layer"])})


def run_inpainting(encoder: Path, data: Datasets, opts: dict, seed: int, out: Path) -> TaskResult:
    """`cebench eval-inpainting` on the test split's holes of the task's `mask` kind (central: the central quarter
    shrunk by `overlap` px; region, freeform: drawn by the seed), the same for every model of the suite, whatever
    each was trained with: the encoder's Table 1 row for that kind of hole."""
    data = data.whole_images()
    argv = ["--checkpoint", str(encoder), "--images", str(data.test), "--split", data.test_split, "--mask",
            opts["mask"], "--seed", str(seed), "--overlap", str(opts["overlap"]), *_hole_args(data, opts),
            *(["--max-images", str(opts["max_images"])] if opts.get("max_images") else [])]
    m = _call("pretext.eval_inpainting", argv, out)
    config = json.loads((encoder / "config.json").read_text())
    loss = config.get("loss", {})
    label = str(loss.get("reconstruction", "l2")).upper()
    label += " + adversarial" if loss.get("adversarial_weight", 0) > 0 else ""
    scores = ("mean_l1", "mean_l2", "psnr", "ssim")
    metrics = {"row": f"{m['method'].replace('_', ' ')} ({label})", "mask": m["mask"],
               "hole_coverage": m.get("hole_coverage"), **{k: m[k] for k in scores if k in m}}
    metrics["mean_fill"] = {k: m["baseline_mean_fill"][k] for k in scores if k in m["baseline_mean_fill"]}
    _inpainting_grid(encoder, data, opts, seed, out / "grid")
    return TaskResult("inpainting", "PSNR (dB)", float(m["psnr"]), metrics)


def _hole_args(data: Datasets, opts: dict) -> list[str]:
    """The same holes for every model of the suite: --holes standard (the default coverage, strokes and blob seed,
    whatever each model was trained with) and --region-bank, the option's folder; 'data' = the test data's
    SegmentationObject masks when it has them, else procedural blobs."""
    bank = opts["region_bank"]
    if bank == "data":
        bank = str(data.test) if (data.test / "SegmentationObject").is_dir() else "none"
    return ["--region-bank", str(bank), "--holes", "standard"]


def _inpainting_grid(encoder: Path, data: Datasets, opts: dict, seed: int, out: Path) -> None:
    """`cebench inpaint` on the first 8 test images: out/grid.png (masked / filled / original)."""
    from pretext.inpaint import main as inpaint_main

    argv = ["--checkpoint", str(encoder), "--images", str(data.test), "--split", data.test_split, "--mask",
            opts["mask"], "--seed", str(seed), "--overlap", str(opts["overlap"]), *_hole_args(data, opts),
            "--max-images", "8", "--out", str(out)]
    with captured_errors() as errors:
        if inpaint_main(argv, prog="cebench inpaint") != 0:
            raise TaskError(errors[-1] if errors else "cebench inpaint failed")


NN_SCORES = ("mean_l1", "mean_l2", "psnr")


def _image_sizes(encoder: Path) -> tuple[int, int]:
    """(input size, load size) of a run: eval-inpainting's centre crop, so that NN rows score the same pixels."""
    meta = json.loads((encoder / "encoder.json").read_text()) if (encoder / "encoder.json").is_file() else {}
    config = json.loads((encoder / "config.json").read_text()) if (encoder / "config.json").is_file() else {}
    size = int(meta.get("input_size") or config.get("data", {}).get("fine_size") or 0)
    if size < 1:
        raise TaskError(f"{encoder}: no input_size in encoder.json")
    return size, max(size, int(config.get("data", {}).get("load_size") or size))


def run_nn_inpainting(encoder: Path, data: Datasets, opts: dict, seed: int, out: Path) -> TaskResult:
    """`cebench nn-inpaint`: the test images' central holes filled from the training image whose context is
    nearest in the encoder's features (the paper's "NN-inpainting w/ our features"), and with `hog`, in HOG
    features (encoder-independent; every cell stores it, the table averages them). Images, crop, hole and
    --max-images subset are those of the inpainting task with the same max_images, overlap and seed."""
    data = data.whole_images()
    size, load_size = _image_sizes(encoder)
    common = ["--database", str(data.train), "--database-split", data.train_split, "--images", str(data.test),
              "--split", data.test_split, "--size", str(size), "--load-size", str(load_size), *_max_images(opts),
              "--seed", str(seed), "--overlap", str(opts["overlap"])]
    m = _call("transfer.nn_inpaint", ["--features", "encoder", "--encoder", str(encoder), *_layer(opts), *common],
              out / "encoder")
    method = str(m.get("feature_settings", {}).get("encoder_method") or "encoder").replace("_", " ")
    metrics: dict[str, Any] = {"row": f"NN inpainting ({method} features)", **{k: m[k] for k in NN_SCORES},
                               "layer": m.get("feature_settings", {}).get("layer", opts["layer"]),
                               "n_images": m.get("n_images")}
    if opts["hog"]:
        h = _call("transfer.nn_inpaint", ["--features", "hog", *common], out / "hog")
        metrics["nn_hog"] = {k: h[k] for k in NN_SCORES}
    return TaskResult("inpainting", "PSNR (dB)", float(m["psnr"]), metrics)


PROBE_OPTIONS = {"layer": None, "max_images": None, "n_jobs": 1, "precision": "fp32"}
FEATURE_TASKS = ("knn", "linear", "svm", "retrieval")  # tasks with a feature-extraction `precision` option
TASKS: dict[str, Task] = {
    "classify": Task("classify", "classification", {"preset": "classify_demo", "overrides": [], "max_images": None},
                     run_classify),
    "knn": Task("knn", "probe", {**PROBE_OPTIONS, "k": 20}, _probe("knn", "kNN")),
    "linear": Task("linear", "probe", dict(PROBE_OPTIONS), _probe("linear", "Linear")),
    "svm": Task("svm", "probe", dict(PROBE_OPTIONS), _probe("svm", "SVM")),
    "retrieval": Task("retrieval", "retrieval", {"layer": None, "k": 10, "mask": "none", "max_images": None,
                                                  "precision": "fp32"},
                      run_retrieval),
    "inpainting": Task("inpainting", "inpainting", {"mask": "central", "max_images": None, "overlap": 4,
                                                    "region_bank": "data"}, run_inpainting, needs=("decoder",)),
    "nn_inpainting": Task("nn_inpainting", "inpainting", {"layer": None, "hog": True, "max_images": None, "overlap": 4},
                          run_nn_inpainting),
    "detection": Task("detection", "detection", {"preset": "detect_demo", "overrides": [], "max_images": None},
                      run_detection),
    "segmentation": Task("segmentation", "segmentation", {"preset": "segment_demo", "overrides": [], "max_images": None,
                                                          "root": None, "test_root": None, "train_split": None,
                                                          "test_split": None}, run_segmentation),
}


def resolve_options(task: Task, given: dict | None, where: str) -> dict:
    """The task's defaults updated by the suite's options; an unknown option is a ValueError naming it."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(task.options))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {', '.join(unknown)} for task {task.name}; "
                         f"known: {', '.join(sorted(task.options)) or 'none'}")
    opts = {**task.options, **given}
    if not isinstance(opts.get("overrides", []), list):
        raise ValueError(f"{where}.overrides must be a list of key=value strings")
    return opts
