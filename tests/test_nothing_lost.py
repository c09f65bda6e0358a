"""Nothing a user has is lost or silently replaced, and nothing runs that the user did not name.

The command's outputs never replace its inputs, a run's files, a folder of the user's or
another command's result; files follow the umask; a checkpoint that carries code is refused
with the blocked object named; a TorchScript file named only in a run is never loaded; sample
names differ whenever the samples do; the command's JSON is strict.
"""

import errno
import hashlib
import json
import os
import re
import shutil
import stat

import numpy as np
import pytest
import torch

import scoresde
from problems import assert_refused, folder_with_a_run, invoke, run_python
from scoresde.outputs import check_output, samples_name
from scoresde.runs import check_run_folder, load_checkpoint, read_config, write_config
from scoresde.sample_files import parts_dir, write_in_chunks
from scoresde.utils import write_atomically

SAMPLE = ["sample", "--solver", "em", "--steps", 4, "--n", 8]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    with folder_with_a_run(tmp_path_factory.mktemp("lost"), "--sde", "vp", "--steps", 3,
                           "--batch-size", 16, "--width", 16, "--run", "r") as path:
        yield path


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(root):
    """Every file under ``root`` with its contents' digest."""
    return {str(p.relative_to(root)): _digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


# ----- outputs never replace inputs, run files or each other --------------------------------------
@pytest.mark.parametrize("out, facts", [
    ("s.png", [".npz"]),  # the figure would be written over the samples
    ("r/checkpoint.pt", [".npz"]),
    ("/proc/x.npz", ["/proc"]),  # a folder where no file can be created
])
def test_sample_refuses_an_out_it_must_not_write(in_workdir, out, facts):
    before = _snapshot(in_workdir)
    result = invoke(*SAMPLE, "--run", "r", "--out", out)
    line = assert_refused(result, 2, out, *facts)
    assert ".parts" not in line
    assert _snapshot(in_workdir) == before


def test_outputs_never_replace_inputs_or_a_runs_files(in_workdir):
    run = in_workdir / "r"
    with pytest.raises(ValueError, match=_names(run / "checkpoint.pt", f"({run})")):  # input
        check_output(run / "checkpoint.pt", inputs=[run], replace=True)
    with pytest.raises(ValueError, match=_names(run / "config.json", f" {run}")):
        check_output(run / "config.json", replace=True)  # any run's, input or not
    with pytest.raises(ValueError, match=_names(in_workdir / "a.npz")):  # another output
        check_output(in_workdir / "a.npz", others=[in_workdir / "a.npz"], replace=True)
    with pytest.raises(ValueError, match=_names("y.npz", in_workdir / "x.npz.parts")):
        check_output(in_workdir / "x.npz.parts" / "y.npz", replace=True)
    data = in_workdir / "images"
    data.mkdir(exist_ok=True)
    with pytest.raises(ValueError, match=_names(data / "samples.png", f" {data}")):
        check_output(data / "samples.png", inputs=[data], replace=True)
    (in_workdir / "mine.npz").write_bytes(b"user's own")
    with pytest.raises(FileExistsError, match="--force"):
        check_output(in_workdir / "mine.npz")


def _names(*names):
    """A pattern for a message that names each of ``names`` (paths too), in this order."""
    return ".*".join(re.escape(str(name)) for name in names)


def test_sample_never_writes_over_its_mask(in_workdir):
    np.savez("known.npz", mask=np.array([True, False]), values=np.array([0.5, 0.0]))
    before = _digest(in_workdir / "known.npz")
    result = invoke(*SAMPLE, "--run", "r", "--mask", "known.npz", "--out", "known.npz")
    assert_refused(result, 2, "known.npz")
    assert _digest(in_workdir / "known.npz") == before


def test_default_names_differ_whenever_the_samples_do(in_workdir):
    names = set()
    base = ["sample", "--solver", "em"]
    for extra in (["--steps", 4, "--n", 8], ["--steps", 4, "--n", 8, "--seed", 1],
                  ["--steps", 4, "--n", 9], ["--steps", 5, "--n", 8],
                  ["--steps", 4, "--n", 8, "--eps", 1e-2],
                  ["--steps", 4, "--n", 8, "--batch-size", 3],
                  ["--steps", 4, "--seeds", "0-7"], ["--steps", 4, "--n", 8, "--no-denoise"]):
        result = invoke(*base, *extra, "--run", "r", "--json")
        assert result.exit_code == 0, result.output
        names.add(json.loads(result.stdout)["out"])
    assert len(names) == 8
    # and labels, guidance, masks and observations through the hash of the other options
    shared = dict(solver="em", steps=4, n=8, seed=0)
    hashed = {samples_name("samples", **shared, extras=extras) for extras in (
        {}, {"label": 3}, {"label": "all"}, {"label": 3, "guidance": 1.0},
        {"mask": {"path": "/a/m.npz", "size": 1, "mtime_ns": 2}})}
    assert len(hashed) == 5


def test_a_second_sample_refuses_to_replace_other_samples(in_workdir):
    first = invoke(*SAMPLE, "--run", "r", "--out", "s.npz")
    assert first.exit_code == 0, first.output
    samples, figure = _digest(in_workdir / "s.npz"), _digest(in_workdir / "s.png")
    other = invoke(*SAMPLE, "--run", "r", "--out", "s.npz", "--seed", 1)
    assert_refused(other, 2, "s.npz", "--force")
    assert (_digest(in_workdir / "s.npz"), _digest(in_workdir / "s.png")) == (samples, figure)
    again = invoke(*SAMPLE, "--run", "r", "--out", "s.npz")  # the same samples: kept, not drawn
    assert again.exit_code == 0 and "nothing drawn" in again.stderr, again.output
    assert _digest(in_workdir / "s.npz") == samples
    forced = invoke(*SAMPLE, "--run", "r", "--out", "s.npz", "--seed", 1, "--force")
    assert forced.exit_code == 0 and _digest(in_workdir / "s.npz") != samples


def test_the_figure_never_replaces_a_file_of_the_users(in_workdir):
    (in_workdir / "plot.png").write_bytes(b"the user's picture")
    result = invoke(*SAMPLE, "--run", "r", "--out", "plot.npz")
    assert_refused(result, 2, "plot.png", "--force")
    assert (in_workdir / "plot.png").read_bytes() == b"the user's picture"
    assert not (in_workdir / "plot.npz").exists()


# ----- training writes only into its own folders -------------------------------------------------
def test_train_never_writes_into_a_folder_of_the_users(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "notes.txt").write_text("results")
    before = _snapshot(mine)
    for args in (["--resume", "--run", "mine"], ["--run", "mine"]):
        result = invoke("train", "--steps", 2, "--batch-size", 8, "--quiet", *args)
        assert result.exit_code == 2 and "mine" in result.stderr, result.output
    (mine / "config.json").unlink()  # a folder of other files, no config.json at all
    result = invoke("train", "--steps", 2, "--batch-size", 8, "--quiet", "--resume", "--run",
                    "mine")
    line = result.stderr.strip().splitlines()[-1]  # after a note that no checkpoint is there
    assert result.exit_code == 2 and "mine" in line and "notes.txt" in line, result.output
    assert _snapshot(mine) == {"notes.txt": before["notes.txt"]}
    with pytest.raises(ValueError, match="mine.*notes.txt"):  # the library keeps the rule too
        scoresde.train(mine, steps=2, batch_size=8, progress=False, resume=True)
    assert _snapshot(mine) == {"notes.txt": before["notes.txt"]}
    check_run_folder(tmp_path / "absent")  # absent and empty folders are fine
    (tmp_path / "empty").mkdir()
    check_run_folder(tmp_path / "empty")


# ----- code runs only when named ------------------------------------------------------------------
def test_a_torchscript_named_only_in_a_run_is_never_loaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("train", "--steps", 2, "--batch-size", 8, "--width", 8, "--quiet", "--run",
                  "r").exit_code == 0
    config = read_config(tmp_path / "r")
    config.update(eval_every=1, eval_features=str(tmp_path / "payload.pt"))  # an edited run
    write_config(tmp_path / "r", config)
    (tmp_path / "payload.pt").write_bytes(b"stands for a TorchScript file")
    loaded = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loaded.append(a))
    result = invoke("train", "--resume", "--run", "r", "--steps", 4, "--quiet")
    assert_refused(result, 2, "--eval-features")
    assert loaded == []


