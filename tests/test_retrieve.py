"""Retrieval: FAISS vs brute force, precision@k by hand, self-matches, approximate indexes, masks, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.neighbors import NearestNeighbors

from pretext.engine.trainer import train
from transfer.retrieve import chance_precision, main, neighbours, precision_at_k, recall_at_k, search

from .conftest import tiny_config

SIZE = 32  # the tiny encoder's input size: generated images need no resizing, so a hole stays a hole


def template_images(root: Path, per_template: int, templates: int, seed: int, noise: float = 8.0,
                    class_dirs: bool = True) -> Path:
    """Noisy copies of `templates` stripe patterns (orientation, period, colours fixed per template), SIZE px."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    rng = np.random.default_rng(seed)
    for t in range(templates):
        trng = np.random.default_rng(1000 + t)  # the same templates whatever the seed
        direction, period = (yy, xx, xx + yy, xx - yy + SIZE)[t % 4], 6 + 2 * (t // 4)
        colours = trng.integers(0, 256, (2, 3))
        pattern = colours[((direction // (period // 2)) % 2)]  # (SIZE, SIZE, 3)
        folder = root / f"t{t}" if class_dirs else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_template):
            img = np.clip(pattern + rng.normal(0, noise, pattern.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"t{t}_{i:02d}.png")
    return root


def tiny_encoder(factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny AlexNet encoder (32 px input) exported to a run directory."""
    images = template_images(factory.mktemp("unlabelled"), 2, 4, seed=9)
    run = factory.mktemp("enc") / "random"
    train(tiny_config(images, "method=random", "max_steps=0"), run)
    return run


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny encoder, once per module."""
    return tiny_encoder(tmp_path_factory)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """database/ (8 templates x 6) and queries/ (8 x 2) ImageFolders of noisy stripe templates."""
    root = tmp_path_factory.mktemp("retrieval")
    return template_images(root / "database", 6, 8, seed=0), template_images(root / "queries", 2, 8, seed=1)


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_search_equals_sklearn_cosine_brute_force() -> None:
    db, queries = unit(400, 16, 0), unit(30, 16, 1)
    sims, idx, settings = search(db, queries, 7)
    dist, expected = NearestNeighbors(n_neighbors=7, metric="cosine", algorithm="brute").fit(db).kneighbors(queries)
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(sims, 1 - dist, atol=1e-5)
    assert settings == {}


def test_precision_at_k_by_hand() -> None:
    idx = np.array([[0, 1, 2], [2, 3, 0]])
    db_labels, q_labels = np.array([0, 0, 1, 1]), np.array([0, 1])
    assert precision_at_k(idx, db_labels, q_labels) == (pytest.approx(100 * (2 / 3 + 2 / 3) / 2), 2)
    # Multi-label: shares a present class; difficult (0) is not present; a query without a class is left out;
    # a missing neighbour (-1, approximate index) counts as a miss.
    db_multi = np.array([[1, -1], [-1, 1], [0, 1], [1, 1]])
    q_multi = np.array([[1, -1], [-1, 0], [-1, 1]])
    idx = np.array([[0, 2, 3], [0, 1, 2], [1, 3, -1]])
    assert precision_at_k(idx, db_multi, q_multi) == (pytest.approx(100 * (2 / 3 + 2 / 3) / 2), 2)


def test_chance_precision_by_hand_and_against_every_neighbour() -> None:
    # single-label: queries of class 0 (2 of 5 database images) and 1 (3 of 5)
    assert chance_precision(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1])) == pytest.approx(100 * (2 + 3 + 3) / 15)
    # multi-label: query 0 (class 0) shares with db 0, 3; query 2 (class 1) with db 1, 2, 3; query 1 has no class
    db_multi = np.array([[1, -1], [-1, 1], [0, 1], [1, 1]])
    q_multi = np.array([[1, -1], [-1, 0], [-1, 1]])
    assert chance_precision(db_multi, q_multi, chunk=1) == pytest.approx(100 * (2 / 4 + 3 / 4) / 2)
    # = precision@N when every database image is a neighbour
    rng = np.random.default_rng(0)
    db, q = rng.choice([-1, 0, 1], (40, 5), p=[0.6, 0.1, 0.3]), rng.choice([-1, 1], (7, 5), p=[0.7, 0.3])
    every = np.tile(np.arange(40), (7, 1))
    assert chance_precision(db, q, chunk=3) == pytest.approx(precision_at_k(every, db, q)[0])
    # queries that are database images: their own file is not a possible neighbour
    own = np.arange(7)  # query i is database image i
    q_in_db = db.copy()
    q_in_db[:7] = q
    others = np.array([[j for j in range(40) if j != i] for i in range(7)])
    assert chance_precision(q_in_db, q, own, chunk=2) == pytest.approx(precision_at_k(others, q_in_db, q)[0])
    single_db, single_q = np.array([0, 0, 1, 1, 1]), np.array([0, 1])
    assert chance_precision(single_db, single_q, np.array([0, 4])) == pytest.approx(100 * (1 / 4 + 2 / 4) / 2)


def test_self_matches_are_dropped_and_the_rest_keep_their_order() -> None:
    x = unit(50, 8, 0)
    own = np.arange(50)
    sims, idx, _ = neighbours(x, x, 5, own)
    assert idx.shape == (50, 5) and not (idx == own[:, None]).any()
    _, full, _ = search(x, x, 6)
    np.testing.assert_array_equal(idx, full[:, 1:])  # the self-match is each row's first
    _, kept, _ = neighbours(x, x[:3], 5, np.array([-1, -1, -1]))  # not in the database: nothing dropped
    np.testing.assert_array_equal(kept, full[:3, :5])


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_have_high_recall_on_clustered_data(kind: str) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    x = (centres[np.arange(2000) % 20] + 0.3 * rng.normal(size=(2000, 32))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    own = np.r_[np.arange(100), np.full(50, -1)]  # 100 queries from the database, 50 new ones
    queries = np.concatenate([x[:100], unit(50, 32, 1) * 0.2 + x[100:150]])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, approx, settings = neighbours(x, queries, 10, own, kind)
    _, exact, _ = neighbours(x, queries, 10, own)
    assert recall_at_k(approx, exact) >= 0.9 and settings
    assert recall_at_k(exact, exact) == 1.0


def retrieve(encoder: Path, database: Path, queries: Path, out: Path, *extra: str) -> tuple[dict, dict]:
    code = main(["--encoder", str(encoder), "--database", str(database), "--queries", str(queries), "--out", str(out),
                 "--cache", str(out.parent / "cache"), "--device", "cpu", "--k", "5", *extra], prog="cebench retrieve")
    assert code == 0
    return json.loads((out / "metrics.json").read_text()), json.loads((out / "neighbours.json").read_text())


def test_cli_writes_all_outputs_on_an_image_folder(encoder_dir: Path, folders, tmp_path: Path) -> None:
    metrics, found = retrieve(encoder_dir, *folders, tmp_path / "out")
    assert metrics["database"]["n_images"] == 48 and metrics["queries"]["n_images"] == 16
    assert metrics["index"] == {"kind": "flat"} and metrics["k_used"] == 5 and metrics["self_matches_dropped"] == 0
    assert 20 <= metrics["precision_at_k"] <= 100 and metrics["precision_queries"] == 16  # chance: 12.5 %
    assert metrics["encoder_sha256"] and metrics["git_commit"] and metrics["layer"] == "pool5"
    query = found["queries"][0]
    assert query["label"] == "t0" and len(query["neighbours"]) == 5
    assert all(set(n) == {"path", "similarity", "label"} for n in query["neighbours"])
    with Image.open(tmp_path / "out" / "grid.png") as grid:  # 8 rows of query + 5 neighbours, 2 px padding
        assert grid.size == (6 * (SIZE + 2) + 2, 8 * (SIZE + 2) + 2)


def test_cli_same_set_drops_self_and_approximate_index_reports_recall(encoder_dir: Path, folders,
                                                                         tmp_path: Path) -> None:
    metrics, found = retrieve(encoder_dir, folders[0], folders[0], tmp_path / "out", "--index", "hnsw")
    assert metrics["self_matches_dropped"] == 48 and metrics["self_match_note"]
    assert all(q["path"] not in [n["path"] for n in q["neighbours"]] for q in found["queries"])
    assert metrics["index"]["kind"] == "hnsw" and metrics["recall_at_k_vs_exact"] >= 0.9


def test_central_mask_hides_the_centre_from_the_encoder(encoder_dir: Path, folders, tmp_path: Path) -> None:
    noisy = tmp_path / "noisy"  # the queries with random centres: another root, so no cached features apply
    for path in sorted(folders[1].rglob("*.png")):
        img = np.array(Image.open(path))
        img[SIZE // 4:3 * SIZE // 4, SIZE // 4:3 * SIZE // 4] = np.random.default_rng(0).integers(0, 256, (16, 16, 3))
        (noisy / path.parent.name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(noisy / path.parent.name / path.name)

    def sims(queries: Path, name: str, mask: str) -> list:
        _, found = retrieve(encoder_dir, folders[0], queries, tmp_path / name, "--mask", mask)
        return [[(Path(n["path"]).name, n["similarity"]) for n in q["neighbours"]] for q in found["queries"]]

    assert sims(folders[1], "clean", "central") == sims(noisy, "noisy", "central")
    assert sims(folders[1], "clean_none", "none") != sims(noisy, "noisy_none", "none")


def test_cli_on_flat_folder_and_voc_roots(encoder_dir: Path, folders, demo_root: Path, tmp_path: Path) -> None:
    flat = template_images(tmp_path / "flat", 2, 3, seed=4, class_dirs=False)
    metrics, _ = retrieve(encoder_dir, folders[0], flat, tmp_path / "flat_out")
    assert metrics["precision_at_k"] is None and "no precision" in metrics["precision_note"]
    voc, _ = retrieve(encoder_dir, demo_root, demo_root, tmp_path / "voc", "--mask", "central")
    assert voc["database"]["split"] == "trainval" and voc["queries"]["split"] == "test"
    assert math.isfinite(voc["precision_at_k"]) and voc["self_matches_dropped"] == 0


def test_cli_bad_input_exits_2_naming_the_path(encoder_dir: Path, folders, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    def run(database: Path, *extra: str) -> int:
        return main(["--encoder", str(encoder_dir), "--database", str(database), "--queries", str(folders[1]),
                     "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), *extra])

    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    assert run(missing) == 2 and str(missing) in caplog.text
    assert run(empty) == 2 and f"no images found in {empty}" in caplog.text
    assert run(folders[0], "--layer", "fc7") == 2 and "unknown layer 'fc7'" in caplog.text
    assert str(encoder_dir) in caplog.records[-1].getMessage()
    assert not (tmp_path / "out" / "metrics.json").exists()
