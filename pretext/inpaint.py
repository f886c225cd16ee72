"""`cebench inpaint --checkpoint RUN --images DIR --mask central --out DIR`: fill holes in a user's images."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from .arguments import non_negative_int, positive_int
from .config import MaskConfig, PretrainConfig
from .data.dataset import UnlabelledImages, image_batches
from .data.images import BadImageError
from .data.sources import fixed_subset, list_images
from .engine.checkpoint import CHECKPOINT, CheckpointError, load_checkpoint
from .engine.distributed import select_device
from .masks import MASK_KINDS, MaskGenerator
from .methods import PretextMethod, get_method
from .methods.context_encoder import build_masks

log = logging.getLogger("cebench")


def load_inpainter(path: str | Path, device: torch.device) -> PretextMethod:
    """A trained inpainting method (eval mode) from a run directory or a checkpoint file."""
    path = Path(path)
    state = load_checkpoint(path / CHECKPOINT if path.is_dir() else path)
    cfg = PretrainConfig.from_dict(state["config"], where=str(path))
    kind = get_method(cfg.method)
    if not hasattr(kind, "inpaint"):  # asked of the class: a method trained on labels cannot be built without them
        raise ValueError(f"{path}: method {cfg.method!r} does not inpaint")
    method = kind(cfg, list(state["fill_mean"]))
    for name, net in method.networks().items():
        net.load_state_dict(state["networks"][name])
    return method.to(device).eval()


def hole_config(method: PretextMethod, overlap: int | None = None, region_bank: str | None = None,
                standard: bool = False) -> PretrainConfig:
    """The run's config with the hole settings an evaluation uses: with `standard`, the mask section's defaults
    (coverage, blocks, deformation, strokes) and seed 0 for the blob bank, so that runs trained with other settings
    are scored on the same holes; the run's own settings otherwise. `overlap` and `region_bank` replace either."""
    cfg = method.cfg
    if standard:
        mask = MaskConfig(overlap=cfg.mask.overlap, region_bank=cfg.mask.region_bank)
        cfg = dataclasses.replace(cfg, mask=mask, train=dataclasses.replace(cfg.train, seed=0))
    if overlap is not None:
        cfg = dataclasses.replace(cfg, mask=dataclasses.replace(cfg.mask, overlap=overlap))
    if region_bank is not None:
        bank = None if region_bank == "none" else region_bank
        cfg = dataclasses.replace(cfg, mask=dataclasses.replace(cfg.mask, region_bank=bank))
    return cfg


def eval_mask_generator(method: PretextMethod, kind: str, overlap: int | None = None,
                        region_bank: str | None = None, standard: bool = False) -> MaskGenerator:
    """The run's mask settings with the requested kind (central, block, region, freeform or mixed), and `overlap`
    (px the central hole is shrunk by on each side) and `region_bank` (a VOC root or PNG folder of object masks for
    region holes, 'none' = procedural blobs) when given instead of the run's: a comparison gives every model the
    same (with `standard`, the default hole settings, see hole_config)."""
    if overlap is not None and overlap < 0:
        raise ValueError(f"--overlap must be >= 0, got {overlap}")
    if method.center and kind != "central":
        raise ValueError(f"this model predicts only the central quarter (model.output=center); --mask {kind} needs a "
                         "full-output model")
    return build_masks(hole_config(method, overlap, region_bank, standard), kind)


def eval_dataset(method: PretextMethod, images: str | Path, split: str, on_bad_image: str = "error",
                 max_images: int | None = None, seed: int = 0) -> UnlabelledImages:
    """Images preprocessed as in training, but with a deterministic centre crop and no flip; with `max_images`,
    the seed's fixed subset (`fixed_subset`, as `cebench nn-inpaint` and the probes draw theirs)."""
    d = method.cfg.data
    paths = list_images(images, "auto", split)
    paths = [paths[i] for i in fixed_subset(len(paths), max_images, seed)]
    return UnlabelledImages(paths, d.load_size, d.fine_size, flip=False, on_bad_image=on_bad_image,
                            max_pixels=d.max_image_pixels)


def batches(dataset: UnlabelledImages, batch_size: int, workers: int | None = None, progress: bool = False
            ) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(indices, uint8 images) in dataset order, decoded by `workers` processes with a progress bar; every
    unreadable image is named in one BadImageError at the end of the pass (`image_batches`)."""
    return image_batches(dataset, batch_size, workers, progress, desc="images")


def batch_holes(masks: MaskGenerator, images_u8: torch.Tensor, seed: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(images in [-1, 1], holes) of a batch: the holes drawn from `seed`, the same for every model."""
    x = images_u8.to(device).float().div(127.5).sub(1)
    b, _, h, w = x.shape
    return x, masks(b, h, w, torch.Generator().manual_seed(seed), device)


