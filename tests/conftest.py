import multiprocessing

import pytest
import torch

from scoresde import get_sde

SDE_NAMES = ["vp", "subvp", "ve", "cosine", "rf"]


@pytest.fixture(params=SDE_NAMES)
def sde(request):
    return get_sde(request.param)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with one tiny trained VP run under ./runs; a module that needs another run
    defines its own ``workdir``."""
    from problems import folder_with_a_run

    with folder_with_a_run(tmp_path_factory.mktemp("cli"), "--sde", "vp", "--steps", 5,
                           "--batch-size", 32) as path:
        yield path


@pytest.fixture
def in_workdir(workdir, monkeypatch):
    """Works in the folder of the requesting module's ``workdir`` fixture."""
    monkeypatch.chdir(workdir)
    return workdir


# Tests use small tensors, for which one intra-op thread is fastest: two threads spin waiting for
# each other on a loaded 2-core machine (measured 10 to 20 times slower on the sampler loops).
torch.set_num_threads(1)


def pytest_sessionfinish(session, exitstatus):
    """A child process left running (a DataLoader worker that ignores SIGTERM, say) would keep
    the interpreter waiting at exit, and the machine running the suite with it: such children
    are killed here and the run fails, naming them."""
    left = multiprocessing.active_children()
    for child in left:
        child.kill()
        child.join()
    if left:
        print(f"\nchild processes left running, now killed: {left}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
