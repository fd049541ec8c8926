"""A delivery's rate limit across all its chunks (campaign.pacing), on both databases."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import inspect, text
from testsupport import start_confirmed_send

from campaign import approval, deliveries
from campaign.confirm import start_send
from campaign.db import make_engine
from campaign.dev.smtp import connection_factory, running_server
from campaign.errors import InvalidInput
from campaign.pacing import Pacer, check_max_rate
from campaign.schema import create_schema
from campaign.sending import send_chunk


class Clock:
    """Time that moves only when someone sleeps: the schedule, without waiting for it."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_two_chunks_share_one_schedule(campaign_db, ready_delivery) -> None:
    """Four chunks at 3,600 an hour send 3,600 an hour in total: the slots of all chunks of a
    delivery are one interval apart, whoever reserved them."""
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    clock = Clock()
    chunks = [Pacer(engine, delivery_id, 3_600, clock.time, clock.sleep) for _ in range(4)]

    sent_at = []
    for _ in range(10):  # the chunks take turns, each sending 3 messages a turn
        for pacer in chunks:
            for _ in range(3):
                pacer.wait()
                sent_at.append(clock.now)

    assert len(sent_at) == 120
    # 120 messages at one a second take 119 s whatever the interleaving (first one at once).
    assert sent_at[-1] - sent_at[0] == pytest.approx(119, abs=4)
    gaps = [b - a for a, b in zip(sorted(sent_at), sorted(sent_at)[1:], strict=False)]
    assert min(gaps) >= 1 - 1e-6, "two messages of the delivery less than an interval apart"


def test_a_schedule_that_has_passed_is_not_caught_up(campaign_db, ready_delivery) -> None:
    """After a quiet spell (a slow relay, a pause) the send goes on at the rate, not in a burst."""
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    clock = Clock()
    pacer = Pacer(engine, delivery_id, 36_000, clock.time, clock.sleep)  # 10 a second
    for _ in range(10):
        pacer.wait()
    clock.now += 3_600  # an hour without sending

    started = clock.now
    for _ in range(20):
        pacer.wait()

    assert clock.now - started == pytest.approx(1.9, abs=0.15)


def test_a_chunk_near_its_end_reserves_no_slot_it_will_not_use(campaign_db, ready_delivery) -> None:
    """A chunk with one message left reserves one slot, not a second's worth: an unused slot would
    hold every other chunk of the delivery back (the live rate test measured 26 a second for 30)."""
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    clock = Clock()
    ending, other = (Pacer(engine, delivery_id, 36_000, clock.time, clock.sleep) for _ in range(2))  # 10 a second

    ending.wait(left=1)
    other.wait(left=50)

    assert other.waited == pytest.approx(0.1), "the other chunk goes one interval later"


def test_a_long_wait_for_a_slot_looks_at_the_controls_every_second(campaign_db, ready_delivery) -> None:
    """Fresh-user finding: at 60 an hour a pause took effect only after the minute-long wait for
    the slot, and one more message went out after it."""
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    clock = Clock()
    pacer = Pacer(engine, delivery_id, 60, clock.time, clock.sleep)  # one a minute
    pacer.wait()
    looks = []

    class Paused(Exception):
        pass

    def controls() -> None:
        looks.append(clock.now)
        if len(looks) == 3:
            raise Paused

    with pytest.raises(Paused):
        pacer.wait(meanwhile=controls, every=1.0)
    assert [round(b - a, 6) for a, b in zip(looks, looks[1:], strict=False)] == [1.0, 1.0]
    assert pacer.waited == pytest.approx(3.0), "stopped waiting at the pause, not at the slot"


def test_each_delivery_has_its_own_schedule(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    first, second = ready_delivery(engine), ready_delivery(engine, recipients=0)
    clock = Clock()
    a = Pacer(engine, first, 3_600, clock.time, clock.sleep)
    b = Pacer(engine, second, 3_600, clock.time, clock.sleep)

    a.wait()
    b.wait()

    assert a.waited == b.waited == 0


@pytest.mark.parametrize("value", [0, -5, 1.5, "60", True, 100_000_001, 10**23])
def test_max_rate_must_be_a_positive_whole_number(value) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        check_max_rate(value)

    assert str(excinfo.value) == (
        f"max_rate must be a whole number of messages an hour from 1 to 100,000,000 (or empty for no limit), "
        f"got {value!r}."
    )
    assert check_max_rate(None) is None and check_max_rate(3_600) == 3_600


@pytest.mark.parametrize("value", [0, 10**23])
def test_a_spec_with_a_bad_max_rate_is_refused_and_nothing_is_created(sqlite_db, new_delivery, value) -> None:
    with pytest.raises(InvalidInput, match="max_rate must be a whole number of messages an hour"):
        new_delivery(sqlite_db.engine, max_rate=value)

    with sqlite_db.engine.begin() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM deliveries")).scalar_one() == 0
    delivery_id = new_delivery(sqlite_db.engine, max_rate=7_200)
    assert deliveries.load_delivery(sqlite_db.engine, delivery_id).max_rate == 7_200


def test_the_trigger_forms_rate_replaces_the_deliverys_own(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    own, replaced = ready_delivery(engine, max_rate=600), ready_delivery(engine, recipients=0, max_rate=600)

    start_confirmed_send(engine, own, "alice", "run-A")
    approval.record(engine, replaced, "run-B", "confirmed", "alice", "OK")
    start_send(engine, replaced, "run-B", 9_000)

    assert deliveries.load_delivery(engine, own).max_rate == 600
    assert deliveries.load_delivery(engine, replaced).max_rate == 9_000


def test_an_older_database_gets_the_new_column(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    create_schema(engine)
    with engine.begin() as conn:  # the deliveries table as a version without the rate limit made it
        conn.execute(text("ALTER TABLE deliveries DROP COLUMN max_rate"))
    assert "max_rate" not in {c["name"] for c in inspect(engine).get_columns("deliveries")}

    create_schema(engine)

    assert "max_rate" in {c["name"] for c in inspect(engine).get_columns("deliveries")}


def test_two_chunks_at_the_limit_send_at_the_limit_together(tmp_path, sqlite_db, add_profiles, new_delivery) -> None:
    """Two chunks sending at once through a real SMTP server keep the delivery's rate: 300
    messages at 108,000 an hour (30 a second) take about ten seconds. A measurement with a
    margin (±10 %), not a tight timing."""
    engine = sqlite_db.engine
    add_profiles(engine, [f"r{i}@example.test" for i in range(300)])
    delivery_id = new_delivery(engine, max_rate=108_000, tracking=False)
    deliveries.prepare_delivery(engine, delivery_id, prepared_by="alice")
    deliveries.approve_delivery(engine, delivery_id, approved_by="alice")
    start_confirmed_send(engine, delivery_id, "alice", "run-1")
    results = {}
    with running_server(tmp_path / "maildir") as (port, server):

        def chunk(first: int, last: int) -> None:
            results[first] = send_chunk(engine, delivery_id, "run-1", first, last, connection_factory(port))

        threads = [threading.Thread(target=chunk, args=bounds) for bounds in ((1, 150), (151, 300))]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        elapsed = time.monotonic() - started

    assert sum(server.accepted.values()) == 300
    # 300 messages, the first at once: 299 intervals of 1/30 s.
    assert 299 / 30 * 0.9 <= elapsed <= 299 / 30 * 1.1, f"{300 / elapsed:.1f} messages/s, limit 30"
    assert all(r.max_rate == 108_000 and r.paced_seconds > 0 for r in results.values())
    assert "rate limit 108,000/h for the delivery" in results[1].summary_line()
