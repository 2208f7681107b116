"""The teacher's rankings that every distillation method reads: its top-C
items per user and its top-C users per item, training interactions excluded.

``compute_rankings`` makes them from any teacher (a model, or just its
``score_all(users) -> [B, n_items]``) and the interactions, in blocks of rows
whose score matrix fits ``SCORE_ALL_BUDGET`` (never a ``[U, I]`` matrix).
The command line caches them next to the teacher's checkpoint (keyed by the
checkpoint's content, the split and C), so that every method and seed of a
comparison reads the same lists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from .. import distributed
from ..blocks import all_finite, block_rows, csr_rows, row_blocks
from ..errors import ConfigError, DataError, TrainingDiverged
from ..io import file_sha256, torch_load, torch_save
from ..ops import dot_top_columns
from ..progress import bar
from ..scoring import InteractionMatrix, as_interactions, check_fits, finite_dot_product_tables
from ..split import Split

__all__ = ["DEFAULT_TOP", "TeacherRankings", "compute_rankings", "load_or_compute_rankings", "top_columns"]

log = logging.getLogger("rankdistill")

DEFAULT_TOP = 500
_CACHE_KIND = "rankdistill-teacher-rankings"


@dataclass
class TeacherRankings:
    """The teacher's top-C lists, int64, best first, -1 padded where a row has
    fewer than C unobserved candidates:

    - ``items_of_user [n_users, C]``: its best unobserved items of each user;
    - ``users_of_item [n_items, C']``: its best users (who have not
      interacted with it) of each item; None if only the user side is known
      (then no item-side term can be on).

    Precomputed lists of your own can be given as they are (e.g. the top-C of
    a teacher served elsewhere): they must exclude each row's training
    interactions and be in the teacher's order."""

    items_of_user: torch.Tensor
    users_of_item: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("items_of_user", "users_of_item"):
            lists = getattr(self, name)
            if lists is None and name == "users_of_item":
                continue
            if not isinstance(lists, torch.Tensor) or lists.dim() != 2 or lists.dtype != torch.int64:
                found = f"{lists.dtype} of shape {list(lists.shape)}" if isinstance(lists, torch.Tensor) else \
                    type(lists).__name__
                raise ConfigError(f"TeacherRankings.{name} must be a 2-D int64 tensor, got {found}")

    @property
    def top(self) -> int:
        return self.items_of_user.shape[1]

    def to(self, device: torch.device | str) -> "TeacherRankings":
        return TeacherRankings(self.items_of_user.to(device),
                               None if self.users_of_item is None else self.users_of_item.to(device))


def _masked_rows(score_rows, start: int, stop: int, indptr: torch.Tensor, indices: torch.Tensor,
                 n_cols: int) -> torch.Tensor:
    """Scores of rows ``start:stop`` (float32), their observed (CSR) columns set to -inf."""
    device = indptr.device
    scores = score_rows(torch.arange(start, stop, device=device)).float()
    if tuple(scores.shape) != (stop - start, n_cols):
        raise ConfigError(f"the teacher's scores of {stop - start} rows x {n_cols} columns came as "
                          f"{list(scores.shape)}")
    if not all_finite(scores):  # topk would rank NaN first
        raise TrainingDiverged(f"the teacher's scores of rows {start}..{stop - 1} are NaN or infinite: "
                               "its rankings would be garbage (a diverged or corrupted teacher)")
    local_indptr, local_indices = csr_rows(indptr, indices, start, stop)
    seen_rows = torch.repeat_interleave(torch.arange(stop - start, device=device), local_indptr.diff())
    scores[seen_rows, local_indices] = -torch.inf
    return scores


