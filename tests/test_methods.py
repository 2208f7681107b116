"""The distillation methods on the trainer: teacher rankings, RRD's samples,
DCD's discrepancy selection, the ablation switches, diagnostics, exact resume,
and that every method's distillation loss falls while it trains."""

import dataclasses

import numpy as np
import pytest
import torch

from rankdistill.errors import ConfigError
from rankdistill.methods import METHODS, build_method, compute_rankings, load_or_compute_rankings
from rankdistill import blocks, ops, reference
from rankdistill.methods import base as methods_base
from rankdistill import trainer as trainer_module
from rankdistill.methods.base import Batch, Side
from rankdistill.methods.dcd import largest_discrepancies, select_discrepancies
from rankdistill.methods.rrd import sample_interesting, sample_uninteresting
from rankdistill.methods import method_options
from rankdistill.models import save_model
from rankdistill.scoring import InteractionMatrix, as_interactions
from rankdistill.trainer import Trainer, seed_everything

from distill_setup import (TOP, batches_per_epoch, config, distill_context, interrupted_and_resumed, new_model,
                           small_split, strip)



@pytest.fixture(scope="module")
def split():
    return small_split(120, 200, seed=1)


def user_side(split, rankings):
    return Side("user", rankings.items_of_user, as_interactions(split))


def item_side(split, rankings):
    return Side("item", rankings.users_of_item, as_interactions(split))


def nothing_observed(n_rows, n_cols):
    """Interactions of ``n_rows`` users with none of ``n_cols`` items."""
    return InteractionMatrix.from_csr(np.zeros(n_rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int64), n_cols)


# ---------------------------------------------------------------- rankings

# BPR is ranked once per side; NeuMF (a network per pair) in one pass, with
# blocks of TOP + 3 users merged into running lists, or one block of all users;
# blocks of one user (< C) take two passes again.
@pytest.mark.parametrize("model, block_rows", [("bpr", None), ("bpr", 1), ("neumf", None), ("neumf", TOP + 3),
                                               ("neumf", 1)])
def test_rankings_are_the_teachers_best_unobserved_columns(teacher, split, rankings, model, block_rows,
                                                           monkeypatch):
    if model == "neumf":
        teacher = new_model(split, 8, name="neumf").eval()
        assert teacher.scores_each_pair
    if block_rows is not None:
        monkeypatch.setattr(blocks, "SCORE_ALL_BUDGET", block_rows * split.n_items)
    if model != "bpr" or block_rows is not None:
        rankings = compute_rankings(teacher, split, TOP)
    with torch.no_grad():
        scores = teacher.score_all(torch.arange(split.n_users))
    seen = torch.zeros_like(scores, dtype=torch.bool)
    seen[torch.as_tensor(split.train.users), torch.as_tensor(split.train.items)] = True
    for matrix, mask, top in ((scores, seen, rankings.items_of_user), (scores.T, seen.T, rankings.users_of_item)):
        masked = matrix.masked_fill(mask, -torch.inf)
        expected = masked.sort(dim=1, descending=True, stable=True)
        assert top.shape == (matrix.shape[0], TOP)
        assert torch.equal(masked.gather(1, top), expected.values[:, :TOP])  # same scores in the same order
        assert not mask.gather(1, top).any()


def test_rankings_pad_rows_with_fewer_candidates_than_c(teacher, split):
    """C above the number of users: each item's list holds every user who has
    not seen it, then -1."""
    top = split.n_users
    padded = compute_rankings(new_model(split, 8, name="neumf"), split, top).users_of_item  # one pass
    unseen = split.n_users - np.bincount(split.train.items, minlength=split.n_items)
    expected_valid = torch.arange(top) < torch.as_tensor(unseen)[:, None]  # a prefix of each row
    assert torch.equal(padded >= 0, expected_valid)


def test_rankings_cache_is_reused_and_invalidated(teacher, split, tmp_path):
    path = tmp_path / "best.pt"
    save_model(path, teacher)
    first = load_or_compute_rankings(path, teacher, split, 10)
    cache = tmp_path / "best-rankings-c10.pt"
    assert cache.exists()
    stamp = cache.stat().st_mtime_ns
    again = load_or_compute_rankings(path, teacher, split, 10)
    assert cache.stat().st_mtime_ns == stamp and torch.equal(again.items_of_user, first.items_of_user)
    with torch.no_grad():
        teacher.item_emb.weight.mul_(-1)  # another teacher in the same file: the key changes
    try:
        save_model(path, teacher)
        flipped = load_or_compute_rankings(path, teacher, split, 10)
    finally:
        with torch.no_grad():
            teacher.item_emb.weight.mul_(-1)
    assert not torch.equal(flipped.items_of_user, first.items_of_user)


