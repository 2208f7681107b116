"""The papers' evaluation: rank each user's held-out item, then top-N metrics.

Protocols
- ``sampled`` (DE-RRD / DCD tables): the held-out item is ranked among the
  user's fixed candidates (499 sampled unobserved items, see ``split``).
- ``full``: it is ranked among every item the user did not interact with: the
  user's training items and the other held-out item (the validation item when
  testing, the test item when validating) are excluded; computed exactly with
  ``rankdistill.ops.rank_positions``.

Tie rule (both protocols, the same as ``rank_positions``): the rank (0-based)
of target t is the number of items scoring strictly higher plus the number of
items with an equal score and a smaller item id. The sampled rank is therefore
exactly the full rank restricted to the candidates; a model that scores
everything equal ranks the target by its id, neither optimistically nor
pessimistically on average.

Metrics for a rank r (0-based) and a cutoff N: ``H@N = [r < N]``,
``M@N = 1/(r+1)`` if r < N else 0, ``N@N = 1/log2(r+2)`` if r < N else 0 (one
relevant item, so the ideal DCG is 1). Values are kept per user so that two
methods can be compared with a paired test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .blocks import csr_rows, non_finite_rows, row_blocks
from .errors import ConfigError, TrainingDiverged
from .io import atomic_open
from .models import Recommender
from .ops import dot_rank_positions, rank_positions
from .progress import bar
from .scoring import finite_dot_product_tables
from .split import PARTS, Split

__all__ = ["DEFAULT_CUTOFFS", "PROTOCOLS", "EvalResult", "Evaluator", "metric_names", "metrics_from_ranks",
           "sampled_ranks"]

DEFAULT_CUTOFFS = (5, 10, 20)
PROTOCOLS = ("sampled", "full")
_METRICS = ("H", "M", "N")


def metric_names(cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS) -> list[str]:
    """``["H@5", "M@5", "N@5", "H@10", ...]``: the papers' column order."""
    return [f"{metric}@{n}" for n in cutoffs for metric in _METRICS]


def _check_cutoffs(cutoffs) -> tuple[int, ...]:
    cutoffs = tuple(int(n) for n in cutoffs)
    if not cutoffs or min(cutoffs) < 1:
        raise ConfigError(f"metric cutoffs must be positive integers, got {cutoffs}")
    return cutoffs


def metrics_from_ranks(ranks: np.ndarray, cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS) -> dict[str, np.ndarray]:
    """Per-user metric values (float64 arrays) from 0-based ranks."""
    ranks = np.asarray(ranks, dtype=np.int64)
    values = {}
    for n in _check_cutoffs(cutoffs):
        hit = ranks < n
        values[f"H@{n}"] = hit.astype(np.float64)
        values[f"M@{n}"] = np.where(hit, 1.0 / (ranks + 1.0), 0.0)
        values[f"N@{n}"] = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    return {name: values[name] for name in metric_names(cutoffs)}


