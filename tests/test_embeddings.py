"""Conditioning on continuous embeddings, with a learnt null embedding for classifier-free
guidance.

A ring mixture is conditioned on its own component means as embeddings, written to an ``.npz``
with a float ``y`` of shape ``(N, 2)``; a short training through the CLI must learn that the
embedding of component k means component k.
"""

import json

import numpy as np
import pytest
import torch

from scoresde import (GaussianMixture, ScoreMLP, UNet, DDPMpp, ScoreModel, VPSDE,
                      classifier_free_guidance, load_run, sample)
from scoresde.data import get_dataset, load_array
from scoresde.embeddings import NULL_EMBEDDING, check_embeddings, drop_conditions

from problems import assert_refused, invoke, make_old

MIX = GaussianMixture.ring(k=4)  # 4 components 5.66 apart, std 0.3


def _component(x: torch.Tensor) -> torch.Tensor:
    """The nearest mean of MIX: the component, misjudged for exact draws with prob ~1e-20."""
    return torch.cdist(x.double(), MIX.means).argmin(1)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    root = tmp_path_factory.mktemp("embeddings")
    x, k = MIX.sample(4000, torch.Generator().manual_seed(0), return_labels=True)
    np.savez(root / "ring.npz", x=x.numpy().astype(np.float32),
             y=(MIX.means[k] / 4).numpy().astype(np.float32))  # unit-length embeddings
    result = invoke("train", "--data", root / "ring.npz", "--conditional", "--steps", 600,
                    "--batch-size", 256, "--width", 64, "--quiet", "--run", root / "run")
    assert result.exit_code == 0, result.output
    return root


@pytest.mark.slow
def test_sampling_with_the_embedding_of_component_k_lands_in_component_k(embedded):
    model, sde, config = load_run(embedded / "run")
    assert config["embed_dim"] == 2 and config["net"]["embed_dim"] == 2
    assert config["num_classes"] == 0 and model.embed_dim == 2
    k = torch.arange(400) % 4
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    for w in (0.0, 1.0):
        score = classifier_free_guidance(model, (MIX.means[k] / 4).float(), w)
        with torch.no_grad():
            x, _ = sample(score, sde, (400, 2), solver="dpmpp_2m", steps=20, generator=gen())
        # exact draws would score ~1.0; a model that ignored the embedding 0.25
        assert (_component(x) == k).float().mean() >= 0.95
    with torch.no_grad():  # the learnt null embedding: the unconditional model, all components
        x, _ = sample(model, sde, (400, 2), solver="dpmpp_2m", steps=20, generator=gen())
    share = torch.bincount(_component(x), minlength=4).float() / 400
    assert share.min() > 0.1  # each 1/4 in the data; a conditional collapse would give 0


@pytest.mark.slow
def test_cli_samples_with_an_embedding_file(embedded, tmp_path):
    np.save(tmp_path / "e.npy", (MIX.means[2] / 4).numpy().astype(np.float32))
    out = tmp_path / "s.npz"
    result = invoke("sample", "--run", embedded / "run", "--embedding", tmp_path / "e.npy",
                    "--guidance", 1, "--solver", "dpmpp_2m", "--steps", 20, "--n", 50,
                    "--out", out, "--json")
    assert result.exit_code == 0, result.output
    with np.load(out) as f:
        assert f["labels"].shape == (50, 2)
        assert (_component(torch.from_numpy(f["samples"])) == 2).float().mean() >= 0.9
    np.save(tmp_path / "bad.npy", np.zeros(3, np.float32))
    result = invoke("sample", "--run", embedded / "run", "--embedding", tmp_path / "bad.npy",
                    "--n", 5, "--out", out)
    assert_refused(result, 2, "--embedding", "(3,)", "(2,)")  # its shape and the run's
    result = invoke("sample", "--run", embedded / "run", "--label", 1, "--n", 5, "--out", out)
    assert_refused(result, 2, "--label")
    for array, shape in ((np.array(1.0), "()"), (np.ones((2, 2, 2)), "(2, 2, 2)")):
        np.save(tmp_path / "odd.npy", array.astype(np.float32))
        result = invoke("sample", "--run", embedded / "run", "--embedding", tmp_path / "odd.npy",
                        "--n", 5, "--out", out)
        assert_refused(result, 2, "--embedding", shape)
    result = invoke("sample", "--run", embedded / "run", "--embedding", tmp_path / "e.npy",
                    "--label", 1, "--n", 5, "--out", out)
    assert_refused(result, 2, "--label", "--embedding")


@pytest.mark.parametrize("net", [
    lambda: ScoreMLP((2,), hidden=16, depth=1, embed_dim=3),
    lambda: UNet((1, 8, 8), ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                 embed_dim=3),
    lambda: DDPMpp((1, 8, 8), nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                   dropout=0.0, embed_dim=3)])
