"""The CPU kernels' AVX2 paths (chosen at run time) and their baseline x86-64
twins give the same results bit for bit: the ops run in a subprocess with
RANKDISTILL_NO_AVX2=1 and in one without."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CASES = r'''
import sys
import torch
from rankdistill import ops

gen = torch.Generator().manual_seed(0)
out = {}
# rows of 3001 scores (not a multiple of 8) with ties, signed zeros and
# infinities; targets with repeats; exclusions
scores = (torch.randn(97, 3001, generator=gen) * 3).round() / 4
scores[:, :5] = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 0.25])
targets = torch.randint(0, 3001, (97, 40), generator=gen)
targets[:, 0] = targets[:, 1]
indptr = torch.arange(0, 97 * 7 + 1, 7)
indices = torch.randint(0, 3001, (97 * 7,), generator=gen)
out["rank_positions"] = ops.rank_positions(scores, targets, exclude=(indptr, indices))
out["rank_positions_float64"] = ops.rank_positions(scores.double(), targets)
rows, cols = torch.randn(61, 16, generator=gen), torch.randn(1003, 16, generator=gen)
out["dot_rank_positions"] = ops.dot_rank_positions(rows, cols, torch.randint(0, 1003, (61, 90), generator=gen))
student = torch.randint(0, 9000, (53, 533), generator=gen)
teacher = torch.arange(533).expand(53, -1)
for direction in ("under", "over"):
    for dtype in (torch.int64, torch.int32, torch.float64):
        out[f"discrepancy_{direction}_{dtype}"] = ops.discrepancy_sample(
            student.to(dtype), teacher.to(dtype), 41, mu=1e-3, direction=direction,
            generator=torch.Generator().manual_seed(1), first_row=3)
weights = torch.rand(53, 533, generator=gen) * (torch.rand(53, 533, generator=gen) < 0.3)
out["weighted_sample"] = ops.weighted_sample(weights, 17, sorted=False, generator=torch.Generator().manual_seed(2))
torch.save(out, sys.argv[1])
'''


def has_avx2():
    try:
        return "avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not has_avx2(), reason="this CPU has no AVX2: only the baseline path can run")
def test_avx2_and_baseline_paths_agree(tmp_path):
    results = {}
    for name, extra in (("avx2", {}), ("baseline", {"RANKDISTILL_NO_AVX2": "1"})):
        env = {key: value for key, value in os.environ.items() if key != "RANKDISTILL_NO_AVX2"}
        env.update(extra)
        path = tmp_path / f"{name}.pt"
        subprocess.run([sys.executable, "-c", CASES, str(path)], env=env, check=True, timeout=300)
        results[name] = torch.load(path)
    assert results["avx2"].keys() == results["baseline"].keys()
    for key, value in results["avx2"].items():
        assert torch.equal(value, results["baseline"][key]), key
