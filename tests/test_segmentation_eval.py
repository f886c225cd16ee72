"""Segmentation scores: hand-computed confusion matrices, an independent per-class implementation, palette PNGs,
and `cebench evaluate segmentation` on real VOC masks and generated roots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transfer.evaluate import main as evaluate_main
from transfer.segmentation_data import read_label_png, voc_palette, write_label_png
from transfer.segmentation_eval import confusion, segmentation_scores

from .conftest import SHARED_DATA

VOC_SAMPLES = SHARED_DATA / "voc_samples" / "instance_segmentation"


def test_confusion_counts_pixels_and_skips_255() -> None:
    gt = np.array([[0, 0, 1], [1, 255, 2]])
    pred = np.array([[0, 1, 1], [2, 0, 2]])
    conf = confusion(gt, pred, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    # accumulates into a given matrix
    assert confusion(gt, pred, 3, conf.copy()).tolist() == (2 * conf).tolist()
    with pytest.raises(ValueError, match="shape"):
        confusion(gt, pred[:, :2], 3)
    with pytest.raises(ValueError, match="predicted values outside"):
        confusion(gt, pred + 1, 3)
    with pytest.raises(ValueError, match="ground-truth values outside"):
        confusion(np.full((2, 2), 7), np.zeros((2, 2), int), 3)


def test_scores_by_hand() -> None:
    # rows: ground truth, columns: prediction
    conf = np.array([[50, 10, 0],
                     [5, 35, 0],
                     [0, 0, 0]])  # class 2 neither occurs nor is predicted
    s = segmentation_scores(conf, ["bg", "a", "b"])
    iou_bg, iou_a = 50 / (60 + 55 - 50), 35 / (40 + 45 - 35)
    assert s["per_class_iou"]["bg"] == pytest.approx(100 * iou_bg)
    assert s["per_class_iou"]["a"] == pytest.approx(100 * iou_a)
    assert s["per_class_iou"]["b"] is None  # left out of the mean, not counted as 0
    assert s["miou"] == pytest.approx(100 * (iou_bg + iou_a) / 2)
    assert s["pixel_acc"] == pytest.approx(100 * 85 / 100)
    assert s["mean_acc"] == pytest.approx(100 * (50 / 60 + 35 / 40) / 2)
    assert s["fw_iou"] == pytest.approx(100 * (0.6 * iou_bg + 0.4 * iou_a))
    # a class predicted but absent from the ground truth has IoU 0 and counts in the mean
    conf2 = np.array([[8, 2], [0, 0]])
    s2 = segmentation_scores(conf2, ["bg", "a"])
    assert s2["per_class_iou"]["a"] == 0.0 and s2["miou"] == pytest.approx(100 * 0.8 / 2)
    assert s2["per_class_acc"]["a"] is None and s2["mean_acc"] == pytest.approx(80.0)
    with pytest.raises(ValueError, match="no labelled pixel"):
        segmentation_scores(np.zeros((2, 2)), ["bg", "a"])


def _independent_miou(gts: list[np.ndarray], preds: list[np.ndarray], n: int) -> tuple[float, float]:
    """Per-class set counting over all pixels of all images, no confusion matrix."""
    g = np.concatenate([x.ravel() for x in gts])
    p = np.concatenate([x.ravel() for x in preds])
    keep = g != 255
    g, p = g[keep], p[keep]
    ious = []
    for c in range(n):
        inter = np.sum((g == c) & (p == c))
        union = np.sum((g == c) | (p == c))
        if union:
            ious.append(inter / union)
    return 100 * float(np.mean(ious)), 100 * float(np.mean(g == p))


def test_scores_agree_with_an_independent_implementation_on_random_maps() -> None:
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(2, 8))
        gts, preds = [], []
        conf = np.zeros((n, n), np.int64)
        for _ in range(int(rng.integers(1, 5))):
            shape = tuple(rng.integers(1, 30, 2))
            gt = rng.integers(0, n, shape)
            gt[rng.random(shape) < 0.1] = 255
            pred = np.where(rng.random(shape) < 0.6, np.where(gt == 255, 0, gt), rng.integers(0, n, shape))
            gts.append(gt)
            preds.append(pred)
            confusion(gt, pred, n, conf)
        if conf.sum() == 0:
            continue
        s = segmentation_scores(conf, [str(k) for k in range(n)])
        miou, acc = _independent_miou(gts, preds, n)
        assert s["miou"] == pytest.approx(miou) and s["pixel_acc"] == pytest.approx(acc)


def test_palette_pngs_round_trip(tmp_path: Path) -> None:
    pal = voc_palette()
    assert pal[1].tolist() == [128, 0, 0] and pal[15].tolist() == [192, 128, 128] and pal[255].tolist() == [224, 224, 192]
    labels = np.random.default_rng(1).integers(0, 21, (17, 23)).astype(np.uint8)
    labels[0, 0] = 255
    write_label_png(tmp_path / "a.png", labels)
    with Image.open(tmp_path / "a.png") as img:
        assert img.mode == "P" and img.getpalette()[3:6] == [128, 0, 0]
    assert (read_label_png(tmp_path / "a.png") == labels).all()
    # the same map as RGB in the VOC colours reads back to the indices; a foreign colour is refused
    Image.fromarray(pal[labels]).save(tmp_path / "rgb.png")
    assert (read_label_png(tmp_path / "rgb.png") == labels).all()
    rgb = pal[labels].copy()
    rgb[3, 3] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"bad.png: RGB mask with colour \(1, 2, 3\)"):
        read_label_png(tmp_path / "bad.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="broken.png: cannot read label map"):
        read_label_png(tmp_path / "broken.png")
    with pytest.raises(ValueError, match="label map not found"):
        read_label_png(tmp_path / "missing.png")


def _evaluate(root: Path, results: Path, out: Path, *extra: str) -> int:
    return evaluate_main(["segmentation", "--voc-root", str(root), "--results", str(results), "--out", str(out),
                          *extra], prog="cebench evaluate")


@pytest.mark.skipif(not VOC_SAMPLES.is_dir(), reason="needs ../shared/data/voc_samples")
def test_evaluate_cli_on_real_voc_masks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The 3 real VOC 2011 masks scored against themselves (100 %), and against all-background predictions."""
    ids = [p.stem for p in sorted((VOC_SAMPLES / "SegmentationClass").glob("*.png"))]
    root = tmp_path / "voc"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    (root / "SegmentationClass").symlink_to(VOC_SAMPLES / "SegmentationClass")
    (root / "JPEGImages").symlink_to(VOC_SAMPLES / "JPEGImages")
    perfect = tmp_path / "perfect"
    perfect.mkdir()
    background = tmp_path / "background"
    background.mkdir()
    gts = []
    for i in ids:
        gt = read_label_png(root / "SegmentationClass" / f"{i}.png")
        gts.append(gt)
        write_label_png(perfect / f"{i}.png", np.where(gt == 255, 0, gt))
        write_label_png(background / f"{i}.png", np.zeros_like(gt))
    assert _evaluate(root, perfect, tmp_path / "m1") == 0
    m = json.loads((tmp_path / "m1" / "metrics.json").read_text())
    assert m["miou"] == m["pixel_acc"] == m["mean_acc"] == 100.0 and m["n_images"] == 3
    assert "mIoU 100.00" in capsys.readouterr().out
    assert _evaluate(root, background, tmp_path / "m2") == 0
    m = json.loads((tmp_path / "m2" / "metrics.json").read_text())
    miou, acc = _independent_miou(gts, [np.zeros_like(g) for g in gts], 21)
    assert m["miou"] == pytest.approx(miou) and m["pixel_acc"] == pytest.approx(acc) and m["miou"] < 50
    present = {k for g in gts for k in np.unique(g).tolist() if k != 255}
    assert {c for c, v in m["per_class_iou"].items() if v is not None} == {m["classes"][k] for k in present}


def test_evaluate_cli_names_bad_predictions(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "pair"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\ncat\n")
    (root / "val.txt").write_text("a\nb\n")
    for i in "ab":
        Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(root / "images" / f"{i}.png")
        write_label_png(root / "masks" / f"{i}.png", np.ones((8, 10), np.uint8))
    results = tmp_path / "results"
    results.mkdir()
    write_label_png(results / "a.png", np.ones((8, 10), np.uint8))
    assert _evaluate(root, results, tmp_path / "o", "--split", "val") == 2
    assert "b.png" in caplog.text and "not found" in caplog.text
    write_label_png(results / "b.png", np.ones((9, 10), np.uint8))
    assert _evaluate(root, results, tmp_path / "o", "--split", "val") == 2
    assert "b.png: prediction is 10x9" in caplog.text
    write_label_png(results / "b.png", np.full((8, 10), 5, np.uint8))
    assert _evaluate(root, results, tmp_path / "o", "--split", "val") == 2
    assert "label value(s) [5] outside the 2 classes" in caplog.text
    write_label_png(results / "b.png", np.ones((8, 10), np.uint8))
    assert _evaluate(root, results, tmp_path / "o", "--split", "val") == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["miou"] == 100.0