def test_a_checkpoint_that_carries_code_is_refused_naming_the_object(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Payload()}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError) as err:
        load_checkpoint(tmp_path / "checkpoint.pt")
    message = str(err.value)
    assert "posix.system" in message or "nt.system" in message, message
    assert "weights_only` set to `False" not in message and "will likely succeed" not in message
    assert not marker.exists()


# ----- files follow the umask ---------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_atomically(tmp_path / "f.json", lambda f: f.write(b"{}"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f.json").st_mode) == 0o666 & ~umask


@pytest.mark.slow
def test_a_real_run_and_its_samples_are_readable_by_the_group(tmp_path):
    script = ("import os, sys; os.umask(0o002); from scoresde.cli import main; "
              "main(sys.argv[1:])")
    for args in (["train", "--steps", 3, "--batch-size", 8, "--width", 8, "--quiet", "--run",
                  "r"], [*SAMPLE, "--run", "r", "--out", "s.npz"]):
        proc = run_python("-c", script, *args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*") if p.is_file()}
    assert {"config.json", "checkpoint.pt", "metrics.jsonl", "s.npz", "s.png"} <= set(modes)
    assert set(modes.values()) == {0o664}, modes


# ----- a full disk --------------------------------------------------------------------------------
def test_a_full_disk_is_named_and_the_old_file_kept(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"the last good checkpoint")

    def fill(fh):  # torch.save onto a full device raises RuntimeError('unexpected pos ...')
        with open("/dev/full", "wb") as full:
            torch.save({"w": torch.zeros(100_000)}, full)

    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    with pytest.raises(OSError, match=re.escape(str(path))) as err:
        write_atomically(path, fill)
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"the last good checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


# ----- sample files: leftovers and memory ---------------------------------------------------------
def _draw(calls):
    def draw(k, start, stop):
        calls.append(k)
        return {"samples": np.arange(start, stop, dtype=np.float32)[:, None]}, {"nfe": 1}
    return draw


def test_a_kill_during_assembly_or_after_the_rename_leaves_nothing_behind(tmp_path):
    out = tmp_path / "s.npz"
    calls = []
    write_in_chunks(out, 10, 4, _draw(calls), {"seed": 0}, progress=False)
    whole = _digest(out)
    # a kill after the rename, before the chunks' folder went: the rerun draws nothing
    parts = parts_dir(out)
    parts.mkdir()
    (parts / "chunk-000000.npz").write_bytes(b"old")
    (parts / "manifest.json").write_text(json.dumps(
        {"fingerprint": {"seed": 0}, "n": 10, "batch_size": 4}))
    (tmp_path / ".s.npz.parts-done-1-2").mkdir()  # a deletion cut short
    calls.clear()
    result = write_in_chunks(out, 10, 4, _draw(calls), {"seed": 0}, progress=False)
    assert calls == [] and result["reused"] and _digest(out) == whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]
    # the chunks of another call (other options, cut short) stay for that call to finish
    parts.mkdir()
    (parts / "manifest.json").write_text(json.dumps(
        {"fingerprint": {"seed": 1}, "n": 10, "batch_size": 4}))
    assert write_in_chunks(out, 10, 4, _draw(calls), {"seed": 0}, progress=False)["reused"]
    assert (parts / "manifest.json").exists()
    shutil.rmtree(parts)
    # a kill during the assembly: its temporary file lies in the chunks' folder, removed next
    out.unlink()
    with pytest.raises(KeyboardInterrupt):
        write_in_chunks(out, 10, 4, _interrupted_after(2, calls), {"seed": 0}, progress=False)
    (parts / ".tmp-0123456789ab.npz").write_bytes(b"half an assembly")
    write_in_chunks(out, 10, 4, _draw(calls), {"seed": 0}, progress=False)
    assert _digest(out) == whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]


