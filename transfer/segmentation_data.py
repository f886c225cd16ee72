"""Semantic segmentation data: images with per-pixel class labels (0 = background, 255 = ignored).

Four layouts, told apart by what the root holds:

- **VOC** (`ImageSets/Segmentation/<split>.txt`, `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png`): palette or
  grey-level PNGs whose values are class indices (RGB PNGs in the VOC colours are mapped back to indices).
  Classes: background, then ROOT/classes.txt (a leading `background` line is allowed) or `--classes` or the 20 VOC
  classes.
- **SBD** (Hariharan et al.'s benchmark: `<split>.txt`, `img/<id>.jpg`, `cls/<id>.mat` with
  `GTcls.Segmentation`), read with scipy; classes as VOC.
- **COCO** (`annotations/instances_<split>.json`, images in `<split>/`): the instance masks (pycocotools) painted
  into one label map, category k (in id order) as label k + 1; crowd regions and pixels claimed by two different
  categories become 255.
- **Folder pair** (`images/` and `masks/<stem>.png`): ids from ROOT/<split>.txt, or the images of
  `images/<split>/` with masks in `masks/<split>/`. Classes: ROOT/classes.txt or `--classes` (value order,
  background first or added), required: a folder pair has no default class list.

A mask whose size differs from its image's, or with values outside [0, classes) other than 255, is a ValueError
naming the file; so is a mode that cannot hold class indices.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pretext.data.images import DEFAULT_MAX_PIXELS, load_rgb
from pretext.data.sources import fixed_subset, read_id_list

from .voc import BACKGROUND_NAMES, VOC_CLASSES, check_class_names, check_split, read_lines

IGNORE = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def voc_palette(n: int = 256) -> np.ndarray:
    """(n, 3) uint8: the PASCAL VOC colour map (class k's colour from the bits of k; 255 = (224, 224, 192))."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for k in range(n):
        c, r, g, b = k, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[k] = (r, g, b)
    return out


def label_array(img: Image.Image, path: Path) -> np.ndarray:
    """(H, W) uint8 class indices of a label image: palette (P) and grey (L) images as stored; RGB/RGBA images
    through the VOC colour map, every colour of which must be a VOC colour."""
    if img.mode in ("P", "L"):
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):
        arr = np.asarray(img)
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
            raise ValueError(f"{path}: label values must be 0..255, found {int(arr.min())}..{int(arr.max())}")
        return arr.astype(np.uint8)
    if img.mode in ("RGB", "RGBA"):
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
        code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        pal = voc_palette()
        table = {int(r) << 16 | int(g) << 8 | int(b): k for k, (r, g, b) in enumerate(pal)}
        colours, inverse = np.unique(code, return_inverse=True)
        unknown = [c for c in colours.tolist() if c not in table]
        if unknown:
            c = unknown[0]
            raise ValueError(f"{path}: RGB mask with colour {(c >> 16, (c >> 8) & 255, c & 255)} that is not in the "
                             f"VOC colour map; store class indices as a palette or grey PNG")
        return np.asarray([table[c] for c in colours.tolist()], dtype=np.uint8)[inverse].reshape(code.shape)
    raise ValueError(f"{path}: a label image must be palette, grey or RGB, got mode {img.mode}")