def _padded(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return ids.masked_fill_(values == -torch.inf, -1)  # fewer than C unobserved candidates


def top_columns(score_rows, n_rows: int, n_cols: int, observed: tuple[torch.Tensor, torch.Tensor], top: int, *,
                desc: str = "", progress: bool | None = None,
                tables: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``[n_rows, top]`` best columns per row, best first, the ``observed``
    (CSR) columns of each row left out; ``score_rows(rows)`` gives ``[b, n_cols]``.
    ``tables``: ``(rows [n_rows, d], columns [n_cols, d])`` embeddings of a
    dot-product model, whose columns ``ops.dot_top_columns`` selects without
    blocks of scores (ties by column); ``score_rows`` is then not called.
    ``progress``: a bar (None: as ``rankdistill.progress.show_progress`` says)."""
    indptr, indices = observed
    top = min(top, n_cols)
    first, last = distributed.row_shard(n_rows)  # this process's rows; all of them for one process
    out = torch.empty((last - first, top), dtype=torch.int64, device=indptr.device)
    for start, stop in bar(list(row_blocks(last - first, n_cols)), desc=desc, unit="block", on=progress):
        start, stop = first + start, first + stop
        if tables is not None:
            out[start - first:stop - first] = dot_top_columns(tables[0][start:stop], tables[1], top,
                                                              exclude=csr_rows(indptr, indices, start, stop))
            continue
        scores = _masked_rows(score_rows, start, stop, indptr, indices, n_cols)
        values, columns = scores.topk(top, dim=1)
        out[start - first:stop - first] = _padded(values, columns)
    return distributed.gather_rows(out, n_rows)


def _top_both_sides(score_all: Callable[[torch.Tensor], torch.Tensor], interactions: InteractionMatrix, top: int,
                    progress: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both lists from one pass over the score matrix: each block of users
    gives its rows' top items, and its columns are merged into a running
    top-C of users per item."""
    device = interactions.device
    indptr, indices = interactions.csr("user")
    n_users, n_items = interactions.n_users, interactions.n_items
    top_items, top_users = min(top, n_items), min(top, n_users)
    items_of_user = torch.empty((n_users, top_items), dtype=torch.int64, device=device)
    best_values = torch.full((n_items, top_users), -torch.inf, device=device)
    best_users = torch.full((n_items, top_users), -1, dtype=torch.int64, device=device)
    for start, stop in bar(list(row_blocks(n_users, n_items)), desc="teacher: top items and users", unit="block",
                           on=progress):
        scores = _masked_rows(score_all, start, stop, indptr, indices, n_items)
        values, columns = scores.topk(top_items, dim=1)
        items_of_user[start:stop] = _padded(values, columns)
        # columns 0..C-1 of the merge are the running best, C.. the block's users
        best_values, where = torch.cat([best_values, scores.T], dim=1).topk(top_users, dim=1)
        best_users = torch.where(where < top_users, best_users.gather(1, where.clamp(max=top_users - 1)),
                                 where + (start - top_users))
    return items_of_user, _padded(best_values, best_users)


@torch.no_grad()
def compute_rankings(teacher: Any, interactions: Any, top: int = DEFAULT_TOP, *,
                     progress: bool | None = None) -> TeacherRankings:
    """The teacher's top-``top`` lists on both sides, each row's training
    interactions left out (on the interactions' device).

    Args:
        teacher: a scorer with ``score_all(users) -> [B, n_items]`` (and, if it
            has one, ``score_all_users(items) -> [B, n_users]``), such as any
            rankdistill model or ``EmbeddingScorer``; or just a callable
            ``score_all(users)``. Run in evaluation mode, without gradients.
        interactions: an ``InteractionMatrix``, ``Interactions`` or ``Split``
            (its training part).
        top: C, the length of the lists.
        progress: a progress bar (True), none (False), or as
            ``rankdistill.progress.show_progress`` says (None: off outside
            it, and outside the trainer and the command line).

    A teacher that runs a network per pair (NeuMF), or that offers only
    ``score_all``, is scored once: each block of users that fits
    ``SCORE_ALL_BUDGET`` gives its top items and is merged into a running
    top-C of users per item (one CPU thread, CiteULike, blocks of 988 users:
    130 s to score a NeuMF block, 1.5 s to merge it). A dot-product teacher
    (BPR: 0.3 s a block) is cheaper to score twice, once per side, and so is
    any teacher whose blocks are shorter than C rows (huge catalogues), where
    each merge would re-rank mostly running candidates.
    """
    if top < 1:
        raise ConfigError(f"the teacher's list length C must be >= 1, got {top}")
    device = getattr(teacher, "device", None)
    interactions = as_interactions(interactions, device if isinstance(device, torch.device) else None)
    score_all = getattr(teacher, "score_all", teacher)
    if not callable(score_all):
        raise ConfigError(f"the teacher must have score_all(users) or be such a callable, got {type(teacher).__name__}")
    check_fits("teacher", teacher, interactions)
    score_all_users = getattr(teacher, "score_all_users", None)
    block = block_rows(interactions.n_items)
    was_training = getattr(teacher, "training", None)
    if was_training is not None:
        teacher.eval()
    try:
        # a dot-product teacher's lists straight from its embeddings (ops.dot_top_columns),
        # taken in evaluation mode like its scores (towers with dropout)
        tables = finite_dot_product_tables(teacher)
        # Across processes the item side is ranked by rows like the user side:
        # running lists merged from several processes would order ties differently.
        one_pass = (score_all_users is None or getattr(teacher, "scores_each_pair", False)) and \
            distributed.world_size() == 1 and tables is None
        if one_pass and (block >= min(top, interactions.n_users) or score_all_users is None):
            items_of_user, users_of_item = _top_both_sides(score_all, interactions, top, progress)
        else:
            items_of_user = top_columns(score_all, interactions.n_users, interactions.n_items,
                                        interactions.csr("user"), top, desc="teacher: top items per user",
                                        progress=progress, tables=tables)
            users_of_item = top_columns(score_all_users, interactions.n_items, interactions.n_users,
                                        interactions.csr("item"), top, desc="teacher: top users per item",
                                        progress=progress, tables=None if tables is None else tables[::-1])
    finally:
        if was_training is not None:
            teacher.train(was_training)
    return TeacherRankings(items_of_user, users_of_item)


def _check_cached(rankings: TeacherRankings, split: Split, top: int, cache: Path) -> None:
    """The lists a cache holds must be what ``compute_rankings`` makes for this split."""
    sides = (("items_of_user", rankings.items_of_user, split.n_users, split.n_items),
             ("users_of_item", rankings.users_of_item, split.n_items, split.n_users))
    for name, lists, n_rows, n_cols in sides:
        shape = (n_rows, min(top, n_cols))
        if not isinstance(lists, torch.Tensor) or lists.dtype != torch.int64 or tuple(lists.shape) != shape:
            found = f"{lists.dtype} {tuple(lists.shape)}" if isinstance(lists, torch.Tensor) else type(lists).__name__
            raise DataError(f"{cache}: {name} should be int64 of shape {shape}, found {found}; delete it to recompute")
        if lists.numel() and (int(lists.min()) < -1 or int(lists.max()) >= n_cols):
            raise DataError(f"{cache}: {name} holds ids outside [-1, {n_cols}); delete it to recompute")


def load_or_compute_rankings(teacher_path: str | Path, teacher: Any, split: Split,
                             top: int = DEFAULT_TOP, *, progress: bool | None = None) -> TeacherRankings:
    """The cached lists in ``TEACHER_DIR/rankings-cTOP.pt`` if they were made
    from this very checkpoint and split, else computed and cached there."""
    teacher_path = Path(teacher_path)
    cache = teacher_path.with_name(f"{teacher_path.stem}-rankings-c{top}.pt")
    key = {"teacher_sha256": file_sha256(teacher_path), **split.identity(), "top": top}
    if cache.exists():
        try:
            payload = torch_load(cache, "rankings cache", map_location=teacher.device)
        except DataError as exc:
            raise DataError(f"{exc}; delete it to recompute") from None
        if payload.get("kind") == _CACHE_KIND and payload.get("key") == key:
            try:
                rankings = TeacherRankings(payload.get("items_of_user"), payload.get("users_of_item"))
            except ConfigError as exc:
                raise DataError(f"{cache}: {exc}; delete it to recompute") from None
            _check_cached(rankings, split, top, cache)
            log.info("teacher rankings: loaded %s", cache)
            return rankings
        log.info("teacher rankings: %s is for another teacher or split, recomputing", cache)
    rankings = compute_rankings(teacher, split, top, progress=progress)
    torch_save(cache, {"kind": _CACHE_KIND, "key": key, "items_of_user": rankings.items_of_user.cpu(),
                       "users_of_item": rankings.users_of_item.cpu()})
    log.info("teacher rankings: top-%d lists cached in %s", top, cache)
    return rankings
