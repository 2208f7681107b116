"""weighted_sample and discrepancy_sample: exact inclusion probabilities of
successive sampling on small cases, padding, reproducibility and errors."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankdistill import ops, reference


def exact_subset_probabilities(weights, k):
    """P(drawn set = S) for successive sampling without replacement, by
    enumerating every ordered draw sequence, in exact rational arithmetic
    (weights may be subnormal, or sum beyond the float64 maximum)."""
    weights = [Fraction(w) for w in weights]
    positive = [c for c, w in enumerate(weights) if w > 0]
    probs = {}
    for sequence in itertools.permutations(positive, k):
        p, remaining = Fraction(1), sum(weights)
        for c in sequence:
            p *= weights[c] / remaining
            remaining -= weights[c]
        key = tuple(sorted(sequence))
        probs[key] = probs.get(key, 0) + p
    return {key: float(p) for key, p in probs.items()}


def assert_subset_distribution(samples, weights, k):
    """Every subset's frequency within 5 standard errors of its exact
    probability (and no subset that cannot occur)."""
    n = samples.shape[0]
    exact = exact_subset_probabilities(weights, k)
    counts = {}
    for row in samples.tolist():
        key = tuple(row)
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) <= set(exact), f"impossible subsets drawn: {set(counts) - set(exact)}"
    for subset, p in exact.items():
        freq = counts.get(subset, 0) / n
        assert abs(freq - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-9, (subset, freq, p)


WEIGHT_CASES = [
    ([1.0, 2.0, 3.0, 4.0, 10.0], 2),
    ([0.5, 0.0, 2.0, 1.0, 4.0, 8.0], 3),
    ([1.0, 1.0, 30.0, 0.2], 1),
    # many columns after the first k: the heap's pruning threshold matters
    ([0.25, 5.0, 0.0, 1.0, 2.0, 0.125, 7.0, 3.0, 0.5, 4.0, 1.0, 2.0], 3),
]
N_DRAWS = 60_000


@pytest.mark.parametrize("weights,k", WEIGHT_CASES)
def test_weighted_sample_distribution(device, weights, k):
    w = torch.tensor(weights, device=device).expand(N_DRAWS, -1).contiguous()
    samples = ops.weighted_sample(w, k, generator=torch.Generator(device).manual_seed(11))
    assert samples.shape == (N_DRAWS, k) and samples.dtype == torch.long
    assert_subset_distribution(samples.cpu(), weights, k)


@pytest.mark.parametrize("weights,k", WEIGHT_CASES[:2])
def test_reference_distribution(weights, k):
    w = torch.tensor(weights).expand(N_DRAWS, -1).contiguous()
    assert_subset_distribution(reference.weighted_sample(w, k, generator=torch.Generator().manual_seed(2)),
                               weights, k)


def test_distribution_check_rejects_a_wrong_sampler():
    # Top-k of u * w (a common mistake) is not successive sampling: the check
    # that validates the ops must reject it.
    weights, k = WEIGHT_CASES[0]
    gen = torch.Generator().manual_seed(0)
    keys = torch.rand(N_DRAWS, len(weights), generator=gen) * torch.tensor(weights)
    wrong = keys.topk(k, dim=1).indices.sort(1).values
    with pytest.raises(AssertionError):
        assert_subset_distribution(wrong, weights, k)


def test_unsorted_order_is_the_draw_order(device):
    # The first column of an unsorted sample is the first draw: P(c) = w_c / W;
    # the second, given the first, follows the remaining weights.
    weights = [1.0, 2.0, 3.0, 4.0]
    w = torch.tensor(weights, device=device).expand(N_DRAWS, -1).contiguous()
    samples = ops.weighted_sample(w, 2, sorted=False, generator=torch.Generator(device).manual_seed(5)).cpu()
    total = sum(weights)
    for first, second in itertools.permutations(range(4), 2):
        p = weights[first] / total * weights[second] / (total - weights[first])
        freq = ((samples[:, 0] == first) & (samples[:, 1] == second)).double().mean().item()
        assert abs(freq - p) <= 5 * math.sqrt(p * (1 - p) / N_DRAWS), (first, second, freq, p)


def test_padding_and_edge_cases(device):
    w = torch.tensor([[0.0, 3.0, 0.0, 1.0, 0.0], [0.0] * 5, [1.0] * 5], device=device)
    out = ops.weighted_sample(w, 3).cpu()
    assert out.tolist()[:2] == [[1, 3, -1], [-1, -1, -1]]
    assert len(set(out[2].tolist())) == 3 and out[2].tolist() == sorted(out[2].tolist())
    unsorted = ops.weighted_sample(w, 3, sorted=False).cpu()
    assert sorted(unsorted[0, :2].tolist()) == [1, 3] and unsorted[0, 2] == -1
    assert ops.weighted_sample(w, 0).shape == (3, 0)
    assert ops.weighted_sample(w, 5)[2].cpu().tolist() == [0, 1, 2, 3, 4]
    assert ops.weighted_sample(torch.zeros(0, 4, device=device), 2).shape == (0, 2)


# float64 weights far from 1: unscaled, the keys log(u) / w overflow to -inf
# below about 1e-307 (every such column tied, so the first k were drawn) and
# underflow to subnormals near 1e308.
MAGNITUDE_CASES = [
    ([1.0, 2.0, 3.0], 1e-310, 1),
    ([1.0, 2.0, 3.0, 4.0, 10.0], 1e-310, 2),
    ([1.0, 2.0, 3.0], 2.0**-1074, 2),  # 1, 2 and 3 times the smallest subnormal
    ([1.0, 2.0, 3.0, 4.0, 10.0], 1e300, 2),
    ([1.0, 2.0, 3.0], 5e307, 2),  # the row sums beyond the float64 maximum
    ([1.0, 1e-310, 2e-310, 3e-310], 1.0, 2),  # 1e-310 next to 1: still in proportion among themselves
]


@pytest.mark.parametrize("weights,scale,k", MAGNITUDE_CASES)
def test_weights_of_any_magnitude(device, weights, scale, k):
    w = torch.tensor(weights, dtype=torch.float64, device=device) * scale
    samples = ops.weighted_sample(w.expand(N_DRAWS, -1).contiguous(), k,
                                  generator=torch.Generator(device).manual_seed(13))
    # the exact probabilities of the weights as stored (subnormals are rounded)
    assert_subset_distribution(samples.cpu(), w.tolist(), k)


def test_k_must_be_an_integer(device):
    w = torch.rand(3, 5, device=device)
    ranks = torch.arange(5, device=device).expand(3, 5).contiguous()
    zeros = torch.zeros_like(ranks)
    for bad in (2.5, 2.0, np.float64(2.0), True, torch.tensor(2.0), torch.tensor(True), torch.tensor([2]), "2"):
        with pytest.raises(TypeError, match="k must be an integer"):
            ops.weighted_sample(w, bad)
        with pytest.raises(TypeError, match="k must be an integer"):
            ops.discrepancy_sample(ranks, zeros, bad, mu=1.0, direction="under")
    for huge in (2**63, -2**63 - 1, 2**64):  # not int64: a ValueError, not the dispatcher's cast failure
        with pytest.raises(ValueError, match="k is out of range"):
            ops.weighted_sample(w, huge)
        with pytest.raises(ValueError, match="first_row is out of range"):
            ops.weighted_sample(w, 1, first_row=huge)
        with pytest.raises(ValueError, match="k is out of range"):
            ops.dot_top_columns(w, w, huge)
    for good in (2, np.int64(2), np.int32(2), torch.tensor(2), torch.tensor(2, dtype=torch.int32)):
        assert ops.weighted_sample(w, good).shape == (3, 2)
        assert ops.discrepancy_sample(ranks, zeros, good, mu=1.0, direction="under").shape == (3, 2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_weight_dtypes(device, dtype):
    weights = [1.0, 2.0, 3.0, 4.0, 10.0]  # exactly representable in every dtype
    w = torch.tensor(weights, device=device, dtype=dtype).expand(N_DRAWS, -1).contiguous()
    samples = ops.weighted_sample(w, 2, generator=torch.Generator(device).manual_seed(3)).cpu()
    assert_subset_distribution(samples, weights, 2)


def test_non_contiguous_weights(device):
    base = torch.rand(40, 30, device=device)
    view = base.T  # [30, 40], not contiguous
    gen_a, gen_b = torch.Generator(device).manual_seed(4), torch.Generator(device).manual_seed(4)
    assert torch.equal(ops.weighted_sample(view, 7, generator=gen_a),
                       ops.weighted_sample(view.contiguous(), 7, generator=gen_b))


def test_reproducible_and_thread_independent(device):
    w = torch.rand(200, 50, device=device)

    def draw(seed):
        return ops.weighted_sample(w, 10, generator=torch.Generator(device).manual_seed(seed))

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = draw(7)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, draw(7))
    torch.manual_seed(9)
    a = ops.weighted_sample(w.cpu(), 10)
    torch.manual_seed(9)
    assert torch.equal(a, ops.weighted_sample(w.cpu(), 10))


@pytest.mark.parametrize("op", ["weighted_sample", "discrepancy_sample"])
@pytest.mark.parametrize("cols", [50, 3000])  # CUDA: a block per row, and the sort of all keys
def test_blocks_drawn_from_their_first_row_draw_the_whole_matrix(device, op, cols):
    """Rows drawn in blocks (as processes draw their shares of a matrix),
    each with first_row = its first row and a generator seeded alike, draw
    exactly what the whole matrix draws; without first_row the blocks draw
    other columns (each block's rows would repeat the first rows' numbers)."""
    rows = 23
    if op == "weighted_sample":
        w = torch.rand(rows, cols, device=device)
        draw = lambda part, **kw: ops.weighted_sample(w[part], 7, **kw)  # noqa: E731
    else:
        student = torch.randint(0, 5 * cols, (rows, cols), device=device)
        teacher = torch.randint(0, 5 * cols, (rows, cols), device=device)
        draw = lambda part, **kw: ops.discrepancy_sample(student[part], teacher[part], 7, mu=0.01,  # noqa: E731
                                                          direction="under", **kw)
    seeded = lambda: torch.Generator(device).manual_seed(5)  # noqa: E731
    whole = draw(slice(0, rows), generator=seeded())
    bounds = [0, 1, 9, 10, 23]
    blocks = [draw(slice(a, b), generator=seeded(), first_row=a) for a, b in zip(bounds, bounds[1:])]
    assert torch.equal(torch.cat(blocks), whole)
    restarted = [draw(slice(a, b), generator=seeded()) for a, b in zip(bounds, bounds[1:])]
    assert not torch.equal(torch.cat(restarted), whole)


def test_first_row_errors(device):
    w = torch.rand(3, 4, device=device)
    with pytest.raises(ValueError, match="first_row must be non-negative"):
        ops.weighted_sample(w, 2, first_row=-1)
    with pytest.raises(ValueError, match="at most 2\\^32 - 1 rows"):
        ops.discrepancy_sample(w, w, 2, mu=0.1, direction="over", first_row=2**32 - 3)
    with pytest.raises(TypeError, match="first_row must be an integer"):
        ops.weighted_sample(w, 2, first_row=1.0)
    assert ops.weighted_sample(w, 2, first_row=2**32 - 4).shape == (3, 2)  # the last rows the stream addresses


def test_weighted_sample_errors(device):
    w = torch.rand(3, 4, device=device)
    for bad in (-1.0, float("nan"), float("inf")):
        broken = w.clone()
        broken[1, 2] = bad
        with pytest.raises(ValueError, match="finite and non-negative"):
            ops.weighted_sample(broken, 2)
    with pytest.raises(ValueError, match="larger than the number of columns"):
        ops.weighted_sample(w, 5)
    with pytest.raises(ValueError, match="non-negative"):
        ops.weighted_sample(w, -1)
    with pytest.raises(ValueError, match="2-D"):
        ops.weighted_sample(w[0], 2)
    with pytest.raises(TypeError, match="weights must be float"):
        ops.weighted_sample(w.long(), 2)


# --- discrepancy_sample -------------------------------------------------------


def test_discrepancy_distribution(device):
    # tanh(x) < x here: the CPU's pruning by the bound min(x, 1) must not
    # change the distribution.
    mu = 0.05
    student = torch.tensor([3, 30, 8, 40, 2, 90])
    teacher = torch.tensor([0, 1, 2, 3, 4, 5])
    for direction, sign in (("under", 1.0), ("over", -1.0)):
        weights = [math.tanh(max(mu * sign * (s - t), 0.0)) for s, t in zip(student.tolist(), teacher.tolist())]
        k = 2 if direction == "under" else 1
        samples = ops.discrepancy_sample(
            student.to(device).expand(N_DRAWS, -1).contiguous(),
            teacher.to(device).expand(N_DRAWS, -1).contiguous(),
            k, mu=mu, direction=direction, generator=torch.Generator(device).manual_seed(8),
        ).cpu()
        if direction == "over":  # only column 4 (student 2 < teacher 4) is over-estimated
            assert torch.equal(samples, torch.full((N_DRAWS, 1), 4))
        else:
            assert_subset_distribution(samples, weights, k)


@pytest.mark.parametrize("k", [3, 2])  # CPU: with 9 > 4 k positive columns, k = 2 takes the pivot's path
def test_discrepancy_distribution_many_columns(device, k):
    mu = 0.02
    student = torch.tensor([5, 90, 3, 40, 60, 7, 100, 20, 35, 1, 44, 70])
    teacher = torch.arange(12)
    weights = [math.tanh(max(mu * (s - t), 0.0)) for s, t in zip(student.tolist(), teacher.tolist())]
    samples = ops.discrepancy_sample(
        student.to(device).expand(N_DRAWS, -1).contiguous(), teacher.to(device).expand(N_DRAWS, -1).contiguous(),
        k, mu=mu, direction="under", generator=torch.Generator(device).manual_seed(21),
    ).cpu()
    assert_subset_distribution(samples, weights, k)


def test_discrepancy_tiny_mu(device):
    # mu = 1e-320 (a subnormal): the weights tanh(mu * gap) = mu * gap are
    # subnormal multiples of mu, whose keys overflowed unscaled.
    mu = 1e-320
    gaps = [0, 3, 1, 6, 0, 2]
    student = torch.tensor(gaps, device=device).expand(N_DRAWS, -1).contiguous()
    samples = ops.discrepancy_sample(student, torch.zeros_like(student), 2, mu=mu, direction="under",
                                     generator=torch.Generator(device).manual_seed(17)).cpu()
    assert_subset_distribution(samples, [mu * g for g in gaps], 2)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float32, torch.float64])
def test_discrepancy_selects_only_the_right_direction(device, dtype):
    gen = torch.Generator().manual_seed(1)
    student = torch.randint(0, 1000, (64, 50), generator=gen)
    teacher = torch.randint(0, 1000, (64, 50), generator=gen)
    for direction in ("under", "over"):
        out = ops.discrepancy_sample(student.to(device, dtype), teacher.to(device, dtype), 20, mu=1e-3,
                                     direction=direction).cpu()
        gap = student - teacher if direction == "under" else teacher - student
        positive = (gap > 0).sum(1)
        assert torch.equal((out >= 0).sum(1), positive.clamp(max=20))
        picked = out.clamp(min=0)
        assert bool((gap.gather(1, picked) > 0)[out >= 0].all())


def test_discrepancy_teacher_rows_broadcast(device):
    """A teacher rank row broadcast to every row (DCD's 0..C-1, read in place)
    draws what its contiguous copy draws."""
    student = torch.randint(0, 4000, (37, 300), device=device, generator=torch.Generator(device).manual_seed(2))
    teacher = torch.arange(300, device=device).expand(37, -1)
    assert teacher.stride(0) == 0
    for direction in ("under", "over"):
        draw = lambda t: ops.discrepancy_sample(student, t, 25, mu=1e-3, direction=direction,  # noqa: E731
                                                generator=torch.Generator(device).manual_seed(6))
        assert torch.equal(draw(teacher), draw(teacher.contiguous()))


# --- the CPU keys, against a brute-force Philox stream ------------------------

_MASK32 = 0xFFFFFFFF


def _philox_uniforms(seed, rows, cols, first_row=0):
    """philox.h's uniforms of every cell, in numpy: Philox4x32-10 at the
    counter (column pair, row, 0, 0) under the key seed; the even column of a
    pair takes words 0-1, the odd one words 2-3, each as (52-bit m + 0.5) 2^-52."""
    u64 = np.uint64
    row = np.arange(first_row, first_row + rows, dtype=u64)[:, None] + np.zeros((1, cols), dtype=u64)
    pair = (np.arange(cols, dtype=u64) >> u64(1))[None, :] + np.zeros((rows, 1), dtype=u64)
    c = [pair, row, np.zeros_like(row), np.zeros_like(row)]
    key0, key1 = u64(seed & _MASK32), u64(seed >> 32)
    for _ in range(10):
        p0, p1 = u64(0xD2511F53) * c[0], u64(0xCD9E8D57) * c[2]
        c = [((p1 >> u64(32)) ^ c[1] ^ key0) & u64(_MASK32), p1 & u64(_MASK32),
             ((p0 >> u64(32)) ^ c[3] ^ key1) & u64(_MASK32), p0 & u64(_MASK32)]
        key0, key1 = (key0 + u64(0x9E3779B9)) & u64(_MASK32), (key1 + u64(0xBB67AE85)) & u64(_MASK32)
    even = np.arange(cols) % 2 == 0
    high, low = np.where(even, c[0], c[2]), np.where(even, c[1], c[3])
    return (((high << u64(20)) | (low >> u64(12))).astype(np.float64) + 0.5) * 2.0 ** -52


def _op_seed(torch_seed):
    """The 64-bit seed the CPU ops draw from torch.Generator().manual_seed(s):
    two words of its mt19937, the first one high (numpy's legacy generator is
    the same mt19937, seeded alike)."""
    high, low = (int(w) for w in np.random.RandomState(torch_seed).randint(0, 2**32, size=2, dtype=np.uint64))
    return (high << 32) | low


def _tanh_weights(x):
    """sampling.h's tanh(max(x, 0)), as the op computes it."""
    with np.errstate(over="ignore"):
        w = np.where(x < 1e-4, x * (1.0 - x * x / 3.0), 1.0 - 2.0 / (np.exp(2.0 * x) + 1.0))
    return np.where(x > 0, np.where(x >= 20.0, 1.0, w), 0.0)


def _largest_keys(weights, k, seed, first_row):
    """Per row, the sorted columns of the k largest keys log(u) / w (w > 0;
    ties by column), -1 padded: successive sampling by its definition."""
    keys = np.full(weights.shape, -np.inf)
    positive = weights > 0
    keys[positive] = np.log(_philox_uniforms(seed, *weights.shape, first_row)[positive]) / weights[positive]
    order = np.argsort(-keys, axis=1, kind="stable")[:, :k]
    order = np.where(np.take_along_axis(positive, order, 1), order, weights.shape[1])
    return np.where(np.sort(order, axis=1) == weights.shape[1], -1, np.sort(order, axis=1))


KEY_CASES = [  # (what, rows, columns, k): pivot path (integer ranks, many positive columns), full path, sparse rows
    ("ranks_int64", 40, 500, 40), ("ranks_int32", 30, 3000, 7), ("ranks_int64", 50, 64, 1),
    ("ranks_int64_over", 40, 500, 40), ("ranks_float64", 40, 500, 40), ("weights_float32", 40, 500, 40),
    ("weights_float64", 30, 700, 12), ("weights_sparse", 60, 200, 5), ("ranks_int64", 20, 90, 90),
]


@pytest.mark.parametrize("what,rows,cols,k", KEY_CASES)
def test_cpu_draws_the_largest_philox_keys(what, rows, cols, k):
    """Every CPU draw is the k largest keys log(u) / w of philox.h's stream,
    computed here from its definition for every cell: the bounds that spare
    most cells their exact key never drop a column that belongs."""
    gen = torch.Generator().manual_seed(3)
    if what.startswith("ranks"):
        dtype = {"int64": torch.int64, "int32": torch.int32, "float64": torch.float64}[what.split("_")[1]]
        teacher = torch.arange(cols).expand(rows, -1)
        student = (teacher + torch.randn(rows, cols, generator=gen) * 3000).round().clamp_min(0)
        if dtype.is_floating_point:
            student = student + torch.rand(rows, cols, generator=gen)
        direction = "over" if what.endswith("over") else "under"
        gap = (student - teacher) if direction == "under" else (teacher - student)
        weights = _tanh_weights(1e-3 * gap.double().numpy())
        draw = lambda g: ops.discrepancy_sample(student.to(dtype), teacher.to(dtype), k, mu=1e-3,  # noqa: E731
                                                direction=direction, sorted=True, generator=g, first_row=5)
    else:
        w = torch.rand(rows, cols, generator=gen, dtype=torch.float64)
        if what == "weights_float64":
            w = torch.exp(torch.randn(rows, cols, generator=gen, dtype=torch.float64) * 30)  # scaled keys
        if what == "weights_sparse":
            w = w * (torch.rand(rows, cols, generator=gen) < 0.03)
        w = w.float() if what != "weights_float64" else w
        weights = w.double().numpy()
        draw = lambda g: ops.weighted_sample(w, k, sorted=True, generator=g, first_row=5)  # noqa: E731
    out = draw(torch.Generator().manual_seed(99))
    expected = _largest_keys(weights, k, _op_seed(99), first_row=5)
    assert np.array_equal(out.numpy(), expected)


@settings(max_examples=60, deadline=None, database=None)
@given(data=st.data())
def test_cpu_draws_the_largest_philox_keys_of_any_row(data):
    """The same on drawn rows: weights with zeros, repeats and magnitudes from
    1e-30 to 1e30 (float32 and float64), DCD's integer gaps of either sign
    with several mu, any k, so that both ways to the cut (the pivot's, with
    more than 4 k positive columns, and the full one) and rows with fewer
    positive columns than k all occur."""
    rows, cols = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 300))
    k = data.draw(st.integers(0, cols))
    seed, first_row = data.draw(st.integers(0, 2**31 - 1)), data.draw(st.integers(0, 1000))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    if data.draw(st.booleans()):
        pool = np.array([0.0, 0.0, 1e-30, 1e-3, 0.5, 1.0, 1.0, 7.0, 1e30])
        weights = rng.choice(pool, size=(rows, cols)) * rng.uniform(0.5, 2.0, size=(rows, cols))
        dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
        w = torch.from_numpy(weights).to(dtype)
        weights = w.double().numpy()
        out = ops.weighted_sample(w, k, sorted=True, generator=torch.Generator().manual_seed(seed),
                                  first_row=first_row)
    else:
        mu = data.draw(st.sampled_from([1e-4, 1e-3, 0.05, 3.0]))
        teacher = torch.arange(cols).expand(rows, -1)
        student = torch.from_numpy(rng.integers(0, 3 * cols + 50, size=(rows, cols)))
        direction = data.draw(st.sampled_from(["under", "over"]))
        gap = (student - teacher) if direction == "under" else (teacher - student)
        weights = _tanh_weights(mu * gap.double().numpy())
        out = ops.discrepancy_sample(student, teacher, k, mu=mu, direction=direction, sorted=True,
                                     generator=torch.Generator().manual_seed(seed), first_row=first_row)
    assert np.array_equal(out.numpy(), _largest_keys(weights, k, _op_seed(seed), first_row))


