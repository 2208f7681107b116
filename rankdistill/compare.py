"""Several methods x seeds trained on one split and teacher: the grid of runs
(``run_grid``: each finished run reused only if it was made the same way,
an interrupted one resumed), the papers' table (mean and std over seeds), the
improvement over the plain student, paired t-tests, JSON and CSV files, and a
figure of the learning curves (``report``). The files are named by the runs
they summarise (``summary_files``): a comparison of other methods or seeds in
the same folder writes its own and leaves the earlier ones as they are.

Two paired t-tests (``scipy.stats.ttest_rel``) compare every two methods:
over seeds (each seed's test mean, paired by seed), the test of a claim about
the methods, and over the evaluated users (each user's value averaged over the
method's seeds), the papers' "paired t-test", which ignores the seed-to-seed
variation. With more than two methods both are also Holm-adjusted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
from dataclasses import dataclass, field
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ConfigError, DataError, RankdistillError
from .evaluation import load_per_user
from .io import atomic_open, write_json
from .trainer import CHECKPOINT, RESULTS, TEST_PER_USER, comparable_config

__all__ = ["Report", "Run", "TABLE_METRICS", "FULL_TABLE_METRICS", "TEACHER_BASELINE", "baseline_of", "table_metrics",
           "load_run", "teacher_runs", "paired_tests", "plot_curves", "pyplot", "save_figure", "summarize",
           "format_summary", "markdown_summary", "write_summary", "run_grid", "report", "setup_differences", "holm", "summary_files"]

log = logging.getLogger("rankdistill")

TABLE_METRICS = ("H@5", "M@5", "N@5", "H@10", "M@10", "N@10")  # the DCD/RRD papers' layout (sampled)
FULL_TABLE_METRICS = ("H@50", "N@50", "H@100", "N@100")  # the BD papers' layout (full ranking)
BASELINE = "student"
# compare's row of the teacher's model trained alone: the baseline of the
# co-trained teachers' rows (BD, iBD), as the plain student is of the students.
TEACHER_BASELINE = "teacher"


@dataclass
class Run:
    method: str
    seed: int
    results: dict[str, Any]
    per_user: dict[str, np.ndarray] = field(repr=False)  # metric -> [n_eval_users], in split order

    @property
    def test(self) -> dict[str, float]:
        return self.results["test"]


def table_metrics(protocol: str, cutoffs: tuple[int, ...]) -> tuple[str, ...]:
    """The columns of the papers' tables for ``protocol``, among the computed
    ``cutoffs``; the first is the one the improvement and the t-tests use.
    Cutoffs outside the papers' give H, M and N at the two smallest."""
    wanted = FULL_TABLE_METRICS if protocol == "full" else TABLE_METRICS
    present = tuple(m for m in wanted if int(m.split("@")[1]) in cutoffs)
    return present or tuple(f"{k}@{n}" for n in sorted(cutoffs)[:2] for k in "HMN")


def load_run(folder: str | Path, method: str, seed: int) -> Run:
    folder = Path(folder)
    try:
        results = json.loads((folder / RESULTS).read_text())
        per_user = load_per_user(folder / TEST_PER_USER)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{folder}: not a finished run ({exc})") from None
    return Run(method, seed, results, per_user)


def teacher_runs(folder: str | Path, method: str, runs: list[Run]) -> list[Run]:
    """The co-trained teachers of ``runs`` (BD, iBD) as runs of method
    ``METHOD-teacher``; empty when the method does not train the teacher."""
    if not runs or not all("teacher_test" in run.results for run in runs):
        return []
    out = []
    for run in runs:
        results = {**run.results, "test": run.results["teacher_test"],
                   "best_epoch": run.results["teacher_best_epoch"],
                   "history": [{**r, "valid": r["teacher_valid"]} for r in run.results["history"] if "teacher_valid" in r]}
        path = Path(folder) / method / f"seed{run.seed}" / f"teacher_{TEST_PER_USER}"  # the co-trained "teacher"
        try:
            per_user = load_per_user(path)
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: not readable ({exc})") from None
        out.append(Run(f"{method}-teacher", run.seed, results, per_user))
    return out


