"""The distillation methods, by name.

Each name is a method class and a preset of its options; the DCD paper's
ablations and the authors'-code mode are presets of DCD. ``build_method``
makes one from a name, the context it runs in, the teacher, its rankings and
option overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..scoring import Scorer
from .base import DistillContext, Distillation, MethodOptions
from .bd import BD, IBD
from .cd import CD
from .dcd import DCD
from .de import DE, DERRD
from .rankings import DEFAULT_TOP, TeacherRankings, compute_rankings, load_or_compute_rankings
from .rd import RD
from .rrd import RRD

__all__ = ["BD", "CD", "DCD", "DE", "DERRD", "DEFAULT_TOP", "IBD", "METHODS", "RD", "RRD", "DistillContext",
           "Distillation", "MethodOptions", "MethodSpec", "TeacherRankings", "build_method", "compute_rankings",
           "load_or_compute_rankings", "method_options"]


@dataclass(frozen=True)
class MethodSpec:
    cls: type[Distillation]
    description: str
    preset: dict[str, Any] = field(default_factory=dict)


METHODS: dict[str, MethodSpec] = {
    "student": MethodSpec(Distillation, "the plain student (no distillation; the baseline)"),
    "rrd": MethodSpec(RRD, "RRD: relaxed ranking distillation on the user side"),
    "ir-rrd": MethodSpec(RRD, "IR-RRD: RRD on the item side only",
                         {"lambda_rrd": 0.0, "lambda_ir": 5e-4}),
    "rrd+ir-rrd": MethodSpec(RRD, "RRD on the user and the item side", {"lambda_ir": 5e-4}),
    "dcd": MethodSpec(DCD, "DCD: RRD with user- and item-side discrepancy correction"),
    "dcd-no-correction": MethodSpec(DCD, "DCD w/o correction: RRD plus item-side RRD",
                                    {"lambda_ucd": 0.0, "lambda_icd": 0.0, "lambda_ir": 1e-3}),
    "dcd-no-item": MethodSpec(DCD, "DCD w/o item-side correction", {"lambda_icd": 0.0}),
    "dcd-no-user": MethodSpec(DCD, "DCD w/o user-side correction", {"lambda_ucd": 0.0}),
    "dcd-no-sampling": MethodSpec(DCD, "DCD w/o sampling: the M largest discrepancies", {"sampling": False}),
    "dcd-code": MethodSpec(DCD, "DCD as in the authors' code: ranks within the top-C, correction every 3 epochs",
                           {"rank_scope": "candidates", "correct_every": 3}),
    "rd": MethodSpec(RD, "RD: the teacher's top-K items as weighted extra positives"),
    "cd": MethodSpec(CD, "CD: soft labels of the teacher on items sampled by its ranking"),
    "de": MethodSpec(DE, "DE: experts reconstruct the teacher's representations from the student's"),
    "de-rrd": MethodSpec(DERRD, "DE-RRD: DE and RRD together"),
    "bd": MethodSpec(BD, "BD: teacher and student trained together, each learning the other's soft labels "
                         "on rank-discrepancy samples"),
    "ibd": MethodSpec(IBD, "iBD: BD plus feedback, uncorrected items of earlier rounds distilled again"),
}


def method_options(name: str, overrides: dict[str, Any] | None = None) -> MethodOptions:
    """The options of method ``name``: its defaults, its preset, then ``overrides``."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    spec = METHODS[name]
    return spec.cls.Options.from_dict({**spec.preset, **(overrides or {})})


def build_method(name: str, context: DistillContext, teacher: Scorer | None = None,
                 rankings: TeacherRankings | None = None, overrides: dict[str, Any] | None = None) -> Distillation:
    """Method ``name`` (see ``METHODS``: presets and ablations included) with
    its options (defaults, preset, then ``overrides``), in ``context``."""
    options = method_options(name, overrides)
    spec = METHODS[name]
    if spec.cls is not Distillation and rankings is None and spec.cls.needs_rankings:
        raise ConfigError(f"method {name!r} needs the teacher's rankings (--teacher)")
    method = spec.cls(context, teacher, rankings, options)
    method.name = name
    return method
