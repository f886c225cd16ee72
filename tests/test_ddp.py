"""Two-process DDP on gloo through torchrun, as users run it on many machines."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretext.engine.checkpoint import load_checkpoint

from .conftest import TINY


def torchrun(nproc: int, args: list[str], timeout: int = 300, module: str = "pretext.pretrain") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", module, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_two_process_gloo_ddp_trains_and_resumes(demo_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    args = ["demo", "--out", str(run), f"data.root={demo_root}", *TINY, "max_steps=6", "ckpt_every=3",
            "mask.kind=central"]
    first = torchrun(2, [*args[:-2], "max_steps=3", "mask.kind=central"])
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(2, [*args, "resume=true"])
    assert second.returncode == 0, second.stderr[-3000:]

    record = json.loads((run / "pretrain_time.json").read_text())
    assert record["world_size"] == 2 and record["images_seen"] == 6 * 8 * 2
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 6
    assert not any(k.startswith("module.") for sd in state["networks"].values() for k in sd)
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)


@pytest.mark.slow
def test_context_prediction_under_ddp(demo_root: Path, tmp_path: Path) -> None:
    from pretext.export import load_encoder

    from .test_context_prediction import TINY_CP

    run = tmp_path / "cp"
    done = torchrun(2, ["demo", "--out", str(run), f"data.root={demo_root}", *TINY_CP, "max_steps=4",
                        "data.holdout=8"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "pretrain_time.json").read_text())["world_size"] == 2
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert 0 <= float(rows[-1]["val_acc"]) <= 1 and len([r for r in rows if r.get("acc")]) == 4
    encoder, meta = load_encoder(run)
    assert meta["method"] == "context_prediction" and meta["pretrain"]["images_seen"] == 4 * 8 * 2


@pytest.mark.slow
def test_classification_fine_tuning_under_ddp(demo_root: Path, tmp_path: Path) -> None:
    from pretext.engine.trainer import train

    from .conftest import tiny_config

    encoder = tmp_path / "enc"
    train(tiny_config(demo_root, "max_steps=1"), encoder)
    run = tmp_path / "ft"
    args = ["--encoder", str(encoder), "--data", str(demo_root), "--out", str(run), "model.fc_widths=[16,16]",
            "train.batch_size=4", "data.workers=0", "train.progress=false", "train.log_every=1", "test.crops=2",
            "train.ckpt_every=2"]
    first = torchrun(2, [*args, "train.max_steps=2"], module="transfer.classify")
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(2, [*args, "train.max_steps=4", "train.resume=true"], module="transfer.classify")
    assert second.returncode == 0, second.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["steps"] == 4 and m["results_files"] == str(run)
    assert all(0 <= m[k] <= 100 for k in ("map_voc07_11pt", "map_area", "map_sklearn"))
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 4 and not any(k.startswith("module.") for k in state["model"])
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]


@pytest.mark.slow
def test_segmentation_fine_tuning_under_ddp(demo_root: Path, tmp_path: Path) -> None:
    """Two processes, 2 images each per update (gradients accumulated with no_sync, synchronised on the last)."""
    from pretext.engine.trainer import train

    from .conftest import tiny_config

    encoder = tmp_path / "enc"
    train(tiny_config(demo_root, "max_steps=1"), encoder)
    run = tmp_path / "seg"
    args = ["--encoder", str(encoder), "--data", str(demo_root), "--out", str(run), "--train-split", "trainval",
            "--test-split", "test", "model.fc_widths=[16,16]", "train.batch_size=2", "data.workers=0",
            "data.scale=48", "train.progress=false", "train.log_every=1", "train.ckpt_every=2"]
    first = torchrun(2, [*args, "train.max_steps=2"], module="transfer.segment")
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(2, [*args, "train.max_steps=3", "train.resume=true"], module="transfer.segment")
    assert second.returncode == 0, second.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["steps"] == 3 and 0 <= m["miou"] <= 100
    assert m["train_seconds_per_image"] > 0  # 3 updates x 2 images x 2 processes
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 3 and not any(k.startswith("module.") for k in state["model"])


def _launch(rank: int, port: int, args: list[str]) -> subprocess.Popen:
    """One process of a 2-process job started by hand (as a second machine's agent would), not by torchrun,
    which would itself stop the others when one fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    worker = Path(__file__).with_name("ddp_crash_worker.py")
    return subprocess.Popen([sys.executable, str(worker), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raise", "stall", "kill"])
def test_a_failed_rank_stops_the_others_with_a_clear_error(mode: str, demo_root: Path, tmp_path: Path) -> None:
    """Rank 1 raises (hangs, or is killed with SIGKILL) at step 2 of a gloo pretraining; rank 0 exits with code 4 and one line saying
    another process failed, within train.ddp_timeout_s, instead of hanging; the checkpoint it had is intact."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    args = [mode, "1", "2", "demo", "--out", str(run), f"data.root={demo_root}", *TINY, "max_steps=40",
            "ckpt_every=1", "mask.kind=central", "train.ddp_timeout_s=15"]
    t0 = time.monotonic()
    procs = [_launch(rank, port, args) for rank in (0, 1)]
    try:
        _, err0 = procs[0].communicate(timeout=240)
        elapsed = time.monotonic() - t0
        rank1_status = procs[1].wait(timeout=30) if mode != "stall" else None  # before the clean-up kill below
    finally:
        for p in procs:
            p.kill()
        _, err1 = procs[1].communicate()
    assert procs[0].returncode == 4, err0[-3000:]
    assert "rank 0 of 2: a collective operation failed" in err0 and "another process of this job" in err0
    assert "Traceback" not in err0
    assert elapsed < 200
    if mode == "raise":
        assert "injected fault on rank 1 at step 2" in err1
    elif mode == "kill":
        assert rank1_status == -9  # it died of the signal, not of the clean-up
    else:
        assert "no answer within train.ddp_timeout_s" in err0
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2
