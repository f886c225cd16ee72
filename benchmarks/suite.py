"""`cebench run SUITE_OR_YAML --out RESULTS_DIR [key=value ...] [--dry-run] [--force]`: pretrain, evaluate, tabulate.

A suite names its data, its pretrainings (a pretext preset with overrides, or an AlexNet state dict to import),
its evaluation tasks (by registry name, with options) and its seeds. The runner pretrains every method once per
seed, then runs every cell (pretraining x task x seed) and records it as `RESULTS_DIR/cells/<p>__<t>__seed<s>.json`.
A finished cell is skipped on a re-run (`--force` redoes it), a pretraining with its encoder exported is reused,
an interrupted one resumes from its checkpoint; a failed pretraining or cell is recorded with its error and the
rest goes on; the exit code is 1 when any cell failed. Then the tables and figures are rebuilt from the cells.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from pretext.config import ConfigError, apply_overrides, load_raw, preset_names
from pretext.data.fingerprint import data_fingerprint
from pretext.engine.checkpoint import atomic_write_text
from pretext.engine.provenance import device_description, git_commit, versions

from transfer.evaluate import json_safe

from .tasks import FEATURE_TASKS, TASKS, Datasets, Task, TaskError, captured_errors, resolve_options

log = logging.getLogger("cebench")

SUITE_DIR = "suites"
TOP_KEYS = {"name", "description", "base", "seeds", "data", "pretrainings", "tasks", "reference", "start", "precision"}
PRECISIONS = ("fp32", "bf16", "auto")  # `precision`: train.precision of every pretraining and training task
# `start`: how every row's fine-tuning begins, the same for every encoder (Krahenbuhl et al.'s data-dependent init):
# the overrides it appends, last, to the suite's training tasks that have new fully-connected layers.
STARTS = {
    "preset": [],  # whatever each task's preset says
    "none": ["model.init=data_dependent", "model.rescale_encoder=false"],  # new head at unit scale, encoder as is
    "data_dependent": ["model.init=data_dependent", "model.rescale_encoder=true"],  # + encoder and head calibrated
}
START_TASKS = ("classify", "detection")
DATA_KEYS = {"root", "pretrain", "train_split", "test_split", "check_images", "labelled", "object_size"}
LABELLED = ("images", "objects")  # data.labelled: the labelled tasks on whole images, or on crops of VOC boxes
PRETRAIN_DATA = ("pretrain", "labelled")  # pretrainings.NAME.data: which images (and labels) it trains on
PRETRAIN_KEYS = {"preset", "overrides", "supervision", "import", "backbone", "weights", "tasks", "data"}
SUPERVISION = {"context_encoder": "context", "autoencoder": "none (reconstruction)",
               "context_prediction": "relative position", "random": "none", "supervised": "labels",
               "gated_inpainting": "context (free-form holes)", "backbone": "none (random init)"}
HAS_DECODER = ("context_encoder", "autoencoder", "gated_inpainting")


@dataclass(frozen=True)
class Pretraining:
    """One row of Table 2: how its encoder is made."""

    name: str
    method: str
    supervision: str
    preset: str | None = None
    overrides: tuple[str, ...] = ()
    weights: Path | None = None  # import: a torchvision AlexNet state dict; with backbone: its state dict
    backbone: str | None = None  # timm:NAME / torchvision:NAME: evaluated as it is (its weights, or random init)
    tasks: tuple[str, ...] | None = None  # the suite's tasks it is evaluated on; None = all
    data: str = "pretrain"  # "labelled": trains on the labelled training set (a supervised row), not data.pretrain


@dataclass(frozen=True)
class Suite:
    """A validated suite."""

    name: str
    seeds: tuple[int, ...]
    data_root: Path | None  # None = the built-in demo data
    pretrain_root: Path | None
    train_split: str
    test_split: str
    pretrainings: dict[str, Pretraining]
    tasks: dict[str, tuple[Task, dict]]
    reference: tuple[dict, ...] = ()
    check_images: int | None = 200  # images decoded by the pre-flight data check; None = all, 0 = no check
    labelled: str = "images"  # "objects": the labelled tasks on crops of the VOC root's boxes (transfer.objects)
    object_size: int = 72  # side of those crops in pixels


@dataclass(frozen=True)
class Cell:
    """One pretraining x one task x one seed."""

    pretraining: str
    task: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.pretraining}__{self.task}__seed{self.seed}"


# --- loading and validation -------------------------------------------------------------------------

def suite_names() -> list[str]:
    """Names of the suites shipped in benchmarks/suites."""
    return preset_names("benchmarks", SUITE_DIR)


def _suite_key(key: str) -> tuple[str, ...]:
    """A dotted override key of a suite file: any path below a known top-level key."""
    parts = tuple(key.split("."))
    if parts[0] not in TOP_KEYS:
        raise ConfigError(f"override {key!r}: unknown suite key {parts[0]!r}; known: {', '.join(sorted(TOP_KEYS))}")
    return parts


def _path(value: Any, where: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    # absolute, so a finished cell is found again whether the suite is run with a relative or an absolute path
    return Path(value).expanduser().resolve()


def _pretraining(name: str, spec: Any, seeds_where: str, precision: str | None = None) -> Pretraining:
    where = f"pretrainings.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with preset (or import), got {spec!r}")
    unknown = sorted(set(spec) - PRETRAIN_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(PRETRAIN_KEYS))}")
    overrides = spec.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"{where}.overrides must be a list of key=value strings")
    overrides = [*overrides, *([f"train.precision={precision}"] if precision else [])]
    tasks = spec.get("tasks")
    if tasks is not None and (not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks)):
        raise ConfigError(f"{where}.tasks must be a non-empty list of the suite's task names, got {tasks!r}")
    tasks = tuple(tasks) if tasks is not None else None
    data = spec.get("data", "pretrain")
    if data not in PRETRAIN_DATA:
        raise ConfigError(f"{where}.data must be one of {', '.join(PRETRAIN_DATA)}, got {data!r}")
    given = [k for k in ("preset", "import", "backbone") if spec.get(k) is not None]
    if len(given) > 1:
        raise ConfigError(f"{where}: give one of preset, import and backbone, not {' and '.join(given)}")
    if spec.get("weights") is not None and spec.get("backbone") is None:
        raise ConfigError(f"{where}.weights is the state dict of a backbone row (backbone: timm:NAME); an AlexNet "
                          f"state dict is an import row (import: FILE)")
    if spec.get("backbone") is not None:
        from transfer.backbones import is_backbone_spec

        if not is_backbone_spec(str(spec["backbone"])):
            raise ConfigError(f"{where}.backbone must be timm:NAME or torchvision:NAME, got {spec['backbone']!r}")
        extra = [k for k in ("overrides", "data") if spec.get(k) is not None]
        if extra:
            raise ConfigError(f"{where}: {' and '.join(extra)} belong to a pretraining; a backbone row is evaluated "
                              f"as it is")
        weights = _path(spec.get("weights"), f"{where}.weights")
        supervision = spec.get("supervision") or ("weights " + weights.name if weights else SUPERVISION["backbone"])
        return Pretraining(name, "backbone", str(supervision), weights=weights, backbone=str(spec["backbone"]),
                           tasks=tasks)
    if spec.get("import") is not None:
        return Pretraining(name, "supervised", str(spec.get("supervision") or SUPERVISION["supervised"]),
                           weights=_path(spec["import"], f"{where}.import"), tasks=tasks)
    if not isinstance(spec.get("preset"), str):
        raise ConfigError(f"{where}: needs a pretext preset or YAML file (preset: demo), import: WEIGHTS.pth or "
                          f"backbone: timm:NAME")
    from pretext.config import load_config

    try:  # validates the preset and every override now, not an hour into the run
        cfg = load_config(spec["preset"], [*overrides, "train.seed=0"])
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return Pretraining(name, cfg.method, str(spec.get("supervision") or SUPERVISION[cfg.method]), spec["preset"],
                       tuple(overrides), tasks=tasks, data=data)


# Tasks that train, with the module and config class (a transfer.finetune.TaskConfig) that resolve their preset
# and overrides.
TRAINING_TASKS = {"classify": ("transfer.classify", "ClassifyConfig"), "detection": ("transfer.detect", "DetectConfig"),
                  "segmentation": ("transfer.segment", "SegmentConfig")}


def _task_config(kind: str, opts: dict) -> Any:
    """The resolved config of a task that trains (TRAINING_TASKS) from its preset and overrides."""
    import importlib

    module, root = TRAINING_TASKS[kind]
    return getattr(importlib.import_module(module), root).load(opts["preset"], opts["overrides"])


def _task(name: str, spec: Any, start: str = "preset", precision: str | None = None) -> tuple[Task, dict]:
    where = f"tasks.{name}"
    if spec is not None and not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping of options, got {spec!r}")
    spec = dict(spec or {})
    kind = spec.pop("task", name)
    if kind not in TASKS:
        raise ConfigError(f"{where}: unknown task {kind!r}; registered: {', '.join(TASKS)}")
    task = TASKS[kind]
    try:
        opts = resolve_options(task, spec, where)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    suite_keys = [*(STARTS[start] if kind in START_TASKS else []),
                  *([f"train.precision={precision}"] if kind in TRAINING_TASKS and precision else [])]
    taken = {o.split("=", 1)[0] for o in suite_keys}
    clash = [o for o in opts.get("overrides", []) if o.split("=", 1)[0] in taken]
    if clash:
        raise ConfigError(f"{where}.overrides sets {', '.join(clash)}, which the suite's start / precision set for "
                          f"every row alike; change the suite key instead")
    opts = {**opts, "overrides": [*opts["overrides"], *suite_keys]} if suite_keys else opts
    if kind in FEATURE_TASKS and precision:
        if "precision" in spec:
            raise ConfigError(f"{where}.precision is set, and so is the suite's precision for every row alike; "
                              f"change the suite key instead")
        opts = {**opts, "precision": precision}
    if kind in TRAINING_TASKS:
        try:
            _task_config(kind, opts)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return task, opts


def build_suite(raw: dict, name: str) -> Suite:
    """Validate a nested suite dict: unknown keys, presets, overrides, task names and options."""
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"suite {name}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(TOP_KEYS))}")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"suite {name}: seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    data = raw.get("data") or {}
    if not isinstance(data, dict) or set(data) - DATA_KEYS:
        raise ConfigError(f"suite {name}: data takes {', '.join(sorted(DATA_KEYS))}, got {data!r}")
    pre, tasks = raw.get("pretrainings"), raw.get("tasks")
    if not isinstance(pre, dict) or not pre:
        raise ConfigError(f"suite {name}: pretrainings must map names to specs")
    if not isinstance(tasks, dict) or not tasks:
        raise ConfigError(f"suite {name}: tasks must map names to options")
    bad = [n for n in (*pre, *tasks) if not str(n).replace("_", "").replace("-", "").isalnum()]
    if bad:
        raise ConfigError(f"suite {name}: names may hold letters, digits, - and _ only: {', '.join(map(str, bad))}")
    start = raw.get("start", "preset")
    if start not in STARTS:
        raise ConfigError(f"suite {name}: start must be one of {', '.join(STARTS)}, got {start!r}")
    precision = raw.get("precision")
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"suite {name}: precision must be one of {', '.join(PRECISIONS)} or null, got {precision!r}")
    reference = raw.get("reference") or []
    if not isinstance(reference, list) or not all(isinstance(r, dict) for r in reference):
        raise ConfigError(f"suite {name}: reference must be a list of table rows")
    for n, s in pre.items():
        unknown_tasks = [t for t in ((s or {}).get("tasks") or []) if t not in tasks] if isinstance(s, dict) else []
        if unknown_tasks:
            raise ConfigError(f"suite {name}: pretrainings.{n}.tasks names {', '.join(map(str, unknown_tasks))}, "
                              f"not among the suite's tasks ({', '.join(map(str, tasks))})")
    from .tables import reference_rows

    try:
        reference_rows(reference)
    except ValueError as exc:
        raise ConfigError(f"suite {name}: reference: {exc}") from None
    return Suite(str(raw.get("name") or name), tuple(dict.fromkeys(seeds)), _path(data.get("root"), "data.root"),
                 _path(data.get("pretrain"), "data.pretrain"), str(data.get("train_split", "trainval")),
                 str(data.get("test_split", "test")),
                 {str(n): _pretraining(str(n), s, "seeds", precision) for n, s in pre.items()},
                 {str(n): _task(str(n), s, start, precision) for n, s in tasks.items()}, tuple(reference),
                 _check_images(data.get("check_images", 200), name), *_labelled(data, name))


def _labelled(data: dict, name: str) -> tuple[str, int]:
    labelled, size = data.get("labelled", "images"), data.get("object_size", 72)
    if labelled not in LABELLED:
        raise ConfigError(f"suite {name}: data.labelled must be one of {', '.join(LABELLED)}, got {labelled!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ConfigError(f"suite {name}: data.object_size must be an integer >= 8, got {size!r}")
    return labelled, size


def _check_images(value: Any, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ConfigError(f"suite {name}: data.check_images must be an integer >= 0 (0 = no check) or null (all "
                          f"images), got {value!r}")
    return value


def load_suite(name_or_path: str, overrides: list[str] | None = None) -> Suite:
    """A shipped suite or YAML file (following `base:`), with `key=value` overrides, validated."""
    raw = load_raw(name_or_path, package="benchmarks", folder=SUITE_DIR)
    return build_suite(apply_overrides(raw, list(overrides or []), resolve=_suite_key), Path(name_or_path).stem)


# --- data -------------------------------------------------------------------------------------------

def datasets(suite: Suite, create: bool) -> tuple[Datasets, Path]:
    """(labelled train/test, pretraining images) of the suite; the demo data and object crops are made when
    `create` (without it, the crops' folders are named but may not exist yet)."""
    from pretext.engine.trainer import default_demo_dir
    from transfer.coco import is_coco_root
    from transfer.features import is_voc_root

    root = suite.data_root
    if root is None:
        root = default_demo_dir()
        if create:
            from pretext.data.demo import ensure_demo_data

            ensure_demo_data(root)
    elif not root.is_dir():
        raise ConfigError(f"data.root: directory not found: {root}")
    if suite.labelled == "objects":
        return _object_crops(suite, root, create), suite.pretrain_root or root
    if suite.data_root is None or is_voc_root(root) or is_coco_root(root):
        labelled = Datasets(root, root, suite.train_split, suite.test_split)
        return labelled, suite.pretrain_root or root
    train, test = root / "train", root / "test"
    if not train.is_dir() or not test.is_dir():
        raise ConfigError(f"data.root {root}: not a VOC or COCO root, and has no train/ and test/ ImageFolders")
    return Datasets(train, test, suite.train_split, suite.test_split), suite.pretrain_root or train


def _object_crops(suite: Suite, root: Path, create: bool) -> Datasets:
    """data.labelled=objects: ImageFolders of the VOC root's boxes, train/ from train_split, test/ from test_split;
    with `create`, the root passes the data check before any crop is written."""
    from transfer.features import is_voc_root
    from transfer.objects import ensure_object_crops, object_crops_dir

    if suite.train_split == suite.test_split:
        raise ConfigError(f"data.labelled=objects: train_split and test_split are both {suite.train_split!r}")
    splits = {suite.train_split: "train", suite.test_split: "test"}
    if not create and suite.data_root is None and not (root / "ImageSets").is_dir():  # demo data not made yet
        crops = root.parent / "objects" / f"{root.name}-(made on first run)"
    elif not is_voc_root(root):
        raise ConfigError(f"data.labelled=objects needs a VOC root (Annotations/ with boxes); {root} is not one")
    else:
        if create:
            check_root(suite, root)
        try:
            crops = (ensure_object_crops if create else object_crops_dir)(root, splits, size=suite.object_size)
        except ValueError as exc:
            raise ConfigError(f"data.labelled=objects: {exc}") from None
    return Datasets(crops / "train", crops / "test", suite.train_split, suite.test_split, scenes=root)


def plan(suite: Suite) -> list[Cell]:
    """Every cell, pretraining-major; inpainting only for pretrainings with a decoder, and a pretraining that
    lists its `tasks` only on those."""
    cells = []
    for p in suite.pretrainings.values():
        for t, (task, _) in suite.tasks.items():
            if ("decoder" in task.needs and p.method not in HAS_DECODER) or (p.tasks is not None and t not in p.tasks):
                continue
            cells += [Cell(p.name, t, s) for s in suite.seeds]
    return cells


# --- running ----------------------------------------------------------------------------------------

def _pretrain_overrides(p: Pretraining, data: Datasets, pretrain_root: Path, suite: Suite, seed: int) -> list[str]:
    root = data.train if p.data == "labelled" else pretrain_root
    data_keys = [] if suite.data_root is None and suite.pretrain_root is None and p.data == "pretrain" else [
        f"data.root={root}", f"data.split={data.train_split}"]
    return [*data_keys, *p.overrides, f"train.seed={seed}", "train.progress=false"]


def pretrain(p: Pretraining, suite: Suite, data: Datasets, pretrain_root: Path, seed: int, run_dir: Path) -> dict:
    """Make (or reuse) the encoder of one pretraining and seed; returns its pretraining record."""
    if (run_dir / "encoder.json").is_file():
        return _pretrain_record(run_dir)
    if p.backbone is not None:
        from transfer.backbones import write_backbone_record

        try:
            write_backbone_record(run_dir, p.backbone, p.weights, seed)
        except Exception as exc:  # an unknown model or a state dict that does not fit: this row's cells fail
            raise TaskError(f"{p.backbone}: {exc}") from exc
        return _pretrain_record(run_dir)
    with captured_errors() as errors:
        if p.weights is not None:
            from pretext.import_alexnet import main as import_main

            code = import_main([str(p.weights), "--out", str(run_dir)], prog="cebench import-alexnet")
        else:
            from pretext.config import load_config
            from pretext.pretrain import run as run_pretrain

            resume = (run_dir / "checkpoint.pt").is_file()
            cfg = load_config(p.preset, [*_pretrain_overrides(p, data, pretrain_root, suite, seed),
                                         f"train.resume={str(resume).lower()}"])
            code = run_pretrain(cfg, run_dir)
    if code != 0 or not (run_dir / "encoder.json").is_file():
        raise TaskError(errors[-1] if errors else f"exit code {code}")
    return _pretrain_record(run_dir)


def _pretrain_record(run_dir: Path) -> dict:
    meta = json.loads((run_dir / "encoder.json").read_text())
    record = meta.get("pretrain") or {}
    return {"pretrain_seconds": record.get("wall_seconds"), "pretrain_steps": record.get("steps"),
            "encoder_sha256": meta.get("sha256"), "config_hash": meta.get("config_hash")}


def _curve(run_dir: Path) -> list[list[float]] | None:
    import csv

    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f) if r.get("loss") not in (None, "")]
    return [[s, v] for s, v in rows] or None


