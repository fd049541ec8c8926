"""python -m benchmarks [--smoke] [--backends sqlite,postgres]: prints one markdown table.

Every figure is a ratio of two timings (or memory peaks) measured in the same run on the same
machine, because these machines are shared and noisy. Data is generated deterministically.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import sys
import tempfile
from contextlib import ExitStack
from importlib.metadata import version
from pathlib import Path

from benchmarks.charts_bench import chart_cost
from benchmarks.memory_bench import benchmark_tracking_secret, chunk_memory
from benchmarks.send_bench import send_throughput
from benchmarks.sink import postfix_sink
from benchmarks.stats_bench import Ratio, compute_stats_cost, hourly_growth
from campaign.db import make_engine
from campaign.dev.postgres import running_server

FULL = {
    "send": 100_000, "logs": 1_000_000, "events": 300_000, "history": 1_000_000, "new": 10_000,
    "large": 1_000_000, "small": 10_000,
}  # fmt: skip
BENCHMARKS = ("send", "compute-stats", "hourly", "memory", "charts")
BACKENDS = ("sqlite", "postgres")
SMOKE = {"send": 2_000, "logs": 5_000, "events": 1_500, "history": 5_000, "new": 100, "large": 5_000, "small": 2_000}


def machine() -> str:
    memory_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return (
        f"{os.cpu_count()} cores, {memory_kib / 1024 / 1024:.1f} GiB, {platform.machine()}; Python "
        f"{platform.python_version()}, Airflow {version('apache-airflow')}, SQLAlchemy {version('SQLAlchemy')}, "
        f"SQLite {sqlite3.sqlite_version}"
    )


def table(results: list[Ratio], smoke: bool) -> str:
    lines = [
        f"Machine: {machine()}" + (" — smoke sizes, figures not meaningful" if smoke else ""),
        "",
        "| benchmark | backend | measured | baseline | ratio | target |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.backend} | {r.measured_label} | {r.baseline_label} | {r.ratio:.2f} | {r.target} |"
        )
    lines += [f"\n{r.name} ({r.backend}): {r.detail}" for r in results if r.detail]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the benchmarks run")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--send-size", type=int, help="recipients of the throughput run (default 100,000)")
    parser.add_argument("--skip-send", action="store_true", help="leave out the throughput run (it starts Airflow)")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {', '.join(BENCHMARKS)}"
    )
    args = parser.parse_args(argv)
    chosen = set(args.only.split(","))
    if unknown := chosen - set(BENCHMARKS):
        parser.error(f"unknown benchmark {', '.join(sorted(unknown))}; choose among {', '.join(BENCHMARKS)}")
    backends = args.backends.split(",")
    if unknown := set(backends) - set(BACKENDS):
        parser.error(f"unknown backend {', '.join(sorted(unknown))}; choose among {', '.join(BACKENDS)}")
    if args.skip_send:
        chosen.discard("send")
    try:
        print(table(run(chosen, backends, SMOKE if args.smoke else FULL, args.send_size), args.smoke))
    except (RuntimeError, TimeoutError, FileNotFoundError) as problem:
        # a sentence, not a traceback: what failed and where its log is
        print(f"python -m benchmarks: {problem}", file=sys.stderr)
        return 1
    return 0


def run(chosen: set[str], backends: list[str], sizes: dict[str, int], send_size: int | None) -> list[Ratio]:
    results: list[Ratio] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="campaign-bench-") as folder:
        stack.enter_context(benchmark_tracking_secret())
        sink = stack.enter_context(postfix_sink())
        server = stack.enter_context(running_server("campaign-bench-pg-")) if "postgres" in backends else None
        counter = iter(range(1000))

        def database(backend: str) -> tuple[object, str]:
            name = f"bench_{next(counter)}"
            url = f"sqlite:///{folder}/{name}.db" if backend == "sqlite" else server.create_database(name)
            return make_engine(url), url

        if "send" in chosen:
            results.extend(send_throughput(Path(folder), sink, send_size or sizes["send"]))
        for backend in backends:
            if "compute-stats" in chosen:
                engine, _ = database(backend)
                results.extend(compute_stats_cost(engine, backend, sizes["logs"], sizes["events"]))
            if "hourly" in chosen:
                history, empty = database(backend)[0], database(backend)[0]
                results.append(hourly_growth(history, empty, backend, sizes["history"], sizes["new"]))
            if "memory" in chosen:
                engine, url = database(backend)
                results.append(chunk_memory(engine, url, backend, sink.port, sizes["large"], sizes["small"]))
            if "charts" in chosen:
                engine, _ = database(backend)
                results.append(chart_cost(engine, backend, sizes["logs"], sizes["events"]))
    return results


if __name__ == "__main__":
    sys.exit(main())
