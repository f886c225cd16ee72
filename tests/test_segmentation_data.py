"""Segmentation data layouts (VOC, SBD, COCO, folder pair) and the errors that name bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transfer.segmentation_data import open_segmentation_set, segmentation_kind, write_label_png


def test_voc_layout_on_the_demo_data(demo_root: Path) -> None:
    data = open_segmentation_set(demo_root, "trainval")
    assert data.kind == "voc" and data.classes[0] == "background" and len(data.classes) == 9
    img, labels = data.pair(0)
    assert labels.shape == (img.size[1], img.size[0]) and labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) <= set(range(9)) | {255}
    sub = open_segmentation_set(demo_root, "trainval", max_images=5, seed=3)
    assert len(sub.ids) == 5 and set(sub.ids) <= set(data.ids)
    assert (sub.label(2) == data.label(data.ids.index(sub.ids[2]))).all()  # the subset maps to the right file


def _pair_root(root: Path, n: int = 3, classes: str | None = "background\ncat\ndog\n") -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    if classes:
        (root / "classes.txt").write_text(classes)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.jpg")
        write_label_png(root / "masks" / f"im{i}.png", rng.integers(0, 3, (12, 16)).astype(np.uint8))
    (root / "train.txt").write_text("im0\nim1\n")
    return root


def test_folder_pair_by_list_and_by_subfolder(tmp_path: Path) -> None:
    root = _pair_root(tmp_path / "pair")
    data = open_segmentation_set(root, "train")
    assert data.kind == "folder" and data.ids == ("im0", "im1") and data.classes == ("background", "cat", "dog")
    assert data.pair(1)[1].shape == (12, 16)
    sub = tmp_path / "sub"
    (sub / "images" / "val").mkdir(parents=True)
    (sub / "masks" / "val").mkdir(parents=True)
    Image.new("RGB", (5, 4)).save(sub / "images" / "val" / "x.png")
    write_label_png(sub / "masks" / "val" / "x.png", np.zeros((4, 5), np.uint8))
    data = open_segmentation_set(sub, "val", classes=["a", "b"])
    assert data.ids == ("x",) and data.classes == ("background", "a", "b")
    with pytest.raises(ValueError, match="needs classes.txt"):
        open_segmentation_set(sub, "val")
    with pytest.raises(ValueError, match="split 'test' needs a list"):
        open_segmentation_set(sub, "test", classes=["a"])


def test_bad_masks_and_lists_name_the_file(tmp_path: Path) -> None:
    root = _pair_root(tmp_path / "pair")
    write_label_png(root / "masks" / "im1.png", np.zeros((11, 16), np.uint8))
    data = open_segmentation_set(root, "train")
    with pytest.raises(ValueError, match=r"im1.png: label map is 16x11 but its image .*im1.jpg is 16x12"):
        data.pair(1)
    stray = np.zeros((12, 16), np.uint8)
    stray[0, :2] = (7, 200)
    write_label_png(root / "masks" / "im1.png", stray)
    with pytest.raises(ValueError, match=r"im1.png: label value\(s\) \[7, 200\] outside the 3 classes"):
        data.pair(1)
    ignored = np.zeros((12, 16), np.uint8)
    ignored[0, 0] = 255  # the ignore label is fine
    write_label_png(root / "masks" / "im1.png", ignored)
    assert data.pair(1)[1][0, 0] == 255
    (root / "masks" / "im0.png").unlink()
    with pytest.raises(ValueError, match=r"missing, e.g. .*im0.png"):
        open_segmentation_set(root, "train")
    (root / "train.txt").write_text("im1\n../etc\n")
    with pytest.raises(ValueError, match="invalid image id '../etc'"):
        open_segmentation_set(root, "train")
    (root / "train.txt").write_text("im1\nim1\n")
    with pytest.raises(ValueError, match="duplicate image id 'im1'"):
        open_segmentation_set(root, "train")
    with pytest.raises(ValueError, match="invalid split name"):
        open_segmentation_set(root, "../train")
    with pytest.raises(ValueError, match="not a segmentation root"):
        segmentation_kind(tmp_path)
    with pytest.raises(ValueError, match="segmentation root not found"):
        segmentation_kind(tmp_path / "nowhere")


def test_sbd_mat_files(tmp_path: Path) -> None:
    from scipy.io import savemat

    root = tmp_path / "sbd"
    (root / "cls").mkdir(parents=True)
    (root / "img").mkdir()
    seg = np.zeros((10, 14), np.uint8)
    seg[2:6, 3:9] = 15  # person
    Image.new("RGB", (14, 10)).save(root / "img" / "2008_000002.jpg")
    savemat(root / "cls" / "2008_000002.mat",
            {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros(1), "CategoriesPresent": np.array([15])}})
    (root / "train.txt").write_text("2008_000002\n")
    data = open_segmentation_set(root, "train")
    assert data.kind == "sbd" and len(data.classes) == 21 and data.classes[15] == "person"
    assert (data.pair(0)[1] == seg).all()
    (root / "cls" / "2008_000002.mat").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="2008_000002.mat: not an SBD cls file"):
        data.label(0)


def test_coco_masks_paint_categories_and_ignore_crowds_and_clashes(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    Image.new("RGB", (20, 10)).save(root / "val" / "a.jpg")

    def square(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    anns = [
        {"id": 1, "image_id": 7, "category_id": 3, "segmentation": square(0, 0, 8, 8), "area": 64, "bbox": [0, 0, 8, 8],
         "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 5, "segmentation": square(6, 0, 14, 8), "area": 64,
         "bbox": [6, 0, 8, 8], "iscrowd": 0},
        {"id": 3, "image_id": 7, "category_id": 3, "segmentation": square(16, 0, 20, 4), "area": 16,
         "bbox": [16, 0, 4, 4], "iscrowd": 1},
    ]
    doc = {"images": [{"id": 7, "file_name": "a.jpg", "width": 20, "height": 10}],
           "categories": [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}], "annotations": anns}
    (root / "annotations" / "instances_val.json").write_text(json.dumps(doc))
    data = open_segmentation_set(root, "val")
    assert data.kind == "coco" and data.classes == ("background", "cat", "dog") and data.ids == ("7",)
    _, labels = data.pair(0)
    assert labels.shape == (10, 20)
    assert labels[3, 2] == 1 and labels[3, 11] == 2 and labels[9, 2] == 0  # cat, dog, background
    assert labels[3, 7] == 255  # claimed by cat and dog
    assert labels[1, 17] == 255  # crowd
    with pytest.raises(ValueError, match="brings its own categories"):
        open_segmentation_set(root, "val", classes=["x"])