# Raised when what a run computes changes while its config does not (2: issue 20's corrected data-dependent init),
# so that no cell or encoder of the earlier code is reused.
CODE_VERSION = 4  # 3: cells and pretrainings keyed by their data's fingerprints; 4: fine-tuning views decode JPEGs
# once at the scale of the largest rescale (the decoded-image cache)


def _hash(value: Any) -> str:
    import hashlib

    value = {"code_version": CODE_VERSION, "value": value}
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


# Settings that do not change what a run computes: left out of the hashes that decide whether to reuse it.
RUN_CONTROL = {"train": {"resume", "progress", "device", "ckpt_every", "log_every", "sample_every",
                         "keep_checkpoints", "ddp_timeout_s", "seed"},
               "data": {"workers"}}


def _resolved(config: dict) -> dict:
    return {s: ({k: v for k, v in sec.items() if k not in RUN_CONTROL.get(s, ())} if isinstance(sec, dict) else sec)
            for s, sec in config.items()}


def pretraining_hash(p: Pretraining, suite: Suite, data: Datasets, pretrain_root: Path) -> str:
    """Identifies what a pretraining computes (the resolved config, so an edited preset file counts too): a
    changed one gets a new encoder directory."""
    if p.weights is not None or p.backbone is not None:
        stat = p.weights.stat() if p.weights is not None and p.weights.is_file() else None
        versions = None
        if p.backbone and p.weights is None:  # a random init depends on the library that draws it
            from importlib.metadata import version

            versions = {k: version(k) for k in ("timm", "torchvision")}
        return _hash({"weights": str(p.weights.resolve()) if p.weights else None, "size": stat and stat.st_size,
                      "mtime_ns": stat and stat.st_mtime_ns,
                      **({"backbone": p.backbone, "versions": versions} if p.backbone else {})})
    from pretext.config import load_config

    cfg = load_config(p.preset, _pretrain_overrides(p, data, pretrain_root, suite, 0))
    images = data.train if p.data == "labelled" else pretrain_root
    return _hash({"config": _resolved(cfg.to_dict()), "data": fingerprint(images, cfg.data.split)})


