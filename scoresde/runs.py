"""Run folders: their files, finding them, the rules for resuming one, and loading its model.

A run is a folder holding ``config.json`` (every resolved option of :func:`~scoresde.train`,
grouped by concern, and the facts of the run: see :mod:`scoresde.config`), ``checkpoint.pt``
(written atomically), ``metrics.jsonl`` and ``writer.lock``, the lock that keeps a second
trainer out while one writes the folder (:func:`scoresde.utils.folder_lock`). A checkpoint
holds state dicts and plain data only and is read with
``torch.load(weights_only=True)``; a file that carries code or other pickled objects is refused
before anything in it runs. This module is the only one that
knows those file names: the training loop and the CLI ask it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Iterable

import torch

from .checks import OptionError
from .config import TrainConfig, group_config, migrate, upgrade_config
from .latent import LatentDiffusion
from .models import NoiseClassifier, ScoreModel, ScoreSDEModel, build_net
from .phema import check_sigma_rels, check_snapshot, reconstruct
from .sde import SDE, get_sde
from .utils import LOCK, FolderBusyError, is_inside, resolve_device, write_atomically

__all__ = ["CONFIG", "CHECKPOINT", "METRICS", "TRAINER_TEMPORARIES", "SAMPLES", "MAY_CHANGE",
           "RUN_FILES", "run_files", "check_run_folder",
           "save_checkpoint", "load_checkpoint", "has_checkpoint", "sample_grid_path",
           "write_config", "read_config", "append_metrics", "truncate_metrics", "last_loss",
           "is_run", "RUNS", "find_run", "latest_run", "new_run_dir", "removed_on_failure",
           "resume_state", "differences", "upgrade_config", "learnt_unconditional",
           "resume_keywords", "build_model", "load_run", "EMA_SNAPSHOTS", "save_ema_snapshot",
           "ema_snapshot_steps", "read_ema_snapshot", "drop_ema_snapshots", "ema_weights"]

CONFIG, CHECKPOINT, METRICS = "config.json", "checkpoint.pt", "metrics.jsonl"
# The suffixes of the temporary files that only a run's trainer writes (its atomic writes of the
# files above): those a killed trainer left are removed when the next one takes the folder.
TRAINER_TEMPORARIES = tuple(os.path.splitext(name)[1] for name in (CONFIG, CHECKPOINT, METRICS))
SAMPLES = "samples"  # the folder of the sample grids drawn while training (sample_every)
# The folder of the power-function EMA snapshots (ema_profiles): step_NNNNNN.pt, one per step.
EMA_SNAPSHOTS = "ema_snapshots"
# What a run folder holds of its own: the files above and the writer's lock (the sample grids'
# and the EMA snapshots' folders are the run's too). Nothing else writes these names.
RUN_FILES = (CONFIG, CHECKPOINT, METRICS, LOCK)
RUNS = Path("runs")  # where commands put new runs and look for the most recent one

# The options of train() that may differ between a run and its resumption; every other option
# must match config.json. They are the caller's, not the run's: how long, where, how often to
# write, whether to show progress; and how the same arithmetic is carried out (micro-batches,
# compilation, memory format: results differ by float round-off only, as on another device).
# The precision changes the results, so it stays the run's.
MAY_CHANGE = frozenset({"steps", "progress", "checkpoint_every", "log_every", "device", "resume",
                        "run_dir", "batch_gpu", "compile", "channels_last", "sample_every",
                        "eval_every", "eval_n", "eval_features", "data_path",
                        "ema_snapshot_every"})


# ----- files --------------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (tensors, state dicts, numbers, strings) to ``path``: tmp, then rename."""
    write_atomically(os.fspath(path), lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location=None) -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Args:
        path: the checkpoint file (a run folder's ``checkpoint.pt``).
        map_location: as for ``torch.load``: where to put the tensors.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file carries code or objects other than tensors and plain data (refused
            without running any of it), or is not a checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"refusing to load {path}: it holds objects other than tensors and plain "
                         f"data, which could run code ({_blocked(err)})") from None
    except (RuntimeError, EOFError, OSError) as err:  # OSError: a truncated zip archive
        raise ValueError(f"{path} is not a readable checkpoint: {err}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a scoresde checkpoint (a {type(state).__name__})")
    return state


