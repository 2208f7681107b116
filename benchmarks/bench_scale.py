"""Scale demonstration (DESIGN.md section 8): a synthetic catalogue of 10^6
items and 10^5 users, the teacher's top-500 lists, one DCD correction (both
sides) and item-sharded ranking, with one process or several under torchrun.

    python benchmarks/bench_scale.py [--users 100000 --items 1000000] [--save benchmarks/results/scale.md]
    torchrun --standalone --nproc_per_node 2 benchmarks/bench_scale.py [...]

The models are BPR embeddings drawn at random (ranking costs the same for a
trained model) and each user has ``--per-user`` random training items: no
[users, items] matrix is ever built (rankdistill.data.synthetic draws a dense
one and does not scale to this size). Reported per process: wall seconds of
each step, the peak resident memory during each step (Linux's VmHWM, reset
before it) and over the whole run; rank 0 prints and saves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rankdistill import DCD, DistillContext, InteractionMatrix, compute_rankings, distributed  # noqa: E402
from rankdistill.blocks import csr_rows, row_blocks  # noqa: E402
from rankdistill.distributed_items import shard_bounds, sharded_rank_positions  # noqa: E402
from rankdistill.models import BPR  # noqa: E402


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def resident_mb(field: str = "VmRSS") -> float:
    """This process's resident memory now (``VmRSS``) or at its peak since the
    last ``reset_peak`` (``VmHWM``), from Linux's /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak() -> None:
    """Start a new peak (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def random_bpr(n_users: int, n_items: int, dim: int, seed: int) -> BPR:
    torch.manual_seed(seed)
    model = BPR(n_users, n_items, dim)
    with torch.no_grad():
        model.user_emb.weight.normal_(0.0, 1.0)
        model.item_emb.weight.normal_(0.0, 1.0)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--per-user", type=int, default=20, help="training items per user")
    parser.add_argument("--teacher-dim", type=int, default=32)
    parser.add_argument("--student-dim", type=int, default=8)
    parser.add_argument("--top", type=int, default=500)
    parser.add_argument("--sharded-users", type=int, default=2_000,
                        help="users ranked against the item-sharded catalogue")
    parser.add_argument("--save", type=Path, help="append the results (Markdown) to this file; JSON beside it")
    args = parser.parse_args()
    distributed.init_from_environment("cpu")
    world, me = distributed.world_size(), distributed.rank()
    times: dict[str, float] = {}
    peaks: dict[str, float] = {}  # each step's peak resident memory (MB)

    @contextlib.contextmanager
    def step(name: str) -> Iterator[None]:
        reset_peak()
        start = time.perf_counter()
        yield
        times[name] = time.perf_counter() - start
        peaks[name] = resident_mb("VmHWM")

    generator = torch.Generator().manual_seed(0)
    users = torch.arange(args.users).repeat_interleave(args.per_user)
    items = torch.randint(args.items, (len(users),), generator=generator)
    interactions = InteractionMatrix.from_pairs(users, items, args.users, args.items)
    teacher = random_bpr(args.users, args.items, args.teacher_dim, seed=1)
    student = random_bpr(args.users, args.items, args.student_dim, seed=2)

    with step("teacher top-C lists (both sides)"):
        rankings = compute_rankings(teacher, interactions, args.top)

    context = DistillContext(student, interactions, generator=torch.Generator().manual_seed(0))
    method = DCD(context, teacher, rankings, DCD.Options(rows="batch", diagnose_every=0))
    with step("one DCD correction (both sides) + RRD samples"):
        method.refresh(0)  # epoch 0: RRD's samples and one correction, both sides

    # Item-sharded: each process holds its shard of the item embeddings only.
    first, last = shard_bounds(args.items, me, world)
    item_shard = teacher.item_emb.weight[first:last].detach().clone()
    rows = torch.arange(min(args.sharded_users, args.users))
    targets = rankings.items_of_user[rows]
    indptr, indices = interactions.csr("user")
    exclude = (indptr[:len(rows) + 1], indices[:int(indptr[len(rows)])])
    ranks = torch.empty_like(targets)
    with step(f"item-sharded ranks of {len(rows):,} users' top-{args.top}"), torch.no_grad():
        # blocks of rows whose [rows, shard] scores fit SCORE_ALL_BUDGET (2,000 x 10^6 scores are 8 GB)
        for start, stop in row_blocks(len(rows), last - first):
            scores_shard = teacher.user_emb.weight[rows[start:stop]] @ item_shard.T
            ranks[start:stop] = sharded_rank_positions(scores_shard, first, args.items,
                                                       targets[start:stop].clamp_min(0),
                                                       exclude=csr_rows(*exclude, start, stop))
    # The teacher's own lists rank their items near their positions (not exactly: a shard's matrix product
    # rounds differently from the whole catalogue's; tests/test_distributed_items.py checks exactness).
    positions = torch.arange(targets.shape[1]).expand_as(targets)
    assert float((ranks - positions).abs()[targets >= 0].float().mean()) < 0.05 * targets.shape[1]

    # resetting VmHWM resets ru_maxrss too (both read the same high-water mark): the run's peak is the steps' largest
    report = {"rank": me, "times": times, "step_peak_mb": peaks, "peak_mb": max([peak_mb(), *peaks.values()])}
    everyone = [report]
    if world > 1:
        everyone = [None] * world
        torch.distributed.all_gather_object(everyone, report)
    distributed.shutdown()
    if me != 0:
        return
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    lines = [f"### {args.users:,} users x {args.items:,} items, {len(users):,} interactions, {world} process(es) "
             f"(gloo, CPU), {machine}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", "",
             "| step | " + " | ".join(f"rank {r['rank']} s" for r in everyone) + " |",
             "|---|" + "---|" * len(everyone)]
    for step_name in times:
        lines.append(f"| {step_name} | " + " | ".join(f"{r['times'][step_name]:.1f}" for r in everyone) + " |")
    for step_name in times:
        lines.append(f"| peak resident memory during: {step_name} (MB) | "
                     + " | ".join(f"{r['step_peak_mb'][step_name]:,.0f}" for r in everyone) + " |")
    lines.append("| peak resident memory (MB) | " + " | ".join(f"{r['peak_mb']:,.0f}" for r in everyone) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        with open(args.save, "a") as f:
            f.write(text + "\n")
        with open(args.save.with_suffix(".json"), "a") as f:
            f.write(json.dumps({"users": args.users, "items": args.items, "world_size": world,
                                "machine": machine, "processes": everyone}) + "\n")


if __name__ == "__main__":
    main()
