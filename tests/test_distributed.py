"""Sampling, FID and likelihoods shared among the ranks of a torchrun job (gloo on the CPU)
against one process: the sample file bit for bit, the scores equal, each likelihood within the
solver's tolerance; a whole job killed and started again; two nodes meeting at a rendezvous."""

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from problems import folder_with_a_run, free_port, invoke, run_states, torchrun
from scoresde import VPSDE, GaussianMixture
from scoresde.likelihood import RowsOf, bits_per_dim, log_likelihood

pytestmark = pytest.mark.slow  # torchrun: two processes that import torch, each time


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    with folder_with_a_run(tmp_path_factory.mktemp("ranks"), "--steps", 20, "--batch-size", 32,
                           "--width", 16, "--run", "toy") as path:
        result = invoke("train", "--data", "digits", "--steps", 10, "--batch-size", 16,
                        "--run", "dg", "--quiet")
        assert result.exit_code == 0, result.output
        yield path


def _json(result) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize("solver", ["em", "ode"])
def test_two_ranks_write_the_one_process_file(in_workdir, solver):
    """ode: each chunk's adaptive solve takes its own number of steps, on either rank."""
    args = ["sample", "--run", "toy", "--solver", solver, "--steps", 8, "--n", 250,
            "--batch-size", 40, "--json"]
    one = invoke(*args, "--out", f"one-{solver}.npz")
    assert one.exit_code == 0, one.output
    two = torchrun(*args, "--out", f"two-{solver}.npz", cwd=in_workdir)
    record = _json(two)  # one JSON object: rank 0 alone speaks
    assert record["chunks"] == 7 and record["nfe"] == json.loads(one.stdout)["nfe"]
    assert (in_workdir / f"one-{solver}.npz").read_bytes() == \
        (in_workdir / f"two-{solver}.npz").read_bytes()
    assert not (in_workdir / f"two-{solver}.npz.parts").exists()


def test_two_ranks_give_the_one_process_scores(in_workdir):
    args = ["fid", "--run", "dg", "--n", 300, "--batch-size", 70, "--json"]
    one = invoke(*args)
    assert one.exit_code == 0, one.output
    one, two = json.loads(one.stdout), _json(torchrun(*args, cwd=in_workdir))
    for key in ("fid", "kid", "kid_se", "precision", "recall", "nfe", "n"):
        assert one[key] == two[key], key


@pytest.mark.parametrize("run, args", [("toy", []), ("dg", ["--divergence", "hutchinson"])])
def test_two_ranks_give_the_one_process_likelihood(in_workdir, run, args):
    """The mean over the same points, each within the solver's tolerance: rtol = atol = 1e-5 on
    each point's state, which moves a log-likelihood by about 2e-5 of itself (measured: 1e-6 of
    -4 nats, 2e-5 of -70); 2e-4 of it is far above that and far below the standard error (0.4%
    and 1% of the mean)."""
    args = ["likelihood", "--run", run, "--n", 41, *args, "--json"]
    one = invoke(*args)
    assert one.exit_code == 0, one.output
    one, two = json.loads(one.stdout), _json(torchrun(*args, cwd=in_workdir))
    assert one["n"] == two["n"] == 41
    close = 2e-4 * abs(one["log_likelihood"])
    assert abs(one["log_likelihood"] - two["log_likelihood"]) < close
    assert abs(one["standard_error"] - two["standard_error"]) < close


