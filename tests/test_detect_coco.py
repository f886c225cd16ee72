"""Fast R-CNN detection on COCO-format data: box conversion, VOC07 and COCOeval scores, the CLI on a tiny root."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from transfer.coco import read_coco_detection, to_coco_results
from transfer.detect import open_detection_set, score_detections

from . import test_detect
from .test_detect import detect

encoder_dir = test_detect.encoder_dir  # the tiny trained encoder, a module-scoped fixture

CATEGORIES = [{"id": 5, "name": "box"}, {"id": 2, "name": "disc"}]  # classes in id order: disc, box
WIDTH, HEIGHT = 64, 48
# image id -> [(category id, [x, y, w, h], iscrowd)]
TRAIN = {1: [(5, [8, 6, 24, 20], 0)], 2: [(2, [30, 10, 20, 30], 0), (5, [2, 2, 12, 10], 0)],
         4: [(2, [10, 20, 24, 20], 0)], 6: [(5, [36, 4, 20, 20], 0), (2, [4, 26, 40, 20], 1)]}
VAL = {3: [(2, [0, 0, 16, 12], 0), (5, [30, 24, 30, 20], 0)], 7: [(5, [10, 5, 20, 15], 0), (2, [30, 20, 34, 28], 1)],
       12: []}


def write_split(root: Path, split: str, objects: dict[int, list[tuple[int, list[float], int]]]) -> Path:
    """ROOT/annotations/instances_<split>.json and a 64x48 JPEG per image with each box drawn in its class colour."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(exist_ok=True)
    images, annotations, rng = [], [], np.random.default_rng(0)
    for image_id, boxes in objects.items():
        img = Image.fromarray(rng.integers(0, 60, (HEIGHT, WIDTH, 3), dtype=np.uint8))
        for category, (x, y, w, h), crowd in boxes:
            ImageDraw.Draw(img).rectangle([x, y, x + w - 1, y + h - 1], fill=(250, 40, 40) if category == 5 else
                                          (40, 240, 60))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd})
        img.save(root / split / f"{image_id:012d}.jpg")
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": WIDTH, "height": HEIGHT})
    doc = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def test_boxes_become_one_based_inclusive_crowds_difficult_and_outside_boxes_dropped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_split(tmp_path, "val2017", {**VAL, 3: [*VAL[3], (2, [70, 10, 5, 5], 0)]})  # last: right of the image
    ids, paths, gt, classes, coco_ids, category_ids = read_coco_detection(root, "val2017")
    assert ids == ["3", "7", "12"] and coco_ids == {"3": 3, "7": 7, "12": 12}  # numeric id order
    assert classes == ["disc", "box"] and category_ids == [2, 5]
    assert paths[1] == root / "val2017" / "000000000007.jpg"
    # [x, y, w, h] -> (x + 1, y + 1, x + w, y + h); the crowd region [30, 20, 34, 28] is clipped to 64 x 48
    np.testing.assert_array_equal(gt["7"].boxes, [[11, 6, 30, 20], [31, 21, 64, 48]])
    assert gt["7"].labels.tolist() == [1, 0] and gt["7"].difficult.tolist() == [False, True]
    np.testing.assert_array_equal(gt["3"].boxes, [[1, 1, 16, 12], [31, 25, 60, 44]])
    assert gt["3"].labels.tolist() == [0, 1] and gt["12"].boxes.shape == (0, 4)
    assert "1 annotation(s) with no area inside their image dropped" in caplog.text


@pytest.mark.parametrize(("change", "message"), [
    (lambda doc: doc["annotations"][0].update(bbox=[1, 1, -3, 4]), "annotation 1: bbox must be 4 finite numbers"),
    (lambda doc: doc["annotations"][1].update(bbox=[1, 1, 3]), "annotation 2: bbox"),
    (lambda doc: doc["annotations"][0].pop("area"), "annotation 1: needs a number area"),
    (lambda doc: doc["annotations"][0].update(iscrowd=2), "annotation 1: needs .* iscrowd 0 or 1"),
    (lambda doc: doc["images"][0].pop("width"), "image 3 needs a positive width and height"),
])
def test_bad_annotations_are_refused_naming_the_file(tmp_path: Path, change, message: str) -> None:
    path = write_split(tmp_path, "val2017", VAL) / "annotations" / "instances_val2017.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=f"instances_val2017.json: {message}"):
        read_coco_detection(tmp_path, "val2017")


