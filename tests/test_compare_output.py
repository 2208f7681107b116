"""What a comparison and a run show: the figure (markers, integer epochs),
summaries named by their runs (a second comparison keeps the first's),
progress bars on the long steps when progress is on and only then, and the
log lines of a library user."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rankdistill import progress
from rankdistill.cli import main
from rankdistill.compare import Run, report, summary_files
from rankdistill.evaluation import Evaluator
from rankdistill.methods import build_method, compute_rankings
from rankdistill.methods.base import Side
from rankdistill.scoring import as_interactions
from rankdistill.trainer import Trainer

from distill_setup import config, new_model, small_split, write_users_dat
from rankdistill.data import synthetic

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def split():
    return small_split(80, 200)


@pytest.fixture
def figure(monkeypatch):
    """The last figure ``plot_curves`` drew, kept open to be read."""
    import matplotlib.pyplot as plt

    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)
    yield drawn
    for fig in drawn:
        plt.Figure.clear(fig)


def fake_run(method, seed, history, h5=0.1):
    values = (np.random.default_rng(seed + len(method)).random(50) < h5).astype(float)
    return Run(method, seed, {"test": {"H@5": h5}, "seconds_per_epoch": 1.0, "best_epoch": 1, "history": history},
               {"H@5": values})


def test_a_run_validated_once_draws_a_visible_marker(tmp_path, figure):
    once = [{"epoch": 1, "valid": {"H@5": 0.2}, "discrepancy_user": 40.0}]
    longer = [{"epoch": e, "valid": {"H@5": 0.1 * e}, "discrepancy_user": 50.0 / e} for e in (1, 2, 3)]
    files = summary_files(tmp_path, ["student", "rrd"], [0])
    result = report(files, {"student": [fake_run("student", 0, longer)], "rrd": [fake_run("rrd", 0, once, 0.2)]},
                    ("H@5",))
    assert result.figure == files["figure"] and files["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = figure
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert len(lines) == 4  # validation and discrepancy of each method
    for line in lines:
        assert line.get_marker() == "o" and line.get_markersize() > 0, line.get_label()
    single = [line for line in lines if line.get_label().startswith("rrd")]
    assert len(single) == 2 and all(len(line.get_xdata()) == 1 for line in single)


def test_epoch_ticks_are_integers(tmp_path, figure):
    history = [{"epoch": e, "valid": {"H@5": 0.1 * e}} for e in (1, 2, 3)]
    report(summary_files(tmp_path, ["student"], [0]), {"student": [fake_run("student", 0, history)]}, ("H@5",))
    (fig,) = figure
    fig.canvas.draw()
    ticks = fig.axes[0].get_xticks()
    assert len(ticks) >= 2 and np.all(ticks == np.round(ticks)), ticks  # not 1.0, 1.25, 1.5, ...


def test_without_matplotlib_the_summary_is_written_and_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    files = summary_files(tmp_path, ["student"], [0])
    result = report(files, {"student": [fake_run("student", 0, [{"epoch": 1, "valid": {"H@5": 0.1}}])]}, ("H@5",))
    assert result.figure is None and not files["figure"].exists()
    assert "matplotlib" in result.figure_missing and "pip install" in result.figure_missing
    assert files["md"].exists() and "student" in result.text


def test_summary_files_are_named_by_the_runs(tmp_path):
    files = summary_files(tmp_path, ["student", "rrd", "dcd"], [0, 1, 2])
    assert files["md"] == tmp_path / "summary-student,rrd,dcd-seeds0,1,2.md"
    assert files["figure"] == tmp_path / "curves-student,rrd,dcd-seeds0,1,2.png"
    many = summary_files(tmp_path, [f"method{k}" for k in range(40)], [0])
    assert all(len(path.name) < 160 for path in many.values())
    assert many != summary_files(tmp_path, [f"method{k}" for k in range(41)], [0])


@pytest.fixture(scope="module")
def cli_teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    data = write_users_dat(synthetic(80, 120, n_factors=6, mean_interactions=12, min_interactions=5, seed=3),
                           folder / "users.dat")
    common = ["--data", str(data), "--epochs", "2", "--lr", "0.02", "--no-progress", "-q"]
    assert main(["teacher", "--dim", "8", "--eval-candidates", "40", "--out", str(folder / "t"), *common]) == 0
    return common, folder / "t" / "best.pt"


def test_a_second_comparison_keeps_the_first_ones_summary(tmp_path, capsys, cli_teacher):
    common, teacher = cli_teacher
    out = tmp_path / "cmp"

    def compare(methods, seeds):
        assert main(["compare", "--teacher", str(teacher), "--methods", methods, "--seeds", seeds, "--dim", "4",
                     "--top", "10", "--out", str(out), *common]) == 0
        return capsys.readouterr().out

    printed = compare("student,rrd", "0")
    first = summary_files(out, ["student", "rrd"], [0])
    assert all(str(path) in printed for path in first.values())
    before = {key: path.read_bytes() for key, path in first.items()}
    assert json.loads(before["json"])["methods"] == ["student", "rrd"]

    printed = compare("student,dcd", "0,1")  # other methods and seeds, same folder
    second = summary_files(out, ["student", "dcd"], [0, 1])
    assert json.loads(second["json"].read_text())["methods"] == ["student", "dcd"]
    assert {key: path.read_bytes() for key, path in first.items()} == before  # untouched
    assert "mean ± std over seeds" in printed and str(second["md"]) in printed
    assert not (out / "summary.json").exists()


# ------------------------------------------------------------------ progress


@pytest.fixture
def no_delay(monkeypatch):
    monkeypatch.setattr(progress, "DELAY", 0)


def catalogue_ranks(split):
    interactions = as_interactions(split)
    side = Side("user", torch.zeros((split.n_users, 5), dtype=torch.int64), interactions)
    return side.catalogue_ranks(new_model(split, 4), side.top)


@pytest.mark.parametrize("on", [True, False])
def test_the_long_steps_show_a_bar_only_when_progress_is_on(split, capsys, no_delay, on):
    capsys.readouterr()
    with progress.show_progress(on):
        catalogue_ranks(split)
        Evaluator(split, protocol="full", batch_size=16).evaluate(new_model(split, 4), "valid")
    err = capsys.readouterr().err
    for desc in ("student: catalogue ranks, user side", "evaluation: valid, full protocol"):
        assert (desc in err) == on, err


def test_progress_is_off_by_default_and_on_rank_zero_only(split, capsys, no_delay, monkeypatch):
    capsys.readouterr()
    catalogue_ranks(split)  # a library call outside the trainer and the command line: no bar
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress.distributed, "is_main", lambda: False)
    with progress.show_progress(True):
        catalogue_ranks(split)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("on", [True, False])
def test_the_trainer_shows_dcds_corrections_as_its_config_says(split, capsys, no_delay, on):
    teacher = new_model(split, 8, seed=3)
    rankings = compute_rankings(teacher, split, 10)
    capsys.readouterr()
    Trainer(new_model(split, 4), split, config(epochs=1, progress=on),
            method=lambda context: build_method("dcd", context, teacher, rankings)).fit()
    err = capsys.readouterr().err
    assert ("student: catalogue ranks, user side" in err) == on
    assert ("student: catalogue ranks, item side" in err) == on
    # the epoch's own bar ("epoch 1/1: 100%|..."), not the epoch's log line ("epoch 1/1 loss=..."), which a
    # command-line test run earlier in the same process may have sent to stderr
    assert ("epoch 1/1:" in err) == on


@pytest.mark.parametrize("terminal", [True, False])
def test_the_command_line_shows_bars_on_a_terminal_unless_no_progress(tmp_path, capsys, cli_teacher, no_delay,
                                                                      monkeypatch, terminal):
    common, teacher = cli_teacher
    argv = ["distill", "--teacher", str(teacher), "--method", "dcd", "--dim", "4", "--top", "10", *common]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)  # capsys's stderr, as a terminal or not
    assert main([*argv, "--out", str(tmp_path / "off")]) == 0
    assert "catalogue ranks" not in capsys.readouterr().err
    assert main([a for a in argv if a != "--no-progress"] + ["--out", str(tmp_path / "auto")]) == 0
    err = capsys.readouterr().err
    for desc in ("student: catalogue ranks, user side", "evaluation: test, sampled protocol"):
        assert (desc in err) == terminal, err


# ------------------------------------------------------------------ logging

SCRIPT = """
import logging, sys
{setup}
from rankdistill.data import synthetic
from rankdistill.models import build_model
from rankdistill.split import leave_one_out
from rankdistill.trainer import TrainConfig, Trainer
split = leave_one_out(synthetic(50, 60, n_factors=4, mean_interactions=8, min_interactions=4), n_candidates=20)
model = build_model({{"model": "bpr", "n_users": split.n_users, "n_items": split.n_items, "dim": 4}})
Trainer(model, split, TrainConfig(epochs=2, progress=False)).fit()
"""


@pytest.mark.parametrize("setup", [
    "logging.basicConfig(level=logging.INFO)",
    "import rankdistill; rankdistill.log_to_stderr()",
    "logging.basicConfig(level=logging.INFO); import rankdistill; rankdistill.log_to_stderr()",
    "",
])
def test_a_library_user_sees_the_epoch_lines_once_logging_is_on(setup):
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(setup=setup)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "epoch 1/2" in line]
    assert len(lines) == (1 if setup else 0), proc.stderr  # once, not doubled by two handlers


def test_log_to_stderr_is_idempotent_and_sets_the_level(capsys):
    logger = logging.getLogger("rankdistill")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    try:
        from rankdistill import log_to_stderr
        first = log_to_stderr()
        assert log_to_stderr(logging.WARNING) is first and logger.level == logging.WARNING
        logger.info("hidden")
        logger.warning("shown")
        err = capsys.readouterr().err
        assert "shown" in err and "hidden" not in err
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]
