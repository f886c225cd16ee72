"""kNN and linear probes on features with known structure, FAISS vs brute force, the feature cache, the CLI."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretext.engine.trainer import train
from pretext.export import load_encoder
from transfer.features import (Features, LabelledImages, ProbeError, cached_features, check_train_test,
                               open_labelled, pooled_grid)
from transfer.knn import knn_probe, nearest, weighted_votes
from transfer.probe import logistic_probe, low_shot_labels, low_shot_probe, main, svm_probe

from .conftest import tiny_config


def clusters(n: int, classes: int, dim: int, seed: int, spread: float = 0.3, random_labels: bool = False) -> Features:
    """L2-normalised points around one random centre per class; labels shuffled when `random_labels`."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(size=(classes, dim))  # shared by train and test
    labels = np.arange(n) % classes
    x = centres[labels] + spread * rng.normal(size=(n, dim)) * np.linalg.norm(centres, axis=1).mean() / math.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if random_labels:
        labels = rng.permutation(labels)
    names = tuple(f"c{i}" for i in range(classes))
    source = LabelledImages("imagefolder", Path(f"/synthetic/{seed}"), None, (), labels, names)
    return Features(x.astype(np.float32), labels, names, source)


def multilabel(single: Features) -> Features:
    """VOC-style labels from single-label clusters: the own class present, others absent, a few difficult."""
    labels = np.where(np.eye(len(single.classes), dtype=bool)[single.labels], 1, -1).astype(np.int8)
    labels[::7, 0] = np.where(labels[::7, 0] == 1, 0, labels[::7, 0])  # some difficult-only positives
    return Features(single.x, labels, single.classes, single.source)


def test_knn_finds_clusters_and_random_labels_stay_near_chance() -> None:
    result = knn_probe(clusters(300, 5, 32, seed=0), clusters(200, 5, 32, seed=1), ks=(20, 200))
    assert all(r["top1"] > 95 for r in result["results"].values())
    noise = knn_probe(clusters(300, 5, 32, seed=0, random_labels=True), clusters(200, 5, 32, seed=1), ks=(20,))
    assert 5 < noise["results"]["k20"]["top1"] < 40  # chance: 20 %


def test_knn_multilabel_gives_high_map() -> None:
    result = knn_probe(multilabel(clusters(300, 4, 16, 0)), multilabel(clusters(100, 4, 16, 1)), ks=(20,))
    assert result["results"]["k20"]["map_area"] > 95


def test_knn_clamps_k_to_the_training_set_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    result = knn_probe(clusters(30, 3, 8, 0), clusters(30, 3, 8, 1), ks=(200,))
    assert result["results"]["k200"]["k_used"] == 30 and "only 30 training images" in caplog.text


def test_faiss_neighbours_equal_brute_force() -> None:
    rng = np.random.default_rng(0)
    train_x, test_x = rng.normal(size=(500, 24)).astype(np.float32), rng.normal(size=(40, 24)).astype(np.float32)
    sims, idx = nearest(train_x, test_x, 10)
    brute = test_x.astype(np.float64) @ train_x.T.astype(np.float64)  # (40, 500)
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(sims, np.take_along_axis(brute, expected, 1), rtol=1e-5, atol=1e-5)


def test_weighted_votes_match_hand_computation() -> None:
    sims, idx = np.array([[0.9, 0.5, 0.4]]), np.array([[0, 1, 2]])
    targets = np.eye(2)[[1, 0, 0]]  # neighbour 0 votes class 1, the others class 0
    w = np.exp(np.array([0.9, 0.5, 0.4]) / 0.07)
    np.testing.assert_allclose(weighted_votes(sims, idx, targets), [[(w[1] + w[2]) / w.sum(), w[0] / w.sum()]])


def test_logistic_probe_on_clusters_and_on_random_labels() -> None:
    good = logistic_probe(clusters(300, 5, 32, 0), clusters(200, 5, 32, 1), (0.01, 0.1, 1.0), seed=0, n_jobs=1)
    assert good["top1"] > 95 and good["C"] in (0.01, 0.1, 1.0) and set(good["cv_top1"]) == {"0.01", "0.1", "1.0"}
    noise = logistic_probe(clusters(300, 5, 32, 0, random_labels=True), clusters(200, 5, 32, 1), (0.1,), 0, 1)
    assert 5 < noise["top1"] < 40