def fill_batch(method: PretextMethod, masks: MaskGenerator, images_u8: torch.Tensor, seed: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, hole, model composite, mean-fill composite), images in [0, 1] on `device`."""
    x, hole = batch_holes(masks, images_u8, seed, device)
    filled = method.inpaint(x, hole)
    mean_fill = torch.where(hole, method.fill.to(x.dtype).expand_as(x), x)
    return _to01(x), hole, _to01(filled), _to01(mean_fill)


def _to01(t: torch.Tensor) -> torch.Tensor:
    return t.add(1).div(2).clamp(0, 1)


def add_model_and_image_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by `inpaint` and `eval-inpainting`."""
    p.add_argument("--checkpoint", required=True, type=Path, help="run directory or checkpoint.pt")
    p.add_argument("--split", default="test", help="VOC split list when --images is a VOC root")
    p.add_argument("--mask", default="central", choices=MASK_KINDS)
    p.add_argument("--max-images", type=positive_int, default=None, metavar="N",
                   help="a fixed random subset of N images, drawn by --seed (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--seed", type=int, default=0, help="seed of the random masks and of the --max-images subset")
    p.add_argument("--overlap", type=int, default=None, metavar="PX",
                   help="px the hole is shrunk by on each side (default: the run's mask.overlap); give the same "
                        "value to every model of a comparison (cebench nn-inpaint's default is 4)")
    p.add_argument("--region-bank", default=None, metavar="DIR",
                   help="object masks for region holes: a VOC root (its SegmentationObject/) or a folder of PNGs; "
                        "'none' = procedural blobs (default: the run's mask.region_bank)")
    p.add_argument("--holes", choices=("run", "standard"), default="run",
                   help="hole settings besides the kind: the run's own mask section, or the defaults (coverage "
                        "0.05-0.25, strokes, blob seed 0) so that models trained with other settings get the same "
                        "holes (the suites use standard)")
    p.add_argument("--workers", type=non_negative_int, default=None, metavar="N",
                   help="image decoding processes (default: one per core but one, at most 4; 0 = in this process)")
    p.add_argument("--device", default="auto")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Arguments of the inpaint command."""
    p = argparse.ArgumentParser(prog=prog, description="Fill holes in images with a trained context encoder.")
    add_model_and_image_arguments(p)
    p.add_argument("--images", required=True, type=Path, help="image folder, VOC root or list file")
    p.add_argument("--out", required=True, type=Path)
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Write <stem>_masked.png and <stem>_filled.png per image, and grid.png (masked / filled / original); for a model
    with contextual attention also <stem>_attention.png and attention.png (masked / filled / attention / original)."""
    from torchvision.utils import save_image

    from .cli import setup_logging

    setup_logging()
    args = build_parser(prog).parse_args(argv)
    try:
        method = load_inpainter(args.checkpoint, select_device(args.device))
        masks = eval_mask_generator(method, args.mask, args.overlap, args.region_bank, args.holes == "standard")
        dataset = eval_dataset(method, args.images, args.split, max_images=args.max_images, seed=args.seed)
    except (ValueError, OSError, CheckpointError) as exc:  # bad paths, unreadable checkpoints, wrong mask for the model
        log.error("%s", exc)
        return 2
    device = method.fill.device
    args.out.mkdir(parents=True, exist_ok=True)
    grid_rows: list[torch.Tensor] = []
    try:
        for n, (idx, images) in enumerate(batches(dataset, args.batch_size, args.workers, progress=True)):
            x, hole = batch_holes(masks, images, args.seed + n, device)
            if hasattr(method, "inpaint_with_attention"):  # one generator pass gives both
                filled, attention = method.inpaint_with_attention(x, hole)
            else:
                filled, attention = method.inpaint(x, hole), None
            x, filled = _to01(x), _to01(filled)
            masked = torch.where(hole, torch.ones_like(x), x)
            for j, i in enumerate(idx):
                stem = dataset.paths[i].stem
                save_image(masked[j], args.out / f"{stem}_masked.png")
                save_image(filled[j], args.out / f"{stem}_filled.png")
                if attention is not None:
                    save_image(attention[j], args.out / f"{stem}_attention.png")
            if n == 0:
                k = min(8, len(idx))
                grid_rows = [masked[:k], filled[:k], x[:k]]
                if attention is not None:
                    attention_rows = [masked[:k], filled[:k], attention[:k], x[:k]]
                    save_image(torch.cat(attention_rows).cpu(), args.out / "attention.png", nrow=k)
    except BadImageError as exc:  # the readable images before the first bad one are written
        log.error("%s", exc)
        return 2
    save_image(torch.cat(grid_rows).cpu(), args.out / "grid.png", nrow=grid_rows[0].shape[0])
    log.info("inpainted %d images into %s (grid: %s)", len(dataset), args.out, args.out / "grid.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
