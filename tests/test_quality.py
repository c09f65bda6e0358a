"""FID, KID, precision/recall, the feature extractors and the reference cache: facts."""

import math
import os
import re

import numpy as np
import pytest
import torch
from torch import nn

from scoresde import get_sde
from scoresde.data import get_dataset
from scoresde.features import (DIGITS_WEIGHTS, digits_extractor, extract_features,
                               get_extractor, to_extractor_range,
                               torchscript_extractor)
from scoresde.metrics import (feature_stats, fid_from_features, frechet_distance, kid,
                              precision_recall)
from scoresde.quality import chunk_labels, image_features, reference_stats, sample_quality
from scoresde.targets import GaussianMixture


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


# ----- Fréchet distance ---------------------------------------------------------------------------
def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    closed = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed, abs=1e-12)


def test_frechet_distance_of_non_commuting_covariances_is_the_closed_form():
    # For 2x2 matrices tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)); M = S1 S2 has the eigenvalues
    # of the symmetric S1^1/2 S2 S1^1/2, so the distance is known exactly.
    s1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    mu1, mu2 = np.array([0.3, -1.0]), np.array([-0.7, 2.0])
    m = s1 @ s2
    trace_root = math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    closed = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_root
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed, rel=1e-12)


def test_fid_of_a_feature_set_against_itself_is_zero_to_round_off():
    g = _gen(1)
    x = torch.randn(2000, 64, generator=g) @ torch.randn(64, 64, generator=g) + 3
    # Its covariance has trace ~4000: round-off of the eigen decompositions is ~1e-12 of that.
    assert fid_from_features(x, x) < 1e-8
    # A rank-deficient covariance (features that are exactly 0, as dead ReLUs give) as well.
    x[:, :10] = 0
    assert fid_from_features(x, x) < 1e-8


def test_fid_needs_more_samples_than_features():
    x = torch.randn(64, 64, generator=_gen())
    with pytest.raises(ValueError, match=r"\bN=64\b.*\bF=64\b"):
        feature_stats(x)
    feature_stats(torch.randn(65, 64, generator=_gen()))  # N = F + 1 is enough


def test_fid_refuses_features_of_different_widths():
    with pytest.raises(ValueError, match=r"\b4\b.*\b5\b"):  # the two widths
        fid_from_features(torch.randn(50, 4), torch.randn(50, 5))


# ----- KID ----------------------------------------------------------------------------------------
def test_kid_of_two_draws_of_one_distribution_is_zero_within_its_standard_error():
    g = _gen(2)
    x, y = torch.randn(4000, 16, generator=g), torch.randn(4000, 16, generator=g)
    mean, se = kid(x, y, subset_size=400, generator=_gen(3))
    assert se > 0
    assert abs(mean) < 3 * se
    # The same test sees a shift of a fifth of a standard deviation in every feature.
    mean, se = kid(x, y + 0.2, subset_size=400, generator=_gen(3))
    assert mean > 10 * se


def test_kid_by_disjoint_subsets_and_a_fixed_seed_repeats():
    x, y = torch.randn(95, 8, generator=_gen(4)), torch.randn(300, 8, generator=_gen(5))
    a = kid(x, y, estimator="subsets", generator=_gen(6))
    assert a == kid(x, y, estimator="subsets", generator=_gen(6))
    # By hand: 95 // 10 = 9 points per subset, 10 subsets cut from the same two permutations;
    # each the U-statistic of (x.y / 8 + 1)^3 (diagonals left out within a set), then the mean
    # and std / sqrt(10).
    g = _gen(6)
    px, py = torch.randperm(95, generator=g), torch.randperm(300, generator=g)
    off = ~torch.eye(9, dtype=torch.bool)

    def k(u, v):
        return (u.double() @ v.double().T / 8 + 1) ** 3

    values = []
    for i in range(10):
        u, v = x[px[9 * i:9 * i + 9]], y[py[9 * i:9 * i + 9]]
        values.append(float(k(u, u)[off].mean() + k(v, v)[off].mean() - 2 * k(u, v).mean()))
    values = np.array(values)
    assert a[0] == pytest.approx(values.mean(), rel=1e-12, abs=1e-15)
    assert a[1] == pytest.approx(values.std(ddof=1) / math.sqrt(10), rel=1e-12)
    with pytest.raises(ValueError, match=r"^KID\b.*\b20\b.*\b19\b.*\b300$"):  # least, given
        kid(x[:19], y)


