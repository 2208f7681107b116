"""The library face (DESIGN.md section 9, docs/library.md): a method in a
training loop of one's own, with a model rankdistill does not define, a
teacher given as a model, a bare scoring callable or its top-C lists only;
resuming from ``state_dict`` and the generator's state; the errors for inputs
that do not fit; and the two examples in ``examples/``.

Every expectation is computed here, independently of the library: the lists
from a dense score matrix and ``torch.topk``, RRD's term from the relaxed
ListMLE formula, the samples from set membership."""

import copy
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import rankdistill
from rankdistill.data import synthetic
from rankdistill.errors import ConfigError
from rankdistill.split import leave_one_out

ROOT = Path(__file__).resolve().parents[1]
TOP = 20


class TwoTower(nn.Module):
    """A user-defined model: towers of an embedding and an MLP, dot product."""

    def __init__(self, n_users, n_items, dim=6, hidden=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.n_users, self.n_items = n_users, n_items
        self.user_tower = nn.Sequential(nn.Embedding(n_users, dim), nn.Linear(dim, hidden), nn.Tanh(),
                                        nn.Linear(hidden, dim))
        self.item_tower = nn.Sequential(nn.Embedding(n_items, dim), nn.Linear(dim, hidden), nn.Tanh(),
                                        nn.Linear(hidden, dim))

    def user_vectors(self, users):
        return self.user_tower(users)

    def item_vectors(self, items):
        return self.item_tower(items)

    def scores(self):
        """The dense ``[n_users, n_items]`` score matrix (for the expectations)."""
        return self.user_vectors(torch.arange(self.n_users)) @ self.item_vectors(torch.arange(self.n_items)).T


def scorer_of(model):
    return rankdistill.EmbeddingScorer(model.user_vectors, model.item_vectors, model.n_users, model.n_items,
                                       module=model)


@pytest.fixture(scope="module")
def data():
    split = leave_one_out(synthetic(150, 120, n_factors=6, mean_interactions=15, min_interactions=5, seed=1),
                          seed=0, n_candidates=40)
    users, items = torch.as_tensor(split.train.users), torch.as_tensor(split.train.items)
    interactions = rankdistill.InteractionMatrix.from_pairs(users, items, split.n_users, split.n_items)
    return split.n_users, split.n_items, users, items, interactions


@pytest.fixture(scope="module")
def teacher(data):
    n_users, n_items, *_ = data
    return TwoTower(n_users, n_items, dim=12, hidden=16, seed=1).eval().requires_grad_(False)


def expected_lists(scores, users, items, top):
    """Top-``top`` of each row and of each column of ``scores``, training pairs masked, -1 padded."""
    scores = scores.clone()
    scores[users, items] = -torch.inf
    out = []
    for matrix in (scores, scores.T):
        values, columns = matrix.topk(min(top, matrix.shape[1]), dim=1)
        out.append(columns.masked_fill(values == -torch.inf, -1))
    return out


@pytest.fixture(scope="module")
def lists(data, teacher):
    """The teacher's top-C lists, made here (not by compute_rankings)."""
    _, _, users, items, _ = data
    with torch.no_grad():
        items_of_user, users_of_item = expected_lists(teacher.scores(), users, items, TOP)
    return rankdistill.TeacherRankings(items_of_user, users_of_item)


def observed_sets(data):
    n_users, _, users, items, _ = data
    seen = [set() for _ in range(n_users)]
    for u, i in zip(users.tolist(), items.tolist()):
        seen[u].add(i)
    return seen


def relaxed_listmle(ranked, tail):
    """sum_k [log(sum_{j>=k} e^{s_j} + sum_t e^{t}) - s_k] over the ranked list (the paper's formula)."""
    total = ranked.new_zeros(())
    for k in range(len(ranked)):
        total = total + torch.logsumexp(torch.cat([ranked[k:], tail]), 0) - ranked[k]
    return total


# ------------------------------------------------------- a user's own model and loop


def test_an_embedding_scorer_is_a_scorer(data):
    n_users, n_items, *_ = data
    model = TwoTower(n_users, n_items)
    scorer = scorer_of(model)
    assert isinstance(scorer, rankdistill.Scorer)
    users, items = torch.tensor([0, 3]), torch.tensor([[1, 2, 5], [0, 0, 7]])
    with torch.no_grad():
        full = model.scores()
        assert torch.allclose(scorer.score_items(users, items), full[users[:, None], items], atol=1e-6)
        assert torch.allclose(scorer.score_users(items[:, 0], items), full.T[items[:, :1], items], atol=1e-6)
        assert torch.allclose(scorer.score_all(users), full[users], atol=1e-6)
        assert torch.allclose(scorer.score_all_users(torch.tensor([4])), full[:, 4][None], atol=1e-6)
    # a dot-product model: its tables, for ranking without blocks of scores
    user_table, item_table = rankdistill.scoring.dot_product_tables(scorer)
    assert not user_table.requires_grad and user_table.shape == (n_users, model.user_tower[-1].out_features)
    assert torch.allclose(user_table @ item_table.T, full, atol=1e-6)
    scorer.eval()  # module=: the model's mode follows the scorer's
    assert not model.training


@pytest.mark.parametrize("name", ["rrd", "dcd"])
def test_the_users_model_learns_the_distillation_terms(data, lists, name):
    """One epoch, every row, full-batch steps on the terms alone: RRD's term is
    lambda times the mean relaxed ListMLE of its lists, gradients reach every
    parameter of the user's model, and the terms fall."""
    n_users, n_items, _, _, interactions = data
    model = TwoTower(n_users, n_items)
    context = rankdistill.DistillContext(scorer_of(model), interactions, seed=0)
    method = rankdistill.build_method(name, context, rankings=lists,
                                      overrides={"rows": "batch", "interesting": 5, "uninteresting": 10})
    method.refresh(0)  # rows="batch" needs no batch count
    all_users, all_items = torch.arange(n_users), torch.arange(n_items)

    terms = method.loss(all_users, all_items)
    assert set(terms) == ({"rrd"} if name == "rrd" else {"rrd", "ucd", "icd"})
    ranked, tail = method.lists["user"]
    scores = model.scores()
    expected = torch.stack([relaxed_listmle(scores[u, ranked[u][ranked[u] >= 0]], scores[u, tail[u][tail[u] >= 0]])
                            for u in range(n_users)]).mean() * method.options.lambda_rrd
    assert torch.allclose(terms["rrd"], expected, rtol=1e-4)

    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    first = None
    for step in range(30):
        terms = method.loss(all_users, all_items)
        optimizer.zero_grad()
        sum(terms.values()).backward()
        if step == 0:
            first = {k: float(v.detach()) for k, v in terms.items()}
            for param_name, param in model.named_parameters():
                assert param.grad is not None and bool(param.grad.abs().sum() > 0), param_name
        optimizer.step()
    last = {k: float(v.detach()) for k, v in method.loss(all_users, all_items).items()}
    assert all(last[k] < 0.95 * first[k] for k in first), (first, last)


@pytest.mark.parametrize("method_class", [rankdistill.RRD, rankdistill.DCD])
def test_a_plain_training_loop_with_spread_rows(data, lists, method_class):
    """BPR plus the method's terms, batches of the shuffled training pairs,
    refresh(epoch, batches=N): every term is finite every batch, and the
    user's model changes."""
    n_users, n_items, users, items, interactions = data
    model = TwoTower(n_users, n_items)
    before = copy.deepcopy(model.state_dict())
    context = rankdistill.DistillContext(scorer_of(model), interactions, generator=torch.Generator().manual_seed(3))
    method = method_class(context, rankings=lists)
    optimizer = torch.optim.Adam([*model.parameters(), *method.parameters()], lr=1e-2)
    loop = torch.Generator().manual_seed(0)
    batch_size = 256
    n_batches = -(-len(users) // batch_size)
    for epoch in range(2):
        method.refresh(epoch, batches=n_batches)
        order = torch.randperm(len(users), generator=loop)
        for b in range(n_batches):
            rows = order[b * batch_size:(b + 1) * batch_size]
            u, pos = users[rows], items[rows]
            neg = torch.randint(n_items, (len(rows), 1), generator=loop)
            scores = (model.user_vectors(u)[:, None, :] * model.item_vectors(torch.cat([pos[:, None], neg], 1))).sum(-1)
            bpr = -torch.nn.functional.logsigmoid(scores[:, :1] - scores[:, 1:]).mean()
            terms = method.loss(u, pos, neg)
            assert terms and all(bool(torch.isfinite(v)) and v.requires_grad for v in terms.values())
            optimizer.zero_grad()
            (bpr + sum(terms.values())).backward()
            optimizer.step()
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------- the teacher as lists or a callable


def test_a_teacher_given_as_lists_only(data, lists):
    """No teacher object: RRD samples its interesting items from each user's
    list, in the list's order, and its uninteresting ones outside the list
    and the user's training items."""
    n_users, n_items, _, _, interactions = data
    user_lists = rankdistill.TeacherRankings(lists.items_of_user)  # users_of_item=None
    context = rankdistill.DistillContext(scorer_of(TwoTower(n_users, n_items)), interactions, seed=0)
    method = rankdistill.RRD(context, rankings=user_lists,
                             options=rankdistill.RRD.Options(interesting=5, uninteresting=10))
    method.refresh(0, batches=1)
    terms = method.loss(torch.arange(n_users))
    assert set(terms) == {"rrd"} and bool(torch.isfinite(terms["rrd"]))
    ranked, tail = method.lists["user"]
    assert ranked.shape == (n_users, 5) and tail.shape == (n_users, 10)
    seen = observed_sets(data)
    for u in range(n_users):
        top = lists.items_of_user[u].tolist()
        positions = [top.index(i) for i in ranked[u].tolist()]
        assert positions == sorted(positions) and len(set(positions)) == 5  # the teacher's order
        others = tail[u].tolist()
        assert len(set(others)) == 10 and not set(others) & (set(top) | seen[u])


@pytest.mark.parametrize("name, overrides", [("dcd", {}), ("rrd", {"lambda_ir": 1e-3}), ("ir-rrd", {})])
def test_an_item_side_term_without_item_lists_is_refused(data, lists, name, overrides):
    n_users, n_items, _, _, interactions = data
    context = rankdistill.DistillContext(scorer_of(TwoTower(n_users, n_items)), interactions, seed=0)
    with pytest.raises(ConfigError, match=r"item-side term.*users_of_item"):  # when it is built
        rankdistill.build_method(name, context, rankings=rankdistill.TeacherRankings(lists.items_of_user),
                                 overrides=overrides)


def test_compute_rankings_of_a_bare_callable(data, teacher, lists):
    """A plain function ``score_all(users)`` gives the model's lists, which
    are the dense matrix's top-C without the training items."""
    n_users, n_items, users, items, interactions = data

    def score_all(batch_users):  # not a model: no n_users, no score_all_users, no device
        return teacher.user_vectors(batch_users) @ teacher.item_vectors(torch.arange(n_items)).T

    from_callable = rankdistill.compute_rankings(score_all, interactions, top=TOP)
    from_model = rankdistill.compute_rankings(scorer_of(teacher), interactions, top=TOP)
    for got in (from_callable, from_model):
        assert got.items_of_user.dtype == torch.int64 and got.items_of_user.shape == (n_users, TOP)
        assert got.users_of_item.shape == (n_items, TOP)
        assert torch.equal(got.items_of_user, lists.items_of_user)
        assert torch.equal(got.users_of_item, lists.users_of_item)
    seen = observed_sets(data)
    assert all(not set(row) & seen[u] for u, row in enumerate(from_callable.items_of_user.tolist()))
    assert all(u < 0 or i not in seen[u] for i, row in enumerate(from_callable.users_of_item.tolist()) for u in row)
    # C = every item: each user's row ends in one -1 per training item
    whole = rankdistill.compute_rankings(score_all, interactions, top=n_items).items_of_user
    assert [row.count(-1) for row in whole.tolist()] == [len(s) for s in seen]
    assert torch.equal(whole[:, :TOP], lists.items_of_user)


# ------------------------------------------------------- resuming


def test_state_dict_and_generator_state_resume_an_epoch_exactly(data, lists):
    """DCD keeps its corrections across epochs: two methods resumed from the
    same state and generator state draw the same next epoch as the original."""
    n_users, n_items, _, _, interactions = data
    student = scorer_of(TwoTower(n_users, n_items))
    options = {"correct_every": 3, "interesting": 5, "uninteresting": 5}
    users, pos_items = torch.arange(n_users), torch.arange(n_items)

    def new_method(seed):
        context = rankdistill.DistillContext(student, interactions, generator=torch.Generator().manual_seed(seed))
        return rankdistill.build_method("dcd", context, rankings=lists, overrides=options)

    def next_epoch(method, epoch):
        method.refresh(epoch, batches=2)
        return [{k: v.detach() for k, v in method.loss(users, pos_items).items()} for _ in range(2)]

    original = new_method(seed=5)
    next_epoch(original, 0)  # corrections drawn at epoch 0, kept for epochs 1 and 2
    buffer = io.BytesIO()
    torch.save({"method": original.state_dict(), "generator": original.context.generator.get_state()}, buffer)
    expected = [next_epoch(original, 1), next_epoch(original, 2)]

    resumed = []
    for _ in range(2):
        buffer.seek(0)
        saved = torch.load(buffer)
        method = new_method(seed=99)  # another seed: the loaded state must win
        method.load_state_dict(saved["method"])
        method.context.generator.set_state(saved["generator"])
        resumed.append([next_epoch(method, 1), next_epoch(method, 2)])
    for run in resumed:
        for ra, rb in zip(run, expected):
            for a, b in zip(ra, rb):
                assert a.keys() == b.keys() == {"rrd", "ucd", "icd"}
                assert all(torch.equal(a[k], b[k]) for k in a)
    # without the generator's state the draws differ
    other = new_method(seed=99)
    other.load_state_dict(original.state_dict())
    assert not torch.equal(next_epoch(other, 1)[0]["rrd"], expected[0][0]["rrd"])


# ------------------------------------------------------- what does not fit


def test_rankings_of_the_wrong_shape_are_refused(data, lists):
    n_users, n_items, _, _, interactions = data
    context = rankdistill.DistillContext(scorer_of(TwoTower(n_users, n_items)), interactions)
    with pytest.raises(ConfigError, match=rf"user-side lists must be \[{n_users}, C\], got \[{n_users - 1}, {TOP}\]"):
        rankdistill.RRD(context, rankings=rankdistill.TeacherRankings(lists.items_of_user[1:]))
    with pytest.raises(ConfigError, match=rf"item-side lists must be \[{n_items}, C\]"):
        rankdistill.DCD(context, rankings=rankdistill.TeacherRankings(lists.items_of_user, lists.users_of_item.T))
    with pytest.raises(ConfigError, match="2-D int64"):
        rankdistill.TeacherRankings(lists.items_of_user.int())
    with pytest.raises(ConfigError, match="2-D int64"):
        rankdistill.TeacherRankings(lists.items_of_user[0])


def test_a_teacher_for_other_sizes_is_refused(data):
    n_users, n_items, _, _, interactions = data
    for shape in ((n_users + 1, n_items), (n_users, n_items - 1)):
        other = scorer_of(TwoTower(*shape))
        with pytest.raises(ConfigError, match=rf"teacher is for {shape[0]} users x {shape[1]} items, the "
                                              rf"interactions have {n_users} x {n_items}"):
            rankdistill.compute_rankings(other, interactions, top=5)
    with pytest.raises(ConfigError, match="C must be >= 1"):
        rankdistill.compute_rankings(scorer_of(TwoTower(n_users, n_items)), interactions, top=0)


def test_interactions_that_do_not_fit_are_refused():
    with pytest.raises(ConfigError, match="item ids must lie in"):
        rankdistill.InteractionMatrix.from_pairs([0, 1], [0, 5], n_users=2, n_items=5)
    with pytest.raises(ConfigError, match="same length"):
        rankdistill.InteractionMatrix.from_pairs([0, 1], [0], n_users=2, n_items=5)


def test_a_student_that_is_not_a_scorer_is_refused(data):
    _, _, _, _, interactions = data
    with pytest.raises(ConfigError, match="EmbeddingScorer"):
        rankdistill.DistillContext(nn.Linear(2, 2), interactions)


def test_a_generator_of_another_device_is_refused(data):
    n_users, n_items, _, _, interactions = data
    student = scorer_of(TwoTower(n_users, n_items))
    with pytest.raises(ConfigError, match="generator is on cpu, the method's tensors on meta"):
        rankdistill.DistillContext(student, interactions, device=torch.device("meta"), generator=torch.Generator())
    context = rankdistill.DistillContext(student, interactions, generator=torch.Generator())
    assert context.device == torch.device("cpu") and context.interactions.device == context.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_a_cuda_generator_for_cpu_tensors_is_refused(data):
    n_users, n_items, _, _, interactions = data
    student = scorer_of(TwoTower(n_users, n_items))
    with pytest.raises(ConfigError, match="generator is on cuda"):
        rankdistill.DistillContext(student, interactions, device="cpu", generator=torch.Generator("cuda"))


def test_spread_rows_need_the_number_of_batches(data, lists):
    n_users, n_items, _, _, interactions = data
    context = rankdistill.DistillContext(scorer_of(TwoTower(n_users, n_items)), interactions)
    method = rankdistill.RRD(context, rankings=lists)
    assert method.options.rows == "spread"
    with pytest.raises(ConfigError, match=r"rows='spread' needs refresh\(epoch, batches=N\)"):
        method.refresh(0)
    method.refresh(0, batches=2)
    method.loss(torch.arange(3))
    method.loss(torch.arange(3))
    with pytest.raises(ConfigError, match="told of 2 batches per epoch"):
        method.loss(torch.arange(3))


# Rough edges of the API found while writing these tests (see the report of
# docs/library.md): what a clear error would be, not yet what happens.

def test_a_student_for_other_sizes_is_refused(data):
    n_users, n_items, _, _, interactions = data
    with pytest.raises(ConfigError):
        rankdistill.DistillContext(scorer_of(TwoTower(n_users + 5, n_items)), interactions)


def test_list_ids_outside_the_catalogue_are_refused(data, lists):
    n_users, n_items, _, _, interactions = data
    bad = lists.items_of_user.clone()
    bad[0, 0] = n_items
    context = rankdistill.DistillContext(scorer_of(TwoTower(n_users, n_items)), interactions)
    with pytest.raises(ConfigError):
        rankdistill.RRD(context, rankings=rankdistill.TeacherRankings(bad))


def test_a_bare_score_all_of_the_wrong_width_is_refused(data, teacher):
    n_users, n_items, _, _, interactions = data
    narrow = scorer_of(teacher)
    with pytest.raises(ConfigError, match=rf"rows x {n_items} columns came as"):
        rankdistill.compute_rankings(lambda users: narrow.score_all(users)[:, :-1], interactions, 10)


def test_a_dcd_without_corrections_says_so(data, lists):
    n_users, n_items, _, _, interactions = data
    context = rankdistill.DistillContext(scorer_of(TwoTower(n_users, n_items)), interactions)
    method = rankdistill.DCD(context, rankings=lists, options=rankdistill.DCD.Options(rows="batch"))
    method.refresh(1)  # not a correction epoch, and no state loaded
    with pytest.raises(ConfigError, match="no user and item-side correction yet"):
        method.loss(torch.arange(4))


def test_an_embedding_scorer_can_be_evaluated(data):
    """rankdistill's Evaluator reads a scorer's device, sizes and modes: an
    EmbeddingScorer has them (its module's device); its sampled ranks are
    the count of candidates scored above the held-out item (ties by id)."""
    split = leave_one_out(synthetic(60, 80, n_factors=4, mean_interactions=10, min_interactions=5), n_candidates=20)
    model = TwoTower(split.n_users, split.n_items)
    scorer = scorer_of(model)
    assert scorer.device == torch.device("cpu")
    from rankdistill.evaluation import Evaluator
    for protocol in ("sampled", "full"):
        result = Evaluator(split, protocol=protocol).evaluate(scorer, "test")
        with torch.no_grad():  # the held-out item's rank among the candidates, by hand
            users = torch.as_tensor(split.eval_users)
            targets = torch.as_tensor(split.targets("test"))
            if protocol == "sampled":
                candidates = torch.as_tensor(split.candidates("test"))
                scores = scorer.score_items(users, torch.cat([targets[:, None], candidates], 1))
                expected = ((scores[:, 1:] > scores[:, :1]) | ((scores[:, 1:] == scores[:, :1])
                                                               & (candidates < targets[:, None]))).sum(1)
                assert (result.ranks == expected.numpy()).all()
        assert 0.0 <= result.means()["H@5"] <= 1.0


# ------------------------------------------------------- the walk-through and the examples


def test_the_walk_through_runs():
    """docs/library.md's code blocks, in order, as one program (they assert
    what they claim)."""
    page = ROOT / "docs" / "library.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) >= 6
    namespace = {}
    for index, block in enumerate(blocks):
        exec(compile(block, f"{page}[block {index}]", "exec"), namespace)
    assert set(namespace["terms"]) == {"rrd", "ucd", "icd"}


@pytest.mark.parametrize("name", ["own_model", "teacher_lists"])
def test_example_runs(name):
    proc = subprocess.run([sys.executable, f"examples/{name}.py", "--epochs", "2"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = re.findall(r"^(.*)test H@5 = (\S+)$", proc.stdout, flags=re.M)
    labels = [label for label, _ in lines]
    assert len(lines) == 4, proc.stdout
    assert labels[0].startswith("teacher") and "alone" in labels[1]
    assert "with RRD" in labels[2] and "with DCD" in labels[3]
    for _, value in lines:
        assert 0.0 <= float(value) <= 1.0


def test_compute_rankings_reads_a_teachers_embeddings_in_evaluation_mode():
    """A dot-product teacher's lists come from its embedding tables; with
    dropout in its towers, left in training mode, they must still be the
    evaluation-mode lists (as documented), and the mode is given back."""
    n_users, n_items = 40, 60
    users = torch.arange(n_users).repeat_interleave(5)
    items = torch.randperm(n_users * 5, generator=torch.Generator().manual_seed(0)) % n_items
    interactions = rankdistill.InteractionMatrix.from_pairs(users, items, n_users, n_items)
    torch.manual_seed(0)
    towers = nn.ModuleDict({"user_tower": nn.Sequential(nn.Embedding(n_users, 16), nn.Dropout(0.5)),
                            "item_tower": nn.Sequential(nn.Embedding(n_items, 16), nn.Dropout(0.5))})
    teacher = rankdistill.EmbeddingScorer(towers["user_tower"], towers["item_tower"], n_users, n_items, module=towers)
    with torch.no_grad():
        towers.eval()
        user_emb, item_emb = towers["user_tower"](torch.arange(n_users)), towers["item_tower"](torch.arange(n_items))
        scores = user_emb @ item_emb.T
    observed = torch.zeros(n_users, n_items, dtype=torch.bool)
    observed[users, items] = True
    expected = scores.masked_fill(observed, float("-inf")).topk(10, dim=1).indices
    towers.train()
    got = rankdistill.compute_rankings(teacher, interactions, top=10)
    assert towers.training
    assert torch.equal(got.items_of_user, expected)


@pytest.mark.parametrize("name", ["rrd", "dcd", "rrd+ir-rrd"])
def test_a_row_with_fewer_uninteresting_columns_than_asked_has_them_all_then_padding(name):
    """User 7 has 170 of 200 items: of the 30 left, the teacher's top-20 lists
    some, so fewer than L = 40 remain below it, and user 9 has every item.
    Their uninteresting lists are every such column, then -1 (the loss masks
    the padding), not an error."""
    n_users, n_items = 60, 200
    generator = torch.Generator().manual_seed(0)
    per_user = [torch.randperm(n_items, generator=generator)[:count]
                for count in [170 if u == 7 else n_items if u == 9 else 10 for u in range(n_users)]]
    users = torch.cat([torch.full((len(items),), u) for u, items in enumerate(per_user)])
    interactions = rankdistill.InteractionMatrix.from_pairs(users, torch.cat(per_user), n_users, n_items)
    rankings = rankdistill.compute_rankings(scorer_of(TwoTower(n_users, n_items, seed=1)), interactions, top=TOP)
    context = rankdistill.DistillContext(scorer_of(TwoTower(n_users, n_items, seed=2)), interactions,
                                         generator=torch.Generator().manual_seed(0))
    method = rankdistill.build_method(name, context, rankings=rankings)
    method.refresh(0, batches=4)
    tail = method.lists["user"][1]
    for user in (7, 9):
        below = set(range(n_items)) - set(per_user[user].tolist()) - set(rankings.items_of_user[user].tolist())
        assert len(below) < tail.shape[1]
        drawn = tail[user]
        assert sorted(drawn[drawn >= 0].tolist()) == sorted(below) and bool((drawn[len(below):] == -1).all())
    others = torch.ones(n_users, dtype=torch.bool)
    others[[7, 9]] = False
    assert bool((tail[others] >= 0).all())  # every other row has its L columns
    losses = method.loss(torch.arange(n_users))
    assert all(bool(torch.isfinite(value)) for value in losses.values())


@pytest.mark.parametrize("name", ["cd", "de", "rrd", "bd"])
def test_a_teacher_for_other_sizes_is_refused_by_every_method(data, lists, name):
    n_users, n_items, _, _, interactions = data
    context = rankdistill.DistillContext(scorer_of(TwoTower(n_users, n_items)), interactions)
    other = TwoTower(n_users + 1, n_items)
    teacher = rankdistill.models.BPR(n_users + 1, n_items, 4) if name == "bd" else scorer_of(other)
    with pytest.raises(ConfigError, match=rf"teacher is for {n_users + 1} users x {n_items} items, the "
                                          rf"interactions have {n_users} x {n_items}"):
        rankdistill.build_method(name, context, teacher, lists)


@pytest.mark.parametrize("name, epoch, part", [("rrd", None, "rrd"), ("de-rrd", None, "rrd"), ("cd", None, "cd"),
                                               ("rd", 12, "rd")])
def test_loss_before_its_state_exists_is_a_config_error(data, lists, teacher, name, epoch, part):
    """RRD's lists and CD's samples come from refresh, RD's ranks from its rank
    epochs: a loss without them says so (it was a KeyError or a TypeError)."""
    n_users, n_items, users, _, interactions = data
    context = rankdistill.DistillContext(scorer_of(TwoTower(n_users, n_items)), interactions)
    method = rankdistill.build_method(name, context, scorer_of(teacher), lists)
    if epoch is not None:  # after RD's warm-up, at an epoch that computes no ranks
        method.refresh(epoch, batches=4)
    with pytest.raises(ConfigError, match=f"^{part}: no "):
        method.loss(users[:8], users[:8] % n_items, (users[:8] % n_items)[:, None])
