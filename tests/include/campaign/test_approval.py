"""The approval of a send: what it shows, and what each answer may do (campaign.approval)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, update
from testsupport import start_confirmed_send

from campaign import approval, operators
from campaign.confirm import plan_chunks, start_send
from campaign.deliveries import load_delivery
from campaign.errors import InvalidInput, RoleDenied, SendRefused
from campaign.schema import ROLE_START_DELIVERIES, deliveries, delivery_kpis, profiles

URL = "http://airflow.test/campaign-deployment/deliveries/{}"
ANSWERED_AT = datetime(2026, 11, 30, 9, 15, 2, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _request(engine, delivery_id: int, chunk_size: int | None = None) -> approval.ApprovalRequest:
    chunks = plan_chunks(load_delivery(engine, delivery_id).target_count, chunk_size, 1024)
    return approval.approval_request(engine, delivery_id, chunks, URL.format(delivery_id))


def _operator(engine, login: str = "alice", role: bool = True) -> str:
    operators.create_operator(engine, login)
    if role:
        operators.grant_role(engine, login, ROLE_START_DELIVERIES)
    return login


def _answer(engine, delivery_id: int, chosen: str, responder: str | None, operator: str = "alice", **kwargs):
    return approval.answer_approval(
        engine,
        delivery_id,
        kwargs.pop("run_id", "run-A"),
        operator,
        [chosen],
        responder,
        kwargs.pop("responded_at", ANSWERED_AT),
        kwargs.pop("timed_out", False),
        HOUR,
    )


def _actions(engine, delivery_id: int) -> list[tuple[str, str | None, str | None]]:
    return [(row["action"], row["actor"], row["run_id"]) for row in approval.audit_trail(engine, delivery_id)]


# ---------------------------------------------------------------- what the approval shows


def test_the_request_shows_the_delivery_as_it_will_be_sent(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    html = '<p>Hi {{ profile.first_name }} <a href="https://shop.test/a">a</a> <a href="https://shop.test/b">b</a></p>'
    delivery_id = ready_delivery(engine, recipients=12, subject="Deals for {{ profile.first_name }}", html=html)
    # Since preparation: two blocklisted, one quarantined (hard bounce in another delivery).
    with engine.begin() as conn:
        conn.execute(
            update(profiles)
            .where(profiles.c.email.in_(["r3@example.test", "r4@example.test"]))
            .values(blocklisted=True)
        )
        conn.execute(update(profiles).where(profiles.c.email == "r5@example.test").values(quarantine_reason="550"))

    request = _request(engine, delivery_id, chunk_size=5)

    assert (request.target_count, request.blocklisted, request.quarantined, request.to_send) == (12, 2, 1, 9)
    assert request.subject == "Deals for R0"  # the first recipient of the target
    assert (request.sender, request.tracking, request.tracked_links) == ("Shop News <news@shop.test>", True, 2)
    assert (request.chunks, request.chunk_size) == (3, 5)
    assert request.estimate == approval.Estimate(None, None, 0)
    assert request.headline() == f"Send delivery {delivery_id} 'Spring sale' to 9 recipients?"
    body = request.body("alice", HOUR)
    for row in (
        f"| Delivery | {delivery_id} · Spring sale ([Deployment page]({URL.format(delivery_id)})) |",
        "| Sender | Shop News \\<news@shop\\.test\\> |",
        "| Subject (first recipient) | Deals for R0 |",
        "| Target | 12 recipients |",
        "| Skipped since preparation | 2 blocklisted, 1 quarantined |",
        "| Will be sent to | **9 recipients** |",
        "| Tracking | on, 2 tracked links |",
        "| Chunks | 3 of up to 5 recipients |",
        "| Rate limit | none |",
        "| Estimated duration | unknown: no earlier send on this deployment to measure a rate from |",
    ):
        assert row in body, row
    assert "Only alice, who started this run, can answer. Without an answer within 1 h the send is cancelled." in body


def test_the_request_says_tracking_off(campaign_db, ready_delivery) -> None:
    delivery_id = ready_delivery(campaign_db.engine, tracking=False, html='<a href="https://shop.test/">x</a>')

    body = _request(campaign_db.engine, delivery_id).body("alice", HOUR)

    assert "| Tracking | off |" in body


def test_text_from_the_delivery_cannot_add_markup_to_the_approval(campaign_db, ready_delivery) -> None:
    label = "Sale [click](https://evil.test) <b>now</b> | **big**\nnext line"
    delivery_id = ready_delivery(campaign_db.engine, label=label, subject="{{ '![x](https://evil.test/p.gif)' }}")

    body = _request(campaign_db.engine, delivery_id).body("alice", HOUR)

    assert "](https://evil.test" not in body and "<b>" not in body and "**big**" not in body
    assert "Sale \\[click\\]\\(https://evil\\.test\\) \\<b\\>now\\</b\\> \\| \\*\\*big\\*\\* next line" in body
    assert "| Subject (first recipient) | \\!\\[x\\]\\(https://evil\\.test/p\\.gif\\) |" in body


def test_the_estimate_comes_from_the_last_sends_of_the_deployment(campaign_db, ready_delivery, new_delivery) -> None:
    engine = campaign_db.engine
    start = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
    # Two earlier sends: 3,000 recipients in 60 s and 1,000 in 20 s, so 50 recipients/s.
    for served, seconds in ((3_000, 60), (1_000, 20)):
        earlier = new_delivery(engine)
        with engine.begin() as conn:
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == earlier)
                .values(status="sent", confirmed_at=start, finished_at=start + timedelta(seconds=seconds))
            )
            conn.execute(
                insert(delivery_kpis).values(
                    delivery_id=earlier, to_deliver=served, delivered=served, bounces_errors=0, hard_bounces=0,
                    soft_bounces=0, errors=0, ignored=0, processed=served, computed_at=start,
                )
            )  # fmt: skip
    delivery_id = ready_delivery(engine, recipients=30)

    request = _request(engine, delivery_id)

    assert request.estimate == approval.Estimate(30 / 50, 50, 2)
    assert "about 1 s (at 50 recipients/s, the rate of the last 2 sends)" in request.body("alice", HOUR)


def test_a_rate_limit_below_the_measured_rate_sets_the_estimate(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine, recipients=30, max_rate=600)  # 10 a minute
    chunks = plan_chunks(30, None, 1024)

    own = approval.approval_request(engine, delivery_id, chunks, URL.format(delivery_id))
    from_form = approval.approval_request(engine, delivery_id, chunks, URL.format(delivery_id), max_rate=3_600)

    assert (own.max_rate, own.estimate.seconds) == (600, pytest.approx(180))
    body = own.body("alice", HOUR)
    assert "| Rate limit | 600 messages an hour |" in body
    assert "| Estimated duration | about 3 min (at the rate limit) |" in body
    assert (from_form.max_rate, from_form.estimate.seconds) == (3_600, pytest.approx(30))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "1 s"),
        (45, "45 s"),
        (89, "89 s"),
        (90, "2 min"),
        (3_599, "60 min"),
        (3_600, "1 h"),
        (5_400, "1 h 30 min"),
        (7_200, "2 h"),
    ],
)
def test_durations_read_as_an_operator_would_say_them(seconds, text) -> None:
    assert approval.duration_text(seconds) == text


# ---------------------------------------------------------------- answers


def test_ok_from_the_operator_who_started_the_run_is_recorded_and_lets_the_send_start(
    campaign_db, ready_delivery
) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    _operator(engine)

    answer = _answer(engine, delivery_id, approval.OK, "alice")

    assert answer == approval.Answer(True, "Confirmed by alice at 2026-11-30 09:15:02 UTC: 'OK, send definitively'.")
    assert approval.run_confirmation(engine, delivery_id, "run-A") == "alice"
    assert start_send(engine, delivery_id, "run-A") == ("alice", 0)
    assert _actions(engine, delivery_id) == [("confirmed", "alice", "run-A")]


def test_cancel_sends_nothing_and_leaves_the_delivery_ready(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    _operator(engine)

    answer = _answer(engine, delivery_id, approval.CANCEL, "alice")

    assert answer == approval.Answer(
        False,
        f"Cancelled by alice at 2026-11-30 09:15:02 UTC. Nothing was sent; delivery {delivery_id} stays ready "
        "and can be confirmed again.",
    )
    assert load_delivery(engine, delivery_id).status == "ready"
    assert approval.run_confirmation(engine, delivery_id, "run-A") is None
    with pytest.raises(SendRefused):
        start_send(engine, delivery_id, "run-A")
    assert _actions(engine, delivery_id) == [("cancelled", "alice", "run-A")]


def test_no_answer_in_time_cancels_without_a_person(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)

    # Airflow answers the default (Cancel) itself, with no responder.
    answer = _answer(engine, delivery_id, approval.CANCEL, None, timed_out=True)

    assert answer.send is False
    assert answer.line == (
        "No answer within 1 h (timed out at 2026-11-30 09:15:02 UTC): the send is cancelled. "
        f"Nothing was sent; delivery {delivery_id} stays ready and can be confirmed again."
    )
    assert _actions(engine, delivery_id) == [("timed_out", None, "run-A")]
    assert load_delivery(engine, delivery_id).status == "ready"


@pytest.mark.parametrize(
    ("operator", "responder", "role", "problem"),
    [
        ("alice", "bob", True, "the answer came from bob, not from alice who started this run"),
        ("alice", None, True, "the answer came from an unknown user, not from alice who started this run"),
        ("alice", "alice", False, "alice no longer holds the Start deliveries role"),
        (None, "alice", True, "this run has no triggering user, so nobody may confirm it"),
    ],
)
def test_an_ok_from_anyone_else_is_refused_recorded_and_sends_nothing(
    campaign_db, ready_delivery, operator, responder, role, problem
) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    _operator(engine, "alice", role=role)
    _operator(engine, "bob")  # bob holds the role, but did not start the run

    with pytest.raises(SendRefused) as excinfo:
        _answer(engine, delivery_id, approval.OK, responder, operator=operator)

    message = f"'OK, send definitively' at 2026-11-30 09:15:02 UTC is refused: {problem}. This run sends nothing."
    assert str(excinfo.value) == message
    assert _actions(engine, delivery_id) == [("answer_refused", responder, "run-A")]
    assert approval.audit_trail(engine, delivery_id)[0]["detail"] == message
    with pytest.raises(SendRefused):
        start_send(engine, delivery_id, "run-A")
    assert load_delivery(engine, delivery_id).status == "ready"


@pytest.mark.parametrize("first", [approval.OK, approval.CANCEL])
def test_a_retried_task_gets_the_recorded_outcome_again_and_records_nothing(campaign_db, ready_delivery, first) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    _operator(engine)
    recorded = _answer(engine, delivery_id, first, "alice")

    # The same question resolved again (Airflow retried the task after it had recorded the answer):
    # even another option or a timeout changes nothing.
    again = _answer(engine, delivery_id, approval.CANCEL if first == approval.OK else approval.OK, "alice")

    assert again == recorded
    assert len(approval.audit_trail(engine, delivery_id)) == 1


def test_a_refusal_is_given_again_to_a_retried_task(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    _operator(engine)
    with pytest.raises(SendRefused) as first:
        _answer(engine, delivery_id, approval.OK, "bob")

    with pytest.raises(SendRefused) as again:
        _answer(engine, delivery_id, approval.OK, "alice")

    assert str(again.value) == str(first.value)
    assert _actions(engine, delivery_id) == [("answer_refused", "bob", "run-A")]


def test_a_new_question_needs_a_new_answer(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    _operator(engine)
    _answer(engine, delivery_id, approval.CANCEL, "alice")
    approval.record(engine, delivery_id, "run-A", "approval_asked", "alice", "asked again")

    answer = _answer(engine, delivery_id, approval.OK, "alice")

    assert answer.send is True
    assert approval.run_confirmation(engine, delivery_id, "run-A") == "alice"
    assert [a for a, _, _ in _actions(engine, delivery_id)] == ["cancelled", "approval_asked", "confirmed"]


def test_of_two_runs_waiting_for_the_same_delivery_only_the_first_ok_sends(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    _operator(engine)
    _answer(engine, delivery_id, approval.OK, "alice", run_id="run-A")
    start_send(engine, delivery_id, "run-A")

    with pytest.raises(SendRefused) as excinfo:
        _answer(engine, delivery_id, approval.OK, "alice", run_id="run-B")

    assert str(excinfo.value) == (
        "'OK, send definitively' at 2026-11-30 09:15:02 UTC is refused: delivery "
        f"{delivery_id} is sending by run 'run-A', confirmed by alice, not ready any more. This run sends nothing."
    )
    assert load_delivery(engine, delivery_id).run_id == "run-A"


def test_two_oks_at_the_same_moment_still_start_one_send(campaign_db, ready_delivery) -> None:
    """Both answers pass while the delivery is ready; the claim in start_send lets one run win."""
    from campaign.errors import SendConflict

    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    _operator(engine)
    _answer(engine, delivery_id, approval.OK, "alice", run_id="run-A")
    _answer(engine, delivery_id, approval.OK, "alice", run_id="run-B")

    start_send(engine, delivery_id, "run-B")
    with pytest.raises(SendConflict, match="claimed by another run: 'run-B'"):
        start_send(engine, delivery_id, "run-A")


def test_the_audit_trail_lists_every_action_in_order(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    approval.record(engine, delivery_id, "run-A", "approval_asked", "alice", "asked")
    approval.record(engine, delivery_id, "run-A", "timed_out", None, "no answer")
    approval.record(engine, delivery_id, "run-B", "approval_asked", "alice", "asked again")
    start_confirmed_send(engine, delivery_id, "alice", "run-B")

    trail = approval.audit_trail(engine, delivery_id)

    assert [(r["action"], r["run_id"]) for r in trail] == [
        ("approval_asked", "run-A"),
        ("timed_out", "run-A"),
        ("approval_asked", "run-B"),
        ("confirmed", "run-B"),
    ]
    assert all(datetime.fromisoformat(r["at"]).tzinfo is not None for r in trail)


def test_a_trigger_refused_for_want_of_the_role_is_on_the_audit(campaign_db, ready_delivery) -> None:
    engine = campaign_db.engine
    delivery_id = ready_delivery(engine)
    _operator(engine, "bob", role=False)
    _operator(engine, "alice")

    with pytest.raises(RoleDenied) as excinfo:
        approval.require_sender(engine, "bob", delivery_id, "run-B")
    with pytest.raises(RoleDenied):
        approval.require_sender(engine, None, delivery_id, "run-C")  # started by the CLI: no user
    for unknown in (987_654, "1", None):  # nothing to put it on
        with pytest.raises(RoleDenied):
            approval.require_sender(engine, "bob", unknown, "run-D")

    assert approval.require_sender(engine, "alice", delivery_id, "run-A") == "alice"
    trail = approval.audit_trail(engine, delivery_id)
    assert [(r["action"], r["actor"], r["run_id"]) for r in trail] == [
        ("role_refused", "bob", "run-B"),
        ("role_refused", None, "run-C"),
    ]
    assert trail[0]["detail"] == str(excinfo.value)


@pytest.mark.parametrize("value", [0, -5, 1.5, "60", True, None])
def test_confirm_timeout_must_be_a_positive_whole_number_of_seconds(value) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        approval.confirm_timeout(value)

    assert str(excinfo.value) == f"confirm_timeout must be a whole number of seconds, at least 1, got {value!r}."
    assert approval.confirm_timeout(90) == timedelta(seconds=90)
