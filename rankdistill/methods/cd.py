"""CD (Lee et al., ICDM 2019): collaborative distillation with rank-aware
sampling and the teacher's soft labels.

Every epoch, per user: K unobserved items drawn without replacement from the
teacher's top-C with ``p_r ∝ exp(-r/T)`` (r = teacher rank, 0 = top; the
sampler RRD uses for its interesting items). Each gets the soft label
``y = sigmoid(s_T / label_temperature)`` from the teacher's score (a
probability for the point-wise teachers; for a BPR teacher the sigmoid of its
score, which ``label_temperature`` > 1 softens). The student learns them by
binary cross-entropy on its logits, averaged over each user's K items and
over the batch's users, weighted by ``lambda_cd``.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F

from ..blocks import row_blocks
from ..errors import ConfigError
from ..scoring import Scorer
from .base import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Batch, Distillation, MethodOptions, evaluation_mode, option
from .rrd import sample_interesting

__all__ = ["CD", "CDOptions", "soft_labels"]

@dataclass
class CDOptions(MethodOptions):
    """K=10 sampled items per user, T=10 (the low end and the middle of the
    ranges K in 10..50, T in 1..20), lambda 1."""

    lambda_cd: float = option(1.0, NON_NEGATIVE)
    samples: int = option(10, AT_LEAST_ONE)
    temperature: float = option(10.0, POSITIVE)
    label_temperature: float = option(1.0, POSITIVE)


@torch.no_grad()
def soft_labels(teacher: Scorer, side, cols: torch.Tensor, label_temperature: float) -> torch.Tensor:
    """``[n_rows, K]`` ``sigmoid(teacher score / label_temperature)`` of each
    row's columns (padding gets 0: mask it)."""
    labels = torch.zeros(cols.shape, device=cols.device)
    with evaluation_mode(teacher):
        for start, stop in row_blocks(side.n_rows, 1, budget=1 << 16):  # rows of teacher scores at once
            rows = torch.arange(start, stop, device=cols.device)
            labels[rows] = torch.sigmoid(side.scores(teacher, rows, cols[rows]).float() / label_temperature)
    return labels.masked_fill_(cols < 0, 0.0)


class CD(Distillation):
    """``L = L_base + lambda_cd L_CD`` on the user side."""

    name = "cd"
    Options = CDOptions

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.teacher is None:
            raise ConfigError(f"method {self.name!r} needs the teacher (its scores are the soft labels)")
        self.items: torch.Tensor | None = None  # [n_users, K], this epoch's samples
        self.labels: torch.Tensor | None = None

    def resample(self, epoch: int) -> dict[str, torch.Tensor]:
        o, side = self.options, self.side("user")
        self.items = sample_interesting(side, o.samples, o.temperature, self.context.generator)
        self.labels = soft_labels(self.teacher, side, self.items, o.label_temperature)
        return {}

    def losses(self, model: Scorer, batch: Batch) -> dict[str, torch.Tensor]:
        side = self.side("user")
        if self.items is None:
            raise ConfigError(f"{self.name}: no samples yet: they are drawn by refresh(epoch, batches=...), "
                              "which must come before loss")
        rows = self.batch_rows(side, batch)
        cols = self.items[rows]
        valid = (cols >= 0).float()
        bce = F.binary_cross_entropy_with_logits(side.scores(model, rows, cols), self.labels[rows], reduction="none")
        per_row = (bce * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)
        return {"cd": self.options.lambda_cd * self.schedule.mean("user", per_row)}
