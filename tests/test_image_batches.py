"""One pass over a set of images (`image_batches`): loader workers give the batches of the main process, in order;
every unreadable file of the pass is named in one error; the progress bar counts images. Used by feature
extraction (probes, retrieval) and by `cebench inpaint` / `eval-inpainting`."""

from __future__ import annotations

import io
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pretext.data.dataset import UnlabelledImages, image_batches
from pretext.data.images import BadImageError
from pretext.engine.trainer import train

from .conftest import tiny_config


def _with_bad_files(src: Path, dest: Path) -> list[Path]:
    """`src`'s images copied to `dest` with three unreadable files among them (their paths)."""
    shutil.copytree(src, dest)
    png = (dest / "img000.png").read_bytes()
    bad = [dest / "img003x.png", dest / "img010x.png", dest / "img020x.png"]
    bad[0].write_bytes(b"not an image")
    bad[1].write_bytes(png[: len(png) // 2])  # truncated
    bad[2].write_bytes(b"")
    return bad


def _images(root: Path) -> UnlabelledImages:
    return UnlabelledImages(sorted(root.glob("*.png")), 36, 32, flip=False)


def test_workers_give_the_batches_of_the_main_process_in_order(image_folder: Path) -> None:
    data = _images(image_folder)
    plain = list(image_batches(data, 5, workers=0))
    forked = list(image_batches(data, 5, workers=2))
    assert [i for i, _ in plain] == [i for i, _ in forked] == [list(range(k, min(k + 5, 24))) for k in range(0, 24, 5)]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(plain, forked))
    assert torch.equal(torch.cat([b for _, b in plain]), torch.stack([data[i][0] for i in range(24)]))


@pytest.mark.parametrize("workers", [0, 2])
def test_every_unreadable_file_is_named_in_one_pass(image_folder: Path, tmp_path: Path, workers: int) -> None:
    bad = _with_bad_files(image_folder, tmp_path / "mixed")
    data = _images(tmp_path / "mixed")
    first_bad = data.paths.index(bad[0])
    seen: list[int] = []
    with pytest.raises(BadImageError, match=r"^3 of 27 images unreadable: ") as exc:
        for idx, _ in image_batches(data, 4, workers=workers):
            seen += idx
    assert all(str(p) in str(exc.value) for p in bad)
    assert seen == list(range(first_bad // 4 * 4))  # batches up to the first bad one; none after it


def test_the_progress_bar_counts_images_on_a_terminal(image_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    data = _images(image_folder)
    for progress, expect in ((True, True), (False, False)):
        screen = Terminal()
        monkeypatch.setattr(sys, "stderr", screen)
        list(image_batches(data, 8, workers=0, progress=progress, desc="pool5 features"))
        assert ("pool5 features" in screen.getvalue() and "/24 " in screen.getvalue()) == expect  # of 24 images
    screen = io.StringIO()  # not a terminal (a log file, CI): no bar
    monkeypatch.setattr(sys, "stderr", screen)
    list(image_batches(data, 8, workers=0, progress=True))
    assert screen.getvalue() == ""


def test_eval_inpainting_names_every_unreadable_image(image_folder: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    from pretext.eval_inpainting import evaluate, main

    run = tmp_path / "run"
    train(tiny_config(image_folder, "train.max_steps=2"), run)
    good = evaluate(run, image_folder, batch_size=8, workers=1)
    assert good["n_images"] == 24 and np.isfinite(good["psnr"])
    assert evaluate(run, image_folder, batch_size=8, workers=0) == good  # workers change nothing
    bad = _with_bad_files(image_folder, tmp_path / "mixed")
    with caplog.at_level(logging.ERROR):
        assert main(["--checkpoint", str(run), "--images", str(tmp_path / "mixed"), "--batch-size", "8",
                     "--out", str(tmp_path / "ev")]) == 2
    assert "3 of 27 images unreadable" in caplog.text and all(str(p) in caplog.text for p in bad)
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_inpaint_names_every_unreadable_image_and_exits_2(image_folder: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    from pretext.inpaint import main

    run = tmp_path / "run"
    train(tiny_config(image_folder, "train.max_steps=2"), run)
    bad = _with_bad_files(image_folder, tmp_path / "mixed")
    with caplog.at_level(logging.ERROR):
        assert main(["--checkpoint", str(run), "--images", str(tmp_path / "mixed"), "--batch-size", "4",
                     "--workers", "1", "--out", str(tmp_path / "out")]) == 2
    assert "3 of 27 images unreadable" in caplog.text and all(str(p) in caplog.text for p in bad)
    assert "data.on_bad_image" not in caplog.text  # a training option: no use to this command
    assert len(list((tmp_path / "out").glob("*_filled.png"))) == 4  # the batch before the first bad file
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(run), "--images", str(image_folder), "--workers", "-1", "--out", str(tmp_path)])
