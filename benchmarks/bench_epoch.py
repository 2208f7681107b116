"""Seconds per epoch of the distillation methods on citeulike-a, at 1 and 2
threads, with the parts of an epoch and each method's ratio to the plain
student in the same run (issue 19).

    python benchmarks/bench_epoch.py                      # print the tables
    python benchmarks/bench_epoch.py --save               # and write benchmarks/results/epoch.md (+ epoch.json)
    python benchmarks/bench_epoch.py --epochs 2 --users 500 --methods student,dcd --threads 1   # a quick try
    python benchmarks/bench_epoch.py --report benchmarks/results/epoch.json   # the saved report again, no measuring

What it runs. A BPR teacher (dim 200, the command line's default teacher size)
is trained once for ``--teacher-epochs`` epochs (ranking costs the same
whatever the teacher's quality) and kept, with its split and its top-C
rankings cache, in ``--work`` (default /tmp/bench_epoch), so that reruns
reuse it. Then, for each thread count, a fresh process (OMP_NUM_THREADS=N,
MKL_NUM_THREADS=N, ``torch.set_num_threads(N)``) trains, with the library's
own ``Trainer`` and ``build_method`` exactly as ``rankdistill distill`` does,
a BPR student (dim 20) for ``--epochs`` epochs with each method (default
options, validation every epoch, sampled protocol), plus the plain dim-200
teacher for ``--teacher-bench-epochs`` epochs (for the validation target),
and times ``discrepancy_sample`` against DCD's weights built with ``tanh``
and drawn with ``torch.multinomial`` (the timing loop is bench_ops.py's).

What it reports, per thread count and method: the mean seconds per epoch of
each part, as the trainer records them (``rankdistill.trainer.epoch_timing``):

- training: the pass over the training interactions (batches, losses, steps);
- refresh: the method's work before an epoch (RRD's samples, DCD's
  corrections every ``correct_every`` epochs, BD's sampling rounds every
  ``update_every`` epochs), amortised over the epochs run;
- s/epoch = training + refresh (what ``s/epoch`` means everywhere), and its
  ratio to the student's;
- diagnostics (the mean |R_S - R_T| every ``diagnose_every`` epochs) and
  validation, not counted in s/epoch.

The default 10 epochs are two full periods of DCD's corrections and of the
diagnostics (every 5 epochs: epochs 1 and 6) and one of BD's rounds (every 10
epochs: epoch 1), so each method's periodic work is amortised as in a long
run. The cost of each DCD correction (both sides) is DCD's refresh at that
epoch less RRD's at the same epoch (the same RRD sampling, in the same
process); the first one also pays one-time set-up that RRD pays too.

The machine is named (CPU model, cores, torch, threads) and its load average
recorded at the start and before each run: on a shared machine compare the
ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import bench_ops  # noqa: E402  (its timing loop, its discrepancy case, its atomic writes)
from rankdistill import cli  # noqa: E402
from rankdistill.methods import DEFAULT_TOP, build_method, load_or_compute_rankings, method_options  # noqa: E402
from rankdistill.models import build_model, load_model  # noqa: E402
from rankdistill.split import Split  # noqa: E402
from rankdistill.trainer import TrainConfig, Trainer, seed_everything, software_version  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "citeulike-a" / "users.dat"
DEFAULT_SAVE = HERE / "results" / "epoch.md"
DEFAULT_METHODS = "student,rrd,dcd,de-rrd,bd"
TEACHER_ROW = "teacher"  # the plain dim-200 teacher's own training (validation target)
PARTS = ("training", "refresh", "diagnostics", "validation")
HISTORY_KEYS = ("epoch", "seconds", "refresh_seconds", "diagnostic_seconds", "validation_seconds")
# The sampler's case: the DCD paper's CiteULike size (bench_ops.py, DESIGN.md section 7).
SAMPLER_ROWS, SAMPLER_COLS = 5219, 500

TARGETS = {
    "dcd_correction": "DCD correction (both sides) <= 1.0 s on one thread",
    "dcd_ratio": "DCD epoch <= 3x student epoch (refreshes amortised)",
    "teacher_validation": "sampled validation <= 25% of a training pass (dim-200 teacher)",
    "diagnostics": "diagnostics <= 20% of training time, amortised at the default period",
    "sampler": "discrepancy_sample >= 3x faster than tanh + torch.multinomial (2 threads)",
}


# ------------------------------------------------------------------ the machine

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable, "torch": str(torch.__version__),
            "python": platform.python_version(), **software_version()}


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ------------------------------------------------------------------ the teacher (parent process)

def work_paths(args: argparse.Namespace) -> dict[str, Path]:
    """Where the data subset, the split, the teacher and its rankings live."""
    tag = args.data.parent.name + (f"-u{args.users}" if args.users else "")
    folder = args.work / tag
    teacher_dir = folder / f"teacher-bpr-d{cli.DEFAULT_DIMS['teacher']}-e{args.teacher_epochs}"
    data = folder / f"users-first{args.users}.dat" if args.users else args.data
    return {"folder": folder, "data": data, "split": folder / "split.npz", "teacher_dir": teacher_dir,
            "teacher": teacher_dir / "best.pt"}


def prepare(args: argparse.Namespace) -> dict[str, Path]:
    """The teacher (trained once, by the command line) and its rankings cache."""
    paths = work_paths(args)
    paths["folder"].mkdir(parents=True, exist_ok=True)
    if args.users and not paths["data"].exists():
        with open(args.data) as source:
            lines = [line for _, line in zip(range(args.users), source)]
        paths["data"].write_text("".join(lines))
    if not paths["teacher"].exists():
        print(f"training the teacher once: BPR dim {cli.DEFAULT_DIMS['teacher']}, {args.teacher_epochs} epochs "
              f"-> {paths['teacher']}", file=sys.stderr, flush=True)
        code = cli.main(["teacher", "--data", paths["data"], "--split", paths["split"], "--out",
                         paths["teacher_dir"], "--epochs", str(args.teacher_epochs), "--overwrite",
                         "--no-progress", "-q"])
        if code:
            sys.exit(f"bench_epoch: training the teacher failed (status {code})")
    else:
        print(f"teacher: reusing {paths['teacher']}", file=sys.stderr, flush=True)
    split, teacher = load_teacher(paths)
    start = time.perf_counter()
    load_or_compute_rankings(paths["teacher"], teacher, split, args.top, progress=False)
    print(f"teacher rankings (top-{args.top}): ready in {time.perf_counter() - start:.1f} s", file=sys.stderr,
          flush=True)
    return paths


def train_csr(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.as_tensor(a) for a in split.train.to_csr())


def load_teacher(paths: dict[str, Path]):
    split = Split.load(paths["split"])
    teacher, _ = load_model(paths["teacher"], train=train_csr(split), device="cpu",
                            shape=(split.n_users, split.n_items))
    return split, teacher


# ------------------------------------------------------------------ the measurements (child process)

def train_once(split: Split, dim: int, epochs: int, factory=None) -> dict[str, Any]:
    """One run of the library's Trainer (no run folder), and its timings."""
    seed_everything(0)
    model = build_model({"model": "bpr", "dim": dim, "n_users": split.n_users, "n_items": split.n_items},
                        train=train_csr(split))
    config = TrainConfig(epochs=epochs, patience=epochs + 1, seed=0, progress=False)
    load = load_average()
    start = time.perf_counter()
    trainer = Trainer(model, split, config, method=factory)
    result = trainer.fit()
    wall = time.perf_counter() - start
    history = [{key: record[key] for key in HISTORY_KEYS if key in record} for record in result.history]
    return {"dim": dim, "epochs": len(history), "seconds_per_epoch": result.seconds_per_epoch,
            "timing": result.timing, "history": history, "wall_s": wall, "load_at_start": load,
            "valid_H@5_best": result.valid.get("H@5")}


