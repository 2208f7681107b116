"""`rankdistill demo`: a teacher, then the plain student, RRD and DCD distilled
from it on the embedded synthetic data, the papers' table with each method's
improvement over the student, and the curves (CI's smoke run:
`rankdistill demo --epochs 2 --out DIR --no-progress`)."""

import io
import json
import re
import sys

import pytest

from rankdistill import cli
from rankdistill.cli import main
from rankdistill.compare import summary_files

ROWS = ("teacher", "student", "rrd", "dcd")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo at CI's smoke settings, run once for the module: its folder and output."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    capture = pytest.MonkeyPatch()
    stdout = io.StringIO()
    capture.setattr(sys, "stdout", stdout)
    try:
        code = main(["demo", "--epochs", "2", "--out", str(out), "--no-progress", "-q"])
    finally:
        capture.undo()
    assert code == 0
    return out, stdout.getvalue()


def table_rows(printed):
    """The printed table's rows by method: its cells."""
    lines = printed.splitlines()
    header = next(k for k, line in enumerate(lines) if line.startswith("Method "))
    rows = {}
    for line in lines[header + 2:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells[1:]
    return lines[header].split(), rows


def test_the_demo_prints_the_distillation_table(demo):
    out, printed = demo
    header, rows = table_rows(printed)
    assert list(rows) == list(ROWS)
    assert header[:7] == ["Method", "H@5", "M@5", "N@5", "H@10", "M@10", "N@10"] and "Impr." in header
    improvement = header.index("Impr.")  # "Impr. H@5" is two words: one column
    for method in ("rrd", "dcd"):
        assert re.fullmatch(r"[+-]\d+\.\d\d%", rows[method][improvement - 1]), rows[method]
    for baseline in ("teacher", "student"):  # no improvement of a baseline over itself
        assert not rows[baseline][improvement - 1].endswith("%")
    summary = json.loads(summary_files(out, list(ROWS), [0])["json"].read_text())
    assert summary["methods"] == list(ROWS)
    for method in ROWS:
        assert rows[method][0] == f"{summary['table'][method]['mean']['H@5']:.4f}"
    for method in ("rrd", "dcd"):  # the improvement and the words below the table, from the same numbers
        assert f"{100 * summary['table'][method]['improvement']['H@5']:+.2f}%" in rows[method]
        assert re.search(rf"^{method}: H@5 [+-]\d+\.\d% over the student, .*: p = ", printed, re.M)
    assert "10% of the teacher's parameters" in printed


def test_the_demo_runs_are_compare_runs(demo):
    out, _ = demo
    for method in ("student", "rrd", "dcd"):
        results = json.loads((out / method / "seed0" / "results.json").read_text())
        assert results["method"] == method and results["epochs_run"] == 2
        assert results["model_config"]["dim"] == cli.DEFAULT_DIMS["student"]
    teacher = json.loads((out / "teacher" / "seed0" / "results.json").read_text())
    assert teacher["role"] == "teacher" and teacher["model_config"]["dim"] == cli.DEFAULT_DIMS["teacher"]
    dcd = json.loads((out / "dcd" / "seed0" / "results.json").read_text())
    assert dcd["teacher_sha256"] and dcd["split_digest"] == teacher["split_digest"]


def test_the_demo_writes_the_figure_and_says_where(demo):
    out, printed = demo
    figure = summary_files(out, list(ROWS), [0])["figure"]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"figure: {figure}" in printed


def test_without_matplotlib_the_demo_says_how_to_install_it_and_prints_the_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    assert main(["demo", "--epochs", "1", "--out", str(tmp_path / "demo"), "--no-progress", "-q", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert list(table_rows(printed)[1]) == list(ROWS)
    assert "pip install" in printed and "matplotlib" in printed
    assert not summary_files(tmp_path / "demo", list(ROWS), [1])["figure"].exists()
    teacher = json.loads((tmp_path / "demo" / "teacher" / "seed1" / "results.json").read_text())
    assert teacher["train_config"]["seed"] == 1  # --seed trains the teacher too
