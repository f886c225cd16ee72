"""A dataset's fingerprint: a digest of what its readers read, so results computed from it can be keyed by it.

For a VOC-layout root and a split: the class list, every list file of that split (`ImageSets/*/<split>.txt` and
the per-class `<class>_<split>.txt`), each listed id's annotation and image, and every file of the segmentation
folders (`mask.region_bank=data` draws hole shapes from all of `SegmentationObject/`, whatever the split). For any
other folder (ImageFolder trees, COCO roots, plain folders): every file below it. For a list file: the file. Each
file enters as (path relative to the root, size, modification time in ns), so an image replaced under the same
name, an edited annotation or a changed split list changes the fingerprint, without reading the files' bytes.
Hidden files and folders (a leading '.') are left out, as the readers leave them out.

`$CEBENCH_FINGERPRINT=content` stamps each file by its size and a hash of its bytes instead of its modification time,
for file systems whose times cannot be trusted (a copy that resets them, a rewrite within the time resolution): an
unchanged file then keeps its stamp whatever its time, at the cost of reading every byte. The fingerprints and the
feature cache's per-image stamps of the two modes differ, so switching modes recomputes what they key.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_PER_ID = (("Annotations", ".xml"), ("JPEGImages", ".jpg"))
MODE_ENV = "CEBENCH_FINGERPRINT"
MODES = ("stat", "content")
_WHOLE = ("SegmentationClass", "SegmentationObject")


def fingerprint_mode() -> str:
    """`stat` (size and modification time; the default) or `content` (size and a hash of the bytes), from
    $CEBENCH_FINGERPRINT; another value is a ValueError naming it."""
    mode = os.environ.get(MODE_ENV, "stat") or "stat"
    if mode not in MODES:
        raise ValueError(f"${MODE_ENV}={mode!r}: choose {' or '.join(MODES)}")
    return mode


def _content(path: Path) -> int:
    digest = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return int.from_bytes(digest.digest(), "big") >> 1  # fits a signed 64-bit integer (JSON, numpy)


def stamp_words() -> str:
    """What a file's stamp compares in the current mode, for messages: 'size or modification time' (stat) or
    'size or content' (content)."""
    return "size or content" if fingerprint_mode() == "content" else "size or modification time"


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(size, modification time in ns) of a file, or with $CEBENCH_FINGERPRINT=content (size, a hash of its bytes);
    None when it is missing: what fingerprints and the feature cache compare."""
    try:
        stat = path.stat()
        return (stat.st_size, _content(path)) if fingerprint_mode() == "content" else (stat.st_size, stat.st_mtime_ns)
    except FileNotFoundError:  # missing, or gone between stat and read
        return None


def _stamp(digest: "hashlib._Hash", root: Path, path: Path) -> None:
    stamp = file_stamp(path)
    text = "missing" if stamp is None else f"{stamp[0]}:{stamp[1]}"
    digest.update(f"{path.relative_to(root).as_posix()}:{text}\n".encode())


def _voc(root: Path, split: str, digest: "hashlib._Hash") -> None:
    from .sources import read_id_list

    _stamp(digest, root, root / "classes.txt")
    ids: dict[str, None] = {}
    for folder in sorted(p for p in (root / "ImageSets").iterdir() if p.is_dir()):
        for path in sorted(folder.glob(f"*{split}.txt")):
            if path.name == f"{split}.txt" or path.name.endswith(f"_{split}.txt"):
                _stamp(digest, root, path)
                if path.name == f"{split}.txt":
                    ids.update(dict.fromkeys(read_id_list(path)))  # bad ids: an error naming the list file
    for image_id in ids:
        for folder, suffix in _PER_ID:
            _stamp(digest, root, root / folder / f"{image_id}{suffix}")
    for folder in _WHOLE:
        if (root / folder).is_dir():
            _tree(root / folder, digest, relative_to=root)


def _tree(root: Path, digest: "hashlib._Hash", relative_to: Path | None = None) -> None:
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symlink loop: the readers skip it too
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            _stamp(digest, relative_to or root, Path(folder) / name)


def data_fingerprint(root: str | Path, split: str | None = None) -> str:
    """The sha256 (hex) of what the readers of `root` (and `split`, for a VOC root) read; see the module doc."""
    root = Path(root)
    mode = fingerprint_mode()
    digest = hashlib.sha256(f"{root.resolve()}\0{split}\0{'' if mode == 'stat' else mode}".encode())
    if root.is_file():
        _stamp(digest, root.parent, root)
    elif split is not None and (root / "ImageSets" / "Main").is_dir():
        _voc(root, split, digest)
    elif root.is_dir():
        _tree(root, digest)
    else:
        digest.update(b"missing")
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """`python -m pretext.data.fingerprint ROOT [--split SPLIT]`: print the fingerprint and the seconds it took."""
    import argparse
    import time

    parser = argparse.ArgumentParser(prog="python -m pretext.data.fingerprint", description=main.__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--split", default=None, help="a VOC root's split (default: every file below ROOT)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    digest = data_fingerprint(args.root, args.split)
    print(f"{digest}  {args.root}{f' ({args.split})' if args.split else ''}  [{time.perf_counter() - start:.3f} s]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
