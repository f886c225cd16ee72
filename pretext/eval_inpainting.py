"""`cebench eval-inpainting`: mean L1 (%), mean L2 (%) and PSNR (dB) on the hole, as in Table 1 of the paper, and SSIM.

Pixels are in [0, 1]. Per image, L1 and L2 are means over the hole's pixels and channels and
PSNR = 10 log10(1 / L2); SSIM (scikit-image's structural_similarity, 7x7 Gaussian-free windows, colour channels
averaged) compares the whole composite (known pixels kept, hole filled) with the original, as the free-form
inpainting papers report it; the reported figures are means over images. Mean fill (the hole set to the
dataset mean) is scored on exactly the same images and holes as the `baseline_mean_fill` row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from pathlib import Path

import torch

from .engine.checkpoint import atomic_write_text
from .engine.checkpoint import CheckpointError
from .engine.distributed import select_device
from .masks import mask_coverage
from .inpaint import (add_model_and_image_arguments, batches, eval_dataset, eval_mask_generator, fill_batch,
                      hole_config, load_inpainter)

log = logging.getLogger("cebench")


def hole_errors(pred: torch.Tensor, target: torch.Tensor, hole: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean absolute and mean squared error over hole pixels and channels; images in [0, 1]."""
    weight = hole.expand_as(pred).float()
    count = weight.flatten(1).sum(1).clamp_min(1)
    diff = (pred.float() - target.float()) * weight
    return diff.abs().flatten(1).sum(1) / count, diff.square().flatten(1).sum(1) / count


def image_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (B,) of (B, 3, H, W) images in [0, 1] (scikit-image, data range 1, channels averaged)."""
    from skimage.metrics import structural_similarity

    a = pred.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    b = target.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    side = min(a.shape[1:3])
    win = 7 if side >= 7 else side - (1 - side % 2)  # the largest odd window that fits
    return torch.tensor([structural_similarity(x, y, data_range=1.0, channel_axis=-1, win_size=win)
                         for x, y in zip(a, b)], dtype=torch.float64)


def summarise(l1: torch.Tensor, l2: torch.Tensor, ssim: torch.Tensor | None = None) -> dict[str, float]:
    """Table 1 figures from per-image errors (and SSIM when given)."""
    psnr = 10 * torch.log10(1.0 / l2.double().clamp_min(1e-10))
    out = {"mean_l1": round(100 * l1.double().mean().item(), 4), "mean_l2": round(100 * l2.double().mean().item(), 4),
           "psnr": round(psnr.mean().item(), 4)}
    if ssim is not None:
        out["ssim"] = round(ssim.double().mean().item(), 4)
    return out


def default_images(method) -> Path:
    """The demo data a run trained on (scored on its `test` split); other runs must name --images."""
    from .engine.trainer import default_demo_dir

    d = method.cfg.data
    if d.root is not None:
        raise ValueError(f"this run trained on {d.root}: pass --images with held-out images")
    return Path(d.demo_dir).expanduser() if d.demo_dir else default_demo_dir()


def evaluate(checkpoint: Path, images: Path | None, mask: str = "central", split: str = "test", batch_size: int = 32,
             max_images: int | None = None, seed: int = 0, device: str = "auto", overlap: int | None = None,
             region_bank: str | None = None, holes: str = "run", workers: int | None = None,
             progress: bool = False) -> dict:
    """Score a trained model and mean fill on the same holes; images decoded by `workers` processes (None: one per
    core but one), with a progress bar when `progress`; every unreadable image is named in one error."""
    dev = select_device(device)
    method = load_inpainter(checkpoint, dev)
    masks = eval_mask_generator(method, mask, overlap, region_bank, holes == "standard")
    hole_settings = {**dataclasses.asdict(hole_config(method, overlap, region_bank, holes == "standard").mask),
                     "kind": mask}
    images = images if images is not None else default_images(method)
    dataset = eval_dataset(method, images, split, max_images=max_images, seed=seed)
    coverage: list[torch.Tensor] = []
    errs: dict[str, list[torch.Tensor]] = {f"{who}_{k}": [] for who in ("model", "mean") for k in ("l1", "l2", "ssim")}
    for n, (_, batch) in enumerate(batches(dataset, batch_size, workers, progress)):
        x, hole, filled, mean_fill = fill_batch(method, masks, batch, seed + n, dev)
        for name, pred in (("model", filled), ("mean", mean_fill)):
            l1, l2 = hole_errors(pred, x, hole)
            errs[f"{name}_l1"].append(l1.cpu())
            errs[f"{name}_l2"].append(l2.cpu())
            errs[f"{name}_ssim"].append(image_ssim(pred, x))
        coverage.append(mask_coverage(hole.cpu()))
    cat = {k: torch.cat(v) for k, v in errs.items()}
    model = summarise(cat["model_l1"], cat["model_l2"], cat["model_ssim"])
    return {**model, "baseline_mean_fill": summarise(cat["mean_l1"], cat["mean_l2"], cat["mean_ssim"]), "mask": mask,
            "hole_coverage": round(torch.cat(coverage).mean().item(), 4), "holes": holes, "hole_settings": hole_settings,
            "overlap": method.cfg.mask.overlap if overlap is None else overlap,
            "n_images": len(dataset), "images": str(images), "checkpoint": str(checkpoint), "seed": seed,
            "method": method.cfg.method, "arch": method.cfg.model.arch}


def inpainting_table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table of (name, metrics) rows: mean L1, mean L2, PSNR, SSIM (blank where a row has none)."""
    lines = ["| method | mean L1 (%) | mean L2 (%) | PSNR (dB) | SSIM |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {n} | {m['mean_l1']:.2f} | {m['mean_l2']:.2f} | {m['psnr']:.2f} | "
              f"{'' if m.get('ssim') is None else format(m['ssim'], '.4f')} |" for n, m in rows]
    return "\n".join(lines)


