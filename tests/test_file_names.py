"""Messy file systems: names that are not UTF-8, symlink loops and links between classes, files whose extension
lies about their content, unreadable folders. Each is read correctly, or refused / skipped with a message that
names the path; nothing hangs and nothing is silently relabelled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretext.data.images import BadImageError, load_rgb
from pretext.data.sources import folder_images
from pretext.engine.checkpoint import atomic_write_text
from transfer.data_check import check_dataset
from transfer.features import ProbeError, open_image_folder

NON_UTF8 = b"caf\xe9_\xff.jpg"  # Latin-1 bytes: not valid UTF-8, a legal Linux file name


def _image(path: Path | bytes, colour: tuple[int, int, int] = (200, 30, 30), fmt: str | None = None) -> None:
    Image.new("RGB", (24, 20), colour).save(path, format=fmt or "JPEG")


def _tree(root: Path) -> Path:
    for c, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        (root / c).mkdir(parents=True)
        for i in range(2):
            _image(root / c / f"{i}.jpg", colour)
    return root


def _can_make_non_utf8(root: Path) -> bool:
    try:
        _image(os.path.join(os.fsencode(root), b"probe\xff.jpg"))
    except (OSError, UnicodeError):  # a file system that insists on UTF-8 names (e.g. some macOS volumes)
        return False
    os.remove(os.path.join(os.fsencode(root), b"probe\xff.jpg"))
    return True


def test_non_utf8_name_is_listed_decoded_and_labelled(tmp_path):
    root = _tree(tmp_path / "data")
    if not _can_make_non_utf8(root):
        pytest.skip("this file system refuses non-UTF-8 names")
    _image(os.path.join(os.fsencode(root / "b"), NON_UTF8), (30, 30, 200))
    listed = folder_images(root)
    odd = [p for p in listed if os.fsencode(p).endswith(NON_UTF8)]
    assert len(listed) == 5 and len(odd) == 1
    assert np.asarray(load_rgb(odd[0]))[..., 2].mean() > 150  # the file's own pixels
    images = open_image_folder(root)
    assert images.labels[list(images.paths).index(odd[0])] == images.classes.index("b")
    # the name survives a round trip through the text files the tools write (id lists, neighbours)
    out = tmp_path / "ids.txt"
    atomic_write_text(out, f"{odd[0]}\n")
    assert out.read_bytes().rstrip(b"\n") == os.fsencode(odd[0])


def test_data_check_reports_a_bad_non_utf8_file_under_a_strict_terminal(tmp_path):
    """A strict UTF-8 stdout (LANG=en_US.UTF-8, PYTHONIOENCODING=utf-8) must not turn the report into a crash."""
    root = _tree(tmp_path / "data")
    if not _can_make_non_utf8(root):
        pytest.skip("this file system refuses non-UTF-8 names")
    with open(os.path.join(os.fsencode(root / "a"), NON_UTF8), "wb") as f:
        f.write(b"\xff\xd8 truncated")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}
    report_file = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pretext.cli", "data", "check", str(root), "--json", str(report_file)],
                          capture_output=True, text=True, env=env, errors="replace", timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    line = next(s for s in proc.stdout.splitlines() if "cannot read image" in s)
    assert "caf" in line and "\\x" in line or "\\udc" in line  # the odd bytes shown as escapes
    problems = json.loads(report_file.read_text())["problems"]
    assert len(problems) == 1 and "caf" in problems[0]


def test_symlink_loop_terminates_and_is_reported(tmp_path):
    root = _tree(tmp_path / "data")
    (root / "a" / "loop").symlink_to(root)  # a -> data: contains a again
    (root / "a" / "self").symlink_to(".")
    skipped = []
    listed = folder_images(root, skipped)
    assert len(listed) == 4  # every image once
    assert {Path(s.path).name for s in skipped} == {"loop", "self"} and all(s.loop for s in skipped)
    report = check_dataset(root, "imagefolder")
    assert not report.ok and sum("symlink loop" in p for p in report.problems) == 2
    images = open_image_folder(root)  # a loop inside a class is skipped with a warning, labels unchanged
    assert len(images.paths) == 4 and list(images.labels).count(0) == 2


def test_symlinked_folders_are_followed(tmp_path):
    """Data on another disk linked into the tree is read, not silently dropped."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _image(elsewhere / "far.jpg")
    root = _tree(tmp_path / "data")
    (root / "a" / "more").symlink_to(elsewhere)
    images = open_image_folder(root)
    far = [p for p in images.paths if p.name == "far.jpg"]
    assert len(far) == 1 and images.labels[list(images.paths).index(far[0])] == 0


def test_a_class_linking_into_another_is_refused(tmp_path):
    """b's images reachable under class a would carry either label: an error naming the link, not a guess."""
    root = _tree(tmp_path / "data")
    (root / "a" / "stolen").symlink_to(root / "b")
    with pytest.raises(ProbeError, match=r"stolen.*ambiguous"):
        open_image_folder(root)
    report = check_dataset(root, "imagefolder")
    assert any("stolen" in p and "two paths to one folder" in p for p in report.problems)


@pytest.mark.parametrize("case", ["png_named_jpg", "jpeg_named_png", "text_named_jpg", "empty_jpg"])
def test_mislabelled_image_files(tmp_path, case):
    """The decoder goes by content, not extension: a real image with the wrong extension is read correctly; a
    file that is no image at all is an error naming it."""
    path = tmp_path / {"png_named_jpg": "x.jpg", "jpeg_named_png": "x.png", "text_named_jpg": "x.jpg",
                       "empty_jpg": "x.jpg"}[case]
    if case == "png_named_jpg":
        _image(path, (10, 220, 10), "PNG")
    elif case == "jpeg_named_png":
        _image(path, (10, 220, 10), "JPEG")
    elif case == "text_named_jpg":
        path.write_text("<html>404 not found</html>")
    else:
        path.write_bytes(b"")
    if case.startswith(("png", "jpeg")):
        assert np.asarray(load_rgb(path))[..., 1].mean() > 200
    else:
        with pytest.raises(BadImageError, match="x.jpg"):
            load_rgb(path)


def test_unreadable_folder_is_an_error_not_a_silent_skip(tmp_path, monkeypatch):
    """os.walk skips a folder it cannot list without a word; here that is an error naming the folder. (The
    permission error is injected, as chmod does not stop root, which CI runs as.)"""
    root = _tree(tmp_path / "data")
    locked = root / "a" / "locked"
    locked.mkdir()
    _image(locked / "hidden.jpg")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == os.fspath(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ValueError, match="locked: cannot list the folder: Permission denied"):
        folder_images(root)
    assert any("locked: cannot list" in p for p in check_dataset(root, "imagefolder").problems)
