"""The base models: scoring paths agree, losses, gradients, sizes, save/load."""

import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from rankdistill.errors import ConfigError
from rankdistill.models import BPR, MODELS, build_model, load_model, save_model
from rankdistill.models.cdae import keyed_uniform
from rankdistill import blocks

N_USERS, N_ITEMS = 7, 13
# user u interacted with items u, u+1, u+2 (mod N_ITEMS)
TRAIN_INDPTR = torch.arange(0, 3 * N_USERS + 1, 3)
TRAIN_INDICES = torch.tensor([(u + k) % N_ITEMS for u in range(N_USERS) for k in range(3)])


def make(name: str, dim: int = 6, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model({"model": name, "n_users": N_USERS, "n_items": N_ITEMS, "dim": dim},
                        train=(TRAIN_INDPTR, TRAIN_INDICES))
    return model.eval()


@pytest.mark.parametrize("grad", [False, True])  # BPR scores long lists against its whole table without grad
@pytest.mark.parametrize("name", sorted(MODELS))
def test_scoring_paths_agree(name, grad):
    model = make(name)
    users = torch.tensor([0, 3, 6, 3])
    items = torch.tensor([[0, 5, 12], [1, 1, 2], [7, 8, 9], [12, 0, 4]])
    with torch.set_grad_enabled(grad):
        many = model.score_items(users, items)
        pairs = model.score(users.repeat_interleave(3), items.reshape(-1)).reshape(4, 3)
        full = model.score_all(users)
    assert many.shape == (4, 3) and full.shape == (4, N_ITEMS)
    assert torch.allclose(many, pairs, atol=1e-6)
    assert torch.allclose(many, full.gather(1, items), atol=1e-6)


def test_bpr_takes_ids_of_any_integer_dtype():
    # as index_select did: the same scores and gradients from int64 ids and narrower ones
    users, items = torch.tensor([0, 3, 6, 3]), torch.tensor([[0, 5], [1, 1], [12, 7], [2, 0]])
    results = []
    for dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        model = make("bpr").train()
        scores = model.score_items(users.to(dtype), items.to(dtype))
        (scores.sum() + model.score_users(items[:, 0].to(dtype), users[:, None].to(dtype)).sum()).backward()
        results.append((scores.detach(), model.user_emb.weight.grad, model.item_emb.weight.grad))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_score_all_blocks_give_the_same_scores(name, monkeypatch):
    model = make(name)
    users = torch.arange(N_USERS)
    with torch.no_grad():
        whole = model.score_all(users)
        monkeypatch.setattr(blocks, "SCORE_ALL_BUDGET", 1)  # one user per block
        blocked = model.score_all(users)
    assert torch.allclose(whole, blocked, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_gradients_reach_every_parameter(name):
    model = make(name).train()
    users = torch.arange(N_USERS).repeat(3)
    pos = TRAIN_INDICES[torch.arange(3 * N_USERS)]
    neg = (pos[:, None] + torch.tensor([[4, 7]])) % N_ITEMS  # two negatives per positive
    loss = model.loss(users, pos, neg)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname


def test_bpr_loss_and_scores_by_hand():
    model = BPR(2, 3, dim=2)
    with torch.no_grad():
        model.user_emb.weight.copy_(torch.tensor([[1.0, 0.0], [0.5, 2.0]]))
        model.item_emb.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0], [2.0, -1.0]]))
    assert torch.allclose(model.score_all(torch.tensor([0, 1])), torch.tensor([[1.0, 0.0, 2.0], [2.5, 2.0, -1.0]]))
    loss = model.loss(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([[2], [2]]))
    expected = -(F.logsigmoid(torch.tensor(1.0 - 2.0)) + F.logsigmoid(torch.tensor(2.0 + 1.0))) / 2
    assert torch.isclose(loss, expected)


def test_teacher_and_student_sizes():
    teacher, student = BPR(1000, 4000, dim=200), BPR(1000, 4000, dim=20)
    assert teacher.num_parameters() == (1000 + 4000) * 200
    assert student.num_parameters() * 10 == teacher.num_parameters()
    neumf = make("neumf", dim=4)
    # 4 embedding tables, layers 4->4 (+b), 4->4 (no b), 4->4 (+b), 4->1 (+b), 4->1 (no b)
    assert neumf.num_parameters() == 2 * (N_USERS + N_ITEMS) * 4 + (20 + 16 + 20 + 5 + 4)
    cdae = make("cdae", dim=4)
    assert cdae.num_parameters() == 2 * N_ITEMS * 4 + N_USERS * 4 + 4 + N_ITEMS


@pytest.mark.parametrize("name, width", [("bpr", 6), ("neumf", 12), ("cdae", 6)])
def test_representations(name, width):
    model = make(name)
    assert model.user_representation(torch.tensor([0, 1, 2])).shape == (3, width)
    assert model.item_representation(torch.tensor([4, 5])).shape == (2, width)


