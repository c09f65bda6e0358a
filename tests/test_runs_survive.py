"""Runs that survive a scheduler: --resume on a folder without a checkpoint, one writer per
run folder, kills at any moment (SIGKILL, in the middle of a checkpoint write included)."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from scoresde import train
from scoresde.runs import load_checkpoint, read_config
from scoresde.utils import LOCK, FolderBusyError, folder_lock

from problems import ROOT, TINY, assert_equal_states, assert_refused, invoke, run_states

# A process that holds a run folder's lock until it is killed; prints "held" once it has it.
HOLDER = """
import sys, time
from scoresde.utils import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                  "")]),
                OMP_NUM_THREADS="1")


def _holder(run_dir):
    """A real process holding ``run_dir``'s lock (the caller kills it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], env=_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc






def _logged_steps(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


# ----- --resume without a checkpoint --------------------------------------------------------------
CLI_TINY = ["--width", 16, "--batch-size", 32, "--quiet", "--checkpoint-every", 2]


@pytest.mark.parametrize("before", ["absent", "empty", "config only"])
def test_resume_starts_a_run_that_has_no_checkpoint_yet(tmp_path, before):
    run = tmp_path / "job"
    if before != "absent":
        run.mkdir()
    if before == "config only":  # a job killed after writing its config, before a checkpoint
        (run / "config.json").write_text('{"steps": 999, "sde": {"name": "vp"}, '
                                         '"net": {"name": "mlp"}}')  # a run's: SDE, network
    result = invoke("train", "--resume", "--run", run, "--steps", 3, *CLI_TINY)
    assert result.exit_code == 0, result.output
    said = result.stderr.strip().splitlines()  # one note: no checkpoint in the run yet
    assert len(said) == 1 and str(run) in said[0] and "checkpoint" in said[0], said
    assert run_states(run)["step"] == 3
    assert read_config(run)["steps"] == 3
    again = invoke("train", "--resume", "--run", run, "--steps", 5, *CLI_TINY)
    assert again.exit_code == 0, again.output
    assert str(run) not in again.stderr and run_states(run)["step"] == 5  # no note


def test_resume_still_refuses_options_that_conflict_with_the_run(tmp_path):
    run = tmp_path / "job"
    assert invoke("train", "--resume", "--run", run, "--steps", 2, *CLI_TINY).exit_code == 0
    result = invoke("train", "--resume", "--run", run, "--steps", 4, "--sde", "ve", *CLI_TINY)
    assert_refused(result, 2, "sde")


def test_resume_onto_a_file_is_a_usage_error(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    result = invoke("train", "--resume", "--run", path, *CLI_TINY)
    assert_refused(result, 2, "--run", path)


# ----- one writer ---------------------------------------------------------------------------------
def test_a_second_writer_is_refused_naming_the_first_and_a_killed_one_does_not_block(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        busy = rf"^{re.escape(str(run))}\b.*\bpid {holder.pid}\b"  # the folder and its writer
        with pytest.raises(FolderBusyError, match=busy):
            train(run, steps=2, **TINY)
        result = invoke("train", "--run", run, "--resume", "--steps", 2, *CLI_TINY)
        line = result.stderr.strip().splitlines()[-1]  # after a note: no checkpoint there yet
        assert result.exit_code == 1 and str(run) in line and f"pid {holder.pid}" in line, line
        assert run.is_dir() and not (run / "checkpoint.pt").exists()  # left to its owner
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    (run / ".tmp-cut.pt").write_bytes(b"half a checkpoint")  # left by a writer killed mid-write
    (run / ".tmp-sampler.npz").write_bytes(b"a sampler writing")  # another writer's, still busy
    train(run, steps=2, resume=True, **TINY)
    assert run_states(run)["step"] == 2 and not (run / ".tmp-cut.pt").exists()
    assert (run / ".tmp-sampler.npz").exists()
    assert (run / LOCK).read_text().startswith(f"pid {os.getpid()} on ")


def test_the_lock_is_exclusive_within_a_process_and_released_after(tmp_path):
    with folder_lock(tmp_path / "run"):
        with pytest.raises(FolderBusyError):
            with folder_lock(tmp_path / "run"):
                pass
    with folder_lock(tmp_path / "run"):
        pass  # released: taken again


def test_a_record_cut_by_a_kill_is_dropped_on_resume(tmp_path):
    opts = dict(TINY, steps=4, checkpoint_every=2, log_every=1)
    train(tmp_path / "run", **opts)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a write that a kill cut short
    train(tmp_path / "run", resume=True, **dict(opts, steps=6))
    assert _logged_steps(tmp_path / "run") == [1, 2, 3, 4, 5, 6]


# ----- kills at random moments --------------------------------------------------------------------
# Trains with resume=True always, as a requeue script does. With KILL_AT_SAVE=k the process kills
# itself with SIGKILL after writing half of its k-th checkpoint or EMA snapshot (inside the
# atomic write).
TRAINER = """
import os, signal, sys
import torch
from scoresde import train

