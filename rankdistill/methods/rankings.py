"""The teacher's rankings that every distillation method reads: its top-C
items per user and its top-C users per item, training interactions excluded.

They are computed once per teacher, in blocks of rows whose score matrix fits
``SCORE_ALL_BUDGET``, and cached next to the teacher's checkpoint (keyed by the
checkpoint's content, the split and C), so that every method and seed of a
comparison reads the same lists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError, TrainingDiverged
from ..io import file_sha256, torch_load, torch_save
from ..models import Recommender
from ..models.base import SCORE_ALL_BUDGET
from ..split import Split

__all__ = ["TeacherRankings", "compute_rankings", "load_or_compute_rankings", "top_columns"]

log = logging.getLogger("rankdistill")

DEFAULT_TOP = 500
_CACHE_KIND = "rankdistill-teacher-rankings"


@dataclass
class TeacherRankings:
    """``items_of_user[u]``: the teacher's best C unobserved items for user u,
    best first; ``users_of_item[i]``: its best C users (who have not
    interacted with i) for item i. Both int64, padded with -1 where a row has
    fewer than C candidates."""

    items_of_user: torch.Tensor  # [n_users, C]
    users_of_item: torch.Tensor  # [n_items, C]

    @property
    def top(self) -> int:
        return self.items_of_user.shape[1]

    def to(self, device: torch.device | str) -> "TeacherRankings":
        return TeacherRankings(self.items_of_user.to(device), self.users_of_item.to(device))


def _masked_rows(score_rows, start: int, stop: int, indptr: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Scores of rows ``start:stop`` (float32), their observed (CSR) columns set to -inf."""
    device = indptr.device
    scores = score_rows(torch.arange(start, stop, device=device)).float()
    if not bool(torch.isfinite(scores).all()):  # topk would rank NaN first
        raise TrainingDiverged(f"the teacher's scores of rows {start}..{stop - 1} are NaN or infinite: "
                               "its rankings would be garbage (a diverged or corrupted teacher)")
    seen_rows = torch.repeat_interleave(torch.arange(stop - start, device=device),
                                        indptr[start + 1:stop + 1] - indptr[start:stop])
    scores[seen_rows, indices[indptr[start]:indptr[stop]]] = -torch.inf
    return scores


def _padded(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return ids.masked_fill_(values == -torch.inf, -1)  # fewer than C unobserved candidates


def top_columns(score_rows, n_rows: int, n_cols: int, observed: tuple[np.ndarray, np.ndarray], top: int,
                device: torch.device, *, desc: str = "", progress: bool = False) -> torch.Tensor:
    """``[n_rows, top]`` best columns per row, best first, the ``observed``
    (CSR) columns of each row left out; ``score_rows(rows)`` gives ``[b, n_cols]``."""
    indptr, indices = (torch.as_tensor(a, device=device) for a in observed)
    top = min(top, n_cols)
    out = torch.empty((n_rows, top), dtype=torch.int64, device=device)
    block = max(1, SCORE_ALL_BUDGET // n_cols)
    for start in tqdm(range(0, n_rows, block), desc=desc, unit="block", leave=False, disable=not progress):
        stop = min(start + block, n_rows)
        values, columns = _masked_rows(score_rows, start, stop, indptr, indices).topk(top, dim=1)
        out[start:stop] = _padded(values, columns)
    return out


def _top_both_sides(teacher: Recommender, split: Split, top: int, block: int,
                    progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both lists from one pass over the score matrix: each block of users
    gives its rows' top items, and its columns are merged into a running
    top-C of users per item."""
    device = teacher.device
    indptr, indices = (torch.as_tensor(a, device=device) for a in split.train.to_csr("user"))
    n_users, n_items = split.n_users, split.n_items
    top_items, top_users = min(top, n_items), min(top, n_users)
    items_of_user = torch.empty((n_users, top_items), dtype=torch.int64, device=device)
    best_values = torch.full((n_items, top_users), -torch.inf, device=device)
    best_users = torch.full((n_items, top_users), -1, dtype=torch.int64, device=device)
    for start in tqdm(range(0, n_users, block), desc="teacher: top items and users", unit="block",
                      leave=False, disable=not progress):
        stop = min(start + block, n_users)
        scores = _masked_rows(teacher.score_all, start, stop, indptr, indices)
        values, columns = scores.topk(top_items, dim=1)
        items_of_user[start:stop] = _padded(values, columns)
        # columns 0..C-1 of the merge are the running best, C.. the block's users
        best_values, where = torch.cat([best_values, scores.T], dim=1).topk(top_users, dim=1)
        best_users = torch.where(where < top_users, best_users.gather(1, where.clamp(max=top_users - 1)),
                                 where + (start - top_users))
    return items_of_user, _padded(best_values, best_users)


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


@torch.no_grad()
def compute_rankings(teacher: Recommender, split: Split, top: int = DEFAULT_TOP, *,
                     progress: bool = False) -> TeacherRankings:
    """The teacher's top-``top`` lists on both sides (on the teacher's device).

    A teacher that runs a network per pair (NeuMF) is scored once: each block
    of users that fits ``SCORE_ALL_BUDGET`` gives its top items and is merged
    into a running top-C of users per item (one CPU thread, CiteULike, blocks
    of 988 users: 130 s to score a block, 1.5 s to merge it). A dot-product
    teacher (BPR: 0.3 s a block) is cheaper to score twice, once per side, and
    so is any teacher whose blocks are shorter than C rows (huge catalogues),
    where each merge would re-rank mostly running candidates.
    """
    if top < 1:
        raise ConfigError(f"the teacher's list length C must be >= 1, got {top}")
    if (teacher.n_users, teacher.n_items) != (split.n_users, split.n_items):
        raise ConfigError(f"the teacher is for {teacher.n_users} users x {teacher.n_items} items, "
                          f"the split has {split.n_users} x {split.n_items}")
    was_training = teacher.training
    teacher.eval()
    try:
        block = max(1, SCORE_ALL_BUDGET // split.n_items)
        if teacher.scores_each_pair and block >= min(top, split.n_users):
            items_of_user, users_of_item = _top_both_sides(teacher, split, top, block, progress)
        else:
            train, device = split.train, teacher.device
            items_of_user = top_columns(teacher.score_all, split.n_users, split.n_items, train.to_csr("user"), top,
                                        device, desc="teacher: top items per user", progress=progress)
            users_of_item = top_columns(teacher.score_all_users, split.n_items, split.n_users,
                                        train.to_csr("item"), top, device, desc="teacher: top users per item",
                                        progress=progress)
    finally:
        teacher.train(was_training)
    return TeacherRankings(items_of_user, users_of_item)


def load_or_compute_rankings(teacher_path: str | Path, teacher: Recommender, split: Split,
                             top: int = DEFAULT_TOP, *, progress: bool = False) -> TeacherRankings:
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
            rankings = TeacherRankings(payload.get("items_of_user"), payload.get("users_of_item"))
            _check_cached(rankings, split, top, cache)
            log.info("teacher rankings: loaded %s", cache)
            return rankings
        log.info("teacher rankings: %s is for another teacher or split, recomputing", cache)
    rankings = compute_rankings(teacher, split, top, progress=progress)
    torch_save(cache, {"kind": _CACHE_KIND, "key": key, "items_of_user": rankings.items_of_user.cpu(),
                       "users_of_item": rankings.users_of_item.cpu()})
    log.info("teacher rankings: top-%d lists cached in %s", top, cache)
    return rankings
