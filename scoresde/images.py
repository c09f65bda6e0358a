"""Pixel data: folders of image files, uint8 arrays, and the per-step batch stream over them.

A folder is read recursively; every file whose suffix Pillow registers (PNG, JPEG, BMP, WebP,
...) is an image. Links are followed, but no directory is entered twice and a link to a
directory inside the folder is skipped (its images are read where they are), so a link loop
ends and each image is read once; a walk that meets more than :data:`MAX_ENTRIES` entries
stops with an error (a wrong folder, such as ``/``). Images are decoded with Pillow to 8 bits
per channel (16-bit greyscale scaled, :meth:`ImageFiles.decode`), optionally resized (shorter
side to ``resolution``, Lanczos) and centre-cropped to ``resolution x resolution``.
Pixel values ``p`` in ``0..255`` become model values ``x = (p + 0.5) / 128 - 1`` in
``(-1, 1)``: the centres of the bins that :func:`scoresde.bits_per_dim` dequantises, so raw
value ``128 x + 127.5`` is the pixel value.

Training batches of pixel data are a pure function of the run's seed and the step
(:func:`step_draw`): the image indices and flips of step ``k`` do not depend on any generator
state, so a resumed run continues the stream exactly, a ``DataLoader`` may prefetch steps ahead,
and each rank decodes only its share. Folders whose decoded size is above
:data:`IN_MEMORY_BYTES` are decoded by ``DataLoader`` workers as they are needed; smaller ones
are decoded once and kept in memory, with the same batches.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import signal
import sys
import weakref
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .checks import check_int
from .utils import append_dims

__all__ = ["PIXELS", "IN_MEMORY_BYTES", "WORKERS", "PREFETCH", "MAX_ENTRIES", "ImageFiles",
           "sample_levels", "save_images",
           "list_images", "read_folder", "to_model", "pixels_of_array", "step_draw", "StepBatches",
           "downsample", "upsample", "check_factor"]

# A folder decodes to float32 tensors in memory up to this many bytes; above it, it streams.
IN_MEMORY_BYTES = 2 * 2**30
# DataLoader worker processes that decode a streamed folder, and batches each prefetches.
WORKERS, PREFETCH = min(4, os.cpu_count() or 1), 2
# A walk over a folder stops with an error after this many entries (files and folders): a few
# million is more than the data sets read as folders hold, and far less than a file system.
MAX_ENTRIES = 5_000_000
# Channels of the images, from Pillow's mode, and the mode each channel count converts to.
_CHANNELS = {"1": 1, "L": 1, "I": 1, "I;16": 1, "I;16L": 1, "I;16B": 1, "I;16N": 1, "F": 1,
             "LA": 4, "La": 4, "PA": 4, "RGBA": 4, "RGBa": 4}
MODES = {1: "L", 3: "RGB", 4: "RGBA"}
# Pillow's modes of 16-bit greyscale (a 16-bit PNG opens as "I;16", or "I" in older Pillow).
_SIXTEEN_BITS = ("I", "I;16", "I;16L", "I;16B", "I;16N")


# How 8-bit pixel data map to model values and back: raw = raw_scale * x + raw_offset, the
# Dataset fields of every pixel data set (folders and uint8 arrays).
PIXELS = {"raw_scale": 128.0, "raw_offset": 127.5, "pixel_bits": 8}


def to_model(pixels: torch.Tensor) -> torch.Tensor:
    """Model values ``(p + 0.5) / 128 - 1`` (float32) of uint8 pixels ``p``, any shape: the
    inverse of :data:`PIXELS`' map."""
    return (pixels.to(torch.float32) - PIXELS["raw_offset"]) / PIXELS["raw_scale"]


def _image_module():
    from PIL import Image  # Pillow, installed with matplotlib

    return Image


def _channels_of(image) -> int:
    """1 (grayscale), 3 (colour) or 4 (with alpha) for a Pillow image's mode."""
    if image.mode == "P":
        return 4 if "transparency" in image.info else 3
    return _CHANNELS.get(image.mode, 3)


