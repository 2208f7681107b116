"""Item-sharded ranking (rankdistill.distributed_items) on 2 and 3 ``gloo``
processes on the CPU, against one process holding the whole score matrix:
``ops.rank_positions`` and a stable-sort top-C.

The workers are spawned processes that meet through a file store and talk over
the loopback interface only; every case is computed in one spawn per world
size (starting processes that import torch is the slow part), and a deadline
turns a hung or failed worker into a test failure.
"""

import datetime
import os
import re
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rankdistill import distributed, ops
from rankdistill.distributed_items import shard_bounds, sharded_rank_positions, sharded_top_columns

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="this torch build has no gloo backend")

WORKER_DEADLINE_S = 60
LOOPBACK = next((name for _, name in socket.if_nameindex() if name.startswith("lo")), "lo")


# ---------------------------------------------------------------------------
# Cases and their one-process answers.


def random_exclude(num_rows, n_items, generator):
    """A CSR exclusion list with empty rows, repeated ids and one row that
    excludes the whole catalogue (its top list is all padding)."""
    counts = torch.randint(0, n_items, (num_rows,), generator=generator)
    counts[::3] = 0
    rows = [torch.randint(0, n_items, (int(c),), generator=generator) for c in counts]
    rows[1] = torch.arange(n_items)
    indptr = torch.zeros(num_rows + 1, dtype=torch.long)
    indptr[1:] = torch.tensor([len(r) for r in rows]).cumsum(0)
    return indptr, torch.cat(rows).long()


def make_case(seed, n_items, world_size, *, dtype=torch.float32, num_rows=8, num_targets=12, top=4,
              exclude=True, reverse=False, given_target_scores=False, special=False):
    gen = torch.Generator().manual_seed(seed)
    # Integer-valued scores: many ties, broken by item id.
    scores = torch.randint(-3, 4, (num_rows, n_items), generator=gen).to(torch.float64)
    if dtype == torch.float64:
        # Values that differ only beyond float32 precision tie, as in one process.
        scores += torch.randint(0, 3, scores.shape, generator=gen) * 1e-12
    if special:
        scores[0, ::2] = -0.0  # ties with +0.0
        scores[2, 1] = torch.inf
        scores[3, :3] = -torch.inf
    scores = scores.to(dtype)
    targets = torch.randint(0, n_items, (num_rows, num_targets), generator=gen)
    targets[:, -1] = targets[:, 0]  # duplicate targets
    case = {"scores": scores, "targets": targets, "top": top, "exclude": None,
            "given_target_scores": given_target_scores,
            "shards": [shard_bounds(n_items, world_size - 1 - r if reverse else r, world_size)
                       for r in range(world_size)]}
    if exclude:
        indptr, indices = random_exclude(num_rows, n_items, gen)
        # excluded targets: the first target of each non-empty row
        for b in range(num_rows):
            if indptr[b + 1] > indptr[b]:
                targets[b, 0] = indices[indptr[b]]
        case["exclude"] = (indptr, indices)
    return case


def reference_top(scores, exclude, top):
    """Best first by float32 score, ties by ascending id (a stable sort), the
    excluded ids left out, -1 padded."""
    order = torch.sort(scores.float(), dim=1, descending=True, stable=True).indices.tolist()
    out = torch.full((scores.shape[0], top), -1, dtype=torch.long)
    for b, row in enumerate(order):
        excluded = set() if exclude is None else set(exclude[1][exclude[0][b]:exclude[0][b + 1]].tolist())
        kept = [i for i in row if i not in excluded][:top]
        out[b, :len(kept)] = torch.tensor(kept, dtype=torch.long)
    return out


def sharded_answers(case, rank):
    start, stop = case["shards"][rank]
    shard = case["scores"][:, start:stop]  # a strided view, as a slice of a bigger matrix would be
    target_scores = case["scores"].gather(1, case["targets"]) if case["given_target_scores"] else None
    ranks = sharded_rank_positions(shard, start, case["scores"].shape[1], case["targets"], target_scores,
                                   exclude=case["exclude"])
    top = sharded_top_columns(shard, start, case["top"], exclude=case["exclude"])
    return ranks, top


