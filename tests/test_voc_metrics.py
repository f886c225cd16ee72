"""transfer.metrics against hand-computed APs and plain-loop versions; transfer.voc readers and results files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from transfer.metrics import (classification_metrics, non_interpolated_ap, top1_accuracy, voc07_11pt_ap,
                              voc_area_ap)
from transfer.voc import (VOC_CLASSES, read_class_list, read_classification_labels, read_cls_results,
                          read_split_ids, write_cls_results)
from pretext.data.voc import _labels_from_annotations

from .conftest import SHARED_DATA

APS = (voc07_11pt_ap, voc_area_ap, non_interpolated_ap)

# ---------------------------------------------------------------- hand-computed APs


def test_hand_computed_two_positives() -> None:
    # Ranked P N P N: precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1.
    scores, labels = np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, -1, 1, -1])
    assert voc07_11pt_ap(scores, labels) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)  # t <= 0.5 -> 1, t > 0.5 -> 2/3
    assert voc_area_ap(scores, labels) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert non_interpolated_ap(scores, labels) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_interpolation_differs_from_non_interpolated() -> None:
    # Ranked P N N P P: precision at the positives 1, 1/2, 3/5; the envelope lifts the second to 3/5.
    scores, labels = np.array([5.0, 4, 3, 2, 1]), np.array([1, -1, -1, 1, 1])
    assert non_interpolated_ap(scores, labels) == pytest.approx((1 + 1 / 2 + 3 / 5) / 3)
    assert voc_area_ap(scores, labels) == pytest.approx((1 + 3 / 5 + 3 / 5) / 3)
    # recall 1/3, 1/3, 1/3, 2/3, 1: t in {0, .1, .2, .3} -> 1, t in {.4 .. 1} -> 3/5
    assert voc07_11pt_ap(scores, labels) == pytest.approx((4 * 1 + 7 * 3 / 5) / 11)


def test_difficult_images_are_neither_true_nor_false_positives() -> None:
    # A difficult image ranked first must not count as a false positive (AP would be 1/2) nor a positive.
    scores, labels = np.array([0.9, 0.8, 0.7]), np.array([0, -1, 1])
    assert [ap(scores, labels) for ap in APS] == pytest.approx([0.5, 0.5, 0.5])
    # Between two positives it changes nothing: a perfect ranking stays perfect.
    scores, labels = np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, -1])
    assert [ap(scores, labels) for ap in APS] == [1.0, 1.0, 1.0]


def test_ties_keep_image_list_order_in_devkit_metrics() -> None:
    # The devkit's stable sort: tied images stay in list order. sklearn takes a tie as one threshold.
    tied = np.array([0.5, 0.5])
    assert voc07_11pt_ap(tied, np.array([-1, 1])) == pytest.approx(0.5)
    assert voc_area_ap(tied, np.array([-1, 1])) == pytest.approx(0.5)
    assert voc07_11pt_ap(tied, np.array([1, -1])) == 1.0
    assert voc_area_ap(tied, np.array([1, -1])) == 1.0
    assert non_interpolated_ap(tied, np.array([-1, 1])) == non_interpolated_ap(tied, np.array([1, -1])) == 0.5


def test_voc07_thresholds_are_matlab_colon_values() -> None:
    # MATLAB's 0:0.1:1 holds 3*0.1 = 0.30000000000000004, so recall 3/10 = 0.3 does not reach that point.
    # Ranked PPP NNN PPPPPPP: precision 1 up to recall 0.3, then at most 10/13.
    labels = np.array([1] * 3 + [-1] * 3 + [1] * 7)
    scores = -np.arange(len(labels), dtype=float)
    assert voc07_11pt_ap(scores, labels) == pytest.approx((3 * 1 + 8 * 10 / 13) / 11)


def test_no_positives_is_nan() -> None:
    for labels in (np.array([-1, -1, 0]), np.array([0, 0]), np.zeros(0, dtype=int)):
        scores = np.linspace(0, 1, len(labels))
        assert all(np.isnan(ap(scores, labels)) for ap in APS)


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="equal length"):
        voc_area_ap(np.zeros(3), np.ones(2))
    with pytest.raises(ValueError, match="labels must be in"):
        voc07_11pt_ap(np.zeros(2), np.array([1, 2]))
    with pytest.raises(ValueError, match="finite"):
        non_interpolated_ap(np.array([np.nan, 1.0]), np.array([1, -1]))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        classification_metrics(np.zeros((2, 2)), np.ones((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="class names"):
        classification_metrics(np.zeros((2, 2)), np.ones((2, 2)), ["a"])


# ---------------------------------------------------------------- against plain loops on random inputs

MATLAB_RECALLS = [0, 0.1, 0.2, 3 * 0.1, 0.4, 0.5, 1 - 4 * 0.1, 1 - 3 * 0.1, 1 - 2 * 0.1, 1 - 0.1, 1]


def loop_curve(scores: list[float], labels: list[int]) -> tuple[list[float], list[float]]:
    """Precision and recall after each ranked image, written out; Python's sort is stable like MATLAB's."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    npos, tp, fp, precs, recs = sum(1 for v in labels if v == 1), 0, 0, [], []
    for i in order:
        tp, fp = tp + (labels[i] == 1), fp + (labels[i] == -1)
        precs.append(tp / (tp + fp) if tp + fp else 0.0)
        recs.append(tp / npos)
    return precs, recs


