"""Ranking against a catalogue split by items across processes.

When one process cannot hold a row of scores (or the item embeddings behind
it), each process of a ``torch.distributed`` group holds the scores of the
same rows against its own contiguous shard of the items,
``[offset, offset + width)``; the shards tile ``range(n_items)``. The two
functions here give, on every process, exactly what one process holding the
whole score matrix would compute (``gloo`` on CPUs, NCCL on GPUs; without a
process group they are the one-process case):

``sharded_rank_positions``: ``ops.rank_positions`` of global targets.
    A rank is a count, ``rank(t) = #{i not excluded: s_i > s_t} +
    #{i not excluded, i < t: s_i == s_t}``, so it is the sum over the shards
    of each shard's share of that count. (a) Every process learns the
    targets' scores (unless ``target_scores`` gives them): their owners write
    them, the others zeros, and an ``all_reduce`` sums them in float64, which
    holds every accepted dtype exactly (adding zeros changes no bit). (b) Each
    process counts its share with the fast op itself, on
    ``aug = [target scores | shard | target scores]`` (``[B, T + width + T]``)
    with all 2T target copies and the row's excluded shard items excluded:
    it ranks a target's front copy if the shard lies after the target, its
    back copy if the shard lies before it, and its own column if the shard
    holds it. (c) An ``all_reduce`` sums the shares.

    Proof. The copies excluded, the op counts the shard's non-excluded items
    with ``s_i > s_t``, plus those with ``s_i == s_t`` left of the ranked
    column: none (front copy), all (back copy) or those with ``i < t`` (own
    column), i.e. exactly the items with ``i < t`` when the shard lies after,
    before or around t; the shards are disjoint, so the shares sum to the rank.
    The copies hold the target's score in the shard's dtype, compared in
    float32 by the same op, so float64 rounding and ``-0.0 == 0.0`` tie as in
    one process.

``sharded_top_columns``: each row's best ``top`` non-excluded items.
    Items are ordered as ``rank_positions`` orders them (float32 score
    descending, ties by ascending global id), so entry k of a row is the item
    of rank k. Each score becomes a unique int64 key whose order is that order
    (the float32 bits made monotonic in the high 32 bits, ``2^32 - 1 - id`` in
    the low ones); each process keeps its shard's ``top`` largest keys, one
    ``all_gather`` collects them and a ``topk`` over the ``world_size * top``
    candidates picks the global best. A row's global top ``top`` lies within
    the union of the shards' top ``top`` and the keys have no ties, so the
    result does not depend on the number of processes or the order of shards.

Every process must pass the same ``n_items``, ``targets``, ``top``,
``exclude`` and dtype, and all or none of them ``target_scores``. A wrong
argument (type, dtype, shape, device, range) raises before any communication;
since every process runs the same code that is usually every process, but a
process that raises alone leaves the others to fail in their next collective
(``gloo``: connection closed; NCCL: the group's timeout). What depends on the
data (NaN scores in one shard, shards that do not tile the catalogue) is found
after the communication and raised on every process.
"""

from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.distributed as dist

from . import ops
from .distributed import row_shard_of

__all__ = ["shard_bounds", "sharded_rank_positions", "sharded_top_columns"]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# The key of an excluded item (and of padding): below the key of every score, -inf included.
_NO_ITEM = -(1 << 63)
# Global ids live in the low 32 bits of a top-columns key.
_ID_SPAN = 1 << 32


def shard_bounds(n_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """Process ``rank``'s shard ``[start, stop)`` of ``range(n_items)`` among
    ``world_size``: contiguous, in rank order, sizes differing by at most one
    (the first ``n_items % world_size`` shards are one longer)."""
    n_items, rank, world_size = _integer("n_items", n_items), _integer("rank", rank), _integer("world_size", world_size)
    if n_items < 0 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard_bounds needs n_items >= 0 and 0 <= rank < world_size, "
                         f"got n_items={n_items}, rank={rank}, world_size={world_size}")
    return row_shard_of(n_items, rank, world_size)


