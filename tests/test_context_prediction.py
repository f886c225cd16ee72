"""Context prediction: grid geometry, colour guards, determinism, real training, exact resume, export, presets."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pretext.config import load_config
from pretext.engine.checkpoint import load_checkpoint
from pretext.engine.trainer import train
from pretext.export import load_encoder
from pretext.methods import get_method
from pretext.methods.context_prediction import (
    GREEN_MAGENTA, ContextPredictionMethod, crop_patches, drop_colour, normalise_patches, patch_grid, project_colour,
    sample_corners,
)

from .conftest import TINY

# Neighbour label -> (dy, dx) in grid cells, written out by hand: raster order around the centre.
EXPECTED_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
# A tiny tower on 64 px crops: 16 px patches, 8 px gaps, 1 px jitter, resized to 32 px.
SMALL = ["method=context_prediction", "data.load_size=72", "data.fine_size=64", "patches.input_size=32",
         "patches.fc_dim=32", "model.dropout=0"]


def small_config(root: Path, *overrides: str):
    """TINY settings for context prediction on `root`."""
    return load_config("demo_context_prediction", [f"data.root={root}", *TINY, *SMALL, "data.holdout=0",
                                                   "train.eval_every=0", *overrides])


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random smooth colour images in [-1, 1], (n, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size, mode="bicubic", align_corners=False).clamp(-1, 1)


# --- geometry -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size, patch, gap, jitter", [(384, 96, 48, 7), (128, 32, 16, 2), (64, 16, 8, 1),
                                                      (100, 25, 12, 2)])
def test_grid_scales_the_papers_96_48_7(size: int, patch: int, gap: int, jitter: int) -> None:
    grid = patch_grid(size, 0.5, 0.073)
    assert (grid.patch, grid.gap, grid.jitter) == (patch, gap, jitter)
    assert 3 * grid.patch + 2 * grid.gap <= size


def test_grid_that_cannot_work_names_the_keys() -> None:
    with pytest.raises(ValueError, match="data.fine_size=20.*patches.gap_ratio"):
        patch_grid(20, 0.5, 0.073)
    with pytest.raises(ValueError, match="patches.jitter_ratio=0.3.*patches.gap_ratio"):
        patch_grid(128, 0.5, 0.3)


@pytest.mark.parametrize("size", [64, 128, 384])
def test_neighbour_offsets_are_the_grid_positions(size: int) -> None:
    grid = patch_grid(size, 0.5, 0.073)
    corners = grid.corners(torch.arange(8), torch.zeros(8, 2, 2, dtype=torch.long))
    margin = (size - 3 * grid.patch - 2 * grid.gap) // 2
    assert (corners[:, 0] == margin + grid.patch + grid.gap).all()  # the middle cell
    step = grid.patch + grid.gap
    assert (corners[:, 1] - corners[:, 0]).tolist() == [[dy * step, dx * step] for dy, dx in EXPECTED_OFFSETS]
    assert corners.min() >= 0 and corners.max() <= size - grid.patch


@pytest.mark.parametrize("size", [64, 128, 384])
def test_jitter_is_bounded_and_stays_inside_the_crop(size: int) -> None:
    grid = patch_grid(size, 0.5, 0.073)
    corners, labels = sample_corners(grid, 4000, torch.Generator().manual_seed(0))
    nominal = grid.corners(labels, torch.zeros(4000, 2, 2, dtype=torch.long))
    shift = corners - nominal
    assert shift.abs().max() <= grid.jitter and len(shift.unique()) > 1
    assert corners.min() >= 0 and corners.max() <= size - grid.patch
    assert torch.bincount(labels, minlength=8).min() > 4000 / 8 * 0.8  # labels roughly uniform


def test_crops_are_exactly_the_grid_cells() -> None:
    size, n = 64, 8
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    # Channel 0 holds the row, 1 the column, 2 the image index: every pixel says where it came from.
    images = torch.stack([torch.stack([yy, xx, torch.full_like(yy, i)]) for i in range(n)]).float()
    cfg = small_config(Path("."), "patches.jitter_ratio=0")
    method = ContextPredictionMethod(cfg, [0.5] * 3)
    pairs, labels = method.sample_pairs(images, torch.Generator().manual_seed(0))
    p, step = method.grid.patch, method.grid.patch + method.grid.gap
    centre = method.grid.centre
    for i, k in enumerate(labels.tolist()):
        dy, dx = EXPECTED_OFFSETS[k]
        for j, (y, x) in enumerate([(centre, centre), (centre + dy * step, centre + dx * step)]):
            assert torch.equal(pairs[i, j], images[i, :, y:y + p, x:x + p])


def test_crop_patches_matches_slicing_at_arbitrary_corners() -> None:
    images = torch.randn(3, 3, 20, 20)
    corners = torch.tensor([[[0, 0], [12, 5]], [[3, 7], [15, 15]], [[9, 1], [0, 14]]])
    out = crop_patches(images, corners, 5)
    assert out.shape == (3, 2, 3, 5, 5)
    for b in range(3):
        for j in range(2):
            y, x = corners[b, j].tolist()
            assert torch.equal(out[b, j], images[b, :, y:y + 5, x:x + 5])


# --- colour ---------------------------------------------------------------------------------------


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm() + 1e-12))


def test_colour_drop_keeps_one_channel_and_fills_the_others_with_weak_noise() -> None:
    patches = smooth_images(60, 16).view(30, 2, 3, 16, 16)
    out = drop_colour(patches, torch.Generator().manual_seed(0))
    kept_channels = []
    for src, dst in zip(patches.flatten(0, 1), out.flatten(0, 1)):
        kept = [c for c in range(3) if torch.equal(src[c], dst[c])]
        assert len(kept) == 1
        kept_channels.append(kept[0])
        for c in set(range(3)) - set(kept):
            ratio = float(dst[c].std() / src[kept[0]].std())
            assert 0.005 < ratio < 0.02  # ~1/100 of the kept channel's std
            assert abs(_corr(dst[c], src[c])) < 0.35  # noise, not the image (256 pixels: chance |r| ~ 0.06)
    assert set(kept_channels) == {0, 1, 2}


def test_projection_removes_the_green_magenta_axis_only() -> None:
    patches = smooth_images(4, 16)
    out = project_colour(patches)
    along = (out * GREEN_MAGENTA.view(3, 1, 1)).sum(dim=1)
    assert along.abs().max() < 1e-6
    grey = torch.tensor([1.0, 1.0, 1.0]).view(3, 1, 1) / math.sqrt(3)
    assert torch.allclose((out * grey).sum(1), (patches * grey).sum(1), atol=1e-6)  # brightness untouched


def test_normalised_patches_have_zero_mean_and_unit_std() -> None:
    patches = smooth_images(10, 16).view(5, 2, 3, 16, 16) * 0.3 + 0.2
    out = normalise_patches(patches)
    assert out.mean(dim=(-2, -1)).abs().max() < 1e-5
    assert torch.allclose(out.std(dim=(-3, -2, -1)), torch.ones(5, 2), atol=1e-3)


# --- the method -----------------------------------------------------------------------------------


def test_same_seed_same_patches_labels_and_inputs() -> None:
    method = ContextPredictionMethod(small_config(Path(".")), [0.5] * 3)
    images = smooth_images(8, 64)

    def draw(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        pairs, labels = method.sample_pairs(images, g)
        return pairs, labels, method.prepare(pairs, g)

    a, b, c = draw(1), draw(1), draw(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[2], c[2])
    assert a[2].shape == (8, 2, 3, 32, 32)


def test_configs_it_cannot_run_are_refused_by_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model.arch.*dcgan"):
        ContextPredictionMethod(small_config(tmp_path, "model.arch=dcgan", "model.widths=null"), [0.5] * 3)
    with pytest.raises(ValueError, match="patches.input_size.*multiple of 32"):
        ContextPredictionMethod(small_config(tmp_path, "patches.input_size=48"), [0.5] * 3)
    with pytest.raises(ValueError, match="patches.input_size.*16 px patch"):
        ContextPredictionMethod(small_config(tmp_path, "patches.input_size=null"), [0.5] * 3)


def test_paper_preset_geometry_and_network() -> None:
    cfg = load_config("context_prediction_paper", ["patches.fc_dim=16"])  # full fc widths are 300 MB of weights
    method = get_method(cfg.method)(cfg, [0.5] * 3)
    g = method.grid
    assert (g.size, g.patch, g.gap, g.jitter, method.input_size) == (cfg.data.fine_size, 96, 48, 7, 227)
    assert method.model.tower.feature_shapes()["pool5"] == (256, 6, 6)
    with torch.no_grad():
        logits = method.model.eval()(torch.randn(2, 2, 3, 227, 227))
    assert logits.shape == (2, 8)


@pytest.fixture(scope="module")
def disk_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 px images of a random-coloured disk centred in a random background: a neighbour's position shows."""
    root = tmp_path_factory.mktemp("disks")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] - 31.5
    for i in range(64):
        r = rng.uniform(14, 22)
        inside = (np.hypot(yy, xx) < r)[..., None]
        img = np.where(inside, rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)) + rng.normal(0, 0.05, (64, 64, 3))
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / f"disk{i:03d}.png")
    return root