def _blocked(err: Exception) -> str:
    """The line of a refused ``weights_only`` load that names what was blocked (torch's message
    also advises loading with ``weights_only=False``: advice never to follow for such a file)."""
    named = re.search(r"GLOBAL\s+([\w.]+)", str(err))
    if named:
        return f"blocked: {named.group(1)}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    kept = [line for line in lines if "weights_only" not in line and "torch.load" not in line
            and "safe_globals" not in line]
    return kept[0] if kept else type(err).__name__


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a checkpoint (a run that got at least that far)."""
    return os.path.isfile(os.path.join(run_dir, CHECKPOINT))


def sample_grid_path(run_dir: str | os.PathLike, step: int) -> str:
    """``run_dir/samples/step_000500.png``: the grid drawn at ``step`` (the folder is made)."""
    folder = os.path.join(run_dir, SAMPLES)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"step_{step:06d}.png")


def save_ema_snapshot(run_dir: str | os.PathLike, step: int, state: dict) -> None:
    """Write ``run_dir/ema_snapshots/step_NNNNNN.pt`` (atomically): the power-function EMAs at
    ``step``, ``{"step", "sigma_rels": [...], "averages": [{name: tensor}, ...]}``."""
    folder = os.path.join(run_dir, EMA_SNAPSHOTS)
    os.makedirs(folder, exist_ok=True)
    save_checkpoint(os.path.join(folder, f"step_{step:06d}.pt"), dict(state, step=step))


def ema_snapshot_steps(run_dir: str | os.PathLike) -> list[int]:
    """The steps of the EMA snapshots stored in ``run_dir``, in order (none: ``[]``)."""
    folder = os.path.join(run_dir, EMA_SNAPSHOTS)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(int(m.group(1)) for m in map(re.compile(r"step_(\d+)\.pt$").match, names) if m)


def read_ema_snapshot(run_dir: str | os.PathLike, step: int) -> dict:
    """The EMA snapshot of ``step`` (tensors memory-mapped from the file, read when used)."""
    path = os.path.join(run_dir, EMA_SNAPSHOTS, f"step_{step:06d}.pt")
    try:
        snap = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise ValueError(f"{path} is not a readable EMA snapshot: {err}") from None
    try:
        check_snapshot(snap, step)
    except ValueError as err:
        raise ValueError(f"{path} is not an EMA snapshot of this run: {err}") from None
    return snap


def drop_ema_snapshots(run_dir: str | os.PathLike, step: int) -> None:
    """Remove the EMA snapshots after ``step`` (from an attempt that died before its next
    checkpoint) and the temporary files of a snapshot write that a kill cut short."""
    folder = os.path.join(run_dir, EMA_SNAPSHOTS)
    for later in (s for s in ema_snapshot_steps(run_dir) if s > step):
        os.unlink(os.path.join(folder, f"step_{later:06d}.pt"))
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(".tmp-"):
                os.unlink(os.path.join(folder, name))


def write_config(run_dir: str | os.PathLike, config: dict) -> None:
    """Write ``config.json`` (atomically, indented, keys in order) in the file's layout, grouped
    by concern (:func:`~scoresde.config.group_config`), at :data:`~scoresde.config.SCHEMA`.

    Args:
        run_dir: the run folder.
        config: the run's config, flat as the library holds it (one of an older schema, or none,
            is brought to the current one first: :func:`~scoresde.config.migrate`).

    Raises:
        ValueError: the config is of a newer schema than this version of scoresde writes.
    """
    text = json.dumps(group_config(migrate(config)), indent=2).encode() + b"\n"
    write_atomically(os.path.join(run_dir, CONFIG), lambda f: f.write(text))


def read_config(run_dir: str | os.PathLike) -> dict:
    """Read ``config.json`` of a run folder, of any schema, as the flat view the library works
    on (``config["sde"]``, ``config["data_shape"]``) at :data:`~scoresde.config.SCHEMA`
    (:func:`~scoresde.config.migrate`; :func:`~scoresde.config.upgrade_config` completes the
    network's config as well).

    Raises:
        FileNotFoundError: the folder has no ``config.json``.
        ValueError: the file is not a JSON object, or is of a newer schema than this version of
            scoresde reads, or its layout is broken.
    """
    path = os.path.join(run_dir, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} is not a run folder: no {CONFIG}")
    with open(path) as f:
        config = json.load(f)
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a run's config: not a JSON object")
    return migrate(config)


def append_metrics(run_dir: str | os.PathLike, record: dict) -> None:
    """Append one JSON line to ``metrics.jsonl``."""
    with open(os.path.join(run_dir, METRICS), "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(run_dir: str | os.PathLike, step: int) -> None:
    """Drop the records after ``step`` (from a run that stopped before its next checkpoint), and a
    line cut short by a kill in the middle of its write."""
    path = os.path.join(run_dir, METRICS)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        keep = [line if line.endswith("\n") else line + "\n" for line in f
                if _step_of(line) is not None and _step_of(line) <= step]
    text = "".join(keep).encode()
    write_atomically(path, lambda f: f.write(text))


def _step_of(line: str) -> int | None:
    """The step of one ``metrics.jsonl`` line; None for a blank or unreadable (cut) line."""
    record = _record(line)
    return None if record is None else int(record.get("step", 0))


def _record(line: str) -> dict | None:
    """One ``metrics.jsonl`` line as a dict; None for a blank or unreadable (cut) line."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def last_loss(run_dir: str | os.PathLike) -> float:
    """The loss of the last record in ``metrics.jsonl`` that has one; NaN if none does."""
    loss = float("nan")
    path = os.path.join(run_dir, METRICS)
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                record = _record(line)
                if record is not None and isinstance(record.get("loss"), (int, float)):
                    loss = float(record["loss"])
    return loss


def run_files(run_dir: str | os.PathLike) -> list[Path]:
    """The paths of a run folder's own files (:data:`RUN_FILES`), present or not."""
    return [Path(run_dir) / name for name in RUN_FILES]


def check_run_folder(run_dir: str | os.PathLike, data=None) -> None:
    """Check that training may write into ``run_dir``: a folder that is absent, empty, or a
    run's (its ``config.json`` written by a run), so that no file of the user's is overwritten
    or mixed into a run, and not inside the folder of images ``data`` (whose reader would take
    the run's sample grids for data). Training writes only :data:`RUN_FILES`, the sample
    grids' folder and the EMA snapshots' folder.

    Raises:
        ValueError: ``run_dir`` is a file, or a folder with files but no run's ``config.json``
            (the message names one of them), or whose ``config.json`` is not a run's, or it
            lies inside ``data``.
    """
    path = Path(run_dir)
    if isinstance(data, (str, os.PathLike)) and os.path.isdir(data):
        if is_inside(path, data):
            raise ValueError(f"the run folder {path} lies inside the data folder {data}, whose "
                             "images would then include the run's; choose a folder outside it")
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"{path} is a file, not a run folder")
    entries = sorted(p for p in os.listdir(path) if not p.startswith(".tmp-") and p != LOCK)
    if not entries:
        return
    if CONFIG not in entries:
        raise ValueError(f"{path} is not empty and not a run folder (it holds {entries[0]!r}"
                         f"{f' and {len(entries) - 1} more' if len(entries) > 1 else ''}, no "
                         f"{CONFIG}); a run goes into a new or empty folder: choose another")
    if not _is_run_config(path / CONFIG):
        raise ValueError(f"{path / CONFIG} is not a run's config (not written by scoresde "
                         "train), so the folder is not a run; choose another folder")


