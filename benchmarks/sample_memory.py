"""Peak memory of drawing many samples into one file, in chunks against one batch.

Each configuration runs in a fresh interpreter, which reports its peak resident memory
(``ru_maxrss``) after :func:`scoresde.sample_files.sample_to_file`; the same interpreter's peak
after importing and building everything but before sampling is the baseline. 2D: the exact
score of the ring mixture (``em``, 100 steps). Images: an untrained small U-Net on 8x8 digits
shapes (its samples are noise, but its memory is a network's), ``em``, 20 steps.

    python benchmarks/sample_memory.py            # about 75 s of CPU time
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys
import torch
import scoresde
from scoresde.sample_files import sample_to_file

kind, n, batch, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(1)
sde = scoresde.get_sde("vp")
if kind == "2d":
    score, shape, steps = scoresde.GaussianMixture.ring().score_fn(sde), (n, 2), 100
else:
    net = scoresde.UNet((1, 8, 8), ch=16, ch_mult=(1, 2))
    score = scoresde.ScoreModel(net, sde, 0.5).eval().requires_grad_(False)
    shape, steps = (n, 1, 8, 8), 20
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sample_to_file(out, score, sde, shape, batch_size=batch, solver="em", steps=steps,
               progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_mib": base / 1024, "peak_mib": peak / 1024}))
"""

CASES = [("2d", 50_000, 50_000), ("2d", 50_000, 1_000), ("images", 2_000, 2_000),
         ("images", 2_000, 100)]


def main() -> None:
    print("| data | samples | chunk | peak over baseline (MiB) | output (MiB) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, n, batch in CASES:
            out = Path(tmp) / f"{kind}-{batch}.npz"
            proc = subprocess.run([sys.executable, "-c", CHILD, kind, str(n), str(batch),
                                   str(out)], capture_output=True, text=True, check=True,
                                  env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                       "PATH": "/usr/bin:/bin"})
            mem = json.loads(proc.stdout.strip().splitlines()[-1])
            size = out.stat().st_size / 2**20
            print(f"| {kind} | {n:,} | {batch:,} | {mem['peak_mib'] - mem['base_mib']:.1f} | "
                  f"{size:.1f} |")


if __name__ == "__main__":
    main()
