"""BD and iBD: the rank-discrepancy samplers, the teacher that trains (and
the ones that do not), iBD's retained set, falling losses, the teacher's
outputs, exact resume of both models, and the command line."""

import json

import numpy as np
import pytest
import torch

from rankdistill.cli import main
from rankdistill.compare import summary_files
from rankdistill.data import synthetic
from rankdistill.errors import ConfigError
from rankdistill.methods import build_method, compute_rankings
from rankdistill.methods.bd import bd_weights, drop_repeats, retain_uncorrected, sample_discrepancies, soft_label_bce
from rankdistill.models import load_model
from rankdistill.trainer import Trainer, run_outputs

from distill_setup import (batches_per_epoch, config, csr_of, distill_context, interrupted_and_resumed, new_model,
                           small_split, strip, trained_teacher)

TEACHER_MODEL = "teacher.pt"  # the co-trained "teacher" model's file (run_outputs(["teacher"]))


@pytest.fixture(scope="module")
def split():
    return small_split(100, 150, mean_interactions=12, seed=2)


@pytest.fixture(scope="module")
def teacher(split):
    return trained_teacher(split, epochs=5)


def params(model):
    return [p.detach().clone() for p in model.parameters()]


# ---------------------------------------------------------------- samplers

# One row, eight columns; column 7 is excluded (observed).
STUDENT = torch.tensor([[0, 500, 2, 900, 4, 1, 6, 800]])
TEACHER = torch.tensor([[3, 1, 2, 0, 5, 6, 7, 4]])
# R_S - R_T: -3, 499, 0, 900, -1, -5, -1, 796 -> the teacher ranks 1 and 3 (and the excluded 7) higher;
# the student ranks 0, 4, 5, 6 higher.


def test_weights_follow_the_papers_formulas():
    ts = bd_weights(STUDENT, TEACHER, direction="ts", eps=1e-2)
    gap = (STUDENT - TEACHER).float()
    assert torch.allclose(ts, torch.tanh(torch.clamp(1e-2 * gap, min=0)))
    st = bd_weights(STUDENT, TEACHER, direction="st", eps=1e-3)
    expected = torch.exp(1e-3 * (TEACHER - STUDENT).float())
    assert torch.allclose(st / st.sum(), expected / expected.sum())
    huge = bd_weights(STUDENT * 10**6, TEACHER, direction="st", eps=1.0)  # exp would overflow unscaled
    assert torch.isfinite(huge).all() and huge.max() == 1


def test_student_sampler_picks_only_items_the_teacher_ranks_higher():
    excluded = torch.zeros(1, 8, dtype=torch.bool)
    excluded[0, 7] = True
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        drawn = sample_discrepancies(STUDENT, TEACHER, 4, direction="ts", eps=1e-2, excluded=excluded,
                                     generator=generator)
        # only 1 and 3 have a positive weight (7 is excluded): the rest is padding
        assert drawn.tolist() == [[1, 3, -1, -1]]


def test_teacher_sampler_prefers_items_the_student_ranks_higher():
    # One draw per row from many rows: frequencies ∝ exp(eps (R_T - R_S)), the excluded column never.
    rows = 20000
    student, teacher = STUDENT.expand(rows, -1).contiguous(), TEACHER.expand(rows, -1).contiguous()
    excluded = torch.zeros(rows, 8, dtype=torch.bool)
    excluded[:, 7] = True
    eps = 2e-3
    drawn = sample_discrepancies(student, teacher, 1, direction="st", eps=eps, excluded=excluded,
                                 generator=torch.Generator().manual_seed(1))[:, 0]
    counts = torch.bincount(drawn, minlength=8).float() / rows
    weights = torch.exp(eps * (TEACHER - STUDENT).float())[0]
    weights[7] = 0
    expected = weights / weights.sum()
    assert counts[7] == 0
    assert torch.all((counts - expected).abs() < 5 * torch.sqrt(expected * (1 - expected) / rows) + 1e-3)
    # the student ranks 0, 4, 5, 6 higher than the teacher: each is drawn more often than 1 and 3
    assert counts[[0, 4, 5, 6]].min() > counts[[1, 3]].max()


