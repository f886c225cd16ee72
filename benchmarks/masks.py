"""Speed of the hole-mask generators: masks per second for each kind at one batch and image size.

Usage: python -m benchmarks.masks [--batch 64] [--size 128] [--repeats 20] [--device cpu] [--threads N]
                                  [--out results/masks.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from pretext.masks import MASK_KINDS, MaskGenerator, build_mask_generator

_WARMUP = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; sizes must be positive."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    for name in ("batch", "size", "repeats", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def time_masks(masks: MaskGenerator, batch: int, size: int, repeats: int, device: torch.device, seed: int) -> float:
    """Median seconds to generate one batch of size x size masks on `device`."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(_WARMUP):
        _synchronise(masks(batch, size, size, generator, device))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        _synchronise(masks(batch, size, size, generator, device))
        seconds.append(time.perf_counter() - start)
    # The median shrugs off the odd slow batch (region retries, a busy neighbour process).
    return sorted(seconds)[len(seconds) // 2]


def _synchronise(masks: torch.Tensor) -> None:
    """Wait for queued GPU work so the clock measures it."""
    if masks.is_cuda:
        torch.cuda.synchronize(masks.device)


def run_benchmark(batch: int, size: int, repeats: int, device: torch.device, seed: int) -> dict:
    """Time every mask kind; one row per kind plus a description of the machine."""
    results: dict = {}
    for kind in MASK_KINDS:
        seconds = time_masks(build_mask_generator(kind, seed=seed), batch, size, repeats, device, seed)
        results[kind] = {"masks_per_s": batch / seconds, "ms_per_batch": 1000 * seconds, "batch": batch, "size": size}
    results["machine"] = machine_info(device)
    return results


def machine_info(device: torch.device) -> dict:
    """Platform, library versions and thread count the numbers were measured with."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def format_table(results: dict) -> str:
    """A small plain-text table of the per-kind timings."""
    lines = [f"{'kind':<8} {'batch':>5} {'size':>5} {'ms/batch':>9} {'masks/s':>10}"]
    for kind in MASK_KINDS:
        row = results[kind]
        lines.append(
            f"{kind:<8} {row['batch']:>5} {row['size']:>5} {row['ms_per_batch']:>9.2f} {row['masks_per_s']:>10.0f}"
        )
    return "\n".join(lines)


def write_json(results: dict, path: Path) -> None:
    """Write the results, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Parse options, time the mask kinds, print the table and optionally save JSON."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = run_benchmark(args.batch, args.size, args.repeats, torch.device(args.device), args.seed)
    print(format_table(results))
    if args.out is not None:
        write_json(results, args.out)


if __name__ == "__main__":
    main()
