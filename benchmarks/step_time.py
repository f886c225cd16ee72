"""Seconds per training step of any pretrain preset on random inputs (no data loading).

python -m benchmarks.step_time PRESET_OR_YAML [key=value ...] [--steps 3] [--warmup 1]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from collections.abc import Callable

import torch

from pretext.config import PretrainConfig, load_config
from pretext.engine.distributed import select_device
from pretext.methods import StepContext, get_method


def step_runner(cfg: PretrainConfig) -> Callable[[int], float]:
    """Build the method once; the returned function runs optimisation step i and returns its wall seconds."""
    if cfg.mask.region_bank == "data":  # no dataset here: region shapes from procedural blobs
        cfg = dataclasses.replace(cfg, mask=dataclasses.replace(cfg.mask, region_bank=None))
    device = select_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    method = get_method(cfg.method)(cfg, [0.5, 0.5, 0.5]).to(device)
    method.use_fast_kernels(cfg.train.fast_kernels)
    opts = method.build_optimizers()

    def optimize(name: str, loss: torch.Tensor) -> None:
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    size = cfg.data.fine_size
    x = torch.rand(cfg.train.batch_size, 3, size, size, device=device) * 2 - 1
    if cfg.train.channels_last:
        method, x = method.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)

    def step(i: int) -> float:
        ctx = StepContext(i, torch.Generator().manual_seed(i), device, autocast, optimize,
                          lambda _m: contextlib.nullcontext())
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
    mean = sum(times) / len(times)
    print(f"{args.config} batch {cfg.train.batch_size} at {cfg.data.fine_size} px, {cfg.train.precision}: "
          f"{', '.join(f'{t:.2f}' for t in times)} s per step; mean {mean:.2f} s = "
          f"{cfg.train.batch_size / mean:.1f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