def test_svm_probe_gives_high_map_and_picks_costs_per_class() -> None:
    result = svm_probe(multilabel(clusters(240, 4, 16, 0)), multilabel(clusters(100, 4, 16, 1)),
                       (0.1, 1.0), seed=0, n_jobs=1, difficult="exclude")
    assert result["map_area"] > 95 and result["map_voc07_11pt"] > 95
    assert all(fit["cost"] in (0.1, 1.0) and fit["cv_ap"] > 90 for fit in result["svm"].values())


def test_svm_probe_on_single_label_data_is_one_vs_rest_with_top1() -> None:
    result = svm_probe(clusters(240, 4, 16, 0), clusters(100, 4, 16, 1), (0.1, 1.0), seed=0, n_jobs=1,
                       difficult="exclude")
    assert result["top1"] > 95 and result["map_area"] > 95 and set(result["svm"]) == {"c0", "c1", "c2", "c3"}


def test_low_shot_labels_keep_k_positives_per_class_and_every_negative() -> None:
    labels = multilabel(clusters(120, 4, 8, 0)).labels
    drawn = low_shot_labels(labels, 3, np.random.default_rng(0))
    assert ((drawn == 1).sum(axis=0) == 3).all()
    assert ((drawn == -1) == (labels == -1)).all()  # negatives untouched
    assert ((drawn == 1) <= (labels == 1)).all()  # kept positives are real positives
    other = low_shot_labels(labels, 3, np.random.default_rng(1))
    assert not ((other == 1) == (drawn == 1)).all()  # another draw, other positives


def test_low_shot_probe_improves_with_more_positives_and_reports_spread() -> None:
    train, test = multilabel(clusters(400, 4, 64, 0, spread=1.2)), multilabel(clusters(200, 4, 64, 1, spread=1.2))
    result = low_shot_probe(train, test, (1, 32), samples=3, costs=(0.1, 1.0), seed=0, n_jobs=1)["low_shot"]
    one, many = result["k1"], result["k32"]
    assert len(one["draws"]) == 3 and one["map_area_std"] >= 0
    assert many["map_area_mean"] > one["map_area_mean"]


def test_probe_refuses_to_test_on_its_training_split(tmp_path: Path) -> None:
    data = clusters(10, 2, 4, 0).source
    with pytest.raises(ProbeError, match="test set is the training set"):
        check_train_test(data, data)
    other = LabelledImages("imagefolder", Path("/synthetic/other"), None, (), data.labels, ("x", "y"))
    with pytest.raises(ProbeError, match="do not match"):
        check_train_test(data, other)


def test_pooled_grid_keeps_the_dimension_modest() -> None:
    assert pooled_grid(256, 13) == 6 and pooled_grid(96, 55) == 9 and pooled_grid(16, 4) == 4


