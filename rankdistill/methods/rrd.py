"""RRD (Kang et al., CIKM 2020) and its item side, IR-RRD (Kang et al., Inf.
Sci. 2021): relaxed ranking distillation.

Every epoch, per row of a side (user or item): K *interesting* columns sampled
from the teacher's top-C with ``p_k ∝ exp(-k/T)`` (k = teacher rank, 0 = top)
and kept in the teacher's order, and L *uninteresting* columns drawn uniformly
from the columns ranked below the top-C (observed ones left out). The loss is
the relaxed ListMLE of the student's scores: the interesting list in order,
above the uninteresting set. Per batch it is averaged over the batch's rows
(the paper's 1/|B|); ``reduction="sum"`` follows the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch

from ..errors import ConfigError
from ..ops import weighted_sample
from ..scoring import Scorer
from ..unobserved import sample_unobserved
from .base import (AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, SIDES, Batch, Distillation, MethodOptions, Side,
                   listwise_losses, option)


__all__ = ["RRD", "RRDOptions", "sample_interesting", "sample_uninteresting"]

REDUCTIONS = ("mean", "sum")


def sample_interesting(side: Side, k: int, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """``[n_rows, k]`` columns from each row's top-C, ``p ∝ exp(-rank/T)``,
    without replacement, in the teacher's order (best first, -1 padding last)."""
    # every row's teacher ranks are the same row (a broadcast view): its weights, once, for every row
    weights = torch.exp(-side.teacher_rank[:1].float() / temperature).expand_as(side.top)
    if side.has_padding:
        weights = weights.masked_fill(side.padding, 0.0)
    positions = weighted_sample(weights, min(k, side.top.shape[1]), generator=generator, sorted=True)
    return side.top.gather(1, positions.clamp_min(0)).masked_fill_(positions < 0, -1)


def sample_uninteresting(side: Side, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """``[n_rows, k]`` distinct columns per row, uniform among the columns
    below the teacher's top-C that the row has not interacted with; a row
    with fewer such columns (a heavy user) has all of them, then -1."""
    rows = torch.arange(side.n_rows, device=side.device)
    return sample_unobserved(side.outside_top, rows, k, distinct=True, pad=True, generator=generator)


@dataclass
class RRDOptions(MethodOptions):
    """User side: K=L=40, T=10 (RRD); item side: K=L=20 (IR-RRD). A side
    whose lambda is 0 is off."""

    lambda_rrd: float = option(1e-3, NON_NEGATIVE)
    lambda_ir: float = option(0.0, NON_NEGATIVE)
    interesting: int = option(40, AT_LEAST_ONE)
    uninteresting: int = option(40, AT_LEAST_ONE)
    item_interesting: int = option(20, AT_LEAST_ONE)
    item_uninteresting: int = option(20, AT_LEAST_ONE)
    temperature: float = option(10.0, POSITIVE)
    reduction: str = option("mean", REDUCTIONS)


class RRD(Distillation):
    """``L = L_base + lambda_rrd L_RRD(users) + lambda_ir L_RRD(items)``."""

    name = "rrd"
    Options = RRDOptions

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lists: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._check_sides(term[1] for term in self._relaxed_terms())

    def _relaxed_terms(self) -> list[tuple[str, str, float, int, int]]:
        """(loss name, side, lambda, K, L) of each side that is on."""
        o = self.options
        terms = [("rrd", "user", o.lambda_rrd, o.interesting, o.uninteresting),
                 ("ir_rrd", "item", o.lambda_ir, o.item_interesting, o.item_uninteresting)]
        return [term for term in terms if term[2] > 0]

    def resample(self, epoch: int) -> dict[str, torch.Tensor]:
        generator = self.context.generator
        for _, side_name, _, k, l in self._relaxed_terms():
            side = self.side(side_name)
            self.lists[side_name] = (sample_interesting(side, k, self.options.temperature, generator),
                                     sample_uninteresting(side, l, generator))
        return {}

    def listwise_terms(self) -> list[tuple[str, str, float, tuple[torch.Tensor, torch.Tensor]]]:
        """(loss name, side, lambda, (ranked, tail) column lists) of every
        relaxed ListMLE term this method adds."""
        missing = [side for _, side, *_ in self._relaxed_terms() if side not in self.lists]
        if missing:
            raise ConfigError(f"{self.name}: no {' and '.join(missing)}-side lists yet: they are drawn by "
                              "refresh(epoch, batches=...), which must come before loss")
        return [(loss_name, side_name, weight, self.lists[side_name])
                for loss_name, side_name, weight, _, _ in self._relaxed_terms()]

    def losses(self, model: Scorer, batch: Batch) -> dict[str, torch.Tensor]:
        terms = self.listwise_terms()
        out = {}
        for side_name in SIDES:  # one scoring call per side for all of its terms
            on_side = [term for term in terms if term[1] == side_name]
            if not on_side:
                continue
            side = self.side(side_name)
            # split by rows across processes: each process's part of the batch mean
            per_row = self.schedule.shard is not None and self.options.reduction == "mean"
            values = listwise_losses(model, side, self.batch_rows(side, batch), [term[3] for term in on_side],
                                     "none" if per_row else self.options.reduction)
            if per_row:
                values = [self.schedule.mean(side_name, value) for value in values]
            out.update({term[0]: term[2] * value for term, value in zip(on_side, values)})
        return out
