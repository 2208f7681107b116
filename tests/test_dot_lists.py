"""dot_lists: a hand-computed case, values and both tables' gradients against
the gather-multiply-sum reference for every dtype (repeated rows and columns
included, so the backward's additions into one table row are checked),
gradcheck and the double backward, strided inputs, a pair's score not
depending on the rest of its call, and errors."""

import pytest
import torch

from rankdistill import ops, reference

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}
# (lists B, list width M, dim d): empty calls, dims below, at and above the kernel's 8 partial sums
SHAPES = [(0, 3, 4), (4, 0, 4), (1, 1, 1), (5, 7, 8), (6, 9, 20), (3, 40, 33)]


def test_hand_computed(device):
    row_table = torch.tensor([[1.0, 2.0], [0.0, -1.0]], device=device)
    col_table = torch.tensor([[3.0, 1.0], [1.0, 1.0], [-2.0, 4.0]], device=device)
    rows = torch.tensor([1, 0], device=device)
    cols = torch.tensor([[0, 2], [2, 2]], device=device)
    expected = torch.tensor([[-1.0, -4.0], [6.0, 6.0]], device=device)
    assert torch.equal(ops.dot_lists(row_table, rows, col_table, cols), expected)
    r, c = row_table.clone().requires_grad_(), col_table.clone().requires_grad_()
    ops.dot_lists(r, rows, c, cols).sum().backward()
    # row 1 meets columns 0 and 2; row 0 meets column 2 twice
    assert torch.equal(r.grad, torch.tensor([[-4.0, 8.0], [1.0, 5.0]], device=device))
    # column 2 meets row 1 once and row 0 twice; column 1 is never used
    assert torch.equal(c.grad, torch.tensor([[0.0, -1.0], [0.0, 0.0], [2.0, 3.0]], device=device))


def random_case(num_lists, width, dim, dtype, seed, n_rows=11, n_cols=17):
    gen = torch.Generator().manual_seed(seed)
    row_table = torch.randn(n_rows, dim, generator=gen, dtype=torch.float64).to(dtype)
    col_table = torch.randn(n_cols, dim, generator=gen, dtype=torch.float64).to(dtype)
    rows = torch.randint(0, n_rows, (num_lists,), generator=gen)  # repeats: 11 rows for up to 6 lists
    cols = torch.randint(0, n_cols, (num_lists, width), generator=gen)
    return row_table, rows, col_table, cols


def scores_and_grads(fn, row_table, rows, col_table, cols, device):
    r = row_table.to(device).detach().requires_grad_()
    c = col_table.to(device).detach().requires_grad_()
    out = fn(r, rows.to(device), c, cols.to(device))
    weights = torch.linspace(-1.0, 2.0, out.numel(), device=device, dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    return out.detach().cpu(), r.grad.cpu(), c.grad.cpu()


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(device, dtype, shape):
    case = random_case(*shape, dtype, seed=sum(shape))
    got = scores_and_grads(ops.dot_lists, *case, device)
    # the reference in float64, on the same (rounded) inputs
    want = scores_and_grads(reference.dot_lists, case[0].double(), case[1], case[2].double(), case[3], "cpu")
    for g, w in zip(got, want):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), w, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * shape[2])


def test_gradcheck(device):
    row_table, rows, col_table, cols = random_case(4, 5, 3, torch.float64, seed=3, n_rows=5, n_cols=6)
    r = row_table.to(device).requires_grad_()
    c = col_table.to(device).requires_grad_()
    rows, cols = rows.to(device), cols.to(device)
    fn = lambda a, b: ops.dot_lists(a, rows, b, cols)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (r, c))
    assert torch.autograd.gradgradcheck(fn, (r, c))


def test_first_order_backward_is_the_op(device):
    # An ordinary backward runs dot_lists_backward (not the composite form
    # that create_graph differentiates): the gradients are the op's, bit for bit.
    row_table, rows, col_table, cols = [x.to(device) for x in random_case(6, 9, 20, torch.float32, seed=5)]
    r, c = row_table.clone().requires_grad_(), col_table.clone().requires_grad_()
    grad = torch.randn(6, 9, device=device)
    ops.dot_lists(r, rows, c, cols).backward(grad)
    fused = torch.ops.rankdistill.dot_lists_backward(grad, row_table, rows, col_table, cols)
    if device.type == "cpu":  # CUDA adds with atomics, in no fixed order
        assert torch.equal(r.grad, fused[0]) and torch.equal(c.grad, fused[1])
    else:
        torch.testing.assert_close(r.grad, fused[0])
        torch.testing.assert_close(c.grad, fused[1])


