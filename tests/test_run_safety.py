"""A run never gives a silently wrong answer: non-finite models are refused,
models are evaluated only on their own split, a resume refuses a changed run,
one process writes a run folder, and files are never half-trusted or left behind."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rankdistill.cli import main
from rankdistill.data import synthetic
from rankdistill.errors import ConfigError, DataError, TrainingDiverged
from rankdistill.evaluation import Evaluator
from rankdistill.io import run_folder_lock, torch_load, torch_save
from rankdistill.methods import compute_rankings, load_or_compute_rankings
from rankdistill.methods.base import Distillation
from rankdistill.models import BPR, load_model
from rankdistill.split import Split, leave_one_out
from rankdistill.trainer import TrainConfig, Trainer

from distill_setup import run, write_users_dat

REPO = Path(__file__).resolve().parents[1]



def run_error(capsys, *argv):
    """Exit status 2 and one ``rankdistill: error:`` line, no traceback."""
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("rankdistill: error: "), err
    assert not any(line.startswith(("rankdistill:", "Traceback")) for line in lines[:-1]), err
    return lines[-1]


@pytest.fixture(scope="module")
def data():
    return synthetic(120, 300, n_factors=6, mean_interactions=15, min_interactions=5, seed=0)


@pytest.fixture(scope="module")
def users_dat(data, tmp_path_factory):
    return write_users_dat(data, tmp_path_factory.mktemp("data") / "users.dat")


COMMON = ["--eval-candidates", "50", "--dim", "8", "--lr", "0.02", "--no-progress", "-q"]


@pytest.fixture(scope="module")
def teacher_dir(users_dat, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    assert main(["teacher", "--data", str(users_dat), "--out", str(out), "--epochs", "2", *COMMON]) == 0
    return out


def distill_args(users_dat, teacher_dir, out, *extra):
    return ["distill", "--data", users_dat, "--teacher", teacher_dir / "best.pt", "--method", "rrd", "--top", "30",
            "--dim", "4", "--epochs", "2", "--lr", "0.02", "--no-progress", "-q", "--out", out, *extra]


# ---------------------------------------------------------------- non-finite models


def _nan_model(split):
    model = BPR(split.n_users, split.n_items, 4)
    with torch.no_grad():
        model.user_emb.weight[3] = float("nan")  # one user's scores are all NaN
    return model


@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_evaluation_refuses_nan_scores(data, protocol):
    # Before: every comparison with NaN is false, so the held-out item ranked first (a hit).
    split = leave_one_out(data, seed=0, n_candidates=50)
    with pytest.raises(TrainingDiverged, match="NaN or infinite for 1 of"):
        Evaluator(split, protocol=protocol).evaluate(_nan_model(split), "test")


def test_evaluation_refuses_infinite_scores(data):
    split = leave_one_out(data, seed=0, n_candidates=50)
    model = BPR(split.n_users, split.n_items, 4)
    with torch.no_grad():
        model.item_emb.weight[:] = float("inf")
    with pytest.raises(TrainingDiverged, match="NaN or infinite"):
        Evaluator(split).evaluate(model, "valid")


class _NanFromEpoch(Distillation):
    """A stand-in method whose term turns NaN from epoch ``start`` on."""

    name = "nan-term"

    def __init__(self, context, start):
        super().__init__(context)
        self.start, self.epoch = start, 0

    def refresh(self, epoch, *, batches=None):
        super().refresh(epoch, batches=batches)
        self.epoch = epoch

    def losses(self, model, batch):
        value = float("nan") if self.epoch >= self.start else 0.0
        return {"weird": torch.tensor(value)}


def test_training_stops_at_the_first_non_finite_loss_keeping_the_last_good_checkpoint(data, tmp_path):
    split = leave_one_out(data, seed=0, n_candidates=50)
    trainer = Trainer(BPR(split.n_users, split.n_items, 4), split, TrainConfig(epochs=5, lr=0.01),
                      method=lambda context: _NanFromEpoch(context, start=2), out_dir=tmp_path)
    with pytest.raises(TrainingDiverged) as caught:
        trainer.fit()
    message = str(caught.value)
    assert "epoch 3" in message and "weird" in message and "-o options of nan-term" in message
    assert "after epoch 2" in message
    checkpoint = torch_load(tmp_path / "checkpoint.pt", "training checkpoint")
    assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "results.json").exists()


def test_diverging_learning_rate_is_one_error_line_not_a_perfect_score(capsys, users_dat, tmp_path):
    # Before: exit 0 with H@5 = 1.0000 (the NaN model won model selection).
    line = run_error(capsys, "student", "--data", users_dat, "--out", tmp_path / "r", "--epochs", "2",
                     "--lr", "1e30", "--eval-candidates", "50", "--no-progress", "-q")
    assert "training diverged in epoch 1" in line and "--lr 1e+30" in line and "nothing was saved" in line
    assert not (tmp_path / "r" / "results.json").exists() and not (tmp_path / "r" / "best.pt").exists()


# ---------------------------------------------------------------- the model's own split


def _rebuilt_split(split_path):
    """The same data and seed, but other candidates: a split made elsewhere."""
    split = Split.load(split_path)
    rolled = np.roll(split.test_candidates, 1, axis=0)
    return Split(split.train, split.eval_users, split.valid_items, split.test_items, split.valid_candidates,
                 rolled, split.seed, split.data_fingerprint)


def test_split_digest_tells_splits_with_the_same_seed_apart(teacher_dir):
    original = Split.load(teacher_dir / "split.npz")
    rebuilt = _rebuilt_split(teacher_dir / "split.npz")
    assert (rebuilt.seed, rebuilt.data_fingerprint) == (original.seed, original.data_fingerprint)
    assert rebuilt.digest != original.digest
    with pytest.raises(ConfigError, match="trained on another split"):
        rebuilt.check_identity(original.identity(), "the teacher")


def test_every_output_records_the_split_digest(teacher_dir):
    digest = Split.load(teacher_dir / "split.npz").digest
    assert json.loads((teacher_dir / "results.json").read_text())["split_digest"] == digest
    for name in ("best.pt", "checkpoint.pt"):
        _, info = load_model(teacher_dir / name)
        assert info["split_digest"] == digest


def test_evaluate_and_distill_refuse_another_split_with_the_same_seed(capsys, users_dat, teacher_dir, tmp_path):
    # Before: only the data fingerprint and the seed were compared, so this split passed.
    other = tmp_path / "other.npz"
    _rebuilt_split(teacher_dir / "split.npz").save(other)
    line = run_error(capsys, "evaluate", teacher_dir / "best.pt", "--split", other)
    assert "trained on another split" in line
    line = run_error(capsys, *distill_args(users_dat, teacher_dir, tmp_path / "d", "--split", other))
    assert "trained on another split" in line
    assert not (tmp_path / "d").exists()


def test_a_missing_training_split_is_never_rebuilt(capsys, users_dat, teacher_dir, tmp_path):
    # Before: evaluate and distill quietly built a new split with the same seed.
    moved = tmp_path / "teacher"
    moved.mkdir()
    (moved / "best.pt").write_bytes((teacher_dir / "best.pt").read_bytes())
    hidden = tmp_path / "elsewhere.npz"
    (teacher_dir / "split.npz").rename(hidden)
    try:
        line = run_error(capsys, "evaluate", moved / "best.pt", "--data", users_dat)
        assert "pass it with --split" in line
        line = run_error(capsys, *distill_args(users_dat, moved, tmp_path / "d"))
        assert "pass it with --split" in line
        assert sorted(p.name for p in moved.iterdir()) == ["best.pt"] and not (tmp_path / "d").exists()
        # the right file under another name is accepted
        assert run(capsys, "evaluate", moved / "best.pt", "--split", hidden)[0] == 0
    finally:
        hidden.rename(teacher_dir / "split.npz")


def test_evaluate_names_a_model_of_another_data_set(capsys, teacher_dir, tmp_path):
    # Before: a CDAE/indptr or embedding-size message from deep inside the model.
    other = leave_one_out(synthetic(90, 200, n_factors=4, mean_interactions=12, min_interactions=5, seed=3),
                          n_candidates=20)
    other.save(tmp_path / "split.npz")
    line = run_error(capsys, "evaluate", teacher_dir / "best.pt", "--split", tmp_path / "split.npz")
    assert "trained on another data set" in line
    with pytest.raises(ConfigError, match="trained on another data set"):
        load_model(teacher_dir / "best.pt", shape=(other.n_users, other.n_items))


def test_distill_on_other_data_names_the_teachers_split_and_keeps_it(capsys, teacher_dir, tmp_path):
    # Before: "the split file was made from different data; remove it", of the teacher's own split.
    other = write_users_dat(synthetic(120, 300, n_factors=6, mean_interactions=15, min_interactions=5, seed=9),
                            tmp_path / "other.dat")
    line = run_error(capsys, *distill_args(other, teacher_dir, tmp_path / "d"))
    assert f"the split {teacher_dir / 'split.npz'} that {teacher_dir / 'best.pt'} was trained on" in line
    assert "other data than" in line and "--data" in line and "remove it" not in line


def test_top_at_least_the_catalogue_is_refused(capsys, users_dat, teacher_dir, tmp_path):
    split = Split.load(teacher_dir / "split.npz")
    line = run_error(capsys, *distill_args(users_dat, teacher_dir, tmp_path / "d", "--top", split.n_items))
    assert f"--top {split.n_items} is not below the number of" in line


# ---------------------------------------------------------------- resume


def test_resume_refuses_a_changed_run_and_records_what_may_change(capsys, users_dat, teacher_dir, tmp_path):
    out = tmp_path / "rrd"
    assert run(capsys, *distill_args(users_dat, teacher_dir, out))[0] == 0
    before = (out / "checkpoint.pt").read_bytes()
    # Before: each of these was accepted and results.json recorded only the new value.
    for extra, named in ((["-o", "lambda_rrd=0.5"], "method_options"), (["--top", "20"], "top"),
                         (["--seed", "1"], "seed"), (["--batch-size", "64"], "batch_size")):
        line = run_error(capsys, *distill_args(users_dat, teacher_dir, out, "--resume", "--epochs", "3", *extra))
        assert f"{named}: checkpoint" in line, line
    assert (out / "checkpoint.pt").read_bytes() == before
    # --epochs and --patience may change; results.json says when and how
    assert run(capsys, *distill_args(users_dat, teacher_dir, out, "--resume", "--epochs", "3",
                                     "--patience", "4"))[0] == 0
    results = json.loads((out / "results.json").read_text())
    assert results["epochs_run"] == 3 and results["train_config"]["patience"] == 4
    assert results["resumes"] == [{"after_epoch": 2, "changed": {"epochs": [2, 3], "patience": [10, 4]}}]


def test_resume_refuses_fewer_epochs_than_run_and_an_extension_off_the_validation_schedule(capsys, users_dat,
                                                                                           tmp_path):
    def student(out, *extra):
        return ["student", "--data", users_dat, "--out", out, *COMMON, *extra]

    out = tmp_path / "four"
    assert run(capsys, *student(out, "--epochs", "4"))[0] == 0
    before = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "results.json", "config.toml")}
    # Before: accepted, and results.json said epochs 2 next to epochs_run 4.
    line = run_error(capsys, *student(out, "--epochs", "2", "--resume"))
    assert "has run 4 epochs, more than --epochs 2" in line
    assert before == {name: (out / name).read_bytes() for name in before}

    # --eval-every 2: a 3-epoch run validates epoch 3 (its last), a 4-epoch run
    # only epochs 2 and 4; extending the first to 4 gave another best epoch.
    three = tmp_path / "three"
    assert run(capsys, *student(three, "--epochs", "3", "--eval-every", "2"))[0] == 0
    line = run_error(capsys, *student(three, "--epochs", "4", "--eval-every", "2", "--resume"))
    assert "off the --eval-every 2 schedule" in line
    # on the schedule, the extension is exactly the uninterrupted run
    two, whole = tmp_path / "two", tmp_path / "whole"
    assert run(capsys, *student(two, "--epochs", "2", "--eval-every", "2"))[0] == 0
    assert run(capsys, *student(two, "--epochs", "4", "--eval-every", "2", "--resume"))[0] == 0
    assert run(capsys, *student(whole, "--epochs", "4", "--eval-every", "2"))[0] == 0
    extended, uninterrupted = (json.loads((folder / "results.json").read_text()) for folder in (two, whole))
    assert extended["best_epoch"] == uninterrupted["best_epoch"] and extended["test"] == uninterrupted["test"]


def test_resume_refuses_another_teacher(capsys, users_dat, teacher_dir, tmp_path):
    out = tmp_path / "rrd"
    assert run(capsys, *distill_args(users_dat, teacher_dir, out))[0] == 0
    # the same split, a teacher trained one epoch longer
    other = tmp_path / "teacher2"
    assert main(["teacher", "--data", str(users_dat), "--split", str(teacher_dir / "split.npz"), "--out", str(other),
                 "--epochs", "3", *COMMON]) == 0
    line = run_error(capsys, *distill_args(users_dat, other, out, "--resume", "--epochs", "3",
                                           "--split", teacher_dir / "split.npz"))
    assert "teacher_sha256: checkpoint" in line


def test_a_finished_run_without_its_checkpoint_is_not_overwritten(capsys, users_dat, teacher_dir, tmp_path):
    out = tmp_path / "finished"
    shutil.copytree(teacher_dir, out)
    (out / "checkpoint.pt").unlink()  # the largest file, deleted to save space: the model stays
    best = (out / "best.pt").read_bytes()
    for extra in ((), ("--resume",)):
        line = run_error(capsys, "student", "--data", users_dat, "--out", out, "--epochs", "1", *COMMON, *extra)
        assert str(out) in line and "best.pt" in line and "--overwrite" in line
    assert (out / "best.pt").read_bytes() == best
    assert json.loads((out / "results.json").read_text())["role"] == "teacher"
    assert run(capsys, "student", "--data", users_dat, "--out", out, "--epochs", "1", *COMMON, "--overwrite")[0] == 0
    assert json.loads((out / "results.json").read_text())["role"] == "student"


def test_distill_refuses_to_write_over_its_teacher(capsys, users_dat, teacher_dir, tmp_path):
    folder = tmp_path / "teacher"
    shutil.copytree(teacher_dir, folder)
    best = (folder / "best.pt").read_bytes()
    (folder / "checkpoint.pt").unlink()
    for extra in ((), ("--overwrite",)):  # not even when asked to start over: the teacher is an input
        line = run_error(capsys, *distill_args(users_dat, folder, folder, *extra))
        assert "would overwrite the teacher" in line
    assert (folder / "best.pt").read_bytes() == best


# ---------------------------------------------------------------- one writer per folder


_HOLD = """
import sys, time
from rankdistill.io import run_folder_lock
with run_folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_refused_and_told_who_holds_the_folder(capsys, users_dat, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = run_error(capsys, "student", "--data", users_dat, "--out", out, "--epochs", "1", *COMMON)
        assert "in use by another rankdistill process" in line and f"pid {holder.pid}" in line
        assert not (out / "split.npz").exists() and not (out / "checkpoint.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    # a killed holder leaves its lock behind, but not its hold on the folder
    assert run(capsys, "student", "--data", users_dat, "--out", out, "--epochs", "1", *COMMON)[0] == 0


def test_a_refused_command_leaves_no_file_behind(tmp_path):
    folder = tmp_path / "new"
    with pytest.raises(ConfigError):
        with run_folder_lock(folder):
            raise ConfigError("refused")
    assert not folder.exists()
    existing = tmp_path / "old"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    with pytest.raises(ConfigError):
        with run_folder_lock(existing):
            raise ConfigError("refused")
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]


# ---------------------------------------------------------------- files


def test_truncated_split_file_is_a_clear_error(capsys, teacher_dir, tmp_path):
    truncated = tmp_path / "split.npz"
    truncated.write_bytes((teacher_dir / "split.npz").read_bytes()[:500])
    line = run_error(capsys, "evaluate", teacher_dir / "best.pt", "--split", truncated)
    assert "not a readable split file" in line and "truncated" in line


def test_checkpoints_carry_a_checksum_of_their_tensors(teacher_dir, tmp_path):
    payload = torch.load(teacher_dir / "best.pt", weights_only=True)
    payload["state_dict"]["user_emb.weight"][0, 0] += 1.0  # one changed weight, checksum kept
    torch.save(payload, tmp_path / "best.pt")
    with pytest.raises(DataError, match="checksum of its tensors does not match"):
        load_model(tmp_path / "best.pt")


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.pop("state_dict"), "incomplete model file"),
    (lambda p: p["state_dict"].__setitem__("user_emb.weight", torch.zeros(3, 3)), "do not fit"),
])
def test_model_files_with_missing_keys_or_wrong_shapes(teacher_dir, tmp_path, damage, message):
    payload = torch_load(teacher_dir / "best.pt", "model file")
    damage(payload)
    torch_save(tmp_path / "best.pt", payload)  # a valid checksum: the content itself is wrong
    with pytest.raises(DataError, match=message):
        load_model(tmp_path / "best.pt")