def test_soft_label_loss_is_zero_at_a_match_and_has_the_cross_entropy_gradient():
    scores = torch.tensor([[1.0, -2.0, 3.0]])
    mask = torch.tensor([[True, True, False]])
    assert float(soft_label_bce(scores, scores, mask, 5.0)) == pytest.approx(0.0, abs=1e-7)
    logits = torch.zeros(1, 3, requires_grad=True)
    soft_label_bce(logits, scores, mask, 5.0).backward()
    expected = (torch.sigmoid(logits.detach() / 5) - torch.sigmoid(scores / 5)) / 5 / 2 * mask
    assert torch.allclose(logits.grad, expected)


# ---------------------------------------------------------------- iBD's retained set

def test_retained_are_the_still_uncorrected_items_largest_gap_first():
    previous = torch.tensor([[1, 3, 7, 0, -1], [-1, -1, -1, -1, -1]])
    student = torch.cat([STUDENT, STUDENT])
    teacher = torch.cat([TEACHER, TEACHER])
    # T->S gaps of 1, 3, 7, 0: 499, 900, 796, -3 -> 0 is corrected; the rest by gap
    assert retain_uncorrected(previous, student, teacher, 5, direction="ts").tolist() == \
        [[3, 7, 1, -1, -1], [-1] * 5]
    assert retain_uncorrected(previous, student, teacher, 2, direction="ts").tolist() == [[3, 7], [-1, -1]]
    # S->T: only 0 (the student ranks it higher) is still uncorrected
    assert retain_uncorrected(previous, student, teacher, 3, direction="st").tolist() == [[0, -1, -1], [-1] * 3]
    assert retain_uncorrected(previous, student, teacher, 0, direction="st").shape == (2, 0)


def started(split, teacher, name, seed=0, **options):
    """A method built in the context a trainer with ``config(seed=seed)`` gives
    it, and a refresh of it for one of that trainer's epochs."""
    method = build_method(name, distill_context(split, seed=seed), teacher, None, options)
    n_batches = batches_per_epoch(split)
    return method, lambda epoch: method.refresh(epoch, batches=n_batches)


def test_ibd_round_keeps_uncorrected_items_apart_from_the_new_sample(split, teacher):
    method, refresh = started(split, teacher, "ibd", samples=6, retain=4)
    refresh(0)
    first = {d: method.distilled(d).clone() for d in ("ts", "st")}
    assert method.sets["ts"]["retained"].shape[1] == 0  # nothing to retain in the first round
    with torch.no_grad():  # move the models so that some discrepancies are corrected and others not
        for p in method.student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    refresh(10)
    observed = method.sets["ts"]["new"].new_zeros((split.n_users, split.n_items), dtype=torch.bool)
    observed[torch.as_tensor(split.train.users), torch.as_tensor(split.train.items)] = True
    with torch.no_grad():
        student_rank = _ranks(method.student, split)
        teacher_rank = _ranks(method.teacher, split)
    for d in ("ts", "st"):
        new, kept = method.sets[d]["new"], method.sets[d]["retained"]
        assert kept.shape[1] == 4
        assert (kept >= 0).any()
        expected = retain_uncorrected(first[d], student_rank, teacher_rank, 4, direction=d)
        assert torch.equal(kept, expected)
        for u in range(split.n_users):
            kept_u = {int(c) for c in kept[u] if c >= 0}
            new_u = {int(c) for c in new[u] if c >= 0}
            assert kept_u <= {int(c) for c in first[d][u] if c >= 0}  # from the previous round's set
            assert not kept_u & new_u  # the new sample is drawn from the other items
            assert not observed[u, list(kept_u | new_u)].any()
        # the distilled list is new then retained, padding last
        both = method.distilled(d)
        assert torch.equal((both >= 0).sum(1), (new >= 0).sum(1) + (kept >= 0).sum(1))


