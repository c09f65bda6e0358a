import pytest
import torch

from scoresde import get_sde

SDE_NAMES = ["vp", "subvp", "ve", "cosine"]


@pytest.fixture(params=SDE_NAMES)
def sde(request):
    return get_sde(request.param)


@pytest.fixture
def in_workdir(workdir, monkeypatch):
    """Works in the folder of the requesting module's own ``workdir`` fixture."""
    monkeypatch.chdir(workdir)
    return workdir


# Tests use small tensors, for which one intra-op thread is fastest: two threads spin waiting for
# each other on a loaded 2-core machine (measured 10 to 20 times slower on the sampler loops).
torch.set_num_threads(1)