# ---------------------------------------------------------------- RRD samples

def test_rrd_samples_interesting_in_teacher_order_and_uninteresting_below(split, rankings):
    for side in (user_side(split, rankings), item_side(split, rankings)):
        generator = torch.Generator().manual_seed(0)
        interesting = sample_interesting(side, 8, 10.0, generator)
        uninteresting = sample_uninteresting(side, 8, generator)
        position = {(r, int(c)): k for r in range(side.n_rows) for k, c in enumerate(side.top[r]) if c >= 0}
        for r in range(side.n_rows):
            ranks = [position[(r, int(c))] for c in interesting[r] if c >= 0]
            assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
            below = uninteresting[r].tolist()
            assert len(set(below)) == len(below)
            assert not any((r, c) in position for c in below)
        assert not side.observed.contains(torch.arange(side.n_rows)[:, None], uninteresting).any()


@pytest.mark.parametrize("padded", [False, True])
def test_outside_top_is_the_observed_and_listed_columns(padded):
    # What RRD's uninteresting columns avoid, with and without padded lists
    # (the two ways the listed columns are gathered), against Python sets;
    # a column both observed and listed (a list of your own may hold one)
    # counts once.
    interactions = InteractionMatrix.from_pairs([0, 0, 1, 2, 2, 2], [1, 4, 0, 2, 3, 5], 3, 7)
    top = torch.tensor([[0, 2, 4], [1, 3, 5], [6, 0, 1]])
    if padded:
        top[1, 2] = top[2, 1:] = -1
    side = Side("user", top, interactions)
    assert side.has_padding == padded
    observed = {(0, 1), (0, 4), (1, 0), (2, 2), (2, 3), (2, 5)}
    listed = {(r, c) for r in range(3) for c in top[r].tolist() if c >= 0}
    expected = torch.tensor([[(r, c) in observed | listed for c in range(7)] for r in range(3)])
    outside = side.outside_top
    assert torch.equal(outside.contains(torch.arange(3)[:, None], torch.arange(7).expand(3, 7)), expected)
    assert outside.counts.tolist() == expected.sum(1).tolist()


def test_rrd_interesting_never_draws_padding():
    # A row with two listed columns of five: k = 4 draws both, in the
    # teacher's order, then -1; full rows draw 4 distinct listed columns.
    interactions = InteractionMatrix.from_pairs([0, 1, 2], [9, 9, 9], 3, 10)
    top = torch.tensor([[0, 1, 2, 3, 4], [5, 6, -1, -1, -1], [8, 7, 6, 5, 4]])
    side = Side("user", top, interactions)
    for seed in range(20):
        drawn = sample_interesting(side, 4, 10.0, torch.Generator().manual_seed(seed))
        assert drawn[1].tolist() == [5, 6, -1, -1]
        for r in (0, 2):
            positions = [top[r].tolist().index(c) for c in drawn[r].tolist()]
            assert positions == sorted(set(positions)) and len(positions) == 4


def test_rrd_interesting_follows_exp_of_minus_rank_over_t(split, rankings):
    # One draw of a single column: P(rank k) = exp(-k/T) / sum_j exp(-j/T).
    side = user_side(split, rankings)
    rows = side.top[:1].expand(20000, -1).contiguous()
    big = Side("user", rows, nothing_observed(20000, split.n_items))
    draws = sample_interesting(big, 1, 5.0, torch.Generator().manual_seed(3))[:, 0]
    ranks = (rows == draws[:, None]).float().argmax(dim=1)
    expected = torch.exp(-torch.arange(TOP) / 5.0)
    expected /= expected.sum()
    observed = torch.bincount(ranks, minlength=TOP).float() / len(ranks)
    bound = 5 * torch.sqrt(expected * (1 - expected) / len(ranks)) + 1e-3
    assert torch.all((observed - expected).abs() < bound)


# ---------------------------------------------------------------- DCD selection

