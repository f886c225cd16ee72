"""Tests for the procedurally drawn VOC-layout demo dataset (pretext.data.demo)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretext.data.demo import DEMO_CLASSES, MARKER_NAME, SPLITS, ensure_demo_data, main, make_demo_data


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, num_images=60, seed=5, workers=2)
    return root


def read_ids(path: Path) -> list[str]:
    return path.read_text().split()


def all_ids(root: Path) -> list[str]:
    return read_ids(root / "ImageSets/Main/trainval.txt") + read_ids(root / "ImageSets/Main/test.txt")


def read_objects(root: Path, image_id: str) -> tuple[tuple[int, int], list[dict]]:
    """(width, height) and the objects of one annotation, boxes as ints."""
    tree = ET.parse(root / "Annotations" / f"{image_id}.xml").getroot()
    size = (int(tree.findtext("size/width")), int(tree.findtext("size/height")))
    objects = [
        {
            "name": obj.findtext("name"),
            "difficult": int(obj.findtext("difficult")),
            "truncated": int(obj.findtext("truncated")),
            "box": [int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")],
        }
        for obj in tree.findall("object")
    ]
    return size, objects


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_complete_and_splits_partition_the_ids(demo: Path) -> None:
    lists = {s: read_ids(demo / "ImageSets/Main" / f"{s}.txt") for s in SPLITS}
    train, val, test = set(lists["train"]), set(lists["val"]), set(lists["test"])
    assert not (train & val or train & test or val & test)
    assert train | val | test == {f"{i:06d}" for i in range(1, 61)}
    assert sorted(lists["trainval"]) == sorted(train | val)
    assert (len(train), len(val), len(test)) == (30, 15, 15)
    for split in SPLITS:
        assert read_ids(demo / "ImageSets/Segmentation" / f"{split}.txt") == lists[split]
    for image_id in all_ids(demo):
        for sub, ext in (("JPEGImages", "jpg"), ("Annotations", "xml"),
                         ("SegmentationClass", "png"), ("SegmentationObject", "png")):
            assert (demo / sub / f"{image_id}.{ext}").is_file(), (sub, image_id)
    assert (demo / "classes.txt").read_text().splitlines() == ["background", *DEMO_CLASSES]
    assert (demo / MARKER_NAME).is_file()


def test_same_seed_is_byte_identical_for_any_worker_count_and_other_seeds_differ(tmp_path: Path) -> None:
    make_demo_data(tmp_path / "a", num_images=24, seed=3, workers=1)
    make_demo_data(tmp_path / "b", num_images=24, seed=3, workers=2)
    make_demo_data(tmp_path / "c", num_images=24, seed=4, workers=2)
    a, b, c = (tree_hashes(tmp_path / n) for n in "abc")
    assert a == b
    assert len(a) == 4 * 24 + 4 * 2 + 4 * len(DEMO_CLASSES) + 2  # images, split lists, class lists, classes, marker
    assert sum(a[k] != c.get(k) for k in a if k.startswith("JPEGImages")) == 24


def test_annotations_are_valid_voc(demo: Path) -> None:
    for image_id in all_ids(demo):
        (width, height), objects = read_objects(demo, image_id)
        assert Image.open(demo / "JPEGImages" / f"{image_id}.jpg").size == (width, height)
        assert 112 <= width <= 176 and 112 <= height <= 176
        assert 1 <= len(objects) <= 5
        for obj in objects:
            xmin, ymin, xmax, ymax = obj["box"]
            assert obj["name"] in DEMO_CLASSES
            assert 1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height
            assert obj["difficult"] in (0, 1) and obj["truncated"] in (0, 1)


def test_segmentation_masks_agree_with_annotations(demo: Path) -> None:
    for image_id in all_ids(demo):
        (width, height), objects = read_objects(demo, image_id)
        cls_png = Image.open(demo / "SegmentationClass" / f"{image_id}.png")
        obj_png = Image.open(demo / "SegmentationObject" / f"{image_id}.png")
        assert cls_png.mode == obj_png.mode == "P"
        assert cls_png.size == obj_png.size == (width, height)
        assert cls_png.getpalette()[3 * 255:] == [224, 224, 192]
        assert cls_png.getpalette()[3:6] == [128, 0, 0]
        cls_map, obj_map = np.array(cls_png), np.array(obj_png)
        assert set(np.unique(cls_map)) <= set(range(len(DEMO_CLASSES) + 1)) | {255}
        assert set(np.unique(obj_map)) <= set(range(len(objects) + 1)) | {255}
        assert np.array_equal(cls_map == 255, obj_map == 255) and (cls_map == 255).any()
        for k, obj in enumerate(objects, start=1):
            ys, xs = np.nonzero(obj_map == k)
            xmin, ymin, xmax, ymax = obj["box"]
            assert len(xs) == 0 or (xmin <= xs.min() + 1 and xs.max() + 1 <= xmax
                                    and ymin <= ys.min() + 1 and ys.max() + 1 <= ymax)
            assert np.all(cls_map[ys, xs] == DEMO_CLASSES.index(obj["name"]) + 1)


def test_per_class_lists_follow_voc_labels(demo: Path) -> None:
    objects = {i: read_objects(demo, i)[1] for i in all_ids(demo)}
    for split in SPLITS:
        ids = read_ids(demo / "ImageSets/Main" / f"{split}.txt")
        for name in DEMO_CLASSES:
            lines = (demo / "ImageSets/Main" / f"{name}_{split}.txt").read_text().splitlines()
            assert [line.split()[0] for line in lines] == ids
            for line in lines:
                image_id, label = line[:6], line[6:]
                assert len(label) == 3 and label[0] == " "
                flags = [o["difficult"] for o in objects[image_id] if o["name"] == name]
                expected = -1 if not flags else (0 if all(flags) else 1)
                assert int(label) == expected, (name, split, image_id)


def test_generator_makes_difficult_and_truncated_objects(demo: Path) -> None:
    objects = [o for i in all_ids(demo) for o in read_objects(demo, i)[1]]
    assert 0 < sum(o["difficult"] for o in objects) < len(objects) / 2
    assert 0 < sum(o["truncated"] for o in objects) < len(objects)
    assert len({o["name"] for o in objects}) == len(DEMO_CLASSES)


def test_ensure_demo_data_reuses_a_complete_copy_and_regenerates_otherwise(tmp_path: Path) -> None:
    root = tmp_path / "d"
    assert ensure_demo_data(root, num_images=8, seed=1) == root
    jpeg = root / "JPEGImages" / "000001.jpg"
    stamp = jpeg.stat().st_mtime_ns
    ensure_demo_data(root, num_images=8, seed=1)
    assert jpeg.stat().st_mtime_ns == stamp
    (root / MARKER_NAME).unlink()
    ensure_demo_data(root, num_images=8, seed=1)
    assert jpeg.stat().st_mtime_ns != stamp and (root / MARKER_NAME).is_file()
    ensure_demo_data(root, num_images=10, seed=1)
    assert len(read_ids(root / "ImageSets/Main/trainval.txt")) + len(read_ids(root / "ImageSets/Main/test.txt")) == 10


def test_concurrent_first_use_generates_once(tmp_path: Path) -> None:
    """Two commands starting on a fresh machine at once: one generates, the other waits and reuses."""
    import subprocess
    import sys

    root = tmp_path / "d"
    code = ("import sys; from pathlib import Path; from pretext.data.demo import _ensure; "
            "print(_ensure(Path(sys.argv[1]), 8, 1))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = sorted(p.communicate(timeout=300)[0].strip() for p in procs)
    assert outs == ["False", "True"] and all(p.returncode == 0 for p in procs)
    assert json.loads((root / MARKER_NAME).read_text())["num_images"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.lock", "d"]  # no temporary folder left


def test_a_generation_killed_with_sigkill_is_redone_on_next_use(tmp_path: Path) -> None:
    """kill -9 in the middle of a first use: nothing at the root looks complete, the next use generates the data
    afresh (byte-identical to an uninterrupted run) and removes the killed process's temporary folder."""
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "d"
    code = "import sys; from pretext.data.demo import ensure_demo_data; ensure_demo_data(sys.argv[1], 600, 3)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)])
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".d.tmp-*/JPEGImages/*.jpg")) and proc.poll() is None:
        assert time.monotonic() < deadline, "the generation wrote no image"
        time.sleep(0.02)
    assert proc.poll() is None, "the generation finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (root / MARKER_NAME).exists() and list(tmp_path.glob(".d.tmp-*"))  # half a copy, out of sight
    ensure_demo_data(root, num_images=8, seed=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.lock", "d"]  # the killed folder is gone
    fresh = tmp_path / "fresh"
    ensure_demo_data(fresh, num_images=8, seed=3)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert all((root / f).read_bytes() == (fresh / f).read_bytes() for f in files)


def test_a_second_command_waits_for_the_lock(tmp_path: Path) -> None:
    """While another process holds the lock, a command needing the data waits; then it generates (the holder
    made nothing here)."""
    import subprocess
    import sys
    import time

    from pretext.data.demo import _locked

    root = tmp_path / "d"
    code = ("import sys; from pathlib import Path; from pretext.data.demo import _ensure; "
            "print(_ensure(Path(sys.argv[1]), 8, 1))")
    with _locked(tmp_path / ".d.lock"):
        proc = subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True)
        time.sleep(3.0)  # ample for an 8-image generation that did not wait
        assert proc.poll() is None and not root.exists()
    assert proc.communicate(timeout=300)[0].strip() == "True" and (root / MARKER_NAME).is_file()