_PRINTS: dict[tuple[str, str | None], str] = {}  # per run (cleared by _run_locked and dry_run): a root is walked once


def fingerprint(root: Path, split: str | None) -> str:
    """data_fingerprint, computed once per run for each (root, split)."""
    key = (str(Path(root).resolve()), split)
    if key not in _PRINTS:
        _PRINTS[key] = data_fingerprint(root, split)
    return _PRINTS[key]


def data_prints(data: Datasets) -> dict[str, str]:
    """The fingerprints of a suite's labelled data (and of the whole images behind object crops): computed once
    per run, they key every cell, so an edited dataset re-runs the cells that read it."""
    prints = {"train": fingerprint(data.train, data.train_split), "test": fingerprint(data.test, data.test_split)}
    if data.scenes is not None:
        prints.update(scenes_train=fingerprint(data.scenes, data.train_split),
                      scenes_test=fingerprint(data.scenes, data.test_split))
    return prints


def cell_spec(cell: Cell, suite: Suite, data: Datasets, pretrain_root: Path, pretrained: str | None = None,
              prints: dict[str, str] | None = None) -> dict[str, Any]:
    """What a cell computes, in parts (the code version, the encoder's pretraining, the task's settings and seed,
    the data): a finished cell is reused only while every part is unchanged, and the parts say why it is not.
    `pretrained`, `prints`: the cell's pretraining_hash and data_prints(data) when the caller has them already."""
    task, opts = suite.tasks[cell.task]
    p = suite.pretrainings[cell.pretraining]
    resolved = None
    if task.name in TRAINING_TASKS:
        resolved = _resolved(_task_config(task.name, opts).to_dict())
    return {"code_version": CODE_VERSION,
            "pretraining": pretrained or pretraining_hash(p, suite, data, pretrain_root),
            "task": _hash({"task": task.name, "options": opts, "resolved": resolved, "seed": cell.seed}),
            "data": _hash({"paths": [str(data.train), str(data.test), data.train_split, data.test_split],
                           "prints": prints or data_prints(data)})}


