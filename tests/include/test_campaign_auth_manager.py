"""CampaignFabAuthManager: the respondent of a human-in-the-loop task, with FAB's own user rows.

The approval of confirm_send is assigned to ``{"id": login, "name": login}`` (the run records only
the triggering user's name); Airflow's PATCH of the answer calls ``is_authorized_hitl_task`` with
the set of assigned ids. Under FAB ``get_id()`` is the number of the ``ab_user`` row.
"""

from __future__ import annotations

import pytest
from airflow.api_fastapi.app import get_auth_manager_cls
from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager
from airflow.providers.fab.auth_manager.models import User

from campaign_auth_manager import CampaignFabAuthManager


def _user(row_id: int, username: str) -> User:
    return User(id=row_id, username=username, email=f"{username}@example.test", first_name=username, last_name="Ops")


@pytest.fixture
def manager() -> CampaignFabAuthManager:
    return CampaignFabAuthManager()


def test_fab_ids_are_row_numbers_so_the_base_check_refuses_the_triggering_operator():
    alice = _user(7, "alice")
    assert alice.get_id() == "7" and alice.get_name() == "alice"
    assert FabAuthManager().is_authorized_hitl_task(assigned_users={"alice"}, user=alice) is False


def test_the_operator_named_in_assigned_users_may_answer(manager):
    assert manager.is_authorized_hitl_task(assigned_users={"alice"}, user=_user(7, "alice")) is True


def test_any_other_user_is_refused_whatever_their_row_number(manager):
    bob = _user(1, "bob")
    assert manager.is_authorized_hitl_task(assigned_users={"alice"}, user=bob) is False
    # the name "7" belongs to nobody here: bob's row number is not a name either
    assert manager.is_authorized_hitl_task(assigned_users={"alice", "7"}, user=bob) is False


def test_a_task_assigning_real_fab_ids_still_works(manager):
    assert manager.is_authorized_hitl_task(assigned_users={"7"}, user=_user(7, "carol")) is True
    assert manager.is_authorized_hitl_task(assigned_users={"8"}, user=_user(7, "carol")) is False


def test_names_match_exactly(manager):
    assert manager.is_authorized_hitl_task(assigned_users={"Alice"}, user=_user(7, "alice")) is False
    assert manager.is_authorized_hitl_task(assigned_users={"alic"}, user=_user(7, "alice")) is False


def test_airflow_loads_it_from_the_configured_class_path(monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__AUTH_MANAGER", "campaign_auth_manager.CampaignFabAuthManager")
    assert get_auth_manager_cls() is CampaignFabAuthManager
