"""The Python face of rankdistill's ops.

The schemas and the CPU/CUDA kernels live in C++ (``csrc/``) and are reached
as ``torch.ops.rankdistill.*``; this module registers their fake (meta)
kernels, so that ``torch.compile`` and ``torch.library.opcheck`` work, the
autograd formula of ``relaxed_listmle``, and thin wrappers with the
signatures of DESIGN.md section 2. ``rankdistill.reference`` holds a plain
PyTorch version of each op with the same signature.
"""

from __future__ import annotations

import math
import operator
from typing import Optional, Sequence

import torch

from . import _C  # noqa: F401  (loading the library registers torch.ops.rankdistill)

__all__ = ["rank_positions", "dot_rank_positions", "dot_top_columns", "dot_lists", "weighted_sample",
           "discrepancy_sample", "relaxed_listmle"]

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


def _sample_size(k, name: str = "k") -> int:
    """``k`` as an int: Python and NumPy integers and 0-d integer tensors pass,
    floats and bools do not (``int(k)`` would truncate 2.5 silently)."""
    is_tensor = isinstance(k, torch.Tensor)
    if isinstance(k, bool) or (is_tensor and (k.dim() != 0 or k.dtype == torch.bool)):
        raise TypeError(f"{name} must be an integer, got {k!r}")
    try:
        value = operator.index(k)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(k).__name__} {k!r}") from None
    if not -2**63 <= value < 2**63:  # the ops take int64: a clear error rather than the dispatcher's cast failure
        raise ValueError(f"{name} is out of range (int64), got {value}")
    return value


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