def cell_hash(cell: Cell, suite: Suite, data: Datasets, pretrain_root: Path, pretrained: str | None = None) -> str:
    """The digest of `cell_spec`: the cell's name for its work directory and its `spec_hash`."""
    return _hash(cell_spec(cell, suite, data, pretrain_root, pretrained))


SPEC_REASONS = {"code_version": "the code that computes it changed", "pretraining": "its pretraining changed "
                "(preset, overrides or pretraining images)", "task": "the task's settings changed",
                "data": "its data changed (images, labels or split lists)"}


def rerun_reason(stored: dict, parts: dict[str, Any]) -> str | None:
    """Why a stored cell cannot be reused with `parts`, or None when it can."""
    if stored.get("status") != "ok":
        return "it failed"
    old = stored.get("spec_parts")
    if not isinstance(old, dict):  # written before the parts were stored: only its digest can tell
        return None if stored.get("spec_hash") == _hash(parts) else SPEC_REASONS["code_version"]
    if old.get("code_version") != parts["code_version"]:  # every other part is hashed with it: the one reason
        return SPEC_REASONS["code_version"]
    changed = [SPEC_REASONS[k] for k in SPEC_REASONS if old.get(k) != parts[k]]
    return "; ".join(changed) or None


def run_cell(cell: Cell, suite: Suite, data: Datasets, out: Path, encoder_dir: Path, record: dict,
             spec: str) -> dict:
    """Run one cell's task; the cell record (status ok)."""
    task, opts = suite.tasks[cell.task]
    p = suite.pretrainings[cell.pretraining]
    work = out / "work" / f"{cell.key}-{spec}"
    if (work / "metrics.json").exists():  # a finished earlier run (--force, or a cell re-run): start afresh
        shutil.rmtree(work)
    t0 = time.perf_counter()
    result = task.run(encoder_dir, data, opts, cell.seed, work)
    # Retrieval, inpainting and NN-inpainting grids, and attention maps, as figures named after the suite's task
    for grid, prefix in ((work / "grid.png", ""), (work / "grid" / "grid.png", ""), (work / "encoder" / "grid.png", ""),
                         (work / "grid" / "attention.png", "attention_")):
        if grid.is_file():
            (out / "figures").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(grid, out / "figures" / f"{prefix}{cell.task}_{cell.pretraining}_seed{cell.seed}.png")
    return {**_cell_head(suite, cell, p, task), "status": "ok", "error": None,
            "headline": {"name": result.headline_name, "value": result.headline}, "metrics": result.metrics,
            **({"per_class": result.per_class} if result.per_class else {}),
            **({"pretrain_curve": curve} if (curve := _curve(encoder_dir)) else {}),
            **record, "wall_seconds": round(time.perf_counter() - t0, 3), "options": opts, "spec_hash": spec}


