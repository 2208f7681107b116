"""The command line: user mistakes exit with status 2 and one line; train,
resume and evaluate work end to end on a small file."""

import json
import os
import re
import struct
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rankdistill import __version__, cli
from rankdistill.cli import main
from rankdistill.compare import (Run, format_summary, markdown_summary, paired_tests, plot_curves, summarize,
                                 summary_files, table_metrics)
from rankdistill.data import synthetic

from distill_setup import run, write_users_dat

REPO = Path(__file__).resolve().parents[1]



def run_error(capsys, *argv):
    """A user mistake: status 2 and one error line, the last one on stderr
    (progress lines may come before it); argparse exits, the commands return."""
    try:
        code, _, err = run(capsys, *argv)
    except SystemExit as exc:
        code, err = exc.code, capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("rankdistill: error: "), err
    assert not any(line.startswith(("rankdistill:", "Traceback")) for line in lines[:-1]), err
    return lines[-1]


@pytest.fixture(scope="module")
def users_dat(tmp_path_factory):
    """A small users.dat written from the synthetic generator."""
    data = synthetic(120, 600, n_factors=6, mean_interactions=15, min_interactions=5, seed=0)
    return write_users_dat(data, tmp_path_factory.mktemp("data") / "users.dat")


def test_missing_file(capsys, tmp_path):
    line = run_error(capsys, "teacher", "--data", str(tmp_path / "absent.dat"), "--out", str(tmp_path / "r"))
    assert line == f"rankdistill: error: no such data file: {tmp_path / 'absent.dat'}"


def test_malformed_file_names_the_line(capsys, tmp_path):
    path = tmp_path / "users.dat"
    path.write_text("2 1 2\n3 4 5\n1 7\n")
    line = run_error(capsys, "student", "--data", str(path), "--out", str(tmp_path / "r"))
    assert f"{path}, line 2: COUNT is 3 but the line lists 2 items" in line


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--model", "svd"], "invalid choice: 'svd'"),
    (["train", "--epochs", "0"], "expected a positive integer"),
    (["train", "--cutoffs", "5,x"], "comma-separated positive integers"),
    (["train", "--metric", "H@7", "--epochs", "1"], "selection metric 'H@7'"),
    (["train", "--lr", "0", "--epochs", "1"], "lr must be a positive number"),
    (["train", "--device", "nonsense"], "unknown device"),
    (["train", "--sep", ","], "need --data"),
    ([], "a command is required"),
])
def test_bad_options(capsys, tmp_path, argv, fragment):
    line = run_error(capsys, *argv, *(["--out", str(tmp_path / "r")] if argv else []))
    assert fragment in line


def test_train_resume_and_evaluate(capsys, tmp_path, users_dat):
    out = tmp_path / "run"
    common = ["--data", str(users_dat), "--out", str(out), "--dim", "8", "--lr", "0.01", "--eval-candidates",
              "100", "--no-progress", "-q"]
    code, stdout, _ = run(capsys, "train", "--role", "teacher", "--epochs", "2", *common)
    assert code == 0 and "Teacher (bpr, dim 8)" in stdout
    assert {"best.pt", "checkpoint.pt", "results.json", "split.npz", "test_per_user.npz"} <= set(
        p.name for p in out.iterdir())

    # a second run in the same folder must be asked for explicitly
    assert "--resume" in run_error(capsys, "teacher", "--epochs", "2", *common)
    code, _, _ = run(capsys, "teacher", "--epochs", "4", "--resume", *common)
    results = json.loads((out / "results.json").read_text())
    assert code == 0 and results["epochs_run"] == 4 and results["role"] == "teacher"

    code, stdout, _ = run(capsys, "evaluate", str(out / "best.pt"), "--split", str(out / "split.npz"),
                          "--eval-candidates", "100", "--json", str(tmp_path / "m.json"))
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert metrics == pytest.approx(results["test"])
    assert f"{results['test']['H@5']:.4f}" in stdout

    # the split file records its seed: asking for another one is a mistake
    assert "--split-seed" in run_error(capsys, "student", "--epochs", "1", "--split-seed", "3", *common[:-4],
                                       "--split", str(out / "split.npz"), "--out", str(tmp_path / "other"))


