"""method=supervised, the labelled reference row: ImageFolder (softmax) and VOC (masked sigmoid) labels, learning,
export to the transfer commands, exact resume, and clear refusals of unlabelled data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pretext.config import ConfigError, load_config
from pretext.data.dataset import ImagesWithLabels, collate_labelled
from pretext.engine.checkpoint import CheckpointError, load_checkpoint
from pretext.engine.trainer import train
from pretext.export import load_encoder
from pretext.inpaint import load_inpainter
from pretext.models.alexnet import AlexNetEncoder
from pretext.pretrain import main as pretrain_main
from transfer.features import open_voc
from transfer.probe import main as probe_main

from .conftest import tiny_config
from .test_probes import stripes

# A classifier small enough to train for real in a few seconds on 2 cores: 64 px crops, tiny widths and head.
TINY_SUP = ["method=supervised", "mask.region_bank=null", "data.load_size=72", "data.fine_size=64",
            "model.widths=[16,32,32,32,32]", "supervised.fc_widths=[32,32]"]


def sup_config(root: Path, *overrides: str):
    return tiny_config(root, *TINY_SUP, *overrides)


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def column(run: Path, key: str) -> list[float]:
    return [float(r[key]) for r in rows(run) if r.get(key)]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def stripe_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """train/ and test/ ImageFolders of 16 horizontal + 16 vertical stripe images each."""
    root = tmp_path_factory.mktemp("stripes")
    return stripes(root / "train", 16, seed=0), stripes(root / "test", 16, seed=1)


@pytest.fixture(scope="module")
def stripe_run(stripe_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 steps of horizontal-vs-vertical classification, 4 images held out."""
    run = tmp_path_factory.mktemp("sup") / "stripes"
    train(sup_config(stripe_data[0], "max_steps=60", "data.holdout=4", "train.eval_every=30"), run)
    return run


def test_imagefolder_classes_are_learnt(stripe_run: Path) -> None:
    loss, acc = column(stripe_run, "loss"), column(stripe_run, "acc")
    assert len(loss) == len(acc) == 60
    assert mean(loss[-20:]) < 0.7 * mean(loss[:20]), f"loss {mean(loss[:20]):.3f} -> {mean(loss[-20:]):.3f}"
    assert mean(acc[-20:]) > 0.75, f"train accuracy {mean(acc[-20:]):.3f} (chance 0.5)"
    assert [int(r["step"]) for r in rows(stripe_run) if r.get("val_acc")] == [30, 60]
    assert all(0 <= v <= 1 for v in column(stripe_run, "val_acc")) and column(stripe_run, "val_loss")
    state = load_checkpoint(stripe_run / "checkpoint.pt")
    assert state["label_space"] == {"classes": ("horizontal", "vertical"), "multilabel": False}
    assert state["networks"]["net"]["fc8.weight"].shape == (2, 32)


def test_exported_encoder_loads_and_probes(stripe_run: Path, stripe_data: tuple[Path, Path], tmp_path: Path) -> None:
    encoder, meta = load_encoder(stripe_run)
    assert isinstance(encoder, AlexNetEncoder) and meta["method"] == "supervised" and meta["arch"] == "alexnet"
    assert meta["input_size"] == 64 and encoder(torch.zeros(1, 3, 64, 64)).shape[1] == 32
    out = tmp_path / "knn"
    code = probe_main(["knn", "--encoder", str(stripe_run), "--train", str(stripe_data[0]), "--test",
                       str(stripe_data[1]), "--out", str(out), "--cache", str(tmp_path / "cache"), "--device", "cpu",
                       "--k", "5"], prog="cebench probe")
    knn = json.loads((out / "metrics.json").read_text())
    assert code == 0 and knn["classes"] == ["horizontal", "vertical"]
    assert knn["results"]["k5"]["top1"] >= 75, knn["results"]
    with pytest.raises(ValueError, match="does not inpaint"):
        load_inpainter(stripe_run, torch.device("cpu"))


def test_voc_multilabel_training_learns_more_than_class_frequencies(demo_root: Path, tmp_path: Path) -> None:
    train(sup_config(demo_root, "max_steps=80", "model.dropout=0"), tmp_path / "voc")
    loss = column(tmp_path / "voc", "loss")
    assert len(loss) == 80 and not column(tmp_path / "voc", "acc")  # multi-label: loss only
    # The loss of the best constant prediction (each class's frequency): sum over classes of the binary entropy,
    # weighted by the share of images whose label is not 0 (difficult only, ignored).
    labels = open_voc(demo_root, "trainval").labels
    valid = labels != 0
    p = (labels == 1).sum(0) / valid.sum(0)
    prior = float(((-(p * np.log(p) + (1 - p) * np.log(1 - p))) * valid.mean(0)).sum())
    assert mean(loss[-20:]) < 0.9 * mean(loss[:20]), f"loss {mean(loss[:20]):.3f} -> {mean(loss[-20:]):.3f}"
    assert mean(loss[-20:]) < prior, f"loss {mean(loss[-20:]):.3f}, class-frequency loss {prior:.3f}"
    state = load_checkpoint(tmp_path / "voc" / "checkpoint.pt")
    assert state["label_space"]["multilabel"] is True and len(state["label_space"]["classes"]) == 8


