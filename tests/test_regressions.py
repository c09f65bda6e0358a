"""Regressions found in review: each test pins one defect that was fixed."""

import json

import pytest
import torch

from scoresde import train
from scoresde.runs import load_checkpoint

TINY = dict(data="8gaussians", net_params={"hidden": 16, "depth": 1}, batch_size=32,
            progress=False, log_every=1)


def test_resume_with_fewer_steps_than_the_checkpoint_is_refused_and_keeps_the_run(tmp_path):
    # Before the fix, resuming a 4-step run with steps=2 "succeeded": it rewrote config.json with
    # steps=2 beside a checkpoint at step 4 and reported step 2 at a negative speed.
    run = tmp_path / "run"
    train(run, steps=4, **TINY)
    with pytest.raises(ValueError, match="step 4"):
        train(run, steps=2, resume=True, **TINY)
    assert json.loads((run / "config.json").read_text())["steps"] == 4
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4


def test_cli_resume_keeps_every_option_of_the_run(tmp_path):
    # Before the fix the CLI resumed with today's library defaults for every option it has no
    # flag for (warmup, the SDE's parameters, the network's depth), so a run started from Python
    # or under other defaults could not be continued: "options differ: net, sde, warmup".
    from click.testing import CliRunner

    from scoresde.cli import main

    run = tmp_path / "run"
    train(run, steps=2, warmup=1, sde="ve", sde_params={"sigma_max": 10.0}, **TINY)
    result = CliRunner().invoke(main, ["train", "--resume", "--run", str(run), "--steps", "3",
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 3
    config = json.loads((run / "config.json").read_text())
    assert config["warmup"] == 1 and config["sde"]["sigma_max"] == 10.0
    assert config["net"]["hidden"] == 16 and config["steps"] == 3
    # An option given on the command line still wins, and a conflicting one is refused.
    result = CliRunner().invoke(main, ["train", "--resume", "--run", str(run), "--steps", "4",
                                       "--sde", "vp", "--quiet"])
    assert result.exit_code == 2 and "sde" in result.output


def test_seed_from_is_the_generators_draw_and_torchsde_uses_it():
    # torchsde's Brownian motion was seeded by torch.randint(..., generator=g) with no device,
    # which raises for a CUDA generator; the seed is now drawn on the generator's device.
    from scoresde import GaussianMixture, VPSDE, sample
    from scoresde.utils import seed_from

    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert seed_from(a) == int(torch.randint(0, 2**31 - 1, (1,), generator=b))
    sde, mix = VPSDE(), GaussianMixture.ring()
    x1, _ = sample(mix.score_fn(sde), sde, (4, 2), solver="torchsde", steps=4,
                   generator=torch.Generator().manual_seed(0))
    x2, _ = sample(mix.score_fn(sde), sde, (4, 2), solver="torchsde", steps=4,
                   generator=torch.Generator().manual_seed(0))
    assert torch.equal(x1, x2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torchsde_sampler_runs_with_a_cuda_generator():
    from scoresde import GaussianMixture, VPSDE, sample

    sde, mix = VPSDE(), GaussianMixture.ring()
    gen = torch.Generator(device="cuda").manual_seed(0)
    x, _ = sample(mix.score_fn(sde), sde, (4, 2), solver="torchsde", steps=4, generator=gen)
    assert x.device.type == "cuda" and torch.isfinite(x).all()


def test_bad_arguments_give_one_line_errors_that_name_them():
    # Before: rtol=-1 was reported as "rtol=-0.5" (after the per-sample scaling), a string rtol
    # as a bare comparison TypeError, an SDE name instead of an SDE as an AttributeError deep in
    # the grid code, and sample_time(n=-1) as a RuntimeError from torch.
    from scoresde import GaussianMixture, VPSDE, encode, log_likelihood, sample, sample_time

    sde, mix = VPSDE(), GaussianMixture.ring()
    x = mix.sample(4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"rtol must be a finite number > 0, got -1$"):
        log_likelihood(mix.score_fn(sde), sde, x, rtol=-1)
    with pytest.raises(ValueError, match="atol must be a finite number > 0, got 'x'"):
        encode(mix.score_fn(sde), sde, x, atol="x")
    with pytest.raises(TypeError, match="sde must be a scoresde.SDE"):
        sample(mix.score_fn(sde), "vp", (4, 2), steps=2)
    with pytest.raises(ValueError, match="n must be an integer >= 1, got -1"):
        sample_time(sde, -1)


def test_a_fresh_run_does_not_append_to_metrics_of_an_attempt_without_checkpoint(tmp_path):
    # An attempt that died before its first checkpoint leaves config.json and metrics.jsonl; the
    # next train() into that folder starts afresh, but appended its records to the stale ones.
    class Stop(Exception):
        pass

    def stop(step, record):
        if step == 3:
            raise Stop

    run = tmp_path / "run"
    with pytest.raises(Stop):
        train(run, steps=6, checkpoint_every=5, callback=stop, **TINY)
    assert not (run / "checkpoint.pt").exists()
    train(run, steps=4, **TINY)
    steps = [json.loads(line)["step"] for line in open(run / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]


def test_classifier_loss_checks_the_noise_shape_like_dsm_loss():
    # classifier_loss had its own copy of dsm_loss's diffusion step, without the noise check: a
    # (B, 1) noise broadcast silently into every coordinate. One helper now serves both.
    from scoresde import VPSDE, classifier_loss, dsm_loss

    sde, x0 = VPSDE(), torch.randn(4, 2)
    t, noise = torch.full((4,), 0.5), torch.randn(4, 2)
    logits = lambda x, t: torch.stack([x[:, 0], -x[:, 0]], 1)  # noqa: E731
    y = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="noise must have the shape of x0"):
        classifier_loss(logits, sde, x0, y=y, t=t, noise=noise[:, :1])
    # With the same t and z the classifier sees x_t = m x0 + s z, as dsm_loss's score does.
    m, s = sde.marginal_coeffs(t)
    x_t = m[:, None] * x0 + s[:, None] * noise
    expected = torch.nn.functional.cross_entropy(logits(x_t, t), y, reduction="none")
    torch.testing.assert_close(classifier_loss(logits, sde, x0, y=y, t=t, noise=noise), expected)
    seen = []
    dsm_loss(lambda x, t: seen.append(x) or torch.zeros_like(x), sde, x0, t=t, noise=noise)
    torch.testing.assert_close(seen[0], x_t)


def test_score_model_and_noise_classifier_share_one_preconditioning():
    # NoiseClassifier had its own copy of ScoreModel's input scaling and sigma_data check.
    from scoresde import NoiseClassifier, ScoreModel, VESDE

    sde, sigma_data = VESDE(), 0.7
    seen = {}

    class Spy(torch.nn.Module):
        num_classes = 2

        def __init__(self, key):
            super().__init__()
            self.key = key

        def forward(self, x, c_noise, y=None):
            seen[self.key] = (x, c_noise)
            return torch.zeros(x.shape[0], 2) if self.key == "cls" else torch.zeros_like(x)

    x, t = torch.randn(3, 2), torch.tensor([0.1, 0.5, 0.9])
    ScoreModel(Spy("score"), sde, sigma_data)(x, t)
    NoiseClassifier(Spy("cls"), sde, sigma_data)(x, t)
    _, s = sde.marginal_coeffs(t)  # VE: m = 1
    torch.testing.assert_close(seen["cls"][0], x / torch.sqrt(sigma_data**2 + s**2)[:, None])
    torch.testing.assert_close(seen["cls"][1], torch.log(s) / 4)
    torch.testing.assert_close(seen["score"], seen["cls"])
    for wrapper in (ScoreModel, NoiseClassifier):
        with pytest.raises(ValueError, match="sigma_data must be a finite number > 0"):
            wrapper(Spy("x"), sde, float("nan"))


def test_default_batch_size_depends_on_the_kind_of_data(tmp_path):
    # train(batch_size=None): 1024 points a step for vectors (tuned on the toys), 128 for images.
    opts = dict(steps=1, progress=False, checkpoint_every=1)
    train(tmp_path / "toy", data="8gaussians", net_params={"hidden": 16, "depth": 1}, **opts)
    train(tmp_path / "img", data="digits", **opts)
    batch = {k: json.loads((tmp_path / k / "config.json").read_text())["batch_size"]
             for k in ("toy", "img")}
    assert batch == {"toy": 1024, "img": 128}


def test_cli_resume_without_steps_finishes_the_runs_own_total(tmp_path):
    from click.testing import CliRunner

    from scoresde.cli import main

    class Cut(Exception):
        pass

    def cut(step, record):
        if step == 4:
            raise Cut

    run = tmp_path / "run"
    with pytest.raises(Cut):
        train(run, steps=6, checkpoint_every=3, callback=cut, **TINY)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 3
    result = CliRunner().invoke(main, ["train", "--run", str(run), "--resume", "--quiet"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 6
    assert json.loads((run / "config.json").read_text())["steps"] == 6
