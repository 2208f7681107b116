"""CDAE (Wu et al., WSDM 2016): a denoising auto-encoder of the user's item set
with a user-specific input node."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import Recommender, pointwise_bce


class CDAE(Recommender):
    """``h_u = sigmoid(sum_{i in S~_u} W_i + V_u + b)`` where ``S~_u`` is the
    user's training items with each one dropped with probability
    ``corruption`` (and the kept ones scaled by ``1 / (1 - corruption)``) in
    training mode, and ``score(u, i) = <h_u, W'_i> + b'_i``. Trained with binary
    cross-entropy on the positives and sampled negatives.

    The model needs each user's training items: pass them as CSR
    ``train=(indptr, indices)``; they are buffers, not parameters, and are not
    saved in ``state_dict`` (they come from the split).
    """

    name = "cdae"
    # the user node and the output item embeddings (the input ones are summed over a history)
    user_tables, item_tables = ("user_node",), ("item_out",)

    def __init__(self, n_users: int, n_items: int, dim: int = 20, *,
                 train: tuple[torch.Tensor, torch.Tensor] | None = None, corruption: float = 0.5) -> None:
        super().__init__(n_users, n_items, dim)
        if train is None:
            raise ConfigError("CDAE needs the training interactions: train=(indptr, indices)")
        if not 0.0 <= corruption < 1.0:
            raise ConfigError(f"CDAE corruption must be in [0, 1), got {corruption}")
        indptr, indices = (torch.as_tensor(x, dtype=torch.int64) for x in train)
        if indptr.shape != (self.n_users + 1,):
            raise ConfigError(f"CDAE: indptr must have n_users + 1 = {self.n_users + 1} entries")
        self.corruption = float(corruption)
        self.draws_in_loss = self.corruption > 0
        self.register_buffer("train_indptr", indptr, persistent=False)
        self.register_buffer("train_indices", indices, persistent=False)
        self.item_in = nn.EmbeddingBag(self.n_items, self.dim, mode="sum")
        self.user_node = nn.Embedding(self.n_users, self.dim)
        self.hidden_bias = nn.Parameter(torch.zeros(self.dim))
        self.item_out = nn.Embedding(self.n_items, self.dim)
        self.item_out_bias = nn.Embedding(self.n_items, 1)
        for emb in (self.item_in, self.user_node, self.item_out):
            nn.init.normal_(emb.weight, std=0.01)
        nn.init.zeros_(self.item_out_bias.weight)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "corruption": self.corruption}

    def hidden(self, users: torch.Tensor) -> torch.Tensor:
        """``h_u`` ``[B, d]``; corrupted input in training mode only."""
        starts = self.train_indptr[users]
        lengths = self.train_indptr[users + 1] - starts
        offsets = torch.cumsum(lengths, 0) - lengths
        total = int(lengths.sum())
        # position of the j-th item of the b-th bag in train_indices
        flat = torch.arange(total, device=users.device) + torch.repeat_interleave(starts - offsets, lengths)
        weights = None
        if self.training and self.corruption > 0:
            keep = torch.rand(total, device=users.device) >= self.corruption
            weights = keep.float() / (1.0 - self.corruption)
        bags = self.item_in(self.train_indices[flat], offsets, per_sample_weights=weights)
        return torch.sigmoid(bags + self.user_node(users) + self.hidden_bias)

    def _decode(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.item_out(items), hidden[:, :, None])[:, :, 0] + self.item_out_bias(items)[..., 0]

    def score_items(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self._decode(self.hidden(users), items)

    def _score_all_block(self, users: torch.Tensor) -> torch.Tensor:
        return self.hidden(users) @ self.item_out.weight.T + self.item_out_bias.weight[:, 0]

    def score_all_users(self, items: torch.Tensor) -> torch.Tensor:
        # Encode every user once; each item's column is then a product with its output vector.
        hidden = torch.cat([self.hidden(block) for block in torch.arange(self.n_users, device=items.device).split(4096)])
        return self.item_out(items) @ hidden.T + self.item_out_bias(items)

    def user_representation(self, users: torch.Tensor) -> torch.Tensor:
        return self.hidden(users)

    def item_representation(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_out(items)

    def loss(self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> torch.Tensor:
        # One (corrupted) encoding per distinct user in the batch.
        unique_users, inverse = torch.unique(users, return_inverse=True)
        hidden = self.hidden(unique_users)[inverse]
        scores = self._decode(hidden, torch.cat([pos_items[:, None], neg_items], dim=1))
        return pointwise_bce(scores[:, 0], scores[:, 1:])
