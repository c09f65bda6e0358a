"""The GPU check script runs dry on the CPU: every path it has, on small sizes, one table."""

import pytest

from problems import ROOT, run_python


@pytest.mark.slow  # a fresh interpreter, about 20 s (torch.compile of a small U-Net included)
def test_the_gpu_check_runs_dry_on_the_cpu(tmp_path):
    proc = run_python(ROOT / "benchmarks" / "gpu_check.py", "--device", "cpu", "--quick",
                      timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout.split("| check | status | seconds | detail |")[1].strip().splitlines()[1:]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table}
    assert rows.keys() == {"fp32", "bf16", "fp16", "compile", "channels_last", "batch_gpu",
                           "syncs", "seeds", "features", "likelihood", "ddpmpp"}
    assert rows["fp16"] == rows["syncs"] == "skipped"  # they need CUDA, and say so
    assert all(status == "ok" for name, status in rows.items() if name not in ("fp16", "syncs"))
    assert list(tmp_path.iterdir()) == []  # its runs lived in a temporary folder
