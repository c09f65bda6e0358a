"""Toys with exact densities and entropies; data sets: toys, digits, user arrays."""

import math

import numpy as np
import pytest
import torch

from scoresde import data, toys


@pytest.mark.parametrize("name", list(toys.TOYS))
def test_toys_are_seeded_finite_2d(name):
    a = toys.TOYS[name](500, torch.Generator().manual_seed(0))
    b = toys.TOYS[name](500, torch.Generator().manual_seed(0))
    c = toys.TOYS[name](500, torch.Generator().manual_seed(1))
    assert a.shape == (500, 2) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_checkerboard_density_and_entropy():
    x = toys.TOYS["checkerboard"](5000, torch.Generator().manual_seed(0))
    assert torch.equal(toys.toy_log_prob("checkerboard")(x),
                       torch.full((5000,), -math.log(32), dtype=torch.float64))
    assert toys.toy_entropy("checkerboard") == math.log(32)


@pytest.mark.slow  # 40,000 draws against a 201 x 201 quadrature grid
@pytest.mark.parametrize("name", ["moons", "2spirals"])
def test_curve_densities_integrate_to_one_and_match_samples(name):
    """The quadrature density integrates to 1 on a grid, and gives the mass of a box that the
    sample fraction matches within 5 binomial standard errors."""
    log_prob = toys.toy_log_prob(name)
    ticks = torch.linspace(-5, 5, 201, dtype=torch.float64)  # spacing 0.05 < noise / 2
    grid = torch.cartesian_prod(ticks, ticks)
    dens = log_prob(grid).exp().reshape(201, 201)
    assert abs(float(torch.trapezoid(torch.trapezoid(dens, ticks), ticks)) - 1) < 1e-3
    inside = (ticks >= 0) & (ticks <= 1)  # box [0, 1] x [0, 1]: the first coordinate is rows
    mass = float(torch.trapezoid(torch.trapezoid(dens[inside][:, inside], ticks[inside]),
                                 ticks[inside]))
    n = 40_000
    x = toys.TOYS[name](n, torch.Generator().manual_seed(5)).double()
    frac = float(((x >= 0) & (x <= 1)).all(1).double().mean())
    assert abs(frac - mass) < 5 * math.sqrt(mass * (1 - mass) / n)


def test_8gaussians_entropy_matches_separated_components():
    """Components 6 std apart barely overlap: H ~ ln 8 + ln(2 pi e sigma^2), up to ~1e-3; the
    Monte Carlo estimate has a standard error ~0.005, so 0.02 is 4 standard errors."""
    sigma2 = 0.5**2 / 2
    expected = math.log(8) + math.log(2 * math.pi * math.e * sigma2)
    assert abs(toys.toy_entropy("8gaussians") - expected) < 0.02
    assert toys.toy_entropy("pinwheel") is None


def test_digits():
    ds = data.get_dataset("digits")
    assert ds.is_image and ds.event_shape == (1, 8, 8) and ds.num_classes == 10
    raw = ds.train * ds.raw_scale + ds.raw_offset
    assert raw.min() == 0 and raw.max() == 16 and torch.equal(raw, raw.round())
    assert ds.train.shape[0] + ds.test.shape[0] == 1797
    x, y = ds.sample(7, torch.Generator().manual_seed(0))
    assert x.shape == (7, 1, 8, 8) and y.shape == (7,)


def test_user_arrays(tmp_path):
    arr = np.random.default_rng(0).normal(size=(50, 3, 2)).astype(np.float32)
    np.save(tmp_path / "a.npy", arr)
    ds = data.get_dataset(str(tmp_path / "a.npy"))
    assert ds.event_shape == (3, 2) and not ds.is_image and ds.test.shape == (5, 3, 2)
    assert torch.equal(torch.cat([ds.train, ds.test]).sort(0).values,
                       torch.from_numpy(arr).sort(0).values)
    np.savez(tmp_path / "b.npz", x=arr, y=np.arange(50) % 3)
    ds = data.get_dataset(str(tmp_path / "b.npz"))
    assert ds.num_classes == 3 and ds.train_labels.shape == (45,)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((0, 2)), "non-empty"),
    (np.zeros(5), "shape"),
    (np.array([[0.0, np.nan]]), "NaN"),
    (np.array([["a", "b"]]), "numeric"),
])
def test_bad_arrays_are_refused(tmp_path, bad, message):
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match=message):
        data.get_dataset(str(tmp_path / "bad.npy"))


def test_bad_names_and_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'mnist'"):
        data.get_dataset("mnist")
    with pytest.raises(ValueError, match="none\\.npy"):
        data.get_dataset(str(tmp_path / "none.npy"))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickles"):
        data.get_dataset(str(tmp_path / "obj.npy"))
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 2)), b=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"two\.npz.*'x'"):
        data.get_dataset(str(tmp_path / "two.npz"))
    with pytest.raises(TypeError, match=r"^data\b.*\bint\b"):
        data.get_dataset(3)


def test_few_step_statistics_are_a_covariance_up_to_the_limit_and_a_std_above(tmp_path):
    """What scoresde sample and scoresde fid give a few-step solver: the mean and covariance of
    the training data up to COVARIANCE_MAX_DIM entries per sample, the mean and one standard
    deviation above (the run's sigma_data when given)."""
    from scoresde.data import COVARIANCE_MAX_DIM

    small = data.get_dataset("digits").sampling_statistics()
    mean, cov = data.get_dataset("digits").moments()
    assert set(small) == {"data_mean", "data_cov"}
    assert torch.equal(small["data_mean"], mean) and torch.equal(small["data_cov"], cov)
    x = np.random.default_rng(0).normal(0.3, 2.0, (40, 3, 19, 19)).astype(np.float32)
    assert x[0].size > COVARIANCE_MAX_DIM
    np.save(tmp_path / "wide.npy", x)
    wide = data.get_dataset(str(tmp_path / "wide.npy"))
    stats = wide.sampling_statistics()
    assert set(stats) == {"data_mean", "data_std"} and stats["data_std"] == wide.std()
    assert torch.allclose(stats["data_mean"], wide.train.double().reshape(len(wide.train), -1)
                          .mean(0))
    assert wide.sampling_statistics(0.5)["data_std"] == 0.5
