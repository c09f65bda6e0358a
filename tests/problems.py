"""Shared test problems and helpers: a closed-form SDE, reference draws, tiny runs, the CLI.

Test modules import from here (``from problems import ...``): pytest puts this folder on
``sys.path`` because it holds test modules without an ``__init__.py``.
"""

import json
import math
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from click.testing import CliRunner

import scoresde
from scoresde.sampling.distances import energy_distance

ROOT = Path(__file__).resolve().parents[1]

# The smallest training run the plumbing tests need: a few steps of a 16-wide MLP on a toy.
TINY = dict(data="8gaussians", net_params={"hidden": 16, "depth": 1}, batch_size=32,
            progress=False, log_every=1)


class OrnsteinUhlenbeck(scoresde.SDE):
    """A user's own SDE with closed forms: dx = -theta x dt + sigma dw.

    The default sigma = sqrt(2 theta) makes N(0, I) the stationary law (a VP-type process).
    """

    def __init__(self, theta=5.0, sigma=None):
        super().__init__(T=1.0)
        self.theta = theta
        self.sigma = math.sqrt(2 * theta) if sigma is None else sigma

    def drift_coeff(self, t):
        return torch.full_like(t, -self.theta)

    def diffusion_coeff(self, t):
        return torch.full_like(t, self.sigma)

    def marginal_coeffs(self, t):
        m = torch.exp(-self.theta * t)
        return m, self.sigma * torch.sqrt(-torch.expm1(-2 * self.theta * t) / (2 * self.theta))


def reference(mix, n, seed=2024):
    """A mixture, a fixed reference draw of n points, and the 'indistinguishable' threshold.

    The threshold is mean + 4 sd of 20 true-vs-true energy distances at the same sizes. The
    statistic's null law is right-skewed (a weighted sum of chi-squares); in 100 true-vs-true
    draws at these sizes its largest value sat at mean + 4 sd, so a correct sampler fails about
    1% of the time at most, while the biases we check for (too few steps) land far above.
    """
    gen = torch.Generator().manual_seed(seed)
    ref = mix.sample(n, generator=gen)
    null = torch.tensor([energy_distance(mix.sample(n, generator=gen), ref) for _ in range(20)])
    return mix, ref, float(null.mean() + 4 * null.std())


def labelled_points(n=64, dim=3, k=4, seed=0):
    """``(x, t, y)``: ``n`` float64 points of spread 3, times in ``[0.02, 0.97]`` and labels in
    ``[0, k)``, from one seed: where a guided score is compared with an exact one."""
    gen = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(n, dim, generator=gen, dtype=torch.float64)
    t = 0.02 + 0.95 * torch.rand(n, generator=gen, dtype=torch.float64)
    return x, t, torch.randint(0, k, (n,), generator=gen)


def assert_matches(x, target):
    """x is finite and its energy distance to the reference draw of target is below the noise."""
    _, ref, threshold = target
    assert torch.isfinite(x).all()
    stat = energy_distance(x, ref)
    assert stat < threshold, f"energy distance {stat:.2e} above the noise level {threshold:.2e}"


class Interrupt(Exception):
    """Raised by the callback of stop_at: a training run cut short, as by a crash."""


def stop_at(step):
    """A train() callback that raises Interrupt once the given step is done."""

    def callback(done, record):
        if done == step:
            raise Interrupt(step)

    return callback


def invoke(*args):
    """Runs ``scoresde ARGS`` in-process through click's CliRunner; arguments may be paths."""
    from scoresde.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@contextmanager
def folder_with_a_run(path, *train_args):
    """Works in path, where ``scoresde train --quiet TRAIN_ARGS`` has written one run."""
    old = os.getcwd()
    os.chdir(path)
    try:
        result = invoke("train", *train_args, "--quiet")
        assert result.exit_code == 0, result.output
        yield path
    finally:
        os.chdir(old)


def run_python(*args, timeout=120, cwd=None, **env):
    """Runs ``python ARGS`` as a real process that imports this checkout's scoresde.

    Keyword arguments are extra environment variables. Returns the CompletedProcess.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                               "")]),
               OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a torchrun rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args, procs=2, nodes=1, endpoint=None, timeout=300, cwd=None, popen=False):
    """``torchrun`` with ``procs`` gloo processes running ``python -m scoresde -- ARGS``; with
    ``nodes`` > 1, one launcher of a job of that many nodes meeting at ``endpoint`` (a c10d
    rendezvous, ``127.0.0.1:PORT``). A CompletedProcess, or with ``popen`` the running Popen
    (in a session of its own, so that its whole job can be killed)."""
    where = ([f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}"]
             if nodes > 1 else ["--nnodes=1", "--master_addr=127.0.0.1",
                                f"--master_port={free_port()}"])
    command = ["-m", "torch.distributed.run", *where, f"--nproc_per_node={procs}", "-m",
               "scoresde", "--", *args]
    if not popen:
        return run_python(*command, timeout=timeout, cwd=cwd)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                               "")]),
               OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, *map(str, command)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def assert_refused(result, code, *facts, besides=()):
    """A command refused cleanly: exit status ``code`` and one line on stderr naming ``facts``.

    ``result`` is what ``invoke`` returns (click's Result) or a CompletedProcess from
    ``run_python`` or a real ``scoresde`` process. The line is the CLI's last word (``Error:
    ...``, ``Interrupted.`` or ``Aborted.``) with no traceback; each of ``facts`` (an option
    flag, the bad value, a file, an option or class name) occurs in it. Messages are checked by
    these facts, never by their wording. Lines starting with one of the prefixes ``besides``
    (``"warning:"``, ``"using run"``) are said before the refusal and set aside. Returns the line.
    """
    status = result.exit_code if hasattr(result, "exit_code") else result.returncode
    stderr = result.stderr or ""
    assert status == code, f"status {status}, not {code}: {stderr or result.stdout}"
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines()
             if line.strip() and not line.startswith(tuple(besides))]
    assert len(lines) == 1, f"not one line on stderr: {stderr!r}"
    line = lines[0]
    assert line.startswith("Error: ") or line in ("Interrupted.", "Aborted."), line
    missing = [str(fact) for fact in facts if str(fact) not in line]
    assert not missing, f"{missing} not in {line!r}"
    return line


def run_states(run_dir):
    """A run folder's checkpoint (state dicts and plain data)."""
    from scoresde.runs import load_checkpoint

    return load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))


def assert_equal_states(a, b):
    """Two checkpoints bit for bit: the step, model, EMA, optimizer state, data generator."""
    assert a["step"] == b["step"]
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a["rng"]["data"], b["rng"]["data"])


def make_old(run_dir, keys=(), net_keys=()):
    """Turns the run's ``config.json`` into one written before these keys (and the network's
    ``net_keys``) existed, and before the schema was recorded (flat, not grouped); returns that
    config."""
    from scoresde.runs import read_config

    path = Path(run_dir) / "config.json"
    config = read_config(run_dir)
    for key in ("schema", *keys):
        del config[key]
    for key in net_keys:
        del config["net"][key]
    path.write_text(json.dumps(config))
    return config


def stats_for(solver: str, mix=None, std: float = 1.0) -> dict:
    """The data statistics ``sample`` needs for ``solver``: none, or for a solver built on the
    data's Gaussian (``gei``) the mixture's exact moments, or ``data_std=std`` without one."""
    from scoresde.sampling.fewstep import GAUSSIAN_SOLVERS
    if solver not in GAUSSIAN_SOLVERS:
        return {}
    if mix is None:
        return dict(data_std=std)
    mean, cov = mix.moments()
    return dict(data_mean=mean, data_cov=cov)