def test_resume_is_exact(stripe_data: tuple[Path, Path], tmp_path: Path) -> None:
    root, extra = stripe_data[0], ["ckpt_every=3", "data.holdout=4"]
    train(sup_config(root, "max_steps=6", *extra), tmp_path / "straight")
    train(sup_config(root, "max_steps=3", *extra), tmp_path / "resumed")
    train(sup_config(root, "max_steps=6", "resume=true", *extra), tmp_path / "resumed")
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["networks"]["net"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["networks"]["net"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert column(tmp_path / "straight", "loss") == column(tmp_path / "resumed", "loss")
    assert column(tmp_path / "straight", "val_loss") == column(tmp_path / "resumed", "val_loss")[1:]  # + step 3


def test_resume_refuses_other_classes(tmp_path: Path) -> None:
    root = stripes(tmp_path / "data", 4, seed=0)
    train(sup_config(root, "max_steps=2"), tmp_path / "run")
    (root / "zigzag").mkdir()
    Image.new("RGB", (40, 40), (90, 90, 90)).save(root / "zigzag" / "0.png")
    with pytest.raises(CheckpointError, match="classes"):
        train(sup_config(root, "max_steps=4", "resume=true"), tmp_path / "run")


@pytest.mark.slow
def test_two_process_gloo_ddp(stripe_data: tuple[Path, Path], tmp_path: Path) -> None:
    from .test_ddp import torchrun

    run = tmp_path / "ddp"
    done = torchrun(2, ["demo", "--out", str(run), f"data.root={stripe_data[0]}", *TINY_SUP, "data.workers=0",
                        "train.batch_size=4", "train.progress=false", "train.log_every=1", "max_steps=4",
                        "data.holdout=4"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(column(run, "acc")) == 4 and 0 <= column(run, "val_acc")[-1] <= 1
    meta = load_encoder(run)[1]
    assert meta["method"] == "supervised" and meta["pretrain"]["world_size"] == 2
    assert meta["pretrain"]["images_seen"] == 4 * 4 * 2


def test_plain_folder_is_refused_naming_the_root(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="class sub-folders") as err:
        train(sup_config(image_folder, "max_steps=1"), tmp_path / "run")
    assert f"data.root={image_folder}" in str(err.value) and "VOC root" in str(err.value)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in sorted(image_folder.glob("*.png"))))
    with pytest.raises(ConfigError, match=f"data.root={listing}.*class sub-folders"):
        train(sup_config(listing, "max_steps=1"), tmp_path / "run")
    assert pretrain_main(["demo", *TINY_SUP, f"data.root={image_folder}", "--out", str(tmp_path / "cli")]) == 2


def test_a_skipped_image_brings_the_label_of_the_one_standing_in(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"")
    good = [tmp_path / f"{i}.png" for i in range(2)]
    for i, path in enumerate(good):
        Image.new("RGB", (16, 16), (100 * i, 0, 0)).save(path)
    ds = ImagesWithLabels([bad, *good], np.array([0, 1, 2]), 16, 12, on_bad_image="skip")
    batch = collate_labelled([ds[0], ds[(2, (0, 0, 0))]])
    assert batch["labels"].tolist() == [1, 2] and batch["skipped"] == [str(bad)]
    assert batch["images"].shape == (2, 3, 12, 12)


@pytest.mark.parametrize("override, message", [("model.arch=dcgan", "alexnet or alexnet_small"),
                                               ("supervised.fc_widths=[8]", "supervised.fc_widths")])
def test_bad_supervised_configs_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("demo_supervised", [override])


def test_presets_are_listed_and_validate(capsys: pytest.CaptureFixture) -> None:
    assert pretrain_main(["--list-presets"]) == 0
    listed = capsys.readouterr().out.split()
    assert {"demo_supervised", "supervised_paper"} <= set(listed)
    demo, paper = load_config("demo_supervised"), load_config("supervised_paper")
    assert (demo.method, demo.supervised.fc_widths, demo.train.max_steps) == ("supervised", [512, 512], 1500)
    assert (demo.model.arch, demo.data.fine_size) == ("alexnet_small", 64)
    assert (paper.method, paper.supervised.fc_widths, paper.model.dropout) == ("supervised", [4096, 4096], 0.5)
    assert (paper.model.arch, paper.data.fine_size) == ("alexnet", 227)
