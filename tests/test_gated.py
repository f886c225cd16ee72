"""Free-form inpainting: gated convolutions, contextual attention, SN-PatchGAN, the method through the shared trainer,
its evaluation (SSIM, attention maps) and the exported coarse encoder."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pretext.config import ConfigError, load_config
from pretext.engine.checkpoint import load_checkpoint
from pretext.engine.trainer import train
from pretext.eval_inpainting import evaluate, image_ssim
from pretext.export import load_encoder
from pretext.losses import hinge_discriminator_loss, hinge_generator_loss
from pretext.models.gated import (GATED_STAGES, ContextualAttention, GatedConv2d, GatedEncoder, GatedGenerator,
                                  SNPatchDiscriminator, flow_to_color)

from .conftest import SHARED_DATA

# A gated model small enough to train for real in seconds on 2 CPU cores.
TINY_GATED = [
    "data.load_size=36", "data.fine_size=32", "data.workers=0", "data.mean_images=16", "model.cnum=8",
    "model.dilations=[2,4]", "model.attention_rate=1", "model.disc_widths=[8,16,16]", "train.batch_size=8",
    "train.log_every=1", "train.progress=false", "train.sample_every=1000", "train.ckpt_every=1000",
]


def gated_config(root: Path, *overrides: str):
    return load_config("demo_gated", [f"data.root={root}", *TINY_GATED, *overrides])


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---- gated convolution ---------------------------------------------------------------------------------------

def _correlate(x: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """'same' 3x3 cross-correlation of a (H, W) image with zero padding, by loops."""
    h, wd = x.shape
    pad = np.pad(x, 1)
    out = np.empty_like(x)
    for i in range(h):
        for j in range(wd):
            out[i, j] = float((pad[i:i + 3, j:j + 3] * w).sum()) + b
    return out


def test_gated_convolution_matches_a_hand_computation() -> None:
    layer = GatedConv2d(1, 1, 3, activation="elu")
    wf = np.array([[0.5, -1.0, 0.0], [0.25, 1.0, -0.5], [0.0, 0.5, 2.0]])
    wg = np.array([[-1.0, 0.0, 1.0], [2.0, -0.5, 0.0], [0.0, 1.0, -2.0]])
    with torch.no_grad():  # first output channel = the feature conv, second = the gate conv
        layer.conv.weight.copy_(torch.tensor(np.stack([wf, wg])[:, None], dtype=torch.float32))
        layer.conv.bias.copy_(torch.tensor([0.1, -0.3]))
    x = np.arange(16, dtype=np.float64).reshape(4, 4) / 8 - 1
    feature, gate = _correlate(x, wf, 0.1), _correlate(x, wg, -0.3)
    elu = np.where(feature > 0, feature, np.exp(feature) - 1)
    expected = elu / (1 + np.exp(-gate))
    got = layer(torch.tensor(x, dtype=torch.float32)[None, None])[0, 0].detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # the gate is a soft mask per position: a very negative gate bias closes every position
    with torch.no_grad():
        layer.conv.bias[1] = -100.0
    assert layer(torch.tensor(x, dtype=torch.float32)[None, None]).abs().max() < 1e-30


def test_gate_is_learned_per_channel_not_shared() -> None:
    layer = GatedConv2d(3, 4, 3)
    assert layer.conv.out_channels == 8  # one gate per output channel (partial convolution shares one mask)
    plain = GatedConv2d(3, 4, 3, activation=None, gated=False)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(plain(x), plain.conv(x))


# ---- contextual attention ------------------------------------------------------------------------------------

def _copied_features(shift: tuple[int, int], hole: slice, margin: int, size: int = 16, channels: int = 8,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random features whose hole (with a margin) holds a verbatim copy of the block `shift` px away."""
    f = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(seed))
    lo, hi = hole.start - margin, hole.stop + margin
    f[..., lo:hi, lo:hi] = f[..., lo - shift[0]:hi - shift[0], lo - shift[1]:hi - shift[1]].clone()
    mask = torch.zeros(1, 1, size, size, dtype=torch.bool)
    mask[..., hole, hole] = True
    return f, mask


