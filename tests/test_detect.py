"""Fast R-CNN detection: box coding, RoI sampling, post-processing, exact resume, and real short training runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from pretext.config import ConfigError
from pretext.engine.checkpoint import load_checkpoint
from pretext.engine.trainer import train
from pretext.models.alexnet import AlexNetEncoder
from transfer.detect import (DetectConfig, DetTestConfig, Detector, SampleConfig, conv5_stride, decode_boxes,
                             encode_boxes, flip_boxes, image_scale, main, postprocess, sample_rois)

from .conftest import crash_at, tiny_config
from .test_probes import stripes

TINY = ["model.fc_widths=[32,32]", "train.batch_size=2", "train.progress=false", "train.log_every=1",
        "data.workers=0", "proposals.workers=0", "data.scales=[96]", "data.max_size=160", "test.scale=96",
        "sample.rois_per_image=16", "optim.lr=0.01"]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny context encoder (32 px input, conv5 at stride 4) trained for two steps."""
    images = stripes(tmp_path_factory.mktemp("unlabelled"), 4, seed=9)
    run = tmp_path_factory.mktemp("enc") / "ce"
    train(tiny_config(images, "max_steps=2"), run)
    return run


def detect(encoder: Path, data: Path, out: Path, *extra: str, cache: Path | None = None) -> int:
    cache = cache or out.parent / "proposal_cache"
    return main(["--encoder", str(encoder), "--data", str(data), "--out", str(out), *TINY,
                 f"proposals.cache_dir={cache}", *extra], prog="cebench transfer detect")


def test_box_coding_round_trips() -> None:
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=gen) * 100
    rois = torch.cat([xy, xy + 5 + torch.rand(50, 2, generator=gen) * 50], 1)
    xy = torch.rand(50, 2, generator=gen) * 100
    gt = torch.cat([xy, xy + 5 + torch.rand(50, 2, generator=gen) * 50], 1)
    deltas = encode_boxes(rois, gt)
    assert torch.allclose(decode_boxes(rois, deltas[:, None])[:, 0], gt, atol=1e-3)
    # the identity: zero deltas decode to the RoI itself; a box twice as wide has dw = log 2
    assert torch.allclose(decode_boxes(rois, torch.zeros(50, 1, 4))[:, 0], rois, atol=1e-4)
    wide = torch.tensor([[0.0, 0.0, 20.0, 10.0]])
    assert torch.allclose(encode_boxes(torch.tensor([[5.0, 0.0, 15.0, 10.0]]), wide),
                          torch.tensor([[0.0, 0.0, float(np.log(2)), 0.0]]))


def test_rois_are_sampled_by_overlap() -> None:
    """One ground-truth box; proposals at known IoUs. Foreground (IoU >= 0.5) at most 25 % of the RoIs, the rest
    background from [0.1, 0.5); nothing under 0.1; targets take each foreground RoI to the box."""
    gt = np.array([[10, 10, 50, 50]], np.float32)
    shifts = np.arange(0, 40, 1, dtype=np.float32)  # x-shifts: IoU falls from 1 to ~0
    props = np.stack([10 + shifts, np.full_like(shifts, 10), 50 + shifts, np.full_like(shifts, 50)], 1)
    cfg = SampleConfig(rois_per_image=16)
    stds = [0.1, 0.1, 0.2, 0.2]
    rois, labels, targets = sample_rois(props, gt, np.array([2]), cfg, stds, np.random.default_rng(0))
    iou = box_iou(torch.from_numpy(rois), torch.from_numpy(gt))[:, 0].numpy()
    fg = labels > 0
    assert fg.sum() == 4 and (labels[fg] == 3).all() and (iou[fg] >= 0.5).all()
    assert len(rois) == 16 and ((iou[~fg] >= 0.1) & (iou[~fg] < 0.5)).all() and (targets[~fg] == 0).all()
    back = decode_boxes(torch.from_numpy(rois[fg]), torch.from_numpy(targets[fg] * np.float32(stds))[:, None])[:, 0]
    assert torch.allclose(back, torch.from_numpy(gt).expand_as(back), atol=1e-3)
    # too few candidates (the box and 3 proposals, all foreground): 4 of the 16, each candidate once
    rois, labels, _ = sample_rois(props[1:4], gt, np.array([0]), cfg, stds, np.random.default_rng(0))
    assert len(rois) == len(np.unique(rois, axis=0)) == 4 and (labels == 1).all()