def test_loss_falls_when_position_is_visible(disk_folder: Path, tmp_path: Path) -> None:
    cfg = small_config(disk_folder, "data.load_size=64", "max_steps=40", "optim.lr=0.002", "patches.color=none")
    train(cfg, tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    loss, acc = [float(r["loss"]) for r in rows], [float(r["acc"]) for r in rows]
    assert len(loss) == 40 and abs(loss[0] - math.log(8)) < 0.1  # starts at chance
    assert sum(loss[-5:]) / 5 < 0.8 * sum(loss[:5]) / 5 and sum(acc[-5:]) / 5 > 0.3


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoint.pt")["networks"]["model"]


def test_resume_is_exact(demo_root: Path, tmp_path: Path) -> None:
    common = ("data.holdout=8", "train.eval_every=1", "train.eval_batches=1", "model.dropout=0.5")
    train(small_config(demo_root, *common, "max_steps=4"), tmp_path / "straight")
    train(small_config(demo_root, *common, "max_steps=2"), tmp_path / "resumed")
    train(small_config(demo_root, *common, "max_steps=4", "resume=true"), tmp_path / "resumed")
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["loss"] for r in straight] == [r["loss"] for r in resumed]
    assert [r["val_acc"] for r in straight] == [r["val_acc"] for r in resumed]