def test_evaluate_uses_the_split_the_model_was_trained_on(capsys, tmp_path, users_dat):
    out = tmp_path / "run"
    data = ["--data", str(users_dat), "--eval-candidates", "100"]
    assert run(capsys, "student", *data, "--split-seed", "5", "--epochs", "1", "--out", str(out), "-q")[0] == 0
    # no --split: the split recorded in the model (its run folder's), not a new one
    code, _, _ = run(capsys, "evaluate", str(out / "best.pt"), "--json", str(tmp_path / "m.json"), "-q")
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert metrics == pytest.approx(json.loads((out / "results.json").read_text())["test"])
    line = run_error(capsys, "evaluate", str(out / "checkpoint.pt"), *data, "--split-seed", "6")
    assert "was made with --split-seed 5" in line


def test_evaluate_rejects_a_file_that_is_not_a_model(capsys, tmp_path, users_dat):
    bogus = tmp_path / "best.pt"
    bogus.write_text("hello")
    line = run_error(capsys, "evaluate", str(bogus), "--data", str(users_dat), "--eval-candidates", "100")
    assert "not a readable model file" in line


def test_python_dash_m_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rankdistill", "train", "--data", str(tmp_path / "none.dat")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"rankdistill: error: no such data file: {tmp_path / 'none.dat'}"


