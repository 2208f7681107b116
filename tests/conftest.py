import pytest
import torch

# Every op test runs on each device; CUDA cases are skipped only where no GPU exists.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


# The distillation tests' teacher and its top-30 lists, on each module's own `split` fixture.
@pytest.fixture(scope="module")
def teacher(split):
    from distill_setup import trained_teacher
    return trained_teacher(split)


@pytest.fixture(scope="module")
def rankings(teacher, split):
    from distill_setup import TOP
    from rankdistill.methods import compute_rankings
    return compute_rankings(teacher, split, TOP)
