"""The figures of the Deployment view: progress and KPIs of each delivery, reasons, links, history.

Plain dictionaries, JSON-ready: the HTML pages and the JSON API show the same numbers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from campaign.approval import audit_trail
from campaign.clock import as_datetime, utcnow
from campaign.db import sql
from campaign.errors import DeliveryNotFound
from campaign.operators import has_role
from campaign.profiles import profile_history
from campaign.schema import ROLE_START_DELIVERIES

# The audit entries that say why a delivery is held: shown above its progress.
HOLDING_ACTIONS = ("paused", "auto_paused", "stopped")
TIME_FIELDS = ("confirmed_at", "finished_at", "computed_at", "rates_updated_at")


def _delivery(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    delivery = dict(row)
    for name in TIME_FIELDS:
        moment = as_datetime(delivery[name])
        delivery[name] = moment.isoformat() if moment else None
    target = delivery["target_count"] or 0
    processed = delivery.pop("logged")
    delivery["progress"] = {
        "processed": processed,
        "to_deliver": target,
        "fraction": processed / target if target else None,
    }
    rates_at = as_datetime(row["rates_updated_at"])
    delivery["rates_age_minutes"] = int((now - rates_at).total_seconds() // 60) if rates_at else None
    kpi_names = (
        "to_deliver", "delivered", "bounces_errors", "cancelled", "processed", "delivered_rate", "bounce_error_rate",
        "unique_opens", "open_rate", "unique_clicks", "clicks", "click_through_rate",
    )  # fmt: skip
    delivery["kpis"] = None if row["to_deliver"] is None else {name: delivery[name] for name in kpi_names}
    for name in kpi_names:
        delivery.pop(name)
    return delivery


def list_deliveries(engine: Engine, limit: int = 200) -> list[dict[str, Any]]:
    now = utcnow()
    with engine.begin() as conn:
        rows = conn.execute(sql("deployment_deliveries"), {"limit": limit}).mappings().all()
    return [_delivery(dict(row), now) for row in rows]


def delivery_detail(engine: Engine, delivery_id: int) -> dict[str, Any]:
    with engine.begin() as conn:
        row = conn.execute(sql("deployment_delivery"), {"delivery_id": delivery_id}).mappings().first()
        if row is None:
            raise DeliveryNotFound(f"Delivery {delivery_id} does not exist.")
        reasons = conn.execute(sql("delivery_failure_reasons"), {"delivery_id": delivery_id}).mappings().all()
        links = conn.execute(sql("delivery_link_clicks"), {"delivery_id": delivery_id}).mappings().all()
    detail = _delivery(dict(row), utcnow())
    detail["failure_reasons"] = [dict(r) for r in reasons]
    detail["links"] = [dict(link) for link in links]
    detail["audit"] = audit_trail(engine, delivery_id)
    detail["held"] = (
        next((entry for entry in reversed(detail["audit"]) if entry["action"] in HOLDING_ACTIONS), None)
        if detail["status"] in ("paused", "stopping", "stopped")
        else None
    )
    return detail


def delivery_controls(engine: Engine, status: str, login: str | None) -> list[str]:
    """The controls ``login`` may use on a delivery in ``status``, in the page's order: pause or
    resume, then stop; none without the Start deliveries role."""
    possible = {"sending": ["pause", "stop"], "paused": ["resume", "stop"]}.get(status, [])
    return possible if possible and login and has_role(engine, login, ROLE_START_DELIVERIES) else []


def delivery_for_run(engine: Engine, run_id: str) -> int | None:
    with engine.begin() as conn:
        return conn.execute(sql("select_delivery_by_run"), {"run_id": run_id}).scalar()


def profile_page(engine: Engine, email: str) -> dict[str, Any]:
    profile, history = profile_history(engine, email)
    records = history.astype(object).where(history.notna(), None).to_dict("records")
    for record in records:
        for name in ("confirmed_at", "sent_at", "first_open_at", "first_click_at"):
            moment = as_datetime(record[name])
            record[name] = moment.isoformat() if moment else None
    return {
        "profile": {
            k: profile[k] for k in ("id", "email", "first_name", "last_name", "blocklisted", "quarantine_reason")
        },
        "deliveries": records,
    }
