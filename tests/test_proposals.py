"""Selective search proposals: box convention, reproducible order, the on-disk cache, and supplied proposal files."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torchvision.ops import box_iou

from transfer.proposals import ProposalSettings, compute_proposals, entry_name, load_precomputed, selective_search

FULL = ProposalSettings(max_side=None)
SMALL = ProposalSettings(min_size=8, max_side=None)  # for the 64x80 cache-test images
RECTS = [(10, 15, 60, 70), (80, 20, 150, 55), (70, 70, 130, 112)]  # xyxy, exclusive ends
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 40, 230)]


def scene(seed: int = 0, size: tuple[int, int] = (120, 160), rects=RECTS) -> np.ndarray:
    """Solid rectangles of different colours on a noisy grey background, as HxWx3 uint8 RGB."""
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 130, (*size, 3)).astype(np.uint8)
    for (x1, y1, x2, y2), colour in zip(rects, COLOURS):
        img[y1:y2, x1:x2] = colour
    return img


def write_images(folder: Path, count: int) -> tuple[list[Path], list[str]]:
    """`count` different 64x80 PNG scenes; ids img0, img1, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rects = [(4 + 3 * i, 5, 30 + 2 * i, 40), (40, 10 + i, 75, 30 + 3 * i)]
        paths.append(folder / f"img{i}.png")
        Image.fromarray(scene(i, (64, 80), rects)).save(paths[-1])
    return paths, [f"img{i}" for i in range(count)]


def computed(caplog: pytest.LogCaptureFixture) -> int:
    """The 'N computed' count of the last compute_proposals summary line."""
    lines = [r.getMessage() for r in caplog.records if " computed (" in r.getMessage()]
    return int(re.search(r"(\d+) computed", lines[-1]).group(1))