def loop_11pt(scores: list[float], labels: list[int]) -> float:
    precs, recs = loop_curve(scores, labels)
    return sum(max([p for p, r in zip(precs, recs) if r >= t], default=0.0) for t in MATLAB_RECALLS) / 11


def loop_area(scores: list[float], labels: list[int]) -> float:
    # Each positive adds 1/npos of recall at the best precision reached at that recall or beyond.
    precs, recs = loop_curve(scores, labels)
    npos = sum(1 for v in labels if v == 1)
    return sum(max(p for p, r in zip(precs, recs) if r >= k / npos - 1e-12) for k in range(1, npos + 1)) / npos


def loop_non_interpolated(scores: list[float], labels: list[int]) -> float:
    # sklearn's definition: one step per distinct score (ties together), difficult images dropped.
    kept = [(s, v) for s, v in zip(scores, labels) if v != 0]
    npos, ap, last_recall = sum(1 for _, v in kept if v == 1), 0.0, 0.0
    for threshold in sorted({s for s, _ in kept}, reverse=True):
        above = [v for s, v in kept if s >= threshold]
        recall = sum(1 for v in above if v == 1) / npos
        ap += (recall - last_recall) * sum(1 for v in above if v == 1) / len(above)
        last_recall = recall
    return ap


ranking = st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 6).map(lambda k: k / 3), min_size=n, max_size=n),  # few values: many ties
    st.lists(st.sampled_from([-1, 0, 1]), min_size=n, max_size=n)))


@settings(max_examples=300, deadline=None)
@given(ranking)
def test_aps_equal_plain_loops(case: tuple[list[float], list[int]]) -> None:
    scores, labels = case
    got = [ap(np.array(scores), np.array(labels)) for ap in APS]
    if 1 not in labels:
        assert all(np.isnan(got))
        return
    want = [loop_11pt(scores, labels), loop_area(scores, labels), loop_non_interpolated(scores, labels)]
    assert got == pytest.approx(want, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 60), st.integers(0, 2**32 - 1))
def test_sklearn_agreement_and_envelope_bound(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores, labels = rng.normal(size=n), rng.choice([-1, 0, 1], size=n)
    if not (labels == 1).any():
        return
    keep = labels != 0
    want = average_precision_score(labels[keep] == 1, scores[keep])
    assert non_interpolated_ap(scores, labels) == pytest.approx(want, abs=1e-12)
    # Without ties the envelope lies above every precision, so area AP >= non-interpolated AP.
    assert voc_area_ap(scores, labels) >= non_interpolated_ap(scores, labels) - 1e-12


def test_classification_metrics_means_and_sklearn_macro() -> None:
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((50, 4)) < 0.3, 1, -1)
    scores = labels + rng.normal(0, 1.5, labels.shape)
    m = classification_metrics(scores, labels, ["a", "b", "c", "d"])
    assert m["map_sklearn"] == pytest.approx(100 * average_precision_score(labels == 1, scores, average="macro"))
    assert m["map_area"] == pytest.approx(np.mean([m["per_class"][k]["area"] for k in "abcd"]))
    assert m["per_class"]["b"]["voc07_11pt"] == pytest.approx(100 * voc07_11pt_ap(scores[:, 1], labels[:, 1]))
    assert m["undefined_classes"] == []


