"""`cebench data check ROOT [--format auto|voc|coco|imagefolder|folder]`: validate a dataset before a long run.

Reads every split list, annotation and mask the layout has and decodes every image (or a seeded sample of
`--max-images` of them), collecting every problem instead of stopping at the first: unreadable, truncated or
oversized images, malformed XML, boxes without size or outside the image or inverted, unknown class names,
masks of the wrong size or with stray values, list files naming missing or duplicate ids, COCO annotations
naming unknown images or categories. Prints a report (images per split, objects or images per class, image
sizes, the problems) and exits 1 when there is a problem, 0 when there is none; `--json FILE` writes the report
as JSON. A VOC annotation without objects is a warning (listed, exit code unchanged): classification and
segmentation can use such an image; `--require-objects` (detection needs objects) makes it a problem. `cebench run` checks a sample of its data this way before anything trains (suite key
`data.check_images`).
"""

from __future__ import annotations

import argparse
import json
import logging
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pretext.data.images import DEFAULT_MAX_PIXELS, load_rgb
from pretext.data.sources import IMAGE_EXTS as IMAGE_EXTENSIONS

log = logging.getLogger("cebench")

FORMATS = ("voc", "coco", "imagefolder", "folder")


@dataclass
class Report:
    """What a check found."""

    root: str
    format: str
    splits: dict[str, int] = field(default_factory=dict)  # split -> images listed
    classes: Counter = field(default_factory=Counter)  # class -> objects (VOC/COCO) or images (ImageFolder)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of the decoded images
    checked: int = 0  # images decoded
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # listed, not counted: the data is usable as it is

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def warning(self, text: str) -> None:
        self.warnings.append(text)

    def to_dict(self) -> dict:
        w = np.array([s[0] for s in self.sizes]) if self.sizes else np.zeros(0)
        h = np.array([s[1] for s in self.sizes]) if self.sizes else np.zeros(0)
        sizes = ({"min": [int(w.min()), int(h.min())], "median": [int(np.median(w)), int(np.median(h))],
                  "max": [int(w.max()), int(h.max())]} if self.sizes else None)
        return {"root": self.root, "format": self.format, "ok": self.ok, "splits": self.splits,
                "classes": dict(sorted(self.classes.items())), "images_checked": self.checked, "image_sizes": sizes,
                "problems": self.problems, "warnings": self.warnings}

    def text(self) -> str:
        d = self.to_dict()
        lines = [f"{self.root} ({self.format}): {self.checked} image(s) decoded"]
        lines += [f"  split {s}: {n} image(s)" for s, n in self.splits.items()]
        if self.classes:
            lines.append("  per class: " + ", ".join(f"{c} {n}" for c, n in d["classes"].items()))
        if d["image_sizes"]:
            s = d["image_sizes"]
            lines.append(f"  image sizes (w x h): min {s['min'][0]}x{s['min'][1]}, median {s['median'][0]}x"
                         f"{s['median'][1]}, max {s['max'][0]}x{s['max'][1]}")
        lines.append(f"{len(self.problems)} problem(s)" + (":" if self.problems else ""))
        lines += [f"  {p}" for p in self.problems]
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s) (not problems):")
            lines += [f"  {w}" for w in self.warnings]
        return "\n".join(lines)


def detect_format(root: Path) -> str:
    """voc (ImageSets/), coco (annotations/instances_*.json), imagefolder (class sub-folders, or train/ and
    test/ of them), else folder."""
    if (root / "ImageSets").is_dir():
        return "voc"
    if (root / "annotations").is_dir() and any((root / "annotations").glob("instances_*.json")):
        return "coco"
    subdirs = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    if subdirs and all(any(q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS for q in d.iterdir())
                       or any(q.is_dir() for q in d.iterdir()) for d in subdirs):
        return "imagefolder"
    return "folder"


def _decode(path: Path, report: Report, max_pixels: int) -> tuple[int, int] | None:
    try:
        img = load_rgb(path, max_pixels)
    except ValueError as exc:  # BadImageError names the file and the reason
        report.problem(str(exc))
        return None
    report.checked += 1
    report.sizes.append(img.size)
    return img.size


def _sample(items: list, max_images: int | None, seed: int) -> list:
    from pretext.data.sources import fixed_subset

    return [items[i] for i in fixed_subset(len(items), max_images, seed)]


# --- VOC ----------------------------------------------------------------------------------------------------

def _voc_splits(root: Path, classes: list[str] | None, report: Report) -> dict[str, list[str]]:
    """split -> ids of ImageSets/Main and ImageSets/Segmentation lists (per-class lists left out: with no class
    list, those named `<something>_<split>.txt` beside a `<split>.txt`); every bad line and unreadable list is a
    problem of the report, and the rest is read."""
    from pretext.data.sources import read_id_list

    splits: dict[str, list[str]] = {}
    for sub in ("Main", "Segmentation"):
        lists = sorted((root / "ImageSets" / sub).glob("*.txt"))
        stems = {p.stem for p in lists}
        for path in lists:
            per_class = (any(path.stem.startswith(f"{c}_") for c in classes) if classes is not None
                         else "_" in path.stem and path.stem.rsplit("_", 1)[1] in stems)
            if sub == "Main" and per_class:
                continue
            problems: list[str] = []
            try:
                splits[f"{sub}/{path.stem}"] = read_id_list(path, problems)
            except ValueError as exc:  # a missing or undecodable list, named by the reader
                problems.append(str(exc))
            for problem in problems:
                report.problem(problem)
    return splits


