"""Compute stats against a bare scan of the same rows; the hourly fold on a large history against
the same new events on an empty one."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, text

from benchmarks import datagen
from campaign import stats


@dataclass
class Ratio:
    name: str
    backend: str
    measured: float
    baseline: float
    measured_label: str
    baseline_label: str
    target: str
    detail: str = ""  # printed under the table: where the time or memory went

    @property
    def ratio(self) -> float:
        return self.measured / self.baseline if self.baseline else float("nan")


def best_of(runs: int, *works: Callable[[], object]) -> list[float]:
    """Each work's fastest of a few runs, the works taking turns so that a busy moment of the
    machine falls on both sides of a ratio; the fastest is the least disturbed."""
    timings: list[list[float]] = [[] for _ in works]
    for _ in range(runs):
        for work, spent in zip(works, timings, strict=True):
            started = time.perf_counter()
            work()
            spent.append(time.perf_counter() - started)
    return [min(spent) for spent in timings]


def compute_stats_cost(engine: Engine, backend: str, logs: int, events: int) -> list[Ratio]:
    """Compute stats as ops run it (engagement checked against the events), and with the
    engagement rebuild it falls back to when they disagree (reported, no target)."""
    datagen.profiles(engine, logs)
    delivery_id, link_id = datagen.sent_delivery(engine, logs)
    datagen.events(engine, delivery_id, link_id, events, logs, minutes_ago=120)
    stats.fold_new_events(engine, lag_seconds=0)  # as the hourly runs would have
    datagen.settle(engine)

    def bare_scan() -> None:
        with engine.begin() as conn:
            params = {"d": delivery_id}
            conn.execute(text("SELECT COUNT(*) FROM broad_logs WHERE delivery_id = :d"), params).scalar_one()
            conn.execute(text("SELECT COUNT(*) FROM tracking_logs WHERE delivery_id = :d"), params).scalar_one()

    bare, compute = best_of(5, bare_scan, lambda: stats.recompute_delivery(engine, delivery_id, lag_seconds=0))
    # last: its 300,000 rewritten rows would otherwise weigh on the two above
    [rebuild] = best_of(
        3, lambda: stats.recompute_delivery(engine, delivery_id, lag_seconds=0, rebuild_engagement=True)
    )
    return [
        Ratio(
            "Compute stats / bare count(*) scan", backend, compute, bare,
            f"compute_stats {compute:.3f} s", f"count(*) {bare:.3f} s", "≤ 3",
        ),
        Ratio(
            f"Compute stats rebuilding {events:,} events' engagement / bare count(*) scan", backend, rebuild, bare,
            f"compute_stats {rebuild:.3f} s", f"count(*) {bare:.3f} s", "— (repair path)",
        ),
    ]  # fmt: skip


def hourly_growth(history_engine: Engine, empty_engine: Engine, backend: str, history: int, new: int) -> Ratio:
    recipients = max(history // 3, new)
    timings = []
    for engine, old_events in ((history_engine, history), (empty_engine, 0)):
        datagen.profiles(engine, recipients)
        delivery_id, link_id = datagen.sent_delivery(engine, recipients)
        stats.compute_kpis(engine, delivery_id)
        if old_events:
            datagen.events(engine, delivery_id, link_id, old_events, recipients, minutes_ago=180)
            stats.fold_new_events(engine, lag_seconds=0)
        datagen.events(engine, delivery_id, link_id, new, recipients, minutes_ago=5)
        datagen.settle(engine)
        started = time.perf_counter()
        result = stats.fold_new_events(engine, lag_seconds=0)
        timings.append(time.perf_counter() - started)
        assert result.events == new, result
    on_history, on_empty = timings
    return Ratio(
        f"Hourly fold of {new:,} events: {history:,} older / none", backend, on_history, on_empty,
        f"on history {on_history:.3f} s", f"on empty {on_empty:.3f} s", "≤ 1.5",
    )  # fmt: skip