def _is_run_config(path: Path) -> bool:
    """Whether ``path`` is a ``config.json`` written by a run: a JSON object with an SDE and
    a network (in their groups, or at the top in a file of before schema 8)."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict):
        return False
    loss, network = config.get("loss"), config.get("network")
    if isinstance(loss, dict) and isinstance(network, dict):  # grouped by concern
        config = {**loss, **network}
    return isinstance(config.get("sde"), dict) and isinstance(config.get("net"), dict)


# ----- finding runs -------------------------------------------------------------------------------
def is_run(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a run folder: it holds a ``config.json`` and a checkpoint."""
    return os.path.isfile(os.path.join(path, CONFIG)) and has_checkpoint(path)


def _is_post_hoc(config: dict) -> bool:
    """Whether a run's config is that of a post-hoc EMA folder (``scoresde ema --sigma-rel``):
    sampled and measured as a run, never trained on."""
    source = config.get("source")
    return isinstance(source, dict) and source.get("format") == "post-hoc EMA"


def _trainable(path: Path) -> bool:
    try:
        return not _is_post_hoc(read_config(path))
    except (OSError, ValueError):
        return True  # resuming it says what is wrong with it


def latest_run(root: str | os.PathLike, trainable: bool = False) -> Path | None:
    """The run folder under ``root`` whose checkpoint was written last; None when there is none.
    With ``trainable``, post-hoc EMA folders (written by ``scoresde ema``) are passed over."""
    root = Path(root)
    runs = [p for p in root.iterdir() if is_run(p)] if root.is_dir() else []
    runs = [p for p in runs if _trainable(p)] if trainable else runs
    return max(runs, key=lambda p: (p / CHECKPOINT).stat().st_mtime, default=None)


