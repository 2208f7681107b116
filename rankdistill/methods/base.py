"""What every distillation method shares: the context it runs in, the two
sides of the data, the teacher with its rankings, options, the batch schedule
and the discrepancy diagnostic.

A method is used the same way by rankdistill's trainer and by your own loop::

    context = DistillContext(student, interactions, generator=generator)
    method = RRD(context, rankings=rankings)          # or build_method("rrd", ...)
    for epoch in range(epochs):
        method.refresh(epoch, batches=n_batches)      # the epoch's samples, corrections, rounds
        for users, pos_items, neg_items in batches:
            terms = method.loss(users, pos_items, neg_items)   # {"rrd": lambda * L_RRD}
            (base_loss + sum(terms.values())).backward()

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
from typing import Any, ClassVar, Iterable, Iterator

import torch
from torch import nn

from .. import distributed, progress
from ..blocks import csr_rows, csr_select, row_blocks
from ..errors import ConfigError
from ..ops import dot_rank_positions, rank_positions, relaxed_listmle
from ..scoring import InteractionMatrix, Scorer, as_interactions, check_fits, dot_product_tables
from ..unobserved import ObservedItems
from .rankings import TeacherRankings

__all__ = ["AT_LEAST_ONE", "NON_NEGATIVE", "POSITIVE", "SIDES", "Batch", "DistillContext", "Distillation",
           "LowerBound", "MethodOptions", "RowSchedule", "Side", "evaluation_mode", "listwise_losses", "option"]

log = logging.getLogger("rankdistill")

SIDES = ("user", "item")
# Ranks of the teacher's top entries that the diagnostic averages over (DCD Figure 1a).
DIAGNOSTIC_TOP = 50


@contextlib.contextmanager
def evaluation_mode(model: Any) -> Iterator[None]:
    """No gradients and no training-time noise (CDAE's dropout) while ranking."""
    if not isinstance(model, nn.Module):  # a scorer that is not a module has no modes
        with torch.no_grad():
            yield
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class DistillContext:
    """What a method may read of the run it serves, and nothing else.

    Args:
        student: the model being trained, as a ``rankdistill.scoring.Scorer``
            (rankdistill's models are scorers; ``EmbeddingScorer`` adapts
            others).
        interactions: the training interactions: an ``InteractionMatrix``, an
            ``Interactions`` or a ``Split`` (its training part). Rankings are
            over each user's *unobserved* items.
        device: where the method's tensors live (default: the generator's, else CPU).
        generator: every random draw of the method (sampling, permutations,
            Gumbel noise) comes from it; default: a new one seeded with ``seed``.
            Checkpoint it to resume exactly.
        seed: seeds what a method initialises from its own stream (DE's
            experts; BD's fresh teacher uses ``seed + 1``).
        epochs: the run's length, where a method schedules by it (DE's
            annealing, when its ``anneal_epochs`` is 0).
    """

    def __init__(self, student: Scorer, interactions: Any, *, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None, seed: int = 0, epochs: int | None = None) -> None:
        if device is None:
            device = generator.device if generator is not None else "cpu"
        self.device = torch.device(device)
        if generator is not None and generator.device.type != self.device.type:
            raise ConfigError(f"the generator is on {generator.device}, the method's tensors on {self.device}: "
                              "pass a generator of that device")
        self.generator = generator if generator is not None else torch.Generator(self.device).manual_seed(seed)
        for name in ("score_items", "score_users", "score_all", "score_all_users"):
            if not callable(getattr(student, name, None)):
                raise ConfigError(f"the student must be a Scorer (rankdistill.scoring): it has no {name}(); "
                                  "wrap your model in rankdistill.EmbeddingScorer or implement the four methods")
        self.student = student
        self.interactions: InteractionMatrix = as_interactions(interactions, self.device)
        check_fits("student", student, self.interactions)
        self.seed = int(seed)
        self.epochs = epochs

    def row_streams(self, count: int) -> list[torch.Generator]:
        """``count`` generators, each seeded from ``generator`` (every process
        of a torchrun draws the same seeds): a sampling op called with one of
        them and ``first_row`` draws for its rows what a single call over all
        rows would, so that a round's draws do not depend on how its rows are
        split into blocks or processes."""
        seeds = torch.randint(2**63 - 1, (count,), generator=self.generator, device=self.generator.device)
        return [torch.Generator(self.generator.device).manual_seed(seed) for seed in seeds.tolist()]


@dataclass
class Batch:
    """One mini-batch of training pairs: positives ``users[b], pos_items[b]``
    and negatives ``neg_items[b, :]`` (the item lists may be None for
    methods that only read the users)."""

    users: torch.Tensor
    pos_items: torch.Tensor | None = None
    neg_items: torch.Tensor | None = None


class Side:
    """One side of the data on the method's device: the teacher's top-C
    columns per row (``top``), the observed columns per row (CSR and a
    membership test) and how a model scores rows against columns."""

    def __init__(self, name: str, top: torch.Tensor, interactions: InteractionMatrix) -> None:
        if name not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {name!r}")
        device = interactions.device
        self.name = name
        self.top = top.to(device)
        self.indptr, self.indices = interactions.csr(name)
        self.n_rows = len(self.indptr) - 1
        self.n_cols = interactions.n_items if name == "user" else interactions.n_users
        if self.top.dim() != 2 or self.top.shape[0] != self.n_rows:
            raise ConfigError(f"the teacher's {name}-side lists must be [{self.n_rows}, C], got "
                              f"{list(self.top.shape)}")
        if self.top.numel() and (int(self.top.min()) < -1 or int(self.top.max()) >= self.n_cols):
            raise ConfigError(f"the teacher's {name}-side lists hold ids outside [-1, {self.n_cols}) "
                              f"(found [{int(self.top.min())}, {int(self.top.max())}])")
        self.observed_rows = torch.repeat_interleave(torch.arange(self.n_rows, device=device), self.indptr.diff())
        self.observed = ObservedItems(self.observed_rows, self.indices, self.n_rows, self.n_cols, device)
        # every row's positions 0..C-1: a broadcast view, not [n_rows, C] int64 (4 GB at 10^6 items, C = 500)
        self.teacher_rank = torch.arange(self.top.shape[1], device=device).expand_as(self.top)
        self.padding = self.top < 0
        self.has_padding = bool(self.padding.any())  # rows with fewer than C candidates: rare

    @property
    def device(self) -> torch.device:
        return self.top.device

    @functools.cached_property
    def outside_top(self) -> ObservedItems:
        """The columns of each row that are observed or in the teacher's top-C:
        what is left are the columns ranked below the top-C."""
        rows = torch.arange(self.n_rows, device=self.device)
        if self.has_padding:
            listed = ~self.padding
            top_rows, top_cols = rows[:, None].expand_as(self.top)[listed], self.top[listed]
        else:  # every entry listed: no masked selection (a tenth of the time)
            top_rows, top_cols = rows.repeat_interleave(self.top.shape[1]), self.top.reshape(-1)
        return ObservedItems(torch.cat([self.observed_rows, top_rows]), torch.cat([self.indices, top_cols]),
                             self.n_rows, self.n_cols, self.device)

    def scores(self, model: Scorer, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``[R, M]`` scores of row ``rows[r]`` against columns ``cols[r, :]``
        (-1 padding scores as column 0: mask it)."""
        cols = cols.clamp_min(0)
        return model.score_items(rows, cols) if self.name == "user" else model.score_users(rows, cols)

    def score_all(self, model: Scorer, rows: torch.Tensor) -> torch.Tensor:
        return model.score_all(rows) if self.name == "user" else model.score_all_users(rows)

    def catalogue_ranks(self, model: Scorer, targets: torch.Tensor, rows: torch.Tensor | None = None, *,
                        gather: bool = True) -> torch.Tensor:
        """``[n_rows, T]``: each target column's 0-based position in the model's
        ranking of all columns of its row, observed columns excluded (padding
        -1 gets a meaningless rank: mask it). ``rows``: only these rows
        (``targets`` and the result then have ``len(rows)`` rows). Under
        torchrun each process ranks its share (``distributed.row_shard``) and
        the shares are gathered; ``gather=False``: this process's share only."""
        n = self.n_rows if rows is None else len(rows)
        first, last = distributed.row_shard(n)  # this process's rows; all of them for one process
        out = torch.empty((last - first, *targets.shape[1:]), dtype=torch.int64, device=self.device)
        for start, stop, ranks in self.catalogue_rank_blocks(model, targets, rows):
            out[start - first:stop - first] = ranks
        return distributed.gather_rows(out, n) if gather else out

    def catalogue_rank_blocks(self, model: Scorer, targets: torch.Tensor,
                              rows: torch.Tensor | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``catalogue_ranks(..., gather=False)`` a block of rows at a time:
        ``(start, stop, ranks [stop - start, T])`` for consecutive blocks of
        this process's share, ``start`` and ``stop`` counted in all the rows
        (``targets`` holds every row's), so that a caller can use each block
        and drop it (a correction of 10^6 items by their top-500 users holds
        no ``[10^6, 500]`` ranks)."""
        n = self.n_rows if rows is None else len(rows)
        first, last = distributed.row_shard(n)
        blocks = list(row_blocks(last - first, self.n_cols))
        with evaluation_mode(model):
            tables = dot_product_tables(model)  # a dot-product model: ranked without blocks of scores
            if tables is not None and self.name == "item":
                tables = tables[::-1]
            for start, stop in progress.bar(blocks, desc=f"student: catalogue ranks, {self.name} side", unit="block"):
                start, stop = first + start, first + stop
                if rows is None:
                    ids, exclude = torch.arange(start, stop, device=self.device), csr_rows(self.indptr, self.indices,
                                                                                            start, stop)
                else:
                    ids = rows[start:stop]
                    exclude = csr_select(self.indptr, self.indices, ids)
                block_targets = targets[start:stop].clamp_min(0)
                if tables is None:
                    yield start, stop, rank_positions(self.score_all(model, ids), block_targets, exclude=exclude)
                else:
                    yield start, stop, dot_rank_positions(tables[0][ids], tables[1], block_targets, exclude=exclude)

    def candidate_ranks(self, model: Scorer, candidates: torch.Tensor, first_row: int = 0) -> torch.Tensor:
        """``[R, C]``: each candidate's position in the model's ranking of its
        row's candidates only (padding ranks last), for the ``R`` rows
        ``first_row..`` whose candidates ``candidates`` holds."""
        out = torch.empty(candidates.shape, dtype=torch.int64, device=self.device)
        with evaluation_mode(model):
            for start, stop in row_blocks(len(candidates), candidates.shape[1]):
                cols = candidates[start:stop]
                scores = self.scores(model, torch.arange(first_row + start, first_row + stop, device=self.device),
                                     cols)
                out[start:stop] = rank_positions(scores.masked_fill(cols < 0, -torch.inf))
        return out


class RowSchedule:
    """Which rows of each side a training batch distils (``MethodOptions.rows``).

    ``spread`` draws each side's permutation from the context's generator the
    first time a batch asks for that side, so a method that distils nothing
    (the plain student) draws nothing and trains exactly like no method.

    Under data-parallel training (``shard``: this process and the number of
    processes) each process distils its contiguous share of a batch's rows,
    and ``mean`` divides by the rows of all processes, so that the processes'
    terms, summed, are the one-process batch mean.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.index = 0  # the batch within the epoch
        self.shard: tuple[int, int] | None = None  # (process, processes) under data-parallel training
        self._rows_in_batch: dict[str, int] = {}
        self._generator: torch.Generator | None = None
        self._n_batches = 1
        self._permutations: dict[str, list[torch.Tensor]] = {}

    def start_epoch(self, generator: torch.Generator, n_batches: int) -> None:
        self.index = 0
        self._generator = generator
        self._n_batches = n_batches
        self._permutations = {}

    def next_batch(self) -> None:
        self.index += 1

    def rows(self, side: str, n_rows: int, batch_ids: torch.Tensor, *, share: bool = True) -> torch.Tensor:
        """``batch``: the distinct ``batch_ids`` (the batch's users or positive
        items); ``spread``: this batch's share of a shuffled ``range(n_rows)``.
        Under data-parallel training, this process's share of those
        (``share=False``: all of them; ``share`` them later)."""
        if self.mode == "batch":
            rows = torch.unique(batch_ids)
        else:
            if side not in self._permutations:
                order = torch.randperm(n_rows, generator=self._generator, device=batch_ids.device)
                self._permutations[side] = order.tensor_split(self._n_batches)
            if self.index >= self._n_batches:
                raise ConfigError(f"rows='spread' was told of {self._n_batches} batches per epoch "
                                  "(refresh(epoch, batches=N)) and got more")
            rows = self._permutations[side][self.index]
        return self.share(side, rows) if share else rows

    def share(self, side: str, per_row: torch.Tensor) -> torch.Tensor:
        """This process's share of a batch's rows of ``side``, or of anything
        laid out by those rows (``[rows, ...]``, e.g. random numbers drawn for
        all the batch's rows, the same on every process and as one process
        draws them); all of it on one process."""
        if self.shard is None:
            return per_row
        self._rows_in_batch[side] = len(per_row)
        start, stop = distributed.row_shard_of(len(per_row), *self.shard)
        return per_row[start:stop]

    def mean(self, side: str, per_row: torch.Tensor) -> torch.Tensor:
        """The batch's mean of ``per_row`` over the rows ``rows(side, ...)``
        gave; under data-parallel training this process's part of it."""
        if self.shard is None:
            return per_row.mean()
        return per_row.sum() / max(self._rows_in_batch[side], 1)


def listwise_losses(model: Scorer, side: Side, rows: torch.Tensor,
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
    the teacher's top-50 on both sides, over ``diagnose_rows`` rows of each
    side (a random sample fixed for the run, so that the curve compares like
    with like; 0 = every row): an estimate of the all-rows mean at a fraction
    of its cost (CiteULike's item side: 1,024 of 16,980 rows).

    Each field says what it accepts (``option(default, allowed)``), and
    ``__post_init__`` checks every field against it."""

    rows: str = option("spread", ROW_SCHEDULES)
    diagnose_every: int = option(5, NON_NEGATIVE)
    diagnose_rows: int = option(1024, NON_NEGATIVE)

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


class Distillation:
    """A distillation method: the plain student itself (``Distillation``: no
    term, only the diagnostics when rankings are given), and the base of every
    method.

    Args:
        context: the run it serves (``DistillContext``: student,
            interactions, device, generator, seed, epochs).
        teacher: the teacher as a scorer (read by CD's soft labels and DE's
            representations; trained by BD and iBD). None for methods that
            read only its rankings.
        rankings: its top-C lists (``TeacherRankings``; ``compute_rankings``
            makes them). The item side's may be None when no item-side term is on.
        options: this method's ``Options`` (default: the papers' values).

    Per epoch call ``refresh(epoch, batches=...)``; per batch ``loss(users,
    pos_items, neg_items)``, which returns the weighted distillation terms
    (``lambda_x * L_x``) by name, to add to the student's own loss.
    ``parameters()`` are the method's own trainable parameters (DE's experts,
    BD's teacher): give them to the optimizer. ``state_dict()`` holds what
    later epochs depend on (samples kept across epochs, experts, BD's teacher
    and sets); with the generator's state it resumes a run exactly.
    ``epoch_log()``: numbers worth recording for the epoch (diagnostics).
    ``co_trained()``: models the method trains besides the student (BD's
    teacher), which a trainer validates, selects and saves like the student.

    Subclasses set ``name`` and ``Options`` and override ``resample`` (the
    epoch's draws) and ``losses``; ``self.sides`` holds the two sides.
    """

    name = "student"
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    # A method that trains the teacher too (BD, iBD) leaves it unfrozen.
    trains_teacher: ClassVar[bool] = False
    # ... and may not read the frozen teacher's top-C lists (build_method then accepts rankings=None).
    needs_rankings: ClassVar[bool] = True
    # Names of the models in co_trained() (known before a run, for its files).
    co_trained_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, context: DistillContext, teacher: Scorer | None = None,
                 rankings: TeacherRankings | None = None, options: MethodOptions | None = None) -> None:
        if not isinstance(context, DistillContext):
            raise ConfigError(f"{self.name}: the first argument must be a DistillContext, got {type(context).__name__}")
        self.context = context
        self.options = options if options is not None else type(self).Options()
        if not isinstance(self.options, type(self).Options):
            raise ConfigError(f"{self.name}: options must be {type(self).Options.__name__}")
        self.teacher = teacher
        self.rankings = rankings
        self.sides: dict[str, Side] = {}
        self._log: dict[str, float] = {}
        self._diagnostic_rows: dict[str, torch.Tensor] = {}
        self.schedule = RowSchedule(self.options.rows)
        if teacher is not None:
            check_fits("teacher", teacher, context.interactions)
            if isinstance(teacher, nn.Module):
                teacher.to(context.device)
            if not self.trains_teacher and isinstance(teacher, nn.Module):
                teacher.requires_grad_(False)
                teacher.eval()
        if rankings is not None:
            interactions = context.interactions
            self.sides = {"user": Side("user", rankings.items_of_user, interactions)}
            if rankings.users_of_item is not None:
                self.sides["item"] = Side("item", rankings.users_of_item, interactions)

    @property
    def student(self) -> Scorer:
        return self.context.student

    def side(self, name: str) -> Side:
        """The side ``name``; a clear error when its teacher lists were not given."""
        if not self.sides:
            raise ConfigError(f"method {self.name!r} needs the teacher's rankings (rankings=TeacherRankings(...))")
        if name not in self.sides:
            raise ConfigError(f"{self.name}: an {name}-side term is on, but the teacher's rankings have no "
                              f"{name}-side lists (TeacherRankings.users_of_item)")
        return self.sides[name]

    # ------------------------------------------------------------ the public face

    def refresh(self, epoch: int, *, batches: int | None = None) -> None:
        """Before epoch ``epoch`` (0-based): draw its samples (RRD's lists,
        DCD's corrections every ``correct_every`` epochs, BD's rounds ...).
        ``batches``: how many ``loss`` calls the epoch will make (needed by
        ``rows="spread"``, which spreads every row over the epoch's batches)."""
        self._start_epoch(batches)
        ranks = self.resample(epoch)
        if self.diagnoses(epoch):
            start = time.perf_counter()
            for name, side in self.sides.items():
                self._log[f"discrepancy_{name}"] = self.discrepancy(self.student, side, ranks.get(name))
            self._log["diagnostic_seconds"] = time.perf_counter() - start

    def loss(self, users: torch.Tensor, pos_items: torch.Tensor | None = None,
             neg_items: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The weighted distillation terms for a batch of training pairs (the
        users ``[B]``; the positive items ``[B]`` and negatives ``[B, k]``,
        which the item side's ``rows="batch"``, DE's items and BD's teacher
        read). Call once per batch, ``batches`` times per epoch."""
        losses = self.losses(self.student, Batch(users, pos_items, neg_items))
        self.schedule.next_batch()
        return losses

    def parameters(self) -> Iterable[nn.Parameter]:
        """The method's own trainable parameters (none here)."""
        return ()

    @property
    def stopping_period(self) -> int:
        """Epochs between the refreshes that move the student's validation
        metric in steps (DCD's corrections): early stopping counts its
        patience in these periods, so that where in a period a run happens to
        be does not decide when it stops. 1 here."""
        return 1

    @property
    def splits_by_rows(self) -> bool:
        """Whether ``loss`` can be split across data-parallel processes by rows
        with the one-process result: its terms are means (or sums) over the
        batch's rows or their entries, and what it draws per batch it draws
        for all the batch's rows on every process before taking its share
        (DE's Gumbel noise, RD's sampled ranks). Every built-in method does; a
        method of your own that draws otherwise per batch says False, and
        trains replicated under torchrun."""
        return True

    def shard_rows(self, process: int, processes: int) -> None:
        """Data-parallel training: from now on ``loss`` distils process
        ``process``'s share of each batch's rows (its part of each mean); the
        processes' gradients, summed, are the one-process gradient."""
        if not self.splits_by_rows:
            raise ConfigError(f"{self.name} draws at random per batch: it cannot be split by rows")
        self.schedule.shard = (process, processes)

    def co_trained(self) -> dict[str, nn.Module]:
        """Models trained besides the student, by name (none here)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What later epochs depend on (nothing here)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def epoch_log(self) -> dict[str, float]:
        return self._log

    # ------------------------------------------------------------ for subclasses

    def _start_epoch(self, batches: int | None) -> None:
        """What every ``refresh`` does first: a new epoch's log and batch schedule."""
        if batches is None and self.options.rows == "spread":
            raise ConfigError(f"{self.name}: rows='spread' needs refresh(epoch, batches=N), N the epoch's batches "
                              "(or use the option rows='batch')")
        self._log = {}
        self.schedule.start_epoch(self.context.generator, batches or 1)

    def _check_sides(self, names: Iterable[str]) -> None:
        """With rankings given, every side a term of this method uses has its
        teacher lists: a clear error when the method is built, not at refresh."""
        if self.sides:
            for name in names:
                self.side(name)

    def resample(self, epoch: int) -> dict[str, torch.Tensor]:
        """Draw this epoch's samples. Returns, by side, the student's
        catalogue ranks of the teacher's top-C of the rows the diagnostic
        reads (``diagnosed_rows``), if it computed them and ``diagnoses(epoch)``
        (the diagnostic reuses them)."""
        return {}

    def diagnoses(self, epoch: int) -> bool:
        """Whether ``refresh(epoch)`` measures the discrepancies (``diagnose_every``)."""
        every = self.options.diagnose_every
        return bool(every and epoch % every == 0 and self.sides)

    def diagnosed_rows(self, side: Side) -> torch.Tensor:
        """The rows of ``side`` whose discrepancy this process measures: its
        share (``distributed.row_shard``) of ``diagnostic_rows``, ascending."""
        first, last = distributed.row_shard(side.n_rows)
        rows = self.diagnostic_rows(side)
        if rows is None:
            return torch.arange(first, last, device=side.device)
        return rows[(rows >= first) & (rows < last)]

    def batch_rows(self, side: Side, batch: Batch, *, share: bool = True) -> torch.Tensor:
        """The rows of ``side`` that this batch distils (see
        ``MethodOptions.rows``): under data-parallel training this process's
        share of them (``share=False``: all of them, for draws made per row
        before ``schedule.share`` takes this process's part)."""
        if side.name == "user":
            ids = batch.users
        elif batch.pos_items is not None:
            ids = batch.pos_items
        elif self.schedule.mode == "spread":
            ids = batch.users  # only its device is read
        else:
            raise ConfigError(f"{self.name}: rows='batch' on the item side needs the batch's pos_items")
        return self.schedule.rows(side.name, side.n_rows, ids, share=share)

    def losses(self, model: Scorer, batch: Batch) -> dict[str, torch.Tensor]:
        return {}

    def diagnostic_rows(self, side: Side) -> torch.Tensor | None:
        """The rows of ``side`` the diagnostic averages over (ascending; None:
        all): ``diagnose_rows`` of them drawn once from the run's seed, with a
        generator of their own (the training draws are left as they were)."""
        k = self.options.diagnose_rows
        if not k or k >= side.n_rows:
            return None
        if side.name not in self._diagnostic_rows:
            generator = torch.Generator().manual_seed(self.context.seed + SIDES.index(side.name))
            self._diagnostic_rows[side.name] = torch.randperm(side.n_rows, generator=generator)[:k].sort().values.to(
                side.device)
        return self._diagnostic_rows[side.name]

    def discrepancy(self, model: Scorer, side: Side, ranks: torch.Tensor | None = None) -> float:
        """Mean |R_S - R_T| over the teacher's top-50 of every row, or of
        ``diagnostic_rows`` (DCD Figure 1a). ``ranks``: the student's
        catalogue ranks of the top-C of ``diagnosed_rows(side)``, when already
        computed (DCD's corrections). Each process sums its rows' gaps,
        exactly (integers), so the mean is the same for any number of
        processes."""
        width = min(DIAGNOSTIC_TOP, side.top.shape[1])
        if ranks is not None:
            ids = self.diagnosed_rows(side)
        else:  # the rows split evenly across processes (any partition sums the same)
            rows = self.diagnostic_rows(side)
            first, last = distributed.row_shard(side.n_rows if rows is None else len(rows))
            ids = torch.arange(first, last, device=side.device) if rows is None else rows[first:last]
            top = side.top[:, :width] if rows is None else side.top[rows, :width]
            ranks = side.catalogue_ranks(model, top, rows, gather=False)
        gap = (ranks[:, :width] - side.teacher_rank[ids, :width]).abs()
        valid = ~side.padding[ids, :width]
        total, count = distributed.sum_across([torch.stack([gap[valid].sum(), valid.sum()])])[0].tolist()
        return total / count if count else float("nan")
