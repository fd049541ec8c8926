"""Pause, resume, stop and the automatic brake (campaign.controls), with send_chunk against a real
SMTP server, on real SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text
from testsupport import start_confirmed_send, wait_for

from campaign import confirm, controls, deliveries, operators, sending, stats
from campaign.dev.smtp import Rule, Stage, connection_factory, running_server
from campaign.errors import DeliveryNotFound, DeliveryStateError, InvalidInput, RoleDenied, SendConflict
from campaign.schema import ROLE_START_DELIVERIES
from campaign.sending import ChunkHeld, send_chunk

RUN = "run-1"


@pytest.fixture
def operators_alice_bob(campaign_db):
    """alice holds Start deliveries, bob is an operator without it."""
    for login in ("alice", "bob"):
        operators.create_operator(campaign_db.engine, login)
    operators.grant_role(campaign_db.engine, "alice", ROLE_START_DELIVERIES)


@pytest.fixture
def check_every_message(monkeypatch):
    """Controls read before every message, so that where a chunk stops does not depend on time."""
    monkeypatch.setattr(sending, "CONTROL_CHECK_SECONDS", 0.0)


def _sending(engine, add_profiles, new_delivery, addresses: list[str], **spec) -> int:
    add_profiles(engine, addresses)
    delivery_id = new_delivery(engine, **spec)
    deliveries.prepare_delivery(engine, delivery_id, prepared_by="alice")
    deliveries.approve_delivery(engine, delivery_id, approved_by="alice")
    start_confirmed_send(engine, delivery_id, "alice", RUN)
    return delivery_id


def _status(engine, delivery_id: int) -> str:
    with engine.begin() as conn:
        return conn.execute(text("SELECT status FROM deliveries WHERE id = :d"), {"d": delivery_id}).scalar_one()


def _audit(engine, delivery_id: int) -> list[tuple[str, str | None, str]]:
    with engine.begin() as conn:
        rows = conn.execute(
            text("SELECT action, actor, detail FROM delivery_audit WHERE delivery_id = :d ORDER BY id"),
            {"d": delivery_id},
        )
        return [tuple(row) for row in rows if row.action not in ("confirmed",)]


def _log_counts(engine, delivery_id: int) -> dict[str, int]:
    with engine.begin() as conn:
        rows = conn.execute(
            text("SELECT status, COUNT(*) FROM broad_logs WHERE delivery_id = :d GROUP BY status"), {"d": delivery_id}
        )
        return dict(rows.all())


# ---------------------------------------------------------------- the controls themselves


def test_pause_resume_stop_change_the_status_and_each_is_on_the_audit(
    campaign_db, add_profiles, new_delivery, operators_alice_bob
) -> None:
    engine = campaign_db.engine
    delivery_id = _sending(engine, add_profiles, new_delivery, ["a@example.test"])

    assert controls.pause(engine, delivery_id, "alice", "relay maintenance") == (
        f"Delivery {delivery_id} paused by alice: relay maintenance."
    )
    assert _status(engine, delivery_id) == "paused"
    assert controls.resume(engine, delivery_id, "alice") == f"Delivery {delivery_id} resumed by alice."
    assert _status(engine, delivery_id) == "sending"
    assert controls.stop(engine, delivery_id, "alice") == f"Delivery {delivery_id} stopped by alice."
    assert _status(engine, delivery_id) == "stopping"
    assert _audit(engine, delivery_id) == [
        ("paused", "alice", "paused by alice: relay maintenance"),
        ("resumed", "alice", "resumed by alice"),
        ("stopped", "alice", "stopped by alice"),
    ]


@pytest.mark.parametrize(
    ("setup", "control", "sentence"),
    [
        ([], controls.resume, "is sending: only a paused delivery can be resumed"),
        (["pause"], controls.pause, "is paused (paused by alice): only a delivery that is sending can be paused"),
        (["stop"], controls.pause, "is stopping (stopped by alice): only a delivery that is sending can be paused"),
        (
            ["stop"],
            controls.stop,
            "is stopping (stopped by alice): only a delivery that is sending or paused can be stopped",
        ),
        (["sent"], controls.stop, "is sent: only a delivery that is sending or paused can be stopped"),
        (["sent"], controls.pause, "is sent: only a delivery that is sending can be paused"),
    ],
)
def test_a_control_that_does_not_apply_is_one_sentence_and_changes_nothing(
    campaign_db, add_profiles, new_delivery, operators_alice_bob, setup, control, sentence
) -> None:
    engine = campaign_db.engine
    delivery_id = _sending(engine, add_profiles, new_delivery, ["a@example.test"])
    for step in setup:
        if step == "sent":
            kpis = stats.compute_kpis(engine, delivery_id)
            confirm.finish_send(engine, delivery_id, RUN, {**kpis, "processed": kpis["to_deliver"]})
        else:
            getattr(controls, step)(engine, delivery_id, "alice")
    before = (_status(engine, delivery_id), _audit(engine, delivery_id))

    with pytest.raises(DeliveryStateError) as refused:
        control(engine, delivery_id, "alice")

    assert str(refused.value) == f"Delivery {delivery_id} {sentence}. Nothing was changed."
    assert (_status(engine, delivery_id), _audit(engine, delivery_id)) == before


def test_a_ready_delivery_cannot_be_paused(campaign_db, ready_delivery, operators_alice_bob) -> None:
    delivery_id = ready_delivery(campaign_db.engine)
    with pytest.raises(DeliveryStateError, match="is ready: only a delivery that is sending can be paused"):
        controls.pause(campaign_db.engine, delivery_id, "alice")


def test_only_holders_of_start_deliveries_control_a_send(
    campaign_db, add_profiles, new_delivery, operators_alice_bob
) -> None:
    engine = campaign_db.engine
    delivery_id = _sending(engine, add_profiles, new_delivery, ["a@example.test"])
    for who in ("bob", "mallory", None, ""):
        with pytest.raises(RoleDenied):
            controls.pause(engine, delivery_id, who)
    with pytest.raises(RoleDenied, match="User 'bob' may not stop delivery .*Start deliveries role"):
        controls.stop(engine, delivery_id, "bob")
    assert _status(engine, delivery_id) == "sending"
    assert _audit(engine, delivery_id) == []


def test_an_unknown_or_malformed_delivery_is_named(campaign_db, operators_alice_bob) -> None:
    # Fresh-user finding: a number beyond 64 bits was a driver's OverflowError and a traceback.
    for unknown in (999, 0, -3, 2**63, 10**20):
        with pytest.raises(DeliveryNotFound, match=f"^Delivery {unknown} does not exist.$"):
            controls.pause(campaign_db.engine, unknown, "alice")
    for wrong in ("7", 2.0, True):
        with pytest.raises(InvalidInput, match="A delivery id is a whole number"):
            controls.resume(campaign_db.engine, wrong, "alice")


def test_a_reason_is_trimmed_and_kept_short(campaign_db, add_profiles, new_delivery, operators_alice_bob) -> None:
    engine = campaign_db.engine
    delivery_id = _sending(engine, add_profiles, new_delivery, ["a@example.test"])
    with pytest.raises(InvalidInput, match="The reason is 501 characters long; at most 500 are kept"):
        controls.pause(engine, delivery_id, "alice", "x" * 501)
    assert controls.pause(engine, delivery_id, "alice", "   ") == f"Delivery {delivery_id} paused by alice."
    assert controls.resume(engine, delivery_id, "alice", " new relay \n") == (
        f"Delivery {delivery_id} resumed by alice: new relay."
    )


def test_the_loser_of_two_controls_is_told_who_won(
    campaign_db, add_profiles, new_delivery, operators_alice_bob
) -> None:
    engine = campaign_db.engine
    delivery_id = _sending(engine, add_profiles, new_delivery, ["a@example.test"])
    operators.grant_role(engine, "bob", ROLE_START_DELIVERIES)
    controls.pause(engine, delivery_id, "bob", "legal check")
    with pytest.raises(DeliveryStateError) as refused:
        controls.pause(engine, delivery_id, "alice")
    assert str(refused.value) == (
        f"Delivery {delivery_id} is paused (paused by bob: legal check): only a delivery that is sending can be "
        "paused. Nothing was changed."
    )


def test_of_two_pauses_at_once_exactly_one_is_recorded(
    campaign_db, add_profiles, new_delivery, operators_alice_bob
) -> None:
    engine = campaign_db.engine
    delivery_id = _sending(engine, add_profiles, new_delivery, ["a@example.test"])
    operators.grant_role(engine, "bob", ROLE_START_DELIVERIES)
    barrier = threading.Barrier(2)

    def pause(who: str) -> str:
        barrier.wait()
        try:
            return controls.pause(engine, delivery_id, who)
        except DeliveryStateError as exc:
            return str(exc)

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(pause, ["alice", "bob"]))

    assert sorted("Nothing was changed" in answer for answer in answers) == [False, True]
    assert [action for action, _, _ in _audit(engine, delivery_id)] == ["paused"]


# ---------------------------------------------------------------- the brake's settings


@pytest.mark.parametrize("value", [-1, 100.5, "30", True, float("nan"), float("inf")])
def test_a_brake_threshold_outside_0_to_100_percent_is_refused(campaign_db, new_delivery, value) -> None:
    with pytest.raises(InvalidInput, match="brake_threshold must be a percentage from 0 to 100"):
        new_delivery(campaign_db.engine, brake_threshold=value)


@pytest.mark.parametrize("value", [0, -5, 2.5, "500", False, 1_000_001, 10**23])
def test_a_brake_window_that_is_not_a_count_is_refused(campaign_db, new_delivery, value) -> None:
    with pytest.raises(InvalidInput, match="brake_window must be a whole number of messages from 1 to 1,000,000"):
        new_delivery(campaign_db.engine, brake_window=value)


def test_the_brake_settings_of_a_spec_are_kept_and_default_otherwise(campaign_db, new_delivery) -> None:
    engine = campaign_db.engine
    braked, default = new_delivery(engine, brake_threshold=12.5, brake_window=200), new_delivery(engine)
    with engine.begin() as conn:
        assert (controls.send_state(conn, braked).brake_threshold, controls.send_state(conn, braked).brake_window) == (
            12.5,
            200,
        )
        state = controls.send_state(conn, default)
    assert (state.brake_threshold, state.brake_window) == (controls.DEFAULT_BRAKE_THRESHOLD, 500)


@pytest.mark.parametrize(
    ("processed", "failures", "threshold", "window", "tripped"),
    [
        (19, 19, 30.0, 500, False),  # fewer than BRAKE_MIN_SAMPLE: says nothing yet
        (20, 7, 30.0, 500, True),
        (20, 6, 30.0, 500, False),  # 30 % is not above 30 %
        (5, 2, 30.0, 5, True),  # a window smaller than the minimum sample is the sample
        (500, 1, 0.0, 500, True),
        (500, 500, 100.0, 500, False),  # 100 %: the brake never acts
    ],
)
def test_the_brake_trips_above_the_threshold_over_enough_messages(
    processed, failures, threshold, window, tripped
) -> None:
    assert controls.BrakeReading(processed, failures, threshold, window).tripped is tripped


# ---------------------------------------------------------------- with send_chunk and a real relay


def test_a_chunk_of_a_paused_delivery_sends_nothing_and_says_it_is_held(
    campaign_db, tmp_path, add_profiles, new_delivery, operators_alice_bob
) -> None:
    engine = campaign_db.engine
    delivery_id = _sending(engine, add_profiles, new_delivery, [f"r{i}@example.test" for i in range(5)])
    controls.pause(engine, delivery_id, "alice", "waiting for the legal check")
    with running_server(tmp_path / "maildir") as (port, server):
        with pytest.raises(ChunkHeld) as held:
            send_chunk(engine, delivery_id, RUN, 1, 5, connection_factory(port))
    assert held.value.paused and held.value.reason == "paused by alice: waiting for the legal check"
    assert server.accepted == {}
    assert _log_counts(engine, delivery_id) == {}
    assert controls.pause_recheck_delay(held.value.state) == controls.DEFAULT_PAUSE_RECHECK[0]


def test_pause_mid_chunk_then_resume_serves_everyone_exactly_once(
    campaign_db, tmp_path, add_profiles, new_delivery, operators_alice_bob, check_every_message
) -> None:
    engine = campaign_db.engine
    addresses = [f"r{i:03}@example.test" for i in range(300)]
    delivery_id = _sending(engine, add_profiles, new_delivery, addresses)
    with running_server(tmp_path / "maildir") as (port, server), ThreadPoolExecutor(1) as pool:
        first = pool.submit(send_chunk, engine, delivery_id, RUN, 1, 300, connection_factory(port))
        wait_for(lambda: sum(server.accepted.values()) >= 20, 60, 0.01, "20 messages at the relay")
        controls.pause(engine, delivery_id, "alice")
        with pytest.raises(ChunkHeld) as held:
            first.result(timeout=60)
        before_resume = sum(server.accepted.values())
        # What the relay accepted is on the sending log: nothing sent is left unrecorded.
        assert _log_counts(engine, delivery_id) == {"sent": before_resume} == {"sent": held.value.result.counts["sent"]}
        assert 20 <= before_resume < 300
        assert "ended early: paused by alice" in held.value.result.summary_line()

        controls.resume(engine, delivery_id, "alice")
        result = send_chunk(engine, delivery_id, RUN, 1, 300, connection_factory(port))

    assert result.counts == {"sent": 300 - before_resume}
    assert server.accepted == {address: 1 for address in addresses}
    assert _log_counts(engine, delivery_id) == {"sent": 300}


def test_stop_ends_the_chunks_and_the_run_cancels_the_rest(
    campaign_db, tmp_path, add_profiles, new_delivery, operators_alice_bob
) -> None:
    engine = campaign_db.engine
    addresses = [f"r{i:02}@example.test" for i in range(20)]
    delivery_id = _sending(engine, add_profiles, new_delivery, addresses)
    with running_server(tmp_path / "maildir") as (port, server):
        assert send_chunk(engine, delivery_id, RUN, 1, 10, connection_factory(port)).counts == {"sent": 10}
        controls.stop(engine, delivery_id, "alice", "wrong price in the subject")
        second = send_chunk(engine, delivery_id, RUN, 11, 20, connection_factory(port))
    assert (second.counts, second.held) == ({}, "stopped by alice: wrong price in the subject")
    assert sum(server.accepted.values()) == 10

    # What aggregate_kpis does.
    assert confirm.cancel_if_stopped(engine, delivery_id, RUN) == 10
    assert confirm.cancel_if_stopped(engine, delivery_id, RUN) == 0, "a retried aggregate_kpis adds nothing"
    kpis = stats.compute_kpis(engine, delivery_id)
    assert confirm.finish_send(engine, delivery_id, RUN, kpis) == "stopped"
    assert _status(engine, delivery_id) == "stopped"
    assert (kpis["to_deliver"], kpis["processed"], kpis["delivered"], kpis["cancelled"]) == (20, 10, 10, 10)
    assert kpis["delivered_rate"] == 1.0, "rates are over the processed recipients only"
    with engine.begin() as conn:
        cancelled = conn.execute(
            text("SELECT email, reason, attempts FROM broad_logs WHERE delivery_id = :d AND status = 'cancelled'"),
            {"d": delivery_id},
        ).all()
    assert sorted(row.email for row in cancelled) == addresses[10:]
    assert {(row.reason, row.attempts) for row in cancelled} == {("the send was stopped", 0)}


def test_a_relay_refusing_60_percent_pauses_the_delivery_with_its_reason(
    campaign_db, tmp_path, add_profiles, new_delivery, operators_alice_bob, check_every_message
) -> None:
    engine = campaign_db.engine
    # Three refused for two accepted, in that order: 60 % of any multiple of five.
    addresses = [f"{'bad' if i % 5 < 3 else 'ok'}{i:03}@example.test" for i in range(200)]
    delivery_id = _sending(engine, add_profiles, new_delivery, addresses)
    rules = [Rule(Stage.RCPT, 550, pattern="bad*", text="5.1.1 User unknown")]
    with running_server(tmp_path / "maildir", rules=rules) as (port, server):
        with pytest.raises(ChunkHeld) as held:
            send_chunk(engine, delivery_id, RUN, 1, 200, connection_factory(port))

    # The brake reads the window after each commit with a failure: first with 20 messages or more
    # after the 21st, a refused one (13 of them refused).
    reason = "automatic brake: 13 of the last 21 processed messages bounced or failed (61.9 % > 30 %, window 500)"
    assert (held.value.paused, held.value.reason) == (True, reason)
    assert held.value.result.counts == {"bounced": 13, "sent": 8}
    assert sum(server.accepted.values()) == 8
    assert _status(engine, delivery_id) == "paused"
    assert _audit(engine, delivery_id) == [("auto_paused", None, reason)]

    # Resumed, the window starts again: the old failures do not brake it at once.
    controls.resume(engine, delivery_id, "alice")
    with engine.begin() as conn:
        state = controls.send_state(conn, delivery_id)
        assert controls.brake_reading(conn, delivery_id, state).processed == 0


def test_a_delivery_threshold_and_window_are_what_the_brake_uses(
    campaign_db, tmp_path, add_profiles, new_delivery, operators_alice_bob, check_every_message
) -> None:
    engine = campaign_db.engine
    # One refusal in ten: 10 %, under the default 30 % but above this delivery's 5 %.
    addresses = [f"{'bad' if i % 10 == 0 else 'ok'}{i:03}@example.test" for i in range(100)]
    delivery_id = _sending(engine, add_profiles, new_delivery, addresses, brake_threshold=5, brake_window=40)
    rules = [Rule(Stage.RCPT, 550, pattern="bad*")]
    with running_server(tmp_path / "maildir", rules=rules) as (port, server):
        with pytest.raises(ChunkHeld) as held:
            send_chunk(engine, delivery_id, RUN, 1, 100, connection_factory(port))
    assert held.value.reason == (
        "automatic brake: 3 of the last 21 processed messages bounced or failed (14.3 % > 5 %, window 40)"
    )


def test_a_failed_send_whose_chunk_runs_again_is_sending_and_can_be_paused(
    campaign_db, tmp_path, add_profiles, new_delivery, operators_alice_bob
) -> None:
    """Fresh-user finding: after clearing a failed send's tasks (as its sentence says) the chunks
    sent while the delivery stayed failed, and pause and stop were refused."""
    engine = campaign_db.engine
    addresses = [f"r{i}@example.test" for i in range(6)]
    delivery_id = _sending(engine, add_profiles, new_delivery, addresses)
    assert confirm.finish_send(engine, delivery_id, RUN, stats.compute_kpis(engine, delivery_id)) == "failed"

    with running_server(tmp_path / "maildir") as (port, server):
        with pytest.raises(SendConflict):
            send_chunk(engine, delivery_id, "another-run", 1, 3, connection_factory(port))
        assert _status(engine, delivery_id) == "failed", "only the run that owns the send reopens it"
        assert send_chunk(engine, delivery_id, RUN, 1, 3, connection_factory(port)).counts == {"sent": 3}

    assert _status(engine, delivery_id) == "sending"
    assert _audit(engine, delivery_id) == [
        ("resumed", None, "resumed: a send_chunk task of the failed run runs again (cleared in Airflow)")
    ]
    assert controls.pause(engine, delivery_id, "alice") == f"Delivery {delivery_id} paused by alice."
