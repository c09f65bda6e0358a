"""Wall time of `scoresde sample`, `fid` and `likelihood` on one process against two under
torchrun, one thread per process, on a digits run (trained here unless --run is given).

    PYTHONPATH=$PWD python benchmarks/distributed.py [--run RUN] [--repeats 1]

Each command runs as it would from a shell (a fresh interpreter, torch imported, the run
loaded), so the wall time (the best of --repeats) includes the start of each process. The
outputs are checked equal as they run: the sample files bit for bit, the FID scores exactly,
the likelihood within 2e-4 of itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(command: list[str], cwd: Path) -> tuple[float, dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout)


def _launch(ranks: int, args: list[str]) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "scoresde", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
            f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1", "--master_port=29517", "-m",
            "scoresde", "--", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None, help="a digits run [default: train "
                        "one, 200 steps of the default network]")
    parser.add_argument("--repeats", type=int, default=1)
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scoresde-ranks-"))
    run = opts.run
    if run is None:
        run = work / "digits-run"  # not "digits": a folder of that name would be the data
        subprocess.run([sys.executable, "-m", "scoresde", "train", "--data", "digits", "--steps",
                        "200", "--run", str(run), "--quiet"], check=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    jobs = {
        "sample": ["sample", "--run", str(run), "--solver", "em", "--steps", "50", "--n", "2000",
                   "--batch-size", "250", "--json"],
        "fid": ["fid", "--run", str(run), "--solver", "em", "--steps", "25", "--n", "2000",
                "--batch-size", "250", "--json"],
        "likelihood": ["likelihood", "--run", str(run), "--n", "100", "--divergence",
                       "hutchinson", "--json"],
    }
    print("| command | 1 rank | 2 ranks | speedup |")
    print("| --- | --- | --- | --- |")
    for name, args in jobs.items():
        best: dict[int, float] = {}
        records: dict[int, dict] = {}
        for repeat in range(opts.repeats):
            for ranks in (1, 2):
                extra = ["--out", str(work / f"{name}-{ranks}-{repeat}.npz")] \
                    if name == "sample" else []
                wall, record = _run(_launch(ranks, args + extra), work)
                records[ranks] = record
                best[ranks] = min(best.get(ranks, float("inf")), wall)
        if name == "sample":
            a, b = (work / f"sample-{r}-0.npz" for r in (1, 2))
            assert a.read_bytes() == b.read_bytes(), "sample files differ"
        elif name == "fid":
            assert all(records[1][k] == records[2][k] for k in ("fid", "kid", "precision"))
        else:
            one, two = records[1]["log_likelihood"], records[2]["log_likelihood"]
            assert abs(one - two) < 2e-4 * abs(one), (one, two)
        print(f"| `{name}` | {best[1]:.1f} s | {best[2]:.1f} s | {best[1] / best[2]:.2f} |")


if __name__ == "__main__":
    main()
