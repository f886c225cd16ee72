"""`cebench voc-tree`: a labelImg-style detection dataset (a folder of images, a folder of VOC XML files, split
lists) as a VOC-format root that `transfer detect` and `evaluate` read, with links instead of copies.

The root gets `ImageSets/Main/<split>.txt`, `JPEGImages/<id>.jpg` and `Annotations/<id>.xml` (absolute symlinks
to the originals, or copies with `--copy`), `classes.txt` and the manifest `voc_tree.json`. Rules:
- An image is a file of the images folder (not its subfolders) with an image extension; its id is the file stem,
  which must be a valid VOC id (`check_id`, and no whitespace: the list readers split lines on it). Two images
  with the same stem are an error.
- Its annotation is `<stem>.xml` of the annotations folder if there is one, else the XML whose `<filename>` is
  the image's file name (exactly one; labelImg records it, and it survives renaming the XML).
- A split list is a `.csv` file with a `filename` column (one row per box: repeats collapse, first appearance
  keeps the order) or a text file with one entry per line; an entry is an image's file name or its id. `all`
  instead of a file is every image that has an annotation.
- The detection reader opens `JPEGImages/<id>.jpg` as JPEG: another format (PNG, ...) is refused unless `--copy`,
  which converts it to JPEG (quality 95; an alpha channel is dropped).
- `classes.txt` is `--classes`, else the sorted class names of the splits' XMLs.
- An existing, non-empty root is refused unless `voc_tree.json` says this command made it and it holds nothing
  else; then it is rebuilt. Everything is checked before the first file is written.
Every problem is a `ValueError` naming the file and what is wrong.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pretext.data.sources import IMAGE_EXTS, check_id
from pretext.engine.checkpoint import atomic_write_text

from .arguments import command_main
from .detection_eval import read_boxes
from .voc import BACKGROUND_NAMES, check_split, check_class_names, read_objects

log = logging.getLogger("cebench")

MANIFEST = "voc_tree.json"
MADE_BY = "cebench voc-tree"
ALL = "all"  # --split NAME=all: every annotated image
JPEG_QUALITY = 95


@dataclass(frozen=True)
class Sample:
    """One image of the tree: its source files and the (class, difficult) pairs of its annotation."""

    image: Path
    annotation: Path
    is_jpeg: bool
    objects: tuple[tuple[str, bool], ...]


@dataclass(frozen=True)
class TreePlan:
    """Everything the tree will hold, checked before anything is written."""

    samples: dict[str, Sample]  # id -> sample, ids of every split
    splits: dict[str, list[str]]  # split -> ids in list order
    classes: list[str]


def check_voc_id(image_id: str, where: str) -> str:
    """`check_id`, and no whitespace: ImageSets lists and results files are split on it."""
    check_id(image_id, where)
    if any(ch.isspace() for ch in image_id):
        raise ValueError(f"{where}: invalid image id {image_id!r} (VOC ids cannot contain whitespace)")
    return image_id


def index_images(folder: Path) -> dict[str, Path]:
    """id (file stem) -> image file of `folder`, not recursive; a repeated stem is an error."""
    if not folder.is_dir():
        raise ValueError(f"images folder not found: {folder}")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTS or not path.is_file():
            continue
        if path.stem in found:
            raise ValueError(f"{path}: same id {path.stem!r} as {found[path.stem]} (ids are file stems)")
        found[path.stem] = path
    if not found:
        raise ValueError(f"{folder}: no images (extensions {', '.join(sorted(IMAGE_EXTS))})")
    return found


class AnnotationIndex:
    """The XML files of a folder, found by stem, else by their <filename> element (read only when needed)."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise ValueError(f"annotations folder not found: {folder}")
        self.folder = folder
        self.by_stem: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() == ".xml" and not path.name.startswith(".") and path.is_file():
                if path.stem in self.by_stem:
                    raise ValueError(f"{path}: same stem as {self.by_stem[path.stem]}")
                self.by_stem[path.stem] = path
        self._by_filename: dict[str, list[Path]] | None = None

    def find(self, image: Path) -> Path | None:
        """`<stem>.xml`, else the one XML whose <filename> is the image's file name, else None."""
        if image.stem in self.by_stem:
            return self.by_stem[image.stem]
        matches = self._filename_index().get(image.name, [])
        if len(matches) > 1:
            raise ValueError(f"{image}: no {image.stem}.xml and {len(matches)} XMLs name it in <filename>: "
                             f"{', '.join(str(p) for p in matches)}")
        return matches[0] if matches else None

    def _filename_index(self) -> dict[str, list[Path]]:
        if self._by_filename is None:
            self._by_filename = {}
            for path in self.by_stem.values():
                self._by_filename.setdefault(_xml_filename(path), []).append(path)
        return self._by_filename


