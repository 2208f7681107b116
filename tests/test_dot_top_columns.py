"""dot_top_columns: each row's k best columns of rows @ cols.T (score
descending, ties by column, excluded columns left out, -1 padding) without the
score matrix, against a brute-force definition and the reference on every
device."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankdistill import ops, reference

from test_dot_rank_positions import non_contiguous, on, small_integer_embeddings
from test_rank_positions import random_exclude


def brute_force_top(scores, k, excluded_sets):
    """Sort each row's non-excluded columns by (-score in float32, column): the first k, -1 padded."""
    out = []
    for row, excluded in zip(scores.float().tolist(), excluded_sets):
        kept = sorted((c for c in range(len(row)) if c not in excluded), key=lambda c: (-row[c], c))[:k]
        out.append(kept + [-1] * (k - len(kept)))
    return torch.tensor(out, dtype=torch.long).reshape(len(excluded_sets), k)


@pytest.mark.parametrize("k", [1, 5, 30, 49, 50, 60])  # k >= the columns left: padding
@pytest.mark.parametrize("with_exclude", [False, True])
def test_matches_definition_with_ties(device, k, with_exclude):
    gen = torch.Generator().manual_seed(k)
    num_rows, num_cols = 11, 50
    rows, cols = small_integer_embeddings(num_rows, num_cols, 3, gen)  # few distinct scores: many ties
    rows[0] = 0.0  # a row of equal scores: the first k columns
    exclude, sets = random_exclude(num_rows, num_cols, 10, gen) if with_exclude else (None, [set()] * num_rows)
    expected = brute_force_top(rows @ cols.T, k, sets)
    got = ops.dot_top_columns(*on(device, rows, cols), k, exclude=None if exclude is None else on(device, *exclude))
    assert got.dtype == torch.long and got.device.type == device.type and got.shape == (num_rows, k)
    assert torch.equal(got.cpu(), expected)
    assert torch.equal(reference.dot_top_columns(rows, cols, k, exclude=exclude), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_rows,num_cols,dim,k", [(1, 1, 1, 1), (5, 9, 4, 0), (0, 9, 4, 3), (70, 3000, 8, 500),
                                                     (9, 40_000, 5, 200), (3, 60, 600, 10), (4, 100_000, 16, 500)])
