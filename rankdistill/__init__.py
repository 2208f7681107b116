"""rankdistill: fast, exact ranking knowledge distillation for recommender systems."""

from . import ops, reference
from .ops import discrepancy_sample, rank_positions, relaxed_listmle, weighted_sample

__all__ = ["ops", "reference", "rank_positions", "weighted_sample", "discrepancy_sample", "relaxed_listmle"]
__version__ = "0.1.0"