def test_one_table_needs_no_gradient(device):
    row_table, rows, col_table, cols = [x.to(device) for x in random_case(5, 4, 6, torch.float64, seed=8)]
    c = col_table.clone().requires_grad_()
    ops.dot_lists(row_table, rows, c, cols).sum().backward()
    c_ref = col_table.cpu().requires_grad_()
    reference.dot_lists(row_table.cpu(), rows.cpu(), c_ref, cols.cpu()).sum().backward()
    torch.testing.assert_close(c.grad.cpu(), c_ref.grad)


def test_one_table_on_both_sides(device):
    # item-item similarity: the same table gives rows and columns; autograd
    # adds the op's two gradients into it
    gen = torch.Generator().manual_seed(4)
    table = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    rows, cols = torch.randint(0, 9, (5,), generator=gen), torch.randint(0, 9, (5, 4), generator=gen)
    got_t = table.to(device).detach().requires_grad_()
    got = ops.dot_lists(got_t, rows.to(device), got_t, cols.to(device))
    got.sum().backward()
    want_t = table.detach().clone().requires_grad_()
    want = reference.dot_lists(want_t, rows, want_t, cols)
    want.sum().backward()
    torch.testing.assert_close(got.detach().cpu(), want.detach())
    torch.testing.assert_close(got_t.grad.cpu(), want_t.grad)


def test_deterministic_mode(device):
    # The CPU backward is one serial pass: allowed. The CUDA one adds with
    # atomics: refused, as PyTorch refuses its own such ops.
    row_table, rows, col_table, cols = [x.to(device) for x in random_case(3, 4, 5, torch.float32, seed=2)]
    r = row_table.clone().requires_grad_()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        scores = ops.dot_lists(r, rows, col_table, cols)
        if device.type == "cpu":
            scores.sum().backward()
            assert r.grad is not None
        else:
            with pytest.raises(RuntimeError, match="dot_lists_backward"):
                scores.sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)


def test_a_score_does_not_depend_on_its_call(device):
    # Each pair's products are summed in a fixed order: scoring a pair alone
    # or among others gives the same bits.
    row_table, rows, col_table, cols = [x.to(device) for x in random_case(6, 30, 20, torch.float32, seed=13)]
    together = ops.dot_lists(row_table, rows, col_table, cols)
    for b in (0, 3, 5):
        for m in (0, 17, 29):
            alone = ops.dot_lists(row_table, rows[b:b + 1], col_table, cols[b:b + 1, m:m + 1])
            assert torch.equal(alone[0, 0], together[b, m])


def test_non_contiguous_inputs(device):
    gen = torch.Generator().manual_seed(21)
    row_table = torch.randn(20, 9, generator=gen, dtype=torch.float64).T  # [9, 20], transposed
    col_table = torch.randn(13, 40, generator=gen, dtype=torch.float64)[:, ::2]  # [13, 20], strided
    rows = torch.randint(0, 9, (10,), generator=gen)[::2]
    cols = torch.randint(0, 13, (5, 14), generator=gen)[:, 1::2]
    case = (row_table, rows, col_table, cols)
    got = scores_and_grads(ops.dot_lists, *case, device)
    want = scores_and_grads(reference.dot_lists, *(x.contiguous() for x in case), "cpu")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_errors(device):
    r, c = torch.randn(4, 3, device=device), torch.randn(6, 3, device=device)
    rows, cols = torch.tensor([0, 3], device=device), torch.tensor([[1, 5], [0, 0]], device=device)
    with pytest.raises(TypeError, match="col_table must have the dtype"):
        ops.dot_lists(r, rows, c.double(), cols)
    with pytest.raises(TypeError, match="row_table must be float"):
        ops.dot_lists(r.long(), rows, c.long(), cols)
    with pytest.raises(TypeError, match="cols must be Long"):
        ops.dot_lists(r, rows, c, cols.int())
    with pytest.raises(ValueError, match="same dimension"):
        ops.dot_lists(r, rows, c[:, :2], cols)
    with pytest.raises(ValueError, match="one row per entry of rows"):
        ops.dot_lists(r, rows, c, cols[:1])
    with pytest.raises(ValueError, match="rows must be a 1-D"):
        ops.dot_lists(r, rows[:, None], c, cols)
    with pytest.raises(IndexError, match=r"cols must lie in \[0, the rows of col_table = 6\)"):
        ops.dot_lists(r, rows, c, cols + 1)
    with pytest.raises(IndexError, match="rows must lie in"):
        ops.dot_lists(r, rows - 1, c, cols)  # -1 padding is the caller's to mask
    with pytest.raises(ValueError, match="grad must have the shape of cols"):
        torch.ops.rankdistill.dot_lists_backward(torch.ones(2, 3, device=device), r, rows, c, cols)
