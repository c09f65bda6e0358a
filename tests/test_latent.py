"""Latent diffusion: an autoencoder trained by the run machinery, a score model on its latents.

The autoencoder trains briefly (about 10 s); its held-out reconstruction error is compared with
the error of the best constant image (the training mean), the floor that an encoder which
ignored its input would reach.
"""

import json
import re

import numpy as np
import pytest
import torch

from scoresde import load_run, train
from scoresde.data import get_dataset
from scoresde.latent import LatentDiffusion
from scoresde.models import ConvAutoencoder
from scoresde.runs import load_checkpoint

from problems import assert_refused, invoke

DIGITS = get_dataset("digits")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    result = invoke("train", "--data", "digits", "--autoencoder", "--steps", 200, "--batch-size",
                    64, "--lr", 2e-3, "--quiet", "--run", root / "ae")
    assert result.exit_code == 0, result.output
    result = invoke("train", "--latent", root / "ae", "--steps", 3, "--batch-size", 16,
                    "--quiet", "--run", root / "latent")
    assert result.exit_code == 0, result.output
    return root


@pytest.mark.slow
def test_the_autoencoder_reconstructs_held_out_digits(runs):
    ae, _, config = load_run(runs / "ae")
    assert isinstance(ae, ConvAutoencoder) and config["objective"] == "autoencoder"
    with torch.no_grad():
        recon, mu = ae(DIGITS.test)
    mse = float(((recon - DIGITS.test) ** 2).mean())
    constant = float(((DIGITS.test - DIGITS.train.mean(0)) ** 2).mean())  # 0.29
    # measured 0.02-0.03 after 200 steps of 64 (RMS 1.1-1.4 of the 0..16 pixel scale)
    assert mse < 0.05 and mse < 0.2 * constant
    assert mu.shape[1:] == (2, 4, 4)  # 32 numbers for 64 pixels


@pytest.mark.slow
def test_latents_are_scaled_to_unit_variance_and_the_scale_is_recorded(runs):
    ae, _, _ = load_run(runs / "ae")
    model, sde, config = load_run(runs / "latent")
    with torch.no_grad():
        latents = ae.encode(DIGITS.train).double()
    assert config["latent_scale"] == pytest.approx(1 / float(latents.std()), rel=1e-6)
    assert config["latent_scale"] != pytest.approx(1.0, abs=0.05)  # the scaling does something
    assert config["sigma_data"] == pytest.approx(1.0, abs=1e-6)
    assert config["data_shape"] == [2, 4, 4] and config["data"] == "digits"
    assert isinstance(model, LatentDiffusion)
    with torch.no_grad():
        assert float(model.encode(DIGITS.train).double().std()) == pytest.approx(1.0, abs=1e-5)
        x, info = model.sample(6, solver="dpmpp_2m", steps=4,
                               generator=torch.Generator().manual_seed(0))
    assert x.shape == (6, 1, 8, 8) and info["latents"].shape == (6, 2, 4, 4)
    train(runs / "latent", latent=runs / "ae", steps=4, batch_size=16, progress=False,
          resume=True)  # the same scale again: resumes
    assert load_checkpoint(runs / "latent" / "checkpoint.pt")["step"] == 4


