import pytest
import torch

from scoresde import get_sde

SDE_NAMES = ["vp", "subvp", "ve", "cosine"]


@pytest.fixture(params=SDE_NAMES)
def sde(request):
    return get_sde(request.param)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(2)
    yield