def test_a_folder_of_other_files_is_never_replaced(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "thesis.tex").write_text("keep me")
    with pytest.raises(ValueError, match="holds other files"):
        ensure_demo_data(root, num_images=8, seed=1)
    assert sorted(p.name for p in root.iterdir()) == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mine.lock", "mine"]


def test_a_failed_generation_leaves_nothing_that_looks_complete(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import pretext.data.demo as demo

    root = tmp_path / "d"
    ensure_demo_data(root, num_images=8, seed=1)
    stamp = (root / MARKER_NAME).read_text()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process were stopped while writing the split lists

    monkeypatch.setattr(demo, "_write_image_sets", killed)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_data(root, num_images=10, seed=1)
    # the complete 8-image copy is untouched, and no partial 10-image copy is anywhere
    assert (root / MARKER_NAME).read_text() == stamp and len(list((root / "JPEGImages").iterdir())) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.lock", "d"]
    shutil.rmtree(root)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_data(root, num_images=8, seed=1)
    assert not root.exists()


def test_invalid_arguments_are_rejected(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(ValueError, match="file"):
        make_demo_data(not_a_dir, num_images=8)
    with pytest.raises(ValueError, match="num_images"):
        make_demo_data(tmp_path / "d", num_images=3)


def test_cli_writes_the_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "d"
    assert main([str(root), "--num-images", "8", "--seed", "3", "--workers", "1"]) == 0
    assert "8 images" in capsys.readouterr().out
    assert len(list((root / "JPEGImages").glob("*.jpg"))) == 8
    assert (root / MARKER_NAME).is_file()


def colour_histogram(image: Image.Image) -> np.ndarray:
    """Normalised 4x4x4-bin RGB histogram: blind to shape, sensitive to class-coloured objects."""
    q = (np.asarray(image) // 64).reshape(-1, 3).astype(np.int64)
    counts = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64)
    return counts / counts.sum()


def linear_probe_map(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Test mAP of per-class (one-vs-rest) logistic regressions on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    aps = []
    for c in range(y_train.shape[1]):
        model = LogisticRegression(C=0.1, solver="liblinear").fit((x_train - mean) / std, y_train[:, c])
        aps.append(average_precision_score(y_test[:, c], model.decision_function((x_test - mean) / std)))
    return float(np.mean(aps))


def test_colour_and_raw_pixels_do_not_solve_the_classification_task(tmp_path: Path) -> None:
    """Colour and texture carry no class: linear models on raw 24x24 pixels or colour histograms stay near chance."""
    root = tmp_path / "d"
    make_demo_data(root, num_images=400, seed=11, workers=2)

    def load(split: str, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids = read_ids(root / "ImageSets/Main" / f"{split}.txt")[:limit]
        images = [Image.open(root / "JPEGImages" / f"{i}.jpg") for i in ids]
        pixels = np.stack([np.asarray(im.resize((24, 24)), np.float32).ravel() / 255.0 for im in images])
        names = [{o["name"] for o in read_objects(root, i)[1]} for i in ids]
        labels = np.array([[c in present for c in DEMO_CLASSES] for present in names])
        return pixels, np.stack([colour_histogram(im) for im in images]), labels

    (px_train, hist_train, y_train), (px_test, hist_test, y_test) = load("trainval", 300), load("test", 100)
    pixel_map = linear_probe_map(px_train, y_train, px_test, y_test)
    hist_map = linear_probe_map(hist_train, y_train, hist_test, y_test)
    print(f"linear probe mAP: raw pixels {pixel_map:.3f}, colour histogram {hist_map:.3f}, chance {y_test.mean():.3f}")
    assert pixel_map < 0.75, f"raw-pixel mAP {pixel_map:.3f}: the task is linearly solvable from pixels"
    # Measured: a class-dependent object colour lifts this to ~0.5; shape-only data gives 0.34-0.38 (chance ~0.32).
    assert hist_map < 0.45, f"colour-histogram mAP {hist_map:.3f}: object colour leaks the class"


def block_gray(path: Path, block: int = 4) -> np.ndarray:
    """Grayscale image averaged over `block` x `block` cells: pixel noise averages out, texture does not."""
    gray = np.asarray(Image.open(path).convert("L"), np.float32)
    h, w = gray.shape[0] // block * block, gray.shape[1] // block * block
    return gray[:h, :w].reshape(h // block, block, w // block, block).mean(axis=(1, 3))


def test_sky_is_smoother_than_the_ground(demo: Path) -> None:
    """The top fifth of every image is sky and the bottom fifth ground: texture energy must differ (old scenes: ~1)."""
    top, bottom = [], []
    for image_id in all_ids(demo):
        energy = np.abs(np.diff(block_gray(demo / "JPEGImages" / f"{image_id}.jpg"), axis=1)).mean(axis=1)
        fifth = len(energy) // 5
        top.append(energy[:fifth].mean())
        bottom.append(energy[-fifth:].mean())
    ratio = np.mean(top) / np.mean(bottom)
    assert ratio < 0.5, f"sky / ground texture energy {ratio:.2f}: the sky is as busy as the ground"  # measured ~0.2


def row_spread(gray: np.ndarray, owner: np.ndarray, rows: range) -> list[float]:
    """Standard deviation along each of `rows` of the pixels no object owns (rows with too few of them skipped)."""
    return [float(gray[r][owner[r] == 0].std()) for r in rows if np.count_nonzero(owner[r] == 0) > 8]


def test_ground_texture_fades_towards_the_horizon() -> None:
    """Perspective: the ground just below the horizon is far away, its texture finer than a pixel and blurred out."""
    from pretext.data.demo import _render_scene

    by_horizon, at_bottom = [], []
    for index in range(1, 61):
        scene = _render_scene(5, index)
        gray = scene.image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        height, width = gray.shape
        top = math.ceil(max(scene.horizon.row_at(0.0), scene.horizon.row_at(float(width)))) + 2
        ground = height - top
        by_horizon += row_spread(gray, scene.owner, range(top, top + ground // 6))
        at_bottom += row_spread(gray, scene.owner, range(height - ground // 3, height))
    ratio = np.mean(by_horizon) / np.mean(at_bottom)
    assert ratio < 0.6, f"ground texture spread by the horizon / at the bottom {ratio:.2f}: no perspective"  # measured ~0.4, flat ~1.0


def test_objects_stand_on_the_ground_in_perspective(demo: Path) -> None:
    """Box bottoms lie below the horizon (>= 25% of the height), and objects lower in the image are bigger."""
    heights, bottoms = [], []
    for image_id in all_ids(demo):
        (_, height), objects = read_objects(demo, image_id)
        for obj in objects:
            _, ymin, _, ymax = obj["box"]
            heights.append((ymax - ymin + 1) / height)
            bottoms.append(ymax / height)
    # A tilted horizon or a nearer object hiding a base may rarely lift a box bottom into the top quarter.
    assert np.mean(np.array(bottoms) < 0.25) < 0.03  # scenes without layout: ~0.1
    correlation = np.corrcoef(heights, bottoms)[0, 1]
    assert correlation > 0.45, f"box height vs bottom correlation {correlation:.2f}"  # measured ~0.6, flat ~0.2


def test_objects_rest_on_their_base_and_are_drawn_far_to_near() -> None:
    """Each object's lowest solid row is its base row (or the image bottom), below the horizon; nearer ones last."""
    from pretext.data.demo import _render_scene

    checked = 0
    for index in range(1, 41):
        scene = _render_scene(2, index)
        height, width = scene.owner.shape
        bases = [layer.placement.base for layer in scene.layers]
        assert bases == sorted(bases)
        for layer in scene.layers:
            assert layer.placement.base > scene.horizon.row_at(layer.placement.x)
            rows, cols = layer.window
            if cols.start > 0 and cols.stop < width:  # a side border may cut off the lowest point
                lowest = rows.start + int(np.flatnonzero(layer.solid.any(axis=1))[-1])
                assert lowest == min(math.floor(layer.placement.base), height - 1)
                checked += 1
    assert checked > 40
