"""What a distillation method needs of a model and of the data, and nothing more.

- ``Scorer``: a model as four scoring functions. rankdistill's own models
  (``rankdistill.models``) are scorers; ``EmbeddingScorer`` makes one of any
  pair of user and item embedding functions (a matrix factorisation, a
  two-tower network: anything whose score is a dot product).
- ``InteractionMatrix``: the observed (user, item) pairs, as CSR lists both
  ways (the items of each user, the users of each item) on one device.

Ids are 0-based: users ``0..n_users-1``, items ``0..n_items-1``. Column lists
(items per user, users per item) are int64 and padded with -1; scoring a -1
entry is never asked for (callers clamp and mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from .blocks import all_finite, row_blocks
from .errors import ConfigError

__all__ = ["EmbeddingScorer", "InteractionMatrix", "Scorer", "as_interactions", "check_fits"]


@runtime_checkable
class Scorer(Protocol):
    """A recommender as the methods see it (shapes with B rows):

    - ``score_items(users [B], items [B, M]) -> [B, M]``: user ``users[b]``
      against the items ``items[b, :]``;
    - ``score_users(items [B], users [B, M]) -> [B, M]``: the item side;
    - ``score_all(users [B]) -> [B, n_items]``: every item, for ranking;
    - ``score_all_users(items [B]) -> [B, n_users]``: every user, for the
      item side's ranking.

    Scores are floats, larger is better. The methods call these with gradients
    enabled on the student (its training terms) and under ``torch.no_grad`` for
    ranking. DE also needs ``user_representation(users) -> [B, d]`` and
    ``item_representation(items) -> [B, d]``.

    Optional: a model whose score is exactly a dot product may have
    ``embedding_tables() -> (users [n_users, d], items [n_items, d])`` with
    ``score(u, i) = <users[u], items[i]>``; the student's whole-catalogue ranks
    (DCD's corrections, RD, the discrepancy diagnostics) are then computed by
    ``ops.dot_rank_positions`` without a block of scores (``dot_product_tables``).
    """

    def score_items(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor: ...

    def score_users(self, items: torch.Tensor, users: torch.Tensor) -> torch.Tensor: ...

    def score_all(self, users: torch.Tensor) -> torch.Tensor: ...

    def score_all_users(self, items: torch.Tensor) -> torch.Tensor: ...


class EmbeddingScorer(nn.Module):
    """A ``Scorer`` of ``score(u, i) = <user_embeddings(u), item_embeddings(i)>``.

    Args:
        user_embeddings: ``users [B] -> [B, d]`` (an ``nn.Embedding``, a user
            tower, a bound method of your model).
        item_embeddings: ``items [B] -> [B, d]``.
        n_users, n_items: the sizes of the id ranges.

    ``score_all``/``score_all_users`` embed the whole other side once per call
    and multiply in blocks of rows within ``SCORE_ALL_BUDGET``. If the
    functions belong to an ``nn.Module``, pass it as ``module``: its
    ``train()``/``eval()`` state then follows this scorer's (ranking runs in
    evaluation mode, without dropout).
    """

    def __init__(self, user_embeddings: Callable[[torch.Tensor], torch.Tensor],
                 item_embeddings: Callable[[torch.Tensor], torch.Tensor], n_users: int, n_items: int, *,
                 module: nn.Module | None = None) -> None:
        super().__init__()
        if int(n_users) < 1 or int(n_items) < 1:
            raise ConfigError(f"EmbeddingScorer needs n_users, n_items >= 1, got {n_users}, {n_items}")
        self.user_embeddings, self.item_embeddings = user_embeddings, item_embeddings
        self.n_users, self.n_items = int(n_users), int(n_items)
        self.module = module  # registered as a submodule: train()/eval() reach it

    @property
    def device(self) -> torch.device:
        """Where the embeddings live: the first parameter of ``module`` (or of
        ``user_embeddings`` if it is a module); the CPU otherwise."""
        for source in (self.module, self.user_embeddings):
            if isinstance(source, nn.Module):
                for p in source.parameters():
                    return p.device
        return torch.device("cpu")

    def user_representation(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_embeddings(users)

    def item_representation(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_embeddings(items)

    def score_items(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        item_vectors = self.item_embeddings(items.reshape(-1)).view(*items.shape, -1)
        return (item_vectors * self.user_embeddings(users)[:, None, :]).sum(-1)

    def score_users(self, items: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        user_vectors = self.user_embeddings(users.reshape(-1)).view(*users.shape, -1)
        return (user_vectors * self.item_embeddings(items)[:, None, :]).sum(-1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return _all_products(self.user_embeddings, users, self.item_embeddings, self.n_items)

    def score_all_users(self, items: torch.Tensor) -> torch.Tensor:
        return _all_products(self.item_embeddings, items, self.user_embeddings, self.n_users)

    def embedding_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every user's and every item's embedding: ``score(u, i) = <users[u], items[i]>``."""
        device = self.device
        return (self.user_embeddings(torch.arange(self.n_users, device=device)),
                self.item_embeddings(torch.arange(self.n_items, device=device)))