def test_contextual_attention_recovers_an_exact_copy_from_the_background() -> None:
    f, hole = _copied_features((7, 6), slice(9, 13), margin=2)
    y, flow = ContextualAttention(ksize=3, rate=1, fuse_k=3, softmax_scale=10.0)(f, f, hole)
    inside = hole.expand_as(f)
    torch.testing.assert_close(y[inside], f[inside], atol=1e-5, rtol=0)
    # every hole position attends to the patch it was copied from
    assert (flow[0, :, 9:13, 9:13] == torch.tensor([-7, -6]).view(2, 1, 1)).all()


def test_contextual_attention_at_rate_two_pastes_full_resolution_patches() -> None:
    f, hole = _copied_features((12, 12), slice(18, 22), margin=4, size=28)
    y, flow = ContextualAttention(ksize=3, rate=2, fuse_k=3, softmax_scale=10.0)(f, f, hole)
    assert flow.shape == (1, 2, 14, 14) and (flow[0, :, 9:11, 9:11] == -12).all()  # offsets in full-resolution px
    inside = hole.expand_as(f)
    torch.testing.assert_close(y[inside], f[inside], atol=1e-5, rtol=0)


def test_propagation_sharpens_attention_on_a_coherent_copy() -> None:
    f, hole = _copied_features((7, 6), slice(9, 13), margin=2)
    inside = hole.expand_as(f)
    errors = {}
    for fuse in (1, 3):
        y, _ = ContextualAttention(3, 1, fuse, 10.0)(f, f, hole)
        errors[fuse] = (y[inside] - f[inside]).abs().max().item()
    assert errors[3] < 1e-5 < errors[1], errors  # without propagation, other patches keep some softmax weight


def test_contextual_attention_never_copies_from_the_hole() -> None:
    f = torch.randn(2, 4, 12, 12, generator=torch.Generator().manual_seed(1))
    hole = torch.zeros(2, 1, 12, 12, dtype=torch.bool)
    hole[0, :, 2:8, 3:9] = True
    hole[1, :, 5:11, 0:6] = True
    _, flow = ContextualAttention(3, 1, 3, 10.0)(f, f, hole)
    ys, xs = torch.meshgrid(torch.arange(12), torch.arange(12), indexing="ij")
    src_y, src_x = ys + flow[:, 0], xs + flow[:, 1]
    near_hole = F.max_pool2d(hole.float(), 3, 1, 1)[:, 0] > 0  # patches touching the hole are not usable
    for b in range(2):
        assert not near_hole[b][src_y[b], src_x[b]].any()


def test_contextual_attention_runs_in_fp32_under_autocast() -> None:
    f = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(2))
    hole = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    hole[..., 4:10, 5:11] = True
    ca = ContextualAttention(3, 2, 3, 10.0)
    y32, flow32 = ca(f, f, hole)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, flow16 = ca(f, f, hole)
    assert y16.dtype == torch.float32 and torch.equal(flow16, flow32)
    torch.testing.assert_close(y16, y32)


def test_contextual_attention_with_nothing_to_copy_stays_finite() -> None:
    f = torch.randn(1, 4, 8, 8, requires_grad=True)
    y, _ = ContextualAttention()(f, f, torch.ones(1, 1, 8, 8, dtype=torch.bool))
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(f.grad).all()


# ---- discriminator and losses --------------------------------------------------------------------------------

def test_spectral_norm_bounds_every_discriminator_layer() -> None:
    torch.manual_seed(0)
    disc = SNPatchDiscriminator([8, 16, 16])
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for conv in convs:  # scale the raw weights far up: the normalised ones must not follow
            conv.parametrizations.weight.original.mul_(50.0)
        x, hole = torch.randn(2, 3, 32, 32), torch.zeros(2, 1, 32, 32, dtype=torch.bool)
        for _ in range(30):  # one power iteration per training forward
            disc(x, hole)
    disc.eval()
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2).item()
        raw = torch.linalg.matrix_norm(conv.parametrizations.weight.original.flatten(1), ord=2).item()
        assert abs(sigma - 1.0) < 1e-2 and raw > 10, (sigma, raw)
    # the whole network's gain is bounded: each layer is 1-Lipschitz as a matrix, a 5x5 stride-2 convolution
    # applies it to at most ceil(5/2)^2 = 9 overlapping windows per output, leaky ReLU is 1-Lipschitz
    a, b = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    h = torch.zeros(4, 1, 32, 32, dtype=torch.bool)
    with torch.no_grad():
        gain = ((disc(a, h) - disc(b, h)).norm(dim=1) / (a - b).flatten(1).norm(dim=1)).max().item()
    assert gain <= 3.0 ** len(convs)
    # the same network without the normalisation (its raw, 50x weights) is far past that bound
    from torch.nn.utils import parametrize

    for conv in convs:
        parametrize.remove_parametrizations(conv, "weight", leave_parametrized=False)
    with torch.no_grad():
        raw_gain = ((disc(a, h) - disc(b, h)).norm(dim=1) / (a - b).flatten(1).norm(dim=1)).max().item()
    assert raw_gain > 3.0 ** len(convs), raw_gain