def test_a_round_is_the_same_in_blocks_of_any_size(split, teacher, monkeypatch):
    """A user's draws depend on the round's seeds and the user alone: blocks
    of 7 users (as a process's share, or a smaller memory budget, splits
    them) draw what one block of all users draws, over two iBD rounds."""
    from rankdistill import blocks

    def two_rounds():
        method, refresh = started(split, teacher, "ibd", samples=6, retain=4, update_every=2)
        refresh(0)
        with torch.no_grad():
            for p in method.student.parameters():
                p.add_(0.05 * torch.randn_like(p))
        refresh(2)
        return method.sets, dict(method._log)

    whole_sets, whole_log = two_rounds()
    monkeypatch.setattr(blocks, "SCORE_ALL_BUDGET", 7 * 4 * split.n_items)
    block_sets, block_log = two_rounds()
    for d in ("ts", "st"):
        assert whole_sets[d]["retained"].shape[1] == 4 and (whole_sets[d]["retained"] >= 0).any()
        for key in ("new", "retained"):
            assert torch.equal(block_sets[d][key], whole_sets[d][key])
    assert block_log == whole_log


def test_drop_repeats_keeps_the_first_of_each_column_in_order():
    cols = torch.tensor([[5, 3, 5, -1, 3, 7], [-1, -1, 2, 2, 2, 0]])
    assert drop_repeats(cols).tolist() == [[5, 3, -1, -1, -1, 7], [-1, -1, 2, -1, -1, 0]]


def _columns(rows):
    return [{int(c) for c in row if c >= 0} for row in rows]


def test_redraw_every_epoch_draws_anew_from_the_rounds_weights(split, teacher):
    method, refresh = started(split, teacher, "bd", samples=5, update_every=3, redraw_every=1)
    with torch.no_grad():
        gap = _ranks(method.student, split) - _ranks(method.teacher, split)  # R_S - R_T, as the round sees it
    draws = []
    for epoch in range(3):
        refresh(epoch)  # a round at epoch 0 only
        draws.append(method.distilled("ts").clone())
    assert method.sets["ts"]["new"].shape[1] == 3 * 5  # the round's three draws, side by side
    for draw in draws:
        assert draw.shape[1] == 5
        for u, cols in enumerate(_columns(draw)):
            assert len(cols) == int((draw[u] >= 0).sum())  # without replacement within a draw
            assert all(gap[u, c] > 0 for c in cols)  # T->S weight positive: the teacher ranks it higher
    # independent draws: different items in different epochs for most users
    differ = [a != b for a, b in zip(_columns(draws[0]), _columns(draws[1]))]
    assert np.mean(differ) > 0.5
    refresh(3)  # the next round replaces all three
    assert not torch.equal(method.sets["ts"]["new"][:, :5], draws[0])


def test_one_draw_per_round_is_kept_for_the_round(split, teacher):
    method, refresh = started(split, teacher, "bd", samples=5, update_every=3)
    refresh(0)
    first = method.distilled("st").clone()
    for epoch in (1, 2):
        refresh(epoch)
        assert torch.equal(method.distilled("st"), first)


def test_a_bd_state_kept_in_memory_stays_the_state_it_was(split, teacher):
    """The next sampling round replaces the method's sets; a state_dict taken
    before (kept in memory, as a checkpoint dict) must not follow."""
    method, refresh = started(split, teacher, "ibd", samples=6, retain=4)
    refresh(0)
    state = method.state_dict()
    kept = {d: {key: cols.clone() for key, cols in parts.items()} for d, parts in state["sets"].items()}
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    refresh(10)
    assert any(not torch.equal(method.sets[d][key], kept[d][key]) for d in kept for key in kept[d])
    for d, parts in kept.items():
        assert all(torch.equal(cols, state["sets"][d][key]) for key, cols in parts.items()), d


def test_ibd_judges_an_item_drawn_twice_in_a_round_once(split, teacher):
    method, refresh = started(split, teacher, "ibd", samples=6, update_every=4, redraw_every=1, retain=50)
    refresh(0)
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    refresh(4)
    for d in ("ts", "st"):
        kept = method.sets[d]["retained"]
        assert (kept >= 0).any()
        assert all(len(cols) == int((row >= 0).sum()) for cols, row in zip(_columns(kept), kept))