def sampled_ranks(target_scores: torch.Tensor, candidate_scores: torch.Tensor,
                  targets: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Rank ``[B]`` of each target among its candidates ``[B, C]`` (tie rule in
    the module docstring)."""
    target_scores = target_scores[:, None]
    before = (candidate_scores > target_scores) | ((candidate_scores == target_scores) & (candidates < targets[:, None]))
    return before.sum(dim=1)


@dataclass
class EvalResult:
    """Per-user ranks and metric values of one evaluation."""

    part: str
    protocol: str
    users: np.ndarray
    ranks: np.ndarray
    per_user: dict[str, np.ndarray] = field(repr=False)

    def means(self) -> dict[str, float]:
        return {name: float(values.mean()) for name, values in self.per_user.items()}

    def save_per_user(self, path: str | Path) -> None:
        """Users, ranks and per-user metric values as ``.npz`` (written atomically;
        ``@`` is spelled ``_at_`` in the keys); ``load_per_user`` reads the metrics back."""
        with atomic_open(path, "wb") as f:
            np.savez(f, users=self.users, ranks=self.ranks,
                     **{name.replace("@", "_at_"): values for name, values in self.per_user.items()})


def load_per_user(path: str | Path) -> dict[str, np.ndarray]:
    """The per-user metric values of a file written by ``EvalResult.save_per_user``."""
    with np.load(path) as f:
        return {key.replace("_at_", "@"): f[key] for key in f.files if "_at_" in key}


class Evaluator:
    """Evaluates models on one split; the protocol's index arrays are built once
    and reused every epoch."""

    def __init__(self, split: Split, *, protocol: str = "sampled", cutoffs=DEFAULT_CUTOFFS,
                 batch_size: int = 256) -> None:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if batch_size < 1:
            raise ConfigError(f"evaluation batch size must be >= 1, got {batch_size}")
        self.split = split
        self.protocol = protocol
        self.cutoffs = _check_cutoffs(cutoffs)
        self.batch_size = int(batch_size)
        self._exclusions: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _excluded(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """CSR over the evaluated users of the items not ranked in ``part``:
        their training items and the other part's held-out item."""
        if part not in self._exclusions:
            split = self.split
            row_of_user = np.full(split.n_users, -1, dtype=np.int64)
            row_of_user[split.eval_users] = np.arange(len(split.eval_users))
            rows = np.concatenate([row_of_user[split.train.users], np.arange(len(split.eval_users))])
            items = np.concatenate([split.train.items, split.other_held_out(part)])
            keep = rows >= 0
            rows, items = rows[keep], items[keep]
            order = np.lexsort((items, rows))
            indptr = np.zeros(len(split.eval_users) + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows, minlength=len(split.eval_users)), out=indptr[1:])
            self._exclusions[part] = (indptr, items[order])
        return self._exclusions[part]

    @torch.no_grad()
    def evaluate(self, model: Recommender, part: str = "valid") -> EvalResult:
        if part not in PARTS:
            raise ConfigError(f"part must be one of {PARTS}, got {part!r}")
        split = self.split
        if (model.n_users, model.n_items) != (split.n_users, split.n_items):
            raise ConfigError(
                f"the model is for {model.n_users} users x {model.n_items} items, "
                f"the split has {split.n_users} x {split.n_items}"
            )
        device = model.device
        was_training = model.training
        model.eval()
        first, last = distributed.row_shard(len(split.eval_users))  # this process's users (all, for one)
        ranks, non_finite = [], []
        try:
            # a dot-product model is ranked from its embeddings, without blocks of scores
            tables = finite_dot_product_tables(model) if self.protocol == "full" else None
            blocks = list(row_blocks(last - first, 1, budget=self.batch_size))
            for start, stop in bar(blocks, desc=f"evaluation: {part}, {self.protocol} protocol", unit="batch"):
                batch_ranks, batch_non_finite = self._batch_ranks(model, part, first + start, first + stop, device,
                                                                  tables)
                ranks.append(batch_ranks)
                non_finite.append(batch_non_finite)
        finally:
            model.train(was_training)
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        ranks = distributed.gather_rows(torch.cat(ranks) if ranks else empty, len(split.eval_users))
        # Users whose scores are not all finite: a NaN compares false with
        # everything, so its held-out item would rank first and score a hit.
        non_finite = int(distributed.gather_rows(torch.cat(non_finite) if non_finite else empty,
                                                 len(split.eval_users)).sum())
        if non_finite:
            raise TrainingDiverged(f"the model's scores are NaN or infinite for {non_finite} of "
                                   f"{len(split.eval_users)} evaluated users: it cannot be evaluated "
                                   "(its training diverged, or its weights are corrupted)")
        ranks = ranks.cpu().numpy()
        return EvalResult(part, self.protocol, split.eval_users, ranks, metrics_from_ranks(ranks, self.cutoffs))

    def _batch_ranks(self, model: Recommender, part: str, start: int, stop: int, device: torch.device,
                     tables: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Ranks ``[B]`` of the held-out items of evaluated users ``start:stop``,
        and which of them have a non-finite score (int64 0/1 ``[B]``).
        ``tables``: a dot-product model's (finite) embeddings, for the full
        protocol (``scoring.finite_dot_product_tables``)."""
        users = torch.as_tensor(self.split.eval_users[start:stop], device=device)
        targets = torch.as_tensor(self.split.targets(part)[start:stop], device=device)
        if self.protocol == "sampled":
            candidates = torch.as_tensor(self.split.candidates(part)[start:stop], device=device)
            scores = model.score_items(users, torch.cat([targets[:, None], candidates], dim=1))
            non_finite = non_finite_rows(scores)
            return sampled_ranks(scores[:, 0], scores[:, 1:], targets, candidates), non_finite
        batch_indptr, batch_indices = (torch.as_tensor(a, device=device)
                                       for a in csr_rows(*self._excluded(part), start, stop))
        if tables is not None:
            ranks = dot_rank_positions(tables[0][users], tables[1], targets[:, None],
                                       exclude=(batch_indptr, batch_indices))
            return ranks[:, 0], torch.zeros_like(targets)
        scores = model.score_all(users)
        non_finite = non_finite_rows(scores)
        if bool(non_finite.any()):  # rank_positions would refuse NaN: report it in the evaluation's words
            return torch.zeros_like(targets), non_finite
        return rank_positions(scores, targets[:, None], exclude=(batch_indptr, batch_indices))[:, 0], non_finite
