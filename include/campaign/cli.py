"""campaign: what comes before the send — operators and roles, profiles, deliveries, a demo.

The database is the SQLAlchemy URL in --db or CAMPAIGN_DB_URL (the same database as the
Airflow Connection campaign_db).
"""

from __future__ import annotations

import argparse
import os
import sys

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from campaign import controls, deliveries, operators, profiles
from campaign.db import make_engine
from campaign.errors import CampaignError, ConfigurationError
from campaign.schema import KNOWN_ROLES, create_schema, grant_tracking_role, operator_roles
from campaign.schema import deliveries as deliveries_table
from campaign.schema import operators as operators_table

DB_URL_ENV = "CAMPAIGN_DB_URL"


def _engine(args: argparse.Namespace) -> Engine:
    url = args.db or os.environ.get(DB_URL_ENV)
    if not url:
        raise ConfigurationError(f"No campaign database: pass --db URL or set {DB_URL_ENV}.")
    engine = make_engine(url)
    create_schema(engine)
    return engine


def cmd_init_db(args: argparse.Namespace) -> None:
    _engine(args)
    print("campaign database ready")


def cmd_grant_tracking(args: argparse.Namespace) -> None:
    grant_tracking_role(_engine(args), args.role)
    print(f"role {args.role} may now serve tracking, and do nothing else (README: the tracking service)")


def cmd_operator_create(args: argparse.Namespace) -> None:
    operator_id = operators.create_operator(_engine(args), args.login, args.name)
    print(f"operator {args.login} (id {operator_id})")


def cmd_operator_grant(args: argparse.Namespace) -> None:
    operators.grant_role(_engine(args), args.login, args.role)
    print(f"{args.login} now holds {args.role}")


def cmd_operator_revoke(args: argparse.Namespace) -> None:
    operators.revoke_role(_engine(args), args.login, args.role)
    print(f"{args.login} no longer holds {args.role}")


def cmd_operator_list(args: argparse.Namespace) -> None:
    engine = _engine(args)
    with engine.begin() as conn:
        rows = conn.execute(
            select(operators_table.c.login, operators_table.c.display_name, operator_roles.c.role)
            .select_from(operators_table.outerjoin(operator_roles))
            .order_by(operators_table.c.login, operator_roles.c.role)
        ).all()
    roles: dict[str, list[str]] = {}
    for login, _name, role in rows:
        roles.setdefault(login, [])
        if role:
            roles[login].append(role)
    for login, held in roles.items():
        print(f"{login:20} {', '.join(held) or '(no role)'}")


def cmd_profiles_import(args: argparse.Namespace) -> None:
    report = profiles.import_profiles_csv(_engine(args), args.csv)
    print(
        f"imported {report.imported} profiles, {report.skipped_existing} already known, {len(report.rejected)} rejected"
    )
    for line, reason in report.rejected:
        print(f"  line {line}: {reason}", file=sys.stderr)
    if report.rejected and args.strict:
        sys.exit(1)


def cmd_profiles_history(args: argparse.Namespace) -> None:
    profile, history = profiles.profile_history(_engine(args), args.email)
    state = profiles.profile_state(profile)
    print(f"profile {profile['id']} {profile['email']} ({state}): {len(history)} deliveries")
    if len(history):
        print(history.to_string(index=False))


def cmd_play_recipients(args: argparse.Namespace) -> None:
    # The development harness is imported only by the commands that use it, so the production
    # CLI does not depend on it.
    from campaign.dev import play_recipients

    report = play_recipients.play(args.maildir, args.open_rate, args.click_rate, args.seed, args.limit)
    print(
        f"read {report.mails} mails: {report.opens} opens and {report.clicks} clicks requested, "
        f"{report.failures} failed; run tracking_rates_hourly (or wait for it) to see the rates move"
    )


def cmd_delivery_create(args: argparse.Namespace) -> None:
    delivery_id = deliveries.create_delivery(_engine(args), deliveries.read_spec(args.spec))
    print(f"delivery {delivery_id} created (draft); next: campaign delivery prepare {delivery_id}")


def cmd_delivery_prepare(args: argparse.Namespace) -> None:
    count = deliveries.prepare_delivery(_engine(args), args.delivery_id, args.by)
    print(
        f"delivery {args.delivery_id} prepared: {count} recipients in the target "
        "(blocklisted and quarantined profiles excluded)"
    )


def cmd_delivery_approve(args: argparse.Namespace) -> None:
    deliveries.approve_delivery(_engine(args), args.delivery_id, args.by)
    print(f"delivery {args.delivery_id} approved: ready to confirm with the confirm_send DAG")


def cmd_delivery_control(args: argparse.Namespace) -> None:
    control = {"pause": controls.pause, "resume": controls.resume, "stop": controls.stop}[args.action]
    print(control(_engine(args), args.delivery_id, args.by, args.reason))


def cmd_delivery_list(args: argparse.Namespace) -> None:
    engine = _engine(args)
    with engine.begin() as conn:
        rows = conn.execute(
            select(
                deliveries_table.c.id,
                deliveries_table.c.status,
                deliveries_table.c.target_count,
                deliveries_table.c.confirmed_by,
                deliveries_table.c.label,
            ).order_by(deliveries_table.c.id)
        ).all()
    print(f"{'id':>5}  {'status':8} {'target':>7}  {'confirmed by':14} label")
    for row in rows:
        print(
            f"{row.id:>5}  {row.status:8} {row.target_count if row.target_count is not None else '-':>7}  "
            f"{row.confirmed_by or '-':14} {row.label}"
        )


