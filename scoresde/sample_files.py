"""Many samples into one ``.npz`` file, in chunks: bounded memory, and a kill loses nothing.

:func:`write_in_chunks` draws ``n`` samples ``batch_size`` at a time. Each chunk is written as
soon as it is drawn into a folder beside the output (``OUT.parts/``, atomically, one file per
chunk), so memory holds one chunk; when every chunk is there, they are streamed into ``OUT`` (its
arrays written row block by row block, the file renamed into place when complete) and the folder
is removed. Run again after a kill, the same call skips the chunks already written and draws the
rest: chunk ``k`` depends only on its own randomness (:func:`chunk_generator`, or the samples'
own seeds), so the file equals an uninterrupted run's. The folder records what the chunks were
drawn with (``fingerprint``); a call with other options refuses to mix them in.

The finished file records it too (its ``manifest`` array, a JSON string): the same call again
finds its result already there and draws nothing, and a call with other options refuses to
replace it unless told to (``replace=True``, the command's ``--force``).

:func:`sample_to_file` is :func:`~scoresde.sample` through this: the Python API for 50,000
samples.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
import zipfile
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .checks import check_int
from .distributed import Ranks
from .outputs import PARTS_SUFFIX
from .progress import Progress
from .utils import folder_lock
from .utils import make_generator, write_atomically

__all__ = ["SAMPLE_BATCH", "chunk_generator", "chunk_randomness", "sample_chunk",
           "write_in_chunks",
           "sample_to_file", "parts_dir"]

# Samples per chunk when the caller does not say: vectors, images.
SAMPLE_BATCH = {"vector": 10_000, "image": 256}
_MANIFEST = "manifest.json"
_MANIFEST_KEY = "manifest"  # the finished file's record of what it holds
_DONE = "-done-"  # a chunk folder set aside for deletion: .OUT.parts-done-PID-TIME
_TIMINGS = ("time_s",)  # the keys of a chunk's info that are timings, not results
_TEMPORARIES = (".npz", ".json")  # what only the holder of a chunks' folder writes there

# draw(k, start, stop) -> (arrays of stop - start rows each, info of numbers); with
# write_in_chunks(steps=...), draw(k, start, stop, tick=...) calls tick() after each step.
ChunkDraw = Callable[..., tuple[dict[str, np.ndarray], dict]]


def parts_dir(out: str | os.PathLike) -> Path:
    """The folder that holds the finished chunks of ``out`` until it is complete."""
    out = Path(out)
    return out.with_name(out.name + PARTS_SUFFIX)


def chunk_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of chunk ``index`` of a draw seeded with ``seed``.

    Chunk 0 uses ``seed`` itself, so a draw that fits in one chunk is the one
    ``make_generator(seed)`` gives; chunk ``k > 0`` uses a seed that NumPy's ``SeedSequence``
    mixes from ``(seed, k)``, so the chunks of different seeds do not share streams.
    """
    seed, index = check_int("seed", seed, 0), check_int("index", index, 0)
    if index:
        seed = int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)
    return make_generator(seed, device)


def chunk_randomness(k: int, start: int, stop: int, seed: int, seeds: Sequence[int] | None,
                     device) -> tuple[dict, dict[str, np.ndarray]]:
    """The randomness of chunk ``k`` (samples ``start:stop``): the keywords for
    :func:`~scoresde.sample` (the samples' own ``seeds``, or :func:`chunk_generator`), and the
    arrays that record it in the output (``{"seeds": ...}``, or nothing)."""
    if seeds is None:
        return {"generator": chunk_generator(seed, k, device)}, {}
    own = [int(s) for s in seeds[start:stop]]
    return {"seeds": own}, {"seeds": np.asarray(own, dtype=np.int64)}


def sample_chunk(model, sde, shape: Sequence[int], k: int, start: int, stop: int, *,
                 seed: int = 0, seeds: Sequence[int] | None = None, labels=None,
                 guidance: float = 0.0, device=None, decode: bool = True,
                 **sample_options) -> tuple[torch.Tensor, dict, dict[str, np.ndarray]]:
    """Samples ``start:stop`` of a draw cut into chunks: chunk ``k``'s randomness
    (:func:`chunk_randomness`), :func:`~scoresde.sample` of ``model`` with classifier-free
    ``guidance`` when ``labels`` (the rows' labels or embeddings) are given, decoded into images
    when ``decode`` and ``model`` is a latent model (it has ``decode``). ``shape`` is one
    sample's (the latents' for a latent model). What ``scoresde sample`` writes, FID measures
    and :func:`sample_to_file` saves, chunk by chunk.

    Returns:
        ``(x, info, recorded)``: the samples on the CPU, ``sample``'s info, and the arrays that
        record the randomness (:func:`chunk_randomness`).
    """
    from .guidance import classifier_free_guidance
    from .sampling import sample

    randomness, recorded = chunk_randomness(k, start, stop, seed, seeds, device or "cpu")
    score = model if labels is None else classifier_free_guidance(model, labels, guidance)
    with torch.no_grad():  # sample() stops at the first non-finite step
        x, info = sample(score, sde, (stop - start, *shape), device=device, **sample_options,
                         **randomness)
        if decode and hasattr(model, "decode"):
            x = model.decode(x)
    return x.cpu(), info, recorded


