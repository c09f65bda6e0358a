"""Figures from synthetic inputs: files are written, are valid PNGs, and have the right axes."""

import json
import os

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from scoresde import GaussianMixture, VPSDE, plotting

from problems import run_python

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(path):
    with open(path, "rb") as fh:
        assert fh.read(8) == PNG_MAGIC
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    return img


def test_grid_points_row_major():
    pts, xs, ys = plotting.grid_points(2.0, 5)
    assert pts.shape == (25, 2) and xs.shape == ys.shape == (5,)
    # y is the slow index, x the fast one, so values reshape to (len(ys), len(xs)).
    grid = pts.reshape(5, 5, 2)
    np.testing.assert_allclose(grid[0, :, 0], xs)
    np.testing.assert_allclose(grid[:, 0, 1], ys)
    with pytest.raises(ValueError, match=r"\blim=-1\.0\b"):
        plotting.grid_points(-1.0)


def test_samples_figure_titles_carry_nfe(tmp_path):
    gen = torch.Generator().manual_seed(0)
    mix = GaussianMixture.ring()
    samples = {"em": mix.sample(300, gen), "ode": mix.sample(300, gen).numpy()}
    fig = plotting.samples_figure(samples, nfe={"em": 100, "ode": 38}, data=mix.sample(300, gen))
    assert len(fig.axes) == 3
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "data" and "NFE 100" in titles[1] and "NFE 38" in titles[2]
    path = plotting.save_figure(fig, tmp_path / "s.png")
    _png(path)
    assert os.listdir(tmp_path) == ["s.png"]  # no temporary file left behind


def test_image_grid_figure(tmp_path):
    images = torch.rand(10, 1, 8, 8) * 4 - 2  # outside [0, 1]: rescaled
    fig = plotting.image_grid_figure(images, title="digits")
    assert len(fig.axes) == 1
    _png(plotting.save_figure(fig, tmp_path / "g.png"))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        plotting.image_grid_figure(torch.rand(4, 2, 8, 8))


def test_grey_images_are_drawn_as_they_are_not_inverted():
    """A white digit on black stays white on black: 1 is white, 0 black."""
    import numpy as np

    images = torch.zeros(1, 1, 8, 8)
    images[..., 2:6, 3:5] = 1.0  # a white bar on black
    fig = plotting.image_grid_figure(images)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    bbox = fig.axes[0].get_window_extent()  # the picture's pixels, from the bottom left
    height = rgb.shape[0]
    x0, x1 = int(bbox.x0), int(bbox.x1)
    y0, y1 = height - int(bbox.y1), height - int(bbox.y0)
    picture = rgb[y0:y1, x0:x1]
    h, w = picture.shape[:2]
    centre = picture[int(h * 4.5 / 10), int(w * 5 / 10)]  # inside the bar (1 px border)
    corner = picture[int(h * 1.5 / 10), int(w * 1.5 / 10)]  # the black background
    assert centre.min() > 200 and corner.max() < 55


def test_observations_and_classes_are_shown_beside_the_samples():
    """An imputation's picture has the observation beside the samples, unobserved pixels grey
    and observed ones on the samples' scale; a per-class grid names its columns; one class is
    named in the title."""
    x = torch.rand(4, 1, 4, 4) * 2 - 1  # model values in [-1, 1]
    x[0, 0, 0, 0], x[0, 0, 0, 1] = -1.0, 1.0  # the range the observation is drawn on
    observed = np.full((4, 1, 4, 4), np.nan, np.float32)
    observed[:, :, :, :2] = 1.0  # the left half known: white on the samples' scale
    fig = plotting.samples_picture(x, "em", 21, is_image=True, ncol=2, observed=observed)
    assert [ax.get_title() for ax in fig.axes] == ["observed", "em · NFE 21"]
    grid = fig.axes[0].get_images()[0].get_array()
    assert np.isclose(grid[1, 1], 1.0) and np.isclose(grid[1, 4], 0.5)  # known, unknown
    classes = plotting.samples_picture(x, "euler", 9, is_image=True, ncol=2,
                                       columns=["cat", "dog"])
    assert [t.get_text() for t in classes.axes[0].get_xticklabels()] == ["cat", "dog"]
    one = plotting.samples_picture(x, "euler", 9, is_image=True, label="class cat")
    assert one.axes[0].get_title() == "euler · NFE 9 · class cat"