def test_kid_over_all_pairs_is_the_unbiased_mmd2_by_hand():
    x, y = torch.randn(40, 5, generator=_gen(7)), torch.randn(60, 5, generator=_gen(8))
    mean, se = kid(x, y)

    def k(u, v):
        return (u.double() @ v.double().T / 5 + 1) ** 3

    def off(kernel):
        return kernel[~torch.eye(len(kernel), dtype=torch.bool)].mean()

    assert mean == pytest.approx(float(off(k(x, x)) + off(k(y, y)) - 2 * k(x, y).mean()),
                                 rel=1e-10)
    assert se > 0 and kid(x, y) == (mean, se)  # no randomness


@pytest.mark.parametrize("shift", [0.0, 0.2])
def test_kids_standard_error_is_the_spread_over_independent_draws(shift):
    """300 independent draws of 400 + 400 points of 12 features: the mean standard error over
    the draws against the estimates' standard deviation. The ratio's noise is about 1/sqrt(2 *
    300) = 4% (one sd of a sample standard deviation), so 0.85 to 1.15 is over 3 of them. The
    all-pairs estimate is more precise than the disjoint subsets': 2.9 times between equal
    distributions, 1.25 times at this shift (measured), where the pairs within a subset already
    carry most of the information."""
    g = _gen(11)
    pairs, subsets, errors = [], [], []
    for _ in range(300):
        x, y = torch.randn(400, 12, generator=g), torch.randn(400, 12, generator=g) + shift
        mean, se = kid(x, y)
        pairs.append(mean)
        errors.append(se)
        subsets.append(kid(x, y, estimator="subsets", subset_size=40, generator=g)[0])
    spread = float(np.std(pairs, ddof=1))
    assert 0.85 < float(np.mean(errors)) / spread < 1.15
    assert float(np.std(subsets, ddof=1)) > (2 if shift == 0 else 1.1) * spread
    if shift == 0:
        assert abs(np.mean(pairs)) < 3 * spread / math.sqrt(300)  # unbiased: 0 on average


# ----- precision and recall -----------------------------------------------------------------------
def test_precision_and_recall_of_squares_that_overlap_by_half():
    # Real points uniform on [0, 1]^2, fake ones on [0.5, 1.5] x [0, 1]: half of each lies in
    # the other's support. The k-NN balls (radius ~ sqrt(3 / (pi n)) ~ 0.03 for n = 1000) reach
    # that far past the shared edge, so the shares exceed 1/2 by up to 0.03; the share of 1000
    # uniform points in one half has a binomial standard deviation of 0.016 (3 of them: 0.05).
    g = _gen(7)
    real = torch.rand(1000, 2, generator=g)
    fake = torch.rand(1000, 2, generator=g) + torch.tensor([0.5, 0.0])
    precision, recall = precision_recall(real, fake, generator=_gen(8))
    assert 0.45 < precision < 0.58 and 0.45 < recall < 0.58
    # Disjoint supports: nothing of either lies in the other's manifold.
    precision, recall = precision_recall(real, real + 2, generator=_gen(8))
    assert precision == 0 and recall == 0
    # Identical sets: every point is a centre of the other's balls.
    assert precision_recall(real, real.clone(), generator=_gen(8)) == (1.0, 1.0)


def test_precision_collapses_and_recall_stays_for_a_sample_of_half_the_support():
    g = _gen(9)
    real = torch.rand(1000, 2, generator=g)
    fake = torch.rand(1000, 2, generator=g) * torch.tensor([0.5, 1.0])  # the left half only
    precision, recall = precision_recall(real, fake, generator=_gen(8))
    assert precision > 0.97 and 0.45 < recall < 0.55


# ----- extractors ---------------------------------------------------------------------------------
class _DropoutFeatures(nn.Module):
    """The tests' extractor: a linear map with dropout, counting its calls."""

    def __init__(self):
        super().__init__()
        self.drop, self.lin = nn.Dropout(0.5), nn.Linear(64, 8)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.lin(self.drop(x.reshape(x.shape[0], -1) / 255))