def _check_xml(path: Path, size: tuple[int, int] | None, classes: set[str] | None, report: Report,
               require_objects: bool = False) -> None:
    from .detection_eval import read_boxes
    from .voc import read_objects

    try:
        objects, boxes = read_objects(path), read_boxes(path)
    except ValueError as exc:
        report.problem(str(exc))
        return
    if not objects and require_objects:
        report.problem(f"{path}: no <object> (detection needs objects)")
    elif not objects:
        report.warning(f"{path}: no <object> (an image without objects; --require-objects for detection)")
    xml_size = ET.parse(path).getroot().find("size")
    if xml_size is not None and size is not None:
        try:
            w, h = int(float(xml_size.findtext("width") or 0)), int(float(xml_size.findtext("height") or 0))
        except ValueError:
            report.problem(f"{path}: <size> is not numeric")
            w = h = 0
        if (w, h) != (0, 0) and (w, h) != size:
            report.problem(f"{path}: <size> {w}x{h} but the image is {size[0]}x{size[1]}")
    for n, ((name, _), box) in enumerate(zip(objects, boxes), 1):
        if classes is not None and name not in classes:
            report.problem(f"{path}: object {n}: unknown class {name!r}")
        report.classes[name] += 1
        if size is not None and (box[0] < 1 or box[1] < 1 or box[2] > size[0] or box[3] > size[1]):
            report.problem(f"{path}: object {n} ({name}): box {box.astype(int).tolist()} outside the "
                           f"{size[0]}x{size[1]} image")


def check_voc(root: Path, max_images: int | None = None, seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS,
              classes: list[str] | None = None, require_objects: bool = False) -> Report:
    """Split lists, images, Annotations/*.xml and SegmentationClass/*.png of a VOC-format root; an annotation
    without objects is a warning, or a problem with `require_objects`."""
    from .segmentation_data import check_labels, read_label_png, segmentation_classes
    from .voc import read_class_list

    report = Report(str(root), "voc")
    try:
        names: list[str] | None = read_class_list(root, classes)
    except ValueError as exc:  # reported; the rest is still checked, without the unknown-class check
        report.problem(str(exc))
        names = None
    splits = _voc_splits(root, names, report)
    if not splits:
        report.problem(f"{root / 'ImageSets'}: no split lists")
    report.splits = {s: len(ids) for s, ids in splits.items()}
    seg_ids = {i for s, ids in splits.items() if s.startswith("Segmentation/") for i in ids}
    try:
        n_seg = len(segmentation_classes(root, "voc", classes)) if seg_ids else 0
    except ValueError as exc:  # no class list to read the masks by: reported, the masks are left unchecked
        report.problem(str(exc))
        seg_ids, n_seg = set(), 0
    all_ids = list(dict.fromkeys(i for ids in splits.values() for i in ids))
    for image_id in _sample(all_ids, max_images, seed):
        image = root / "JPEGImages" / f"{image_id}.jpg"
        size = _decode(image, report, max_pixels) if image.is_file() else report.problem(
            f"{image}: listed in ImageSets but missing")
        xml = root / "Annotations" / f"{image_id}.xml"
        if xml.is_file():
            _check_xml(xml, size, None if names is None else set(names), report, require_objects)
        if image_id in seg_ids:
            mask = root / "SegmentationClass" / f"{image_id}.png"
            try:
                labels = check_labels(read_label_png(mask, max_pixels), n_seg, str(mask))
                if size is not None and labels.shape != (size[1], size[0]):
                    report.problem(f"{mask}: label map is {labels.shape[1]}x{labels.shape[0]} but the image is "
                                   f"{size[0]}x{size[1]}")
            except ValueError as exc:
                report.problem(str(exc))
    return report


# --- COCO ---------------------------------------------------------------------------------------------------