def constructed_side():
    """Three rows, five teacher candidates each; the second row's last one is padding."""
    top = torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, 23, -1], [30, 31, 32, 33, 34]])
    return Side("user", top, nothing_observed(3, 40))


STUDENT_RANKS = torch.tensor([[0, 9, 1, 3, 2],     # 11 under (9 > 1), 12 and 14 over, 13 equal
                              [5, 1, 4, 0, 0],     # 20, 22 under; 23 over; the padding never
                              [0, 1, 2, 3, 4]])    # no discrepancy at all


@pytest.mark.parametrize("sampling", [True, False])
def test_dcd_selects_only_discrepancies_in_the_right_direction(sampling):
    side = constructed_side()
    generator = torch.Generator().manual_seed(0)
    under = select_discrepancies(side, STUDENT_RANKS, 4, mu=0.5, direction="under", sampling=sampling,
                                 generator=generator)
    over = select_discrepancies(side, STUDENT_RANKS, 4, mu=0.5, direction="over", sampling=sampling,
                                generator=generator)
    as_sets = lambda t: [set(int(c) for c in row if c >= 0) for row in t]  # noqa: E731
    assert as_sets(under) == [{11}, {20, 22}, set()]
    assert as_sets(over) == [{12, 14}, {23}, set()]
    assert under[1].tolist() == [20, 22, -1, -1]  # teacher order, padding last


def test_dcd_under_list_is_in_teacher_order_and_sampled_by_weight():
    # 12 under-estimated candidates, 4 drawn: always in teacher order, and the
    # most under-estimated ones drawn most often.
    top = torch.arange(12).expand(4000, -1).contiguous()
    side = Side("user", top, nothing_observed(4000, 12))
    student = side.teacher_rank + torch.tensor([1, 50, 2, 40, 3, 30, 4, 20, 5, 10, 6, 8])
    under = select_discrepancies(side, student, 4, mu=0.05, direction="under", sampling=True,
                                 generator=torch.Generator().manual_seed(1))
    assert torch.all(under[:, 1:] > under[:, :-1])
    counts = torch.bincount(under.flatten(), minlength=12)
    assert counts[1] > counts[3] > counts[5] > counts[7] > counts[9] and counts[0] < counts[9]
    fixed = select_discrepancies(side, student, 4, mu=0.05, direction="under", sampling=False, generator=None)
    assert torch.equal(fixed, torch.tensor([1, 3, 5, 7]).expand(4000, -1))


def test_largest_discrepancies_hand_case():
    student = torch.tensor([[7, 0, 9, 3]])
    teacher = torch.tensor([[0, 1, 2, 3]])
    # under gaps: 7, -1, 7, 0 -> positions 0 and 2 (ties by weight), teacher order
    assert largest_discrepancies(student, teacher, 3, mu=0.1, direction="under").tolist() == [[0, 2, -1]]
    assert largest_discrepancies(student, teacher, 1, mu=0.1, direction="over").tolist() == [[1]]


# ---------------------------------------------------------------- methods on the trainer

def run(split, teacher, rankings, name, epochs=4, **options):
    trainer = Trainer(new_model(split, 4), split, config(epochs=epochs),
                      method=lambda context: build_method(name, context, teacher, rankings, options))
    return trainer.method, trainer.fit()


EXPECTED_TERMS = {
    "rrd": {"rrd"}, "ir-rrd": {"ir_rrd"}, "rrd+ir-rrd": {"rrd", "ir_rrd"},
    "dcd": {"rrd", "ucd", "icd"}, "dcd-no-correction": {"rrd", "ir_rrd"}, "dcd-no-item": {"rrd", "ucd"},
    "dcd-no-user": {"rrd", "icd"}, "dcd-no-sampling": {"rrd", "ucd", "icd"}, "dcd-code": {"rrd", "ucd", "icd"},
}


# RD, CD, DE, DE-RRD: tests/test_methods_unidirectional.py (DE logs its temperature, which must not fall here);
# BD, iBD (the teacher trains too): tests/test_bidirectional.py.
TESTED_ELSEWHERE = {"student", "rd", "cd", "de", "de-rrd", "bd", "ibd"}