def test_cdae_corrupts_only_in_training_mode():
    model = make("cdae")
    users = torch.tensor([0, 1, 2])
    assert torch.equal(model.hidden(users), model.hidden(users))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model.hidden(users), model.hidden(users))


M64 = (1 << 64) - 1


def splitmix_uniform(key, position):
    """keyed_uniform's documented generator in Python integers (mod 2^64)."""
    def mix(z):
        z ^= z >> 30
        z = z * 0xBF58476D1CE4E5B9 & M64
        z ^= z >> 27
        z = z * 0x94D049BB133111EB & M64
        return z ^ (z >> 31)
    state = 0
    for part in key:
        state = mix((state + part * 0x9E3779B97F4A7C15) & M64)
    return (mix((position * 0x9E3779B97F4A7C15 + state) & M64) >> 40) / 2**24


def test_keyed_uniforms_are_splitmix64_of_the_key_and_the_position():
    positions = torch.tensor([0, 1, 2, 12345, 2**40 + 7, 2**62 - 1])
    for key in [(0,), (0, 0, 0), (7, 1, 123456), (2**62 - 1, 3, 2**40)]:
        expected = torch.tensor([splitmix_uniform(key, int(p)) for p in positions])
        assert torch.equal(keyed_uniform(key, positions), expected.float())


def test_keyed_uniforms_are_uniform_independent_and_the_same_for_any_subset():
    positions = torch.arange(200_000)
    u = keyed_uniform((3, 0, 17), positions)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    counts = torch.bincount((u * 32).long(), minlength=32).numpy()
    assert scipy.stats.chisquare(counts).pvalue > 1e-4
    for other in [(3, 0, 18), (3, 1, 17), (4, 0, 17)]:  # the next step, another model, another seed
        assert abs(float(torch.corrcoef(torch.stack([u, keyed_uniform(other, positions)]))[0, 1])) < 0.02
    subset = torch.randperm(200_000, generator=torch.Generator().manual_seed(0))[:5_000]
    assert torch.equal(keyed_uniform((3, 0, 17), subset), u[subset])


def test_cdae_corruption_is_a_function_of_the_key_and_the_pair():
    model = make("cdae").train()
    model.noise_key = (0, 0, 5)
    together = model.hidden(torch.tensor([0, 3, 6]))
    # a data-parallel share of the batch encodes its users as the whole batch does, in any call
    assert torch.equal(model.hidden(torch.tensor([3])), together[1:2])
    assert torch.equal(model.hidden(torch.tensor([6, 0])), together[[2, 0]])
    model.noise_key = (0, 0, 6)  # the next step corrupts otherwise
    assert not torch.equal(model.hidden(torch.tensor([0, 3, 6])), together)
    # the input kept: each training item with probability 1 - corruption, scaled by 1 / (1 - corruption)
    model.noise_key = (0, 0, 5)
    with torch.no_grad():
        model.user_node.weight.zero_()
        model.hidden_bias.zero_()
        model.item_in.weight.copy_(torch.randn(N_ITEMS, 6, generator=torch.Generator().manual_seed(0)))
        users = torch.arange(N_USERS)
        flat = torch.arange(3 * N_USERS)  # user u's items sit at 3u .. 3u + 2
        keep = (keyed_uniform((0, 0, 5), flat) >= model.corruption).float().view(N_USERS, 3) / (1 - model.corruption)
        expected = torch.sigmoid(torch.einsum("uk,ukd->ud", keep, model.item_in.weight[TRAIN_INDICES.view(N_USERS, 3)]))
        torch.testing.assert_close(model.hidden(users), expected)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_save_and_load_give_the_same_model(name, tmp_path):
    model = make(name)
    save_model(tmp_path / "m.pt", model, role="teacher")
    loaded, info = load_model(tmp_path / "m.pt", train=(TRAIN_INDPTR, TRAIN_INDICES))
    assert info == {"role": "teacher"} and type(loaded) is type(model)
    users = torch.arange(N_USERS)
    with torch.no_grad():
        assert torch.equal(loaded.eval().score_all(users), model.score_all(users))


def test_bad_model_options_are_config_errors():
    with pytest.raises(ConfigError, match="unknown model"):
        build_model({"model": "svd", "n_users": 2, "n_items": 2, "dim": 2})
    with pytest.raises(ConfigError, match="dim must be >= 1"):
        build_model({"model": "bpr", "n_users": 2, "n_items": 2, "dim": 0})
    with pytest.raises(ConfigError, match="needs the training interactions"):
        build_model({"model": "cdae", "n_users": 2, "n_items": 2, "dim": 2})
