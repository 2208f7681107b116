"""`rankdistill tune`: a grid or a sample of a command's options searched on
the validation metric (Optuna), resumable, the best setting retrained and
tested; the test part is read by the retraining alone."""

import csv
import json
import sys

import pytest

pytest.importorskip("optuna")

import optuna  # noqa: E402

from rankdistill import cli, tune  # noqa: E402
from rankdistill.cli import main  # noqa: E402
from rankdistill.data import synthetic  # noqa: E402
from rankdistill.evaluation import Evaluator  # noqa: E402

from distill_setup import run, write_users_dat  # noqa: E402

# Small and quick: 2 epochs, 40 evaluation candidates, the final retraining with one seed.
QUICK = ["--epochs", "2", "--eval-candidates", "40", "--final-seeds", "0", "--no-progress"]


@pytest.fixture(scope="module")
def users_dat(tmp_path_factory):
    data = synthetic(120, 600, n_factors=6, mean_interactions=15, min_interactions=5, seed=0)
    return write_users_dat(data, tmp_path_factory.mktemp("data") / "users.dat")



def run_error(capsys, *argv):
    """A mistake: status 2 and one line `rankdistill: error: ...`, the last on stderr."""
    try:
        code, _, err = run(capsys, *argv)
    except SystemExit as exc:
        code, err = exc.code, capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("rankdistill: error: "), err
    assert not any(line.startswith(("rankdistill:", "Traceback")) for line in lines[:-1]), err
    return lines[-1]


def read_trials(out):
    with open(out / tune.TRIALS_CSV, newline="") as f:
        return list(csv.DictReader(f))


def study_of(out, name="tune-student"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / tune.STUDY_DB}")


def test_grid_search_resumes_and_reads_the_test_part_only_to_retrain(capsys, users_dat, tmp_path, monkeypatch):
    parts = []
    evaluate = Evaluator.evaluate

    def recording(self, model, part, *args, **kwargs):
        parts.append(part)
        return evaluate(self, model, part, *args, **kwargs)

    final = tune._final

    def marked_final(*args, **kwargs):
        parts.append("FINAL")
        return final(*args, **kwargs)

    monkeypatch.setattr(Evaluator, "evaluate", recording)
    monkeypatch.setattr(tune, "_final", marked_final)
    out = tmp_path / "tune"
    argv = ["tune", "student", "--data", users_dat, "--grid", "lr=1e-3,1e-2", "--grid", "weight_decay=0,1e-6",
            *QUICK, "--out", out]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    rows = read_trials(out)
    assert [row["state"] for row in rows] == ["COMPLETE"] * 4
    assert {(float(row["lr"]), float(row["weight_decay"])) for row in rows} == {
        (lr, wd) for lr in (1e-3, 1e-2) for wd in (0.0, 1e-6)}
    assert (out / tune.STUDY_DB).is_file() and (out / cli.SPLIT_FILE).is_file()
    # the best trial is the argmax of the validation metric (the first of equals)
    best = json.loads((out / tune.BEST_JSON).read_text())["best"]
    values = [float(row["valid H@5"]) for row in rows]
    argmax = rows[values.index(max(values))]
    assert best["number"] == int(argmax["number"]) and best["value"] == pytest.approx(max(values))
    assert best["params"] == {"lr": float(argmax["lr"]), "weight_decay": float(argmax["weight_decay"])}
    space = json.loads((out / tune.SPACE_JSON).read_text())
    assert space["sampler"] == "grid" and space["dimensions"]["lr"]["values"] == [1e-3, 1e-2]
    trial = json.loads((out / rows[0]["folder"] / tune.TRIAL_JSON).read_text())
    assert trial["state"] == "COMPLETE" and trial["validation_curve"]
    assert not (out / rows[0]["folder"] / "checkpoint.pt").exists()  # a trial is never resumed
    # the test part: read by the final retraining alone
    assert "test" not in parts[:parts.index("FINAL")] and parts[:parts.index("FINAL")].count("valid") == 8
    assert "test" in parts[parts.index("FINAL"):]
    assert "student" in stdout and "H@5" in stdout and f"trial {best['number']}" in stdout
    assert (out / f"{tune.FINAL_PREFIX}{best['number']:04d}" / "student" / "seed0" / "results.json").is_file()

    # the same command again: the study is complete, nothing is trained again
    parts.clear()
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    assert "search complete" in stdout and "nothing to run" in stdout
    assert len(study_of(out).trials) == 4 and "test" not in parts and "valid" not in parts
    assert "finished run found" in err