def format_table(metrics: dict) -> str:
    """Markdown table of the model and the mean-fill baseline."""
    return inpainting_table([("mean fill", metrics["baseline_mean_fill"]),
                             (f"{metrics['method']} ({metrics['arch']})", metrics)])


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Arguments of the eval-inpainting command."""
    p = argparse.ArgumentParser(prog=prog, description="Inpainting metrics on the hole region (Table 1).")
    add_model_and_image_arguments(p)
    p.add_argument("--images", type=Path, default=None,
                   help="held-out images: folder, VOC root or list file (default for demo-trained runs: the demo data)")
    p.add_argument("--out", type=Path, default=None, help="directory for metrics.json (default: CHECKPOINT/eval_<mask>)")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Evaluate, print a table and write metrics.json."""
    from .cli import setup_logging

    setup_logging()
    args = build_parser(prog).parse_args(argv)
    try:
        metrics = evaluate(args.checkpoint, args.images, args.mask, args.split, args.batch_size, args.max_images,
                           args.seed, args.device, args.overlap, args.region_bank, args.holes, args.workers,
                           progress=True)
    except (ValueError, OSError, CheckpointError) as exc:  # bad paths, unreadable images or checkpoints, wrong mask for the model
        log.error("%s", exc)
        return 2
    out = args.out or (args.checkpoint if args.checkpoint.is_dir() else args.checkpoint.parent) / f"eval_{args.mask}"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(format_table(metrics))
    gain = metrics["psnr"] - metrics["baseline_mean_fill"]["psnr"]
    print(f"{metrics['n_images']} images, {metrics['mask']} holes ({100 * metrics['hole_coverage']:.1f} % of the "
          f"pixels): PSNR {gain:+.2f} dB over mean fill -> "
          f"{out / 'metrics.json'}")
    return 0 if math.isfinite(metrics["psnr"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
