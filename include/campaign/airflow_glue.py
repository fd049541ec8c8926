"""The only module of the package that imports Airflow: Connections and settings to plain objects."""

from __future__ import annotations

import functools
import logging
import smtplib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from airflow.providers.smtp.hooks.smtp import SmtpHook
from airflow.sdk import BaseHook
from sqlalchemy import Engine

from campaign.db import make_engine, url_from_connection_fields
from campaign.errors import CampaignError, ConfigurationError, SmtpUnavailable

CAMPAIGN_DB_CONN_ID = "campaign_db"
CAMPAIGN_SMTP_CONN_ID = "campaign_smtp"

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


def max_map_length() -> int:
    from airflow.configuration import conf

    return conf.getint("core", "max_map_length", fallback=1024)