def _xml_filename(path: Path) -> str:
    try:
        return (ET.parse(path).getroot().findtext("filename") or "").strip()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: malformed XML ({exc})") from None


def read_split_entries(path: Path) -> list[str]:
    """Entries of a split list: a CSV's `filename` column or a text file's lines; repeats collapse, order kept."""
    if not path.is_file():
        raise ValueError(f"split list not found: {path}")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            entries = _csv_entries(path, f) if path.suffix.lower() == ".csv" else _text_entries(f)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not entries:
        raise ValueError(f"{path}: no entries")
    unique = list(dict.fromkeys(entries))
    log.info("%s: %d entries, %d images", path, len(entries), len(unique))
    return unique


def _csv_entries(path: Path, f) -> list[str]:
    reader = csv.DictReader(f)
    if "filename" not in (reader.fieldnames or []):
        raise ValueError(f"{path}: no 'filename' column (columns: {', '.join(reader.fieldnames or [])})")
    entries = []
    for row in reader:
        name = (row["filename"] or "").strip()
        if not name:
            raise ValueError(f"{path}:{reader.line_num}: empty filename")
        entries.append(name)
    return entries


def _text_entries(f) -> list[str]:
    return [line.strip() for line in f if line.strip()]


def _resolve_entries(entries: Sequence[str], images: Mapping[str, Path], where: Path, folder: Path) -> list[str]:
    """Ids of split entries; an entry is an image's file name or its id."""
    by_name = {path.name: image_id for image_id, path in images.items()}
    ids = []
    for entry in entries:
        image_id = by_name.get(entry, entry if entry in images else None)
        if image_id is None:
            raise ValueError(f"{where}: entry {entry!r} has no image in {folder}")
        ids.append(image_id)
    return list(dict.fromkeys(ids))  # `a.jpg` and `a` are the same image


def _read_sample(image: Path, index: AnnotationIndex, copy: bool) -> Sample:
    """Check an image (readable; JPEG unless copying) and its annotation as the detection reader will."""
    annotation = index.find(image)
    if annotation is None:
        raise ValueError(f"{image}: no annotation in {index.folder} (no {image.stem}.xml, and no XML with "
                         f"<filename>{image.name}</filename>)")
    try:
        with Image.open(image) as img:
            is_jpeg = img.format in ("JPEG", "MPO")  # MPO: a camera JPEG with extra frames
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{image}: not a readable image ({exc})") from None
    if not is_jpeg and not copy:
        raise ValueError(f"{image}: not a JPEG; the detection reader expects JPEGImages/<id>.jpg to be JPEG "
                         "(--copy converts it)")
    objects = read_objects(annotation)  # names and <difficult>, as the reader checks them
    read_boxes(annotation)  # every <bndbox>, as the reader checks them
    return Sample(image, annotation, is_jpeg, tuple(objects))


def plan_tree(images: Path, annotations: Path, splits: Mapping[str, Path | str],
              classes: Sequence[str] | None, copy: bool) -> TreePlan:
    """Match split entries to images and annotations, read every XML once and choose the class list."""
    if not splits:
        raise ValueError("no splits: give at least one --split NAME=FILE")
    found, index = index_images(images), AnnotationIndex(annotations)
    samples: dict[str, Sample] = {}
    split_ids = {}
    for name, source in splits.items():
        check_split(name)
        ids = _all_ids(found, index) if str(source) == ALL else _split_ids(Path(source), found, images)
        for image_id in ids:
            if image_id not in samples:
                samples[image_id] = _read_sample(found[image_id], index, copy)
        split_ids[name] = ids
    _check_shared_annotations(samples)
    return TreePlan(samples, split_ids, choose_classes(samples, classes))


def _split_ids(path: Path, images: Mapping[str, Path], folder: Path) -> list[str]:
    ids = _resolve_entries(read_split_entries(path), images, path, folder)
    for image_id in ids:
        check_voc_id(image_id, str(images[image_id]))
    return ids


def _all_ids(images: Mapping[str, Path], index: AnnotationIndex) -> list[str]:
    """Every image with an annotation; the others, and XMLs of no image, are counted in the log."""
    matched = {image_id: index.find(path) for image_id, path in images.items()}
    ids = [image_id for image_id, xml in matched.items() if xml is not None]
    if not ids:
        raise ValueError(f"split {ALL!r}: no image has an annotation in {index.folder}")
    for image_id in ids:
        check_voc_id(image_id, str(images[image_id]))
    unmatched = [i for i, xml in matched.items() if xml is None]
    if unmatched:
        log.warning("split %r: %d image(s) without an annotation left out, e.g. %s", ALL, len(unmatched),
                    images[unmatched[0]])
    unused = sorted(set(index.by_stem.values()) - set(matched.values()))
    if unused:
        log.warning("split %r: %d annotation(s) of no image, e.g. %s", ALL, len(unused), unused[0])
    return ids