def test_null_rows_and_none_use_the_learnt_null_embedding(net):
    net = net()
    with torch.no_grad():
        net.embed.null.normal_()  # a learnt null, not the zero it starts at
        for p in net.parameters():  # (near-)zero-initialised outputs hide the conditioning
            if p.ndim > 1:
                p.normal_(0, 0.1)
    shape = (4, *net.config()["event_shape"])
    x, c = torch.randn(shape, generator=torch.Generator().manual_seed(0)), torch.zeros(4)
    e = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    null = torch.full((4, 3), NULL_EMBEDDING)
    with torch.no_grad():
        out_none, out_null, out_e = net(x, c), net(x, c, null), net(x, c, e)
    size = out_none.abs().max()
    assert torch.equal(out_none, out_null)
    assert (out_e - out_none).abs().max() > 1e-2 * size
    mixed = e.clone()
    mixed[1] = NULL_EMBEDDING
    with torch.no_grad():
        out_mixed = net(x, c, mixed)
    assert torch.allclose(out_mixed[1], out_none[1], rtol=0, atol=1e-5 * size)
    assert torch.allclose(out_mixed[0], out_e[0], rtol=0, atol=1e-5 * size)
    assert net.config()["embed_dim"] == 3


def test_dropout_nulls_embeddings_and_labels():
    drop = torch.tensor([True, False, True])
    e = drop_conditions(torch.ones(3, 2), drop)
    assert e[[0, 2]].isnan().all() and (e[1] == 1).all()
    assert drop_conditions(torch.tensor([4, 5, 6]), drop).tolist() == [-1, 5, -1]


def test_float_y_of_an_npz_are_embeddings_and_integers_labels(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    np.savez(tmp_path / "e.npz", x=x, y=np.ones((20, 5), np.float64))
    np.savez(tmp_path / "l.npz", x=x, y=np.arange(20) % 3)
    ds_e, ds_l = get_dataset(tmp_path / "e.npz"), get_dataset(tmp_path / "l.npz")
    assert (ds_e.embed_dim, ds_e.num_classes) == (5, 0)
    assert ds_e.train_labels.dtype == torch.float32 and ds_e.train_labels.shape[1] == 5
    assert (ds_l.embed_dim, ds_l.num_classes) == (0, 3)
    for bad in (np.ones(20), np.full((20, 2), np.nan), np.ones((19, 2))):
        np.savez(tmp_path / "b.npz", x=x, y=bad)
        with pytest.raises(ValueError, match="embeddings|labels"):
            load_array(tmp_path / "b.npz")


def test_bad_embeddings_are_one_line():
    model = ScoreModel(ScoreMLP((2,), hidden=8, depth=1, embed_dim=2), VPSDE())
    x, t = torch.zeros(3, 2), torch.full((3,), 0.5)
    for bad, match in ((torch.zeros(3, 4), "shape"), (torch.tensor([1, 2]), "floats"),
                       (torch.full((3, 2), float("inf")), "finite")):
        with pytest.raises(ValueError, match=match):
            model(x, t, bad)
    with pytest.raises(ValueError, match="shape"):
        classifier_free_guidance(model, torch.zeros(5), 1.0)
    assert check_embeddings(torch.zeros(2), 3, 2).shape == (3, 2)
    with pytest.raises(ValueError, match=r"num_classes.*\bembed_dim\b"):
        ScoreMLP((2,), num_classes=3, embed_dim=2)


def test_runs_saved_before_embeddings_load_and_resume(tmp_path):
    """config.json without ``embed_dim`` (top level and network) and the cascade and latent
    options is read as the run it was."""
    from scoresde import train
    from scoresde.runs import load_checkpoint

    run = tmp_path / "old"
    opts = dict(data="8gaussians", net_params={"hidden": 16, "depth": 1}, batch_size=32,
                progress=False, conditional=True)
    train(run, steps=2, **opts)
    # What runs before embeddings, cascades and latents lack:
    config = make_old(run, ("embed_dim", "downsample", "super_res", "cond_aug", "latent",
                            "latent_scale"), ("embed_dim",))
    model, _, loaded = load_run(run)
    assert loaded["embed_dim"] == 0 and model.embed_dim == 0 and model.num_classes == 8
    assert (loaded["downsample"], loaded["super_res"], loaded["latent"]) == (1, None, None)
    train(run, steps=3, resume=True, **opts)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 3
    (run / "config.json").write_text(json.dumps(config))
    result = invoke("train", "--resume", "--run", run, "--steps", 4, "--quiet")
    assert result.exit_code == 0, result.output