def test_postprocess_thresholds_suppresses_and_converts_to_voc_coordinates() -> None:
    # 3 RoIs x 2 classes; RoIs 0 and 1 overlap (IoU 0.82), RoI 2 is apart
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 11.0], [30.0, 30.0, 40.0, 40.0]])
    boxes = boxes[:, None].repeat(1, 2, 1)
    scores = torch.tensor([[0.9, 0.04], [0.8, 0.6], [0.7, 0.5]])
    out = postprocess(boxes, scores, 2, DetTestConfig(score_thresh=0.05, nms=0.3, max_per_image=100))
    assert out[0][:, 4].tolist() == pytest.approx([0.9, 0.7])  # RoI 1 suppressed by RoI 0 in class 0
    assert out[0][0, :4].tolist() == [1.0, 1.0, 10.0, 10.0]  # 0-based [0, 10) -> VOC 1..10
    assert out[1][:, 4].tolist() == pytest.approx([0.6, 0.5])  # class 1: 0.04 under the threshold
    capped = postprocess(boxes, scores, 2, DetTestConfig(max_per_image=2))
    assert sorted(np.concatenate(capped)[:, 4].tolist()) == pytest.approx([0.7, 0.9])


def test_scales_flips_and_strides() -> None:
    assert image_scale(500, 375, 600, 1000) == pytest.approx(1.6)
    assert image_scale(2000, 500, 600, 1000) == pytest.approx(0.5)  # the longer side caps it
    assert flip_boxes(np.array([[0.0, 5.0, 10.0, 20.0]]), 100).tolist() == [[90.0, 5.0, 100.0, 20.0]]
    assert conv5_stride(AlexNetEncoder()) == 16
    assert conv5_stride(AlexNetEncoder(small=True, input_size=64, widths=(8, 8, 8, 8, 8))) == 8


def test_config_rules() -> None:
    with pytest.raises(ConfigError, match="bg_iou_high"):
        DetectConfig.load("detect_demo", ["sample.bg_iou_high=0.6"])
    with pytest.raises(ConfigError, match="unknown key 'nonsense'"):
        DetectConfig.load("detect_demo", ["model.nonsense=1"])
    paper = DetectConfig.load("detect_paper")
    assert (paper.data.scales, paper.data.max_size, paper.sample.rois_per_image, paper.train.batch_size) == \
        ([600], 1000, 64, 2)
    assert (paper.test.nms, paper.test.max_per_image, paper.optim.weight_decay, paper.proposals.min_size) == \
        (0.3, 100, 0.0005, 20)


