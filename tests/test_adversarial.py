"""Property-based tests (hypothesis) of every op on adversarial inputs.

The inputs are drawn from the values that break numerical code: zeros of both
signs, subnormals, the smallest normal numbers, tiny spreads (neighbouring
floats), the largest finite values, infinities, many ties and all-equal rows,
in every supported dtype and in non-contiguous layouts. Each op is compared
with an independent expectation: rankdistill.reference (sort-based ranks, the
padding rule of the multinomial sampler, the logcumsumexp loss, gathered
products summed in float64) or a bound or
invariance that the op's definition implies.

rank_positions runs in a subprocess, over a batch of drawn cases, so that a
crash (nearly equal target scores once made its bucket table index out of
bounds and segfault) fails a test instead of killing pytest.
"""

import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import rankdistill
from rankdistill import ops, reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INF = float("inf")
FLT_MAX = torch.finfo(torch.float32).max
# Every op compares or accumulates in float32 at least, so float32's extremes
# are adversarial in every dtype that holds them.
FLOAT32_EXTREMES = [2.0**-149, 2.0**-148, torch.finfo(torch.float32).tiny, 1e-38, FLT_MAX]
# Where float32's spreads are smallest: runs of neighbouring target scores start here often.
NEAR_ZERO = [0.0, -0.0, 2.0**-149, -(2.0**-149), 1e-38, -1e-38]

# The device fixture is a plain parameter: it is safe to share between examples.
SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def special_values(dtype):
    """Zeros, subnormals, normal extremes and neighbours of 1, with both signs,
    as the values dtype holds (rounded into it, infinities dropped)."""
    info = torch.finfo(dtype)
    smallest_subnormal = info.tiny * info.eps
    magnitudes = [smallest_subnormal, 2 * smallest_subnormal, info.tiny, 1.0, 1.0 + info.eps, 3.0,
                  info.max / 2, info.max] + FLOAT32_EXTREMES
    rounded = torch.tensor(magnitudes, dtype=torch.float64).to(dtype).double()
    finite = sorted(set(rounded[torch.isfinite(rounded)].tolist()))
    return [0.0, -0.0] + finite + [-m for m in finite]


def values(dtype, with_infinity):
    """Special values, or any float64 in dtype's finite range (rounded into
    dtype when the tensor is made: hypothesis's narrower widths reject draws)."""
    specials = special_values(dtype) + ([INF, -INF] if with_infinity else [])
    largest = torch.finfo(dtype).max
    return st.one_of(st.sampled_from(specials), st.floats(-largest, largest))


def neighbours(value, dtype, count):
    """value and the count - 1 floats of dtype just above it: a tiny spread."""
    run = [torch.tensor(value, dtype=dtype)]
    for _ in range(count - 1):
        run.append(torch.nextafter(run[-1], torch.tensor(INF, dtype=dtype)))
    return [x.item() for x in run]


@st.composite
def matrices(draw, dtype, *, with_infinity, rows=None, min_cols=1, max_cols=40):
    """A contiguous [rows, cols] tensor of dtype (1 to 3 rows unless given):
    entries from a small drawn palette (ties; all-equal rows when it holds one
    value), with a run of neighbouring floats in it, and unless palette_only
    some fresh values of many magnitudes. The entries are expanded from a
    drawn seed: drawing each one would overrun hypothesis's buffer in the
    batches of rank_positions cases below."""
    rows = draw(st.integers(1, 3)) if rows is None else rows
    cols = draw(st.integers(min_cols, max_cols))
    value = values(dtype, with_infinity)
    palette = draw(st.lists(value, max_size=4)) + neighbours(draw(value), dtype, draw(st.integers(1, 4)))
    palette_only = draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32)))
    matrix = torch.tensor(palette, dtype=torch.float64)[torch.randint(len(palette), (rows, cols), generator=gen)]
    if not palette_only:
        magnitude = 10.0 ** torch.randint(-45, 45, (rows, cols), generator=gen, dtype=torch.float64)
        fresh = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * magnitude
        matrix = torch.where(torch.rand(rows, cols, generator=gen) < 0.3, fresh, matrix)
    matrix = matrix.to(dtype)
    if not with_infinity:  # a dtype may round a large finite value up to infinity
        matrix = matrix.clamp(-torch.finfo(dtype).max, torch.finfo(dtype).max)
    return matrix


