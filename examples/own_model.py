"""Distil a model that rankdistill does not define, in a training loop of your own.

The model is a two-tower network written here (user tower: embedding -> MLP;
item tower: embedding -> MLP; score = dot product of the two towers' outputs;
the MLP is residual, ``v + MLP(v)``, which trains much faster on bare ids
than a plain one), trained by a plain PyTorch loop (BPR loss, one sampled
unobserved item per positive, Adam). The teacher is a bigger two-tower
trained first by the same loop. The small student is then trained three
times, from the same initialisation, on the same batches and negatives:
alone, with RRD and with DCD (the papers' options). rankdistill is used
through its public API only:

- ``rankdistill.InteractionMatrix``: the training interactions;
- ``rankdistill.EmbeddingScorer``: the towers as the scorer a method reads;
- ``rankdistill.compute_rankings``: the teacher's top-C lists (both sides);
- ``rankdistill.DistillContext`` and ``rankdistill.RRD`` / ``rankdistill.DCD``:
  ``refresh(epoch, batches=N)`` before each epoch, ``loss(users, pos_items,
  neg_items)`` added to the BPR loss of each batch.

The data is rankdistill's embedded synthetic set (2,000 users, 1,500 items),
split leave-one-out (always with seed 0; ``--seed`` seeds the models and the
draws); test H@5 on the sampled protocol (the held-out item among 499 sampled
unobserved items). Run from the repository root::

    python examples/own_model.py [--epochs 20] [--seed 0]

docs/library.md walks through the API step by step.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

import rankdistill
from rankdistill.data import synthetic
from rankdistill.evaluation import Evaluator
from rankdistill.split import leave_one_out

BATCH_SIZE = 1024
LR = 1e-2
TOP = 100  # C, the length of the teacher's lists
TEACHER = {"dim": 64, "hidden": 128}
STUDENT = {"dim": 8, "hidden": 16}


class Tower(nn.Module):
    """An id's vector: its embedding, then a residual two-layer MLP,
    ``v + W2 relu(W1 v + b1) + b2``."""

    def __init__(self, n_ids: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_ids, dim)
        nn.init.normal_(self.embedding.weight, std=0.01)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        vectors = self.embedding(ids)
        return vectors + self.mlp(vectors)


class TwoTower(nn.Module):
    """``score(u, i) = <user_tower(u), item_tower(i)>``."""

    def __init__(self, n_users: int, n_items: int, *, dim: int, hidden: int) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.user_tower = Tower(n_users, dim, hidden)
        self.item_tower = Tower(n_items, dim, hidden)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:  # [B] -> [B, dim]
        return self.user_tower(users)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:  # [B] -> [B, dim]
        return self.item_tower(items)

    # What the model's own loss and rankdistill's Evaluator read.
    def score_items(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[B, M]`` scores of user ``users[b]`` against items ``items[b, :]``."""
        item_vectors = self.item_vectors(items.reshape(-1)).view(*items.shape, -1)
        return (item_vectors * self.user_vectors(users)[:, None, :]).sum(-1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_vectors(users) @ self.item_vectors(torch.arange(self.n_items, device=users.device)).T

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def scorer_of(model: TwoTower) -> rankdistill.EmbeddingScorer:
    """The model as a ``rankdistill.Scorer``: its two towers, dot product."""
    return rankdistill.EmbeddingScorer(model.user_vectors, model.item_vectors, model.n_users, model.n_items,
                                       module=model)


def sample_negatives(users: torch.Tensor, observed_keys: torch.Tensor, n_items: int,
                     generator: torch.Generator) -> torch.Tensor:
    """One item per user, uniform among the items it has not interacted with
    (``observed_keys``: the sorted ``user * n_items + item`` of the training pairs)."""
    negatives = torch.randint(n_items, users.shape, generator=generator)
    while True:
        keys = users * n_items + negatives
        found = observed_keys[torch.searchsorted(observed_keys, keys).clamp_max(len(observed_keys) - 1)] == keys
        if not bool(found.any()):
            return negatives
        negatives[found] = torch.randint(n_items, (int(found.sum()),), generator=generator)


def bpr_loss(model: TwoTower, users: torch.Tensor, pos_items: torch.Tensor, neg_items: torch.Tensor) -> torch.Tensor:
    scores = model.score_items(users, torch.cat([pos_items[:, None], neg_items], dim=1))
    return -F.logsigmoid(scores[:, :1] - scores[:, 1:]).mean()


def train(model: TwoTower, users: torch.Tensor, items: torch.Tensor, *, epochs: int, seed: int,
          method: rankdistill.Distillation | None = None) -> TwoTower:
    """A plain BPR loop over the training pairs ``(users[j], items[j])``; with
    ``method``, its distillation terms join each batch's loss. The loop's
    shuffling and negatives come from its own generator (seeded with
    ``seed``), so every student sees the same batches and negatives."""
    generator = torch.Generator().manual_seed(seed)
    observed_keys = torch.unique(users * model.n_items + items)  # sorted
    params = list(model.parameters()) + (list(method.parameters()) if method is not None else [])
    optimizer = torch.optim.Adam(params, lr=LR)
    n_batches = math.ceil(len(users) / BATCH_SIZE)
    for epoch in range(epochs):
        if method is not None:
            method.refresh(epoch, batches=n_batches)  # the epoch's samples (and DCD's corrections)
        model.train()
        order = torch.randperm(len(users), generator=generator)
        epoch_users, epoch_items = users[order], items[order]
        epoch_negatives = sample_negatives(epoch_users, observed_keys, model.n_items, generator)[:, None]
        for b in range(n_batches):
            rows = slice(b * BATCH_SIZE, (b + 1) * BATCH_SIZE)
            batch = epoch_users[rows], epoch_items[rows], epoch_negatives[rows]
            loss = bpr_loss(model, *batch)
            if method is not None:
                loss = loss + sum(method.loss(*batch).values())  # {"rrd": ..., "ucd": ..., "icd": ...}
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def parameters_of(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def new_student(n_users: int, n_items: int, seed: int) -> TwoTower:
    torch.manual_seed(seed + 1)  # every student starts from the same weights
    return TwoTower(n_users, n_items, **STUDENT)


def arguments(description: str) -> argparse.Namespace:
    def count(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
        return int(text)

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--epochs", type=count, default=20, help="training epochs of every model (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the models' weights and every draw (default: 0)")
    return parser.parse_args()


class Data:
    """The embedded synthetic set, split leave-one-out: the training pairs
    ``(users[j], items[j])`` as tensors and as a ``rankdistill.InteractionMatrix``,
    and the test H@5 (sampled protocol) of a model."""

    def __init__(self) -> None:
        self.split = leave_one_out(synthetic(), seed=0)
        self.n_users, self.n_items = self.split.n_users, self.split.n_items
        self.users, self.items = torch.as_tensor(self.split.train.users), torch.as_tensor(self.split.train.items)
        self.interactions = rankdistill.InteractionMatrix.from_pairs(self.users, self.items, self.n_users,
                                                                     self.n_items)
        self.evaluator = Evaluator(self.split)

    def test_h5(self, model: TwoTower) -> float:
        return self.evaluator.evaluate(model, "test").means()["H@5"]


def train_teacher(data: Data, args: argparse.Namespace) -> TwoTower:
    torch.manual_seed(args.seed)
    teacher = train(TwoTower(data.n_users, data.n_items, **TEACHER), data.users, data.items, epochs=args.epochs,
                    seed=args.seed)
    print(f"teacher (two-tower dim {TEACHER['dim']}, {parameters_of(teacher):,} parameters): "
          f"test H@5 = {data.test_h5(teacher):.4f}", flush=True)
    return teacher


def students(data: Data, args: argparse.Namespace, rankings: rankdistill.TeacherRankings) -> None:
    """The student alone, then with RRD and with DCD (the papers' options),
    each from the same initial weights, batches and negatives."""
    student = train(new_student(data.n_users, data.n_items, args.seed), data.users, data.items,
                    epochs=args.epochs, seed=args.seed)
    print(f"student (two-tower dim {STUDENT['dim']}, {parameters_of(student):,} parameters) alone: "
          f"test H@5 = {data.test_h5(student):.4f}", flush=True)
    for name, method_class in (("RRD", rankdistill.RRD), ("DCD", rankdistill.DCD)):
        student = new_student(data.n_users, data.n_items, args.seed)
        context = rankdistill.DistillContext(scorer_of(student), data.interactions, seed=args.seed,
                                             epochs=args.epochs)
        method = method_class(context, rankings=rankings)  # or rankdistill.build_method("rrd", context, ...)
        train(student, data.users, data.items, epochs=args.epochs, seed=args.seed, method=method)
        print(f"student with {name}: test H@5 = {data.test_h5(student):.4f}", flush=True)


def start(description: str) -> tuple[argparse.Namespace, "Data", float]:
    """The command line, the data (announced) and the start time: what both examples begin with."""
    args = arguments(description)
    started = time.perf_counter()
    data = Data()
    print(f"synthetic data: {data.n_users} users, {data.n_items} items, {len(data.users)} training pairs; "
          f"{args.epochs} epochs, seed {args.seed}", flush=True)
    return args, data, started


def main() -> None:
    args, data, started = start(__doc__.split("\n\n")[0])
    teacher = train_teacher(data, args)
    # The teacher's top-C items of each user and top-C users of each item, training pairs left out.
    rankings = rankdistill.compute_rankings(scorer_of(teacher), data.interactions, top=TOP)
    students(data, args, rankings)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