def test_class_without_positives_warns_and_is_left_out_of_the_mean() -> None:
    labels = np.array([[1, -1], [-1, 0], [1, -1]])
    scores = np.array([[0.9, 0.1], [0.1, 0.5], [0.8, 0.3]])
    with pytest.warns(UserWarning, match="class 'dog' has no positive images"):
        m = classification_metrics(scores, labels, ["cat", "dog"])
    assert np.isnan(m["per_class"]["dog"]["area"]) and m["undefined_classes"] == ["dog"]
    assert m["map_area"] == m["map_voc07_11pt"] == m["map_sklearn"] == 100.0


def test_top1_accuracy() -> None:
    scores = np.array([[0.1, 0.9, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    assert top1_accuracy(scores, np.array([1, 0, 2, 1])) == 75.0  # row 2: a tie goes to the first class
    with pytest.raises(ValueError, match="targets must be integer class indices"):
        top1_accuracy(scores, np.array([1, 0, 3, 1]))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        top1_accuracy(scores, np.array([1, 0]))


# ---------------------------------------------------------------- class lists and split ids


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_class_list_sources(tmp_path: Path) -> None:
    assert read_class_list(tmp_path) == list(VOC_CLASSES)
    assert read_class_list(tmp_path, ["a", "b"]) == ["a", "b"]
    write(tmp_path / "classes.txt", "background\ncat\n\n dog \n")
    assert read_class_list(tmp_path) == ["cat", "dog"] == read_class_list(tmp_path, ["cat", "dog"])
    with pytest.raises(ValueError, match="--classes gave"):
        read_class_list(tmp_path, ["cat"])


@pytest.mark.parametrize("text, problem", [("cat\ndog\ncat\n", "duplicates 'cat'"), ("\n\n", "no class names"),
                                           ("background\n", "no class names"), ("a b\na_b\n", "duplicates 'a b'")])
def test_bad_class_files(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path / "classes.txt", text)
    with pytest.raises(ValueError, match=problem) as exc:
        read_class_list(tmp_path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("text, problem", [("a\nb\na\n", "duplicate image id 'a'"), ("a\n../b\n", "invalid image id"),
                                           ("/etc/passwd\n", "invalid image id"), ("a\\b\n", "invalid image id"),
                                           ("\n", "no image ids")])
def test_bad_split_lists(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path / "ImageSets" / "Main" / "test.txt", text)
    with pytest.raises(ValueError, match=problem) as exc:
        read_split_ids(tmp_path, "test")
    assert str(path) in str(exc.value)


def test_split_list_missing_and_split_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split list not found.*val.txt"):
        read_split_ids(tmp_path, "val")
    with pytest.raises(ValueError, match="invalid split name"):
        read_split_ids(tmp_path, "../test")


# ---------------------------------------------------------------- labels: per-class lists and XML


def test_demo_lists_and_annotations_agree(demo_root: Path) -> None:
    classes, seen = read_class_list(demo_root), set()
    for split in ("train", "val", "trainval", "test"):
        ids, labels = read_classification_labels(demo_root, split, classes)
        assert labels.dtype == np.int8 and labels.shape == (len(ids), len(classes))
        assert np.array_equal(labels, _labels_from_annotations(demo_root, ids, classes))
        seen |= set(np.unique(labels).tolist())
    assert seen == {-1, 0, 1}  # difficult-only images included


def tiny_root(tmp_path: Path, lists: bool = True, xml: bool = True) -> Path:
    """Two images, classes cat and dog: a is a cat with a difficult dog, b has a dog."""
    root = tmp_path / "voc"
    write(root / "ImageSets" / "Main" / "test.txt", "a\nb\n")
    if lists:
        write(root / "ImageSets" / "Main" / "cat_test.txt", "a  1\nb -1\n")
        write(root / "ImageSets" / "Main" / "dog_test.txt", "a  0\nb  1\n")
    if xml:
        obj = "<object><name>{}</name><difficult>{}</difficult></object>"
        write(root / "Annotations" / "a.xml", f"<annotation>{obj.format('cat', 0)}{obj.format('dog', 1)}</annotation>")
        write(root / "Annotations" / "b.xml", f"<annotation>{obj.format('dog', 0)}{obj.format('dog', 1)}</annotation>")
    return root


def test_tiny_root_both_sources(tmp_path: Path) -> None:
    want = np.array([[1, 0], [-1, 1]])
    for lists in (True, False):
        ids, labels = read_classification_labels(tiny_root(tmp_path, lists=lists), "test", ["cat", "dog"])
        assert ids == ["a", "b"] and np.array_equal(labels, want)
        shutil.rmtree(tmp_path / "voc")


def test_partial_lists_fall_back_to_annotations_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tiny_root(tmp_path)
    (root / "ImageSets" / "Main" / "dog_test.txt").unlink()
    _, labels = read_classification_labels(root, "test", ["cat", "dog"])
    assert np.array_equal(labels, [[1, 0], [-1, 1]])
    assert "1 of 2 label lists missing" in caplog.text and "dog_test.txt" in caplog.text
    shutil.rmtree(root / "Annotations")
    with pytest.raises(ValueError, match="label list not found: .*dog_test.txt"):
        read_classification_labels(root, "test", ["cat", "dog"])


@pytest.mark.parametrize("text, problem", [
    ("a 1\nc -1\n", r"cat_test.txt:2: image 'c' is not in the split"),
    ("a 1\na -1\n", r"cat_test.txt:2: duplicate image 'a'"),
    ("a 1\n", r"cat_test.txt: 1 image\(s\) of the split missing, first 'b'"),
    ("a 1 x\nb -1\n", r"cat_test.txt:1: expected '<image_id> <value>'"),
    ("a 2\nb -1\n", r"cat_test.txt:1: label must be -1, 0 or 1, got '2'"),
    ("a yes\nb -1\n", r"cat_test.txt:1: label must be -1, 0 or 1"),
])
def test_bad_label_lists(tmp_path: Path, text: str, problem: str) -> None:
    root = tiny_root(tmp_path)
    write(root / "ImageSets" / "Main" / "cat_test.txt", text)
    with pytest.raises(ValueError, match=problem):
        read_classification_labels(root, "test", ["cat", "dog"])


@pytest.mark.parametrize("text, problem", [
    (None, "annotation not found: .*b.xml"),
    ("<annotation><object>", r"b.xml: malformed XML"),
    ("<html></html>", r"b.xml: root element is <html>"),
    ("<annotation><object><name>horse</name></object></annotation>", r"b.xml: unknown class 'horse'"),
    ("<annotation><object><difficult>0</difficult></object></annotation>", r"b.xml: object 1 has no <name>"),
    ("<annotation><object><name>dog</name><difficult>2</difficult></object></annotation>", "must be 0 or 1"),
])
def test_bad_annotations(tmp_path: Path, text: str | None, problem: str) -> None:
    root = tiny_root(tmp_path, lists=False)
    path = root / "Annotations" / "b.xml"
    path.unlink() if text is None else path.write_text(text)
    with pytest.raises(ValueError, match=problem):
        read_classification_labels(root, "test", ["cat", "dog"])


VOC_SAMPLES = SHARED_DATA / "voc_samples" / "bbox_detection"


@pytest.fixture
def voc_samples_root(tmp_path: Path) -> Path:
    """The real VOC samples (read-only, linked) with a split list and their class list as classes.txt."""
    if not VOC_SAMPLES.is_dir():
        pytest.skip(f"{VOC_SAMPLES} not present")
    root = tmp_path / "samples"
    write(root / "ImageSets" / "Main" / "test.txt", "2011_000003\n2011_000006\n2011_000025\n")
    (root / "Annotations").symlink_to(VOC_SAMPLES / "Annotations", target_is_directory=True)
    shutil.copy(VOC_SAMPLES / "class_names.txt", root / "classes.txt")
    return root


def test_real_voc_samples(voc_samples_root: Path, tmp_path: Path) -> None:
    classes = read_class_list(voc_samples_root)  # `_background_` dropped; 'potted plant', 'tv/monitor' kept
    assert len(classes) == 20 and "potted plant" in classes and classes[-1] == "tv/monitor"
    ids, labels = read_classification_labels(voc_samples_root, "test", classes)  # empty <difficult/> -> 0
    present = {(ids[i], classes[c]) for i, c in zip(*np.nonzero(labels == 1))}
    assert present == {("2011_000003", "person"), ("2011_000006", "person"), ("2011_000025", "bus"),
                       ("2011_000025", "car")}
    assert (labels[labels != 1] == -1).all()
    scores = np.random.default_rng(0).normal(size=labels.shape)
    write_cls_results(tmp_path / "res", "test", classes, ids, scores)
    assert (tmp_path / "res" / "comp1_cls_test_tv_monitor.txt").is_file()
    assert (tmp_path / "res" / "comp1_cls_test_potted_plant.txt").is_file()
    assert np.array_equal(read_cls_results(tmp_path / "res", "test", classes, ids), scores)


# ---------------------------------------------------------------- devkit results files

IDS, CLASSES = ["000001", "000002", "000003"], ["cat", "dog"]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=6, max_size=6))
def test_results_round_trip_is_exact(tmp_path_factory: pytest.TempPathFactory, values: list[float]) -> None:
    out = tmp_path_factory.mktemp("res")
    scores = np.array(values).reshape(3, 2)
    paths = write_cls_results(out, "test", CLASSES, IDS, scores)
    assert [p.name for p in paths] == ["comp1_cls_test_cat.txt", "comp1_cls_test_dog.txt"]
    assert np.array_equal(read_cls_results(out, "test", CLASSES, IDS), scores)


@pytest.mark.parametrize("dog_text, problem", [
    (None, r"results file of class 'dog' not found: .*comp1_cls_test_dog.txt"),
    ("000001 0.5\n000004 0.1\n", r"comp1_cls_test_dog.txt:2: image '000004' is not in the split"),
    ("000001 0.5\n000002 0.1\n000001 0.2\n", r"comp1_cls_test_dog.txt:3: duplicate image '000001'"),
    ("000001 0.5\n000003 0.1\n", r"comp1_cls_test_dog.txt: 1 image\(s\) of the split missing, first '000002'"),
    ("000001 0.5\n000002\n", r"comp1_cls_test_dog.txt:2: expected '<image_id> <value>', got '000002'"),
    ("000001 high\n", r"comp1_cls_test_dog.txt:1: score is not a number: 'high'"),
    ("000001 nan\n", r"comp1_cls_test_dog.txt:1: score must be finite, got 'nan'"),
    ("000001 -inf\n", r"comp1_cls_test_dog.txt:1: score must be finite"),
])
def test_bad_results_files(tmp_path: Path, dog_text: str | None, problem: str) -> None:
    write_cls_results(tmp_path, "test", CLASSES, IDS, np.zeros((3, 2)))
    dog = tmp_path / "comp1_cls_test_dog.txt"
    dog.unlink() if dog_text is None else dog.write_text(dog_text)
    with pytest.raises(ValueError, match=problem):
        read_cls_results(tmp_path, "test", CLASSES, IDS)


def test_results_for_unknown_class_or_missing_dir(tmp_path: Path) -> None:
    write_cls_results(tmp_path, "test", CLASSES, IDS, np.zeros((3, 2)))
    write_cls_results(tmp_path, "val", ["horse"], IDS, np.zeros((3, 1)))  # another split: not this one's business
    assert read_cls_results(tmp_path, "test", CLASSES, IDS).shape == (3, 2)
    write_cls_results(tmp_path, "test", ["horse"], IDS, np.zeros((3, 1)))
    with pytest.raises(ValueError, match=r"comp1_cls_test_horse.txt: results for unknown class 'horse'"):
        read_cls_results(tmp_path, "test", CLASSES, IDS)
    with pytest.raises(ValueError, match="results directory not found"):
        read_cls_results(tmp_path / "nope", "test", CLASSES, IDS)


def test_write_results_validates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="finite"):
        write_cls_results(tmp_path, "test", CLASSES, IDS, np.full((3, 2), np.inf))
    with pytest.raises(ValueError, match=r"\(N, C\) = \(3, 2\)"):
        write_cls_results(tmp_path, "test", CLASSES, IDS, np.zeros((2, 3)))
