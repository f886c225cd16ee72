"""Shared fixtures: a small generated demo dataset and tiny, fast training configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretext.config import PretrainConfig, load_config

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# A context encoder small enough to train for real in a few seconds on 2 CPU cores.
TINY = [
    "data.load_size=36", "data.fine_size=32", "data.workers=0", "data.mean_images=16",
    "model.arch=alexnet_small", "model.widths=[8,16,16,16,16]", "model.decoder_widths=[16,16,8,8]",
    "train.batch_size=8", "train.log_every=1", "train.progress=false", "train.sample_every=1000",
    "train.ckpt_every=1000",
]


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 generated demo images in VOC layout."""
    from pretext.data.demo import make_demo_data

    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, num_images=48, seed=0, workers=1)
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 smooth random images (learnable by a tiny model) in a flat folder."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:40] / 40.0
    for i in range(24):
        a, b, c = rng.uniform(0, 1, 3), rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3)
        img = np.clip(a + b * xx[..., None] * 0.5 + c * yy[..., None] * 0.5, 0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(root / f"img{i:03d}.png")
    return root


def tiny_config(root: Path, *overrides: str, preset: str = "demo") -> PretrainConfig:
    """The TINY config on `root` with extra overrides."""
    return load_config(preset, [f"data.root={root}", *TINY, *overrides])


class Crash(Exception):
    """What `crash_at`'s training step raises: a process killed between two checkpoints."""


def crash_at(monkeypatch: pytest.MonkeyPatch, trainer: type, step: int, run: Callable[[], object],
             method: str = "train_step") -> None:
    """Call `run()` with the trainer's step (`method`) raising Crash when the trainer reaches `step`, then put the
    real step back: what a resumed run must recover from."""
    original = getattr(trainer, method)

    def crashing(self, *args, **kwargs):
        if self.step == step:
            raise Crash()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer, method, crashing)
    with pytest.raises(Crash):
        run()
    monkeypatch.setattr(trainer, method, original)
