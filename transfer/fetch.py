"""`cebench data fetch NAME DIR`: download a dataset the suites use, check every file against its published MD5,
and lay it out as the suites read it.

- `cifar10`: the CIFAR-10 python archive (the one torchvision downloads), unpacked into ImageFolders
  `DIR/cifar10/train/<class>/<n>.png` (50,000) and `DIR/cifar10/test/<class>/<n>.png` (10,000): the layout of
  `cebench run cifar10 data.root=DIR/cifar10`. The batches are pickles: they are read only after the archive's
  MD5 matched, and with an unpickler that builds nothing but numpy arrays, lists, dicts and strings.
- `voc2007`: the PASCAL VOC2007 trainval and test archives, unpacked into `DIR/VOCdevkit/VOC2007`: a VOC root
  with the `trainval` and `test` splits (`cebench run paper data.root=DIR/VOCdevkit/VOC2007`).
- `voc2012`: the PASCAL VOC2012 trainval archive, unpacked into `DIR/VOCdevkit/VOC2012`: detection and
  classification `train`/`val`/`trainval`, segmentation `train`/`val` (the FCN protocol's test split).
- `sbd`: Hariharan et al.'s Semantic Boundaries Dataset (`benchmark.tgz`) as `DIR/sbd` (`train.txt`, `val.txt`,
  `img/`, `cls/`, `inst/`), with the FCN authors' `train_noval.txt` (SBD train + val without VOC2012 segmentation
  val): `cebench transfer segment --data DIR/sbd --train-split train_noval --test-data DIR/VOCdevkit/VOC2012`.
- `stl10`: the STL-10 binary archive as ImageFolders `DIR/stl10/{train,test}/<class>/<n>.png` (5,000 and 8,000
  labelled 96 px images) and the 100,000 unlabelled images as `DIR/stl10/unlabeled/<n>.png`, the split STL-10
  was made for: `cebench pretrain demo --out RUN data.root=DIR/stl10/unlabeled`.

Downloads go to `DIR/.downloads/<file>.part` and are renamed when complete and verified; an interrupted download
resumes where the server supports ranges (else it starts again); a file whose MD5 does not match is removed and
the command fails naming it. A finished dataset is marked (`.cebench-fetch.json`) and not fetched again.
`--base-url URL` fetches the same file names from a mirror. Nothing here runs unless asked: the suites never
download.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pretext.engine.checkpoint import install_dir

log = logging.getLogger(__name__)

MARKER = ".cebench-fetch.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """One file of a dataset: where it is published and its MD5."""

    url: str
    md5: str

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[1]


@dataclass(frozen=True)
class Dataset:
    """A fetchable dataset: its files and how they become the suites' layout under DIR (returns the root)."""

    files: tuple[Remote, ...]
    prepare: Callable[[list[Path], Path], Path]
    layout: str  # where it ends up, relative to DIR


class FetchError(RuntimeError):
    """A download failed or a file did not match its MD5; the message names the URL or file."""


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str, timeout: float = 60.0) -> Path:
    """`dest`, downloaded from `url` unless a verified copy is there; resumed from `dest.part` when the server
    answers a range request; removed and refused when its MD5 is not `md5`."""
    if dest.is_file() and md5_of(dest) == md5:
        log.info("%s: already downloaded and verified", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.is_file() and md5_of(part) == md5:  # complete, but not yet renamed when the last run stopped
        os.replace(part, dest)
        return dest
    start = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = start > 0 and response.status == 206
            total = response.headers.get("Content-Length")
            log.info("downloading %s (%s%s)", url, f"{int(total):,} bytes" if total else "size unknown",
                     f", resuming at {start:,}" if resumed else "")
            with open(part, "ab" if resumed else "wb") as f:
                shutil.copyfileobj(response, f, _CHUNK)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the range starts past the end: the partial file is not this file
            part.unlink()
        raise FetchError(f"{url}: download failed ({exc}); run the command again to resume") from None
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"{url}: download failed ({exc}); run the command again to resume") from None
    got = md5_of(part)
    if got != md5:
        part.unlink()
        raise FetchError(f"{url}: the downloaded file's MD5 is {got}, expected {md5} (removed; a changed or "
                         f"corrupted file: run again, or use --base-url for another mirror)")
    os.replace(part, dest)
    return dest


def _safe_extract(archive: Path, dest: Path) -> None:
    """Unpack a tar archive, refusing members that would land outside `dest` or are links or devices."""
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
                return
            _check_members(tar, archive, dest)  # pragma: no cover - Python without extraction filters
            tar.extractall(dest)  # pragma: no cover
    except tarfile.TarError as exc:
        raise FetchError(f"{archive}: {exc}") from None


