"""Every DAG file imports cleanly and carries the settings operations rely on."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from campaign.errors import MailboxUnavailable, PermanentError, SmtpUnavailable

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
EXPECTED_DAG_IDS = {"confirm_send", "tracking_rates_hourly", "compute_stats", "process_bounces"}


@pytest.fixture(scope="module")
def dagbag(airflow_db) -> DagBag:
    return DagBag(dag_folder=str(DAGS_FOLDER))


def test_no_import_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}


def test_expected_dag_ids(dagbag: DagBag) -> None:
    assert set(dagbag.dag_ids) == EXPECTED_DAG_IDS


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAG_IDS))
def test_tags_and_retries(dagbag: DagBag, dag_id: str) -> None:
    dag = dagbag.get_dag(dag_id)
    assert "campaign" in dag.tags
    for task in dag.tasks:
        assert task.retries >= 1, f"{task.task_id} has no retries"
        assert task.retry_policy is not None, f"{task.task_id} has no retry policy"


def test_confirm_send_shape(dagbag: DagBag) -> None:
    dag = dagbag.get_dag("confirm_send")
    assert dag.schedule is None
    edges = {
        ("check_role", "validate"),
        ("validate", "approve_send"),
        ("approve_send", "start_send"),
        ("approve_send", "plan_chunks"),  # planning only reads: beside start_send
        ("start_send", "send_chunk"),
        ("plan_chunks", "send_chunk"),
        ("send_chunk", "aggregate_kpis"),
    }
    assert set(dag.task_ids) == {task for edge in edges for task in edge}
    assert {(up, task.task_id) for task in dag.tasks for up in task.upstream_task_ids} == edges
    # Nothing is sent unless the role, the delivery, the operator's OK and the claim all passed first.
    before_sending = dag.get_task("send_chunk").get_flat_relative_ids(upstream=True)
    assert {"check_role", "validate", "approve_send", "start_send", "plan_chunks"} <= before_sending
    assert dag.get_task("send_chunk").pool == "campaign_smtp"
    assert dag.get_task("aggregate_kpis").trigger_rule == "all_done"


def test_the_approval_asks_ok_or_cancel_and_cancels_when_the_time_is_up(dagbag: DagBag) -> None:
    from airflow.providers.standard.operators.hitl import HITLOperator

    task = dagbag.get_dag("confirm_send").get_task("approve_send")
    assert isinstance(task, HITLOperator)
    assert task.options == ["OK, send definitively", "Cancel"]
    assert task.defaults == ["Cancel"] and task.multiple is False
    assert task.pool != "campaign_smtp", "waiting for the operator must not hold an SMTP slot"


def test_confirm_send_form(dagbag: DagBag) -> None:
    params = dagbag.get_dag("confirm_send").params
    assert "confirm" not in params, "the OK is asked inside the run, after validation, not ticked in the form"
    names = ("delivery_id", "chunk_size", "max_rate", "confirm_timeout")
    schema = {name: params.get_param(name).schema for name in names}
    assert schema["delivery_id"]["type"] == "integer"
    assert schema["confirm_timeout"]["type"] == "integer" and schema["confirm_timeout"]["minimum"] == 1
    assert params["confirm_timeout"] == 3600, "one hour to answer by default"
    assert params["max_rate"] is None and schema["max_rate"]["minimum"] == 1, "no rate limit unless asked"
    assert all(s.get("title") for s in schema.values())
    assert all(params.get_param(name).description for name in schema)


def test_retry_policy_fails_permanent_errors_and_retries_smtp(dagbag: DagBag) -> None:
    policy = dagbag.get_dag("confirm_send").get_task("send_chunk").retry_policy
    rules = {rule.reason.split(":")[0]: rule for rule in policy.rules}
    permanent = next(r for r in policy.rules if r.action.value == "fail")
    assert permanent.exception is PermanentError
    smtp = next(r for r in policy.rules if r.exception is SmtpUnavailable)
    assert smtp.action.value == "retry" and smtp.reason
    assert all(rule.reason for rule in rules.values())


def test_hourly_rates_schedule(dagbag: DagBag) -> None:
    dag = dagbag.get_dag("tracking_rates_hourly")
    assert dag.schedule == "@hourly"
    assert dag.catchup is False
    assert dag.max_active_runs == 1


def test_compute_stats_is_manual_with_a_form(dagbag: DagBag) -> None:
    dag = dagbag.get_dag("compute_stats")
    assert dag.schedule is None
    assert dag.params["delivery_id"] is None and dag.params["days"] == 7


@pytest.mark.parametrize("dag_id", ["confirm_send", "compute_stats"])
def test_every_number_of_a_form_is_bounded(dagbag: DagBag, dag_id: str) -> None:
    """Fresh-user finding: a max_rate of 10**23 passed the form, and Airflow could not store the
    run's conf (ints beyond 64 bits): no task ever started and nothing said why."""
    params = dagbag.get_dag(dag_id).params
    for name in params:
        schema = params.get_param(name).schema
        kinds = schema.get("type")
        if "integer" in (kinds if isinstance(kinds, list) else [kinds]):
            assert 1 <= schema.get("maximum", 2**64) <= 2**63 - 1, f"{dag_id}.{name} has no 64-bit maximum"


def test_process_bounces_every_ten_minutes_one_run_at_a_time(dagbag: DagBag) -> None:
    from datetime import timedelta

    dag = dagbag.get_dag("process_bounces")
    assert dag.timetable.delta == timedelta(minutes=10)
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.task_ids == ["process_bounce_mailbox"]
    policy = dag.get_task("process_bounce_mailbox").retry_policy
    mailbox = next(r for r in policy.rules if r.exception is MailboxUnavailable)
    assert mailbox.action.value == "retry" and "mailbox" in mailbox.reason
    assert policy.rules.index(mailbox) < next(i for i, r in enumerate(policy.rules) if isinstance(r.exception, list))
