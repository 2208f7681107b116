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
from typing import Any, Iterator

import torch

from .. import distributed
from ..blocks import row_blocks
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
        # rows and the corrections are gathered. The ranks are drawn from and
        # dropped a block of rows at a time; every block draws with the
        # round's streams from their start, and a row's draw depends on those
        # and the row alone (first_row), as in one call over all rows.
        diagnosed = {}
        for _, side_name, _ in self._corrected_sides():
            side = self.side(side_name)
            keep = self.diagnosed_rows(side) if self.diagnoses(epoch) and o.rank_scope == "catalogue" else None
            streams = self.context.row_streams(2)
            starts = [stream.get_state() for stream in streams]
            drawn: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
            kept = []
            for start, stop, ranks in self._student_rank_blocks(side):
                for picks, m, direction, stream, state in zip(drawn, (o.m_under, o.m_over), ("under", "over"),
                                                               streams, starts):
                    stream.set_state(state)
                    picks.append(select_discrepancies(side, ranks, m, mu=o.mu, direction=direction,
                                                      sampling=o.sampling, generator=stream, first_row=start))
                if keep is not None:
                    kept.append(ranks[keep[(keep >= start) & (keep < stop)] - start])
            width = (min(o.m_under, side.top.shape[1]), min(o.m_over, side.top.shape[1]))
            self.corrections[side_name] = tuple(
                distributed.gather_rows(torch.cat(picks) if picks else side.top.new_empty((0, k)), side.n_rows)
                for picks, k in zip(drawn, width))
            if keep is not None:
                diagnosed[side_name] = torch.cat(kept) if kept else side.top.new_empty((0, side.top.shape[1]))
        return diagnosed

    def _student_rank_blocks(self, side: Side) -> Iterator[tuple[int, int, torch.Tensor]]:
        """The student's ranks of the teacher's top-C (``rank_scope``) for this
        process's share of ``side``'s rows, as ``(start, stop, ranks)`` blocks."""
        if self.options.rank_scope == "catalogue":
            yield from side.catalogue_rank_blocks(self.student, side.top)
            return
        first, last = distributed.row_shard(side.n_rows)
        for start, stop in row_blocks(last - first, side.top.shape[1]):
            start, stop = first + start, first + stop
            yield start, stop, side.candidate_ranks(self.student, side.top[start:stop], first_row=start)

    def listwise_terms(self) -> list[tuple[str, str, float, tuple[torch.Tensor, torch.Tensor]]]:
        missing = [side for _, side, _ in self._corrected_sides() if side not in self.corrections]
        if missing:
            raise ConfigError(f"{self.name}: no {' and '.join(missing)}-side correction yet: corrections are made "
                              f"at epochs 0, {self.options.correct_every}, ...; start refreshing at epoch 0 or "
                              "load the method's state_dict")
        return super().listwise_terms() + [(loss_name, side_name, weight, self.corrections[side_name])
                                           for loss_name, side_name, weight in self._corrected_sides()]

    # The corrections live for several epochs: a resumed run needs them. A
    # copy of the dict: the next correction replaces its entries, and a state
    # kept in memory must stay the one it was.
    def state_dict(self) -> dict[str, Any]:
        return {"corrections": dict(self.corrections)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.corrections = dict(state["corrections"])
