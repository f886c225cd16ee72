"""The VOC07 detection evaluation: hand-computed APs, a loop-by-loop devkit reference, files, CLI and real samples."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from pretext.cli import main as cebench_main
from transfer.detection_eval import (
    ImageObjects,
    detection_metrics,
    read_det_results,
    read_detection_annotations,
    score_detection,
    voc_detection_ap,
    write_det_results,
)
from transfer.evaluate import main
from transfer.metrics import VOC07_RECALLS

from .conftest import SHARED_DATA


def image(*objects: tuple) -> ImageObjects:
    """Ground truth from (x1, y1, x2, y2, label, difficult) rows."""
    rows = np.array(objects, dtype=np.float64).reshape(-1, 6)
    return ImageObjects(rows[:, :4], rows[:, 4].astype(np.int64), rows[:, 5].astype(bool))


def ap(gt: dict, dets: list[tuple], class_index: int = 0, iou: float = 0.5) -> dict:
    """voc_detection_ap on (image_id, score, x1, y1, x2, y2) rows, in file order."""
    ids = [d[0] for d in dets]
    table = np.array([d[1:] for d in dets], dtype=np.float64).reshape(-1, 5)
    return voc_detection_ap(gt, class_index, ids, table[:, 0], table[:, 1:], iou)


# ---------------------------------------------------------------- hand-computed cases

def test_difficult_match_is_ignored_and_not_counted() -> None:
    gt = {"a": image((1, 1, 10, 10, 0, 0), (30, 30, 50, 50, 0, 1))}  # second box difficult
    m = ap(gt, [("a", 0.9, 30, 30, 50, 50), ("a", 0.8, 1, 1, 10, 10), ("a", 0.7, 60, 60, 70, 70)])
    # ranks: ignored, TP, FP -> npos 1, tp [0 1 1], fp [0 0 1], prec [- 1 .5], rec [0 1 1]: max precision at every
    # recall threshold is 1, so both APs are 1. Counting the difficult hit as FP would give 0.5, as a positive 2/3.
    assert (m["npos"], m["n_det"], m["tp"], m["fp"]) == (1, 3, 1, 1)
    assert m["ap_11pt"] == m["ap_area"] == 1.0


def test_duplicate_is_false_positive() -> None:
    gt = {"a": image((1, 1, 10, 10, 0, 0)), "b": image((5, 5, 20, 20, 0, 0))}
    m = ap(gt, [("a", 0.9, 1, 1, 10, 10), ("a", 0.8, 1, 1, 10, 10), ("b", 0.7, 5, 5, 20, 20)])
    # TP, FP (same box again), TP: prec [1 .5 2/3], rec [.5 .5 1].
    # 11-pt: t = 0..0.5 (6 points) -> 1; t = 0.6..1 (5 points) -> 2/3: (6 + 10/3) / 11 = 28/33.
    # area: envelope [1 1 2/3 2/3]; 0.5 * 1 + 0.5 * 2/3 = 5/6.
    assert (m["tp"], m["fp"]) == (2, 1)
    assert m["ap_11pt"] == pytest.approx(28 / 33, abs=1e-12) and m["ap_area"] == pytest.approx(5 / 6, abs=1e-12)


def test_best_box_taken_is_a_duplicate_not_a_fallback() -> None:
    # The second detection overlaps box 2 by 100/120 >= 0.5 but box 1 better (IoU 1), which is already detected:
    # the devkit calls it a duplicate (FP) and never tries box 2. tp [1 1], fp [0 1], prec [1 .5], rec [.5 .5].
    # 11-pt: 6 thresholds <= 0.5 reach precision 1, 5 reach nothing: 6/11; area: 0.5 * 1.
    gt = {"a": image((1, 1, 10, 10, 0, 0), (1, 1, 10, 12, 0, 0))}
    m = ap(gt, [("a", 0.9, 1, 1, 10, 10), ("a", 0.8, 1, 1, 10, 10)])
    assert (m["npos"], m["tp"], m["fp"]) == (2, 1, 1)
    assert m["ap_11pt"] == pytest.approx(6 / 11, abs=1e-12) and m["ap_area"] == 0.5


def test_tied_scores_keep_file_order() -> None:
    gt = {"a": image((1, 1, 10, 10, 0, 0))}
    miss, hit = ("a", 0.5, 40, 40, 50, 50), ("a", 0.5, 1, 1, 10, 10)
    # Stable sort, as MATLAB's: the earlier line ranks first. FP then TP: prec [0 .5], rec [0 1] -> 0.5 both ways;
    # TP then FP: prec [1 .5], rec [1 1] -> 1.
    assert ap(gt, [miss, hit])["ap_11pt"] == ap(gt, [miss, hit])["ap_area"] == 0.5
    assert ap(gt, [hit, miss])["ap_11pt"] == ap(gt, [hit, miss])["ap_area"] == 1.0


def test_iou_exactly_at_threshold_counts_with_the_plus_one_convention() -> None:
    gt = {"a": image((1, 1, 10, 10, 0, 0))}  # 10 x 10 pixels with the +1 convention
    det = [("a", 0.9, 1, 1, 10, 20)]  # 10 x 20: intersection 100, union 200 -> IoU 0.5 exactly
    # (without +1 it would be 81 / 171 < 0.5; py-faster-rcnn's `ovmax > 0.5` would also call it a miss)
    assert ap(gt, det)["tp"] == 1 and ap(gt, det)["ap_11pt"] == 1.0
    assert ap(gt, det, iou=0.5 + 1e-9)["fp"] == 1 and ap(gt, det, iou=0.5 + 1e-9)["ap_area"] == 0.0


def test_no_ground_truth_is_nan_and_out_of_the_mean(caplog: pytest.LogCaptureFixture) -> None:
    gt = {"a": image((1, 1, 10, 10, 0, 0), (20, 20, 30, 30, 2, 0)), "b": image()}
    res = [{"image_ids": np.array(["a"]), "scores": np.array([1.0]), "boxes": np.array([[1.0, 1, 10, 10]])},
           {"image_ids": np.array(["b"]), "scores": np.array([1.0]), "boxes": np.array([[1.0, 1, 10, 10]])},
           {"image_ids": np.array([], dtype=str), "scores": np.zeros(0), "boxes": np.zeros((0, 4))}]
    m = detection_metrics(gt, ["cat", "dog", "bird"], res)
    # cat 100 (perfect), dog no ground truth -> NaN (left out), bird ground truth but no detections -> 0: mean 50.
    assert m["per_class"]["cat"]["voc07_11pt"] == 100.0 and math.isnan(m["per_class"]["dog"]["area"])
    assert m["per_class"]["bird"] == {"voc07_11pt": 0.0, "area": 0.0, "npos": 1, "n_det": 0, "tp": 0, "fp": 0}
    assert m["map_voc07_11pt"] == m["map_area"] == 50.0 and m["undefined_classes"] == ["dog"]
    assert m["n_images"] == 2 and m["iou"] == 0.5 and "no non-difficult ground truth for dog" in caplog.text


def test_bad_detections_are_errors() -> None:
    gt = {"a": image((1, 1, 10, 10, 0, 0))}
    with pytest.raises(ValueError, match="'zz'"):
        ap(gt, [("zz", 0.9, 1, 1, 10, 10)])
    with pytest.raises(ValueError, match="x2 < x1"):
        ap(gt, [("a", 0.9, 10, 1, 1, 10)])
    with pytest.raises(ValueError, match="IoU threshold"):
        ap(gt, [], iou=0.0)


# ---------------------------------------------------------------- a loop-by-loop reference (VOCevaldet.m)

def reference_ap(gt: dict, cls: int, dets: list[tuple], minoverlap: float, events: dict) -> tuple[float, float]:
    """VOCevaldet.m and VOCap.m transcribed statement by statement, with Python lists and floats."""
    objs = {i: [(list(o.boxes[j]), bool(o.difficult[j])) for j in range(len(o.labels)) if o.labels[j] == cls]
            for i, o in gt.items()}
    npos = sum(not diff for boxes in objs.values() for _, diff in boxes)
    order = sorted(range(len(dets)), key=lambda d: -dets[d][1])  # Python's sort is stable, as MATLAB's
    detected, tp, fp = set(), [], []
    for d in order:
        i, bb = dets[d][0], dets[d][2:]
        ovmax, jmax = -math.inf, -1
        for j, (bbgt, _) in enumerate(objs[i]):
            bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3])]
            iw, ih = bi[2] - bi[0] + 1, bi[3] - bi[1] + 1
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) \
                    - iw * ih
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax, jmax = ov, j
        t = f = 0
        if ovmax >= minoverlap:
            if not objs[i][jmax][1]:
                if (i, jmax) not in detected:
                    t = 1
                    detected.add((i, jmax))
                else:
                    f = 1
                    events["duplicate"] += 1
            else:
                events["ignored"] += 1
        else:
            f = 1
        tp.append(t)
        fp.append(f)
    ctp, cfp = np.cumsum(tp).tolist(), np.cumsum(fp).tolist()
    rec = [x / npos for x in ctp]
    prec = [x / (x + y) if x + y else math.nan for x, y in zip(ctp, cfp)]
    ap11 = 0.0
    for t in VOC07_RECALLS:  # MATLAB's 0:0.1:1, bit for bit
        p = [v for r, v in zip(rec, prec) if r >= t and not math.isnan(v)]  # MATLAB's max skips NaN
        ap11 += (max(p) if p else 0.0) / 11
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for k in range(len(mpre) - 2, -1, -1):
        mpre[k] = mpre[k + 1] if math.isnan(mpre[k]) else max(mpre[k], mpre[k + 1])
    area = sum((mrec[k] - mrec[k - 1]) * mpre[k] for k in range(1, len(mrec)) if mrec[k] != mrec[k - 1])
    return ap11, area


def random_scene(rng: np.random.Generator) -> tuple[dict, list[tuple]]:
    """Integer boxes (exact IoU ties), some difficult, shared boxes; detections near, on and off them."""
    gt, dets = {}, []
    for n in range(rng.integers(3, 8)):
        rows = []
        for _ in range(rng.integers(0, 6)):
            x1, y1 = rng.integers(1, 40, 2)
            rows.append((x1, y1, x1 + rng.integers(0, 25), y1 + rng.integers(0, 25), rng.integers(0, 2),
                         rng.random() < 0.25))
        if rows and rng.random() < 0.3:
            rows.append(rows[0][:5] + (False,))  # the same box twice: equal IoUs, the first must win
        gt[f"im{n}"] = image(*rows)
        for x1, y1, x2, y2, label, _ in rows:
            for _ in range(rng.integers(0, 4)):  # near-duplicates of a ground-truth box
                dx = rng.integers(-3, 4, 4)
                box = (x1 + dx[0], y1 + dx[1], max(x1 + dx[0], x2 + dx[2]), max(y1 + dx[1], y2 + dx[3]))
                dets.append((f"im{n}", round(rng.random(), 1), *map(float, box), label))
        for _ in range(rng.integers(0, 3)):  # clutter
            x1, y1 = rng.integers(1, 50, 2)
            dets.append((f"im{n}", round(rng.random(), 1), float(x1), float(y1), x1 + 10.0, y1 + 10.0,
                         rng.integers(0, 2)))
    return gt, dets


def test_matches_loop_reference_on_random_scenes() -> None:
    rng, events, compared = np.random.default_rng(7), {"duplicate": 0, "ignored": 0}, 0
    for _ in range(20):
        gt, dets = random_scene(rng)
        iou = float(rng.choice([0.3, 0.5, 0.7]))
        for cls in (0, 1):
            mine = [d[:6] for d in dets if d[6] == cls]
            got = ap(gt, mine, cls, iou)
            if got["npos"] == 0:
                assert math.isnan(got["ap_11pt"]) and math.isnan(got["ap_area"])
                continue
            want = reference_ap(gt, cls, mine, iou, events)
            assert got["ap_11pt"] == pytest.approx(want[0], abs=1e-12) and got["ap_area"] == pytest.approx(
                want[1], abs=1e-12), (got, want)
            compared += 1
    # the scenes exercised what they are there for
    assert compared >= 30 and events["duplicate"] >= 5 and events["ignored"] >= 5, (compared, events)


# ---------------------------------------------------------------- files and the CLI

def write_xml(path: Path, objects: list[tuple]) -> None:
    """A VOC annotation from (name, difficult, xmin, ymin, xmax, ymax) rows."""
    body = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
                   f"<xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>" for n, d, a, b, c, e in objects)
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename>{body}</annotation>")


def tiny_root(tmp_path: Path) -> Path:
    """Images a, b, c; classes cat and dog (a dog in a is difficult) and perfect-but-one detections in res/."""
    root = tmp_path / "voc"
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(exist_ok=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text("a\nb\nc\n")
    (root / "classes.txt").write_text("cat\ndog\n")
    write_xml(root / "Annotations" / "a.xml", [("cat", 0, 1, 1, 10, 10), ("dog", 1, 20, 20, 40, 40)])
    write_xml(root / "Annotations" / "b.xml", [("cat", 0, 5, 5, 30, 30)])
    write_xml(root / "Annotations" / "c.xml", [("dog", 0, 2, 2, 20, 20)])
    none = np.zeros((0, 5))
    write_det_results(tmp_path / "res", "test", ["cat", "dog"], {
        "a": [np.array([[1, 1, 10, 10, 0.9]]), np.array([[20, 20, 40, 40, 0.9]])],
        "b": [np.array([[5, 5, 30, 30, 0.8]]), np.array([[1, 1, 5, 5, 0.7]])],
        "c": [none, np.array([[2, 2, 20, 20, 0.6]])]})
    return root


def evaluate(root: Path, results: Path, out: Path, *extra: str) -> int:
    return main(["detection", "--voc-root", str(root), "--split", "test", "--results", str(results),
                 "--out", str(out), *extra], prog="cebench evaluate")


def test_results_files_round_trip(tmp_path: Path) -> None:
    dets = {"x": [np.array([[1.5, 2, 30.1, 40, 0.123456], [3, 3, 3, 3, -2.5]]), np.zeros((0, 5))],
            "y": [np.array([[10, 20, 30, 40, 0.5]]), np.array([[7, 8, 9, 10.2, 1.0]])]}
    paths = write_det_results(tmp_path, "val", ["cat", "tv/monitor"], dets)
    assert [p.name for p in paths] == ["comp4_det_val_cat.txt", "comp4_det_val_tv_monitor.txt"]
    assert paths[1].read_text() == "y 1.0 7.0 8.0 9.0 10.2\n"  # repr: exact, so the files re-score exactly
    cat, tv = read_det_results(tmp_path, "val", ["cat", "tv/monitor"], ids=["x", "y"])
    assert cat["image_ids"].tolist() == ["x", "x", "y"] and tv["image_ids"].tolist() == ["y"]
    np.testing.assert_array_equal(cat["scores"], [0.123456, -2.5, 0.5])
    np.testing.assert_array_equal(cat["boxes"], [[1.5, 2, 30.1, 40], [3, 3, 3, 3], [10, 20, 30, 40]])
    with pytest.raises(ValueError, match=r"comp4_det_val_cat.txt:3: image 'y' is not in the split"):
        read_det_results(tmp_path, "val", ["cat", "tv/monitor"], ids=["x"])
    with pytest.raises(ValueError, match="results file of class 'dog' not found.*comp4_det_val_dog.txt"):
        read_det_results(tmp_path, "val", ["cat", "dog", "tv/monitor"])
    with pytest.raises(ValueError, match="unknown class 'tv_monitor'"):
        read_det_results(tmp_path, "val", ["cat"])
    with pytest.raises(ValueError, match="x2 < x1"):
        write_det_results(tmp_path, "val", ["cat"], {"x": [np.array([[5, 1, 4, 2, 0.1]])]})


def test_cli_writes_metrics_in_percent(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tiny_root(tmp_path)
    assert evaluate(root, tmp_path / "res", tmp_path / "out") == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    # cat: two hits -> 100. dog: ignored (difficult), FP, TP with npos 1: prec [- 0 .5], rec [0 0 1] -> 50 both.
    assert m["per_class"]["cat"]["voc07_11pt"] == m["per_class"]["cat"]["area"] == 100.0
    assert m["per_class"]["dog"] == {"voc07_11pt": 50.0, "area": 50.0, "npos": 1, "n_det": 3, "tp": 1, "fp": 1}
    assert m["map_voc07_11pt"] == m["map_area"] == 75.0 and m["iou"] == 0.5 and m["n_images"] == 3
    assert m["task"] == "voc_detection" and m["classes"] == ["cat", "dog"] and "git_commit" in m and m["versions"]
    out = capsys.readouterr().out
    assert "| dog | 1 | 3 | 1 | 50.00 | 50.00 |" in out and "mAP: VOC07 11-pt 75.00, area 75.00" in out
    # a stricter threshold through the top-level command: the dog's hit (IoU 1) stays, so nothing changes
    assert cebench_main(["evaluate", "detection", "--voc-root", str(root), "--results", str(tmp_path / "res"),
                         "--out", str(tmp_path / "out9"), "--iou", "0.9"]) == 0
    assert json.loads((tmp_path / "out9" / "metrics.json").read_text())["iou"] == 0.9


def append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + line + "\n")


@pytest.mark.parametrize("damage, problem", [
    (lambda t: append(t / "res" / "comp4_det_test_cat.txt", "a 0.5 1 2 3"), "comp4_det_test_cat.txt:3"),
    (lambda t: append(t / "res" / "comp4_det_test_cat.txt", "b 0.5 9 1 2 3"), "comp4_det_test_cat.txt:3"),
    (lambda t: append(t / "res" / "comp4_det_test_dog.txt", "a nan 1 1 2 3"), "comp4_det_test_dog.txt:4"),
    (lambda t: (t / "res" / "comp4_det_test_dog.txt").unlink(), "comp4_det_test_dog.txt"),
    (lambda t: write_xml(t / "voc" / "Annotations" / "b.xml", [("horse", 0, 1, 1, 2, 2)]),
     "b.xml: object 1: unknown class 'horse'"),
    (lambda t: write_xml(t / "voc" / "Annotations" / "c.xml", [("dog", 0, 9, 1, 2, 2)]), "c.xml: object 1 (dog)"),
    (lambda t: (t / "voc" / "Annotations" / "c.xml").write_text("<annotation><object>"), "c.xml: malformed XML"),
])
def test_bad_input_is_one_error_and_exit_2(tmp_path: Path, caplog: pytest.LogCaptureFixture, damage,
                                           problem: str) -> None:
    root = tiny_root(tmp_path)
    damage(tmp_path)
    assert evaluate(root, tmp_path / "res", tmp_path / "out") == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and problem in errors[0], errors
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize("iou", ["0", "1.5", "x"])
def test_iou_outside_0_1_is_a_usage_error(tmp_path: Path, iou: str) -> None:
    with pytest.raises(SystemExit) as exc:
        evaluate(tiny_root(tmp_path), tmp_path / "res", tmp_path / "out", "--iou", iou)
    assert exc.value.code == 2


def test_annotation_errors_and_skipped_classes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tiny_root(tmp_path)
    ann = root / "Annotations" / "b.xml"
    ann.write_text("<annotation><object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>"
                   "</bndbox></object></annotation>")
    with pytest.raises(ValueError, match=r"b.xml: object 1 \(cat\): <ymax> is not a number"):
        read_detection_annotations(root, "test", ["cat", "dog"])
    write_xml(ann, [("cat", 0, 1, 1, 5, 5), ("horse", 0, 1, 1, 2, 2), ("horse", 1, 3, 3, 4, 4), ("dog", 0, 2, 3, 4, 5)])
    gt = read_detection_annotations(root, "test", ["cat", "dog"], unknown="skip")
    assert "dropped 2 object(s)" in caplog.text and "horse (2)" in caplog.text
    np.testing.assert_array_equal(gt["b"].boxes, [[1, 1, 5, 5], [2, 3, 4, 5]])
    assert gt["b"].labels.tolist() == [0, 1] and gt["a"].difficult.tolist() == [False, True]


# ---------------------------------------------------------------- real VOC annotations (labelme's samples)

def test_real_voc_samples_perfect_detections_score_100(tmp_path: Path) -> None:
    samples = SHARED_DATA / "voc_samples" / "bbox_detection"
    if not samples.is_dir():
        pytest.skip(f"{samples} not present")
    root = tmp_path / "voc"  # the samples lack ImageSets and name their class list class_names.txt
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").symlink_to(samples / "Annotations")
    shutil.copy(samples / "class_names.txt", root / "classes.txt")
    ids = sorted(p.stem for p in (samples / "Annotations").glob("*.xml"))
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids) + "\n")
    classes = [line for line in (root / "classes.txt").read_text().splitlines()[1:] if line]
    assert "tv/monitor" in classes and "potted plant" in classes
    gt = read_detection_annotations(root, "test", classes)
    counts = np.bincount(np.concatenate([o.labels for o in gt.values()]), minlength=len(classes))
    assert {classes[c]: int(k) for c, k in enumerate(counts) if k} == {"person": 6, "bus": 2, "car": 1}
    assert gt["2011_000003"].boxes[0].tolist() == [191.0, 107.36900369003689, 313.0, 329.36900369003695]
    perfect = {i: [np.column_stack([o.boxes[o.labels == c], np.ones((o.labels == c).sum())]) for c in range(len(classes))]
               for i, o in gt.items()}
    paths = write_det_results(tmp_path / "res", "test", classes, perfect)  # boxes rounded to 0.1 px on the way
    assert {p.name for p in paths} >= {"comp4_det_test_tv_monitor.txt", "comp4_det_test_potted_plant.txt"}
    m = score_detection(root, "test", tmp_path / "res")
    assert {n for n, v in m["per_class"].items() if v["npos"]} == {"person", "bus", "car"}
    assert all(m["per_class"][n]["voc07_11pt"] == m["per_class"][n]["area"] == 100.0 for n in ("person", "bus", "car"))
    assert m["map_voc07_11pt"] == m["map_area"] == 100.0 and len(m["undefined_classes"]) == 17