def assert_identical(case, answers):
    expected_ranks = ops.rank_positions(case["scores"], case["targets"], exclude=case["exclude"])
    expected_top = reference_top(case["scores"], case["exclude"], case["top"])
    for ranks, top in answers:  # every process holds the one-process result
        assert ranks.dtype == torch.long and torch.equal(ranks, expected_ranks)
        assert top.dtype == torch.long and torch.equal(top, expected_top)


WORLD_2_CASES = [
    make_case(0, 11, 2),  # n_items not divisible by 2
    make_case(1, 11, 2, reverse=True, given_target_scores=True, top=20),  # shards not in rank order; top > n_items
    make_case(2, 9, 2, dtype=torch.float64, top=9),
    make_case(3, 10, 2, dtype=torch.float16, exclude=False, num_targets=1),
    make_case(4, 7, 2, special=True, top=7),
    make_case(5, 40, 2, dtype=torch.bfloat16, num_rows=3, num_targets=30, top=25),
]
WORLD_3_CASES = [
    make_case(10, 2, 3, top=3),  # shards of widths 1, 1 and 0
    make_case(11, 2, 3, reverse=True, given_target_scores=True, top=1),
    make_case(12, 5, 3, dtype=torch.float64, special=True, top=5),
]


def nan_case():
    case = make_case(20, 10, 2, exclude=False)
    case["scores"][4, 7] = torch.nan  # in process 1's shard only, no target
    case["targets"][4] = 0
    return case


# ---------------------------------------------------------------------------
# The worker side.


def job_cases(rank, cases):
    return [sharded_answers(case, rank) for case in cases]


def job_nan(rank, cases):
    """Each process's error, as (type name, message), for each function."""
    case = cases[0]
    start, stop = case["shards"][rank]
    outcomes = []
    for call in (lambda: sharded_rank_positions(case["scores"][:, start:stop], start, 10, case["targets"]),
                 lambda: sharded_top_columns(case["scores"][:, start:stop], start, 3)):
        try:
            call()
            outcomes.append(None)
        except Exception as exc:  # recorded, to be checked by the test
            outcomes.append((type(exc).__name__, str(exc)))
    return outcomes


def job_fail_early(rank, cases):
    """Process 0 fails while process 1 hangs (past the deadline)."""
    if rank == 0:
        raise RuntimeError("worker 0 failed on purpose")
    time.sleep(2 * WORKER_DEADLINE_S)


def job_gather(rank, cases):
    """``distributed.gather_rows`` of each case's rows, in chunks of a few rows."""
    distributed.GATHER_CHUNK_BYTES = 100  # several all_gather calls per case
    out = []
    for whole in cases:
        start, stop = distributed.row_shard(len(whole))
        out.append(distributed.gather_rows(whole[start:stop].clone(), len(whole)))
    return out


JOBS = {"cases": job_cases, "nan": job_nan, "fail_early": job_fail_early, "gather": job_gather}


