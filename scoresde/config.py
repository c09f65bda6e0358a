"""The training configuration: every option of a run, grouped by concern, each default once.

:class:`TrainConfig` holds the options of :func:`~scoresde.train` in six frozen groups: the data
(:class:`DataOptions`), the network and what it learns (:class:`NetworkOptions`), the SDE and
the loss (:class:`LossOptions`), the optimisation (:class:`OptimOptions`), the loop
(:class:`LoopOptions`) and the evaluation while training (:class:`EvalOptions`). Each field's
default here is the only statement of it: ``train``'s keywords, the ``train`` command's options
and the values older runs are read with all come from these classes.

A run's ``config.json`` is the configuration, grouped by concern as :class:`TrainConfig` is:
``{"schema": 10, "data": {...}, "network": {...}, "loss": {...}, "optim": {...}, "loop": {...},
"eval": {...}, "run": {...}}``, each group's options in the order of its fields, with the SDE
and the network resolved to their full configs (``"loss": {"sde": {...}}``, ``"network":
{"net": {...}}``). ``"run"`` holds every other key, in the order written: the facts of the data
resolved when training started (``data_shape``, ``num_classes``, ``sigma_data``, ...), the
call's own ``run_dir``, ``resume``, ``device`` and ``progress``, and for a converted run its
``source``. ``schema`` is the version of the file.

The library works on the flat view of a config (each option and fact one key, as ``train``
takes them: ``config["sde"]``, ``config["data_shape"]``): :func:`flat_config` and
:func:`group_config` turn one layout into the other, and :func:`~scoresde.runs.read_config`
and :func:`~scoresde.runs.write_config` read and write the file through them. The file is
grouped from schema 8 (:data:`GROUPED`) and flat before. A config written by an older version
is brought to :data:`SCHEMA` by :func:`migrate`: a grouped one is flattened first, then the
numbered migrations of :data:`MIGRATIONS`, which all work on the flat view, are applied from
its own version (:func:`upgrade_config` completes the network's config as well). One written
by a newer version is refused with a message that says so.

This module imports neither torch nor the rest of the library until a check or an upgrade
needs them, so that a command can read the defaults before parsing its arguments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from importlib import import_module
from typing import Any, Callable

__all__ = ["SCHEMA", "MIGRATIONS", "GROUPS", "OPTIONS", "NET_FACTS", "DataOptions",
           "NetworkOptions", "LossOptions", "OptimOptions", "LoopOptions", "EvalOptions",
           "TrainConfig", "RUN", "GROUPED", "option_default", "option_rule", "group_config",
           "flat_config", "migrate", "upgrade_config"]


def _option(default, kind: str | None = None, **rule) -> Any:
    """A field with its default and how it is checked: ``kind`` ``"int"`` or ``"number"`` with
    bounds (``low``, ``high``, ``low_open``, ``high_open``), ``"choice"`` with ``choices`` (a
    tuple, or the dotted name of a library table, read when needed), ``"bool"``; ``optional``
    lets None through. Options without a kind are checked where they are used."""
    return field(default=default, metadata=dict(kind=kind, **rule))


@dataclass(frozen=True)
class DataOptions:
    """What the run learns from (see :func:`~scoresde.get_dataset`).

    Attributes:
        data: a toy name, ``"digits"``, a ``.npy``/``.npz`` path (uint8 arrays of rank 3 or 4
            are 8-bit images), a folder of image files (one subfolder per class for labels) or
            a ``GaussianMixture``.
        channels, resolution: image folders: convert to 1, 3 or 4 channels; resize the shorter
            side and centre-crop to ``resolution x resolution``.
        flip: 8-bit images: mirror each training image left to right with probability 1/2,
            drawn with the run's seed, so a resumed run draws the same.
        pixels: ``.npy``/``.npz`` data: None reads a uint8 array of rank 3 or 4 as 8-bit
            images; False as stored values (what runs of versions before image support did).
        downsample: image sets held as values (digits, float arrays): train at ``1 /
            downsample`` of the resolution (block means), e.g. the 4x4 base of a cascade.
        latent: an autoencoder run: train on its latents of its data (``data`` and the data
            options are the autoencoder run's, recorded as such), scaled to unit variance
            (recorded as ``latent_scale``); see :mod:`scoresde.latent`.
    """

    data: Any = _option("8gaussians")
    channels: int | None = _option(None)
    resolution: int | None = _option(None, "int", low=1, optional=True)
    flip: bool = _option(False)
    pixels: bool | None = _option(None)
    downsample: int = _option(1, "int", low=1)
    latent: str | None = _option(None)


@dataclass(frozen=True)
class NetworkOptions:
    """The network and what it learns.

    Attributes:
        net, net_params: ``"auto"`` (MLP for vectors, U-Net for images), a network of
            ``models.NETS`` or a preset of ``models.NET_PRESETS``, and keyword overrides for
            the network (over the preset's). In a run's config, ``net`` is the network's full
            config and ``net_params`` is absent.
        conditional: pass the data's labels to the network: class labels, or embeddings (the
            network then projects them and learns a null embedding).
        label_dropout: with ``conditional``, the share of labels replaced by the null label, so
            that the network also learns the unconditional score that classifier-free guidance
            needs; 0 to never drop.
        objective: ``"score"``, ``"classifier"`` (a noisy classifier for classifier guidance)
            or ``"autoencoder"`` (the autoencoder of images that ``latent`` runs use).
        super_res: train a super-resolution model: the score of the images given the images
            downsampled by this factor, upsampled, as extra U-Net channels; None for an
            ordinary model.
        cond_aug: with ``super_res``, conditioning augmentation: each sample's low-resolution
            image is noised by ``a N(0, I)`` with ``a ~ U[0, cond_aug]``, ``a`` given to the
            network; 0 for none. Recorded as 0 without ``super_res``.
    """

    net: Any = _option("auto")
    net_params: dict | None = _option(None)
    conditional: bool = _option(False)
    label_dropout: float = _option(0.1, "number", low=0, high=1, high_open=True)
    objective: str = _option("score", "choice", choices="training.OBJECTIVES")
    super_res: int | None = _option(None)
    cond_aug: float = _option(0.2)


@dataclass(frozen=True)
class LossOptions:
    """The forward SDE and the weighted denoising score matching loss.

    Attributes:
        sde, sde_params: an SDE name with its parameters, or an SDE instance. In a run's config,
            ``sde`` is the SDE's full config and ``sde_params`` is absent.
        weighting, eps, t_sampling: see :func:`~scoresde.losses.dsm_loss`.
        log_snr_share: with ``weighting="sigma2"``, the share of each batch's times drawn
            uniformly in log-SNR rather than in ``t``; 0.3 with ``net_params={"input_features":
            64}`` is the recipe for data with sharp edges such as checkerboard.
        sigma_data: data scale for the preconditioning; the data's standard deviation if None.
        time_sampling, time_loc, time_scale: ``"uniform"`` draws the times by the weighting's
            rule; ``"logit_normal"`` draws ``t = sigmoid(time_loc + time_scale n)``, ``n ~ N(0,
            1)``, truncated to ``[eps, T]`` (Esser et al. 2024; see :mod:`scoresde.losses`).
    """

    sde: Any = _option("vp")
    sde_params: dict | None = _option(None)
    weighting: str = _option("sigma2", "choice", choices="losses.WEIGHTINGS")
    eps: float = _option(1e-5)
    t_sampling: str = _option("stratified", "choice", choices="losses.T_SAMPLINGS")
    log_snr_share: float = _option(0.0)
    sigma_data: float | None = _option(None)
    time_sampling: str = _option("uniform", "choice", choices="losses.TIME_SAMPLINGS")
    time_loc: float = _option(0.0, "number")
    time_scale: float = _option(1.0, "number", low=0, low_open=True)


@dataclass(frozen=True)
class OptimOptions:
    """The optimiser and the average of the weights.

    Attributes:
        batch_size: points per step; None is :data:`~scoresde.training.VECTOR_BATCH` for vector
            data and :data:`~scoresde.training.IMAGE_BATCH` for images.
        lr, optimizer, weight_decay: the peak learning rate of Adam or AdamW.
        warmup, lr_decay: the learning rate rises linearly over ``warmup`` steps, then decays
            to 0 at the last step along a cosine (``"none"``: stays).
        grad_clip: gradients clipped to this norm; None for no clipping.
        ema_decay: the exponential moving average of the weights that sampling uses.
        ema_profiles: power-function EMAs kept besides it, by their relative standard
            deviations (``[0.05, 0.1]``), for choosing the average's length after training
            (:mod:`scoresde.phema`); None for none.
        ema_snapshot_every: with ``ema_profiles``, every this many steps (and at the end) a
            snapshot of each into ``RUN/ema_snapshots/``; None: a twentieth of ``steps``.
    """

    batch_size: int | None = _option(None, "int", low=1, optional=True)
    lr: float = _option(5e-3, "number", low=0, low_open=True)
    optimizer: str = _option("adam", "choice", choices=("adam", "adamw"))
    weight_decay: float = _option(0.0, "number", low=0)
    warmup: float = _option(100, "number", low=0)
    lr_decay: str = _option("cosine", "choice", choices=("cosine", "none"))
    grad_clip: float | None = _option(1.0, "number", low=0, optional=True)
    ema_decay: float = _option(0.995, "number", low=0, high=1, high_open=True)
    ema_profiles: list | None = _option(None)
    ema_snapshot_every: int | None = _option(None, "int", low=1, optional=True)


@dataclass(frozen=True)
class LoopOptions:
    """How long, from which seed, how often to write, and how the arithmetic runs.

    Attributes:
        steps: optimizer steps in all; raise it on resume to train longer.
        seed: the seed of every draw of the run (data, times, noise, label dropout).
        checkpoint_every, log_every: write the checkpoint and a metrics record every this many
            steps (and at the end).
        precision: ``"fp32"``; ``"bf16"`` (autocast, CPU and CUDA); ``"fp16"`` (autocast with a
            gradient scaler, CUDA only). Weights, optimizer and EMA stay float32.
        batch_gpu: the most samples per forward pass: each process's share of the batch is cut
            into micro-batches whose gradients are added up before the step; None: the whole.
        compile: run the model through ``torch.compile`` (a platform that cannot compile stops
            at the first step with a ``RuntimeError``).
        channels_last: images in ``torch.channels_last`` memory format.
    """

    steps: int = _option(1500, "int", low=1)
    seed: int = _option(0, "int")
    checkpoint_every: int = _option(1000, "int", low=1)
    log_every: int = _option(100, "int", low=1)
    precision: str = _option("fp32", "choice", choices="hardware.PRECISIONS")
    batch_gpu: int | None = _option(None)
    compile: bool = _option(False, "bool")
    channels_last: bool = _option(False, "bool")


@dataclass(frozen=True)
class EvalOptions:
    """What training draws and measures on the way (rank 0, from the EMA weights).

    Attributes:
        sample_every: every this many steps (and at the end), a seeded grid of images or a 2D
            scatter into ``RUN/samples/step_NNNNNN.png``; None for none.
        eval_every, eval_n, eval_features: every ``eval_every`` steps (and at the end), FID,
            KID, precision and recall of ``eval_n`` samples in ``metrics.jsonl``, with the
            features ``eval_features`` (``"digits"`` or a TorchScript file, which runs code);
            score runs of images only.
    """

    sample_every: int | None = _option(None, "int", low=1, optional=True)
    eval_every: int | None = _option(None, "int", low=1, optional=True)
    eval_n: int = _option(1000)
    eval_features: str = _option("digits")


# The keys of a run's network config that training sets from the data, not from the options.
NET_FACTS = ("event_shape", "num_classes", "embed_dim", "cond_channels")
# The groups, by the name of their field in TrainConfig.
GROUPS = {"data": DataOptions, "network": NetworkOptions, "loss": LossOptions,
          "optim": OptimOptions, "loop": LoopOptions, "eval": EvalOptions}
# Each option's group.
OPTIONS = {f.name: group for group, cls in GROUPS.items() for f in fields(cls)}
# The section of config.json that holds every key that is not an option (the run's facts).
RUN = "run"
_FIELDS = {f.name: f for cls in GROUPS.values() for f in fields(cls)}


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run, by concern: ``config.loop.steps``, ``config.optim.lr``.

    Build one from :func:`~scoresde.train`'s keywords with :meth:`of` (the others keep their
    defaults), change some with :meth:`replace`, get the flat keywords back with
    :meth:`options`; :meth:`from_run` reads a run's ``config.json``.
    """

    data: DataOptions = field(default_factory=DataOptions)
    network: NetworkOptions = field(default_factory=NetworkOptions)
    loss: LossOptions = field(default_factory=LossOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    loop: LoopOptions = field(default_factory=LoopOptions)
    eval: EvalOptions = field(default_factory=EvalOptions)

    @classmethod
    def of(cls, **options) -> "TrainConfig":
        """The configuration with these options (flat, as ``train`` takes them)."""
        return cls().replace(**options)

    def replace(self, **options) -> "TrainConfig":
        """A copy with these options changed (flat names)."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(f"unknown training option{'s' * (len(unknown) > 1)} "
                            f"{', '.join(unknown)}; the options are {', '.join(OPTIONS)}")
        changes = {}
        for name, value in options.items():
            changes.setdefault(OPTIONS[name], {})[name] = value
        return dataclasses.replace(self, **{group: dataclasses.replace(getattr(self, group), **c)
                                            for group, c in changes.items()})

    def options(self) -> dict:
        """Every option by its flat name, in the order of the groups."""
        return {name: getattr(getattr(self, group), name) for name, group in OPTIONS.items()}

    @classmethod
    def from_run(cls, config: dict) -> "TrainConfig":
        """The options of a run's config, of any schema, flat or grouped (brought to the flat
        view at :data:`SCHEMA` by :func:`migrate`): the SDE and the network by name with every
        parameter of the run's (``sde_params``, ``net_params``), less the network's facts that
        come from the data (:data:`NET_FACTS`). ``train(folder, TrainConfig.from_run(config))``
        trains the same run again."""
        config = migrate(config)
        options = {k: config[k] for k in OPTIONS if k in config}
        for key, facts in (("sde", ()), ("net", NET_FACTS)):
            if isinstance(options.get(key), dict):
                params = {k: v for k, v in options[key].items() if k not in facts}
                options[key], options[f"{key}_params"] = params.pop("name"), params
        return cls.of(**options)

    def check(self) -> "TrainConfig":
        """The configuration with each option that has a rule checked (integers as plain
        ``int``, numbers as given); raises ``ValueError``/``TypeError`` naming the first bad
        one."""
        return self.replace(**{name: _check(name, value) for name, value in self.options().items()
                               if _FIELDS[name].metadata["kind"]})


def option_default(name: str):
    """The default of the training option ``name``."""
    return _FIELDS[name].default


def option_rule(name: str) -> dict:
    """How the training option ``name`` is checked (see :func:`_option`): ``{"kind": "int",
    "low": 1}``, ``{"kind": "choice", "choices": "losses.WEIGHTINGS"}``, ``{"kind": None}``."""
    return dict(_FIELDS[name].metadata)


def _check(name: str, value):
    """``value`` of option ``name`` checked by its field's rule."""
    from .checks import check_choice, check_int, check_number

    rule = dict(_FIELDS[name].metadata)
    kind = rule.pop("kind")
    if value is None and rule.pop("optional", False):
        return None
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
        return value
    if kind == "choice":
        choices = rule["choices"]
        if isinstance(choices, str):  # a library table, named
            module, _, table = choices.rpartition(".")
            choices = getattr(import_module(f"scoresde.{module}"), table)
        return check_choice(name, value, choices)
    if kind == "int":
        return check_int(name, value, rule.get("low"), rule.get("high"))
    check_number(name, value, rule.get("low"), rule.get("high"),
                 low_open=rule.get("low_open", False), high_open=rule.get("high_open", False))
    return value  # as given: an int stays an int in config.json


# ----- the layout of config.json ------------------------------------------------------------------
def group_config(flat: dict) -> dict:
    """The layout of ``config.json`` of a flat config: ``schema`` (if there), the groups of
    :data:`GROUPS` with their options in the order of their fields, then :data:`RUN` with every
    other key in the order given. Every section is there, empty or not.
    :func:`flat_config` is its inverse."""
    grouped = {"schema": flat["schema"]} if "schema" in flat else {}
    for group, cls in GROUPS.items():
        grouped[group] = {f.name: flat[f.name] for f in fields(cls) if f.name in flat}
    grouped[RUN] = {k: v for k, v in flat.items() if k != "schema" and k not in OPTIONS}
    return grouped


def flat_config(grouped: dict) -> dict:
    """The flat config of ``config.json``'s layout (see :func:`group_config`, its inverse):
    ``schema`` and the keys of every section, each one key. A section may be missing.

    Raises:
        ValueError: a key at the top that is not a section or ``schema``, a section that is not
            a JSON object, or a key in a section other than its own (an option outside its
            group, or anything else outside :data:`RUN`).
    """
    flat = {"schema": grouped["schema"]} if "schema" in grouped else {}
    for section, values in grouped.items():
        if section == "schema":
            continue
        if section not in GROUPS and section != RUN:
            raise ValueError(f"config.json has an unknown section {section!r}; the sections "
                             f"are {', '.join([*GROUPS, RUN])}")
        if not isinstance(values, dict):
            raise ValueError(f"config.json's section {section!r} must be a JSON object, "
                             f"not {type(values).__name__}")
        for key, value in values.items():
            if key == "schema" or OPTIONS.get(key, RUN) != section:
                where = "at the top" if key == "schema" else f"in {OPTIONS.get(key, RUN)!r}"
                raise ValueError(f"config.json has {key!r} in section {section!r}; it belongs "
                                 f"{where}")
            flat[key] = value
    return flat


def _is_grouped(config: dict) -> bool:
    """Whether a config of schema :data:`GROUPED` or later is in the file's layout, not flat:
    it has a section no flat config has as a key (``data`` is both an option and a group: a
    flat config's is a name, a path, a mixture or None, never a dict with a ``data`` key)."""
    data = config.get("data")
    return any(section in config for section in (*GROUPS, RUN) if section != "data") or (
        isinstance(data, dict) and "data" in data)


# ----- versions of config.json --------------------------------------------------------------------
def _conditional_training(c: dict) -> None:
    """Runs from before conditional training learnt scores and never dropped labels."""
    c.setdefault("objective", "score")
    c.setdefault("label_dropout", 0.0)


def _log_snr_times(c: dict) -> None:
    """Runs from before ``log_snr_share`` drew every time by the weighting's own rule."""
    c.setdefault("log_snr_share", 0.0)


def _embeddings_and_cascades(c: dict) -> None:
    """Runs from before embedding conditioning had class labels or nothing; runs from before
    cascades and latent runs were at the data's resolution, of the data itself."""
    for key, value in (("embed_dim", 0), ("downsample", 1), ("super_res", None),
                       ("cond_aug", 0.0), ("latent", None), ("latent_scale", None)):
        c.setdefault(key, value)


def _image_data(c: dict) -> None:
    """Runs from before image support read every ``.npy``/``.npz`` array as its stored values
    and image folders as given, with no 8-bit pixel data."""
    if "pixel_bits" not in c and str(c.get("data", "")).endswith((".npy", ".npz")):
        c.setdefault("pixels", False)
    for key, value in (("channels", None), ("resolution", None), ("flip", False),
                       ("pixels", None), ("pixel_bits", None)):
        c.setdefault(key, value)


def _scaling_up(c: dict) -> None:
    """Runs from before mixed precision, micro-batches, compilation and sample grids ran
    without them."""
    for key, value in (("precision", "fp32"), ("batch_gpu", None), ("compile", False),
                       ("channels_last", False), ("sample_every", None)):
        c.setdefault(key, value)


def _evaluation(c: dict) -> None:
    """Runs from before the evaluation while training measured nothing."""
    for key, value in (("eval_every", None), ("eval_n", 1000), ("eval_features", "digits")):
        c.setdefault(key, value)


def _class_names(c: dict) -> None:
    """Runs from before class names were recorded: None, not known (labels by number only)."""
    c.setdefault("class_names", None)


def _time_sampling(c: dict) -> None:
    """Runs from before logit-normal times drew them by the weighting's rule."""
    for key, value in (("time_sampling", "uniform"), ("time_loc", 0.0), ("time_scale", 1.0)):
        c.setdefault(key, value)


def _grouped_file(c: dict) -> None:
    """Runs from before schema 8 wrote ``config.json`` flat; from 8 it is grouped by concern
    (:func:`group_config`). The layout is undone before the migrations run (:func:`migrate`)
    and the flat view has the same keys either way: nothing to fill in."""


def _power_ema(c: dict) -> None:
    """Runs from before post-hoc EMA kept the classic EMA only."""
    c.setdefault("ema_profiles", None)
    c.setdefault("ema_snapshot_every", None)


# MIGRATIONS[k] brings the flat view of a config of schema k to schema k + 1. Configs written
# before the schema was recorded are schema 0 (each step only fills in what is missing, so any
# of them can take every step). A change to config.json adds a step here and raises SCHEMA with
# it; a change of the file's layout alone changes group_config and flat_config, and its step
# has nothing to fill in.
MIGRATIONS: tuple[Callable[[dict], None], ...] = (
    _conditional_training, _log_snr_times, _embeddings_and_cascades, _image_data, _scaling_up,
    _evaluation, _class_names, _grouped_file, _power_ema, _time_sampling)
SCHEMA = len(MIGRATIONS)
GROUPED = 8  # the first schema whose config.json is grouped by concern (group_config)


def migrate(old: dict) -> dict:
    """The flat view of a run's config at :data:`SCHEMA`: a config in the file's layout
    (:data:`GROUPED` or later) is flattened (:func:`flat_config`), then the migrations from its
    own version are applied in turn. A flat config of any schema is taken as well. The dict
    given is left as it was.

    Raises:
        ValueError: the config is of a newer schema than this version of scoresde reads, or
            its layout is broken (see :func:`flat_config`).
    """
    config = dict(old)
    version = config.get("schema", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ValueError(f"config schema must be an int >= 0, got {version!r}")
    if version > SCHEMA:
        raise ValueError(f"the run's config is of schema {version}, written by a newer scoresde "
                         f"(this one reads schemas up to {SCHEMA}): upgrade scoresde to use it")
    if version >= GROUPED and _is_grouped(config):
        config = flat_config(config)
    for step in MIGRATIONS[version:]:
        step(config)
    config["schema"] = SCHEMA
    return config


def upgrade_config(old: dict) -> dict:
    """The flat view of a run's config at :data:`SCHEMA` (:func:`migrate`), its network's config
    completed with the keywords networks have gained since (with the values older runs had;
    this builds the network, drawing its initial weights from PyTorch's global generator).

    Raises:
        ValueError: the config is of a newer schema than this version of scoresde reads.
    """
    config = migrate(old)
    if "net" in config:
        from .hardware import count_params
        from .models import build_net

        net = build_net(config["net"])
        config["net"] = net.config()
        config.setdefault("num_params", count_params(net))
    return config