def test_extractor_runs_in_eval_mode_whatever_the_caller_did(digits):
    torch.manual_seed(0)
    ours = _DropoutFeatures()
    x = torch.rand(50, 1, 8, 8) * 255
    with torch.no_grad():
        expected = ours.eval()(x).double()
    ours.train()
    assert torch.equal(extract_features(ours, x), expected)  # dropout was off
    assert ours.training and ours.drop.training  # and the caller's mode is back
    ours.drop.eval()  # a mixed mode comes back as it was, too
    extract_features(ours, x)
    assert ours.training and not ours.drop.training
    shipped = digits_extractor().train()
    images = image_features(shipped, digits.test, digits)
    assert torch.equal(images, image_features(shipped.eval(), digits.test, digits))
    # A module's method is that module: eval mode for the call, the caller's mode back after.
    net = digits_extractor().net.train()
    x = to_extractor_range(digits.test, raw_scale=8.0, raw_offset=8.0, pixel_bits=None)
    assert torch.equal(extract_features(net.features, x), images)
    assert net.training and net.body[-3].training


def test_wrong_image_shapes_give_one_clear_error():
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\).*\(5, 3, 8, 8\)"):
        extract_features(digits_extractor(), torch.zeros(5, 3, 8, 8))


def test_digits_weights_ship_as_a_state_dict(digits):
    state = torch.load(DIGITS_WEIGHTS, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    net = digits_extractor().net.eval()
    x = to_extractor_range(digits.test, raw_scale=8.0, raw_offset=8.0, pixel_bits=None)
    assert x.min() == 0 and x.max() == 255  # raw pixel values 0..16 onto 0..255
    with torch.no_grad():  # a classifier: 0.98 of the held-out digits (tools/ prints it)
        accuracy = (net(x).argmax(1) == digits.test_labels).float().mean()
    assert accuracy > 0.95


class _Scripted(nn.Module):
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))  # (N, 3)
        return pooled if return_features else pooled.sum(1, keepdim=True)


def test_torchscript_extractor_from_a_file(tmp_path):
    path = tmp_path / "ext.pt"
    torch.jit.script(_Scripted()).save(str(path))
    ext = get_extractor(str(path))
    x = torch.rand(4, 1, 8, 8) * 255
    feats = extract_features(ext, x)  # gray repeated to RGB, return_features=True passed
    assert feats.shape == (4, 3)
    assert torch.allclose(feats, x.mean(dim=(2, 3)).double().expand(4, 3))
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*\(4, 8\)"):
        extract_features(ext, torch.zeros(4, 8))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match=re.escape(str(bad)) + r".*\bTorchScript\b"):
        torchscript_extractor(bad)
    with pytest.raises(ValueError, match=r"missing\.pt'.*\bdigits\b"):  # the name, the names
        get_extractor(str(tmp_path / "missing.pt"))


# ----- FID of digits and the reference cache ------------------------------------------------------
def test_digits_fid_grows_with_the_noise_added(digits, tmp_path):
    ext = digits_extractor()
    ref = reference_stats(digits, ext, cache=tmp_path)
    fids = []
    for sigma in (0.0, 0.05, 0.1, 0.2, 0.4):
        x = digits.train + sigma * torch.randn(digits.train.shape, generator=_gen(10))
        fids.append(frechet_distance(*feature_stats(image_features(ext, x, digits)), ref.mu,
                                     ref.sigma))
    assert fids[0] < 1e-8  # the training digits are the reference
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def test_reference_statistics_are_computed_once_and_cached(digits, tmp_path):
    ours = _DropoutFeatures()
    first = reference_stats(digits, ours, cache=tmp_path)
    calls = ours.calls
    assert calls == math.ceil(digits.train_size / 500) and first.n == digits.train_size
    assert os.listdir(tmp_path / "reference") == [first.path.name]  # no temporary left
    again = reference_stats(digits, ours, cache=tmp_path)
    assert ours.calls == calls  # read back, not recomputed
    assert np.array_equal(again.mu, first.mu) and np.array_equal(again.sigma, first.sigma)
    assert torch.equal(again.features, first.features)
    first.path.write_bytes(b"cut short")  # an unreadable file is computed and written again
    assert np.array_equal(reference_stats(digits, ours, cache=tmp_path).mu, first.mu)
    assert ours.calls == 2 * calls
    with torch.no_grad():
        ours.lin.weight += 1  # other weights: another extractor, another key
    third = reference_stats(digits, ours, cache=tmp_path)
    assert ours.calls == 3 * calls and third.path != first.path