def check_coco(root: Path, max_images: int | None = None, seed: int = 0,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Report:
    """Every annotations/instances_<split>.json: references, categories, file names, images and their sizes,
    boxes inside their images."""
    from .coco import open_split

    report = Report(str(root), "coco")
    for path in sorted((root / "annotations").glob("instances_*.json")):
        split = path.stem[len("instances_"):]
        try:
            s = open_split(root, split)
        except ValueError as exc:
            report.problem(str(exc))
            continue
        report.splits[split] = len(s.img_ids)
        names = dict(zip(s.cat_ids, s.classes))
        for ann in s.coco.dataset.get("annotations", []):
            report.classes[names[ann["category_id"]]] += 1
        for i in _sample(list(range(len(s.img_ids))), max_images, seed):
            info, image = s.coco.imgs[s.img_ids[i]], s.paths[i]
            if not image.is_file():
                report.problem(f"{path}: image {s.img_ids[i]}: file {image} missing")
                continue
            size = _decode(image, report, max_pixels)
            if size is not None and (info.get("width"), info.get("height")) != size:
                report.problem(f"{path}: image {s.img_ids[i]} is {size[0]}x{size[1]} but the JSON says "
                               f"{info.get('width')}x{info.get('height')}")
            for ann in s.coco.imgToAnns.get(s.img_ids[i], []):
                x, y, w, h = (ann.get("bbox") or [0, 0, 0, 0]) + [0] * (4 - len(ann.get("bbox") or []))
                if size is not None and (x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > size[0] + 1e-6
                                         or y + h > size[1] + 1e-6):
                    report.problem(f"{path}: annotation {ann.get('id')}: bbox {ann.get('bbox')} empty or outside "
                                   f"the {size[0]}x{size[1]} image {s.img_ids[i]}")
    if not report.splits and not report.problems:
        report.problem(f"{root / 'annotations'}: no instances_<split>.json")
    return report


# --- image folders --------------------------------------------------------------------------------------------

def _images_under(folder: Path, report: Report, seen: dict | None = None) -> list[Path]:
    from pretext.data.sources import DataSourceError, folder_images

    repeats: list = []
    try:
        images = folder_images(folder, repeats, seen)
    except DataSourceError as exc:
        report.problem(str(exc))
        return []
    for skipped in repeats:
        report.problem(str(skipped))
    return images


def check_imagefolder(root: Path, max_images: int | None = None, seed: int = 0,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> Report:
    """Class sub-folders (or train/ and test/ of them): images per class; every sampled image decodes."""
    report = Report(str(root), "imagefolder")
    split_dirs = [root / s for s in ("train", "val", "test") if (root / s).is_dir()] or [root]
    for split in split_dirs:
        classes = sorted(p for p in split.iterdir() if p.is_dir())
        if not classes:
            report.problem(f"{split}: no class sub-folders")
        files, seen = [], {}  # shared: a class folder linked from another class is a problem
        for c in classes:
            images = _images_under(c, report, seen)
            if not images:
                report.problem(f"{c}: class folder without images")
            report.classes[c.name] += len(images)
            files += images
        report.splits[split.name if split != root else "all"] = len(files)
        for path in _sample(files, max_images, seed):
            _decode(path, report, max_pixels)
    return report


def check_folder(root: Path, max_images: int | None = None, seed: int = 0,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Report:
    """Every image file under ROOT decodes."""
    report = Report(str(root), "folder")
    files = _images_under(root, report)
    report.splits["all"] = len(files)
    if not files:
        report.problem(f"{root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    for path in _sample(files, max_images, seed):
        _decode(path, report, max_pixels)
    return report


def check_dataset(root: str | Path, fmt: str = "auto", max_images: int | None = None, seed: int = 0,
                  max_pixels: int = DEFAULT_MAX_PIXELS, require_objects: bool = False) -> Report:
    """The report of ROOT checked as `fmt` (auto: `detect_format`); `require_objects`: a VOC annotation without
    objects is a problem (detection), not a warning."""
    root = Path(root)
    if not root.is_dir():
        report = Report(str(root), fmt)
        report.problem(f"{root}: not a directory")
        return report
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt == "voc":
        return check_voc(root, max_images, seed, max_pixels, require_objects=require_objects)
    check = {"coco": check_coco, "imagefolder": check_imagefolder, "folder": check_folder}[fmt]
    return check(root, max_images, seed, max_pixels)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """`cebench data check ...`."""
    parser = argparse.ArgumentParser(prog=prog, description="Dataset tools.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="validate a dataset and print a report (exit 1 on any problem)",
                           description=__doc__.splitlines()[0])
    check.add_argument("root", type=Path, metavar="ROOT")
    check.add_argument("--format", default="auto", choices=("auto", *FORMATS))
    check.add_argument("--max-images", type=int, default=None, metavar="N",
                       help="decode a seeded sample of N images (per split for COCO and ImageFolder; default: all)")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger images are problems")
    check.add_argument("--require-objects", action="store_true",
                       help="a VOC annotation without objects is a problem (for detection), not a warning")
    check.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the report as JSON")
    check.set_defaults(run=_run_check)
    from .fetch import add_parser as add_fetch
    from .objects import add_parser as add_objects

    add_objects(sub)
    add_fetch(sub)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`check`: print the report, 0 when clean, 1 with problems; `objects`: write object crops; `fetch`: download
    a dataset."""
    from pretext.cli import setup_logging

    setup_logging()
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as exc:  # bad input named by the reader that found it
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


def _run_check(args: argparse.Namespace) -> int:
    report = check_dataset(args.root, args.format, args.max_images, args.seed, args.max_pixels, args.require_objects)
    print(report.text())
    if args.json:
        from pretext.engine.checkpoint import atomic_write_text

        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
