"""The small benchmark commands run and report what they measure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.init_rates import main as init_rates_main
from benchmarks.step_time import main as step_time_main
from benchmarks.step_time import time_steps
from pretext.engine.trainer import train

from .conftest import TINY, tiny_config


def test_step_time_measures_each_step(image_folder: Path, capsys: pytest.CaptureFixture) -> None:
    times = time_steps(tiny_config(image_folder), steps=3, warmup=1)
    assert len(times) == 3 and all(t > 0 for t in times)
    assert step_time_main(["demo", *TINY, "--steps", "2"]) == 0
    assert "images/s" in capsys.readouterr().out


def test_init_rates_reports_each_run(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train(tiny_config(image_folder, "method=random", "max_steps=0"), tmp_path / "g")
    train(tiny_config(image_folder, "method=random", "max_steps=0", "model.init=data_dependent"), tmp_path / "d")
    assert init_rates_main([str(tmp_path / "g"), str(tmp_path / "d"), "--images", str(image_folder), "--n", "8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    spreads = [float(line.rsplit(" ", 1)[1]) for line in lines]
    assert len(lines) == 2 and spreads[1] < spreads[0]


def test_pretrain_summary_tables_runs_of_different_methods(image_folder: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    import json

    from benchmarks.pretrain_summary import main as summary_main

    train(tiny_config(image_folder, "max_steps=12", "data.holdout=4"), tmp_path / "ce")
    train(tiny_config(image_folder, "method=random", "max_steps=0"), tmp_path / "rnd")
    out = tmp_path / "results" / "summary"
    assert summary_main([str(tmp_path / "ce"), str(tmp_path / "rnd"), "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [r["method"] for r in rows] == ["context_encoder", "random"]
    assert rows[0]["steps"] == 12 and rows[0]["loss_first"] > 0 and "val_rec" in rows[0]
    assert rows[0]["encoder"] == rows[1]["encoder"] == "alexnet 32px pool5 16x4x4"
    assert "loss_first" not in rows[1] and rows[1]["steps"] == 0
    assert out.with_suffix(".md").read_text() == capsys.readouterr().out
    with pytest.raises(SystemExit):
        summary_main([str(tmp_path / "missing")])


def test_transfer_summary_rows_of_detection_and_segmentation_runs(tmp_path: Path) -> None:
    from benchmarks.transfer_summary import rows_of

    det, seg = tmp_path / "det", tmp_path / "seg"
    det.mkdir()
    seg.mkdir()
    (det / "metrics.json").write_text(json.dumps({
        "task": "detection", "layers": "all", "steps": 300, "encoder": "runs/demo", "encoder_method": "context_encoder",
        "train": {"n_images": 160}, "test": {"n_images": 40}, "map_voc07_11pt": 12.345, "map_area": 10.0,
        "train_seconds": 100.0, "proposal_seconds_test": 52.0, "inference_seconds_per_image": 0.2104}))
    (seg / "metrics.json").write_text(json.dumps({
        "task": "segmentation", "layers": "all", "steps": 600, "encoder": "runs/random_dd", "encoder_method": "random",
        "train": {"n_images": 1500}, "test": {"n_images": 750}, "miou": 12.281, "pixel_acc": 88.9, "mean_acc": 15.66,
        "train_seconds": 800.0, "train_seconds_per_image": 0.333, "inference_seconds_per_image": 0.12}))
    (d,), (s,) = rows_of(det), rows_of(seg)
    assert d["task"] == "Fast R-CNN all (300 steps)" and d["map_voc07_11pt"] == 12.35 and d["proposal_s_per_image"] == 1.3
    assert (d["encoder"], d["n_train"], d["n_test"], d["inference_s_per_image"]) == ("demo", 160, 40, 0.21)
    assert s["task"] == "FCN-32s all (600 steps)" and s["miou"] == 12.28 and s["train_s_per_image"] == 0.333


def test_transfer_summary_row_of_an_inpainting_evaluation(tmp_path: Path) -> None:
    from benchmarks.transfer_summary import rows_of

    (tmp_path / "metrics.json").write_text(json.dumps({
        "mean_l1": 9.5, "mean_l2": 2.0, "psnr": 18.1, "ssim": 0.81, "mask": "freeform", "hole_coverage": 0.1543,
        "baseline_mean_fill": {"mean_l1": 20.0, "mean_l2": 6.0, "psnr": 13.0, "ssim": 0.7}, "n_images": 1000,
        "checkpoint": "runs/cifar_gated", "method": "gated_inpainting", "arch": "gated"}))
    (row,) = rows_of(tmp_path)
    assert row["task"] == "inpainting freeform holes (15.4 %)" and row["encoder"] == "cifar_gated"
    assert (row["psnr"], row["ssim"], row["psnr_mean_fill"], row["ssim_mean_fill"]) == (18.1, 0.81, 13.0, 0.7)


def test_init_scale_reports_each_start(tmp_path: Path) -> None:
    from benchmarks.init_scale import VARIANTS, logit_scales

    from .test_probes import stripes

    stripes(tmp_path / "train", 6, seed=0)
    stripes(tmp_path / "test", 2, seed=1)
    train(tiny_config(tmp_path / "train", "max_steps=2", "data.fine_size=32"), tmp_path / "enc")
    scales = logit_scales(tmp_path / "enc", tmp_path / "train", tmp_path / "test", "classify_demo", 8)
    assert list(scales) == list(VARIANTS)
    assert all(std > 0 and peak >= std for std, peak in scales.values())
    assert 0.3 < scales["data-dependent head, within-layer only"][0] < 3  # unit-variance logits by construction