layouts = st.sampled_from(["contiguous", "transposed", "strided"])


def laid_out(matrix, layout):
    """The same values in another memory layout: column-major, or every other
    column of a wider matrix."""
    if layout == "transposed":
        return matrix.T.contiguous().T
    if layout == "strided":
        wide = torch.zeros(matrix.shape[0], 2 * matrix.shape[1], dtype=matrix.dtype)
        wide[:, ::2] = matrix
        return wide[:, ::2]
    return matrix


def on_device(x, device):
    """x on device with the same strides (Tensor.to would make a strided view contiguous)."""
    if x is None:
        return None
    return torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device=device).copy_(x)


# --- rank_positions, in a subprocess ----------------------------------------

RANK_WORKER = r"""
import sys
import torch
from rankdistill import ops

cases, device = torch.load(sys.argv[1]), sys.argv[3]

def on_device(x):
    if x is None:
        return None
    return torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device=device).copy_(x)

results = []
for scores, targets, exclude in cases:
    scores = on_device(scores)
    exclude = None if exclude is None else tuple(on_device(part) for part in exclude)
    try:
        result = ops.rank_positions(scores, on_device(targets), exclude=exclude).cpu()
    except Exception as error:
        result = f"{type(error).__name__}: {error}"
    results.append((scores.stride(), result))
torch.save(results, sys.argv[2])
"""

# The subprocess imports the rankdistill that this process imported.
PACKAGE_PARENT = str(Path(rankdistill.__file__).resolve().parents[1])


