"""relaxed_listmle: a hand-computed case, parity of values and gradients with
the logcumsumexp reference, gradcheck, stability and errors."""

import math

import pytest
import torch

from rankdistill import ops, reference


def test_hand_computed(device):
    ranked = torch.tensor([[1.0, 0.0]], device=device)
    tail = torch.tensor([[-1.0]], device=device)
    e = math.exp
    expected = (math.log(e(1) + e(0) + e(-1)) - 1) + (math.log(e(0) + e(-1)) - 0)
    assert ops.relaxed_listmle(ranked, tail).item() == pytest.approx(expected, rel=1e-6)
    # no tail: plain ListMLE; no valid ranked entry: 0
    assert ops.relaxed_listmle(ranked, tail[:, :0]).item() == pytest.approx(math.log(e(1) + e(0)) - 1, rel=1e-6)
    mask = torch.zeros(1, 2, dtype=torch.bool, device=device)
    assert ops.relaxed_listmle(ranked, tail, ranked_mask=mask).item() == 0.0


def random_case(num_rows, K, L, dtype, with_masks, seed, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    ranked = (scale * torch.randn(num_rows, K, generator=gen, dtype=torch.float64)).to(dtype)
    tail = (scale * torch.randn(num_rows, L, generator=gen, dtype=torch.float64)).to(dtype)
    if not with_masks:
        return ranked, tail, None, None
    ranked_mask = torch.rand(num_rows, K, generator=gen) < 0.7
    tail_mask = torch.rand(num_rows, L, generator=gen) < 0.7
    if num_rows > 2:
        ranked_mask[1] = False  # a row that is all padding
        tail_mask[2] = False
    return ranked, tail, ranked_mask, tail_mask


TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
SHAPES = [(1, 1, 1), (5, 0, 3), (6, 1, 0), (7, 7, 1), (64, 40, 40), (3, 100, 5)]


def values_and_grads(fn, ranked, tail, ranked_mask, tail_mask, reduction, device):
    # detach() keeps the strides (non-contiguous inputs stay so) and makes a leaf
    r = ranked.to(device).detach().requires_grad_()
    t = tail.to(device).detach().requires_grad_()
    masks = {
        "ranked_mask": None if ranked_mask is None else ranked_mask.to(device),
        "tail_mask": None if tail_mask is None else tail_mask.to(device),
    }
    loss = fn(r, t, reduction=reduction, **masks)
    weights = torch.linspace(0.5, 1.5, loss.numel(), device=device, dtype=loss.dtype).reshape(loss.shape)
    (loss * weights).sum().backward()
    return loss.detach().cpu(), r.grad.cpu(), t.grad.cpu()


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_masks", [False, True])
def test_matches_reference(device, dtype, shape, with_masks):
    num_rows, K, L = shape
    inputs = random_case(num_rows, K, L, dtype, with_masks, seed=num_rows * 100 + K)
    got = values_and_grads(ops.relaxed_listmle, *inputs, "none", device)
    want = values_and_grads(reference.relaxed_listmle, *inputs, "none", "cpu")
    tol = TOLERANCE[dtype]
    expected_loss_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    assert got[0].dtype == expected_loss_dtype and got[1].dtype == dtype and got[2].dtype == dtype
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions(device, reduction):
    inputs = random_case(9, 6, 4, torch.float64, True, seed=4)
    got = values_and_grads(ops.relaxed_listmle, *inputs, reduction, device)
    want = values_and_grads(reference.relaxed_listmle, *inputs, reduction, "cpu")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    ranked, tail, rm, tm = (x.to(device) for x in inputs)
    per_row = ops.relaxed_listmle(ranked, tail, ranked_mask=rm, tail_mask=tm, reduction="none").cpu()
    combined = {"mean": per_row.mean(), "sum": per_row.sum(), "none": per_row}[reduction]
    torch.testing.assert_close(got[0], combined)


@pytest.mark.parametrize("with_masks", [False, True])
def test_gradcheck(device, with_masks):
    ranked, tail, rm, tm = random_case(4, 5, 3, torch.float64, with_masks, seed=7)
    r = ranked.to(device).requires_grad_()
    t = tail.to(device).requires_grad_()
    rm = None if rm is None else rm.to(device)
    tm = None if tm is None else tm.to(device)
    assert torch.autograd.gradcheck(
        lambda a, b: ops.relaxed_listmle(a, b, ranked_mask=rm, tail_mask=tm, reduction="none"), (r, t)
    )


def test_extreme_scores_are_stable(device):
    ranked, tail, rm, tm = random_case(16, 20, 20, torch.float32, True, seed=9, scale=1e4)
    want = values_and_grads(reference.relaxed_listmle, ranked.double(), tail.double(), rm, tm, "none", "cpu")
    exact = values_and_grads(ops.relaxed_listmle, ranked.double(), tail.double(), rm, tm, "none", device)
    single = values_and_grads(ops.relaxed_listmle, ranked, tail, rm, tm, "none", device)
    for e, s, w in zip(exact, single, want):
        assert torch.isfinite(s).all()
        torch.testing.assert_close(e, w, rtol=1e-9, atol=1e-9)
        # float32 carries about 1e-3 absolute error in exponents of size 1e4
        torch.testing.assert_close(s.double(), w, rtol=1e-5, atol=5e-2)


def test_padding_values_do_not_matter(device):
    ranked, tail, rm, tm = random_case(8, 6, 5, torch.float32, True, seed=12)
    poisoned_ranked = torch.where(rm, ranked, float("nan"))
    poisoned_tail = torch.where(tm, tail, float("inf"))
    clean = values_and_grads(ops.relaxed_listmle, ranked, tail, rm, tm, "none", device)
    poisoned = values_and_grads(ops.relaxed_listmle, poisoned_ranked, poisoned_tail, rm, tm, "none", device)
    for a, b in zip(clean, poisoned):
        assert torch.equal(a, b)
    assert torch.equal(clean[1][~rm], torch.zeros(int((~rm).sum())))


def test_non_contiguous_inputs(device):
    gen = torch.Generator().manual_seed(1)
    big_r = torch.randn(10, 8, generator=gen, dtype=torch.float64)
    big_t = torch.randn(6, 10, generator=gen, dtype=torch.float64)
    ranked, tail = big_r[:, ::2], big_t.T  # strided and transposed views
    mask = (torch.rand(10, 8, generator=gen) < 0.8)[:, ::2]
    got = values_and_grads(ops.relaxed_listmle, ranked, tail, mask, None, "none", device)
    want = values_and_grads(reference.relaxed_listmle, ranked.contiguous(), tail.contiguous(),
                            mask.contiguous(), None, "none", "cpu")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_errors(device):
    r = torch.randn(3, 4, device=device)
    t = torch.randn(3, 2, device=device)
    with pytest.raises(TypeError, match="same dtype"):
        ops.relaxed_listmle(r, t.double())
    with pytest.raises(TypeError, match="ranked must be float"):
        ops.relaxed_listmle(r.long(), t.long())
    with pytest.raises(ValueError, match="same number of rows"):
        ops.relaxed_listmle(r, t[:2])
    with pytest.raises(ValueError, match="2-D"):
        ops.relaxed_listmle(r[0], t)
    with pytest.raises(TypeError, match="ranked_mask must be Bool"):
        ops.relaxed_listmle(r, t, ranked_mask=torch.ones(3, 4, device=device))
    with pytest.raises(ValueError, match="tail_mask must have the shape"):
        ops.relaxed_listmle(r, t, tail_mask=torch.ones(3, 3, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match="reduction"):
        ops.relaxed_listmle(r, t, reduction="avg")
    _, denominators = torch.ops.rankdistill.relaxed_listmle(r, t, None, None)
    with pytest.raises(ValueError, match="second output of relaxed_listmle"):
        torch.ops.rankdistill.relaxed_listmle_backward(torch.ones(3, device=device), r, t, None, None,
                                                       denominators[:, :2])
