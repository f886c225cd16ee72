"""`cebench voc-tree`: a labelImg-style dataset (images, XMLs, CSV / text splits) as a VOC root the readers accept."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretext.cli import main as cebench
from transfer.detection_eval import read_detection_annotations
from transfer.voc_layout import build_voc_tree, main

from .conftest import SHARED_DATA

# file name -> (XML file name, objects: class, (xmin, ymin, xmax, ymax), difficult)
DATASET = {
    "a.jpg": ("a.xml", [("cat", (2, 3, 20, 18), False), ("dog", (5, 5, 30, 22), True)]),
    "b.jpg": ("b.xml", [("dog", (1, 1, 12, 10), False)]),
    "c.jpg": ("c_labels.xml", [("cat", (4, 2, 16, 20), False)]),  # matched by <filename>, not by stem
}


def voc_xml(filename: str, objects: list) -> str:
    objs = "".join(
        f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox><xmin>{x1}</xmin>"
        f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, (x1, y1, x2, y2), difficult in objects)
    return f"<annotation><folder>images</folder><filename>{filename}</filename>{objs}</annotation>"


def add_image(data: Path, filename: str, objects: list | None, xml_name: str | None = None) -> None:
    color = (len(filename) * 40 % 256, 90, 160)
    Image.new("RGB", (32, 24), color).save(data / "images" / filename)
    if objects is not None:
        (data / "annotations" / (xml_name or f"{Path(filename).stem}.xml")).write_text(voc_xml(filename, objects))


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    """labelImg-style: images/, annotations/, a CSV split with a row per box and a text split."""
    data = tmp_path / "data"
    for sub in ("images", "annotations", "splits"):
        (data / sub).mkdir(parents=True)
    for filename, (xml_name, objects) in DATASET.items():
        add_image(data, filename, objects, xml_name)
    rows = [f"{name},32,24,{cls},{x1},{y1},{x2},{y2}" for name in ("a.jpg", "b.jpg")
            for cls, (x1, y1, x2, y2), _ in DATASET[name][1]]
    (data / "splits" / "train.csv").write_text("filename,width,height,class,xmin,ymin,xmax,ymax\n" + "\n".join(rows))
    (data / "splits" / "test.txt").write_text("c.jpg\n\n")
    return data


def args(data: Path, out: Path, *splits: str, extra: tuple[str, ...] = ()) -> list[str]:
    splits = splits or (f"train={data / 'splits/train.csv'}", f"test={data / 'splits/test.txt'}")
    return ["--images", str(data / "images"), "--annotations", str(data / "annotations"), "--out", str(out),
            *(x for s in splits for x in ("--split", s)), *extra]


def test_tree_links_the_originals_and_the_reader_reads_it(data: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "voc"
    assert cebench(["voc-tree", *args(data, root)]) == 0
    printed = capsys.readouterr().out
    assert "train: 2 images, 3 boxes (1 difficult)" in printed and "test: 1 images, 1 boxes" in printed
    for filename, (xml_name, _) in DATASET.items():
        image_id = Path(filename).stem
        for link, original in ((root / "JPEGImages" / f"{image_id}.jpg", data / "images" / filename),
                               (root / "Annotations" / f"{image_id}.xml", data / "annotations" / xml_name)):
            assert link.is_symlink() and os.path.isabs(os.readlink(link))
            assert link.resolve() == original.resolve()
    assert (root / "ImageSets/Main/train.txt").read_text() == "a\nb\n"  # CSV rows collapse, order kept
    assert (root / "ImageSets/Main/test.txt").read_text() == "c\n"
    assert (root / "classes.txt").read_text() == "cat\ndog\n"
    manifest = json.loads((root / "voc_tree.json").read_text())
    assert manifest["complete"] and manifest["made_by"] == "cebench voc-tree" and manifest["ids"] == ["a", "b", "c"]
    assert manifest["splits"]["train"] == str(data / "splits/train.csv")
    for split, ids in (("train", "ab"), ("test", "c")):
        gt = read_detection_annotations(root, split, ["cat", "dog"])
        assert list(gt) == list(ids)
        for image_id in ids:
            objects = DATASET[f"{image_id}.jpg"][1]
            np.testing.assert_array_equal(gt[image_id].boxes, [box for _, box, _ in objects])
            assert gt[image_id].difficult.tolist() == [d for _, _, d in objects]


def test_rebuilds_its_own_tree_and_refuses_other_files(data: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "voc"
    build_voc_tree(data / "images", data / "annotations", root, {"train": data / "splits/train.csv"})
    summary = build_voc_tree(data / "images", data / "annotations", root, {"trainval": "all"}, classes=["cat"])
    assert summary["splits"]["trainval"] == {"images": 3, "boxes": 2, "difficult": 0, "other_classes": 2}
    assert not (root / "ImageSets/Main/train.txt").exists()
    assert (root / "ImageSets/Main/trainval.txt").read_text() == "a\nb\nc\n"
    assert (root / "classes.txt").read_text() == "cat\n"
    (root / "JPEGImages" / "mine.jpg").write_bytes(b"")
    assert main(args(data, root)) == 2
    assert str(root / "JPEGImages" / "mine.jpg") in caplog.text


def test_copy_converts_png_which_links_refuse(data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    add_image(data, "e.png", [("cat", (1, 1, 8, 8), False)])
    assert main(args(data, tmp_path / "linked", "all=all")) == 2
    assert f"{data / 'images' / 'e.png'}: not a JPEG" in caplog.text and "expects" in caplog.text
    assert not (tmp_path / "linked").exists()  # refused before writing anything
    root = tmp_path / "copied"
    assert main(args(data, root, "all=all", extra=("--copy",))) == 0
    with Image.open(root / "JPEGImages" / "e.jpg") as img:
        assert img.format == "JPEG" and img.size == (32, 24)
    assert not any(p.is_symlink() for p in root.rglob("*"))
    assert (root / "JPEGImages/a.jpg").read_bytes() == (data / "images/a.jpg").read_bytes()


def bad_entry(data: Path) -> tuple[Path, list[str]]:
    (data / "splits" / "train.csv").write_text("filename,class\na.jpg,cat\nzz.jpg,cat\n")
    return data / "splits" / "train.csv", []


def no_annotation(data: Path) -> tuple[Path, list[str]]:
    add_image(data, "d.jpg", None)
    (data / "splits" / "more.txt").write_text("d\n")
    return data / "images" / "d.jpg", [f"train={data / 'splits/train.csv'}", f"more={data / 'splits/more.txt'}"]


def malformed_xml(data: Path) -> tuple[Path, list[str]]:
    (data / "annotations" / "b.xml").write_text("<annotation><object>")
    return data / "annotations" / "b.xml", []


def invalid_id(data: Path) -> tuple[Path, list[str]]:
    add_image(data, "my cat.jpg", DATASET["a.jpg"][1])
    return data / "images" / "my cat.jpg", ["all=all"]


def same_stem(data: Path) -> tuple[Path, list[str]]:
    add_image(data, "b.png", None)
    return data / "images" / "b.png", []


def foreign_root(data: Path) -> tuple[Path, list[str]]:
    root = data.parent / "voc"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    return root, []


@pytest.mark.parametrize("case", [bad_entry, no_annotation, malformed_xml, invalid_id, same_stem, foreign_root])
def test_errors_name_the_file(case, data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    named, splits = case(data)
    assert main(args(data, tmp_path / "voc", *splits)) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(named) in errors[0], errors


def test_raccoon_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raccoon = SHARED_DATA / "raccoon"
    if not (raccoon / "annotations").is_dir():
        pytest.skip(f"{raccoon} not present")
    monkeypatch.chdir(raccoon)
    root = tmp_path / "raccoon"
    assert main(["--images", "images", "--annotations", "annotations", "--out", str(root),
                 "--split", "train=data/train_labels.csv", "--split", "test=data/test_labels.csv"]) == 0
    assert (root / "classes.txt").read_text() == "raccoon\n"
    for split, images, boxes in (("train", 160, 173), ("test", 40, 44)):
        gt = read_detection_annotations(root, split, ["raccoon"])
        assert len(gt) == images and sum(len(o.boxes) for o in gt.values()) == boxes


def test_images_and_xmls_in_one_folder(tmp_path: Path) -> None:
    """labelImg's default: each XML next to its image."""
    folder = tmp_path / "shots"
    folder.mkdir()
    Image.new("RGB", (16, 16)).save(folder / "x.jpg")
    (folder / "x.xml").write_text(voc_xml("x.jpg", [("cat", (1, 2, 9, 10), False)]))
    summary = build_voc_tree(folder, folder, tmp_path / "voc", {"all": "all"})
    assert summary["splits"]["all"]["images"] == 1 and summary["classes"] == ["cat"]
