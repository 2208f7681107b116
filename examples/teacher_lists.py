"""Distil from a teacher given only as its top-C lists.

A teacher served elsewhere (another process, another framework, a nightly
batch job) may hand over nothing but its ranked lists. Here the teacher of
``own_model.py`` (a two-tower, dim 64, trained by a plain PyTorch loop) scores
every user against every item once; its training pairs are masked, and
``torch.topk`` keeps its best C items of each user and best C users of each
item, best first, -1 where a row has fewer than C candidates. The teacher and
its score matrix are then deleted: RRD and DCD read only the lists
(``rankdistill.TeacherRankings(items_of_user, users_of_item)``) and the
student. The student (a two-tower, dim 8) is trained alone, with RRD and with
DCD, from the same initialisation, batches and negatives, by the plain loop of
``own_model.py``. Run from the repository root::

    python examples/teacher_lists.py [--epochs 20] [--seed 0]
"""

from __future__ import annotations

import gc
import time

import torch

import rankdistill
from own_model import TOP, start, students, train_teacher  # this folder's other example


def top_lists(scores: torch.Tensor, users: torch.Tensor, items: torch.Tensor,
              top: int) -> rankdistill.TeacherRankings:
    """The top-``top`` lists of a ``[n_users, n_items]`` score matrix, the
    training pairs ``(users[j], items[j])`` left out: int64, best first, -1
    padded."""
    scores = scores.float().clone()
    scores[users, items] = -torch.inf
    lists = []
    for matrix in (scores, scores.T):  # items of each user; users of each item
        values, columns = matrix.topk(min(top, matrix.shape[1]), dim=1)
        lists.append(columns.masked_fill_(values == -torch.inf, -1))  # fewer than C unobserved candidates
    return rankdistill.TeacherRankings(items_of_user=lists[0], users_of_item=lists[1])


def main() -> None:
    args, data, started = start(__doc__.split("\n\n")[0])

    # --- elsewhere: the teacher's side, which hands over its lists and nothing else.
    teacher = train_teacher(data, args)
    with torch.no_grad():
        scores = teacher.eval().score_all(torch.arange(data.n_users))  # [2000, 1500]: small enough here
    rankings = top_lists(scores, data.users, data.items, TOP)
    del teacher, scores
    gc.collect()
    print(f"teacher lists: items_of_user {list(rankings.items_of_user.shape)}, "
          f"users_of_item {list(rankings.users_of_item.shape)} (int64, best first); teacher deleted", flush=True)

    # --- here: the student's side, with the lists only.
    students(data, args, rankings)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