kill_at, saves = int(os.environ.get("KILL_AT_SAVE", "0")), [0]
real_save = torch.save

def save(obj, f, *args, **kwargs):
    saves[0] += 1
    if saves[0] == kill_at:
        f.write(b"half")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

torch.save = save
train(sys.argv[1], resume=True, data="moons", net_params={"hidden": 16, "depth": 1},
      batch_size=256, steps=400, checkpoint_every=20, log_every=10, progress=False,
      ema_profiles=[0.05, 0.1], ema_snapshot_every=30)
"""


def _trainer(run_dir, kill_at_save=0):
    env = dict(_env(), KILL_AT_SAVE=str(kill_at_save))
    return subprocess.Popen([sys.executable, "-c", TRAINER, str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _step(run_dir):
    path = os.path.join(run_dir, "checkpoint.pt")
    return load_checkpoint(path)["step"] if os.path.isfile(path) else -1


def _kill_when(proc, ready, extra=0.0, timeout=300):
    """SIGKILL ``proc`` ``extra`` seconds after ``ready()`` first holds (or once it has ended)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(extra)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    return proc.wait()


@pytest.mark.slow  # eight fresh interpreters
def test_sigkill_at_any_moment_then_resume_equals_an_uninterrupted_run(tmp_path):
    straight = _trainer(tmp_path / "straight")  # runs alongside; waited for at the end
    run, rng = tmp_path / "killed", random.Random(0)
    # Before the folder exists (while importing), as soon as it exists (before a checkpoint)...
    assert _kill_when(_trainer(run), lambda: True, 0.2) == -signal.SIGKILL
    assert not run.exists()
    assert _kill_when(_trainer(run), run.exists) == -signal.SIGKILL
    # ... at random moments after a checkpoint, and in the middle of checkpoint writes.
    steps = []
    for attempt in range(4):
        before = _step(run)
        if attempt == 1:  # kills itself inside its third write: a checkpoint or an EMA
            # snapshot, after at least one checkpoint (no two snapshots are written in a row)
            assert _trainer(run, kill_at_save=3).wait(timeout=300) == -signal.SIGKILL
        else:
            proc = _trainer(run)
            assert _kill_when(proc, lambda: _step(run) > before, rng.uniform(0, 0.2)) == \
                -signal.SIGKILL
        steps.append(_step(run))
    assert 0 < steps[-1] < 400 and len(set(steps)) == 4, steps  # stopped all along the way
    last = _trainer(run)
    assert last.wait(timeout=300) == 0, last.stderr.read()[-2000:]
    assert straight.wait(timeout=300) == 0, straight.stderr.read()[-2000:]
    assert_equal_states(run_states(tmp_path / "straight"), run_states(run))
    assert _logged_steps(run) == list(range(10, 401, 10))
    assert not [p for p in os.listdir(run) if p.startswith(".tmp-")]
    # The power-function EMA snapshots (every 30 steps, not at the checkpoints) too.
    snapshots = sorted(os.listdir(run / "ema_snapshots"))
    assert snapshots == sorted(os.listdir(tmp_path / "straight" / "ema_snapshots"))
    assert len(snapshots) == 14  # steps 30, ..., 390 and 400: no temporary file left
    for name in snapshots:
        a, b = (torch.load(folder / "ema_snapshots" / name, weights_only=True)
                for folder in (run, tmp_path / "straight"))
        assert a["step"] == b["step"] and all(
            torch.equal(x[k], y[k]) for x, y in zip(a["averages"], b["averages"]) for k in x)