def _cell_head(suite: Suite, cell: Cell, p: Pretraining, task: Task) -> dict:
    return {"suite": suite.name, "pretraining": cell.pretraining, "method": p.method, "supervision": p.supervision,
            "task": cell.task, "kind": task.kind, "seed": cell.seed, "git_commit": git_commit(),
            "versions": versions(), "device": device_description(_device())}


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def failed_cell(suite: Suite, cell: Cell, error: str, spec: str) -> dict:
    """The record of a cell that could not run."""
    task, _ = suite.tasks[cell.task]
    return {**_cell_head(suite, cell, suite.pretrainings[cell.pretraining], task), "status": "failed",
            "error": error, "headline": None, "metrics": {}, "spec_hash": spec}


class SuiteLockedError(ConfigError):
    """Another run holds the results directory."""


@contextlib.contextmanager
def results_lock(out: Path) -> Iterator[None]:
    """Hold OUT/.lock (an exclusive, non-blocking flock) while a suite writes into OUT: a second run on the same
    directory stops at once with a message naming the holder, instead of interleaving cells. The lock goes with
    the process, so a killed run never leaves it behind."""
    import fcntl
    import os
    import socket

    out.mkdir(parents=True, exist_ok=True)
    path = out / ".lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise SuiteLockedError(f"{out} is in use by another suite run ({holder}); wait for it to finish or "
                                   f"choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_suite(suite: Suite, out: Path, force: bool = False) -> int:
    """Pretrain, run every cell not yet done, rebuild the tables; 0 when every cell is ok, 1 otherwise. Holds
    the results directory's lock throughout."""
    with results_lock(out):
        return _run_locked(suite, out, force)


