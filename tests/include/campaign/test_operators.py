"""Operators and roles; the Start deliveries check fails closed."""

from __future__ import annotations

import pytest

from campaign.errors import InvalidInput, RoleDenied
from campaign.operators import create_operator, grant_role, has_role, require_start_deliveries, revoke_role
from campaign.schema import KNOWN_ROLES, ROLE_START_DELIVERIES


def test_create_operator_is_idempotent_and_trims_the_login(campaign_db) -> None:
    first = create_operator(campaign_db.engine, "alice", "Alice A.")
    again = create_operator(campaign_db.engine, "  alice ")
    other = create_operator(campaign_db.engine, "bob")

    assert first == again
    assert other != first


@pytest.mark.parametrize("login", ["", "   "])
def test_create_operator_needs_a_login(sqlite_db, login: str) -> None:
    with pytest.raises(InvalidInput, match=r"An operator needs a login \(their Airflow user name\)\."):
        create_operator(sqlite_db.engine, login)


def test_grant_revoke_and_has_role(campaign_db) -> None:
    engine = campaign_db.engine
    create_operator(engine, "alice")
    assert has_role(engine, "alice", ROLE_START_DELIVERIES) is False

    grant_role(engine, "alice", ROLE_START_DELIVERIES)
    grant_role(engine, "alice", ROLE_START_DELIVERIES)  # granting again changes nothing
    assert has_role(engine, "alice", ROLE_START_DELIVERIES) is True
    assert has_role(engine, "alice", "approve_deliveries") is False

    revoke_role(engine, "alice", ROLE_START_DELIVERIES)
    assert has_role(engine, "alice", ROLE_START_DELIVERIES) is False
    revoke_role(engine, "alice", ROLE_START_DELIVERIES)  # revoking a role not held is a no-op
    assert has_role(engine, "alice", ROLE_START_DELIVERIES) is False


def test_roles_are_per_operator(campaign_db) -> None:
    engine = campaign_db.engine
    create_operator(engine, "alice")
    create_operator(engine, "bob")
    grant_role(engine, "alice", ROLE_START_DELIVERIES)
    grant_role(engine, "bob", "prepare_deliveries")

    assert has_role(engine, "alice", ROLE_START_DELIVERIES) is True
    assert has_role(engine, "bob", ROLE_START_DELIVERIES) is False
    assert has_role(engine, "bob", "prepare_deliveries") is True
    assert has_role(engine, "nobody", ROLE_START_DELIVERIES) is False


@pytest.mark.parametrize("action", [grant_role, revoke_role], ids=["grant", "revoke"])
def test_unknown_role_name_is_invalid_input(campaign_db, action) -> None:
    create_operator(campaign_db.engine, "alice")

    with pytest.raises(InvalidInput) as excinfo:
        action(campaign_db.engine, "alice", "Start deliveries")

    assert str(excinfo.value) == f"Unknown role 'Start deliveries'; known roles: {', '.join(KNOWN_ROLES)}."
    assert has_role(campaign_db.engine, "alice", ROLE_START_DELIVERIES) is False


@pytest.mark.parametrize("action", [grant_role, revoke_role], ids=["grant", "revoke"])
def test_role_change_for_unknown_operator_is_invalid_input(campaign_db, action) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        action(campaign_db.engine, "zed", ROLE_START_DELIVERIES)

    assert str(excinfo.value) == "There is no operator with login 'zed'; create it first."


# ---------------------------------------------------------------- require_start_deliveries


def test_holder_of_start_deliveries_passes(campaign_db) -> None:
    create_operator(campaign_db.engine, "alice")
    grant_role(campaign_db.engine, "alice", ROLE_START_DELIVERIES)

    assert require_start_deliveries(campaign_db.engine, "alice") == "alice"


@pytest.mark.parametrize("login", [None, ""], ids=["none", "empty"])
def test_no_triggering_user_fails_closed(campaign_db, login) -> None:
    # Even when an operator holds the role, a run without a user is refused.
    create_operator(campaign_db.engine, "alice")
    grant_role(campaign_db.engine, "alice", ROLE_START_DELIVERIES)

    with pytest.raises(RoleDenied) as excinfo:
        require_start_deliveries(campaign_db.engine, login)

    message = str(excinfo.value)
    assert "no authenticated triggering user" in message
    assert "Start deliveries role" in message


def _assert_denied(engine, login: str) -> None:
    with pytest.raises(RoleDenied) as excinfo:
        require_start_deliveries(engine, login)
    assert str(excinfo.value) == (
        f"User {login!r} is not allowed to confirm this send: only operators with the Start deliveries role "
        "can start deliveries. Ask a campaign administrator to grant it."
    )


def test_unknown_user_fails_closed(campaign_db) -> None:
    _assert_denied(campaign_db.engine, "mallory")


def test_operator_with_other_roles_only_is_denied(campaign_db) -> None:
    engine = campaign_db.engine
    create_operator(engine, "bob")
    grant_role(engine, "bob", "prepare_deliveries")
    grant_role(engine, "bob", "approve_deliveries")

    _assert_denied(engine, "bob")


def test_revoked_operator_is_denied(campaign_db) -> None:
    engine = campaign_db.engine
    create_operator(engine, "alice")
    grant_role(engine, "alice", ROLE_START_DELIVERIES)
    revoke_role(engine, "alice", ROLE_START_DELIVERIES)

    _assert_denied(engine, "alice")


@pytest.mark.parametrize("login", ["ALICE", "alice ", "alic", "%"])
def test_only_the_exact_login_holds_the_role(campaign_db, login: str) -> None:
    create_operator(campaign_db.engine, "alice")
    grant_role(campaign_db.engine, "alice", ROLE_START_DELIVERIES)

    _assert_denied(campaign_db.engine, login)