def sampler_lines(repeats: int, budget: float) -> list[dict[str, Any]]:
    """discrepancy_sample against DCD's tanh weights + torch.multinomial, and
    against rankdistill.reference (tanh weights + weighted_sample: multinomial,
    -1 padding, sorted), all run in turn by bench_ops.median_seconds."""
    options = method_options("dcd")
    mu, k = options.mu, options.m_under
    device = torch.device("cpu")
    run_reference, run_op = bench_ops.discrepancy_case(SAMPLER_ROWS, SAMPLER_COLS, k)(device)
    # bench_ops's inputs: the student's ranks of the teacher's top-C over a catalogue of 25k items.
    gen = torch.Generator().manual_seed(0)
    student = torch.randint(0, 25_000, (SAMPLER_ROWS, SAMPLER_COLS), generator=gen)
    teacher = torch.arange(SAMPLER_COLS).expand(SAMPLER_ROWS, -1).contiguous()

    def run_tanh_multinomial():  # the paper's weights, drawn as PyTorch would (no padding, unsorted)
        weights = torch.tanh((mu * (student - teacher).float()).clamp_min(0.0))
        return torch.multinomial(weights, k, replacement=False, generator=gen)

    (bare_s, ref_s, op_s), rounds = bench_ops.median_seconds([run_tanh_multinomial, run_reference, run_op], device,
                                                             repeats, budget)
    size = f"{SAMPLER_ROWS} x {SAMPLER_COLS}, k={k}, mu={mu:g}"
    return [{"what": "tanh weights + torch.multinomial", "size": size, "ms": bare_s * 1e3, "rounds": rounds},
            {"what": "reference.discrepancy_sample (tanh + weighted_sample: multinomial, padding, sort)",
             "size": size, "ms": ref_s * 1e3, "rounds": rounds},
            {"what": "rankdistill.ops.discrepancy_sample (sorted, as DCD calls it)", "size": size,
             "ms": op_s * 1e3, "rounds": rounds, "speedup_vs_tanh_multinomial": bare_s / op_s,
             "speedup_vs_reference": ref_s / op_s}]


