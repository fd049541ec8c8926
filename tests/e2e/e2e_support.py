"""Seeding and reading helpers for the end-to-end tests (real Airflow runs)."""

from __future__ import annotations

import json
import mailbox
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path

from sqlalchemy import select, text, update

from campaign import approval, deliveries, operators
from campaign.clock import utcnow
from campaign.dev.airflow_harness import AirflowClient
from campaign.schema import ROLE_START_DELIVERIES, profiles

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"

SPEC = {
    "label": "E2E delivery",
    "sender": "Shop <news@shop.test>",
    "subject": "Offer for {{ profile.first_name }}",
    "text": "Hello {{ profile.first_name }} {{ profile.last_name }}, your code is {{ profile.id }}.",
    "html": "<p>Hello <b>{{ profile.first_name }}</b> {{ profile.last_name }}, code {{ profile.id }}.</p>",
}


@dataclass
class Audience:
    delivery_id: int
    good: list[str] = field(default_factory=list)
    hard: list[str] = field(default_factory=list)
    soft: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.good) + len(self.hard) + len(self.soft) + len(self.malformed) + len(self.ignored)


def add_profiles(engine, emails: list[str]) -> None:
    if not emails:
        return
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            profiles.insert(),
            [
                {
                    "email": e,
                    "first_name": f"First{i}",
                    "last_name": f"Last{i}",
                    "blocklisted": False,
                    "created_at": now,
                }
                for i, e in enumerate(emails)
            ],
        )


def seed_delivery(
    engine,
    good: int,
    hard: int = 0,
    soft: int = 0,
    malformed: int = 0,
    blocklisted_after_prepare: int = 0,
    spec: dict | None = None,
    operator: str = "dag_test",
    approve: bool = True,
) -> Audience:
    """Profiles, an operator with the role (dag.test runs as 'dag_test'), a prepared delivery."""
    operators.create_operator(engine, operator)
    operators.grant_role(engine, operator, ROLE_START_DELIVERIES)
    with engine.begin() as conn:
        offset = conn.execute(text("SELECT COUNT(*) FROM profiles")).scalar_one()
    audience = Audience(0)
    audience.good = [f"person{offset + i}@example.test" for i in range(good)]
    audience.hard = [f"gone{offset + i}@hard-bounce.test" for i in range(hard)]
    audience.soft = [f"busy{offset + i}@soft-bounce.test" for i in range(soft)]
    # Imported before validation existed: the send must record it as failed without calling SMTP.
    audience.malformed = [f"broken{offset + i}@@example.test" for i in range(malformed)]
    audience.ignored = [f"optout{offset + i}@example.test" for i in range(blocklisted_after_prepare)]
    add_profiles(engine, audience.good + audience.hard + audience.soft + audience.malformed + audience.ignored)
    audience.delivery_id = deliveries.create_delivery(engine, spec or SPEC)
    deliveries.prepare_delivery(engine, audience.delivery_id, "preparer")
    if approve:
        deliveries.approve_delivery(engine, audience.delivery_id, "approver")
    if audience.ignored:
        with engine.begin() as conn:
            conn.execute(update(profiles).where(profiles.c.email.in_(audience.ignored)).values(blocklisted=True))
    return audience


def received(maildir: Path) -> list:
    """Every mail the SMTP server stored, parsed."""
    if not (maildir / "new").exists():
        return []
    box = mailbox.Maildir(str(maildir), create=False)
    return [message_from_bytes(box.get_bytes(key), policy=policy.default) for key in box.keys()]


def mails_per_recipient(maildir: Path) -> Counter:
    return Counter(str(m["To"]).lower() for m in received(maildir))


def broad_logs(engine, delivery_id: int) -> dict[str, dict]:
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT * FROM broad_logs WHERE delivery_id = :d"), {"d": delivery_id}).mappings()
        return {row["email"]: dict(row) for row in rows}


def delivery_row(engine, delivery_id: int) -> dict:
    with engine.begin() as conn:
        return dict(conn.execute(text("SELECT * FROM deliveries WHERE id = :d"), {"d": delivery_id}).mappings().one())


def kpi_row(engine, delivery_id: int) -> dict | None:
    with engine.begin() as conn:
        row = conn.execute(text("SELECT * FROM delivery_kpis WHERE delivery_id = :d"), {"d": delivery_id}).mappings()
        first = row.first()
        return dict(first) if first else None


def quarantined(engine, emails: list[str]) -> set[str]:
    with engine.begin() as conn:
        rows = conn.execute(
            select(profiles.c.email).where(profiles.c.email.in_(emails), profiles.c.quarantine_reason.is_not(None))
        )
        return set(rows.scalars())


