"""The teacher's rankings that every distillation method reads: its top-C
items per user and its top-C users per item, training interactions excluded.

They are computed once per teacher, in blocks of rows whose score matrix fits
``SCORE_ALL_BUDGET``, and cached next to the teacher's checkpoint (keyed by the
checkpoint's content, the split and C), so that every method and seed of a
comparison reads the same lists.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError
from ..io import torch_save
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


def top_columns(score_rows, n_rows: int, n_cols: int, observed: tuple[np.ndarray, np.ndarray], top: int,
                device: torch.device, *, desc: str = "", progress: bool = False) -> torch.Tensor:
    """``[n_rows, top]`` best columns per row, best first, the ``observed``
    (CSR) columns of each row left out; ``score_rows(rows)`` gives ``[b, n_cols]``."""
    indptr, indices = (torch.as_tensor(a, device=device) for a in observed)
    top = min(top, n_cols)
    out = torch.empty((n_rows, top), dtype=torch.int64, device=device)
    block = max(1, SCORE_ALL_BUDGET // n_cols)
    starts = range(0, n_rows, block)
    for start in tqdm(starts, desc=desc, unit="block", leave=False, disable=not progress):
        stop = min(start + block, n_rows)
        scores = score_rows(torch.arange(start, stop, device=device)).float()
        seen_rows = torch.repeat_interleave(torch.arange(stop - start, device=device), indptr[start + 1:stop + 1]
                                            - indptr[start:stop])
        scores[seen_rows, indices[indptr[start]:indptr[stop]]] = -torch.inf
        values, columns = scores.topk(top, dim=1)
        out[start:stop] = columns.masked_fill_(values == -torch.inf, -1)
    return out


@torch.no_grad()
def compute_rankings(teacher: Recommender, split: Split, top: int = DEFAULT_TOP, *,
                     progress: bool = False) -> TeacherRankings:
    """The teacher's top-``top`` lists on both sides (on the teacher's device)."""
    if top < 1:
        raise ConfigError(f"the teacher's list length C must be >= 1, got {top}")
    if (teacher.n_users, teacher.n_items) != (split.n_users, split.n_items):
        raise ConfigError(f"the teacher is for {teacher.n_users} users x {teacher.n_items} items, "
                          f"the split has {split.n_users} x {split.n_items}")
    was_training = teacher.training
    teacher.eval()
    try:
        train, device = split.train, teacher.device
        items_of_user = top_columns(teacher.score_all, split.n_users, split.n_items, train.to_csr("user"), top,
                                    device, desc="teacher: top items per user", progress=progress)
        users_of_item = top_columns(teacher.score_all_users, split.n_items, split.n_users, train.to_csr("item"), top,
                                    device, desc="teacher: top users per item", progress=progress)
    finally:
        teacher.train(was_training)
    return TeacherRankings(items_of_user, users_of_item)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_or_compute_rankings(teacher_path: str | Path, teacher: Recommender, split: Split,
                             top: int = DEFAULT_TOP, *, progress: bool = False) -> TeacherRankings:
    """The cached lists in ``TEACHER_DIR/rankings-cTOP.pt`` if they were made
    from this very checkpoint and split, else computed and cached there."""
    teacher_path = Path(teacher_path)
    cache = teacher_path.with_name(f"{teacher_path.stem}-rankings-c{top}.pt")
    key = {"teacher_sha256": _file_digest(teacher_path), "data_fingerprint": split.data_fingerprint,
           "split_seed": split.seed, "top": top}
    if cache.exists():
        try:
            payload = torch.load(cache, map_location=teacher.device, weights_only=True)
        except Exception:  # torch raises many types for an unreadable file
            raise DataError(f"{cache}: not a readable rankings cache; delete it to recompute") from None
        if payload.get("kind") == _CACHE_KIND and payload.get("key") == key:
            log.info("teacher rankings: loaded %s", cache)
            return TeacherRankings(payload["items_of_user"], payload["users_of_item"])
        log.info("teacher rankings: %s is for another teacher or split, recomputing", cache)
    rankings = compute_rankings(teacher, split, top, progress=progress)
    torch_save(cache, {"kind": _CACHE_KIND, "key": key, "items_of_user": rankings.items_of_user.cpu(),
                       "users_of_item": rankings.users_of_item.cpu()})
    log.info("teacher rankings: top-%d lists cached in %s", top, cache)
    return rankings