@pytest.fixture(scope="module")
def teacher_run(users_dat, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    assert main(["teacher", "--data", str(users_dat), "--out", str(out), "--dim", "16", "--epochs", "4",
                 "--lr", "0.02", "--eval-candidates", "50", "--no-progress", "-q"]) == 0
    return out


def test_distill_and_compare_end_to_end(capsys, users_dat, teacher_run, tmp_path):
    common = ["--data", str(users_dat), "--teacher", str(teacher_run / "best.pt"), "--dim", "4", "--epochs", "3",
              "--lr", "0.02", "--top", "40", "--no-progress", "-q"]
    code, out, _ = run(capsys, "distill", "--method", "dcd", "-o", "rows=spread", "-o", "dcd:mu=0.01",
                       "--out", str(tmp_path / "dcd"), *common)
    assert code == 0 and "dcd" in out
    results = json.loads((tmp_path / "dcd" / "results.json").read_text())
    assert results["method"] == "dcd" and results["method_options"]["mu"] == 0.01
    assert results["method_options"]["rows"] == "spread"
    assert (teacher_run / "best-rankings-c40.pt").exists()  # cached next to the teacher

    compare = ["compare", "--methods", "student,rrd,dcd", "--seeds", "0,1", "--out", str(tmp_path / "cmp"), *common]
    code, out, _ = run(capsys, *compare)
    assert code == 0
    files = summary_files(tmp_path / "cmp", ["student", "rrd", "dcd"], [0, 1])
    summary = json.loads(files["json"].read_text())
    assert summary["methods"] == ["student", "rrd", "dcd"] and set(summary["table"]) == set(summary["methods"])
    assert {(t["a"], t["b"]) for t in summary["paired_tests"]} == {("student", "rrd"), ("student", "dcd"),
                                                                   ("rrd", "dcd")}
    runs = {(r["method"], r["seed"]): r["test"]["H@5"] for r in summary["runs"]}
    mean = (runs[("rrd", 0)] + runs[("rrd", 1)]) / 2
    assert summary["table"]["rrd"]["mean"]["H@5"] == pytest.approx(mean)
    assert files["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert files["csv"].read_text().splitlines()[0].startswith("method,seeds,H@5 mean")
    assert "paired t-tests on H@5" in out and "Impr. H@5" in out
    # A second call reuses the finished runs; other options are refused, not mixed in.
    assert run(capsys, *compare)[0] == 0
    line = run_error(capsys, *compare, "-o", "lambda_rrd=0.5")
    assert "holds a finished run made with other options" in line


def test_distill_errors(capsys, users_dat, teacher_run, tmp_path):
    common = ["--data", str(users_dat), "--teacher", str(teacher_run / "best.pt"), "--top", "40",
              "--out", str(tmp_path / "x")]
    assert "no method has an option 'nope'" in run_error(capsys, "distill", *common, "-o", "nope=1")
    assert "expected KEY=VALUE" in run_error(capsys, "distill", *common, "-o", "lambda_rrd")
    assert "unknown method(s) 'xyz'" in run_error(capsys, "compare", *common, "--methods", "rrd,xyz")
    # Before: an option of another method was dropped silently (plain RRD trained).
    line = run_error(capsys, "distill", *common, "--method", "rrd", "-o", "lambda_ucd=0.1")
    assert "method rrd has no option 'lambda_ucd', so it would be ignored" in line
    line = run_error(capsys, "compare", *common, "--methods", "student,rrd", "-o", "mu=0.1")
    assert "none of the methods run (student, rrd) has an option 'mu'" in line
    assert not (tmp_path / "x").exists()


# ------------------------------------------------- every option checked before any work

@pytest.mark.parametrize("argv, fragment", [
    (["--weight-decay", "nan"], "weight-decay must be a finite number >= 0, got nan"),
    (["--weight-decay", "inf"], "weight-decay must be a finite number >= 0, got inf"),
    (["--seed", "-1"], "argument --seed: expected a seed from 0 to 4294967295, got -1"),
    (["--seed", "4294967296"], "argument --seed: expected a seed from 0 to 4294967295, got 4294967296"),
    (["--split-seed", "-1"], "argument --split-seed: expected a seed from 0 to 4294967295, got -1"),
    (["--corruption", "nan"], "argument --corruption: expected a finite number, got 'nan'"),
    (["--corruption", "1"], "argument --corruption: expected a probability in [0, 1), got '1'"),
    (["--negatives", "100000000"], "--negatives 100000000: a positive's negatives are drawn from the other"),
    (["--dim", "1000000000"], "--dim 1000000000: the embeddings of 120 users and"),
    (["--device", "meta"], "unknown device 'meta'; use cpu, cuda or cuda:N"),
    (["--device", "mps"], "unknown device 'mps'; use cpu, cuda or cuda:N"),
    (["--device", "xla"], "unknown device 'xla'; use cpu, cuda or cuda:N"),
])
def test_train_checks_numbers_and_devices_before_any_work(capsys, tmp_path, users_dat, argv, fragment):
    out = tmp_path / "run"
    line = run_error(capsys, "student", "--data", str(users_dat), "--dim", "4", "--epochs", "1",
                     "--eval-candidates", "50", "--no-progress", "--out", str(out), *argv)
    assert fragment in line
    assert not out.exists()



def test_the_rating_threshold_must_be_finite(capsys, tmp_path, users_dat):
    lines = users_dat.read_text().splitlines()
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("".join(f"{u},{i},5\n" for u, line in enumerate(lines) for i in line.split()[1:]))
    out = tmp_path / "run"
    line = run_error(capsys, "student", "--data", str(ratings), "--rating-threshold=-inf", "--dim", "4",
                     "--epochs", "1", "--eval-candidates", "50", "--out", str(out))  # -inf kept every row
    assert "argument --rating-threshold: expected a finite number, got '-inf'" in line
    assert not out.exists()

def test_a_model_too_large_for_the_memory_is_refused_with_its_size(capsys, tmp_path, users_dat, monkeypatch):
    monkeypatch.setattr(cli, "_memory", lambda device: (10**9, "this machine's"))
    line = run_error(capsys, "student", "--data", str(users_dat), "--dim", "200000", "--eval-candidates", "50",
                     "--out", str(tmp_path / "r"))
    # (120 users + about 430 items) x 200,000 floats x 16 bytes: about 1.8 GB
    assert re.search(r"--dim 200000: the embeddings of 120 users and \d+ items alone need 1\.\d GB to train "
                     r"\(float32 weights, gradients and Adam's two moments\), more than this machine's 1\.0 GB", line)


def test_a_cuda_device_beyond_the_machines_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    line = run_error(capsys, "student", "--device", "cuda:1", "--out", str(tmp_path / "r"))
    assert line.endswith("device 'cuda:1': this machine has 1 CUDA device(s), cuda:0")



def test_a_cuda_run_is_bounded_by_the_gpus_memory(capsys, tmp_path, users_dat, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=10**9))
    line = run_error(capsys, "student", "--data", str(users_dat), "--device", "cuda", "--dim", "200000",
                     "--eval-candidates", "50", "--out", str(tmp_path / "r"))
    assert line.endswith("more than cuda's 1.0 GB of memory")

def test_the_largest_seeds_are_accepted(capsys, tmp_path, users_dat):
    code, _, _ = run(capsys, "student", "--data", str(users_dat), "--dim", "4", "--epochs", "1", "--seed", "4294967295",
                     "--split-seed", "4294967295", "--eval-candidates", "50", "--out", str(tmp_path / "r"), "-q")
    assert code == 0


@pytest.fixture
def no_rankings(monkeypatch):
    """The test fails if the command gets as far as the teacher's rankings."""
    def refuse(*args, **kwargs):
        raise AssertionError("the teacher's rankings were computed before the options were checked")
    monkeypatch.setattr(cli, "load_or_compute_rankings", refuse)


@pytest.mark.parametrize("argv, fragment", [
    # the third method's option: it used to be found after the first two had trained
    (["compare", "--methods", "student,rrd,dcd", "-o", "dcd:mu=nan"],
     "dcd: option mu must be a finite number > 0, got nan"),
    (["compare", "--methods", "student,rrd", "-o", "lambda_rrd=inf"],
     "rrd: option lambda_rrd must be a finite number >= 0, got inf"),
    (["compare", "--methods", "student,de", "-o", "tau_start=inf"], "de: option tau_start must be a finite number > 0"),
    (["compare", "--methods", "student,rrd", "-o", "rrd:uninteresting=0"],
     "rrd: option uninteresting must be an integer >= 1, got 0"),
    (["compare", "--methods", "student,rrd", "--seeds", "0,-1"], "argument --seeds: expected a seed from 0"),
    (["compare", "--methods", "student,rrd", "--lr", "nan"], "lr must be a positive number, got nan"),
    # an option of a method this command does not run is still a mistake
    (["distill", "--method", "rrd", "-o", "dcd:mu=-1"], "dcd: option mu must be a finite number > 0, got -1.0"),
    (["distill", "--method", "rrd", "-o", "lambda_rrd=nan"], "rrd: option lambda_rrd must be a finite number >= 0"),
    (["distill", "--method", "dcd", "-o", "temperature=nan"], "dcd: option temperature must be a finite number > 0"),
    (["distill", "--method", "rrd", "--metric", "H@7"], "selection metric 'H@7' is not one of"),
    (["distill", "--method", "rrd", "--seed", "-1"], "argument --seed: expected a seed from 0"),
    (["distill", "--method", "rrd", "--negatives", "100000000"], "--negatives 100000000: a positive's negatives"),
    (["distill", "--method", "bd", "-o", "teacher_init=fresh", "-o", "teacher_dim=1000000000"],
     "-o teacher_dim=1000000000: the embeddings of 120 users and"),
])
def test_distill_and_compare_check_every_option_before_any_work(capsys, users_dat, teacher_run, tmp_path, no_rankings,
                                                                argv, fragment):
    out = tmp_path / "out"
    line = run_error(capsys, *argv, "--data", str(users_dat), "--teacher", str(teacher_run / "best.pt"), "--top", "40",
                     "--dim", "4", "--epochs", "1", "--no-progress", "--out", str(out))
    assert fragment in line
    assert not out.exists()



def test_distill_checks_sizes_against_the_teachers_split(capsys, teacher_run, tmp_path, no_rankings):
    # no --data: the teacher's split (431 items), not the synthetic default (1,500 items)
    out = tmp_path / "out"
    line = run_error(capsys, "distill", "--method", "rrd", "--teacher", str(teacher_run / "best.pt"), "--top", "40",
                     "--negatives", "431", "--out", str(out))
    assert "--negatives 431: a positive's negatives are drawn from the other 430 items of the catalogue" in line
    assert not out.exists()

def test_methods_lists_every_method(capsys):
    code, out, _ = run(capsys, "methods")
    assert code == 0
    for name in ("student", "rrd", "ir-rrd", "dcd", "dcd-no-sampling", "dcd-code"):
        assert f"\n{name}: " in f"\n{out}"


def test_table_metrics_follow_the_protocol():
    assert table_metrics("sampled", (5, 10, 20)) == ("H@5", "M@5", "N@5", "H@10", "M@10", "N@10")
    assert table_metrics("full", (5, 10, 20, 50, 100)) == ("H@50", "N@50", "H@100", "N@100")
    assert table_metrics("full", (5, 10, 50)) == ("H@50", "N@50")
    # cutoffs outside both layouts: H, M, N at the two smallest
    assert table_metrics("full", (20, 3)) == ("H@3", "M@3", "N@3", "H@20", "M@20", "N@20")


@pytest.mark.parametrize("discrepancy,width", [(False, 660), (True, 1320)])
def test_curves_draw_the_discrepancy_panel_only_when_recorded(tmp_path, discrepancy, width):
    history = [{"epoch": e, "valid": {"H@50": 0.1 * e}, **({"discrepancy_user": 100.0 / (e + 1)} if discrepancy else {})}
               for e in range(3)]
    path = tmp_path / "curves.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. matplotlib's "No artists with labels found to put in legend"
        plot_curves(path, {"bd": [Run("bd", 0, {"history": history}, {})]}, "H@50")
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">I", header[16:20])[0] == width  # one panel or two, 120 dpi