def test_patch_discriminator_outputs_a_dense_grid() -> None:
    disc = SNPatchDiscriminator([8, 16, 16, 16])
    out = disc(torch.randn(3, 3, 64, 64), torch.zeros(3, 1, 64, 64, dtype=torch.bool))
    assert out.shape == (3, 16 * 4 * 4)  # 64 px / 2^4 = a 4x4 grid of 16-channel patch outputs


def test_hinge_losses() -> None:
    real, fake = torch.tensor([[2.0, 0.5]]), torch.tensor([[-2.0, 0.0]])
    # mean(relu(1 - real)) + mean(relu(1 + fake)) = (0 + 0.5)/2 + (0 + 1)/2
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.75)
    assert hinge_generator_loss(fake).item() == pytest.approx(1.0)


# ---- generator, encoder, colours -----------------------------------------------------------------------------

def test_generator_outputs_coarse_refined_and_offsets() -> None:
    g = GatedGenerator(32, 4, (2,), attention=True, attention_rate=2)
    x, hole = torch.randn(2, 3, 32, 32), torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    hole[:, :, 8:20, 10:22] = True
    coarse, refined, flow = g(x, hole)
    assert coarse.shape == refined.shape == x.shape and flow.shape == (2, 2, 4, 4)
    assert coarse.abs().max() <= 1 and refined.abs().max() <= 1
    _, _, none = GatedGenerator(32, 4, (2,), attention=False)(x, hole)
    assert none is None


def test_encoder_stages_and_rgb_input() -> None:
    enc = GatedEncoder(32, 4, (2, 4))
    shapes = enc.feature_shapes()
    assert list(shapes) == list(GATED_STAGES)
    assert shapes["conv12"] == (16, 8, 8) and shapes["pool5"] == (16, 6, 6)
    x = torch.randn(2, 3, 32, 32)
    five = torch.cat([x, torch.ones(2, 1, 32, 32), torch.zeros(2, 1, 32, 32)], 1)
    torch.testing.assert_close(enc(x), enc(five))  # RGB gets the ones channel and an empty mask
    with pytest.raises(ValueError, match="unknown gated encoder stage"):
        enc(x, out="fc7")


def test_flow_colours() -> None:
    flow = torch.tensor([[[[0.0, 0.0], [4.0, -4.0]], [[0.0, 4.0], [0.0, 0.0]]]])  # (1, 2, 2, 2): (dy, dx)
    rgb = flow_to_color(flow)
    assert rgb.shape == (1, 3, 2, 2) and torch.allclose(rgb[0, :, 0, 0], torch.ones(3))  # no offset: white
    colours = {tuple(rgb[0, :, i, j].round(decimals=3).tolist()) for i, j in ((0, 1), (1, 0), (1, 1))}
    assert len(colours) == 3 and all(min(c) == 0 for c in colours)  # full length: saturated, distinct hues


# ---- config --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["method=context_encoder"], "go together"),
    (["model.arch=alexnet_small"], "go together"),
    (["data.fine_size=60", "data.load_size=64", "model.attention_rate=2"], "multiple of 8"),
    (["model.output=center", "mask.kind=central"], "output must be full"),
    (["mask.mix=[central,mixed]"], "mask.mix"),
    (["mask.vertices=[8,4]"], "mask.vertices"),
    (["model.attention_rate=3", "data.fine_size=96", "data.load_size=96"], "1 or even"),
    (["model.attention_fuse=2"], "must be odd"),
    (["model.dilations=[]"], "at least one value"),
    (["model.disc_widths=[]"], "at least one value"),
])
def test_bad_gated_configs_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("demo_gated", overrides)