# ----- a folder's files ---------------------------------------------------------------------------
def list_images(root: str) -> list[str]:
    """Relative paths (``/``-separated, sorted) of the files under ``root`` with an image suffix
    that Pillow registers.

    Links are followed (a data set may be linked in), but a directory already walked (the same
    ``(st_dev, st_ino)``) is not entered again and a link to a directory inside ``root`` is
    skipped, so a link loop ends, and each image is listed once, under its path without links.

    Raises:
        ValueError: ``root`` is the file system's root, or holds more than :data:`MAX_ENTRIES`
            entries.
    """
    real = os.path.realpath(root)
    if os.path.dirname(real) == real:
        raise ValueError(f"{root!r} is the root of the file system, not a folder of images")
    suffixes = {s.lower() for s in _image_module().registered_extensions()}
    inside = os.path.join(real, "")
    seen = {_identity(root)}
    found, entries = [], 0
    for folder, dirs, names in os.walk(root, followlinks=True):
        entries += len(dirs) + len(names)
        if entries > MAX_ENTRIES:
            raise ValueError(f"more than {MAX_ENTRIES:,} entries under {root!r}: is it the right "
                             "folder? (the bound is scoresde.images.MAX_ENTRIES)")
        dirs[:] = [d for d in sorted(dirs) if _first_visit(os.path.join(folder, d), inside, seen)]
        rel = os.path.relpath(folder, root)
        found += [name if rel == "." else f"{rel}/{name}".replace(os.sep, "/")
                  for name in names if os.path.splitext(name)[1].lower() in suffixes]
    return sorted(found)


def _identity(path: str) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of what ``path`` points to: the same for every link to it."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _first_visit(path: str, inside: str, seen: set) -> bool:
    """Whether a walk enters the directory ``path``: not when a link to a directory under
    ``inside`` (walked without the link) nor when already in ``seen`` (to which it is added)."""
    try:
        if os.path.islink(path) and os.path.join(os.path.realpath(path), "").startswith(
                inside):
            return False
        key = _identity(path)
    except OSError:  # gone, or unreadable: os.walk would skip it as well
        return False
    if key in seen:
        return False
    seen.add(key)
    return True


def _headers(root: str, files: list[str]) -> tuple[list[str], list, list[int]]:
    """``(files, sizes, channels)`` of the files Pillow can open (headers only); the others are
    skipped with one line on stderr."""
    Image = _image_module()
    kept, sizes, channels, bad = [], [], [], []
    for rel in files:
        try:
            with Image.open(os.path.join(root, rel)) as im:
                sizes.append(im.size)
                channels.append(_channels_of(im))
            kept.append(rel)
        except (OSError, ValueError, Image.DecompressionBombError):
            bad.append(rel)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        print(f"scoresde: skipped {len(bad)} file(s) under {root} that Pillow cannot read: "
              f"{bad[0]}{more}", file=sys.stderr)
    return kept, sizes, channels


def _held_out_first(files: list[str]) -> list[int]:
    """Indices of ``files`` ordered by the SHA-256 of each relative path: a fixed order that
    depends on the names alone, not on the order a file system lists them."""
    return sorted(range(len(files)), key=lambda i: hashlib.sha256(files[i].encode()).digest())


