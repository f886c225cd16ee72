"""Seconds per training step of any pretrain preset on random inputs (no data loading).

python -m benchmarks.step_time PRESET_OR_YAML [key=value ...] [--steps 3] [--warmup 1]

A method that learns from labels (method=supervised) gets random ones too: one class per image out of 1000
(ImageNet's, the paper's "ImageNet labels" row) unless step_runner is given another LabelSpace.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from collections.abc import Callable

import torch

from pretext.config import PretrainConfig, load_config
from pretext.data.labels import LabelSpace
from pretext.engine.distributed import select_device
from pretext.engine.trainer import resolve_precision
from pretext.methods import StepContext, get_method
from pretext.models.kernels import to_channels_last

RANDOM_LABELS = LabelSpace(tuple(f"class{i}" for i in range(1000)), multilabel=False)


def random_labels(space: LabelSpace, batch: int, device: torch.device) -> torch.Tensor:
    """A batch of labels as the trainer hands them over: (B,) class indices, or (B, C) int8 rows in {1, 0, -1}."""
    generator = torch.Generator().manual_seed(0)
    if space.multilabel:
        return torch.randint(-1, 2, (batch, len(space.classes)), generator=generator, dtype=torch.int8).to(device)
    return torch.randint(len(space.classes), (batch,), generator=generator).to(device)


def step_runner(cfg: PretrainConfig, labels: LabelSpace = RANDOM_LABELS) -> Callable[[int], float]:
    """Build the method once; the returned function runs optimisation step i and returns its wall seconds. A method
    that `uses_labels` is built for the label space `labels` and trained on random labels of it."""
    if cfg.mask.region_bank == "data":  # no dataset here: region shapes from procedural blobs
        cfg = dataclasses.replace(cfg, mask=dataclasses.replace(cfg.mask, region_bank=None))
    device = select_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    method_class = get_method(cfg.method)
    label_args = (labels,) if method_class.uses_labels else ()
    method = method_class(cfg, [0.5, 0.5, 0.5], *label_args).to(device)
    method.use_fast_kernels(cfg.train.fast_kernels)
    opts = method.build_optimizers()

    def optimize(name: str, loss: torch.Tensor) -> None:
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()

    precision = resolve_precision(cfg.train.precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    size = cfg.data.fine_size
    x = torch.rand(cfg.train.batch_size, 3, size, size, device=device) * 2 - 1
    y = random_labels(labels, cfg.train.batch_size, device) if label_args else None
    if cfg.train.channels_last:
        method, x = to_channels_last(method, device), x.contiguous(memory_format=torch.channels_last)
    if cfg.train.compile:  # as the trainer does: each network compiled on its own
        for name, net in method.networks().items():
            setattr(method, name, torch.compile(net))

    def step(i: int) -> float:
        ctx = StepContext(i, torch.Generator().manual_seed(i), device, autocast, optimize,
                          lambda _m: contextlib.nullcontext(), y)
        start = time.perf_counter()
        method.training_step(x, ctx)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return step


def time_steps(cfg: PretrainConfig, steps: int, warmup: int) -> list[float]:
    """Wall seconds of `steps` optimisation steps after `warmup` untimed ones."""
    step = step_runner(cfg)
    times = [step(i) for i in range(warmup + steps)]
    return times[warmup:]


def main(argv: list[str] | None = None) -> int:
    """Print seconds per step and images per second."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)
    times = time_steps(cfg, args.steps, args.warmup)
    precision = resolve_precision(cfg.train.precision, select_device(cfg.train.device))
    mean = sum(times) / len(times)
    print(f"{args.config} batch {cfg.train.batch_size} at {cfg.data.fine_size} px, {precision}: "
          f"{', '.join(f'{t:.2f}' for t in times)} s per step; mean {mean:.2f} s = "
          f"{cfg.train.batch_size / mean:.1f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