@pytest.mark.parametrize("name", [name for name in METHODS if name not in TESTED_ELSEWHERE])
def test_distillation_loss_falls(split, teacher, rankings, name):
    # DCD's corrections fixed after the first refresh: a fixed target the
    # student must learn; the distillation terms weighted up so that they lead.
    defaults = dataclasses.asdict(method_options(name))
    options = {key: 1.0 for key, value in defaults.items() if key.startswith("lambda_") and value > 0}
    if "correct_every" in defaults:
        options["correct_every"] = 100
    result = Trainer(new_model(split, 4), split, config(epochs=6, lr=5e-2),
                     method=lambda context: build_method(name, context, teacher, rankings, options)).fit()
    terms = {k for k in result.history[0] if k not in ("epoch", "valid", "loss")
             and not k.startswith("discrepancy") and not k.endswith("seconds")}
    assert terms == EXPECTED_TERMS[name]
    for term in terms:
        # ListMLE has a high floor: a steady fall of a few percent is the signal.
        values = np.array([r[term] for r in result.history])
        assert values[-1] < 0.97 * values[0] and np.sum(np.diff(values) < 0) >= 4, (term, values)


@pytest.mark.parametrize("padded", [False, True])
def test_each_listwise_term_reads_the_lists_the_method_holds_now(split, teacher, rankings, padded):
    """RRD's lists change every epoch, DCD's corrections every correct_every
    epochs and on load_state_dict (and a user may change either in place).
    Each batch's terms must be lambda times the relaxed ListMLE (the
    reference's) of the lists held then, padding dropped, on both sides."""
    if padded:  # the last entries of every third row's lists padded, as for rows with few candidates
        lists = [side.clone() for side in (rankings.items_of_user, rankings.users_of_item)]
        for side in lists:
            side[::3, -7:] = -1
        rankings = type(rankings)(*lists)
    student = new_model(split, 4)
    method = build_method("dcd", distill_context(split, student), teacher, rankings,
                          {"lambda_ir": 2e-3, "rows": "batch", "correct_every": 2})
    users = torch.arange(split.n_users)
    items = users % split.n_items
    with torch.no_grad():
        scores = {"user": student.score_all(users)}
    scores["item"] = scores["user"].T
    rows = {"user": users.unique(), "item": items.unique()}

    def expected(side, lists, weight):
        ranked, tail = (cols[rows[side]] for cols in lists)
        row_scores = scores[side][rows[side]]
        return weight * reference.relaxed_listmle(row_scores.gather(1, ranked.clamp_min(0)),
                                                  row_scores.gather(1, tail.clamp_min(0)),
                                                  ranked_mask=ranked >= 0, tail_mask=tail >= 0)

    def check():
        o = method.options
        held = {"rrd": ("user", method.lists["user"], o.lambda_rrd),
                "ir_rrd": ("item", method.lists["item"], o.lambda_ir),
                "ucd": ("user", method.corrections["user"], o.lambda_ucd),
                "icd": ("item", method.corrections["item"], o.lambda_icd)}
        with torch.no_grad():
            terms = method.loss(users, items, items[:, None])
        assert set(terms) == set(held)
        for name, (side, lists, weight) in held.items():
            assert torch.allclose(terms[name], expected(side, lists, weight), rtol=1e-5), name

    seen = []
    for epoch in range(3):  # new RRD lists each epoch, new corrections at epochs 0 and 2
        method.refresh(epoch)
        check()
        seen.append(method.lists["user"][1])
    assert not torch.equal(seen[0], seen[1])  # the lists did change (the uninteresting ones, drawn anew)
    assert padded == bool((method.lists["user"][0] < 0).any())
    method.load_state_dict({"corrections": {side: tuple(cols.roll(1, dims=0) for cols in lists)
                                            for side, lists in method.corrections.items()}})
    check()
    method.lists["user"][1][:] = method.lists["user"][1].flip(0)  # changed in place
    check()


def test_ablations_change_only_their_switches():
    base = dataclasses.asdict(method_options("dcd"))
    expected = {"dcd-no-correction": {"lambda_ucd", "lambda_icd", "lambda_ir"}, "dcd-no-item": {"lambda_icd"},
                "dcd-no-user": {"lambda_ucd"}, "dcd-no-sampling": {"sampling"},
                "dcd-code": {"rank_scope", "correct_every"}}
    for name, switches in expected.items():
        options = dataclasses.asdict(method_options(name))
        assert {k for k in base if options[k] != base[k]} == switches, name


