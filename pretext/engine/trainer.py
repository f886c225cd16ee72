"""The one training loop every pretext method (and later transfer task) runs through.

Devices, AMP, DDP, atomic checkpoints with exact resume, metrics CSV + TensorBoard, progress bar,
sample grids and encoder export. All randomness of step s derives from (seed, s, rank), so a run
resumed from a checkpoint repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Sequence
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from ..config import ConfigError, PretrainConfig, with_defaults
from ..data.dataset import ImagesWithLabels, UnlabelledImages, build_loader, collate, collate_labelled, estimate_mean
from ..data.labels import LabelSpace, open_labelled_source
from ..data.sources import list_images
from ..export import export_encoder
from ..methods import PretextMethod, StepContext, get_method
from ..models import timm_name
from ..models.alexnet import AlexNetEncoder
from ..models.kernels import to_channels_last
from .checkpoint import (
    CHECKPOINT,
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    prune_step_checkpoints,
    save_checkpoint,
)
from .distributed import (
    DistEnv,
    all_reduce_mean,
    barrier,
    init_distributed,
    no_sync,
    shutdown,
    wrap_ddp,
)
from .health import DiscriminatorMonitor
from .logger import RunLogger
from .provenance import cpu_bf16_listed, cpu_has_native_bf16, device_description, git_commit, versions

log = logging.getLogger("cebench")
RESUME_MUST_MATCH = ("method", "model", "mask", "loss", "context", "supervised")
T = TypeVar("T")


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 where the hardware computes it natively (a CUDA GPU with bf16 support, a CPU listing
    AVX512-BF16 / AMX / Arm BF16), fp32 elsewhere; any other value is returned as it is."""
    if precision != "auto":
        return precision
    if device.type == "cuda":  # native bf16 from Ampere (compute capability 8) on; older GPUs only emulate it
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp32"
    return "bf16" if device.type == "cpu" and cpu_bf16_listed() else "fp32"


def convergence(losses: list[float], tail: float = 0.1, tolerance: float = 0.05,
                fitted: float = 0.01) -> dict[str, Any]:
    """Did the training loss flatten? The mean loss of the last `tail` of the steps against the mean of the tail
    before it: `loss_change` = (last - before) / |before|; `converged` when it moved by less than `tolerance` (5 %)
    either way over the last tenth (a rising loss has not converged either), or by less than `fitted` (1 %) of the
    first step's loss (`change_of_initial`): a loss that has fallen to near zero on a small labelled set moves by
    large fractions of almost nothing. Fewer than 20 steps: `converged` is None (not measurable). Under a schedule
    that decays to 0 the last tenth is nearly flat by construction: read it beside the validation score, not
    instead of it."""
    n = len(losses)
    k = max(1, int(n * tail))
    out: dict[str, Any] = {"initial_loss": losses[0] if losses else None, "final_loss": None, "loss_change": None,
                           "change_of_initial": None, "converged": None, "tail_steps": k}
    if n < 20:
        return out
    last, before = sum(losses[-k:]) / k, sum(losses[-2 * k:-k]) / k
    change = (last - before) / max(abs(before), 1e-12)
    of_initial = (last - before) / max(abs(losses[0]), 1e-12)
    return {**out, "final_loss": last, "loss_change": change, "change_of_initial": of_initial,
            "converged": bool(abs(change) < tolerance or abs(of_initial) < fitted)}


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the gradients (torch.nn.utils.get_total_norm where torch has it)."""
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the run stops and the last checkpoint stays as it was."""


@dataclass
class TrainResult:
    """Summary of a finished run."""

    run_dir: Path
    step: int
    images_seen: int
    wall_seconds: float
    skipped_images: int
    last_metrics: dict[str, float]


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of everything random in one step of one rank."""
    return (seed * 1_000_003 + step) * 4099 + rank


def split_holdout(paths: Sequence[T], n: int) -> tuple[list[T], list[T]]:
    """(training items, `n` held-out items) of a list of paths (or of (path, label) pairs) by a fixed shuffle,
    independent of the run's seed."""
    if n >= len(paths):
        raise ConfigError(f"data.holdout={n} leaves no training images (the source has {len(paths)})")
    if n == 0:
        return list(paths), []
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(0)).tolist()
    held = set(order[:n])
    return [p for i, p in enumerate(paths) if i not in held], [p for i, p in enumerate(paths) if i in held]


