"""CDAE (Wu et al., WSDM 2016): a denoising auto-encoder of the user's item set
with a user-specific input node."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .base import Recommender, pointwise_bce


_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: splitmix64's increment
_M64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 torch stores."""
    value &= _M64
    return value - (1 << 64) if value >> 63 else value


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors: wrapping products, logical
    right shifts (an arithmetic shift, masked)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _signed(0xBF58476D1CE4E5B9)
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _signed(0x94D049BB133111EB)
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def keyed_uniform(key: tuple[int, ...], positions: torch.Tensor) -> torch.Tensor:
    """``[N]`` float32 uniforms in [0, 1) (24 bits), each a function of the
    integer ``key`` and its own ``positions[n]`` alone (a counter-based
    generator: splitmix64 of ``key`` folded with the position), so that any
    subset of the positions, in any order and on any process, gets the same
    values as the whole."""
    state = torch.zeros((), dtype=torch.int64)
    for part in key:
        state = _mix(state + _signed(int(part) * _GOLDEN))
    x = _mix(positions.to(torch.int64) * _signed(_GOLDEN) + state.to(positions.device))
    return ((x >> 40) & 0xFFFFFF).float() * (1.0 / (1 << 24))


class CDAE(Recommender):
    """``h_u = sigmoid(sum_{i in S~_u} W_i + V_u + b)`` where ``S~_u`` is the
    user's training items with each one dropped with probability
    ``corruption`` (and the kept ones scaled by ``1 / (1 - corruption)``) in
    training mode, and ``score(u, i) = <h_u, W'_i> + b'_i``. Trained with binary
    cross-entropy on the positives and sampled negatives.

    The corruption of a training step is a function of ``noise_key`` (which
    the trainer sets before each batch) and of each (user, item) pair alone:
    within a step every call sees the same corrupted input of a user, and the
    processes of a data-parallel run, each encoding its share of the batch,
    corrupt as one process would. Without a key (training by hand) each call
    draws a key from torch's global generator.

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
            key = self.noise_key if self.noise_key is not None else \
                tuple(torch.randint(1 << 62, (2,)).tolist())  # a draw of torch's global generator
            keep = keyed_uniform(key, flat) >= self.corruption  # flat: the pair's place in the training data
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
