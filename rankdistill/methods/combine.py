"""Methods used together: ``combine(DE, RRD)`` is DE-RRD.

The combination is itself a ``Distillation``: one set of sides, one ``rows``
schedule and one diagnostic, and its members' samples (``resample``), loss
terms, logs, trainable parameters and checkpointed state in union. Its options
are one dataclass with the fields of all the members' options (each member
reads its own); two members may share a field only if they agree on its
default (``rows``, ``diagnose_every``, ``reduction``).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, ClassVar, Iterable

import torch
from torch import nn

from ..scoring import Scorer
from .base import Batch, DistillContext, Distillation, MethodOptions
from .rankings import TeacherRankings

__all__ = ["Combined", "combine"]


class Combined(Distillation):
    """The union of ``members`` (set by ``combine``). Each member is built with
    the combined options and no rankings of its own: it uses the combination's
    sides (attached once all are built) and its batch schedule."""

    members: ClassVar[tuple[type[Distillation], ...]] = ()

    def __init__(self, context: DistillContext, teacher: Scorer | None = None,
                 rankings: TeacherRankings | None = None, options: MethodOptions | None = None) -> None:
        super().__init__(context, teacher, rankings, options)  # the sides, once
        # No rankings of their own: only each member's own set-up (DE's experts).
        self.parts = [cls(context, teacher, None, self.options) for cls in self.members]
        for part in self.parts:
            part.sides = self.sides
            part.schedule = self.schedule  # one batch schedule for all members

    def resample(self, epoch: int) -> dict[str, torch.Tensor]:
        ranks: dict[str, torch.Tensor] = {}
        for part in self.parts:
            part._log = {}
            ranks.update(part.resample(epoch))
        return ranks

    def losses(self, model: Scorer, batch: Batch) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for part in self.parts:
            terms = part.losses(model, batch)
            clash = set(terms) & set(out)
            if clash:
                raise ValueError(f"{self.name}: members both add the loss term(s) {', '.join(sorted(clash))}")
            out.update(terms)
        return out

    def epoch_log(self) -> dict[str, float]:
        log = dict(self._log)  # the diagnostics
        for part in self.parts:
            log.update(part.epoch_log())  # what each member recorded in its resample
        return log

    def co_trained(self) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {}
        for part in self.parts:
            out.update(part.co_trained())
        return out

    @property
    def stopping_period(self) -> int:
        return max(part.stopping_period for part in self.parts)

    @property
    def splits_by_rows(self) -> bool:
        return all(part.splits_by_rows for part in self.parts)

    def parameters(self) -> Iterable[nn.Parameter]:
        return list(itertools.chain.from_iterable(part.parameters() for part in self.parts))

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for part, part_state in zip(self.parts, state["parts"], strict=True):
            part.load_state_dict(part_state)


def combined_options(name: str, classes: tuple[type[MethodOptions], ...]) -> type[MethodOptions]:
    """A dataclass inheriting every one of ``classes``; each field keeps the
    values it accepts, which ``MethodOptions.__post_init__`` checks."""
    seen: dict[str, Any] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.name in seen and seen[f.name] != f.default:
                raise TypeError(f"{name}: option {f.name!r} has the defaults {seen[f.name]!r} and {f.default!r} "
                                "in two members")
            seen[f.name] = f.default
    bases = tuple(dict.fromkeys(classes))  # a member's options may repeat
    return dataclasses.dataclass(type(f"{name}Options", bases, {"__doc__": " + ".join(c.__name__ for c in bases)}))


def combine(*methods: type[Distillation], name: str = "") -> type[Combined]:
    """A ``Distillation`` class that runs ``methods`` together."""
    if len(methods) < 2:
        raise TypeError("combine needs at least two methods")
    name = name or "+".join(m.name for m in methods)
    label = "".join(m.__name__ for m in methods)
    options = combined_options(label, tuple(m.Options for m in methods))
    # A member that trains the teacher (BD) keeps it unfrozen for all.
    trains_teacher = any(getattr(m, "trains_teacher", False) for m in methods)
    co_trained_names = tuple(dict.fromkeys(n for m in methods for n in m.co_trained_names))
    return type(label, (Combined,), {"name": name, "Options": options, "members": tuple(methods),
                                     "trains_teacher": trains_teacher, "co_trained_names": co_trained_names,
                                     "__doc__": f"{' + '.join(m.__name__ for m in methods)} together."})
