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


def leaf_case(device, with_masks, seed):
    """A float64 case on ``device``: scores as leaves that require grad, masks (or None)."""
    ranked, tail, rm, tm = random_case(4, 5, 3, torch.float64, with_masks, seed=seed)
    return (ranked.to(device).requires_grad_(), tail.to(device).requires_grad_(),
            None if rm is None else rm.to(device), None if tm is None else tm.to(device))


@pytest.mark.parametrize("with_masks", [False, True])
def test_gradcheck(device, with_masks):
    r, t, rm, tm = leaf_case(device, with_masks, seed=7)
    assert torch.autograd.gradcheck(
        lambda a, b: ops.relaxed_listmle(a, b, ranked_mask=rm, tail_mask=tm, reduction="none"), (r, t)
    )


@pytest.mark.parametrize("with_masks", [False, True])
def test_gradgradcheck(device, with_masks):
    # Second derivatives (create_graph=True) against finite differences of
    # the first, w.r.t. both inputs, each alone, and through a non-leaf input.
    r, t, rm, tm = leaf_case(device, with_masks, seed=17)

    def loss(a, b):
        return ops.relaxed_listmle(a, b, ranked_mask=rm, tail_mask=tm, reduction="none")

    assert torch.autograd.gradgradcheck(loss, (r, t))
    assert torch.autograd.gradgradcheck(lambda a: loss(a, t.detach()), (r,))
    assert torch.autograd.gradgradcheck(lambda b: loss(r.detach(), b), (t,))
    assert torch.autograd.gradgradcheck(lambda a, b: loss(a.exp(), b * 2), (r, t))


def directions_for(ranked, tail):
    return (torch.linspace(0.5, -1.5, ranked.numel(), dtype=torch.float64).reshape(ranked.shape),
            torch.linspace(-1.0, 2.0, tail.numel(), dtype=torch.float64).reshape(tail.shape))


def hessian_vector_products(fn, ranked, tail, directions, ranked_mask=None, tail_mask=None, device="cpu"):
    """The gradients w.r.t. ranked and tail (built with create_graph=True) and
    the gradients of their products with `directions`: Hessian-vector products."""
    inputs = [x.to(device).detach().requires_grad_() for x in (ranked, tail)]
    masks = [None if m is None else m.to(device) for m in (ranked_mask, tail_mask)]
    loss = fn(*inputs, ranked_mask=masks[0], tail_mask=masks[1], reduction="sum")
    # Empty inputs are left out: PyTorch's double backward through one returns garbage.
    used = [i for i, x in enumerate(inputs) if x.numel() > 0]
    grads = torch.autograd.grad(loss, [inputs[i] for i in used], create_graph=True)
    product = sum((g * directions[i].to(device)).sum() for i, g in zip(used, grads))
    hvps = torch.autograd.grad(product, [inputs[i] for i in used])
    out = [torch.zeros_like(x) for x in inputs + inputs]
    for i, g, h in zip(used, grads, hvps):
        out[i], out[2 + i] = g, h
    return [x.detach().cpu() for x in out]


def test_double_backward_matches_reference(device):
    ranked, tail, _, _ = random_case(6, 7, 4, torch.float64, False, seed=23)
    directions = directions_for(ranked, tail)
    got = hessian_vector_products(ops.relaxed_listmle, ranked, tail, directions, device=device)
    want = hessian_vector_products(reference.relaxed_listmle, ranked, tail, directions)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_double_backward_with_padding(device):
    # A padded row is the row with its padding removed: each row is compared
    # with the reference on the compacted row (the reference's own double
    # backward with masks is NaN). Padding is NaN here, and gets zero first
    # and second derivatives.
    ranked, tail, rm, tm = random_case(6, 7, 4, torch.float64, True, seed=29)
    rm[3] = torch.tensor([True, False, True, False, False, True, False])
    directions = directions_for(ranked, tail)
    got = hessian_vector_products(ops.relaxed_listmle, torch.where(rm, ranked, float("nan")),
                                  torch.where(tm, tail, float("nan")), directions, rm, tm, device)
    for row in range(ranked.shape[0]):
        masks = (rm[row], tm[row])
        expected = [torch.zeros(mask.shape, dtype=torch.float64) for mask in masks + masks]
        if rm[row].any():  # otherwise the row's loss is 0, and so is every derivative
            compact = hessian_vector_products(reference.relaxed_listmle, ranked[row, rm[row]][None],
                                              tail[row, tm[row]][None],
                                              (directions[0][row, rm[row]][None], directions[1][row, tm[row]][None]))
            for full, part, mask in zip(expected, compact, masks + masks):
                full[mask] = part[0]
        for g, e in zip(got, expected):
            torch.testing.assert_close(g[row], e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_double_backward_at_extreme_scores(device, dtype):
    # Scores near the dtype's largest magnitude, with and without a tail: the
    # gradients that create_graph builds equal the fused ones (no stand-in
    # for "no entry" such as -1e30 may compete with valid scores), and their
    # derivatives are finite.
    big = torch.finfo(dtype).max / 2
    ranked = torch.tensor([[0.0, -big, 1.0, -big], [big, 0.0, -1.0, big]], dtype=dtype, device=device)
    ranked_mask = torch.tensor([[True, True, False, True], [True, True, True, True]], device=device)
    tails = [ranked[:, :0], torch.tensor([[-big, 2.0], [-big, -big]], dtype=dtype, device=device)]
    for tail in tails:
        r, t = ranked.clone().requires_grad_(), tail.clone().requires_grad_()
        loss = ops.relaxed_listmle(r, t, ranked_mask=ranked_mask, reduction="sum")
        fused = torch.autograd.grad(loss, (r, t), retain_graph=True)
        graph = torch.autograd.grad(loss, (r, t), create_graph=True)
        for f, g in zip(fused, graph):
            torch.testing.assert_close(g.detach(), f)
        second = torch.autograd.grad(sum(g.sum() for g in graph), (r, t), allow_unused=True, materialize_grads=True)
        assert all(torch.isfinite(h).all() for h in second)


def test_first_order_backward_stays_fused(device):
    # An ordinary backward runs the fused kernel: bit for bit the op's own
    # backward, not the dense form that create_graph differentiates.
    ranked, tail, rm, tm = random_case(5, 6, 4, torch.float64, True, seed=31)
    args = [x.to(device) for x in (ranked, tail, rm, tm)]
    r, t = args[0].clone().requires_grad_(), args[1].clone().requires_grad_()
    ops.relaxed_listmle(r, t, ranked_mask=args[2], tail_mask=args[3], reduction="sum").backward()
    _, denominators = torch.ops.rankdistill.relaxed_listmle(*args)
    fused = torch.ops.rankdistill.relaxed_listmle_backward(torch.ones(5, dtype=torch.float64, device=device),
                                                            *args, denominators)
    assert torch.equal(r.grad, fused[0]) and torch.equal(t.grad, fused[1])


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
