"""`cebench evaluate classification` end to end on generated demo data and on a tiny hand-written root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pretext.cli import main as cebench_main
from transfer.evaluate import main
from transfer.voc import read_class_list, read_classification_labels, write_cls_results


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160 demo images: 40 in test, 120 in trainval."""
    from pretext.data.demo import make_demo_data

    root = tmp_path_factory.mktemp("demo160")
    make_demo_data(root, num_images=160, seed=0, workers=1)
    return root


def score_with(root: Path, split: str, results: Path, make_scores) -> np.ndarray:
    """Write results files with scores = make_scores(labels); returns the (N, C) labels."""
    classes = read_class_list(root)
    ids, labels = read_classification_labels(root, split, classes)
    write_cls_results(results, split, classes, ids, make_scores(labels))
    return labels


def evaluate(root: Path, split: str, results: Path, out: Path, *extra: str) -> int:
    return main(["classification", "--voc-root", str(root), "--split", split, "--results", str(results),
                 "--out", str(out), *extra], prog="cebench evaluate")


def test_perfect_ranking_is_100(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    labels = score_with(demo, "test", tmp_path / "res", lambda y: y.astype(float))  # difficult between the two
    assert evaluate(demo, "test", tmp_path / "res", tmp_path / "out") == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["map_voc07_11pt"] == m["map_area"] == m["map_sklearn"] == 100.0
    assert all(v == 100.0 for aps in m["per_class"].values() for v in aps.values())
    assert m["split"] == "test" and m["n_images"] == len(labels) == 40 and m["classes"] == read_class_list(demo)
    assert list(m["positives"].values()) == (labels == 1).sum(axis=0).tolist()
    assert list(m["difficult_only"].values()) == (labels == 0).sum(axis=0).tolist()
    assert m["versions"]["scikit-learn"] and "git_commit" in m
    table = capsys.readouterr().out
    assert "| circle |" in table and "| **mean** |" in table and "metrics.json" in table


def test_noisy_truth_scores_high_random_scores_near_positive_rate(demo: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = score_with(demo, "trainval", tmp_path / "noisy", lambda y: y + rng.normal(0, 0.5, y.shape))
    score_with(demo, "trainval", tmp_path / "random", lambda y: rng.random(y.shape))
    for name in ("noisy", "random"):
        assert evaluate(demo, "trainval", tmp_path / name, tmp_path / f"out_{name}") == 0
    noisy, chance = (json.loads((tmp_path / f"out_{n}" / "metrics.json").read_text()) for n in ("noisy", "random"))
    rate = 100 * np.mean((labels == 1).sum(axis=0) / (labels != 0).sum(axis=0))  # difficult images are ignored
    assert min(noisy["map_voc07_11pt"], noisy["map_area"], noisy["map_sklearn"]) > 90
    for key in ("map_voc07_11pt", "map_area", "map_sklearn"):
        # A random ranking's AP exceeds the positive rate a little with few positives (more when interpolated).
        assert rate - 5 < chance[key] < rate + 15, (key, chance[key], rate)


def tiny_root(tmp_path: Path) -> Path:
    """No classes.txt; classes cat and dog, dog never present."""
    root = tmp_path / "voc"
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text("a\nb\nc\n")
    (root / "ImageSets" / "Main" / "cat_test.txt").write_text("a 1\nb -1\nc 1\n")
    (root / "ImageSets" / "Main" / "dog_test.txt").write_text("a -1\nb 0\nc -1\n")
    write_cls_results(tmp_path / "res", "test", ["cat", "dog"], ["a", "b", "c"], [[0.9, 0.1], [0.2, 0.5], [0.3, 0.3]])
    return root


def test_classes_option_and_class_without_positives(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                    capsys: pytest.CaptureFixture) -> None:
    root = tiny_root(tmp_path)
    assert evaluate(root, "test", tmp_path / "res", tmp_path / "out", "--classes", "cat,dog") == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())  # strict JSON: NaN written as null
    assert m["per_class"]["dog"] == {"voc07_11pt": None, "area": None, "sklearn": None}
    assert m["undefined_classes"] == ["dog"] and m["map_area"] == 100.0
    assert "class 'dog' has no positive images" in caplog.text
    assert "| dog | 0 | n/a | n/a | n/a |" in capsys.readouterr().out
    # without --classes the root means the 20 VOC classes, whose lists it lacks
    assert evaluate(root, "test", tmp_path / "res", tmp_path / "out2") == 2
    assert "label list not found" in caplog.text and "aeroplane_test.txt" in caplog.text


def test_bad_input_is_one_error_and_exit_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tiny_root(tmp_path)
    cases = [(lambda: (tmp_path / "res" / "comp1_cls_test_dog.txt").unlink(), "results file of class 'dog' not found"),
             (lambda: (tmp_path / "res" / "comp1_cls_test_dog.txt").write_text("a 1\nb 2\nb 3\nc 4\n"),
              "comp1_cls_test_dog.txt:3: duplicate image 'b'"),
             (lambda: (tmp_path / "res" / "comp1_cls_test_bird.txt").write_text("a 1\n"), "unknown class 'bird'")]
    for damage, problem in cases:
        tiny_root(tmp_path)  # fresh results files
        damage()
        caplog.clear()
        assert evaluate(root, "test", tmp_path / "res", tmp_path / "out", "--classes", "cat,dog") == 2
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and problem.replace("'", "") in errors[0].getMessage().replace("'", "")
        (tmp_path / "res" / "comp1_cls_test_bird.txt").unlink(missing_ok=True)
    assert evaluate(tmp_path / "nowhere", "test", tmp_path / "res", tmp_path / "out", "--classes", "cat") == 2
    assert "split list not found" in caplog.text
    with pytest.raises(SystemExit) as exc:
        evaluate(root, "test", tmp_path / "res", tmp_path / "out", "--classes", "cat,,dog")
    assert exc.value.code == 2


def test_cebench_dispatch_and_python_m(tmp_path: Path) -> None:
    root = tiny_root(tmp_path)
    args = ["classification", "--voc-root", str(root), "--split", "test", "--results", str(tmp_path / "res"),
            "--classes", "cat,dog"]
    assert cebench_main(["evaluate", *args, "--out", str(tmp_path / "a")]) == 0
    (tmp_path / "res" / "comp1_cls_test_cat.txt").unlink()
    done = subprocess.run([sys.executable, "-m", "transfer.evaluate", *args, "--out", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=120)
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(errors) == 1 and "comp1_cls_test_cat.txt" in errors[0], done.stderr