def task_states(dag_run) -> dict[str, list[str]]:
    """task_id -> states of its instances (several for mapped tasks) after a dag.test() run."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
        )
        states: dict[str, list[str]] = {}
        for ti in tis:
            states.setdefault(ti.task_id, []).append(str(getattr(ti.state, "value", ti.state)))
            states.setdefault(f"{ti.task_id}#tries", []).append(str(ti.try_number))
        return states


# alice: an operator with Start deliveries; bob: an Airflow admin without it; carol: a viewer.
PASSWORDS = {name: f"{name}-pw-" + os.urandom(4).hex() for name in ("alice", "bob", "carol")}
ROLES = "alice:admin,bob:admin,carol:viewer"
RUN_TIMEOUT = 240


class LiveAirflow(AirflowClient):
    """The running Airflow of the live tests, with its campaign database and SMTP server."""

    def __init__(self, base_url: str, engine, sink_handler, maildir: Path, log_path: Path) -> None:
        super().__init__(base_url, PASSWORDS)
        self.engine = engine
        self.sink = sink_handler
        self.maildir = maildir
        self.log_path = log_path

    def wait_for_run(self, run_id: str, user: str = "alice", **kwargs) -> dict:
        return super().wait_for_run(run_id, user, timeout=RUN_TIMEOUT, **kwargs)

    def task_instances(self, run_id: str, user: str = "alice") -> dict[str, dict]:
        body = self.api("GET", f"/dags/confirm_send/dagRuns/{run_id}/taskInstances", user).json()
        return {f"{ti['task_id']}[{ti['map_index']}]": ti for ti in body["task_instances"]}

    def confirmed_run(self, user: str, conf: dict) -> tuple[str, dict]:
        """Trigger confirm_send as ``user``, answer its approval OK as the same user, wait for the
        end: what an operator does in the UI, and a script through the REST API."""
        run_id = self.trigger(user, conf)
        answered = self.approve(run_id, user, approval.OK)
        assert answered.status_code == 200, answered.text
        return run_id, self.wait_for_run(run_id, user)

    def task_log(self, run_id: str, task_id: str, try_number: int, user: str = "alice", map_index: int = -1) -> str:
        response = self.api(
            "GET",
            f"/dags/confirm_send/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            user,
            headers={"Accept": "application/json"},
            params={"map_index": map_index},
        )
        return json.dumps(response.json())


def fresh_delivery(engine, **kwargs):
    """The module shares one database: earlier tests' profiles are blocklisted so that each
    delivery targets only its own audience."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE profiles SET blocklisted = TRUE"))
    return seed_delivery(engine, operator="alice", **kwargs)


class Responses(list):
    """What ``run_with_answer`` answered: (user, option, error or None) per approval seen."""


def _answer_waiting_approvals(stop: threading.Event, option: str, user: str, responses: Responses) -> None:
    """Answer every approval waiting in the metadata database through the function of Airflow's
    REST route (PATCH …/hitlDetails), as ``user`` of the SimpleAuthManager: the same checks as a
    real request (assigned users, valid options), without an API server (dag.test has none)."""
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
    from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from fastapi import HTTPException

    create_auth_manager()
    first_seen: dict = {}  # ti id -> when the approval was first seen waiting
    while not stop.is_set():
        with create_session() as session:
            waiting = session.execute(
                select(
                    TaskInstance.id, TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id,
                    HITLDetail.responded_at,
                )
                .join(HITLDetail, HITLDetail.ti_id == TaskInstance.id)
                .where(TaskInstance.state == "awaiting_input")
            ).all()  # fmt: skip
        now = time.monotonic()
        for ti_id, dag_id, run_id, task_id, responded_at in waiting:
            seen_at = first_seen.setdefault(ti_id, now)
            if responded_at is not None:
                # Answered, yet still parked: dag.test() wrote the parked state again over the
                # resume (its own race, like the scheduler's in AirflowClient.approve). Resume it
                # as Airflow's route does; a real API server has no such second writer.
                if now - seen_at > 2:
                    _resume(ti_id)
                    first_seen[ti_id] = now
                continue
            if now - seen_at < 0.5:  # let dag.test() finish parking the task first
                continue
            try:
                with create_session() as session:
                    update_hitl_detail(
                        dag_id=dag_id,
                        dag_run_id=run_id,
                        task_id=task_id,
                        update_hitl_detail_payload=UpdateHITLDetailPayload(chosen_options=[option], params_input={}),
                        user=SimpleAuthManagerUser(username=user, role="admin"),
                        session=session,
                        map_index=-1,
                    )
                responses.append((user, option, None))
            except HTTPException as exc:
                responses.append((user, option, f"{exc.status_code} {exc.detail}"))
            first_seen[ti_id] = time.monotonic()
        time.sleep(0.2)


def _resume(ti_id) -> None:
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import handle_event_submit
    from airflow.triggers.base import TriggerEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.get(TaskInstance, ti_id)
        detail = session.scalar(select(HITLDetail).where(HITLDetail.ti_id == ti_id))
        if ti is not None and ti.state == "awaiting_input" and detail is not None:
            handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti, session=session)


def run_with_answer(dag, conf: dict, option: str = approval.OK, user: str = "dag_test", **kwargs):
    """``dag.test()`` of confirm_send in which ``user`` answers the approval with ``option``
    (dag.test() runs as 'dag_test', so by default the operator who started the run says OK).
    Returns (the DAG run, the responses given)."""
    stop, responses = threading.Event(), Responses()
    answerer = threading.Thread(target=_answer_waiting_approvals, args=(stop, option, user, responses), daemon=True)
    answerer.start()
    try:
        return dag.test(run_conf=conf, **kwargs), responses
    finally:
        stop.set()
        answerer.join(10)