def _interrupted_after(count, calls):
    draw = _draw(calls)

    def interrupted(k, start, stop):
        if k >= count:
            raise KeyboardInterrupt
        return draw(k, start, stop)
    return interrupted


def test_sample_keeps_no_rows_of_vector_data_it_does_not_draw(tmp_path, monkeypatch):
    import scoresde.tasks.sampling as files

    monkeypatch.chdir(tmp_path)
    np.save("points.npy", np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32))
    assert invoke("train", "--data", "points.npy", "--steps", 2, "--batch-size", 8, "--width",
                  8, "--quiet", "--run", "r").exit_code == 0
    kept = []
    real = files.write_in_chunks
    monkeypatch.setattr(files, "write_in_chunks",
                        lambda *a, **k: kept.append(k["keep"]) or real(*a, **k))
    result = invoke(*SAMPLE, "--run", "r", "--json")
    assert result.exit_code == 0, result.output
    assert kept == [0] and json.loads(result.stdout)["figure"] is None


# ----- messages -----------------------------------------------------------------------------------
def test_json_output_is_strict_json(in_workdir):
    result = invoke("likelihood", "--run", "r", "--n", 1, "--json")
    assert result.exit_code == 0, result.output

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    record = json.loads(result.stdout, parse_constant=refuse)
    assert record["standard_error"] is None and record["non_finite"] == {"standard_error": "nan"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
@pytest.mark.parametrize("command", [
    ["train", "--steps", 1], ["sample"], ["likelihood"], ["fid"], ["demo", "--quick"]])
def test_cuda_without_a_gpu_is_a_usage_error(in_workdir, command):
    before = _snapshot(in_workdir)
    result = invoke(*command, "--device", "cuda")
    assert_refused(result, 2, "'cuda'", "CUDA")
    assert _snapshot(in_workdir) == before


def test_a_run_never_goes_inside_its_data_folder(tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 60 * i, dtype=np.uint8)).save(photos / f"{i}.png")
    before = _snapshot(photos)
    with pytest.raises(ValueError, match=_names(photos / "run", f" {photos}")):
        scoresde.train(photos / "run", data=photos, steps=1, batch_size=2, progress=False)
    assert _snapshot(photos) == before and not (photos / "run").exists()


