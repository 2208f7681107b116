"""DE (Kang et al., CIKM 2020): distillation experts, and DE-RRD (DE and RRD
together).

M experts, each an MLP ``d_s -> (d_s + d_t) // 2 -> d_t`` with a ReLU, map the
student's representation of an entity to the teacher's space. A selection
network (one linear layer ``d_t -> M`` on the *teacher's* representation,
softmax) gives each entity a distribution over the experts, from which one
expert is picked with the Gumbel-softmax relaxation

    e = softmax((log alpha + g) / tau),   g ~ Gumbel(0, 1),
    L_DE = || h_T - sum_m e_m E_m(h_S) ||^2

averaged over the entities of the batch (``reduction="sum"``: summed). The
temperature anneals per epoch, ``tau(p) = tau_0 (tau_P / tau_0)^(p / P)`` with
p the 0-based epoch and P ``anneal_epochs`` (default: the run's epochs), so the
selection is soft at first and one-hot (one expert per entity) by the end.

The entities are users and items, each side with its own experts and
selection network: the batch's distinct users and its distinct positive and
negative items (``rows="spread"``: every user and item once per epoch). The
representations are the models' ``user_representation`` /
``item_representation``: BPR's embeddings, NeuMF's two towers' embeddings
concatenated. The experts (stacked weights, all evaluated in one batched
product) and the selection networks belong to the method: the optimizer trains
them, the checkpoint keeps them, and the saved student has none of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from .. import distributed
from ..errors import ConfigError
from ..scoring import Scorer
from .base import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Batch, Distillation, MethodOptions, evaluation_mode, option
from .combine import combine
from .rrd import REDUCTIONS, RRD

__all__ = ["DE", "DEOptions", "DERRD", "Experts", "annealed_temperature"]

# Offset of the experts' initialisation seed from the run's seed (their own
# CPU generator, so that CPU and CUDA runs start from the same experts).
_INIT_SEED_OFFSET = 7919


@dataclass
class DEOptions(MethodOptions):
    """M=30 experts, tau annealed from 1 to 1e-10, lambda 1e-2."""

    lambda_de: float = option(1e-2, NON_NEGATIVE)
    experts: int = option(30, AT_LEAST_ONE)
    tau_start: float = option(1.0, POSITIVE)
    tau_end: float = option(1e-10, POSITIVE)
    anneal_epochs: int = option(0, NON_NEGATIVE)  # 0: the run's epochs
    reduction: str = option("mean", REDUCTIONS)


def annealed_temperature(step: int, total: int, start: float, end: float) -> float:
    """``start (end / start)^(step / total)``, held at ``end`` after ``total``."""
    return start * (end / start) ** min(step / total, 1.0)


def _uniform(generator: torch.Generator, fan_in: int, *shape: int) -> nn.Parameter:
    # nn.Linear's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound, generator=generator))


class Experts(nn.Module):
    """``n`` experts ``d_s -> (d_s + d_t) // 2 -> d_t`` as stacked weights and
    a selection network ``d_t -> n``."""

    def __init__(self, n: int, d_student: int, d_teacher: int, generator: torch.Generator) -> None:
        super().__init__()
        hidden = max(1, (d_student + d_teacher) // 2)
        self.w1 = _uniform(generator, d_student, n, d_student, hidden)
        self.b1 = _uniform(generator, d_student, n, hidden)
        self.w2 = _uniform(generator, hidden, n, hidden, d_teacher)
        self.b2 = _uniform(generator, hidden, n, d_teacher)
        self.select_w = _uniform(generator, d_teacher, d_teacher, n)
        self.select_b = _uniform(generator, d_teacher, n)

    def outputs(self, student: torch.Tensor) -> torch.Tensor:
        """``[B, n, d_t]``: every expert's output for every row of ``[B, d_s]``."""
        hidden = torch.relu(torch.einsum("bd,ndh->bnh", student, self.w1) + self.b1)
        return torch.einsum("bnh,nht->bnt", hidden, self.w2) + self.b2

    def gumbel(self, rows: int, generator: torch.Generator | None) -> torch.Tensor:
        """``[rows, n]`` Gumbel(0, 1) noise for the selection of ``rows`` rows."""
        exponential = torch.empty((rows, self.select_b.shape[0]), dtype=self.select_b.dtype,
                                  device=self.select_b.device).exponential_(generator=generator)
        return -torch.log(exponential.clamp_min(torch.finfo(exponential.dtype).tiny))

    def selection(self, teacher: torch.Tensor, tau: float, gumbel: torch.Tensor) -> torch.Tensor:
        """``[B, n]`` Gumbel-softmax selection from the teacher's ``[B, d_t]`` and the noise ``[B, n]``."""
        log_alpha = torch.log_softmax(teacher @ self.select_w + self.select_b, dim=1)
        return torch.softmax((log_alpha + gumbel) / tau, dim=1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, tau: float,
                gumbel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reconstruction ``[B, d_t]`` of the teacher's representation and the selection ``[B, n]``."""
        selection = self.selection(teacher, tau, gumbel)
        return torch.einsum("bn,bnt->bt", selection, self.outputs(student)), selection


_REPRESENTATIONS = {"user": "user_representation", "item": "item_representation"}


def _representation(model: Scorer, side: str, ids: torch.Tensor) -> torch.Tensor:
    return getattr(model, _REPRESENTATIONS[side])(ids)


class DE(Distillation):
    """``L = L_base + lambda_de (L_DE(users) + L_DE(items))``."""

    name = "de"
    Options = DEOptions

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.teacher is None:
            raise ConfigError(f"method {self.name!r} needs a teacher")
        self.tau = self.options.tau_start
        self._selected: list[torch.Tensor] = []  # per batch: the mean largest selection weight
        context = self.context
        init = torch.Generator().manual_seed(context.seed + _INIT_SEED_OFFSET)
        probe = torch.zeros(1, dtype=torch.int64, device=context.device)
        experts = {}
        for side in _REPRESENTATIONS:
            try:
                with evaluation_mode(self.student), evaluation_mode(self.teacher):
                    d_student = _representation(self.student, side, probe).shape[-1]
                    d_teacher = _representation(self.teacher, side, probe).shape[-1]
            except (NotImplementedError, AttributeError):
                raise ConfigError(f"method {self.name!r} needs models with {side} representations "
                                  f"({_REPRESENTATIONS[side]})") from None
            experts[side] = Experts(self.options.experts, d_student, d_teacher, init)
        self.experts = nn.ModuleDict(experts).to(context.device)

    def resample(self, epoch: int) -> dict[str, torch.Tensor]:
        o = self.options
        if not (o.anneal_epochs or self.context.epochs):
            raise ConfigError(f"{self.name}: set the option anneal_epochs, or the context's epochs")
        self.tau = annealed_temperature(epoch, o.anneal_epochs or self.context.epochs, o.tau_start, o.tau_end)
        self._selected = []
        return {}

    def entities(self, side: str, batch: Batch) -> torch.Tensor:
        """The users (items) of this batch whose representations are distilled
        (all of them: under data-parallel training, share them)."""
        if side == "user" or self.options.rows == "spread":
            return self.batch_rows(self.side(side), batch, share=False)
        if batch.pos_items is None or batch.neg_items is None:
            raise ConfigError(f"{self.name}: rows='batch' distils the batch's items: pass pos_items and neg_items")
        return torch.unique(torch.cat([batch.pos_items, batch.neg_items.reshape(-1)]))

    def losses(self, model: Scorer, batch: Batch) -> dict[str, torch.Tensor]:
        total = 0.0
        for side, experts in self.experts.items():
            ids = self.entities(side, batch)
            # The noise of all the batch's entities, then this process's share
            # of both: data-parallel processes draw what one process draws.
            gumbel = experts.gumbel(len(ids), self.context.generator)
            ids, gumbel = self.schedule.share(side, ids), self.schedule.share(side, gumbel)
            with torch.no_grad():
                target = _representation(self.teacher, side, ids)
            reconstruction, selection = experts(_representation(model, side, ids), target, self.tau, gumbel)
            per_entity = (target - reconstruction).square().sum(dim=1)
            total = total + (self.schedule.mean(side, per_entity) if self.options.reduction == "mean"
                             else per_entity.sum())
            self._selected.append(self.schedule.mean(side, selection.detach().max(dim=1).values))
        return {"de": self.options.lambda_de * total}

    def epoch_log(self) -> dict[str, float]:
        log = {**self._log, "de_tau": self.tau}
        if self._selected:  # how one-hot the selection was: 1 = one expert per entity
            selected = torch.stack(self._selected).mean()
            if self.schedule.shard is not None:  # each process's part of each batch mean; all call this per epoch
                selected = distributed.sum_across([selected])[0]
            log["de_selection"] = float(selected)
        return log

    def parameters(self) -> Iterable[nn.Parameter]:
        return list(self.experts.parameters())

    def state_dict(self) -> dict[str, Any]:
        return {"experts": self.experts.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.experts.load_state_dict(state["experts"])  # in place: the optimizer keeps its parameters


DERRD = combine(DE, RRD, name="de-rrd")
