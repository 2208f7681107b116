"""Metrics, the tie rule and both protocols against brute-force expectations."""

import math

import numpy as np
import pytest
import torch

from rankdistill.data import Interactions
from rankdistill.errors import ConfigError
from rankdistill.evaluation import Evaluator, metric_names, metrics_from_ranks, sampled_ranks
from rankdistill.models import Recommender
from rankdistill.report import Row, format_table
from rankdistill.split import leave_one_out


class TableModel(Recommender):
    """Scores read from a fixed ``[n_users, n_items]`` table."""

    name = "table"

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__(table.shape[0], table.shape[1], dim=1)
        self.table = torch.nn.Parameter(table.clone(), requires_grad=False)

    def score_items(self, users, items):
        return self.table[users[:, None], items]

    def _score_all_block(self, users):
        return self.table[users]


def test_metrics_by_hand():
    values = metrics_from_ranks(np.array([0, 4, 5, 19, 100]), cutoffs=(5, 20))
    assert list(values) == ["H@5", "M@5", "N@5", "H@20", "M@20", "N@20"]
    assert values["H@5"].tolist() == [1, 1, 0, 0, 0]
    assert values["H@20"].tolist() == [1, 1, 1, 1, 0]
    assert np.allclose(values["M@5"], [1, 1 / 5, 0, 0, 0])
    assert np.allclose(values["M@20"], [1, 1 / 5, 1 / 6, 1 / 20, 0])
    assert np.allclose(values["N@5"], [1, 1 / math.log2(6), 0, 0, 0])
    assert np.allclose(values["N@20"], [1, 1 / math.log2(6), 1 / math.log2(7), 1 / math.log2(21), 0])


def test_metric_names_follow_the_papers_layout():
    assert metric_names((5, 10)) == ["H@5", "M@5", "N@5", "H@10", "M@10", "N@10"]
    with pytest.raises(ConfigError):
        metrics_from_ranks(np.array([0]), cutoffs=(0,))


def test_sampled_tie_rule_counts_higher_and_equal_with_smaller_id():
    target_scores = torch.tensor([1.0, 1.0, 1.0])
    candidate_scores = torch.tensor([[2.0, 1.0, 1.0, 0.0],
                                     [1.0, 1.0, 1.0, 1.0],
                                     [0.5, 0.5, 0.5, 0.5]])
    targets = torch.tensor([10, 10, 10])
    candidates = torch.tensor([[50, 3, 30, 1],   # 50 higher; 3 ties with a smaller id; 30 ties after
                               [1, 2, 11, 12],   # all tie: two smaller ids
                               [1, 2, 3, 4]])    # all lower
    assert sampled_ranks(target_scores, candidate_scores, targets, candidates).tolist() == [2, 2, 0]


@pytest.fixture(scope="module")
def split_and_table():
    gen = torch.Generator().manual_seed(0)
    n_users, n_items = 12, 60
    keys = torch.rand(n_users, n_items, generator=gen).argsort(dim=1)[:, :8]  # 8 distinct items per user
    data = Interactions(n_users, n_items, torch.arange(n_users).repeat_interleave(8).numpy(),
                        keys.reshape(-1).numpy())
    split = leave_one_out(data, seed=1, n_candidates=20)
    # integer-valued scores in a small range: many ties
    table = torch.randint(0, 5, (n_users, n_items), generator=gen).float()
    return split, table


def brute_force_rank(scores, target, others):
    return sum(1 for i in others if scores[i] > scores[target] or (scores[i] == scores[target] and i < target))


def test_sampled_protocol_ranks_among_candidates(split_and_table):
    split, table = split_and_table
    result = Evaluator(split, protocol="sampled", batch_size=5).evaluate(TableModel(table), "test")
    for e, u in enumerate(split.eval_users):
        expected = brute_force_rank(table[u].tolist(), split.test_items[e], split.test_candidates[e].tolist())
        assert result.ranks[e] == expected
    assert result.means()["H@5"] == pytest.approx(np.mean(result.ranks < 5))


@pytest.mark.parametrize("part", ["valid", "test"])
def test_full_protocol_ranks_among_all_unobserved_items(split_and_table, part):
    split, table = split_and_table
    result = Evaluator(split, protocol="full", cutoffs=(5, 50), batch_size=5).evaluate(TableModel(table), part)
    train = {}
    for u, i in zip(split.train.users, split.train.items):
        train.setdefault(u, set()).add(i)
    for e, u in enumerate(split.eval_users):
        target = split.targets(part)[e]
        excluded = train[u] | {split.other_held_out(part)[e]}
        others = [i for i in range(split.n_items) if i not in excluded and i != target]
        assert result.ranks[e] == brute_force_rank(table[u].tolist(), target, others)
    assert set(result.per_user) == {"H@5", "M@5", "N@5", "H@50", "M@50", "N@50"}
    assert len(result.per_user["H@5"]) == len(split.eval_users)


def test_full_protocol_ranks_a_dot_product_model_from_its_embeddings(split_and_table, monkeypatch):
    """A BPR model is ranked by dot_rank_positions from its embeddings (its
    blocks of scores are never asked for) with the same ranks: small integer
    embeddings, so the scores are exact and tie often."""
    from rankdistill.models import BPR

    split, _ = split_and_table
    gen = torch.Generator().manual_seed(5)
    model = BPR(split.n_users, split.n_items, 3)
    with torch.no_grad():
        model.user_emb.weight.copy_(torch.randint(-2, 3, (split.n_users, 3), generator=gen).float())
        model.item_emb.weight.copy_(torch.randint(-2, 3, (split.n_items, 3), generator=gen).float())
    table = model.user_emb.weight.detach() @ model.item_emb.weight.detach().T
    expected = Evaluator(split, protocol="full", batch_size=5).evaluate(TableModel(table), "test").ranks

    def no_blocks(*args):
        raise AssertionError("scored a block")

    monkeypatch.setattr(model, "_score_all_block", no_blocks)
    got = Evaluator(split, protocol="full", batch_size=5).evaluate(model, "test").ranks
    assert np.array_equal(got, expected)


def test_constant_scores_rank_by_item_id(split_and_table):
    split, _ = split_and_table
    model = TableModel(torch.zeros(split.n_users, split.n_items))
    result = Evaluator(split).evaluate(model, "valid")
    expected = (split.valid_candidates < split.valid_items[:, None]).sum(axis=1)
    assert np.array_equal(result.ranks, expected)


def test_evaluator_rejects_a_model_of_other_size(split_and_table):
    split, _ = split_and_table
    with pytest.raises(ConfigError, match="the model is for"):
        Evaluator(split).evaluate(TableModel(torch.zeros(3, 3)))
    with pytest.raises(ConfigError, match="unknown protocol"):
        Evaluator(split, protocol="partial")


def test_table_in_the_papers_layout():
    metrics = dict(zip(metric_names((5, 10)), [0.5, 0.25, 0.3, 0.6, 0.26, 0.33]))
    table = format_table([Row("Teacher", metrics, 1000, 1.5), Row("Student", metrics, 100)], (5, 10))
    header, rule, teacher, student = table.splitlines()
    assert header.split() == ["Method", "#Params", "H@5", "M@5", "N@5", "H@10", "M@10", "N@10", "s/epoch"]
    assert teacher.split() == ["Teacher", "1,000", "0.5000", "0.2500", "0.3000", "0.6000", "0.2600", "0.3300", "1.50"]
    assert student.split()[-1] == "-"
    assert "s/epoch" not in format_table([Row("x", metrics)], (5, 10))