@pytest.mark.slow
def test_cli_samples_images_and_reports_the_latent_likelihood_as_such(runs, tmp_path):
    out = tmp_path / "s.npz"
    result = invoke("sample", "--run", runs / "latent", "--solver", "euler", "--steps", 3,
                    "--n", 5, "--out", out)
    assert result.exit_code == 0, result.output
    with np.load(out) as f:
        assert f["samples"].shape == (5, 1, 8, 8)
    result = invoke("likelihood", "--run", runs / "latent", "--n", 4, "--divergence",
                    "hutchinson", "--rtol", 1e-2, "--atol", 1e-2, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert "bits_per_dim" not in record and "log_likelihood" not in record
    assert np.isfinite(record["latent_nll_nats"]) and record["reconstruction_mse"] < 0.05
    assert "latents" in record["note"]  # what the density is over
    # Images of another size would encode to a smaller latent: refused, not measured.
    np.save(tmp_path / "small.npy", np.zeros((3, 1, 4, 4), np.float32))
    result = invoke("likelihood", "--run", runs / "latent", "--data", tmp_path / "small.npy",
                    "--n", 3)
    assert_refused(result, 2, "(1, 4, 4)", "(1, 8, 8)")
    # A measurement of images cannot be imposed on latents: refused in one line.
    np.savez(tmp_path / "m.npz", mask=np.ones((1, 8, 8), bool), values=np.zeros((1, 8, 8)))
    np.savez(tmp_path / "o.npz", A=np.ones((1, 64)), y=np.ones(1))
    for option, path in (("--mask", tmp_path / "m.npz"), ("--observe", tmp_path / "o.npz")):
        result = invoke("sample", "--run", runs / "latent", option, path, "--n", 2,
                        "--out", tmp_path / "x.npz")
        assert_refused(result, 2, option, runs / "latent")
    for command in ("sample", "likelihood"):  # an autoencoder has no score
        result = invoke(command, "--run", runs / "ae", "--n", 2)
        assert_refused(result, 2, runs / "ae", "autoencoder")


def test_fid_of_a_latent_run_scores_its_decoded_samples(runs, tmp_path, monkeypatch):
    from scoresde.features import digits_extractor
    from scoresde.metrics import feature_stats, frechet_distance
    from scoresde.quality import (image_features, reference_stats, run_quality,
                                  sample_quality)
    from scoresde.sample_files import chunk_generator
    from scoresde.sampling import sample

    monkeypatch.setenv("SCORESDE_CACHE", str(tmp_path / "cache"))
    record = run_quality(runs / "latent", n=100, solver="euler", steps=3, batch_size=50)
    # The same draws by hand: latents of chunk k from (0, k), decoded, against the digits.
    model, sde, _ = load_run(runs / "latent")
    ext = digits_extractor()
    with torch.no_grad():
        images = torch.cat([model.decode(sample(model, sde, (50, *model.latent_shape),
                                                solver="euler", steps=3,
                                                generator=chunk_generator(0, k))[0])
                            for k in range(2)])
    ref = reference_stats(DIGITS, ext)
    fid = frechet_distance(*feature_stats(image_features(ext, images, DIGITS)), ref.mu,
                           ref.sigma)
    assert record["fid"] == pytest.approx(fid, rel=1e-6) and record["reference_n"] == ref.n
    model.score.train(), model.autoencoder.eval()  # each part's mode is put back
    again = sample_quality(model, sde, DIGITS, ext, n=100, solver="euler", steps=3,
                           batch_size=50, reference=ref)
    assert again["fid"] == pytest.approx(record["fid"], rel=1e-9)
    assert model.score.training and not model.autoencoder.training
    result = invoke("fid", "--run", runs / "latent", "--n", 100, "--solver", "euler",
                    "--steps", 3, "--batch-size", 50, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fid"] == pytest.approx(record["fid"], rel=1e-9)
    result = invoke("fid", "--run", runs / "ae", "--n", 100)
    assert_refused(result, 2, "'autoencoder'", besides=["warning:"])


def test_bad_latent_options_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="autoencoder.*'moons'"):
        train(tmp_path / "a", data="moons", objective="autoencoder", steps=1, progress=False)
    with pytest.raises(ValueError, match=r"\bconditional=True\b"):
        train(tmp_path / "b", data="digits", objective="autoencoder", conditional=True, steps=1,
              progress=False)
    train(tmp_path / "s", data="moons", steps=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="latent=.*" + re.escape(str(tmp_path / "s"))):
        train(tmp_path / "c", latent=tmp_path / "s", steps=1, progress=False)
    with pytest.raises(ValueError, match=r"\(8, 4, 4\).*\(1, 8, 8\)"):  # latent, images
        ConvAutoencoder((1, 8, 8), latent_channels=8)


def test_an_autoencoder_run_resumes_bit_identically(tmp_path):
    opts = dict(data="digits", objective="autoencoder", batch_size=16, progress=False,
                net_params={"ch": 8}, checkpoint_every=2)
    train(tmp_path / "straight", steps=4, **opts)
    train(tmp_path / "resumed", steps=2, **opts)
    train(tmp_path / "resumed", steps=4, resume=True, **opts)
    a, b = (load_checkpoint(tmp_path / r / "checkpoint.pt") for r in ("straight", "resumed"))
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
