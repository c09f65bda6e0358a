"""Figures: the only module that talks to matplotlib (files only, no windows, no pyplot).

Figures are plain ``matplotlib.figure.Figure`` objects drawn on an Agg canvas of their own, so
importing this module or drawing never switches matplotlib's backend (a notebook keeps its own).
``draw_*`` functions draw one panel onto a given ``Axes``; ``*_figure`` functions build a whole
figure from arrays; :func:`save_figure` writes it atomically (temporary file, then rename), so an
error never leaves a half-written image. Inputs are tensors or NumPy arrays; nothing here trains,
samples or integrates: callers compute the values, this module only draws them.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Mapping

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .utils import raw_values, write_atomically

__all__ = [
    "grid_points",
    "draw_scatter",
    "draw_heatmap",
    "draw_score_field",
    "draw_trajectories",
    "draw_image_grid",
    "samples_figure",
    "image_grid_figure",
    "samples_picture",
    "demo_figure",
    "quality_figure",
    "ema_sweep_figure",
    "save_figure",
]

_POINT_COLOR = "#1f4e79"
_DATA_COLOR = "#7f7f7f"
_PATH_COLORS = ("#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b")


def _figure(figsize: tuple[float, float]) -> Figure:
    """An empty figure on its own Agg canvas: no pyplot, no backend chosen or changed."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _np(x) -> np.ndarray:
    """A float64 NumPy copy of a tensor or array (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _points(x, name: str = "x") -> np.ndarray:
    pts = _np(x)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) for a 2D plot, got {pts.shape}")
    return pts


def grid_points(lim: float, n: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A square ``n x n`` grid over ``[-lim, lim]^2``.

    Returns:
        ``(points, xs, ys)``: points of shape ``(n * n, 2)`` in row-major order (``y`` slow,
        ``x`` fast), so values computed on them reshape to ``(n, n)`` for :func:`draw_heatmap`;
        ``xs`` and ``ys`` of shape ``(n,)``.
    """
    if not (lim > 0 and n >= 2):
        raise ValueError(f"grid_points needs lim > 0 and n >= 2, got lim={lim!r}, n={n!r}")
    xs = np.linspace(-lim, lim, int(n))
    gx, gy = np.meshgrid(xs, xs)
    return np.stack([gx.ravel(), gy.ravel()], axis=1), xs, xs.copy()


def _limits(*clouds: np.ndarray, pad: float = 0.1) -> float:
    """Half-width of a square window around the origin holding the 99.5% quantile of every cloud."""
    finite = [np.abs(c[np.isfinite(c).all(axis=1)]) for c in clouds if len(c)]
    finite = [c for c in finite if len(c)]
    if not finite:
        return 1.0
    half = max(float(np.quantile(c, 0.995)) for c in finite)
    return max(half * (1 + pad), 1e-3)


def draw_scatter(ax: Axes, x, title: str | None = None, lim: float | None = None,
                 color: str = _POINT_COLOR, size: float | None = None) -> None:
    """Scatter 2D points ``x`` of shape ``(N, 2)`` on a square window ``[-lim, lim]^2``."""
    pts = _points(x)
    lim = _limits(pts) if lim is None else lim
    size = size if size is not None else max(0.5, min(6.0, 3000.0 / max(len(pts), 1)))
    ax.scatter(pts[:, 0], pts[:, 1], s=size, c=color, alpha=0.6, linewidths=0, rasterized=True)
    _square(ax, lim, title)


def draw_heatmap(ax: Axes, xs, ys, values, title: str | None = None,
                 floor: float | None = None, cmap: str = "magma"):
    """Draw ``values`` of shape ``(len(ys), len(xs))`` (e.g. a log-density) as a heat map;
    returns the image (for a colour bar).

    Values below ``floor`` (default: the maximum minus 12, about e^-12 of the peak density for a
    log-density) are clipped so the low tails do not wash out the picture.
    """
    xs, ys, v = _np(xs), _np(ys), _np(values)
    if v.shape != (len(ys), len(xs)):
        raise ValueError(f"values must have shape ({len(ys)}, {len(xs)}), got {v.shape}")
    finite = v[np.isfinite(v)]
    top = float(finite.max()) if finite.size else 0.0
    floor = top - 12.0 if floor is None else floor
    v = np.clip(np.nan_to_num(v, nan=floor, neginf=floor, posinf=top), floor, top)
    image = ax.imshow(v, origin="lower", extent=(xs[0], xs[-1], ys[0], ys[-1]), cmap=cmap,
                      aspect="equal", interpolation="bilinear")
    _square(ax, None, title, frame=(xs[0], xs[-1], ys[0], ys[-1]))
    return image


