"""Per-sample seeds: sample i depends only on seeds[i], whatever the batch size or the order.

The score is the exact mixture score, which treats each row alone (it computes in float64 row by
row: no reduction mixes samples), so any dependence on the batch would come from the noise.
The runs are in float32, the dtype users sample in.
"""

import numpy as np
import pytest
import torch
from problems import assert_refused, invoke
from scoresde import GaussianMixture, VPSDE, impute, sample
from scoresde.sampling import PerSampleBrownian, PerSampleGenerator
from scoresde.sampling.torchsde_adapter import SteppedBrownian

SDE_ = VPSDE()
TARGET = GaussianMixture.ring()
SCORE = TARGET.score_fn(SDE_)
SEEDS = [1000 + 7 * i for i in range(64)]

STOCHASTIC = [("em", {})]
STOCHASTIC += [("pc", {"predictor": p, "corrector": c})
               for p in ("euler_maruyama", "reverse_diffusion", "ancestral", "none")
               for c in ("langevin", "ald", "none") if (p, c) != ("none", "none")]
STOCHASTIC += [("torchsde", {"method": m})
               for m in ("euler", "milstein", "srk", "reversible_heun")]
DETERMINISTIC = [("euler", {}), ("heun", {}), ("dpmpp_2m", {})]


def _draw(solver, options, seeds, steps=10):
    x, _ = sample(SCORE, SDE_, (len(seeds), 2), solver=solver, steps=steps, seeds=seeds,
                  **options)
    return x


@pytest.mark.parametrize("solver,options", STOCHASTIC + DETERMINISTIC)
def test_sample_i_is_bit_identical_across_batch_sizes_and_orderings(solver, options):
    full = _draw(solver, options, SEEDS)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    shuffled = _draw(solver, options, [SEEDS[i] for i in order])
    seven = order[:7]
    assert torch.equal(shuffled, full[order])
    assert torch.equal(_draw(solver, options, [SEEDS[i] for i in seven]), full[seven])
    assert torch.equal(_draw(solver, options, [SEEDS[13]]), full[13:14])
    assert len(set(map(tuple, full.tolist()))) == 64  # and distinct seeds give distinct samples


def test_the_papers_batch_averaged_corrector_is_the_one_that_depends_on_the_batch():
    # langevin_batch scales every step by norms averaged over the batch (score_sde's rule): a
    # sample's noise follows its seed, its step does not, so only it changes with the batch.
    options = {"corrector": "langevin_batch"}
    full = _draw("pc", options, SEEDS)
    assert not torch.equal(_draw("pc", options, SEEDS[:7]), full[:7])


def test_the_ode_solver_gets_per_sample_priors_and_batch_wide_steps():
    # scipy chooses its steps for the whole batch: the same prior, results within tolerance.
    full = _draw("ode", {}, SEEDS)
    seven = _draw("ode", {}, SEEDS[10:17])
    assert torch.allclose(full[10:17], seven, atol=1e-3)


def test_adaptive_torchsde_has_per_sample_paths_and_batch_wide_steps():
    options = {"adaptive": True, "rtol": 1e-3, "atol": 1e-3}
    full = _draw("torchsde", options, SEEDS[:16], steps=20)
    four = _draw("torchsde", options, SEEDS[4:8], steps=20)
    assert torch.allclose(full[4:8], four, atol=0.1)


def test_per_sample_brownian_rows_do_not_depend_on_the_batch():
    def path(seeds):
        gens = PerSampleGenerator(seeds)
        bm = PerSampleBrownian([_interval(g) for g in gens.generators])
        return bm(0.1, 0.35), bm(0.35, 0.9, return_U=True)

    def _interval(gen):
        import torchsde
        return torchsde.BrownianInterval(t0=0.0, t1=1.0, size=(1, 3), entropy=int(
            torch.randint(0, 2**31 - 1, (1,), generator=gen)), levy_area_approximation="space-time")

    (w_all, (w2_all, u_all)), (w_one, (w2_one, u_one)) = path([5, 6, 7]), path([6])
    assert w_all.shape == (3, 3)
    assert torch.equal(w_all[1:2], w_one) and torch.equal(u_all[1:2], u_one)
    assert torch.equal(w2_all[1:2], w2_one)


def test_stepped_brownian_refuses_steps_that_do_not_follow_on():
    bm = SteppedBrownian(PerSampleGenerator([0, 1]), (2, 3), torch.float32, "cpu", "none")
    assert bm(0.0, 0.5).shape == (2, 3)
    with pytest.raises(RuntimeError, match="consecutive"):
        bm(0.0, 0.5)