def sharded_rank_positions(
    scores_shard: torch.Tensor,
    offset: int,
    n_items: int,
    targets: torch.Tensor,
    target_scores: Optional[torch.Tensor] = None,
    *,
    exclude: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    group: Optional[dist.ProcessGroup] = None,
) -> torch.Tensor:
    """``ops.rank_positions(full_scores, targets, exclude=exclude)`` of a score
    matrix whose item columns are split across the processes of ``group``.

    Args:
        scores_shard: float ``[B, width]`` (float32, float64, float16 or
            bfloat16, the same on every process): this process's scores of
            the B rows against items ``offset .. offset + width - 1``
            (``width`` may be 0). The shards tile ``range(n_items)``, in any
            order.
        offset: global id of the shard's first item.
        n_items: size of the whole catalogue.
        targets: int64 ``[B, T]`` global item ids (repeats allowed), the same
            on every process.
        target_scores: optional ``[B, T]`` scores of the targets, in the
            shard's dtype, if every process already has them (saves one
            ``all_reduce``); they must be the targets' very scores.
        exclude: optional CSR pair ``(indptr [B+1], indices)``, int64, of
            each row's excluded global item ids, the same on every process
            (each keeps the entries of its own shard).
        group: the process group (default: the default group; none
            initialised means one process).

    Returns:
        int64 ``[B, T]``, the same on every process.

    Communication: ``all_reduce`` of float64 ``[B, T]`` (the target scores;
    none with ``target_scores``) and of int64 ``[B * T + 3 * world_size]``.
    Memory: a ``[B, T + width + T]`` copy of the shard and an exclusion list
    of ``2 * B * T`` entries plus the shard's.
    """
    n_items, offset = _integer("n_items", n_items), _integer("offset", offset)
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    if not isinstance(targets, torch.Tensor) or targets.dtype != torch.int64 or targets.dim() != 2:
        raise TypeError(f"targets must be a 2-D int64 tensor of global item ids, got {_describe(targets)}")
    num_rows, num_targets = targets.shape
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n_items):
        raise IndexError(f"targets must be item ids in [0, {n_items}), found "
                         f"{int(targets.min())} .. {int(targets.max())}")
    indptr, indices = _check_exclude(exclude, num_rows, n_items, targets.device)
    width = _check_shard(scores_shard, num_rows, offset, n_items, targets.device)
    if target_scores is not None:
        if not isinstance(target_scores, torch.Tensor) or target_scores.dtype != scores_shard.dtype:
            raise TypeError(f"target_scores must be a tensor of the shard's dtype {scores_shard.dtype}, "
                            f"got {_describe(target_scores)}")
        if tuple(target_scores.shape) != (num_rows, num_targets) or target_scores.device != scores_shard.device:
            raise ValueError(f"target_scores must be [{num_rows}, {num_targets}] on {scores_shard.device} like "
                             f"targets, got {list(target_scores.shape)} on {target_scores.device}")
    rank, world_size = _rank_and_size(group)
    device = scores_shard.device
    stop = offset + width
    owned = (targets >= offset) & (targets < stop)

    if target_scores is None:
        # Float64 holds every value of every accepted dtype, so the sum is
        # the owner's value whatever the dtype, and converts back exactly.
        target_scores = torch.zeros((num_rows, num_targets), dtype=torch.float64, device=device)
        if width:
            mine = scores_shard.gather(1, (targets - offset).clamp(0, width - 1))
            target_scores = torch.where(owned, mine.double(), target_scores)
        _all_reduce(target_scores, group, world_size)
        target_scores = target_scores.to(scores_shard.dtype)

    copy = torch.arange(num_targets, device=device).expand(num_rows, num_targets)
    columns = torch.where(targets < offset, copy,  # the shard lies after the target: no tie counts
                          torch.where(owned, num_targets + targets - offset,
                                      num_targets + width + copy))  # the shard lies before: every tie counts
    augmented = torch.cat([target_scores, scores_shard, target_scores], dim=1)
    augmented_exclude = _augmented_exclude(indptr, indices, num_rows, num_targets, offset, width, device)
    failure = None
    try:
        counts = ops.rank_positions(augmented, columns, exclude=augmented_exclude)
    except ValueError as exc:
        # The arguments were checked, so this is NaN in this shard's scores;
        # the others still wait for this process's share, so it is raised
        # once the sum is done.
        failure, counts = exc, torch.zeros_like(targets)

    shards = torch.zeros((world_size, 3), dtype=torch.int64, device=device)
    shards[rank] = torch.tensor([offset, width, failure is not None], dtype=torch.int64)
    total = torch.cat([counts.reshape(-1), shards.reshape(-1)])
    _all_reduce(total, group, world_size)
    _raise_failures(failure, total[num_rows * num_targets:].view(world_size, 3), n_items, "sharded_rank_positions")
    return total[:num_rows * num_targets].view(num_rows, num_targets)


