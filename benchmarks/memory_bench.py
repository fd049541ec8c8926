"""Peak RSS of one send_chunk for a large delivery against a small one (same chunk size)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text

from benchmarks import datagen
from benchmarks.stats_bench import Ratio

CHUNK = 1000

# Runs in a fresh interpreter; its peak is VmHWM, which exec resets (ru_maxrss would keep the
# benchmark process's own peak, inherited through fork).
_CHILD = """
import json, sys
from benchmarks.sink import smtp_factory
from campaign.db import make_engine
from campaign.sending import send_chunk
url = sys.argv[1]
delivery_id, port, first, last = (int(value) for value in sys.argv[2:6])
result = send_chunk(make_engine(url), delivery_id, "bench", first, last, smtp_factory(port), soft_retry_delays=())
status = open("/proc/self/status").read().splitlines()
peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"rss_kib": peak_kib, "sent": result.counts["sent"]}))
"""


def sending_delivery(engine: Engine, recipients: int) -> int:
    delivery_id = datagen.new_delivery(engine, f"sending to {recipients}")
    with engine.begin() as conn:
        conn.execute(text(datagen._TARGETS), {"delivery_id": delivery_id, "count": recipients})
        conn.execute(
            text("UPDATE deliveries SET status = 'sending', target_count = :n, run_id = 'bench' WHERE id = :d"),
            {"n": recipients, "d": delivery_id},
        )
    return delivery_id


def peak_rss_kib(url: str, delivery_id: int, smtp_port: int, first: int) -> int:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{root / 'include'}:{root}"}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, url, str(delivery_id), str(smtp_port), str(first), str(first + CHUNK - 1)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        last_line = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the send_chunk whose memory was measured failed: {last_line}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["sent"] == CHUNK, report
    return report["rss_kib"]


@contextmanager
def benchmark_tracking_secret():
    previous = os.environ.get("CAMPAIGN_TRACKING_SECRET")
    os.environ.setdefault("CAMPAIGN_TRACKING_SECRET", "benchmark-secret-" + "x" * 16)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("CAMPAIGN_TRACKING_SECRET", None)


def chunk_memory(engine: Engine, url: str, backend: str, smtp_port: int, large: int, small: int) -> Ratio:
    datagen.profiles(engine, large)
    big = peak_rss_kib(url, sending_delivery(engine, large), smtp_port, first=large // 2)
    little = peak_rss_kib(url, sending_delivery(engine, small), smtp_port, first=1)
    return Ratio(
        f"Peak RSS of one send_chunk: {large:,} / {small:,} recipients", backend, big, little,
        f"{big / 1024:.1f} MiB", f"{little / 1024:.1f} MiB", "≤ 1.2",
    )  # fmt: skip
