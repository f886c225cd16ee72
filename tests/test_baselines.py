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


def test_between_layer_init_one_step_worked_by_hand() -> None:
    """One full step on Linear -> ReLU -> Linear, against the formulas worked out by hand: a_k = (C_k / C*)^(1/4)
    with C* = sqrt(C_1 C_2) * s (s = the output's std), W_k <- a_k W_k, b_1 <- a_1 b_1 (its input, the images, is
    unchanged) and b_2 <- a_2 a_1 b_2 (its input was scaled by a_1: ReLU(a z) = a ReLU(z))."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight.mul_(7.0)
        model[0].bias.fill_(0.3)
        model[2].bias.fill_(-0.2)
    x = torch.randn(64, 4)
    layers = affine_layers(model)
    w1, b1, w2, b2 = (t.detach().clone() for t in (model[0].weight, model[0].bias, model[2].weight, model[2].bias))
    # the rates and output scale by hand, with the random direction the function draws (same generator seed)
    z = torch.randn((64, 3), generator=torch.Generator().manual_seed(5))
    h = torch.relu(x @ w1.T + b1)
    out = h @ w2.T + b2
    g2 = z.T @ h                                  # dL/dW2 for L = <z, out>
    g1 = ((z @ w2) * (h > 0)).T @ x               # dL/dW1
    c1, c2 = (g1.square().sum() / w1.square().sum()), (g2.square().sum() / w2.square().sum())
    s = out.std(0).mean()
    target = (c1 * c2).sqrt() * s
    a1, a2 = float((c1 / target) ** 0.25), float((c2 / target) ** 0.25)
    between_layer_init(model, model, x, layers, iterations=1, seed=5)
    assert torch.allclose(model[0].weight, a1 * w1, rtol=1e-5)
    assert torch.allclose(model[0].bias, a1 * b1, rtol=1e-5)
    assert torch.allclose(model[2].weight, a2 * w2, rtol=1e-5)
    assert torch.allclose(model[2].bias, a2 * a1 * b2, rtol=1e-4)


def test_between_layer_init_rescales_the_same_function_to_unit_output() -> None:
    """A ReLU chain with biases stays the same function up to one scale (the bias of each layer follows its input's
    scale; scaling a bias by its own layer's factor only, as before, changes which units fire), and its output ends
    near unit scale, so a rescaled network starts with logits of order 1."""
    model, x = _toy([40.0, 30.0, 0.5, 20.0]), torch.randn(256, 16)
    with torch.no_grad():
        for layer in affine_layers(model):
            layer.bias.uniform_(-1.0, 1.0)
        before = model(x)
    between_layer_init(model, model, x, iterations=10)
    with torch.no_grad():
        after = model(x)
    scale = (after * before).sum() / before.square().sum()  # least-squares factor: one scale for every output
    assert torch.allclose(after, scale * before, atol=1e-4 * float(after.abs().max()))
    assert 0.9 < float(after.std(0).mean()) < 1.1 and float(before.std(0).mean()) > 100


def test_data_dependent_init_keeps_pretrained_layers_features() -> None:
    """New layers get the within-layer init; pretrained ones are only scaled as a whole (one factor per layer), so
    the features they compute keep their directions."""
    model, x = _toy([1.0, 1.0, 1.0]), torch.randn(128, 16)
    old, new = affine_layers(model)[:2], affine_layers(model)[2:]
    kept = [layer.weight.detach().clone() for layer in old]
    data_dependent_init(model, x, new_layers=new, iterations=5)
    for layer, w in zip(old, kept):
        factor = (layer.weight / w).flatten()
        assert torch.allclose(factor, factor[0].expand_as(factor), rtol=1e-4)
    with torch.no_grad():
        out = model(x)
    assert 0.8 < float(out.std(0).mean()) < 1.25