def find_run(run: str | os.PathLike | None = None, root: str | os.PathLike = RUNS,
             trainable: bool = False) -> Path:
    """The run folder ``run``, or the run under ``root`` whose checkpoint was written last
    (with ``trainable``, the last that is not a post-hoc EMA folder: one to resume).

    Raises:
        OptionError: ``run`` is not a folder, or not a run's (no config and checkpoint); no
            ``run`` and no run under ``root``.
    """
    if run is None:
        path = latest_run(root, trainable)
        if path is None:
            raise OptionError(None, f"no run found under ./{root}; train one with 'scoresde "
                                    "train' or pass --run DIR")
        return path
    if not os.path.isdir(run):
        raise OptionError("run", f"run folder {str(run)!r} does not exist")
    if not is_run(run):
        raise OptionError("run", f"{str(run)!r} is not a run folder (needs {CONFIG} and "
                                 f"{CHECKPOINT})")
    return Path(run)


@contextlib.contextmanager
def removed_on_failure(run_dir: str | os.PathLike, *, interrupt_removes_all: bool = False):
    """Remove the folder ``run_dir`` if this block creates it and then fails before it holds a
    checkpoint (a run that saved one is continued with ``resume``); with
    ``interrupt_removes_all``, an interrupt (Ctrl-C, SIGTERM) removes it whatever it holds. A
    :class:`~scoresde.utils.FolderBusyError` (the folder is another process's, whoever
    created it) removes nothing."""
    created = not os.path.exists(run_dir)
    try:
        yield
    except FolderBusyError:
        raise
    except BaseException as err:
        everything = interrupt_removes_all and isinstance(err, KeyboardInterrupt)
        if created and os.path.isdir(run_dir) and (everything or not has_checkpoint(run_dir)):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def new_run_dir(root: str | os.PathLike, *words: str) -> Path:
    """``root/NNNNN-words``, numbered one above the highest ``NNNNN-*`` folder under ``root``."""
    root = Path(root)
    ids = [int(p.name[:5]) for p in root.glob("[0-9][0-9][0-9][0-9][0-9]-*")] \
        if root.is_dir() else []
    tag = "-".join(Path(w).stem.replace(" ", "_") for w in words)
    return root / f"{max(ids, default=-1) + 1:05d}-{tag}"


# ----- resuming -----------------------------------------------------------------------------------
def resume_state(run_dir: str | os.PathLike, config: dict, resume: bool, rank: int = 0,
                 map_location=None) -> dict | None:
    """The checkpoint to continue ``run_dir`` from with the resolved ``config``, or None.

    None when the folder has no checkpoint yet (rank 0 creates the folder): the run starts at
    step 0, even with ``resume=True``.

    Raises:
        FileExistsError: the folder holds a checkpoint and ``resume`` is False.
        ValueError: options outside :data:`MAY_CHANGE` differ from its ``config.json``, or
            ``config["steps"]`` is below the checkpoint's step.
    """
    run_dir = os.fspath(run_dir)
    if not has_checkpoint(run_dir):
        if rank == 0:
            os.makedirs(run_dir, exist_ok=True)
        return None
    if not resume:
        raise FileExistsError(f"{run_dir} already holds a run with a checkpoint; pass resume=True "
                              "to continue it or choose another folder")
    old = upgrade_config(read_config(run_dir))
    if _is_post_hoc(old):
        raise ValueError(f"cannot resume {run_dir}: it is a post-hoc EMA of "
                         f"{old['source'].get('run')} written by 'scoresde ema', not a run "
                         "that trains (it has no optimizer state); resume that run instead")
    diff = sorted(differences(old, config))
    if diff:
        raise ValueError(f"cannot resume {run_dir}: options differ from its {CONFIG}: "
                         f"{', '.join(diff)}")
    state = load_checkpoint(os.path.join(run_dir, CHECKPOINT), map_location=map_location)
    if "optimizer" not in state:
        raise ValueError(f"cannot resume {run_dir}: its {CHECKPOINT} holds no optimizer state "
                         "(not a checkpoint of scoresde train), so it is not trained on")
    done = int(state["step"])
    if done > config["steps"]:
        raise ValueError(f"cannot resume {run_dir} with steps={config['steps']}: its checkpoint "
                         f"is at step {done}; pass steps >= {done}")
    return state