def test_a_changed_setting_is_not_mixed_into_the_study(capsys, users_dat, tmp_path):
    out = tmp_path / "tune"
    base = ["tune", "student", "--data", users_dat, "--grid", "lr=1e-3,1e-2", "--no-final", *QUICK, "--out", out]
    assert run(capsys, *base)[0] == 0
    line = run_error(capsys, *base, "--epochs", "3")
    assert "other settings (epochs: 2 then, 3 now)" in line
    assert len(study_of(out).trials) == 2
    # --overwrite starts over
    assert run(capsys, *base, "--epochs", "3", "--overwrite")[0] == 0
    assert [row["epochs_run"] for row in read_trials(out)] == ["3", "3"]


def test_teacher_then_distill(capsys, users_dat, tmp_path):
    teacher_out = tmp_path / "teacher"
    code, stdout, err = run(capsys, "tune", "teacher", "--data", users_dat, "--grid", "lr=1e-2,5e-2", "--dim", "16",
                            *QUICK, "--out", teacher_out)
    assert code == 0, err
    assert [row["state"] for row in read_trials(teacher_out)] == ["COMPLETE"] * 2 and "teacher" in stdout
    teacher = next(teacher_out.glob(f"{tune.FINAL_PREFIX}*")) / "teacher" / "seed0" / "best.pt"
    out = tmp_path / "distill"
    code, stdout, err = run(capsys, "tune", "distill", "--method", "rrd", "--teacher", teacher, "--top", "40",
                            "--dim", "4", "--grid", "lambda_rrd=1e-3,1e-2", "--range", "temperature=1:20",
                            "--trials", "3", *QUICK, "--out", out)
    assert code == 0, err
    rows = read_trials(out)
    assert [row["state"] for row in rows] == ["COMPLETE"] * 3
    assert all(1 <= float(row["temperature"]) <= 20 for row in rows)
    assert json.loads((out / tune.SPACE_JSON).read_text())["sampler"] == "tpe"
    assert "rrd" in stdout
    # a trial's method options reach the method: its run records them
    run_dir = next((out).glob(f"{tune.FINAL_PREFIX}*")) / "rrd" / "seed0"
    results = json.loads((run_dir / "results.json").read_text())
    best = json.loads((out / tune.BEST_JSON).read_text())["best"]["params"]
    assert results["method_options"]["lambda_rrd"] == best["lambda_rrd"]
    assert results["method_options"]["temperature"] == pytest.approx(best["temperature"])


def test_a_diverging_trial_fails_with_its_reason_and_the_search_goes_on(capsys, users_dat, tmp_path):
    out = tmp_path / "tune"
    code, stdout, err = run(capsys, "tune", "student", "--data", users_dat, "--grid", "lr=1e-2,1e30", "--no-final",
                            *QUICK, "--out", out)
    assert code == 0, err
    rows = {float(row["lr"]): row for row in read_trials(out)}
    assert rows[1e30]["state"] == "FAIL" and "TrainingDiverged" in rows[1e30]["fail_reason"]
    assert rows[1e-2]["state"] == "COMPLETE" and not rows[1e-2]["fail_reason"]
    assert "1 complete, 0 pruned, 1 failed" in stdout


def test_only_failures_is_an_error(capsys, users_dat, tmp_path):
    line = run_error(capsys, "tune", "student", "--data", users_dat, "--grid", "lr=1e30,1e31", *QUICK,
                     "--out", tmp_path / "tune")
    assert "no trial of the search completed" in line