def rank_in_subprocess(cases, device):
    """ops.rank_positions of each (scores, targets, exclude) case in a fresh
    process: per case, the strides the op saw and its result or error text."""
    with tempfile.TemporaryDirectory() as folder:
        cases_file, results_file = os.path.join(folder, "cases.pt"), os.path.join(folder, "results.pt")
        torch.save(cases, cases_file)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")]))}
        done = subprocess.run([sys.executable, "-c", RANK_WORKER, cases_file, results_file, str(device)],
                              capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, f"rank_positions crashed (exit status {done.returncode}):\n{done.stderr[-3000:]}"
        return torch.load(results_file)


def check_ranks(cases, device):
    """The op's ranks equal the reference's exactly, or both refuse NaN
    scores; returns the op's results."""
    results = rank_in_subprocess(cases, device)
    assert len(results) == len(cases)
    for (scores, targets, exclude), (strides, got) in zip(cases, results):
        assert strides == scores.stride()  # the layout reached the op
        try:
            expected = reference.rank_positions(scores, targets, exclude=exclude)
        except ValueError:  # NaN scores
            assert isinstance(got, str) and got.startswith("ValueError: scores contain NaN"), got
            continue
        assert isinstance(got, torch.Tensor), got
        assert torch.equal(got, expected), (scores, targets, exclude, got, expected)
    return [got for _, got in results]


def test_rank_positions_regression_nearly_equal_targets(device):
    # Targets whose scores differ by a float32 subnormal (1e-38): the CPU's
    # bucket scale num_buckets / span overflowed to inf, (s - low) * inf gave
    # NaN, and its conversion to int indexed out of bounds (exit 139).
    row = [0.0, 1e-38] + [-1.0] * 7
    cases = [(torch.tensor([row], dtype=dtype), torch.tensor([[0, 1]]), None) for dtype in DTYPES]
    cases += [(torch.tensor([[2.0**-149, 2.0**-148, 0.0, 1.0] + [-1.0] * 5]), torch.tensor([[1, 0]]), None),
              (torch.tensor([[-1e-38, -0.0, 5.0] + [-3.0] * 6]), torch.tensor([[0, 1]]), None)]
    results = check_ranks(cases, device)
    assert results[0].tolist() == [[1, 0]]  # by hand: 1e-38 ranks first


@st.composite
def rank_cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    scores = draw(matrices(dtype, with_infinity=True, max_cols=48))
    rows, cols = scores.shape
    # Column indices come from a drawn seed, for the reason matrices gives.
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32)))
    targets = None
    if draw(st.integers(0, 3)) > 0:
        # few targets (the CPU counts, through its bucket table) or many (it sorts the row)
        width = draw(st.one_of(st.integers(0, max(0, (cols - 1) // 4)), st.integers(0, 2 * cols)))
        targets = torch.randint(cols, (rows, width), generator=gen)
        if width > 0 and draw(st.booleans()):
            # the targets' scores a run of neighbouring floats (float32 ones for
            # float64, compared in float32): the bucket table's smallest spans
            start = draw(st.one_of(values(dtype, with_infinity=False), st.sampled_from(NEAR_ZERO)))
            run_dtype = torch.float32 if dtype == torch.float64 else dtype
            run = torch.tensor(neighbours(start, run_dtype, draw(st.integers(2, 4))), dtype=dtype)
            scores.scatter_(1, targets, run[torch.randint(len(run), targets.shape, generator=gen)])
        if draw(st.booleans()):
            targets = targets.T.contiguous().T
    if draw(st.integers(0, 3)) == 0:  # a NaN anywhere: a ValueError
        scores[draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))] = float("nan")
    scores = laid_out(scores, draw(layouts))
    exclude = None
    if draw(st.booleans()):
        counts = torch.randint(draw(st.integers(0, cols)) + 1, (rows,), generator=gen)
        indptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        exclude = (indptr, torch.randint(cols, (int(indptr[-1]),), generator=gen))  # repeats included
    return scores, targets, exclude


# No shrinking: every step would start a process; the failing case is in the message.
@settings(max_examples=4, phases=[Phase.explicit, Phase.reuse, Phase.generate], **SETTINGS)
@given(cases=st.lists(rank_cases(), min_size=25, max_size=25))
def test_rank_positions_matches_reference(device, cases):
    check_ranks(cases, device)


# --- samplers ----------------------------------------------------------------


def check_sample(out, weights, k, sorted_):
    """Shape, range, distinct columns of positive weight, ascending when
    sorted, and -1 padding exactly where the reference pads (rows with fewer
    than k positive weights, at the end)."""
    rows, cols = weights.shape
    assert out.shape == (rows, k) and out.dtype == torch.long
    positive = weights > 0
    expected_padding = reference.weighted_sample(positive.double(), k) < 0
    assert torch.equal(out < 0, expected_padding), (out, weights)
    for row_positive, picked in zip(positive, out):
        drawn = picked[picked >= 0]
        assert bool((drawn < cols).all())
        assert len(set(drawn.tolist())) == len(drawn)
        assert bool(row_positive[drawn].all()), (picked, row_positive)
        if sorted_:
            assert drawn.tolist() == sorted(drawn.tolist())


@settings(max_examples=80, **SETTINGS)
@given(data=st.data())
def test_weighted_sample_properties(device, data):
    dtype = data.draw(st.sampled_from(DTYPES))
    weights = data.draw(matrices(dtype, with_infinity=False, max_cols=30)).abs()
    if data.draw(st.booleans()):
        weights = torch.where(weights == 0, -0.0, weights)  # -0.0 is a valid, non-positive weight
    poison = data.draw(st.sampled_from([None, None, float("nan"), INF, -1.0, -(2.0**-149)]))
    if poison is not None:
        weights[data.draw(st.integers(0, weights.shape[0] - 1)), data.draw(st.integers(0, weights.shape[1] - 1))] = poison
    # (a half dtype rounds -2^-149 to -0.0, a valid weight)
    invalid = not (bool(torch.isfinite(weights).all()) and bool((weights >= 0).all()))
    k = data.draw(st.integers(0, weights.shape[1]))
    sorted_ = data.draw(st.booleans())
    w = on_device(laid_out(weights, data.draw(layouts)), device)
    gen = torch.Generator(device).manual_seed(data.draw(st.integers(0, 2**32)))
    if invalid:
        with pytest.raises(ValueError, match="finite and non-negative"):
            ops.weighted_sample(w, k, sorted=sorted_, generator=gen)
        return
    check_sample(ops.weighted_sample(w, k, sorted=sorted_, generator=gen).cpu(), weights, k, sorted_)


@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_weighted_sample_is_invariant_to_powers_of_two(device, data):
    # Multiplying a row by 2^j changes no probability, and where the product
    # is exact no draw either: the weights here (10-bit integers times 2^e,
    # |e| <= 10) times 2^j, -1064 <= j <= 1000, are exact float64 numbers from
    # the smallest subnormal, 2^-1074, to about 1e307. Below about 1e-308 the
    # keys log(u) / w once overflowed to -inf and tied.
    cols = data.draw(st.integers(1, 25))
    integers = data.draw(st.lists(st.integers(0, 1023), min_size=2 * cols, max_size=2 * cols))
    exponents = data.draw(st.lists(st.integers(-10, 10), min_size=2 * cols, max_size=2 * cols))
    weights = (torch.tensor(integers, dtype=torch.float64) * 2.0 ** torch.tensor(exponents, dtype=torch.float64))
    weights = weights.reshape(2, cols)
    j = data.draw(st.one_of(st.integers(-1064, 1000), st.integers(-1064, -1040), st.integers(980, 1000)))
    scaled = weights * 2.0**j
    assert all(math.ldexp(x, -j) == w for x, w in zip(scaled.flatten().tolist(), weights.flatten().tolist()))
    k = data.draw(st.integers(0, cols))
    seed = data.draw(st.integers(0, 2**32))
    draws = [ops.weighted_sample(w.to(device), k, sorted=False, generator=torch.Generator(device).manual_seed(seed))
             for w in (weights, scaled)]
    assert torch.equal(draws[0], draws[1])


@st.composite
def rank_matrices(draw, dtype, rows, cols):
    if dtype in (torch.int64, torch.int32):
        info = torch.iinfo(dtype)
        entry = st.one_of(st.sampled_from([0, 1, 2, info.max, info.min, info.max - 1]),
                          st.integers(info.min, info.max), st.integers(-3, 3))
        return torch.tensor(draw(st.lists(entry, min_size=rows * cols, max_size=rows * cols)),
                            dtype=dtype).reshape(rows, cols)
    entry = st.one_of(values(dtype, with_infinity=True), st.integers(-3, 3).map(float))
    return torch.tensor(draw(st.lists(entry, min_size=rows * cols, max_size=rows * cols)),
                        dtype=torch.float64).to(dtype).reshape(rows, cols)


@settings(max_examples=80, **SETTINGS)
@given(data=st.data())
def test_discrepancy_sample_properties(device, data):
    dtype = data.draw(st.sampled_from([torch.int64, torch.int32, torch.float32, torch.float64]))
    rows, cols = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 30))
    student = data.draw(rank_matrices(dtype, rows, cols))
    teacher = data.draw(rank_matrices(dtype, rows, cols))
    mu = data.draw(st.one_of(st.sampled_from([5e-324, 1e-320, 1e-300, 1e-3, 1.0, 1e300]),
                             st.floats(5e-324, 1e308)))
    direction = data.draw(st.sampled_from(["under", "over"]))
    k = data.draw(st.integers(0, cols))
    weights = reference.discrepancy_weights(student, teacher, mu=mu, direction=direction)
    layout = data.draw(layouts)
    s, t = (on_device(laid_out(x, layout), device) for x in (student, teacher))
    gen = torch.Generator(device).manual_seed(data.draw(st.integers(0, 2**32)))
    if torch.isnan(weights).any():  # inf - inf between infinite float ranks
        with pytest.raises(ValueError, match="finite and non-negative"):
            ops.discrepancy_sample(s, t, k, mu=mu, direction=direction, generator=gen)
        return
    out = ops.discrepancy_sample(s, t, k, mu=mu, direction=direction, generator=gen).cpu()
    check_sample(out, weights, k, True)