def _check_shared_annotations(samples: Mapping[str, Sample]) -> None:
    owner: dict[Path, str] = {}
    for image_id, sample in samples.items():
        if sample.annotation in owner:
            raise ValueError(f"{sample.annotation}: the annotation of two images, "
                             f"{samples[owner[sample.annotation]].image} and {sample.image}")
        owner[sample.annotation] = image_id


def choose_classes(samples: Mapping[str, Sample], classes: Sequence[str] | None) -> list[str]:
    """`classes` if given, else the sorted class names of the XMLs; names reserved for background are refused."""
    first: dict[str, Path] = {}  # class -> first XML naming it
    for sample in samples.values():
        for name, _ in sample.objects:
            first.setdefault(name, sample.annotation)
    if classes is None:
        if not first:
            raise ValueError("the annotations of the splits hold no objects: give --classes")
        names = check_class_names(sorted(first), "class names of the annotations")
        log.info("classes from the annotations: %s", ", ".join(names))
    else:
        names = check_class_names(list(classes), "--classes")
        _compare_classes(names, first)
    for name in names:
        if name in BACKGROUND_NAMES:  # read_class_list would drop it as the background line
            raise ValueError(f"class {name!r} ({first.get(name, '--classes')}): the name is reserved for background")
    return names


def _compare_classes(names: Sequence[str], first: Mapping[str, Path]) -> None:
    for name in sorted(set(first) - set(names)):
        log.warning("class %r (e.g. %s) is not in --classes: the detection reader refuses or skips its boxes",
                    name, first[name])
    for name in names:
        if name not in first:
            log.warning("class %r of --classes has no box in the splits", name)