def test_discrepancy_errors(device):
    s = torch.zeros(2, 3, dtype=torch.long, device=device)
    with pytest.raises(ValueError, match="direction"):
        ops.discrepancy_sample(s, s, 1, mu=1e-3, direction="sideways")
    with pytest.raises(ValueError, match="mu must be positive"):
        ops.discrepancy_sample(s, s, 1, mu=0.0, direction="under")
    with pytest.raises(ValueError, match="same shape"):
        ops.discrepancy_sample(s, s[:, :2], 1, mu=1e-3, direction="under")
    with pytest.raises(TypeError, match="same dtype"):
        ops.discrepancy_sample(s, s.float(), 1, mu=1e-3, direction="under")
    with pytest.raises(ValueError, match="larger than the number of columns"):
        ops.discrepancy_sample(s, s, 4, mu=1e-3, direction="under")
    nan_rank = s.double()
    nan_rank[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite and non-negative"):
        ops.discrepancy_sample(nan_rank, s.double(), 1, mu=1e-3, direction="under")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: a generator of the other device")
def test_generator_of_another_device_is_refused():
    for weights_device, generator_device in (("cpu", "cuda"), ("cuda", "cpu")):
        w = torch.rand(3, 4, device=weights_device)
        gen = torch.Generator(generator_device).manual_seed(0)
        with pytest.raises(ValueError, match="generator is on"):
            ops.weighted_sample(w, 2, generator=gen)
        ranks = torch.zeros(3, 4, dtype=torch.long, device=weights_device)
        with pytest.raises(ValueError, match="generator is on"):
            ops.discrepancy_sample(ranks, ranks, 1, mu=1e-3, direction="under", generator=gen)
