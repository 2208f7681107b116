"""Plain, obviously correct PyTorch versions of rankdistill's ops.

Same signatures and semantics as :mod:`rankdistill.ops`, written for
clarity rather than speed (full sorts, dense ``[B, N]`` masks,
``torch.multinomial``, autograd through ``logcumsumexp``). The tests compare
the ops against them and the benchmarks time the ops against them.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["rank_positions", "dot_rank_positions", "dot_top_columns", "dot_lists", "weighted_sample",
           "discrepancy_sample", "relaxed_listmle"]


def rank_positions(
    scores: torch.Tensor,
    targets: Optional[torch.Tensor] = None,
    *,
    exclude: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """Ranks by a stable descending sort of every row (see ``ops.rank_positions``)."""
    # float32 holds every half-precision value exactly; adding 0.0 turns -0.0
    # into +0.0, which compares equal to it.
    values = scores.float() + 0.0
    if torch.isnan(values).any():
        raise ValueError("scores contain NaN: ranks are undefined for NaN scores")
    num_rows, num_cols = values.shape
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    kept = torch.ones(num_rows, num_cols, dtype=torch.long, device=values.device)
    if exclude is not None:
        indptr, indices = exclude
        rows = torch.repeat_interleave(torch.arange(num_rows, device=values.device), indptr.diff())
        kept[rows, indices] = 0
    kept_in_order = kept.gather(1, order)
    # Position of a sorted column = number of kept columns sorted before it.
    position = kept_in_order.cumsum(1) - kept_in_order
    ranks = torch.empty_like(order).scatter_(1, order, position)
    return ranks if targets is None else ranks.gather(1, targets)


def dot_rank_positions(
    row_embeddings: torch.Tensor,
    col_embeddings: torch.Tensor,
    targets: torch.Tensor,
    *,
    exclude: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """The whole score matrix, then ``rank_positions`` (see ``ops.dot_rank_positions``)."""
    return rank_positions(row_embeddings @ col_embeddings.T, targets, exclude=exclude)


def dot_top_columns(
    row_embeddings: torch.Tensor,
    col_embeddings: torch.Tensor,
    k: int,
    *,
    exclude: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """The whole score matrix ranked by ``rank_positions`` (float32, ties by
    column), then the ``k`` first non-excluded columns of each row, -1 padded
    (see ``ops.dot_top_columns``)."""
    scores = row_embeddings @ col_embeddings.T
    n_rows, n_cols = scores.shape
    ranks = rank_positions(scores)  # every column's position, ties by column
    if exclude is not None:
        indptr, indices = exclude
        rows = torch.repeat_interleave(torch.arange(n_rows, device=scores.device), indptr.diff())
        ranks[rows, indices] = n_cols  # after every kept column
    order = ranks.argsort(dim=1, stable=True)  # columns by position; excluded last, by column
    best = order[:, :k]
    best = best.masked_fill(ranks.gather(1, best) == n_cols, -1)
    return torch.cat([best, best.new_full((n_rows, max(0, k - n_cols)), -1)], dim=1)


def _check_weights(weights: torch.Tensor, k: int) -> None:
    if weights.dim() != 2:
        raise ValueError(f"weights must be a 2-D tensor, got shape {tuple(weights.shape)}")
    if not 0 <= k <= weights.shape[1]:
        raise ValueError(f"k ({k}) must lie in [0, number of columns = {weights.shape[1]}]")
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("sampling weights must be finite and non-negative")


def dot_lists(row_table: torch.Tensor, rows: torch.Tensor, col_table: torch.Tensor,
              cols: torch.Tensor) -> torch.Tensor:
    """Gathered rows multiplied and summed (see ``ops.dot_lists``)."""
    return (col_table[cols] * row_table[rows].unsqueeze(1)).sum(-1)


def weighted_sample(
    weights: torch.Tensor,
    k: int,
    *,
    generator: Optional[torch.Generator] = None,
    sorted: bool = True,
) -> torch.Tensor:
    """``torch.multinomial`` without replacement, with -1 padding for rows
    that have fewer than ``k`` positive weights."""
    _check_weights(weights, k)
    num_rows, num_cols = weights.shape
    out = torch.full((num_rows, k), -1, dtype=torch.long, device=weights.device)
    if k == 0 or num_rows == 0:
        return out
    w = weights
    num_positive = (w > 0).sum(1)
    full = num_positive >= k
    if full.any():
        out[full] = torch.multinomial(w[full], k, replacement=False, generator=generator)
    # Rows with fewer than k positive weights: every positive column, drawn in
    # a random order (one row at a time: such rows are rare).
    for row in torch.nonzero(~full & (num_positive > 0)).flatten().tolist():
        n = int(num_positive[row])
        out[row, :n] = torch.multinomial(w[row], n, replacement=False, generator=generator)
    if sorted:
        out = torch.where(out < 0, num_cols, out).sort(1).values
        out = torch.where(out == num_cols, -1, out)
    return out


def discrepancy_weights(
    student_rank: torch.Tensor, teacher_rank: torch.Tensor, *, mu: float, direction: str
) -> torch.Tensor:
    """DCD's weights ``tanh(max(mu * gap, 0))``, ``gap = student - teacher``
    for ``"under"`` and ``teacher - student`` for ``"over"``."""
    if direction not in ("under", "over"):
        raise ValueError(f"direction must be 'under' or 'over', got {direction!r}")
    gap = student_rank.double() - teacher_rank.double()
    if direction == "over":
        gap = -gap
    return torch.tanh(torch.clamp(mu * gap, min=0))


def discrepancy_sample(
    student_rank: torch.Tensor,
    teacher_rank: torch.Tensor,
    k: int,
    *,
    mu: float,
    direction: str,
    generator: Optional[torch.Generator] = None,
    sorted: bool = True,
) -> torch.Tensor:
    """Builds the discrepancy weights, then ``weighted_sample``."""
    weights = discrepancy_weights(student_rank, teacher_rank, mu=mu, direction=direction)
    return weighted_sample(weights, k, generator=generator, sorted=sorted)


# Stands for "no entry" in the masked log-sum-exps: finite, so that autograd
# never meets -inf - (-inf), and so small that exp() of it is exactly 0.
_ABSENT = -1e30


def relaxed_listmle(
    ranked: torch.Tensor,
    tail: torch.Tensor,
    *,
    ranked_mask: Optional[torch.Tensor] = None,
    tail_mask: Optional[torch.Tensor] = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Relaxed ListMLE through ``logcumsumexp`` and autograd."""
    acc = torch.float64 if ranked.dtype == torch.float64 else torch.float32
    s, t = ranked.to(acc), tail.to(acc)
    if ranked_mask is None:
        ranked_mask = torch.ones_like(s, dtype=torch.bool)
    if tail_mask is None:
        tail_mask = torch.ones_like(t, dtype=torch.bool)
    s_valid = torch.where(ranked_mask, s, _ABSENT)
    absent_column = torch.full((t.shape[0], 1), _ABSENT, dtype=acc, device=t.device)
    t_valid = torch.cat([torch.where(tail_mask, t, _ABSENT), absent_column], dim=1)
    suffix_lse = torch.logcumsumexp(s_valid.flip(1), dim=1).flip(1)
    tail_lse = torch.logsumexp(t_valid, dim=1, keepdim=True)
    terms = torch.logaddexp(suffix_lse, tail_lse) - s_valid
    loss = torch.where(ranked_mask, terms, 0.0).sum(1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
