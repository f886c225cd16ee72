"""Where unlabelled images come from: a folder tree, an ImageFolder, a PASCAL VOC root or a list file."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

log = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})  # torchvision's IMG_EXTENSIONS
SOURCES = ("auto", "folder", "imagefolder", "voc", "list")


class DataSourceError(ValueError):
    """A data source is missing, empty or malformed; the message names the file."""


def detect_source(root: Path) -> str:
    """'list' for a text file, 'voc' for a root with ImageSets/ and JPEGImages/, else 'folder'."""
    if root.is_file():
        return "list"
    if (root / "ImageSets").is_dir() and (root / "JPEGImages").is_dir():
        return "voc"
    return "folder"


def list_images(root: str | Path, source: str = "auto", split: str = "trainval") -> list[Path]:
    """Sorted image paths of a source; an ImageFolder tree is read as a folder (labels are not used here)."""
    root = Path(root)
    if source not in SOURCES:
        raise DataSourceError(f"unknown data source {source!r}; choose from {', '.join(SOURCES)}")
    if not root.exists():
        raise DataSourceError(f"data root not found: {root}")
    kind = detect_source(root) if source == "auto" else source
    if kind == "voc":
        paths = voc_images(root, split)
    elif kind == "list":
        paths = list_file_images(root)
    else:
        paths = folder_images(root)
    if not paths:
        raise DataSourceError(f"no images found in {root} (source {kind}; extensions {', '.join(sorted(IMAGE_EXTS))})")
    return paths


def fixed_subset(n: int, max_images: int | None, seed: int) -> list[int]:
    """Indices (ascending) of the first `max_images` of a fixed shuffle of range(n) by `seed`; all when None or
    enough. Every command that takes `--max-images` with a seed draws its images through this, so that two
    commands given the same listing, limit and seed score the same images."""
    if max_images is None or max_images >= n:
        return list(range(n))
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.permutation(n)[:max_images])


class SkippedFolder(NamedTuple):
    """A symlinked folder that folder_images did not list: a loop (leads to an ancestor) or a repeat."""

    path: str
    loop: bool
    target: str

    def __str__(self) -> str:
        if self.loop:
            return f"{self.path}: a symlink loop (leads to {self.target}, an ancestor); not followed"
        return (f"{self.path}: the same folder as {self.target}, already listed (two paths to one folder: a "
                f"symlink); not listed again")


def folder_images(root: Path, skipped: list[SkippedFolder] | None = None,
                  seen: dict | None = None) -> list[Path]:
    """Every image file under `root`, recursively, symlinked directories included. A symlinked directory that
    leads back to one of its own ancestors (a loop), or a folder already listed by another path (in this call,
    or in an earlier one given the same `seen` dict), is not listed again: a SkippedFolder is appended to
    `skipped`, or logged as a counted warning when no list is given."""
    if not root.is_dir():
        raise DataSourceError(f"not a directory: {root}")
    found, repeats = [], []
    seen = {} if seen is None else seen  # (device, inode) -> the path it was first listed by

    def unreadable(exc: OSError) -> None:  # os.walk would skip the folder silently
        raise DataSourceError(f"{exc.filename}: cannot list the folder: {exc.strerror or exc}") from exc

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            repeats.append(SkippedFolder(dirpath, False, seen[st.st_dev, st.st_ino]))
            continue
        seen[st.st_dev, st.st_ino] = dirpath
        here = os.path.realpath(dirpath)
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            if d.startswith("."):
                continue
            target = os.path.realpath(full) if os.path.islink(full) else None
            if target is not None and (here == target or here.startswith(target.rstrip(os.sep) + os.sep)):
                repeats.append(SkippedFolder(full, True, target))
                continue
            keep.append(d)
        dirnames[:] = keep
        found += [Path(dirpath) / f for f in filenames if Path(f).suffix.lower() in IMAGE_EXTS and not f.startswith(".")]
    if skipped is not None:
        skipped += repeats
    elif repeats:
        log.warning("%s: %d symlinked folder(s) skipped; first: %s", root, len(repeats), repeats[0])
    return sorted(found)


def check_id(image_id: str, where: str) -> str:
    """Refuse ids that would escape the dataset root (`../`, absolute paths, separators)."""
    if not image_id or "/" in image_id or "\\" in image_id or image_id in (".", "..") or "\x00" in image_id:
        raise DataSourceError(f"{where}: invalid image id {image_id!r} (ids are file stems without path separators)")
    return image_id


def read_id_list(list_file: Path, problems: list[str] | None = None) -> list[str]:
    """Ids of a VOC ImageSets list (first column); missing file, bad or duplicate ids are errors. With `problems`,
    a bad or duplicate id is appended there and its line skipped, so a checker reports every one in one pass."""
    if not list_file.is_file():
        raise DataSourceError(f"split list not found: {list_file}")
    try:
        text = list_file.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise DataSourceError(f"{list_file}: not UTF-8 text ({exc})") from None
    ids, seen = [], set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            image_id = check_id(line.split()[0], f"{list_file}:{n}")
            if image_id in seen:
                raise DataSourceError(f"{list_file}:{n}: duplicate image id {image_id!r}")
        except DataSourceError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
            continue
        seen.add(image_id)
        ids.append(image_id)
    return ids


def voc_images(root: Path, split: str) -> list[Path]:
    """JPEGImages/<id>.jpg for every id of ImageSets/Main/<split>.txt."""
    list_file = root / "ImageSets" / "Main" / f"{check_id(split, str(root))}.txt"
    paths = []
    for image_id in read_id_list(list_file):
        path = root / "JPEGImages" / f"{image_id}.jpg"
        if not path.is_file():
            raise DataSourceError(f"{list_file}: image {image_id!r} listed but {path} does not exist")
        paths.append(path)
    return paths


def list_file_images(list_file: Path) -> list[Path]:
    """One path per line, relative to the list file's folder unless absolute; '#' starts a comment."""
    paths = []
    for n, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        path = Path(text) if Path(text).is_absolute() else list_file.parent / text
        if not path.is_file():
            raise DataSourceError(f"{list_file}:{n}: image not found: {path}")
        paths.append(path)
    return paths
