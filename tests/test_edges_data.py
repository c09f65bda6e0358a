"""Data at the edges: link loops and huge folders, 16-bit images, the reference cache's key and
poisoned entries, complex arrays, and few-step statistics that describe no usable window."""

import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from scoresde import get_sde, images
from scoresde.data import get_dataset, load_mask
from scoresde.reference import _fingerprint, reference_stats
from scoresde.sampling import sample
from scoresde.sampling.grids import default_eps, get_grid

# One number per image (its mean grey level): FID-sized statistics of a few images.
MEAN_GREY = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


def write_grey(folder, n, seed=0):
    """``n`` random 8x8 greyscale PNGs ``folder/gNN.png``; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
            os.path.join(folder, f"g{i:02d}.png"))
    return folder


def count(ds):
    return ds.train_size + len(ds.test)


# ----- walking a folder ---------------------------------------------------------------------------
def test_a_link_loop_in_a_folder_lists_each_image_once_and_is_no_class(tmp_path):
    root = write_grey(tmp_path / "data", 4)
    os.symlink(".", root / "a")  # a -> . : the folder inside itself
    ds = get_dataset(str(root))
    assert ds.num_classes == 0 and count(ds) == 4
    assert images.list_images(str(root)) == [f"g{i:02d}.png" for i in range(4)]


def test_link_loops_that_branch_end_at_once(tmp_path):
    """Two loops make 2^40 paths to walk without loop checks: a subprocess bounds the time."""
    flat = write_grey(tmp_path / "flat", 3)
    os.symlink(".", flat / "a")
    os.symlink(".", flat / "b")
    nested = tmp_path / "nested"
    write_grey(nested / "cats", 3)
    write_grey(nested / "dogs", 2, seed=1)
    os.symlink("..", nested / "cats" / "up")
    os.symlink(nested, nested / "dogs" / "root")
    code = ("import sys; from scoresde.data import get_dataset\n"
            "for root in sys.argv[1:]:\n"
            "    ds = get_dataset(root); print(ds.train_size + len(ds.test), ds.num_classes)")
    out = subprocess.run([sys.executable, "-c", code, str(flat), str(nested)],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["3", "0", "5", "2"]


def test_links_to_class_folders_inside_are_skipped_and_those_outside_are_followed(tmp_path):
    root = tmp_path / "data"
    write_grey(root / "cats", 3)
    write_grey(tmp_path / "elsewhere" / "dogs", 2, seed=1)
    os.symlink(tmp_path / "elsewhere" / "dogs", root / "dogs")  # a data set linked in
    os.symlink("cats", root / "a_cats")  # another name for a class: not a class of its own
    ds = get_dataset(str(root))
    assert ds.num_classes == 2 and count(ds) == 5
    assert images.list_images(str(root)) == ["cats/g00.png", "cats/g01.png", "cats/g02.png",
                                             "dogs/g00.png", "dogs/g01.png"]


def test_a_walk_past_the_bound_names_the_folder_and_the_bound(tmp_path, monkeypatch):
    root = write_grey(tmp_path / "data", 5)
    monkeypatch.setattr(images, "MAX_ENTRIES", 4)
    message = rf"\b4\b.*{re.escape(repr(str(root)))}"  # the bound, the folder
    with pytest.raises(ValueError, match=message):
        get_dataset(str(root))
    with pytest.raises(ValueError, match=message):
        _fingerprint(str(root))  # the cache's key walks the same way
    monkeypatch.setattr(images, "MAX_ENTRIES", 5)
    assert count(get_dataset(str(root))) == 5


# ----- 16-bit greyscale ---------------------------------------------------------------------------
def test_sixteen_bit_greyscale_is_scaled_to_eight_bits(tmp_path):
    """round(v / 257): 0..65535 spans 0..255 and a 16-bit copy 257 p of level p reads as p."""
    v = np.array([[0, 65535, 257 * 100, 128], [129, 30000, 257 * 7 + 128, 65534]])
    want = np.round(v / 257)
    (tmp_path / "png").mkdir()
    Image.fromarray(v.astype(np.uint16)).save(tmp_path / "png" / "a.png")  # mode I;16
    ds = get_dataset(str(tmp_path / "png"))
    assert ds.event_shape == (1, 2, 4) and np.array_equal(levels(ds.test[0, 0]), want)
    rgb = get_dataset(str(tmp_path / "png"), channels=3)
    assert np.array_equal(levels(rgb.test[0]), np.stack([want] * 3))
    cropped = get_dataset(str(tmp_path / "png"), resolution=2)  # the centre 2 x 2
    assert np.array_equal(levels(cropped.test[0, 0]), want[:, 1:3])
    resized = get_dataset(str(tmp_path / "png"), resolution=1)  # from 8 bits, not clipped
    assert 0 < levels(resized.test).min() <= levels(resized.test).max() < 255
    folder = tmp_path / "modes"
    folder.mkdir()
    Image.fromarray(v.astype(np.uint16)).save(folder / "a.png")
    Image.fromarray(v.astype(">u2")).save(folder / "b.tif")  # mode I;16B
    Image.fromarray(v.astype(np.int32)).save(folder / "c.tif")  # mode I
    modes = set()
    for name in os.listdir(folder):
        with Image.open(folder / name) as im:
            modes.add(im.mode)
    assert modes == {"I;16", "I;16B", "I"}
    ds = get_dataset(str(folder), test_fraction=0.01)  # one channel each
    assert all(np.array_equal(levels(x[0]), want) for x in torch.cat([ds.train, ds.test]))


def levels(x):
    """Pixel levels 0..255 of model values."""
    return (x * 128 + 127.5).numpy()


# ----- the reference-statistics cache -------------------------------------------------------------
def test_the_cache_key_sees_data_changed_behind_a_link(tmp_path):
    root, target = tmp_path / "data", write_grey(tmp_path / "elsewhere" / "g", 8)
    write_grey(root / "h", 8, seed=1)
    os.symlink(target, root / "g")  # class g is a link to a folder elsewhere
    first = reference_stats(get_dataset(str(root)), MEAN_GREY, cache=tmp_path / "cache")
    key = _fingerprint(str(root))
    for name in os.listdir(target):  # every image behind the link turns white
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(target / name)
        os.utime(target / name, ns=(1, 1))
    assert _fingerprint(str(root)) != key
    ds = get_dataset(str(root))
    again = reference_stats(ds, MEAN_GREY, cache=tmp_path / "cache")
    assert again.path != first.path and not np.array_equal(again.mu, first.mu)
    assert np.array_equal(again.mu, reference_stats(ds, MEAN_GREY, cache=False).mu)


def _poison(path, how):
    with np.load(path) as f:
        good = dict(f)
    if how == "bad zip":
        path.write_bytes(b"PK\x03\x04 cut short")
        return
    if how == "an .npy array":
        with path.open("wb") as fh:
            np.save(fh, good["mu"])
        return
    if how == "no sigma":
        del good["sigma"]
    elif how == "another key":
        good["key"] = np.array(str(good["key"]).replace('"seed": 0', '"seed": 1'))
    elif how == "mu of the wrong shape":
        good["mu"] = np.zeros((good["mu"].shape[0], 2))
    elif how == "sigma of the wrong shape":
        good["sigma"] = np.zeros(good["sigma"].shape[0] + 1)
    elif how == "features of the wrong shape":
        good["features"] = good["features"][:3]
    elif how == "text in mu":
        good["mu"] = np.array(["a"] * good["mu"].shape[0])
    elif how == "not finite":
        good["sigma"] = np.full_like(good["sigma"], np.nan)
    elif how == "another count":
        good["n"] = np.array(good["n"] + 1)
    np.savez(path, **good)


@pytest.mark.parametrize("how", ["bad zip", "an .npy array", "no sigma", "another key",
                                 "mu of the wrong shape", "sigma of the wrong shape",
                                 "features of the wrong shape", "text in mu", "not finite",
                                 "another count"])
def test_a_poisoned_cache_file_is_named_recomputed_and_rewritten(tmp_path, how):
    ds = get_dataset(write_grey(tmp_path / "data", 12))
    good = reference_stats(ds, MEAN_GREY, cache=tmp_path)
    _poison(good.path, how)
    with pytest.warns(UserWarning, match=re.escape(str(good.path))):  # named; then rewritten
        again = reference_stats(ds, MEAN_GREY, cache=tmp_path)
    assert again.path == good.path and np.array_equal(again.mu, good.mu)
    assert np.array_equal(again.sigma, good.sigma) and torch.equal(again.features, good.features)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file was written again: read back, no warning
        read = reference_stats(ds, MEAN_GREY, cache=tmp_path)
    assert np.array_equal(read.sigma, good.sigma)
    assert sorted(os.listdir(good.path.parent)) == [good.path.name]  # no temporary left


# ----- arrays that are not real numbers -----------------------------------------------------------
def test_complex_and_non_numeric_points_are_refused(tmp_path):
    z = np.random.default_rng(0).normal(size=(10, 2)) * (1 + 1j)
    np.save(tmp_path / "z.npy", z)
    np.savez(tmp_path / "z.npz", x=z.astype(np.complex64))
    for name in ("z.npy", "z.npz"):
        with pytest.raises(ValueError, match=r"\bcomplex(128|64)\b.*\bx\.real\b"):
            get_dataset(str(tmp_path / name))
    for name, x in [("b.npy", np.ones((10, 2), bool)), ("s.npy", np.full((10, 2), "1.5"))]:
        np.save(tmp_path / name, x)
        with pytest.raises(ValueError, match=r"\bdtype (bool|<U3)"):
            get_dataset(str(tmp_path / name))
    np.savez(tmp_path / "mask.npz", mask=np.ones(2, bool), values=np.ones(2) * 1j)
    with pytest.raises(ValueError, match=r"mask\.npz\b.*\bvalues\b"):
        load_mask(tmp_path / "mask.npz", (2,))


# ----- few-step statistics at the edges -----------------------------------------------------------
def _all(*facts):
    """A pattern for a one-line message that holds each of ``facts``, in any order."""
    return "^" + "".join(f"(?=.*{re.escape(fact)})" for fact in facts)


def gaussian_score(sde, var):
    """The exact score of N(0, var I) data under ``sde``."""

    def score(x, t):
        m, s = sde.marginal_coeffs(t)
        return -x / (m[:, None] ** 2 * var + s[:, None] ** 2)

    return score


@pytest.mark.parametrize("points,fact", [
    (np.array([[1.0, 2.0]]), "2 points"),  # needed, and the data has 1
    (np.ones((5, 2)), "zero spread"),
])
@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc"])
def test_statistics_of_one_point_or_equal_points_fall_back_to_the_default_grid(tmp_path, points,
                                                                                fact, solver):
    np.save(tmp_path / "p.npy", points.astype(np.float32))
    ds = get_dataset(str(tmp_path / "p.npy"))
    said = _all(repr(str(tmp_path / "p.npy")), fact, "default grid")  # the data, why, what then
    with pytest.warns(UserWarning, match=said):
        stats = ds.sampling_statistics()
    assert stats == {}
    sde = get_sde("vp")
    x, info = sample(lambda x, t: -x, sde, (8, 2), solver=solver, steps=5,
                     generator=torch.Generator().manual_seed(0), **stats)
    assert torch.isfinite(x).all() and info["grid_name"] == "edm"


def test_statistics_that_are_not_finite_fall_back_with_a_warning(tmp_path):
    x = np.random.default_rng(0).normal(size=(4, 3, 19, 19)).astype(np.float32)  # D > 1024
    np.save(tmp_path / "wide.npy", x)
    ds = get_dataset(str(tmp_path / "wide.npy"))
    with pytest.warns(UserWarning, match=_all(repr(str(tmp_path / "wide.npy")), "not finite")):
        assert ds.sampling_statistics(float("nan")) == {}


@pytest.mark.parametrize("sde_name,scale", [("ve", 1e4), ("vp", 1e-3)])
@pytest.mark.parametrize("solver", ["dpmpp_2m", "euler"])
def test_data_far_from_the_sdes_noise_range_gets_samples_and_a_warning(tmp_path, sde_name, scale,
                                                                       solver):
    """VE's sigma(T) = 50 is far below data of scale 1e4 (the window [0.01, 2] * 1e4 lies above
    it), VP's sigma(eps) ~ 0.01 far above data of scale 1e-3: a valid grid, and a warning."""
    sde = get_sde(sde_name)
    pts = np.random.default_rng(0).normal(size=(500, 2)) * scale
    np.save(tmp_path / "p.npy", pts)
    stats = get_dataset(str(tmp_path / "p.npy")).sampling_statistics()
    with pytest.warns(UserWarning, match=r"\bsigma\b.*sigma\(eps\), sigma\(T\)"):
        x, info = sample(gaussian_score(sde, scale**2), sde, (64, 2), solver=solver, steps=10,
                         generator=torch.Generator().manual_seed(0), **stats)
    ts = info["grid"]
    assert torch.isfinite(x).all() and not info["gaussian_head"]
    assert (ts[1:] < ts[:-1]).all() and ts[0] <= sde.T and ts[-1] > 0


def test_an_explicit_window_outside_the_sdes_noise_range_is_a_clear_error():
    sde = get_sde("ve")
    eps = default_eps(sde)
    with pytest.raises(ValueError, match=r"\bsigma_min=100\.0\b"):
        get_grid(sde, "log_snr", 5, eps, sigma_min=100.0)
    with pytest.raises(ValueError, match=r"\bsigma_max=1e-06\b"):
        get_grid(sde, "edm", 5, eps, sigma_max=1e-6)
    ts = get_grid(sde, "log_snr", 5, eps, sigma_min=10.0)  # inside: as before
    assert (ts[1:] < ts[:-1]).all()


def test_the_file_systems_root_is_no_folder_of_images():
    from scoresde.images import list_images

    with pytest.raises(ValueError, match="^'/'"):
        list_images("/")