def _worker(rank, world_size, folder, job):
    os.environ["GLOO_SOCKET_IFNAME"] = LOOPBACK  # gloo's connections stay on the loopback interface
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=WORKER_DEADLINE_S // 2))
    try:
        result = JOBS[job](rank, torch.load(os.path.join(folder, "cases.pt"), weights_only=False))
        torch.save(result, os.path.join(folder, f"result-{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_workers(folder, world_size, job, cases):
    """Each process's result; a worker's exception is raised here (the others
    are ended), and a worker still running at the deadline fails the test."""
    folder.mkdir()
    torch.save(cases, folder / "cases.pt")
    context = mp.start_processes(_worker, args=(world_size, str(folder), job), nprocs=world_size, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + WORKER_DEADLINE_S
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                pytest.fail(f"the {world_size} workers of job {job!r} did not finish in {WORKER_DEADLINE_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join()
    return [torch.load(folder / f"result-{rank}.pt", weights_only=False) for rank in range(world_size)]


@pytest.fixture(scope="module")
def world_2(tmp_path_factory):
    return run_workers(tmp_path_factory.mktemp("world2") / "run", 2, "cases", WORLD_2_CASES)


# ---------------------------------------------------------------------------
# Tests.


@pytest.mark.parametrize("index", range(len(WORLD_2_CASES)))
def test_two_processes_equal_one(world_2, index):
    assert_identical(WORLD_2_CASES[index], [per_rank[index] for per_rank in world_2])


def test_three_processes_with_an_empty_shard_equal_one(tmp_path):
    assert [stop - start for start, stop in WORLD_3_CASES[0]["shards"]] == [1, 1, 0]
    results = run_workers(tmp_path / "run", 3, "cases", WORLD_3_CASES)
    for index, case in enumerate(WORLD_3_CASES):
        assert_identical(case, [per_rank[index] for per_rank in results])


def test_gather_rows_in_chunks_on_three_processes(tmp_path):
    # Shards of 0..3 rows (uneven, some empty), rows of 1 to 24 bytes: several chunks each.
    gen = torch.Generator().manual_seed(0)
    cases = [torch.randint(-9, 9, (n, *shape), generator=gen) for n in (0, 1, 2, 7, 10)
             for shape in ((), (3,), (1, 3))] + [torch.rand(8, 5, generator=gen).double()]
    for per_rank in run_workers(tmp_path / "run", 3, "gather", cases):
        assert len(per_rank) == len(cases)
        for got, whole in zip(per_rank, cases):
            assert got.dtype == whole.dtype and torch.equal(got, whole)


def test_nan_in_one_shard_raises_on_every_process(tmp_path):
    outcomes = run_workers(tmp_path / "run", 2, "nan", [nan_case()])
    for name, message in outcomes[1]:  # the process that holds the NaN: its own error
        assert name == "ValueError" and "NaN" in message
    for name, message in outcomes[0]:  # the other: told which process failed
        assert name == "RuntimeError" and "process(es) [1]" in message


def test_a_failed_worker_fails_the_test_without_hanging(tmp_path):
    started = time.monotonic()
    with pytest.raises(mp.ProcessRaisedException, match="failed on purpose"):
        run_workers(tmp_path / "run", 2, "fail_early", [])
    assert time.monotonic() - started < WORKER_DEADLINE_S


def test_one_process_without_a_group_is_the_op():
    case = make_case(30, 13, 1, special=True, top=6)
    assert not dist.is_initialized()
    assert_identical(case, [sharded_answers(case, 0)])


def test_empty_shapes():
    no_targets = torch.zeros(2, 0, dtype=torch.long)
    assert sharded_rank_positions(torch.zeros(0, 4), 0, 4, torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3)
    assert sharded_rank_positions(torch.zeros(2, 4), 0, 4, no_targets).shape == (2, 0)
    assert sharded_rank_positions(torch.zeros(2, 0), 0, 0, no_targets).shape == (2, 0)
    assert sharded_top_columns(torch.zeros(0, 4), 0, 3).shape == (0, 3)
    assert sharded_top_columns(torch.zeros(2, 3), 0, 0).shape == (2, 0)
    assert torch.equal(sharded_top_columns(torch.zeros(2, 0), 0, 3), torch.full((2, 3), -1))


def test_the_documented_example_runs():
    page = (Path(__file__).resolve().parents[1] / "docs" / "scaling.md").read_text()
    section = page.split("## Item-sharded ranking", 1)[1].split("\n## ", 1)[0]
    namespace = {}
    exec(compile(re.findall(r"```python\n(.*?)```", section, flags=re.S)[0], "docs/scaling.md", "exec"), namespace)
    assert namespace["ranks"].shape == (64, 50)


def test_shards_that_do_not_tile_the_catalogue_are_refused():
    scores = torch.zeros(2, 5)
    targets = torch.zeros(2, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="do not tile range"):
        sharded_rank_positions(scores[:, :4], 0, 5, targets)  # one process holding 4 of 5 items
    with pytest.raises(ValueError, match="do not tile range"):
        sharded_top_columns(scores[:, 1:], 1, 2)  # items 1..4 without item 0


@pytest.mark.parametrize("call, error, match", [
    (lambda s, t: sharded_rank_positions(s.long(), 0, 5, t), TypeError, "float32, float64"),
    (lambda s, t: sharded_rank_positions(s[0], 0, 5, t), TypeError, "2-D float tensor"),
    (lambda s, t: sharded_rank_positions(s, 0, 5, t.int()), TypeError, "targets must be a 2-D int64"),
    (lambda s, t: sharded_rank_positions(s, 0, 5, t[:1]), ValueError, "has 2 rows, targets and exclude have 1"),
    (lambda s, t: sharded_rank_positions(s, 1, 5, t), ValueError, r"\[1, 6\) is not within range\(5\)"),
    (lambda s, t: sharded_rank_positions(s, 0, 5, t + 5), IndexError, r"item ids in \[0, 5\)"),
    (lambda s, t: sharded_rank_positions(s, 0, 5.0, t), TypeError, "n_items must be an integer"),
    (lambda s, t: sharded_rank_positions(s, 0, 5, t, s[:, :2].double()), TypeError, "shard's dtype"),
    (lambda s, t: sharded_rank_positions(s, 0, 5, t, s[:, :1]), ValueError, r"target_scores must be \[2, 2\]"),
    (lambda s, t: sharded_rank_positions(s, 0, 5, t, exclude=(torch.tensor([0, 1]), torch.tensor([0]))),
     ValueError, "not a CSR list of 2 rows"),
    (lambda s, t: sharded_rank_positions(s, 0, 5, t, exclude=(torch.tensor([0, 0, 1]), torch.tensor([7]))),
     IndexError, "exclude's indices"),
    (lambda s, t: sharded_top_columns(s, 0, 2, exclude=(torch.tensor([0, 0, 1]), torch.tensor([7]))),
     IndexError, "exclude's indices"),
    (lambda s, t: sharded_rank_positions(s, 0, 5, t, exclude=torch.tensor([0, 1])), TypeError, "pair"),
    (lambda s, t: sharded_top_columns(s, 0, -1), ValueError, "top must be >= 0"),
    (lambda s, t: sharded_top_columns(s, 0, True), TypeError, "top must be an integer"),
    (lambda s, t: sharded_top_columns(s, 0, 2, group=object()), ValueError, "not initialised"),
    (lambda s, t: sharded_top_columns(s.int(), 0, 2), TypeError, "float32, float64"),
])
def test_bad_arguments_name_the_problem(call, error, match):
    scores = torch.arange(10.0).view(2, 5)
    targets = torch.tensor([[0, 4], [2, 2]])
    with pytest.raises(error, match=match):
        call(scores, targets)


def test_nan_in_one_process_raises_value_error():
    scores = torch.tensor([[0.0, torch.nan, 1.0]])
    with pytest.raises(ValueError, match="NaN"):
        sharded_rank_positions(scores, 0, 3, torch.tensor([[0]]))
    with pytest.raises(ValueError, match="NaN"):
        sharded_top_columns(scores, 0, 2)


@pytest.mark.parametrize("n_items, world_size", [(0, 3), (2, 3), (11, 2), (100, 7), (5, 1)])
def test_shard_bounds_tile_the_catalogue_evenly(n_items, world_size):
    bounds = [shard_bounds(n_items, rank, world_size) for rank in range(world_size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n_items
    assert all(stop == start for (_, stop), (start, _) in zip(bounds, bounds[1:]))
    widths = [stop - start for start, stop in bounds]
    assert max(widths) - min(widths) <= 1


@pytest.mark.parametrize("args", [(5, 2, 2), (5, -1, 2), (-1, 0, 1), (5, 0, 0)])
def test_shard_bounds_refuse_impossible_arguments(args):
    with pytest.raises(ValueError, match="shard_bounds needs"):
        shard_bounds(*args)