def test_a_share_of_a_batch_gets_the_whole_batchs_probes_and_noise():
    """RowsOf: a block of the points gets the probes (and dequantisation noise) that the whole
    batch gives those points, so each value equals the whole batch's within the tolerance; the
    block drawn on its own would get other probes and miss by far more."""
    mix = GaussianMixture.grid()
    sde = VPSDE()
    score = mix.score_fn(sde)
    x = mix.sample(6, generator=torch.Generator().manual_seed(0)).double()
    options = dict(divergence="hutchinson", hutchinson="gaussian", probes=1, rtol=1e-7,
                   atol=1e-7)
    whole, _ = log_likelihood(score, sde, x, generator=torch.Generator().manual_seed(3), **options)
    rows = torch.tensor([3, 4, 5])
    share, _ = log_likelihood(score, sde, x[rows], **options,
                              generator=RowsOf(torch.Generator().manual_seed(3), 6, rows))
    alone, _ = log_likelihood(score, sde, x[rows], generator=torch.Generator().manual_seed(3),
                              **options)
    assert (share - whole[rows]).abs().max() < 1e-4
    assert (alone - whole[rows]).abs().max() > 1e-2
    levels = torch.randint(0, 256, (5, 1, 2, 2), generator=torch.Generator().manual_seed(1))
    image_score = GaussianMixture.random(4).score_fn(sde)

    def flat(x, t):
        return image_score(x.reshape(len(x), 4), t).reshape(x.shape)

    bits = dict(bits=8, data_range=(-3.0, 3.0), dequant_samples=2, dtype=torch.float64, **options)
    whole, _ = bits_per_dim(flat, sde, levels, generator=torch.Generator().manual_seed(5), **bits)
    rows = torch.tensor([1, 2])
    share, _ = bits_per_dim(flat, sde, levels[rows], **bits,
                            generator=RowsOf(torch.Generator().manual_seed(5), 5, rows))
    torch.testing.assert_close(share, whole[rows], rtol=1e-5, atol=0)  # bits/dim: ~10


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rpartition(")")[2].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop())
        todo.extend(children.get(out[-1], []))
    return out


def test_a_job_killed_whole_and_started_again_writes_the_same_file(in_workdir):
    args = ["sample", "--run", "toy", "--solver", "em", "--steps", 300, "--n", 3000,
            "--batch-size", 100]
    assert invoke(*args, "--out", "straight.npz").exit_code == 0
    parts = in_workdir / "killed.npz.parts"
    job = torchrun(*args, "--out", "killed.npz", cwd=in_workdir, popen=True)
    deadline = time.monotonic() + 120
    while len(list(parts.glob("chunk-*.npz"))) < 4 and job.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in _tree(job.pid):  # the launcher and both ranks (in sessions of their own)
        os.kill(pid, signal.SIGKILL)
    _, stderr = job.communicate()
    drawn = len(list(parts.glob("chunk-*.npz")))
    assert 4 <= drawn < 30 and not (in_workdir / "killed.npz").exists(), stderr[-3000:]
    again = _json(torchrun(*args, "--out", "killed.npz", "--json", cwd=in_workdir))
    assert again["chunks_reused"] >= drawn
    assert (in_workdir / "killed.npz").read_bytes() == (in_workdir / "straight.npz").read_bytes()


def test_two_nodes_meet_at_a_rendezvous_to_train_and_sample(in_workdir):
    """Two launchers of one process each, as two machines would start them, on 127.0.0.1."""
    endpoint = f"127.0.0.1:{free_port()}"

    def both(*args):
        results = [None, None]

        def launch(i):
            results[i] = torchrun(*args, procs=1, nodes=2, endpoint=endpoint, cwd=in_workdir)

        threads = [threading.Thread(target=launch, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in results:
            assert r.returncode == 0, r.stderr[-3000:]
        return results

    both("train", "--run", "nodes", "--steps", 4, "--batch-size", 16, "--width", 16, "--quiet")
    one = invoke("train", "--run", "single", "--steps", 4, "--batch-size", 16, "--width", 16,
                 "--quiet")
    assert one.exit_code == 0, one.output
    a, b = run_states(in_workdir / "nodes"), run_states(in_workdir / "single")
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-6), k
    out = both("sample", "--run", "nodes", "--solver", "em", "--steps", 5, "--n", 90,
               "--batch-size", 20, "--out", "nodes.npz", "--json")
    assert sum(bool(r.stdout.strip()) for r in out) == 1  # rank 0's launcher alone speaks
    with np.load(in_workdir / "nodes.npz") as f:
        assert f["samples"].shape == (90, 2) and np.isfinite(f["samples"]).all()