def test_dcd_without_sampling_is_deterministic_and_sampling_is_not(split, teacher, rankings):
    def corrections(name, seed):
        method = build_method(name, distill_context(split, seed=seed), teacher, rankings, {"m_under": 5})
        method.refresh(0, batches=batches_per_epoch(split))
        return method.corrections["user"][0]
    assert torch.equal(corrections("dcd-no-sampling", 0), corrections("dcd-no-sampling", 1))
    assert not torch.equal(corrections("dcd", 0), corrections("dcd", 1))


@pytest.mark.parametrize("rank_scope", ["catalogue", "candidates"])
def test_dcd_draws_in_blocks_of_rows_what_it_draws_in_one(split, teacher, rankings, rank_scope, monkeypatch):
    # A correction ranks, draws and drops a block of rows at a time (no [rows, C] ranks at 10^6 items):
    # every block draws from the round's streams with first_row, so blocks draw what one block does.
    def refreshed():
        options = {"rank_scope": rank_scope, "diagnose_every": 1, "diagnose_rows": 7, "m_under": 5, "m_over": 5}
        method = build_method("dcd", distill_context(split, seed=0), teacher, rankings, options)
        method.refresh(0, batches=batches_per_epoch(split))
        return method.corrections, method.epoch_log()
    whole, whole_log = refreshed()
    monkeypatch.setattr(blocks, "SCORE_ALL_BUDGET", 3 * TOP)  # 1 row per catalogue block, 3 per candidate block
    blocked, blocked_log = refreshed()
    assert whole.keys() == blocked.keys() == {"user", "item"}
    for side in whole:
        for one, many in zip(whole[side], blocked[side]):
            assert (one >= 0).any() and torch.equal(one, many)
    for side in ("user", "item"):
        assert whole_log[f"discrepancy_{side}"] == blocked_log[f"discrepancy_{side}"] > 0


def test_dcd_candidate_scope_ranks_within_the_teachers_list(split, teacher, rankings):
    side = user_side(split, rankings)
    student = new_model(split, 4)
    within = side.candidate_ranks(student, side.top)
    catalogue = side.catalogue_ranks(student, side.top)
    assert torch.equal(within.sort(dim=1).values, torch.arange(TOP).expand(split.n_users, -1))
    # The order among the candidates is the same either way.
    assert torch.equal(within.argsort(dim=1), catalogue.argsort(dim=1))


class ScoresOnly:
    """A model seen through its score methods only: catalogue ranks from blocks of scores."""

    def __init__(self, model):
        self.score_items, self.score_users = model.score_items, model.score_users
        self.score_all, self.score_all_users = model.score_all, model.score_all_users


@pytest.mark.parametrize("side_of", [user_side, item_side])
def test_dot_product_models_rank_without_score_blocks_and_agree(split, rankings, side_of, monkeypatch):
    # BPR has embedding_tables(): its catalogue ranks come from ops.dot_rank_positions; with
    # integer embeddings every score is exact, so they must equal the block path's, ties included.
    student = new_model(split, 4)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for table in (student.user_emb.weight, student.item_emb.weight):
            table.copy_(torch.randint(-2, 3, table.shape, generator=gen).float())
    side = side_of(split, rankings)
    calls = []
    fused = ops.dot_rank_positions
    monkeypatch.setattr(methods_base, "dot_rank_positions", lambda *a, **k: calls.append(1) or fused(*a, **k))
    got = side.catalogue_ranks(student, side.top)
    assert calls
    expected = side.catalogue_ranks(ScoresOnly(student), side.top)
    assert torch.equal(got, expected)
    rows = torch.tensor([5, 0, 17, 5])
    assert torch.equal(side.catalogue_ranks(student, side.top[rows], rows), expected[rows])


def test_diagnostics_are_recorded_at_each_refresh(split, teacher, rankings):
    _, result = run(split, teacher, rankings, "dcd", epochs=5, diagnose_every=2)
    recorded = [r["epoch"] for r in result.history if "discrepancy_user" in r]
    assert recorded == [1, 3, 5]  # before epochs 1, 3, 5 (refresh indices 0, 2, 4)
    record = result.history[0]
    # Independent computation for the initial student: mean |R_S - R_T| over the top-50 (here the top-30).
    side = user_side(split, rankings)
    ranks = side.catalogue_ranks(new_model(split, 4), side.top)
    assert record["discrepancy_user"] == pytest.approx(float((ranks - side.teacher_rank).abs().float().mean()))
    assert record["discrepancy_item"] > 0