def write_in_chunks(out: str | os.PathLike, n: int, batch_size: int, draw: ChunkDraw,
                    fingerprint: dict, progress: bool = True, keep: int = 0,
                    replace: bool = False, steps: int | None = None,
                    ranks: Ranks | None = None) -> dict:
    """Draw ``n`` rows in chunks of ``batch_size`` with ``draw`` and write them to ``out`` (.npz).

    Args:
        out: the ``.npz`` file to write (replaced atomically when complete).
        n: rows in all; batch_size: rows per chunk (the last may be smaller).
        draw: ``draw(k, start, stop) -> (arrays, info)``: chunk ``k``'s rows ``start:stop`` as
            NumPy arrays with ``stop - start`` rows each (the same keys, dtypes and row shapes for
            every chunk), and a dict of numbers about it (e.g. ``{"nfe": 20}``).
        fingerprint: JSON-able description of everything the rows depend on; chunks left by an
            earlier call are reused only when it is equal.
        progress: progress on stderr (:class:`~scoresde.progress.Progress`: a bar in a
            terminal, a line now and then elsewhere), of the chunks, or with ``steps`` of the
            steps.
        keep: rows to hand back (the first ``keep``, e.g. for a figure).
        replace: replace a file at ``out`` that holds other samples (or is not a sample file);
            a file holding these very samples (the same ``fingerprint``, ``n`` and
            ``batch_size``) is read, not drawn again, either way.
        steps: the steps of each chunk's draw, when ``draw`` takes a ``tick`` keyword that it
            calls after each step: the progress counts the steps then (of one chunk too).
        ranks: the processes of a ``torchrun`` job (:class:`~scoresde.distributed.Ranks`):
            each draws every ``world``-th of the chunks still missing, rank 0 writes ``out``,
            and every rank returns the same answer (its progress shows rank 0's share). The
            chunks' folder must be on a file system that every rank sees.

    Returns:
        ``{"chunks": number of chunks, "drawn": chunks drawn by this call, "info": [info of each
        chunk], "head": {key: the first keep rows}, "reused": whether out already held them}``.

    Raises:
        ValueError: bad sizes, or ``OUT.parts/`` holds chunks drawn with another fingerprint.
        FileExistsError: ``out`` exists, does not hold these samples, and ``replace`` is False.
        FloatingPointError: ``draw`` raised it (a sampler's NaN); the message names the chunk,
            and the chunks before it stay for the next call.
        FolderBusyError: another process is writing the same output.
    """
    n, batch_size = check_int("n", n, 1), check_int("batch_size", batch_size, 1)
    keep = check_int("keep", keep, 0)
    parts = parts_dir(out)
    # as JSON gives it back (tuples as lists), so that it compares with the recorded ones
    manifest = json.loads(json.dumps({"fingerprint": fingerprint, "n": n,
                                      "batch_size": batch_size}))
    if ranks is not None and ranks.world > 1:
        return _write_shared(out, parts, n, batch_size, draw, manifest, progress, keep, replace,
                             steps, ranks)
    _remove_leftovers(parts)
    done = _finished(out, manifest, keep, replace)
    if done is not None:
        if _parts_manifest(parts) == manifest:  # a kill after the rename, before the removal
            with folder_lock(parts, _TEMPORARIES):
                trash = _set_aside(parts)
            shutil.rmtree(trash, ignore_errors=True)
        return done
    trash = None
    try:
        with folder_lock(parts, _TEMPORARIES):
            started = (parts / _MANIFEST).is_file()
            try:
                result = _write_locked(out, parts, n, batch_size, draw, manifest, progress, keep,
                                       steps)
            except BaseException:
                if not started and not any(parts.glob("chunk-*")):
                    trash = _set_aside(parts)  # nothing drawn: no partial output left behind
                raise
            trash = _set_aside(parts)
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    return result