def preflight(suite: Suite, data: Datasets, pretrain_root: Path) -> None:
    """`cebench data check` on the suite's data (a seeded sample of `data.check_images` images of each root)
    before anything trains; a ConfigError listing the problems when there are any. Object crops are not checked
    (they are written from a root that was checked before they were made: `_object_crops`)."""
    roots = [pretrain_root] if data.scenes is not None else [data.train, data.test, pretrain_root]
    for root in dict.fromkeys(r for r in roots if r != data.scenes):
        check_root(suite, root)


def check_root(suite: Suite, root: Path) -> None:
    """The pre-flight data check of one root (nothing with data.check_images=0)."""
    from transfer.data_check import check_dataset

    if suite.check_images == 0:
        return
    detects = any(task.kind == "detection" for task, _ in suite.tasks.values())
    report = check_dataset(root, max_images=suite.check_images, require_objects=detects)
    log.info("data check %s (%s): %d image(s) decoded, %d problem(s), %d warning(s)", root, report.format,
             report.checked, len(report.problems), len(report.warnings))
    for warning in report.warnings[:5]:
        log.warning("  %s", warning)
    if len(report.warnings) > 5:
        log.warning("  and %d more warning(s): `cebench data check %s` lists them all", len(report.warnings) - 5, root)
    if report.problems:
        for problem in report.problems[:20]:
            log.error("  %s", problem)
        raise ConfigError(f"data check: {len(report.problems)} problem(s) in {root} (first: "
                          f"{report.problems[0]}); fix them, or run `cebench data check {root}` for the full "
                          f"report (data.check_images=0 skips the check)")


