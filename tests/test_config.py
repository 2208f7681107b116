"""--config FILE.toml (the flags as TOML keys, the command line overriding
them) and the run folder's config.toml (the effective configuration, which
runs the same command again)."""

import argparse
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankdistill import cli, config
from rankdistill.cli import main
from rankdistill.data import synthetic
from rankdistill.methods import method_options

from distill_setup import run, write_users_dat

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the package rankdistill reads TOML with there
    tomllib = pytest.importorskip("tomli")

QUIET = ["--no-progress", "-q"]


@pytest.fixture(scope="module")
def users_dat(tmp_path_factory):
    data = synthetic(100, 400, n_factors=6, mean_interactions=12, min_interactions=5, seed=0)
    return write_users_dat(data, tmp_path_factory.mktemp("data") / "users.dat")



def run_error(capsys, *argv) -> str:
    try:
        code, _, err = run(capsys, *argv)
    except SystemExit as exc:
        code, err = exc.code, capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("rankdistill: error: "), err
    return lines[-1]


def toml_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def run_config(folder: Path) -> dict:
    with open(folder / config.RUN_CONFIG, "rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module")
def teacher_run(users_dat, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    assert main(["teacher", "--data", str(users_dat), "--out", str(out), "--dim", "12", "--epochs", "3",
                 "--lr", "0.02", "--eval-candidates", "50", *QUIET]) == 0
    return out


# ---------------------------------------------------------------- reading

def test_a_config_file_sets_the_options_and_the_command_line_overrides_them(capsys, tmp_path, users_dat):
    settings_file = toml_file(tmp_path / "teacher.toml", f"""
data = "{users_dat}"
dim = 4
epochs = 3
lr = 2e-2
weight-decay = 1e-6
eval_candidates = 50
cutoffs = [5, 10]
seed = 1
no_progress = true
""")
    out = tmp_path / "run"
    code, _, _ = run(capsys, "teacher", "--config", settings_file, "--epochs", "2", "--out", out, "-q")
    assert code == 0
    found = results(out)
    train = found["train_config"]
    assert (train["epochs"], train["lr"], train["weight_decay"], train["seed"]) == (2, 0.02, 1e-6, 1)
    assert train["cutoffs"] == [5, 10] and found["model_config"]["dim"] == 4
    assert found["split_seed"] == 0 and len(found["test"]) == 6  # H, M, N at 5 and 10


def test_the_runs_config_toml_holds_the_effective_configuration_and_runs_it_again(capsys, tmp_path, users_dat):
    out = tmp_path / "run"
    code, _, _ = run(capsys, "train", "--role", "teacher", "--data", users_dat, "--dim", "4", "--epochs", "2",
                     "--lr", "0.02", "--weight-decay", "1e-6", "--eval-candidates", "50", "--out", out, *QUIET)
    assert code == 0
    written = run_config(out)
    assert written["data"] == str(users_dat) and written["out"] == str(out) and written["role"] == "teacher"
    assert (written["dim"], written["epochs"], written["lr"], written["weight_decay"]) == (4, 2, 0.02, 1e-6)
    # defaults are written too, "how to run" flags are not
    assert written["batch_size"] == 1024 and written["format"] == "auto" and written["metric"] == "H@5"
    assert not {"config", "resume", "overwrite", "quiet", "no_progress", "options", "header"} & set(written)
    text = (out / config.RUN_CONFIG).read_text()
    assert text.startswith("# rankdistill ") and "rankdistill train --config THIS_FILE --out OTHER_FOLDER" in text

    again = tmp_path / "again"
    code, _, _ = run(capsys, "train", "--config", out / config.RUN_CONFIG, "--out", again, *QUIET)
    assert code == 0
    first, second = results(out), results(again)
    assert second["role"] == "teacher" and second["train_config"] == {**first["train_config"]}
    assert second["test"] == first["test"]  # the same run, on the CPU
    assert run_config(again) == {**written, "out": str(again)}


def test_a_distillation_config_with_options_and_an_o_that_overrides_one(capsys, tmp_path, users_dat, teacher_run):
    settings_file = toml_file(tmp_path / "dcd.toml", f"""
data = "{users_dat}"
teacher = "{teacher_run / 'best.pt'}"   # --teacher is required: the file gives it
method = "dcd"
top = 20
dim = 4
epochs = 2
lr = 0.02

[options]
lambda_ucd = 0.05
rows = "spread"

[options.dcd]
mu = 0.02
""")
    out = tmp_path / "dcd"
    code, _, _ = run(capsys, "distill", "--config", settings_file, "-o", "dcd:mu=0.03", "--out", out, *QUIET)
    assert code == 0
    options = results(out)["method_options"]
    assert (options["mu"], options["lambda_ucd"], options["rows"]) == (0.03, 0.05, "spread")
    assert run_config(out)["options"] == {"lambda_ucd": 0.05, "rows": "spread", "dcd": {"mu": 0.03}}

    again = tmp_path / "again"
    assert run(capsys, "distill", "--config", out / config.RUN_CONFIG, "--out", again, *QUIET)[0] == 0
    assert results(again)["method_options"] == options and results(again)["test"] == results(out)["test"]


def test_options_as_a_list_of_o_texts(capsys, tmp_path, users_dat, teacher_run):
    settings_file = toml_file(tmp_path / "rrd.toml", f"""
teacher = "{teacher_run / 'best.pt'}"
option = ["lambda_rrd=0.5"]
""")
    out = tmp_path / "rrd"
    code, _, _ = run(capsys, "distill", "--config", settings_file, "--method", "rrd", "--data", users_dat,
                     "--top", "20", "--dim", "4", "--epochs", "1", "--out", out, *QUIET)
    assert code == 0 and results(out)["method_options"]["lambda_rrd"] == 0.5
    assert run_config(out)["options"] == {"lambda_rrd": 0.5}


def test_resume_through_the_runs_config_and_a_refused_resume_leaves_it_alone(capsys, tmp_path, users_dat):
    out = tmp_path / "run"
    argv = ["student", "--data", users_dat, "--dim", "4", "--epochs", "1", "--eval-candidates", "50", "--out", out]
    assert run(capsys, *argv, *QUIET)[0] == 0
    saved = out / config.RUN_CONFIG
    assert run(capsys, "student", "--config", saved, "--resume", "--epochs", "2", *QUIET)[0] == 0
    assert results(out)["epochs_run"] == 2 and run_config(out)["epochs"] == 2  # what the resume changed
    before = saved.read_bytes()
    line = run_error(capsys, "student", "--config", saved, "--resume", "--lr", "0.5", *QUIET)
    assert "belongs to a different run" in line and "lr" in line
    assert saved.read_bytes() == before
    # a new run over it replaces it
    assert run(capsys, "student", "--config", saved, "--overwrite", "--lr", "0.03", *QUIET)[0] == 0
    assert run_config(out)["lr"] == 0.03 and run_config(out)["epochs"] == 2


def test_compare_writes_its_configuration_once_in_its_folder(capsys, tmp_path, users_dat, teacher_run):
    settings_file = toml_file(tmp_path / "cmp.toml", f"""
data = "{users_dat}"
teacher = "{teacher_run / 'best.pt'}"
methods = ["student", "dcd"]
seeds = "0"
top = 20
dim = 4
epochs = 1
""")
    out = tmp_path / "cmp"
    assert run(capsys, "compare", "--config", settings_file, "--out", out, *QUIET)[0] == 0
    written = run_config(out)
    assert written["methods"] == ["student", "dcd"] and written["seeds"] == [0] and written["out"] == str(out)
    assert not (out / "dcd" / "seed0" / config.RUN_CONFIG).exists()  # the runs' results.json record theirs


def test_evaluate_reads_a_config_file(tmp_path):
    settings_file = toml_file(tmp_path / "eval.toml", 'protocol = "full"\ncutoffs = [10, 20]\npart = "valid"\n')
    parser = cli.build_parser()
    argv = ["evaluate", "runs/x/best.pt", "--config", str(settings_file), "--cutoffs", "5"]
    config.apply_config_file(parser, argv)
    args = parser.parse_args(argv)
    assert (args.protocol, args.cutoffs, args.part, args.checkpoint) == ("full", (5,), "valid", Path("runs/x/best.pt"))


# ---------------------------------------------------------------- mistakes

@pytest.mark.parametrize("body, fragment", [
    ("lrr = 0.1", "unknown key 'lrr' for `rankdistill distill`; did you mean 'lr'?"),
    ("methods = 'dcd'", "unknown key 'methods' for `rankdistill distill` (an option of compare)"),
    ("config = 'other.toml'", "unknown key 'config' for `rankdistill distill`; a config file cannot name another"),
    ("[model]\ndim = 4", "model: expected a value, got a table"),
    ("epochs = 2.5", "epochs: expected a positive integer, got '2.5'"),
    ("dim = true", "dim = true: expected a number"),
    ("lr = 'fast'", "lr: invalid float value: 'fast'"),
    ("lr = [0.1]", "lr = [0.1]: expected one value (a number), got a list"),
    ("data = 5", "data = 5: expected a string (in quotes)"),
    ("header = 'yes'", "header = \"yes\": expected true or false"),
    ("format = 'xls'", "format: invalid choice 'xls' (choose from 'auto', 'users.dat', 'delimited')"),
    ("method = 'nope'", "method: invalid choice 'nope'"),
    ("seed = -1", "seed: expected a seed from 0 to 4294967295, got -1"),
    ("columns = ['user', 'user']", "columns: columns 'user,user': 'user' and 'user' both name the user column"),
    ("weight-decay = 0\nweight_decay = 1", "'weight-decay' and 'weight_decay' set the same option"),
    ("options = {nope = 1}", "options.nope: no method has an option 'nope'"),
    ("[options.dcd]\nmu = 'abc'", "options.dcd.mu: option mu: expected float, got 'abc'"),
    ("[options.xyz]\nmu = 1", "options.xyz: unknown method 'xyz'"),
    ("options = 3", "options = 3: expected a table such as [options] lambda_ucd = 0.1"),
    ("lr = 1e-3\nlr = 1e-4", "not valid TOML: Cannot overwrite a value (at line 2, column 10)"),
])
def test_a_mistake_in_a_config_file_names_the_file_and_the_key(capsys, tmp_path, teacher_run, body, fragment):
    settings_file = toml_file(tmp_path / "bad.toml", body.replace("'", '"') + "\n")
    out = tmp_path / "run"
    line = run_error(capsys, "distill", "--teacher", teacher_run / "best.pt", "--config", settings_file, "--out", out)
    assert line.startswith(f"rankdistill: error: {settings_file}: ") and fragment in line, line
    assert not out.exists()


def test_a_missing_config_file_and_one_for_another_command(capsys, tmp_path):
    missing = tmp_path / "absent.toml"
    assert run_error(capsys, "train", "--config", missing) == f"rankdistill: error: no such config file: {missing}"
    other = toml_file(tmp_path / "cmp.toml", "seeds = [0, 1]\n")
    line = run_error(capsys, "train", "--config", other)
    assert "unknown key 'seeds' for `rankdistill train` (an option of compare)" in line


def test_the_papers_recipe_is_read_under_the_config_file_and_the_command_line(capsys, tmp_path, users_dat):
    """--recipe papers: the authors' options (read from the shipped TOML, not
    restated here) become the defaults; --config overrides them, and the
    command line overrides both. The run records the effective values."""
    with open(config.recipe_path("papers"), "rb") as f:
        recipe = tomllib.load(f)
    assert recipe["epochs"] == 1000 and recipe["patience"] == 20
    assert recipe["weight_decay"] == 1e-3 / recipe["batch_size"]  # their 1e-3 on a summed loss
    settings_file = toml_file(tmp_path / "mine.toml", "patience = 7\n")
    out = tmp_path / "run"
    code, _, _ = run(capsys, "student", "--data", users_dat, "--recipe", "papers", "--config", settings_file,
                     "--epochs", "2", "--eval-candidates", "50", "--out", out, *QUIET)
    assert code == 0
    train = results(out)["train_config"]
    assert (train["epochs"], train["patience"]) == (2, 7)
    assert train["weight_decay"] == recipe["weight_decay"] and train["batch_size"] == recipe["batch_size"]
    assert train["patience_metrics"] == recipe["patience_metrics"] == ["H@5", "H@10", "H@20"]
    written = run_config(out)
    assert written["recipe"] == "papers" and written["patience_metrics"] == recipe["patience_metrics"]


@pytest.mark.parametrize("command", ["train", "teacher", "student", "distill", "compare"])
def test_every_training_command_takes_the_papers_recipe(command):
    parser = cli.build_parser()
    argv = [command, "--recipe", "papers", "--patience", "3"]
    argv += ["--teacher", "teacher.pt"] if command in ("distill", "compare") else []
    config.apply_config_file(parser, argv)
    args = parser.parse_args(argv)
    assert (args.epochs, args.patience, args.weight_decay) == (1000, 3, 9.765625e-07)
    assert args.patience_metrics == ("H@5", "H@10", "H@20")


def test_an_unknown_recipe_names_the_known_ones(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["teacher", "--recipe", "paper"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argument --recipe: invalid choice: 'paper' (choose from " in err
    assert "papers" in err.splitlines()[-1]


def test_without_a_toml_reader_the_error_says_what_to_install(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(config, "tomllib", None)  # Python 3.10 without tomli
    line = run_error(capsys, "train", "--config", toml_file(tmp_path / "c.toml", "dim = 4\n"))
    assert "needs Python 3.11 or later, or on Python 3.10 the tomli package (pip install tomli)" in line


# ---------------------------------------------------------------- writing

_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
_scalar = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), _text,
                    st.floats(allow_nan=False), st.sampled_from([1e-6, 0.1, 1e300, -0.0]))
_keys = st.one_of(st.from_regex(r"[a-z_][a-z0-9_-]{0,8}", fullmatch=True), _text.filter(bool))


@settings(max_examples=200, deadline=None)
@given(flat=st.dictionaries(_keys, st.one_of(_scalar, st.lists(_scalar, max_size=3)), max_size=6),
       options=st.dictionaries(_keys, st.one_of(_scalar, st.dictionaries(_keys, _scalar, min_size=1, max_size=3)),
                               max_size=4))
def test_written_toml_reads_back_as_the_same_values(flat, options):
    values = {**{k: v for k, v in flat.items() if k != "options"}, "options": options or None}
    text = config.dumps(values, comment="a comment\nof two lines")
    expected = {k: v for k, v in values.items() if v is not None}
    assert tomllib.loads(text) == expected


def test_non_finite_floats_are_written_as_toml_floats():
    parsed = tomllib.loads(config.dumps({"a": math.inf, "b": -math.inf, "c": math.nan}))
    assert parsed["a"] == math.inf and parsed["b"] == -math.inf and math.isnan(parsed["c"])


_OPTION_KEYS = ["mu", "lambda_rrd", "lambda_ucd", "temperature"]
_OPTION_METHODS = ["dcd", "rrd", "de-rrd"]
# METHOD:KEY=VALUE for a key the method has (another is refused), KEY=VALUE for any key
_TARGETED = [(m, k) for m in _OPTION_METHODS for k in _OPTION_KEYS
             if k in method_options(m).__dataclass_fields__] + [("", k) for k in _OPTION_KEYS]
_option_texts = st.lists(st.tuples(st.sampled_from(_TARGETED), st.sampled_from(["0.5", "2", "1e-3", "0.10", "7.25"])),
                         max_size=8)


@settings(max_examples=200, deadline=None)
@given(entries=_option_texts)
def test_the_written_options_table_gives_every_method_the_same_options_as_the_o_flags(entries):
    texts = [f"{target + ':' if target else ''}{key}={value}" for (target, key), value in entries]
    path = Path("written.toml")
    from_table = config._method_options(tomllib.loads(config.dumps({"options": config.options_table(texts)})).get(
        "options", {}), "options", path)
    for method in ("dcd", "rrd", "de-rrd", "de", "student"):
        given_ = cli._method_overrides(argparse.Namespace(option=texts), method)
        written = cli._method_overrides(argparse.Namespace(option=from_table), method)
        assert {k: float(v) for k, v in given_.items()} == {k: float(v) for k, v in written.items()}, (texts, method)