@pytest.mark.parametrize("name", ["rrd", "dcd"])  # dcd: the sample is taken from its corrections' ranks
def test_diagnostics_over_a_fixed_sample_of_rows(split, teacher, rankings, name):
    method, result = run(split, teacher, rankings, name, epochs=3, diagnose_every=2, diagnose_rows=20)
    side = user_side(split, rankings)
    rows = method.diagnostic_rows(method.side("user"))
    assert len(rows) == 20 and len(set(rows.tolist())) == 20 and bool((rows.diff() > 0).all())
    assert torch.equal(method.diagnostic_rows(method.side("user")), rows)  # fixed for the run
    # independent: the initial student's catalogue ranks of every row, averaged over the sampled rows only
    ranks = side.catalogue_ranks(new_model(split, 4), side.top)
    expected = float((ranks - side.teacher_rank)[rows].abs().float().mean())
    assert result.history[0]["discrepancy_user"] == pytest.approx(expected)
    assert expected != pytest.approx(float((ranks - side.teacher_rank).abs().float().mean()))
    # the sample leaves the training draws as they were
    _, every_row = run(split, teacher, rankings, name, epochs=3, diagnose_every=2, diagnose_rows=0)
    assert [r["loss"] for r in every_row.history] == [r["loss"] for r in result.history]


@pytest.mark.parametrize("note_seconds, notes", [(0.0, 1), (1e9, 0)])
def test_costly_diagnostics_are_pointed_out_once(split, teacher, rankings, monkeypatch, caplog, note_seconds, notes):
    monkeypatch.setattr(trainer_module, "DIAGNOSTIC_NOTE_SECONDS", note_seconds)
    with caplog.at_level("INFO", logger="rankdistill"):
        run(split, teacher, rankings, "rrd", epochs=5, diagnose_every=2)  # three diagnoses
    assert sum("diagnose_every=0 turns them off" in r.getMessage() for r in caplog.records) == notes


def test_student_method_trains_the_plain_model(split, teacher, rankings):
    plain = Trainer(new_model(split, 4), split, config()).fit()
    _, as_method = run(split, teacher, rankings, "student", diagnose_every=0)
    assert as_method.test == plain.test


def test_dcd_resume_is_exact_between_corrections(split, teacher, rankings, tmp_path):
    options = {"correct_every": 3, "rows": "spread"}
    # Killed at epoch 4: after the correction of epoch 3, before the next one.
    whole, resumed = interrupted_and_resumed(split, lambda c: build_method("dcd", c, teacher, rankings, options),
                                             tmp_path, epochs=6, crash_at=4)
    assert strip(resumed.history) == strip(whole.history)


def test_rows_spread_distils_every_row_once_per_epoch(split, teacher, rankings):
    method = build_method("rrd", distill_context(split), teacher, rankings, {"rows": "spread"})
    n_batches = batches_per_epoch(split)
    method.refresh(0, batches=n_batches)
    batch = Batch(torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([[2], [2]]))
    rows = []
    for _ in range(n_batches):
        rows.append(method.batch_rows(method.sides["user"], batch))
        method.schedule.next_batch()
    assert torch.equal(torch.cat(rows).sort().values, torch.arange(split.n_users))
    # through loss(), once per batch: the same spread (told of n_batches, it refuses one more)
    method.refresh(1, batches=n_batches)
    seen = []
    original = method.batch_rows
    method.batch_rows = lambda side, batch: seen.append(original(side, batch)) or seen[-1]
    for _ in range(n_batches):
        method.loss(batch.users, batch.pos_items, batch.neg_items)
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(split.n_users))
    with pytest.raises(ConfigError, match="got more"):
        method.loss(batch.users, batch.pos_items, batch.neg_items)


@pytest.mark.parametrize("model", ["neumf", "cdae"])
def test_dcd_runs_with_other_students(split, teacher, rankings, model):
    seed_everything(0)
    student = new_model(split, 4, name=model)
    result = Trainer(student, split, config(epochs=2),
                     method=lambda context: build_method("dcd", context, teacher, rankings)).fit()
    assert {"rrd", "ucd", "icd"} <= set(result.history[0])


