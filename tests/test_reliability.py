"""Faults injected for real: kill -9 during training and during a checkpoint write, a full disk, a pickle that
carries code. Each must lose nothing already saved and resume (or refuse) cleanly."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pretext.engine.checkpoint import CheckpointError, atomic_write_bytes, load_checkpoint, save_checkpoint

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def _pretrain(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "pretext.pretrain", "demo", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(run: Path, proc: subprocess.Popen, step: int, timeout: float = 240) -> None:
    """Block until the run's checkpoint has reached `step` (the process is still running)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        try:
            if load_checkpoint(run / "checkpoint.pt")["step"] >= step:
                return
        except CheckpointError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step {step} within {timeout} s")


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_equals_an_uninterrupted_run(demo_root: Path, tmp_path: Path) -> None:
    """SIGKILL at a random step after a checkpoint: resuming gives bit-identical final weights (deterministic CPU)."""
    common = [f"data.root={demo_root}", *TINY, "max_steps=12", "ckpt_every=1", "mask.kind=block"]
    straight = tmp_path / "straight"
    assert _pretrain(["--out", str(straight), *common]).wait(timeout=300) == 0
    killed = tmp_path / "killed"
    kill_at = int(torch.randint(2, 10, (1,), generator=torch.Generator().manual_seed(int(time.time()))).item())
    proc = _pretrain(["--out", str(killed), *common])
    _wait_for_step(killed, proc, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    at = load_checkpoint(killed / "checkpoint.pt")["step"]
    assert kill_at <= at < 12  # killed mid-run, after at least one checkpoint
    assert _pretrain(["--out", str(killed), *common, "resume=true"]).wait(timeout=300) == 0
    a, b = (load_checkpoint(d / "checkpoint.pt") for d in (straight, killed))
    assert a["step"] == b["step"] == 12
    for name, net in a["networks"].items():
        assert all(torch.equal(net[k], b["networks"][name][k]) for k in net), (name, kill_at)


_WRITER = """
import sys, torch
from pretext.engine.checkpoint import save_checkpoint
save_checkpoint({"step": 2, "blob": torch.ones(int(sys.argv[2]))}, sys.argv[1])
"""


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one(tmp_path: Path) -> None:
    """A writer of a ~400 MB checkpoint is killed once its temporary file exists: the old file still loads."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1, "blob": torch.zeros(10)}, path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(100_000_000)], env=env)
    t0 = time.monotonic()
    while not list(tmp_path.glob(".checkpoint.pt.*.tmp")) and proc.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(path)
    if proc.returncode == -signal.SIGKILL and state["step"] == 1:  # killed mid-write, as intended
        assert torch.equal(state["blob"], torch.zeros(10))
    else:  # the write won the race: then the new file is whole
        assert state["step"] == 2 and state["blob"].numel() == 100_000_000
    save_checkpoint({"step": 3}, path)  # the next write clears what the killed writer left
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"] and load_checkpoint(path)["step"] == 3


def test_a_full_disk_is_a_clear_error_and_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1}, path)
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(CheckpointError, match=r"could not write .*checkpoint.pt: No space left on device; "
                                              r"the previous file is untouched"):
        atomic_write_bytes(path, b"x" * 1000)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert list(tmp_path.iterdir()) == [path]  # the partial temporary file is gone


@pytest.mark.slow
def test_a_full_disk_during_training_stops_the_run_with_the_last_checkpoint(image_folder: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    from pretext.engine import checkpoint
    from pretext.pretrain import main

    run = tmp_path / "run"
    args = ["demo", "--out", str(run), f"data.root={image_folder}", *TINY, "max_steps=6", "ckpt_every=2"]
    real = checkpoint.atomic_write_bytes
    writes = {"n": 0}

    def flaky(path, data):
        if Path(path).name == "checkpoint.pt":
            writes["n"] += 1
            if writes["n"] == 2:  # the step-4 checkpoint
                raise CheckpointError(f"could not write {path}: No space left on device; the previous file is "
                                      f"untouched")
        return real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", flaky)
    assert main(args) == 2
    assert "No space left on device" in caplog.text
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", real)
    assert main([*args, "resume=true"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 6


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.target}",))


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path: Path) -> None:
    _Payload.target = str(tmp_path / "pwned")
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 1, "x": _Payload()}, path)
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A valid 1x1 PNG whose header is rewritten to claim width x height (CRC fixed): a few dozen bytes that would
    decode to gigabytes."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    """100,000 x 100,000 claimed by a tiny file: refused before any pixel is decoded (no memory is spent)."""
    import resource

    from pretext.data.images import BadImageError, load_rgb

    bomb = tmp_path / "bomb.png"
    _png_claiming(bomb, 100_000, 100_000)
    assert bomb.stat().st_size < 100
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(BadImageError, match=r"bomb.png: .*(exceeds the limit|too many pixels)"):
        load_rgb(bomb)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing near 30 GB
    _png_claiming(bomb, 5000, 5000)  # under PIL's own guard, over the user's limit
    with pytest.raises(BadImageError, match=r"bomb.png: 5000x5000 = 25000000 pixels exceeds the limit of 1000"):
        load_rgb(bomb, max_pixels=1000)


@pytest.mark.parametrize("payload", ["!!python/object/apply:os.system ['touch {marker}']",
                                     "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
                                     "train: !!python/name:os.system"])
def test_a_config_carrying_code_is_refused_without_running_it(tmp_path: Path, payload: str) -> None:
    """Configs and suites load with yaml.safe_load: a Python tag is a clear error, and the command never runs."""
    from benchmarks.suite import load_suite
    from pretext.config import ConfigError, load_config

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(payload.format(marker=marker) + "\n")
    with pytest.raises(ConfigError, match=r"evil.yaml.*invalid YAML"):
        load_config(str(evil))
    with pytest.raises(ConfigError, match=r"evil.yaml"):
        load_suite(str(evil), [])
    assert not marker.exists()
