"""`cebench retrieve`: nearest-neighbour image retrieval on frozen encoder features.

Database and queries are each an ImageFolder (`DIR/<class>/<image>`: precision@k = the fraction of a query's
k neighbours with its class), a VOC- or COCO-format root with a split (multi-label: a neighbour counts when it
shares a class present in the query; queries without a present class are left out of the mean and counted),
or a flat folder of images (no labels, no precision). Features are `transfer.features` ones (L2-normalised,
cached by encoder sha256), so the inner product is the cosine similarity. Search: FAISS exact `IndexFlatIP`
(`--index flat`, default), or for large databases `ivf` (IVF-Flat, nlist ~ sqrt(N)) or `hnsw` (HNSW-Flat,
M = 32), both inner product; for these the recall@k against exact search is measured and reported.

A query found in the database (same file) never retrieves itself: its self-match is dropped and counted.
`--mask central`: the central square (half the side, the paper's central hole) of every query, and with
`--database-mask same` (default) of every database image, is filled with the encoder's fill mean before
encoding, so images are compared by their context alone (the paper's context nearest neighbours); the grid
then shows each neighbour's centre pasted into the query's hole.

Writes OUT/neighbours.json, OUT/metrics.json and OUT/grid.png (8 evenly spaced queries); bad input is one error
line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import torch
from torch import nn

from pretext.data.sources import IMAGE_EXTS, folder_images
from pretext.engine.checkpoint import atomic_write_text
from pretext.engine.distributed import select_device
from pretext.engine.trainer import resolve_precision
from pretext.masks import CentralMask

from .arguments import add_extraction_arguments, command_main, max_images, positive_int
from .backbones import default_layer, encoder_record, open_encoder
from .evaluate import json_safe, provenance
from .features import (Features, LabelledImages, cached_features, fill_value, is_voc_root, load_batch,
                       open_labelled)
from .knn import nearest

log = logging.getLogger("cebench")

INDEX_KINDS = ("flat", "ivf", "hnsw")
HNSW_M = 32
MIN_POINTS_PER_LIST = 39  # FAISS k-means wants at least this many training points per IVF list
GRID_QUERIES = 8


class RetrievalError(ValueError):
    """Retrieval input that cannot be used: a missing or empty image directory, an unknown layer, a bad k."""


def open_images(root: str | Path, split: str) -> LabelledImages:
    """A VOC / COCO root or an ImageFolder (labelled, via `open_labelled`), else a flat folder (unlabelled)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise RetrievalError(f"image directory not found: {root}")
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    class_dirs = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
    if is_voc_root(root) or (len(class_dirs) >= 2 and not loose):
        return open_labelled(root, split)
    paths = folder_images(root)
    if not paths:
        raise RetrievalError(f"no images found in {root} (extensions {', '.join(sorted(IMAGE_EXTS))})")
    return LabelledImages("folder", root, None, tuple(paths), np.full(len(paths), -1, dtype=np.int64), ())


def central_hole(size: int, overlap: int = 0) -> torch.Tensor:
    """(1, 1, size, size) bool: the central square of half the side, shrunk by `overlap` (`CentralMask`)."""
    return CentralMask(overlap=overlap)(1, size, size, torch.Generator())


def check_layer(encoder: nn.Module, meta: dict, layer: str, where: Path) -> None:
    """Refuse a stage the encoder does not have, naming the encoder."""
    size = int(meta["input_size"])
    try:
        with torch.no_grad():
            encoder.eval()(torch.zeros(1, 3, size, size), out=layer)
    except ValueError as exc:
        raise RetrievalError(f"{where}: unknown layer {layer!r}: {exc}") from exc


