"""Region proposals for Fast R-CNN: selective search (OpenCV contrib), cached per image, or supplied files.

Boxes: float32 arrays (K, 4) `[x1, y1, x2, y2]` in 0-based continuous pixel coordinates with x2/y2 exclusive
(torchvision's convention). OpenCV's rect (x, y, w, h) is (x, y, x + w, y + h); a VOC 1-based inclusive box
(xmin, ymin, xmax, ymax) is (xmin - 1, ymin - 1, xmax, ymax).

Selective search ("fast" or "quality" strategies) runs on a copy whose longer side is at most `max_side`
(R-CNN ran it at a fixed width of 500: its cost grows with the pixel count and its proposals are not scale
invariant); boxes are scaled back, clipped to the image, boxes narrower or lower than `min_size` image pixels are
dropped (R-CNN's selective search filter used 20) and exact duplicates removed.

Order and truncation: OpenCV ranks boxes by hierarchy level times a random number drawn from the C library's
unseeded `rand()`, so its order changes from call to call while the box set does not. Output is therefore sorted
lexicographically on the integer (x1, y1, x2, y2) that selective search produced. When more than `max_boxes`
remain, the kept subset is chosen by a fixed pseudo-random key per box (a hash of those integer coordinates):
a reproducible, size-neutral sample standing in for SS's random ranking (an area order would drop every small
object first; SS's own ranking favours small early regions). The kept boxes stay in lexicographic order. Fast
mode at max_side 500 gives ~1-2k boxes per VOC-sized image, so the default 2000 rarely truncates.

Cache: `CACHE_DIR/<settings.key()>/<entry name>.npz` with arrays `boxes`, `id` and `sha256` (of the image file
as read for that computation), plus a `settings.json` naming what the hashed folder holds. The key covers the
settings, `PROPOSALS_VERSION` and the OpenCV version. An entry is reused only when its id matches and the image
file's sha256 equals the stored one (touching a file does not invalidate it; changing its content does). A
missing entry is computed; an unreadable or malformed one is recomputed with a warning. Entries are written
atomically as each image finishes, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pretext.data.images import load_rgb

log = logging.getLogger("cebench")

PROPOSALS_VERSION = "ss-1"  # bump when the box post-processing changes: it renames every cache folder
MODES = ("fast", "quality")
Job = tuple[str, str, "ProposalSettings"]
Result = tuple[str, str, np.ndarray]


@dataclass(frozen=True)
class ProposalSettings:
    """Selective search strategy, box filter, box budget and working resolution (None: full size)."""

    mode: str = "fast"
    min_size: int = 20
    max_boxes: int = 2000
    max_side: int | None = 500

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"proposal mode {self.mode!r}: expected one of {MODES}")
        if self.min_size < 0 or self.max_boxes < 1:
            raise ValueError(f"proposal min_size {self.min_size} must be >= 0 and max_boxes {self.max_boxes} >= 1")
        if self.max_side is not None and self.max_side < 16:
            raise ValueError(f"proposal max_side {self.max_side}: expected None or >= 16")

    def key(self) -> str:
        """Cache folder name: mode plus a hash of the settings, `PROPOSALS_VERSION` and the OpenCV version."""
        blob = json.dumps(self.record(), sort_keys=True).encode()
        return f"ss-{self.mode}-{hashlib.sha256(blob).hexdigest()[:10]}"

    def record(self) -> dict:
        """What the cache key hashes."""
        return {**asdict(self), "version": PROPOSALS_VERSION, "opencv": cv2.__version__}


# ---------------------------------------------------------------------------------------------- selective search

def selective_search(image: np.ndarray, settings: ProposalSettings) -> np.ndarray:
    """Proposals (K, 4) float32 xyxy for an HxWx3 uint8 RGB image, reproducible in set and order."""
    _check_image(image)
    small, sx, sy = _downscale(image, settings.max_side)
    rects = _opencv_rects(small, settings.mode)
    xyxy = np.unique(np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1), axis=0)  # sorted rows
    boxes = xyxy * np.array([sx, sy, sx, sy])
    h, w = image.shape[:2]
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    big = (boxes[:, 2] - boxes[:, 0] >= settings.min_size) & (boxes[:, 3] - boxes[:, 1] >= settings.min_size)
    keep = _first_by_priority(xyxy[big], settings.max_boxes)
    return boxes[big][keep].astype(np.float32)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"selective search needs an HxWx3 uint8 RGB array, got {got}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"selective search got an empty image of shape {image.shape}")


def _downscale(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float, float]:
    """The image shrunk so its longer side is <= max_side (never enlarged), and the x, y factors back."""
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image, 1.0, 1.0
    scale = max_side / max(h, w)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    return cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA), w / sw, h / sh


def _opencv_rects(image: np.ndarray, mode: str) -> np.ndarray:
    """OpenCV's selective search rects (N, 4) int64 (x, y, w, h), in OpenCV's unreproducible order."""
    if not hasattr(cv2, "ximgproc"):
        raise RuntimeError("selective search needs OpenCV's contrib modules (opencv-contrib-python-headless)")
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
    if mode == "fast":
        ss.switchToSelectiveSearchFast()
    else:
        ss.switchToSelectiveSearchQuality()
    return np.asarray(ss.process(), dtype=np.int64).reshape(-1, 4)


def _first_by_priority(xyxy: np.ndarray, max_boxes: int) -> np.ndarray:
    """Indices of the max_boxes rows with the smallest coordinate hash, in their original order."""
    if len(xyxy) <= max_boxes:
        return np.arange(len(xyxy))
    return np.sort(np.argsort(_coordinate_hash(xyxy), kind="stable")[:max_boxes])


def _coordinate_hash(xyxy: np.ndarray) -> np.ndarray:
    """splitmix64-style mix of the four integer coordinates: a fixed pseudo-random key per box."""
    h = np.zeros(len(xyxy), dtype=np.uint64)
    for column in xyxy.T.astype(np.uint64):
        h = (h ^ column) + np.uint64(0x9E3779B97F4A7C15)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


# ---------------------------------------------------------------------------------------------- cached computation

def compute_proposals(paths: Sequence[Path], ids: Sequence[str], cache_dir: Path, settings: ProposalSettings,
                      workers: int = 2, progress: bool = True) -> dict[str, np.ndarray]:
    """Selective search boxes per image id, computed once (in `workers` processes, 0: here) and cached on disk."""
    paths = [Path(p) for p in paths]
    ids = [str(i) for i in ids]
    names = _check_jobs(paths, ids, workers)
    folder = Path(cache_dir) / settings.key()
    boxes: dict[str, np.ndarray] = {}
    jobs: list[Job] = []
    counts: Counter[str] = Counter()
    for path, image_id in zip(paths, ids, strict=True):
        state, cached = _lookup(folder / names[image_id], image_id, path)
        counts[state] += 1
        if cached is None:
            jobs.append((image_id, str(path), settings))
        else:
            boxes[image_id] = cached
    if jobs:
        _write_settings(folder, settings)

    def store(result: Result) -> None:
        image_id, sha, found = result
        _write_entry(folder / names[image_id], image_id, sha, found)
        boxes[image_id] = found

    _run_jobs(jobs, workers, progress, store)
    log.info("proposals %s: %d images, %d computed (%d new, %d stale, %d corrupt), %d from cache", folder,
             len(ids), len(jobs), counts["missing"], counts["stale"], counts["corrupt"], counts["hit"])
    return {image_id: boxes[image_id] for image_id in ids}


def entry_name(image_id: str) -> str:
    """Cache file name of an id: the id itself when file-safe, else a sanitised form plus a hash of the id."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", image_id):
        return f"{image_id}.npz"
    digest = hashlib.sha256(image_id.encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', image_id)[:80]}-{digest}.npz"  # no dots: no hidden files, no '..'


def _check_jobs(paths: list[Path], ids: list[str], workers: int) -> dict[str, str]:
    """Entry names per id, after checking the arguments agree."""
    if len(paths) != len(ids):
        raise ValueError(f"compute_proposals: {len(paths)} paths but {len(ids)} ids")
    if workers < 0:
        raise ValueError(f"compute_proposals: workers must be >= 0, got {workers}")
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        raise ValueError(f"compute_proposals: repeated image ids {repeated[:5]}")
    return {image_id: entry_name(image_id) for image_id in ids}


def _lookup(entry: Path, image_id: str, path: Path) -> tuple[str, np.ndarray | None]:
    """('hit', boxes) for a valid, current entry, else ('missing' | 'stale' | 'corrupt', None)."""
    if not entry.is_file():
        return "missing", None
    try:
        sha, boxes = _read_entry(entry, image_id)
    except ValueError as exc:
        log.warning("recomputing a corrupt proposal cache entry: %s", exc)
        return "corrupt", None
    return ("hit", boxes) if sha == _file_sha256(path) else ("stale", None)


def _read_entry(entry: Path, image_id: str) -> tuple[str, np.ndarray]:
    """(stored image sha256, boxes) of a cache entry; ValueError when it is unreadable or malformed."""
    try:
        with np.load(entry, allow_pickle=False) as data:
            boxes, sha, stored_id = data["boxes"], str(data["sha256"]), str(data["id"])
    except Exception as exc:  # a torn or foreign file raises BadZipFile, EOFError, OSError, KeyError, ValueError...
        raise ValueError(f"{entry}: unreadable ({type(exc).__name__}: {exc})") from exc
    if boxes.dtype != np.float32 or boxes.ndim != 2 or boxes.shape[1] != 4 or not np.isfinite(boxes).all():
        raise ValueError(f"{entry}: boxes {boxes.dtype} {boxes.shape}, expected finite float32 (K, 4)")
    if stored_id != image_id:
        raise ValueError(f"{entry}: holds image id {stored_id!r}, expected {image_id!r}")
    return sha, boxes


def _file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read image file: {exc.strerror or exc}") from exc


def _write_entry(entry: Path, image_id: str, sha: str, boxes: np.ndarray) -> None:
    # Imported here, not at the top: it pulls in torch, which spawned selective search workers do not need.
    from pretext.engine.checkpoint import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez(buffer, boxes=boxes, sha256=np.array(sha), id=np.array(image_id))
    atomic_write_bytes(entry, buffer.getvalue())


def _write_settings(folder: Path, settings: ProposalSettings) -> None:
    from pretext.engine.checkpoint import atomic_write_text

    if not (folder / "settings.json").is_file():
        atomic_write_text(folder / "settings.json", json.dumps(settings.record(), indent=2, sort_keys=True) + "\n")


def _run_jobs(jobs: list[Job], workers: int, progress: bool, store: Callable[[Result], None]) -> None:
    """Runs `jobs` here (workers=0) or in a spawned pool, handing each result to `store` as it finishes."""
    with tqdm(total=len(jobs), desc="selective search", disable=not progress or not jobs, dynamic_ncols=True) as bar:
        if workers == 0 or not jobs:
            results = map(_proposal_job, jobs)
            _drain(results, store, bar)
            return
        # spawn, not fork: a forked child may inherit OpenCV's or torch's thread pools mid-operation.
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
            _drain(pool.imap_unordered(_proposal_job, jobs), store, bar)


def _drain(results, store: Callable[[Result], None], bar: tqdm) -> None:
    for result in results:
        store(result)
        bar.update()


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one image per process already uses every core


def _proposal_job(job: Job) -> Result:
    """Pool task: (id, path, settings) -> (id, sha256 of the file, boxes)."""
    image_id, path, settings = job
    # Hashed before decoding: a file replaced meanwhile leaves a stamp that no longer matches, never a wrong match.
    sha = _file_sha256(Path(path))
    return image_id, sha, selective_search(np.asarray(load_rgb(path)), settings)


# ---------------------------------------------------------------------------------------------- supplied proposals

def load_precomputed(path: Path, ids: Sequence[str],
                     image_sizes: dict[str, tuple[int, int]] | None = None) -> dict[str, np.ndarray]:
    """Supplied proposals (.mat from Fast R-CNN, .json, .npz) as float32 xyxy per id, clipped to (width, height).

    .mat: variables `images` (cell of ids) and `boxes` (cell of (K, 4) 1-based inclusive [y1 x1 y2 x2]), as in
    Fast R-CNN's selective_search_data; (x1, y1, x2, y2) = (b[:, 1] - 1, b[:, 0] - 1, b[:, 3], b[:, 2]).
    .json: {"format": "xyxy0" | "voc1", "boxes": {id: [[...], ...]}}, voc1 being 1-based inclusive
    [xmin ymin xmax ymax]; a bare {id: [[...], ...]} mapping is xyxy0. .npz: one xyxy0 array per id.
    `image_sizes` maps id -> (width, height), like PIL's Image.size; boxes emptied by clipping are dropped.
    """
    path = Path(path)
    readers = {".mat": _read_mat, ".json": _read_json, ".npz": _read_npz}
    if path.suffix.lower() not in readers:
        raise ValueError(f"{path}: unknown proposal file type {path.suffix!r}, expected one of {sorted(readers)}")
    if not path.is_file():
        raise ValueError(f"{path}: proposal file not found")
    supplied = readers[path.suffix.lower()](path)
    missing = [i for i in ids if i not in supplied]
    if missing:
        raise ValueError(f"{path}: no proposals for {len(missing)} of {len(ids)} images, first {missing[:5]}")
    boxes = {i: _check_boxes(supplied[i], path, i) for i in ids}
    return boxes if image_sizes is None else _clip_all(boxes, image_sizes, path)


def _read_mat(path: Path) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    try:
        data = loadmat(str(path))
        images, cells = data["images"].ravel(), data["boxes"].ravel()
    except Exception as exc:  # scipy raises ValueError, KeyError, NotImplementedError (v7.3 files), OSError...
        raise ValueError(f"{path}: cannot read variables `images` and `boxes`: {type(exc).__name__}: {exc}") from exc
    if len(images) != len(cells):
        raise ValueError(f"{path}: {len(images)} images but {len(cells)} box arrays")
    out: dict[str, np.ndarray] = {}
    for cell_id, cell in zip(images, cells, strict=True):
        image_id = _mat_id(cell_id, path)
        if image_id in out:
            raise ValueError(f"{path}: image id {image_id!r} appears twice")
        b = _box_array(cell, path, image_id)
        out[image_id] = np.stack([b[:, 1] - 1, b[:, 0] - 1, b[:, 3], b[:, 2]], axis=1)
    return out


def _mat_id(cell: object, path: Path) -> str:
    """A MATLAB cell's id: a char array, or an integer (COCO-style numeric ids)."""
    value = np.asarray(cell).ravel()
    if value.size == 1 and value.dtype.kind in "US":
        return str(value[0])
    if value.size == 1 and value.dtype.kind in "iuf" and float(value[0]).is_integer():
        return str(int(value[0]))
    raise ValueError(f"{path}: `images` holds {cell!r}, expected a string or integer id")


def _read_json(path: Path) -> dict[str, np.ndarray]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    fmt, mapping = (data["format"], data.get("boxes")) if "format" in data else ("xyxy0", data)
    if fmt not in ("xyxy0", "voc1") or not isinstance(mapping, dict):
        raise ValueError(f"{path}: format {fmt!r} with a `boxes` object expected (format xyxy0 or voc1)")
    shift = np.array([1.0, 1.0, 0.0, 0.0]) if fmt == "voc1" else np.zeros(4)
    return {str(i): _box_array(b, path, str(i)) - shift for i, b in mapping.items()}


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {i: data[i] for i in data.files}
    except Exception as exc:  # BadZipFile, OSError, EOFError, ValueError (pickled objects)... from a bad file
        raise ValueError(f"{path}: cannot read .npz: {type(exc).__name__}: {exc}") from exc
    return {i: _box_array(a, path, i) for i, a in arrays.items()}


def _box_array(value: object, path: Path, image_id: str) -> np.ndarray:
    """A numeric (K, 4) float64 array; MATLAB's 0x0 empty cell counts as no boxes."""
    try:
        boxes = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: boxes of {image_id!r} are not numeric: {exc}") from exc
    if boxes.size == 0:
        return np.zeros((0, 4))
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{path}: boxes of {image_id!r} have shape {boxes.shape}, expected (K, 4)")
    return boxes


def _check_boxes(boxes: np.ndarray, path: Path, image_id: str) -> np.ndarray:
    """float32 boxes after refusing non-finite values and empty or inverted boxes."""
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} invalid boxes for {image_id!r} (non-finite, x2 <= x1 or "
                         f"y2 <= y1), first {boxes[bad][0].tolist()} (converted to 0-based xyxy)")
    return boxes.astype(np.float32)


def _clip_all(boxes: dict[str, np.ndarray], sizes: dict[str, tuple[int, int]], path: Path) -> dict[str, np.ndarray]:
    """Boxes clipped to their image; boxes left empty are dropped and counted in a warning."""
    missing = [i for i in boxes if i not in sizes]
    if missing:
        raise ValueError(f"{path}: no image size given for {len(missing)} images, first {missing[:5]}")
    out, dropped = {}, 0
    for image_id, b in boxes.items():
        w, h = sizes[image_id]
        b = np.stack([b[:, 0].clip(0, w), b[:, 1].clip(0, h), b[:, 2].clip(0, w), b[:, 3].clip(0, h)], axis=1)
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        dropped += int((~keep).sum())
        out[image_id] = b[keep]
    if dropped:
        log.warning("%s: dropped %d proposals lying outside their image", path, dropped)
    return out
