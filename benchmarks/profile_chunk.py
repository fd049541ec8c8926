"""python -m benchmarks.profile_chunk [--recipients N]: where one send_chunk spends its time.

Runs send_chunk in this process under cProfile, for a tracked delivery on SQLite, against Postfix's
smtp-sink, and prints the time by stage and the top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import datagen
from benchmarks.memory_bench import benchmark_tracking_secret, sending_delivery
from benchmarks.sink import postfix_sink, smtp_factory
from campaign.db import make_engine
from campaign.sending import send_chunk

# Stages by the function that does them (cumulative time, so nested stages overlap the total).
STAGES = {
    "SMTP conversation (campaign.relay.RelaySession.send)": ("relay.py", "send"),
    "rendering (campaign.rendering.render)": ("rendering.py", "render"),
    "tracked links and pixel (campaign.tracking.Tracker.rewrite)": ("tracking.py", "rewrite"),
    "message building (campaign.message.MessageSkeleton.build)": ("message.py", "build"),
    "database (SQLAlchemy Connection.execute)": ("base.py", "execute"),
}


def stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    found = dict.fromkeys(STAGES, 0.0)
    for (filename, _line, function), (_cc, _nc, _tt, cumulative, _callers) in stats.stats.items():
        for stage, (file_suffix, name) in STAGES.items():
            if filename.endswith(file_suffix) and function == name:
                found[stage] = max(found[stage], cumulative)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_chunk", description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=5000)
    args = parser.parse_args(argv)
    with benchmark_tracking_secret(), postfix_sink() as sink, tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{Path(folder) / 'profile.db'}")
        datagen.profiles(engine, args.recipients)
        delivery_id = sending_delivery(engine, args.recipients)

        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        result = send_chunk(
            engine, delivery_id, "bench", 1, args.recipients, smtp_factory(sink.port), soft_retry_delays=()
        )
        profiler.disable()
        seconds = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    print(
        f"send_chunk of {args.recipients:,} tracked messages: {result.counts['sent']:,} sent in {seconds:.1f} s "
        f"({args.recipients / seconds:,.0f} msg/s, under cProfile)"
    )
    for stage, cumulative in stage_seconds(stats).items():
        print(f"  {cumulative:8.3f} s  {100 * cumulative / seconds:5.1f} %  {stage}")
    listing = io.StringIO()
    pstats.Stats(profiler, stream=listing).sort_stats("tottime").print_stats(15)
    print(listing.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