def _run_locked(suite: Suite, out: Path, force: bool) -> int:
    _PRINTS.clear()
    data, pretrain_root = datasets(suite, create=True)
    preflight(suite, data, pretrain_root)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    cells = plan(suite)
    pretrained = {name: pretraining_hash(p, suite, data, pretrain_root) for name, p in suite.pretrainings.items()}
    prints = data_prints(data)
    parts = {cell.key: cell_spec(cell, suite, data, pretrain_root, pretrained[cell.pretraining], prints)
             for cell in cells}
    specs = {key: _hash(value) for key, value in parts.items()}
    atomic_write_text(out / "suite.json", json.dumps({**_describe(suite, data, pretrain_root), "cells": specs,
                                                      "reference": list(suite.reference)}, indent=2) + "\n")
    failed = 0
    broken: dict[tuple[str, int], str] = {}  # a pretraining that failed is not retried for its other cells
    whys = {c.key: _why_run(out / "cells" / f"{c.key}.json", parts[c.key], force) for c in cells}  # read once
    todo = [c for c in cells if whys[c.key] is not None]
    seconds: dict[str, list[float]] = {}  # task -> wall seconds of its cells run so far (pretraining included)
    for i, cell in enumerate(cells, 1):
        path = out / "cells" / f"{cell.key}.json"
        spec = specs[cell.key]
        why = whys[cell.key]
        if why is None:
            log.info("[%d/%d] %s: done, skipped", i, len(cells), cell.key)
            continue
        log.info("[%d/%d] %s (%s)%s", i, len(cells), cell.key, why, time_left(todo, seconds))
        started = time.perf_counter()
        p = suite.pretrainings[cell.pretraining]
        encoder_dir = out / "pretrain" / f"{p.name}-{pretrained[p.name]}" / f"seed{cell.seed}"
        try:
            if (p.name, cell.seed) in broken:
                raise TaskError(broken[p.name, cell.seed])
            try:
                record = pretrain(p, suite, data, pretrain_root, cell.seed, encoder_dir)
            except Exception as exc:
                broken[p.name, cell.seed] = f"pretraining {p.name} (seed {cell.seed}) failed: {exc}"
                raise TaskError(broken[p.name, cell.seed]) from exc
            result = run_cell(cell, suite, data, out, encoder_dir, record, spec)
        except Exception as exc:  # a failed cell is recorded and the suite goes on
            log.error("%s failed: %s", cell.key, exc)
            log.debug("%s", traceback.format_exc())
            error = str(exc) if isinstance(exc, TaskError) else f"{type(exc).__name__}: {exc}"
            result = failed_cell(suite, cell, error, spec)
        atomic_write_text(path, json.dumps(json_safe({**result, "spec_parts": parts[cell.key]}), indent=2) + "\n")
        failed += result["status"] != "ok"
        seconds.setdefault(cell.task, []).append(time.perf_counter() - started)
        todo = [c for c in todo if c.key != cell.key]
    _tables(out, suite, specs)
    if failed:
        log.error("%d of %d cells failed: see %s", failed, len(cells), out / "failed.md")
    return 1 if failed else 0


def _why_run(path: Path, parts: dict[str, Any], force: bool) -> str | None:
    """Why the cell stored at `path` runs (not there, --force, or what changed), or None when it is reused."""
    if not path.is_file():
        return "new"
    if force:
        return "--force"
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return "its stored record is unreadable"
    return rerun_reason(stored, parts)


def time_left(todo: list[Cell], seconds: dict[str, list[float]]) -> str:
    """', about 12 min left': the cells still to run (this one included) at the mean time of their task's cells
    run so far (of all cells, for a task not run yet); empty before the first cell has finished."""
    done = [s for v in seconds.values() for s in v]
    if not done:
        return ""
    from .tables import format_duration

    mean = sum(done) / len(done)
    total = sum(sum(seconds[c.task]) / len(seconds[c.task]) if c.task in seconds else mean for c in todo)
    return f", about {format_duration(total)} left"


def _tables(out: Path, suite: Suite, specs: dict[str, str]) -> None:
    from .figures import write_figures
    from .report import write_report
    from .tables import load_cells, write_tables
    from .verdict import summary

    cells = load_cells(out, specs)  # only this plan's cells: not those of removed seeds, tasks or settings
    write_tables(out, cells, reference=list(suite.reference) or None)
    write_figures(out, cells)
    write_report(out, cells, reference=list(suite.reference) or None)
    print(summary(out, cells, list(suite.reference) or None), end="")


def _describe(suite: Suite, data: Datasets, pretrain_root: Path) -> dict:
    return {"name": suite.name, "seeds": list(suite.seeds), "labelled_train": str(data.train),
            "labelled_test": str(data.test), "splits": [data.train_split, data.test_split],
            "pretrain_images": str(pretrain_root), "labelled": suite.labelled,
            "pretrainings": {n: {"method": p.method, "preset": p.preset, "overrides": list(p.overrides), "data": p.data,
                                 "import": str(p.weights) if p.weights and not p.backbone else None,
                                 "backbone": p.backbone, "weights": str(p.weights) if p.weights and p.backbone else None}
                             for n, p in suite.pretrainings.items()},
            "tasks": {n: {"task": t.name, **opts} for n, (t, opts) in suite.tasks.items()}}