def sharded_top_columns(
    scores_shard: torch.Tensor,
    offset: int,
    top: int,
    *,
    exclude: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    group: Optional[dist.ProcessGroup] = None,
) -> torch.Tensor:
    """Each row's ``top`` best non-excluded items (global ids, best first) of a
    score matrix whose item columns are split across the processes of ``group``.

    Items are ordered as ``ops.rank_positions`` ranks them: scores compared in
    float32, descending, equal scores by ascending global id; entry k of a row
    is the item of rank k, and -1 pads a row with fewer than ``top``
    non-excluded items.

    Args:
        scores_shard: float ``[B, width]`` (float32, float64, float16 or
            bfloat16), this process's scores of the same B rows against items
            ``offset .. offset + width - 1``; the shards tile the catalogue
            (at most 2^32 items), in any order.
        offset: global id of the shard's first item.
        top: list length, an integer >= 0.
        exclude: optional CSR pair ``(indptr [B+1], indices)``, int64, of
            each row's excluded global item ids, the same on every process.
        group: as in :func:`sharded_rank_positions`.

    Returns:
        int64 ``[B, top]``, the same on every process.

    Communication: one ``all_gather`` of int64 ``[B * top + 3]`` per process.
    Memory: about 12 bytes of temporaries per shard score (pass blocks of rows
    for a long shard, as ``blocks.row_blocks`` does).
    """
    offset, top = _integer("offset", offset), _integer("top", top)
    if top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
    if not isinstance(scores_shard, torch.Tensor) or scores_shard.dim() != 2:
        raise TypeError(f"scores_shard must be a 2-D float tensor, got {_describe(scores_shard)}")
    num_rows, width = scores_shard.shape
    # The catalogue's size is known after the gather (the shards' extent);
    # until then an id need only fit a key.
    indptr, indices = _check_exclude(exclude, num_rows, _ID_SPAN, scores_shard.device)
    _check_shard(scores_shard, num_rows, offset, _ID_SPAN, scores_shard.device)
    rank, world_size = _rank_and_size(group)
    device = scores_shard.device

    keys, failure = _keys(scores_shard, offset, indptr, indices)
    best = torch.full((num_rows, top), _NO_ITEM, dtype=torch.int64, device=device)
    if failure is None:
        local = min(top, width)
        best[:, :local] = keys.topk(local, dim=1).values
    del keys
    status = torch.tensor([offset, width, failure is not None], dtype=torch.int64, device=device)
    payload = torch.cat([best.reshape(-1), status])
    gathered = _all_gather(payload, group, world_size)
    shards = gathered[:, num_rows * top:]
    n_items = _raise_failures(failure, shards, None, "sharded_top_columns")
    if indices is not None and len(indices) and int(indices.max()) >= n_items:
        raise IndexError(f"exclude's indices must be item ids in [0, {n_items}), found {int(indices.max())}")
    # Each process's candidates side by side: [B, world_size * top].
    candidates = gathered[:, :num_rows * top].view(world_size, num_rows, top).permute(1, 0, 2)
    merged = candidates.reshape(num_rows, world_size * top).topk(top, dim=1).values
    return torch.where(merged == _NO_ITEM, -1, (_ID_SPAN - 1) - (merged & (_ID_SPAN - 1)))