@pytest.mark.parametrize("search, fragment", [
    (["--grid", "lrr=1e-3,1e-2"], "--grid lrr=1e-3,1e-2: unknown key 'lrr'"),
    (["--grid", "mu=1e-3"], "unknown key 'mu'"),  # a method option, not the student's
    (["--grid", "lr="], "--grid lr=: no values"),
    (["--grid", "lr=1e-3,1e-3"], "listed more than once"),
    (["--grid", "lr=abc"], "lr: expected a number, got 'abc'"),
    (["--grid", "dim=0,4"], "dim: expected a positive integer, got 0"),
    (["--range", "lr=1e-1:1e-4:log"], "an empty range: LOW (0.1) must be below HIGH (0.0001)"),
    (["--range", "lr=1e-3:1e-3"], "an empty range"),
    (["--range", "lr=0:1e-1:log"], "a log range needs LOW > 0"),
    (["--range", "lr=0:1e-1", "--trials", "2"], "lr must be a positive number, got 0.0"),
    (["--range", "lr=1e-4"], "expected lr=LOW:HIGH[:log][:int]"),
    (["--range", "lr=1e-4:1e-1:int"], "lr is not an integer option"),
    (["--range", "dim=8:64:cubic"], "unknown flag 'cubic'"),
    (["--range", "lr=1e-4:1e-1"], "--sampler tpe (a sample of the space) needs --trials N"),
    (["--grid", "lr=1e-3", "--range", "lr=1e-4:1e-1", "--trials", "2"], "lr is already searched"),
    (["--grid", "corruption=0.1,0.2"], "corruption is CDAE's input dropout"),
    (["--sampler", "grid", "--range", "lr=1e-4:1e-1", "--trials", "2"], "--sampler grid needs every key as a --grid"),
    ([], "nothing to search"),
])
def test_a_bad_search_is_one_error_before_any_trial(capsys, users_dat, tmp_path, search, fragment):
    out = tmp_path / "tune"
    line = run_error(capsys, "tune", "student", "--data", users_dat, *search, *QUICK, "--out", out)
    assert fragment in line
    assert not out.exists()  # nothing trained, nothing written


def test_a_bad_method_key_names_the_methods_keys(capsys, users_dat, tmp_path):
    line = run_error(capsys, "tune", "distill", "--method", "rrd", "--teacher", tmp_path / "absent.pt",
                     "--grid", "mu=0.1,0.2", "--data", users_dat, *QUICK, "--out", tmp_path / "tune")
    assert "unknown key 'mu'" in line and "options of method rrd: " in line and "lambda_rrd" in line
    line = run_error(capsys, "tune", "distill", "--method", "dcd", "--teacher", tmp_path / "absent.pt",
                     "--grid", "mu=0,0.1", "--data", users_dat, *QUICK, "--out", tmp_path / "tune")
    assert "--grid mu=0,0.1: option mu must be a finite number > 0, got 0.0" in line


def test_jobs_run_trials_in_processes(capsys, users_dat, tmp_path):
    out = tmp_path / "tune"
    code, stdout, err = run(capsys, "tune", "student", "--data", users_dat, "--grid", "lr=1e-3,1e-2",
                            "--grid", "l2=0,1e-4", "--jobs", "2", "--no-final", *QUICK, "--out", out)
    assert code == 0, err
    rows = read_trials(out)
    assert [row["state"] for row in rows] == ["COMPLETE"] * 4  # each point once, none run twice
    assert {(float(row["lr"]), float(row["l2"])) for row in rows} == {(a, b) for a in (1e-3, 1e-2) for b in (0, 1e-4)}
    assert "2 processes" in err


def test_processes_racing_for_the_last_grid_points_run_each_point_once(tmp_path):
    # Many instant trials from several workers at once on one SQLite study: without the start lock
    # two workers often both see a point left and Optuna's GridSampler gives the second a running point.
    import argparse
    import threading

    space = {"lr": tune.Dimension("lr", "training", float, values=tuple(10.0 ** -k for k in range(1, 25)))}
    plan = tune._Plan("grid", None, len(space["lr"].values))
    args = argparse.Namespace(storage=None, study_name=None, tune_command="student", sampler_seed=0,
                              pruner="none", method=None)
    tune._open_study(optuna, args, tmp_path, space, plan)  # created once, as the main process does

    class Instant:
        started = None

        def __call__(self, trial):
            self.started()
            return space["lr"].suggest(trial)

    errors = []

    def worker(index):
        try:
            study = tune._open_study(optuna, args, tmp_path, space, plan, index)
            tune._optimize(study, Instant(), plan, tune._start_lock(args, tmp_path))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    trials = study_of(tmp_path).trials
    assert sorted(t.params["lr"] for t in trials) == sorted(space["lr"].values)
    assert all(t.state.name == "COMPLETE" for t in trials)


