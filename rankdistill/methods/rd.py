"""RD (Tang & Wang, KDD 2018): ranking distillation. The teacher's top-K
unobserved items of a user are extra, weighted positives of the student:

    L_RD(u) = -sum_{r<K} w_r log sigmoid(s_u(pi_r)),     w_r = w^a_r * w^b_r

*Position importance* ``w^a_r = exp(-(r+1)/lambda) / sum_j exp(-(j+1)/lambda)``
(normalised to sum 1 over the K positions, as in the authors' code).
*Ranking discrepancy* ``w^b_r = tanh(max(mu (R_S - r), 0))``, with R_S the
student's 0-based rank of the item among the user's unobserved items and r its
teacher rank: in [0, 1), not normalised. During the first ``warmup`` epochs
``w = w^a``; afterwards ``w = w^a * w^b`` (no renormalisation, as the authors'
code: the term fades as the student catches up; ``renormalize=True`` rescales
each row's weights to sum 1 instead, a row without discrepancy staying 0).

R_S is exact (``rank_estimate="exact"``): the student's full-catalogue ranks
(``Side.catalogue_ranks``) of the K items, recomputed every ``rank_every``
epochs. ``rank_estimate="sampled"`` estimates it in every batch as the
original did: ``floor((N_u - 1) * #{sampled j: s_j > s_i} / n)`` from ``n``
items drawn uniformly among the user's N_u unobserved items.

The term is averaged over the batch's users and weighted by ``lambda_rd``
(the original's ``teach_alpha``, 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..reference import discrepancy_weights
from ..scoring import Scorer
from ..unobserved import sample_unobserved
from .base import (AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Batch, Distillation, MethodOptions, Side, evaluation_mode,
                   option)

__all__ = ["RD", "RDOptions", "position_weights", "rd_weights", "sampled_ranks"]

RANK_ESTIMATES = ("exact", "sampled")


@dataclass
class RDOptions(MethodOptions):
    """K=10, lambda (``temperature``)=1, mu=0.1, 10 warm-up epochs, 100 rank
    samples: the authors' defaults."""

    lambda_rd: float = option(1.0, NON_NEGATIVE)
    positives: int = option(10, AT_LEAST_ONE)
    temperature: float = option(1.0, POSITIVE)
    mu: float = option(0.1, POSITIVE)
    warmup: int = option(10, NON_NEGATIVE)
    rank_estimate: str = option("exact", RANK_ESTIMATES)
    rank_every: int = option(5, AT_LEAST_ONE)
    rank_samples: int = option(100, AT_LEAST_ONE)
    renormalize: bool = False


def position_weights(k: int, temperature: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[k]`` weights ``∝ exp(-r/lambda)``, r = 1..k, summing to 1."""
    weights = torch.exp(-torch.arange(1, k + 1, dtype=torch.float64, device=device) / temperature)
    return (weights / weights.sum()).float()


def rd_weights(student_rank: torch.Tensor | None, position: torch.Tensor, *, mu: float,
               renormalize: bool = False) -> torch.Tensor:
    """``[B, K]`` RD weights from the position weights ``[K]`` and the
    student's ranks ``[B, K]`` of the teacher's top-K (None: warm-up, ``w^a``)."""
    if student_rank is None:
        return position
    teacher_rank = torch.arange(student_rank.shape[1], device=student_rank.device)
    weights = position * discrepancy_weights(student_rank, teacher_rank, mu=mu, direction="under").float()
    if renormalize:
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    return weights


def sampled_ranks(scores: torch.Tensor, sample_scores: torch.Tensor, n_unobserved: torch.Tensor) -> torch.Tensor:
    """The original's estimate of each of ``scores`` ``[B, K]``'s rank from
    ``sample_scores`` ``[B, n]`` of uniformly drawn unobserved items."""
    above = (sample_scores[:, None, :] > scores[:, :, None]).sum(dim=2).float()
    return torch.floor((n_unobserved[:, None] - 1).float() * above / sample_scores.shape[1])


class RD(Distillation):
    """``L = L_base + lambda_rd L_RD`` on the user side."""

    name = "rd"
    Options = RDOptions

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.student_rank: torch.Tensor | None = None  # [n_users, K], exact mode
        self.position = position_weights(self.options.positives, self.options.temperature, self.context.device)
        self.epoch = 0

    def resample(self, epoch: int) -> dict[str, torch.Tensor]:
        o, self.epoch = self.options, epoch
        since = epoch - o.warmup
        if o.rank_estimate == "exact" and since >= 0 and since % o.rank_every == 0:
            side = self.side("user")
            self.student_rank = side.catalogue_ranks(self.student, self._top(side))
        return {}

    def _top(self, side: Side) -> torch.Tensor:
        return side.top[:, :self.options.positives]

    def losses(self, model: Scorer, batch: Batch) -> dict[str, torch.Tensor]:
        o, side = self.options, self.side("user")
        rows = self.batch_rows(side, batch, share=False)
        sampled = self.epoch >= o.warmup and o.rank_estimate == "sampled"
        # Drawn for all the batch's rows, then this process's share of both:
        # data-parallel processes draw what one process draws.
        if sampled:
            samples = self.schedule.share(
                "user", sample_unobserved(side.observed, rows, o.rank_samples, generator=self.context.generator))
        rows = self.schedule.share("user", rows)
        cols = self._top(side)[rows]
        scores = side.scores(model, rows, cols)
        ranks = None  # warm-up
        if sampled:
            with evaluation_mode(model):
                sample_scores = side.scores(model, rows, samples)
                ranks = sampled_ranks(scores.detach(), sample_scores, side.n_cols - side.observed.counts[rows])
        elif self.epoch >= o.warmup:
            if self.student_rank is None:
                raise ConfigError(f"{self.name}: no student ranks yet: they are computed at epochs {o.warmup}, "
                                  f"{o.warmup + o.rank_every}, ...; refresh from epoch 0 or load the method's "
                                  "state_dict")
            ranks = self.student_rank[rows]
        weights = rd_weights(ranks, self.position[: cols.shape[1]], mu=o.mu, renormalize=o.renormalize)
        weights = weights.masked_fill(cols < 0, 0.0)  # rows with fewer than K unobserved items
        per_row = -(weights * F.logsigmoid(scores)).sum(dim=1)
        return {"rd": o.lambda_rd * self.schedule.mean("user", per_row)}

    # Exact ranks live for rank_every epochs: a resumed run needs them.
    def state_dict(self) -> dict[str, Any]:
        return {"student_rank": self.student_rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student_rank = state["student_rank"]