def _keys(scores_shard: torch.Tensor, offset: int, indptr, indices
          ) -> tuple[Optional[torch.Tensor], Optional[ValueError]]:
    """int64 ``[B, width]`` keys ordered as the items rank (see the module
    docstring), excluded items at ``_NO_ITEM``; or (None, the error) for NaN scores."""
    # A float32 copy, its -0.0 made +0.0 (-0.0 + 0.0 == +0.0): zeros of either sign tie.
    scores = scores_shard.to(torch.float32, copy=True).add_(0.0)
    if bool(scores.isnan().any()):
        return None, ValueError("scores contain NaN: ranks are undefined for NaN scores")
    bits = scores.view(torch.int32)
    # IEEE bits order non-negative floats; flipping the magnitude bits of the
    # negative ones makes the signed int32 order that of the floats.
    negative = bits >> 31
    bits ^= negative.bitwise_and_(0x7FFFFFFF)
    del negative
    keys = bits.long()
    del scores, bits
    num_rows, width = keys.shape
    ids = torch.arange(offset, offset + width, device=keys.device)
    keys.mul_(_ID_SPAN).add_((_ID_SPAN - 1) - ids)  # larger key: smaller id among equal scores
    if indptr is not None:
        rows, columns = _local_entries(indptr, indices, offset, width)
        keys[rows, columns] = _NO_ITEM
    return keys, None


def _local_entries(indptr: torch.Tensor, indices: torch.Tensor, offset: int, width: int):
    """Row and shard column of each CSR entry that lies in the shard, in CSR order."""
    rows = torch.repeat_interleave(torch.arange(len(indptr) - 1, device=indptr.device), indptr.diff())
    inside = (indices >= offset) & (indices < offset + width)
    return rows[inside], indices[inside] - offset


def _augmented_exclude(indptr, indices, num_rows: int, num_targets: int, offset: int, width: int,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR exclusion list of ``[target scores | shard | target scores]``:
    per row its 2T target copies, then its excluded shard items (shifted by T)."""
    copies = torch.cat([torch.arange(num_targets, device=device),
                        torch.arange(num_targets + width, 2 * num_targets + width, device=device)])
    if indptr is None:
        rows = columns = torch.empty(0, dtype=torch.int64, device=device)
    else:
        rows, columns = _local_entries(indptr, indices, offset, width)
    kept_before = torch.zeros(num_rows + 1, dtype=torch.int64, device=device)
    kept_before[1:] = torch.bincount(rows, minlength=num_rows).cumsum(0)
    copies_per_row = 2 * num_targets
    new_indptr = kept_before + copies_per_row * torch.arange(num_rows + 1, device=device)
    new_indices = torch.empty(int(new_indptr[-1]), dtype=torch.int64, device=device)
    # Row b starts at new_indptr[b] with its copies; its e-th kept entry
    # overall (CSR order) lands after the copies of rows 0..b.
    new_indices[(new_indptr[:-1, None] + torch.arange(copies_per_row, device=device)).reshape(-1)] = \
        copies.repeat(num_rows)
    new_indices[torch.arange(len(rows), device=device) + copies_per_row * (rows + 1)] = columns + num_targets
    return new_indptr, new_indices


def _raise_failures(failure: Optional[ValueError], shards: torch.Tensor, n_items: Optional[int], name: str) -> int:
    """Raise on every process what went wrong on any: this process's own
    error, another's failure, or shards that do not tile ``range(n_items)``
    (None: as far as the shards reach). ``shards`` holds each process's
    (offset, width, failed). Returns the catalogue's size."""
    if failure is not None:
        raise failure
    rows = shards.tolist()
    failed = [rank for rank, (_, _, bad) in enumerate(rows) if bad]
    if failed:
        raise RuntimeError(f"{name} failed on process(es) {failed} of the group (NaN scores there): see their error")
    spans = sorted((start, width) for start, width, _ in rows if width)  # an empty shard's offset is arbitrary
    if n_items is None:
        n_items = spans[-1][0] + spans[-1][1] if spans else 0
    end = 0
    for start, width in spans:
        if start != end:
            end = -1
            break
        end = start + width
    if end != n_items:
        raise ValueError(f"{name}: the shards [offset, offset + width) of the processes, "
                         f"{[(start, start + width) for start, width, _ in rows]}, do not tile range({n_items}) "
                         "without gaps or overlaps")
    return n_items


def _check_shard(scores_shard, num_rows: int, offset: int, n_items: int, device: torch.device) -> int:
    if not isinstance(scores_shard, torch.Tensor) or scores_shard.dim() != 2:
        raise TypeError(f"scores_shard must be a 2-D float tensor, got {_describe(scores_shard)}")
    if scores_shard.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"scores_shard must be float32, float64, float16 or bfloat16, got {scores_shard.dtype}")
    if scores_shard.shape[0] != num_rows:
        raise ValueError(f"scores_shard has {scores_shard.shape[0]} rows, targets and exclude have {num_rows}")
    if scores_shard.device != device:
        raise ValueError(f"scores_shard is on {scores_shard.device}, targets on {device}")
    width = scores_shard.shape[1]
    if offset < 0 or offset + width > n_items:
        raise ValueError(f"the shard [offset, offset + width) = [{offset}, {offset + width}) "
                         f"is not within range({n_items})")
    return width


