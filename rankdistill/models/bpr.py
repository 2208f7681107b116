"""BPR: matrix factorisation trained with the pairwise BPR loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import dot_lists
from .base import Recommender


class BPR(Recommender):
    """``score(u, i) = <p_u, q_i>``; loss ``-log sigmoid(s(u, pos) - s(u, neg))``."""

    name = "bpr"
    user_tables, item_tables = ("user_emb",), ("item_emb",)

    def __init__(self, n_users: int, n_items: int, dim: int = 20) -> None:
        super().__init__(n_users, n_items, dim)
        self.user_emb = nn.Embedding(self.n_users, self.dim)
        self.item_emb = nn.Embedding(self.n_items, self.dim)
        nn.init.normal_(self.user_emb.weight, std=0.01)
        nn.init.normal_(self.item_emb.weight, std=0.01)

    # Lists of items per user (and users per item) are scored by ops.dot_lists,
    # whose backward adds straight into the tables' gradients: the
    # distillation losses score ~10^4 pairs per batch this way.
    def score_items(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return _dot_lists(self.user_emb.weight, users, self.item_emb.weight, items, sparse=self.user_emb.sparse)

    def score_users(self, items: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        return _dot_lists(self.item_emb.weight, items, self.user_emb.weight, users, sparse=self.user_emb.sparse)

    def use_sparse_gradients(self) -> list[nn.Parameter]:
        # every lookup of a training step (scores, representations) gives row-sparse gradients
        self.user_emb.sparse = self.item_emb.sparse = True
        return [self.user_emb.weight, self.item_emb.weight]

    def embedding_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``score(u, i) = <user_emb[u], item_emb[i]>`` (see ``rankdistill.scoring.Scorer``)."""
        return self.user_emb.weight, self.item_emb.weight

    def _score_all_block(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_emb(users) @ self.item_emb.weight.T

    def _score_users_block(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_emb(items) @ self.user_emb.weight.T

    def user_representation(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_emb(users)

    def item_representation(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_emb(items)

    def loss(self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> torch.Tensor:
        scores = self.score_items(users, torch.cat([pos_items[:, None], neg_items], dim=1))
        return -F.logsigmoid(scores[:, :1] - scores[:, 1:]).mean()


# Without gradients, lists at least 1/64 of the catalogue are scored against
# the whole table (one matrix product, then a gather): several times faster
# than gathering [B, M, d] embeddings (sampled evaluation of a dim-200 BPR,
# 500 of 16,980 items: 0.27 s against 1.8 s per pass over 5,219 users).
_WHOLE_TABLE_FACTOR = 64


def _dot_lists(row_table: torch.Tensor, rows: torch.Tensor, col_table: torch.Tensor, cols: torch.Tensor, *,
               sparse: bool = False) -> torch.Tensor:
    """``[B, M]`` dot products of ``row_table[rows[b]]`` with ``col_table[cols[b, m]]``
    (``sparse``: the tables get row-sparse gradients)."""
    if cols.dim() == 2 and not torch.is_grad_enabled() and col_table.shape[0] <= _WHOLE_TABLE_FACTOR * cols.shape[1]:
        return (row_table.index_select(0, rows) @ col_table.T).gather(1, cols)
    if sparse:
        gathered, row = F.embedding(cols, col_table, sparse=True), F.embedding(rows, row_table, sparse=True)
        return (gathered * row[:, None, :]).sum(-1)
    return dot_lists(row_table, rows.long(), col_table, cols.long())  # ids of any integer dtype, as index_select takes
