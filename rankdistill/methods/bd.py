"""BD (Kweon, Kang & Yu, WWW 2021): bidirectional distillation, and iBD, BD
with feedback across sampling rounds.

The teacher and the student are trained together, in one loop and by one
optimizer: the student's loss is ``L_base(S) + lambda_ts L_BD(T->S)``, the
teacher's ``L_base(T) + lambda_st L_BD(S->T)``; the two sums are added (the
gradients do not mix: each model's distillation target is the other model's
prediction, detached), so one Adam over both parameter sets is the same as two.

Every ``update_every`` epochs (a *sampling round*), for every user, both
models rank every item (``rank_positions``, the user's training items
excluded, 0 = top) and each model gets a new set of ``samples`` unobserved
items, drawn without replacement (``weighted_sample``):

    student (T->S): p_i ∝ tanh(max(eps_t (R_S(i) - R_T(i)), 0))   the teacher ranks i higher
    teacher (S->T): p_i ∝ exp(eps (R_T(i) - R_S(i)))              preferring what the student ranks higher

The candidates are all of the user's unobserved items (the paper's reading;
it is tractable because the ranks are computed block by block of users and
never stored: only the drawn items are kept). On the sampled items each model
learns the other's soft label ``sigmoid(z / temperature)`` with binary
cross-entropy on its own ``z / temperature``, averaged over the batch's
(user, item) pairs; the batch's users are distilled (``rows``, as in the other
methods). The samples are kept until the next round.

iBD adds feedback: at each round, the items of the previous round's set of a
direction (new and retained) whose discrepancy in that direction has not been
corrected (still R_S > R_T for T->S, still R_T > R_S for S->T under the new
ranks) are retained, at most ``retain`` per user (the largest remaining gaps),
and distilled again next to the new sample (which is drawn from the other
items). ``gamma_ts`` and ``gamma_st`` weight the two directions (they take
the role of BD's lambdas). See docs/distillation.md, "BD and iBD".

The teacher is a co-trained model (``co_trained()``): a trainer validates it
like the student and keeps its best epoch (rankdistill's records its metrics
in the epoch's history as ``teacher_valid``, tests it at the end,
``teacher_test`` in results.json, and saves it as ``teacher.pt``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed, progress
from ..blocks import csr_rows, row_blocks
from ..errors import ConfigError
from ..models import Recommender, build_model
from ..ops import rank_positions, weighted_sample
from .base import (AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Batch, DistillContext, Distillation, MethodOptions,
                   evaluation_mode, option)

__all__ = ["BD", "BDOptions", "IBD", "IBDOptions", "DIRECTIONS", "bd_weights", "drop_repeats",
           "retain_uncorrected", "sample_discrepancies", "soft_label_bce"]
# "ts": teacher -> student (the student learns); "st": student -> teacher.
DIRECTIONS = ("ts", "st")
TEACHER_INITS = ("trained", "fresh")


@dataclass
class BidirectionalOptions(MethodOptions):
    """What BD and iBD share. ``teacher_init="fresh"`` re-initialises the
    teacher (its architecture from ``--teacher``, dimension ``teacher_dim``
    if > 0) so that both models train from scratch; ``"trained"`` continues
    from the given teacher. ``diagnose_every`` is not used: every round logs
    its own numbers (mean gap of the sampled items, corrected share)."""

    temperature: float = option(5.0, POSITIVE)
    eps: float = option(1e-4, POSITIVE)  # S->T sampler (the teacher's)
    eps_t: float = option(1e-2, POSITIVE)  # T->S sampler (the student's)
    samples: int = option(20, AT_LEAST_ONE)  # new items per user, direction and draw
    update_every: int = option(10, AT_LEAST_ONE)  # epochs per sampling round (ranks of every item)
    # epochs per draw from a round's weights; 0: one draw, kept for the whole round
    redraw_every: int = option(0, NON_NEGATIVE)
    teacher_init: str = option("trained", TEACHER_INITS)
    teacher_dim: int = option(0, NON_NEGATIVE)  # 0: the teacher's


@dataclass
class BDOptions(BidirectionalOptions):
    lambda_ts: float = option(0.5, NON_NEGATIVE)  # weight of the student's distillation loss
    lambda_st: float = option(0.5, NON_NEGATIVE)  # weight of the teacher's


@dataclass
class IBDOptions(BidirectionalOptions):
    # Loss weights in BD's lambdas' place (the paper tries 0.1, 0.5, 0.9), not a split of 1 between the two.
    gamma_ts: float = option(0.5, NON_NEGATIVE)  # weight of T->S (the student learns)
    gamma_st: float = option(0.5, NON_NEGATIVE)  # weight of S->T (the teacher learns)
    # at most this many uncorrected items kept per user and direction (0: plain BD)
    retain: int = option(20, NON_NEGATIVE)


# --------------------------------------------------------------- sampling

def bd_weights(student_rank: torch.Tensor, teacher_rank: torch.Tensor, *, direction: str,
               eps: float) -> torch.Tensor:
    """BD's sampling weights (float32, same shape as the ranks; 0 = top).

    ``"ts"`` (the student's sample): ``tanh(max(eps (R_S - R_T), 0))``, zero
    where the student ranks the item at least as high as the teacher.
    ``"st"`` (the teacher's sample): ``exp(eps (R_T - R_S))``, scaled per row
    by its maximum (the distribution is unchanged, the values stay finite)."""
    gap = (student_rank - teacher_rank).float()
    if direction == "ts":
        return torch.tanh((eps * gap).clamp_min_(0.0))
    if direction == "st":
        logits = -eps * gap
        return torch.exp(logits - logits.amax(dim=1, keepdim=True))
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def sample_discrepancies(student_rank: torch.Tensor, teacher_rank: torch.Tensor, k: int, *, direction: str,
                         eps: float, excluded: torch.Tensor | None = None,
                         generator: torch.Generator | None = None, first_row: int = 0) -> torch.Tensor:
    """``[B, k]`` columns per row drawn without replacement by ``bd_weights``
    (ranks of every column, ``[B, N]``), never an ``excluded`` one (bool
    ``[B, N]``: observed or already retained); -1 padded where fewer than
    ``k`` columns have a positive weight. ``first_row``: as in
    ``weighted_sample`` (these are rows ``first_row..`` of all users)."""
    weights = bd_weights(student_rank, teacher_rank, direction=direction, eps=eps)
    if excluded is not None:
        weights.masked_fill_(excluded, 0.0)
    return weighted_sample(weights, min(k, weights.shape[1]), generator=generator, sorted=True,
                           first_row=first_row)


def direction_gap(student_rank: torch.Tensor, teacher_rank: torch.Tensor, direction: str) -> torch.Tensor:
    """The discrepancy in ``direction``: R_S - R_T for ``"ts"``, R_T - R_S for ``"st"``."""
    return student_rank - teacher_rank if direction == "ts" else teacher_rank - student_rank


def retain_uncorrected(previous: torch.Tensor, student_rank: torch.Tensor, teacher_rank: torch.Tensor, k: int, *,
                       direction: str) -> torch.Tensor:
    """iBD's feedback: of each row's ``previous`` columns (``[B, M]``, -1
    padded), those whose ``direction`` gap under the current ranks (``[B, N]``)
    is still positive, at most ``k`` per row (the largest gaps, largest
    first), -1 padded to ``[B, min(k, M)]``."""
    k = min(k, previous.shape[1])
    if k == 0:
        return previous.new_empty((previous.shape[0], 0))
    cols = previous.clamp_min(0)
    gap = direction_gap(student_rank.gather(1, cols), teacher_rank.gather(1, cols), direction)
    gap = gap.masked_fill((previous < 0) | (gap <= 0), -1)
    values, order = gap.topk(k, dim=1)
    return previous.gather(1, order).masked_fill_(values <= 0, -1)


def soft_label_bce(logits: torch.Tensor, target_scores: torch.Tensor, mask: torch.Tensor,
                   temperature: float, count: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of ``logits / T`` to the soft labels
    ``p = sigmoid(target_scores / T)``, averaged over the ``mask``ed entries,
    less the labels' own entropy ``H(p)``: the value is the binary KL
    divergence (0 at a perfect match, so that its fall shows), the gradient
    that of the cross-entropy (``H(p)`` does not depend on ``logits``).
    ``count``: the entries to average over (default: the masked ones; under
    data-parallel training, those of all the processes' shares)."""
    targets = torch.sigmoid(target_scores / temperature)
    losses = F.binary_cross_entropy_with_logits(logits / temperature, targets, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(target_scores / temperature, targets, reduction="none")
    count = mask.sum() if count is None else count
    return ((losses - entropy) * mask).sum() / count.clamp_min(1)


def drop_repeats(cols: torch.Tensor) -> torch.Tensor:
    """``cols`` (``[B, M]``, -1 padded) with -1 in place of a column already
    listed earlier in its row; the order is kept."""
    ordered, order = cols.sort(dim=1, stable=True)
    repeat = torch.zeros_like(cols, dtype=torch.bool)
    repeat[:, 1:] = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    return cols.masked_fill(torch.zeros_like(repeat).scatter_(1, order, repeat), -1)


def _pad_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Column lists side by side, -1 padding moved to the end of each row."""
    joined = torch.cat(parts, dim=1)
    order = (joined < 0).to(torch.int8).argsort(dim=1, stable=True)
    return joined.gather(1, order)


# --------------------------------------------------------------- the methods

class BD(Distillation):
    """Bidirectional distillation: the student learns the teacher's soft labels
    on the items the teacher ranks much higher, the teacher the student's on
    the items the student ranks higher; both models train."""

    name = "bd"
    Options: ClassVar[type[MethodOptions]] = BDOptions
    trains_teacher = True
    needs_rankings = False
    co_trained_names = ("teacher",)

    def __init__(self, context: DistillContext, teacher: Recommender | None = None, rankings=None,
                 options: MethodOptions | None = None) -> None:
        if teacher is None:
            raise ConfigError(f"method {self.name!r} needs a teacher (--teacher)")
        if not callable(getattr(teacher, "loss", None)):
            raise ConfigError(f"method {self.name!r} trains the teacher: it must have a loss(users, pos_items, "
                              "neg_items), like rankdistill's models")
        # A copy: the teacher trains here, and the caller's (shared by the
        # runs of a comparison) must stay as it was.
        teacher = copy.deepcopy(teacher)
        super().__init__(context, teacher, rankings, options)
        o = self.options
        if o.teacher_init == "fresh":
            self.teacher = self._fresh_teacher()
        elif o.teacher_dim and o.teacher_dim != self.teacher.dim:
            raise ConfigError(f"option teacher_dim={o.teacher_dim} needs teacher_init=fresh "
                              f"(the given teacher has dim {self.teacher.dim})")
        self.teacher.to(context.device).requires_grad_(True).train()
        interactions = context.interactions
        self._indptr, self._indices = interactions.csr("user")
        # Per direction: this round's new items and the retained ones
        # (iBD), [n_users, *] -1 padded.
        empty = torch.empty((interactions.n_users, 0), dtype=torch.int64, device=context.device)
        self.sets: dict[str, dict[str, torch.Tensor]] = {d: {"new": empty, "retained": empty} for d in DIRECTIONS}
        self.draw = 0  # which of the round's draws the current epoch distils

    # ---- options read the same way by BD and iBD
    def direction_weights(self) -> dict[str, float]:
        return {"ts": self.options.lambda_ts, "st": self.options.lambda_st}

    def retain_limit(self) -> int:
        return 0

    def draws_per_round(self) -> int:
        o = self.options
        return -(-o.update_every // o.redraw_every) if o.redraw_every else 1

    def _fresh_teacher(self) -> Recommender:
        config = {**self.teacher.config(), "dim": self.options.teacher_dim or self.teacher.dim}
        csr = tuple(t.cpu() for t in self.context.interactions.csr("user"))
        with torch.random.fork_rng(devices=[]):  # its own seed; the global generator is left as it was
            torch.manual_seed(self.context.seed + 1)
            return build_model(config, train=csr)

    def parameters(self) -> Iterable[nn.Parameter]:
        return self.teacher.parameters()

    def co_trained(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher}

    def refresh(self, epoch: int, *, batches: int | None = None) -> None:
        self._start_epoch(batches)
        o = self.options
        if epoch % o.update_every == 0:
            self.resample(epoch)
        self.draw = (epoch % o.update_every) // o.redraw_every if o.redraw_every else 0

    @torch.no_grad()
    def resample(self, epoch: int) -> dict[str, torch.Tensor]:
        """One sampling round: both models' catalogue ranks, block by block of
        users, iBD's retained items, then the new samples: ``draws_per_round``
        independent draws from the same weights, side by side.

        Under torchrun each process ranks and draws for its share of the users
        (``distributed.row_shard``) and the sets are gathered. Each direction
        and draw has its stream (``DistillContext.row_streams``), and a
        user's draw depends on it and the user's row alone (``first_row``),
        so the round is the same however the users are split into blocks and
        processes."""
        o, device = self.options, self.context.device
        student, teacher = self.student, self.teacher
        n_users, n_items = self.context.interactions.n_users, self.context.interactions.n_items
        limit, draws = self.retain_limit(), self.draws_per_round()
        streams = self.context.row_streams(len(DIRECTIONS) * draws)  # direction d, draw j: d * draws + j
        out = {d: {"new": [], "retained": []} for d in DIRECTIONS}
        # integer sums: the same whatever the blocks and processes
        stats = torch.zeros(len(DIRECTIONS), 4, dtype=torch.int64, device=device)  # gap, drawn, previous, kept
        first, last = distributed.row_shard(n_users)
        # About a quarter of the budget per [block, n_items] matrix: two score,
        # two rank and one weight matrix live at once. A process without users
        # runs one empty block, which gives its (empty) sets their widths.
        blocks = list(row_blocks(last - first, 4 * n_items)) or [(0, 0)]
        with evaluation_mode(student), evaluation_mode(teacher):
            for start, stop in progress.bar(blocks, desc=f"{self.name} round: both models' ranks", unit="block"):
                start, stop = first + start, first + stop
                rows = torch.arange(start, stop, device=device)
                exclude = csr_rows(self._indptr, self._indices, start, stop)
                student_rank = rank_positions(student.score_all(rows).float(), exclude=exclude)
                teacher_rank = rank_positions(teacher.score_all(rows).float(), exclude=exclude)
                observed = torch.zeros((stop - start, n_items), dtype=torch.bool, device=device)
                local = torch.repeat_interleave(torch.arange(stop - start, device=device), exclude[0].diff())
                observed[local, exclude[1]] = True
                for which, d in enumerate(DIRECTIONS):
                    # the round's draws may repeat an item: it is judged once
                    previous = drop_repeats(torch.cat([self.sets[d]["new"][start:stop],
                                                       self.sets[d]["retained"][start:stop]], 1))
                    kept = retain_uncorrected(previous, student_rank, teacher_rank, limit, direction=d)
                    excluded = observed.clone()
                    listed = kept >= 0
                    excluded[torch.nonzero(listed, as_tuple=True)[0], kept[listed]] = True
                    eps = o.eps_t if d == "ts" else o.eps
                    new = torch.cat([sample_discrepancies(
                        student_rank, teacher_rank, o.samples, direction=d, eps=eps, excluded=excluded,
                        generator=streams[which * draws + draw].clone_state(), first_row=start)
                        for draw in range(draws)], dim=1)
                    out[d]["new"].append(new)
                    out[d]["retained"].append(kept)
                    drawn = new >= 0
                    gap = direction_gap(student_rank.gather(1, new.clamp_min(0)),
                                        teacher_rank.gather(1, new.clamp_min(0)), d)
                    stats[which] += torch.stack([gap[drawn].sum(), drawn.sum(), (previous >= 0).sum(),
                                                 listed.sum()])
        (stats,) = distributed.sum_across([stats])
        for which, d in enumerate(DIRECTIONS):
            self.sets[d] = {key: distributed.gather_rows(torch.cat(parts), n_users) for key, parts in out[d].items()}
            gap, drawn, previous, kept = (float(v) for v in stats[which].tolist())
            # Mean gap (in ranks) of the new items; items per user and draw; for
            # iBD the share of the previous round's items whose discrepancy remained.
            self._log[f"{d}_sampled_gap"] = gap / max(drawn, 1.0)
            self._log[f"{d}_sampled_per_user"] = drawn / n_users / draws
            if limit and previous:
                self._log[f"{d}_uncorrected_share"] = kept / previous
                self._log[f"{d}_retained_per_user"] = kept / n_users
        return {}

    def distilled(self, direction: str) -> torch.Tensor:
        """``[n_users, *]`` the items each user distils in ``direction`` now
        (this epoch's draw, then the retained; -1 padding last)."""
        parts = self.sets[direction]
        new = parts["new"]
        if self.draws_per_round() > 1:
            width = new.shape[1] // self.draws_per_round()
            new = new[:, self.draw * width:(self.draw + 1) * width]
        return _pad_cat([new, parts["retained"]]) if parts["retained"].shape[1] else new

    def losses(self, model: Recommender, batch: Batch) -> dict[str, torch.Tensor]:
        if batch.pos_items is None or batch.neg_items is None:
            raise ConfigError(f"{self.name} trains the teacher on the batch: pass pos_items and neg_items")
        teacher, temperature = self.teacher, self.options.temperature
        # Under data-parallel training each process takes its share of the
        # batch's pairs (the teacher's loss, weighted as the trainer weighs
        # the student's) and of its rows; the terms average over the listed
        # entries of all the batch's rows, counted by every process alike.
        mine, share = distributed.pair_share(len(batch.users), self.schedule.shard)
        teacher_loss = (teacher.loss(batch.users[mine], batch.pos_items[mine], batch.neg_items[mine]) * share
                        if mine.stop > mine.start else torch.zeros((), device=batch.users.device))
        out = {"teacher_loss": teacher_loss}
        all_rows = self.schedule.rows("user", self.teacher.n_users, batch.users, share=False)
        rows = self.schedule.share("user", all_rows)
        weights = self.direction_weights()
        for d, learner, guide, name in (("ts", model, teacher, "bd_ts"), ("st", teacher, model, "bd_st")):
            if weights[d] <= 0:
                continue
            distilled = self.distilled(d)
            cols = distilled[rows]
            mask = cols >= 0
            cols = cols.clamp_min(0)
            logits = learner.score_items(rows, cols)
            with evaluation_mode(guide):  # the other model's prediction, without gradient or training noise
                targets = guide.score_items(rows, cols)
            count = (distilled[all_rows] >= 0).sum()
            out[name] = weights[d] * soft_label_bce(logits, targets, mask, temperature, count)
        return out

    # ---- exact resume: the teacher and the current samples
    def state_dict(self) -> dict[str, Any]:
        # copies of the dicts, whose entries the next round replaces (as DCD's)
        return {"teacher": self.teacher.state_dict(), "sets": {d: dict(parts) for d, parts in self.sets.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.sets = {d: dict(parts) for d, parts in state["sets"].items()}


class IBD(BD):
    """BD with feedback: uncorrected items of earlier rounds are distilled
    again (``retain``); ``gamma_ts``, ``gamma_st`` weight the directions."""

    name = "ibd"
    Options = IBDOptions

    def direction_weights(self) -> dict[str, float]:
        return {"ts": self.options.gamma_ts, "st": self.options.gamma_st}

    def retain_limit(self) -> int:
        return self.options.retain
