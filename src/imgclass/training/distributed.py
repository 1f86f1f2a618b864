"""Running on PyTorch's own distributed engine: torchrun + DistributedDataParallel, and devices.

imgclass does not schedule processes itself. ``torchrun`` (``torch.distributed.run``) starts them and
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; this module reads those,
joins the process group (gloo on CPU, nccl on CUDA) and answers "am I rank 0?" for the code that
writes files. ``imgclass train --nproc N`` is a shortcut that re-runs the same command under
``torchrun --standalone --nproc-per-node N`` (one machine); multi-node runs call torchrun directly::

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m imgclass train photos/ --method lite0 --out runs/photos

Everything here is a no-op in a single process, so the library code calls it unconditionally.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world`` processes (``local_rank`` on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def env_info() -> DistInfo:
    """The rank and world size torchrun put in the environment (rank 0 of 1 without torchrun)."""
    try:
        return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                        int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise ConfigError("RANK/WORLD_SIZE/LOCAL_RANK must be integers; start distributed runs with torchrun") from None


def init(device: str = "cpu") -> DistInfo:
    """Join the process group when started by torchrun (idempotent); returns this process's ``DistInfo``.

    The backend is nccl for CUDA and gloo otherwise. The collective timeout (default 6 h, env
    ``IMGCLASS_DIST_TIMEOUT`` in seconds) is long because ranks wait for each other at the end of a
    sharded prediction or an epoch, and one rank can be much slower than another.
    """
    info = env_info()
    if not info.enabled:
        return info
    import torch.distributed as dist

    if not dist.is_initialized():
        timeout = _dt.timedelta(seconds=float(os.environ.get("IMGCLASS_DIST_TIMEOUT", 6 * 3600)))
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            import torch

            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, timeout=timeout)
    return DistInfo(dist.get_rank(), dist.get_world_size(), info.local_rank)


def info() -> DistInfo:
    """The current ``DistInfo`` (rank 0 of 1 unless a process group is running)."""
    e = env_info()
    if not e.enabled:
        return e
    import torch.distributed as dist

    if not dist.is_initialized():
        return e
    return DistInfo(dist.get_rank(), dist.get_world_size(), e.local_rank)


def is_main() -> bool:
    return info().is_main


def barrier() -> None:
    if info().enabled:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64; the values themselves in one process)."""
    if not info().enabled:
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. the run directory rank 0 chose)."""
    if not info().enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    """Leave the process group (end of a torchrun job)."""
    e = env_info()
    if e.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous ``[start, stop)`` block of ``n`` items for ``rank``: concatenating the blocks in rank order
    gives the input order back (how sharded prediction merges its outputs)."""
    return n * rank // world, n * (rank + 1) // world


# --------------------------------------------------------------------------- devices
def resolve_device(name: str | None = "auto") -> str:
    """``auto`` → ``cuda`` (this rank's GPU under torchrun) when available, then ``mps``, else ``cpu``.
    An explicit device that is not available is a ``ConfigError``."""
    import torch

    name = (name or "auto").lower()
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ConfigError(f"--device {name}: choose one of {', '.join(DEVICES)}")
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA GPU is visible to torch; use --device cpu or auto")
        if name == "cuda" and env_info().enabled:
            name = f"cuda:{env_info().local_rank}"
    if name == "mps" and not has_mps:
        raise ConfigError("--device mps: Apple's Metal backend is not available; use --device cpu or auto")
    return name


def autocast_dtype(device: str, precision: str = "auto"):
    """The autocast dtype for ``device``: bf16 on GPUs that support it, else fp16 on CUDA/MPS; ``None``
    (full fp32) on CPU or with ``precision="fp32"``."""
    import torch

    if precision == "fp32" or device == "cpu":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


# --------------------------------------------------------------------------- launcher
def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``imgclass ARGV`` on ``nproc`` local processes with torchrun's own launcher (the
    ``elastic_launch`` behind ``torchrun --standalone``) and return the exit code: 0, or the first failed
    rank's code (2 for bad input, as in one process). Each process gets ``cores / nproc`` threads unless
    ``OMP_NUM_THREADS`` is set (torchrun's default is one).
    """
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: give at least 1 process")
    import logging
    import tempfile
    from pathlib import Path

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # rank 0 talks to the terminal; the other ranks' output goes to files, shown only if one of them fails
    logs = tempfile.mkdtemp(prefix="imgclass-ranks-")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          logs_specs=DefaultLogsSpecs(log_dir=logs, redirects={r: Std.ALL for r in range(1, nproc)}))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # we report failures ourselves
    try:
        elastic_launch(config, sys.executable)("-m", "imgclass", *argv)
    except ChildFailedError as exc:
        failed = sorted((rank, f.exitcode) for rank, f in exc.failures.items())
        rank, code = next(((r, c) for r, c in failed if c and c > 0), failed[0])
        if rank != 0 and code != 2:  # bad input fails every rank alike, and rank 0 has said it
            for err in Path(logs).rglob(f"{rank}/stderr.log"):
                lines = [ln for ln in err.read_text(errors="replace").splitlines() if ln.strip()]
                if lines:
                    print(f"rank {rank}: {lines[-1]}", file=sys.stderr)
        return code if code and code > 0 else 1
    finally:
        import shutil

        shutil.rmtree(logs, ignore_errors=True)
    return 0


def strip_option(argv: Sequence[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE`` (how ``--nproc`` is dropped before re-running)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


__all__ = ["DEVICES", "DistInfo", "all_reduce_sum", "autocast_dtype", "barrier", "broadcast", "env_info", "info",
           "init", "is_main", "launch", "resolve_device", "shard_range", "shutdown", "strip_option"]