def test_matches_the_reference(device, dtype, num_rows, num_cols, dim, k):
    # Several blocks of rows on the CPU (2^18 scores each), long embeddings,
    # long rows, empty shapes; integer embeddings, so the scores are exact.
    gen = torch.Generator().manual_seed(num_rows + num_cols + dim)
    rows, cols = small_integer_embeddings(num_rows, num_cols, dim, gen, dtype)
    exclude, _ = random_exclude(num_rows, num_cols, max(1, num_cols // 50), gen)
    expected = reference.dot_top_columns(rows, cols, k, exclude=exclude)
    got = ops.dot_top_columns(*on(device, rows, cols), k, exclude=on(device, *exclude))
    assert got.shape == (num_rows, k) and torch.equal(got.cpu(), expected)


def test_random_embeddings_give_topk_of_the_product(device):
    # Real-valued scores have no ties: the op's columns are topk's, in order.
    gen = torch.Generator().manual_seed(3)
    rows, cols = torch.randn(40, 16, generator=gen), torch.randn(20_000, 16, generator=gen)
    got = ops.dot_top_columns(*on(device, rows, cols), 100).cpu()
    scores = rows @ cols.T
    values, expected = scores.topk(100, dim=1)
    agree = got == expected
    # a product computed in other blocks may round a score's last bit differently: only near-ties may swap
    assert agree.float().mean() > 0.99
    assert torch.allclose(scores.gather(1, got), values, rtol=1e-5, atol=1e-5)


def test_excluding_a_rows_best_columns_moves_the_rest_up(device):
    rows = torch.tensor([[1.0], [2.0]])
    cols = torch.arange(10.0)[:, None]  # scores grow with the column: best first = 9, 8, ...
    exclude = (torch.tensor([0, 2, 2]), torch.tensor([9, 7]))  # row 0 without 9 and 7, row 1 without nothing
    got = ops.dot_top_columns(*on(device, rows, cols), 4, exclude=on(device, *exclude))
    assert got.cpu().tolist() == [[8, 6, 5, 4], [9, 8, 7, 6]]
    everything = (torch.tensor([0, 10, 10]), torch.arange(10))  # row 0 loses every column
    got = ops.dot_top_columns(*on(device, rows, cols), 3, exclude=on(device, *everything))
    assert got.cpu().tolist() == [[-1, -1, -1], [9, 8, 7]]


def test_extreme_values(device):
    # +-inf scores are ordered like the rest; -0.0 ties with +0.0 (by column).
    rows = torch.tensor([[1.0], [-1.0]])
    cols = torch.tensor([[float("inf")], [2.0], [-0.0], [float("-inf")], [0.0]])
    got = ops.dot_top_columns(*on(device, rows, cols), 5)
    assert got.cpu().tolist() == [[0, 1, 2, 4, 3], [3, 2, 4, 1, 0]]


def test_non_contiguous_embeddings_and_the_item_side(device):
    gen = torch.Generator().manual_seed(4)
    users, items = small_integer_embeddings(30, 200, 6, gen)
    users_t, items_strided = non_contiguous(users, items)
    scores = users @ items.T
    got = ops.dot_top_columns(*on(device, users_t, items_strided), 20)
    assert torch.equal(got.cpu(), brute_force_top(scores, 20, [set()] * 30))
    got = ops.dot_top_columns(*on(device, items_strided, users_t), 7)  # each item's best users
    assert torch.equal(got.cpu(), brute_force_top(scores.T, 7, [set()] * 200))


def test_errors(device):
    rows, cols = torch.zeros(3, 4, device=device), torch.zeros(10, 4, device=device)
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.dot_top_columns(rows.half(), cols.half(), 2)
    with pytest.raises(TypeError, match="dtype of row_embeddings"):
        ops.dot_top_columns(rows, cols.double(), 2)
    with pytest.raises(ValueError, match="same dimension"):
        ops.dot_top_columns(rows, cols[:, :3], 2)
    with pytest.raises(ValueError, match="k must be non-negative"):
        ops.dot_top_columns(rows, cols, -1)
    with pytest.raises(TypeError, match="k must be an integer"):
        ops.dot_top_columns(rows, cols, 2.0)
    bad_indptr = torch.tensor([0, 2, 1, 2], device=device)
    with pytest.raises(ValueError, match="non-decreasing"):
        ops.dot_top_columns(rows, cols, 2, exclude=(bad_indptr, torch.zeros(2, dtype=torch.long, device=device)))
    with pytest.raises(IndexError, match="exclude indices must lie in"):
        ops.dot_top_columns(rows, cols, 2, exclude=(torch.tensor([0, 1, 1, 1], device=device),
                                                    torch.tensor([10], device=device)))
    with pytest.raises(ValueError, match="NaN"):  # 0 * inf
        ops.dot_top_columns(torch.tensor([[0.0]], device=device), torch.tensor([[float("inf")]], device=device), 1)


def test_gradients_do_not_flow_and_inputs_are_not_changed(device):
    gen = torch.Generator().manual_seed(1)
    rows, cols = small_integer_embeddings(4, 30, 3, gen)
    rows, cols = rows.to(device).requires_grad_(), cols.to(device).requires_grad_()
    before = rows.detach().clone(), cols.detach().clone()
    got = ops.dot_top_columns(rows, cols, 5)
    assert not got.requires_grad
    assert torch.equal(rows.detach(), before[0]) and torch.equal(cols.detach(), before[1])


@settings(max_examples=60, deadline=None)
@given(num_rows=st.integers(0, 6), num_cols=st.integers(1, 60), dim=st.integers(0, 5), k=st.integers(0, 70),
       seed=st.integers(0, 2**31 - 1), excluded=st.integers(0, 12))
def test_property_equals_definition(num_rows, num_cols, dim, k, seed, excluded):
    # dim 0: every score 0, all ties, ordered by column.
    gen = torch.Generator().manual_seed(seed)
    rows, cols = small_integer_embeddings(num_rows, num_cols, dim, gen)
    exclude, sets = random_exclude(num_rows, num_cols, excluded, gen)
    got = ops.dot_top_columns(rows, cols, k, exclude=exclude)
    assert torch.equal(got, brute_force_top(rows @ cols.T, k, sets))
