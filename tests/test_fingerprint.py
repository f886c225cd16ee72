"""Dataset fingerprints (pretext.data.fingerprint): what changes them and what does not."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from pretext.data.fingerprint import data_fingerprint


def _later(path: Path) -> None:
    """Move the modification time on by a second, as an edit a second later would."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_a_voc_split_changes_with_its_own_files_only(demo_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "voc"
    shutil.copytree(demo_root, root)
    train, test = data_fingerprint(root, "trainval"), data_fingerprint(root, "test")
    assert data_fingerprint(root, "trainval") == train  # stable
    test_id = (root / "ImageSets/Main/test.txt").read_text().split()[0]
    train_id = (root / "ImageSets/Main/trainval.txt").read_text().split()[0]
    xml = root / "Annotations" / f"{test_id}.xml"
    xml.write_text(xml.read_text().replace("<name>", "<name>x", 1))  # relabel one test object
    _later(xml)
    assert data_fingerprint(root, "test") != test and data_fingerprint(root, "trainval") == train
    test = data_fingerprint(root, "test")
    image = root / "JPEGImages" / f"{train_id}.jpg"
    Image.new("RGB", (64, 64), "red").save(image)  # an image replaced under the same name
    assert data_fingerprint(root, "trainval") != train and data_fingerprint(root, "test") == test
    train = data_fingerprint(root, "trainval")
    lists = root / "ImageSets/Main/trainval.txt"
    lists.write_text(lists.read_text() + test_id + "\n")  # an image added to the split
    assert data_fingerprint(root, "trainval") != train
    train, test = data_fingerprint(root, "trainval"), data_fingerprint(root, "test")
    # hole shapes come from every SegmentationObject mask: editing a test image's mask changes both splits
    mask = root / "SegmentationObject" / f"{test_id}.png"
    Image.open(mask).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mask)
    _later(mask)
    assert data_fingerprint(root, "trainval") != train and data_fingerprint(root, "test") != test


def test_a_folder_tree_changes_with_any_visible_file(image_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "images"
    shutil.copytree(image_folder, root)
    before = data_fingerprint(root)
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes(b"not read")
    (root / ".notes.txt").write_text("hidden")
    assert data_fingerprint(root) == before  # the readers skip hidden files, so does the fingerprint
    first = sorted(root.glob("*.png"))[0]
    Image.new("RGB", (40, 40), "blue").save(first)
    _later(first)
    assert data_fingerprint(root) != before
    changed = data_fingerprint(root)
    (root / "sub").mkdir()
    Image.new("RGB", (40, 40)).save(root / "sub" / "new.png")
    assert data_fingerprint(root) != changed
    # a missing root is no error here (the readers report it) and fingerprints the same until it appears
    assert data_fingerprint(tmp_path / "missing") == data_fingerprint(tmp_path / "missing")


def test_content_mode_stamps_bytes_not_times(image_folder: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """$CEBENCH_FINGERPRINT=content: a file rewritten with the same bytes keeps the fingerprint, and other bytes of
    the same size behind a restored modification time change it, which stat mode (the default) cannot see."""
    from pretext.data.fingerprint import file_stamp

    root = tmp_path / "images"
    shutil.copytree(image_folder, root)
    first = sorted(root.glob("*.png"))[0]
    stat_before = data_fingerprint(root)
    monkeypatch.setenv("CEBENCH_FINGERPRINT", "content")
    content = data_fingerprint(root)
    assert content != stat_before  # the modes key differently: switching recomputes
    _later(first)  # the same bytes, a new time
    assert data_fingerprint(root) == content
    monkeypatch.setenv("CEBENCH_FINGERPRINT", "stat")
    assert data_fingerprint(root) != stat_before
    stat_later = data_fingerprint(root)
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF  # the same size, other bytes, the time put back
    times = first.stat()
    first.write_bytes(bytes(data))
    os.utime(first, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert data_fingerprint(root) == stat_later  # what stat mode cannot see
    monkeypatch.setenv("CEBENCH_FINGERPRINT", "content")
    assert data_fingerprint(root) != content
    stamp = file_stamp(first)
    assert stamp[0] == len(data) and 0 <= stamp[1] < 2 ** 63
    monkeypatch.setenv("CEBENCH_FINGERPRINT", "sha1")
    with pytest.raises(ValueError, match="CEBENCH_FINGERPRINT='sha1'"):
        data_fingerprint(root)