def test_extractors_that_differ_only_in_settings_or_code_never_share_a_cache_entry(digits,
                                                                                   tmp_path):
    # Two poolings with no tensors, told apart by their kernel size alone.
    two = reference_stats(digits, nn.Sequential(nn.AvgPool2d(2), nn.Flatten()), cache=tmp_path)
    four = reference_stats(digits, nn.Sequential(nn.AvgPool2d(4), nn.Flatten()), cache=tmp_path)
    assert two.path != four.path and two.mu.shape == (16,) and four.mu.shape == (4,)
    # Plain functions: nothing identifies them, so nothing is read or written for them.
    first = reference_stats(digits, lambda x: x[:, :, :2].flatten(1), cache=tmp_path)
    other = reference_stats(digits, lambda x: x[:, :, 2:4].flatten(1), cache=tmp_path)
    assert first.path is None and other.path is None
    assert not np.array_equal(first.mu, other.mu)
    assert sorted(os.listdir(tmp_path / "reference")) == sorted([two.path.name, four.path.name])


def test_a_cache_that_cannot_be_written_warns_and_gives_the_statistics(digits, tmp_path):
    blocked = tmp_path / "a_file"
    blocked.write_text("")  # its "reference" folder cannot be made
    ext = nn.Flatten()
    with pytest.warns(UserWarning, match=re.escape(str(blocked))):
        ref = reference_stats(digits, ext, cache=blocked)
    assert ref.path is None
    assert np.array_equal(ref.mu, reference_stats(digits, ext, cache=False).mu)


def test_sample_quality_of_an_exact_score_matches_direct_draws(digits, tmp_path):
    # A Gaussian fitted to the digits, sampled through its exact score by a solver, has the
    # FID of direct draws from it, up to the solver's error and the noise of 1000 samples
    # (FIDs of 1000 draws of other seeds spread over ~0.2 here, near 2.8); two plain Euler
    # steps are far off (FID ~21), and the few-step start from the data's Gaussian helps them.
    mean, cov = digits.moments()
    mix = GaussianMixture(mean[None], (cov + 0.05 * torch.eye(64))[None], event_shape=(1, 8, 8))
    sde = get_sde("vp")
    ext = digits_extractor()
    ref = reference_stats(digits, ext, cache=tmp_path)
    result = sample_quality(mix.score_fn(sde), sde, digits, ext, n=1000, solver="heun",
                            steps=20, seed=0, reference=ref, data_statistics=False)
    direct = image_features(ext, mix.sample(1000, _gen(11)).float(), digits)
    fid_direct = frechet_distance(*feature_stats(direct), ref.mu, ref.sigma)
    assert result["n"] == 1000 and result["nfe"] > 0 and result["reference_n"] == ref.n
    assert result["fid"] == pytest.approx(fid_direct, abs=0.5)
    crude = sample_quality(mix.score_fn(sde), sde, digits, ext, n=1000, solver="euler",
                           steps=2, seed=0, reference=ref, data_statistics=False)
    assert crude["fid"] > fid_direct + 10 and crude["nfe"] == 3
    helped = sample_quality(mix.score_fn(sde), sde, digits, ext, n=1000, solver="euler",
                            steps=2, seed=0, reference=ref)
    assert helped["fid"] < crude["fid"] / 2
    assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1


def test_class_conditional_quality_samples_each_class_in_turn_or_one(digits, tmp_path):
    # One Gaussian per digit class, fitted to that class: the exact class-conditional score.
    # label="all" gives every class its share (FID of direct draws of the balanced mixture,
    # within the ~0.2 spread of 1000 draws); one class covers a tenth of the digits (recall near
    # 0.1, FID ~30); guidance sharpens the classes: precision up, recall down (1000 samples:
    # both move by ~0.1, several times their ~0.015 draw noise).
    x, y = digits.train.reshape(-1, 64).double(), digits.train_labels
    means = torch.stack([x[y == k].mean(0) for k in range(10)])
    covs = torch.stack([torch.cov(x[y == k].T) + 0.05 * torch.eye(64, dtype=torch.float64)
                        for k in range(10)])
    mix = GaussianMixture(means, covs, event_shape=(1, 8, 8))
    sde, ext = get_sde("vp"), digits_extractor()
    ref = reference_stats(digits, ext, cache=tmp_path)
    score = mix.conditional_score_fn(sde)
    score.num_classes = 10
    quality = {}
    for label, w in (("all", 0.0), ("all", 2.0), (3, 0.0)):
        quality[label, w] = sample_quality(score, sde, digits, ext, n=1000, solver="heun",
                                           steps=20, reference=ref, data_statistics=False,
                                           batch_size=300, label=label, guidance=w)
    direct = image_features(ext, mix.sample(1000, _gen(11)).float(), digits)
    fid_direct = frechet_distance(*feature_stats(direct), ref.mu, ref.sigma)
    assert quality["all", 0.0]["fid"] == pytest.approx(fid_direct, abs=0.3)
    assert quality["all", 0.0]["label"] == "all" and quality["all", 2.0]["guidance"] == 2.0
    assert quality[3, 0.0]["fid"] > fid_direct + 20 and quality[3, 0.0]["recall"] < 0.2
    assert quality["all", 2.0]["precision"] > quality["all", 0.0]["precision"] + 0.05
    assert quality["all", 2.0]["recall"] < quality["all", 0.0]["recall"] - 0.05