def draw_score_field(ax: Axes, points, vectors, title: str | None = None,
                     background=None):
    """Quiver plot of a 2D vector field: arrows ``vectors`` ``(N, 2)`` at ``points`` ``(N, 2)``;
    returns the arrows (for a colour bar of ``log(1 + |v|)``).

    Arrows are drawn with length proportional to ``|v|^(1/2)`` and colour by ``|v|``, so the large
    scores far from the data do not hide the small ones near it. ``background`` (2D points) is
    drawn faintly underneath, e.g. the training data.
    """
    p, v = _points(points, "points"), _points(vectors, "vectors")
    if p.shape != v.shape:
        raise ValueError(f"points {p.shape} and vectors {v.shape} must have the same shape")
    if background is not None:
        bg = _points(background, "background")
        ax.scatter(bg[:, 0], bg[:, 1], s=1.0, c=_DATA_COLOR, alpha=0.25, linewidths=0,
                   rasterized=True)
    norm = np.linalg.norm(v, axis=1)
    scaled = v / np.sqrt(np.maximum(norm, 1e-12))[:, None]
    arrows = ax.quiver(p[:, 0], p[:, 1], scaled[:, 0], scaled[:, 1], np.log1p(norm),
                       cmap="viridis", angles="xy", pivot="mid", width=0.006)
    lim = float(np.abs(p).max()) * 1.05 if len(p) else 1.0
    _square(ax, lim, title)
    return arrows


def draw_trajectories(ax: Axes, paths, title: str | None = None, lim: float | None = None,
                      background=None) -> None:
    """Draw sampling trajectories ``paths`` of shape ``(S, M, 2)`` (S times, M paths).

    Each path starts with a hollow circle (at ``t = T``) and ends with a filled dot (``t = eps``),
    as the legend says.
    """
    tr = _np(paths)
    if tr.ndim != 3 or tr.shape[2] != 2:
        raise ValueError(f"paths must have shape (S, M, 2), got {tr.shape}")
    if background is not None:
        bg = _points(background, "background")
        ax.scatter(bg[:, 0], bg[:, 1], s=1.0, c=_DATA_COLOR, alpha=0.25, linewidths=0,
                   rasterized=True)
    for j in range(tr.shape[1]):
        color = _PATH_COLORS[j % len(_PATH_COLORS)]
        ax.plot(tr[:, j, 0], tr[:, j, 1], color=color, lw=0.9, alpha=0.85)
        ax.plot(*tr[0, j], "o", mfc="none", mec=color, ms=4)
        ax.plot(*tr[-1, j], "o", color=color, ms=4)
    ax.plot([], [], "o", mfc="none", mec="0.3", ms=4, label="start, t = T")
    ax.plot([], [], "o", color="0.3", ms=4, label="end, t = eps")
    ax.legend(fontsize=7, loc="lower right", framealpha=0.8)
    lim = _limits(tr.reshape(-1, 2)) if lim is None else lim
    _square(ax, lim, title)


def draw_image_grid(ax: Axes, images, title: str | None = None, ncol: int | None = None) -> None:
    """Tile images of shape ``(B, H, W)``, ``(B, 1, H, W)`` or ``(B, 3, H, W)`` into one picture.

    Pixel values are clipped to ``[0, 1]`` after a min-max rescale when they fall outside it.
    One channel is drawn as it is, 0 black and 1 white (white digits on black stay so).
    """
    im = _np(images)
    if im.ndim == 3:
        im = im[:, None]
    if im.ndim != 4 or im.shape[1] not in (1, 3) or len(im) == 0:
        raise ValueError(f"images must have shape (B, H, W) or (B, C, H, W) with C in (1, 3) "
                         f"and B >= 1, got {_np(images).shape}")
    if im.min() < 0 or im.max() > 1:
        lo, hi = float(im.min()), float(im.max())
        im = (im - lo) / (hi - lo) if hi > lo else np.zeros_like(im)
    b, c, h, w = im.shape
    ncol = ncol or int(math.ceil(math.sqrt(b)))
    nrow = int(math.ceil(b / ncol))
    canvas = np.ones((c, nrow * (h + 1) + 1, ncol * (w + 1) + 1))
    for i in range(b):
        r, q = divmod(i, ncol)
        canvas[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = im[i]
    pic = canvas[0] if c == 1 else canvas.transpose(1, 2, 0)
    ax.imshow(pic, cmap="gray" if c == 1 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)


def _square(ax: Axes, lim: float | None, title: str | None, frame=None) -> None:
    if frame is not None:
        ax.set_xlim(frame[0], frame[1])
        ax.set_ylim(frame[2], frame[3])
    elif lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)


