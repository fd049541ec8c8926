"""The delivery audit trail (table ``delivery_audit``): one row per action on a delivery's send,
never updated. Who asked, answered, paused, resumed or stopped what, and when; read by the
Deployment page and the data team (README, Campaign database)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from campaign.clock import utcnow
from campaign.db import sql


def record_action(
    conn: Connection, delivery_id: int, run_id: str | None, action: str, actor: str | None, detail: str
) -> datetime:
    """Append one row in the caller's transaction, so that it commits with the change it records;
    ``action`` is one of ``schema.AUDIT_ACTIONS``, ``actor`` an Airflow user name or None when no
    person acted. Returns the row's time (UTC)."""
    at = utcnow()
    conn.execute(
        sql("insert_delivery_audit"),
        {"delivery_id": delivery_id, "run_id": run_id, "action": action, "actor": actor, "at": at, "detail": detail},
    )
    return at