def cmd_demo(args: argparse.Namespace) -> None:
    from campaign.dev import demo

    summary = demo.seed_demo(_engine(args), args.profiles, args.allowed, args.refused)
    print(
        f"demo ready: {summary.profiles} profiles; delivery {summary.delivery_id} is ready with "
        f"{summary.target_count} recipients; {summary.allowed_operator} may confirm sends, "
        f"{summary.refused_operator} may not"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="campaign", description=__doc__.splitlines()[0])
    parser.add_argument("--db", help=f"SQLAlchemy URL of the campaign database (default: ${DB_URL_ENV})")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("init-db", help="create the campaign tables").set_defaults(func=cmd_init_db)
    grant = commands.add_parser(
        "grant-tracking", help="give an existing PostgreSQL role what the tracking service needs, and only that"
    )
    grant.add_argument("role")
    grant.set_defaults(func=cmd_grant_tracking)

    operator = commands.add_parser("operator", help="campaign operators and roles").add_subparsers(
        dest="action", required=True
    )
    create = operator.add_parser("create", help="create an operator (login = Airflow user name)")
    create.add_argument("login")
    create.add_argument("--name")
    create.set_defaults(func=cmd_operator_create)
    for action, func in (("grant", cmd_operator_grant), ("revoke", cmd_operator_revoke)):
        sub = operator.add_parser(action, help=f"{action} a role ({', '.join(KNOWN_ROLES)})")
        sub.add_argument("login")
        sub.add_argument("role", choices=KNOWN_ROLES)
        sub.set_defaults(func=func)
    operator.add_parser("list", help="operators and their roles").set_defaults(func=cmd_operator_list)

    profile = commands.add_parser("profiles", help="recipient profiles").add_subparsers(dest="action", required=True)
    imp = profile.add_parser("import", help="import profiles from CSV (email, first_name, last_name, ...)")
    imp.add_argument("csv")
    imp.add_argument("--strict", action="store_true", help="exit 1 when any row was rejected")
    imp.set_defaults(func=cmd_profiles_import)
    history = profile.add_parser("history", help="the deliveries a profile was targeted by, opens and clicks")
    history.add_argument("email")
    history.set_defaults(func=cmd_profiles_history)

    delivery = commands.add_parser("delivery", help="deliveries: before the send, and its controls").add_subparsers(
        dest="action", required=True
    )
    dcreate = delivery.add_parser("create", help="create a draft from a YAML/JSON spec")
    dcreate.add_argument("spec")
    dcreate.set_defaults(func=cmd_delivery_create)
    for action, func, what in (
        ("prepare", cmd_delivery_prepare, "compute the target (draft, before approval)"),
        ("approve", cmd_delivery_approve, "approve a prepared draft: it becomes ready to confirm with confirm_send"),
    ):
        sub = delivery.add_parser(action, help=what)
        sub.add_argument("delivery_id", type=int)
        sub.add_argument("--by", default=os.environ.get("USER", "cli"), help="operator login recorded")
        sub.set_defaults(func=func)
    for action, what in (
        ("pause", "pause a sending delivery: its chunks commit, give their slots back and wait"),
        ("resume", "resume a paused delivery where it stopped"),
        ("stop", "stop a sending or paused delivery: the recipients not yet processed are cancelled"),
    ):
        sub = delivery.add_parser(action, help=what)
        sub.add_argument("delivery_id", type=int)
        # No default: the change is recorded under this name, which must hold Start deliveries.
        sub.add_argument("--by", required=True, help="operator login recorded (must hold Start deliveries)")
        sub.add_argument("--reason", help="why, recorded on the delivery's audit")
        sub.set_defaults(func=cmd_delivery_control)
    delivery.add_parser("list", help="deliveries and their status").set_defaults(func=cmd_delivery_list)

    play_cmd = commands.add_parser("play-recipients", help="open and click mails of the local Maildir over HTTP")
    play_cmd.add_argument("--maildir", default=os.environ.get("CAMPAIGN_MAILDIR", "var/maildir"))
    play_cmd.add_argument("--open-rate", type=float, default=0.4)
    play_cmd.add_argument("--click-rate", type=float, default=0.15)
    play_cmd.add_argument("--seed", type=int, default=1)
    play_cmd.add_argument("--limit", type=int, help="read at most this many mails")
    play_cmd.set_defaults(func=cmd_play_recipients)

    demo_cmd = commands.add_parser("demo", help="seed a ready demo")
    demo_cmd.add_argument("--profiles", type=int, default=3000)
    demo_cmd.add_argument("--allowed", default="alice", help="operator given the Start deliveries role")
    demo_cmd.add_argument("--refused", default="bob", help="operator without it")
    demo_cmd.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CampaignError as exc:
        print(f"campaign: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        # An unreachable server or a missing folder: the operator needs the cause, not a traceback.
        cause = getattr(exc, "orig", None) or exc
        print(
            f"campaign: cannot use the campaign database ({args.db or os.environ.get(DB_URL_ENV)}): {cause}",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
