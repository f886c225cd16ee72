"""Nearest-neighbour inpainting: exact copies fill perfectly, HOG ignores the hole, NN beats mean fill, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transfer.nn_inpaint import context_blocks, hog_features, main
from transfer.retrieve import central_hole

from .test_retrieve import SIZE, template_images, tiny_encoder


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-init encoder (32 px input), once per module."""
    return tiny_encoder(tmp_path_factory)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """database/ (4 stripe templates x 10 noisy copies) and images/ (4 x 2, other noise), flat folders."""
    root = tmp_path_factory.mktemp("nn")  # one template per stripe direction: HOG is blind to colour
    return (template_images(root / "database", 10, 4, seed=0, class_dirs=False),
            template_images(root / "images", 2, 4, seed=1, class_dirs=False))


def nn_inpaint(out: Path, database: Path, images: Path, *extra: str) -> dict:
    code = main(["--database", str(database), "--images", str(images), "--out", str(out), "--device", "cpu", *extra],
                prog="cebench nn-inpaint")
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


def features(kind: str, encoder: Path) -> list[str]:
    return ["--features", "hog", "--size", str(SIZE)] if kind == "hog" else ["--features", "encoder", "--encoder",
                                                                              str(encoder)]


def test_hog_context_features_ignore_the_hole() -> None:
    hole = central_hole(SIZE, 4)
    images = torch.randint(0, 256, (3, 3, SIZE, SIZE), dtype=torch.uint8)
    other = torch.where(hole, torch.randint(0, 256, images.shape, dtype=torch.uint8), images)
    np.testing.assert_array_equal(hog_features(images, hole), hog_features(other, hole))
    assert context_blocks(hole, 2).sum() > 0 and not context_blocks(central_hole(SIZE, 0), 2).all()


@pytest.mark.parametrize("kind", ["hog", "encoder"])
def test_an_exact_copy_in_the_database_fills_the_hole_perfectly(kind: str, encoder_dir: Path, data,
                                                                 tmp_path: Path) -> None:
    database = tmp_path / "database"
    shutil.copytree(data[0], database)
    for path in data[1].glob("*.png"):
        shutil.copy(path, database / f"copy_{path.name}")
    metrics = nn_inpaint(tmp_path / "out", database, data[1], *features(kind, encoder_dir))
    assert metrics["mean_l1"] == 0 and metrics["mean_l2"] == 0 and metrics["baseline_mean_fill"]["mean_l2"] > 1
    found = json.loads((tmp_path / "out" / "neighbours.json").read_text())
    assert all(Path(f["neighbour"]).name == f"copy_{Path(f['path']).name}" for f in found)


@pytest.mark.parametrize("kind", ["hog", "encoder"])
def test_nn_fill_beats_mean_fill_and_writes_all_outputs(kind: str, encoder_dir: Path, data, tmp_path: Path) -> None:
    metrics = nn_inpaint(tmp_path / "out", *data, *features(kind, encoder_dir))
    assert metrics["mean_l2"] <= metrics["baseline_mean_fill"]["mean_l2"]
    assert metrics["psnr"] >= metrics["baseline_mean_fill"]["psnr"]
    assert metrics["n_images"] == 8 and metrics["database"]["n_images"] == 40 and metrics["size"] == SIZE
    assert metrics["hole_top_left_height_width"] == [12, 12, 8, 8] and metrics["self_matches_dropped"] == 0
    with Image.open(tmp_path / "out" / "grid.png") as grid:  # masked / NN fill / ground truth, 8 columns
        assert grid.size == (8 * (SIZE + 2) + 2, 3 * (SIZE + 2) + 2)


def test_same_set_is_leave_one_out(data, tmp_path: Path) -> None:
    metrics = nn_inpaint(tmp_path / "out", data[0], data[0], "--features", "hog", "--size", str(SIZE))
    found = json.loads((tmp_path / "out" / "neighbours.json").read_text())
    assert metrics["self_matches_dropped"] == 40 and all(f["neighbour"] != f["path"] for f in found)
    assert metrics["mean_l2"] > 0


def test_bad_input_exits_2(encoder_dir: Path, data, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def run(*args: str) -> int:
        return main(["--out", str(tmp_path / "out"), *args])

    missing = tmp_path / "missing"
    assert run("--database", str(missing), "--images", str(data[1]), "--features", "hog") == 2
    assert str(missing) in caplog.text
    assert run("--database", str(data[0]), "--images", str(data[1]), "--features", "encoder") == 2
    assert "needs --encoder" in caplog.text
    assert run("--database", str(data[0]), "--images", str(data[1]), *features("encoder", encoder_dir),
               "--size", "64") == 2
    assert f"{encoder_dir}: the encoder takes 32 px" in caplog.text
    assert not (tmp_path / "out" / "metrics.json").exists()
