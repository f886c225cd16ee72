"""`cebench nn-inpaint`: nearest-neighbour inpainting, the baseline rows of Table 1 of the paper.

Every image gets the central hole `cebench eval-inpainting --mask central` uses (`CentralMask`: the central
quarter shrunk by `--overlap` px, default 4 as in training). The database image whose context (everything
outside the hole) is nearest fills the hole with its own pixels there. Context features:
- `hog`: `skimage.feature.hog` (9 orientations, cells of size/16 px, 2x2-cell blocks, L2-Hys) of the RGB
  image, keeping only the blocks whose pixels and gradient neighbours all lie outside the hole, so the hole's
  content cannot change them;
- `encoder`: a frozen encoder's stage (pool5) of the image with the hole filled with the encoder's fill mean.
Features are L2-normalised and searched with FAISS exact inner product (`IndexFlatIP`), which for unit
vectors orders neighbours exactly as L2 distance does. A database image that is the query's own file is
never its neighbour (leave-one-out when database and images are the same set).

Scores are those of eval-inpainting (`hole_errors`, `summarise`: mean L1 %, mean L2 %, PSNR dB on the hole,
pixels in [0, 1]); the mean-fill row fills the same holes with the database's mean colour. Images are the
shorter side resized to `--load-size` (default `--size`), then the centre `--size` square; all are held in
memory as uint8. Writes OUT/metrics.json, OUT/neighbours.json and OUT/grid.png (rows: masked, NN fill,
ground truth); bad input is one error line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pretext.data.dataset import UnlabelledImages
from pretext.engine.checkpoint import atomic_write_text
from pretext.engine.distributed import select_device
from pretext.eval_inpainting import hole_errors, inpainting_table, summarise

from .arguments import command_main, max_images, positive_int
from .backbones import default_layer, encoder_record, open_encoder
from .evaluate import json_safe, provenance
from .features import LabelledImages, encode_batch, fill_value, subset
from .retrieve import central_hole, check_layer, neighbours, open_images, self_indices

FEATURES = ("hog", "encoder")
HOG_ORIENTATIONS = 9
HOG_CELLS_PER_BLOCK = 2
DEFAULT_HOG_SIZE = 128  # the paper's inpainting resolution
GRID_IMAGES = 8


class NNInpaintError(ValueError):
    """Nearest-neighbour inpainting input that cannot be used (options that do not fit together)."""


def load_images(data: LabelledImages, size: int, load_size: int) -> torch.Tensor:
    """(N, 3, size, size) uint8: shorter side resized to `load_size`, centre crop, as eval-inpainting does."""
    images = UnlabelledImages(data.paths, load_size, size, flip=False)
    return torch.stack([images[i][0] for i in range(len(images))])


def hog_cell(size: int) -> int:
    """HOG cell side: 8 px at the paper's 128 px, scaled with the image (at least 2 px)."""
    return max(2, size // 16)


def context_blocks(hole: torch.Tensor, cell: int) -> np.ndarray:
    """(R, C) bool: HOG blocks whose pixels and their gradient neighbours are all outside the hole."""
    grown = torch.nn.functional.max_pool2d(hole.float(), 3, stride=1, padding=1)[0, 0].bool().numpy()
    side, span = grown.shape[0] // cell - HOG_CELLS_PER_BLOCK + 1, HOG_CELLS_PER_BLOCK * cell
    return np.array([[not grown[r * cell:r * cell + span, c * cell:c * cell + span].any() for c in range(side)]
                     for r in range(side)])


def hog_features(images: torch.Tensor, hole: torch.Tensor) -> np.ndarray:
    """(N, D) L2-normalised HOG of the context blocks of uint8 images."""
    try:
        from skimage.feature import hog
    except ImportError as exc:
        raise NNInpaintError("--features hog needs scikit-image (pip install scikit-image)") from exc
    cell = hog_cell(images.shape[-1])
    keep = context_blocks(hole, cell)
    if not keep.any():
        raise NNInpaintError(f"no HOG block of {cell} px cells lies outside the hole in {images.shape[-1]} px images")
    rows = [hog(img.permute(1, 2, 0).numpy().astype(np.float32) / 255, orientations=HOG_ORIENTATIONS,
                pixels_per_cell=(cell, cell), cells_per_block=(HOG_CELLS_PER_BLOCK,) * 2, block_norm="L2-Hys",
                feature_vector=False, channel_axis=-1)[keep].ravel() for img in images]
    x = np.stack(rows).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def encoder_features(encoder: nn.Module, meta: dict, images: torch.Tensor, hole: torch.Tensor, layer: str,
                     batch_size: int, device: torch.device) -> np.ndarray:
    """(N, D) L2-normalised features of the images with the hole filled with the encoder's fill mean."""
    encoder.eval().to(device)
    return np.concatenate([encode_batch(encoder, meta, images[i:i + batch_size], layer, device, hole)
                           for i in range(0, len(images), batch_size)]).astype(np.float32)


def paste(queries: torch.Tensor, sources: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """The queries with their hole pixels taken from `sources` (same shape)."""
    return torch.where(hole, sources, queries)


def mean_colour(images: torch.Tensor) -> torch.Tensor:
    """(1, 3, 1, 1) mean RGB in [0, 1] of uint8 images."""
    return images.double().mean(dim=(0, 2, 3)).div(255).float().view(1, 3, 1, 1)


def load_model(args: argparse.Namespace) -> tuple[nn.Module | None, dict | None]:
    """The encoder and its metadata for `--features encoder`; (None, None) for HOG."""
    if args.features == "hog":
        if args.encoder is not None:
            raise NNInpaintError(f"--encoder {args.encoder} is only used with --features encoder")
        return None, None
    if args.encoder is None:
        raise NNInpaintError("--features encoder needs --encoder RUN_DIR")
    encoder, meta = open_encoder(args.encoder, args.weights)
    args.layer = args.layer or default_layer(encoder)
    check_layer(encoder, meta, args.layer, args.encoder)
    return encoder, meta


def image_sizes(args: argparse.Namespace, meta: dict | None) -> tuple[int, int]:
    """(size, load_size): the encoder's input size (or 128 for HOG) unless --size says otherwise."""
    size = args.size or (int(meta["input_size"]) if meta else DEFAULT_HOG_SIZE)
    if meta and size != int(meta["input_size"]):
        raise NNInpaintError(f"{args.encoder}: the encoder takes {meta['input_size']} px images, not --size {size}")
    load_size = args.load_size or size
    if load_size < size:
        raise NNInpaintError(f"--load-size {load_size} is smaller than --size {size}")
    return size, load_size


def context_features(args: argparse.Namespace, encoder: nn.Module | None, meta: dict | None, db: torch.Tensor,
                     queries: torch.Tensor, hole: torch.Tensor) -> tuple[np.ndarray, np.ndarray, dict]:
    """Database and query context features, and their settings for metrics.json."""
    if encoder is None:
        cell = hog_cell(db.shape[-1])
        settings = {"orientations": HOG_ORIENTATIONS, "pixels_per_cell": cell, "cells_per_block": HOG_CELLS_PER_BLOCK,
                    "block_norm": "L2-Hys", "context_blocks": int(context_blocks(hole, cell).sum())}
        return hog_features(db, hole), hog_features(queries, hole), settings
    device = select_device(args.device)
    db_x, q_x = (encoder_features(encoder, meta, x, hole, args.layer, args.batch_size, device) for x in (db, queries))
    settings = {"encoder": str(args.encoder), "encoder_sha256": meta["sha256"], "encoder_method": meta.get("method"),
                **encoder_record(meta), "layer": args.layer, "fill": fill_value(meta)}
    return db_x, q_x, settings


def run_nn_inpaint(args: argparse.Namespace) -> dict:
    """Fill every image's hole from its context-nearest database image; write the outputs; returns metrics."""
    encoder, meta = load_model(args)
    size, load_size = image_sizes(args, meta)
    hole = central_hole(size, args.overlap)  # eval-inpainting's hole
    db_set = subset(open_images(args.database, args.database_split), args.max_images[0], args.seed)
    query_set = subset(open_images(args.images, args.split), args.max_images[1], args.seed)
    own = self_indices(db_set.paths, query_set.paths)
    if len(db_set.paths) - int((own >= 0).any()) < 1:
        raise NNInpaintError(f"{db_set.name}: no database image left once each image itself is dropped")
    db, queries = load_images(db_set, size, load_size), load_images(query_set, size, load_size)
    db_x, q_x, settings = context_features(args, encoder, meta, db, queries, hole)
    sims, idx, _ = neighbours(db_x, q_x, 1, own)
    truth, mean = queries.float() / 255, mean_colour(db)
    fills = {"nn": paste(truth, db[idx[:, 0]].float() / 255, hole), "mean": torch.where(hole, mean, truth)}
    errors = {name: hole_errors(fill, truth, hole) for name, fill in fills.items()}
    record = build_record(args, settings, size, load_size, hole, db_set, query_set, errors, mean, own)
    write_outputs(args.out, record, query_set, db_set, sims[:, 0], idx[:, 0], errors, truth, fills["nn"], hole)
    return record


def build_record(args: argparse.Namespace, settings: dict, size: int, load_size: int, hole: torch.Tensor,
                 db_set: LabelledImages, query_set: LabelledImages, errors: dict, mean: torch.Tensor,
                 own: np.ndarray) -> dict:
    """metrics.json: the NN row (top level, as eval-inpainting's model row), the mean-fill row, the setting."""
    rows, cols = torch.nonzero(hole[0, 0], as_tuple=True)
    box = [int(rows.min()), int(cols.min()), int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)]
    return {"task": "nn_inpainting", "features": args.features, **summarise(*errors["nn"]),
            "baseline_mean_fill": summarise(*errors["mean"]),
            "mean_fill_rgb": [round(v, 6) for v in mean.flatten().tolist()],
            "feature_settings": settings, "mask": "central", "overlap": args.overlap, "hole_top_left_height_width": box,
            "size": size, "load_size": load_size, "n_images": len(query_set.paths),
            "database": db_set.describe(args.max_images[0]), "images": query_set.describe(args.max_images[1]),
            "self_matches_dropped": int((own >= 0).sum()),
            "search": "FAISS IndexFlatIP on L2-normalised context features (same order as L2 distance), k = 1",
            "seed": args.seed, **provenance()}


def write_outputs(out: Path, record: dict, query_set: LabelledImages, db_set: LabelledImages, sims: np.ndarray,
                  nn_idx: np.ndarray, errors: dict, truth: torch.Tensor, filled: torch.Tensor,
                  hole: torch.Tensor) -> None:
    """OUT/metrics.json, OUT/neighbours.json (per image: its neighbour and errors), OUT/grid.png."""
    from torchvision.utils import save_image

    out.mkdir(parents=True, exist_ok=True)
    per_image = [{"path": str(p), "neighbour": str(db_set.paths[j]), "similarity": round(float(s), 6),
                  "l1": float(errors["nn"][0][i]), "l2": float(errors["nn"][1][i]),
                  "mean_fill_l1": float(errors["mean"][0][i]), "mean_fill_l2": float(errors["mean"][1][i])}
                 for i, (p, j, s) in enumerate(zip(query_set.paths, nn_idx, sims))]
    atomic_write_text(out / "neighbours.json", json.dumps(per_image, indent=1) + "\n")
    atomic_write_text(out / "metrics.json", json.dumps(json_safe(record), indent=2, allow_nan=False) + "\n")
    n = min(GRID_IMAGES, len(truth))
    masked = torch.where(hole, torch.ones_like(truth[:n]), truth[:n])
    save_image(torch.cat([masked, filled[:n], truth[:n]]), out / "grid.png", nrow=n)


def format_table(record: dict) -> str:
    """Markdown table of the mean-fill and nearest-neighbour rows."""
    return inpainting_table([("mean fill", record["baseline_mean_fill"]),
                             (f"NN inpainting ({record['features']})", record)])


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Arguments of the nn-inpaint command."""
    p = argparse.ArgumentParser(prog=prog, description="Nearest-neighbour inpainting of a central hole (Table 1).")
    p.add_argument("--database", type=Path, required=True, metavar="DIR",
                   help="images whose centres fill the holes: ImageFolder, VOC/COCO root or flat folder")
    p.add_argument("--database-split", default="trainval", help="VOC/COCO split of the database (default: trainval)")
    p.add_argument("--images", type=Path, required=True, metavar="DIR", help="test images, same kinds as --database")
    p.add_argument("--split", default="test", help="VOC/COCO split of the test images (default: test)")
    p.add_argument("--features", choices=FEATURES, required=True, help="context features: hog or encoder")
    p.add_argument("--encoder", default=None, metavar="RUN_DIR|timm:NAME|torchvision:NAME",
                   help="run directory, or a timm / torchvision model (--features encoder)")
    p.add_argument("--weights", type=Path, default=None, metavar="FILE",
                   help="state dict of a timm / torchvision --encoder, as any SSL trainer saved it")
    p.add_argument("--layer", default=None, help="encoder stage (default: pool5, or a backbone's last stage)")
    p.add_argument("--out", type=Path, required=True, metavar="OUT_DIR",
                   help="directory for metrics.json, neighbours.json, grid.png")
    p.add_argument("--max-images", type=max_images, default=(None, None), metavar="N[,M]",
                   help="fixed random subset of N database (M test) images (default: all)")
    p.add_argument("--size", type=positive_int, default=None,
                   help=f"square image side (default: the encoder's input size, {DEFAULT_HOG_SIZE} for HOG)")
    p.add_argument("--load-size", type=positive_int, default=None,
                   help="shorter side before the centre crop (default: --size; a run's data.load_size to match "
                        "its eval-inpainting)")
    p.add_argument("--overlap", type=int, default=4,
                   help="px the central quarter is shrunk by on each side (default: 4, as eval-inpainting)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="subset seed")
    return p


def report(record: dict, args: argparse.Namespace) -> str:
    """The printed result: the table, then the gain over mean fill and where metrics.json went."""
    return (f"{format_table(record)}\n{record['n_images']} images, {record['database']['n_images']} database "
            f"images, central holes (overlap {record['overlap']}): PSNR "
            f"{record['psnr'] - record['baseline_mean_fill']['psnr']:+.2f} dB over mean fill -> "
            f"{args.out / 'metrics.json'}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse, inpaint, print a table; bad directories, images, encoders, sizes or devices: exit code 2."""
    return command_main(build_parser(prog), argv, run_nn_inpaint, report)


if __name__ == "__main__":
    raise SystemExit(main())
