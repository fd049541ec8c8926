"""The benchmarks run at tiny sizes in CI so that they cannot rot (their figures are not checked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_make_bench_smoke_prints_the_table():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'include'}:{ROOT}"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 7, done.stdout  # throughput, then three benchmarks on SQLite and PostgreSQL
    for row in rows:
        ratio = float(row.split("|")[5])
        assert ratio > 0, row
    assert "cores" in done.stdout and "Airflow 3.3.2" in done.stdout
