"""The interface every base recommender implements."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import row_blocks
from ..errors import ConfigError



class Recommender(nn.Module):
    """A scorer of (user, item) pairs with its own training loss.

    Teacher and student are the same class with a different ``dim``.
    Subclasses set ``name`` and implement ``score_items``, ``_score_all_block``,
    ``user_representation``, ``item_representation`` and ``loss``.
    """

    name: str = ""

    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        super().__init__()
        for label, value in (("n_users", n_users), ("n_items", n_items), ("dim", dim)):
            if int(value) < 1:
                raise ConfigError(f"{type(self).__name__}: {label} must be >= 1, got {value}")
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self.dim = int(dim)

    def config(self) -> dict[str, Any]:
        """Constructor arguments, enough to rebuild the model (see ``models.build_model``)."""
        return {"model": self.name, "n_users": self.n_users, "n_items": self.n_items, "dim": self.dim}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores ``[B]`` of the pairs ``(users[b], items[b])``."""
        return self.score_items(users, items[:, None])[:, 0]

    def score_items(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, M]`` of user ``users[b]`` against items ``items[b, :]``."""
        raise NotImplementedError

    def score_users(self, items: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, M]`` of item ``items[b]`` against users ``users[b, :]``
        (the item side); this default goes through ``score``."""
        pairs = self.score(users.reshape(-1), items.repeat_interleave(users.shape[1]))
        return pairs.view(users.shape)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, n_items]`` of every item for each user, computed in
        blocks of users whose temporaries stay within ``SCORE_ALL_BUDGET``."""
        return self._in_blocks(self._score_all_block, users, self.n_items, self._score_all_cost())

    def _score_all_cost(self) -> int:
        """Elements of the temporaries per user in ``_score_all_block``."""
        return self.n_items

    @property
    def scores_each_pair(self) -> bool:
        """Whether scoring the catalogue runs a network per (user, item) pair
        (NeuMF), which costs far more than a product of representations."""
        return self._score_all_cost() > self.n_items

    def _score_all_block(self, users: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score_all_users(self, items: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, n_users]`` of every user for each item (the item side
        of the item-side distillation methods), in blocks like ``score_all``."""
        return self._in_blocks(self._score_users_block, items, self.n_users, self._score_all_users_cost())

    def _score_all_users_cost(self) -> int:
        """Elements of the temporaries per item in ``_score_users_block``."""
        return self.n_users

    def _score_users_block(self, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _in_blocks(self, score_block, ids: torch.Tensor, width: int, cost_per_id: int) -> torch.Tensor:
        if len(ids) == 0:
            return torch.empty((0, width), device=self.device)
        blocks = [score_block(ids[start:stop]) for start, stop in row_blocks(len(ids), cost_per_id)]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)  # cat copies even one block

    def user_representation(self, users: torch.Tensor) -> torch.Tensor:
        """``[B, d]``: what a representation distillation method (DE) matches."""
        raise NotImplementedError

    def item_representation(self, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # Whether ``loss`` draws from torch's global generator: under torchrun such
    # a model trains replicated, since a share of a batch would draw otherwise.
    # (CDAE's corruption draws from ``noise_key`` instead.)
    draws_in_loss: bool = False
    # The training step's key, set by the trainer before each batch
    # (``(seed, model, step)``): what a model that draws at random in training
    # mode draws from, by pair, so that data-parallel processes draw alike.
    noise_key: tuple[int, ...] | None = None
    # The embedding tables indexed by the batch's users and by its items:
    # what ``embedding_l2`` (TrainConfig.l2) penalises.
    user_tables: tuple[str, ...] = ()
    item_tables: tuple[str, ...] = ()

    def use_sparse_gradients(self) -> list[nn.Parameter]:
        """From now on, training steps give row-sparse gradients to the
        model's embedding tables (for a lazy optimizer); returns them. Every
        parameter of the model must be among them."""
        raise ConfigError(f"{self.name} has no row-sparse gradients: the lazy Adam update needs a bpr model")

    def embedding_l2(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Sum over a batch of the squared norms of the embeddings it uses:
        each user's ``[B]`` row of every user table and each item's ``[B, k]``
        row of every item table (a user or item in several pairs counts each
        time, as in the usual per-batch form)."""
        if not (self.user_tables or self.item_tables):
            raise ConfigError(f"{self.name} has no embedding tables for an L2 on the batch's embeddings: "
                              "use weight decay")
        return (sum(getattr(self, name)(users).square().sum() for name in self.user_tables)
                + sum(getattr(self, name)(items).square().sum() for name in self.item_tables))

    def loss(self, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> torch.Tensor:
        """The model's own training loss on positives ``[B]`` and sampled
        negatives ``[B, k]`` (mean over the batch)."""
        raise NotImplementedError


def pointwise_bce(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits, label 1 for positives and 0 for
    negatives, averaged over all labelled pairs."""
    total = F.softplus(-pos_scores).sum() + F.softplus(neg_scores).sum()
    return total / (pos_scores.numel() + neg_scores.numel())
