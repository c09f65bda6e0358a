import pytest
import torch

from scoresde import get_sde

SDE_NAMES = ["vp", "subvp", "ve", "cosine"]


@pytest.fixture(params=SDE_NAMES)
def sde(request):
    return get_sde(request.param)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests use small tensors, for which one thread is fastest; two fight over a loaded CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
