"""Interrupted training: SIGINT and SIGTERM save the step's checkpoint and say how to resume,
a resumed run equals an uninterrupted one bit for bit; a finished run and a diverged one say
truly what there is."""

import json
import math
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import scoresde
from scoresde import train
from scoresde.interrupts import Interrupts
from scoresde.loop import Process, _check_weights
from scoresde.training import TrainingInterrupted

from problems import (ROOT, TINY, assert_equal_states, assert_refused, invoke, run_python,
                      run_states)

SIGNALS = {"SIGINT": 130, "SIGTERM": 143}  # and the command's exit status for each


class Marker(Exception):
    """Raised by the handlers a test puts in place before training: one reached is a signal
    that training did not take (on code without the handlers it stands in for the default
    action, which for SIGTERM would end the test run)."""


@pytest.fixture
def own_handlers():
    """Our own SIGINT and SIGTERM handlers for the test, then the previous ones again."""
    def handler(signum, frame):
        raise Marker(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    yield handler
    for s, h in previous.items():
        signal.signal(s, h)






def _records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# ----- the library --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SIGNALS)
def test_a_signal_in_a_step_saves_that_step_and_resuming_equals_a_straight_run(tmp_path, name,
                                                                               own_handlers):
    signum = signal.Signals[name]
    opts = dict(TINY, steps=10, log_every=4)

    def send(done, record):
        if done == 6:
            os.kill(os.getpid(), signum)

    with pytest.raises(TrainingInterrupted) as info:
        train(tmp_path / "cut", callback=send, **opts)
    stop = info.value
    assert (stop.step, stop.steps, stop.signal_name, stop.signum) == (6, 10, name, signum)
    assert stop.run_dir == str(tmp_path / "cut") and isinstance(stop, KeyboardInterrupt)
    said = str(stop)  # the signal, the step and its total, the folder of the checkpoint
    assert all(fact in said for fact in (name, "step 6", "10", str(tmp_path / "cut"))), said
    for s in (signal.SIGINT, signal.SIGTERM):  # put back as they were; ours never reached
        assert signal.getsignal(s) is own_handlers
    assert run_states(tmp_path / "cut")["step"] == 6
    # A record of steps 5-6 (log_every 4): after resuming, every step is in one record.
    assert [r["step"] for r in _records(tmp_path / "cut")] == [4, 6]
    train(tmp_path / "cut", resume=True, **opts)
    assert [r["step"] for r in _records(tmp_path / "cut")] == [4, 6, 8, 10]
    train(tmp_path / "straight", **opts)
    assert_equal_states(run_states(tmp_path / "straight"), run_states(tmp_path / "cut"))
    straight, cut = _records(tmp_path / "straight"), _records(tmp_path / "cut")
    assert straight[0]["loss"] == cut[0]["loss"]
    assert straight[1]["loss"] == pytest.approx((2 * cut[1]["loss"] + 2 * cut[2]["loss"]) / 4)


def test_a_signal_before_the_first_step_stops_at_once_and_saves_nothing(tmp_path, monkeypatch,
                                                                        own_handlers):
    real = scoresde.training.build_parts

    def signal_then_build(*args, **kwargs):  # while setting up, before the loop
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(scoresde.training, "build_parts", signal_then_build)
    with pytest.raises(TrainingInterrupted) as info:
        train(tmp_path / "run", steps=5, **TINY)
    assert info.value.step is None and info.value.signal_name == "SIGTERM"
    assert "SIGTERM" in str(info.value) and str(tmp_path / "run") in str(info.value)
    assert signal.getsignal(signal.SIGTERM) is own_handlers
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    # The command: its own new folder removed, one line, SIGTERM's status.
    result = invoke("train", "--run", tmp_path / "cli", "--steps", 5, "--width", 16, "--quiet")
    assert result.exit_code == 143, result.output
    said = result.stderr.strip().splitlines()
    assert len(said) == 1 and "SIGTERM" in said[0] and not re.search(r"step \d", said[0]), said
    assert not (tmp_path / "cli").exists()


def test_a_signal_in_the_last_step_lets_the_run_finish(tmp_path, own_handlers):
    def send(done, record):
        if done == 4:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(tmp_path / "run", steps=4, callback=send, **TINY)
    assert result["step"] == 4 and run_states(tmp_path / "run")["step"] == 4
    assert signal.getsignal(signal.SIGINT) is own_handlers


def test_ranks_agree_on_a_stop_a_step_later(tmp_path):
    """Several processes: each step's flags go into one all_reduce (MAX) read a step later
    (here a one-process gloo group standing in for two ranks)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        proc = Process(0, 2, torch.device("cpu"), "R")
        with Interrupts("R") as interrupts, interrupts.watching():
            assert interrupts.due(proc) == 0
            interrupts.signum = int(signal.SIGTERM)  # noted during the second step
            assert interrupts.due(proc) == 0  # the first step's agreement
            assert interrupts.due(proc) == signal.SIGTERM
        assert interrupts.due(Process(0, 1, torch.device("cpu"), "R")) == signal.SIGTERM
    finally:
        dist.destroy_process_group()


# ----- finished and diverged runs -----------------------------------------------------------------
def test_resuming_a_finished_run_says_there_is_nothing_to_train(tmp_path):
    run = tmp_path / "run"
    first = train(run, steps=3, **TINY)
    again = train(run, steps=3, resume=True, **TINY)
    assert again["resumed_from"] == 3 and again["loss"] == first["loss"]  # its last record's
    result = invoke("train", "--resume", "--run", run, "--quiet")
    assert result.exit_code == 0, result.output
    said = result.stdout.splitlines()[0]  # the run, its step, and the option that trains on
    assert str(run) in said and "step 3" in said and "--steps" in said, said
    assert "nan" not in result.output


def _nan_data_from(monkeypatch, draw):
    """From the ``draw``-th batch of a train() call on, the data are NaN (so is the loss)."""
    real, draws = scoresde.loop._draw_batch, []

    def nan_batch(*args):
        x0, y, t, z = real(*args)
        draws.append(1)
        return (x0 * math.nan if len(draws) >= draw else x0), y, t, z

    monkeypatch.setattr(scoresde.loop, "_draw_batch", nan_batch)


def test_diverging_names_the_checkpoint_kept_or_that_there_is_none(tmp_path, monkeypatch):
    run = tmp_path / "fresh"
    with monkeypatch.context() as patch:
        _nan_data_from(patch, 3)
        with pytest.raises(FloatingPointError) as err:
            train(run, steps=5, checkpoint_every=10, **TINY)
    said = str(err.value)  # what diverged, when, where, and that no checkpoint is kept
    assert all(fact in said for fact in ("loss", "step 3", str(run), "nothing is kept")), said
    run = tmp_path / "resumed"
    train(run, steps=2, **TINY)
    with monkeypatch.context() as patch:
        _nan_data_from(patch, 2)  # step 4
        with pytest.raises(FloatingPointError) as err:
            train(run, steps=6, resume=True, checkpoint_every=10, **TINY)
    said = str(err.value)  # the checkpoint kept: its step and folder
    assert all(fact in said for fact in ("loss", "step 4", "step 2", str(run))), said
    assert "nothing is kept" not in said
    assert run_states(run)["step"] == 2
    # The command: a new run that diverges before its first checkpoint leaves no folder.
    result = invoke("train", "--run", tmp_path / "cli", "--lr", "1e30", "--steps", 100,
                    "--width", 16, "--batch-size", 32, "--quiet")
    assert_refused(result, 1, "loss", tmp_path / "cli", "nothing is kept")
    assert "last good checkpoint" not in result.stderr and not (tmp_path / "cli").exists()


def test_non_finite_weights_name_the_checkpoint_kept_or_that_there_is_none():
    parts = SimpleNamespace(model=torch.nn.Linear(2, 2))
    with torch.no_grad():
        parts.model.weight[0, 0] = math.inf
    proc = Process(0, 1, torch.device("cpu"), "R")
    with pytest.raises(FloatingPointError) as err:
        _check_weights(parts, proc, 4, None)
    said = str(err.value)  # the run folder is "R"
    assert all(fact in said for fact in ("weights", "step 4", " R ", "nothing is kept")), said
    with pytest.raises(FloatingPointError) as err:
        _check_weights(parts, proc, 4, 2)
    said = str(err.value)
    assert all(fact in said for fact in ("weights", "step 4", "step 2", " R ")), said
    assert "nothing is kept" not in said


# ----- the command, as a real process -------------------------------------------------------------
CLI_OPTS = ["--steps", "600", "--batch-size", "64", "--width", "32", "--quiet"]


FOREGROUND = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
              " sys.argv[0] = 'scoresde'; runpy.run_module('scoresde', run_name='__main__')")


def _scoresde(*args):
    """A real ``scoresde ARGS`` process (stdout and stderr piped)."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    # As a command typed at a shell prompt, with Python's own SIGINT handler, even when these
    # tests run in a background job: that ignores SIGINT, and scoresde leaves an ignored signal
    # alone, on purpose.
    return subprocess.Popen([sys.executable, "-c", FOREGROUND, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run, trained alongside the tests that need it; its folder, once done."""
    run = tmp_path_factory.mktemp("straight") / "run"
    proc = _scoresde("train", "--run", run, *CLI_OPTS)

    def done():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        return run

    yield done
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.slow  # four fresh interpreters
@pytest.mark.parametrize("name", SIGNALS)
def test_the_command_interrupted_saves_says_how_to_resume_and_resumes_exactly(tmp_path, name,
                                                                              straight):
    run = tmp_path / "my runs" / "job 1"  # spaces: the resume command quotes them
    proc = _scoresde("train", "--run", run, *CLI_OPTS)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not (run / "metrics.jsonl").exists():  # step 100 is done
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(random.Random(name).uniform(0, 0.3))
    proc.send_signal(signal.Signals[name])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == SIGNALS[name], err[-2000:]
    step = run_states(run)["step"]
    assert 100 <= step < 600
    said = err.strip().splitlines()[-1]  # the signal, the step saved, the command to resume
    assert name in said and f"step {step}" in said and str(run) in said, said
    resume = f"scoresde train --resume --run {shlex.quote(str(run))} --steps 600 --quiet"
    assert said.endswith(resume), said
    command = shlex.split(resume)
    assert command[:2] == ["scoresde", "train"]
    resumed = _scoresde(*command[1:])
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err[-2000:]
    assert "600 steps" in out.splitlines()[0]  # its summary: the run's whole total
    assert_equal_states(run_states(straight()), run_states(run))
    logged = [r["step"] for r in _records(run)]
    assert logged == sorted(set(range(100, 601, 100)) | {step})


TORCHRUN_SCRIPT = """
import os, signal, sys, torch
torch.set_num_threads(1)
from scoresde import train
from scoresde.training import TrainingInterrupted

def send(done, record):  # the callback runs on rank 0: one rank alone gets the signal
    if done == 5:
        os.kill(os.getpid(), signal.SIGTERM)

try:
    train(sys.argv[1], data="moons", net_params={"hidden": 16, "depth": 1}, batch_size=32,
          steps=20, progress=False, callback=send)
except TrainingInterrupted as stop:
    print(f"rank {os.environ['RANK']}: {stop.signal_name} at step {stop.step}", flush=True)
"""


@pytest.mark.slow  # torchrun and two ranks
def test_under_torchrun_every_rank_stops_at_the_same_step(tmp_path):
    from problems import free_port

    script = tmp_path / "interrupted.py"
    script.write_text(TORCHRUN_SCRIPT)
    proc = run_python("-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                      "--master_addr=127.0.0.1", f"--master_port={free_port()}", script,
                      tmp_path / "run", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The ranks print to one pipe at once: their lines may run together.
    lines = sorted(re.findall(r"rank \d+: \w+ at step \d+", proc.stdout))
    assert lines == ["rank 0: SIGTERM at step 6", "rank 1: SIGTERM at step 6"]
    assert run_states(tmp_path / "run")["step"] == 6


class _Handlers(torch.utils.data.Dataset):
    """Each item: whether the worker that reads it ignores SIGINT and SIGTERM."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.tensor([signal.getsignal(s) == signal.SIG_IGN
                             for s in (signal.SIGINT, signal.SIGTERM)])


def test_image_decoding_workers_leave_the_stop_to_the_trainer():
    from scoresde.images import _ignore_stops

    loader = torch.utils.data.DataLoader(_Handlers(), batch_size=2, num_workers=1,
                                         worker_init_fn=_ignore_stops)
    assert next(iter(loader)).all()  # Ctrl-C reaches the workers too: they stay for the save


def test_ctrl_c_pressed_again_stops_at_once_keeping_the_last_checkpoint(tmp_path, own_handlers):
    opts = dict(TINY, steps=10, checkpoint_every=4)

    def twice(done, record):
        if done == 6:  # a SIGTERM more is a scheduler's repeat, ignored; Ctrl-C again is not
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
                os.kill(os.getpid(), signum)

    with pytest.raises(KeyboardInterrupt) as info:
        train(tmp_path / "run", callback=twice, **opts)
    assert not isinstance(info.value, TrainingInterrupted) and "twice" in str(info.value)
    assert run_states(tmp_path / "run")["step"] == 4  # not 6: nothing was saved on the way out
    for s in (signal.SIGINT, signal.SIGTERM):
        assert signal.getsignal(s) is own_handlers