def _finished(out, manifest: dict, keep: int, replace: bool) -> dict | None:
    """:func:`write_in_chunks`'s answer read from ``out`` when it already holds the samples of
    ``manifest``; None when there is no file (or it may be replaced).

    Raises:
        FileExistsError: ``out`` holds something else and ``replace`` is False.
    """
    if not os.path.exists(out):
        return None
    recorded, wanted = _read_manifest(out), manifest
    if recorded is not None and {k: recorded.get(k) for k in wanted} == wanted:
        infos = [dict(i, **{k: 0.0 for k in _TIMINGS}) for i in recorded["info"]]
        return {"chunks": len(infos), "drawn": 0, "info": infos, "head": _file_head(out, keep),
                "reused": True}
    if replace:
        return None
    if recorded is not None:
        old = dict(recorded.get("fingerprint") or {}, n=recorded.get("n"),
                   batch_size=recorded.get("batch_size"))
        new = dict(wanted["fingerprint"], n=wanted["n"], batch_size=wanted["batch_size"])
        what = "samples drawn with other options ({})".format(", ".join(
            sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))))
    else:
        what = "a file that does not say which samples it holds (not written by this version)"
    raise FileExistsError(f"{out} already exists and holds {what}; replace it (--force, "
                          "replace=True) or write to another file")


