"""Deliveries before the send: create from a spec, prepare the target, approve."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Connection, Engine, select, update

from campaign.clock import utcnow
from campaign.controls import check_brake_threshold, check_brake_window
from campaign.db import sql
from campaign.errors import DeliveryNotFound, DeliveryStateError, InvalidAddress, InvalidInput
from campaign.pacing import check_max_rate
from campaign.profiles import normalize_email
from campaign.rendering import DeliveryContent, compile_templates
from campaign.schema import check_delivery_id, deliveries

SPEC_FIELDS = {
    "label", "sender", "subject", "text", "html", "text_file", "html_file", "tracking", "max_rate",
    "brake_threshold", "brake_window",
}  # fmt: skip


@dataclass(frozen=True)
class Delivery:
    id: int
    label: str
    status: str
    sender: str
    subject: str
    text_template: str
    html_template: str
    tracking: bool
    max_rate: int | None
    target_count: int | None
    prepared_at: datetime | None
    approved_by: str | None
    confirmed_by: str | None
    run_id: str | None

    @property
    def content(self) -> DeliveryContent:
        return DeliveryContent(
            delivery_id=self.id,
            label=self.label,
            sender=self.sender,
            subject=self.subject,
            text_template=self.text_template,
            html_template=self.html_template,
        )


def get_delivery(conn: Connection, delivery_id: int) -> Delivery:
    check_delivery_id(delivery_id)
    row = conn.execute(select(deliveries).where(deliveries.c.id == delivery_id)).mappings().first()
    if row is None:
        raise DeliveryNotFound(f"Delivery {delivery_id} does not exist.")
    return Delivery(**{name: row[name] for name in Delivery.__dataclass_fields__})


def load_delivery(engine: Engine, delivery_id: int) -> Delivery:
    with engine.begin() as conn:
        return get_delivery(conn, delivery_id)


def read_spec(path: str | Path) -> dict[str, Any]:
    """Read a delivery spec (YAML or JSON); templates inline or as files next to the spec."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(f"Delivery spec {path} does not exist.") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"Delivery spec {path} is not valid YAML/JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise InvalidInput(f"Delivery spec {path} must be a mapping of fields, got {type(spec).__name__}.")
    unknown = sorted(set(spec) - SPEC_FIELDS)
    if unknown:
        raise InvalidInput(f"Delivery spec {path} has unknown fields: {', '.join(unknown)}.")
    for part in ("text", "html"):
        file_key = f"{part}_file"
        if file_key in spec:
            if part in spec:
                raise InvalidInput(f"Delivery spec {path} gives both {part} and {file_key}; keep one.")
            template_path = path.parent / str(spec.pop(file_key))
            try:
                spec[part] = template_path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise InvalidInput(f"Template file {template_path} named in {path} does not exist.") from None
    missing = [f for f in ("label", "sender", "subject", "text", "html") if not spec.get(f)]
    if missing:
        raise InvalidInput(f"Delivery spec {path} is missing: {', '.join(missing)}.")
    return spec


def _check_sender(sender: str) -> None:
    """One mailbox, ``Name <address>`` or a bare address; raises InvalidInput saying what is wrong."""
    problem = None
    if "\r" in sender or "\n" in sender:
        problem = "it contains a line break"
    elif len(getaddresses([sender])) != 1:
        problem = (
            "it reads as more than one address (a display name with a comma or another special "
            'character, such as ( ) [ ] : ; @ \\ ", must be quoted: "Shop, Ltd." <...>)'
        )
    else:
        try:
            normalize_email(parseaddr(sender)[1])
        except InvalidAddress as exc:
            problem = str(exc)
    if problem is not None:
        raise InvalidInput(f"Sender {sender!r} is not a valid address: {problem}")


def create_delivery(engine: Engine, spec: dict[str, Any]) -> int:
    _check_sender(str(spec["sender"]))
    tracking = spec.get("tracking", True)
    if not isinstance(tracking, bool):
        raise InvalidInput(f"tracking must be true or false, got {tracking!r}.")
    values = {
        "label": str(spec["label"]),
        "channel": "email",
        "sender": str(spec["sender"]),
        "subject": str(spec["subject"]),
        "text_template": str(spec["text"]),
        "html_template": str(spec["html"]),
        "tracking": tracking,
        "max_rate": check_max_rate(spec.get("max_rate")),
        "brake_threshold": check_brake_threshold(spec.get("brake_threshold")),
        "brake_window": check_brake_window(spec.get("brake_window")),
        "status": "draft",
        "created_at": utcnow(),
    }
    # Syntax errors surface now, not at send time.
    compile_templates(
        DeliveryContent(
            0, values["label"], values["sender"], values["subject"], values["text_template"], values["html_template"]
        )
    )
    with engine.begin() as conn:
        return conn.execute(deliveries.insert().values(**values)).inserted_primary_key[0]


def prepare_delivery(engine: Engine, delivery_id: int, prepared_by: str) -> int:
    """Compute the target (eligible profiles) and return its size. Allowed again until approval."""
    with engine.begin() as conn:
        delivery = get_delivery(conn, delivery_id)
        if delivery.status != "draft":
            raise DeliveryStateError(f"Delivery {delivery_id} is {delivery.status}; only a draft can be prepared.")
        conn.execute(sql("delete_delivery_targets"), {"delivery_id": delivery_id})
        conn.execute(sql("insert_eligible_targets"), {"delivery_id": delivery_id})
        count = conn.execute(sql("count_delivery_targets"), {"delivery_id": delivery_id}).scalar_one()
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == delivery_id)
            .values(target_count=count, prepared_by=prepared_by, prepared_at=utcnow())
        )
    return count


def approve_delivery(engine: Engine, delivery_id: int, approved_by: str) -> None:
    """draft (prepared) -> ready: the delivery can now be confirmed."""
    with engine.begin() as conn:
        delivery = get_delivery(conn, delivery_id)
        if delivery.status != "draft":
            raise DeliveryStateError(f"Delivery {delivery_id} is {delivery.status}; only a draft can be approved.")
        if delivery.prepared_at is None:
            raise DeliveryStateError(f"Delivery {delivery_id} has not been prepared; prepare it first.")
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == delivery_id, deliveries.c.status == "draft")
            .values(status="ready", approved_by=approved_by, approved_at=utcnow())
        )
