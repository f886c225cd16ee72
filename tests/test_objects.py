"""Object crops of a VOC root (transfer.objects) and the suites' `data.labelled: objects`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.suite import load_suite
from pretext.config import ConfigError
from transfer.data_check import main as data_main
from transfer.objects import MARKER, crop_box, ensure_object_crops, write_object_crops

from .test_detection_eval import write_xml

RED, BLUE = (255, 0, 0), (0, 0, 255)


def tiny_voc(root: Path) -> Path:
    """Two classes, red squares (`box`) and blue bars (`bar`), on grey 60x40 images: trainval a, b; test c.
    Image a also holds a difficult bar."""
    for sub in ("ImageSets/Main", "Annotations", "JPEGImages"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("background\nbox\nbar\n")
    (root / "ImageSets/Main/trainval.txt").write_text("a\nb\n")
    (root / "ImageSets/Main/test.txt").write_text("c\n")
    objects = {"a": [("box", 0, 11, 11, 20, 20), ("bar", 1, 40, 5, 44, 30)],
               "b": [("bar", 0, 31, 6, 36, 35), ("box", 0, 1, 1, 8, 8)],
               "c": [("box", 0, 41, 21, 50, 30), ("bar", 0, 5, 5, 9, 34)]}
    for image_id, rows in objects.items():
        pixels = np.full((40, 60, 3), 128, np.uint8)
        for name, _, x0, y0, x1, y1 in rows:  # VOC boxes are 1-based and inclusive
            pixels[y0 - 1:y1, x0 - 1:x1] = RED if name == "box" else BLUE
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg", quality=100)
        write_xml(root / "Annotations" / f"{image_id}.xml", rows)
    return root


def test_crop_box_is_a_square_with_margin_moved_inside_the_image() -> None:
    # a 10x10 box at 1-based 11..20 (pixels 10..19), margin 0.5 of 10 on each side: a 20 px square around it
    assert crop_box(60, 40, (11, 11, 20, 20), 0.5) == (5, 5, 25, 25)
    # the longer side decides; a box at the corner moves inside rather than reaching out of the image
    assert crop_box(60, 40, (1, 1, 4, 10), 0.0) == (0, 0, 10, 10)
    assert crop_box(60, 40, (55, 35, 60, 40), 0.5) == (48, 28, 60, 40)
    # larger than the image's height: centred on the box vertically (PIL pads the outside with black)
    left, top, right, bottom = crop_box(60, 40, (11, 1, 60, 40), 0.0)
    assert right - left == bottom - top == 50 and top < 0 and 0 <= left and right <= 60


def test_crops_are_filed_by_class_and_skip_difficult_objects(tmp_path: Path) -> None:
    root = tiny_voc(tmp_path / "voc")
    crops = write_object_crops(root, tmp_path / "crops", size=16, margin=0.0)
    assert crops.counts == {"train": 3, "test": 2} and crops.difficult_skipped == 1
    out = tmp_path / "crops"
    assert sorted(p.name for p in (out / "train" / "box").iterdir()) == ["a_1.png", "b_2.png"]
    assert sorted(p.name for p in (out / "train" / "bar").iterdir()) == ["b_1.png"]  # a's bar is difficult
    assert sorted(p.name for p in (out / "test" / "bar").iterdir()) == ["c_2.png"]
    # each crop shows its object: a red square fills the box crop; the thin bar at c's left edge is at the left of
    # its 30 px square, which was moved inside the image rather than padded
    box = np.asarray(Image.open(out / "train" / "box" / "a_1.png"), dtype=np.float64)
    assert box.shape == (16, 16, 3) and box[..., 0].mean() > 200 and box[..., 2].mean() < 60
    bar = np.asarray(Image.open(out / "test" / "bar" / "c_2.png"), dtype=np.float64)
    assert bar[:, 3:4, 2].mean() > 200 and bar[:, 6:, 2].mean() < 140 and bar[:, 0].sum(-1).min() > 300
    meta = json.loads((out / MARKER).read_text())
    assert meta["classes"] == ["box", "bar"] and meta["splits"] == {"trainval": "train", "test": "test"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crops", "voc"]  # no temporary folder left


def test_bad_annotations_leave_no_folder_behind(tmp_path: Path) -> None:
    root = tiny_voc(tmp_path / "voc")
    write_xml(root / "Annotations" / "c.xml", [("cat", 0, 1, 1, 5, 5)])
    with pytest.raises(ValueError, match=r"c\.xml.*unknown class 'cat'"):
        write_object_crops(root, tmp_path / "crops")
    write_xml(root / "Annotations" / "c.xml", [("box", 0, 1, 1, 5, 5)])
    with pytest.raises(ValueError, match="split test: no non-difficult object of class.*bar"):
        write_object_crops(root, tmp_path / "crops")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voc"]  # no half-written or temporary folder


def test_the_cache_is_keyed_by_the_root_contents(tmp_path: Path) -> None:
    root = tiny_voc(tmp_path / "voc")
    cache = tmp_path / "cache"
    first = ensure_object_crops(root, size=16, cache=cache)
    stamp = (first / MARKER).stat().st_mtime_ns
    assert ensure_object_crops(root, size=16, cache=cache) == first
    assert (first / MARKER).stat().st_mtime_ns == stamp  # reused, not rewritten
    # relabel one object: the same call now names a new folder and writes it from the edited annotation
    write_xml(root / "Annotations" / "b.xml", [("bar", 0, 31, 6, 36, 35), ("bar", 0, 1, 1, 8, 8)])
    os.utime(root / "Annotations" / "b.xml", ns=(stamp + 10**9, stamp + 10**9))
    second = ensure_object_crops(root, size=16, cache=cache)
    assert second != first
    assert sorted(p.name for p in (second / "train" / "bar").iterdir()) == ["b_1.png", "b_2.png"]


def test_a_folder_of_the_user_is_never_replaced(tmp_path: Path, capsys) -> None:
    root = tiny_voc(tmp_path / "voc")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        write_object_crops(root, mine)
    with pytest.raises(SystemExit):
        data_main(["objects", str(root), "--out", str(mine)])
    assert "not an empty folder" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_object_crops(root, empty).counts == {"train": 3, "test": 2}
    with pytest.raises(ValueError, match="share a folder name"):
        write_object_crops(root, tmp_path / "x", {"trainval": "a", "test": "a"})


def test_the_command_writes_crops_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    root = tiny_voc(tmp_path / "voc")
    out = tmp_path / "crops"
    assert data_main(["objects", str(root), "--out", str(out), "--size", "20", "--splits", "trainval:tr,test"]) == 0
    assert "tr 3, test 2 (1 difficult object(s) skipped)" in capsys.readouterr().out
    assert Image.open(out / "tr" / "box" / "a_1.png").size == (20, 20)
    with pytest.raises(SystemExit):
        data_main(["objects", str(root), "--out", str(out)])
    assert "already there" in capsys.readouterr().err


def test_suite_labelled_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """data.labelled=objects: the labelled tasks read the crops, Table 1's tasks the whole images, and a
    `data: labelled` pretraining trains on the crops' labels; the keys are validated."""
    from benchmarks import suite as suite_mod

    root = tiny_voc(tmp_path / "voc")
    raw = {"name": "objects", "data": {"root": str(root), "labelled": "objects", "object_size": 16},
           "pretrainings": {"sup": {"preset": "demo_supervised", "data": "labelled"},
                            "random": {"preset": "demo_random"}},
           "tasks": {"knn": {"k": 1}, "inpainting": {}}}
    (tmp_path / "s.yaml").write_text(json.dumps(raw))
    suite = load_suite(str(tmp_path / "s.yaml"))
    monkeypatch.setenv("CEBENCH_CACHE", str(tmp_path / "cache"))
    data, pretrain_root = suite_mod.datasets(suite, create=True)
    assert data.train.parent.parent == tmp_path / "cache" / "objects" and (data.train / "box").is_dir()
    assert data.whole_images().train == data.whole_images().test == root == pretrain_root
    overrides = suite_mod._pretrain_overrides(suite.pretrainings["sup"], data, pretrain_root, suite, 0)
    assert f"data.root={data.train}" in overrides
    overrides = suite_mod._pretrain_overrides(suite.pretrainings["random"], data, pretrain_root, suite, 0)
    assert f"data.root={root}" in overrides
    for override, message in (("data.labelled=boxes", "data.labelled must be one of images, objects"),
                              ("data.object_size=4", "object_size must be an integer >= 8"),
                              ("pretrainings.sup.data=test", "pretrainings.sup.data must be one of")):
        with pytest.raises(ConfigError, match=message):
            load_suite(str(tmp_path / "s.yaml"), [override])
    folder = tmp_path / "folder"
    for split in ("train", "test"):
        for name in ("x", "y"):
            (folder / split / name).mkdir(parents=True)
    with pytest.raises(ConfigError, match="needs a VOC root"):
        suite_mod.datasets(load_suite(str(tmp_path / "s.yaml"), [f"data.root={folder}"]), create=True)