def read_label_png(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(H, W) uint8 class indices of a PNG label map; missing or unreadable files name the file."""
    if not path.is_file():
        raise ValueError(f"label map not found: {path}")
    try:
        with Image.open(path) as img:
            if img.size[0] * img.size[1] > max_pixels:
                raise ValueError(f"{path}: {img.size[0]}x{img.size[1]} pixels exceeds the limit of {max_pixels}")
            img.load()
            return label_array(img, path)
    except ValueError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError... for corrupt data
        raise ValueError(f"{path}: cannot read label map: {type(exc).__name__}: {exc}") from exc


def write_label_png(path: Path, labels: np.ndarray) -> None:
    """A palette PNG of (H, W) class indices in the VOC colours (atomically: a temporary file, then rename)."""
    img = Image.fromarray(np.asarray(labels, dtype=np.uint8), "P")
    img.putpalette(voc_palette().reshape(-1).tolist())
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)


def check_labels(labels: np.ndarray, n_classes: int, where: str) -> np.ndarray:
    """`labels` unchanged when every value is < n_classes or 255; else a ValueError naming the stray values."""
    stray = np.unique(labels[(labels >= n_classes) & (labels != IGNORE)])
    if stray.size:
        raise ValueError(f"{where}: label value(s) {stray[:10].tolist()} outside the {n_classes} classes "
                         f"(0..{n_classes - 1}) and not {IGNORE} (ignored)")
    return labels


# --- label sources -------------------------------------------------------------------------------------------

class _PngLabels:
    """Label maps stored as PNG files."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = tuple(paths)

    def where(self, i: int) -> str:
        return str(self.paths[i])

    def read(self, i: int, max_pixels: int) -> np.ndarray:
        return read_label_png(self.paths[i], max_pixels)


class _SbdLabels:
    """SBD's cls/<id>.mat files (GTcls.Segmentation)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = tuple(paths)

    def where(self, i: int) -> str:
        return str(self.paths[i])

    def read(self, i: int, max_pixels: int) -> np.ndarray:
        try:
            from scipy.io import loadmat
        except ImportError as exc:  # pragma: no cover - scipy comes with scikit-learn
            raise ValueError("reading SBD .mat files needs scipy (pip install scipy)") from exc
        path = self.paths[i]
        if not path.is_file():
            raise ValueError(f"label file not found: {path}")
        try:
            gt = loadmat(str(path), squeeze_me=True, struct_as_record=False)["GTcls"]
            seg = np.asarray(gt.Segmentation)
        except Exception as exc:  # scipy raises many kinds for a bad file
            raise ValueError(f"{path}: not an SBD cls file with GTcls.Segmentation ({type(exc).__name__}: "
                             f"{exc})") from exc
        if seg.ndim != 2 or seg.size > max_pixels or seg.min(initial=0) < 0 or seg.max(initial=0) > 255:
            raise ValueError(f"{path}: GTcls.Segmentation must be a 2-D array of values 0..255, got shape {seg.shape}")
        return seg.astype(np.uint8)


class _CocoLabels:
    """Label maps painted from COCO instance masks."""

    def __init__(self, coco, json_path: Path, img_ids: Sequence[int], cat_ids: Sequence[int]) -> None:
        self.coco, self.json_path, self.img_ids = coco, json_path, tuple(img_ids)
        self.label_of = {c: k + 1 for k, c in enumerate(cat_ids)}

    def where(self, i: int) -> str:
        return f"{self.json_path} (image id {self.img_ids[i]})"

    def read(self, i: int, max_pixels: int) -> np.ndarray:
        info = self.coco.imgs[self.img_ids[i]]
        h, w = int(info["height"]), int(info["width"])
        if h * w > max_pixels:
            raise ValueError(f"{self.where(i)}: {w}x{h} pixels exceeds the limit of {max_pixels}")
        labels = np.zeros((h, w), dtype=np.uint8)
        claimed = np.zeros((h, w), dtype=np.uint8)  # a label that has painted each pixel (0 = none)
        crowd = np.zeros((h, w), dtype=bool)
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=[self.img_ids[i]], iscrowd=None)):
            try:
                m = self.coco.annToMask(ann).astype(bool)
            except Exception as exc:  # malformed segmentation fields
                raise ValueError(f"{self.where(i)}: annotation {ann.get('id')} has an unreadable segmentation "
                                 f"({type(exc).__name__}: {exc})") from exc
            if ann.get("iscrowd", 0):
                crowd |= m
                continue
            k = self.label_of[ann["category_id"]]
            clash = m & (claimed > 0) & (claimed != k)
            labels[m] = k
            claimed[m] = k
            labels[clash] = IGNORE
            crowd |= clash  # a pixel of two categories stays ignored whatever is painted later
        labels[crowd] = IGNORE
        return labels


# --- the set -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentationSet:
    """Images of one split with their label maps; classes[0] is the background."""

    root: Path
    split: str
    kind: str  # voc | sbd | coco | folder
    ids: tuple[str, ...]
    images: tuple[Path, ...]
    classes: tuple[str, ...]
    labels: object = field(repr=False)  # a label source: read(i, max_pixels), where(i)

    def describe(self, max_images: int | None) -> dict:
        """Root, split and size, as metrics.json records an image set."""
        return {"root": str(self.root), "split": self.split, "kind": self.kind, "n_images": len(self.ids),
                "max_images": max_images}

    def label(self, i: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Checked (H, W) uint8 labels of image i."""
        return check_labels(self.labels.read(i, max_pixels), len(self.classes), self.labels.where(i))

    def pair(self, i: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, np.ndarray]:
        """(RGB image, checked labels) of image i; sizes that differ are a ValueError naming both files."""
        img = load_rgb(self.images[i], max_pixels)
        labels = self.label(i, max_pixels)
        if labels.shape != (img.size[1], img.size[0]):
            raise ValueError(f"{self.labels.where(i)}: label map is {labels.shape[1]}x{labels.shape[0]} but its image "
                             f"{self.images[i]} is {img.size[0]}x{img.size[1]}")
        return img, labels

    def subset(self, keep: Sequence[int]) -> "SegmentationSet":
        """The images at indices `keep` (the label source is shared, indices are mapped)."""
        keep = list(keep)
        return SegmentationSet(self.root, self.split, self.kind, tuple(self.ids[i] for i in keep),
                               tuple(self.images[i] for i in keep), self.classes, _Subset(self.labels, keep))


class _Subset:
    def __init__(self, source, keep: list[int]) -> None:
        self.source, self.keep = source, keep

    def where(self, i: int) -> str:
        return self.source.where(self.keep[i])

    def read(self, i: int, max_pixels: int) -> np.ndarray:
        return self.source.read(self.keep[i], max_pixels)


def segmentation_kind(root: Path) -> str:
    """voc | sbd | coco | folder, from what ROOT holds; a ValueError naming what was looked for otherwise."""
    if (root / "SegmentationClass").is_dir() or (root / "ImageSets" / "Segmentation").is_dir():
        return "voc"
    if (root / "cls").is_dir() and (root / "img").is_dir():
        return "sbd"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "folder"
    if (root / "annotations").is_dir() and any((root / "annotations").glob("instances_*.json")):
        return "coco"
    if not root.is_dir():
        raise ValueError(f"segmentation root not found: {root}")
    raise ValueError(f"{root}: not a segmentation root: expected SegmentationClass/ + ImageSets/Segmentation/ (VOC), "
                     f"cls/ + img/ (SBD), images/ + masks/ (folder pair) or annotations/instances_<split>.json (COCO)")


def segmentation_classes(root: Path, kind: str, classes: Sequence[str] | None = None) -> list[str]:
    """Class names with background first: ROOT/classes.txt, else `classes`, else (VOC, SBD) the 20 VOC classes."""
    path = root / "classes.txt"
    if path.is_file():
        names = [line.strip() for line in read_lines(path, "class list") if line.strip()]
        names = names[1:] if names and names[0] in BACKGROUND_NAMES else names
        names = check_class_names(names, str(path))
        if classes is not None and [c for c in classes if c not in BACKGROUND_NAMES] != names:
            raise ValueError(f"{path} lists {names} but --classes gave {list(classes)}; drop one of them")
    elif classes is not None:
        names = check_class_names([c for c in classes if c not in BACKGROUND_NAMES], "--classes")
    elif kind in ("voc", "sbd"):
        names = list(VOC_CLASSES)
    else:
        raise ValueError(f"{root}: a {kind} segmentation root needs classes.txt (one class per line, in label-value "
                         f"order) or --classes")
    if len(names) + 1 > IGNORE:
        raise ValueError(f"{root}: {len(names) + 1} classes do not fit 8-bit label maps (at most {IGNORE})")
    return ["background", *names]


def _ids(list_file: Path) -> list[str]:
    ids = read_id_list(list_file)  # DataSourceError (a ValueError) names the file and the bad or duplicate id
    if not ids:
        raise ValueError(f"{list_file}: no image ids")
    return ids


def open_segmentation_set(root: str | Path, split: str, classes: Sequence[str] | None = None,
                          max_images: int | None = None, seed: int = 0) -> SegmentationSet:
    """One split of a VOC, SBD, COCO or folder-pair root (module docstring), optionally the seed's fixed subset of
    `max_images` images. Missing images or label files are errors naming the first."""
    root = Path(root)
    split = check_split(split)
    kind = segmentation_kind(root)
    if kind == "coco":
        data = _open_coco(root, split, classes)
    else:
        names = tuple(segmentation_classes(root, kind, classes))
        if kind == "voc":
            ids = _ids(root / "ImageSets" / "Segmentation" / f"{split}.txt")
            images = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
            source = _PngLabels([root / "SegmentationClass" / f"{i}.png" for i in ids])
        elif kind == "sbd":
            ids = _ids(root / f"{split}.txt")
            images = [root / "img" / f"{i}.jpg" for i in ids]
            source = _SbdLabels([root / "cls" / f"{i}.mat" for i in ids])
        else:
            ids, images, masks = _folder_pair(root, split)
            source = _PngLabels(masks)
        data = SegmentationSet(root, split, kind, tuple(ids), tuple(images), names, source)
    data = data.subset(fixed_subset(len(data.ids), max_images, seed))
    missing = [str(p) for p in data.images if not p.is_file()]
    if data.kind != "coco":
        missing += [data.labels.where(i) for i in range(len(data.ids)) if not Path(data.labels.where(i)).is_file()]
    if missing:
        raise ValueError(f"{root}: {len(missing)} image or label file(s) of split {split} missing, e.g. {missing[0]}")
    return data


def _folder_pair(root: Path, split: str) -> tuple[list[str], list[Path], list[Path]]:
    """Ids, images and masks of a folder pair: ROOT/<split>.txt over images/ and masks/, or images/<split>/."""
    list_file = root / f"{split}.txt"
    if list_file.is_file():
        image_dir, mask_dir, ids = root / "images", root / "masks", _ids(list_file)
    elif (root / "images" / split).is_dir():
        image_dir, mask_dir = root / "images" / split, root / "masks" / split
        ids = sorted(p.stem for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not ids:
            raise ValueError(f"{image_dir}: no images")
    else:
        raise ValueError(f"{root}: split {split!r} needs a list {list_file} or a folder {root / 'images' / split}")
    by_stem: dict[str, Path] = {}
    for p in sorted(image_dir.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            if p.stem in by_stem:
                raise ValueError(f"{image_dir}: two images share the name {p.stem!r} "
                                 f"({by_stem[p.stem].name}, {p.name})")
            by_stem[p.stem] = p
    missing = [i for i in ids if i not in by_stem]
    if missing:
        raise ValueError(f"{image_dir}: no image for id {missing[0]!r} ({len(missing)} missing)")
    return ids, [by_stem[i] for i in ids], [mask_dir / f"{i}.png" for i in ids]


def _open_coco(root: Path, split: str, classes: Sequence[str] | None) -> SegmentationSet:
    from .coco import open_split

    s = open_split(root, split)
    if classes is not None:
        raise ValueError(f"{root}: a COCO root brings its own categories; --classes is for roots without classes.txt")
    if len(s.classes) + 1 > IGNORE:
        raise ValueError(f"{s.path}: {len(s.classes) + 1} classes do not fit 8-bit label maps (at most {IGNORE})")
    ids = [str(i) for i in s.img_ids]
    with contextlib.redirect_stdout(io.StringIO()):
        source = _CocoLabels(s.coco, s.path, s.img_ids, s.cat_ids)
    return SegmentationSet(root, split, "coco", tuple(ids), tuple(s.paths), ("background", *s.classes), source)

