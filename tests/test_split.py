"""Leave-one-out split, evaluation candidates, the split file, negative sampling."""

import os

import numpy as np
import pytest
import torch

from rankdistill.data import DataError, Interactions, synthetic
from rankdistill.io import atomic_open
from rankdistill.unobserved import ObservedItems, sample_unobserved
from rankdistill.split import Split, leave_one_out


@pytest.fixture(scope="module")
def data():
    # n_items - max degree must leave room for the candidates
    return synthetic(80, 400, n_factors=4, mean_interactions=12, min_interactions=2, seed=3)


def user_items(inter: Interactions) -> dict[int, set]:
    out: dict[int, set] = {}
    for u, i in zip(inter.users.tolist(), inter.items.tolist()):
        out.setdefault(u, set()).add(i)
    return out


def test_leave_one_out_partitions_each_users_items(data):
    split = leave_one_out(data, seed=0, n_candidates=100)
    everything, train = user_items(data), user_items(split.train)
    counts = data.user_counts()
    assert set(split.eval_users.tolist()) == set(np.flatnonzero(counts >= 3).tolist())
    assert (counts < 3).any()  # the fixture has users that must stay in training only
    for u in np.flatnonzero(counts < 3):
        assert train[u] == everything[u]
    for e, u in enumerate(split.eval_users.tolist()):
        valid, test = split.valid_items[e], split.test_items[e]
        assert valid != test
        assert test not in train[u] and valid not in train[u]
        assert train[u] | {valid, test} == everything[u]
    assert len(split.train) + 2 * len(split.eval_users) == len(data)


def test_candidates_are_unobserved_distinct_and_fixed_size(data):
    split = leave_one_out(data, seed=0, n_candidates=100)
    everything = user_items(data)
    for part in ("valid", "test"):
        candidates = split.candidates(part)
        assert candidates.shape == (len(split.eval_users), 100)
        for e, u in enumerate(split.eval_users.tolist()):
            row = set(candidates[e].tolist())
            assert len(row) == 100
            assert not row & everything[u]
    assert not np.array_equal(split.valid_candidates, split.test_candidates)


def test_same_seed_same_split_other_seed_other_split(data):
    a, b, c = (leave_one_out(data, seed=s, n_candidates=50) for s in (7, 7, 8))
    for key in ("eval_users", "valid_items", "test_items", "valid_candidates", "test_candidates"):
        assert np.array_equal(getattr(a, key), getattr(b, key))
    assert not np.array_equal(a.test_items, c.test_items)
    assert not np.array_equal(a.test_candidates, c.test_candidates)


def test_timestamps_hold_out_the_latest():
    # user 0: times 5, 1, 9, 3 -> test item 12 (t=9), valid item 10 (t=5)
    # user 1: two interactions -> training only; user 2: 3 interactions
    users = [0, 0, 0, 0, 1, 1, 2, 2, 2]
    items = [10, 11, 12, 13, 10, 11, 13, 12, 11]
    times = [5, 1, 9, 3, 2, 1, 30, 10, 20]
    data = Interactions(3, 600, users, items, timestamps=times)
    for seed in (0, 1):
        split = leave_one_out(data, seed=seed, n_candidates=20)
        assert split.eval_users.tolist() == [0, 2]
        assert split.test_items.tolist() == [12, 13]
        assert split.valid_items.tolist() == [10, 11]


def test_too_few_unobserved_items_is_a_data_error():
    data = Interactions(1, 10, [0] * 5, [0, 1, 2, 3, 4])
    with pytest.raises(DataError, match="only 5 unobserved items"):
        leave_one_out(data, n_candidates=6)


def test_no_evaluable_user_is_a_data_error():
    with pytest.raises(DataError, match="3 or more"):
        leave_one_out(Interactions(2, 10, [0, 1], [0, 1]))


def test_split_file_round_trip_is_atomic_and_checked(data, tmp_path):
    split = leave_one_out(data, seed=4, n_candidates=30)
    path = tmp_path / "split.npz"
    split.save(path)
    assert os.listdir(tmp_path) == ["split.npz"]  # no temporary file left behind
    loaded = Split.load(path)
    for key in ("eval_users", "valid_items", "test_items", "valid_candidates", "test_candidates"):
        assert np.array_equal(getattr(split, key), getattr(loaded, key))
    assert loaded.train.fingerprint() == split.train.fingerprint()
    assert loaded.seed == 4
    loaded.check_matches(data)
    other = synthetic(80, 400, n_factors=4, mean_interactions=12, min_interactions=2, seed=4)
    with pytest.raises(DataError, match=f"the split file was made from other data than {other.name}"):
        loaded.check_matches(other)