def default_demo_dir() -> Path:
    """Where the built-in demo data is generated: $CEBENCH_CACHE/demo or ~/.cache/cebench/demo."""
    from ..cache import cache_root

    return cache_root() / "demo"


def resolve_data(cfg: PretrainConfig, env: DistEnv) -> tuple[Path, str, str]:
    """(root, source, split); generates the demo data (rank 0) when no root is configured."""
    if cfg.data.root is not None:
        return Path(cfg.data.root).expanduser(), cfg.data.source, cfg.data.split
    from ..data.demo import ensure_demo_data

    root = Path(cfg.data.demo_dir).expanduser() if cfg.data.demo_dir else default_demo_dir()
    if env.is_main:
        ensure_demo_data(root, num_images=cfg.data.demo_images, seed=0)
    barrier(env)
    return root, "voc", cfg.data.split


class Engine:
    """What every training run shares, pretext and transfer alike: precision (autocast, fp16 loss scaling), the
    optimiser step with the non-finite check and gradient clipping, the resume rules, the checkpointed
    step/time/RNG state, the run directory's config.json, metrics logging and the progress bar.

    `train_cfg` is the config's `train` section: it has precision, resume, progress, max_steps and log_every.
    """

    def __init__(self, train_cfg: Any, run_dir: str | Path, env: DistEnv) -> None:
        self.env, self.run_dir = env, Path(run_dir)
        self._train_cfg = train_cfg
        self.precision = resolve_precision(train_cfg.precision, env.device)  # "auto" decided once, here
        if self.precision == "fp16" and env.device.type != "cuda":
            raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 on CPU")
        if self.precision == "bf16" and env.device.type == "cpu" and not cpu_has_native_bf16() and env.is_main:
            log.warning("train.precision=bf16 on a CPU without bf16 instructions (AVX512-BF16 or AMX): bf16 is "
                        "emulated here and runs several times slower than fp32 (`cebench bench` measures it)")
        self.step, self.prior_seconds, self.t_start = 0, 0.0, time.perf_counter()
        self.losses: list[float] = []  # every step's training loss (rank 0's), kept across resumes
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16/fp16 autocast on the run's device, or nothing in fp32."""
        p = self.precision
        if p == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    def optimizer_step(self, opt: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float, what: str = "") -> None:
        """Backward, optional clipping (max global norm) and the step; a non-finite loss stops the run.

        With fp16 the caller runs `self.scaler.update()` once all of a step's optimisers have stepped."""
        opt.zero_grad(set_to_none=True)
        self.backward(loss, what)
        self.clip_and_step(opt, grad_clip, what)

    def backward(self, loss: torch.Tensor, what: str = "") -> None:
        """Add `loss`'s gradients (scaled with fp16); a non-finite loss stops the run. Several calls before one
        `clip_and_step` accumulate gradients over sub-batches."""
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(f"{what + ' ' if what else ''}loss became {loss.item()} at step {self.step + 1}")
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def clip_and_step(self, opt: torch.optim.Optimizer, grad_clip: float, what: str = "") -> None:
        """Optional clipping of the accumulated gradients (max global norm), then the optimiser step. A non-finite
        gradient (a finite loss can still have one) stops the run before it reaches the weights; with fp16 the
        loss scaler skips such steps itself."""
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if grad_clip > 0:
            if self.scaler:
                self.scaler.unscale_(opt)
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        elif not self.scaler and params:
            norm = _total_norm([p.grad for p in params])
        if not self.scaler and params and not torch.isfinite(norm):
            raise NonFiniteLossError(f"{what + ' ' if what else ''}gradients became non-finite (norm {norm.item()}) "
                                     f"at step {self.step + 1}")
        if self.scaler:
            self.scaler.step(opt)
        else:
            opt.step()

    def fine_tune_loop(self, loader: Iterable, desc: str, config: dict, step: Callable[[Any], Any],
                       log_values: Callable[..., None]) -> float:
        """The loop the transfer commands share: `step(batch)` until `train.max_steps`, `log_values(values, logger,
        bar, last)` every `log_every` steps and at the end, `self.save()` every `ckpt_every` steps and at the end;
        a non-finite loss stops the run naming the last good checkpoint. Returns the total training seconds."""
        t = self._train_cfg
        logger, bar = self.begin(config, desc)
        last = {"time": self.t_start, "step": self.step}
        try:
            for batch in loader if self.step < t.max_steps else ():
                values = step(batch)
                self.losses.append(float(values["loss"] if isinstance(values, dict) else values))
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == t.max_steps:
                    log_values(values, logger, bar, last)
                if self.step % t.ckpt_every == 0:
                    self.save()
                if self.step >= t.max_steps:
                    break
            if self.step % t.ckpt_every or self.step == 0:  # not already saved at this step
                self.save()
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(f"{exc}; stopping. {self.last_good()}") from exc
        finally:
            bar.close()
            logger.close()
        return self.elapsed()

    def elapsed(self) -> float:
        """Training seconds so far, over every resumed segment of the run."""
        return self.prior_seconds + (time.perf_counter() - self.t_start)

    # --- checkpoints ----------------------------------------------------------------------------
    def open_checkpoint(self, mismatches: Callable[[dict], list[str]]) -> dict | None:
        """The run directory's checkpoint when `train.resume` asks for it and `mismatches(state)` finds nothing
        that differs from this run; a CheckpointError says why not otherwise. None when there is none."""
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            if self._train_cfg.resume and self.env.is_main:
                log.info("resume=true but %s does not exist: starting from scratch", path)
            return None
        if not self._train_cfg.resume:
            raise CheckpointError(f"{path} already exists; pass train.resume=true to continue it, or choose another --out")
        state = load_checkpoint(path)
        changed = mismatches(state)
        if changed:
            raise CheckpointError(f"{path} was trained with different settings, cannot resume: {'; '.join(changed)}")
        return state

    def engine_state(self) -> dict:
        """The shared part of a checkpoint: step, training time, loss scaler and the global RNG."""
        return {"step": self.step, "train_seconds": self.elapsed(), "scaler": self.scaler.state_dict() if self.scaler else {},
                "rng": torch.get_rng_state(), "losses": list(self.losses)}

    def load_engine_state(self, state: dict) -> None:
        """Restore what `engine_state` saved."""
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("rng") is not None:
            torch.set_rng_state(state["rng"])
        self.step, self.prior_seconds = int(state["step"]), float(state["train_seconds"])
        self.losses = [float(v) for v in state.get("losses", [])]
        if self.env.is_main:
            log.info("resumed %s at step %d", self.run_dir / CHECKPOINT, self.step)

    def last_good(self) -> str:
        """Where the last good checkpoint is, for error messages."""
        path = self.run_dir / CHECKPOINT
        if path.exists():
            return f"The last good checkpoint {path} (step {load_checkpoint(path)['step']}) is intact."
        return "No checkpoint had been written yet."

    # --- logging ------------------------------------------------------------------------------
    def begin(self, config: dict, desc: str) -> tuple[RunLogger, tqdm]:
        """Create the run directory, write config.json, open the metrics logger and the progress bar."""
        t = self._train_cfg
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.json", json.dumps(config, indent=2) + "\n")
        bar = tqdm(total=t.max_steps, initial=self.step, disable=not (self.env.is_main and t.progress),
                   dynamic_ncols=True, desc=desc)
        self.t_start = time.perf_counter()
        return RunLogger(self.run_dir, self.env.is_main, self.step), bar

    def report(self, values: dict[str, float], extra: dict[str, float], logger: RunLogger, bar: tqdm) -> dict[str, float]:
        """Average `values` over ranks, add `extra` (rates, lr, ...), log a row, update the bar."""
        metrics = {**all_reduce_mean(values, self.env), **extra}
        logger.log(self.step, metrics)
        loss = metrics.get("loss", float("nan"))
        shown = {"loss": f"{loss:.4f}", **({"img_s": f"{metrics['images_per_s']:.0f}"} if "images_per_s" in metrics else {})}
        bar.set_postfix(**shown)
        if bar.disable and self.env.is_main:
            log.info("step %d/%d loss %.5f (%.1f img/s)", self.step, self._train_cfg.max_steps, loss,
                     metrics.get("images_per_s", float("nan")))
        return metrics