# --- relaxed_listmle ---------------------------------------------------------

@st.composite
def dot_lists_cases(draw, with_infinity):
    """Two tables of one dtype and dimension, drawn as ``matrices`` (ties,
    neighbours, extremes), and lists of indices into them with repeats."""
    dtype = draw(st.sampled_from(DTYPES))
    row_table = draw(matrices(dtype, with_infinity=with_infinity, max_cols=24))
    col_table = draw(matrices(dtype, with_infinity=with_infinity, rows=draw(st.integers(1, 4)),
                              min_cols=row_table.shape[1], max_cols=row_table.shape[1]))
    num_lists, width = draw(st.integers(0, 4)), draw(st.integers(0, 5))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32)))
    rows = torch.randint(row_table.shape[0], (num_lists,), generator=gen)
    cols = torch.randint(col_table.shape[0], (num_lists, width), generator=gen)
    return row_table, rows, col_table, cols, draw(layouts)


def dot_error_bound(products, dtype):
    """What summing ``products`` [..., d] (exact in float64) in the op's
    accumulation type and rounding the sum to dtype may be off by: d
    roundings of partial sums at most sum|p|, each product's own rounding, and
    the final rounding (with the smallest subnormal of either type as a floor)."""
    eps = accumulation_eps(dtype)
    magnitude = products.abs().sum(-1)
    floor = torch.finfo(dtype).tiny * torch.finfo(dtype).eps
    return (products.shape[-1] + 1) * eps * magnitude + torch.finfo(dtype).eps * magnitude + 4 * floor