def test_without_attention_any_multiple_of_four_builds() -> None:
    from pretext.methods.gated_inpainting import build_gated_generator

    cfg = load_config("demo_gated", ["model.attention=false", "model.attention_rate=2", "data.fine_size=36",
                                     "data.load_size=40"])
    g = build_gated_generator(cfg)
    x, hole = torch.zeros(1, 3, 36, 36), torch.zeros(1, 1, 36, 36, dtype=torch.bool)
    assert g(x, hole)[1].shape == (1, 3, 36, 36)


def test_standard_holes_ignore_the_run_s_own_mask_settings(gated_run: Path) -> None:
    import dataclasses

    from pretext.inpaint import eval_mask_generator, hole_config, load_inpainter

    method = load_inpainter(gated_run, torch.device("cpu"))
    other = load_inpainter(gated_run, torch.device("cpu"))
    other.cfg = dataclasses.replace(other.cfg, mask=dataclasses.replace(other.cfg.mask, max_coverage=0.6,
                                                                        brush_width=[0.3, 0.4]))
    assert hole_config(other, standard=True).mask.max_coverage == 0.25
    draw = lambda m, std: eval_mask_generator(m, "freeform", standard=std)(16, 32, 32, torch.Generator().manual_seed(5))  # noqa: E731
    assert torch.equal(draw(method, True), draw(other, True))
    assert not torch.equal(draw(method, False), draw(other, False))  # the run's own settings differ


def test_presets_validate() -> None:
    paper = load_config("gated_paper")
    assert (paper.data.fine_size, paper.model.cnum, paper.model.attention_rate) == (256, 48, 2)
    assert paper.model.disc_widths == [64, 128, 256, 256, 256, 256] and paper.loss.adversarial_weight == 0.5
    assert load_config("demo_gated").mask.kind == "mixed"


# ---- training through the shared trainer ---------------------------------------------------------------------

def test_short_real_training_lowers_the_loss(demo_root: Path, tmp_path: Path) -> None:
    result = train(gated_config(demo_root, "max_steps=40", "optim.lr=0.002", "optim.lr_disc=0.002"), tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    rec = [float(r["rec"]) for r in rows]
    assert len(rec) == 40 and result.step == 40 and {"adv", "disc", "d_real_logit", "d_fake_logit"} <= rows[0].keys()
    assert sum(rec[-5:]) / 5 < 0.85 * sum(rec[:5]) / 5, rec
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert any("parametrizations.weight.original" in k for k in state["networks"]["discriminator"])


def test_training_on_real_photos_lowers_the_loss(tmp_path: Path) -> None:
    photos = SHARED_DATA / "ce_samples" / "images"
    if not photos.is_dir():
        pytest.skip(f"{photos} not present")
    cfg = gated_config(photos, "max_steps=30", "optim.lr=0.002", "optim.lr_disc=0.002", "mask.kind=freeform")
    train(cfg, tmp_path / "run")
    rec = [float(r["rec"]) for r in read_metrics(tmp_path / "run")]
    assert sum(rec[-5:]) / 5 < 0.8 * sum(rec[:5]) / 5, rec


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run_dir / "checkpoint.pt")
    return {f"{n}.{k}": v for n, sd in state["networks"].items() for k, v in sd.items()}