class Trainer(Engine):
    """Runs `cfg.method` on `cfg.data` into `run_dir`."""

    def __init__(self, cfg: PretrainConfig, run_dir: str | Path, env: DistEnv) -> None:
        super().__init__(cfg.train, run_dir, env)
        self.cfg = cfg
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        self.images_seen = 0
        self.skipped: set[str] = set()
        self.discriminator_monitor = DiscriminatorMonitor()
        self.label_space: LabelSpace | None = None  # set by _build_dataset for a method that `uses_labels`
        self.dataset = self._build_dataset()  # first: it may resolve mask.region_bank=data, which resume compares
        self.collate = collate if self.label_space is None else collate_labelled
        self.state = self.open_checkpoint(self._mismatches)
        self.fill_mean = self._fill_mean()
        self.method = self._build_method()
        self.optimizers = self.method.build_optimizers()
        if self.state is not None:
            self._load_state(self.state)
        else:
            self.method.initialize(self._init_images())

    # --- set-up -----------------------------------------------------------------------------
    def _mismatches(self, state: dict) -> list[str]:
        old, new = with_defaults(state["config"], PretrainConfig().to_dict()), self.cfg.to_dict()
        changed = [f"{k} settings" for k in RESUME_MUST_MATCH if old[k] != new[k]]
        space = dataclasses.asdict(self.label_space) if self.label_space else None
        return changed + (["the data's classes"] if state.get("label_space") != space else [])

    def _build_dataset(self) -> UnlabelledImages:
        root, source, split = resolve_data(self.cfg, self.env)
        if self.cfg.mask.region_bank == "data":
            self._resolve_data_bank(root)
        d = self.cfg.data
        if get_method(self.cfg.method).uses_labels:
            return self._build_labelled(root, source, split)
        paths, held = split_holdout(list_images(root, source, split), d.holdout)
        if self.env.is_main:
            log.info("data: %d images from %s (%d held out)", len(paths), root, len(held))
        make = lambda p, flip: UnlabelledImages(p, d.load_size, d.fine_size, flip, d.on_bad_image,  # noqa: E731
                                                d.max_image_pixels)
        self.heldout = make(held, False) if held else None
        return make(paths, d.flip)

    def _build_labelled(self, root: Path, source: str, split: str) -> ImagesWithLabels:
        """Images with their class labels, for a method that `uses_labels`; sets `label_space`."""
        d = self.cfg.data
        data = open_labelled_source(root, source, split, self.cfg.method)
        self.label_space = LabelSpace(data.classes, data.multilabel)
        pairs, held = split_holdout(list(zip(data.paths, data.labels)), d.holdout)
        if self.env.is_main:
            log.info("data: %d images of %d classes (%s) from %s (%d held out)", len(pairs), len(data.classes),
                     "multi-label" if data.multilabel else "one per image", root, len(held))

        def make(items: list, flip: bool) -> ImagesWithLabels:
            paths, labels = zip(*items)
            return ImagesWithLabels(paths, np.stack(labels), d.load_size, d.fine_size, flip, d.on_bad_image,
                                    d.max_image_pixels)

        self.heldout = make(held, False) if held else None
        return make(pairs, d.flip)

    def _resolve_data_bank(self, root: Path) -> None:
        """mask.region_bank=data: the training data's SegmentationObject masks, or procedural blobs without them."""
        has_masks = (root / "SegmentationObject").is_dir()
        if self.env.is_main:
            log.info("region masks: %s", f"shapes from {root / 'SegmentationObject'}" if has_masks
                     else f"procedural blobs ({root} has no SegmentationObject/ folder)")
        bank = str(root) if has_masks else None
        self.cfg = dataclasses.replace(self.cfg, mask=dataclasses.replace(self.cfg.mask, region_bank=bank))

    def _fill_mean(self) -> list[float]:
        if self.state is not None:
            return list(self.state["fill_mean"])
        if self.cfg.data.mean is not None:
            return list(self.cfg.data.mean)
        return estimate_mean(self.dataset, self.cfg.data.mean_images)

    def _build_method(self) -> PretextMethod:
        torch.manual_seed(self.cfg.train.seed)  # identical initial weights for a given seed (and on every rank)
        labels = (self.label_space,) if self.label_space is not None else ()
        method = get_method(self.cfg.method)(self.cfg, self.fill_mean, *labels).to(self.env.device)
        method.use_fast_kernels(self.cfg.train.fast_kernels)
        if self.cfg.train.channels_last:
            method = to_channels_last(method, self.env.device)
        self.raw_networks = dict(method.networks())
        for name, net in self.raw_networks.items():
            wrapped = wrap_ddp(net, self.env)
            setattr(method, name, torch.compile(wrapped) if self.cfg.train.compile else wrapped)
        return method

    def _init_images(self, n: int = 64) -> torch.Tensor:
        """Centre crops of the first `n` images of a fixed shuffle, for data-dependent initialisation."""
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.cfg.train.seed))
        return self._images({"images": torch.stack([self.dataset[int(i)][0] for i in order[:n]])})

    def _load_state(self, state: dict) -> None:
        for name, net in self.raw_networks.items():
            net.load_state_dict(state["networks"][name])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.images_seen = int(state["images_seen"])
        self.skipped = set(state.get("skipped", []))
        self.load_engine_state(state)

    # --- one step -----------------------------------------------------------------------------
    def optimize(self, name: str, loss: torch.Tensor) -> None:
        """The shared optimiser step for the method's optimiser `name`."""
        self.optimizer_step(self.optimizers[name], loss, self.cfg.optim.grad_clip, name)

    def _images(self, batch: dict) -> torch.Tensor:
        x = batch["images"].to(self.env.device, non_blocking=True).float().div_(127.5).sub_(1.0)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.train.channels_last else x

    def _labels(self, batch: dict) -> torch.Tensor | None:
        labels = batch.get("labels")
        return None if labels is None else labels.to(self.env.device, non_blocking=True)

    def _context(self, labels: torch.Tensor | None = None) -> StepContext:
        seed = step_seed(self.cfg.train.seed, self.step, self.env.rank)
        torch.manual_seed(seed + 1)  # dropout and any other global-RNG draw of this step
        gen = torch.Generator().manual_seed(seed)
        return StepContext(self.step, gen, self.env.device, self.autocast, self.optimize, no_sync, labels)

    # --- outputs ------------------------------------------------------------------------------
    def save(self) -> None:
        """Atomic checkpoint (rank 0), plus a step-numbered copy pruned to `keep_checkpoints`."""
        if not self.env.is_main:
            return
        state = {
            **self.engine_state(), "images_seen": self.images_seen,
            "networks": {n: net.state_dict() for n, net in self.raw_networks.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "config": self.cfg.to_dict(), "fill_mean": self.fill_mean,
            "skipped": sorted(self.skipped), "method": self.cfg.method,
        }
        if self.label_space is not None:
            state["label_space"] = dataclasses.asdict(self.label_space)
        keep = self.cfg.train.keep_checkpoints
        numbered = [self.run_dir / f"checkpoint_step{self.step}.pt"] if keep > 0 else []
        save_checkpoint(state, self.run_dir / CHECKPOINT, *numbered)
        if keep > 0:
            prune_step_checkpoints(self.run_dir, keep)

    def save_samples(self, images: torch.Tensor) -> None:
        """PNG grid: masked input / prediction / ground truth (every rank runs it: DDP forwards are collective)."""
        from torchvision.utils import save_image

        n = min(8, images.shape[0])
        grid = self.method.sample_grid(images[:n], torch.Generator().manual_seed(self.cfg.train.seed))
        if grid is not None and self.env.is_main:
            (self.run_dir / "samples").mkdir(exist_ok=True)
            save_image(grid, self.run_dir / "samples" / f"step{self.step:07d}.png", nrow=n)

    def finish(self, metrics: dict[str, float]) -> TrainResult:
        """Export the encoder and the pretraining-time record."""
        result = TrainResult(self.run_dir, self.step, self.images_seen, self.elapsed(), len(self.skipped), metrics)
        if not self.env.is_main:
            return result
        enc, arch, spec = self.method.encoder_export()
        record = {"wall_seconds": round(result.wall_seconds, 3), "steps": self.step, "images_seen": self.images_seen,
                  "precision": self.precision, "device": device_description(self.env.device),
                  "world_size": self.env.world_size}
        if self.discriminator_monitor.episodes:
            record["discriminator_collapses"] = self.discriminator_monitor.episodes
        meta = {"method": self.cfg.method, "pretrain": record, "config_hash": self.cfg.hash(),
                "fill_mean": self.fill_mean, "git_commit": git_commit(), "versions": versions()}
        if isinstance(enc, AlexNetEncoder):
            meta["timm_model"] = timm_name(enc.spec)
        if arch == "backbone":  # the transfer tasks place heads by stage: channels and stride of each
            meta["stages"] = {s: {"channels": enc.channels[s], "stride": enc.strides[s]} for s in enc.stages}
        export_encoder(enc, arch, spec, self.run_dir, meta)
        atomic_write_text(self.run_dir / "pretrain_time.json", json.dumps(record, indent=2) + "\n")
        return result

    # --- the loop -----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until `train.max_steps`, checkpointing and logging along the way."""
        t, env = self.cfg.train, self.env
        self.method.train()
        loader = build_loader(self.dataset, t.batch_size, t.seed, self.cfg.data.workers, env.rank, env.world_size,
                              start_step=self.step, pin_memory=env.device.type == "cuda", collate_fn=self.collate)
        logger, bar = self.begin(self.cfg.to_dict(), self.cfg.method)
        last = {"time": self.t_start, "images": self.images_seen}
        metrics: dict[str, float] = {}
        try:
            for batch in loader if self.step < t.max_steps else ():
                metrics = self._train_step(batch, logger, bar, last) or metrics
                if self.step >= t.max_steps:
                    break
            if self.step % t.ckpt_every or self.step == 0:  # not already saved at this step
                self.save()
            metrics = {**metrics, **self.validate(logger)}
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(f"{exc}; stopping. {self.last_good()}") from exc
        finally:
            bar.close()
            logger.close()
        return self.finish(metrics)

    def _train_step(self, batch: dict, logger: RunLogger, bar: tqdm, last: dict) -> dict[str, float] | None:
        t = self.cfg.train
        self._note_skipped(batch["skipped"])
        images = self._images(batch)
        values = self.method.training_step(images, self._context(self._labels(batch)))
        if self.scaler is not None:
            self.scaler.update()
        self.step += 1
        self.images_seen += images.shape[0] * self.env.world_size
        bar.update(1)
        out = None
        if self.step % t.log_every == 0 or self.step == t.max_steps:
            out = self._log(values, logger, bar, last)
        if self.step % t.sample_every == 0 or self.step == t.max_steps:
            self.save_samples(images)
        if t.eval_every and self.step % t.eval_every == 0 and self.step != t.max_steps:
            out = {**(out or {}), **self.validate(logger)}
        if self.step % t.ckpt_every == 0:
            self.save()
        return out

    def _log(self, values: dict[str, torch.Tensor], logger: RunLogger, bar: tqdm, last: dict) -> dict[str, float]:
        now = time.perf_counter()
        extra = {"images_per_s": (self.images_seen - last["images"]) / max(now - last["time"], 1e-9),
                 "epoch": self.images_seen / len(self.dataset),
                 "lr": self.optimizers[next(iter(self.optimizers))].param_groups[0]["lr"],
                 "skipped_images": len(self.skipped)}
        last.update(time=now, images=self.images_seen)
        metrics = self.report({k: float(v) for k, v in values.items()}, extra, logger, bar)
        if "d_real" in metrics and self.env.is_main:
            warning = self.discriminator_monitor.update(self.step, metrics["d_real"], metrics["d_fake"])
            if warning:
                log.warning("%s", warning)
        return metrics

    @torch.no_grad()
    def validate(self, logger: RunLogger) -> dict[str, float]:
        """The method's metrics on the held-out images (same batches every time), logged as val_*."""
        if self.heldout is None:
            return {}
        t = self.cfg.train
        self.method.eval()
        sums: dict[str, float] = {}
        n = 0
        for i in range(0, min(len(self.heldout), t.eval_batches * t.batch_size), t.batch_size):
            idx = range(i, min(i + t.batch_size, len(self.heldout)))
            batch = self.collate([self.heldout[j] for j in idx])
            with self.autocast():
                values = self.method.validate(self._images(batch), torch.Generator().manual_seed(t.seed + i),
                                              self._labels(batch))
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
            n += len(idx)
        self.method.train()
        metrics = all_reduce_mean({f"val_{k}": v / n for k, v in sums.items()}, self.env)
        if metrics:
            logger.log(self.step, metrics)
            if self.env.is_main:
                log.info("step %d held-out: %s", self.step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    def _note_skipped(self, paths: list[str]) -> None:
        new = set(paths) - self.skipped
        if new and self.env.is_main:
            log.warning("skipped %d unreadable image(s) so far; newest: %s", len(self.skipped) + len(new), sorted(new)[0])
        self.skipped |= new

def train(cfg: PretrainConfig, run_dir: str | Path) -> TrainResult:
    """Set up the process group (under torchrun), train, tear down."""
    env = init_distributed(cfg.train.device, cfg.train.ddp_timeout_s)
    try:
        return Trainer(cfg, run_dir, env).fit()
    finally:
        shutdown(env)