def ground_truth_as_detections(data, skip: tuple[str, int] | None = None) -> dict[str, list[np.ndarray]]:
    """Each image's ground-truth boxes (crowds too) as score-1 detections, per class; `skip` one (image, box)."""
    out = {}
    for i in data.ids:
        objects, keep = data.gt[i], np.ones(len(data.gt[i].labels), bool)
        if skip and skip[0] == i:
            keep[skip[1]] = False
        dets = np.concatenate([objects.boxes, np.ones((len(keep), 1))], 1)[keep]
        out[i] = [dets[objects.labels[keep] == k] for k in range(len(data.classes))]
    return out


def test_ground_truth_as_detections_scores_100_on_both_metrics(tmp_path: Path) -> None:
    data = open_detection_set(write_split(tmp_path, "val2017", VAL), "val2017", [], None, seed=0)
    assert data.kind == "coco" and data.describe(None)["kind"] == "coco"
    perfect = ground_truth_as_detections(data)
    # back to COCO: exactly the JSON's boxes
    back = {(r["image_id"], r["category_id"], tuple(r["bbox"])) for r in to_coco_results(perfect, data.coco_ids,
                                                                                            data.category_ids)}
    assert back == {(i, c, tuple(b)) for i, boxes in VAL.items() for c, b, _ in boxes}
    r = score_detections(data, perfect, 0.5)
    assert (r["map_voc07_11pt"], r["map_area"], r["coco_map"], r["coco_ap50"], r["coco_ap75"]) == \
        pytest.approx((100, 100, 100, 100, 100))
    # the box of image 7 missed: class box recalls 1 of 2 at precision 1. VOC07: 6 of 11 recall points, area 1/2;
    # COCO: 51 of its 101 recall points; class disc stays at 100
    r = score_detections(data, ground_truth_as_detections(data, skip=("7", 0)), 0.5)
    assert r["per_class"]["box"]["voc07_11pt"] == pytest.approx(100 * 6 / 11)
    assert (r["map_voc07_11pt"], r["map_area"]) == pytest.approx(((100 + 600 / 11) / 2, 75))
    assert (r["coco_map"], r["coco_ap50"], r["coco_ap75"]) == pytest.approx(((100 + 100 * 51 / 101) / 2,) * 3)


def test_a_subset_is_scored_by_cocoeval_on_its_images_only(tmp_path: Path) -> None:
    data = open_detection_set(write_split(tmp_path, "val2017", VAL), "val2017", [], 2, seed=0)
    assert data.ids == ("3", "12") and data.coco_ids == {"3": 3, "12": 12}  # image 7 (a box) left out
    r = score_detections(data, ground_truth_as_detections(data), 0.5)
    assert (r["map_area"], r["coco_map"]) == pytest.approx((100, 100))


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """Training split train2017 (4 images), test split val2017 (3 images)."""
    return write_split(write_split(tmp_path / "coco", "train2017", TRAIN), "val2017", VAL)


def test_detect_cli_trains_and_writes_both_metric_families(encoder_dir: Path, coco_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert detect(encoder_dir, coco_root, out, "--train-split", "train2017", "--test-split", "val2017",
                  "train.max_steps=2") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 2 and m["classes"] == ["disc", "box"] and m["test"]["kind"] == m["train"]["kind"] == "coco"
    assert m["test"]["n_images"] == 3 and m["train"]["n_images"] == 4
    assert all(0 <= m[k] <= 100 for k in ("map_voc07_11pt", "map_area", "coco_map", "coco_ap50", "coco_ap75"))
    assert m["results_files"] == str(out / "coco_results.json")
    results = json.loads((out / "coco_results.json").read_text())
    assert results and {r["image_id"] for r in results} <= {3, 7, 12} and {r["category_id"] for r in results} <= {2, 5}
    assert all(set(r) == {"image_id", "category_id", "bbox", "score"} and r["bbox"][2] > 0 for r in results)


def test_detect_cli_refuses_malformed_json_and_other_categories(encoder_dir: Path, coco_root: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    split = ["--train-split", "train2017", "--test-split", "val2017", "train.max_steps=2"]
    path = coco_root / "annotations" / "instances_val2017.json"
    doc = path.read_text()
    path.write_text("{not json")
    assert detect(encoder_dir, coco_root, tmp_path / "a", *split) == 2
    assert f"{path}: not valid JSON" in caplog.text and not (tmp_path / "a").exists()
    path.write_text(doc.replace('"name": "disc"', '"name": "ball"'))
    assert detect(encoder_dir, coco_root, tmp_path / "b", *split) == 2
    assert "has classes ['ball', 'box'] but" in caplog.text
    assert detect(encoder_dir, coco_root, tmp_path / "c", *split, "--classes", "disc,box") == 2
    assert "a COCO root brings its own categories" in caplog.text