def _check_root(out: Path) -> dict | None:
    """None for a new or empty root, the manifest of a root this command made; anything else is an error."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return None
    manifest = _read_manifest(out)
    allowed = _tree_files(out, manifest["ids"], manifest["splits"])
    for dirpath, dirnames, filenames in os.walk(out):
        for name in filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            if Path(dirpath, name) not in allowed:
                raise ValueError(f"{Path(dirpath, name)}: not made by {MADE_BY} (not in {out / MANIFEST}); "
                                 "remove it or choose another --out")
    return manifest


def _read_manifest(out: Path) -> dict:
    path = out / MANIFEST
    if not path.is_file():
        raise ValueError(f"--out {out} exists, is not empty and has no {MANIFEST} (not made by {MADE_BY})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        ok = manifest.get("made_by") == MADE_BY and all(isinstance(i, str) for i in manifest["ids"])
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable manifest ({exc})") from None
    if not ok or not isinstance(manifest.get("splits"), dict):
        raise ValueError(f"{path}: not a {MADE_BY} manifest")
    for image_id in manifest["ids"]:
        check_voc_id(image_id, str(path))
    for split in manifest["splits"]:
        check_split(split)
    return manifest


def _tree_files(out: Path, ids: Sequence[str], splits: Sequence[str]) -> set[Path]:
    """Every file a tree of these ids and splits has."""
    files = {out / MANIFEST, out / "classes.txt"}
    files |= {out / "ImageSets" / "Main" / f"{split}.txt" for split in splits}
    files |= {out / "JPEGImages" / f"{i}.jpg" for i in ids} | {out / "Annotations" / f"{i}.xml" for i in ids}
    return files


def _place(src: Path, dst: Path, copy: bool) -> None:
    if copy:
        shutil.copyfile(src, dst)
    else:
        os.symlink(src.absolute(), dst)


def _place_image(sample: Sample, dst: Path, copy: bool) -> None:
    if sample.is_jpeg:
        _place(sample.image, dst, copy)
        return
    with Image.open(sample.image) as img:  # only with --copy: _read_sample refused it otherwise
        img.convert("RGB").save(dst, "JPEG", quality=JPEG_QUALITY)


def write_tree(plan: TreePlan, out: Path, old: dict | None, sources: dict, copy: bool) -> None:
    """Write the tree over `old` (a previous tree's manifest); the manifest goes first, marked incomplete, so that
    an interrupted run leaves a root that can be rebuilt."""
    if old is not None:
        log.info("%s: made by %s before; rebuilding it", out, MADE_BY)
        for path in _tree_files(out, old["ids"], old["splits"]) - {out / MANIFEST}:
            path.unlink(missing_ok=True)
    for sub in ("ImageSets/Main", "JPEGImages", "Annotations"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    manifest = {"made_by": MADE_BY, **sources, "copy": copy, "classes": plan.classes, "complete": False,
                "ids": sorted(plan.samples)}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    for image_id, sample in plan.samples.items():
        _place_image(sample, out / "JPEGImages" / f"{image_id}.jpg", copy)
        _place(sample.annotation, out / "Annotations" / f"{image_id}.xml", copy)
    for name, ids in plan.splits.items():
        atomic_write_text(out / "ImageSets" / "Main" / f"{name}.txt", "".join(f"{i}\n" for i in ids))
    atomic_write_text(out / "classes.txt", "".join(f"{name}\n" for name in plan.classes))
    atomic_write_text(out / MANIFEST, json.dumps({**manifest, "complete": True}, indent=1) + "\n")


def summarise(plan: TreePlan, out: Path) -> dict:
    """Per split: images, boxes of the listed classes, of them difficult, and boxes of other classes."""
    listed, splits = set(plan.classes), {}
    for name, ids in plan.splits.items():
        objects = [obj for i in ids for obj in plan.samples[i].objects]
        kept = [difficult for cls, difficult in objects if cls in listed]
        splits[name] = {"images": len(ids), "boxes": len(kept), "difficult": sum(kept),
                        "other_classes": len(objects) - len(kept)}
    converted = sum(not s.is_jpeg for s in plan.samples.values())
    return {"root": str(out), "classes": plan.classes, "splits": splits, "converted_to_jpeg": converted}


def build_voc_tree(images: str | Path, annotations: str | Path, out: str | Path, splits: Mapping[str, Path | str],
                   classes: Sequence[str] | None = None, copy: bool = False) -> dict:
    """Build the VOC-format root `out` from an images folder, an annotations folder and split lists; the summary."""
    images, annotations, out = Path(images).absolute(), Path(annotations).absolute(), Path(out)
    plan = plan_tree(images, annotations, splits, classes, copy)
    old = _check_root(out)  # refuse before writing anything
    sources = {"images": str(images), "annotations": str(annotations),
               "splits": {name: ALL if str(src) == ALL else str(Path(src).absolute()) for name, src in splits.items()}}
    write_tree(plan, out, old, sources, copy)
    return summarise(plan, out)


def format_summary(summary: dict) -> str:
    """The printed summary: one line per split, then the classes."""
    lines = [f"VOC tree {summary['root']}:"]
    for name, row in summary["splits"].items():
        other = f", {row['other_classes']} of other classes" if row["other_classes"] else ""
        lines.append(f"  {name}: {row['images']} images, {row['boxes']} boxes ({row['difficult']} difficult){other}")
    lines.append(f"  classes ({len(summary['classes'])}): {', '.join(summary['classes'])}")
    if summary["converted_to_jpeg"]:
        lines.append(f"  {summary['converted_to_jpeg']} image(s) converted to JPEG")
    return "\n".join(lines)


def parse_splits(values: Sequence[str]) -> dict[str, str]:
    """`NAME=FILE` options as name -> file (or `all`); a repeated name or a missing '=' is an error."""
    splits: dict[str, str] = {}
    for value in values:
        name, sep, source = value.partition("=")
        if not sep or not source:
            raise ValueError(f"--split {value!r}: expected NAME=FILE or NAME=all")
        if check_split(name) in splits:
            raise ValueError(f"--split {value!r}: split {name!r} given twice")
        splits[name] = source
    return splits


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command's options."""
    p = argparse.ArgumentParser(prog=prog or "python -m transfer.voc_layout",
                                description=" ".join(__doc__.split("\n\n")[0].split()),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__[__doc__.index("Rules:"):__doc__.index("Every problem")])
    p.add_argument("--images", type=Path, required=True, metavar="DIR", help="folder of the images")
    p.add_argument("--annotations", type=Path, required=True, metavar="DIR", help="folder of the VOC XML files")
    p.add_argument("--out", type=Path, required=True, metavar="ROOT", help="VOC root to create")
    p.add_argument("--split", action="append", required=True, metavar="NAME=FILE",
                   help="a split from a CSV (filename column) or text list, or NAME=all; repeatable")
    p.add_argument("--classes", metavar="A,B", help="class list (default: the names in the XMLs, sorted)")
    p.add_argument("--copy", action="store_true", help="copy (and convert non-JPEG images) instead of symlinking")
    return p


def _build(args: argparse.Namespace) -> dict:
    classes = None if args.classes is None else [c.strip() for c in args.classes.split(",")]
    return build_voc_tree(args.images, args.annotations, args.out, parse_splits(args.split), classes, args.copy)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse, build the tree, print the summary; bad images, annotations or split lists: exit code 2."""
    return command_main(build_parser(prog), argv, _build, lambda summary, _args: format_summary(summary),
                        errors=(ValueError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())