def _check_exclude(exclude, num_rows: int, n_items: int, device: torch.device):
    """``exclude``'s (indptr, indices), or (None, None), once checked as a CSR
    list of ``num_rows`` rows of ids in ``range(n_items)`` on ``device``."""
    if exclude is None:
        return None, None
    if not isinstance(exclude, (tuple, list)) or len(exclude) != 2 or not all(
            isinstance(part, torch.Tensor) and part.dtype == torch.int64 and part.dim() == 1 for part in exclude):
        raise TypeError("exclude must be a pair (indptr, indices) of 1-D int64 tensors, or None")
    indptr, indices = exclude
    if indptr.device != device or indices.device != device:
        raise ValueError(f"exclude is on {indptr.device} and {indices.device}, the scores on {device}")
    if len(indptr) != num_rows + 1 or int(indptr[0]) != 0 or int(indptr[-1]) != len(indices) or \
            bool((indptr.diff() < 0).any()):
        raise ValueError(f"exclude is not a CSR list of {num_rows} rows: indptr must have {num_rows + 1} "
                         f"non-decreasing entries from 0 to len(indices) = {len(indices)}")
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= n_items):
        raise IndexError(f"exclude's indices must be item ids in [0, {n_items}), found "
                         f"{int(indices.min())} .. {int(indices.max())}")
    return indptr, indices


def _rank_and_size(group) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise ValueError("a process group was given but torch.distributed is not initialised")
        return 0, 1
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("this process is not a member of the given process group")
    return rank, dist.get_world_size(group)


def _all_reduce(tensor: torch.Tensor, group, world_size: int) -> None:
    if world_size > 1:
        dist.all_reduce(tensor, group=group)


def _all_gather(tensor: torch.Tensor, group, world_size: int) -> torch.Tensor:
    """``[world_size, *tensor.shape]``: every process's tensor, by rank."""
    if world_size == 1:
        return tensor.unsqueeze(0)
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor, group=group)
    return torch.stack(parts)


def _integer(name: str, value) -> int:
    """``value`` as an int: Python, NumPy and 0-d tensor integers pass, floats and bools do not."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {list(value.shape)}"
    return type(value).__name__
