"""The only module of the package that imports Airflow: Connections and settings to plain objects."""

from __future__ import annotations

import functools
import imaplib
import logging
import smtplib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, NoReturn

from airflow.providers.imap.hooks.imap import ImapHook
from airflow.providers.smtp.hooks.smtp import SmtpHook
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import BaseHook
from airflow.sdk.bases.skipmixin import SkipMixin
from sqlalchemy import Engine

from campaign import approval, bounces, confirm, controls
from campaign.clock import utcnow
from campaign.db import make_engine, url_from_connection_fields
from campaign.errors import CampaignError, ConfigurationError, MailboxUnavailable, SmtpUnavailable
from campaign.sending import ChunkHeld

CAMPAIGN_DB_CONN_ID = "campaign_db"
CAMPAIGN_SMTP_CONN_ID = "campaign_smtp"
CAMPAIGN_BOUNCES_CONN_ID = "campaign_bounces"

log = logging.getLogger("campaign.confirm_send")


def says_why(task_function: Callable) -> Callable:
    """Log a campaign error as one sentence before Airflow records it with its traceback.

    The sentence is what an operator or the data team needs to read first in the task log.
    """

    @functools.wraps(task_function)
    def wrapper(*args, **kwargs):
        try:
            return task_function(*args, **kwargs)
        except CampaignError as exc:
            log.error("%s: %s", task_function.__name__, exc)
            raise

    return wrapper


def campaign_engine() -> Engine:
    """The campaign database of Connection ``campaign_db``, one engine per URL and process."""
    try:
        conn = BaseHook.get_connection(CAMPAIGN_DB_CONN_ID)
    except Exception as exc:  # the SDK raises its own not-found type, which differs by version
        raise ConfigurationError(
            f"Airflow Connection {CAMPAIGN_DB_CONN_ID!r} is not defined: {exc}. "
            "Define it (sqlite: file path in host; postgres: host, port, schema, login, password)."
        ) from None
    url = url_from_connection_fields(conn.conn_type, conn.host, conn.schema, conn.login, conn.password, conn.port)
    return _engine_for(url.render_as_string(hide_password=False))


def api_server_campaign_engine() -> Engine:
    """The campaign database as the API server (not a task) sees Connection ``campaign_db``."""
    from airflow.models.connection import Connection

    conn = Connection.get_connection_from_secrets(CAMPAIGN_DB_CONN_ID)
    url = url_from_connection_fields(conn.conn_type, conn.host, conn.schema, conn.login, conn.password, conn.port)
    return _engine_for(url.render_as_string(hide_password=False))


@functools.cache
def _engine_for(url: str) -> Engine:
    return make_engine(url)


class _CampaignSmtpHook(SmtpHook):
    def open_client(self) -> smtplib.SMTP:
        self.get_conn()
        return self._smtp_client


@contextmanager
def campaign_smtp() -> Iterator[smtplib.SMTP]:
    """One authenticated SMTP connection through Connection ``campaign_smtp``, closed politely."""
    hook = _CampaignSmtpHook(smtp_conn_id=CAMPAIGN_SMTP_CONN_ID)
    try:
        client = hook.open_client()
    except (OSError, smtplib.SMTPException) as exc:
        raise SmtpUnavailable(
            f"Cannot connect to the SMTP server of Connection {CAMPAIGN_SMTP_CONN_ID!r}: {exc}"
        ) from exc
    except Exception as exc:  # AirflowException: "Unable to connect", "connection is not found"
        if "not found" in str(exc):
            raise ConfigurationError(f"Airflow Connection {CAMPAIGN_SMTP_CONN_ID!r} is not defined.") from None
        raise SmtpUnavailable(
            f"Cannot connect to the SMTP server of Connection {CAMPAIGN_SMTP_CONN_ID!r}: {exc}"
        ) from exc
    try:
        yield client
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


