"""The discriminator-collapse monitor, by itself and in a real adversarial training run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pretext.engine.health import DiscriminatorMonitor
from pretext.engine.trainer import train

from .conftest import tiny_config


def test_a_collapse_is_reported_once_it_lasts() -> None:
    m = DiscriminatorMonitor(patience=3)
    assert [m.update(s, 0.999, 0.001) for s in (1, 2)] == [None, None]
    warning = m.update(3, 0.999, 0.001)
    assert warning and "discriminator collapse at step 3" in warning and "no useful gradient" in warning
    assert m.update(4, 0.999, 0.001) is None  # one report per episode
    assert m.update(5, 0.7, 0.3) is None  # a healthy step ends the episode
    assert [m.update(s, 0.999, 0.001) for s in (6, 7)] == [None, None] and m.update(8, 0.999, 0.001)
    assert [e["step"] for e in m.episodes] == [3, 8] and {e["kind"] for e in m.episodes} == {"wins"}
    # an equilibrium (0.5 / 0.5) or a struggling discriminator is not a collapse
    m2 = DiscriminatorMonitor(patience=2)
    assert all(m2.update(s, r, f) is None for s, (r, f) in enumerate([(0.5, 0.5)] * 5 + [(0.9, 0.2)] * 5))
    assert [m2.update(s, 0.01, 0.99) for s in (1, 2)][-1].startswith("discriminator collapse at step 2")
    assert m2.episodes[0]["kind"] == "inverted"


def test_an_overpowered_discriminator_is_reported(image_folder: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The DCGAN inpainting model with a discriminator 1000x faster than its generator: D wins, and the run says
    so in its log and its pretrain_time.json."""
    caplog.set_level(logging.WARNING, logger="cebench")
    cfg = tiny_config(image_folder, "max_steps=40", "loss.adversarial_weight=0.001", "optim.lr=1e-6",
                      "optim.lr_disc=0.001", "train.log_every=1", preset="demo_inpaint")
    train(cfg, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "pretrain_time.json").read_text())
    assert "discriminator collapse" in caplog.text
    assert record["discriminator_collapses"][0]["kind"] == "wins"
