"""Device selection and torchrun/DDP process-group set-up (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistEnv:
    """Where this process runs and which rank it is."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def select_device(setting: str, local_rank: int = 0) -> torch.device:
    """'auto' picks CUDA when present (the local rank's GPU under torchrun), else CPU."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {setting!r} requested but CUDA is not available; use device=cpu or auto")
        return torch.device(setting if ":" in setting else f"cuda:{local_rank}")
    if setting != "cpu":
        raise ValueError(f"unknown device {setting!r}; use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def init_distributed(device_setting: str = "auto", timeout_s: int = 600) -> DistEnv:
    """Join the torchrun process group when WORLD_SIZE > 1; otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_setting, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistEnv(rank, world, local_rank, device)


# What gloo and NCCL say when a collective fails because another process of the job died or stopped answering.
_PEER_SIGNS = {"closed by peer": "the other side closed the connection", "reset by peer": "the connection was reset",
               "Broken pipe": "the connection broke", "Timed out": "no answer within train.ddp_timeout_s",
               "timed out": "no answer within train.ddp_timeout_s", "timeout": "no answer within train.ddp_timeout_s",
               "Connection refused": "the other side is gone", "NCCL": "NCCL reported an error"}


def peer_failure(exc: BaseException) -> str | None:
    """One clear line when `exc` is a collective operation of a multi-process job (WORLD_SIZE > 1) that failed
    because another process crashed or stalled; None for any other error."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    reason = next((why for sign, why in _PEER_SIGNS.items() if sign in text), None)
    if reason is None:
        return None
    return (f"rank {os.environ.get('RANK', '?')} of {os.environ['WORLD_SIZE']}: a collective operation failed "
            f"({reason}): another process of this job crashed or stalled, and its own log names the cause. "
            f"Stopped; the last checkpoint is intact (resume with train.resume=true)")


def shutdown(env: DistEnv) -> None:
    """Leave the process group (if any)."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(module: nn.Module, env: DistEnv) -> nn.Module:
    """DDP-wrap a module with trainable parameters when distributed; identity otherwise."""
    if not env.distributed or not any(p.requires_grad for p in module.parameters()):
        return module
    ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP (or torch.compile) wrapper."""
    module = getattr(module, "module", module)
    return getattr(module, "_orig_mod", module)


def no_sync(module: nn.Module) -> contextlib.AbstractContextManager:
    """DDP's no_sync for a forward whose gradients must not be all-reduced (e.g. D during the G step)."""
    return module.no_sync() if isinstance(module, DistributedDataParallel) else contextlib.nullcontext()


def all_reduce_mean(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    """Average scalar metrics over ranks (for logging)."""
    if not env.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return {k: float(v) / env.world_size for k, v in zip(keys, t.tolist())}


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op alone)."""
    if env.distributed:
        dist.barrier()
