"""Many samples into one file in chunks: the same file whatever the interruptions, seeds per
sample across chunk sizes, other options refused, non-finite chunks never written."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from scoresde import GaussianMixture, get_sde, make_generator
from scoresde.sample_files import chunk_generator, parts_dir, sample_to_file, write_in_chunks
from scoresde.utils import FolderBusyError, folder_lock

from problems import ROOT, assert_refused, invoke

SCORE_OPTS = dict(solver="em", steps=8)


@pytest.fixture(scope="module")
def exact():
    sde = get_sde("vp")
    return GaussianMixture.ring().score_fn(sde), sde


def _load(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def test_chunk_zero_is_the_seed_itself_and_later_chunks_do_not_overlap_other_seeds():
    draw = lambda gen: torch.randn(5, generator=gen)  # noqa: E731
    assert torch.equal(draw(chunk_generator(3, 0)), draw(make_generator(3)))
    firsts = {tuple(draw(chunk_generator(seed, k)).tolist()) for seed in range(4)
              for k in range(4)}
    assert len(firsts) == 16


def test_a_file_drawn_in_chunks_holds_every_sample_once_in_order(tmp_path, exact):
    seeds = list(range(100, 150))
    one = sample_to_file(tmp_path / "one.npz", *exact, (50, 2), batch_size=50, seeds=seeds,
                         **SCORE_OPTS)
    many = sample_to_file(tmp_path / "many.npz", *exact, (50, 2), batch_size=7, seeds=seeds,
                          **SCORE_OPTS)
    a, b = _load(tmp_path / "one.npz"), _load(tmp_path / "many.npz")
    assert (one["chunks"], many["chunks"]) == (1, 8) and many["nfe"] == one["nfe"] == 9
    assert a.keys() == b.keys() == {"samples", "seeds", "manifest"}
    assert a["samples"].shape == (50, 2)
    assert np.array_equal(a["samples"], b["samples"]) and np.array_equal(b["seeds"], seeds)
    assert np.isfinite(a["samples"]).all() and not parts_dir(tmp_path / "many.npz").exists()


def test_an_interrupted_draw_continues_to_the_file_an_uninterrupted_one_writes(tmp_path, exact):
    opts = dict(batch_size=16, seed=5, progress=False, **SCORE_OPTS)
    sample_to_file(tmp_path / "straight.npz", *exact, (70, 2), **opts)
    score, sde = exact
    calls = []

    def dies_in_chunk_three(x, t):
        calls.append(x.shape[0])
        if len(calls) == 3 * 9 + 1:
            raise KeyboardInterrupt  # as a kill in the middle of chunk 3
        return score(x, t)

    out = tmp_path / "cut.npz"
    with pytest.raises(KeyboardInterrupt):
        sample_to_file(out, dies_in_chunk_three, sde, (70, 2), **opts)
    assert not out.exists()
    assert sorted(p for p in os.listdir(parts_dir(out)) if p.startswith("chunk")) == [
        f"chunk-00000{k}.npz" for k in range(3)]
    result = sample_to_file(out, score, sde, (70, 2), **opts)
    assert result["drawn"] == 2 and result["chunks"] == 5
    assert np.array_equal(_load(out)["samples"], _load(tmp_path / "straight.npz")["samples"])


def test_chunks_of_other_options_are_refused_not_mixed(tmp_path, exact):
    def cut(k, start, stop):
        if k == 1:
            raise KeyboardInterrupt
        return {"x": np.zeros((stop - start, 2))}, {"nfe": 1}

    out = tmp_path / "out.npz"
    with pytest.raises(KeyboardInterrupt):
        write_in_chunks(out, 10, 4, cut, {"seed": 0}, progress=False)
    held = f"^{re.escape(str(parts_dir(out)))}"  # the chunks' folder, left for their call
    with pytest.raises(ValueError, match=held):
        write_in_chunks(out, 10, 4, cut, {"seed": 1}, progress=False)
    with pytest.raises(ValueError, match=held):
        write_in_chunks(out, 10, 5, cut, {"seed": 0}, progress=False)


def test_a_non_finite_chunk_stops_the_draw_keeping_the_chunks_before_it(tmp_path, exact):
    score, sde = exact
    nan_after = lambda x, t: score(x, t) * (torch.nan if x.shape[0] == 4 else 1)  # noqa: E731
    out = tmp_path / "out.npz"
    with pytest.raises(FloatingPointError, match=r"\bchunk 2\b.*\b16-19\b"):
        sample_to_file(out, nan_after, sde, (20, 2), batch_size=8, progress=False, **SCORE_OPTS)
    assert not out.exists() and len(list(parts_dir(out).glob("chunk-*"))) == 2
    with pytest.raises(ValueError, match=r"'x'.*\b4 rows.*\(3,\)"):
        write_in_chunks(tmp_path / "bad.npz", 4, 4, lambda k, a, b: ({"x": np.zeros(3)}, {}),
                        {}, progress=False)


def test_cli_chunks_equal_one_batch_with_seeds_and_report_them(in_workdir):
    common = ["sample", "--solver", "em", "--steps", 5, "--json"]
    one = invoke(*common, "--seeds", "0-99", "--out", "one.npz")
    many = invoke(*common, "--seeds", "0-99", "--batch-size", 30, "--out", "many.npz")
    assert one.exit_code == 0 and many.exit_code == 0, many.output
    assert '"chunks": 4, "chunks_reused": 0' in many.stdout and '"batch_size": 30' in many.stdout
    a, b = _load("one.npz"), _load("many.npz")
    assert a.keys() == b.keys() == {"samples", "raw", "seeds", "manifest"}
    assert all(np.array_equal(a[k], b[k]) for k in a if k != "manifest")  # batch sizes differ
    bad = invoke(*common, "--batch-size", 0)
    assert_refused(bad, 2, "--batch-size", "0", besides=["using run"])


SAMPLER = [sys.executable, "-m", "scoresde", "sample", "--solver", "em", "--steps", "20",
           "--n", "20000", "--batch-size", "1000", "--json"]


@pytest.mark.slow  # three interpreters drawing 20,000 samples each
def test_cli_killed_halfway_continues_to_the_uninterrupted_file(in_workdir):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    straight = subprocess.run(SAMPLER + ["--out", "straight.npz"], env=env, capture_output=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    proc = subprocess.Popen(SAMPLER + ["--out", "cut.npz"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    parts = parts_dir(in_workdir / "cut.npz")
    while proc.poll() is None and len(list(parts.glob("chunk-*"))) < 5:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL and not (in_workdir / "cut.npz").exists()
    again = subprocess.run(SAMPLER + ["--out", "cut.npz"], env=env, capture_output=True,
                           text=True)
    assert again.returncode == 0 and '"chunks_reused": 0' not in again.stdout
    assert '"chunks": 20' in again.stdout
    a, b = _load("straight.npz"), _load("cut.npz")
    assert a["samples"].shape == (20000, 2) and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_second_writer_is_refused_and_leaves_the_first_ones_folder(tmp_path):
    out = tmp_path / "out.npz"
    draw = lambda k, a, b: ({"x": np.zeros((b - a, 2))}, {"nfe": 1})  # noqa: E731
    with folder_lock(parts_dir(out)):  # the first writer, still before its manifest
        with pytest.raises(FolderBusyError, match=rf"\bpid {os.getpid()}\b"):
            write_in_chunks(out, 10, 4, draw, {}, progress=False)
        assert parts_dir(out).is_dir()
    assert write_in_chunks(out, 10, 4, draw, {}, progress=False)["chunks"] == 3
    assert not parts_dir(out).exists() and not list(tmp_path.glob(".out.npz.parts-done-*"))
