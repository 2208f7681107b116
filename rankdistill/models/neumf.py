"""NeuMF (He et al., WWW 2017): a GMF tower and an MLP tower fused by one
output layer, trained with binary cross-entropy on sampled negatives."""

from __future__ import annotations

import torch
from torch import nn

from .base import Recommender, pointwise_bce


class NeuMF(Recommender):
    """GMF: ``p_u * q_i`` (dim d). MLP: ``[p'_u; q'_i]`` (2d) -> d -> d, ReLU.
    Output: ``w_gmf . gmf + w_mlp . mlp + b``.

    The first MLP layer is applied to the user and the item halves separately
    (``W [p; q] = W_u p + W_i q``), so scoring M items for a user costs
    ``O(M d^2)`` once per item instead of per pair for that layer.
    """

    name = "neumf"
    user_tables, item_tables = ("user_gmf", "user_mlp"), ("item_gmf", "item_mlp")

    def __init__(self, n_users: int, n_items: int, dim: int = 20) -> None:
        super().__init__(n_users, n_items, dim)
        d = self.dim
        self.user_gmf = nn.Embedding(self.n_users, d)
        self.item_gmf = nn.Embedding(self.n_items, d)
        self.user_mlp = nn.Embedding(self.n_users, d)
        self.item_mlp = nn.Embedding(self.n_items, d)
        for emb in (self.user_gmf, self.item_gmf, self.user_mlp, self.item_mlp):
            nn.init.normal_(emb.weight, std=0.01)
        self.mlp_user_in = nn.Linear(d, d)
        self.mlp_item_in = nn.Linear(d, d, bias=False)
        self.mlp_hidden = nn.Linear(d, d)
        self.out_gmf = nn.Linear(d, 1)
        self.out_mlp = nn.Linear(d, 1, bias=False)

    def _pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``users`` and ``items`` broadcast against each other (``[B, 1]`` and
        ``[B or 1, M]``, or the other way round)."""
        gmf = self.user_gmf(users) * self.item_gmf(items)
        hidden = torch.relu(self.mlp_user_in(self.user_mlp(users)) + self.mlp_item_in(self.item_mlp(items)))
        hidden = torch.relu(self.mlp_hidden(hidden))
        return (self.out_gmf(gmf) + self.out_mlp(hidden))[..., 0]

    def score_items(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self._pair_scores(users[:, None], items)

    def score_users(self, items: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        return self._pair_scores(users, items[:, None])

    def _score_all_cost(self) -> int:
        return self.n_items * self.dim * 3  # gmf product and two hidden layers per pair

    def _score_all_block(self, users: torch.Tensor) -> torch.Tensor:
        all_items = torch.arange(self.n_items, device=users.device)[None, :]
        return self._pair_scores(users[:, None], all_items)

    def _score_all_users_cost(self) -> int:
        return self.n_users * self.dim * 3

    def _score_users_block(self, items: torch.Tensor) -> torch.Tensor:
        # Every term is symmetric in its user and item halves: broadcast the other way.
        all_users = torch.arange(self.n_users, device=items.device)[None, :]
        return self._pair_scores(all_users, items[:, None])

    def user_representation(self, users: torch.Tensor) -> torch.Tensor:
        # Both towers' embeddings: the whole of what NeuMF knows about a user.
        return torch.cat([self.user_gmf(users), self.user_mlp(users)], dim=-1)

    def item_representation(self, items: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.item_gmf(items), self.item_mlp(items)], dim=-1)

    def loss(self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> torch.Tensor:
        scores = self.score_items(users, torch.cat([pos_items[:, None], neg_items], dim=1))
        return pointwise_bce(scores[:, 0], scores[:, 1:])
