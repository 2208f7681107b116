"""DCD (Lee & Kim, CIKM 2021): RRD plus dual correction of the student's
ranking errors, on the user side (UCD) and the item side (ICD).

Every ``correct_every`` epochs, for every row of a corrected side: the
student's rank R_S of each of the teacher's top-C columns (over the whole
catalogue, observed columns excluded; or, as in the authors' code, within the
top-C only), the teacher's rank R_T (its position in the list), and

    under_c = tanh(max(mu (R_S - R_T), 0))     the student ranks c too low
    over_c  = tanh(max(mu (R_T - R_S), 0))     the student ranks c too high

M_l under-estimated and M_h over-estimated columns are drawn by these weights
(``discrepancy_sample``), or the largest ones taken (``sampling=False``, the
ablation *w/o sampling*). The correction loss asks the student to rank the
under-estimated columns, in the teacher's order, above the over-estimated ones
(relaxed ListMLE). ``L = L_base + lambda_rrd L_RRD + lambda_ucd L_UCD +
lambda_icd L_ICD``; the item-side RRD (``lambda_ir``) serves *w/o correction*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import distributed
from ..errors import ConfigError
from ..ops import discrepancy_sample
from ..reference import discrepancy_weights
from .base import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Side, option
from .rrd import RRD, RRDOptions

__all__ = ["DCD", "DCDOptions", "largest_discrepancies", "select_discrepancies"]

RANK_SCOPES = ("catalogue", "candidates")


@dataclass
class DCDOptions(RRDOptions):
    lambda_ucd: float = option(1e-3, NON_NEGATIVE)
    lambda_icd: float = option(1e-3, NON_NEGATIVE)
    mu: float = option(1e-3, POSITIVE)
    m_under: int = option(40, AT_LEAST_ONE)
    m_over: int = option(40, NON_NEGATIVE)  # 0: the under-estimated items are ranked with no tail below them
    correct_every: int = option(5, AT_LEAST_ONE)
    rank_scope: str = option("catalogue", RANK_SCOPES)
    sampling: bool = True


def largest_discrepancies(student_rank: torch.Tensor, teacher_rank: torch.Tensor, k: int, *, mu: float,
                          direction: str) -> torch.Tensor:
    """Per row, the (at most) ``k`` positions with the largest positive
    discrepancy weight, ascending (the teacher's order), -1 padded."""
    weights = discrepancy_weights(student_rank, teacher_rank, mu=mu, direction=direction)
    k = min(k, weights.shape[1])
    values, positions = weights.topk(k, dim=1)
    positions = positions.masked_fill_(values <= 0, weights.shape[1])  # padding sorts last
    positions = positions.sort(dim=1).values
    return positions.masked_fill_(positions == weights.shape[1], -1)


def select_discrepancies(side: Side, student_rank: torch.Tensor, k: int, *, mu: float, direction: str,
                         sampling: bool, generator: torch.Generator | None, first_row: int = 0) -> torch.Tensor:
    """``[R, k]`` columns of the teacher's top-C with a positive
    ``direction`` discrepancy, in the teacher's order, -1 padded, for the
    ``R`` rows ``first_row..`` of ``side`` whose ranks ``student_rank`` holds
    (``first_row``: as in ``discrepancy_sample``)."""
    rows = slice(first_row, first_row + student_rank.shape[0])
    top, teacher_rank = side.top[rows], side.teacher_rank[rows]
    if side.has_padding:  # padding gets R_S = R_T: no discrepancy, never selected
        student_rank = torch.where(side.padding[rows], teacher_rank, student_rank)
    if sampling:
        positions = discrepancy_sample(student_rank, teacher_rank, min(k, student_rank.shape[1]), mu=mu,
                                       direction=direction, generator=generator, sorted=True, first_row=first_row)
    else:
        positions = largest_discrepancies(student_rank, teacher_rank, k, mu=mu, direction=direction)
    return top.gather(1, positions.clamp_min(0)).masked_fill_(positions < 0, -1)


class DCD(RRD):
    name = "dcd"
    Options = DCDOptions

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.corrections: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._check_sides(side_name for _, side_name, _ in self._corrected_sides())

    @property
    def stopping_period(self) -> int:
        # validation H@5 swings by about 0.02 within a correction period (CiteULike)
        return self.options.correct_every if self._corrected_sides() else 1

    def _corrected_sides(self) -> list[tuple[str, str, float]]:
        o = self.options
        return [term for term in (("ucd", "user", o.lambda_ucd), ("icd", "item", o.lambda_icd)) if term[2] > 0]

    def resample(self, epoch: int) -> dict[str, torch.Tensor]:
        super().resample(epoch)
        o = self.options
        if epoch % o.correct_every:
            return {}
        # Under torchrun each process ranks and draws for its share of the
        # rows and the corrections are gathered; a row's draw depends on the
        # side's streams and the row alone (first_row), as with one process.
        catalogue_ranks = {}
        for _, side_name, _ in self._corrected_sides():
            side = self.side(side_name)
            first, last = distributed.row_shard(side.n_rows)
            if o.rank_scope == "catalogue":
                ranks = catalogue_ranks[side_name] = side.catalogue_ranks(self.student, side.top, gather=False)
            else:
                ranks = side.candidate_ranks(self.student, side.top[first:last], first_row=first)
            streams = self.context.row_streams(2)
            self.corrections[side_name] = tuple(
                distributed.gather_rows(select_discrepancies(side, ranks, m, mu=o.mu, direction=direction,
                                                             sampling=o.sampling, generator=stream, first_row=first),
                                        side.n_rows)
                for m, direction, stream in ((o.m_under, "under", streams[0]), (o.m_over, "over", streams[1])))
        return catalogue_ranks

    def listwise_terms(self) -> list[tuple[str, str, float, tuple[torch.Tensor, torch.Tensor]]]:
        missing = [side for _, side, _ in self._corrected_sides() if side not in self.corrections]
        if missing:
            raise ConfigError(f"{self.name}: no {' and '.join(missing)}-side correction yet: corrections are made "
                              f"at epochs 0, {self.options.correct_every}, ...; start refreshing at epoch 0 or "
                              "load the method's state_dict")
        return super().listwise_terms() + [(loss_name, side_name, weight, self.corrections[side_name])
                                           for loss_name, side_name, weight in self._corrected_sides()]

    # The corrections live for several epochs: a resumed run needs them.
    def state_dict(self) -> dict[str, Any]:
        return {"corrections": self.corrections}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.corrections = dict(state["corrections"])