def child(args: argparse.Namespace) -> None:
    threads = args.child_threads
    torch.set_num_threads(threads)
    out: dict[str, Any] = {"threads": threads, "torch_threads": torch.get_num_threads(),
                           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_at_start": load_average(),
                           "runs": {}}
    paths = work_paths(args)
    split, teacher = load_teacher(paths)
    rankings = load_or_compute_rankings(paths["teacher"], teacher, split, args.top, progress=False)
    student_dim = cli.DEFAULT_DIMS["student"]
    for name in args.methods:
        def factory(context, name=name):
            return build_method(name, context, teacher, rankings)

        run = train_once(split, student_dim, args.epochs, factory)
        out["runs"][name] = run
        print(f"  [{threads} thread(s)] {name:<8} {run['seconds_per_epoch']:7.2f} s/epoch  "
              + "  ".join(f"{part} {run['timing'][part]:.2f}" for part in PARTS)
              + f"  (wall {run['wall_s']:.0f} s, load {run['load_at_start'][:1]})", file=sys.stderr, flush=True)
    if args.teacher_bench_epochs:
        run = train_once(split, cli.DEFAULT_DIMS["teacher"], args.teacher_bench_epochs)
        out["runs"][TEACHER_ROW] = run
        print(f"  [{threads} thread(s)] {TEACHER_ROW:<8} {run['seconds_per_epoch']:7.2f} s/epoch  "
              f"validation {run['timing']['validation']:.2f}", file=sys.stderr, flush=True)
    if not args.no_sampler:
        out["sampler"] = sampler_lines(args.sampler_repeats, args.sampler_budget)
        op = out["sampler"][-1]
        print(f"  [{threads} thread(s)] discrepancy_sample {op['ms']:.1f} ms, "
              f"x{op['speedup_vs_tanh_multinomial']:.1f} vs tanh+multinomial", file=sys.stderr, flush=True)
    with open(args.child_out, "w") as handle:
        json.dump(out, handle)


# ------------------------------------------------------------------ derived numbers

def periods() -> dict[str, int]:
    return {"dcd_correct_every": method_options("dcd").correct_every,
            "diagnose_every": method_options("rrd").diagnose_every,
            "bd_update_every": method_options("bd").update_every}


