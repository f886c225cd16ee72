"""Per-layer change rates and pool5 scale of exported encoders: what data-dependent initialisation fixes.

python -m benchmarks.init_rates RUN_DIR [RUN_DIR ...] --images DIR [--split test] [--n 64]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pretext.data.dataset import UnlabelledImages
from pretext.data.sources import list_images
from pretext.export import load_encoder
from pretext.init import affine_layers, change_rates


def measure(run: Path, images: torch.Tensor) -> dict[str, float]:
    """pool5 std and the max/min ratio of per-layer change rates of one encoder."""
    encoder, meta = load_encoder(run)
    encoder.eval()
    rates = change_rates(encoder, encoder, images, affine_layers(encoder), torch.Generator().manual_seed(0))
    with torch.no_grad():
        pool5 = encoder(images)
    return {"method": meta["method"], "pool5_std": pool5.std().item(), "rate_spread": (rates.max() / rates.min()).item()}


def load_images(root: Path, split: str, n: int, size: int) -> torch.Tensor:
    """n centre crops normalised to [-1, 1]."""
    ds = UnlabelledImages(list_images(root, "auto", split)[:n], size, size)
    return torch.stack([ds[i][0] for i in range(len(ds))]).float() / 127.5 - 1


def main(argv: list[str] | None = None) -> int:
    """Print one row per run."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--images", required=True, type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=64)
    args = p.parse_args(argv)
    for run in args.runs:
        size = load_encoder(run)[1]["input_size"]
        row = measure(run, load_images(args.images, args.split, args.n, size))
        print(f"{run}: method {row['method']}, pool5 std {row['pool5_std']:.3g}, "
              f"change-rate spread (max/min over layers) {row['rate_spread']:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
