"""The ops as PyTorch custom ops: opcheck (schema, fake kernels, autograd
registration, AOT dispatch) and torch.compile(fullgraph=True)."""

import torch

from rankdistill import ops


def opcheck(op, args):
    torch.library.opcheck(op, args)


def test_visible_under_torch_ops():
    for name in ("rank_positions", "dot_rank_positions", "dot_top_columns", "dot_lists", "dot_lists_backward",
                 "weighted_sample", "discrepancy_sample", "relaxed_listmle", "relaxed_listmle_backward"):
        assert hasattr(torch.ops.rankdistill, name)


def test_opcheck_rank_positions(device):
    scores = torch.randn(6, 30, device=device)
    targets = torch.randint(0, 30, (6, 5), device=device)
    indptr = torch.tensor([0, 2, 2, 3, 5, 5, 6], device=device)
    indices = torch.tensor([1, 4, 0, 7, 7, 29], device=device)
    opcheck(torch.ops.rankdistill.rank_positions, (scores, targets, indptr, indices))
    opcheck(torch.ops.rankdistill.rank_positions, (scores, None, None, None))
    opcheck(torch.ops.rankdistill.rank_positions, (scores.T, None, None, None))


def test_opcheck_dot_rank_positions(device):
    rows, cols = torch.randn(6, 4, device=device), torch.randn(30, 4, device=device)
    targets = torch.randint(0, 30, (6, 5), device=device)
    indptr = torch.tensor([0, 2, 2, 3, 5, 5, 6], device=device)
    indices = torch.tensor([1, 4, 0, 7, 7, 29], device=device)
    opcheck(torch.ops.rankdistill.dot_rank_positions, (rows, cols, targets, indptr, indices))
    opcheck(torch.ops.rankdistill.dot_rank_positions, (rows.double(), cols.double(), targets, None, None))


def test_opcheck_dot_top_columns(device):
    rows, cols = torch.randn(6, 4, device=device), torch.randn(30, 4, device=device)
    indptr = torch.tensor([0, 2, 2, 3, 5, 5, 6], device=device)
    indices = torch.tensor([1, 4, 0, 7, 7, 29], device=device)
    opcheck(torch.ops.rankdistill.dot_top_columns, (rows, cols, 7, indptr, indices))
    opcheck(torch.ops.rankdistill.dot_top_columns, (rows.double(), cols.double(), 40, None, None))


def test_opcheck_dot_lists(device):
    row_table = torch.randn(6, 5, device=device, dtype=torch.float64, requires_grad=True)
    col_table = torch.randn(9, 5, device=device, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([0, 5, 5, 2], device=device)
    cols = torch.randint(0, 9, (4, 7), device=device)
    opcheck(torch.ops.rankdistill.dot_lists, (row_table, rows, col_table, cols))
    opcheck(torch.ops.rankdistill.dot_lists, (row_table.detach().float(), rows, col_table.detach().float(), cols))
    grad = torch.randn(4, 7, device=device, dtype=torch.float64)
    opcheck(torch.ops.rankdistill.dot_lists_backward, (grad, row_table.detach(), rows, col_table.detach(), cols))


def test_opcheck_samplers(device):
    # Rows with at most k positive weights make the output deterministic, which
    # opcheck needs to compare eager and compiled runs.
    weights = torch.zeros(4, 9, device=device)
    weights[:, 2] = 1.0
    weights[1:, 5] = 3.0
    opcheck(torch.ops.rankdistill.weighted_sample, (weights, 3, True, None))
    opcheck(torch.ops.rankdistill.weighted_sample, (weights, 3, True, None, 7))  # first_row
    student = torch.arange(9, device=device).repeat(4, 1)
    teacher = torch.zeros(4, 9, dtype=torch.long, device=device)
    teacher[:, :7] = 100
    opcheck(torch.ops.rankdistill.discrepancy_sample, (student, teacher, 2, 1e-3, True, True, None))


def test_opcheck_relaxed_listmle(device):
    ranked = torch.randn(5, 7, device=device, dtype=torch.float64, requires_grad=True)
    tail = torch.randn(5, 3, device=device, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(5, 7, device=device) < 0.8
    opcheck(torch.ops.rankdistill.relaxed_listmle, (ranked, tail, mask, None))
    opcheck(torch.ops.rankdistill.relaxed_listmle, (ranked, tail, None, None))
    grad = torch.randn(5, device=device, dtype=torch.float64)
    _, denominators = torch.ops.rankdistill.relaxed_listmle(ranked.detach(), tail.detach(), mask, None)
    opcheck(torch.ops.rankdistill.relaxed_listmle_backward,
            (grad, ranked.detach(), tail.detach(), mask, None, denominators))


def distill_step(scores, targets, ranked, tail, weights):
    ranks = ops.rank_positions(scores, targets)
    picked = ops.weighted_sample(weights, 2)
    loss = ops.relaxed_listmle(ranked, tail)
    return ranks, picked, loss


def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    scores = torch.randn(4, 50, device=device)
    targets = torch.randint(0, 50, (4, 6), device=device)
    ranked = torch.randn(4, 5, device=device, requires_grad=True)
    tail = torch.randn(4, 3, device=device)
    weights = torch.zeros(4, 10, device=device)
    weights[:, [3, 8]] = 1.0  # deterministic draw: both positive columns
    compiled = torch.compile(distill_step, fullgraph=True)
    ranks, picked, loss = compiled(scores, targets, ranked, tail, weights)
    eager = distill_step(scores, targets, ranked, tail, weights)
    assert torch.equal(ranks, eager[0])
    assert torch.equal(picked, eager[1])
    torch.testing.assert_close(loss, eager[2])
    (grad,) = torch.autograd.grad(loss, ranked)
    (eager_grad,) = torch.autograd.grad(eager[2], ranked)
    torch.testing.assert_close(grad, eager_grad)
