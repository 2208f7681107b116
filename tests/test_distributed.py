"""Two processes under torchrun (gloo, CPU) give the one-process results: bit
for bit the row-sharded teacher rankings, DCD's corrections, RD's ranks, BD's
and iBD's sampling rounds, evaluation and replicated training; data-parallel training up to the order of
float additions; rank 0 alone writes and speaks."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rankdistill import distributed
from rankdistill.cli import main
from rankdistill.data import synthetic
from rankdistill.io import torch_load

from distill_setup import write_users_dat

TIMING = ("seconds", "refresh_seconds", "diagnostic_seconds")


def torchrun(*argv, cwd):
    """``rankdistill`` under ``torchrun --nproc_per_node 2`` (standalone, on this machine)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}  # traffic stays on the loopback
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "rankdistill", *map(str, argv)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    data = synthetic(150, 400, n_factors=6, mean_interactions=15, min_interactions=5, seed=2)
    users_dat = write_users_dat(data, folder / "users.dat")
    assert main(["teacher", "--data", str(users_dat), "--dim", "16", "--epochs", "3", "--lr", "0.02",
                 "--eval-candidates", "60", "--out", str(folder / "teacher"), "--no-progress", "-q"]) == 0
    return folder, users_dat


def _same_run(one, two, *, exact=True, flips=False):
    """Two runs with the same trajectory: bit for bit, or (``exact=False``, data
    parallel) up to float rounding. Data-parallel processes sum their shares of
    each batch's gradient in another order than one process adds them up: each
    step differs by float32 rounding (measured: loss terms within 2e-7
    relative, weights within 6e-7 absolute after 3 epochs of DCD). A rounding
    difference can swap two nearly tied scores in a ranking, so a metric may
    move by one user's hit: at most 1/users.

    ``flips``: RD's sampled ranks count score comparisons, and a rounding
    difference can flip one, which moves that user's weights by more than
    rounding (measured after one epoch: loss terms within 2e-5 relative, and 1
    to 4 of 1,200-2,640 weights of a table off by up to 2.2e-4). Then the loss
    terms agree within 1e-4 and at most 1% of each table's weights differ by
    more than 1e-5: a flip touches a few rows, where draws that differed
    between the processes would move nearly all of them."""
    a, b = (json.loads((d / "results.json").read_text()) for d in (one, two))
    clean = [[{k: v for k, v in r.items() if k not in TIMING and k != "validation_seconds"} for r in x["history"]]
             for x in (a, b)]
    weights = [torch_load(d / "best.pt", "model file")["state_dict"] for d in (one, two)]
    assert (a["world_size"], a["backend"], b["world_size"], b["backend"]) == (1, None, 2, "gloo")
    if exact:
        assert a["test"] == b["test"] and clean[0] == clean[1]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
        return
    one_user = 1.0 / 150 + 1e-12  # the float difference of two metrics one hit apart can exceed 1/150 by rounding
    assert b["test"] == pytest.approx(a["test"], abs=one_user)
    assert len(clean[0]) == len(clean[1])
    for ra, rb in zip(*clean):
        assert ra.keys() == rb.keys() and ra["epoch"] == rb["epoch"]
        for key, value in ra.items():
            if key == "valid":
                assert rb[key] == pytest.approx(value, abs=one_user)
            elif isinstance(value, float):
                assert rb[key] == pytest.approx(value, rel=1e-4 if flips else 1e-5, abs=1e-7), key
    for k in weights[0]:
        if flips:
            assert ((weights[1][k] - weights[0][k]).abs() > 1e-5).float().mean() <= 0.01, k
        else:
            torch.testing.assert_close(weights[1][k], weights[0][k], rtol=0, atol=1e-5)
    assert not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # two processes did add up