def differences(old: dict, new: dict) -> Iterable[str]:
    """Names of the options that differ between two configs, ``net.hidden`` style inside the
    option dicts (``net``, ``sde``), skipping those of :data:`MAY_CHANGE`, and
    ``label_dropout`` between two unconditional runs (it means nothing without labels) and the
    class names a run from before they were recorded lacks."""
    unconditional = not old.get("conditional") and not new.get("conditional")
    for key in set(old) | set(new):
        a, b = old.get(key), new.get(key)
        if key in MAY_CHANGE or a == b or (key == "label_dropout" and unconditional):
            continue
        if key == "class_names" and a is None:  # a run from before they were recorded
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            yield from (f"{key}.{k}" for k in set(a) | set(b) if a.get(k) != b.get(k))
        else:
            yield key


def learnt_unconditional(config: dict) -> bool:
    """Whether a run's network learnt the unconditional score (what ``y=None``, the null
    embedding and classifier-free guidance use): an unconditional run, or a conditional one
    trained with labels dropped (``label_dropout > 0``). ``config`` is a run's config or
    :func:`~scoresde.train`'s keywords."""
    return not config.get("conditional") or bool(config.get("label_dropout"))


def resume_keywords(old: dict, given: dict, named: Iterable[str]) -> dict:
    """The options of :func:`~scoresde.train` that continue the run of config ``old``.

    Every option the caller did not name is the run's own, whatever the library's defaults are
    now (they may have changed since the run started, or the run came from a caller with options
    another caller does not have). The SDE and the network keep their parameters unless another
    one is named; ``sde_params`` and ``net_params`` named in ``given`` override single ones.

    Args:
        old: the run's config (after :func:`~scoresde.config.upgrade_config`).
        given: the caller's options, every one (named or default).
        named: the names of the options the caller gave.
    """
    named = set(named)
    own = TrainConfig.from_run(old).options()
    out = {key: given[key] if key in named or key.endswith("_params") else own[key]
           for key in given}
    for key in ("sde", "net"):  # the run's, with the parameters given changed
        if key not in named or given[key] == own[key]:
            out[key] = own[key]
            out[f"{key}_params"] = {**own[f"{key}_params"], **(given[f"{key}_params"] or {})}
    return out


# ----- the run's model ----------------------------------------------------------------------------
def build_model(config: dict, sde: SDE) -> ScoreModel | NoiseClassifier:
    """The module a run trains, freshly initialised: its network rebuilt from ``config["net"]``
    inside the objective's wrapper (a score, a noisy classifier, or for an autoencoder run the
    network itself) for ``sde``; a run converted from score_sde_pytorch (``score_sde`` in its
    config) in the reference's score."""
    if config.get("score_sde"):
        return ScoreSDEModel(build_net(config["net"]), sde, **config["score_sde"])
    objective = config.get("objective", "score")
    if objective == "autoencoder":
        return build_net(config["net"])
    wrapper = NoiseClassifier if objective == "classifier" else ScoreModel
    return wrapper(build_net(config["net"]), sde, config["sigma_data"])


