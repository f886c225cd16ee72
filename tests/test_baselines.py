"""Autoencoder and random-initialisation baselines, data-dependent initialisation, held-out validation."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from pretext.config import ConfigError, load_config
from pretext.engine.trainer import split_holdout, train
from pretext.export import load_encoder
from pretext.init import affine_layers, between_layer_init, change_rates, data_dependent_init, within_layer_init

from .conftest import tiny_config


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_autoencoder_reconstructs_the_unmasked_image(image_folder: Path, tmp_path: Path) -> None:
    cfg = tiny_config(image_folder, "method=autoencoder", "max_steps=60", "optim.lr=0.002")
    train(cfg, tmp_path / "ae")
    rec = [float(r["rec"]) for r in rows(tmp_path / "ae") if r.get("rec")]
    assert sum(rec[-5:]) / 5 < 0.7 * sum(rec[:5]) / 5
    encoder, meta = load_encoder(tmp_path / "ae")
    assert meta["method"] == "autoencoder" and encoder(torch.zeros(1, 3, 32, 32)).shape[1] == 16


def test_autoencoder_input_is_not_masked(image_folder: Path) -> None:
    from pretext.methods import get_method

    cfg = tiny_config(image_folder, "method=autoencoder", "mask.region_bank=null")
    method = get_method("autoencoder")(cfg, [0.5, 0.5, 0.5])
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    x, hole, region = method.corrupt(images, torch.Generator().manual_seed(0))
    assert torch.equal(x, images) and bool(hole.all()) and bool(region.all())


def test_autoencoder_refuses_centre_output(image_folder: Path) -> None:
    from pretext.methods import get_method

    cfg = tiny_config(image_folder, "method=autoencoder", "model.output=center", "mask.kind=central")
    with pytest.raises(ConfigError, match="output=full"):
        get_method("autoencoder")(cfg, [0.5, 0.5, 0.5])


def test_random_baseline_is_an_untrained_gaussian_checkpoint(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_steps must be 0"):
        tiny_config(image_folder, "method=random", "max_steps=5")
    result = train(tiny_config(image_folder, "method=random", "max_steps=0"), tmp_path / "rnd")
    assert result.step == 0 and (tmp_path / "rnd" / "checkpoint.pt").is_file()
    encoder, meta = load_encoder(tmp_path / "rnd")
    weights = torch.cat([m.weight.flatten() for m in affine_layers(encoder)])
    assert meta["method"] == "random" and abs(weights.std().item() - 0.01) < 0.001
    assert all(float(m.bias.detach().abs().max()) == 0 for m in affine_layers(encoder))


def test_random_baseline_with_data_dependent_init(demo_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(demo_root, "method=random", "max_steps=0", "model.init=data_dependent")
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    enc_a, _ = load_encoder(tmp_path / "a")
    enc_b, _ = load_encoder(tmp_path / "b")
    assert all(torch.equal(p, q) for p, q in zip(enc_a.state_dict().values(), enc_b.state_dict().values()))
    gauss, _ = load_encoder(train(tiny_config(demo_root, "method=random", "max_steps=0"), tmp_path / "g").run_dir)
    x = torch.rand(16, 3, 32, 32) * 2 - 1
    assert enc_a.eval()(x).std() > 100 * gauss.eval()(x).std()  # Gaussian(0.01) activations vanish


def _toy(scales: list[float], inplace: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i, s in enumerate(scales):
        lin = nn.Linear(16, 16)
        with torch.no_grad():
            lin.weight.mul_(s)
        layers += [lin, nn.ReLU(inplace=inplace)] if i < len(scales) - 1 else [lin]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("inplace", [False, True])  # AlexNet's ReLUs are in place: they overwrite the layer output
def test_within_layer_init_gives_unit_preactivations(inplace: bool) -> None:
    model, x = _toy([5.0, 0.01, 30.0], inplace), torch.randn(512, 16) * 3 + 1
    within_layer_init(model, model, x)
    for i in range(len(affine_layers(model))):
        with torch.no_grad():
            z = model[: 2 * i + 1](x)
        assert torch.allclose(z.mean(0), torch.zeros(16), atol=1e-4)
        assert torch.allclose(z.std(0), torch.ones(16), atol=1e-3)


def test_between_layer_init_equalises_change_rates() -> None:
    model, x = _toy([1.0, 1.0, 1.0, 1.0]), torch.randn(256, 16)
    within_layer_init(model, model, x)
    with torch.no_grad():  # unbalance the layers: rates now differ by orders of magnitude
        for layer, s in zip(affine_layers(model), [10.0, 0.1, 3.0, 0.3]):
            layer.weight.mul_(s)
            layer.bias.mul_(s)
    layers = affine_layers(model)
    before = change_rates(model, model, x, layers, torch.Generator().manual_seed(1))
    history = between_layer_init(model, model, x, iterations=10)
    after = change_rates(model, model, x, layers, torch.Generator().manual_seed(1))
    assert before.max() / before.min() > 100
    assert after.max() / after.min() < 1.5
    assert len(history) == 11


def test_data_dependent_init_needs_layers() -> None:
    with pytest.raises(ValueError, match="no conv or linear"):
        data_dependent_init(nn.Sequential(nn.ReLU()), torch.zeros(2, 3))


def test_holdout_split_is_fixed_and_disjoint(tmp_path: Path) -> None:
    paths = [tmp_path / f"{i}.png" for i in range(20)]
    train_a, held_a = split_holdout(paths, 5)
    train_b, held_b = split_holdout(paths, 5)
    assert (train_a, held_a) == (train_b, held_b) and len(held_a) == 5
    assert not set(train_a) & set(held_a) and set(train_a) | set(held_a) == set(paths)
    with pytest.raises(ConfigError, match="holdout"):
        split_holdout(paths, 20)


def test_held_out_validation_is_logged(image_folder: Path, tmp_path: Path) -> None:
    cfg = tiny_config(image_folder, "max_steps=4", "data.holdout=6", "train.eval_every=2")
    result = train(cfg, tmp_path / "run")
    val = [r for r in rows(tmp_path / "run") if r.get("val_rec")]
    assert [int(r["step"]) for r in val] == [2, 4]
    assert "val_rec" in result.last_metrics


@pytest.mark.parametrize("preset", ["demo_autoencoder", "demo_random", "autoencoder_paper", "random_paper"])
def test_baseline_presets_validate(preset: str) -> None:
    cfg = load_config(preset)
    assert cfg.method in ("autoencoder", "random")
    assert cfg.data.fine_size == (227 if preset.endswith("paper") else 64)
