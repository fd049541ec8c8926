"""A delivery's rate limit (``max_rate``, messages an hour) across all its chunks and workers.

The chunks of a send run in parallel on any number of workers, so the limit is kept in the
campaign database: one row per delivery in ``delivery_pacing`` holds the earliest time the next
message may go (``next_at``, seconds since the epoch). A chunk reserves a few slots at a time with
one UPDATE (the generic cell rate algorithm: ``next_at = max(next_at, now) + n × interval``), then
sends its messages at those slots, one interval apart. Reservations are serialised by the row
(PostgreSQL's row lock, SQLite's single writer), so four chunks at 3,600 an hour send 3,600 an
hour in total, not 14,400. A slot in the past is not caught up: the schedule restarts from now,
so a send that was held back (a slow relay, a pause) does not burst to make up for it.

Every attempt counts, retries of a 4xx included: the limit is what the relay sees.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from campaign.db import sql
from campaign.errors import InvalidInput

# A reservation covers about this many seconds of sending: few round trips to the database, and
# a chunk that ends leaves at most that much of its reservation unused.
RESERVE_SECONDS = 1.0
# 27,777 messages a second: beyond any relay, and within the column's 32 bits.
MAX_RATE = 100_000_000
MAX_RESERVATION = 200


def check_max_rate(value: Any) -> int | None:
    """``max_rate`` as given (spec or trigger form): None (no limit) or a whole number ≥ 1 of
    messages an hour; raises ``InvalidInput`` naming the value otherwise."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_RATE:
        raise InvalidInput(
            f"max_rate must be a whole number of messages an hour from 1 to {MAX_RATE:,} "
            f"(or empty for no limit), got {value!r}."
        )
    return value


class Pacer:
    """Spaces one chunk's messages so that the whole delivery keeps ``max_rate`` an hour.

    Call ``wait()`` before each message; it sleeps until the message's slot. ``clock`` and
    ``sleep`` are ``time.time`` and ``time.sleep`` (seconds); tests give a clock of their own.
    """

    def __init__(
        self,
        engine: Engine,
        delivery_id: int,
        max_rate: int,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.engine = engine
        self.delivery_id = delivery_id
        self.interval = 3600.0 / check_max_rate(max_rate)
        self.reservation = max(1, min(MAX_RESERVATION, int(RESERVE_SECONDS / self.interval)))
        self.clock = clock
        self.sleep = sleep
        self._slots_left = 0
        self._next_slot = 0.0
        self.waited = 0.0  # seconds slept, for the task's summary line

    def wait(self, left: int | None = None, meanwhile: Callable[[], None] | None = None, every: float = 1.0) -> None:
        """Block until the next message of this chunk may go. ``left``: at most so many messages
        remain in the chunk, this one included; no more slots than that are reserved, since a
        slot reserved and never used holds every other chunk back by one interval.
        ``meanwhile`` is called every ``every`` seconds of a long wait (at a low rate a slot can
        be minutes away): the sender looks at its controls there, and a pause raised from it
        leaves the slot unused rather than sending one more message after the pause."""
        if self._slots_left == 0:
            slots = self.reservation if left is None else max(1, min(self.reservation, left))
            self._next_slot = self._reserve(slots)
            self._slots_left = slots
        while (delay := self._next_slot - self.clock()) > 0:
            step = min(delay, every) if meanwhile is not None and every > 0 else delay
            self.sleep(step)
            self.waited += step
            if meanwhile is not None and step < delay:
                meanwhile()
        self._next_slot += self.interval
        self._slots_left -= 1

    def _reserve(self, slots: int) -> float:
        """Reserve ``slots`` consecutive slots of the delivery; the time of the first one."""
        span = slots * self.interval
        with self.engine.begin() as conn:
            conn.execute(sql("ensure_delivery_pacing"), {"delivery_id": self.delivery_id})
            next_at = conn.execute(
                sql("reserve_delivery_slots"), {"delivery_id": self.delivery_id, "now": self.clock(), "span": span}
            ).scalar_one()
        return next_at - span
