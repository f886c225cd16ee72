"""Labelled image sets and their readers, and the class labels of a pretraining source (method=supervised).

An ImageFolder tree (one sub-folder per class, classes sorted as torchvision sorts them) gives one class index per
image; a VOC root gives (N, C) rows {1 present, 0 difficult only, -1 absent} from its per-class label lists or
Annotations/*.xml, with the classes of its classes.txt (else the 20 VOC classes). A list file or a plain folder of
images has no labels. The transfer tasks read labelled data with these same readers (transfer.features adds COCO),
so a tree is labelled alike for pretraining and for evaluation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ConfigError
from .sources import IMAGE_EXTS, DataSourceError, SkippedFolder, detect_source, folder_images, voc_images
from .voc import read_class_list, read_classification_labels

log = logging.getLogger(__name__)


class LabelledDataError(ValueError):
    """Labelled data that cannot be used: too few classes, a class without images, an ambiguous label. The transfer
    tasks raise and catch it as `transfer.features.ProbeError`, the same class."""


@dataclass(frozen=True)
class LabelledImages:
    """Image paths with labels: (N,) class indices (ImageFolder) or (N, C) VOC labels in {1, 0, -1}."""

    kind: str  # "imagefolder", "voc" or "coco"
    root: Path
    split: str | None  # None for an ImageFolder: the directory is the split
    paths: tuple[Path, ...]
    labels: np.ndarray
    classes: tuple[str, ...]

    @property
    def multilabel(self) -> bool:
        """VOC-style (N, C) labels."""
        return self.labels.ndim == 2

    def describe(self, max_images: int | None) -> dict:
        """Root, split, kind and size, as metrics.json records an image set."""
        return {"root": str(self.root), "split": self.split, "kind": self.kind, "n_images": len(self.paths),
                "max_images": max_images}

    @property
    def name(self) -> str:
        """Root and split, as messages and metrics.json show them."""
        return str(self.root) if self.split is None else f"{self.root} (split {self.split})"


@dataclass(frozen=True)
class LabelSpace:
    """What a labelled source's targets are: its class names, and one class per image or a row of them."""

    classes: tuple[str, ...]
    multilabel: bool


def open_image_folder(root: Path) -> LabelledImages:
    """Single-label images `root/<class>/...`; classes are the sorted sub-directory names."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise LabelledDataError(f"{root}: an ImageFolder needs at least 2 class sub-directories, found {classes}")
    paths, labels, seen = [], [], {}
    for index, name in enumerate(classes):
        skipped: list[SkippedFolder] = []
        found = folder_images(root / name, skipped, seen)
        for folder in skipped:
            if not folder.loop and Path(folder.target).parts[:len(root.parts) + 1] != (root / name).parts:
                raise LabelledDataError(f"{folder}: two classes of {root} reach this folder, so the label of its "
                                        f"images would be ambiguous")
            log.warning("%s", folder)  # a loop, or two links inside one class: listed once, label unchanged
        if not found:
            raise LabelledDataError(f"{root / name}: class {name!r} has no images")
        paths += found
        labels += [index] * len(found)
    return LabelledImages("imagefolder", root, None, tuple(paths), np.asarray(labels, dtype=np.int64), tuple(classes))


def open_voc(root: Path, split: str) -> LabelledImages:
    """Multi-label VOC-format split: JPEGImages/<id>.jpg and labels from the class lists or annotations."""
    classes = read_class_list(root)
    _, labels = read_classification_labels(root, split, classes)
    paths = voc_images(root, split)  # the same list file as ids, in the same order
    return LabelledImages("voc", root, split, tuple(paths), labels, tuple(classes))


def open_labelled_source(root: Path, source: str, split: str, method: str) -> LabelledImages:
    """Images, labels and classes of a pretraining source (data.root, data.source, data.split); a source without
    labels is a ConfigError naming data.root and the `method` that needs them."""
    if not root.exists():
        raise DataSourceError(f"data root not found: {root}")
    kind = detect_source(root) if source == "auto" else source
    if kind == "voc":
        try:
            return open_voc(root, split)
        except ValueError as exc:  # the VOC readers name the file (and line)
            raise DataSourceError(str(exc)) from exc
    if kind == "list" or not root.is_dir():
        raise _unlabelled(root, method, "a list of image files has no labels")
    try:
        data = open_image_folder(root)
    except LabelledDataError as exc:
        raise _unlabelled(root, method, str(exc)) from None
    _warn_loose_images(root)
    return data


def _unlabelled(root: Path, method: str, reason: str) -> ConfigError:
    return ConfigError(f"method={method} trains on class labels: data.root={root} must hold class sub-folders "
                       f"(ROOT/<class>/<images>, an ImageFolder tree) or be a VOC root (ImageSets/Main/<split>.txt "
                       f"with Annotations/*.xml); {reason}")


def _warn_loose_images(root: Path) -> None:
    # torchvision's ImageFolder ignores them silently; here the count is said.
    loose = sorted(p.name for p in root.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))
    if loose:
        log.warning("%s: %d image(s) outside the class sub-folders have no label and are not used; first: %s",
                    root, len(loose), loose[0])