def test_bad_method_options_are_config_errors(split, teacher, rankings):
    context = distill_context(split)
    with pytest.raises(ConfigError, match="unknown option"):
        build_method("dcd", context, teacher, rankings, {"lambda_xyz": 1})
    with pytest.raises(ConfigError, match="rank_scope"):
        build_method("dcd", context, teacher, rankings, {"rank_scope": "everything"})
    with pytest.raises(ConfigError, match="expected float"):
        build_method("dcd", context, teacher, rankings, {"mu": "lots"})
    with pytest.raises(ConfigError, match="needs the teacher's rankings"):
        build_method("rrd", context, None, None)
    with pytest.raises(ConfigError, match="unknown method"):
        build_method("xyz", context, teacher, rankings)


# ---------------------------------------------------------------- option bounds

def test_every_numeric_or_text_option_declares_what_it_accepts():
    for name in METHODS:
        options = method_options(name)  # the defaults and the presets are within their bounds
        for f in dataclasses.fields(options):
            if type(f.default) in (int, float, str):
                assert "allowed" in f.metadata, (name, f.name)


@pytest.mark.parametrize("name, key, value, message", [
    # NaN passed every `< 0` and `<= 0` check, inf every one
    ("rrd", "lambda_rrd", "nan", "option lambda_rrd must be a finite number >= 0, got nan"),
    ("rrd", "lambda_ir", "inf", "option lambda_ir must be a finite number >= 0, got inf"),
    ("rrd", "temperature", "nan", "option temperature must be a finite number > 0, got nan"),
    ("dcd", "mu", "nan", "option mu must be a finite number > 0, got nan"),
    ("rd", "mu", "nan", "option mu must be a finite number > 0, got nan"),
    ("rd", "temperature", "inf", "option temperature must be a finite number > 0, got inf"),
    ("cd", "label_temperature", "nan", "option label_temperature must be a finite number > 0, got nan"),
    ("de", "tau_start", "inf", "option tau_start must be a finite number > 0, got inf"),
    ("de-rrd", "lambda_de", "nan", "option lambda_de must be a finite number >= 0, got nan"),
    ("bd", "eps", "inf", "option eps must be a finite number > 0, got inf"),
    ("bd", "lambda_ts", "nan", "option lambda_ts must be a finite number >= 0, got nan"),
    ("ibd", "gamma_st", "inf", "option gamma_st must be a finite number >= 0, got inf"),
    # counts where 0 makes no sense (an empty list to rank; uninteresting=0 crashed in the first epoch)
    ("rrd", "interesting", "0", "option interesting must be an integer >= 1, got 0"),
    ("rrd+ir-rrd", "item_uninteresting", "0", "option item_uninteresting must be an integer >= 1, got 0"),
    ("dcd", "m_under", "0", "option m_under must be an integer >= 1, got 0"),
    # from Python: the field's type
    ("cd", "samples", 2.5, "option samples must be an integer >= 1, got 2.5"),
])
def test_option_values_outside_their_bounds_are_refused(name, key, value, message):
    with pytest.raises(ConfigError) as error:
        method_options(name, {key: value})
    assert str(error.value) == message


def test_option_bounds_are_inclusive_where_they_say_so():
    assert method_options("rrd", {"lambda_rrd": "0", "temperature": "1e-9"}).lambda_rrd == 0
    assert method_options("dcd", {"m_over": "0", "diagnose_every": "0"}).m_over == 0
    assert method_options("bd", {"teacher_dim": "0", "redraw_every": "0"}).teacher_dim == 0
    with pytest.raises(ConfigError, match="option temperature must be a finite number > 0, got 0.0"):
        method_options("rrd", {"temperature": "0"})


SPLITTABLE = [name for name in METHODS if name != "student"]  # student: no term


@pytest.mark.parametrize("rows", ["batch", "spread"])
@pytest.mark.parametrize("name, extra, models", [(name, {}, "bpr") for name in SPLITTABLE] + [
    ("rd", {"rank_estimate": "sampled"}, "bpr"),
    ("dcd", {}, "cdae"), ("bd", {}, "cdae")])  # CDAE: a corrupted input in training mode, keyed by the step