@pytest.mark.slow
def test_resume_after_a_crash_repeats_the_uninterrupted_run(encoder_dir: Path, demo_root: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    steps = ["train.max_steps=6", "train.ckpt_every=3"]
    straight = tmp_path / "straight"
    assert detect(encoder_dir, demo_root, straight, *steps) == 0
    run = tmp_path / "resumed"
    crash_at(monkeypatch, Detector, 4, lambda: detect(encoder_dir, demo_root, run, *steps))
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 3
    assert detect(encoder_dir, demo_root, run, *steps, "resume=true", "optim.lr=0.02") == 2
    assert "optim.lr (0.01 -> 0.02)" in caplog.text
    assert detect(encoder_dir, demo_root, run, *steps, "resume=true") == 0
    a, b = load_checkpoint(straight / "checkpoint.pt")["model"], load_checkpoint(run / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (straight, run))
    assert ma["map_area"] == mb["map_area"] and ma["per_class"] == mb["per_class"]
    assert ma["test"]["n_images"] == 12 and ma["steps"] == 6 and ma["encoder_method"] == "context_encoder"
    assert ma["inference_seconds_per_image"] > 0 and ma["proposals"]["train"]["selective_search"]["mode"] == "fast"


def test_testing_on_the_training_split_is_refused(encoder_dir: Path, demo_root: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    assert detect(encoder_dir, demo_root, tmp_path / "x", "--test-split", "trainval") == 2
    assert "test set is the training set" in caplog.text and not (tmp_path / "x").exists()


def shapes_voc(root: Path, n_train: int = 120, n_test: int = 40, seed: int = 0, size: tuple[int, int] = (110, 150),
               side: tuple[int, int] = (30, 50)) -> Path:
    """A VOC root of noisy grey scenes, 110-150 px, with one or two red squares ('square') or blue discs ('disc')
    of 30-50 px: detection (Annotations, ImageSets/Main) and segmentation (SegmentationClass,
    ImageSets/Segmentation) a tiny network learns in a few dozen steps. Splits trainval and test."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for d in ("JPEGImages", "Annotations", "ImageSets/Main", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("square\ndisc\n")
    ids: dict[str, list[str]] = {"trainval": [], "test": []}
    for i in range(n_train + n_test):
        w, h = (int(v) for v in rng.integers(*size, 2))
        img = Image.fromarray(rng.normal(128, 20, (h, w, 3)).clip(0, 255).astype(np.uint8))
        labels = Image.new("L", (w, h), 0)
        draw, objects = ImageDraw.Draw(img), []
        for _ in range(int(rng.integers(1, 3))):
            s = int(rng.integers(*side))
            x, y, c = int(rng.integers(0, w - s)), int(rng.integers(0, h - s)), int(rng.integers(0, 2))
            for canvas, fill in ((draw, [(220, 40, 40), (40, 40, 220)][c]), (ImageDraw.Draw(labels), c + 1)):
                (canvas.rectangle if c == 0 else canvas.ellipse)([x, y, x + s - 1, y + s - 1], fill=fill)
            objects.append(f"<object><name>{['square', 'disc'][c]}</name><difficult>0</difficult><bndbox><xmin>{x + 1}"
                           f"</xmin><ymin>{y + 1}</ymin><xmax>{x + s}</xmax><ymax>{y + s}</ymax></bndbox></object>")
        image_id = f"{i:06d}"
        img.save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        labels.save(root / "SegmentationClass" / f"{image_id}.png")
        (root / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{''.join(objects)}</annotation>")
        ids["trainval" if i < n_train else "test"].append(image_id)
    for split, values in ids.items():
        for d in ("Main", "Segmentation"):
            (root / "ImageSets" / d / f"{split}.txt").write_text("\n".join(values) + "\n")
    return root


@pytest.mark.slow
def test_short_training_beats_an_untrained_head_and_rescores_identically(tmp_path: Path) -> None:
    """80 steps (~30 s) on learnable scenes take the VOC07 mAP far above the untrained head's (measured: 73 vs 11);
    the devkit files written for the whole test split re-score to the same numbers with `cebench evaluate`."""
    from transfer import evaluate

    encoder = tmp_path / "enc"
    train(tiny_config(stripes(tmp_path / "u", 4, seed=9), "method=random", "max_steps=0", "model.init=data_dependent",
                      "model.widths=[16,32,32,32,32]", "data.fine_size=64", "data.load_size=68"), encoder)
    root = shapes_voc(tmp_path / "voc")
    common = ["model.fc_widths=[64,64]", "sample.rois_per_image=64", "proposals.max_boxes=2000"]
    assert detect(encoder, root, tmp_path / "untrained", *common, "train.max_steps=0") == 0
    assert detect(encoder, root, tmp_path / "trained", *common, "train.max_steps=80", "train.log_every=20") == 0
    before, after = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("untrained", "trained"))
    assert after["map_voc07_11pt"] > 50 and after["map_voc07_11pt"] > before["map_voc07_11pt"] + 30, \
        (before["map_voc07_11pt"], after["map_voc07_11pt"])
    assert after["per_class"]["square"]["npos"] + after["per_class"]["disc"]["npos"] > 40
    assert after["results_files"] == str(tmp_path / "trained" / "results")
    assert evaluate.main(["detection", "--voc-root", str(root), "--split", "test", "--results",
                          after["results_files"], "--out", str(tmp_path / "rescored")]) == 0
    rescored = json.loads((tmp_path / "rescored" / "metrics.json").read_text())
    assert rescored["map_voc07_11pt"] == pytest.approx(after["map_voc07_11pt"], abs=1e-9)  # the same numbers
    assert rescored["map_area"] == pytest.approx(after["map_area"], abs=1e-9)


def test_data_dependent_start_scales_the_encoder_as_a_whole(encoder_dir: Path, demo_root: Path,
                                                            tmp_path: Path) -> None:
    """With the encoder calibrated, each pretrained conv layer keeps its filters' directions and which units fire
    (one factor per layer), while fc6, fc7 and the classifier get the within-layer start."""
    from pretext.export import load_encoder
    from pretext.init import affine_layers

    run = tmp_path / "dd"
    assert detect(encoder_dir, demo_root, run, "train.max_steps=0", "model.init=data_dependent",
                  "model.rescale_encoder=true", "model.init_images=2") == 0
    state = load_checkpoint(run / "checkpoint.pt")["model"]
    loaded = load_encoder(encoder_dir)[0]
    for (name, layer) in ((n, m) for n, m in loaded.named_modules() if m in affine_layers(loaded)):
        factor = (state[f"encoder.{name}.weight"] / layer.weight).detach().flatten()
        assert torch.allclose(factor, factor[0].expand_as(factor), rtol=1e-4), name
