"""Each rankdistill op against its plain PyTorch reference, side by side in one
run, at the sizes of DESIGN.md section 7.

    python benchmarks/bench_ops.py                    # CPU, and CUDA when present
    python benchmarks/bench_ops.py --device cpu --save benchmarks/results/cpu.md

Reports medians over rounds in which the reference and the op run in turn
(these machines are noisy: compare the ratios) and, on CUDA, the peak memory each op allocates beyond its inputs.
Rows marked with a row count ("4096 of 24941 rows") time a slice of a matrix
that would not fit, or would take minutes per reference run, at full size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch

from rankdistill import ops, reference


@dataclass
class Case:
    op: str
    size: str
    make: Callable[[torch.device], tuple[Callable[[], object], Callable[[], object]]]
    cpu_rows: str = ""  # note when the CPU case times a slice of the rows


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fns, device, repeats, budget_s):
    """Median wall time of each function after one warm-up run each. The
    functions run in turn, round after round, so that drifts in the machine's
    speed hit all of them alike; stops once the budget is spent (at least
    three rounds)."""
    for fn in fns:
        fn()
    synchronize(device)
    times = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < repeats and (len(times[0]) < 3 or time.perf_counter() - start < budget_s):
        for fn, fn_times in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            fn_times.append(time.perf_counter() - t0)
    return [statistics.median(fn_times) for fn_times in times], len(times[0])


def peak_extra_mb(fn, device):
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    del out
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def rank_case(num_rows, num_cols, num_targets, exclude_per_row, cpu_row_cap=None):
    def make(device):
        rows = num_rows if device.type == "cuda" or cpu_row_cap is None else min(num_rows, cpu_row_cap)
        gen = torch.Generator(device).manual_seed(0)
        scores = torch.randn(rows, num_cols, device=device, generator=gen)
        targets = None if num_targets is None else torch.randint(0, num_cols, (rows, num_targets), device=device,
                                                                 generator=gen)
        exclude = None
        if exclude_per_row:
            indptr = torch.arange(0, (rows + 1) * exclude_per_row, exclude_per_row, device=device)
            indices = torch.randint(0, num_cols, (rows * exclude_per_row,), device=device, generator=gen)
            exclude = (indptr, indices)
        # The reference builds several [B, N] int64 tensors: run it on chunks
        # of rows so that the large cases fit in memory, as a user would.
        chunk = max(1, (2**28) // num_cols)

        def run_reference():
            return torch.cat([
                reference.rank_positions(
                    scores[lo:lo + chunk], None if targets is None else targets[lo:lo + chunk],
                    exclude=None if exclude is None else _slice_csr(exclude, lo, min(lo + chunk, rows)),
                )
                for lo in range(0, rows, chunk)
            ])

        return run_reference, lambda: ops.rank_positions(scores, targets, exclude=exclude)

    return make


def _slice_csr(exclude, lo, hi):
    indptr, indices = exclude
    return indptr[lo:hi + 1] - indptr[lo], indices[indptr[lo]:indptr[hi]]


def listmle_case(num_rows, K, L):
    def make(device):
        gen = torch.Generator(device).manual_seed(0)
        ranked = torch.randn(num_rows, K, device=device, generator=gen, requires_grad=True)
        tail = torch.randn(num_rows, L, device=device, generator=gen, requires_grad=True)

        def step(fn):
            def run():
                loss = fn(ranked, tail)
                loss.backward()
                return loss
            return run

        return step(reference.relaxed_listmle), step(ops.relaxed_listmle)

    return make


def dot_lists_case(n_rows, n_cols, num_lists, width, dim):
    """A training step's scoring of lists: forward, then the backward into
    both tables (gradients dropped each time, as a step's optimizer does)."""
    def make(device):
        gen = torch.Generator(device).manual_seed(0)
        row_table = torch.randn(n_rows, dim, device=device, generator=gen).requires_grad_()
        col_table = torch.randn(n_cols, dim, device=device, generator=gen).requires_grad_()
        rows = torch.randint(0, n_rows, (num_lists,), device=device, generator=gen)
        cols = torch.randint(0, n_cols, (num_lists, width), device=device, generator=gen)

        def step(fn):
            def run():
                row_table.grad = col_table.grad = None
                scores = fn(row_table, rows, col_table, cols)
                scores.sum().backward()
                return scores
            return run

        return step(reference.dot_lists), step(ops.dot_lists)

    return make


def weighted_case(num_rows, num_cols, k):
    def make(device):
        gen = torch.Generator(device).manual_seed(0)
        weights = torch.rand(num_rows, num_cols, device=device, generator=gen)
        return (lambda: reference.weighted_sample(weights, k, generator=gen),
                lambda: ops.weighted_sample(weights, k, generator=gen))

    return make


def discrepancy_case(num_rows, num_cols, k):
    def make(device):
        gen = torch.Generator(device).manual_seed(0)
        # student ranks of the teacher's top-C items over a catalogue of 25k
        student = torch.randint(0, 25_000, (num_rows, num_cols), device=device, generator=gen)
        teacher = torch.arange(num_cols, device=device).expand(num_rows, -1).contiguous()
        kwargs = dict(mu=1e-3, direction="under", generator=gen)
        return (lambda: reference.discrepancy_sample(student, teacher, k, **kwargs),
                lambda: ops.discrepancy_sample(student, teacher, k, **kwargs))

    return make


CASES = [
    Case("rank_positions", "CiteULike 5219 x 25181, T=500", rank_case(5219, 25181, 500, 0)),
    Case("rank_positions", "CiteULike 5219 x 25181, T=500, 40 excluded/row", rank_case(5219, 25181, 500, 40)),
    Case("rank_positions", "Foursquare 24941 x 28593, T=500", rank_case(24941, 28593, 500, 0, cpu_row_cap=4096),
         cpu_rows="4096 of 24941 rows"),
    Case("rank_positions", "catalogue 4096 x 1000000, T=500", rank_case(4096, 1_000_000, 500, 0, cpu_row_cap=64),
         cpu_rows="64 of 4096 rows"),
    # BD's sampling round: every item of every user, each user's items excluded
    Case("rank_positions", "CiteULike 5551 x 16980, all columns, 40 excluded/row", rank_case(5551, 16980, None, 40)),
    Case("relaxed_listmle fwd+bwd", "B=1024, K=L=40", listmle_case(1024, 40, 40)),
    Case("relaxed_listmle fwd+bwd", "B=5219, K=L=40", listmle_case(5219, 40, 40)),
    # a CiteULike student's (d=20) scoring per batch: BPR's loss; DCD's user side (RRD + UCD lists)
    Case("dot_lists fwd+bwd", "d=20, 1024 users x 2 of 16980 items", dot_lists_case(5551, 16980, 1024, 2, 20)),
    Case("dot_lists fwd+bwd", "d=20, 29 users x 160 of 16980 items", dot_lists_case(5551, 16980, 29, 160, 20)),
    Case("dot_lists fwd+bwd", "d=64, 1024 users x 80 of 16980 items", dot_lists_case(5551, 16980, 1024, 80, 64)),
    Case("weighted_sample", "5219 x 500, k=40", weighted_case(5219, 500, 40)),
    Case("discrepancy_sample", "5219 x 500, k=40", discrepancy_case(5219, 500, 40)),
]


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run(devices, repeats, budget_s, only):
    results = []
    for device in devices:
        for case in CASES:
            if only and only not in case.op:
                continue
            run_reference, run_op = case.make(device)
            (ref_s, op_s), rounds = median_seconds([run_reference, run_op], device, repeats, budget_s)
            size = case.size + (f" ({case.cpu_rows})" if device.type == "cpu" and case.cpu_rows else "")
            row = dict(op=case.op, size=size, device=device.type, device_name=device_name(device),
                       reference_ms=ref_s * 1e3, op_ms=op_s * 1e3, speedup=ref_s / op_s,
                       rounds=rounds, op_peak_extra_mb=peak_extra_mb(run_op, device))
            results.append(row)
            print(f"{row['op']:<24} {size:<58} {device.type:<4} ref {row['reference_ms']:10.2f} ms   "
                  f"op {row['op_ms']:9.2f} ms   x{row['speedup']:.1f}", flush=True)
            del run_reference, run_op
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


def markdown(results):
    lines = ["| op | size | device | reference (ms) | rankdistill (ms) | speed-up | op peak extra MiB |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in results:
        extra = "" if r["op_peak_extra_mb"] is None else f"{r['op_peak_extra_mb']:.1f}"
        lines.append(f"| {r['op']} | {r['size']} | {r['device_name']} | {r['reference_ms']:.2f} | "
                     f"{r['op_ms']:.2f} | {r['speedup']:.1f}x | {extra} |")
    return "\n".join(lines) + "\n"


def write_atomically(path, text):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False) as handle:
        handle.write(text)
    os.replace(handle.name, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement (median)")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per measurement after 3 runs")
    parser.add_argument("--only", default="", help="run only the ops whose name contains this")
    parser.add_argument("--save", metavar="FILE.md", help="also write the table (and FILE.json)")
    args = parser.parse_args(argv)
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if args.device == "cuda" and not devices:
        sys.exit("bench_ops: --device cuda but no CUDA GPU is visible")
    results = run(devices, args.repeats, args.budget, args.only)
    table = markdown(results)
    print()
    print(table)
    if args.save:
        write_atomically(args.save, f"Measured with `python benchmarks/bench_ops.py {' '.join(argv or sys.argv[1:])}`"
                                    f" (torch {torch.__version__}).\n\n" + table)
        write_atomically(os.path.splitext(args.save)[0] + ".json", json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