class ImageFiles(torch.utils.data.Dataset):
    """Image files decoded on demand: ``files[(i, flip)]`` is image ``i`` as uint8 ``(C, H, W)``,
    mirrored left to right when ``flip``. Picklable, so ``DataLoader`` workers can decode."""

    def __init__(self, root: str, files: list[str], channels: int, resolution: int | None):
        self.root, self.files, self.channels, self.resolution = root, files, channels, resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key) -> torch.Tensor:
        i, flip = key if isinstance(key, tuple) else (key, False)
        x = torch.from_numpy(self.decode(i)).permute(2, 0, 1)
        return x.flip(-1) if flip else x

    def decode(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 ``(H, W, C)``: converted, resized and centre-cropped.

        16-bit greyscale (Pillow's modes ``I;16`` and ``I``) becomes 8 bits by rounding
        ``v / 257`` (values of ``I`` clipped to ``0..65535`` first), so ``0..65535`` spans
        ``0..255`` and a 16-bit copy of an 8-bit image (``v = 257 p``) reads back as ``p``.

        Raises:
            ValueError: the file cannot be decoded (named in the message).
        """
        Image, path = _image_module(), os.path.join(self.root, self.files[i])
        try:
            with Image.open(path) as im:
                im = _eight_bits(Image, im).convert(MODES[self.channels])
                if self.resolution is not None:
                    im = _resize_crop(Image, im, self.resolution)
                out = np.array(im, dtype=np.uint8)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot decode image {path}: {err}") from None
        return out.reshape(*out.shape[:2], self.channels)

    def decode_all(self, indices) -> torch.Tensor:
        """The images at ``indices`` as uint8 ``(N, C, H, W)``."""
        indices = list(indices)
        if not indices:
            return torch.zeros(0, self.channels, 1, 1, dtype=torch.uint8)
        return torch.stack([self[i] for i in indices])


def _eight_bits(Image, im):
    """A 16-bit greyscale image as 8-bit greyscale (``L``), ``round(v / 257)``; others as they
    are (Pillow's own conversion would clip the 16-bit values to ``0..255``)."""
    if im.mode not in _SIXTEEN_BITS:
        return im
    v = np.clip(np.asarray(im, dtype=np.int64), 0, 2**16 - 1)
    return Image.fromarray(((v + 128) // 257).astype(np.uint8))  # mode L


def _resize_crop(Image, im, resolution: int):
    """Shorter side to ``resolution`` (Lanczos), then the centre ``resolution`` square."""
    w, h = im.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    if size != (w, h):
        im = im.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return im.crop((left, top, left + resolution, top + resolution))


def _class_files(files: list[str], root: str) -> list[str]:
    """The files of the data set: with class subfolders, those inside them (the images at the
    top level beside them are left out, said on stderr)."""
    nested = [f for f in files if "/" in f]
    if nested and len(nested) < len(files):
        print(f"scoresde: {len(files) - len(nested)} image(s) at the top level of {root}, beside "
              "its class folders, are left out", file=sys.stderr)
    return nested or files


def _classes(files: list[str]) -> tuple[list[str], list[int] | None]:
    """``(class_names, labels)``: one class per top-level folder, sorted names -> 0..K-1;
    ``([], None)`` for a flat folder."""
    if "/" not in files[0]:
        return [], None
    names = sorted({f.split("/", 1)[0] for f in files})
    index = {name: k for k, name in enumerate(names)}
    return names, [index[f.split("/", 1)[0]] for f in files]


def read_folder(root: str, *, channels: int | None, resolution: int | None,
                test_fraction: float, test_size: int, in_memory: bool | None) -> dict:
    """Read an image folder into the pieces of a :class:`~scoresde.data.Dataset`.

    Returns:
        A dict of ``Dataset`` keywords: ``event_shape``, ``test`` (up to ``test_size`` of the
        held-out images, model values), ``train`` (model values ``(N, C, H, W)``, or None when
        streamed), ``train_source`` (an :class:`ImageFiles` of the training images),
        labels, ``num_classes``, ``reference_fn``.

    Raises:
        ValueError: no image files, none readable, mixed channel counts without ``channels``,
            mixed sizes without ``resolution``, a file that cannot be decoded, or more than
            :data:`MAX_ENTRIES` entries under ``root``.
    """
    files = list_images(root)
    if not files:
        raise ValueError(f"data folder {root!r} holds no image files (PNG, JPEG, BMP, WebP, ...)")
    files, sizes, found = _headers(root, _class_files(files, root))
    if not files:
        raise ValueError(f"data folder {root!r} holds no image that Pillow can read")
    if channels is None:
        if len(set(found)) > 1:
            raise ValueError(f"data folder {root!r} mixes images of {sorted(set(found))} "
                             "channels; pass channels (--channels 1, 3 or 4) to convert them all")
        channels = found[0]
    if resolution is None and len(set(sizes)) > 1:
        raise ValueError(f"data folder {root!r} mixes image sizes (e.g. {sizes[0][0]}x"
                         f"{sizes[0][1]} and {next(s for s in sizes if s != sizes[0])}); pass "
                         "resolution (--resolution R) to resize and centre-crop them to R x R")
    w, h = (resolution, resolution) if resolution is not None else sizes[0]
    names, labels = _classes(files)
    order = _held_out_first(files)
    n_test = max(1, round(test_fraction * len(files))) if len(files) > 1 else 0
    test_idx, train_idx = sorted(order[:n_test]), sorted(order[n_test:])
    test_idx = test_idx if n_test else train_idx
    train = ImageFiles(root, [files[i] for i in train_idx], channels, resolution)
    test = ImageFiles(root, [files[i] for i in test_idx], channels, resolution)
    lab = None if labels is None else torch.tensor(labels, dtype=torch.int64)
    if in_memory is None:
        in_memory = len(train) * channels * h * w * 4 <= IN_MEMORY_BYTES
    shown = _held_out_first(test.files)[:test_size]  # a fixed subset of a large held-out set
    return dict(
        event_shape=(channels, h, w), test=to_model(test.decode_all(sorted(shown))),
        train=to_model(_decode_in_workers(train)) if in_memory else None, train_source=train,
        train_labels=None if lab is None else lab[train_idx],
        test_labels=None if lab is None else lab[test_idx][sorted(shown)],
        num_classes=len(names), class_names=tuple(names),
        reference_fn=_reference(train))


def _ignore_stops(worker_id: int) -> None:
    """A decoding worker ignores SIGINT and SIGTERM (a terminal's Ctrl-C and a scheduler's
    stop reach every process of the job): the trainer saves a checkpoint at the end of the
    step, for which the workers must still be there; they end when the trainer does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _decode_in_workers(files: ImageFiles) -> torch.Tensor:
    """Every image of ``files`` as uint8 ``(N, C, H, W)``, decoded by workers when many."""
    if len(files) < 1024 or WORKERS < 2:
        return files.decode_all(range(len(files)))
    loader = DataLoader(files, batch_size=256, num_workers=WORKERS, worker_init_fn=_ignore_stops)
    return torch.cat(list(loader))


# Images (a fixed subset of the training images) that the data's std and moments are taken over.
REFERENCE_IMAGES = 2000


def _reference(files: ImageFiles):
    """A function giving a fixed subset of at most :data:`REFERENCE_IMAGES` training images in
    model values: the same for a folder in memory and one streamed."""
    cache = []

    def reference() -> torch.Tensor:
        if not cache:
            chosen = sorted(_held_out_first(files.files)[:REFERENCE_IMAGES])
            cache.append(to_model(files.decode_all(chosen)))
        return cache[0]

    return reference


# ----- arrays ------------------------------------------------------------------------------------
def pixels_of_array(x: np.ndarray, path: str) -> np.ndarray:
    """uint8 images ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` as ``(N, C, H, W)``.

    Channel-last when the last axis has 1, 3 or 4 entries, else channel-first when the second
    has; so a channel-first array whose images are 1, 3 or 4 pixels wide reads as channel-last.

    Raises:
        ValueError: neither axis has 1, 3 or 4 entries.
    """
    if x.ndim == 3:
        return x[:, None]
    if x.shape[-1] in MODES:
        return np.moveaxis(x, -1, 1)
    if x.shape[1] in MODES:
        return x
    raise ValueError(f"{path}: uint8 images need 1, 3 or 4 channels on the last or second axis, "
                     f"got shape {x.shape}")


# ----- the per-step batch stream ------------------------------------------------------------------
def step_draw(seed: int, step: int, n_train: int, n: int,
              flip: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The image indices ``(n,)`` (and flips ``(n,)`` bool, or None) of global batch ``step``:
    drawn from a generator seeded by ``(seed, step)`` alone."""
    key = hashlib.sha256(f"scoresde-batch:{int(seed)}:{int(step)}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)
    idx = torch.randint(0, n_train, (n,), generator=gen)
    return idx, (torch.rand(n, generator=gen) < 0.5) if flip else None


def _rank_draw(step: int, *, seed: int, n_train: int, batch_size: int, flip: bool,
               share: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
    idx, flips = step_draw(seed, step, n_train, batch_size, flip)
    return idx[share], None if flips is None else flips[share]


class _StepSampler(torch.utils.data.Sampler):
    """``[(i, flip), ...]`` of this rank's share of each step's batch, for a ``DataLoader``.

    It holds the draw's numbers, not the :class:`StepBatches` (whose loader holds this sampler):
    without that cycle a dropped stream stops its workers at once, not at the next collection.
    """

    def __init__(self, stream: "StepBatches"):
        self.start, self.stop, self.draw = stream.start, stream.stop, stream.rank_draw()

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        for step in range(self.start, self.stop):
            idx, flips = self.draw(step)
            yield [(int(i), bool(f)) for i, f in
                   zip(idx, flips if flips is not None else [False] * len(idx))]


# The streams whose DataLoader workers are running. Their workers ignore SIGTERM, so the
# multiprocessing module's own exit handler (terminate, then join without a timeout) would wait
# for them for ever: the handler below, registered after it and so run before it, stops them.
_RUNNING: "weakref.WeakSet[StepBatches]" = weakref.WeakSet()


@functools.cache
def _stop_workers_at_exit() -> None:
    """Register (once) the exit handler that closes every stream still running."""
    atexit.register(lambda: [stream.close() for stream in list(_RUNNING)])


class StepBatches:
    """This rank's share ``(x, y)`` of the global batch of each step ``start .. stop - 1``.

    ``x`` is ``(b, C, H, W)`` model values, ``y`` ``(b,)`` labels or None, on ``device``. From
    the data set's ``train`` tensor when it is in memory (copied to ``device`` once, so a GPU
    run indexes its batches where they live), otherwise decoded by ``DataLoader`` workers that
    prefetch the next steps (into pinned memory for a GPU, copied without waiting); the same
    batches either way (a pure function of seed and step).
    """

    def __init__(self, dataset, seed: int, start: int, stop: int, batch_size: int, share: slice,
                 workers: int | None = None, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.dataset, self.seed, self.start, self.stop = dataset, seed, start, stop
        self.batch_size, self.share, self.step = batch_size, share, start
        self.n_train = dataset.train_size
        self.workers = WORKERS if workers is None else workers
        self._loader = None

    def rank_draw(self):
        """The function of the step giving this rank's indices (and flips) at that step; it
        holds the draw's numbers only, not this object."""
        return functools.partial(_rank_draw, seed=self.seed, n_train=self.n_train,
                                 batch_size=self.batch_size, flip=self.dataset.flip,
                                 share=self.share)

    def draw(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's indices (and flips) at ``step``."""
        return _rank_draw(step, seed=self.seed, n_train=self.n_train,
                          batch_size=self.batch_size, flip=self.dataset.flip, share=self.share)

    def __iter__(self) -> Iterator:
        return self

    def __enter__(self) -> "StepBatches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the ``DataLoader`` workers (they also stop when this object is collected)."""
        loader, self._loader = self._loader, None
        _RUNNING.discard(self)
        if loader is not None:
            loader._shutdown_workers()  # now, rather than whenever the iterator is collected

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.step >= self.stop:
            self.close()  # the workers are not needed any more
            raise StopIteration
        idx, flips = self.draw(self.step)
        self.step += 1
        if self.dataset.train is not None:
            train, labels = self.dataset.on(self.device)
            idx = idx.to(self.device)
            flips = None if flips is None else flips.to(self.device)
            x, y = train[idx], None if labels is None else labels[idx]
            if flips is not None:
                x = torch.where(append_dims(flips, x.ndim), x.flip(-1), x)
            return x, y
        if self._loader is None:
            # Its own generator: a DataLoader otherwise seeds its workers with a draw from
            # PyTorch's global generator, which would shift dropout's draws after a resume.
            self._loader = iter(DataLoader(
                self.dataset.train_source, batch_sampler=_StepSampler(self),
                num_workers=self.workers, prefetch_factor=PREFETCH if self.workers else None,
                pin_memory=self.device.type == "cuda", worker_init_fn=_ignore_stops,
                generator=torch.Generator().manual_seed(0)))
            if self.workers:
                _stop_workers_at_exit()
                _RUNNING.add(self)
        labels = self.dataset.train_labels
        y = None if labels is None else labels[idx].to(self.device)
        try:
            x = next(self._loader).to(self.device, non_blocking=True)
            return to_model(x), y
        except ValueError as err:  # a worker's error: its last line, without the traceback
            raise ValueError(str(err).strip().splitlines()[-1].removeprefix("ValueError: ")) \
                from None


# ----- resolution ------------------------------------------------------------------------------
def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The mean of each ``factor x factor`` block: ``(B, C, H, W)`` -> ``(B, C, H/f, W/f)``."""
    return F.avg_pool2d(x, factor) if factor > 1 else x


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Each pixel repeated over a ``factor x factor`` block: ``(B, C, h, w)`` ->
    ``(B, C, f h, f w)``."""
    return F.interpolate(x, scale_factor=factor, mode="nearest") if factor > 1 else x


def check_factor(name: str, factor: int, shape) -> int:
    """``factor`` as an int >= 1 that divides the height and width of images ``shape``."""
    factor = check_int(name, factor, 1)
    if len(shape) != 3 or shape[1] % factor or shape[2] % factor:
        raise ValueError(f"{name}={factor} needs images (C, H, W) with H and W divisible by it, "
                         f"got shape {tuple(shape)}")
    return factor




# ----- writing ---------------------------------------------------------------------------------
def sample_levels(x: torch.Tensor, *, raw_scale: float, raw_offset: float,
                  pixel_bits: int | None) -> np.ndarray:
    """Model values ``(N, C, H, W)`` as the 8-bit levels ``0..255`` of their images (uint8):
    8-bit data rounded to its levels; other data's raw range mapped onto ``0..255`` and rounded
    (what FID's extractors see, :func:`~scoresde.features.to_extractor_range`)."""
    from .features import to_extractor_range

    levels = to_extractor_range(x, raw_scale=raw_scale, raw_offset=raw_offset,
                                pixel_bits=pixel_bits)
    return levels.round().clamp(0, 255).to(torch.uint8).numpy()


def save_images(folder: str | os.PathLike, levels: np.ndarray, classes=None) -> int:
    """One PNG per image of ``levels`` (uint8 ``(N, C, H, W)``, C in 1, 3, 4) in ``folder``, a
    new or empty folder: ``NNNNNN.png`` by index, inside a subfolder per class when ``classes``
    (one folder name per image) is given. The images are written into a temporary folder beside
    it; a new folder is that one renamed when all are there (it exists whole or not at all), an
    empty one (kept with its permissions) gets its entries moved in.

    Returns:
        The number of files written.

    Raises:
        FileExistsError: ``folder`` exists and is not an empty folder.
    """
    import secrets
    import shutil

    Image = _image_module()
    folder = os.path.abspath(os.fspath(folder))
    if os.path.islink(folder) or (os.path.lexists(folder) and not (
            os.path.isdir(folder) and not os.listdir(folder))):
        raise FileExistsError(f"{folder} exists and is not an empty folder; give a new one")
    if levels.ndim != 4 or levels.shape[1] not in MODES or levels.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, C, H, W) with C in 1, 3, 4, got "
                         f"{levels.dtype} {levels.shape}")
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    work = os.path.join(parent, f".{os.path.basename(folder)}.tmp-{secrets.token_hex(6)}")
    os.mkdir(work)  # the umask's permissions, as any new folder
    try:
        for i, image in enumerate(levels):
            where = work if classes is None else os.path.join(work, str(classes[i]))
            os.makedirs(where, exist_ok=True)
            pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
            Image.fromarray(pixels, MODES[image.shape[0]]).save(
                os.path.join(where, f"{i:06d}.png"))
        if os.path.isdir(folder):  # empty (checked above): filled, not replaced
            for entry in sorted(os.listdir(work)):
                os.rename(os.path.join(work, entry), os.path.join(folder, entry))
            os.rmdir(work)
        else:
            os.rename(work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return len(levels)