@settings(max_examples=120, **SETTINGS)
@given(case=dot_lists_cases(with_infinity=True))
def test_dot_lists_matches_float64_products(device, case):
    row_table, rows, col_table, cols, layout = case
    dtype = row_table.dtype
    got = ops.dot_lists(on_device(laid_out(row_table, layout), device), rows.to(device),
                        on_device(laid_out(col_table, layout), device), cols.to(device)).cpu()
    assert got.dtype == dtype and got.shape == cols.shape
    products = col_table.double()[cols] * row_table.double()[rows].unsqueeze(1)
    want = products.sum(-1)
    finite = torch.isfinite(products)
    # A sum whose finite part cannot overflow the accumulation type (nor the
    # result's dtype) has the float64 result's NaN / infinity exactly; the
    # finite sums are within the rounding bound.
    room = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).max / 4
    safe = torch.where(finite, products.abs(), 0.0).sum(-1) < min(room, torch.finfo(dtype).max / 4)
    assert torch.equal(torch.isnan(got[safe]), torch.isnan(want[safe]))
    infinite = safe & torch.isinf(want)
    assert torch.equal(got[infinite].double(), want[infinite])
    exact = safe & torch.isfinite(want)
    assert bool(((got.double() - want).abs()[exact] <= dot_error_bound(products, dtype)[exact]).all()), (got, want)


@settings(max_examples=80, **SETTINGS)
@given(case=dot_lists_cases(with_infinity=False))
def test_dot_lists_gradients(device, case):
    # d out[b, m] / d row_table[rows[b]] = col_table[cols[b, m]] and back:
    # with unit weights each table row's gradient is the sum of the other
    # table's rows it met, checked against that sum in float64.
    row_table, rows, col_table, cols, layout = case
    dtype = row_table.dtype
    r = on_device(laid_out(row_table, layout), device).requires_grad_()
    c = on_device(laid_out(col_table, layout), device).requires_grad_()
    ops.dot_lists(r, rows.to(device), c, cols.to(device)).sum().backward()
    met_by_rows = (rows, col_table.double()[cols].sum(1), col_table.double().abs()[cols].sum(1))
    met_by_cols = (cols.reshape(-1), *(x.repeat_interleave(cols.shape[1], 0)
                                       for x in (row_table.double()[rows], row_table.double().abs()[rows])))
    eps = accumulation_eps(dtype)
    for got, table, (index, terms, magnitudes) in ((r.grad.cpu(), row_table, met_by_rows),
                                                   (c.grad.cpu(), col_table, met_by_cols)):
        want = torch.zeros(table.shape, dtype=torch.float64).index_add_(0, index, terms)
        magnitude = torch.zeros(table.shape, dtype=torch.float64).index_add_(0, index, magnitudes)
        count = torch.zeros(table.shape[0], dtype=torch.float64).index_add_(
            0, index, torch.ones(len(index), dtype=torch.float64)).unsqueeze(1)
        assert got.dtype == dtype
        # no partial sum can overflow where the sum of magnitudes stays below the type's largest value
        ok = magnitude < torch.finfo(dtype).max / 4
        tol = (count + 1) * eps * magnitude + torch.finfo(dtype).eps * want.abs() + 4 * torch.finfo(dtype).tiny
        assert bool(((got.double() - want).abs()[ok] <= tol[ok]).all()), (got, want)


def accumulation_eps(dtype):
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


def loss_and_grads(ranked, tail, ranked_mask, tail_mask, device, create_graph=False):
    """The per-row loss and its gradients; create_graph takes the backward
    that double backward needs, not the fused one."""
    r = on_device(ranked, device).requires_grad_()
    t = on_device(tail, device).requires_grad_()
    masks = [None if m is None else on_device(m, device) for m in (ranked_mask, tail_mask)]
    loss = ops.relaxed_listmle(r, t, ranked_mask=masks[0], tail_mask=masks[1], reduction="none")
    grads = torch.autograd.grad(loss.sum(), (r, t), create_graph=create_graph)
    return loss.detach().cpu(), grads[0].detach().cpu(), grads[1].detach().cpu()


