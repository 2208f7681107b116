"""rank_positions against a brute-force count of the definition and against
the sort-based reference."""

import pytest
import torch

from rankdistill import ops, reference

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def brute_force_ranks(scores, targets, excluded_per_row):
    """rank = #{i not excluded: s_i > s_t} + #{i not excluded, i < t: s_i == s_t}."""
    s = scores.double().tolist()
    out = []
    for b, row_targets in enumerate(targets.tolist()):
        excluded = excluded_per_row[b]
        row = s[b]
        out.append(
            [
                sum(1 for i, v in enumerate(row) if i not in excluded and (v > row[t] or (v == row[t] and i < t)))
                for t in row_targets
            ]
        )
    return torch.tensor(out, dtype=torch.long).reshape(targets.shape)


def random_exclude(num_rows, num_cols, max_per_row, generator, device="cpu"):
    """A CSR exclusion list with empty rows and repeated columns."""
    counts = torch.randint(0, max_per_row + 1, (num_rows,), generator=generator)
    counts[::3] = 0  # some empty rows
    indices = torch.randint(0, num_cols, (int(counts.sum()),), generator=generator)
    indptr = torch.zeros(num_rows + 1, dtype=torch.long)
    indptr[1:] = counts.cumsum(0)
    sets = [set(indices[indptr[b] : indptr[b + 1]].tolist()) for b in range(num_rows)]
    return (indptr.to(device), indices.to(device)), sets