def _ranks(model, split):
    """Full ranks of every item per user, training items excluded (plain PyTorch)."""
    scores = model.score_all(torch.arange(split.n_users)).float()
    scores[torch.as_tensor(split.train.users), torch.as_tensor(split.train.items)] = -torch.inf
    order = scores.sort(dim=1, descending=True, stable=True).indices
    return order.argsort(dim=1)


def test_ibd_without_retention_and_with_bds_weights_is_bd(split, teacher):
    bd = Trainer(new_model(split, 4), split, config(epochs=3),
                 method=lambda context: build_method("bd", context, teacher, None, {"update_every": 1})).fit()
    ibd = Trainer(new_model(split, 4), split, config(epochs=3),
                  method=lambda context: build_method("ibd", context, teacher, None,
                                                      {"update_every": 1, "retain": 0})).fit()
    assert strip(bd.history) == strip(ibd.history)


# ---------------------------------------------------------------- training

def test_teacher_trains_under_bd_and_stays_frozen_under_unidirectional_methods(split, teacher):
    rankings = compute_rankings(teacher, split, 20)
    before = params(teacher)
    for name in ("rrd", "dcd"):
        trainer = Trainer(new_model(split, 4), split, config(epochs=2),
                          method=lambda context: build_method(name, context, teacher, rankings))
        trainer.fit()
        method = trainer.method
        assert trainer.models.keys() == {"model"}  # nothing co-trained
        assert all(torch.equal(a, b) for a, b in zip(before, method.teacher.parameters()))
        assert not any(p.requires_grad for p in method.teacher.parameters())
    for name in ("bd", "ibd"):
        trainer = Trainer(new_model(split, 4), split, config(epochs=2),
                          method=lambda context: build_method(name, context, teacher, rankings))
        trainer.fit()
        method = trainer.method
        assert trainer.models.keys() == {"model", "teacher"} and trainer.models["teacher"] is method.teacher
        assert all(p.requires_grad for p in method.teacher.parameters())
        assert all(not torch.equal(a, b) for a, b in zip(before, method.teacher.parameters()))
    # the caller's teacher (shared by the runs of a comparison) is untouched
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))


@pytest.mark.parametrize("name", ["bd", "ibd"])
def test_bidirectional_losses_fall(split, teacher, name):
    # Samples fixed after the first round: a fixed target each model must learn;
    # the distillation weighted up so that it leads (at T=5 and weight 0.5 the
    # base losses pull the two models apart faster on this tiny set).
    weights = {"lambda_ts": 20.0, "lambda_st": 20.0} if name == "bd" else {"gamma_ts": 20.0, "gamma_st": 20.0}
    options = {"update_every": 100, "temperature": 1.0, **weights}
    result = Trainer(new_model(split, 4), split, config(epochs=6, lr=5e-2),
                     method=lambda context: build_method(name, context, teacher, None, options)).fit()
    assert {"loss", "teacher_loss", "bd_ts", "bd_st"} <= set(result.history[0])
    for term in ("bd_ts", "bd_st"):
        values = np.array([r[term] for r in result.history])
        assert values[-1] < 0.7 * values[0] and values[1:].max() < 0.7 * values[0], (term, values)


@pytest.mark.parametrize("model", ["neumf", "cdae"])
def test_bd_runs_with_other_models(split, model, tmp_path):
    teacher = new_model(split, 8, seed=3, name=model)
    result = Trainer(new_model(split, 4, name=model), split, config(epochs=2),
                     method=lambda context: build_method("ibd", context, teacher, None, {"update_every": 1}),
                     out_dir=tmp_path).fit()
    assert {"teacher_loss", "bd_ts", "bd_st", "ts_uncorrected_share"} <= set(result.history[1])
    assert set(result.extra["teacher_test"]) == set(result.test)


