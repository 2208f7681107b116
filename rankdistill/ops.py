"""The Python face of rankdistill's ops.

The schemas and the CPU/CUDA kernels live in C++ (``csrc/``) and are reached
as ``torch.ops.rankdistill.*``; this module registers their fake (meta)
kernels, so that ``torch.compile`` and ``torch.library.opcheck`` work, the
autograd formula of ``relaxed_listmle``, and thin wrappers with the
signatures of DESIGN.md section 2. ``rankdistill.reference`` holds a plain
PyTorch version of each op with the same signature.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _C  # noqa: F401  (loading the library registers torch.ops.rankdistill)

__all__ = ["rank_positions", "weighted_sample", "discrepancy_sample", "relaxed_listmle"]

_ops = torch.ops.rankdistill
_REDUCTIONS = ("mean", "sum", "none")
_DIRECTIONS = ("under", "over")


def _exclude_arrays(exclude):
    if exclude is None:
        return None, None
    if not isinstance(exclude, Sequence) or len(exclude) != 2:
        raise TypeError("exclude must be a pair (indptr, indices) of int64 tensors, or None")
    indptr, indices = exclude
    if not isinstance(indptr, torch.Tensor) or not isinstance(indices, torch.Tensor):
        raise TypeError("exclude must be a pair (indptr, indices) of int64 tensors, or None")
    return indptr, indices


def rank_positions(
    scores: torch.Tensor,
    targets: Optional[torch.Tensor] = None,
    *,
    exclude: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """0-based position of each target in its row's ranking.

    Columns are ranked by score, descending, ties broken by column index (a
    stable descending sort); the columns listed in ``exclude`` for a row take
    no part in that row's ranking. Exactly::

        rank[b, j] = #{i not excluded: s[b,i] > s[b,t]} + #{i not excluded, i < t: s[b,i] == s[b,t]}

    with ``t = targets[b, j]``. An excluded target still gets the position it
    would take among the non-excluded columns.

    Args:
        scores: float ``[B, N]`` (float32, float64, float16 or bfloat16); any
            strides, so the item side is ``rank_positions(scores.T, ...)``.
        targets: int64 ``[B, T]`` column indices (repeats allowed), or
            ``None`` for all ``N`` columns.
        exclude: optional CSR pair ``(indptr [B+1], indices [nnz])``, int64,
            of the columns excluded from each row (a repeated column counts once).

    Returns:
        int64 ``[B, T]`` (or ``[B, N]``).

    Scores are compared in float32 (exact for the half types; float64 scores
    are rounded to float32 first, so values that differ only beyond float32
    precision tie and are ordered by column).

    Raises ValueError for NaN scores, a malformed ``exclude`` or a shape
    mismatch, IndexError for a column index out of range, TypeError for a
    wrong dtype. With targets, no ``[B, N]`` temporary is created (on CUDA,
    rows with more than 8,192 targets are sorted in blocks of rows of at most
    2^24 scores).
    """
    indptr, indices = _exclude_arrays(exclude)
    return _ops.rank_positions(scores, targets, indptr, indices)


def weighted_sample(
    weights: torch.Tensor,
    k: int,
    *,
    generator: Optional[torch.Generator] = None,
    sorted: bool = True,
) -> torch.Tensor:
    """Draw ``k`` distinct columns per row, without replacement, by weight.

    The distribution is that of successive sampling, the same as
    ``torch.multinomial(weights, k, replacement=False)``. Rows with fewer than
    ``k`` positive weights return all their positive columns, padded with -1.

    Args:
        weights: float ``[B, C]``, finite and non-negative.
        k: number of columns per row, ``0 <= k <= C``.
        generator: a ``torch.Generator`` on the weights' device (default: the
            global one, so ``torch.manual_seed`` makes runs reproducible).
        sorted: return each row's columns in ascending order (padding last);
            otherwise in the order they were drawn.

    Returns:
        int64 ``[B, k]``.
    """
    return _ops.weighted_sample(weights, int(k), bool(sorted), generator)


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
    """DCD's sampler: ``weighted_sample`` of rank-discrepancy weights, fused.

    For ``direction="under"`` column c has weight
    ``tanh(max(mu * (student_rank - teacher_rank), 0))`` (the student ranks the
    item lower than the teacher does); for ``"over"`` the difference is
    reversed. The weight matrix is never built.

    Args:
        student_rank, teacher_rank: ``[B, C]`` ranks, int64, int32, float32
            or float64 (both the same dtype and shape).
        k: columns per row, ``0 <= k <= C``; rows with fewer than ``k``
            positive weights are padded with -1.
        mu: positive scale of the discrepancy.
        direction: ``"under"`` or ``"over"``.
        generator, sorted: as in :func:`weighted_sample`.
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be 'under' or 'over', got {direction!r}")
    return _ops.discrepancy_sample(
        student_rank, teacher_rank, int(k), float(mu), direction == "under", bool(sorted), generator
    )


