"""Factories shared by the campaign package tests: profiles and deliveries in a real database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine

from campaign import deliveries
from campaign.clock import utcnow
from campaign.schema import profiles

BASE_SPEC: dict[str, Any] = {
    "label": "Spring sale",
    "sender": "Shop News <news@shop.test>",
    "subject": "Hello {{ profile.first_name or 'there' }}",
    "text": "Hello {{ profile.first_name or 'there' }}, see {{ delivery.label }}.\n",
    "html": "<p>Hello {{ profile.first_name or 'there' }}</p>",
}


def _add_profiles(engine: Engine, rows: list[dict[str, Any] | str]) -> list[int]:
    """Insert profiles (a bare string is an email address); returns their ids in order."""
    ids = []
    with engine.begin() as conn:
        for row in rows:
            values = {"email": row} if isinstance(row, str) else dict(row)
            values.setdefault("blocklisted", False)
            values.setdefault("created_at", utcnow())
            ids.append(conn.execute(profiles.insert().values(**values)).inserted_primary_key[0])
    return ids


def _new_delivery(engine: Engine, **overrides: Any) -> int:
    return deliveries.create_delivery(engine, {**BASE_SPEC, **overrides})


def _ready_delivery(engine: Engine, recipients: int = 3, **overrides: Any) -> int:
    _add_profiles(engine, [{"email": f"r{i}@example.test", "first_name": f"R{i}"} for i in range(recipients)])
    delivery_id = _new_delivery(engine, **overrides)
    deliveries.prepare_delivery(engine, delivery_id, prepared_by="alice")
    deliveries.approve_delivery(engine, delivery_id, approved_by="alice")
    return delivery_id


@pytest.fixture
def add_profiles() -> Callable[..., list[int]]:
    return _add_profiles


@pytest.fixture
def new_delivery() -> Callable[..., int]:
    return _new_delivery


@pytest.fixture
def ready_delivery() -> Callable[..., int]:
    return _ready_delivery
