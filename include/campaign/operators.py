"""Campaign operators and their roles. An operator's login is their Airflow user name."""

from __future__ import annotations

from sqlalchemy import Engine, delete, select

from campaign.clock import utcnow
from campaign.db import sql
from campaign.errors import InvalidInput, RoleDenied
from campaign.schema import KNOWN_ROLES, ROLE_START_DELIVERIES, operator_roles, operators


def create_operator(engine: Engine, login: str, display_name: str | None = None) -> int:
    """Create the operator if missing; returns its id either way."""
    login = login.strip()
    if not login:
        raise InvalidInput("An operator needs a login (their Airflow user name).")
    with engine.begin() as conn:
        existing = conn.execute(select(operators.c.id).where(operators.c.login == login)).scalar()
        if existing is not None:
            return existing
        return conn.execute(
            operators.insert().values(login=login, display_name=display_name or login, created_at=utcnow())
        ).inserted_primary_key[0]


def _operator_id(conn, login: str) -> int:
    operator_id = conn.execute(select(operators.c.id).where(operators.c.login == login)).scalar()
    if operator_id is None:
        raise InvalidInput(f"There is no operator with login {login!r}; create it first.")
    return operator_id


def _check_role_name(role: str) -> None:
    if role not in KNOWN_ROLES:
        raise InvalidInput(f"Unknown role {role!r}; known roles: {', '.join(KNOWN_ROLES)}.")


def grant_role(engine: Engine, login: str, role: str) -> None:
    _check_role_name(role)
    with engine.begin() as conn:
        operator_id = _operator_id(conn, login)
        held = conn.execute(
            select(operator_roles.c.role).where(
                operator_roles.c.operator_id == operator_id, operator_roles.c.role == role
            )
        ).first()
        if held is None:
            conn.execute(operator_roles.insert().values(operator_id=operator_id, role=role, granted_at=utcnow()))


def revoke_role(engine: Engine, login: str, role: str) -> None:
    _check_role_name(role)
    with engine.begin() as conn:
        operator_id = _operator_id(conn, login)
        conn.execute(
            delete(operator_roles).where(operator_roles.c.operator_id == operator_id, operator_roles.c.role == role)
        )


def has_role(engine: Engine, login: str, role: str) -> bool:
    with engine.begin() as conn:
        return conn.execute(sql("operator_has_role"), {"login": login, "role": role}).first() is not None


def require_start_deliveries(engine: Engine, login: str | None) -> str:
    """Fail closed unless ``login`` is an operator holding the Start deliveries role."""
    if not login:
        raise RoleDenied(
            "This run has no authenticated triggering user (it was started by the CLI or the scheduler). "
            "Confirm the send from the Airflow UI or REST API as an operator with the Start deliveries role."
        )
    if not has_role(engine, login, ROLE_START_DELIVERIES):
        raise RoleDenied(
            f"User {login!r} is not allowed to confirm this send: only operators with the "
            "Start deliveries role can start deliveries. Ask a campaign administrator to grant it."
        )
    return login
