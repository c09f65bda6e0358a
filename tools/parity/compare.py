#!/usr/bin/env python
"""Compare two parity captures of `scoresde` (made by tools/parity/capture.sh).

    python tools/parity/compare.py OUT_A OUT_B [--quiet]

What is compared:
  * the log: the same commands (by name), each one's exit code, stdout and stderr. A stdout that
    is JSON is compared as JSON without its timing keys; text has its timings ("0.12 s", tqdm's
    elapsed and rate), warnings' source locations and the capture's own folders normalised.
  * every .npz/.npy under OUT/work and OUT/cache: the arrays present in both, bit for bit (dtype,
    shape, bytes). Arrays present in one file only are listed separately; they count as a
    difference unless the only such array is 'manifest'. A 'manifest' array present in both is
    compared as JSON with file times (mtime_ns), timings and the capture's folders normalised.
  * every .pt file (checkpoint.pt): torch.load(weights_only=True); every tensor with torch.equal
    (dtype, shape; NaN where NaN), every other entry by value (timings such as elapsed_s left out).
  * .json/.jsonl files: as JSON, timings left out, paths normalised.
  * .png figures: byte for byte, except the demo's figure (it shows timings): reported only.
  * any other file: byte for byte (lock files, which hold a pid and a time, are skipped).
  * file names: as they are, except the hash of a default cascade name (it hashes the runs'
    checkpoint times and paths), which is normalised to <HASH>.

Prints each difference and 'PARITY OK' or 'PARITY FAILED: N differences' (exit status 0 or 1).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
import zipfile

import numpy as np

TIMING_KEYS = {"time_s", "train_time_s", "steps_per_sec", "elapsed_s", "seconds", "wall_s",
               "elapsed", "mtime_ns", "mtime", "ctime", "atime"}
SKIP_NAMES = {"writer.lock"}
SKIP_SUFFIXES = (".lock",)
INFO_ONLY_FIGURES = re.compile(r"(^|/)demo[^/]*\.(png|pdf|svg)$")  # shows timings
ALLOWED_EXTRA_ARRAYS = {"manifest"}


class Capture:
    def __init__(self, root: str):
        self.root = os.path.realpath(root)
        meta_path = os.path.join(self.root, "meta.json")
        if not os.path.isfile(meta_path):
            sys.exit(f"{root}: no meta.json (not a finished capture)")
        with open(meta_path) as f:
            self.meta = json.load(f)
        prefixes = {self.root: "<OUT>", os.path.realpath(self.meta.get("outdir", self.root)): "<OUT>"}
        if self.meta.get("checkout"):
            prefixes[os.path.realpath(self.meta["checkout"])] = "<CHECKOUT>"
        # longest first, so that a folder inside another is replaced as itself
        self.prefixes = sorted(prefixes.items(), key=lambda kv: -len(kv[0]))
        self.log = {}
        with open(os.path.join(self.root, "log"), encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    self.log[record["name"]] = record

    def paths(self, text: str) -> str:
        for prefix, token in self.prefixes:
            text = text.replace(prefix, token)
        return name_hashes(text)


# The default name of a cascade's samples ends in a hash of its fingerprint, which holds the runs'
# checkpoint paths and times (mtime_ns): it differs from capture to capture, the rest of the name
# does not. (A plain `sample`'s default name leaves the run out of its hash: it is compared as is.)
_CASCADE_HASH = re.compile(r"(cascade-[^/\s\"']*?-n\d+-seed\d+)-[0-9a-f]{8}(?=\.(?:npz|png)\b)")


def name_hashes(text: str) -> str:
    return _CASCADE_HASH.sub(r"\1-<HASH>", text)


# ----- normalisation --------------------------------------------------------------------------
_TEXT_RULES = [
    # a source location of a warning or a traceback line: moves when code moves
    (re.compile(r"(?m)^\S+\.py:\d+: "), "<loc>: "),
    (re.compile(r'File "[^"]+", line \d+'), 'File "<file>", line <N>'),
    # tqdm's elapsed<remaining and rate
    (re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?\b"), "<HH:MM>"),
    (re.compile(r"[\d.]+\s?(?:step|it|chunk|s)/s\b"), "<R>/s"),
    (re.compile(r"[\d.]+\s?s/(?:step|it|chunk)\b"), "<R>s/it"),
    # durations printed as "0.12 s", "(17.1 s)", "in 2.0 s"
    (re.compile(r"\s*\b\d+(?:\.\d+)?(?:e[-+]?\d+)? ?s\b"), " <T> s"),
    (re.compile(r"\b\d+(?:\.\d+)? ?(?:ms|sec|seconds)\b"), "<T> s"),
    # process ids and wall-clock times in messages (a busy folder's lock)
    (re.compile(r"\bpid \d+"), "pid <PID>"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?"), "<DATETIME>"),
]


def norm_text(text: str, cap: Capture) -> str:
    text = cap.paths(text)
    for pattern, repl in _TEXT_RULES:
        text = pattern.sub(repl, text)
    return text


def norm_json(value, cap: Capture):
    """JSON-like value with timing keys left out and the capture's folders normalised."""
    if isinstance(value, dict):
        return {k: norm_json(v, cap) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, (list, tuple)):
        return [norm_json(v, cap) for v in value]
    if isinstance(value, str):
        return cap.paths(value)
    return value