@pytest.mark.parametrize("solver,options", [("em", {}), ("pc", {"corrector": "ald"}),
                                          ("torchsde", {"method": "srk"})])
def test_seeded_samples_follow_the_target(solver, options):
    x = _draw(solver, options, list(range(2000)), steps=200)
    ref = TARGET.sample(20000, generator=torch.Generator().manual_seed(1))
    radius, ref_radius = x.norm(dim=1), ref.norm(dim=1)
    assert abs(float(radius.mean() - ref_radius.mean())) < 0.05
    assert abs(float(radius.std() - ref_radius.std())) < 0.05
    assert float(x.mean(0).abs().max()) < 0.3  # the ring's eight modes are about equally hit


def test_per_sample_noise_is_standard_normal_and_one_stream_per_seed():
    gens = PerSampleGenerator([3, 4, 3])
    z = torch.cat([gens.randn((3, 500)) for _ in range(20)], dim=1)  # refills the buffer
    assert torch.equal(z[0], z[2]) and not torch.equal(z[0], z[1])
    assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1) < 0.03
    # The stream does not depend on how it is cut into draws.
    other = PerSampleGenerator([4])
    assert torch.equal(torch.cat([other.randn((1, 250)) for _ in range(40)], dim=1), z[1:2])


def test_imputation_with_seeds_is_bit_identical_across_batch_sizes():
    values = torch.tensor([[1.5, 0.0]]).repeat(8, 1)
    mask = torch.tensor([True, False])
    full, _ = impute(SCORE, SDE_, values, mask, solver="em", steps=10, seeds=SEEDS[:8])
    three, _ = impute(SCORE, SDE_, values[:3], mask, solver="em", steps=10, seeds=SEEDS[5:8])
    assert torch.equal(full[5:8], three)
    assert torch.equal(full[:, 0], values[:, 0])


@pytest.mark.parametrize("kwargs,error,match", [
    ({"seeds": [0, 1], "generator": torch.Generator()}, ValueError, r"seeds.*\bgenerator\b"),
    ({"seeds": [0, 1, 2]}, ValueError, r"^seeds\b.*\b3 seeds.*\(2, 2\)"),
    ({"seeds": "01"}, TypeError, r"^seeds\b.*'01'"),
    ({"seeds": [0, 1.5]}, TypeError, r"^seeds\b.*\b1\.5\b"),
    ({"seeds": [True, 1]}, TypeError, r"^seeds\b.*\bTrue\b"),
    ({"seeds": [0, -1]}, ValueError, r"^seeds\b.*-1\b"),
    ({"generator": 3}, TypeError, r"^generator\b.*torch\.Generator.*\bint\b"),
])
def test_bad_seeds_raise_one_line_errors(kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        sample(SCORE, SDE_, (2, 2), solver="em", steps=2, **kwargs)
    assert "\n" not in str(info.value)


def test_seeds_accept_ranges_and_tensors():
    x, _ = sample(SCORE, SDE_, (4, 2), solver="em", steps=3, seeds=range(4))
    y, _ = sample(SCORE, SDE_, (4, 2), solver="em", steps=3, seeds=torch.arange(4))
    assert torch.equal(x, y)


# ----- the CLI --------------------------------------------------------------------------------
def test_cli_seeds_set_n_and_are_written_with_the_samples(in_workdir):
    result = invoke("sample", "--solver", "em", "--steps", 10, "--seeds", "0-3,7,9-10",
                     "--out", "all.npz")
    assert result.exit_code == 0, result.output
    result = invoke("sample", "--solver", "em", "--steps", 10, "--seeds", "9", "--n", 1,
                     "--out", "one.npz")
    assert result.exit_code == 0, result.output
    full, one = np.load("all.npz"), np.load("one.npz")
    assert full["seeds"].tolist() == [0, 1, 2, 3, 7, 9, 10] and one["seeds"].tolist() == [9]
    assert full["samples"].shape == (7, 2)
    # The trained MLP's float32 matrix products may round differently per batch size.
    np.testing.assert_allclose(full["samples"][5], one["samples"][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("args,facts", [
    (("--seeds", "0-3", "--n", 5), ["--n", "5", "--seeds"]),
    (("--seeds", "0-3", "--seed", 1), ["--seed", "--seeds"]),
    (("--seeds", "3-1"), ["--seeds", "'3-1'"]),
    (("--seeds", "a,b"), ["--seeds", "'a,b'"]),
    (("--seeds", "-2"), ["--seeds", "'-2'"]),
])
def test_cli_bad_seeds_are_usage_errors(in_workdir, args, facts):
    result = invoke("sample", "--solver", "em", "--steps", 2, "--out", "bad.npz", *args)
    assert_refused(result, 2, *facts, besides=["using run"])