def test_paired_test_p_below_the_smallest_double_is_not_printed_as_zero():
    # Users with a large, consistent difference: scipy's p underflows to 0.
    runs = {m: [Run(m, 0, {"test": {"H@5": v}, "seconds_per_epoch": 1.0, "best_epoch": 0},
                    {"H@5": np.full(5000, v) + np.linspace(0, 1e-3, 5000) * (m == "b")})]
            for m, v in (("a", 0.0), ("b", 1.0))}
    tests = paired_tests(runs, "H@5")
    assert tests[0]["p"] == 0.0
    table = summarize(runs, ("H@5",))
    for text in (format_summary(table, tests, ("H@5",)), markdown_summary(table, tests, ("H@5",))):
        assert "p < 1e-300" in text and "p = 0" not in text


def test_paired_tests_refuse_a_spread_of_zero():
    # Two seeds that each moved the metric by 0.1 (0.5 - 0.4 and 0.4 - 0.3
    # differ in the last bit): scipy would give t ~ 1e15 and p ~ 1e-16 with a
    # precision warning. There is no spread to test: no t, no p, and said so;
    # Holm adjusts the comparisons that do have a p-value.
    rng = np.random.default_rng(1)
    def run(method, seed, value):
        per_user = np.clip(rng.random(300), 0, 1)
        return Run(method, seed, {"test": {"H@5": value}, "seconds_per_epoch": 1.0, "best_epoch": 0},
                   {"H@5": per_user})
    runs = {"a": [run("a", 0, 0.5), run("a", 1, 0.4)], "b": [run("b", 0, 0.4), run("b", 1, 0.3)],
            "c": [run("c", 0, 0.45), run("c", 1, 0.2)]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tests = {(t["a"], t["b"]): t for t in paired_tests(runs, "H@5")}
    flat = tests[("a", "b")]["seeds"]
    assert flat["t"] is None and flat["p"] is None and "p_holm" not in flat
    assert flat["differences"] == pytest.approx([0.1, 0.1])
    others = [tests[pair]["seeds"] for pair in (("a", "c"), ("b", "c"))]
    assert all(entry["p"] is not None for entry in others)
    raw = sorted(entry["p"] for entry in others)  # a family of two: the smaller doubled
    assert sorted(entry["p_holm"] for entry in others) == pytest.approx([min(1.0, 2 * raw[0]), max(min(1.0, 2 * raw[0]), raw[1])])
    table = summarize(runs, ("H@5",))
    for text in (format_summary(table, list(tests.values()), ("H@5",)),
                 markdown_summary(table, list(tests.values()), ("H@5",))):
        assert "a vs b: mean difference" in text and "over 2 seeds every difference the same: no spread, no t-test" in text
    json.dumps(list(tests.values()), allow_nan=False)  # the summary file stays strict JSON


def test_version_and_a_bare_command(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0 and capsys.readouterr().out.strip() == f"rankdistill {__version__}"
    code = main([])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("usage: rankdistill") and err.strip().endswith("a command is required (see above)")


def test_the_sdist_holds_every_source_the_build_compiles(tmp_path):
    # Before: no MANIFEST.in, so the sdist had no .h/.cuh/.cu file and did not build.
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=REPO, check=True,
                   capture_output=True, env={**os.environ, "RANKDISTILL_WITH_CUDA": "0"}, timeout=300)
    (archive,) = tmp_path.glob("rankdistill-*.tar.gz")
    with tarfile.open(archive) as tar:
        packed = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    sources = {str(p.relative_to(REPO)) for p in (REPO / "csrc").rglob("*") if p.suffix in (".h", ".cuh", ".cpp", ".cu")}
    assert sources and sources <= packed
    assert {"LICENSE", "MANIFEST.in", "setup.py", "rankdistill/__init__.py"} <= packed


def test_paired_tests_over_seeds_and_users_with_holm():
    """The issue's case: per-seed differences +0.015, +0.022, -0.011 (p = 0.47
    over seeds) against a tiny p over users; Holm multiplies the smallest of
    three p-values by 3, the next by 2."""
    rng = np.random.default_rng(0)
    base = rng.random(4000)
    def run(method, seed, shift):
        values = np.clip(base + shift + rng.normal(0, 0.01, base.size), 0, 1)
        return Run(method, seed, {"test": {"H@5": float(values.mean())}, "seconds_per_epoch": 1.0, "best_epoch": 0},
                   {"H@5": values})
    runs = {"rrd": [run("rrd", s, 0.0) for s in range(3)],
            "dcd": [run("dcd", s, d) for s, d in zip(range(3), (0.015, 0.022, -0.011))],
            "student": [run("student", 0, -0.05)]}
    tests = {(t["a"], t["b"]): t for t in paired_tests(runs, "H@5")}
    pair = tests[("rrd", "dcd")]
    differences = [runs["rrd"][s].test["H@5"] - runs["dcd"][s].test["H@5"] for s in range(3)]
    from scipy import stats
    assert pair["seeds"]["n"] == 3 and pair["seeds"]["differences"] == pytest.approx(differences)
    assert pair["seeds"]["p"] == pytest.approx(stats.ttest_rel([r.test["H@5"] for r in runs["rrd"]],
                                                               [r.test["H@5"] for r in runs["dcd"]]).pvalue)
    assert pair["seeds"]["p"] > 0.3 and pair["p"] < 1e-6  # confident over users, not over seeds
    assert tests[("rrd", "student")]["seeds"] is None  # one common seed: n/a
    raw = [t["p"] for t in tests.values()]
    order = np.argsort(raw)
    expected = np.maximum.accumulate([min(1.0, (3 - k) * raw[i]) for k, i in enumerate(order)])
    assert [list(tests.values())[i]["p_holm"] for i in order] == pytest.approx(expected)
    text = format_summary(summarize(runs, ("H@5",)), list(tests.values()), ("H@5",))
    assert "over seeds n/a" in text and "± n/a" in text and "Holm" in text
    assert "± n/a" in markdown_summary(summarize(runs, ("H@5",)), list(tests.values()), ("H@5",))


def test_results_record_the_software_that_made_them(teacher_run):
    results = json.loads((teacher_run / "results.json").read_text())
    assert results["rankdistill_version"] == __version__ and results["torch_version"] == torch.__version__
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout (CI's fresh clone is one): its commit, +dirty if changed
        assert results["git_commit"].split("+")[0] == head.stdout.strip()
    else:
        assert results["git_commit"] is None
