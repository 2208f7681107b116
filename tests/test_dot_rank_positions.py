"""dot_rank_positions: rank_positions(rows @ cols.T, ...) without the score
matrix, against the definition and the reference on every device."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankdistill import ops, reference

from test_rank_positions import brute_force_ranks, random_exclude


def small_integer_embeddings(num_rows, num_cols, dim, generator, dtype=torch.float32):
    """Integer entries: every dot product is exact in any summation order, so
    the op's scores equal those of rows @ cols.T bit for bit, ties included."""
    rows = torch.randint(-3, 4, (num_rows, dim), generator=generator).to(dtype)
    cols = torch.randint(-3, 4, (num_cols, dim), generator=generator).to(dtype)
    return rows, cols


def on(device, *tensors):
    return tuple(t.to(device) for t in tensors)


def non_contiguous(users, items):
    """The same values as ``users`` in column-major order and as ``items``
    with a stride of 2."""
    users_t = users.T.contiguous().T
    items_strided = torch.stack([items, torch.zeros_like(items)], dim=2)[..., 0]
    assert not users_t.is_contiguous() and not items_strided.is_contiguous()
    return users_t, items_strided


@pytest.mark.parametrize("num_targets", [1, 7, 40])  # counting and (40 of 50 columns) sorting on the CPU
@pytest.mark.parametrize("with_exclude", [False, True])
def test_matches_definition_with_ties(device, num_targets, with_exclude):
    gen = torch.Generator().manual_seed(num_targets)
    num_rows, num_cols = 11, 50
    rows, cols = small_integer_embeddings(num_rows, num_cols, 3, gen)
    rows[0] = 0.0  # a row of equal scores
    targets = torch.randint(0, num_cols, (num_rows, num_targets), generator=gen)
    targets[:, 0] = targets[:, -1]  # repeated targets
    exclude, sets = random_exclude(num_rows, num_cols, 10, gen) if with_exclude else (None, [set()] * num_rows)
    expected = brute_force_ranks(rows @ cols.T, targets, sets)
    got = ops.dot_rank_positions(*on(device, rows, cols, targets),
                                 exclude=None if exclude is None else on(device, *exclude))
    assert got.dtype == torch.long and got.device.type == device.type
    assert torch.equal(got.cpu(), expected)
    assert torch.equal(reference.dot_rank_positions(rows, cols, targets, exclude=exclude), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "num_rows,num_cols,dim,num_targets",
    [(1, 1, 1, 1), (5, 9, 4, 0), (0, 9, 4, 3), (70, 3000, 8, 30), (9, 40_000, 5, 200), (3, 60, 600, 10)],
)
def test_matches_rank_positions_of_the_product(device, dtype, num_rows, num_cols, dim, num_targets):
    # Several blocks of rows on the CPU (2^18 scores each), long embeddings,
    # and empty shapes; integer embeddings, so the scores are exact.
    gen = torch.Generator().manual_seed(num_rows + num_cols + dim)
    rows, cols = small_integer_embeddings(num_rows, num_cols, dim, gen, dtype)
    targets = torch.randint(0, num_cols, (num_rows, num_targets), generator=gen)
    exclude, _ = random_exclude(num_rows, num_cols, max(1, num_cols // 50), gen)
    expected = ops.rank_positions(rows @ cols.T, targets, exclude=exclude)
    got = ops.dot_rank_positions(*on(device, rows, cols, targets), exclude=on(device, *exclude))
    assert got.shape == (num_rows, num_targets) and torch.equal(got.cpu(), expected)


def test_many_targets_per_row(device):
    # More targets than CUDA's counting kernel takes (8,192): its matrix-product path.
    gen = torch.Generator().manual_seed(3)
    rows, cols = small_integer_embeddings(5, 12_000, 4, gen)
    targets = torch.randint(0, 12_000, (5, 9_000), generator=gen)
    exclude, _ = random_exclude(5, 12_000, 2_000, gen)
    expected = ops.rank_positions(rows @ cols.T, targets, exclude=exclude)
    got = ops.dot_rank_positions(*on(device, rows, cols, targets), exclude=on(device, *exclude))
    assert torch.equal(got.cpu(), expected)


def test_random_embeddings_rank_their_own_scores(device):
    # Real-valued embeddings: the op's scores may differ from a separate
    # product in the last bit, so compare with the product and allow only
    # near-ties to move, and check the definition on the op's own terms: the
    # top column of each row by the product, if clearly ahead, ranks 0.
    gen = torch.Generator().manual_seed(5)
    rows, cols = torch.randn(40, 16, generator=gen), torch.randn(2_000, 16, generator=gen)
    scores = rows @ cols.T
    targets = torch.randint(0, 2_000, (40, 25), generator=gen)
    got = ops.dot_rank_positions(*on(device, rows, cols, targets)).cpu()
    expected = ops.rank_positions(scores, targets)
    target_scores = scores.gather(1, targets)
    # columns within 1e-5 (relative) of a target's score are the only ones that may move
    near = ((scores[:, None, :] - target_scores[:, :, None]).abs() <= 1e-5 * target_scores.abs()[:, :, None] + 1e-6)
    assert ((got - expected).abs() <= near.sum(-1)).all()
    best = scores.argmax(1, keepdim=True)
    assert torch.equal(ops.dot_rank_positions(*on(device, rows, cols, best)).cpu(), torch.zeros(40, 1, dtype=torch.long))


def test_non_contiguous_embeddings_and_the_item_side(device):
    gen = torch.Generator().manual_seed(8)
    users, items = small_integer_embeddings(30, 500, 6, gen)
    users_t, items_strided = non_contiguous(users, items)
    user_targets = torch.randint(0, 500, (30, 12), generator=gen)
    item_targets = torch.randint(0, 30, (500, 4), generator=gen)
    scores = users @ items.T
    got = ops.dot_rank_positions(*on(device, users_t, items_strided, user_targets))
    assert torch.equal(got.cpu(), ops.rank_positions(scores, user_targets))
    got = ops.dot_rank_positions(*on(device, items_strided, users_t, item_targets))
    assert torch.equal(got.cpu(), ops.rank_positions(scores.T, item_targets))


def test_extreme_values(device):
    # +-inf scores rank like the matrix's; -0.0 ties with +0.0.
    rows = torch.tensor([[1.0], [-1.0], [0.0]])
    cols = torch.tensor([[float("inf")], [2.0], [-0.0], [float("-inf")], [0.0]])
    targets = torch.tensor([[0, 1, 2, 3], [0, 3, 2, 4], [2, 4, 0, 1]])
    expected = brute_force_ranks(torch.tensor([[float("inf"), 2.0, -0.0, float("-inf"), 0.0],
                                               [float("-inf"), -2.0, 0.0, float("inf"), -0.0],
                                               [0.0, 0.0, 0.0, 0.0, 0.0]]), targets, [set()] * 3)
    rows, cols = rows[[0, 1]], cols  # row 2 would be 0 * inf = NaN: its own test
    got = ops.dot_rank_positions(*on(device, rows, cols, targets[:2]))
    assert torch.equal(got.cpu(), expected[:2])


def test_errors(device):
    rows, cols = torch.zeros(3, 4, device=device), torch.zeros(10, 4, device=device)
    targets = torch.zeros(3, 2, dtype=torch.long, device=device)
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.dot_rank_positions(rows.half(), cols.half(), targets)
    with pytest.raises(TypeError, match="dtype of row_embeddings"):
        ops.dot_rank_positions(rows, cols.double(), targets)
    with pytest.raises(ValueError, match="same dimension"):
        ops.dot_rank_positions(rows, cols[:, :3], targets)
    with pytest.raises(ValueError, match="row_embeddings must be a 2-D"):
        ops.dot_rank_positions(rows[0], cols, targets)
    with pytest.raises(ValueError, match="one row per row of row_embeddings"):
        ops.dot_rank_positions(rows, cols, targets[:2])
    with pytest.raises(IndexError, match="targets must lie in"):
        ops.dot_rank_positions(rows, cols, targets + 10)
    with pytest.raises(TypeError, match="targets must be"):
        ops.dot_rank_positions(rows, cols, targets.int())
    bad_indptr = torch.tensor([0, 2, 1, 2], device=device)
    with pytest.raises(ValueError, match="non-decreasing"):
        ops.dot_rank_positions(rows, cols, targets, exclude=(bad_indptr, torch.zeros(2, dtype=torch.long,
                                                                                      device=device)))
    with pytest.raises(ValueError, match="NaN"):
        ops.dot_rank_positions(torch.tensor([[0.0]], device=device), torch.tensor([[float("inf")]], device=device),
                               torch.zeros(1, 1, dtype=torch.long, device=device))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="device mix needs a CUDA GPU")
def test_device_mix():
    rows, cols = torch.zeros(3, 4), torch.zeros(10, 4, device="cuda")
    with pytest.raises(ValueError, match="same device"):
        ops.dot_rank_positions(rows, cols, torch.zeros(3, 2, dtype=torch.long))


def test_gradients_do_not_flow_and_inputs_are_not_changed(device):
    gen = torch.Generator().manual_seed(1)
    rows, cols = small_integer_embeddings(4, 30, 3, gen)
    rows, cols = rows.to(device).requires_grad_(), cols.to(device).requires_grad_()
    before = rows.detach().clone(), cols.detach().clone()
    targets = torch.randint(0, 30, (4, 5), generator=gen).to(device)
    got = ops.dot_rank_positions(rows, cols, targets)
    assert not got.requires_grad
    assert torch.equal(rows.detach(), before[0]) and torch.equal(cols.detach(), before[1])


@settings(max_examples=40, deadline=None)
@given(num_rows=st.integers(0, 6), num_cols=st.integers(1, 60), dim=st.integers(0, 5),
       num_targets=st.integers(0, 8), seed=st.integers(0, 2**31 - 1), excluded=st.integers(0, 12))
def test_property_equals_definition(num_rows, num_cols, dim, num_targets, seed, excluded):
    # dim 0: every score 0, all ties, ordered by column.
    gen = torch.Generator().manual_seed(seed)
    rows, cols = small_integer_embeddings(num_rows, num_cols, dim, gen)
    targets = torch.randint(0, num_cols, (num_rows, num_targets), generator=gen)
    exclude, sets = random_exclude(num_rows, num_cols, excluded, gen)
    got = ops.dot_rank_positions(rows, cols, targets, exclude=exclude)
    assert torch.equal(got, brute_force_ranks(rows @ cols.T, targets, sets))