def _check_members(tar: tarfile.TarFile, archive: Path, dest: Path) -> None:  # pragma: no cover
    root = dest.resolve()
    for member in tar.getmembers():
        target = (dest / member.name).resolve()
        if not (member.isfile() or member.isdir()) or root not in (target, *target.parents):
            raise FetchError(f"{archive}: unsafe member {member.name!r} (outside the destination, or a link)")


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays, dicts, lists, bytes and strings; any other global is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise FetchError(f"{path}: not a CIFAR-10 batch ({exc})") from None


def _key(batch: dict, name: str) -> object:
    return batch[name.encode()] if name.encode() in batch else batch[name]


def prepare_cifar10(archives: list[Path], dest: Path) -> Path:
    """The pickled batches as ImageFolders dest/cifar10/{train,test}/<class>/<n>.png."""
    work = dest / ".cifar10-extract"
    shutil.rmtree(work, ignore_errors=True)
    _safe_extract(archives[0], work)
    batches = work / "cifar-10-batches-py"
    meta = _unpickle(batches / "batches.meta")
    names = [n.decode() if isinstance(n, bytes) else n for n in _key(meta, "label_names")]
    out = dest / "cifar10"
    tmp = dest / ".cifar10-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for split, files in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        for name in names:
            (tmp / split / name).mkdir(parents=True)
        n = 0
        for file in files:
            batch = _unpickle(batches / file)
            data, labels = np.asarray(_key(batch, "data"), dtype=np.uint8), list(_key(batch, "labels"))
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
                raise FetchError(f"{batches / file}: expected (N, 3072) pixels and N labels, got {data.shape} and "
                                 f"{len(labels)}")
            for pixels, label in zip(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels):
                Image.fromarray(pixels).save(tmp / split / names[label] / f"{n:05d}.png")
                n += 1
    try:
        install_dir(tmp, out)  # an empty or absent folder only: a folder of the user's is refused, not deleted
    except ValueError as exc:
        raise FetchError(str(exc)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return out


def prepare_voc2007(archives: list[Path], dest: Path) -> Path:
    """Both archives unpacked over each other: dest/VOCdevkit/VOC2007 with trainval and test."""
    for archive in archives:
        _safe_extract(archive, dest)
    root = dest / "VOCdevkit" / "VOC2007"
    missing = [s for s in ("trainval", "test") if not (root / "ImageSets" / "Main" / f"{s}.txt").is_file()]
    if missing:
        raise FetchError(f"{root}: the archives held no ImageSets/Main list for {', '.join(missing)}")
    return root


def prepare_voc2012(archives: list[Path], dest: Path) -> Path:
    """The trainval archive unpacked: dest/VOCdevkit/VOC2012 with the Main and Segmentation split lists."""
    _safe_extract(archives[0], dest)
    root = dest / "VOCdevkit" / "VOC2012"
    wanted = [f"ImageSets/{kind}/{split}.txt" for kind in ("Main", "Segmentation") for split in ("train", "val")]
    missing = [w for w in wanted if not (root / w).is_file()]
    if missing:
        raise FetchError(f"{root}: the archive held no {', '.join(missing)}")
    return root


def prepare_sbd(archives: list[Path], dest: Path) -> Path:
    """benchmark.tgz's `benchmark_RELEASE/dataset` as dest/sbd, with train_noval.txt beside train.txt."""
    work = dest / ".sbd-extract"
    shutil.rmtree(work, ignore_errors=True)
    try:
        _safe_extract(archives[0], work)
        found = work / "benchmark_RELEASE" / "dataset"
        missing = [n for n in ("train.txt", "val.txt", "img", "cls") if not (found / n).exists()]
        if missing:
            raise FetchError(f"{archives[0]}: no {', '.join(missing)} under benchmark_RELEASE/dataset")
        shutil.copyfile(archives[1], found / "train_noval.txt")
        out = dest / "sbd"
        try:
            install_dir(found, out)
        except ValueError as exc:
            raise FetchError(str(exc)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


_STL_SIDE = 96


def _stl_images(path: Path) -> np.ndarray:
    """An STL-10 `*_X.bin` as (N, 96, 96, 3) uint8 (memory-mapped): each image is stored channel by channel,
    column-major."""
    size = path.stat().st_size if path.is_file() else -1
    if size <= 0 or size % (3 * _STL_SIDE * _STL_SIDE):
        raise FetchError(f"{path}: {'missing' if size < 0 else f'{size:,} bytes, not a whole number of'} "
                         f"3x96x96 images")
    pixels = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, _STL_SIDE, _STL_SIDE)
    return pixels.transpose(0, 3, 2, 1)


def _stl_labels(path: Path, n: int, n_classes: int) -> np.ndarray:
    """An STL-10 `*_y.bin` (one byte per image, classes 1..n_classes) as 0-based labels; n of them, or FetchError."""
    if not path.is_file():
        raise FetchError(f"{path}: missing (the labels of {n} images)")
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1
    if len(labels) != n:
        raise FetchError(f"{path}: {len(labels)} labels for {n} images")
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if len(bad):
        raise FetchError(f"{path}: {len(bad)} label(s) outside 1..{n_classes} (first: image {bad[0]}, "
                         f"label {labels[bad[0]] + 1})")
    return labels


def prepare_stl10(archives: list[Path], dest: Path) -> Path:
    """The binary archive as ImageFolders dest/stl10/{train,test}/<class>/<n>.png and dest/stl10/unlabeled/."""
    work = dest / ".stl10-extract"
    tmp = dest / ".stl10-tmp"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _safe_extract(archives[0], work)
        source = work / "stl10_binary"
        names_file = source / "class_names.txt"
        if not names_file.is_file():
            raise FetchError(f"{archives[0]}: no stl10_binary/class_names.txt")
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        for split in ("train", "test"):
            images = _stl_images(source / f"{split}_X.bin")
            labels = _stl_labels(source / f"{split}_y.bin", len(images), len(names))
            for name in names:
                (tmp / split / name).mkdir(parents=True)
            for n, (pixels, label) in enumerate(zip(images, labels)):
                Image.fromarray(np.ascontiguousarray(pixels)).save(tmp / split / names[label] / f"{n:05d}.png")
        (tmp / "unlabeled").mkdir()
        for n, pixels in enumerate(_stl_images(source / "unlabeled_X.bin")):
            Image.fromarray(np.ascontiguousarray(pixels)).save(tmp / "unlabeled" / f"{n:06d}.png")
        try:
            install_dir(tmp, dest / "stl10")
        except ValueError as exc:
            raise FetchError(str(exc)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return dest / "stl10"


_VOC = "https://thor.robots.ox.ac.uk/pascal/VOC"  # the mirror torchvision uses; host.robots.ox.ac.uk is the old one

DATASETS: dict[str, Dataset] = {
    "cifar10": Dataset((Remote("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                               "c58f30108f718f92721af3b95e74349a"),), prepare_cifar10, "cifar10"),
    "voc2007": Dataset((Remote(f"{_VOC}/voc2007/VOCtrainval_06-Nov-2007.tar", "c52e279531787c972589f7e41ab4ae64"),
                        Remote(f"{_VOC}/voc2007/VOCtest_06-Nov-2007.tar", "b6e924de25625d8de591ea690078ad9f")),
                       prepare_voc2007, "VOCdevkit/VOC2007"),
    "voc2012": Dataset((Remote(f"{_VOC}/voc2012/VOCtrainval_11-May-2012.tar", "6cd6e144f989b92b3379bac3b3de84fd"),),
                       prepare_voc2012, "VOCdevkit/VOC2012"),
    "sbd": Dataset((Remote("https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
                           "benchmark.tgz", "82b4d87ceb2ed10f6038a1cba92111cb"),
                    Remote("https://www.cs.cornell.edu/~bharathh/train_noval.txt",
                           "79bff800c5f0b1ec6b21080a3c066722")), prepare_sbd, "sbd"),
    "stl10": Dataset((Remote("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                             "91f7769df0f17e558f3565bffb0c7dfb"),), prepare_stl10, "stl10"),
}


def fetch(name: str, dest: str | Path, base_url: str | None = None, keep_archives: bool = True) -> Path:
    """Download, verify and lay out dataset `name` under `dest`; its root (reused when already fetched)."""
    if name not in DATASETS:
        raise FetchError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    spec, dest = DATASETS[name], Path(dest)
    marker = dest / spec.layout / MARKER
    if marker.is_file():
        log.info("%s: %s is already there (%s)", dest / spec.layout, name, marker.name)
        return dest / spec.layout
    archives = [download(f"{base_url.rstrip('/')}/{f.name}" if base_url else f.url, dest / ".downloads" / f.name,
                         f.md5) for f in spec.files]
    root = spec.prepare(archives, dest)
    (root / MARKER).write_text(json.dumps({"dataset": name, "files": {f.name: f.md5 for f in spec.files}}) + "\n")
    if not keep_archives:
        for archive in archives:
            archive.unlink()
    return root


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`cebench data fetch NAME DIR`."""
    p = sub.add_parser("fetch", help="download a dataset (cifar10, stl10, voc2007, voc2012, sbd), verify its MD5s, lay it out",
                       description=__doc__.splitlines()[0])
    p.add_argument("name", choices=sorted(DATASETS))
    p.add_argument("dest", type=Path, metavar="DIR")
    p.add_argument("--base-url", default=None, metavar="URL", help="fetch the same file names from this mirror")
    p.add_argument("--remove-archives", action="store_true", help="delete DIR/.downloads when done")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        root = fetch(args.name, args.dest, args.base_url, keep_archives=not args.remove_archives)
    except FetchError as exc:
        log.error("%s", exc)
        return 1
    print(f"{args.name}: {root}")
    return 0