@contextmanager
def campaign_bounce_mailbox() -> Iterator[imaplib.IMAP4]:
    """The bounce mailbox of Connection ``campaign_bounces`` (IMAP provider: host, port, login,
    password; extra ``use_ssl``, default true), as a logged-in ``imaplib`` client, logged out at
    the end. Raises ``MailboxUnavailable`` (retry) when the server cannot be reached,
    ``ConfigurationError`` (fail at once) when the login is refused, and skips the task when the
    Connection is not defined or has no host (no bounce mailbox in this deployment yet)."""
    hook = ImapHook(imap_conn_id=CAMPAIGN_BOUNCES_CONN_ID)
    what = f"the IMAP server of Connection {CAMPAIGN_BOUNCES_CONN_ID!r}"
    try:
        connection = hook.get_connection(CAMPAIGN_BOUNCES_CONN_ID)
    except Exception as exc:  # AirflowNotFoundException and the SDK's own, which differ by version
        if "not found" in str(exc).lower() or "isn't defined" in str(exc):
            _skip_without_mailbox("is not defined")
        raise MailboxUnavailable(f"Cannot read Connection {CAMPAIGN_BOUNCES_CONN_ID!r}: {exc}") from exc
    if not (connection.host or "").strip():
        _skip_without_mailbox("has no host")
    try:
        hook.get_conn()
    except (imaplib.IMAP4.abort, OSError) as exc:
        raise MailboxUnavailable(f"Cannot connect to {what}: {exc}") from exc
    except imaplib.IMAP4.error as exc:  # NO to LOGIN: a wrong password does not heal by retrying
        raise ConfigurationError(f"{what} refused the login of the Connection: {exc}") from None
    with bounces.logged_in(hook.mail_client) as client:
        yield client


def _skip_without_mailbox(why: str) -> NoReturn:
    # A deployment without a bounce mailbox (make run, a first docker-compose) is not broken: a
    # red run every ten minutes would hide the failures that matter.
    from airflow.sdk.exceptions import AirflowSkipException

    raise AirflowSkipException(
        f"No bounce mailbox: Airflow Connection {CAMPAIGN_BOUNCES_CONN_ID!r} {why}, so nothing was read. "
        "Define it (type imap: host, port, login, password; extra use_ssl) to process bounces and complaints."
    )


@contextmanager
def reschedule_while_paused() -> Iterator[None]:
    """Turn a chunk held by a pause (``campaign.sending.ChunkHeld``) into Airflow's reschedule:
    the task ends ``up_for_reschedule``, holding no worker and no pool slot (unlike a sleep or
    a sensor in poke mode), and Airflow starts it again after ``controls.pause_recheck_delay``;
    a paused delivery survives restarts of the scheduler and workers that way."""
    from airflow.sdk.exceptions import AirflowRescheduleException

    try:
        yield
    except ChunkHeld as held:
        delay = controls.pause_recheck_delay(held.state)
        # One line: the chunk's summary says why it ended early.
        log.info("%s. Worker and pool slot given back; looking again in %.0fs.", held.result.summary_line(), delay)
        raise AirflowRescheduleException(utcnow() + timedelta(seconds=delay)) from None


def max_map_length() -> int:
    from airflow.configuration import conf

    return conf.getint("core", "max_map_length", fallback=1024)


def deployment_page_url(delivery_id: int) -> str:
    """The path of the delivery's page of the Deployment view, for a link in Airflow's UI.

    A path, not a URL: the browser keeps the host and scheme it reached Airflow with (behind a
    proxy too); only the path prefix of ``[api] base_url`` is kept, as in the plugin's task link.
    """
    from urllib.parse import urlsplit

    from airflow.configuration import conf

    base_path = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    return f"{base_path}/campaign-deployment/deliveries/{delivery_id}"


def _confirm_timeout(params: Any) -> timedelta:
    return approval.confirm_timeout(params.get("confirm_timeout", approval.DEFAULT_CONFIRM_TIMEOUT_SECONDS))


