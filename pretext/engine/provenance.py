"""What produced a result: git commit, library versions, device."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch


def git_commit(path: str | Path | None = None) -> str | None:
    """HEAD commit of the checkout containing `path` (this package by default), or None outside git."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str]:
    """Versions of the libraries that decide numerics."""
    import numpy
    import torchvision

    from .. import __version__

    return {"cebench": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def device_description(device: torch.device) -> str:
    """Human-readable device, e.g. 'cuda:0 (NVIDIA H100)' or 'cpu (x86_64, 2 threads)'."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