@pytest.mark.parametrize("num_targets", [1, 3, 12, 40])  # both the counting and the sorting path
@pytest.mark.parametrize("with_exclude", [False, True])
def test_matches_definition_with_ties(device, num_targets, with_exclude):
    gen = torch.Generator().manual_seed(num_targets)
    num_rows, num_cols = 9, 20
    # Few distinct values: many ties, broken by column index.
    scores = torch.randint(-3, 4, (num_rows, num_cols), generator=gen).float()
    scores[0] = 0.0
    scores[1, ::2] = -0.0  # -0.0 ties with +0.0
    targets = torch.randint(0, num_cols, (num_rows, num_targets), generator=gen)
    targets[:, 0] = targets[:, -1]  # duplicate targets
    if with_exclude:
        exclude, sets = random_exclude(num_rows, num_cols, 8, gen)
        # excluded targets still get the position they would take
        targets[2, 0] = exclude[1][exclude[0][2]] if exclude[0][3] > exclude[0][2] else 0
    else:
        exclude, sets = None, [set()] * num_rows
    expected = brute_force_ranks(scores, targets, sets)
    moved = None if exclude is None else tuple(t.to(device) for t in exclude)
    got = ops.rank_positions(scores.to(device), targets.to(device), exclude=moved)
    assert got.dtype == torch.long and got.device.type == device.type
    assert torch.equal(got.cpu(), expected)
    assert torch.equal(reference.rank_positions(scores, targets, exclude=exclude), expected)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    "num_rows,num_cols,num_targets",
    [(1, 1, 1), (7, 5, 0), (33, 100, 4), (5, 1000, 50), (4, 300, 300), (3, 50, 200), (64, 257, 1)],
)
def test_matches_reference(device, dtype, num_rows, num_cols, num_targets):
    gen = torch.Generator().manual_seed(num_rows * 1000 + num_cols)
    scores = torch.randn(num_rows, num_cols, generator=gen).to(dtype)  # half precision creates ties
    targets = torch.randint(0, num_cols, (num_rows, num_targets), generator=gen)
    exclude, _ = random_exclude(num_rows, num_cols, max(1, num_cols // 4), gen)
    expected = reference.rank_positions(scores, targets, exclude=exclude)
    got = ops.rank_positions(scores.to(device), targets.to(device), exclude=tuple(t.to(device) for t in exclude))
    assert torch.equal(got.cpu(), expected)
    assert torch.equal(ops.rank_positions(scores.to(device), targets.to(device)).cpu(),
                       reference.rank_positions(scores, targets))


@pytest.mark.parametrize("with_exclude", [False, True])
def test_all_columns(device, with_exclude):
    gen = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 5, (11, 40), generator=gen).float()
    exclude, sets = random_exclude(11, 40, 10, gen) if with_exclude else (None, [set()] * 11)
    all_cols = torch.arange(40).expand(11, 40)
    expected = brute_force_ranks(scores, all_cols, sets)
    moved = None if exclude is None else tuple(t.to(device) for t in exclude)
    got = ops.rank_positions(scores.to(device), exclude=moved)
    assert got.shape == (11, 40)
    assert torch.equal(got.cpu(), expected)
    # without exclusions every row is a permutation of 0..N-1
    if not with_exclude:
        assert torch.equal(got.sort(1).values.cpu(), all_cols)


def test_many_targets_per_row(device):
    # More targets than one CUDA tile handles many times over (> 8 x 1024):
    # both backends sort the row instead of counting; ties and exclusions too.
    gen = torch.Generator().manual_seed(9)
    scores = torch.randint(-40, 40, (3, 12_000), generator=gen).float()
    targets = torch.randint(0, 12_000, (3, 9_000), generator=gen)
    exclude, _ = random_exclude(3, 12_000, 3_000, gen)
    expected = reference.rank_positions(scores, targets, exclude=exclude)
    got = ops.rank_positions(scores.to(device), targets.to(device), exclude=tuple(t.to(device) for t in exclude))
    assert torch.equal(got.cpu(), expected)


@pytest.mark.parametrize("targets_kind", ["random", "top", "bottom", "clustered"])
def test_counting_with_many_buckets(device, targets_kind):
    # Counting path with thousands of buckets (the CPU kernel lays about
    # sqrt(2 x scores in range x targets) of them): scores rounded to create
    # ties within and across buckets, repeated and excluded targets, targets
    # the row ranks first (a trained model: few scores in their range), last,
    # or anywhere, or half of them on one score (one bucket far fuller than
    # the others: the CPU's search takes the same steps in every bucket of a
    # row); one row of equal scores (one bucket).
    gen = torch.Generator().manual_seed(21)
    num_rows, num_cols, num_targets = 6, 20_000, 400
    scores = (torch.randn(num_rows, num_cols, generator=gen) * 1000).round() / 1000
    scores[3] = 0.5
    if targets_kind in ("random", "clustered"):
        targets = torch.randint(0, num_cols, (num_rows, num_targets), generator=gen)
        if targets_kind == "clustered":
            scores.scatter_(1, targets[:, : num_targets // 2], 0.25)
    else:
        targets = scores.topk(num_targets, dim=1, largest=targets_kind == "top").indices
    targets[:, 1] = targets[:, 0]
    exclude, _ = random_exclude(num_rows, num_cols, 500, gen)
    exclude[1][: len(exclude[1]) // 4] = targets[0, 0]  # an excluded target (in row 0 or others)
    expected = reference.rank_positions(scores, targets, exclude=exclude)
    got = ops.rank_positions(scores.to(device), targets.to(device), exclude=tuple(t.to(device) for t in exclude))
    assert torch.equal(got.cpu(), expected)


@pytest.mark.parametrize("num_cols", [1023, 1024, 3001])  # the CPU sorts rows from 1024 columns by digits
def test_all_columns_with_every_kind_of_score(device, num_cols):
    """Whole rows ranked by sorting: ties, an all-equal row (every digit
    pass skipped), signed zeros, subnormals, infinities and float32's
    extremes, with exclusions, against the reference."""
    gen = torch.Generator().manual_seed(num_cols)
    scores = torch.randint(0, 7, (6, num_cols), generator=gen).float() - 3.0
    scores[1] = 2.5
    special = torch.tensor([0.0, -0.0, 2.0**-149, -(2.0**-149), float("inf"), -float("inf"),
                            torch.finfo(torch.float32).max, -torch.finfo(torch.float32).max, 1e-38, -1e-38])
    scores[2] = special[torch.randint(0, len(special), (num_cols,), generator=gen)]
    scores[3] = torch.randn(num_cols, generator=gen) * 1e30
    scores[4] = torch.randn(num_cols, generator=gen)
    scores[5] = -scores[4]
    exclude, _ = random_exclude(6, num_cols, 30, gen)
    expected = reference.rank_positions(scores, exclude=exclude)
    got = ops.rank_positions(scores.to(device), exclude=tuple(t.to(device) for t in exclude))
    assert torch.equal(got.cpu(), expected)
    assert torch.equal(ops.rank_positions(scores.to(device)).sort(1).values.cpu(),
                       torch.arange(num_cols).expand(6, -1))


def test_all_columns_of_a_large_catalogue(device):
    # 18 rows x 2^20 columns: more than one row block of the CUDA sort path
    # (2^24 elements), with exclusions on both sides of the block boundary.
    gen = torch.Generator().manual_seed(10)
    num_rows, num_cols = 18, 1 << 20
    scores = torch.randint(0, 1000, (num_rows, num_cols), generator=gen).float()
    exclude, _ = random_exclude(num_rows, num_cols, 50, gen)
    expected = reference.rank_positions(scores, exclude=exclude)
    got = ops.rank_positions(scores.to(device), exclude=tuple(t.to(device) for t in exclude))
    assert torch.equal(got.cpu(), expected)


def test_non_contiguous_scores_and_item_side(device):
    gen = torch.Generator().manual_seed(5)
    user_item = torch.randn(30, 70, generator=gen).to(device)
    item_side = user_item.T  # rank users for each item: a transposed view
    assert not item_side.is_contiguous()
    targets = torch.randint(0, 30, (70, 6), generator=gen).to(device)
    assert torch.equal(
        ops.rank_positions(item_side, targets).cpu(),
        reference.rank_positions(item_side.contiguous().cpu(), targets.cpu()),
    )
    strided = user_item[::2, ::3]
    t2 = torch.randint(0, strided.shape[1], (strided.shape[0], 4), generator=gen).to(device)
    assert torch.equal(ops.rank_positions(strided, t2[:, ::2]).cpu(),
                       reference.rank_positions(strided.cpu(), t2[:, ::2].cpu()))


def test_extreme_values(device):
    scores = torch.tensor(
        [[1e4, -1e4, float("inf"), float("-inf"), 0.0, -0.0, 1e4, float("-inf")]], device=device
    )
    targets = torch.arange(8, device=device).unsqueeze(0)
    expected = brute_force_ranks(scores.cpu(), targets.cpu(), [set()])
    assert torch.equal(ops.rank_positions(scores, targets).cpu(), expected)
    assert expected.tolist() == [[1, 5, 0, 6, 3, 4, 2, 7]]


def test_scores_spanning_many_magnitudes(device):
    # Scores from 1e-30 to 1e30 of both signs, clustered and repeated: the
    # counting path's bucket table must still place every score exactly.
    gen = torch.Generator().manual_seed(8)
    magnitude = 10.0 ** torch.randint(-30, 31, (6, 400), generator=gen).double()
    sign = torch.where(torch.rand(6, 400, generator=gen) < 0.5, -1.0, 1.0)
    scores = (sign * magnitude * torch.randint(1, 4, (6, 400), generator=gen)).float()
    for num_targets in (1, 7, 60):
        targets = torch.randint(0, 400, (6, num_targets), generator=gen)
        expected = brute_force_ranks(scores, targets, [set()] * 6)
        assert torch.equal(ops.rank_positions(scores.to(device), targets.to(device)).cpu(), expected)


def test_empty_shapes(device):
    assert ops.rank_positions(torch.zeros(0, 5, device=device), torch.zeros(0, 3, dtype=torch.long,
                              device=device)).shape == (0, 3)
    assert ops.rank_positions(torch.zeros(4, 5, device=device), torch.zeros(4, 0, dtype=torch.long,
                              device=device)).shape == (4, 0)
    assert ops.rank_positions(torch.zeros(2, 0, device=device)).shape == (2, 0)


def test_errors(device):
    scores = torch.randn(3, 6, device=device)
    targets = torch.zeros(3, 2, dtype=torch.long, device=device)
    nan_scores = scores.clone()
    nan_scores[1, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ops.rank_positions(nan_scores, targets)
    with pytest.raises(ValueError, match="NaN"):
        ops.rank_positions(nan_scores)
    with pytest.raises(ValueError, match="NaN"):  # even with no target to rank
        ops.rank_positions(nan_scores, targets[:, :0])
    with pytest.raises(IndexError, match="targets"):
        ops.rank_positions(scores, torch.full((3, 2), 6, device=device))
    with pytest.raises(IndexError, match="targets"):
        ops.rank_positions(scores, torch.full((3, 2), -1, device=device))
    with pytest.raises(TypeError, match="targets must be Long"):
        ops.rank_positions(scores, targets.int())
    with pytest.raises(TypeError, match="scores must be float"):
        ops.rank_positions(scores.long(), targets)
    with pytest.raises(ValueError, match="2-D"):
        ops.rank_positions(scores[0], targets)
    with pytest.raises(ValueError, match="one row per row"):
        ops.rank_positions(scores, targets[:2])
    indptr = torch.tensor([0, 1, 1, 2], device=device)
    indices = torch.tensor([0, 5], device=device)
    with pytest.raises(ValueError, match="B \\+ 1"):
        ops.rank_positions(scores, targets, exclude=(indptr[:3], indices))
    with pytest.raises(ValueError, match="non-decreasing"):
        ops.rank_positions(scores, targets, exclude=(torch.tensor([0, 2, 1, 2], device=device), indices))
    with pytest.raises(ValueError, match="end at nnz"):
        ops.rank_positions(scores, targets, exclude=(indptr, indices[:1]))
    with pytest.raises(IndexError, match="exclude indices"):
        ops.rank_positions(scores, targets, exclude=(indptr, torch.tensor([0, 6], device=device)))
    with pytest.raises(TypeError, match="pair"):
        ops.rank_positions(scores, targets, exclude=indptr)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="device mix needs a CUDA GPU")
def test_device_mix():
    with pytest.raises(ValueError, match="same device"):
        ops.rank_positions(torch.randn(2, 3, device="cuda"), torch.zeros(2, 1, dtype=torch.long))