def ema_weights(run_dir: str | os.PathLike, sigma_rel: float,
                step: int | None = None) -> tuple[dict, dict]:
    """The power-function EMA of relative std ``sigma_rel`` at ``step`` (a snapshot's step;
    default: the run's last EMA snapshot) from the run's snapshots (:mod:`scoresde.phema`): a
    profile the run tracked is its own snapshot there; any other is the least-squares
    reconstruction from every snapshot up to ``step``.

    Returns:
        ``(weights, info)``: name to tensor (the model's floating-point state), and ``{"step",
        "sigma_rel", "tracked", "snapshots", "kernel_error"}`` (the kernel's L1 distance from
        the target's, 0 for a tracked profile).

    Raises:
        ValueError: a bad ``sigma_rel``; the run has no EMA snapshots (at or before ``step``);
            ``step`` is not a snapshot's step; a snapshot that is not one of the run's.
    """
    sigma_rel = check_sigma_rels("ema", sigma_rel)[0]
    steps = [s for s in ema_snapshot_steps(run_dir) if step is None or s <= step]
    if not steps:
        raise ValueError(f"{os.fspath(run_dir)} has no EMA snapshots"
                         f"{'' if step is None else f' at or before step {step}'}: "
                         f"{_why_no_snapshots(run_dir, step)}")
    if step is not None and step != steps[-1]:
        every = ema_snapshot_steps(run_dir)
        raise ValueError(f"step {step} is not an EMA snapshot's step of {os.fspath(run_dir)} "
                         f"(they are {len(every)} steps from {every[0]} to {every[-1]})")
    step = steps[-1]
    last = read_ema_snapshot(run_dir, steps[-1])
    tracked = [float(s) for s in last["sigma_rels"]]
    if steps[-1] == step and sigma_rel in tracked:
        weights = last["averages"][tracked.index(sigma_rel)]
        info = {"step": step, "snapshots": 1, "kernel_error": 0.0}
    else:
        class Snapshots:  # read one at a time, each time they are gone through
            def __iter__(self):
                return (read_ema_snapshot(run_dir, s) for s in steps)

        weights, info = reconstruct(Snapshots(), sigma_rel, step)
        info.pop("coefficients")
    return weights, dict(info, sigma_rel=sigma_rel, tracked=sigma_rel in tracked)


def _why_no_snapshots(run_dir, step: int | None) -> str:
    """What to do about a run without EMA snapshots (at or before ``step``)."""
    try:
        config = read_config(run_dir)
    except (OSError, ValueError):
        config = {}
    if _is_post_hoc(config):
        return (f"it is the post-hoc EMA of relative length {config['source'].get('sigma_rel')} "
                f"of {config['source'].get('run')} (scoresde ema); take other lengths from "
                "that run")
    if step is None and config.get("ema_profiles"):
        return f"its {EMA_SNAPSHOTS} folder is gone, though it was trained with ema_profiles"
    if config.get("ema_profiles"):
        return "its first snapshot is later"
    return "train it with ema_profiles (--ema-profiles) to choose the EMA after training"


def load_run(run_dir: str | os.PathLike, device=None, ema: bool | float = True,
             sde: SDE | None = None) -> tuple[ScoreModel | NoiseClassifier, SDE, dict]:
    """Rebuild a trained model from a run folder (no code is read from the checkpoint).

    A score run gives a :class:`~scoresde.ScoreModel`, a classifier run
    (:func:`~scoresde.train_classifier`) a :class:`~scoresde.NoiseClassifier`, an autoencoder
    run (``objective="autoencoder"``) its :class:`~scoresde.models.ConvAutoencoder`, and a
    latent run (``latent=AE_RUN``) a :class:`~scoresde.latent.LatentDiffusion` that samples
    images (its autoencoder read from ``AE_RUN``, which must still be there).

    Args:
        run_dir: a folder written by :func:`~scoresde.train`.
        device: where to put the model (CPU by default).
        ema: the classic EMA's weights (True), the raw weights of the last step (False), or a
            relative std (``0.07``): the power-function EMA of that length at the run's last
            EMA snapshot (:func:`ema_weights`; a run trained with ``ema_profiles``).
        sde: the SDE to use; rebuilt from ``config.json`` when None (pass your own SDE instance
            for a run trained with a custom SDE class).

    Returns:
        ``(model, sde, config)``: the model in eval mode with gradients switched off for its
        parameters, the SDE, and the run's config (with the keys of older versions filled in).
    """
    run_dir = os.fspath(run_dir)
    config = upgrade_config(read_config(run_dir))
    dev = resolve_device(device)
    state = load_checkpoint(os.path.join(run_dir, CHECKPOINT), map_location=dev)
    sde = sde if sde is not None else get_sde(**config["sde"])
    model = build_model(config, sde)
    weights = state["model"]
    if not isinstance(ema, bool):
        weights = {**weights, **ema_weights(run_dir, ema)[0]}
    elif ema:
        weights = {k.removeprefix("module."): v for k, v in state["ema"].items()
                   if k != "n_averaged"}
    model.load_state_dict(weights)
    model.to(dev).eval().requires_grad_(False)
    if config.get("latent"):  # a score of an autoencoder's latents: it decodes
        autoencoder = load_run(config["latent"], device=dev, ema=ema is not False)[0]
        model = LatentDiffusion(model, autoencoder, config["latent_scale"], sde)
    return model, sde, config
