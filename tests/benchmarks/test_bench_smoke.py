"""The benchmarks run at tiny sizes in CI so that they cannot rot (their figures are not checked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMTP_SINK = Path("/usr/sbin/smtp-sink")


def _require_smtp_sink() -> None:
    if not os.access(SMTP_SINK, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail("smtp-sink (Debian package postfix) is missing in CI; .ci/run must install it.")
        pytest.skip("Postfix's smtp-sink is not installed (Debian package postfix)")


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'include'}:{ROOT}"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_unknown_benchmark_is_named_in_one_line():
    done = _bench("--only", "hourly,sned")

    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith(
        "error: unknown benchmark sned; choose among send, compute-stats, hourly, memory, charts"
    )


def test_unknown_backend_is_named_in_one_line():
    done = _bench("--backends", "sqlite,mysql")

    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith("error: unknown backend mysql; choose among sqlite, postgres")


def test_make_bench_smoke_prints_the_table():
    _require_smtp_sink()
    done = _bench("--smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    # throughput against (a) the plain loop and (b) pre-built bytes, then on SQLite and
    # PostgreSQL: compute stats (checked, rebuilt), hourly growth, memory, the Deployment charts
    assert len(rows) == 12, done.stdout
    for row in rows:
        ratio = float(row.split("|")[5])
        assert ratio > 0, row
    send_rows = [row.split("|") for row in rows[:2]]
    assert [cells[1].split("/")[-1].strip() for cells in send_rows] == [
        "(a) plain EmailMessage loop, 4 connections",
        "(b) pre-built bytes, 4 connections",
    ], rows[:2]
    assert all("2,000 recipients, tracking on: confirm_send" in cells[1] for cells in send_rows), rows[:2]
    assert [cells[6].strip() for cells in send_rows] == ["≥ 4.0", "≥ 0.35 (stretch 0.5)"], rows[:2]
    assert "until the first task starts" in done.stdout and " of sending (" in done.stdout, done.stdout
    assert "cores" in done.stdout and "Airflow 3.3.2" in done.stdout


def test_profile_chunk_splits_the_time_of_one_chunk_by_stage():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.profile_chunk", "--recipients", "60"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'include'}:{ROOT}"},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("send_chunk of 60 tracked messages: 60 sent in "), done.stdout
    stage_lines = done.stdout.splitlines()[1:6]
    stages = {line.split("%", 1)[1].split(" (")[0].strip(): float(line.split()[0]) for line in stage_lines}
    assert set(stages) == {"SMTP conversation", "rendering", "tracked links and pixel", "message building", "database"}
    assert all(seconds > 0 for seconds in stages.values()), stages


def test_build_bench_compares_the_old_and_new_message_bytes():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.build_bench", "--messages", "20"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'include'}:{ROOT}"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    ratio = done.stdout.splitlines()[-1]
    assert ratio.split()[0] == "ratio" and float(ratio.split()[1]) > 1, done.stdout