def test_bad_split_file_is_a_data_error(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="not a readable split file"):
        Split.load(path)
    np.savez(tmp_path / "other.npz", x=np.arange(3))
    with pytest.raises(DataError, match="missing"):
        Split.load(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError):
        Split.load(tmp_path / "absent.npz")


def test_failed_atomic_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "split.npz"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write(b"half of the new content")
            raise RuntimeError("crash while writing")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["split.npz"]


# ---------------------------------------------------------------- sampling

def test_training_negatives_are_uniform_over_unobserved_items():
    observed = ObservedItems(torch.tensor([0, 0, 1]), torch.tensor([1, 3, 0]), n_users=2, n_items=5)
    users = torch.tensor([0, 1]).repeat(20000)
    draws = sample_unobserved(observed, users, 1, generator=torch.Generator().manual_seed(0))[:, 0]
    for user, allowed in ((0, [0, 2, 4]), (1, [1, 2, 3, 4])):
        freq = torch.bincount(draws[users == user], minlength=5).double() / 20000
        expected = torch.zeros(5, dtype=torch.float64)
        expected[allowed] = 1.0 / len(allowed)
        assert torch.allclose(freq, expected, atol=0.015)


def test_distinct_draws_cover_every_unobserved_item_when_k_is_all_of_them():
    observed = ObservedItems(torch.tensor([0, 0]), torch.tensor([2, 5]), n_users=1, n_items=8)
    draws = sample_unobserved(observed, torch.zeros(50, dtype=torch.int64), 6, distinct=True,
                              generator=torch.Generator().manual_seed(1))
    for row in draws.tolist():
        assert sorted(row) == [0, 1, 3, 4, 6, 7]


@pytest.mark.parametrize("repeated", [True, False])  # the bits are built from the keys as given, or made distinct
@pytest.mark.parametrize("n_users, n_items", [(7, 13), (40, 301), (1, 1)])  # bits not a multiple of 8 too
def test_observed_bits_and_sorted_keys_agree(n_users, n_items, repeated, device):
    # Membership by a bit per pair (small catalogues) and by binary search
    # (large ones), against a Python set; repeated pairs or distinct ones in
    # any order, every pair queried, users broadcast against items; the
    # samplers draw the same with either.
    gen = torch.Generator().manual_seed(n_users * n_items)
    if repeated:
        users = torch.randint(n_users, (3 * n_users * n_items // 4 + 1,), generator=gen)
        items = torch.randint(n_items, users.shape, generator=gen)
    else:
        keys = torch.randperm(n_users * n_items, generator=gen)[:3 * n_users * n_items // 4 + 1]
        users, items = keys // n_items, keys % n_items
    pairs = set(zip(users.tolist(), items.tolist()))
    bits, keys = (ObservedItems(users, items, n_users, n_items, device, bitset=b) for b in (True, False))
    assert bits.bits is not None and keys.bits is None and torch.equal(bits.counts, keys.counts)
    assert bits.counts.tolist() == [sum(1 for p in pairs if p[0] == u) for u in range(n_users)]
    all_users = torch.arange(n_users, device=device)[:, None].expand(n_users, n_items)
    all_items = torch.arange(n_items, device=device).expand(n_users, n_items)
    expected = torch.tensor([[(u, i) in pairs for i in range(n_items)] for u in range(n_users)])
    assert torch.equal(bits.contains(all_users[:, :1], all_items).cpu(), expected)
    assert torch.equal(keys.contains(all_users, all_items).cpu(), expected)
    empty = ObservedItems(torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.int64), n_users, n_items,
                          device, bitset=True)
    assert not empty.contains(all_users, all_items).any()
    free = n_items - int(bits.counts.max())
    if free:
        rows = torch.arange(n_users, device=device).repeat(5)
        for distinct, k in ((False, 3), (True, free)):
            draws = [sample_unobserved(o, rows, k, distinct=distinct, generator=torch.Generator(device).manual_seed(2))
                     for o in (bits, keys)]
            assert torch.equal(draws[0], draws[1])
            assert not any((u, i) in pairs for u, row in zip(rows.tolist(), draws[0].tolist()) for i in row)