def stripes(root: Path, n: int, seed: int) -> Path:
    """An ImageFolder of `n` horizontal and `n` vertical stripe images with random colours and periods."""
    rng = np.random.default_rng(seed)
    for name, axis in (("horizontal", 0), ("vertical", 1)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            period, phase = int(rng.integers(6, 12)), int(rng.integers(0, 12))
            band = ((np.arange(40) + phase) // (period // 2)) % 2  # (40,)
            mask = band[:, None, None] if axis == 0 else band[None, :, None]
            dark, light = rng.integers(0, 60), rng.integers(190, 256)
            img = np.where(np.broadcast_to(mask, (40, 40, 3)) == 1, light, dark).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny encoder (32 px input)."""
    images = stripes(tmp_path_factory.mktemp("unlabelled"), 4, seed=9)
    run = tmp_path_factory.mktemp("enc") / "random"
    train(tiny_config(images, "method=random", "max_steps=0"), run)
    return run


@pytest.fixture(scope="module")
def stripe_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """train/ and test/ ImageFolders of 16 + 16 stripe images each."""
    root = tmp_path_factory.mktemp("stripes")
    return stripes(root / "train", 16, seed=0), stripes(root / "test", 16, seed=1)


def test_feature_cache_hit_skips_the_encoder_and_key_follows_the_layer(encoder_dir: Path, stripe_data, tmp_path: Path) -> None:
    encoder, meta = load_encoder(encoder_dir)
    calls = []
    encoder.register_forward_hook(lambda *_: calls.append(1))
    data = open_labelled(stripe_data[0], "unused")
    first = cached_features(encoder, meta, data, "pool5", tmp_path, batch_size=8)
    n_first = len(calls)
    again = cached_features(encoder, meta, data, "pool5", tmp_path, batch_size=8)
    assert n_first == 4 and len(calls) == n_first and np.array_equal(first.x, again.x)
    assert first.x.shape[0] == 32 and np.allclose(np.linalg.norm(first.x, axis=1), 1, atol=1e-5)
    conv3 = cached_features(encoder, meta, data, "conv3", tmp_path, batch_size=8)
    assert len(calls) > n_first and conv3.x.shape != first.x.shape and len(list(tmp_path.glob("*.npz"))) == 2
    sub = cached_features(encoder, meta, data, "pool5", tmp_path, max_images=10, seed=3)
    assert sub.x.shape[0] == 10 and len(list(tmp_path.glob("*.npz"))) == 3


def _counted_encoder_and_stripes(encoder_dir: Path, tmp_path: Path) -> tuple:
    """The encoder (each forward pass's batch size appended to `batches`), its meta, and 16 stripe images in a
    folder of their own: (encoder, meta, data, batches)."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(stripes(tmp_path / "src", 8, seed=0), root)
    encoder, meta = load_encoder(encoder_dir)
    batches: list[int] = []
    encoder.register_forward_hook(lambda _m, inputs, _o: batches.append(inputs[0].shape[0]))
    return encoder, meta, open_labelled(root, "unused"), batches


def test_a_replaced_image_is_extracted_again_and_the_log_says_why(encoder_dir: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The same file name with other pixels: its features (and the probe's) change; the others come from the
    cache; the features of a fresh extraction and of the patched cache agree."""
    monkeypatch.delenv("CEBENCH_FINGERPRINT", raising=False)  # stat mode, whatever the environment says
    encoder, meta, data, batches = _counted_encoder_and_stripes(encoder_dir, tmp_path)
    first = cached_features(encoder, meta, data, "pool5", tmp_path / "cache", batch_size=64)
    target = data.paths[3]
    other = np.asarray(Image.open(data.paths[-1]))  # an image of the other class, under this one's name
    Image.fromarray(other).save(target)
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    batches.clear()
    with caplog.at_level(logging.WARNING):
        again = cached_features(encoder, meta, data, "pool5", tmp_path / "cache", batch_size=64)
    assert batches == [1]  # only the replaced image went through the encoder
    assert "1 of 16 images of" in caplog.text and str(target) in caplog.text
    assert "(size or modification time; first:" in caplog.text
    changed = np.flatnonzero(~np.isclose(first.x, again.x).all(axis=1))
    assert changed.tolist() == [3]
    fresh = cached_features(encoder, meta, data, "pool5", tmp_path / "fresh", batch_size=64)
    assert np.allclose(fresh.x, again.x, atol=1e-5)
    batches.clear()
    cached_features(encoder, meta, data, "pool5", tmp_path / "cache", batch_size=64)
    assert batches == []  # the patched cache is complete


def test_in_content_mode_the_cache_sees_new_bytes_behind_an_old_time(encoder_dir: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """$CEBENCH_FINGERPRINT=content: features cached in stat mode are a clean miss (all extracted, no "changed"
    warning); an image rewritten with other bytes of the same size, its modification time put back, is extracted
    again, and the warning names what was compared."""
    monkeypatch.delenv("CEBENCH_FINGERPRINT", raising=False)
    encoder, meta, data, batches = _counted_encoder_and_stripes(encoder_dir, tmp_path)
    target = data.paths[5]
    image = Image.open(target).convert("RGB")
    image.save(target, format="PNG", compress_level=0)  # uncompressed: other pixels, as many bytes
    cached_features(encoder, meta, data, "pool5", tmp_path / "cache", batch_size=64)  # stat mode
    monkeypatch.setenv("CEBENCH_FINGERPRINT", "content")
    batches.clear()
    with caplog.at_level(logging.WARNING):
        cached_features(encoder, meta, data, "pool5", tmp_path / "cache", batch_size=64)
    assert batches == [16] and "changed since" not in caplog.text  # another mode's stamps: extracted afresh
    times, before = target.stat(), target.read_bytes()
    Image.open(data.paths[-1]).convert("RGB").resize(image.size).save(target, format="PNG", compress_level=0)
    assert target.stat().st_size == times.st_size and target.read_bytes() != before
    os.utime(target, ns=(times.st_atime_ns, times.st_mtime_ns))
    batches.clear()
    with caplog.at_level(logging.WARNING):
        cached_features(encoder, meta, data, "pool5", tmp_path / "cache", batch_size=64)
    assert batches == [1] and "(size or content; first:" in caplog.text and str(target) in caplog.text


def test_features_in_bf16_are_cached_apart_and_channels_last_computes_the_plain_layout(
        encoder_dir: Path, stripe_data, tmp_path: Path) -> None:
    """The extraction runs channels_last (fp32: the NCHW features, to rounding) and, asked for bf16, under autocast:
    features close to fp32's, in a cache entry of their own; the CLI records what --precision resolved to."""
    import torch

    from transfer.features import encode_batch, load_batch, pool_features

    encoder, meta = load_encoder(encoder_dir)
    data = open_labelled(stripe_data[0], "unused")
    fp32 = cached_features(encoder, meta, data, "pool5", tmp_path, batch_size=64)
    batch = load_batch(data.paths, int(meta["input_size"]))
    x = (batch.float() / 255 - torch.tensor(meta["normalization"]["mean"]).view(1, 3, 1, 1)) \
        / torch.tensor(meta["normalization"]["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        plain = pool_features(encoder.eval()(x.contiguous(), out="pool5"), "pool5").numpy()
    assert np.allclose(fp32.x, plain, atol=1e-5)
    seen = []
    hook = encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous(
        memory_format=torch.channels_last)))
    encode_batch(encoder, meta, batch[:2], "pool5", torch.device("cpu"))
    hook.remove()
    assert seen == [True]
    bf16 = cached_features(encoder, meta, data, "pool5", tmp_path, batch_size=64, precision="bf16")
    assert len(list(tmp_path.glob("*.npz"))) == 2 and not np.array_equal(bf16.x, fp32.x)
    cosine = (bf16.x * fp32.x).sum(1)
    assert bf16.x.dtype == np.float32 and cosine.min() > 0.99
    out = tmp_path / "probe"
    assert main(["knn", "--encoder", str(encoder_dir), "--train", str(stripe_data[0]), "--test", str(stripe_data[1]),
                 "--out", str(out), "--cache", str(tmp_path), "--precision", "bf16", "--k", "3"]) == 0
    assert json.loads((out / "metrics.json").read_text())["feature_precision"] == "bf16"


def test_the_feature_cache_follows_cebench_cache(encoder_dir: Path, stripe_data, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEBENCH_CACHE", str(tmp_path / "c"))
    encoder, meta = load_encoder(encoder_dir)
    cached_features(encoder, meta, open_labelled(stripe_data[0], "unused"), "pool5", None, batch_size=64)
    assert len(list((tmp_path / "c" / "features").glob("*.npz"))) == 1


def test_bad_image_error_names_the_file(encoder_dir: Path, stripe_data, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "bad"
    for name in ("horizontal", "vertical"):  # the test set's classes: the files are what is wrong
        (root / name).mkdir(parents=True)
        Image.new("RGB", (40, 40)).save(root / name / "ok.png")
    (root / "vertical" / "broken.png").write_bytes(b"not a png")
    (root / "horizontal" / "empty.png").write_bytes(b"")
    caplog.set_level(logging.ERROR)
    code = main(["knn", "--encoder", str(encoder_dir), "--train", str(root), "--test", str(stripe_data[1]),
                 "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")], prog="cebench probe")
    assert code == 2
    # both bad files named in one pass, with the count
    assert "2 of 4 images unreadable" in caplog.text
    assert str(root / "vertical" / "broken.png") in caplog.text and str(root / "horizontal" / "empty.png") in caplog.text


def test_loader_workers_extract_the_features_of_the_main_process(encoder_dir: Path, stripe_data,
                                                                  tmp_path: Path) -> None:
    encoder, meta = load_encoder(encoder_dir)
    data = open_labelled(stripe_data[0], "unused")
    plain = cached_features(encoder, meta, data, "pool5", tmp_path / "a", batch_size=8, workers=0)
    forked = cached_features(encoder, meta, data, "pool5", tmp_path / "b", batch_size=8, workers=2)
    assert np.array_equal(plain.x, forked.x) and np.array_equal(plain.labels, forked.labels)


def probe_cli(probe: str, encoder: Path, train_dir: Path, test_dir: Path, out: Path, *extra: str) -> dict:
    code = main([probe, "--encoder", str(encoder), "--train", str(train_dir), "--test", str(test_dir),
                 "--out", str(out), "--cache", str(out.parent / "cache"), "--device", "cpu", *extra],
                prog="cebench probe")
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


def test_cli_on_stripes_imagefolder(encoder_dir: Path, stripe_data, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    knn = probe_cli("knn", encoder_dir, *stripe_data, tmp_path / "knn", "--layer", "conv3", "--k", "5,200")
    assert knn["results"]["k5"]["top1"] >= 75 and knn["results"]["k200"]["k_used"] == 32
    assert knn["encoder_sha256"] == load_encoder(encoder_dir)[1]["sha256"] and knn["layer"] == "conv3"
    assert knn["train"]["n_images"] == 32 and knn["classes"] == ["horizontal", "vertical"] and knn["git_commit"]
    lin = probe_cli("linear", encoder_dir, *stripe_data, tmp_path / "lin", "--layer", "conv3", "--costs", "0.1,1")
    assert lin["top1"] >= 75 and lin["C"] in (0.1, 1.0) and lin["feature_dim"] > 0
    assert "top-1" in capsys.readouterr().out


def test_cli_refuses_train_split_and_bad_input(encoder_dir: Path, stripe_data, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    args = ["knn", "--encoder", str(encoder_dir), "--train", str(stripe_data[0]), "--out", str(tmp_path / "o"),
            "--cache", str(tmp_path / "c")]
    assert main([*args, "--test", str(stripe_data[0])]) == 2
    assert "test set is the training set" in caplog.text
    assert main([*args, "--test", str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_cli_on_demo_voc_data(encoder_dir: Path, tmp_path: Path) -> None:
    from pretext.data.demo import make_demo_data

    root = tmp_path / "demo"
    make_demo_data(root, num_images=60, seed=0, workers=1)
    for probe in ("knn", "linear"):
        m = probe_cli(probe, encoder_dir, root, root, tmp_path / probe, "--k", "10", "--costs", "0.1,1",
                      "--n-jobs", "2")
        result = m["results"]["k10"] if probe == "knn" else m
        assert all(math.isfinite(result[k]) for k in ("map_voc07_11pt", "map_area", "map_sklearn"))
        assert m["train"]["split"] == "trainval" and m["test"]["split"] == "test"
    low = probe_cli("svm", encoder_dir, root, root, tmp_path / "low", "--costs", "0.1,1", "--low-shot", "1,2",
                    "--low-shot-samples", "2")["low_shot"]
    assert set(low) == {"k1", "k2"} and all(len(r["draws"]) == 2 for r in low.values())
    assert main(["knn", "--encoder", str(encoder_dir), "--train", str(root), "--test", str(root), "--test-split",
                 "trainval", "--out", str(tmp_path / "x"), "--cache", str(tmp_path / "cache")]) == 2
