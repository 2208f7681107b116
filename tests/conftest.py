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