def relaxed_listmle(
    ranked: torch.Tensor,
    tail: torch.Tensor,
    *,
    ranked_mask: Optional[torch.Tensor] = None,
    tail_mask: Optional[torch.Tensor] = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Relaxed ListMLE (RRD eq. 9; DCD eqs. 1, 7, 8), fused forward and backward.

    Per row, with ``s`` the valid ``ranked`` scores (in the teacher's order,
    best first) and ``t`` the valid ``tail`` scores (order ignored)::

        loss_b = -sum_k [ s_k - log( sum_{i>=k} exp(s_i) + sum_j exp(t_j) ) ]

    Masks (True = valid) express padding: a padded entry contributes nothing,
    whatever its value; a row without valid ranked entries contributes 0.
    Stable for any finite scores; half-precision inputs accumulate in float32
    and their per-row loss is float32. Differentiable w.r.t. both inputs.

    Args:
        ranked: float ``[B, K]``; tail: float ``[B, L]`` of the same dtype.
        ranked_mask, tail_mask: optional bool masks of the same shapes.
        reduction: ``"mean"`` over rows (the papers' 1/|B|), ``"sum"`` or ``"none"``.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    loss, _ = _ops.relaxed_listmle(ranked, tail, ranked_mask, tail_mask)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


# ---------------------------------------------------------------------------
# Fake kernels: output shapes and dtypes, for torch.compile and opcheck.


@torch.library.register_fake("rankdistill::rank_positions")
def _rank_positions_fake(scores, targets, exclude_indptr, exclude_indices):
    width = scores.shape[1] if targets is None else targets.shape[1]
    return scores.new_empty((scores.shape[0], width), dtype=torch.long)


@torch.library.register_fake("rankdistill::weighted_sample")
def _weighted_sample_fake(weights, k, sorted, generator):
    return weights.new_empty((weights.shape[0], k), dtype=torch.long)


@torch.library.register_fake("rankdistill::discrepancy_sample")
def _discrepancy_sample_fake(student_rank, teacher_rank, k, mu, under, sorted, generator):
    return student_rank.new_empty((student_rank.shape[0], k), dtype=torch.long)


def _listmle_accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("rankdistill::relaxed_listmle")
def _relaxed_listmle_fake(ranked, tail, ranked_mask, tail_mask):
    dtype = _listmle_accumulate_dtype(ranked.dtype)
    return ranked.new_empty((ranked.shape[0],), dtype=dtype), ranked.new_empty(tuple(ranked.shape), dtype=dtype)


@torch.library.register_fake("rankdistill::relaxed_listmle_backward")
def _relaxed_listmle_backward_fake(grad_loss, ranked, tail, ranked_mask, tail_mask, denominators):
    return torch.empty_like(ranked, memory_format=torch.contiguous_format), torch.empty_like(
        tail, memory_format=torch.contiguous_format
    )


# ---------------------------------------------------------------------------
# Autograd: the backward is its own fused op, which reads the denominators
# that the forward returned as its second, non-differentiable output.


def _relaxed_listmle_setup_context(ctx, inputs, output):
    ranked, tail, ranked_mask, tail_mask = inputs
    denominators = output[1]
    ctx.mark_non_differentiable(denominators)
    ctx.save_for_backward(ranked, tail, ranked_mask, tail_mask, denominators)


def _relaxed_listmle_backward(ctx, grad_loss, _grad_denominators):
    ranked, tail, ranked_mask, tail_mask, denominators = ctx.saved_tensors
    grad_ranked, grad_tail = _ops.relaxed_listmle_backward(
        grad_loss, ranked, tail, ranked_mask, tail_mask, denominators
    )
    return grad_ranked, grad_tail, None, None


torch.library.register_autograd(
    "rankdistill::relaxed_listmle", _relaxed_listmle_backward, setup_context=_relaxed_listmle_setup_context
)