def test_exported_encoder_is_the_trained_tower(demo_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(small_config(demo_root, "max_steps=2"), run)
    encoder, meta = load_encoder(run)
    assert meta["method"] == "context_prediction" and meta["arch"] == "alexnet" and meta["input_size"] == 32
    trained = _weights(run)
    assert all(torch.equal(v, trained[f"tower.{k}"]) for k, v in encoder.state_dict().items())
    with torch.no_grad():
        assert encoder.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 16, 4, 4)


def test_demo_preset_runs_through_the_trainer(demo_root: Path, tmp_path: Path) -> None:
    cfg = load_config("demo_context_prediction", [f"data.root={demo_root}", "max_steps=2", "batch_size=8",
                                                  "data.holdout=8", "eval_every=1", "eval_batches=1", "workers=0",
                                                  "mean_images=8", "progress=false"])
    result = train(cfg, tmp_path / "run")
    assert result.step == 2 and {"loss", "acc", "val_loss", "val_acc"} <= result.last_metrics.keys()
    assert [r["step"] for r in read_metrics(tmp_path / "run") if r.get("val_acc")] == ["1", "2"]
    assert (tmp_path / "run" / "samples" / "step0000002.png").is_file()
    _, meta = load_encoder(tmp_path / "run")
    assert meta["input_size"] == 64