def reference_loss_and_grads(ranked, tail, ranked_mask, tail_mask):
    r, t = ranked.double().requires_grad_(), tail.double().requires_grad_()
    loss = reference.relaxed_listmle(r, t, ranked_mask=ranked_mask, tail_mask=tail_mask, reduction="none")
    loss.sum().backward()
    return loss.detach(), r.grad, t.grad


@st.composite
def listmle_cases(draw, min_ranked=0):
    dtype = draw(st.sampled_from(DTYPES))
    ranked = draw(matrices(dtype, with_infinity=False, min_cols=min_ranked, max_cols=8))
    tail = draw(matrices(dtype, with_infinity=False, rows=ranked.shape[0], min_cols=0, max_cols=8))

    def mask(shape):
        if draw(st.booleans()):
            return None
        bits = draw(st.lists(st.booleans(), min_size=shape[0] * shape[1], max_size=shape[0] * shape[1]))
        return torch.tensor(bits, dtype=torch.bool).reshape(shape)

    return ranked, tail, mask(ranked.shape), mask(tail.shape), draw(layouts)


@settings(max_examples=120, **SETTINGS)
@given(case=listmle_cases())
def test_relaxed_listmle_properties(device, case):
    ranked, tail, ranked_mask, tail_mask, layout = case
    dtype = ranked.dtype
    valid_ranked = torch.ones_like(ranked, dtype=torch.bool) if ranked_mask is None else ranked_mask
    valid_tail = torch.ones_like(tail, dtype=torch.bool) if tail_mask is None else tail_mask
    inputs = [laid_out(ranked, layout), laid_out(tail, layout), ranked_mask, tail_mask]
    loss, grad_ranked, grad_tail = loss_and_grads(*inputs, device)

    # Always: no NaN, finite and bounded gradients, exact zeros at padding.
    # dL/ds_j = sum_{k <= j valid} exp(s_j - D_k) - 1 with each exp <= 1, and
    # dL/dt_l = sum_k exp(t_l - D_k): so -1 <= dL/ds_j <= #valid k <= j - 1
    # and 0 <= dL/dt_l <= #valid k. The loss sum_k (D_k - s_k) is >= 0.
    assert not torch.isnan(loss).any()
    assert bool((loss >= 0).all())
    assert torch.isfinite(grad_ranked).all() and torch.isfinite(grad_tail).all()
    assert bool((grad_ranked[~valid_ranked] == 0).all()) and bool((grad_tail[~valid_tail] == 0).all())
    slack = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
    valid_up_to = valid_ranked.cumsum(1).double()
    g_r, g_t = grad_ranked.double(), grad_tail.double()
    assert bool((g_r >= -1 - slack).all())
    assert bool((g_r <= (valid_up_to - 1) * (1 + slack) + slack)[valid_ranked].all())
    per_row = valid_ranked.sum(1, keepdim=True).double()
    assert bool((g_t >= 0).all()) and bool((g_t <= per_row * (1 + slack) + slack).all())
    no_ranked = per_row.squeeze(1) == 0
    assert bool((loss[no_ranked] == 0).all()) and bool((g_t[no_ranked] == 0).all())

    # Errors scale with the magnitude m of the row's values: D_k - s_k and
    # s_j - D_k carry an absolute rounding error of about eps * m each.
    eps = accumulation_eps(dtype)
    valid_values = torch.cat([torch.zeros(ranked.shape[0], 1, dtype=torch.float64),
                              torch.where(valid_ranked, ranked.double(), 0.0),
                              torch.where(valid_tail, tail.double(), 0.0)], dim=1)
    magnitude = valid_values.abs().amax(1) + math.log(ranked.shape[1] + tail.shape[1] + 1) + 1
    count = ranked.shape[1] + 1
    grad_tol = (8 * count * eps * magnitude + torch.finfo(dtype).eps * count).unsqueeze(1)

    # The backward that builds a graph (for double backward) is another
    # computation: the same gradients, exact zeros at padding.
    _, graph_r, graph_t = loss_and_grads(*inputs, device, create_graph=True)
    assert bool(((graph_r.double() - g_r).abs() <= grad_tol).all()), (graph_r, g_r)
    assert bool(((graph_t.double() - g_t).abs() <= grad_tol).all()), (graph_t, g_t)
    assert bool((graph_r[~valid_ranked] == 0).all()) and bool((graph_t[~valid_tail] == 0).all())

    # Against the reference (float64, same input values) where it is exact:
    # its padding value -1e30 stands for exp() = 0, which holds only while
    # every valid ranked score is above it.
    ranked_values = ranked.double()[valid_ranked]
    if ranked_values.numel() and ranked_values.min() <= -1e30:
        return
    want_loss, want_r, want_t = reference_loss_and_grads(ranked, tail, ranked_mask, tail_mask)
    acc_max = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).max
    # The loss overflows only where its exact value does (D_k - s_k up to 2 * max).
    finite_expected = torch.isfinite(want_loss) & (want_loss.abs() < acc_max / 2)
    assert bool(torch.isfinite(loss[finite_expected]).all())
    loss_tol = 8 * count * eps * magnitude + 1e-6 * want_loss.abs()
    ok = finite_expected
    assert bool(((loss.double() - want_loss).abs()[ok] <= loss_tol[ok]).all()), (loss, want_loss)
    assert bool(((g_r - want_r).abs() <= grad_tol).all()), (g_r, want_r)
    assert bool(((g_t - want_t).abs() <= grad_tol).all()), (g_t, want_t)