def test_training_checkpoint_with_missing_keys(capsys, users_dat, teacher_dir, tmp_path):
    out = tmp_path / "t"
    args = ["teacher", "--data", users_dat, "--split", teacher_dir / "split.npz", "--out", out, "--epochs", "1",
            *COMMON]
    assert run(capsys, *args)[0] == 0
    payload = torch_load(out / "checkpoint.pt", "training checkpoint")
    del payload["optimizer"]
    torch_save(out / "checkpoint.pt", payload)
    line = run_error(capsys, *args[:-len(COMMON) - 2], "--epochs", "2", "--resume", *COMMON)
    assert "incomplete training checkpoint (no optimizer)" in line


def test_rankings_cache_of_the_wrong_shape(teacher_dir):
    split = Split.load(teacher_dir / "split.npz")
    teacher, _ = load_model(teacher_dir / "best.pt")
    load_or_compute_rankings(teacher_dir / "best.pt", teacher, split, 25)
    cache = teacher_dir / "best-rankings-c25.pt"
    payload = torch_load(cache, "rankings cache")
    assert payload["key"]["split_digest"] == split.digest
    payload["items_of_user"] = payload["items_of_user"][:, :10]
    torch_save(cache, payload)
    try:
        with pytest.raises(DataError, match="items_of_user should be int64 of shape"):
            load_or_compute_rankings(teacher_dir / "best.pt", teacher, split, 25)
    finally:
        cache.unlink()