def refresh_only(record: dict[str, Any]) -> float:
    return record.get("refresh_seconds", 0.0) - record.get("diagnostic_seconds", 0.0)


def dcd_corrections(runs: dict[str, Any]) -> list[dict[str, Any]]:
    """Per correction epoch: DCD's refresh less RRD's at the same epoch (or,
    without an RRD run, less DCD's mean refresh of the epochs without one)."""
    if "dcd" not in runs:
        return []
    every = periods()["dcd_correct_every"]
    dcd = runs["dcd"]["history"]
    rrd = runs["rrd"]["history"] if "rrd" in runs else None
    plain = [refresh_only(r) for r in dcd if (r["epoch"] - 1) % every]
    out = []
    for i, record in enumerate(dcd):
        if (record["epoch"] - 1) % every:
            continue
        if rrd is not None and i < len(rrd):
            base, against = refresh_only(rrd[i]), "rrd's refresh, same epoch"
        elif plain:
            base, against = statistics.mean(plain), "dcd's mean refresh without a correction"
        else:
            base, against = 0.0, "nothing (no epoch to compare with)"
        out.append({"epoch": record["epoch"], "dcd_refresh_s": refresh_only(record), "baseline_s": base,
                    "baseline": against, "correction_s": refresh_only(record) - base})
    return out


def bd_rounds(runs: dict[str, Any]) -> list[dict[str, Any]]:
    if "bd" not in runs:
        return []
    every = periods()["bd_update_every"]
    return [{"epoch": r["epoch"], "round_s": refresh_only(r)} for r in runs["bd"]["history"]
            if (r["epoch"] - 1) % every == 0]


def verdict(ok: bool | None, unreliable: list[str] = ()) -> str:
    text = "n/a" if ok is None else ("met" if ok else "MISSED")
    if unreliable and ok is not None:
        text += f" (unreliable: {', '.join(unreliable)} slowed by other processes)"
    return text


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_threads = {r["threads"]: r for r in results}
    slowed = slowed_runs(results)
    rows = []

    def add(key: str, threads: int | None, measured: str, ok: bool | None, uses: tuple[str, ...] = ()) -> None:
        unreliable = [name for name in uses if name in slowed.get(threads, [])]
        rows.append({"target": TARGETS[key], "threads": threads, "measured": measured,
                     "verdict": verdict(ok, unreliable)})

    for t, r in sorted(by_threads.items()):
        corrections = dcd_corrections(r["runs"])
        if corrections:
            text = ", ".join(f"epoch {c['epoch']}: {c['correction_s']:.2f} s" for c in corrections)
            later = corrections[1:] or corrections
            worst_later = max(c["correction_s"] for c in later)
            note = " (the first includes one-time set-up)" if len(corrections) > 1 else ""
            add("dcd_correction", t, text + note, worst_later <= 1.0 if t == 1 else None, ("dcd", "rrd"))
    for t, r in sorted(by_threads.items()):
        runs = r["runs"]
        if "dcd" in runs and "student" in runs:
            ratio = runs["dcd"]["seconds_per_epoch"] / runs["student"]["seconds_per_epoch"]
            add("dcd_ratio", t, f"{runs['dcd']['seconds_per_epoch']:.2f} / {runs['student']['seconds_per_epoch']:.2f}"
                f" s = {ratio:.2f}x", ratio <= 3.0, ("dcd", "student"))
    for t, r in sorted(by_threads.items()):
        run = r["runs"].get(TEACHER_ROW)
        if run:
            share = run["timing"]["validation"] / run["timing"]["training"]
            add("teacher_validation", t, f"{run['timing']['validation']:.2f} s / {run['timing']['training']:.2f} s "
                f"= {share:.0%}", share <= 0.25, (TEACHER_ROW,))
    for t, r in sorted(by_threads.items()):
        shares = {name: run["timing"]["diagnostics"] / run["timing"]["training"]
                  for name, run in r["runs"].items() if name != TEACHER_ROW and run["timing"]["diagnostics"] > 0}
        if shares:
            text = ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
            add("diagnostics", t, text, max(shares.values()) <= 0.20, tuple(shares))
    for t, r in sorted(by_threads.items()):
        if r.get("sampler"):
            op = r["sampler"][-1]
            add("sampler", t, f"{op['ms']:.1f} ms vs {r['sampler'][0]['ms']:.1f} ms = "
                f"{op['speedup_vs_tanh_multinomial']:.1f}x (vs reference {op['speedup_vs_reference']:.1f}x)",
                op["speedup_vs_tanh_multinomial"] >= 3.0 if t == 2 else None)
    return rows