def run(paths, ids, cache: Path, caplog, workers: int = 0, settings: ProposalSettings = SMALL):
    """compute_proposals without a progress bar; returns (boxes, number computed)."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cebench"):
        boxes = compute_proposals(paths, ids, cache, settings, workers=workers, progress=False)
    return boxes, computed(caplog)


def entry_times(cache: Path, settings: ProposalSettings = SMALL) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (cache / settings.key()).glob("*.npz")}


# ---------------------------------------------------------------------------------------------- selective search

def test_selective_search_boxes_are_valid_reproducible_and_find_the_rectangles():
    img = scene()
    boxes = selective_search(img, FULL)
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert 0 < len(boxes) <= FULL.max_boxes
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 120).all()
    assert ((boxes[:, 2] - boxes[:, 0]) >= 20).all() and ((boxes[:, 3] - boxes[:, 1]) >= 20).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    assert (np.lexsort(boxes.T[::-1]) == np.arange(len(boxes))).all()  # lexicographic on (x1, y1, x2, y2)
    np.testing.assert_array_equal(selective_search(img, FULL), boxes)
    iou = box_iou(torch.tensor(RECTS, dtype=torch.float32), torch.from_numpy(boxes))
    assert (iou.max(dim=1).values >= 0.7).all(), iou.max(dim=1).values


def test_max_side_scales_boxes_back_to_the_image():
    img = scene()
    boxes = selective_search(img, ProposalSettings(max_side=80))  # SS runs at 80x60: boxes come back x2
    assert (boxes % 2 == 0).all() and boxes[:, 2].max() <= 160 and boxes[:, 3].max() <= 120
    iou = box_iou(torch.tensor(RECTS, dtype=torch.float32), torch.from_numpy(boxes))
    assert (iou.max(dim=1).values >= 0.7).all()


def test_truncation_keeps_a_fixed_subset_in_sorted_order():
    img = scene()
    full = selective_search(img, FULL)
    cut = selective_search(img, ProposalSettings(max_side=None, max_boxes=10))
    assert len(cut) == 10
    rows = {tuple(b) for b in full.tolist()}
    assert all(tuple(b) in rows for b in cut.tolist())
    assert (np.lexsort(cut.T[::-1]) == np.arange(10)).all()
    np.testing.assert_array_equal(selective_search(img, ProposalSettings(max_side=None, max_boxes=10)), cut)
    assert not np.array_equal(cut, full[:10])  # a sample of the whole set, not the lexicographic head


def test_bad_settings_and_images_are_refused():
    with pytest.raises(ValueError, match="mode"):
        ProposalSettings(mode="slow")
    with pytest.raises(ValueError, match="max_boxes"):
        ProposalSettings(max_boxes=0)
    with pytest.raises(ValueError, match="uint8"):
        selective_search(np.zeros((32, 32, 3), np.float32), FULL)
    with pytest.raises(ValueError, match="HxWx3"):
        selective_search(np.zeros((32, 32), np.uint8), FULL)
    assert ProposalSettings().key() == ProposalSettings().key() != ProposalSettings(min_size=10).key()


# ---------------------------------------------------------------------------------------------- cache

@pytest.fixture()
def images(tmp_path: Path) -> tuple[list[Path], list[str]]:
    return write_images(tmp_path / "images", 4)


def test_cache_computes_once_then_reuses(images, tmp_path, caplog):
    paths, ids = images
    first, n = run(paths, ids, tmp_path / "cache", caplog)
    assert n == 4 and list(first) == ids
    for path, image_id in zip(paths, ids):
        np.testing.assert_array_equal(first[image_id], selective_search(np.asarray(Image.open(path)), SMALL))
    times = entry_times(tmp_path / "cache")
    second, n = run(paths, ids, tmp_path / "cache", caplog)
    assert n == 0 and entry_times(tmp_path / "cache") == times
    for image_id in ids:
        np.testing.assert_array_equal(second[image_id], first[image_id])
    assert json.loads((tmp_path / "cache" / SMALL.key() / "settings.json").read_text())["min_size"] == 8


def test_corrupt_entry_is_recomputed_with_a_warning(images, tmp_path, caplog):
    paths, ids = images
    first, _ = run(paths, ids, tmp_path / "cache", caplog)
    entry = tmp_path / "cache" / SMALL.key() / "img2.npz"
    entry.write_bytes(entry.read_bytes()[:100])
    before = entry_times(tmp_path / "cache")
    again, n = run(paths, ids, tmp_path / "cache", caplog)
    assert n == 1
    assert any(r.levelno == logging.WARNING and "img2.npz" in r.getMessage() for r in caplog.records)
    after = entry_times(tmp_path / "cache")
    assert after["img2.npz"] != before["img2.npz"]
    assert all(after[k] == before[k] for k in before if k != "img2.npz")
    np.testing.assert_array_equal(again["img2"], first["img2"])


def test_changed_image_is_recomputed_and_touched_one_is_not(images, tmp_path, caplog):
    paths, ids = images
    first, _ = run(paths, ids, tmp_path / "cache", caplog)
    os.utime(paths[0], ns=(1, 1))  # same content, new mtime: still current
    _, n = run(paths, ids, tmp_path / "cache", caplog)
    assert n == 0
    new = scene(9, (64, 80), [(2, 2, 50, 60), (55, 5, 78, 62)])
    Image.fromarray(new).save(paths[1])
    again, n = run(paths, ids, tmp_path / "cache", caplog)
    assert n == 1
    np.testing.assert_array_equal(again["img1"], selective_search(new, SMALL))
    assert not np.array_equal(again["img1"], first["img1"])
    np.testing.assert_array_equal(again["img3"], first["img3"])


def test_interrupted_run_resumes(images, tmp_path, caplog, monkeypatch):
    import transfer.proposals as proposals

    paths, ids = images
    write = proposals._write_entry
    written = []

    def write_two_then_stop(*args):
        if len(written) == 2:
            raise KeyboardInterrupt
        write(*args)
        written.append(args[1])

    monkeypatch.setattr(proposals, "_write_entry", write_two_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(paths, ids, tmp_path / "cache", caplog)
    monkeypatch.setattr(proposals, "_write_entry", write)
    _, n = run(paths, ids, tmp_path / "cache", caplog)
    assert n == 2 and len(entry_times(tmp_path / "cache")) == 4


def test_worker_processes_match_in_process_results(images, tmp_path, caplog):
    paths, ids = images
    here, _ = run(paths, ids, tmp_path / "a", caplog, workers=0)
    pooled, n = run(paths, ids, tmp_path / "b", caplog, workers=2)
    assert n == 4 and list(pooled) == ids
    for image_id in ids:
        np.testing.assert_array_equal(pooled[image_id], here[image_id])


def test_unreadable_image_names_the_file(images, tmp_path, caplog):
    paths, ids = images
    (bad := tmp_path / "images" / "bad.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match="bad.jpg"):
        run([*paths[:1], bad], ["img0", "bad"], tmp_path / "cache", caplog, workers=1)
    with pytest.raises(ValueError, match="gone.png"):
        run([tmp_path / "gone.png"], ["gone"], tmp_path / "cache", caplog)


def test_awkward_ids_get_distinct_safe_entries(images, tmp_path, caplog):
    paths, _ = images
    ids = ["a/b", "a_b", "../x", "17"]
    boxes, n = run(paths, ids, tmp_path / "cache", caplog)
    names = {entry_name(i) for i in ids}
    assert n == 4 and len(names) == 4 and all("/" not in name and not name.startswith(".") for name in names)
    assert set(entry_times(tmp_path / "cache")) == names
    with pytest.raises(ValueError, match="repeated"):
        compute_proposals(paths[:2], ["x", "x"], tmp_path / "cache", SMALL, workers=0, progress=False)


# ---------------------------------------------------------------------------------------------- supplied files

EXPECTED = np.array([[20, 10, 80, 50], [0, 0, 5, 6]], dtype=np.float32)  # xyxy0 of both image "000001" boxes


def cells(*items) -> np.ndarray:
    out = np.empty((len(items), 1), dtype=object)
    for k, item in enumerate(items):
        out[k, 0] = item
    return out


def test_fast_rcnn_mat_is_converted_from_one_based_yxyx(tmp_path):
    path = tmp_path / "voc_2007_test.mat"
    yxyx1 = np.array([[11, 21, 50, 80], [1, 1, 6, 5]], dtype=np.float64)  # [y1 x1 y2 x2], 1-based inclusive
    scipy.io.savemat(path, {"images": cells("000001", "000002"), "boxes": cells(yxyx1, np.zeros((0, 0)))})
    boxes = load_precomputed(path, ["000001", "000002"])
    np.testing.assert_array_equal(boxes["000001"], EXPECTED)
    assert boxes["000001"].dtype == np.float32 and boxes["000002"].shape == (0, 4)


def test_json_formats_and_npz(tmp_path):
    voc1 = {"format": "voc1", "boxes": {"000001": [[21, 11, 80, 50], [1, 1, 5, 6]]}}
    xyxy0 = {"format": "xyxy0", "boxes": {"000001": EXPECTED.tolist()}}
    for name, data in [("voc1.json", voc1), ("xyxy0.json", xyxy0), ("bare.json", {"000001": EXPECTED.tolist()})]:
        (tmp_path / name).write_text(json.dumps(data))
        np.testing.assert_array_equal(load_precomputed(tmp_path / name, ["000001"])["000001"], EXPECTED, name)
    np.savez(tmp_path / "boxes.npz", **{"000001": EXPECTED, "000002": EXPECTED[:1]})
    np.testing.assert_array_equal(load_precomputed(tmp_path / "boxes.npz", ["000001"])["000001"], EXPECTED)


def test_supplied_boxes_are_validated_and_clipped(tmp_path, caplog):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({"a": [[-5, 2, 30, 40], [50, 50, 60, 60], [1, 1, 4, 4]], "b": []}))
    with pytest.raises(ValueError, match=r"boxes\.json.*'c'"):
        load_precomputed(path, ["a", "c"])
    with caplog.at_level(logging.WARNING, logger="cebench"):
        boxes = load_precomputed(path, ["a", "b"], image_sizes={"a": (20, 30), "b": (10, 10)})
    np.testing.assert_array_equal(boxes["a"], [[0, 2, 20, 30], [1, 1, 4, 4]])
    assert any("dropped 1" in r.getMessage() for r in caplog.records)
    for bad in ([[0, 0, float("nan"), 4]], [[5, 0, 5, 4]]):
        path.write_text(json.dumps({"a": bad}))
        with pytest.raises(ValueError, match=r"boxes\.json.*invalid boxes"):
            load_precomputed(path, ["a"])
    with pytest.raises(ValueError, match="unknown proposal file type"):
        load_precomputed(tmp_path / "boxes.pkl", ["a"])
