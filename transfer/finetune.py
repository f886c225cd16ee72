"""What the fine-tuning tasks (`cebench transfer classify|detect|segment`) share: the config base (`TaskConfig`: SGD
and loop settings, the common rules, the task's presets) and the image-loading settings, the inputs
(`TaskInputs`), the lr schedule and the optimiser, the resume checks, heads whose frozen blocks stay in eval mode,
the command line, `TaskTuner`, the engine each task subclasses with its own data, head, loss and prediction, and
`run_fine_tune`, which fine-tunes, tests and writes metrics.json.

A tuner opens the encoder (`transfer.backbones.open_encoder`: the suite's encoders or any timm / torchvision
backbone), lets the task `prepare` (stage checks, views, datasets), opens the checkpoint in the run directory (one
tagged with the same task; refused when a setting that changes the result differs), builds the model
(`_build_model`) and the SGD optimiser, loads the checkpoint's state and wraps the model for DDP. `fit` runs the
shared loop (`pretext.engine.trainer.Engine.fine_tune_loop`) over the task's `train_loader()` with its
`step_values(batch)`, logging the loss, the lr, images/s and what the task adds. `run_fine_tune` then has rank 0
time the task's `predict_test`, score it (`score_test`) with the task's result files, and write metrics.json: the
entries every task records (`TaskTuner.metrics`) with the task's own (`metrics_extra`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pretext.config import (ConfigError, ConfigRoot, _opt, apply_overrides, check_device, check_fields, load_raw,
                            with_defaults)
from pretext.config import preset_names as config_preset_names
from pretext.data.images import DEFAULT_MAX_PIXELS
from pretext.engine.checkpoint import CHECKPOINT, CheckpointError, atomic_write_text, save_checkpoint
from pretext.engine.distributed import DistEnv, barrier, init_distributed, shutdown, wrap_ddp
from pretext.engine.logger import RunLogger
from pretext.engine.provenance import device_description
from pretext.engine.trainer import Engine, convergence, step_seed
from pretext.init import affine_layers, estimate_unseen_norms, has_unseen_norms
from pretext.models.backbones import freeze_parameters, unreached_parameters

from .arguments import fine_tune_main, max_images
from .backbones import encoder_record, eval_norms, open_encoder
from .evaluate import json_safe, provenance
from .features import normalise_input

log = logging.getLogger("cebench")
NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)  # layers that set their outputs' scale
LAYERS = ("fc8", "fc6-8", "all")  # train.layers: the output layers, the new head, or everything
SetT = TypeVar("SetT")  # a task's image set: labelled images, a detection or a segmentation set
NORM_EVAL_DOC = ("keep the encoder's batch-norm layers on their running statistics (eval mode) while fine-tuning: "
                 "batches of a few images make poor batch statistics (detectron2 and mmdetection do the same); "
                 "AlexNets have none")


# --- configuration ------------------------------------------------------------------------------

@dataclass
class ImageLoading:
    """What every task's data section shares: mirroring, loader processes and the decoder's pixel cap; a task's
    data section adds its scales."""

    flip: bool = _opt(True, doc="mirror training images at random")
    workers: int = _opt(2, min=0, doc="data loader processes")
    max_image_pixels: int = _opt(DEFAULT_MAX_PIXELS, min=1, doc="refuse larger images (decompression bombs)")


@dataclass
class SGDConfig:
    """SGD with momentum, step decay and gradient clipping."""

    lr: float = _opt(1e-3, min=0.0)
    momentum: float = _opt(0.9, min=0.0, max=1.0)
    weight_decay: float = _opt(1e-6, min=0.0)
    bias_lr_mult: float = _opt(1.0, min=0.0, doc="bias lr / weight lr (Caffe convention: 2)")
    grad_clip: float = _opt(10.0, min=0.0, doc="max global gradient norm; 0 = off")
    lr_schedule: str = _opt("step", choices=("step", "cosine"),
                            doc="step: lr * lr_gamma ** (step // lr_step); cosine: half a cosine from lr to 0 over "
                                "train.max_steps (then max_steps is part of the result: it cannot change on resume)")
    lr_step: int = _opt(10000, min=0, doc="step schedule: multiply the lr by lr_gamma every lr_step steps; 0 = constant")
    lr_gamma: float = _opt(0.5, min=0.0, max=1.0)
    warmup_steps: int = _opt(0, min=0, doc="the schedule's lr scaled linearly from 1/warmup_steps to 1 over the "
                                           "first steps")


@dataclass
class FineTuneConfig:
    """Loop, devices, precision and checkpoints."""

    layers: str = _opt("all", choices=LAYERS, doc="blocks that are trained (fc8 = the task's output layers, fc6-8 = "
                                                   "the new head, all = with the encoder); the others are frozen")
    max_steps: int = _opt(80000, min=0)
    batch_size: int = _opt(16, min=1, doc="per process")
    seed: int = _opt(0, min=0, doc="weights, data order, augmentation, dropout, test crops, --max-images subsets")
    val_images: int = _opt(0, min=0, doc="labelled training images held out (drawn by the seed) and scored after "
                                         "training as metrics.json's `val`: choose hyper-parameters on these, "
                                         "never on the test set")
    device: str = _opt("auto", doc="auto, cpu, cuda or cuda:N")
    precision: str = _opt("fp32", choices=("fp32", "bf16", "fp16", "auto"),
                          doc="auto = bf16 where the hardware has it natively (AVX512-BF16 / AMX CPUs, bf16 GPUs), "
                              "fp32 elsewhere; the run records what it used")
    channels_last: bool = _opt(True, doc="inputs in NHWC (oneDNN / cuDNN fast paths); false = the plain layout")
    ckpt_every: int = _opt(1000, min=1)
    log_every: int = _opt(20, min=1)
    resume: bool = _opt(False, doc="continue the checkpoint in --out")
    progress: bool = _opt(True)
    ddp_timeout_s: int = _opt(1800, min=1, doc="also bounds how long other ranks wait for rank 0's test pass")


@dataclass
class TaskConfig(ConfigRoot):
    """A fine-tuning task's config: the SGD settings and the training run every task shares, then the task's own
    sections (data, model, test, ...), declared by the subclass. The rules every task checks are here
    (`check_task` adds the task's own); `presets` and `load` read the task's shipped presets
    (transfer/presets/<PRESETS>_*.yaml) or a YAML file."""

    optim: SGDConfig = field(default_factory=SGDConfig)
    train: FineTuneConfig = field(default_factory=FineTuneConfig)

    PRESETS: ClassVar[str] = ""  # the shipped presets' prefix: classify, detect, segment
    VALIDATION_SPLIT: ClassVar[bool] = False  # whether the task holds out and scores train.val_images

    def check(self) -> None:
        """Per-field ranges and choices, a validation split only where the task scores one, the task's own rules
        (`check_task`), the encoder's rescaling only with the data-dependent start, a valid device name."""
        check_fields(self)
        if self.train.val_images and not self.VALIDATION_SPLIT:
            raise ConfigError(f"train.val_images={self.train.val_images}: a validation split is implemented for "
                              f"classification only; hold images out of the split lists instead")
        self.check_task()
        model = getattr(self, "model", None)
        if getattr(model, "rescale_encoder", False) and model.init != "data_dependent":
            raise ConfigError(f"model.rescale_encoder=true needs model.init=data_dependent, got {model.init!r}")
        check_device(self.train.device)

    def check_task(self) -> None:
        """The task's rules that tie its fields together; none by default."""

    @classmethod
    def presets(cls) -> list[str]:
        """Names of the task's shipped presets (transfer/presets/<PRESETS>_*.yaml)."""
        if not cls.PRESETS:
            raise TypeError(f"{cls.__name__} names no presets (PRESETS): a task's config class does")
        return [n for n in config_preset_names("transfer") if n.startswith(f"{cls.PRESETS}_")]

    @classmethod
    def load(cls, name_or_path: str, overrides: list[str] | None = None) -> Self:
        """A preset (transfer/presets) or YAML file, following `base:`, + `key=value` overrides -> the validated
        config."""
        return cls.from_dict(apply_overrides(load_raw(name_or_path, package="transfer"), list(overrides or []), cls))


@dataclass(frozen=True)
class TaskInputs(Generic[SetT]):
    """What a fine-tuning command names: the encoder (a run directory / encoder.json, or timm:NAME /
    torchvision:NAME with a backbone's state dict in `weights`), the training and test sets (with `describe`), the
    run directory and the --max-images subsets. A task adds its own fields (keyword-only)."""

    encoder: str | Path
    train: SetT
    test: SetT
    out: Path
    max_images: tuple[int | None, int | None] = (None, None)
    weights: Path | None = None  # --weights

    def test_record(self) -> dict:
        """The test set as metrics.json records it; a task adds what it did to the set."""
        return self.test.describe(self.max_images[1])


# --- schedule, optimiser, resume checks ----------------------------------------------------------

def lr_at(cfg: SGDConfig, step: int, total: int) -> float:
    """The lr of update `step` (0-based) of `total`: step decay (lr * lr_gamma ** (step // lr_step)) or half a
    cosine from lr to 0 over `total`, after a linear warm-up over `warmup_steps`."""
    if cfg.lr_schedule == "cosine":
        lr = 0.5 * cfg.lr * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
    else:
        lr = cfg.lr * cfg.lr_gamma ** (step // cfg.lr_step) if cfg.lr_step else cfg.lr
    return lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else lr


def build_optimizer(model: nn.Module, cfg: SGDConfig) -> torch.optim.SGD:
    """SGD over the trainable parameters; biases in their own group for bias_lr_mult."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if not n.endswith("bias")], "lr_mult": 1.0},
              {"params": [p for n, p in params if n.endswith("bias")], "lr_mult": cfg.bias_lr_mult}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


# Settings that may change when a run is resumed: they do not change what the finished run computes.
RESUME_FREE = {"train": ("max_steps", "resume", "progress", "ckpt_every", "log_every", "device", "ddp_timeout_s"),
               "data": ("workers",)}


def _resume_relevant(config: dict, free: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, sec in config.items() if s != "test" for k, v in sec.items()
            if k not in free.get(s, ())}


def resume_changes(state: dict, config: dict, record: dict, free: dict[str, tuple[str, ...]] = RESUME_FREE) -> list[str]:
    """Result-changing settings (all but `free` and test) and record entries that differ between a fine-tuning
    checkpoint and this run, as 'key (old -> new)'. A cosine schedule spans train.max_steps: then it counts."""
    if config.get("optim", {}).get("lr_schedule") == "cosine":
        free = {**free, "train": tuple(k for k in free.get("train", ()) if k != "max_steps")}
    old, new = _resume_relevant(state["config"], free), _resume_relevant(config, free)
    changed = [f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in sorted(old.keys() | new.keys())
               if old.get(k) != new.get(k)]
    return changed + [f"{k} ({state['record'].get(k)} -> {v})" for k, v in record.items()
                      if state["record"].get(k) != v]


# --- heads --------------------------------------------------------------------------------------

class FrozenBlocks(nn.Module):
    """An encoder with new layers, as named blocks: `freeze(layers)` leaves gradients to the blocks that
    `TRAINED[layers]` names; the others, and with `norm_eval` the encoder's batch norms, always evaluate (no
    dropout in features that do not learn; running statistics where batches hold a few images)."""

    BLOCKS: tuple[str, ...] = ()
    TRAINED: dict[str, tuple[str, ...]] = {}  # train.layers -> the blocks that learn
    trained: tuple[str, ...] = ()  # every block until `freeze` (set per instance in __init__)
    norm_eval = False

    def freeze(self, layers: str) -> None:
        """Gradients only for the blocks of `layers` (fc8 | fc6-8 | all)."""
        self.trained = self.TRAINED[layers]
        for name in self.BLOCKS:
            getattr(self, name).requires_grad_(name in self.trained)
        self.train(self.training)

    def norms_on_batches(self, layers: str) -> bool:
        """Whether the encoder's batch norms normalise with each batch's statistics in training (`layers` trains the
        encoder and norm_eval is off): then an eval-mode start (calibration, start statistics) must see running
        statistics like the batches', not a random init's reset ones."""
        return "encoder" in self.TRAINED[layers] and not self.norm_eval

    def train(self, mode: bool = True) -> "FrozenBlocks":
        """Like nn.Module.train, but frozen blocks (and with norm_eval the encoder's batch norms) always evaluate."""
        super().train(mode)
        for name in self.BLOCKS:
            if name not in self.trained:
                getattr(self, name).eval()
        if self.norm_eval:
            eval_norms(self.encoder)
        return self


def fc_block(n_in: int, n_out: int, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> dropout, addressable as .fc."""
    return nn.Sequential(OrderedDict(fc=nn.Linear(n_in, n_out), relu=nn.ReLU(inplace=True), drop=nn.Dropout(dropout)))


# --- the engine ---------------------------------------------------------------------------------

class TaskTuner(Engine):
    """Fine-tunes one encoder for one task into `inputs.out` (`TaskInputs`), resumably. A task sets TASK and
    PROGRESS and defines `_build_model`, `train_loader`, `step_values`, and for `run_fine_tune` its test
    (`predict_test`, `score_test`); it may add to the checkpoint's record (`record_extra`), its state
    (`state_extra`), the log (`log_extra`) and metrics.json (`metrics_extra`)."""

    TASK = ""  # the checkpoint's tag
    PROGRESS = ""  # the progress bar's name
    RESUME_FREE = RESUME_FREE
    UNTAGGED: str | None = None  # the task of the checkpoints written before they were tagged

    def __init__(self, cfg: Any, inputs: TaskInputs, env: DistEnv) -> None:
        super().__init__(cfg.train, inputs.out, env)
        self.cfg, self.inputs = cfg, inputs
        encoder, self.meta = open_encoder(inputs.encoder, inputs.weights)
        self.prepare(encoder)
        # a backbone's layers after the task's stage get no gradient: frozen (DDP), left out of the calibration
        size = getattr(self, "crop", None) or int(self.meta["input_size"])
        self.unreached = unreached_parameters(encoder, self.stage, size)
        self.state = self.open_checkpoint(self._mismatches)
        self.model = self._build_model(encoder)
        freeze_parameters(encoder, self.unreached)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        if self.state is not None:
            self.model.load_state_dict(self.state["model"])
            self.optimizer.load_state_dict(self.state["optimizer"])
            self.load_engine_state(self.state)
        self.net = wrap_ddp(self.model, env)

    # --- what a task defines ------------------------------------------------------------------
    def prepare(self, encoder: nn.Module) -> None:
        """Checks and set-up that need the encoder, before the checkpoint is opened."""

    def _build_model(self, encoder: nn.Module) -> FrozenBlocks:
        raise NotImplementedError

    def train_loader(self) -> DataLoader:
        raise NotImplementedError

    def step_values(self, batch: Any) -> dict[str, float]:
        """One update (`train_step`); its loss (key `loss`) and what else to log."""
        return self.train_step(batch)

    def record_extra(self) -> dict:
        return {}

    def predict_test(self) -> tuple[Any, dict[str, float]]:
        """Rank 0, after `fit`: the test set's predictions (timed: test_seconds) and the task's other timings."""
        raise NotImplementedError

    def score_test(self, predictions: Any) -> dict:
        """The test metrics of `predictions` (`predict_test`), with the task's result files (written here, or by
        `predict_test` where writing them is part of predicting: segmentation's label maps)."""
        raise NotImplementedError

    def metrics_extra(self, seconds: dict[str, float]) -> dict:
        """The task's own metrics.json entries (its head's geometry, its inputs' extras)."""
        return {}

    def state_extra(self) -> dict:
        return {}

    def log_extra(self) -> dict:
        return {}

    # --- shared ----------------------------------------------------------------------------------
    def start_norms(self, model: FrozenBlocks, forward: Callable[[Any], Any], images: Callable[[], Any]) -> int:
        """On a fresh start, where the encoder's batch norms will train on batch statistics, those of a random init
        get the statistics of the start images (`images()`, loaded only then) through `forward`, before any
        eval-mode calibration; how many (`pretext.init.estimate_unseen_norms`)."""
        if (self.state is not None or not model.norms_on_batches(self.cfg.train.layers)
                or not has_unseen_norms(model.encoder)):
            return 0
        return estimate_unseen_norms(model.encoder, forward, images())

    def encoder_layers(self, model: FrozenBlocks) -> list[nn.Module]:
        """The encoder's conv / linear layers that the data-dependent calibration rescales (model.rescale_encoder):
        those the task's stage depends on; none in an encoder with normalisation layers, which set their own scale
        (rescaling the convolutions before a batch norm changes only their effective learning rate: a random
        ResNet-18 calibrated so diverged at its first update)."""
        if any(isinstance(m, NORMS) for m in model.encoder.modules()):
            log.info("the encoder normalises its activations: its layers are left out of the calibration")
            return []
        names = set(self.unreached)
        unreached = {id(p) for n, p in model.encoder.named_parameters() if n in names}
        return [m for m in affine_layers(model.encoder) if id(m.weight) not in unreached]

    def metrics(self, result: dict, seconds: dict[str, float]) -> dict:
        """metrics.json: the test results with everything needed to reproduce and compare them."""
        i, meta, cfg = self.inputs, self.meta, self.cfg
        return {"task": self.TASK, "layers": cfg.train.layers, "encoder": str(i.encoder),
                "encoder_sha256": meta["sha256"], "encoder_method": meta.get("method"), **encoder_record(meta),
                "encoder_arch": meta.get("arch"), "stage": self.stage,
                "train": i.train.describe(i.max_images[0]), "test": i.test_record(),
                "classes": list(i.train.classes), "steps": self.step, "seed": cfg.train.seed,
                "config_hash": cfg.hash(), "config": cfg.to_dict(), "training": convergence(self.losses),
                "precision": self.precision, **self.metrics_extra(seconds), **result,
                **{k: round(v, 4) for k, v in seconds.items()}, "device": device_description(self.env.device),
                "world_size": self.env.world_size, **provenance()}

    def _record(self) -> dict:
        """What a checkpoint must share with the run that continues it."""
        i = self.inputs
        return {"encoder_sha256": self.meta["sha256"], "train": i.train.describe(i.max_images[0]),
                "world_size": self.env.world_size, **self.record_extra()}

    def _mismatches(self, state: dict) -> list[str]:
        """What differs between the checkpoint's run and this one, among the settings that change the result."""
        if "record" not in state or state.get("task", self.UNTAGGED) != self.TASK:
            raise CheckpointError(f"{self.run_dir / CHECKPOINT} is not a {self.TASK} checkpoint; choose another --out")
        old = with_defaults(state["config"], type(self.cfg)().to_dict())
        return resume_changes({**state, "config": old}, self.cfg.to_dict(), self._record(), self.RESUME_FREE)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> the encoder's normalised input on the device, channels_last if configured."""
        x = normalise_input(images, self.meta, self.env.device)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.train.channels_last else x

    def begin_step(self) -> None:
        """Seed this update's dropout (by step and rank) and set the schedule's lr."""
        torch.manual_seed(step_seed(self.cfg.train.seed, self.step, self.env.rank) + 1)
        lr = lr_at(self.cfg.optim, self.step, self.cfg.train.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]

    def save(self) -> None:
        """Atomic checkpoint (rank 0) with everything an exact resume needs."""
        if not self.env.is_main:
            return
        state = {**self.engine_state(), "task": self.TASK, "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "config": self.cfg.to_dict(), "record": self._record(),
                 **self.state_extra()}
        save_checkpoint(state, self.run_dir / CHECKPOINT)

    def fit(self) -> float:
        """Train until `train.max_steps`, checkpointing and logging; returns the total training seconds."""
        loader = self.train_loader()
        self.model.train()
        return self.fine_tune_loop(loader, self.PROGRESS, self.cfg.to_dict(), self.step_values, self._log)

    def _log(self, values: dict[str, float], logger: RunLogger, bar: tqdm, last: dict) -> None:
        now = time.perf_counter()
        t, world = self.cfg.train, self.env.world_size
        values = dict(values)
        loss = values.pop("loss")
        extra = {"lr": lr_at(self.cfg.optim, self.step - 1, t.max_steps),
                 "images_per_s": (self.step - last["step"]) * t.batch_size * world / max(now - last["time"], 1e-9),
                 **self.log_extra(), **values}
        last.update(time=now, step=self.step)
        self.report({"loss": loss}, extra, logger, bar)


def run_fine_tune(tuner: type[TaskTuner], cfg: TaskConfig, inputs: TaskInputs) -> dict | None:
    """Fine-tune on every process, then on rank 0 predict and score the test set and write the task's files and
    metrics.json; the record (None off rank 0). The test set must have the training set's classes."""
    if inputs.test.classes != inputs.train.classes:  # a COCO root brings its own categories
        raise ValueError(f"{inputs.test.root} (split {inputs.test.split}) has classes {list(inputs.test.classes)} "
                         f"but {inputs.train.root} (split {inputs.train.split}) {list(inputs.train.classes)}")
    t0 = time.perf_counter()
    env = init_distributed(cfg.train.device, cfg.train.ddp_timeout_s)
    try:
        run = tuner(cfg, inputs, env)
        train_seconds = run.fit()
        record = None
        if env.is_main:
            t1 = time.perf_counter()
            predictions, timings = run.predict_test()
            seconds = {"train_seconds": train_seconds, "test_seconds": time.perf_counter() - t1, **timings,
                       "wall_seconds": time.perf_counter() - t0}
            record = run.metrics(run.score_test(predictions), seconds)
            text = json.dumps(json_safe(record), indent=2, allow_nan=False) + "\n"
            atomic_write_text(inputs.out / "metrics.json", text)
        barrier(env)
        return record
    finally:
        shutdown(env)


# --- the command line ----------------------------------------------------------------------------

def root_to_test(args: argparse.Namespace) -> Path:
    """The test data's root (--test-data, else --data); testing on the training split of the same root is refused."""
    root = args.test_data or args.data
    if Path(root).resolve() == Path(args.data).resolve() and args.test_split == args.train_split:
        raise ValueError(f"{args.data}: the test set is the training set (split {args.train_split}); "
                         f"give another --test-split or --test-data")
    return root


@dataclass(frozen=True)
class TaskData:
    """A task's data options: --data and --test-data roots (what they may be: `roots`), the default splits, and
    --classes where the roots may lack a class list; `extra` adds the task's own (detection's proposals)."""

    roots: str
    train_split: str
    test_split: str
    classes: str | None = None  # help of --classes; None: the task takes no --classes
    extra: Callable[[argparse.ArgumentParser], None] | None = None

    def add_to(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", type=Path, metavar="ROOT", help=self.roots)
        p.add_argument("--test-data", type=Path, metavar="ROOT", help="test data, of the kind --data is (default: --data)")
        p.add_argument("--train-split", default=self.train_split,
                       help=f"split to train on (default: {self.train_split})")
        p.add_argument("--test-split", default=self.test_split, help=f"split to test on (default: {self.test_split})")
        if self.classes is not None:  # evaluate imports the task modules' evaluators: imported here, when used
            from .evaluate import class_list

            p.add_argument("--classes", type=class_list, default=None, metavar="A,B,C", help=self.classes)
        if self.extra is not None:
            self.extra(p)


@dataclass(frozen=True)
class TaskCommand:
    """`cebench transfer TASK`: the command line every fine-tuning task shares (`fine_tune_parser`,
    `fine_tune_main`) around the task's data options, presets, config and run."""

    what: str  # "image classification": the parser's description ends with it
    preset: str  # the default preset
    data: TaskData
    config: type[TaskConfig]  # the task's config: its presets and how they load
    run: Callable[[Any, argparse.Namespace], dict | None]
    summary: Callable[[dict], str]

    def build_parser(self, prog: str | None = None) -> argparse.ArgumentParser:
        """Arguments of the command."""
        return fine_tune_parser(prog, f"Fine-tune an encoder (the suite's, or any timm / torchvision backbone) for "
                                      f"{self.what}.", self.preset, self.data.add_to)

    def main(self, argv: list[str] | None = None, prog: str | None = None) -> int:
        """Parse, resolve the config, fine-tune and test, print a summary; the exit code."""
        return fine_tune_main(self.build_parser(prog), argv, self.config.presets, self.config.load, self.run,
                              self.summary)


def fine_tune_parser(prog: str | None, description: str, preset: str,
                     data_arguments: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """The arguments every fine-tuning command takes (overrides, --encoder, --weights, --out, --preset,
    --max-images, --list-presets, --print-config) around the task's own data arguments."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.max_steps=500 train.layers=fc8")
    p.add_argument("--encoder", metavar="RUN_DIR|timm:NAME|torchvision:NAME",
                   help="run directory or encoder.json, or a timm / torchvision model (random init unless --weights)")
    p.add_argument("--weights", type=Path, default=None, metavar="FILE",
                   help="state dict of a timm / torchvision --encoder, as any SSL trainer saved it")
    data_arguments(p)
    p.add_argument("--out", type=Path, metavar="RUN_DIR", help="run directory: checkpoint, curves, metrics.json")
    p.add_argument("--preset", default=preset, help="a preset (see --list-presets) or a YAML file")
    p.add_argument("--max-images", type=max_images, default=(None, None), metavar="N[,M]",
                   help="a fixed random subset of N training (M test) images, drawn by train.seed (default: all)")
    p.add_argument("--list-presets", action="store_true", help="list the shipped presets and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p