@settings(max_examples=40, **SETTINGS)
@given(case=listmle_cases(min_ranked=1), poison=st.sampled_from([float("nan"), INF, -INF]))
def test_relaxed_listmle_padding_and_nan(device, case, poison):
    ranked, tail, ranked_mask, tail_mask, layout = case
    if ranked_mask is None:
        ranked_mask = torch.ones_like(ranked, dtype=torch.bool)
        ranked_mask[:, -1] = False
    # Padded entries contribute nothing whatever their value: poisoning them
    # changes no bit of the loss or of the gradients.
    poisoned_ranked = torch.where(ranked_mask, ranked, poison)
    poisoned_tail = tail if tail_mask is None else torch.where(tail_mask, tail, poison)
    clean = loss_and_grads(laid_out(ranked, layout), laid_out(tail, layout), ranked_mask, tail_mask, device)
    dirty = loss_and_grads(laid_out(poisoned_ranked, layout), laid_out(poisoned_tail, layout), ranked_mask,
                           tail_mask, device)
    for a, b in zip(clean, dirty):
        assert torch.equal(a, b)
    # A NaN in a valid entry is no error: it propagates to its row's loss only.
    if not ranked_mask.any():
        return
    row, col = torch.nonzero(ranked_mask)[0].tolist()
    nan_ranked = ranked.clone()
    nan_ranked[row, col] = float("nan")
    loss = loss_and_grads(nan_ranked, tail, ranked_mask, tail_mask, device)[0]
    assert torch.isnan(loss[row])
    others = torch.arange(loss.shape[0]) != row
    assert torch.equal(loss[others], clean[0][others])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.integers(1, 9), st.sampled_from(DTYPES),
       st.lists(st.tuples(st.integers(0, 5), st.integers(0, 8),
                          st.sampled_from([float("nan"), INF, -INF, FLT_MAX, -0.0, 2.0**-149])), max_size=4),
       st.booleans())
def test_finiteness_checks_agree_with_isfinite(rows, cols, dtype, poison, transpose):
    """blocks.all_finite / non_finite_rows (the cheap aminmax checks that keep
    a NaN or infinite teacher or model out of rankings and evaluation) say
    exactly what torch.isfinite says, for any poison, dtype and layout."""
    from rankdistill.blocks import all_finite, non_finite_rows
    values = torch.randn(cols, rows).T if transpose else torch.randn(rows, cols)
    for row, col, value in poison:
        values[row % rows, col % cols] = value
    values = values.to(dtype)
    expected_rows = (~torch.isfinite(values).all(dim=1)).long()
    assert all_finite(values) == bool(torch.isfinite(values).all())
    assert torch.equal(non_finite_rows(values), expected_rows)
    assert all_finite(values[:0])