# --- dry run ----------------------------------------------------------------------------------------

def dry_run(suite: Suite, out: Path | None = None) -> str:
    """The plan, after checking every path; raises ConfigError for a missing one. With the results directory
    `out` of an earlier run: which cells would run again, and why."""
    _PRINTS.clear()
    data, pretrain_root = datasets(suite, create=False)
    if suite.data_root is not None:
        for path in {data.train, data.test, pretrain_root} if suite.labelled == "images" else {pretrain_root}:
            if not path.exists():
                raise ConfigError(f"path not found: {path}")
    for p in suite.pretrainings.values():
        if p.weights is not None and not p.weights.is_file():
            raise ConfigError(f"pretrainings.{p.name}.{'weights' if p.backbone else 'import'}: file not found: "
                              f"{p.weights}")
    for name, (_, opts) in suite.tasks.items():  # a task with its own data roots (segmentation)
        for key in ("root", "test_root"):
            if opts.get(key) is not None and not Path(opts[key]).is_dir():
                raise ConfigError(f"tasks.{name}.{key}: directory not found: {opts[key]}")
    lines = [f"suite {suite.name}: {len(suite.pretrainings)} pretrainings x {len(suite.tasks)} tasks x "
             f"{len(suite.seeds)} seeds", f"labelled data: {data.train} -> {data.test}"
             f" (splits {data.train_split} -> {data.test_split}"
             f"{'; crops of the boxes' if suite.labelled == 'objects' else ''})",
             f"pretraining images: {pretrain_root}"]
    images = 0
    for p in suite.pretrainings.values():
        if p.backbone is not None:
            lines.append(f"  pretrain {p.name}: backbone {p.backbone}, "
                         f"{f'weights {p.weights}' if p.weights else 'random init (seeded by the suite seed)'}")
            continue
        if p.weights is not None:
            lines.append(f"  pretrain {p.name}: import {p.weights}")
            continue
        from pretext.config import load_config

        cfg = load_config(p.preset, _pretrain_overrides(p, data, pretrain_root, suite, 0))
        n = cfg.train.max_steps * cfg.train.batch_size
        images += n * len(suite.seeds)
        lines.append(f"  pretrain {p.name}: {p.method}, preset {p.preset}, {cfg.train.max_steps} steps x "
                     f"{cfg.train.batch_size} = {n:,} images per seed")
    for name, (task, opts) in suite.tasks.items():
        extra = ""
        if task.name in TRAINING_TASKS:
            c = _task_config(task.name, opts)
            extra = f", {c.train.max_steps} steps x {c.train.batch_size}"
            images += c.train.max_steps * c.train.batch_size * len(suite.pretrainings) * len(suite.seeds)
        lines.append(f"  task {name}: {task.name} ({task.kind}){extra}, options {opts}")
    cells = plan(suite)
    lines.append(f"{len(cells)} cells; about {images:,} training images through the networks in all")
    if out is not None and (out / "cells").is_dir():
        pretrained = {name: pretraining_hash(p, suite, data, pretrain_root) for name, p in suite.pretrainings.items()}
        prints = data_prints(data)
        whys = {cell.key: _why_run(out / "cells" / f"{cell.key}.json",
                                   cell_spec(cell, suite, data, pretrain_root, pretrained[cell.pretraining], prints),
                                   False) for cell in cells}
        lines.append(f"in {out}: {sum(w is None for w in whys.values())} cell(s) would be reused, "
                     f"{sum(w is not None for w in whys.values())} would run:")
        lines += [f"  run {key} ({why})" for key, why in whys.items() if why is not None]
    return "\n".join(lines)


# --- command ----------------------------------------------------------------------------------------

def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Arguments of the run command."""
    p = argparse.ArgumentParser(prog=prog, description="Run a benchmark suite: pretrain, evaluate, tabulate.")
    p.add_argument("suite", nargs="?", help="a shipped suite (see --list) or a suite YAML file")
    p.add_argument("overrides", nargs="*", help="key=value suite overrides, e.g. seeds=[0,1,2] data.root=DIR")
    p.add_argument("--out", type=Path, help="results directory (default: runs/suites/<suite name>)")
    p.add_argument("--dry-run", action="store_true", help="check paths and configs, print the plan, run nothing")
    p.add_argument("--force", action="store_true", help="redo finished cells (pretrained encoders are reused)")
    p.add_argument("--list", action="store_true", help="list the shipped suites and exit")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse, validate, run (or plan) the suite."""
    from pretext.cli import setup_logging

    setup_logging()
    parser = build_parser(prog)
    args = parser.parse_intermixed_args(argv)
    if args.list:
        print("\n".join(suite_names()))
        return 0
    if not args.suite:
        parser.error("a suite name or YAML file is required")
    try:
        suite = load_suite(args.suite, args.overrides)
        if args.dry_run:
            print(dry_run(suite, args.out or Path("runs") / "suites" / suite.name))
            return 0
        return run_suite(suite, args.out or Path("runs") / "suites" / suite.name, args.force)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