# ------------------------------------------------------------------ the report

def noise_notes(report: dict[str, Any]) -> list[str]:
    """What the recorded loads and timings say about the measurement's noise."""
    notes = []
    cores = report["machine"]["usable_cores"] or 1
    start = report["load_at_start"]
    if start and start[0] > cores:
        notes.append(f"the machine was busy (1-min load {start[0]} on {cores} cores at the start): each process got "
                     "a share of a core, so every second here is inflated; with more threads than free cores OpenMP's "
                     "threads also wait for each other, which can make a multi-threaded run slower than one thread")
    for r in report["results"]:
        loads = [run["load_at_start"][0] for run in r["runs"].values() if run["load_at_start"]]
        if loads and max(loads) - min(loads) > 1.0:
            notes.append(f"during the {r['threads']}-thread runs the 1-min load went from {loads[0]} to {loads[-1]} "
                         f"(range {min(loads)}-{max(loads)}): the ratios to the student within that block compare "
                         "runs made under different loads")
    for threads, names in slowed_runs(report["results"]).items():
        notes.append(f"{', '.join(names)}: more than 1.5x slower at {threads} threads than at fewer, which more "
                     "threads do not cause on their own: those runs were slowed by other processes, and the "
                     "ratios and targets that use them are marked unreliable")
    return notes


