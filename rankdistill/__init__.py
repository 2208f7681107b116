"""rankdistill: fast, exact ranking knowledge distillation for recommender systems.

The public face, usable in any training loop (docs/library.md walks through it):

- the ops: ``rank_positions``, ``weighted_sample``, ``discrepancy_sample``,
  ``relaxed_listmle`` (``rankdistill.ops``; their plain PyTorch versions in
  ``rankdistill.reference``);
- what a method reads: ``Scorer`` (a model as four scoring functions; every
  ``rankdistill.models`` model is one, ``EmbeddingScorer`` adapts any pair of
  user/item embedding functions), ``InteractionMatrix`` (the training
  interactions as CSR both ways), ``TeacherRankings`` (the teacher's top-C
  lists; ``compute_rankings`` makes them from a teacher) and
  ``DistillContext`` (student, interactions, device, generator, seed, epochs);
- the methods: ``RD``, ``CD``, ``RRD``, ``DE``, ``DERRD``, ``DCD``, ``BD``,
  ``IBD`` (each with its ``Options``), and ``build_method(name, ...)`` for every
  name of ``METHODS`` (presets and ablations included). Each offers
  ``refresh(epoch, batches=...)``, ``loss(users, pos_items, neg_items)``,
  ``parameters()``, ``co_trained()``, ``state_dict()``/``load_state_dict()``.
"""

# Before the ops load the extension: it must be built, and against this torch
# (else a clear ImportError saying what to run; rankdistill/_build.py).
from ._build import check_extension as _check_extension

_check_extension()

from . import ops, reference  # noqa: E402
from .errors import ConfigError, DataError, RankdistillError, TrainingDiverged
from .methods import (BD, CD, DCD, DE, DERRD, IBD, METHODS, RD, RRD, DistillContext, Distillation, MethodOptions,
                      TeacherRankings, build_method, compute_rankings, method_options)
from .ops import discrepancy_sample, rank_positions, relaxed_listmle, weighted_sample
from .progress import log_to_stderr, show_progress
from .scoring import EmbeddingScorer, InteractionMatrix, Scorer

__all__ = [
    # ops
    "ops", "reference", "rank_positions", "weighted_sample", "discrepancy_sample", "relaxed_listmle",
    # what a method reads
    "Scorer", "EmbeddingScorer", "InteractionMatrix", "TeacherRankings", "compute_rankings", "DistillContext",
    # the methods
    "Distillation", "MethodOptions", "RD", "CD", "RRD", "DE", "DERRD", "DCD", "BD", "IBD", "METHODS", "build_method",
    "method_options",
    # what a run shows: its log lines, progress bars
    "log_to_stderr", "show_progress",
    # errors
    "RankdistillError", "ConfigError", "DataError", "TrainingDiverged",
]
__version__ = "0.1.0"