def parse_json_stdout(text: str):
    """The JSON of a --json stdout (one object, or one per line); None if it is text."""
    stripped = text.strip()
    if not stripped:
        return None
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    try:
        return [json.loads(line) for line in stripped.splitlines()]
    except ValueError:
        return None


def json_diff(a, b, where: str = "") -> list[str]:
    """The paths at which two JSON values differ (NaN equals NaN), at most a few."""
    out: list[str] = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                out.append(f"{where}.{k}: only in B ({_short(b[k])})")
            elif k not in b:
                out.append(f"{where}.{k}: only in A ({_short(a[k])})")
            else:
                out += json_diff(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            out += json_diff(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        pass
    elif type(a) is not type(b) or a != b:
        out.append(f"{where or '<root>'}: {_short(a)} != {_short(b)}")
    return out


def _short(v, n: int = 160) -> str:
    s = repr(v)
    return s if len(s) <= n else s[:n] + "..."


def text_diff(a: str, b: str, n: int = 4) -> str:
    import difflib

    lines = list(difflib.unified_diff(a.splitlines(), b.splitlines(), "A", "B", lineterm="", n=0))
    body = [l for l in lines[2:] if not l.startswith("@@")]
    shown = body[: 2 * n]
    more = f"\n      ... {len(body) - len(shown)} more lines" if len(body) > len(shown) else ""
    return "\n".join("      " + _short(l, 300) for l in shown) + more


# ----- comparisons ----------------------------------------------------------------------------
class Report:
    def __init__(self):
        self.diffs: list[str] = []
        self.notes: list[str] = []
        self.checked = {"commands": 0, "arrays": 0, "tensors": 0, "files": 0}

    def diff(self, msg: str):
        self.diffs.append(msg)
        print(f"DIFF  {msg}")

    def note(self, msg: str):
        self.notes.append(msg)
        print(f"note  {msg}")


def compare_logs(a: Capture, b: Capture, rep: Report):
    for name in sorted(set(a.log) | set(b.log), key=lambda n: (a.log.get(n) or b.log[n])["seq"]):
        ra, rb = a.log.get(name), b.log.get(name)
        if ra is None or rb is None:
            rep.diff(f"command {name}: only in {'B' if ra is None else 'A'}")
            continue
        rep.checked["commands"] += 1
        if [a.paths(x) for x in ra["args"]] != [b.paths(x) for x in rb["args"]]:
            rep.note(f"command {name}: other arguments: {ra['args']} vs {rb['args']}")
        if ra["rc"] != rb["rc"]:
            rep.diff(f"command {name}: exit status {ra['rc']} != {rb['rc']}")
        ja, jb = parse_json_stdout(ra["stdout"]), parse_json_stdout(rb["stdout"])
        if ja is not None and jb is not None:
            d = json_diff(norm_json(ja, a), norm_json(jb, b))
            if d:
                rep.diff(f"command {name}: stdout JSON differs:\n      " + "\n      ".join(d[:10])
                         + (f"\n      ... {len(d) - 10} more" if len(d) > 10 else ""))
        else:
            ta, tb = norm_text(ra["stdout"], a), norm_text(rb["stdout"], b)
            if ta != tb:
                rep.diff(f"command {name}: stdout differs:\n{text_diff(ta, tb)}")
        ea, eb = norm_text(ra["stderr"], a), norm_text(rb["stderr"], b)
        if ea != eb:
            rep.diff(f"command {name}: stderr differs:\n{text_diff(ea, eb)}")


def walk(cap: Capture) -> dict[str, str]:
    files = {}
    for top in ("work", "cache"):
        base = os.path.join(cap.root, top)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for fn in filenames:
                if fn in SKIP_NAMES or fn.endswith(SKIP_SUFFIXES):
                    continue
                full = os.path.join(dirpath, fn)
                files[name_hashes(os.path.relpath(full, cap.root))] = full
    return files


def load_arrays(path: str) -> dict[str, np.ndarray]:
    if path.endswith(".npy"):
        return {"<npy>": np.load(path, allow_pickle=False)}
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def same_bits(x: np.ndarray, y: np.ndarray) -> bool:
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    return np.ascontiguousarray(x).tobytes() == np.ascontiguousarray(y).tobytes()


def compare_manifest(rel, ma, mb, a, b, rep):
    try:
        ja, jb = json.loads(str(ma)), json.loads(str(mb))
    except ValueError:
        if not same_bits(ma, mb):
            rep.diff(f"{rel}: array 'manifest' differs (not JSON)")
        return
    d = json_diff(norm_json(ja, a), norm_json(jb, b))
    if d:
        rep.diff(f"{rel}: manifest differs:\n      " + "\n      ".join(d[:10]))


def compare_npz(rel, pa, pb, a, b, rep):
    try:
        xa, xb = load_arrays(pa), load_arrays(pb)
    except Exception as err:  # noqa: BLE001
        if open(pa, "rb").read() != open(pb, "rb").read():
            rep.diff(f"{rel}: unreadable ({err}) and the bytes differ")
        return
    only_a, only_b = sorted(set(xa) - set(xb)), sorted(set(xb) - set(xa))
    if only_a or only_b:
        msg = (f"{rel}: arrays removed in B: {only_a or '-'}; added in B: {only_b or '-'}")
        if set(only_a + only_b) <= ALLOWED_EXTRA_ARRAYS:
            rep.note(msg)
        else:
            rep.diff(msg)
    for key in sorted(set(xa) & set(xb)):
        rep.checked["arrays"] += 1
        x, y = xa[key], xb[key]
        if key == "manifest" and x.dtype.kind == "U" and y.dtype.kind == "U":
            compare_manifest(rel, x, y, a, b, rep)
            continue
        if x.dtype != y.dtype or x.shape != y.shape:
            rep.diff(f"{rel}[{key}]: {x.dtype}{x.shape} != {y.dtype}{y.shape}")
        elif not same_bits(x, y):
            if x.dtype.kind in "fc":
                with np.errstate(all="ignore"):
                    err = float(np.nanmax(np.abs(x.astype(np.float64) - y.astype(np.float64)))) \
                        if x.size else 0.0
                rep.diff(f"{rel}[{key}]: values differ (max |a-b| {err:.3g}, "
                         f"{int(np.sum(x != y))} of {x.size} entries)")
            else:
                rep.diff(f"{rel}[{key}]: values differ")


def compare_torch(rel, pa, pb, a, b, rep):
    import torch

    try:
        sa = torch.load(pa, map_location="cpu", weights_only=True)
        sb = torch.load(pb, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        rep.diff(f"{rel}: torch.load(weights_only=True) failed: {str(err).splitlines()[0]}")
        return
    out: list[str] = []

    def walk_obj(x, y, where):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            rep.checked["tensors"] += 1
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
                out.append(f"{where}: tensor vs {type(y if isinstance(x, torch.Tensor) else x)}")
            elif x.dtype != y.dtype or x.shape != y.shape:
                out.append(f"{where}: {x.dtype}{tuple(x.shape)} != {y.dtype}{tuple(y.shape)}")
            elif not torch.equal(x, y):
                if x.is_floating_point() and torch.equal(x.isnan(), y.isnan()) and torch.equal(
                        x.nan_to_num(0.0), y.nan_to_num(0.0)):
                    return
                delta = ((x.double() - y.double()).abs().max().item()
                         if x.is_floating_point() else "n/a")
                out.append(f"{where}: tensor values differ (max |a-b| {delta})")
        elif isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y), key=str):
                if k in TIMING_KEYS:
                    continue
                if k not in x or k not in y:
                    out.append(f"{where}.{k}: only in {'A' if k in x else 'B'}")
                else:
                    walk_obj(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            if len(x) != len(y) or type(x) is not type(y):
                out.append(f"{where}: {type(x).__name__} of {len(x)} != "
                           f"{type(y).__name__} of {len(y)}")
            for i, (u, v) in enumerate(zip(x, y)):
                walk_obj(u, v, f"{where}[{i}]")
        else:
            nx = norm_json(x, a) if isinstance(x, str) else x
            ny = norm_json(y, b) if isinstance(y, str) else y
            if isinstance(nx, float) and isinstance(ny, float) and math.isnan(nx) and math.isnan(ny):
                return
            if type(nx) is not type(ny) or nx != ny:
                out.append(f"{where}: {_short(nx)} != {_short(ny)}")

    walk_obj(sa, sb, "")
    if out:
        rep.diff(f"{rel}: checkpoint differs:\n      " + "\n      ".join(out[:12])
                 + (f"\n      ... {len(out) - 12} more" if len(out) > 12 else ""))


def compare_jsonish(rel, pa, pb, a, b, rep):
    def load(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if path.endswith(".jsonl"):
            return [json.loads(l) for l in text.splitlines() if l.strip()]
        return json.loads(text)

    try:
        ja, jb = load(pa), load(pb)
    except ValueError as err:
        compare_bytes(rel, pa, pb, a, b, rep, why=f" (not JSON: {err})")
        return
    d = json_diff(norm_json(ja, a), norm_json(jb, b))
    if d:
        rep.diff(f"{rel}: JSON differs:\n      " + "\n      ".join(d[:10]))


def compare_bytes(rel, pa, pb, a, b, rep, why=""):
    with open(pa, "rb") as f:
        ba = f.read()
    with open(pb, "rb") as f:
        bb = f.read()
    if ba == bb:
        return
    try:  # text files: the capture's folders and timings may differ
        if norm_text(ba.decode(), a) == norm_text(bb.decode(), b):
            return
    except UnicodeDecodeError:
        pass
    if INFO_ONLY_FIGURES.search(rel):
        rep.note(f"{rel}: bytes differ ({len(ba)} vs {len(bb)} bytes; it shows timings)")
    else:
        rep.diff(f"{rel}: bytes differ ({len(ba)} vs {len(bb)} bytes){why}")


def compare_files(a: Capture, b: Capture, rep: Report):
    fa, fb = walk(a), walk(b)
    for rel in sorted(set(fa) - set(fb)):
        rep.diff(f"{rel}: only in A")
    for rel in sorted(set(fb) - set(fa)):
        rep.diff(f"{rel}: only in B")
    for rel in sorted(set(fa) & set(fb)):
        rep.checked["files"] += 1
        pa, pb = fa[rel], fb[rel]
        if rel.endswith((".npz", ".npy")):
            compare_npz(rel, pa, pb, a, b, rep)
        elif rel.endswith((".pt", ".pth")):
            compare_torch(rel, pa, pb, a, b, rep)
        elif rel.endswith((".json", ".jsonl")):
            compare_jsonish(rel, pa, pb, a, b, rep)
        else:
            compare_bytes(rel, pa, pb, a, b, rep)


def main(argv):
    args = [x for x in argv if not x.startswith("-")]
    if len(args) != 2:
        sys.exit("usage: compare.py OUT_A OUT_B")
    a, b = Capture(args[0]), Capture(args[1])
    print(f"A: {a.root} (checkout {a.meta.get('checkout')}, {a.meta.get('total_seconds', 0):.0f} s)")
    print(f"B: {b.root} (checkout {b.meta.get('checkout')}, {b.meta.get('total_seconds', 0):.0f} s)")
    rep = Report()
    compare_logs(a, b, rep)
    compare_files(a, b, rep)
    c = rep.checked
    print(f"checked {c['commands']} commands, {c['files']} files, {c['arrays']} arrays, "
          f"{c['tensors']} tensors; {len(rep.notes)} notes")
    if rep.diffs:
        print(f"PARITY FAILED: {len(rep.diffs)} differences")
        return 1
    print("PARITY OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