def test_teacher_is_selected_tested_and_saved(split, teacher, tmp_path):
    trainer = Trainer(new_model(split, 4), split, config(epochs=4), out_dir=tmp_path,
                      method=lambda context: build_method("bd", context, teacher, None, {"update_every": 2}))
    method = trainer.method
    result = trainer.fit()
    valid = [r["teacher_valid"]["H@5"] for r in result.history]
    best = result.extra["teacher_best_epoch"]  # counted from 1
    assert valid[best - 1] == max(valid) and valid.index(max(valid)) == best - 1
    assert trainer.trackers["teacher"].best["epoch"] == best
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["teacher_test"] == result.extra["teacher_test"]
    assert results["teacher_model_config"]["dim"] == 16
    saved, info = load_model(tmp_path / TEACHER_MODEL, train=csr_of(split))
    assert info["role"] == "teacher" and info["split_seed"] == split.seed
    assert all(torch.equal(a, b) for a, b in zip(saved.parameters(), method.teacher.parameters()))
    assert (tmp_path / "teacher_test_per_user.npz").exists()
    assert {TEACHER_MODEL, "teacher_test_per_user.npz"} <= set(run_outputs(["teacher"]))
    assert {p.name for p in tmp_path.iterdir()} == set(run_outputs(["teacher"]))


def test_fresh_teacher_is_a_new_model_of_the_given_kind(split, teacher):
    method, _ = started(split, teacher, "bd", teacher_init="fresh", teacher_dim=12)
    assert method.teacher.dim == 12 and method.teacher.name == teacher.name
    again, _ = started(split, teacher, "bd", teacher_init="fresh", teacher_dim=12)
    assert all(torch.equal(a, b) for a, b in zip(method.teacher.parameters(), again.teacher.parameters()))
    with pytest.raises(ConfigError, match="teacher_init=fresh"):
        started(split, teacher, "bd", teacher_dim=12)
    with pytest.raises(ConfigError, match="needs a teacher"):
        build_method("bd", distill_context(split), None, None)


# ---------------------------------------------------------------- resume

@pytest.mark.parametrize("name", ["bd", "ibd"])
@pytest.mark.parametrize("redraw_every", [0, 1])
def test_resume_is_exact_for_both_models(split, teacher, tmp_path, name, redraw_every):
    options = {"update_every": 2, "rows": "spread", "samples": 8, "redraw_every": redraw_every}

    def other_method(context):  # another teacher and student: the checkpoint must win
        torch.manual_seed(999)
        return build_method(name, context, new_model(split, 16, seed=7), None, options)
    # Killed at epoch 3: after the round of epoch 2, before the next one (with
    # redraw_every=1, before the round's second draw).
    whole, resumed = interrupted_and_resumed(split, lambda c: build_method(name, c, teacher, None, options), tmp_path,
                                             epochs=5, crash_at=3, resume_method=other_method, resume_seed=8)
    assert strip(resumed.history) == strip(whole.history)
    assert resumed.test == whole.test and resumed.extra["teacher_test"] == whole.extra["teacher_test"]
    csr = csr_of(split)
    for file in ("best.pt", TEACHER_MODEL):
        a, _ = load_model(tmp_path / "whole" / file, train=csr)
        b, _ = load_model(tmp_path / "cut" / file, train=csr)
        assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters())), file


# ---------------------------------------------------------------- command line

@pytest.fixture(scope="module")
def cli_teacher(tmp_path_factory):
    """The command line's common options on a small ratings file, and a teacher trained on it."""
    folder = tmp_path_factory.mktemp("cli")
    data = synthetic(100, 150, n_factors=6, mean_interactions=12, min_interactions=5, seed=2)
    path = folder / "ratings.tsv"
    path.write_text("".join(f"{u}\t{i}\n" for u, i in zip(data.users, data.items)))
    common = ["--data", str(path), "--epochs", "2", "--no-progress", "-q"]
    assert main(["teacher", "--dim", "8", "--eval-candidates", "40", "--out", str(folder / "t"), *common]) == 0
    return common, folder / "t" / "best.pt"


def test_cli_distill_bd(tmp_path, capsys, cli_teacher):
    common, teacher = cli_teacher
    capsys.readouterr()
    out = tmp_path / "bd"
    assert main(["distill", "--method", "bd", "--teacher", str(teacher), "--dim", "4",
                 "--top", "10", "--out", str(out), "-o", "bd:update_every=1", "--protocol", "full", *common]) == 0
    printed = capsys.readouterr().out
    assert "bd teacher" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "bd" and "teacher_test" in results and (out / TEACHER_MODEL).exists()