def _scale(ax: Axes) -> None:
    """A few ticks with their values on ``ax``, whose ticks :func:`_square` took away."""
    from matplotlib.ticker import MaxNLocator

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(3))
    ax.tick_params(labelsize=7, length=2)


def _title(name: str, nfe: int | None, extra: str | None = None) -> str:
    parts = [name] + ([f"NFE {nfe}"] if nfe is not None else []) + ([extra] if extra else [])
    return " · ".join(parts)


def samples_figure(samples: Mapping[str, object], nfe: Mapping[str, int] | None = None,
                   data=None, notes: Mapping[str, str] | None = None) -> Figure:
    """One 2D scatter panel per sampler, titled with its NFE; ``data`` first if given.

    Args:
        samples: name -> points of shape ``(N, 2)``.
        nfe: name -> number of score evaluations, shown in the titles.
        data: optional reference points ``(N, 2)``, drawn in the first panel.
        notes: name -> a short extra word for the title (e.g. the wall time).

    Returns:
        The figure, with ``len(samples) + (data is not None)`` axes.
    """
    if not samples:
        raise ValueError("samples_figure needs at least one set of samples")
    panels = ([("data", data, None)] if data is not None else []) + [
        (name, x, (nfe or {}).get(name)) for name, x in samples.items()]
    lim = _limits(*[_points(x, name) for name, x, _ in panels])
    fig = _figure((3.0 * len(panels), 3.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, x, n) in zip(axes[0], panels):
        color = _DATA_COLOR if name == "data" and data is not None else _POINT_COLOR
        draw_scatter(ax, x, _title(name, n, (notes or {}).get(name)), lim=lim, color=color)
    fig.tight_layout()
    return fig


def image_grid_figure(images, title: str | None = None, ncol: int | None = None) -> Figure:
    """A figure with one axes holding ``images`` ``(B, [C,] H, W)`` tiled in a grid."""
    fig = _figure((5, 5))
    draw_image_grid(fig.subplots(), images, title, ncol)
    fig.tight_layout()
    return fig


def image_grids_figure(grids: Mapping[str, object], ncol: int = 8) -> Figure:
    """One titled image grid per entry of ``grids`` (name -> images ``(B, [C,] H, W)``, each
    rescaled to ``[0, 1]`` from ``[-1, 1]`` model values), side by side."""
    if not grids:
        raise ValueError("image_grids_figure needs at least one set of images")
    fig = _figure((3.0 * len(grids), 3.4))
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    for ax, (name, images) in zip(axes, grids.items()):
        draw_image_grid(ax, np.clip((_np(images) + 1) / 2, 0, 1), name, ncol)
    fig.tight_layout()
    return fig


def samples_picture(x, name: str, nfe: int, *, is_image: bool, raw_scale: float = 1.0,
                    raw_offset: float = 0.0, pixel_bits: int | None = None,
                    ncol: int | None = None, most: int = 64, observed=None,
                    columns: list[str] | None = None, label: str | None = None,
                    observed_title: str = "observed") -> Figure | None:
    """The picture of a sampler's output ``x`` (model space, ``(B, *event_shape)``), titled
    with ``name`` and its NFE; the one view that ``scoresde sample`` and the training's sample
    grids share.

    Images: a grid of the first ``most`` (whole rows of ``ncol``), 8-bit images (``pixel_bits``)
    in their pixel values, the first three channels (alpha not shown) or the first one, other
    images rescaled to their range; ``observed`` (the samples' observations, model values,
    NaN where nothing is observed) drawn beside it in the same places, the unobserved pixels
    grey, under ``observed_title``; ``columns`` names each column (a class per column),
    ``label`` the one class of all.
    2D points: a scatter. Other data: None (nothing to draw).
    """
    x = _np(x)
    if is_image and observed is None and not columns:
        if pixel_bits:
            x = np.clip(raw_values(x, raw_scale, raw_offset) / (2 ** pixel_bits - 1), 0, 1)
        x = x[:(most // ncol) * ncol if ncol else most]
        return image_grid_figure(x[:, :3] if x.shape[1] >= 3 else x[:, :1],
                                 title=f"{name} · NFE {nfe}" + (f" · {label}" if label else ""),
                                 ncol=ncol)
    if is_image:
        count = (most // ncol) * ncol if ncol else most
        pictures = {f"{name} · NFE {nfe}" + (f" · {label}" if label else ""): x[:count]}
        if observed is not None:
            pictures = {observed_title: _np(observed)[:count], **pictures}
        fig = _figure((5 * len(pictures), 5))
        for ax, (title, images) in zip(fig.subplots(1, len(pictures), squeeze=False)[0],
                                       pictures.items()):
            unseen = np.isnan(images)
            images = np.nan_to_num(images, nan=0.0)
            if pixel_bits:
                images = np.clip(raw_values(images, raw_scale, raw_offset)
                                 / (2 ** pixel_bits - 1), 0, 1)
            else:  # the samples' range for both, so that the observation reads as they do
                lo, hi = float(np.nanmin(x[:count])), float(np.nanmax(x[:count]))
                images = np.clip((images - lo) / (hi - lo), 0, 1) if hi > lo else images * 0
            images = np.where(unseen, 0.5, images)
            draw_image_grid(ax, images[:, :3] if images.shape[1] >= 3 else images[:, :1],
                            title, ncol)
            if columns:
                width = (ax.get_xlim()[1] - ax.get_xlim()[0]) / (ncol or len(columns))
                ax.set_xticks([(q + 0.5) * width for q in range(len(columns))], columns,
                              fontsize=7)
        fig.tight_layout()
        return fig
    if x.shape[1:] == (2,):
        return samples_figure({name: x}, {name: nfe})
    return None


def demo_figure(
    data,
    samples: Mapping[str, object],
    nfe: Mapping[str, int],
    density: tuple | None = None,
    field: tuple | None = None,
    paths=None,
    suptitle: str | None = None,
    notes: Mapping[str, str] | None = None,
) -> Figure:
    """The demo's multi-panel figure.

    Top row: the data and one scatter per sampler titled with its NFE. Bottom row: the learned
    log-density as a heat map, the score field, and sampling trajectories.

    Args:
        data: training points ``(N, 2)``.
        samples: sampler name -> points ``(N, 2)``; nfe: sampler name -> NFE.
        density: ``(xs, ys, log_p)`` with ``log_p`` of shape ``(len(ys), len(xs))``, or None.
        field: ``(points, vectors, t)``: score vectors ``(M, 2)`` at ``points`` ``(M, 2)`` at time
            ``t``, or None.
        paths: trajectories ``(S, M, 2)``, or None.
        suptitle: a line over the whole figure (e.g. the likelihood).
        notes: sampler name -> extra words for its title.
    """
    top = [("data", data, None)] + [(k, v, nfe.get(k)) for k, v in samples.items()]
    bottom = [p for p in (density, field, paths) if p is not None]
    ncol = max(len(top), len(bottom), 1)
    fig = _figure((2.7 * ncol, 2.9 * (1 + bool(bottom)) + (0.35 if suptitle else 0)))
    # Each row shares the width: the bottom's fewer panels are wider, none is left empty.
    span = math.lcm(len(top), len(bottom) or 1)
    grid = fig.add_gridspec(1 + bool(bottom), span)
    lim = _limits(*[_points(x, name) for name, x, _ in top])
    w = span // len(top)
    for j, (name, x, n) in enumerate(top):
        ax = fig.add_subplot(grid[0, j * w:(j + 1) * w])
        color = _DATA_COLOR if j == 0 else _POINT_COLOR
        draw_scatter(ax, x, _title(name, n, (notes or {}).get(name)), lim=lim, color=color)
        if j == 0:
            _scale(ax)  # the data's coordinates, which every panel of the row shares
    w = span // max(len(bottom), 1)
    cells = iter(grid[1, j * w:(j + 1) * w] for j in range(len(bottom)))
    if density is not None:
        ax = fig.add_subplot(next(cells))
        image = draw_heatmap(ax, *density, title="learned log-density")
        fig.colorbar(image, ax=ax, shrink=0.8, label="log p (nats)")
        _scale(ax)
    if field is not None:
        pts, vec, t = field
        ax = fig.add_subplot(next(cells))
        arrows = draw_score_field(ax, pts, vec, title=f"score field, t = {t:g}", background=data)
        fig.colorbar(arrows, ax=ax, shrink=0.8, label="log(1 + |score|)")
    if paths is not None:
        draw_trajectories(fig.add_subplot(next(cells)), paths, title="probability-flow paths",
                          lim=lim, background=data)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout(h_pad=2.0)
    return fig


def quality_figure(records, floor: float | None = None, metric: str = "fid",
                   floor_label: str = "held-out data") -> Figure:
    """FID (or ``metric``) against score calls, one panel per SDE and one line per solver.

    Args:
        records: dicts with ``point`` (``{"sde", "solver", "n"}``), ``nfe`` and ``metric``;
            values of different sample counts are not comparable, so give records of one.
        floor: the data's own value (held-out against training data), drawn dashed.
        metric: the key plotted.
        floor_label: the floor's legend.
    """
    sdes = list(dict.fromkeys(r["point"]["sde"] for r in records))
    solvers = list(dict.fromkeys(r["point"]["solver"] for r in records))  # one colour each
    colors = _PATH_COLORS + (_POINT_COLOR,)
    fig = _figure((4.2 * max(len(sdes), 1), 3.6))
    for i, sde in enumerate(sdes):
        ax = fig.add_subplot(1, len(sdes), i + 1)
        mine = [r for r in records if r["point"]["sde"] == sde]
        for solver in dict.fromkeys(r["point"]["solver"] for r in mine):
            pts = sorted((r["nfe"], r[metric]) for r in mine if r["point"]["solver"] == solver)
            j = solvers.index(solver)
            ax.plot(*zip(*pts), marker="os^"[j // len(colors) % 3], color=colors[j % len(colors)],
                    label=solver)
        if floor is not None:
            ax.axhline(floor, color=_DATA_COLOR, linestyle="--", label=floor_label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
        nfes = [r["nfe"] for r in mine]
        ticks = [t for t in (2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)
                 if min(nfes) / 1.5 <= t <= max(nfes) * 1.5]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ns = sorted({r["point"]["n"] for r in mine})
        ax.set_title(f"{sde}, N = {', '.join(f'{n:,}' for n in ns)}")
        ax.set_xlabel("score calls (NFE)")
        if i == 0:
            ax.set_ylabel(metric.upper())
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def ema_sweep_figure(sigma_rels, values, metric: str, *, best: int | None = None,
                     classic: float | None = None, title: str | None = None) -> Figure:
    """A metric against the EMA's relative length (EDM2's figure 5): the reconstructed
    averages as a line, the best one marked, the classic EMA's value dashed.

    Args:
        sigma_rels, values: ``(K,)`` lengths and the metric of each.
        metric: the metric's name (the y label).
        best: the index of the best length, marked.
        classic: the classic EMA's value, drawn as a horizontal line.
    """
    fig = _figure((4.6, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(sigma_rels, values, marker="o", color=_PATH_COLORS[0], label="post-hoc EMA")
    if best is not None:
        ax.plot([sigma_rels[best]], [values[best]], marker="*", markersize=14, linestyle="none",
                color=_POINT_COLOR, label=f"best: {sigma_rels[best]:.3g}")
    if classic is not None:
        ax.axhline(classic, color=_DATA_COLOR, linestyle="--", label="classic EMA")
    ax.set_xlabel("relative length of the EMA (sigma_rel)")
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> str:
    """Write ``fig`` to ``path`` (format from the suffix) atomically and return the path.

    The image goes to a temporary file in the same folder first and is renamed over ``path`` only
    once complete, so a failure leaves no partial file. matplotlib renders it with the canvas of
    the format (Agg for PNG) whatever the backend; a figure that pyplot manages is closed.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1] or ".png"
    try:
        write_atomically(path, lambda fh: fig.savefig(fh, dpi=dpi, format=suffix[1:]))
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")  # loaded only if the caller uses it
        if pyplot is not None:
            pyplot.close(fig)
    return path