def test_chunk_labels_continue_across_chunks_and_refuse_bad_labels():
    chunks = [chunk_labels("all", start, min(start + 7, 30), 4) for start in range(0, 30, 7)]
    assert torch.equal(torch.cat(chunks), torch.arange(30) % 4)
    assert torch.equal(chunk_labels(2, 5, 8, 4), torch.tensor([2, 2, 2]))
    assert chunk_labels(None, 0, 3, 0) is None
    for bad, message in ((4, r"^label\b.*\[0, 4\).*\b4$"), ("some", r"^label\b.*'some'"),
                         (True, r"^label\b.*\bTrue$")):
        with pytest.raises(ValueError, match=message):
            chunk_labels(bad, 0, 3, 4)
    with pytest.raises(ValueError, match=r"^label='all'"):
        chunk_labels("all", 0, 3, 0)


def test_guidance_without_a_label_is_refused_before_sampling(digits, tmp_path):
    sde = get_sde("vp")
    with pytest.raises(ValueError, match=r"^guidance\b.*\blabel\b"):
        sample_quality(lambda x, t: -x, sde, digits, nn.Flatten(), n=100, solver="euler",
                       steps=1, guidance=1.0, reference=reference_stats(digits, nn.Flatten(),
                                                                        cache=False))


def test_a_class_label_for_a_model_of_embeddings_is_refused_as_such(digits):
    # A model conditioned on embeddings has no classes (num_classes 0) but is not unconditional.
    def score(x, t, y=None):
        return -x

    score.embed_dim, score.num_classes = 16, 0
    ref = reference_stats(digits, nn.Flatten(), cache=False)
    for label in (3, "all"):
        with pytest.raises(ValueError, match=rf"^label={label!r}.*\bembed_dim\b") as err:
            sample_quality(score, get_sde("vp"), digits, nn.Flatten(), n=100, solver="euler",
                           steps=1, label=label, reference=ref)
        assert "unconditional" not in str(err.value)


def test_quality_figure_draws_a_panel_per_sde_and_the_floor(tmp_path):
    from scoresde import plotting

    records = [{"point": {"sde": sde, "solver": solver, "n": 1000}, "nfe": nfe, "fid": fid}
               for sde in ("vp", "ve") for solver, nfe, fid in (("euler", 9, 0.7),
                                                                 ("euler", 19, 0.5),
                                                                 ("heun", 7, 0.5))]
    fig = plotting.quality_figure(records, floor=0.9)
    assert [ax.get_title() for ax in fig.axes] == ["vp, N = 1,000", "ve, N = 1,000"]
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["euler", "heun", "held-out data"]
    assert list(lines[0].get_xdata()) == [9, 19] and list(lines[2].get_ydata()) == [0.9, 0.9]
    assert os.path.getsize(plotting.save_figure(fig, tmp_path / "f.png")) > 0
    # A solver keeps its colour in every panel, whichever solvers a panel has.
    first = [{"point": {"sde": "ve", "solver": "dpmpp_2m", "n": 1000}, "nfe": 4, "fid": 0.3}]
    fig = plotting.quality_figure(records[:3] + first + records[3:])  # ve: dpmpp_2m first
    colours = [{line.get_label(): line.get_color() for line in ax.get_lines()} for ax in fig.axes]
    assert colours[0]["euler"] != colours[0]["heun"]
    assert all(c["euler"] == colours[0]["euler"] and c["heun"] == colours[0]["heun"]
               for c in colours)