def test_leftovers_of_a_killed_write_are_removed_and_overwrite_starts_clean(capsys, users_dat, tmp_path):
    out = tmp_path / "run"
    args = ["student", "--data", users_dat, "--out", out, *COMMON]
    assert run(capsys, *args, "--epochs", "1")[0] == 0
    leftover = out / ".checkpoint.pt.k9x2.tmp"  # what atomic_open leaves when killed mid-write
    leftover.write_bytes(b"partial")
    # --overwrite: the old run's best.pt and results.json go before the new run starts, so a run
    # that then fails cannot leave them looking like its own
    line = run_error(capsys, *args, "--epochs", "1", "--overwrite", "--lr", "1e30")
    assert "training diverged" in line
    assert not leftover.exists()
    assert not (out / "best.pt").exists() and not (out / "results.json").exists()


_INTERRUPTED = """
import sys, torch
from rankdistill.cli import main
real_save, calls = torch.save, [0]
def save(obj, f, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 2:  # the second checkpoint: part of it written, then Ctrl-C
        f.write(b"partial checkpoint")
        raise KeyboardInterrupt
    return real_save(obj, f, *args, **kwargs)
torch.save = save
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_during_a_checkpoint_write_exits_130_cleanly(users_dat, tmp_path):
    out = tmp_path / "run"
    args = ["student", "--data", str(users_dat), "--out", str(out), "--epochs", "3", *COMMON]
    proc = subprocess.run([sys.executable, "-c", _INTERRUPTED, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "rankdistill: interrupted"
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary, no lock left
    assert torch_load(out / "checkpoint.pt", "training checkpoint")["epoch"] == 1
    assert main([*args, "--resume"]) == 0


@pytest.mark.parametrize("as_callable", [False, True])  # its embeddings checked; its blocks of scores checked
def test_a_teacher_with_nan_scores_gets_no_rankings(data, as_callable):
    # Before: torch.topk ranked the NaN items first, silently.
    split = leave_one_out(data, seed=0, n_candidates=50)
    teacher = _nan_model(split)
    with pytest.raises(TrainingDiverged, match="the teacher's (scores of rows|embeddings) .*NaN or infinite"):
        compute_rankings(teacher.score_all if as_callable else teacher, split, 20)


def test_a_refused_run_in_a_used_folder_adds_no_file(capsys, users_dat, tmp_path):
    out = tmp_path / "run"
    args = ["student", "--data", users_dat, "--out", out, "--epochs", "1", *COMMON]
    assert run(capsys, *args)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "--resume" in run_error(capsys, *args)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
