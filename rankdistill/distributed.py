"""Beyond one process: rankdistill's row-sharded work on ``torch.distributed``.

Launched by ``torchrun --nproc_per_node N -m rankdistill ...``, every process
runs the same command. The work that ranks a whole catalogue (the teacher's
top-C lists, the student's catalogue ranks behind DCD's corrections, RD's
ranks and the diagnostics, full and sampled evaluation) is split by rows:
each process scores only its contiguous share of the rows (``row_shard``) and
the results are gathered in row order (``gather_rows``), so that every process
holds exactly what one process would have computed. Training is replicated
by default (every process trains on every batch); with ``--data-parallel``
(``TrainConfig.data_parallel``) every process draws the same shuffled batches from the run's
seed, trains on its contiguous share of each batch's pairs and of the rows the
method distils, and the processes' gradients are summed (``sum_across``, one
``all_reduce`` per batch) before every process takes the same optimizer step;
so training follows the one-process trajectory up to the order of float
additions. What is drawn per batch is drawn alike on every process: DE's
Gumbel noise and RD's sampled ranks for all the batch's rows before each
process takes its share, CDAE's corruption by the step's key and each pair. A
model or method of one's own that draws otherwise in a batch's loss
(``draws_in_loss``, ``splits_by_rows``) trains replicated: each process trains
on the whole batch, bit for bit the one-process run. The models are made equal
to rank 0's before each epoch's ranking work (``broadcast_modules``). Rank 0
alone logs and writes files.

Without ``torchrun`` (or with one process) every function here is the
identity of one process, and nothing needs ``torch.distributed``.
"""

from __future__ import annotations

import datetime
import math
import os
from typing import Iterable

import torch
import torch.distributed as dist

__all__ = ["backend", "barrier", "broadcast_modules", "gather_objects", "gather_rows", "init_from_environment",
           "is_main", "rank", "row_shard", "row_shard_of", "shutdown", "sum_across", "world_size"]

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


def pair_share(n_pairs: int, shard: tuple[int, int] | None) -> tuple[slice, float]:
    """Data-parallel training: the process ``shard = (which, size)``'s
    contiguous share of a batch's ``n_pairs`` training pairs, and the weight of
    its batch mean (its fraction of the pairs), so that the processes' terms
    add up to the batch mean; all of them, weight 1, for ``shard=None``."""
    if shard is None:
        return slice(0, n_pairs), 1.0
    start, stop = row_shard_of(n_pairs, *shard)
    return slice(start, stop), (stop - start) / max(n_pairs, 1)


# Bytes gathered per all_gather call (all processes' rows together). gloo
# gathers into a flat buffer of its own before copying out, so one call for a
# [10^6, 500] int64 list would hold it three times; and it is slow with large
# messages: two processes gathering [200,000, 500] int64 on this project's CPU
# machine took 1.0-2.7 s in 4-16 MB calls, 9.5 s in 64 MB calls.
GATHER_CHUNK_BYTES = 1 << 22


def gather_rows(local: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Every process's ``row_shard(n_rows)`` rows of a tensor, concatenated in
    row order, on every process (the identity for one process). Sent in chunks
    of rows, so that beyond the result it holds only a few chunks."""
    if not _active():
        return local
    size = world_size()
    bounds = [row_shard_of(n_rows, r, size) for r in range(size)]
    longest = max(stop - start for start, stop in bounds)
    out = local.new_empty((n_rows, *local.shape[1:]))
    if longest == 0:
        return out
    row_bytes = max(1, math.prod(local.shape[1:]) * local.element_size())
    chunk = min(longest, max(1, GATHER_CHUNK_BYTES // (size * row_bytes)))
    # One send and one receive buffer, reused by every chunk.
    piece = local.new_zeros((chunk, *local.shape[1:]))  # the shorter shards' last chunk is padded
    gathered = local.new_empty((size * chunk, *local.shape[1:]))
    for offset in range(0, longest, chunk):
        rows = min(chunk, longest - offset)
        mine = local[offset:offset + rows]
        piece[:len(mine)] = mine
        parts = gathered[:size * rows].split(rows)
        dist.all_gather(list(parts), piece[:rows])
        for part, (start, stop) in zip(parts, bounds):
            count = max(0, min(rows, stop - start - offset))
            out[start + offset:start + offset + count] = part[:count]
    return out


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


def sum_across(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each of ``tensors`` summed over the processes, in one ``all_reduce``
    (the same shapes and dtype on every process; the identity for one)."""
    if not _active() or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def gather_objects(obj: object) -> list[object]:
    """Every process's ``obj`` (picklable; tensors anywhere in lists, tuples
    and dicts), in rank order, on every process."""
    if not _active():
        return [obj]
    out: list[object] = [None] * world_size()
    # Tensors travel as bytes: all_gather_object's unpickling of torch storages fails.
    dist.all_gather_object(out, _map_tensors(obj, _tensor_bytes))
    return [_map_tensors(o, None) for o in out]


class _TensorBytes(tuple):
    """(dtype, shape, bytes) of a tensor on its way between processes."""


def _tensor_bytes(t: torch.Tensor) -> _TensorBytes:
    return _TensorBytes((t.dtype, tuple(t.shape), t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()))


def _map_tensors(obj: object, encode) -> object:
    if encode is not None and isinstance(obj, torch.Tensor):
        return encode(obj)
    if encode is None and isinstance(obj, _TensorBytes):
        dtype, shape, data = obj
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, encode) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not isinstance(obj, _TensorBytes):
        return type(obj)(_map_tensors(v, encode) for v in obj)
    return obj