def slowed_runs(results: list[dict[str, Any]]) -> dict[int, list[str]]:
    """Per thread count, the runs more than 1.5x slower than the same run at
    the next smaller thread count: slowed by other processes."""
    by_threads = sorted(results, key=lambda r: r["threads"])
    out = {}
    for fewer, more in zip(by_threads, by_threads[1:]):
        slower = [name for name, run in more["runs"].items() if name in fewer["runs"]
                  and run["seconds_per_epoch"] > 1.5 * fewer["runs"][name]["seconds_per_epoch"]]
        if slower:
            out[more["threads"]] = slower
    return out


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    m = report["machine"]
    p = report["periods"]
    lines = [
        f"# Seconds per epoch, {s['data_name']}",
        "",
        f"Measured with `{report['command']}` on {report['date']}, {report['wall_s'] / 60:.1f} min in all"
        + (f" (this page re-rendered from its JSON by `{report['rendered_by']}`)." if report.get("rendered_by")
           else "."),
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), torch {m['torch']}, "
        f"Python {m['python']}, rankdistill {m['rankdistill_version']} ({m['git_commit'] or 'no git checkout'})",
        f"- load average at start (1, 5, 15 min): {', '.join(map(str, report['load_at_start']))}; "
        "per run in the table (1 min). The machine is shared: compare ratios, not seconds.",
        f"- threads: each count in a fresh process (OMP_NUM_THREADS=N, MKL_NUM_THREADS=N, torch.set_num_threads(N))",
        f"- data: {s['data']} ({s['n_users']:,} users, {s['n_items']:,} items, {s['n_train']:,} training "
        f"interactions), leave-one-out split, sampled validation (499 candidates per user) every epoch",
        f"- teacher: BPR dim {s['teacher_dim']} trained {s['teacher_epochs']} epochs (cached in {s['work']}), "
        f"top-{s['top']} rankings; students: BPR dim {s['student_dim']}, default options of each method, "
        f"batch 1024, 1 negative, Adam lr 1e-3, seed 0",
        f"- {s['epochs']} epochs per method; periods: DCD corrects every {p['dcd_correct_every']} epochs, "
        f"diagnostics every {p['diagnose_every']} epochs, BD's sampling round every {p['bd_update_every']} epochs "
        f"(epoch 1 always); the plain teacher row: {s['teacher_bench_epochs']} epochs",
        "",
        "Mean seconds per epoch. s/epoch = training + refresh (refreshes amortised over the epochs run); "
        "diagnostics and validation are not part of it (BD's validation includes its co-trained teacher's). "
        "(median): the median training pass, less sensitive to a burst of load from other processes.",
        "",
        "| threads | method | training | (median) | refresh | **s/epoch** | x student | diagnostics | validation | "
        "run wall s | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    slowed = slowed_runs(report["results"])
    for r in report["results"]:
        student = r["runs"].get("student")
        for name, run in r["runs"].items():
            t = run["timing"]
            ratio = f"{run['seconds_per_epoch'] / student['seconds_per_epoch']:.2f}x" if student else ""
            label = name if name != TEACHER_ROW else f"teacher alone (dim {run['dim']}, {run['epochs']} epochs)"
            if name in slowed.get(r["threads"], []):
                label += " (slowed: see the notes)"
            load = run["load_at_start"][0] if run["load_at_start"] else ""
            median = statistics.median(h["seconds"] for h in run["history"])
            lines.append(f"| {r['threads']} | {label} | {t['training']:.2f} | {median:.2f} | {t['refresh']:.2f} | "
                         f"**{run['seconds_per_epoch']:.2f}** | {ratio} | {t['diagnostics']:.2f} | "
                         f"{t['validation']:.2f} | {run['wall_s']:.0f} | {load} |")
    periodic = []
    for r in report["results"]:
        for c in dcd_corrections(r["runs"]):
            periodic.append(f"| {r['threads']} | DCD correction, both sides (epoch {c['epoch']}) | "
                            f"{c['correction_s']:.2f} | DCD refresh {c['dcd_refresh_s']:.2f} s less "
                            f"{c['baseline']} {c['baseline_s']:.2f} s |")
        for b in bd_rounds(r["runs"]):
            periodic.append(f"| {r['threads']} | BD sampling round (epoch {b['epoch']}) | {b['round_s']:.2f} | "
                            "both models rank every item for every user, then draw |")
    if periodic:
        lines += ["", "Periodic work, seconds each time:", "", "| threads | what | s | how |", "|---:|---|---:|---|",
                  *periodic]
    sampler = [(r["threads"], line) for r in report["results"] for line in r.get("sampler", [])]
    if sampler:
        lines += ["", "DCD's sampler (median of rounds run in turn, bench_ops.py's loop; inputs as bench_ops.py's "
                  "discrepancy_sample case):", "", "| threads | what | size | ms | speed-up of the op |",
                  "|---:|---|---|---:|---|"]
        for t, line in sampler:
            speed = (f"x{line['speedup_vs_tanh_multinomial']:.1f} vs tanh+multinomial, "
                     f"x{line['speedup_vs_reference']:.1f} vs reference") if "speedup_vs_reference" in line else ""
            lines.append(f"| {t} | {line['what']} | {line['size']} | {line['ms']:.1f} | {speed} |")
    lines += ["", "Targets (issue 19):", "", "| target | threads | measured | verdict |", "|---|---:|---|---|"]
    for row in report["targets"]:
        lines.append(f"| {row['target']} | {row['threads']} | {row['measured']} | {row['verdict']} |")
    notes = [*report.get("notes", []), *noise_notes(report)]
    if notes:
        lines += ["", *[f"Note: {note}." for note in notes]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ main

def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="users.dat (default: %(default)s)")
    parser.add_argument("--users", type=int, default=0, help="only the first N users (a quick try; 0: all)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_epoch"),
                        help="folder of the cached split, teacher and rankings (default: %(default)s)")
    parser.add_argument("--teacher-epochs", type=int, default=5, help="the cached teacher's training epochs")
    parser.add_argument("--top", type=int, default=DEFAULT_TOP, help="C, the teacher's list length")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated (default: %(default)s)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per method (default: 10, two periods of "
                                                               "DCD's corrections and of the diagnostics)")
    parser.add_argument("--teacher-bench-epochs", type=int, default=2,
                        help="epochs of the plain dim-200 teacher, for the validation target (0: skip)")
    parser.add_argument("--no-sampler", action="store_true", help="skip the discrepancy_sample lines")
    parser.add_argument("--sampler-repeats", type=int, default=9)
    parser.add_argument("--sampler-budget", type=float, default=20.0, help="seconds after 3 rounds")
    parser.add_argument("--save", nargs="?", const=str(DEFAULT_SAVE), metavar="FILE.md",
                        help=f"write the report (default file: {DEFAULT_SAVE.relative_to(ROOT)}) and FILE.json")
    parser.add_argument("--report", metavar="FILE.json", type=Path,
                        help="measure nothing: print (with --save, write) the report of a saved JSON again")
    parser.add_argument("--child-threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name in args.methods:
        method_options(name)  # an unknown name fails here
    if "student" in args.methods:  # first: the ratios' denominator, measured in the same process
        args.methods.remove("student")
        args.methods.insert(0, "student")
    args.thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.child_threads:
        child(args)
        return
    if args.report:
        report = json.loads(args.report.read_text())
        report["targets"] = targets(report["results"])
        report["rendered_by"] = "python benchmarks/bench_epoch.py " + " ".join(argv)
        publish(report, args.save)
        return
    started, load, host = time.perf_counter(), load_average(), machine()  # the code's version as measured
    print(f"load average at start: {load}", file=sys.stderr, flush=True)
    paths = prepare(args)
    split = Split.load(paths["split"])
    # What a child reads of the options (it measures; the parent reports and saves).
    passed = ["--data", str(args.data), "--users", str(args.users), "--work", str(args.work),
              "--teacher-epochs", str(args.teacher_epochs), "--top", str(args.top), "--methods",
              ",".join(args.methods), "--epochs", str(args.epochs), "--teacher-bench-epochs",
              str(args.teacher_bench_epochs), "--sampler-repeats", str(args.sampler_repeats), "--sampler-budget",
              str(args.sampler_budget), *(["--no-sampler"] if args.no_sampler else [])]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in args.thread_counts:
            out = Path(tmp) / f"threads{threads}.json"
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            print(f"{threads} thread(s): a fresh process", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, str(Path(__file__).resolve()), *passed, "--child-threads", str(threads),
                            "--child-out", str(out)], env=env, check=True)
            results.append(json.loads(out.read_text()))
    notes = []
    if args.users:
        notes.append(f"only the first {args.users} users of the data (--users): not the full data set")
    if args.epochs < 2 * periods()["dcd_correct_every"]:
        notes.append(f"{args.epochs} epochs: fewer than two of DCD's correction periods, so the periodic work "
                     "is not amortised as in a long run")
    report = {
        "command": "python benchmarks/bench_epoch.py " + " ".join(argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": host,
        "load_at_start": load,
        "settings": {"data": str(args.data), "data_name": args.data.parent.name, "users_option": args.users,
                     "n_users": split.n_users, "n_items": split.n_items, "n_train": len(split.train),
                     "work": str(paths["folder"]), "teacher_dim": cli.DEFAULT_DIMS["teacher"],
                     "student_dim": cli.DEFAULT_DIMS["student"], "teacher_epochs": args.teacher_epochs,
                     "top": args.top, "epochs": args.epochs, "teacher_bench_epochs": args.teacher_bench_epochs,
                     "methods": args.methods, "threads": args.thread_counts},
        "periods": periods(),
        "results": results,
        "notes": notes,
    }
    report["targets"] = targets(results)
    report["wall_s"] = time.perf_counter() - started
    publish(report, args.save)


def publish(report: dict[str, Any], save: str | None) -> None:
    text = markdown(report)
    print()
    print(text)
    if save:
        bench_ops.write_atomically(save, text)
        bench_ops.write_atomically(os.path.splitext(save)[0] + ".json", json.dumps(report, indent=2) + "\n")
        print(f"saved: {save}, {os.path.splitext(save)[0] + '.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
