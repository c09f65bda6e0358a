"""Guidance by a differentiable function against exact mixture posteriors.

With ``f = log p(y | x_t)`` of a Gaussian mixture (exact, ``GaussianMixture.class_log_prob``)
function guidance is classifier guidance, and by Bayes' rule the exact conditional score.
"""

import pytest
import torch

from scoresde import (GaussianMixture, VPSDE, classifier_guidance, function_guidance, sample)

from problems import labelled_points


def test_exact_log_posterior_guidance_equals_classifier_guidance(sde):
    mix = GaussianMixture.random(3, k=4, seed=2)
    x, t, y = labelled_points()
    logits = lambda x, t: mix.class_log_prob(x, t, sde)  # noqa: E731
    f = lambda x, t: logits(x, t).gather(1, y[:, None])[:, 0]  # noqa: E731
    for scale in (1.0, 2.5):
        with torch.no_grad():  # samplers call score functions under no_grad
            got = function_guidance(mix.score_fn(sde), f, scale)(x, t)
            want = classifier_guidance(mix.score_fn(sde), logits, y, scale, num_classes=4)(x, t)
        assert not got.requires_grad
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    # scale 1 is the exact conditional score (Bayes), so the gradient is not a no-op
    with torch.no_grad():
        got = function_guidance(mix.score_fn(sde), f, 1.0)(x, t)
    assert torch.allclose(got, mix.conditional_score_fn(sde)(x, t, y), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(got, mix.score_fn(sde)(x, t), atol=1e-3)


def test_the_added_term_is_scale_times_the_gradient_for_any_shape():
    # f(x) = -|x - c|^2 / 2 summed over an image: its gradient is c - x, exactly.
    c = torch.linspace(-1, 1, 2 * 3 * 4, dtype=torch.float64).reshape(2, 3, 4)
    x = torch.randn(5, 2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.full((5,), 0.3, dtype=torch.float64)
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    f = lambda x, t: -0.5 * ((x - c) ** 2).flatten(1).sum(1)  # noqa: E731
    with torch.no_grad():
        got = function_guidance(zero, f, 0.7)(x, t)
    assert got.shape == x.shape
    assert torch.allclose(got, 0.7 * (c - x), rtol=0, atol=1e-14)


def test_a_hand_written_f_steers_exact_samples_into_a_region():
    # Ring of 8 components (radius 4, std 0.3); f = -|x - mu_0|^2 pulls towards component 0,
    # whose basin (within 1.53 of mu_0) holds 1/8 of the unguided draws.
    mix, sde = GaussianMixture.ring(), VPSDE()
    target = mix.means[0].float()
    f = lambda x, t: -((x - target) ** 2).sum(1)  # noqa: E731
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    near = lambda x: ((x - target).norm(dim=1) < 1.53).float().mean()  # noqa: E731
    plain, _ = sample(mix.score_fn(sde), sde, (400, 2), solver="em", steps=100, generator=gen())
    steered, _ = sample(function_guidance(mix.score_fn(sde), f, 3.0), sde, (400, 2),
                        solver="em", steps=100, generator=gen())
    assert near(plain) < 0.25  # about 1/8
    assert near(steered) > 0.95


def test_bad_f_is_one_line():
    score = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x, t = torch.zeros(3, 2), torch.full((3,), 0.5)
    with pytest.raises(ValueError, match=r"^f\b.*\(3,\).*\(3, 2\)"):  # wanted, got
        function_guidance(score, lambda x, t: x, 1.0)(x, t)
    with pytest.raises(ValueError, match=r"^f\(x, t\).*\bx\b"):
        function_guidance(score, lambda x, t: torch.ones(3), 1.0)(x, t)
    with pytest.raises(TypeError, match=r"^f\b.*\bfloat\b"):
        function_guidance(score, 3.0, 1.0)
    with pytest.raises(ValueError, match="guidance scale"):
        function_guidance(score, lambda x, t: x.sum(1), float("nan"))


@pytest.mark.slow
def test_the_2d_example_steers_samples_and_draws_a_figure(tmp_path):
    from problems import ROOT, run_python

    out = tmp_path / "fg.png"
    proc = run_python(ROOT / "examples" / "function_guidance_2d.py", "--steps", 100, "--out",
                      out, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0 and "guided, scale 2" in proc.stdout
