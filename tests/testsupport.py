"""Small helpers shared by tests in several folders."""

from __future__ import annotations

from sqlalchemy import Engine

from campaign.clock import utcnow
from campaign.dev.net import free_port, wait_until
from campaign.schema import profiles

wait_for = wait_until

__all__ = ["add_profile", "free_port", "wait_for"]


def add_profile(engine: Engine, email: str) -> int:
    """One profile, not blocklisted; returns its id."""
    with engine.begin() as conn:
        return conn.execute(
            profiles.insert().values(email=email, blocklisted=False, created_at=utcnow())
        ).inserted_primary_key[0]


def start_confirmed_send(engine: Engine, delivery_id: int, operator: str, run_id: str) -> tuple[str, int]:
    """``start_send`` for a run whose approval was answered OK by ``operator``, as
    ``campaign.approval.answer_approval`` records it (the audit row start_send requires)."""
    from campaign import approval
    from campaign.confirm import start_send

    approval.record(engine, delivery_id, run_id, "confirmed", operator, f"Confirmed by {operator} (test).")
    return start_send(engine, delivery_id, run_id)
