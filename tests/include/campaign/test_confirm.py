"""confirm_send steps: chunk planning, validation refusals, the send claim and the KPIs."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import insert, select, update
from testsupport import start_confirmed_send

from campaign import approval
from campaign.clock import utcnow
from campaign.confirm import (
    CHUNKS_PER_SLOT,
    MIN_CHUNK_SIZE,
    Chunk,
    auto_chunk_size,
    format_kpi_table,
    plan_chunks,
    plan_delivery,
    pool_slots_setting,
    start_send,
    validate_delivery,
)
from campaign.deliveries import load_delivery, prepare_delivery
from campaign.errors import (
    ConfigurationError,
    DeliveryNotFound,
    DeliveryStateError,
    InvalidInput,
    SendConflict,
    SendRefused,
    TemplateProblem,
)
from campaign.schema import broad_logs, deliveries, delivery_kpis, delivery_targets, tracking_logs
from campaign.stats import compute_kpis, fold_new_events

# ---------------------------------------------------------------- plan_chunks


def test_plan_chunks_splits_into_contiguous_ranges() -> None:
    assert plan_chunks(10, 3, 100) == [Chunk(0, 1, 3), Chunk(1, 4, 6), Chunk(2, 7, 9), Chunk(3, 10, 10)]
    assert Chunk(3, 10, 10).as_xcom() == {"index": 3, "first_seq": 10, "last_seq": 10}


def test_plan_chunks_without_a_chunk_size_sizes_from_the_target_and_the_pool() -> None:
    chunks = plan_chunks(100_000, None, 1024, pool_slots=4)

    assert (MIN_CHUNK_SIZE, CHUNKS_PER_SLOT) == (5_000, 2)
    assert [(c.first_seq, c.last_seq) for c in chunks] == [(1 + i * 12_500, (i + 1) * 12_500) for i in range(8)]


def test_plan_chunks_without_a_chunk_size_keeps_a_small_target_in_one_chunk() -> None:
    chunks = plan_chunks(2500, None, 1024)

    assert [(c.first_seq, c.last_seq) for c in chunks] == [(1, 2500)]


@pytest.mark.parametrize(
    ("count", "slots", "chunks", "size"),
    [
        (1_000_000, 4, 8, 125_000),  # two rounds of the pool, large chunks
        (100_000, 4, 8, 12_500),
        (45_000, 4, 8, 5_625),  # two rounds, each chunk still above the minimum
        (30_000, 4, 4, 7_500),  # six chunks would keep the minimum, but one round of four balances
        (20_000, 4, 4, 5_000),
        (12_000, 4, 2, 6_000),  # too small for a round: fewer chunks, none below the minimum
        (9_999, 4, 1, 9_999),
        (2_000, 4, 1, 2_000),
        (1, 4, 1, 1),
        (100_000, 1, 2, 50_000),
        (100_000, 8, 16, 6_250),
        (100_000, 100, 20, 5_000),  # more slots than minimum-size chunks: not every slot is used
    ],
)
def test_auto_chunk_size_examples(count: int, slots: int, chunks: int, size: int) -> None:
    assert auto_chunk_size(count, slots) == size
    assert len(plan_chunks(count, None, 1024, pool_slots=slots)) == chunks


@pytest.mark.parametrize("slots", [1, 2, 3, 4, 7, 8, 32])
@pytest.mark.parametrize("count", [1, 4_999, 5_000, 9_999, 10_000, 19_999, 20_000, 39_999, 77_777, 100_000, 999_999])
def test_auto_chunks_keep_the_minimum_size_and_whole_rounds_of_the_pool(count: int, slots: int) -> None:
    chunks = plan_chunks(count, None, 1024, pool_slots=slots)
    sizes = [c.last_seq - c.first_seq + 1 for c in chunks]

    assert sum(sizes) == count
    assert len(chunks) <= slots * CHUNKS_PER_SLOT
    if len(chunks) > 1:  # a lone chunk is the whole target, however small
        assert min(sizes) >= MIN_CHUNK_SIZE, sizes
    if len(chunks) >= slots:
        assert len(chunks) % slots == 0, sizes
    assert max(sizes) - min(sizes) < len(chunks), sizes  # equal, but for the rounding of the last one


def test_auto_chunks_stay_within_the_map_limit() -> None:
    chunks = plan_chunks(1_000_000, None, 3, pool_slots=4)

    assert len(chunks) == 3
    assert chunks[-1].last_seq == 1_000_000


@pytest.mark.parametrize("slots", [0, -4])
def test_auto_chunk_size_refuses_a_pool_without_slots(slots: int) -> None:
    with pytest.raises(InvalidInput, match=rf"^the pool campaign_smtp must have at least 1 slot, got {slots}\.$"):
        plan_chunks(10, None, 1024, pool_slots=slots)


def test_an_explicit_chunk_size_ignores_the_pool() -> None:
    assert plan_chunks(100_000, 1000, 1024, pool_slots=4) == plan_chunks(100_000, 1000, 1024, pool_slots=64)
    assert len(plan_chunks(100_000, 1000, 1024, pool_slots=4)) == 100


@pytest.mark.parametrize(
    ("count", "size", "max_map"),
    [(1, 1, 1), (7, 7, 1), (8, 7, 1), (1000, 1, 1024), (10_000, 10, 8), (10_001, 1, 1024), (99_999, 500, 7)],
)
def test_plan_chunks_covers_every_seq_once_within_the_map_limit(count: int, size: int, max_map: int) -> None:
    chunks = plan_chunks(count, size, max_map)

    assert 1 <= len(chunks) <= max_map
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].first_seq == 1
    assert chunks[-1].last_seq == count
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.first_seq == before.last_seq + 1
    covered = [seq for c in chunks for seq in range(c.first_seq, c.last_seq + 1)]
    assert covered == list(range(1, count + 1))


def test_plan_chunks_grows_the_chunk_size_to_fit_the_map() -> None:
    chunks = plan_chunks(10_000, 10, 8)

    assert len(chunks) == 8
    assert {c.last_seq - c.first_seq + 1 for c in chunks} == {1250}


def test_plan_chunks_keeps_a_small_enough_chunk_size() -> None:
    chunks = plan_chunks(100, 10, 1024)

    assert len(chunks) == 10


def test_plan_chunks_for_an_empty_target() -> None:
    assert plan_chunks(0, 10, 1024) == []
    assert plan_chunks(0, None, 1024) == []


@pytest.mark.parametrize("size", [-1, -1000])
def test_plan_chunks_refuses_a_chunk_size_below_one(size: int) -> None:
    with pytest.raises(InvalidInput, match=rf"^chunk_size must be at least 1, got {size}\.$"):
        plan_chunks(10, size, 1024)


def test_plan_chunks_refuses_a_zero_chunk_size() -> None:
    with pytest.raises(InvalidInput, match="chunk_size must be at least 1, got 0"):
        plan_chunks(10, 0, 1024)


def test_plan_delivery_cuts_the_prepared_target_and_says_how(campaign_db, ready_delivery, monkeypatch) -> None:
    monkeypatch.setenv("CAMPAIGN_SMTP_POOL_SLOTS", "3")
    delivery_id = ready_delivery(campaign_db.engine, recipients=7)

    given = plan_delivery(campaign_db.engine, delivery_id, 3, 1024)
    sized = plan_delivery(campaign_db.engine, delivery_id, None, 1024)

    assert [(c.first_seq, c.last_seq) for c in given.chunks] == [(1, 3), (4, 6), (7, 7)]
    assert given.summary_line() == (
        "plan_chunks: 7 recipients in 3 chunks of up to 3 (chunk_size 3 from the trigger form)"
    )
    assert (
        sized.summary_line()
        == "plan_chunks: 7 recipients in 1 chunk of up to 7 (sized for 3 slots of pool campaign_smtp)"
    )


# ---------------------------------------------------------------- validate_delivery


@pytest.mark.parametrize("delivery_id", [0, -3, "1", 1.0, True, None])
def test_validate_refuses_a_malformed_delivery_id(sqlite_db, delivery_id) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        validate_delivery(sqlite_db.engine, delivery_id)

    assert str(excinfo.value) == f"delivery_id must be a positive integer, got {delivery_id!r}."


def test_validate_refuses_an_unknown_delivery(campaign_db) -> None:
    with pytest.raises(DeliveryNotFound, match=r"^Delivery 4242 does not exist\.$"):
        validate_delivery(campaign_db.engine, 4242)


def test_validate_refuses_a_draft(campaign_db, add_profiles, new_delivery) -> None:
    add_profiles(campaign_db.engine, ["a@example.test"])
    delivery_id = new_delivery(campaign_db.engine)
    prepare_delivery(campaign_db.engine, delivery_id, "carol")  # prepared but not approved

    with pytest.raises(DeliveryStateError) as excinfo:
        validate_delivery(campaign_db.engine, delivery_id)

    assert str(excinfo.value) == (
        f"Delivery {delivery_id} ('Spring sale') cannot be sent: its status is draft, not ready; "
        "it must be prepared and approved first."
    )


def test_validate_refuses_a_delivery_already_being_sent(campaign_db, ready_delivery) -> None:
    delivery_id = ready_delivery(campaign_db.engine)
    start_confirmed_send(campaign_db.engine, delivery_id, "alice", "run-A")

    with pytest.raises(DeliveryStateError) as excinfo:
        validate_delivery(campaign_db.engine, delivery_id)

    assert "its status is sending, not ready; it is being sent by run 'run-A'." in str(excinfo.value)


def test_validate_refuses_an_empty_target(campaign_db, ready_delivery) -> None:
    delivery_id = ready_delivery(campaign_db.engine, recipients=0)

    with pytest.raises(DeliveryStateError) as excinfo:
        validate_delivery(campaign_db.engine, delivery_id)

    assert str(excinfo.value) == (
        f"Delivery {delivery_id} ('Spring sale') has an empty target: no eligible recipient. "
        "Import profiles and prepare it again."
    )


def test_validate_refuses_an_undefined_template_variable(campaign_db, ready_delivery) -> None:
    delivery_id = ready_delivery(campaign_db.engine, html="<p>{{ profile.nickname }}</p>")

    with pytest.raises(TemplateProblem) as excinfo:
        validate_delivery(campaign_db.engine, delivery_id)

    message = str(excinfo.value)
    assert f"The html template of delivery {delivery_id} uses an undefined variable" in message
    assert "nickname" in message


def test_validate_accepts_a_ready_delivery(campaign_db, ready_delivery) -> None:
    delivery_id = ready_delivery(campaign_db.engine)

    delivery = validate_delivery(campaign_db.engine, delivery_id)

    assert (delivery.id, delivery.status, delivery.label, delivery.target_count) == (
        delivery_id,
        "ready",
        "Spring sale",
        3,
    )


# ---------------------------------------------------------------- start_send


def test_start_send_claims_once_and_names_the_winner(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)

    start_confirmed_send(engine, delivery_id, "alice", "run-A")
    claimed = load_delivery(engine, delivery_id)
    assert (claimed.status, claimed.run_id, claimed.confirmed_by) == ("sending", "run-A", "alice")

    with pytest.raises(SendConflict) as excinfo:
        start_confirmed_send(engine, delivery_id, "dave", "run-B")
    assert str(excinfo.value) == (
        f"Delivery {delivery_id} was claimed by another run: 'run-A' (status sending, confirmed by alice). "
        "This run sends nothing."
    )
    after = load_delivery(engine, delivery_id)
    assert (after.status, after.run_id, after.confirmed_by) == ("sending", "run-A", "alice")

    start_confirmed_send(engine, delivery_id, "alice", "run-A")  # a retry inside the owning run goes on
    assert load_delivery(engine, delivery_id).run_id == "run-A"


def test_start_send_refuses_a_run_without_a_recorded_ok(campaign_db, ready_delivery) -> None:
    """An approval task marked "success" by hand in Airflow has recorded no answer: nothing starts."""
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)

    with pytest.raises(SendRefused) as excinfo:
        start_send(engine, delivery_id, "run-A")

    assert str(excinfo.value) == (
        f"No 'OK, send definitively' stands for delivery {delivery_id} in run 'run-A' (latest on its audit: "
        "nothing): the approval task was not answered OK by the operator (was it marked success by hand?). "
        "This run sends nothing."
    )
    assert load_delivery(engine, delivery_id).status == "ready"


def test_start_send_records_the_operator_who_answered_ok(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    approval.record(engine, delivery_id, "run-B", "confirmed", "bob", "an OK in another run")
    approval.record(engine, delivery_id, "run-A", "cancelled", "alice", "a Cancel in this run")
    with pytest.raises(SendRefused):
        start_send(engine, delivery_id, "run-A")
    approval.record(engine, delivery_id, "run-A", "confirmed", "alice", "the OK of this run")

    assert start_send(engine, delivery_id, "run-A") == ("alice", 0)
    assert load_delivery(engine, delivery_id).confirmed_by == "alice"


@pytest.mark.parametrize(
    ("action", "actor", "latest"),
    [
        ("cancelled", "alice", "cancelled (alice)"),
        ("timed_out", None, "timed out (no user)"),
        ("approval_asked", "alice", "approval asked (alice)"),  # the run asked again: a new answer is due
    ],
)
def test_an_ok_followed_by_another_entry_of_the_same_run_no_longer_stands(
    campaign_db, ready_delivery, action, actor, latest
) -> None:
    """An approval set to success by hand after a later Cancel, timeout or new question sends nothing."""
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    approval.record(engine, delivery_id, "run-A", "confirmed", "alice", "an OK")
    approval.record(engine, delivery_id, "run-A", action, actor, "what came after")

    with pytest.raises(SendRefused, match=rf"\(latest on its audit: {re.escape(latest)}\)"):
        start_send(engine, delivery_id, "run-A")
    assert load_delivery(engine, delivery_id).status == "ready"


def test_start_send_lets_the_owning_run_resume_a_failed_send(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    start_confirmed_send(engine, delivery_id, "alice", "run-A")
    with engine.begin() as conn:
        conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(status="failed"))

    start_confirmed_send(engine, delivery_id, "alice", "run-A")

    with pytest.raises(SendConflict, match="claimed by another run: 'run-A' \\(status failed"):
        start_confirmed_send(engine, delivery_id, "alice", "run-B")


def test_start_send_refuses_the_owning_run_once_sent(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    start_confirmed_send(engine, delivery_id, "alice", "run-A")
    with engine.begin() as conn:
        conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(status="sent"))

    with pytest.raises(SendConflict, match="'run-A' \\(status sent"):
        start_confirmed_send(engine, delivery_id, "alice", "run-A")


# ---------------------------------------------------------------- KPIs


def _log_outcomes(engine, delivery_id: int, outcomes: list[tuple[str, str | None]]) -> list[int]:
    """One broad_logs row per target, in seq order; returns the profile ids."""
    with engine.begin() as conn:
        target_rows = conn.execute(
            select(delivery_targets)
            .where(delivery_targets.c.delivery_id == delivery_id)
            .order_by(delivery_targets.c.seq)
        ).all()
        for target, (status, failure_type) in zip(target_rows, outcomes, strict=False):
            conn.execute(
                insert(broad_logs).values(
                    delivery_id=delivery_id,
                    profile_id=target.profile_id,
                    seq=target.seq,
                    email=target.email,
                    status=status,
                    failure_type=failure_type,
                    logged_at=utcnow(),
                )
            )
    return [row.profile_id for row in target_rows]


def _track(engine, delivery_id: int, events: list[tuple[int, str]]) -> None:
    with engine.begin() as conn:
        for profile_id, event_type in events:
            conn.execute(
                insert(tracking_logs).values(
                    delivery_id=delivery_id, profile_id=profile_id, event_type=event_type, event_at=utcnow()
                )
            )


def _stored_kpis(engine, delivery_id: int) -> list[dict]:
    with engine.begin() as conn:
        rows = conn.execute(select(delivery_kpis).where(delivery_kpis.c.delivery_id == delivery_id)).mappings().all()
    return [dict(row) for row in rows]


def test_compute_kpis_counts_logs_and_engagement(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine, recipients=8)  # one target stays without a log row
    ids = _log_outcomes(
        engine,
        delivery_id,
        [
            ("sent", None),
            ("sent", None),
            ("sent", None),
            ("bounced", "hard"),
            ("bounced", "soft"),
            ("failed", "hard"),
            ("ignored", None),
        ],
    )
    _track(engine, delivery_id, [(ids[0], "open"), (ids[0], "click"), (ids[0], "click"), (ids[1], "open")])
    fold_new_events(engine, lag_seconds=0)

    kpis = compute_kpis(engine, delivery_id)

    expected = {
        "to_deliver": 8,
        "delivered": 3,
        "bounces_errors": 3,
        "hard_bounces": 1,
        "soft_bounces": 1,
        "errors": 1,
        "ignored": 1,
        "processed": 6,
        "unique_opens": 2,
        "unique_clicks": 1,
        "clicks": 2,
    }
    assert {name: kpis[name] for name in expected} == expected
    assert kpis["delivered_rate"] == pytest.approx(0.5)
    assert kpis["bounce_error_rate"] == pytest.approx(0.5)
    assert kpis["open_rate"] == pytest.approx(2 / 3)
    assert kpis["click_through_rate"] == pytest.approx(1 / 3)

    [stored] = _stored_kpis(engine, delivery_id)
    assert {name: stored[name] for name in expected} == expected
    assert stored["delivered_rate"] == pytest.approx(0.5)
    assert stored["click_through_rate"] == pytest.approx(1 / 3)


def test_compute_kpis_again_updates_the_stored_row(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine, recipients=2)
    _log_outcomes(engine, delivery_id, [("sent", None)])
    assert compute_kpis(engine, delivery_id)["delivered"] == 1

    with engine.begin() as conn:
        conn.execute(broad_logs.delete().where(broad_logs.c.delivery_id == delivery_id))
    _log_outcomes(engine, delivery_id, [("sent", None), ("bounced", "hard")])
    kpis = compute_kpis(engine, delivery_id)

    [stored] = _stored_kpis(engine, delivery_id)
    assert (kpis["delivered"], kpis["hard_bounces"], kpis["processed"]) == (1, 1, 2)
    assert (stored["delivered"], stored["hard_bounces"], stored["processed"]) == (1, 1, 2)


def test_compute_kpis_rates_are_null_when_nothing_was_processed(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine, recipients=2)
    _log_outcomes(engine, delivery_id, [("ignored", None)])

    kpis = compute_kpis(engine, delivery_id)

    assert (kpis["to_deliver"], kpis["processed"], kpis["delivered"], kpis["ignored"]) == (2, 0, 0, 1)
    for rate in ("delivered_rate", "bounce_error_rate", "open_rate", "click_through_rate"):
        assert kpis[rate] is None, rate
    [stored] = _stored_kpis(engine, delivery_id)
    assert stored["delivered_rate"] is None
    assert stored["open_rate"] is None
    assert "delivered           |     0 |     n/a" in format_kpi_table(kpis).splitlines()


def _kpis(**rates) -> dict:
    values = {
        "to_deliver": 10,
        "processed": 8,
        "delivered": 6,
        "bounces_errors": 2,
        "hard_bounces": 1,
        "soft_bounces": 1,
        "errors": 0,
        "ignored": 1,
        "cancelled": 1,
        "delivered_rate": 0.75,
        "bounce_error_rate": 0.25,
        "unique_opens": 3,
        "open_rate": 0.5,
        "human_unique_opens": 2,
        "human_open_rate": 1 / 3,
        "unique_clicks": 1,
        "clicks": 4,
        "click_through_rate": 1 / 6,
        "human_unique_clicks": 1,
        "human_clicks": 3,
        "human_click_through_rate": 1 / 6,
        "complaints": 1,
        "complaint_rate": 1 / 6,
    }
    values.update(rates)
    return values


def test_format_kpi_table_shows_counts_and_percentages() -> None:
    table = format_kpi_table(_kpis(to_deliver=12_345))

    lines = table.splitlines()
    assert lines[0] == "KPI                 |  count |    rate"
    assert lines[1] == "--------------------+--------+--------"
    assert "to deliver          | 12,345 |" in lines
    assert "  hard bounces      |      1 |" in lines
    assert "cancelled (stopped) |      1 |" in lines
    assert "delivered           |      6 |  75.00%" in lines
    assert "bounces + errors    |      2 |  25.00%" in lines


def test_format_kpi_table_shows_the_engagement_counts_beside_their_rates() -> None:
    """The data team reads the counts next to the rates: 0 opens and a 0.00 % rate say the
    same; 3 opens of 6 delivered say why 50 %."""
    lines = format_kpi_table(_kpis(to_deliver=12_345)).splitlines()

    assert lines[lines.index("unique opens        |      3 |  50.00%") + 1] == "  without machines  |      2 |  33.33%"
    assert lines[lines.index("unique clicks       |      1 |  16.67%") + 1] == "  without machines  |      1 |  16.67%"
    assert lines[lines.index("clicks              |      4 |") + 1] == "  without machines  |      3 |"
    assert "complaints          |      1 |  16.67%" in lines
    assert lines[-1] == "(delivered and bounces + errors: rates of processed; the others: rates of delivered)"


def test_format_kpi_table_shows_na_for_missing_rates() -> None:
    table = format_kpi_table(
        _kpis(to_deliver=12_345, delivered_rate=None, bounce_error_rate=None, open_rate=None, click_through_rate=0.0)
    )

    lines = table.splitlines()
    assert "delivered           |      6 |     n/a" in lines
    assert "bounces + errors    |      2 |     n/a" in lines
    assert "unique opens        |      3 |     n/a" in lines
    assert "unique clicks       |      1 |   0.00%" in lines


# ---------------------------------------------------------------- the pool's slots, from the deployment


def test_pool_slots_default_to_four(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAMPAIGN_SMTP_POOL_SLOTS", raising=False)

    assert pool_slots_setting() == 4


def test_pool_slots_come_from_the_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPAIGN_SMTP_POOL_SLOTS", "8")

    assert pool_slots_setting() == 8


@pytest.mark.parametrize("value", ["0", "-2", "four", "2.5"])
def test_pool_slots_refuse_what_is_not_a_positive_count(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CAMPAIGN_SMTP_POOL_SLOTS", value)

    with pytest.raises(
        ConfigurationError, match=rf"^CAMPAIGN_SMTP_POOL_SLOTS must be a positive number of slots, got '{value}'\.$"
    ):
        pool_slots_setting()