def test_resume_is_exact_with_spectral_norm_state(demo_root: Path, tmp_path: Path) -> None:
    common = ("mask.kind=freeform", "ckpt_every=2")
    train(gated_config(demo_root, *common, "max_steps=4"), tmp_path / "straight")
    train(gated_config(demo_root, *common, "max_steps=2"), tmp_path / "resumed")
    train(gated_config(demo_root, *common, "max_steps=4", "resume=true"), tmp_path / "resumed")
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert any(k.endswith("_u") for k in a)  # the power iteration's vectors are part of the state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_autocast_and_channels_last_train(demo_root: Path, tmp_path: Path) -> None:
    result = train(gated_config(demo_root, "max_steps=2", "train.precision=bf16", "train.channels_last=true",
                                "data.fine_size=16", "data.load_size=18", "model.disc_widths=[8]", "mask.overlap=2"),
                   tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    assert result.step == 2 and all(math.isfinite(float(r["loss"])) for r in rows)


@pytest.fixture(scope="module")
def gated_run(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("gated") / "run"
    train(gated_config(demo_root, "max_steps=3"), run)
    return run


@pytest.mark.parametrize("mask", ["central", "region", "freeform"])
def test_eval_inpainting_scores_every_mask_kind_with_ssim(gated_run: Path, demo_root: Path, mask: str) -> None:
    m = evaluate(gated_run, demo_root, mask=mask, split="test", batch_size=8, max_images=8)
    assert m["method"] == "gated_inpainting" and m["mask"] == mask and m["n_images"] == 8
    assert 0 < m["hole_coverage"] < 0.5 and -1 <= m["ssim"] <= 1 and math.isfinite(m["psnr"])
    assert m["baseline_mean_fill"]["ssim"] < 1  # the hole differs from the original


def test_ssim_matches_scikit_image_and_perfect_fill_scores_one() -> None:
    from skimage.metrics import structural_similarity

    # non-square images with structure along one axis only: a wrong axis order would change the score
    ramp = torch.linspace(0, 1, 24).view(1, 1, 1, 24).expand(2, 3, 16, 24)
    a = (ramp + 0.2 * torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    b = (a + 0.1 * torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    got = image_ssim(b, a)
    want = [structural_similarity(b[i].permute(1, 2, 0).numpy(), a[i].permute(1, 2, 0).numpy(), data_range=1.0,
                                  channel_axis=-1) for i in range(2)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    by_hand = []  # the Wang et al. formula with 7x7 uniform windows, per channel, then averaged
    for i in range(2):
        x, y = b[i].double(), a[i].double()
        pool = lambda t: F.avg_pool2d(t[None], 7, 1)[0]  # noqa: E731
        mx, my = pool(x), pool(y)
        cov = 49 / 48  # scikit-image uses the sample (co)variance
        vx, vy, vxy = (pool(x * x) - mx * mx) * cov, (pool(y * y) - my * my) * cov, (pool(x * y) - mx * my) * cov
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        by_hand.append(s.mean().item())  # valid windows only: scikit-image crops the border the same way
    np.testing.assert_allclose(got.numpy(), by_hand, rtol=1e-4)
    assert image_ssim(a, a).tolist() == pytest.approx([1.0, 1.0])


def test_inpaint_command_writes_attention_maps(gated_run: Path, demo_root: Path, tmp_path: Path) -> None:
    from pretext.inpaint import main

    assert main(["--checkpoint", str(gated_run), "--images", str(demo_root), "--mask", "freeform",
                 "--max-images", "4", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "attention.png").is_file() and (tmp_path / "grid.png").is_file()
    assert len(list(tmp_path.glob("*_attention.png"))) == 4
    samples = list((gated_run / "samples").glob("*.png"))
    assert samples  # masked / coarse / refined / attention / original rows at the end of training


def test_exported_coarse_encoder_feeds_the_transfer_probes(gated_run: Path, image_folder: Path,
                                                           tmp_path: Path) -> None:
    from transfer.probe import main as probe_main

    encoder, meta = load_encoder(gated_run)
    assert isinstance(encoder, GatedEncoder) and meta["arch"] == "gated" and meta["input_size"] == 32
    assert encoder(torch.zeros(1, 3, 32, 32), out="pool5").shape == (1, 32, 6, 6)
    # two classes of the smooth images, by file index parity
    for split in ("train", "test"):
        for i, path in enumerate(sorted(image_folder.glob("*.png"))):
            cls = tmp_path / split / f"c{i % 2}"
            cls.mkdir(parents=True, exist_ok=True)
            (cls / path.name).symlink_to(path)
    out = tmp_path / "knn"
    assert probe_main(["knn", "--encoder", str(gated_run), "--train", str(tmp_path / "train"), "--test",
                       str(tmp_path / "test"), "--k", "3", "--out", str(out), "--cache", str(tmp_path / "cache")]) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["layer"] == "pool5" and record["feature_dim"] == 32 * 36
    assert probe_main(["knn", "--encoder", str(gated_run), "--layer", "conv5", "--train", str(tmp_path / "train"),
                       "--test", str(tmp_path / "test"), "--out", str(out), "--cache", str(tmp_path / "cache")]) == 2
