"""Atomic checkpoint files: written to a temporary file, fsynced, then renamed over the old one."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` so that `path` holds either the old or the new content, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CheckpointError(f"could not write {path}: {exc.strerror or exc}; the previous file is untouched") from exc
        raise
    _fsync_dir(path.parent)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed mid-write
        stale.unlink(missing_ok=True)


def install_dir(new: Path, dest: Path, replaceable: Callable[[Path], bool] = lambda d: not any(d.iterdir())) -> None:
    """Rename the finished folder `new` to `dest`, so `dest` appears complete or not at all. An existing `dest`
    is replaced only when `replaceable(dest)` (default: it is empty); otherwise ValueError, naming it: a folder
    that is not ours is never deleted. The old copy is moved aside first, put back if the rename fails, then
    removed."""
    old = None
    if dest.exists():
        if not dest.is_dir() or not replaceable(dest):
            raise ValueError(f"{dest}: exists and is not an empty folder (it holds other files); choose another "
                             f"folder or empty it")
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent)) / dest.name
        os.rename(dest, old)
    try:
        os.rename(new, dest)
    except OSError:
        if old is not None:
            os.rename(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomic UTF-8 text write; a file name that was not valid UTF-8 (surrogate-escaped) is written back as its
    original bytes."""
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def save_checkpoint(state: dict[str, Any], *paths: str | Path) -> None:
    """Serialise `state` (tensors, numbers, strings, containers only) once and write it atomically to each path."""
    buf = io.BytesIO()
    torch.save(state, buf)
    for path in paths:
        atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with `weights_only=True`: a pickle that tries to run code is refused, not executed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or EOFError for bad files
        raise CheckpointError(f"cannot load checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} is not a cebench training checkpoint (no 'step' entry)")
    return state


def prune_step_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` step-numbered checkpoints."""
    files = sorted(run_dir.glob("checkpoint_step*.pt"), key=lambda p: int(p.stem.rsplit("step", 1)[1]))
    for old in files[:-keep] if keep > 0 else files:
        old.unlink(missing_ok=True)