def test_shares_of_a_batch_sum_to_the_whole_batch(split, teacher, rankings, name, extra, models, rows):
    """Data-parallel training: each process's share of a batch's rows (its part
    of each mean), summed over the processes, gives the one-process loss and
    gradient: checked here for 3 processes, one after the other. DE's Gumbel
    noise and RD's sampled ranks are drawn per batch: for all the batch's rows,
    then shared, so every process starts from the same generator state (as
    under torchrun: one seed) and draws what one process draws. A CDAE
    student (or BD's CDAE teacher) corrupts its input by the step's
    ``noise_key`` and each pair alone, so a share corrupts as the whole batch."""
    options = {"rows": rows, **({"warmup": 0} if name == "rd" else {}), **extra}
    if models == "cdae":
        teacher = new_model(split, 8, name="cdae").eval()
    method = build_method(name, distill_context(split, new_model(split, 4, name=models)), teacher, rankings, options)
    assert method.splits_by_rows
    for model in (method.student, *method.co_trained().values()):
        assert model.training
        model.noise_key = (0, 0, 1)
    method.refresh(0, batches=3)
    users = torch.as_tensor(split.train.users[:96])
    pos = torch.as_tensor(split.train.items[:96])
    neg = torch.randint(0, split.n_items, (96, 1), generator=torch.Generator().manual_seed(0))
    params = list(method.student.parameters()) + list(method.parameters())
    method.loss(users, pos, neg)  # rows="spread" draws its permutations of the epoch here, once
    generator_state = method.context.generator.get_state()

    def loss_and_grads():
        method.schedule.index = 1  # the same batch of the epoch every time
        method.context.generator.set_state(generator_state)
        terms = method.loss(users, pos, neg)
        for p in params:
            p.grad = None
        total = sum(terms.values())
        total.backward()
        return {k: float(v.detach()) for k, v in terms.items()}, [p.grad.clone() for p in params]

    whole_terms, whole_grads = loss_and_grads()
    assert whole_terms and all(v != 0 for v in whole_terms.values())
    parts = []
    for process in range(3):
        method.schedule.shard = (process, 3)
        parts.append(loss_and_grads())
    method.schedule.shard = None
    for term, value in whole_terms.items():
        assert sum(p[0][term] for p in parts) == pytest.approx(value, rel=1e-5)
    for i, grad in enumerate(whole_grads):
        torch.testing.assert_close(sum(p[1][i] for p in parts), grad, rtol=1e-5, atol=1e-7)


def test_a_method_that_cannot_split_refuses_to_be_split(split, teacher, rankings):
    # a method of one's own that draws per batch from its generator declares it (the built-in ones all split)
    class DrawsPerBatch(METHODS["rrd"].cls):
        splits_by_rows = False

    method = DrawsPerBatch(distill_context(split, new_model(split, 4)), teacher, rankings)
    with pytest.raises(ConfigError, match="rrd draws at random per batch: it cannot be split by rows"):
        method.shard_rows(0, 2)


@pytest.mark.parametrize("options, period", [({"correct_every": 3}, 3), ({"lambda_ucd": 0.0, "lambda_icd": 0.0}, 1)])
def test_dcd_patience_is_counted_in_correction_periods(split, teacher, rankings, options, period):
    trainer = Trainer(new_model(split, 4), split, config(),
                      method=lambda context: build_method("dcd", context, teacher, rankings, options))
    assert trainer.method.stopping_period == period
    assert all(tracker.period == period for tracker in trainer.trackers.values())
    rrd = Trainer(new_model(split, 4), split, config(),
                  method=lambda context: build_method("rrd", context, teacher, rankings))
    assert rrd.trackers["model"].period == 1


def test_a_dcd_state_kept_in_memory_stays_the_state_it_was(split, teacher, rankings):
    """The next correction replaces the method's corrections; a state_dict
    taken before (kept in memory, as a checkpoint dict) must not follow."""
    method = build_method("dcd", distill_context(split, new_model(split, 4)), teacher, rankings, {"correct_every": 2})
    n_batches = batches_per_epoch(split)
    method.refresh(0, batches=n_batches)
    state = method.state_dict()
    kept = {side: tuple(cols.clone() for cols in lists) for side, lists in state["corrections"].items()}
    with torch.no_grad():  # a different student: the next correction draws other columns
        for p in method.student.parameters():
            p.normal_(generator=torch.Generator().manual_seed(1))
    method.refresh(1, batches=n_batches)
    method.refresh(2, batches=n_batches)
    assert any(not torch.equal(a, b) for side in kept for a, b in zip(kept[side], method.corrections[side]))
    for side, lists in kept.items():
        assert all(torch.equal(a, b) for a, b in zip(lists, state["corrections"][side])), side
