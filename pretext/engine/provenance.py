"""What produced a result: git commit, library versions, device."""

from __future__ import annotations

import functools
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


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX512-BF16, AMX; Arm BF16


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (x86 "flags", Arm "Features"), read once; None where they cannot
    be read (another OS, or a CPU that lists neither)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return frozenset(text.split()) if "flags" in text or "Features" in text else None


def cpu_bf16_listed() -> bool:
    """The CPU lists bf16 dot-product instructions; False when its flags cannot be read: `precision=auto` picks
    bf16 only where it is known to be native."""
    return bool((cpu_flags() or frozenset()) & BF16_FLAGS)


def cpu_has_native_bf16() -> bool:
    """The CPU has bf16 dot-product instructions; unknown CPUs count as yes (for the emulation warning: no warning
    where nothing is known)."""
    return cpu_flags() is None or cpu_bf16_listed()


def cpu_isa() -> str:
    """The vector instruction set torch's CPU kernels use here (e.g. AVX512, AVX2), with "+AMX" / "+BF16" when the
    CPU lists native bf16 instructions: recorded beside every timing."""
    flags = cpu_flags() or frozenset()
    isa = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "unknown"
    return isa + ("+AMX" if "amx_bf16" in flags else "") + ("+BF16" if flags & {"avx512_bf16", "bf16"} else "")


def device_description(device: torch.device) -> str:
    """Human-readable device, e.g. 'cuda:0 (NVIDIA H100)' or 'cpu (x86_64, 2 threads)'."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {cpu_isa()}, {torch.get_num_threads()} threads)"