@pytest.mark.slow
def test_the_real_command_replaces_nothing(in_workdir):
    """The overwrites above through a real process of the command: the figure over the
    samples, the samples over the run's checkpoint, a second seed over the first samples."""
    before = _snapshot(in_workdir / "r")
    command = ["-m", "scoresde", *SAMPLE, "--run", "r"]
    for out in ("real.png", "r/checkpoint.pt"):
        proc = run_python(*command, "--out", out, cwd=in_workdir)
        assert_refused(proc, 2, out, ".npz")
    assert _snapshot(in_workdir / "r") == before and not (in_workdir / "real.png").exists()
    first = run_python(*command, "--out", "real.npz", cwd=in_workdir)
    assert first.returncode == 0, first.stderr
    kept = _digest(in_workdir / "real.npz")
    second = run_python(*command, "--out", "real.npz", "--seed", 7, cwd=in_workdir)
    assert_refused(second, 2, "real.npz", "--force")
    assert _digest(in_workdir / "real.npz") == kept


def test_sample_names_and_reuse_follow_the_weights_and_the_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez("pts.npz", x=np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32))
    train_args = ["train", "--data", "pts.npz", "--batch-size", 16, "--width", 8, "--quiet",
                  "--run", "r"]
    assert invoke(*train_args, "--steps", 2).exit_code == 0
    few = ["sample", "--run", "r", "--solver", "euler", "--steps", 5, "--n", 20, "--json"]
    first = json.loads(invoke(*few).stdout)["out"]
    # trained on: the weights differ, so do the samples and their default name
    assert invoke(*train_args, "--steps", 3, "--resume").exit_code == 0
    second = invoke(*few)
    assert second.exit_code == 0 and json.loads(second.stdout)["out"] != first, second.output
    # the few-step draw used the data's statistics: without the data it is another draw,
    # which the file of the first is not taken for
    out = ["--out", "s.npz"]
    assert invoke(*few, *out).exit_code == 0
    os.mkdir("sub")
    os.rename("pts.npz", "sub/pts.npz")
    moved = invoke(*few, *out)
    assert_refused(moved, 2, "data_statistics")
    # the data file is never an output, even with --force, from wherever the command runs
    monkeypatch.chdir("sub")
    os.rename("pts.npz", "../pts.npz")
    before = _digest(tmp_path / "pts.npz")
    forced = invoke(*few[:2], "../r", *few[3:], "--out", "../pts.npz", "--force")
    assert_refused(forced, 2, "pts.npz")
    assert _digest(tmp_path / "pts.npz") == before


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    os.chmod(path, 0o600)
    write_atomically(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and stat.S_IMODE(os.stat(path).st_mode) == 0o600