# What a reused run must share with the run asked for, as results.json records it.
_SETUP_NAMES = {"split_digest": "split", "teacher_sha256": "teacher", "top": "--top", "train_config": "training options",
                "model_config": "model", "method_options": "method options"}


def setup_differences(results: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """What differs between a finished run's ``results`` and the ``expected``
    setup (keys of ``_SETUP_NAMES``): the model is compared on the expected
    configuration's keys, the training options on what changes a result."""
    found_model = results.get("model_config", {})
    found = {"split_digest": results.get("split_digest"), "teacher_sha256": results.get("teacher_sha256"),
             "top": results.get("top"), "train_config": comparable_config(results.get("train_config", {})),
             "model_config": {key: found_model.get(key) for key in expected.get("model_config", {})},
             "method_options": results.get("method_options")}
    wanted = {**expected, "train_config": comparable_config(expected.get("train_config", {}))}
    return [_SETUP_NAMES[key] for key in _SETUP_NAMES if key in wanted and wanted[key] != found[key]]


def run_grid(out: str | Path, methods: list[str], seeds: list[int], *,
             train: Callable[[str, int, Path, bool], None], expected: Callable[[str, int], dict[str, Any]],
             overwrite: bool = False) -> dict[str, list[Run]]:
    """Every run of ``methods`` x ``seeds`` in ``OUT/METHOD/seedS``, in order.

    A finished run (its results.json) is reused if ``expected(method, seed)``
    (the setup, see ``setup_differences``) matches it, and refused otherwise;
    any other run is trained by ``train(method, seed, folder, resume)``,
    resumed where a checkpoint exists (``overwrite``: everything is retrained).
    The co-trained teachers of BD and iBD come as rows ``METHOD-teacher``."""
    out = Path(out)
    runs: dict[str, list[Run]] = {}
    count = itertools.count(1)
    for method in methods:
        for seed in seeds:
            folder = out / method / f"seed{seed}"
            where = f"run {next(count)} of {len(methods) * len(seeds)}: {method} seed {seed}"
            if (folder / RESULTS).exists() and not overwrite:
                run = load_run(folder, method, seed)
                changed = setup_differences(run.results, expected(method, seed))
                if changed:
                    raise ConfigError(f"{folder} holds a finished run made with other options "
                                      f"({', '.join(changed)}); use another --out or pass --overwrite to redo it")
                log.info("%s: finished run found in %s", where, folder)
            else:
                log.info("%s", where)
                train(method, seed, folder, (folder / CHECKPOINT).exists() and not overwrite)
                run = load_run(folder, method, seed)
            runs.setdefault(method, []).append(run)
        teachers = teacher_runs(out, method, runs[method])
        if teachers:
            runs[f"{method}-teacher"] = teachers
    return runs


# Longest name part made of the methods and seeds; longer ones are cut and end in a digest.
_NAME_LIMIT = 120


def summary_files(out: str | Path, methods: list[str], seeds: list[int]) -> dict[str, Path]:
    """Where ``report`` writes the summary of ``methods`` x ``seeds``: files
    named by them, as the command line lists them, so that a comparison of
    other methods or seeds in the same folder does not overwrite another's
    (the same methods and seeds again: the same files, rewritten).

    ``OUT/summary-student,rrd,dcd-seeds0,1,2.{json,csv,md}`` and
    ``OUT/curves-student,rrd,dcd-seeds0,1,2.png``; keys json, csv, md, figure."""
    name = f"{','.join(methods)}-seeds{','.join(str(seed) for seed in seeds)}"
    if len(name) > _NAME_LIMIT:  # file names stop at 255 bytes
        name = f"{name[:_NAME_LIMIT - 13]}...{hashlib.sha256(name.encode()).hexdigest()[:10]}"
    out = Path(out)
    return {"json": out / f"summary-{name}.json", "csv": out / f"summary-{name}.csv",
            "md": out / f"summary-{name}.md", "figure": out / f"curves-{name}.png"}


@dataclass
class Report:
    """What ``report`` made: the printed ``text`` (table and tests), the
    ``table`` and ``tests`` it holds, the ``files`` written and, when no
    figure could be drawn (matplotlib missing), why (``figure_missing``)."""

    text: str
    table: dict[str, Any]
    tests: list[dict[str, Any]]
    files: list[Path]
    figure: Path | None
    figure_missing: str | None = None


def report(files: dict[str, Path], runs: dict[str, list[Run]], metrics: tuple[str, ...]) -> Report:
    """The table and the paired tests of ``runs`` on ``metrics`` (the first is
    tested), written to ``files`` (``summary_files``: JSON, CSV, Markdown)
    with the figure of the learning curves. Without matplotlib the summary is
    still written and the report says how to get the figure."""
    table = summarize(runs, metrics)
    tests = paired_tests(runs, metrics[0]) if len(runs) > 1 else []
    write_summary(files, table, tests, runs, metrics)
    written = [files["json"], files["csv"], files["md"]]
    try:
        plot_curves(files["figure"], runs, metrics[0])
    except (ImportError, RankdistillError) as exc:  # plot_curves says which import failed, as a RankdistillError
        if not isinstance(exc, ImportError) and not isinstance(exc.__cause__, ImportError):
            raise
        missing = str(exc) if isinstance(exc, RankdistillError) else f"{exc}: pip install matplotlib"
        return Report(format_summary(table, tests, metrics), table, tests, written, None, f"no figure: {missing}")
    return Report(format_summary(table, tests, metrics), table, tests, [*written, files["figure"]], files["figure"])


def baseline_of(method: str, methods: Any) -> str | None:
    """The row ``method`` is measured against among ``methods``: a co-trained
    teacher (``bd-teacher``) against the teacher trained alone, any other
    method against the plain student; None for the two baselines themselves
    and when the baseline was not run."""
    if method in (BASELINE, TEACHER_BASELINE):
        return None
    base = TEACHER_BASELINE if method.endswith(f"-{TEACHER_BASELINE}") else BASELINE
    return base if base in methods else None


def summarize(runs: dict[str, list[Run]], metrics: tuple[str, ...] = TABLE_METRICS) -> dict[str, Any]:
    """Per method: mean and std (over seeds, ddof 1 when there are several)
    of each test metric, seconds per epoch, and the relative improvement of the
    mean over its baseline's mean (``baseline_of``: the plain student, or for
    a co-trained teacher the teacher trained alone), when the baseline was run."""
    table: dict[str, Any] = {}
    for method, method_runs in runs.items():
        values = {m: np.array([run.test[m] for run in method_runs]) for m in metrics}
        table[method] = {
            "seeds": [run.seed for run in method_runs],
            "mean": {m: float(v.mean()) for m, v in values.items()},
            "std": {m: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()},
            # training pass + refreshes amortised (the trainer's s/epoch), median over the seeds
            "seconds_per_epoch": float(np.median([run.results["seconds_per_epoch"] for run in method_runs])),
            "best_epochs": [run.results["best_epoch"] for run in method_runs],
        }
    for method, entry in table.items():
        baseline = baseline_of(method, table)
        if baseline is not None:
            base = table[baseline]["mean"]
            entry["improvement_over"] = baseline
            entry["improvement"] = {m: (entry["mean"][m] / base[m] - 1.0) if base[m] else float("nan")
                                    for m in metrics}
    return table


def paired_tests(runs: dict[str, list[Run]], metric: str = "H@5") -> list[dict[str, Any]]:
    """Two paired t-tests of ``metric`` between every two methods:

    - over seeds (``seeds``): each seed's test mean, paired by seed, on the
      seeds both methods ran (None below two such seeds). This is the test of
      a claim about the methods, which vary from seed to seed;
    - over users (``t``, ``p``): each user's value averaged over the method's
      seeds. It ignores the seed-to-seed variation, so it can be far more
      confident than the seeds allow (DCD vs RRD: p = 0.002 over users while
      the per-seed differences were +0.015, +0.022, -0.011).

    With more than two methods, each family's p-values are also Holm-adjusted
    over the comparisons (``p_holm``).

    Where every difference is the same but not zero (two seeds that each
    moved the metric by exactly 0.02, to rounding), the t statistic would
    divide by a spread of zero and scipy's p would be a rounding artefact
    (about 1e-16 from two seeds): ``t`` and ``p`` are then None, and the
    summary says there is no spread to test."""
    from scipy import stats  # a heavy import, only needed here

    def paired(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
        difference = a - b
        if not difference.any():
            return 0.0, 1.0
        # the same difference everywhere, to rounding (0.5 - 0.4 and 0.4 - 0.3 differ in the last bit)
        if np.ptp(difference) <= 1e-9 * np.abs(difference).max():
            return None, None
        result = stats.ttest_rel(a, b)
        return float(result.statistic), float(result.pvalue)

    per_user = {method: np.mean([run.per_user[metric] for run in method_runs], axis=0)
                for method, method_runs in runs.items()}
    per_seed = {method: {run.seed: run.test[metric] for run in method_runs} for method, method_runs in runs.items()}
    tests = []
    for a, b in itertools.combinations(per_user, 2):
        if per_user[a].shape != per_user[b].shape:
            raise DataError(f"{a} and {b} were evaluated on different users: not the same split")
        diff = per_user[a] - per_user[b]
        t, p = paired(per_user[a], per_user[b])
        common = sorted(set(per_seed[a]) & set(per_seed[b]))
        seeds = None
        if len(common) >= 2:
            seed_a, seed_b = (np.array([per_seed[m][s] for s in common]) for m in (a, b))
            seed_t, seed_p = paired(seed_a, seed_b)
            seeds = {"n": len(common), "differences": (seed_a - seed_b).tolist(), "t": seed_t, "p": seed_p}
        tests.append({"a": a, "b": b, "metric": metric, "mean_difference": float(diff.mean()), "t": t, "p": p,
                      "n_users": int(diff.size), "seeds": seeds})
    if len(tests) > 1:  # Holm over the family's defined p-values
        for family in (tests, [test["seeds"] for test in tests if test["seeds"] is not None]):
            tested = [entry for entry in family if entry["p"] is not None]
            for adjusted, entry in zip(holm([entry["p"] for entry in tested]), tested):
                entry["p_holm"] = adjusted
    return tests


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (in their order):
    the k-th smallest is multiplied by (m - k), kept non-decreasing, capped at 1."""
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(len(p_values))
    running = 0.0
    for k, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - k) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def _test_line(test: dict[str, Any]) -> str:
    """One comparison: the mean difference, the test over seeds, then over users."""
    def t_and_p(entry: dict[str, Any]) -> str:
        if entry["p"] is None:
            return "every difference the same: no spread, no t-test"
        text = f"t = {entry['t']:.2f}, {_p_value(entry['p'])}"
        return text + (f", Holm {_p_value(entry['p_holm']).removeprefix('p ')}" if "p_holm" in entry else "")

    seeds = test.get("seeds")
    over_seeds = (f"over {seeds['n']} seeds {t_and_p(seeds)}" if seeds else "over seeds n/a (fewer than 2 common seeds)")
    return (f"{test['a']} vs {test['b']}: mean difference {test['mean_difference']:+.4f}; {over_seeds}; "
            f"over users {t_and_p(test)}")


def _cell(table: dict[str, Any], entry: dict[str, Any], metric: str) -> str:
    """The mean and its spread over seeds. One seed has no spread to report:
    "± n/a", not a misleading "± 0.0000"; a table of one seed each shows means only."""
    mean = f"{entry['mean'][metric]:.4f}"
    if all(len(other["seeds"]) == 1 for other in table.values()):
        return mean
    return f"{mean} ± {entry['std'][metric]:.4f}" if len(entry["seeds"]) > 1 else f"{mean} ± n/a"


def _p_value(p: float) -> str:
    # scipy returns 0.0 below the smallest double: say so rather than "p = 0"
    return f"p = {p:.2g}" if p > 0 else "p < 1e-300"


def format_summary(table: dict[str, Any], tests: list[dict[str, Any]], metrics: tuple[str, ...] = TABLE_METRICS) -> str:
    header = ["Method", *metrics]
    improvements = any("improvement" in entry for entry in table.values())
    if improvements:
        header.append(f"Impr. {metrics[0]}")
    header += ["s/epoch", "seeds"]
    lines = [header]
    for method, entry in table.items():
        line = [method, *(_cell(table, entry, m) for m in metrics)]
        if improvements:  # blank for a baseline row
            line.append(f"{100 * entry['improvement'][metrics[0]]:+.2f}%" if "improvement" in entry else "")
        line += [f"{entry['seconds_per_epoch']:.2f}", str(len(entry["seeds"]))]
        lines.append(line)
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
    out = []
    for k, line in enumerate(lines):
        out.append("  ".join([line[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(line[1:], widths[1:])]))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    bases = {entry["improvement_over"] for entry in table.values() if "improvement" in entry}
    if TEACHER_BASELINE in bases:
        out.append(f"(Impr.: over {BASELINE}; the co-trained teachers' rows over {TEACHER_BASELINE}, "
                   "the teacher's model trained alone)")
    if tests:
        out.append("")
        out.append(f"paired t-tests on {tests[0]['metric']}: over seeds (each seed's mean, paired by seed: the test "
                   f"of a claim about the methods) and over {tests[0]['n_users']} users (per-user values averaged "
                   "over seeds; ignores the seeds' variation)" + ("; Holm: adjusted over the comparisons"
                                                                   if len(tests) > 1 else "") + ":")
        out += [f"  {_test_line(test)}" for test in tests]
    return "\n".join(out)


def write_summary(files: dict[str, Path], table: dict[str, Any], tests: list[dict[str, Any]],
                  runs: dict[str, list[Run]], metrics: tuple[str, ...] = TABLE_METRICS) -> None:
    """At ``files`` (``summary_files``): JSON (table, tests, every run's test
    metrics), CSV (one row per method: mean and std of each metric) and
    Markdown (the table and the tests, for a report)."""
    write_json(files["json"], {
        "methods": list(table),
        "table": table,
        "paired_tests": tests,
        "runs": [{"method": run.method, "seed": run.seed, "test": run.test, "best_epoch": run.results["best_epoch"],
                  "seconds_per_epoch": run.results["seconds_per_epoch"]}
                 for method_runs in runs.values() for run in method_runs],
    })
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["method", "seeds", *(f"{m} {s}" for m in metrics for s in ("mean", "std")),
                     f"improvement {metrics[0]}", "improvement over", "seconds_per_epoch"])
    for method, entry in table.items():
        writer.writerow([method, len(entry["seeds"]),
                         *(f"{entry[s][m]:.6f}" for m in metrics for s in ("mean", "std")),
                         f"{entry['improvement'][metrics[0]]:.6f}" if "improvement" in entry else "",
                         entry.get("improvement_over", ""), f"{entry['seconds_per_epoch']:.4f}"])
    with atomic_open(files["csv"], "w") as f:
        f.write(text.getvalue())
    with atomic_open(files["md"], "w") as f:
        f.write(markdown_summary(table, tests, metrics))


def markdown_summary(table: dict[str, Any], tests: list[dict[str, Any]], metrics: tuple[str, ...] = TABLE_METRICS) -> str:
    """The papers' table as Markdown: mean ± std over seeds, the improvement
    of the first metric over the row's baseline, seconds per epoch, seeds;
    then the paired t-tests."""
    lines = [f"| | {' | '.join(metrics)} | vs baseline ({metrics[0]}) | s/epoch | seeds |",
             "|---" * (len(metrics) + 4) + "|"]
    for method, entry in table.items():
        cells = [_cell(table, entry, m) for m in metrics]
        versus = (f"{100 * entry['improvement'][metrics[0]]:+.1f}% ({entry['improvement_over']})"
                  if "improvement" in entry else "")
        lines.append(f"| {method} | {' | '.join(cells)} | {versus} | {entry['seconds_per_epoch']:.2f} | "
                     f"{len(entry['seeds'])} |")
    if tests:
        lines += ["", f"Paired t-tests on {tests[0]['metric']}: over seeds (each seed's mean, paired by seed) and "
                      f"over {tests[0]['n_users']} users (each user's value averaged over seeds)"
                      + ("; Holm: adjusted over the comparisons" if len(tests) > 1 else "") + ":", ""]
        lines += [f"- {_test_line(t)}" for t in tests]
    return "\n".join(lines) + "\n"


def _mean_curve(histories: list[list[dict[str, Any]]], key: str, metric: str = "H@5") -> tuple[np.ndarray, np.ndarray]:
    """Epochs (1-based) and the mean over seeds of ``key`` (``metric`` of it,
    when it holds metrics) where recorded by every seed."""
    points: dict[int, list[float]] = {}
    for history in histories:
        for record in history:
            value = record.get(key)
            if isinstance(value, dict):
                value = value.get(metric)
            if value is not None:
                points.setdefault(record["epoch"], []).append(float(value))
    epochs = sorted(e for e, values in points.items() if len(values) == len(histories))
    return np.array(epochs), np.array([np.mean(points[e]) for e in epochs])


# Small markers on every series: a method validated once is still seen.
_MARKERS = {"marker": "o", "markersize": 3}


def pyplot(path: str | Path) -> Any:
    """matplotlib's pyplot (non-interactive) for drawing the figure ``path``;
    a ``RankdistillError`` naming the extra when matplotlib, an optional
    dependency, is missing."""
    try:
        import matplotlib
    except ImportError as exc:  # an optional dependency: the extra [plot]
        from .errors import RankdistillError
        raise RankdistillError(f"the figure {path} needs matplotlib, an optional dependency of rankdistill: "
                               "pip install 'rankdistill[plot]' (or pip install matplotlib)") from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig: Any, path: str | Path, dpi: int) -> None:
    """``fig`` as a PNG at ``path``, written atomically, then closed."""
    import matplotlib.pyplot as plt

    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    plt.close(fig)


def plot_curves(path: str | Path, runs: dict[str, list[Run]], metric: str = "H@5") -> None:
    """Validation ``metric`` per epoch and, for the methods that record it,
    the mean |R_S - R_T| over the teacher's top-50 (user side solid, item
    side dashed), averaged over seeds. Every series has markers (a run
    validated once is a point) and the epoch axis integer ticks."""
    plt = pyplot(path)
    from matplotlib.ticker import MaxNLocator

    gaps = {}
    for method, method_runs in runs.items():
        histories = [run.results["history"] for run in method_runs]
        for key, style in (("discrepancy_user", "-"), ("discrepancy_item", "--")):
            epochs, gap = _mean_curve(histories, key)
            if len(epochs):
                gaps.setdefault(method, []).append((epochs, gap, style, key.split("_")[1]))
    fig, axes = plt.subplots(1, 2 if gaps else 1, figsize=(11 if gaps else 5.5, 4.2), squeeze=False)
    ax_valid = axes[0, 0]
    for k, (method, method_runs) in enumerate(runs.items()):
        color = f"C{k % 10}"
        epochs, valid = _mean_curve([run.results["history"] for run in method_runs], "valid", metric)
        ax_valid.plot(epochs, valid, color=color, label=method, **_MARKERS)
        for epochs, gap, style, side in gaps.get(method, []):
            axes[0, 1].plot(epochs, gap, style, color=color, label=f"{method} ({side})", **_MARKERS)
    ax_valid.set(xlabel="epoch", ylabel=f"validation {metric}", title=f"Validation {metric} (mean over seeds)")
    if gaps:
        axes[0, 1].set(xlabel="epoch", ylabel="mean |R_S - R_T|", yscale="log",
                       title="Rank discrepancy on the teacher's top-50")
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