def build_index(x: np.ndarray, kind: str, nprobe: int, ef_search: int) -> tuple[faiss.Index, dict]:
    """An approximate inner-product index over the database rows, and its settings."""
    n, d = x.shape
    if kind == "ivf":
        nlist = max(1, min(math.isqrt(n), n // MIN_POINTS_PER_LIST))
        index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = min(nprobe, nlist)
        settings = {"nlist": nlist, "nprobe": index.nprobe}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = max(ef_search, 1)
        settings = {"M": HNSW_M, "ef_search": index.hnsw.efSearch, "ef_construction": index.hnsw.efConstruction}
    else:
        raise RetrievalError(f"unknown index kind {kind!r}; choose from {', '.join(INDEX_KINDS)}")
    index.add(x)
    return index, settings


def search(db_x: np.ndarray, q_x: np.ndarray, k: int, kind: str = "flat", nprobe: int = 10,
           ef_search: int = 64) -> tuple[np.ndarray, np.ndarray, dict]:
    """(M, k) similarities and database indices (-1 where an approximate index found fewer), index settings."""
    if kind == "flat":
        sims, idx = nearest(db_x, q_x, k)
        return sims, idx, {}
    index, settings = build_index(np.ascontiguousarray(db_x, dtype=np.float32), kind, nprobe, ef_search)
    sims, idx = index.search(np.ascontiguousarray(q_x, dtype=np.float32), k)
    return sims, idx, settings


def self_indices(db_paths: Sequence[Path], query_paths: Sequence[Path]) -> np.ndarray:
    """(M,) database index of each query's own file, -1 for queries not in the database."""
    position = {p: i for i, p in enumerate(db_paths)}
    return np.array([position.get(p, -1) for p in query_paths], dtype=np.int64)


def drop_self(sims: np.ndarray, idx: np.ndarray, own: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k neighbours of each row once its own database index (`own`, -1 = none) is removed."""
    is_self = (idx == own[:, None]) & (own[:, None] >= 0)
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]  # non-self entries first, in rank order
    return np.take_along_axis(sims, order, 1), np.take_along_axis(idx, order, 1)


def neighbours(db_x: np.ndarray, q_x: np.ndarray, k: int, own: np.ndarray, kind: str = "flat", nprobe: int = 10,
               ef_search: int = 64) -> tuple[np.ndarray, np.ndarray, dict]:
    """k neighbours per query without self-matches: one extra is searched when a query is in the database."""
    extra = int((own >= 0).any())
    sims, idx, settings = search(db_x, q_x, k + extra, kind, nprobe, ef_search)
    sims, idx = drop_self(sims, idx, own, k)
    return sims, idx, settings


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of the fraction of the exact k neighbours the approximate search also returned."""
    hits = [len(set(a[a >= 0].tolist()) & set(e.tolist())) / len(e) for a, e in zip(approx, exact)]
    return float(np.mean(hits))


def relevant(idx: np.ndarray, db_labels: np.ndarray, q_labels: np.ndarray) -> np.ndarray:
    """(M, k) bool: neighbour has the query's class, or (multi-label) shares a class present in the query."""
    found = idx >= 0
    safe = np.where(found, idx, 0)
    if q_labels.ndim == 1:
        return found & (db_labels[safe] == q_labels[:, None])
    shared = ((db_labels[safe] == 1) & (q_labels[:, None, :] == 1)).any(axis=2)  # (M, k)
    return found & shared


def precision_at_k(idx: np.ndarray, db_labels: np.ndarray, q_labels: np.ndarray) -> tuple[float, int]:
    """Mean precision@k (%) over the queries that have a class, and how many those are."""
    hits = relevant(idx, db_labels, q_labels)
    usable = np.ones(len(idx), dtype=bool) if q_labels.ndim == 1 else (q_labels == 1).any(axis=1)
    if not usable.any():
        return float("nan"), 0
    return 100 * float(hits[usable].mean()), int(usable.sum())


def chance_precision(db_labels: np.ndarray, q_labels: np.ndarray, own: np.ndarray | None = None,
                     chunk: int = 1024) -> float:
    """Expected precision@k (%) of neighbours drawn at random from the database, over the queries that have a
    class: per query, the fraction of database images relevant to it (as `relevant` judges), averaged. A query's
    own file (`own`, its database index or -1, as `self_indices`) is left out, as the search leaves it out."""
    usable = np.ones(len(q_labels), dtype=bool) if q_labels.ndim == 1 else (q_labels == 1).any(axis=1)
    own = np.full(len(q_labels), -1) if own is None else np.asarray(own)
    q_labels, own = q_labels[usable], own[usable]
    if not len(q_labels):
        return float("nan")
    if q_labels.ndim == 1:
        counts = np.bincount(db_labels, minlength=int(max(db_labels.max(), q_labels.max())) + 1)[q_labels]
    else:
        db_pos = (db_labels == 1).astype(np.float32)
        counts = np.concatenate([((q_labels[i:i + chunk] == 1).astype(np.float32) @ db_pos.T > 0).sum(axis=1)
                                 for i in range(0, len(q_labels), chunk)])
    is_own = own >= 0
    counts = counts - (is_own & relevant(np.where(is_own, own, -1)[:, None], db_labels, q_labels)[:, 0])
    size = len(db_labels) - is_own
    return 100 * float(np.mean(counts / np.maximum(size, 1)))


def comparable_labels(db: LabelledImages, queries: LabelledImages) -> str | None:
    """Why the two sets' labels cannot be compared (None when they can)."""
    if "folder" in (db.kind, queries.kind):
        return "unlabelled images (a flat folder): no precision"
    if db.labels.ndim != queries.labels.ndim or db.classes != queries.classes:
        return (f"database classes {list(db.classes)} and query classes {list(queries.classes)} differ: "
                "no precision")
    return None


def label_names(data: LabelledImages, i: int) -> str | list[str] | None:
    """Image i's class name, its present classes (multi-label), or None (unlabelled)."""
    if data.kind == "folder":
        return None
    if data.labels.ndim == 2:
        return [c for c, v in zip(data.classes, data.labels[i]) if v == 1]
    return data.classes[int(data.labels[i])]


def neighbour_records(db: LabelledImages, queries: LabelledImages, sims: np.ndarray, idx: np.ndarray) -> list[dict]:
    """Per query: its path and label, and its neighbours' paths, similarities and labels, best first."""
    return [{"path": str(queries.paths[m]), "label": label_names(queries, m),
             "neighbours": [{"path": str(db.paths[j]), "similarity": round(float(s), 6), "label": label_names(db, j)}
                            for s, j in zip(sims[m], idx[m]) if j >= 0]}
            for m in range(len(queries.paths))]


def grid_tiles(db: LabelledImages, queries: LabelledImages, idx: np.ndarray, size: int,
               hole: torch.Tensor | None, fill: Sequence[float]) -> torch.Tensor:
    """(Q * (1 + k), 3, S, S) in [0, 1]: each query (with its hole) then its neighbours (their centre in the hole)."""
    rows = []  # evenly spaced queries: an ImageFolder's first ones all share one class
    for m in dict.fromkeys(np.linspace(0, len(queries.paths) - 1, GRID_QUERIES).round().astype(int).tolist()):
        query = load_batch([queries.paths[m]], size).float() / 255
        found = [int(j) for j in idx[m] if j >= 0]
        nbrs = load_batch([db.paths[j] for j in found], size).float() / 255 if found else query[:0]
        nbrs = torch.cat([nbrs, torch.zeros(len(idx[m]) - len(found), 3, size, size)])  # missing: black
        if hole is not None:
            query = torch.where(hole, torch.tensor(fill).view(1, 3, 1, 1), query)
            nbrs = torch.where(hole, nbrs, query)
        rows += [query, nbrs]
    return torch.cat(rows)


def save_grid(path: Path, tiles: torch.Tensor, k: int) -> None:
    """One row per query: the query, then its k neighbours."""
    from torchvision.utils import save_image

    save_image(tiles, path, nrow=k + 1, padding=2)


def usable_k(k: int, n_db: int, self_dropped: bool) -> int:
    """k, or fewer when the database (less each query itself) is smaller; an empty database is an error."""
    available = n_db - int(self_dropped)
    if available < 1:
        raise RetrievalError(f"the database has {n_db} image(s): nothing to retrieve once the query itself is dropped")
    if k > available:
        log.warning("k = %d but only %d database images per query: using k = %d", k, available, available)
    return min(k, available)


def load_features(args: argparse.Namespace) -> tuple[dict, Features, Features, torch.Tensor | None]:
    """Encoder metadata, database and query features (masked as asked), and the hole (None without a mask)."""
    db_set, query_set = open_images(args.database, args.database_split), open_images(args.queries, args.query_split)
    device = select_device(args.device)
    encoder, meta = open_encoder(args.encoder, args.weights)
    args.layer = args.layer or default_layer(encoder)
    check_layer(encoder, meta, args.layer, args.encoder)
    hole = central_hole(int(meta["input_size"])) if args.mask == "central" else None
    db_hole = hole if args.database_mask == "same" else None
    args.precision = resolve_precision(args.precision, device)
    common = dict(cache_dir=args.cache, seed=args.seed, batch_size=args.batch_size, device=device,
                  precision=args.precision, workers=args.workers, progress=True)
    db = cached_features(encoder, meta, db_set, args.layer, max_images=args.max_images[0], hole=db_hole, **common)
    queries = cached_features(encoder, meta, query_set, args.layer, max_images=args.max_images[1], hole=hole, **common)
    return meta, db, queries, hole


def run_search(args: argparse.Namespace, db: Features, queries: Features) -> dict:
    """Neighbours without self-matches, the index settings, and recall@k against exact search if approximate."""
    own = self_indices(db.source.paths, queries.source.paths)
    k = usable_k(args.k, len(db.x), bool((own >= 0).any()))
    start = time.perf_counter()
    sims, idx, settings = neighbours(db.x, queries.x, k, own, args.index, args.nprobe, args.ef_search)
    result = {"sims": sims, "idx": idx, "k_used": k, "index": {"kind": args.index, **settings},
              "self_matches_dropped": int((own >= 0).sum()), "search_seconds": round(time.perf_counter() - start, 4)}
    if args.index != "flat":
        start = time.perf_counter()
        _, exact, _ = neighbours(db.x, queries.x, k, own)
        result.update(recall_at_k_vs_exact=recall_at_k(idx, exact),
                      exact_search_seconds=round(time.perf_counter() - start, 4))
    return result


def build_record(args: argparse.Namespace, meta: dict, db: Features, queries: Features, found: dict) -> dict:
    """metrics.json: precision@k (if labelled), index and recall, sizes, encoder and provenance."""
    reason = comparable_labels(db.source, queries.source)
    precision, n_used = (float("nan"), 0) if reason else precision_at_k(found["idx"], db.labels, queries.labels)
    own = self_indices(db.source.paths, queries.source.paths)
    chance = float("nan") if reason else chance_precision(db.labels, queries.labels, own)
    if not reason and n_used < len(queries.x):
        reason = f"{len(queries.x) - n_used} queries without a present class are left out of the mean"
    return {"task": "retrieval", "encoder": str(args.encoder), "encoder_sha256": meta["sha256"],
            "encoder_method": meta.get("method"), **encoder_record(meta), "layer": args.layer, "feature_dim": int(db.x.shape[1]),
            "mask": args.mask, "database_mask": args.database_mask if args.mask != "none" else "none",
            "fill": fill_value(meta) if args.mask != "none" else None,
            "database": db.source.describe(args.max_images[0]), "queries": queries.source.describe(args.max_images[1]),
            "k": args.k, **{key: v for key, v in found.items() if key not in ("sims", "idx")},
            "self_match_note": "a query's own file is never its neighbour" if found["self_matches_dropped"] else None,
            "precision_at_k": precision, "precision_chance": chance, "precision_queries": n_used,
            "precision_note": reason,
            "seed": args.seed, "feature_precision": args.precision, **provenance()}


def run_retrieval(args: argparse.Namespace) -> dict:
    """Features, search, then OUT/neighbours.json, metrics.json and grid.png; returns the metrics record."""
    meta, db, queries, hole = load_features(args)
    found = run_search(args, db, queries)
    record = build_record(args, meta, db, queries, found)
    args.out.mkdir(parents=True, exist_ok=True)
    listing = {"k": found["k_used"], "self_matches_dropped": found["self_matches_dropped"],
               "queries": neighbour_records(db.source, queries.source, found["sims"], found["idx"])}
    atomic_write_text(args.out / "neighbours.json", json.dumps(json_safe(listing), indent=1) + "\n")
    atomic_write_text(args.out / "metrics.json", json.dumps(json_safe(record), indent=2, allow_nan=False) + "\n")
    tiles = grid_tiles(db.source, queries.source, found["idx"], int(meta["input_size"]), hole, fill_value(meta))
    save_grid(args.out / "grid.png", tiles, found["k_used"])
    return record


def summary(record: dict) -> str:
    """One line: sizes, index, precision and recall."""
    parts = [f"{record['queries']['n_images']} queries / {record['database']['n_images']} database images",
             f"{record['layer']}, mask {record['mask']}, index {record['index']['kind']}, k={record['k_used']}"]
    if record["precision_at_k"] is not None and not math.isnan(record["precision_at_k"]):
        parts.append(f"precision@{record['k_used']} {record['precision_at_k']:.2f}%")
    if "recall_at_k_vs_exact" in record:
        parts.append(f"recall@{record['k_used']} vs exact {record['recall_at_k_vs_exact']:.3f}")
    if record["self_matches_dropped"]:
        parts.append(f"{record['self_matches_dropped']} self-matches dropped")
    return ", ".join(parts)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Arguments of the retrieve command."""
    p = argparse.ArgumentParser(prog=prog, description="Nearest-neighbour retrieval on frozen encoder features.")
    p.add_argument("--encoder", required=True, metavar="RUN_DIR|timm:NAME|torchvision:NAME",
                   help="run directory or encoder.json, or a timm / torchvision model by name")
    p.add_argument("--weights", type=Path, default=None, metavar="FILE",
                   help="weights of a timm: / torchvision: encoder: a state dict of any trainer (random init without)")
    p.add_argument("--database", type=Path, required=True, metavar="DIR",
                   help="ImageFolder, VOC/COCO root or flat image folder searched")
    p.add_argument("--database-split", default="trainval", help="VOC/COCO split of the database (default: trainval)")
    p.add_argument("--queries", type=Path, required=True, metavar="DIR", help="query images, same kinds as --database")
    p.add_argument("--query-split", default="test", help="VOC/COCO split of the queries (default: test)")
    p.add_argument("--out", type=Path, required=True, metavar="OUT_DIR",
                   help="directory for neighbours.json, metrics.json, grid.png")
    p.add_argument("--layer", default=None, help="encoder stage (default: pool5, or a backbone's last stage)")
    p.add_argument("--k", type=positive_int, default=10, help="neighbours per query (default: 10)")
    p.add_argument("--mask", choices=("none", "central"), default="none",
                   help="central: fill the central square (half the side) with the encoder's fill mean")
    p.add_argument("--database-mask", choices=("same", "none"), default="same",
                   help="with --mask central: mask the database images too (same, default: compare contexts) "
                        "or not (none)")
    p.add_argument("--index", choices=INDEX_KINDS, default="flat",
                   help="flat: exact; ivf / hnsw: approximate, recall vs exact reported")
    p.add_argument("--nprobe", type=positive_int, default=10, help="IVF lists searched (default: 10)")
    p.add_argument("--ef-search", type=positive_int, default=64, help="HNSW search breadth (default: 64)")
    p.add_argument("--max-images", type=max_images, default=(None, None), metavar="N[,M]",
                   help="fixed random subset of N database (M query) images (default: all)")
    add_extraction_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="subset seed")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse, retrieve, print a summary; bad directories, images, encoders, layers or devices: exit code 2."""
    return command_main(build_parser(prog), argv, run_retrieval,
                        lambda record, args: f"{summary(record)}\n-> {args.out / 'metrics.json'}")


if __name__ == "__main__":
    raise SystemExit(main())