class SendApproval(HITLOperator, SkipMixin):
    """The seed's "finalize the send definitively by clicking OK" as an Airflow human-in-the-loop
    task (Airflow 3.3: the task waits in state ``awaiting_input``, holding no worker and no pool
    slot; the question is under "Required actions" in the UI and at the HITL REST endpoint).

    Asks the operator who triggered the run, and only them (``assigned_users``), what
    ``campaign.approval.approval_request`` gathers. The answer is checked again by
    ``campaign.approval.answer_approval`` against the responder Airflow recorded. OK: the
    downstream tasks run. Cancel or no answer within the run's ``confirm_timeout``: one log line,
    every downstream task skipped (nothing sent), the delivery stays ready. A refused answer fails
    the task without retry (``SendRefused`` is permanent).
    """

    inherits_from_skipmixin = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            subject="Confirm send",  # replaced at run time by the delivery's headline
            options=list(approval.OPTIONS),
            defaults=[approval.CANCEL],  # what Airflow answers itself when the time is up
            multiple=False,
            **kwargs,
        )

    def execute(self, context: Any) -> Any:
        params, run = context["params"], context["dag_run"]
        operator = run.triggering_user_name
        try:
            timeout = _confirm_timeout(params)
            engine = campaign_engine()
            # Each try asks only for a delivery still ready: a retry can come after another run
            # has sent it, or after the delivery changed (validate's sentences).
            confirm.validate_delivery(engine, params["delivery_id"])
            previous = approval.last_action(engine, params["delivery_id"], run.run_id)
            plan = confirm.plan_delivery(engine, params["delivery_id"], params.get("chunk_size"), max_map_length())
            request = approval.approval_request(
                engine,
                params["delivery_id"],
                plan.chunks,
                deployment_page_url(params["delivery_id"]),
                params.get("max_rate"),
            )
            detail = request.audit_detail()
            if previous and previous["action"] == "approval_asked":
                # The question was asked in an earlier try and this run recorded no answer: the
                # task was interrupted, or Airflow 3.3.2 lost the answer (an answer given while
                # the scheduler is still finishing the task's previous step makes it retry the
                # task). Airflow shows the earlier question again; it needs a new answer.
                detail += f"; asked again (try {context['ti'].try_number}): no answer reached the earlier try"
                log.warning("approve_send: %s: answer again.", detail)
            approval.record(engine, request.delivery_id, run.run_id, "approval_asked", operator, detail)
        except CampaignError as exc:
            log.error("approve_send: %s", exc)
            raise
        self.subject = request.headline()
        self.body = request.body(operator or "nobody", timeout)
        # The run records its user's name only; under SimpleAuthManager that is also the id Airflow
        # matches responders on, under FAB CampaignFabAuthManager matches the name. Without a
        # triggering user nobody can answer (check_role has refused such a run already).
        self.assigned_users = [{"id": operator, "name": operator}] if operator else [{"id": "", "name": "nobody"}]
        self.response_timeout = timeout
        log.info(
            "approve_send: %s Waiting up to %s for %s to answer.",
            request.headline(),
            approval.duration_text(timeout.total_seconds()),
            operator,
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        params, run = context["params"], context["dag_run"]
        result = super().execute_complete(context, event)
        responder = (result.get("responded_by_user") or {}).get("name")
        try:
            answer = approval.answer_approval(
                campaign_engine(),
                params["delivery_id"],
                run.run_id,
                run.triggering_user_name,
                list(result["chosen_options"]),
                responder,
                event.get("responded_at"),
                bool(event.get("timedout")),
                _confirm_timeout(params),
            )
        except CampaignError as exc:
            log.error("approve_send: %s", exc)
            raise
        log.info("approve_send: %s", answer.line)
        if not answer.send:
            # Everything after the approval, aggregate_kpis (all_done) included: nothing was started.
            downstream = [t for t in context["task"].get_flat_relatives(upstream=False) if not t.is_teardown]
            self.skip(ti=context["ti"], tasks=downstream)
        return {"chosen_options": list(result["chosen_options"]), "responded_by": responder, "send": answer.send}
