"""Beyond one process: rankdistill's row-sharded work on ``torch.distributed``.

Launched by ``torchrun --nproc_per_node N -m rankdistill ...``, every process
runs the same command. The work that ranks a whole catalogue (the teacher's
top-C lists, the student's catalogue ranks behind DCD's corrections, RD's
ranks and the diagnostics, full and sampled evaluation) is split by rows:
each process scores only its contiguous share of the rows (``row_shard``) and
the results are gathered in row order (``gather_rows``), so that every process
holds exactly what one process would have computed. Training itself is
replicated: each process trains the same student from the same seed, and the
models are made equal to rank 0's before each epoch's ranking work
(``broadcast_modules``), so that rank 0's run is the one-process run, bit for
bit. Rank 0 alone logs and writes files.

Without ``torchrun`` (or with one process) every function here is the
identity of one process, and nothing needs ``torch.distributed``.
"""

from __future__ import annotations

import datetime
import os
from typing import Iterable

import torch
import torch.distributed as dist

__all__ = ["backend", "barrier", "broadcast_modules", "gather_rows", "init_from_environment", "is_main", "rank", "row_shard",
           "row_shard_of", "shutdown", "world_size"]

# A collective that waits longer than this for a process that failed ends the run.
_TIMEOUT = datetime.timedelta(minutes=30)


def init_from_environment(device: str | torch.device = "cpu") -> bool:
    """Join the process group that ``torchrun`` describes in the environment
    (``WORLD_SIZE`` > 1): ``gloo`` for CPU runs, ``nccl`` for CUDA ones, each
    process on its own GPU (``LOCAL_RANK``). Returns whether it joined."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed: run one process")
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if on_cuda else "gloo", timeout=_TIMEOUT)
    return True


def shutdown() -> None:
    """Leave the process group, if one was joined (a library user's end of a
    distributed run; the command line ends its processes with ``os._exit``
    instead, see ``cli.main``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


def is_main() -> bool:
    """Whether this process logs and writes files (rank 0, or the only one)."""
    return rank() == 0


def backend() -> str | None:
    """The process group's backend (``gloo``, ``nccl``), None for one process."""
    return str(dist.get_backend()) if _active() else None


def row_shard(n_rows: int) -> tuple[int, int]:
    """This process's contiguous share ``[start, stop)`` of ``range(n_rows)``."""
    return row_shard_of(n_rows, rank(), world_size())


def row_shard_of(n_rows: int, which: int, size: int) -> tuple[int, int]:
    """Process ``which``'s share of ``range(n_rows)`` among ``size``: contiguous,
    in rank order, sizes differing by at most one row."""
    base, extra = divmod(n_rows, size)
    start = which * base + min(which, extra)
    return start, start + base + (1 if which < extra else 0)


def gather_rows(local: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Every process's ``row_shard(n_rows)`` rows of a tensor, concatenated in
    row order, on every process (the identity for one process)."""
    if not _active():
        return local
    size = world_size()
    counts = [row_shard_of(n_rows, r, size) for r in range(size)]
    longest = max(stop - start for start, stop in counts)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:stop - start] for part, (start, stop) in zip(parts, counts)])


def barrier() -> None:
    """Wait until every process gets here (e.g. until rank 0 has written a file the others read)."""
    if _active():
        dist.barrier()


def broadcast_modules(modules: Iterable[torch.nn.Module]) -> None:
    """Make every process's copies of ``modules`` equal to rank 0's (their
    parameters and buffers)."""
    if not _active():
        return
    with torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)