def dot_product_tables(model: Scorer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(users [n_users, d], items [n_items, d])`` of a dot-product model
    (its optional ``embedding_tables()``, see ``Scorer``), detached, as float32
    or float64; None for any other model."""
    tables = getattr(model, "embedding_tables", None)
    if tables is None:
        return None
    with torch.no_grad():
        users, items = (t.detach() for t in tables())
    if users.dtype not in (torch.float32, torch.float64) or users.dtype != items.dtype:
        users, items = users.float(), items.float()
    return users, items


def finite_dot_product_tables(model: Scorer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``dot_product_tables(model)`` when every score they give is finite: the
    tables are finite and no dot product can overflow float32 (the largest
    norms' product stays below half its maximum). None otherwise, and for
    models that are not dot products: callers then score blocks, which find
    and report the NaN or infinite scores themselves."""
    tables = dot_product_tables(model)
    if tables is None or not all(all_finite(table) for table in tables):
        return None
    largest = [float(table.norm(dim=1).max()) if len(table) else 0.0 for table in tables]
    return tables if largest[0] * largest[1] < torch.finfo(torch.float32).max / 2 else None


def _all_products(row_embeddings, rows: torch.Tensor, col_embeddings, n_cols: int) -> torch.Tensor:
    columns = col_embeddings(torch.arange(n_cols, device=rows.device))
    return torch.cat([row_embeddings(rows[start:stop]) @ columns.T
                      for start, stop in row_blocks(len(rows), n_cols)] or
                     [columns.new_empty((0, n_cols))])


@dataclass(frozen=True, eq=False)
class InteractionMatrix:
    """The observed (user, item) pairs, both ways, on one device.

    ``user_indptr [n_users+1], user_items [nnz]``: user u's items, ascending,
    are ``user_items[user_indptr[u]:user_indptr[u+1]]``; ``item_indptr
    [n_items+1], item_users [nnz]`` the same for each item's users. int64.
    """

    n_users: int
    n_items: int
    user_indptr: torch.Tensor
    user_items: torch.Tensor
    item_indptr: torch.Tensor
    item_users: torch.Tensor

    @classmethod
    def from_pairs(cls, users, items, n_users: int, n_items: int,
                   device: torch.device | str | None = None) -> "InteractionMatrix":
        """From two equal-length arrays (or tensors) of ids; repeated pairs count once."""
        users = np.asarray(torch.as_tensor(users).cpu(), dtype=np.int64).reshape(-1)
        items = np.asarray(torch.as_tensor(items).cpu(), dtype=np.int64).reshape(-1)
        n_users, n_items = int(n_users), int(n_items)
        if users.shape != items.shape:
            raise ConfigError(f"users and items must have the same length, got {len(users)} and {len(items)}")
        for label, ids, n in (("user", users, n_users), ("item", items, n_items)):
            if n < 1:
                raise ConfigError(f"n_{label}s must be >= 1, got {n}")
            if ids.size and (ids.min() < 0 or ids.max() >= n):
                raise ConfigError(f"{label} ids must lie in [0, {n}), got [{ids.min()}, {ids.max()}]")
        keys = np.unique(users * n_items + items)
        users, items = keys // n_items, keys % n_items
        user_side = _csr(users, items, n_users, n_items)
        item_side = _csr(items, users, n_items, n_users)
        device = torch.device(device) if device is not None else torch.device("cpu")
        return cls(n_users, n_items, *(torch.as_tensor(a, device=device) for a in (*user_side, *item_side)))

    @classmethod
    def from_csr(cls, indptr, indices, n_items: int,
                 device: torch.device | str | None = None) -> "InteractionMatrix":
        """From the items of each user as CSR (``indptr [n_users+1]``, ``indices``)."""
        indptr = np.asarray(torch.as_tensor(indptr).cpu(), dtype=np.int64)
        indices = np.asarray(torch.as_tensor(indices).cpu(), dtype=np.int64)
        if indptr.ndim != 1 or len(indptr) < 2 or indptr[0] != 0 or indptr[-1] != len(indices) or (
                np.diff(indptr) < 0).any():
            raise ConfigError("indptr must be a non-decreasing 1-D array from 0 to len(indices), "
                              "with one entry per user and one more")
        users = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        return cls.from_pairs(users, indices, len(indptr) - 1, n_items, device)

    @property
    def device(self) -> torch.device:
        return self.user_indptr.device

    def csr(self, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indptr, indices)`` of ``side``: ``"user"`` (items per user) or ``"item"`` (users per item)."""
        if side == "user":
            return self.user_indptr, self.user_items
        if side == "item":
            return self.item_indptr, self.item_users
        raise ValueError(f"side must be 'user' or 'item', got {side!r}")

    def to(self, device: torch.device | str) -> "InteractionMatrix":
        return InteractionMatrix(self.n_users, self.n_items, *(t.to(device) for t in (
            self.user_indptr, self.user_items, self.item_indptr, self.item_users)))


def _csr(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(rows * n_cols + cols, kind="stable")
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, cols[order]


def as_interactions(data, device: torch.device | str | None = None) -> InteractionMatrix:
    """An ``InteractionMatrix`` from one, from ``rankdistill.data.Interactions``
    or from a ``Split`` (its training interactions)."""
    if isinstance(data, InteractionMatrix):
        return data if device is None else data.to(device)
    train = getattr(data, "train", data)  # a Split's training part
    if hasattr(train, "users") and hasattr(train, "items") and hasattr(train, "n_items"):
        return InteractionMatrix.from_pairs(train.users, train.items, train.n_users, train.n_items, device)
    raise ConfigError(f"interactions must be an InteractionMatrix, an Interactions or a Split, "
                      f"got {type(data).__name__} (use InteractionMatrix.from_csr for a CSR pair)")


def check_fits(role: str, model: Any, interactions: InteractionMatrix) -> None:
    """A ``ConfigError`` where ``model`` (the ``role``: "student", "teacher")
    declares sizes (``n_users``, ``n_items``) other than the interactions'."""
    sizes = (getattr(model, "n_users", interactions.n_users), getattr(model, "n_items", interactions.n_items))
    if sizes != (interactions.n_users, interactions.n_items):
        raise ConfigError(f"the {role} is for {sizes[0]} users x {sizes[1]} items, the interactions have "
                          f"{interactions.n_users} x {interactions.n_items}")
