"""What every distillation method shares: the two sides of the data, the
frozen teacher with its rankings, options, and the discrepancy diagnostic.

A *side* is one direction of the interaction matrix. On the user side the rows
are users and the columns items; on the item side the rows are items and the
columns users. The same sampler or loss serves both (RRD and IR-RRD, UCD and
ICD) by taking a side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

import numpy as np
import torch

from ..errors import ConfigError
from ..models import Recommender
from ..models.base import SCORE_ALL_BUDGET
from ..ops import rank_positions, relaxed_listmle
from ..unobserved import ObservedItems
from .rankings import TeacherRankings

if TYPE_CHECKING:
    from ..trainer import Batch, Trainer

from ..trainer import Method

__all__ = ["AT_LEAST_ONE", "NON_NEGATIVE", "POSITIVE", "SIDES", "Distillation", "LowerBound", "MethodOptions",
           "RowSchedule", "Side", "evaluation_mode", "listwise_losses", "option"]

log = logging.getLogger("rankdistill")

SIDES = ("user", "item")
# Ranks of the teacher's top entries that the diagnostic averages over (DCD Figure 1a).
DIAGNOSTIC_TOP = 50
# Diagnostics slower than this and than a training pass are pointed out once (NeuMF on a CPU: ~60 s).
DIAGNOSTIC_NOTE_SECONDS = 1.0


@contextlib.contextmanager
def evaluation_mode(model: Recommender) -> Iterator[None]:
    """No gradients and no training-time noise (CDAE's dropout) while ranking."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class Side:
    """One side of the data on the trainer's device: the teacher's top-C
    columns per row (``top``), the observed columns per row (CSR and a
    membership test) and how a model scores rows against columns."""

    def __init__(self, name: str, top: torch.Tensor, observed_csr: tuple[np.ndarray, np.ndarray],
                 n_cols: int, device: torch.device) -> None:
        if name not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {name!r}")
        self.name = name
        self.top = top.to(device)
        self.n_rows, self.n_cols = self.top.shape[0], n_cols
        indptr, indices = observed_csr
        self.indptr = torch.as_tensor(indptr, device=device)
        self.indices = torch.as_tensor(indices, device=device)
        self.observed_rows = torch.repeat_interleave(torch.arange(self.n_rows, device=device), self.indptr.diff())
        self.observed = ObservedItems(self.observed_rows, self.indices, self.n_rows, n_cols, device)
        self.teacher_rank = torch.arange(self.top.shape[1], device=device).expand_as(self.top).contiguous()
        self.padding = self.top < 0

    @property
    def device(self) -> torch.device:
        return self.top.device

    @functools.cached_property
    def outside_top(self) -> ObservedItems:
        """The columns of each row that are observed or in the teacher's top-C:
        what is left are the columns ranked below the top-C."""
        rows = torch.arange(self.n_rows, device=self.device)
        listed = ~self.padding
        return ObservedItems(torch.cat([self.observed_rows, rows[:, None].expand_as(self.top)[listed]]),
                             torch.cat([self.indices, self.top[listed]]), self.n_rows, self.n_cols, self.device)

    def scores(self, model: Recommender, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``[R, M]`` scores of row ``rows[r]`` against columns ``cols[r, :]``
        (-1 padding scores as column 0: mask it)."""
        cols = cols.clamp_min(0)
        return model.score_items(rows, cols) if self.name == "user" else model.score_users(rows, cols)

    def score_all(self, model: Recommender, rows: torch.Tensor) -> torch.Tensor:
        return model.score_all(rows) if self.name == "user" else model.score_all_users(rows)

    def catalogue_ranks(self, model: Recommender, targets: torch.Tensor) -> torch.Tensor:
        """``[n_rows, T]``: each target column's 0-based position in the model's
        ranking of all columns of its row, observed columns excluded (padding
        -1 gets a meaningless rank: mask it)."""
        out = torch.empty(targets.shape, dtype=torch.int64, device=self.device)
        block = max(1, SCORE_ALL_BUDGET // self.n_cols)
        with evaluation_mode(model):
            for start in range(0, self.n_rows, block):
                stop = min(start + block, self.n_rows)
                scores = self.score_all(model, torch.arange(start, stop, device=self.device))
                exclude = (self.indptr[start:stop + 1] - self.indptr[start],
                           self.indices[self.indptr[start]:self.indptr[stop]])
                out[start:stop] = rank_positions(scores, targets[start:stop].clamp_min(0), exclude=exclude)
        return out

    def candidate_ranks(self, model: Recommender, candidates: torch.Tensor) -> torch.Tensor:
        """``[n_rows, C]``: each candidate's position in the model's ranking of
        its row's candidates only (padding ranks last)."""
        out = torch.empty(candidates.shape, dtype=torch.int64, device=self.device)
        block = max(1, SCORE_ALL_BUDGET // max(1, candidates.shape[1]))
        with evaluation_mode(model):
            for start in range(0, self.n_rows, block):
                stop = min(start + block, self.n_rows)
                cols = candidates[start:stop]
                scores = self.scores(model, torch.arange(start, stop, device=self.device), cols)
                out[start:stop] = rank_positions(scores.masked_fill(cols < 0, -torch.inf))
        return out


class RowSchedule:
    """Which rows of each side a training batch distils (``MethodOptions.rows``).

    ``spread`` draws each side's permutation from ``trainer.generator`` the
    first time a batch asks for that side, so a method that distils nothing
    (the plain student) draws nothing and trains exactly like ``Method()``.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.index = 0  # the batch within the epoch
        self._generator: torch.Generator | None = None
        self._n_batches = 1
        self._permutations: dict[str, list[torch.Tensor]] = {}

    def start_epoch(self, trainer: "Trainer") -> None:
        self.index = 0
        self._generator = trainer.generator
        self._n_batches = -(-len(trainer.train_users) // trainer.config.batch_size)
        self._permutations = {}

    def next_batch(self) -> None:
        self.index += 1

    def rows(self, side: str, n_rows: int, batch_ids: torch.Tensor) -> torch.Tensor:
        """``batch``: the distinct ``batch_ids`` (the batch's users or positive
        items); ``spread``: this batch's share of a shuffled ``range(n_rows)``."""
        if self.mode == "batch":
            return torch.unique(batch_ids)
        if side not in self._permutations:
            order = torch.randperm(n_rows, generator=self._generator, device=batch_ids.device)
            self._permutations[side] = order.tensor_split(self._n_batches)
        return self._permutations[side][self.index]


def listwise_losses(model: Recommender, side: Side, rows: torch.Tensor,
                    lists: list[tuple[torch.Tensor, torch.Tensor]], reduction: str) -> list[torch.Tensor]:
    """Relaxed ListMLE of the model's scores for each ``(ranked, tail)`` pair
    of ``[n_rows, *]`` column lists (-1 padded): ``ranked[rows]``, in the
    teacher's order, above ``tail[rows]`` (order ignored). The model scores
    all the lists' columns in one call."""
    columns = [cols[rows] for pair in lists for cols in pair]
    scores = side.scores(model, rows, torch.cat(columns, dim=1)).split([c.shape[1] for c in columns], dim=1)
    return [relaxed_listmle(scores[2 * j], scores[2 * j + 1], ranked_mask=columns[2 * j] >= 0,
                            tail_mask=columns[2 * j + 1] >= 0, reduction=reduction) for j in range(len(lists))]


ROW_SCHEDULES = ("batch", "spread")


@dataclass(frozen=True)
class LowerBound:
    """The numbers a method option accepts: from ``low`` on, or above it if ``strict``."""

    low: float
    strict: bool = False

    def __contains__(self, value: float) -> bool:
        return value > self.low if self.strict else value >= self.low

    def __str__(self) -> str:
        return f"{'>' if self.strict else '>='} {self.low:g}"


POSITIVE = LowerBound(0.0, strict=True)  # scales: temperatures, mu, eps, tau
NON_NEGATIVE = LowerBound(0.0)  # loss weights (0 turns a term off), counts where 0 means "none" or "the default"
AT_LEAST_ONE = LowerBound(1)  # counts and intervals in epochs


def option(default: Any, allowed: LowerBound | tuple[str, ...] | None = None) -> Any:
    """A field of a method's options with the values it accepts: a
    ``LowerBound`` for a number, a tuple of choices for a string (a bool
    needs neither)."""
    return dataclasses.field(default=default, metadata={"allowed": allowed} if allowed is not None else {})


def _check_option(f: dataclasses.Field, value: Any) -> None:
    allowed = f.metadata.get("allowed")
    if isinstance(allowed, tuple):
        if value not in allowed:
            raise ConfigError(f"option {f.name} must be one of {', '.join(allowed)}, got {value!r}")
        return
    kind = type(f.default)  # as in _convert
    if kind not in (int, float):
        return
    # NaN passes no comparison and inf overflows every weight, temperature or
    # count: no option takes either. A number without a declared bound must be >= 0.
    bound = allowed or NON_NEGATIVE
    number = isinstance(value, int if kind is int else (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value not in bound:
        raise ConfigError(f"option {f.name} must be {'an integer' if kind is int else 'a finite number'} {bound}, "
                          f"got {value!r}")


@dataclass
class MethodOptions:
    """Base of each method's options.

    ``rows``: which rows of a side a training batch distils. ``"spread"``
    (default): every row once per epoch, a shuffled 1/n_batches share of them
    per batch. ``"batch"`` (as in the authors' code): the batch's distinct
    users (items), so a row is distilled in every batch that holds one of its
    interactions, about (its interactions) times per epoch. With the per-row
    mean the two give each row about the same total weight per epoch, and
    ``"spread"`` scores a fraction of the pairs (see docs/distillation.md).
    ``diagnose_every`` (epochs, 0 = never) records the mean |R_S - R_T| over
    the teacher's top-50 on both sides.

    Each field says what it accepts (``option(default, allowed)``), and
    ``__post_init__`` checks every field against it."""

    rows: str = option("spread", ROW_SCHEDULES)
    diagnose_every: int = option(5, NON_NEGATIVE)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_option(f, getattr(self, f.name))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MethodOptions":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}; this method takes: {', '.join(known)}")
        return cls(**{name: _convert(known[name], value) for name, value in values.items()})


def _convert(f: dataclasses.Field, value: Any) -> Any:
    """Options given as text on the command line, converted to the field's type."""
    kind = type(f.default)
    if not isinstance(value, str) or kind is str:
        return value
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        return kind(value)
    except ValueError:
        raise ConfigError(f"option {f.name}: expected {kind.__name__}, got {value!r}") from None


class Distillation(Method):
    """A method that learns from a frozen teacher through its rankings.

    Subclasses set ``name``, ``Options`` (a ``MethodOptions`` dataclass) and override ``resample`` (called
    before every epoch) and ``losses``. ``self.sides`` holds the two sides on
    the trainer's device once training starts.
    """

    name = "student"
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    refresh_every = 1
    # A method that trains the teacher too (BD, iBD) leaves it unfrozen.
    trains_teacher: ClassVar[bool] = False
    # ... and may not read the frozen teacher's top-C lists (build_method then accepts rankings=None).
    needs_rankings: ClassVar[bool] = True

    def __init__(self, teacher: Recommender | None, rankings: TeacherRankings | None,
                 options: MethodOptions | None = None) -> None:
        self.options = options if options is not None else type(self).Options()
        if not isinstance(self.options, type(self).Options):
            raise ConfigError(f"{self.name}: options must be {type(self).Options.__name__}")
        self.teacher = teacher
        self.rankings = rankings
        self.sides: dict[str, Side] = {}
        self._log: dict[str, float] = {}
        self._diagnostics_noted = False
        self.schedule = RowSchedule(self.options.rows)
        if teacher is not None and not self.trains_teacher:
            teacher.requires_grad_(False)
            teacher.eval()

    def on_train_start(self, trainer: "Trainer") -> None:
        if self.rankings is None:
            return
        split, device = trainer.split, trainer.device
        if self.rankings.items_of_user.shape[0] != split.n_users or self.rankings.users_of_item.shape[0] != split.n_items:
            raise ConfigError("the teacher's rankings do not match the split's users and items")
        if self.teacher is not None:
            self.teacher.to(device)
        train = split.train
        self.sides = {
            "user": Side("user", self.rankings.items_of_user, train.to_csr("user"), split.n_items, device),
            "item": Side("item", self.rankings.users_of_item, train.to_csr("item"), split.n_users, device),
        }

    def refresh(self, trainer: "Trainer", epoch: int) -> None:
        self._log = {}
        self.schedule.start_epoch(trainer)
        every = self.options.diagnose_every
        ranks = self.resample(trainer, epoch)
        if every and epoch % every == 0 and self.sides:
            start = time.perf_counter()
            for name, side in self.sides.items():
                self._log[f"discrepancy_{name}"] = self.discrepancy(trainer.model, side, ranks.get(name))
            seconds = self._log["diagnostic_seconds"] = time.perf_counter() - start
            last_pass = trainer.history[-1]["seconds"] if trainer.history else None  # none yet at the start
            if not self._diagnostics_noted and seconds > max(DIAGNOSTIC_NOTE_SECONDS, last_pass or 0.0):
                self._diagnostics_noted = True
                than = "" if last_pass is None else f", more than a training pass ({last_pass:.1f} s)"
                log.info("the discrepancy diagnostics took %.1f s every %d epochs%s; -o diagnose_every=0 turns them off",
                         seconds, every, than)

    def resample(self, trainer: "Trainer", epoch: int) -> dict[str, torch.Tensor]:
        """Draw this epoch's samples. Returns the student's catalogue ranks of
        each side's top-C lists if it computed them (the diagnostic reuses them)."""
        return {}

    def extra_loss(self, trainer: "Trainer", batch: "Batch") -> dict[str, torch.Tensor]:
        losses = self.losses(trainer.model, batch)
        self.schedule.next_batch()
        return losses

    def batch_rows(self, side: Side, batch: "Batch") -> torch.Tensor:
        """The rows of ``side`` that this batch distils (see ``MethodOptions.rows``)."""
        return self.schedule.rows(side.name, side.n_rows, batch.users if side.name == "user" else batch.pos_items)

    def losses(self, model: Recommender, batch: "Batch") -> dict[str, torch.Tensor]:
        return {}

    def epoch_log(self) -> dict[str, float]:
        return self._log

    @staticmethod
    def discrepancy(model: Recommender, side: Side, ranks: torch.Tensor | None = None) -> float:
        """Mean |R_S - R_T| over the teacher's top-50 of every row (DCD Figure 1a)."""
        width = min(DIAGNOSTIC_TOP, side.top.shape[1])
        if ranks is None:
            ranks = side.catalogue_ranks(model, side.top[:, :width])
        gap = (ranks[:, :width] - side.teacher_rank[:, :width]).abs().float()
        valid = ~side.padding[:, :width]
        return float(gap[valid].mean()) if bool(valid.any()) else float("nan")
