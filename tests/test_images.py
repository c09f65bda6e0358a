"""Pixel data: image folders and uint8 arrays, their split, batch stream, resume and CLI.

The images are tiles of the two photographs that ship with scikit-learn.
"""

import gc
import json
import multiprocessing
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from problems import (Interrupt, assert_equal_states, assert_refused, invoke, run_python,
                      run_states, stop_at)
from scoresde import images, train
from scoresde.data import get_dataset, run_dataset
from scoresde.images import StepBatches
from scoresde.runs import load_checkpoint, read_config, upgrade_config

PHOTOS = load_sample_images().images  # two (427, 640, 3) uint8 photographs
# A U-Net small enough for a CLI run in a few seconds.
SMALL_NET = {"ch": 8, "ch_mult": [1, 2]}


def tiles(n, size=8, photo=0):
    """``n`` distinct ``size x size`` RGB tiles (uint8, ``(n, size, size, 3)``) of a photo."""
    img = PHOTOS[photo]
    return np.stack([img[37 * i % 400: 37 * i % 400 + size, 23 * i: 23 * i + size]
                     for i in range(n)])


def write(folder, arrays, suffix=".png", mode=None):
    """Each array as an image file ``folder/tNN.suffix``; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    for i, a in enumerate(arrays):
        im = Image.fromarray(a)
        (im.convert(mode) if mode else im).save(os.path.join(folder, f"t{i:02d}{suffix}"))
    return folder


def raw(x):
    """Pixel values of model values."""
    return x * 128 + 127.5


def rows(x):
    return {tuple(r.flatten().tolist()) for r in x}


@pytest.fixture
def rgb(tmp_path):
    return write(tmp_path / "rgb", tiles(12))


@pytest.fixture
def classes(tmp_path):
    write(tmp_path / "cls" / "b_sea", tiles(6, photo=0))
    return write(tmp_path / "cls" / "a_flower", tiles(5, photo=1)).parent


# ----- reading -----------------------------------------------------------------------------------
def test_rgb_folder_holds_its_pixels_exactly(rgb):
    ds = get_dataset(rgb)
    assert ds.is_image and ds.pixel_bits == 8 and ds.event_shape == (3, 8, 8)
    assert ds.num_classes == 0 and ds.train_labels is None
    assert ds.train.shape[0] == 11 and ds.test.shape[0] == 1  # 10% held out, at least one
    every = torch.cat([ds.train, ds.test])
    assert torch.equal(raw(every), raw(every).round()) and raw(every).max() <= 255
    want = torch.from_numpy(tiles(12)).permute(0, 3, 1, 2).float()
    assert rows(raw(every)) == rows(want)
    assert -1 < every.min() and every.max() < 1


def test_grayscale_channels_and_mixed_folders(tmp_path):
    gray = write(tmp_path / "gray", tiles(4), mode="L")
    ds = get_dataset(gray)
    assert ds.event_shape == (1, 8, 8)
    as_rgb = get_dataset(gray, channels=3)
    assert as_rgb.event_shape == (3, 8, 8)
    assert torch.equal(as_rgb.train, ds.train.expand(-1, 3, -1, -1))
    Image.fromarray(tiles(1)[0]).save(gray / "colour.png")  # RGB beside grayscale
    with pytest.raises(ValueError, match=r"gray'.*\[1, 3\].*--channels"):
        get_dataset(gray)
    assert get_dataset(gray, channels=1).event_shape == (1, 8, 8)
    rgba = write(tmp_path / "rgba", tiles(2), mode="RGBA")
    assert get_dataset(rgba).event_shape == (4, 8, 8)
    with pytest.raises(ValueError, match="channels.*1, 3, 4"):
        get_dataset(rgba, channels=2)


def test_class_folders_are_labels_in_sorted_order(classes, capsys):
    ds = get_dataset(classes)
    assert ds.num_classes == 2
    assert sorted(ds.train_source.files) == ds.train_source.files
    for name, label in zip(ds.train_source.files, ds.train_labels.tolist()):
        assert label == (0 if name.startswith("a_flower/") else 1)
    write(classes, tiles(3, photo=1))  # top-level images beside class folders: left out
    ds = get_dataset(classes)
    said = capsys.readouterr().err  # how many images are left out, and where
    assert ds.train_size + len(ds.test) == 11 and "3 image(s)" in said and str(classes) in said


def test_resolution_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    wide = PHOTOS[0][100:108, 200:216]  # 8 high, 16 wide: no resize, columns 4..11 kept
    big = PHOTOS[1][:32, :48]
    folder = write(tmp_path / "sizes", [wide, big])
    with pytest.raises(ValueError, match=re.escape(repr(str(folder))) + ".*--resolution"):
        get_dataset(folder)
    ds = get_dataset(folder, resolution=8)
    assert ds.event_shape == (3, 8, 8)
    every = raw(torch.cat([ds.train, ds.test]))
    crop = torch.from_numpy(wide[:, 4:12].copy()).permute(2, 0, 1).float()
    assert crop.tolist() in every.tolist()
    small = Image.fromarray(big).resize((12, 8), Image.Resampling.LANCZOS).crop((2, 0, 10, 8))
    assert torch.from_numpy(np.array(small)).permute(2, 0, 1).float().tolist() in every.tolist()


def test_jpeg_corrupt_and_empty_folders(tmp_path, capsys):
    folder = write(tmp_path / "jpeg", tiles(3), suffix=".jpg")
    (folder / "notes.txt").write_text("not an image, not listed")
    (folder / "broken.png").write_bytes(b"not a png at all")
    ds = get_dataset(folder)
    assert ds.event_shape == (3, 8, 8) and ds.train_size + len(ds.test) == 3
    assert "broken.png" in capsys.readouterr().err  # the file left out is named
    png = (write(tmp_path / "png", tiles(1)) / "t00.png").read_bytes()
    (folder / "cut.png").write_bytes(png[:len(png) // 2])  # opens, then fails to decode
    with pytest.raises(ValueError, match=re.escape(str(folder / "cut.png"))):
        get_dataset(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "empty"))):
        get_dataset(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "bad"))):
        get_dataset(tmp_path / "bad")


def test_uint8_arrays_in_each_layout_are_images(tmp_path):
    x = tiles(10)  # (N, H, W, C)
    want = torch.from_numpy(x).permute(0, 3, 1, 2)
    for name, arr in [("last", x), ("first", x.transpose(0, 3, 1, 2))]:
        np.savez(tmp_path / f"{name}.npz", x=arr, y=np.arange(10) % 2)
        ds = get_dataset(str(tmp_path / f"{name}.npz"))
        assert ds.pixel_bits == 8 and ds.event_shape == (3, 8, 8) and ds.num_classes == 2
        assert rows(raw(torch.cat([ds.train, ds.test]))) == rows(want.float())
    np.save(tmp_path / "gray.npy", x[..., 0])
    assert get_dataset(str(tmp_path / "gray.npy")).event_shape == (1, 8, 8)
    np.save(tmp_path / "float.npy", x.astype(np.float32))  # float arrays: as stored
    ds = get_dataset(str(tmp_path / "float.npy"))
    assert ds.pixel_bits is None and ds.raw_scale == 1 and ds.event_shape == (8, 8, 3)
    np.save(tmp_path / "two.npy", np.zeros((4, 5, 6, 7), np.uint8))
    with pytest.raises(ValueError, match=r"two\.npy.*\(4, 5, 6, 7\)"):
        get_dataset(str(tmp_path / "two.npy"))
    with pytest.raises(ValueError, match=r"\bflip\b.*'digits'"):
        get_dataset("digits", flip=True)
    with pytest.raises(ValueError, match=r"\bresolution\b.*'moons'"):
        get_dataset("moons", resolution=8)


def test_held_out_split_does_not_depend_on_the_listing_order(rgb, monkeypatch):
    ds = get_dataset(rgb, test_fraction=0.25)
    walk = os.walk

    def reversed_walk(*args, **kwargs):
        for folder, dirs, names in walk(*args, **kwargs):
            yield folder, dirs, names[::-1]

    monkeypatch.setattr(images.os, "walk", reversed_walk)
    again = get_dataset(rgb, test_fraction=0.25)
    assert torch.equal(ds.test, again.test) and torch.equal(ds.train, again.train)
    assert len(ds.test) == 3 and not rows(ds.test) & rows(ds.train)  # never trained on
    rebuilt = run_dataset({"data": str(rgb), "data_shape": [3, 8, 8]})  # as likelihood does
    assert torch.equal(rebuilt.test, get_dataset(rgb).test)
    with pytest.raises(ValueError, match=re.escape(repr(str(rgb))) + r".*\bdata_shape\b"):
        run_dataset({"data": str(rgb), "data_shape": [1, 8, 8]})


# ----- the batch stream ---------------------------------------------------------------------------
def test_streamed_batches_equal_in_memory_batches(classes):
    memory = get_dataset(classes, flip=True, in_memory=True)
    streamed = get_dataset(classes, flip=True, in_memory=False)
    assert streamed.train is None and streamed.std() == memory.std()
    share = slice(2, 7)
    a = list(StepBatches(memory, 3, 4, 9, 8, share))
    b = list(StepBatches(streamed, 3, 4, 9, 8, share, workers=2))
    assert len(a) == len(b) == 5
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape == (5, 3, 8, 8) and torch.equal(xa, xb) and torch.equal(ya, yb)
    idx, flips = images.step_draw(3, 4, memory.train_size, 8, True)
    assert flips.any() and not flips.all()  # both kinds at this seed and step
    x = a[0][0]
    for k, (i, f) in enumerate(zip(idx[share], flips[share])):
        assert torch.equal(x[k], memory.train[i].flip(-1) if f else memory.train[i])



def test_a_stream_stops_its_workers_when_done_or_dropped(classes):
    """Workers that ignore SIGTERM are never left running: not after the last step, not after a
    stream is dropped half-read (at once, with the garbage collector off)."""
    streamed = get_dataset(classes, flip=True, in_memory=False)
    gc.disable()
    try:
        assert len(list(StepBatches(streamed, 3, 0, 4, 8, slice(0, 8), workers=2))) == 4
        assert multiprocessing.active_children() == []
        half = StepBatches(streamed, 3, 0, 4, 8, slice(0, 8), workers=2)
        next(half)
        assert len(multiprocessing.active_children()) == 2
        del half
        assert multiprocessing.active_children() == []
    finally:
        gc.enable()


HALF_READ = """
import sys
from scoresde.data import get_dataset
from scoresde.images import StepBatches
KEPT = StepBatches(get_dataset(sys.argv[1], in_memory=False), 3, 0, 4, 8, slice(0, 8), workers=2)
next(KEPT)
print("read", flush=True)
"""


def test_a_process_holding_a_half_read_stream_still_exits(classes):
    """At exit, the multiprocessing module terminates (SIGTERM, which these workers ignore) and
    then joins every worker without a timeout: the streams still running are closed first."""
    done = run_python("-c", HALF_READ, classes, timeout=60)  # would wait for ever
    assert done.returncode == 0 and done.stdout == "read\n", done.stderr[-2000:]


def test_batches_are_made_on_the_training_device(classes):
    """In memory, the images are copied to the device once and each batch is indexed there (no
    copy from the host per step); streamed batches are sent there as uint8 and converted on it.
    The "meta" device stands in for a GPU: it has shapes and devices but no values."""
    memory = get_dataset(classes, flip=True, in_memory=True)
    streamed = get_dataset(classes, flip=True, in_memory=False)
    for ds in (memory, streamed):
        x, y = next(StepBatches(ds, 3, 0, 2, 8, slice(0, 8), workers=0, device="meta"))
        assert x.device.type == y.device.type == "meta" and x.shape == (8, 3, 8, 8)
        assert x.dtype == torch.float32
    assert memory.on(torch.device("meta"))[0] is memory.on(torch.device("meta"))[0]  # once

# A DDPM++ with dropout draws from PyTorch's global generator, which the loader must leave alone.
DROPOUT_NET = dict(net="ddpmpp", net_params={"nf": 8, "ch_mult": [1, 2], "num_res_blocks": 1,
                                             "attn_resolutions": [], "dropout": 0.1})


@pytest.mark.parametrize("net", [dict(net_params=SMALL_NET), DROPOUT_NET], ids=["unet", "dropout"])
def test_resume_with_the_streaming_loader_is_bit_identical(classes, tmp_path, monkeypatch, net):
    opts = dict(data=classes, batch_size=6, flip=True, conditional=True, progress=False, steps=6,
                checkpoint_every=3, log_every=1, **net)
    train(tmp_path / "memory", **opts)
    monkeypatch.setattr(images, "IN_MEMORY_BYTES", 0)  # every folder streams
    monkeypatch.setattr(images, "WORKERS", 2)
    train(tmp_path / "whole", **opts)
    with pytest.raises(Interrupt):
        train(tmp_path / "cut", **opts, callback=stop_at(4))
    train(tmp_path / "cut", **opts, resume=True)
    for run in ("whole", "cut"):
        assert_equal_states(run_states(tmp_path / run), run_states(tmp_path / "memory"))


def test_a_folder_runs_classes_are_summed_up_recorded_and_taken_by_name(classes, tmp_path,
                                                                         capsys):
    run = tmp_path / "run"
    train(run, data=classes, conditional=True, steps=2, batch_size=4, net_params=SMALL_NET)
    summary = capsys.readouterr().err.splitlines()[0]
    # the data, its count, kind and shape, and its classes by name
    for fact in (str(classes), "10", "8-bit", "3x8x8", "a_flower", "b_sea"):
        assert fact in summary, (fact, summary)
    assert read_config(run)["class_names"] == ["a_flower", "b_sea"]
    common = ["sample", "--run", run, "--solver", "euler", "--steps", 2, "--n", 4, "--json"]
    by_name = invoke(*common, "--label", "b_sea", "--out", tmp_path / "name.npz")
    by_number = invoke(*common, "--label", 1, "--out", tmp_path / "number.npz")
    assert by_name.exit_code == by_number.exit_code == 0, by_name.output
    assert json.loads(by_name.stdout)["nfe"] == json.loads(by_number.stdout)["nfe"]
    with np.load(tmp_path / "name.npz") as a, np.load(tmp_path / "number.npz") as b:
        assert np.array_equal(a["samples"], b["samples"]) and (a["labels"] == 1).all()
    wrong = invoke(*common, "--label", "b_see", "--out", tmp_path / "x.npz")
    assert_refused(wrong, 2, "--label", "'b_see'", "a_flower, b_sea")
    assert not (tmp_path / "x.npz").exists()


def test_sample_images_are_png_files_of_the_quantised_samples(classes, tmp_path):
    run = tmp_path / "run"
    train(run, data=classes, conditional=True, steps=2, batch_size=4, net_params=SMALL_NET,
          progress=False)
    out, folder = tmp_path / "s.npz", tmp_path / "pngs"
    result = invoke("sample", "--run", run, "--solver", "euler", "--steps", 2, "--n", 6,
                    "--label", "all", "--out", out, "--images", folder, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == str(folder)
    with np.load(out) as f:
        samples, labels = f["samples"], f["labels"]
    want = np.clip(np.round(raw(samples)), 0, 255).astype(np.uint8)  # the levels of 8-bit data
    names = ["a_flower", "b_sea"]
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == sorted(
        f"{names[k]}/{i:06d}.png" for i, k in enumerate(labels))
    for i, k in enumerate(labels):
        png = np.asarray(Image.open(folder / names[k] / f"{i:06d}.png"))  # (H, W, 3)
        assert np.array_equal(png, want[i].transpose(1, 2, 0))
    again = invoke("sample", "--run", run, "--solver", "euler", "--steps", 2, "--n", 6,
                   "--out", tmp_path / "t.npz", "--images", folder)  # never into a full folder
    assert_refused(again, 2, "--images", folder)
    assert not (tmp_path / "t.npz").exists()


def test_levels_of_values_map_the_datas_range_onto_0_to_255(tmp_path):
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2)  # digits: raw 8 x + 8, 0..16
    levels = images.sample_levels(x, raw_scale=8.0, raw_offset=8.0, pixel_bits=None)
    assert levels.dtype == np.uint8 and levels.ravel().tolist() == [0, 128, 255, 255]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("kept")
    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path / "full"))):
        images.save_images(tmp_path / "full", levels)
    assert images.save_images(tmp_path / "new", levels) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "new"]  # no temporary left


def test_class_names_win_over_numbers_and_fid_steps_follow_the_solver():
    from scoresde.quality import FID_SOLVER, FID_STEPS, fid_steps
    from scoresde.tasks.conditions import named_label

    names = ["1", "10", "2"]  # folders 1/, 10/, 2/: labels 0, 1, 2 in sorted order
    assert [named_label(t, names) for t in ("1", "10", "2", "5", "all")] == \
        ["0", "1", "2", "5", "all"]
    assert named_label(3, names) == 3 and named_label("3", None) == "3"
    assert fid_steps(FID_SOLVER) == FID_STEPS and fid_steps("pc") == 1000


def test_sample_images_refuse_points(tmp_path):
    train(tmp_path / "toy", data="moons", steps=1, batch_size=8, progress=False)
    result = invoke("sample", "--run", tmp_path / "toy", "--n", 4, "--steps", 2, "--images",
                    tmp_path / "pngs")
    assert_refused(result, 2, "--images")
    assert not (tmp_path / "pngs").exists()


def test_sample_images_never_take_the_folder_of_the_samples_file(classes, tmp_path):
    train(tmp_path / "run", data=classes, steps=1, batch_size=4, net_params=SMALL_NET,
          progress=False)
    (tmp_path / "pngs").mkdir()
    result = invoke("sample", "--run", tmp_path / "run", "--n", 2, "--steps", 2, "--solver",
                    "euler", "--out", tmp_path / "pngs" / "s.npz", "--images", tmp_path / "pngs")
    assert_refused(result, 2, "--images")
    assert list((tmp_path / "pngs").iterdir()) == []  # refused before anything was drawn


def test_a_resolution_the_network_cannot_take_names_resolution(rgb, tmp_path):
    with pytest.raises(ValueError, match="--resolution"):
        train(tmp_path / "run", data=rgb, resolution=7, steps=1, progress=False)


def test_old_configs_get_the_data_options():
    old = upgrade_config({"data": "moons"})
    assert (old["channels"], old["resolution"], old["flip"], old["pixel_bits"]) == \
        (None, None, False, None)


# ----- through the CLI ---------------------------------------------------------------------------
CLI_NET = ["--steps", 3, "--batch-size", 8, "--quiet"]


def _cli_train(tmp_path, monkeypatch, folder, *extra):
    """``scoresde train`` on ``folder`` with the small U-Net; returns the run folder."""
    import scoresde.training as training

    real = training.train
    monkeypatch.setattr(training, "train",
                        lambda *a, **kw: real(*a, **dict(kw, net_params=SMALL_NET)))
    run = tmp_path / "run"
    result = invoke("train", "--data", folder, "--run", run, *CLI_NET, *extra)
    assert result.exit_code == 0, result.output
    return run


def test_cli_trains_samples_and_measures_bits_per_dim(classes, tmp_path, monkeypatch):
    run = _cli_train(tmp_path, monkeypatch, classes, "--conditional", "--flip", "--resolution",
                     8)
    config = read_config(run)
    assert (config["channels"], config["resolution"], config["flip"], config["pixel_bits"]) \
        == (None, 8, True, 8)
    out = tmp_path / "s.npz"
    result = invoke("sample", "--run", run, "--solver", "em", "--steps", 4, "--n", 4,
                    "--label", "all", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.png").is_file() and np.load(out)["raw"].shape == (4, 3, 8, 8)
    result = invoke("likelihood", "--run", run, "--n", 2, "--json", "--rtol", 1e-3,
                    "--atol", 1e-3)
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["n"] == 1 and 0 < record["bits_per_dim"] < 100  # the one held-out image
    # the bound in bits of the levels and the log-probability agree
    assert record["bits_per_dim"] == pytest.approx(
        -record["log_likelihood"] / (3 * 8 * 8 * np.log(2)))


def test_cli_grayscale_folder_and_its_errors(tmp_path, monkeypatch):
    gray = write(tmp_path / "gray", tiles(6), mode="L")
    run = _cli_train(tmp_path, monkeypatch, gray)
    result = invoke("sample", "--run", run, "--solver", "em", "--steps", 3, "--n", 2)
    assert result.exit_code == 0, result.output
    Image.fromarray(PHOTOS[0][:16, :16]).convert("L").save(gray / "big.png")
    result = invoke("train", "--data", gray, "--run", tmp_path / "r2", *CLI_NET)
    assert_refused(result, 2, "--resolution")


def test_a_run_on_a_uint8_array_from_before_images_resumes_reading_stored_values(tmp_path,
                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save("u8.npy", tiles(12).transpose(0, 3, 1, 2).copy())  # (N, 3, 8, 8) uint8
    as_stored = get_dataset("u8.npy", pixels=False)
    assert as_stored.pixel_bits is None and as_stored.raw_scale == 1.0
    assert float(as_stored.train.max()) > 100  # values as stored, 0..255
    np.save("f.npy", np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"f\.npy.*\bpixels=True\b.*float32"):
        get_dataset("f.npy", pixels=True)
    train("run", data="u8.npy", pixels=False, steps=2, batch_size=4, net_params=SMALL_NET,
          progress=False, checkpoint_every=2)
    config = read_config("run")
    old = {k: v for k, v in config.items() if k not in (  # what a run of that version wrote
        "channels", "resolution", "flip", "pixels", "pixel_bits", "precision", "batch_gpu",
        "compile", "channels_last", "sample_every", "num_params", "schema")}
    with open("run/config.json", "w") as f:
        json.dump(old, f)
    assert upgrade_config(old)["pixels"] is False
    result = invoke("train", "--resume", "--run", "run", "--steps", 3, "--quiet")
    assert result.exit_code == 0, result.output
    assert load_checkpoint("run/checkpoint.pt")["step"] == 3
    assert run_dataset(upgrade_config(old)).raw_scale == 1.0