def dot_rank_positions(
    row_embeddings: torch.Tensor,
    col_embeddings: torch.Tensor,
    targets: torch.Tensor,
    *,
    exclude: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """``rank_positions(row_embeddings @ col_embeddings.T, targets, exclude=exclude)``
    for a dot-product model, without the ``[B, N]`` score matrix.

    The scores are computed a few rows at a time (on the CPU, blocks of rows
    of at most 2^18 scores, one matrix product each, in a per-thread buffer;
    on CUDA, each score as a dot product while the ranking kernel reads it)
    and ranked exactly as ``rank_positions`` ranks a row: higher score first,
    ties by column, the excluded columns taking no part. Every score of a row,
    its targets' included, comes from the same computation, so a target never
    counts itself; the scores may differ from a separate ``row_embeddings @
    col_embeddings.T`` in the last bit (another summation order), which can
    only swap two columns whose scores agree to float precision.

    Args:
        row_embeddings: float32 or float64 ``[B, d]`` (e.g. a batch of users).
        col_embeddings: ``[N, d]``, same dtype and device (e.g. every item;
            for the item side pass the item and user tables the other way round).
        targets: int64 ``[B, T]`` column indices (repeats allowed).
        exclude: optional CSR pair ``(indptr [B+1], indices [nnz])``, int64,
            of the columns excluded from each row.

    Returns:
        int64 ``[B, T]``.

    Raises as ``rank_positions`` does, and TypeError for embeddings that are
    not float32/float64 or differ in dtype, ValueError for different
    dimensions or NaN scores. Not differentiable (ranks are integers).
    """
    indptr, indices = _exclude_arrays(exclude)
    return _ops.dot_rank_positions(row_embeddings.detach(), col_embeddings.detach(), targets, indptr, indices)


def dot_top_columns(
    row_embeddings: torch.Tensor,
    col_embeddings: torch.Tensor,
    k: int,
    *,
    exclude: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """Each row's ``k`` best columns of ``row_embeddings @ col_embeddings.T``,
    best first, without building the score matrix (a teacher's top-C lists).

    Columns are ordered as ``rank_positions`` ranks them (score descending,
    compared in float32; ties by column index, ascending); the ``exclude``d
    columns of a row are left out, and a row with fewer than ``k`` other
    columns is padded with -1. On the CPU each thread scores a block of rows
    (at most 2^18 scores, one matrix product) into its own buffer and keeps
    each row's best by a threshold scan (one comparison per score, against
    the ``k``-th best so far); on CUDA blocks of at most 2^24 scores are
    keyed and selected by ``topk``.

    Args:
        row_embeddings: float32 or float64 ``[B, d]``.
        col_embeddings: ``[N, d]``, the same dtype and device.
        k: columns per row, an integer >= 0 (it may exceed ``N``: padding).
        exclude: optional CSR pair ``(indptr [B+1], indices [nnz])``, int64,
            of the columns left out of each row.

    Returns:
        int64 ``[B, k]``.

    Raises TypeError for a non-integer ``k`` or embeddings that are not
    float32/float64 or differ in dtype, ValueError for a negative ``k``,
    different dimensions or NaN scores, IndexError for an excluded column out
    of range. Infinite scores are ordered like any other.
    """
    indptr, indices = _exclude_arrays(exclude)
    return _ops.dot_top_columns(row_embeddings.detach(), col_embeddings.detach(), _sample_size(k), indptr, indices)


def dot_lists(
    row_table: torch.Tensor,
    rows: torch.Tensor,
    col_table: torch.Tensor,
    cols: torch.Tensor,
) -> torch.Tensor:
    """Scores of lists of pairs of a dot-product model, differentiable::

        out[b, m] = <row_table[rows[b]], col_table[cols[b, m]]>

    What ``(col_table[cols] * row_table[rows, None]).sum(-1)`` computes,
    without the ``[B, M, d]`` gathered rows: the backward adds each pair's
    products straight into the two tables' gradients (dense, like
    ``index_select``'s). On the CPU at a student's size (d = 20, a few
    thousand pairs) forward and backward together take a half to two thirds
    of the composite form's time, which is mostly dispatch, zero-filled
    temporaries and an ``index_add``, and a fifth at d = 64 and 80,000 pairs
    (benchmarks/results/cpu.md). Each score sums its
    products in a fixed order, whatever the other pairs of the call. On CUDA
    the backward adds with atomics, so its last bits may vary between runs, as
    ``index_add``'s do (``torch.use_deterministic_algorithms(True)`` makes it
    raise there).

    Args:
        row_table: float ``[R, d]`` (float32, float64, float16 or bfloat16;
            the half types accumulate in float32).
        rows: int64 ``[B]``, indices into ``row_table``.
        col_table: ``[N, d]``, the dtype and device of ``row_table``.
        cols: int64 ``[B, M]``, indices into ``col_table``.

    Returns:
        ``[B, M]`` in the tables' dtype.

    Raises TypeError for tables that are not floating point or differ in
    dtype, or indices that are not int64; ValueError for mismatched shapes;
    IndexError for an index out of range. A backward that builds a graph
    (``create_graph=True``) differentiates the composite form instead.
    """
    return _ops.dot_lists(row_table, rows, col_table, cols)


def weighted_sample(
    weights: torch.Tensor,
    k: int,
    *,
    generator: Optional[torch.Generator] = None,
    sorted: bool = True,
    first_row: int = 0,
) -> torch.Tensor:
    """Draw ``k`` distinct columns per row, without replacement, by weight.

    The distribution is that of successive sampling, the same as
    ``torch.multinomial(weights, k, replacement=False)``. Rows with fewer than
    ``k`` positive weights return all their positive columns, padded with -1.

    Weights of any positive finite magnitude are exact, float64 subnormals
    and values near the float64 maximum included: each row's keys are
    computed from its weights scaled by a power of two chosen from the row's
    largest weight, which changes no draw of ordinary weights. Only a positive
    weight below about 2^-1987 (1e-598) times its row's largest is treated
    approximately: it stays drawable, but after every other column.

    Args:
        weights: float ``[B, C]``, finite and non-negative.
        k: number of columns per row, an integer (Python or NumPy integer, or
            a 0-d integer tensor) with ``0 <= k <= C``.
        generator: a ``torch.Generator`` on the weights' device (default: the
            global one, so ``torch.manual_seed`` makes runs reproducible).
        sorted: return each row's columns in ascending order (padding last);
            otherwise in the order they were drawn.
        first_row: row ``b`` draws the random numbers of row
            ``first_row + b``: blocks of a matrix's rows (in one process or
            several), each drawn with ``first_row`` = its first row and a
            generator in the same state (e.g. ``torch.Generator().manual_seed(s)``
            for each block), draw exactly what the whole matrix draws with it.

    Returns:
        int64 ``[B, k]``.

    Raises TypeError for a non-integer ``k`` (a float or a bool) or a
    non-float dtype, ValueError for a negative, infinite or NaN weight, ``k``
    out of range or a wrong shape.
    """
    return _ops.weighted_sample(weights, _sample_size(k), bool(sorted), generator,
                                _sample_size(first_row, "first_row"))


def discrepancy_sample(
    student_rank: torch.Tensor,
    teacher_rank: torch.Tensor,
    k: int,
    *,
    mu: float,
    direction: str,
    generator: Optional[torch.Generator] = None,
    sorted: bool = True,
    first_row: int = 0,
) -> torch.Tensor:
    """DCD's sampler: ``weighted_sample`` of rank-discrepancy weights, fused.

    For ``direction="under"`` column c has weight
    ``tanh(max(mu * (student_rank - teacher_rank), 0))`` (the student ranks the
    item lower than the teacher does); for ``"over"`` the difference is
    reversed. The weight matrix is never built. Tiny weights (a tiny ``mu``)
    are drawn exactly, as in :func:`weighted_sample`.

    Args:
        student_rank, teacher_rank: ``[B, C]`` ranks, int64, int32, float32
            or float64 (both the same dtype and shape). A teacher row
            broadcast to every row (``arange(C).expand(B, C)``) is read in
            place, not copied.
        k: columns per row, an integer with ``0 <= k <= C`` (TypeError
            otherwise, as in :func:`weighted_sample`); rows with fewer than
            ``k`` positive weights are padded with -1.
        mu: positive scale of the discrepancy.
        direction: ``"under"`` or ``"over"``.
        generator, sorted, first_row: as in :func:`weighted_sample`.
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be 'under' or 'over', got {direction!r}")
    return _ops.discrepancy_sample(
        student_rank, teacher_rank, _sample_size(k), float(mu), direction == "under", bool(sorted), generator,
        _sample_size(first_row, "first_row"),
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
    and their per-row loss is float32. Differentiable w.r.t. both inputs, any
    number of times: the ordinary backward is a fused kernel; a backward that
    builds a graph (``create_graph=True``, as for a gradient penalty or
    ``gradgradcheck``) differentiates a dense form of the loss instead, with
    ``[B, K, K + L]`` temporaries.

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


@torch.library.register_fake("rankdistill::dot_rank_positions")
def _dot_rank_positions_fake(row_embeddings, col_embeddings, targets, exclude_indptr, exclude_indices):
    return row_embeddings.new_empty((row_embeddings.shape[0], targets.shape[1]), dtype=torch.long)


@torch.library.register_fake("rankdistill::dot_top_columns")
def _dot_top_columns_fake(row_embeddings, col_embeddings, k, exclude_indptr, exclude_indices):
    return row_embeddings.new_empty((row_embeddings.shape[0], k), dtype=torch.long)


@torch.library.register_fake("rankdistill::dot_lists")
def _dot_lists_fake(row_table, rows, col_table, cols):
    return row_table.new_empty((cols.shape[0], cols.shape[1]))


@torch.library.register_fake("rankdistill::dot_lists_backward")
def _dot_lists_backward_fake(grad, row_table, rows, col_table, cols):
    return torch.empty_like(row_table, memory_format=torch.contiguous_format), torch.empty_like(
        col_table, memory_format=torch.contiguous_format
    )


@torch.library.register_fake("rankdistill::weighted_sample")
def _weighted_sample_fake(weights, k, sorted, generator, first_row=0):
    return weights.new_empty((weights.shape[0], k), dtype=torch.long)


@torch.library.register_fake("rankdistill::discrepancy_sample")
def _discrepancy_sample_fake(student_rank, teacher_rank, k, mu, under, sorted, generator, first_row=0):
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
# that the forward returned as its second, non-differentiable output. That op
# has no derivative of its own, so a backward that must build a graph (grad
# mode on: create_graph=True) differentiates _dense_relaxed_listmle instead,
# on the saved inputs, whose history the double backward then follows.

def _dense_relaxed_listmle(ranked, tail, ranked_mask, tail_mask):
    """Per-row loss, each denominator D_k a plain logsumexp over its members
    (the valid ranked i >= k and the valid tail) in a ``[B, K, K + L]``
    tensor. Autograd differentiates logsumexp any number of times without
    NaN, for any finite scores; not so reference.relaxed_listmle, whose
    logcumsumexp backward takes the log of its incoming gradient, 0 at padding
    (or where exp underflows), which its double backward turns into NaN."""
    acc = _listmle_accumulate_dtype(ranked.dtype)
    s, t = ranked.to(acc), tail.to(acc)
    num_rows, K = s.shape
    L = t.shape[1]
    if ranked_mask is None:
        ranked_mask = torch.ones_like(s, dtype=torch.bool)
    if tail_mask is None:
        tail_mask = torch.ones_like(t, dtype=torch.bool)
    later = torch.ones(K, K, dtype=torch.bool, device=s.device).triu()  # [k, i]: i >= k
    members = torch.cat([later & ranked_mask.unsqueeze(1), tail_mask.unsqueeze(1).expand(num_rows, K, L)], dim=2)
    values = torch.cat([s.unsqueeze(1).expand(num_rows, K, K), t.unsqueeze(1).expand(num_rows, K, L)], dim=2)
    # Non-members are -inf (exp() exactly 0, whatever the scores). A k with
    # no member at all is padding, whose term is dropped: its entries are 0
    # rather than all -inf, so that no logsumexp is -inf and no derivative NaN.
    entries = torch.where(members, values, -math.inf)
    entries = torch.where(members.any(2, keepdim=True), entries, 0.0)
    return torch.where(ranked_mask, torch.logsumexp(entries, dim=2) - s, 0.0).sum(1)


def _relaxed_listmle_setup_context(ctx, inputs, output):
    ranked, tail, ranked_mask, tail_mask = inputs
    denominators = output[1]
    ctx.mark_non_differentiable(denominators)
    ctx.save_for_backward(ranked, tail, ranked_mask, tail_mask, denominators)


def _relaxed_listmle_backward(ctx, grad_loss, _grad_denominators):
    ranked, tail, ranked_mask, tail_mask, denominators = ctx.saved_tensors
    if torch.is_grad_enabled():
        return _relaxed_listmle_differentiable_backward(ctx, grad_loss, ranked, tail, ranked_mask, tail_mask)
    grad_ranked, grad_tail = _ops.relaxed_listmle_backward(
        grad_loss, ranked, tail, ranked_mask, tail_mask, denominators
    )
    return grad_ranked, grad_tail, None, None


def _relaxed_listmle_differentiable_backward(ctx, grad_loss, ranked, tail, ranked_mask, tail_mask):
    # An input that needs no gradient is differentiated through a detached
    # leaf copy, since autograd.grad needs every input in the graph.
    ranked_in = ranked if ranked.requires_grad else ranked.detach().requires_grad_()
    tail_in = tail if tail.requires_grad else tail.detach().requires_grad_()
    loss = _dense_relaxed_listmle(ranked_in, tail_in, ranked_mask, tail_mask)
    grad_ranked, grad_tail = torch.autograd.grad(loss, (ranked_in, tail_in), grad_outputs=grad_loss,
                                                 create_graph=True, materialize_grads=True)
    return (grad_ranked if ctx.needs_input_grad[0] else None,
            grad_tail if ctx.needs_input_grad[1] else None, None, None)


torch.library.register_autograd(
    "rankdistill::relaxed_listmle", _relaxed_listmle_backward, setup_context=_relaxed_listmle_setup_context
)


# dot_lists: the backward op returns both tables' gradients; a backward that
# builds a graph differentiates the composite form on the saved inputs.

def _dot_lists_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _dot_lists_backward(ctx, grad):
    row_table, rows, col_table, cols = ctx.saved_tensors
    if torch.is_grad_enabled():
        grad_rows, grad_cols = _composite_dot_lists_backward(grad, row_table, rows, col_table, cols)
    else:
        grad_rows, grad_cols = _ops.dot_lists_backward(grad, row_table, rows, col_table, cols)
    return (grad_rows if ctx.needs_input_grad[0] else None, None,
            grad_cols if ctx.needs_input_grad[2] else None, None)


def _composite_dot_lists_backward(grad, row_table, rows, col_table, cols):
    picked_rows, picked_cols = row_table[rows], col_table[cols]
    grad_rows = torch.zeros_like(row_table).index_add(0, rows, (grad.unsqueeze(2) * picked_cols).sum(1))
    grad_cols = torch.zeros_like(col_table).index_add(
        0, cols.reshape(-1), (grad.unsqueeze(2) * picked_rows.unsqueeze(1)).reshape(-1, row_table.shape[1]))
    return grad_rows, grad_cols


torch.library.register_autograd(
    "rankdistill::dot_lists", _dot_lists_backward, setup_context=_dot_lists_setup_context
)