def _parts_manifest(parts: Path) -> dict | None:
    """What the chunks in ``parts`` were drawn with; None without a (readable) record."""
    try:
        return json.loads((parts / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _untimed(info: dict) -> dict:
    """A chunk's info without its timings, which the file does not record: the same options
    give the same file, bit for bit (a reused file's chunks took 0 s in the call that reads
    it)."""
    return {k: v for k, v in info.items() if k not in _TIMINGS}


def _read_manifest(out) -> dict | None:
    """The manifest recorded in a finished sample file, or None (another file, or unreadable)."""
    try:
        with np.load(out, allow_pickle=False) as data:
            if _MANIFEST_KEY not in data.files:
                return None
            manifest = json.loads(str(data[_MANIFEST_KEY]))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    return manifest if isinstance(manifest, dict) and "info" in manifest else None


def _file_head(out, keep: int) -> dict[str, np.ndarray]:
    """The first ``keep`` rows of every array of a finished sample file, read without loading
    the rest (the arrays are stored uncompressed: :func:`_assemble`)."""
    head = {}
    with zipfile.ZipFile(out) as archive:
        for name in archive.namelist():
            key = name.removesuffix(".npy")
            if key == _MANIFEST_KEY:
                continue
            with archive.open(name) as member:
                version = np.lib.format.read_magic(member)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(member)
                rows = min(keep, shape[0])
                count = rows * int(np.prod(shape[1:], dtype=np.int64))
                block = np.frombuffer(member.read(count * dtype.itemsize), dtype=dtype)
                head[key] = block.reshape((rows, *shape[1:]), order="F" if fortran else "C")
    return head


def _set_aside(parts: Path) -> Path:
    """Move the chunks' folder out of the way while its lock is held (a process that arrives
    next finds no folder, or a fresh one, never a half-deleted one); the caller deletes it."""
    trash = parts.with_name(f".{parts.name}{_DONE}{os.getpid()}-{time.monotonic_ns()}")
    os.replace(parts, trash)
    return trash


def _remove_leftovers(parts: Path) -> None:
    """Delete the chunk folders set aside (:func:`_set_aside`) whose deletion a kill cut short:
    nothing in them is needed any more."""
    for trash in parts.parent.glob(f".{glob.escape(parts.name)}{_DONE}*"):
        shutil.rmtree(trash, ignore_errors=True)


def _write_locked(out, parts: Path, n: int, batch_size: int, draw: ChunkDraw, manifest: dict,
                  progress: bool, keep: int, steps: int | None) -> dict:
    """:func:`write_in_chunks` once it holds the lock of the chunks' folder."""
    _check_manifest(parts, manifest)
    count = -(-n // batch_size)
    todo = [k for k in range(count) if not (parts / _chunk_name(k)).is_file()]
    _draw_chunks(parts, n, batch_size, draw, todo, count - len(todo), progress, steps)
    return dict(_assemble_all(out, parts, count, manifest, keep), drawn=len(todo))


def _draw_chunks(parts: Path, n: int, batch_size: int, draw: ChunkDraw, todo: Sequence[int],
                 done: int, progress: bool, steps: int | None) -> None:
    """Draw and write the chunks ``todo`` (``done`` others are there already)."""
    count = done + len(todo)
    per, unit = (steps, "step") if steps else (1, "chunk")
    shown = progress and (count > 1 or bool(steps))
    with Progress(count * per, initial=done * per, unit=unit, desc="sampling",
                  enabled=shown) as bar:
        for i, k in enumerate(todo, start=done + 1):
            start, stop = k * batch_size, min(n, (k + 1) * batch_size)
            bar.within(i * per)
            ticks = {"tick": bar.tick} if steps else {}
            try:
                arrays, info = draw(k, start, stop, **ticks)
            except FloatingPointError as err:
                raise FloatingPointError(f"chunk {k} (samples {start}-{stop - 1}): {err}; the "
                                         f"chunks drawn before it are kept") from None
            _write_chunk(parts / _chunk_name(k), arrays, info, stop - start)
            bar.set(i * per)  # i chunks done (a solver may call back more or less often)


def _assemble_all(out, parts: Path, count: int, manifest: dict, keep: int) -> dict:
    """Every chunk into ``out``; the answer of :func:`write_in_chunks` but ``drawn``."""
    chunks = [parts / _chunk_name(k) for k in range(count)]
    infos = [_read_info(path) for path in chunks]
    head = _head(chunks, keep)
    _assemble(out, chunks, dict(manifest, info=[_untimed(i) for i in infos]))
    return {"chunks": count, "info": infos, "head": head, "reused": False}


def _write_shared(out, parts: Path, n: int, batch_size: int, draw: ChunkDraw, manifest: dict,
                  progress: bool, keep: int, replace: bool, steps: int | None,
                  ranks: Ranks) -> dict:
    """:func:`write_in_chunks` under ``torchrun``: rank 0 checks and locks the chunks' folder
    and says which chunks are missing, each rank draws its share of them, rank 0 assembles
    the file. Three collectives in all, whatever the chunks and the solvers' steps."""
    count = -(-n // batch_size)
    status, trash, result = None, None, None
    try:
        with ExitStack() as held:
            started = True
            if ranks.lead:  # as one process, up to the drawing
                try:
                    _remove_leftovers(parts)
                    status = _finished(out, manifest, keep, replace)
                    if status is None:
                        held.enter_context(folder_lock(parts, _TEMPORARIES))
                        started = (parts / _MANIFEST).is_file()
                        _check_manifest(parts, manifest)
                        status = [k for k in range(count)
                                  if not (parts / _chunk_name(k)).is_file()]
                    elif _parts_manifest(parts) == manifest:
                        with folder_lock(parts, _TEMPORARIES):
                            trash = _set_aside(parts)
                except Exception as err:
                    status = err
            status = ranks.broadcast(status)  # an error, the answer, or the chunks to draw
            if isinstance(status, BaseException):
                raise status
            if isinstance(status, dict):
                return status
            todo, error = status, None
            try:
                _draw_chunks(parts, n, batch_size, draw, ranks.share(todo), 0,
                             progress and ranks.lead, steps)
            except Exception as err:
                error = err
            try:
                ranks.agree(error)
            except BaseException:
                if ranks.lead and not started and not any(parts.glob("chunk-*")):
                    trash = _set_aside(parts)  # nothing drawn: no partial output left behind
                raise
            if ranks.lead:
                try:
                    result = dict(_assemble_all(out, parts, count, manifest, keep),
                                  drawn=len(todo))
                    trash = _set_aside(parts)
                except Exception as err:
                    result = err
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    result = ranks.broadcast(result)
    if isinstance(result, BaseException):
        raise result
    return result


def _chunk_name(k: int) -> str:
    return f"chunk-{k:06d}.npz"


def _check_manifest(parts: Path, manifest: dict) -> None:
    path = parts / _MANIFEST
    if path.is_file():
        if _parts_manifest(parts) != manifest:
            raise ValueError(f"{parts} holds chunks drawn with other options; repeat the command "
                             "that drew them to finish it, or delete the folder to start over")
        return
    text = json.dumps(manifest, indent=2).encode()
    write_atomically(path, lambda f: f.write(text))


def _write_chunk(path: Path, arrays: dict, info: dict, rows: int) -> None:
    for key, value in arrays.items():
        if key.startswith("info_") or np.shape(value)[:1] != (rows,):
            raise ValueError(f"chunk array {key!r} must have {rows} rows, got {np.shape(value)}")
    extra = {f"info_{k}": np.asarray(v) for k, v in info.items()}
    write_atomically(path, lambda f: np.savez(f, **arrays, **extra))


def _read_info(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {k[5:]: data[k].item() for k in data.files if k.startswith("info_")}


def _head(chunks: Sequence[Path], keep: int) -> dict[str, np.ndarray]:
    """The first ``keep`` rows of every array, read from as few chunks as hold them."""
    blocks: dict[str, list[np.ndarray]] = {}
    rows = 0
    for path in chunks:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                if not key.startswith("info_"):
                    blocks.setdefault(key, []).append(data[key][:keep - rows])
        rows += len(next(iter(blocks.values()))[-1])
        if rows >= keep:
            break
    return {key: np.concatenate(parts) for key, parts in blocks.items()}


def _assemble(out: str | os.PathLike, chunks: Sequence[Path], manifest: dict) -> None:
    """Stream the chunks' arrays, key by key and chunk by chunk, into one ``.npz`` at ``out``,
    with ``manifest`` (what they were drawn with, and each chunk's info) as a JSON string.

    The temporary file is made in the chunks' folder, whose next holder removes it if a kill
    leaves it there, and renamed to ``out`` when complete."""
    with np.load(chunks[0], allow_pickle=False) as first:
        keys = [k for k in first.files if not k.startswith("info_")]
        layout = {k: (first[k].dtype, first[k].shape[1:]) for k in keys}
    rows = 0
    for path in chunks:
        with np.load(path, allow_pickle=False) as data:
            rows += data[keys[0]].shape[0]

    def write(fh) -> None:
        with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key in keys:
                dtype, row_shape = layout[key]
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_2_0(member, {
                        "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                        "shape": (rows, *row_shape)})
                    for path in chunks:
                        with np.load(path, allow_pickle=False) as data:
                            block = data[key]
                        if block.dtype != dtype or block.shape[1:] != row_shape:
                            raise ValueError(f"{path}: array {key!r} differs from chunk 0's")
                        member.write(np.ascontiguousarray(block).tobytes())
            with archive.open(f"{_MANIFEST_KEY}.npy", "w") as member:
                np.lib.format.write_array(member, np.array(json.dumps(manifest)))

    write_atomically(out, write, folder=chunks[0].parent)


def sample_to_file(out: str | os.PathLike, score_fn, sde, shape: Sequence[int], *,
                   batch_size: int | None = None, seed: int = 0,
                   seeds: Sequence[int] | None = None, device=None, progress: bool = True,
                   fingerprint: dict | None = None, replace: bool = False,
                   **sample_kwargs) -> dict:
    """:func:`~scoresde.sample` of ``shape = (n, *dims)`` into ``out`` (.npz, key ``samples``),
    ``batch_size`` samples at a time (default :data:`SAMPLE_BATCH`), resumable after a kill.

    Chunk ``k`` draws from :func:`chunk_generator` ``(seed, k)``, or with ``seeds`` (one per
    sample, written under ``seeds``) sample ``i`` from ``seeds[i]`` whatever the chunking.
    Rerun after a kill with the same arguments (and the same score function: it cannot be
    fingerprinted, so pass ``fingerprint`` naming it, e.g. the run folder and its step, to have
    a changed model refused) and it continues where it stopped. A finished ``out`` of the same
    call is read, not drawn again; one of another call is refused unless ``replace=True``.

    Returns:
        :func:`write_in_chunks`'s answer, plus ``"nfe"``: score calls per chunk (their mean).
    """
    n, dims = check_int("n", shape[0], 1), tuple(int(d) for d in shape[1:])
    if seeds is not None and len(seeds) != n:
        raise ValueError(f"seeds must hold one integer per sample ({n}), got {len(seeds)}")
    if batch_size is None:
        batch_size = SAMPLE_BATCH["image" if len(dims) == 3 else "vector"]
    def draw(k: int, start: int, stop: int):
        x, info, recorded = sample_chunk(score_fn, sde, dims, k, start, stop, seed=seed,
                                         seeds=seeds, device=device, decode=False,
                                         **sample_kwargs)
        return {"samples": x.numpy(), **recorded}, {"nfe": info["nfe"]}

    print_kw = {k: repr(v) for k, v in sorted(sample_kwargs.items())}
    mark = dict(fingerprint or {}, shape=[n, *dims], seed=seed,
                seeds=None if seeds is None else [int(s) for s in seeds], options=print_kw)
    result = write_in_chunks(out, n, batch_size, draw, mark, progress, replace=replace)
    return dict(result, nfe=float(np.mean([i["nfe"] for i in result["info"]])))
