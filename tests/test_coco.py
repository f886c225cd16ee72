"""COCO instances JSON read as multi-label classification data: labels, crowd handling, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transfer.coco import read_coco_classification
from transfer.features import open_labelled

CATEGORIES = [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}, {"id": 7, "name": "dog"}]


def coco_root(tmp_path: Path, annotations: list[dict], images: list[dict] | None = None,
              split: str = "val2017") -> Path:
    """ROOT/annotations/instances_<split>.json and small JPEGs in ROOT/<split>/."""
    images = images if images is not None else [{"id": i, "file_name": f"{i:012d}.jpg"} for i in (5, 2, 9)]
    (tmp_path / "annotations").mkdir(exist_ok=True)
    (tmp_path / split).mkdir(exist_ok=True)
    for img in images:
        Image.new("RGB", (40, 30), (10 * img["id"], 0, 0)).save(tmp_path / split / Path(img["file_name"]).name)
    doc = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return tmp_path


def ann(i: int, image: int, category: int, crowd: int = 0) -> dict:
    """One box annotation."""
    return {"id": i, "image_id": image, "category_id": category, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": crowd}


def test_labels_follow_instances_with_crowd_only_ignored(tmp_path: Path) -> None:
    root = coco_root(tmp_path, [ann(1, 2, 1), ann(2, 2, 1), ann(3, 5, 3), ann(4, 5, 7, crowd=1),
                                ann(5, 9, 7, crowd=1), ann(6, 9, 7)])
    paths, labels, classes = read_coco_classification(root, "val2017")
    assert classes == ["person", "car", "dog"]  # category id order: 1, 3, 7
    assert [p.name for p in paths] == ["000000000002.jpg", "000000000005.jpg", "000000000009.jpg"]  # image id order
    np.testing.assert_array_equal(labels, [[1, -1, -1],   # image 2: two persons
                                           [-1, 1, 0],    # image 5: a car, a crowd of dogs only -> ignored
                                           [-1, -1, 1]])  # image 9: a crowd and a single dog -> present


def test_open_labelled_recognises_a_coco_root(tmp_path: Path) -> None:
    data = open_labelled(coco_root(tmp_path, [ann(1, 2, 1)]), "val2017")
    assert data.kind == "coco" and data.multilabel and data.split == "val2017" and len(data.paths) == 3
    assert all(p.is_file() for p in data.paths)


@pytest.mark.parametrize(("annotations", "images", "message"), [
    ([ann(1, 4, 1)], None, "unknown image id 4"),
    ([ann(1, 2, 99)], None, "unknown category id 99"),
    ([], [{"id": 1, "file_name": "../escape.jpg"}], "must be a relative path"),
    ([], [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}], "duplicate image ids"),
    ([], [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "a.jpg"}], "share a file_name"),
])
def test_dangling_ids_and_bad_file_names_are_refused(tmp_path: Path, annotations, images, message: str) -> None:
    root = coco_root(tmp_path, annotations, images)
    with pytest.raises(ValueError, match=message) as err:
        read_coco_classification(root, "val2017")
    assert "instances_val2017.json" in str(err.value)


def test_missing_and_malformed_json_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found.*instances_train2017.json"):
        read_coco_classification(coco_root(tmp_path, []), "train2017")
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{not json")
    with pytest.raises(ValueError, match="instances_val2017.json: not valid JSON"):
        read_coco_classification(tmp_path, "val2017")