def test_compare_lists_the_co_trained_teacher(tmp_path, capsys, cli_teacher):
    common, teacher = cli_teacher
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert main(["compare", "--methods", "student,bd", "--seeds", "0", "--teacher", str(teacher),
                 "--dim", "4", "--top", "10", "--protocol", "full", "--out", str(out), *common]) == 0
    files = summary_files(out, ["student", "bd"], [0])
    summary = json.loads(files["json"].read_text())
    assert summary["methods"] == ["student", "bd", "bd-teacher"]
    bd = json.loads((out / "bd" / "seed0" / "results.json").read_text())
    # the full protocol's table is the BD papers' (H@50, N@50, H@100, N@100), tested on H@50
    assert set(summary["table"]["bd-teacher"]["mean"]) == {"H@50", "N@50", "H@100", "N@100"}
    assert files["csv"].read_text().startswith("method,seeds,H@50 mean,H@50 std,N@50 mean")
    assert summary["table"]["bd-teacher"]["mean"]["H@50"] == pytest.approx(bd["teacher_test"]["H@50"])
    assert {test["metric"] for test in summary["paired_tests"]} == {"H@50"}
    printed = capsys.readouterr().out
    assert "bd-teacher" in printed and "N@100" in printed and "M@5" not in printed


def test_compare_trains_the_teacher_alone_as_the_co_trained_teachers_baseline(tmp_path, capsys, cli_teacher):
    common, teacher = cli_teacher
    capsys.readouterr()
    out = tmp_path / "cmp"
    def compare(teacher_dim):
        return main(["compare", "--methods", "teacher,student,bd", "--seeds", "0,1", "--teacher", str(teacher), "--dim", "4", "--top", "10", "--protocol", "full",
                     "-o", "teacher_init=fresh", "-o", f"teacher_dim={teacher_dim}", "--out", str(out), *common])

    assert compare(6) == 0
    files = summary_files(out, ["teacher", "student", "bd"], [0, 1])
    summary = json.loads(files["json"].read_text())
    assert summary["methods"] == ["teacher", "student", "bd", "bd-teacher"]
    alone = json.loads((out / "teacher" / "seed1" / "results.json").read_text())
    assert alone["role"] == "teacher" and alone["model_config"]["dim"] == 6 and alone["train_config"]["seed"] == 1
    table = summary["table"]
    # a co-trained teacher is measured against the teacher alone, the student rows against the student
    h50 = {m: np.mean([r["test"]["H@50"] for r in summary["runs"] if r["method"] == m]) for m in table}
    assert table["bd-teacher"]["improvement_over"] == "teacher"
    assert table["bd-teacher"]["improvement"]["H@50"] == pytest.approx(h50["bd-teacher"] / h50["teacher"] - 1)
    assert table["bd"]["improvement_over"] == "student"
    assert table["bd"]["improvement"]["H@50"] == pytest.approx(h50["bd"] / h50["student"] - 1)
    assert "improvement" not in table["student"] and "improvement" not in table["teacher"]
    assert ("teacher", "bd-teacher") in {(t["a"], t["b"]) for t in summary["paired_tests"]}
    assert "over teacher, the teacher's model trained alone" in capsys.readouterr().out
    report = files["md"].read_text().splitlines()
    assert report[0] == "| | H@50 | N@50 | H@100 | N@100 | vs baseline (H@50) | s/epoch | seeds |"
    row = next(line for line in report if line.startswith("| bd-teacher |"))
    assert f"{h50['bd-teacher']:.4f} ± " in row and f"{100 * (h50['bd-teacher'] / h50['teacher'] - 1):+.1f}% (teacher)" in row
    # the finished teacher runs are reused, and refused when the model asked for differs
    assert compare(6) == 0
    assert compare(7) == 2 and "made with other options (model)" in capsys.readouterr().err