def test_the_picture_beside_a_draw_reads_the_mask_or_the_measurement():
    """What sample_run draws beside image samples: a mask's values where known; the measured
    pixels of a selection A; the least-norm solution of any other A; class names."""
    from scoresde.observe import mask_matrix
    from scoresde.tasks.sampling import _beside

    shape = (1, 2, 2)
    mask = torch.tensor([[[True, False], [False, True]]])
    values = torch.tensor([[[0.5, 9.0], [9.0, -0.5]]])
    got = _beside({}, (mask, values), None, None, None, 3, shape)["observed"]
    assert got.shape == (3, 1, 2, 2) and np.isnan(got[:, 0, 0, 1]).all()
    assert (got[:, 0, 0, 0] == 0.5).all() and (got[:, 0, 1, 1] == -0.5).all()
    pick = dict(A=mask_matrix(mask), y=torch.tensor([0.5, -0.5]), noise_std=0.0)
    got = _beside({}, None, pick, None, None, 2, shape)["observed"]
    assert (got[:, 0, 0, 0] == 0.5).all() and np.isnan(got[:, 0, 0, 1]).all()
    mean = dict(A=torch.full((1, 4), 0.25), y=torch.tensor([0.2]), noise_std=0.1)
    extras = _beside({}, None, mean, None, None, 2, shape)
    assert np.allclose(extras["observed"], 0.2) and "least-norm" in extras["observed_title"]
    names = {"class_names": ["cat", "dog"]}
    assert _beside(names, None, None, "all", 2, 4, shape)["columns"] == ["cat", "dog"]
    assert _beside(names, None, None, "1", None, 4, shape)["label"] == "class dog"


def test_demo_figure_has_every_panel(tmp_path):
    sde = VPSDE()
    mix = GaussianMixture.ring()
    gen = torch.Generator().manual_seed(1)
    data = mix.sample(500, gen)
    pts, xs, ys = plotting.grid_points(6.0, 40)
    logp = mix.log_prob(torch.from_numpy(pts)).reshape(40, 40)
    fpts, _, _ = plotting.grid_points(6.0, 12)
    fpts = torch.from_numpy(fpts)
    vec = mix.score_fn(sde)(fpts, torch.full((len(fpts),), 0.3, dtype=fpts.dtype))
    paths = torch.randn(20, 4, 2, generator=gen).cumsum(0)
    samples = {"em": data, "pc": data, "ode": data, "heun": data}
    fig = plotting.demo_figure(data, samples, {"em": 1, "pc": 2, "ode": 3, "heun": 4},
                               density=(xs, ys, logp), field=(fpts, vec, 0.3), paths=paths,
                               suptitle="log-likelihood -3.2 nats")
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    panels = [ax for ax in fig.axes if ax not in bars]
    assert len(panels) == 8 and len(bars) == 2  # data + 4 samplers, 3 below; two colour bars
    assert {bar.get_ylabel() for bar in bars} == {"log p (nats)", "log(1 + |score|)"}
    titles = [ax.get_title() for ax in panels]
    assert "learned log-density" in titles and "score field, t = 0.3" in titles
    paths_ax = panels[titles.index("probability-flow paths")]
    assert [t.get_text() for t in paths_ax.get_legend().get_texts()] == ["start, t = T",
                                                                         "end, t = eps"]
    assert len(panels[0].get_xticks()) > 0 and len(panels[1].get_xticks()) == 0  # a scale once
    fig.canvas.draw()
    below = [ax.get_position() for ax in panels[5:]]
    assert below[-1].x1 > 0.8  # the bottom row spans the figure: no empty cell at its end
    _png(plotting.save_figure(fig, tmp_path / "demo.png"))


def test_bad_shapes_raise():
    fig = plotting.samples_figure({"a": np.zeros((5, 2))})
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        plotting.draw_scatter(fig.axes[0], np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"^values\b.*\(4, 3\).*\(3, 3\)"):
        plotting.draw_heatmap(fig.axes[0], np.arange(3), np.arange(4), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"\(S, M, 2\)"):
        plotting.draw_trajectories(fig.axes[0], np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"^samples_figure\b"):
        plotting.samples_figure({})


def test_failed_save_leaves_nothing(tmp_path):
    fig = plotting.samples_figure({"a": np.zeros((5, 2))})
    with pytest.raises(ValueError):
        plotting.save_figure(fig, tmp_path / "x.notaformat")
    assert os.listdir(tmp_path) == []


_BACKEND_SCRIPT = """
import json, sys
import matplotlib
{choose}
before = matplotlib.get_backend()
import scoresde
from scoresde import plotting
fig = plotting.samples_figure({{"a": [[0.0, 0.0], [1.0, 1.0]]}})
path = plotting.save_figure(fig, sys.argv[1])
print(json.dumps({{"before": before, "after": matplotlib.get_backend(),
                   "pyplot": "matplotlib.pyplot" in sys.modules}}))
"""


@pytest.mark.slow  # a fresh interpreter each
@pytest.mark.parametrize("backend, choose", [
    ("svg", ""),                          # chosen by the MPLBACKEND variable
    ("pdf", 'matplotlib.use("pdf")'),     # chosen in code before the import
])
def test_importing_and_saving_keep_the_users_backend(tmp_path, backend, choose):
    """A notebook's backend survives importing scoresde and writing a figure, and the figure is
    still a PNG: plotting never calls matplotlib.use nor pyplot."""
    env = {} if choose else {"MPLBACKEND": backend}
    out = tmp_path / "f.png"
    proc = run_python("-c", _BACKEND_SCRIPT.format(choose=choose), out, **env)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["before"].lower() == backend and record["after"] == record["before"]
    assert not record["pyplot"]
    _png(out)