def test_the_pruner_stops_a_hopeless_trial(capsys, users_dat, tmp_path):
    # Sampler seed 1 orders the grid (5e-2, 1e-30): the good trial first, then one that cannot learn,
    # stopped once its warm-up epochs are over and its curve stays below the first's.
    out = tmp_path / "tune"
    code, stdout, err = run(capsys, "tune", "student", "--data", users_dat, "--grid", "lr=5e-2,1e-30", "--dim", "16",
                            "--epochs", "8", "--prune-warmup", "2", "--prune-startup", "1", "--sampler-seed", "1",
                            "--eval-candidates", "40", "--no-final", "--no-progress", "--out", out)
    assert code == 0, err
    rows = read_trials(out)
    assert [(float(r["lr"]), r["state"]) for r in rows] == [(5e-2, "COMPLETE"), (1e-30, "PRUNED")]
    assert rows[1]["epochs_run"] == "2" and rows[0]["epochs_run"] == "8"
    assert float(rows[1]["valid H@5"]) < float(rows[0]["valid H@5"])
    # without a pruner it runs to the end
    out = tmp_path / "no-pruner"
    assert run(capsys, "tune", "student", "--data", users_dat, "--grid", "lr=5e-2,1e-30", "--dim", "16", "--epochs",
               "8", "--prune-warmup", "2", "--prune-startup", "1", "--sampler-seed", "1", "--pruner", "none",
               "--eval-candidates", "40", "--no-final", "--no-progress", "--out", out)[0] == 0
    assert [r["state"] for r in read_trials(out)] == ["COMPLETE", "COMPLETE"]


def test_an_interrupted_trial_runs_again_on_resume(capsys, users_dat, tmp_path, monkeypatch):
    train_point = tune._train_point
    calls = []

    def interrupted_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train_point(*args, **kwargs)

    monkeypatch.setattr(tune, "_train_point", interrupted_second)
    out = tmp_path / "tune"
    argv = ["tune", "student", "--data", users_dat, "--grid", "lr=1e-3,1e-2,5e-2", "--no-final", *QUICK, "--out", out]
    code, _, err = run(capsys, *argv)
    assert code == 130 and "interrupted" in err
    assert [row["state"] for row in read_trials(out)] == ["COMPLETE", "FAIL"]
    monkeypatch.setattr(tune, "_train_point", train_point)
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    rows = read_trials(out)
    assert [row["state"] for row in rows] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert rows[1]["fail_reason"] == "interrupted; run again as trial 2" and rows[2]["retry_of"] == "1"
    assert rows[2]["lr"] == rows[1]["lr"]
    assert {float(row["lr"]) for row in rows if row["state"] == "COMPLETE"} == {1e-3, 1e-2, 5e-2}


@pytest.mark.parametrize("command", ["student", "teacher", *tune.PAPERS_METHODS])
def test_the_papers_spaces_are_valid_options(command):
    argv = (["tune", command] if command in ("student", "teacher") else
            ["tune", "distill", "--method", command, "--teacher", "t.pt"]) + ["--space", "papers", "--trials", "20"]
    args = cli.build_parser().parse_args(argv)
    space = tune.build_space(args)
    if command in ("student", "teacher"):
        assert set(space) == {"lr", "l2"} and space["lr"].values == (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
    assert all(dim.source.startswith("papers: ") for dim in space.values())
    tune._check_points(args, space)  # every value is one the command accepts
    assert tune._plan(args, space).sampler in ("grid", "tpe")


def test_without_optuna_the_error_says_what_to_install(capsys, users_dat, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    line = run_error(capsys, "tune", "student", "--data", users_dat, "--grid", "lr=1e-3,1e-2", *QUICK,
                     "--out", tmp_path / "tune")
    assert "pip install 'rankdistill[tune]'" in line