@pytest.mark.parametrize("method, options, training", [
    ("dcd", ["--data-parallel"], "data-parallel"),
    ("rd", ["--data-parallel", "-o", "warmup=0", "-o", "rank_every=1"], "data-parallel"),
    ("student", ["--data-parallel"], "data-parallel"),
    # per-batch draws (the experts' Gumbel noise, sampled ranks) made for the whole batch, then shared
    ("de", ["--data-parallel"], "data-parallel"),
    # one epoch: sampled ranks count score comparisons, which rounding can flip, and flips compound
    ("rd", ["--data-parallel", "-o", "warmup=0", "-o", "rank_estimate=sampled", "--epochs", "1"], "data-parallel"),
    ("rrd", [], "replicated"),  # the default
    ("dcd", [], "replicated"),  # corrections drawn by each process for its rows, bit for bit one process's
    # each process ranks and draws its users' share of every sampling round
    ("ibd", ["-o", "retain=5", "-o", "update_every=2"], "replicated"),
    # and, data-parallel, its co-trained teacher on its share of each batch's pairs
    ("ibd", ["--data-parallel", "-o", "retain=5", "-o", "update_every=2"], "data-parallel"),
    # a CDAE student corrupts its input by the step's key and each pair: a share corrupts as the whole batch
    ("rrd", ["--data-parallel", "--model", "cdae"], "data-parallel"),
])
def test_two_processes_train_like_one_process_run(setup, method, options, training):
    folder, users_dat = setup
    args = ["distill", "--data", users_dat, "--teacher", folder / "teacher" / "best.pt", "--method", method,
            "--top", "40", "--dim", "8", "--epochs", "3", "--lr", "0.01", "--no-progress", "-q", *options]
    run = "-".join([method, *[o.split("=")[1] for o in options if o.startswith("rank_estimate=")],
                    *[options[i + 1] for i, o in enumerate(options) if o == "--model"], training])
    proc = torchrun(*args, "--out", folder / f"{run}-2", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("saved:") == 1  # rank 0 alone prints
    assert json.loads((folder / f"{run}-2" / "results.json").read_text())["training"] == training
    # the teacher's top-40 lists were ranked by two processes and cached: one process ranks them again
    cache = folder / "teacher" / "best-rankings-c40.pt"
    two = torch_load(cache, "rankings cache")
    cache.unlink()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun processes (OMP_NUM_THREADS=1): the same float summation order
    try:
        assert main([*map(str, args), "--out", str(folder / f"{run}-1")]) == 0
    finally:
        torch.set_num_threads(threads)
    one = torch_load(cache, "rankings cache")
    assert torch.equal(one["items_of_user"], two["items_of_user"]) and torch.equal(one["users_of_item"],
                                                                                   two["users_of_item"])
    _same_run(folder / f"{run}-1", folder / f"{run}-2", exact=training == "replicated",
              flips="rank_estimate=sampled" in options)
    assert sorted(p.name for p in (folder / f"{run}-2").iterdir()) == sorted(
        p.name for p in (folder / f"{run}-1").iterdir())


@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_two_processes_evaluate_like_one(setup, protocol):
    folder, _ = setup
    model = folder / "teacher" / "best.pt"
    proc = torchrun("evaluate", model, "--protocol", protocol, "--json", folder / f"eval-{protocol}-2.json", "-q",
                    cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert main(["evaluate", str(model), "--protocol", protocol, "--json", str(folder / f"eval-{protocol}-1.json"),
                 "-q"]) == 0
    one, two = (json.loads((folder / f"eval-{protocol}-{n}.json").read_text()) for n in (1, 2))
    assert one["metrics"] == two["metrics"] and two["world_size"] == 2


def test_two_process_resume_is_exact_and_needs_two_processes(setup):
    folder, users_dat = setup
    args = ["distill", "--data", users_dat, "--teacher", folder / "teacher" / "best.pt", "--method", "rrd",
            "--data-parallel", "--top", "40", "--dim", "8", "--lr", "0.01", "--no-progress", "-q"]
    whole, cut = folder / "rrd-whole", folder / "rrd-cut"
    assert torchrun(*args, "--epochs", "4", "--out", whole, cwd=folder).returncode == 0
    assert torchrun(*args, "--epochs", "2", "--out", cut, cwd=folder).returncode == 0
    # one process may not resume what two began (the RNG states and shares are per process)
    assert main([*map(str, args), "--epochs", "4", "--out", str(cut), "--resume"]) == 2
    proc = torchrun(*args, "--epochs", "4", "--out", cut, "--resume", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    a, b = (json.loads((d / "results.json").read_text()) for d in (whole, cut))
    drop = ("validation_seconds", *TIMING)
    assert [{k: v for k, v in r.items() if k not in drop} for r in a["history"]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b["history"]]
    assert a["test"] == b["test"]


def test_a_mistake_is_said_once(setup):
    folder, users_dat = setup
    proc = torchrun("distill", "--data", users_dat, "--teacher", folder / "teacher" / "best.pt", "-o", "mu=nan",
                    "--out", folder / "bad", cwd=folder)
    assert proc.returncode != 0
    assert proc.stderr.count("rankdistill: error: ") == 1 and "option mu must be a finite number" in proc.stderr
    assert not (folder / "bad").exists()


def test_row_shards_cover_the_rows_in_order():
    for n in (0, 1, 5, 10):
        for size in (1, 2, 3, 4):
            shards = [distributed.row_shard_of(n, r, size) for r in range(size)]
            assert shards[0][0] == 0 and shards[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(shards, shards[1:]))
            lengths = [stop - start for start, stop in shards]
            assert max(lengths) - min(lengths) <= 1
    # one process: the identity
    assert distributed.row_shard(7) == (0, 7) and distributed.world_size() == 1
    rows = torch.arange(12).view(6, 2)
    assert torch.equal(distributed.gather_rows(rows, 6), rows)
    assert np.array_equal(distributed.row_shard_of(10, 1, 3), (4, 7))


def test_pair_shares_weight_the_batch_mean():
    # Each process's mean over its share of a batch's pairs, times its weight,
    # summed over the processes, is the batch mean (an empty share weighs 0).
    values = torch.arange(10, dtype=torch.float64) ** 2
    for n in (1, 2, 7, 10):
        for size in (1, 2, 3, 4):
            shares = [distributed.pair_share(n, (r, size)) for r in range(size)]
            assert sum(weight for _, weight in shares) == pytest.approx(1.0)
            total = sum(values[:n][mine].mean() * weight for mine, weight in shares if mine.stop > mine.start)
            assert float(total) == pytest.approx(float(values[:n].mean()))
    assert distributed.pair_share(5, None) == (slice(0, 5), 1.0)
    assert distributed.pair_share(0, (1, 2)) == (slice(0, 0), 0.0)
