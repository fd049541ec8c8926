"""The campaign database schema: a public interface the data team queries, keep it stable.

Created from this metadata so that SQLite and PostgreSQL get the same tables, keys and checks.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    inspect,
    select,
    text,
    true,
)
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.schema import AddConstraint, CreateTable, DropConstraint

from campaign.db import sql
from campaign.errors import ConfigurationError, DeliveryNotFound, InvalidInput

metadata = MetaData()

ROLE_START_DELIVERIES = "start_deliveries"
KNOWN_ROLES = (ROLE_START_DELIVERIES, "prepare_deliveries", "approve_deliveries")

# paused: held by an operator or the automatic brake, resumed later; stopping: a stop was asked
# and the run is ending; stopped: ended by a stop, the rest cancelled (campaign.controls).
DELIVERY_STATUSES = ("draft", "ready", "sending", "paused", "stopping", "stopped", "sent", "failed")
# cancelled: not processed because the send was stopped; not counted in processed.
LOG_STATUSES = ("sent", "bounced", "failed", "ignored", "cancelled")
FAILURE_TYPES = ("hard", "soft")
# complaint: the recipient reported the message as spam (a feedback report, RFC 5965).
# hidden_link: a request for the link of the mail no person can see (campaign.machine): evidence
# that a machine read the mail, never an open or a click in either figure.
EVENT_TYPES = ("open", "click", "unsubscribe", "complaint", "hidden_link")
# What the delivery_audit trail records: a trigger refused for want of the role, the approval
# asked of the operator, and its outcome (campaign.approval); every change of a send's state, by
# an operator or the automatic brake (campaign.controls).
AUDIT_ACTIONS = (
    "role_refused", "approval_asked", "confirmed", "cancelled", "timed_out", "answer_refused",
    "paused", "auto_paused", "resumed", "stopped",
)  # fmt: skip

# Auto-increment keys: BIGINT on PostgreSQL, INTEGER PRIMARY KEY (the rowid) on SQLite.
Id = BigInteger().with_variant(Integer, "sqlite")
# Both are 64-bit: a number beyond names no row, and must be said so before it reaches a driver
# that cannot even bind it (check_delivery_id).
MAX_ID = 2**63 - 1


def check_delivery_id(value: Any) -> int:
    """``value`` as a delivery id: a whole number from 1 to ``MAX_ID``; raises
    ``DeliveryNotFound`` for a number outside (no such delivery can exist) and ``InvalidInput``
    for anything that is not a whole number."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"A delivery id is a whole number, got {value!r}.")
    if not 1 <= value <= MAX_ID:
        raise DeliveryNotFound(f"Delivery {value} does not exist.")
    return value


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


operators = Table(
    "operators",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("login", String(150), nullable=False, unique=True, comment="the Airflow user name"),
    Column("display_name", String(200)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

operator_roles = Table(
    "operator_roles",
    metadata,
    Column("operator_id", Id, ForeignKey("operators.id", ondelete="CASCADE"), nullable=False),
    Column("role", String(64), nullable=False),
    Column("granted_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("operator_id", "role"),
    CheckConstraint(_in("role", KNOWN_ROLES), name="operator_roles_role_known"),
)

profiles = Table(
    "profiles",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("email", String(320), unique=True, comment="normal form: lower-cased, IDN domain in Unicode, NFC"),
    Column("mobile", String(32)),
    Column("first_name", String(100)),
    Column("last_name", String(100)),
    Column("locale", String(16)),
    Column("blocklisted", Boolean, nullable=False, server_default=false()),
    Column("quarantine_reason", Text, comment="set when the address hard-bounced; NULL = not quarantined"),
    Column("quarantined_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("label", String(200), nullable=False),
    Column("channel", String(16), nullable=False, server_default="email"),
    Column("sender", String(320), nullable=False),
    Column("subject", Text, nullable=False),
    Column("text_template", Text, nullable=False),
    Column("html_template", Text, nullable=False),
    Column("tracking", Boolean, nullable=False, server_default=true()),
    Column("max_rate", Integer, comment="messages an hour across all chunks (campaign.pacing); NULL = no limit"),
    Column("brake_threshold", Float, comment="automatic pause above this bounce + error rate, percent; NULL = 30"),
    Column("brake_window", Integer, comment="over the last so many processed messages; NULL = 500"),
    Column(
        "brake_after_log_id",
        BigInteger,
        comment="the brake counts sending-log rows after this id: the last one when the send was resumed",
    ),
    Column("status", String(16), nullable=False, server_default="draft"),
    Column("target_count", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("prepared_by", String(150)),
    Column("prepared_at", DateTime(timezone=True)),
    Column("approved_by", String(150)),
    Column("approved_at", DateTime(timezone=True)),
    Column("confirmed_by", String(150)),
    Column("confirmed_at", DateTime(timezone=True)),
    Column("run_id", String(250), comment="the confirm_send DAG run that owns the send"),
    Column("finished_at", DateTime(timezone=True)),
    CheckConstraint(_in("status", DELIVERY_STATUSES), name="deliveries_status_known"),
    CheckConstraint("channel = 'email'", name="deliveries_channel_email"),
)

delivery_targets = Table(
    "delivery_targets",
    metadata,
    Column("delivery_id", Id, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False, comment="1..target_count, contiguous: chunks are seq ranges"),
    Column("profile_id", Id, ForeignKey("profiles.id"), nullable=False),
    Column("email", String(320), nullable=False, comment="the address at preparation time"),
    PrimaryKeyConstraint("delivery_id", "seq"),
    UniqueConstraint("delivery_id", "profile_id", name="delivery_targets_one_per_profile"),
)

delivery_links = Table(
    "delivery_links",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", Id, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("url", Text, nullable=False),
    Column("label", Text),
    UniqueConstraint("delivery_id", "url", name="delivery_links_one_per_url"),
)

broad_logs = Table(
    "broad_logs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", Id, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("profile_id", Id, ForeignKey("profiles.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("email", String(320), nullable=False),
    Column("status", String(16), nullable=False),
    Column("failure_type", String(8)),
    Column("reason", Text),
    Column("smtp_code", Integer),
    Column("smtp_reply", Text),
    Column("message_id", String(400)),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("worker", String(200), comment="host:pid of the task process that wrote the row"),
    Column("run_id", String(250)),
    Column("logged_at", DateTime(timezone=True), nullable=False),
    Column(
        "bounced_at",
        DateTime(timezone=True),
        comment="when a delivery status notification (RFC 3464) turned this accepted message into a bounce",
    ),
    Column("dsn_status", String(16), comment="the DSN's Status field (RFC 3464 2.3.4), e.g. 5.1.1"),
    Column("dsn_diagnostic", Text, comment="the DSN's Diagnostic-Code (RFC 3464 2.3.6): the remote server's words"),
    # The database itself makes a second sending-log row for a recipient impossible.
    UniqueConstraint("delivery_id", "profile_id", name="broad_logs_one_per_recipient"),
    CheckConstraint(_in("status", LOG_STATUSES), name="broad_logs_status_known"),
    CheckConstraint(
        f"failure_type IS NULL OR {_in('failure_type', FAILURE_TYPES)}", name="broad_logs_failure_type_known"
    ),
)
# Covers every sending-log count of compute_delivery_kpis.sql: KPIs never read a broad_logs row.
# profile_id: the recipients of the not-delivered statuses, whose engagement the KPIs leave out
# (a range, or a seek per status for one recipient); failure_type is read within its status.
Index(
    "broad_logs_delivery_outcome",
    broad_logs.c.delivery_id, broad_logs.c.status, broad_logs.c.profile_id, broad_logs.c.failure_type,
)  # fmt: skip
Index("broad_logs_profile", broad_logs.c.profile_id)
# The automatic brake's window: the latest rows of a delivery, newest first (select_brake_window.sql).
Index("broad_logs_delivery_recent", broad_logs.c.delivery_id, broad_logs.c.id, postgresql_include=["status"])

tracking_logs = Table(
    "tracking_logs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", Id, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("profile_id", Id, ForeignKey("profiles.id"), nullable=False),
    Column("event_type", String(16), nullable=False),
    Column("link_id", Id, ForeignKey("delivery_links.id")),
    Column("user_agent", Text),
    Column("event_at", DateTime(timezone=True), nullable=False),
    Column(
        "machine",
        Boolean,
        comment="open or click made by a machine (proxy, prefetch, link scanner), not a person; "
        "NULL: recorded before the rules existed",
    ),
    Column(
        "machine_rule",
        String(64),
        comment="the machine rule that flagged it (README, Machine opens and clicks); NULL when human",
    ),
    CheckConstraint(_in("event_type", EVENT_TYPES), name="tracking_logs_event_type_known"),
)
# Both cover count_delivery_tracking.sql, in recipient order so that DISTINCT is a single pass
# (SQLite keeps the rowid, i.e. id, in every index; PostgreSQL needs it included).
Index(
    "tracking_logs_delivery_type",
    tracking_logs.c.delivery_id, tracking_logs.c.event_type, tracking_logs.c.profile_id,
    postgresql_include=["id"],
)  # fmt: skip
Index(
    "tracking_logs_delivery_recipient",
    tracking_logs.c.delivery_id, tracking_logs.c.profile_id, tracking_logs.c.event_type,
    postgresql_include=["id"],
)  # fmt: skip
# Covers the human counts of count_delivery_tracking.sql: in recipient order, so that each
# DISTINCT is a single ordered pass, with the machine flag to tell people from machines.
Index(
    "tracking_logs_delivery_machine",
    tracking_logs.c.delivery_id, tracking_logs.c.profile_id, tracking_logs.c.event_type, tracking_logs.c.machine,
    postgresql_include=["id"],
)  # fmt: skip

# One unsubscribe event per recipient of a delivery, however many one-click POSTs arrive (RFC 8058
# clients and link scanners repeat them, sometimes at once): a rule in the database, so that two
# concurrent requests cannot both insert; insert_unsubscribe_event.sql does nothing on conflict.
# Partial: opens and clicks are recorded every time (the KPIs count every click).
Index(
    "tracking_logs_one_unsubscribe",
    tracking_logs.c.delivery_id, tracking_logs.c.profile_id,
    unique=True,
    sqlite_where=text("event_type = 'unsubscribe'"),
    postgresql_where=text("event_type = 'unsubscribe'"),
)  # fmt: skip
# One complaint per recipient of a delivery, however many feedback reports arrive for it.
Index(
    "tracking_logs_one_complaint",
    tracking_logs.c.delivery_id, tracking_logs.c.profile_id,
    unique=True,
    sqlite_where=text("event_type = 'complaint'"),
    postgresql_where=text("event_type = 'complaint'"),
)  # fmt: skip

delivery_engagement = Table(
    "delivery_engagement",
    metadata,
    Column("delivery_id", Id, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("profile_id", Id, ForeignKey("profiles.id"), nullable=False),
    Column(
        "first_open_at",
        DateTime(timezone=True),
        nullable=False,
        comment="first open or click (a click proves an open): every row is an opener",
    ),
    Column("first_click_at", DateTime(timezone=True)),
    Column("clicks", Integer, nullable=False, server_default="0"),
    Column("first_human_open_at", DateTime(timezone=True), comment="first open or click not made by a machine"),
    Column("first_human_click_at", DateTime(timezone=True), comment="first click not made by a machine"),
    Column("human_clicks", Integer, server_default="0", comment="clicks not made by a machine"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("delivery_id", "profile_id"),
    CheckConstraint("(clicks > 0) = (first_click_at IS NOT NULL)", name="delivery_engagement_clicked_iff_clicks"),
    comment="per-recipient engagement folded from tracking_logs; the KPI counts are its sums",
)
# With the two rules above, unique opens, unique clicks and clicks of a delivery are counts and a
# sum over this narrow index alone (compute_delivery_kpis.sql).
Index("delivery_engagement_clicks", delivery_engagement.c.delivery_id, delivery_engagement.c.clicks)
# The same counts without machines (human_*) over this one.
Index(
    "delivery_engagement_human",
    delivery_engagement.c.delivery_id, delivery_engagement.c.human_clicks,
    delivery_engagement.c.first_human_open_at, delivery_engagement.c.first_human_click_at,
)  # fmt: skip

tracking_watermarks = Table(
    "tracking_watermarks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("last_event_id", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True)),
    comment="how far tracking_rates_hourly has folded tracking_logs; its row is also the lock of the fold",
)

delivery_pacing = Table(
    "delivery_pacing",
    metadata,
    Column("delivery_id", Id, ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True),
    Column("next_at", Float, nullable=False, comment="seconds since the epoch: the next free slot of the send"),
    comment="the shared schedule of a rate-limited send: one row per delivery (campaign.pacing)",
)

delivery_audit = Table(
    "delivery_audit",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", Id, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("run_id", String(250), comment="the confirm_send DAG run the action belongs to"),
    Column("action", String(32), nullable=False),
    Column("actor", String(150), comment="Airflow user name; NULL when no person acted (a timeout)"),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("detail", Text, nullable=False, comment="one sentence: what was asked or answered, and why"),
    CheckConstraint(_in("action", AUDIT_ACTIONS), name="delivery_audit_action_known"),
    Index("delivery_audit_delivery_at", "delivery_id", "at"),
    Index("delivery_audit_run", "run_id"),
    comment="who did what to a delivery's send, and when: one row per action, never updated",
)

delivery_kpis = Table(
    "delivery_kpis",
    metadata,
    Column("delivery_id", Id, ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True),
    Column("to_deliver", Integer, nullable=False),
    Column("delivered", Integer, nullable=False),
    Column("bounces_errors", Integer, nullable=False),
    Column("hard_bounces", Integer, nullable=False),
    Column("soft_bounces", Integer, nullable=False),
    Column("errors", Integer, nullable=False),
    Column("ignored", Integer, nullable=False),
    Column("cancelled", Integer, server_default="0", comment="not processed: the send was stopped"),
    Column("processed", Integer, nullable=False),
    Column("delivered_rate", Float, comment="delivered / processed; NULL when nothing was processed"),
    Column("bounce_error_rate", Float, comment="bounces_errors / processed"),
    Column("unique_opens", Integer, nullable=False, server_default="0"),
    Column("open_rate", Float, comment="unique_opens / delivered"),
    Column("unique_clicks", Integer, nullable=False, server_default="0"),
    Column("clicks", Integer, nullable=False, server_default="0"),
    Column("click_through_rate", Float, comment="unique_clicks / delivered"),
    Column("human_unique_opens", Integer, server_default="0", comment="recipients who opened, machines left out"),
    Column("human_open_rate", Float, comment="human_unique_opens / delivered"),
    Column("human_unique_clicks", Integer, server_default="0", comment="recipients who clicked, machines left out"),
    Column("human_clicks", Integer, server_default="0"),
    Column("human_click_through_rate", Float, comment="human_unique_clicks / delivered"),
    Column("complaints", Integer, server_default="0", comment="recipients who reported the message as spam"),
    Column("complaint_rate", Float, comment="complaints / delivered"),
    Column("computed_at", DateTime(timezone=True), nullable=False),
    Column("rates_updated_at", DateTime(timezone=True)),
)


# A unique index added to a database made by an older version must first find the table clean:
# the statement run, in the same transaction, before the index is created there.
_BEFORE_UNIQUE_INDEX = {"tracking_logs_one_unsubscribe": "delete_repeated_unsubscribes"}


def create_schema(engine: Engine) -> None:
    """Create every missing table, column and index, and bring indexes and named CHECK constraints
    up to date.

    On a database made by an older version, nullable columns added since are added with
    ``ALTER TABLE … ADD COLUMN`` (SQLite and PostgreSQL both can), an index whose key columns
    differ from the metadata is dropped and made again, and the rows a new unique
    index would refuse are removed first (``_BEFORE_UNIQUE_INDEX``), each index in its own
    transaction. A named CHECK constraint that is missing or says something else than the
    metadata (a status list widened since) is replaced: on PostgreSQL with ``ALTER TABLE``, on
    SQLite by rebuilding its table (``_rebuild_sqlite_tables``). A database already up to date is
    only read.
    """
    metadata.create_all(engine)
    _add_missing_columns(engine)
    # create_all only indexes the tables it creates: databases made by an older version get the
    # indexes added since, and an index whose columns changed since is made again.
    for table in metadata.sorted_tables:
        with engine.connect() as conn:
            present = {index["name"]: index["column_names"] for index in inspect(conn).get_indexes(table.name)}
        for index in table.indexes:
            columns = [column.name for column in index.columns]
            if present.get(index.name) == columns:
                continue
            with engine.begin() as conn:
                if index.name in present:
                    index.drop(conn)
                cleanup = _BEFORE_UNIQUE_INDEX.get(index.name)
                if cleanup is not None:
                    conn.execute(sql(cleanup))
                index.create(conn)
    _update_check_constraints(engine)


def _add_missing_columns(engine: Engine) -> None:
    for table in metadata.sorted_tables:
        with engine.begin() as conn:
            present = {column["name"] for column in inspect(conn).get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                if not column.nullable or column.primary_key:
                    raise RuntimeError(f"{table.name}.{column.name} cannot be added to an existing table: not nullable")
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


# ---------------------------------------------------------------- CHECK constraints

# Each database hands back a CHECK in its own words: SQLite the text we created it with,
# PostgreSQL a deparsed tree ("status::text = ANY (ARRAY['a'::character varying]::text[])", with
# more or fewer parentheses by version). _normal_form reduces both to the same tokens so that a
# database already up to date is recognised as such and left alone.
_TOKEN = re.compile(
    r"""
      '(?:[^']|'')*'                 # a string literal, '' escapes included
    | "(?:[^"]|"")*"                 # a quoted identifier
    | ::                             # a cast
    | [A-Za-z_][A-Za-z0-9_$]*        # a word: identifier or keyword
    | \d+(?:\.\d+)?
    | <>|!=|<=|>=|\|\|
    | \S
    """,
    re.VERBOSE,
)
# Words that continue a type name after a cast ("::character varying", "::double precision").
_TYPE_WORDS = {"varying", "precision", "with", "without", "time", "zone"}
# A parenthesis after one of these groups an operand (and PostgreSQL adds or drops those freely);
# after any other word it holds arguments or a list ("IN (", "ANY (", "lower(") and is kept.
_OPERATOR_WORDS = {"and", "or", "not", "is", "between", "like", "ilike", "case", "when", "then", "else"}


def _normal_form(expression: str) -> tuple[str, ...]:
    """The tokens of a CHECK expression with what PostgreSQL adds or rewrites taken out.

    Casts go, grouping parentheses go, ``= ANY (ARRAY[…])`` becomes ``IN (…)`` (``<> ALL`` becomes
    ``NOT IN``), and a list of literals is sorted and deduplicated (a set of allowed values).
    Grouping is not compared: two constraints that differ only in where the parentheses are count
    as the same.
    """
    tokens = []
    raw = _TOKEN.findall(expression)
    i = 0
    while i < len(raw):
        token = raw[i]
        if token == "::":  # skip the cast: its type name, a length, an array mark
            i += 2
            while i < len(raw) and raw[i].lower() in _TYPE_WORDS:
                i += 1
            if raw[i : i + 1] == ["("] and ")" in raw[i:]:
                i = raw.index(")", i) + 1
            if raw[i : i + 2] == ["[", "]"]:
                i += 2
            continue
        if token.startswith('"') and re.fullmatch(r'"[a-z_][a-z0-9_$]*"', token):
            token = token[1:-1]
        elif not token.startswith(("'", '"')):
            token = token.lower()
        tokens.append(token)
        i += 1

    ungrouped, kept = [], []
    for position, token in enumerate(tokens):
        if token == "(":
            before = tokens[position - 1] if position else ""
            kept.append(before[:1].isalpha() and before not in _OPERATOR_WORDS)
            if kept[-1]:
                ungrouped.append(token)
        elif token == ")":
            if kept.pop() if kept else True:
                ungrouped.append(token)
        else:
            ungrouped.append(token)

    out: list[str] = []
    i = 0
    while i < len(ungrouped):
        window = ungrouped[i : i + 5]
        if window[:2] in (["=", "any"], ["<>", "all"], ["!=", "all"]) and window[2:] == ["(", "array", "["]:
            end = ungrouped.index("]", i + 5)
            if ungrouped[end + 1 : end + 2] == [")"]:
                out += (["in"] if window[0] == "=" else ["not", "in"]) + ["("] + ungrouped[i + 5 : end] + [")"]
                i = end + 2
                continue
        out.append(ungrouped[i])
        i += 1

    normal: list[str] = []
    i = 0
    while i < len(out):
        if out[i] == "in" and out[i + 1 : i + 2] == ["("] and ")" in out[i:]:
            end = out.index(")", i)
            items = out[i + 2 : end]
            values, commas = items[0::2], items[1::2]
            if values and all(v.startswith("'") for v in values) and set(commas) <= {","}:
                normal += ["in", "("] + sorted(set(values)) + [")"]
                i = end + 1
                continue
        normal.append(out[i])
        i += 1
    return tuple(normal)


def _check_sql(constraint: CheckConstraint, conn: Connection) -> str:
    # Rendered as CREATE TABLE renders it, so that an expression (not only text) compares too.
    compiler = conn.dialect.ddl_compiler(conn.dialect, None)
    return compiler.sql_compiler.process(constraint.sqltext, include_table=False, literal_binds=True)


def _stale_checks(conn: Connection, table: Table) -> list[CheckConstraint]:
    """The named CHECK constraints of the metadata the table lacks or has with another definition."""
    present = {check["name"]: check["sqltext"] for check in inspect(conn).get_check_constraints(table.name)}
    return [
        constraint
        for constraint in table.constraints
        if isinstance(constraint, CheckConstraint)
        and constraint.name
        and (
            constraint.name not in present
            or _normal_form(present[constraint.name]) != _normal_form(_check_sql(constraint, conn))
        )
    ]


def _update_check_constraints(engine: Engine) -> None:
    with engine.connect() as conn:
        stale = any(_stale_checks(conn, table) for table in metadata.sorted_tables)
    if not stale:
        return
    if engine.dialect.name == "sqlite":
        _rebuild_sqlite_tables(engine)
        return
    # One transaction: the table never goes without its rule, and a row the new rule refuses
    # fails the ADD and leaves everything as it was.
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            for constraint in _stale_checks(conn, table):
                conn.execute(DropConstraint(constraint, if_exists=True))
                # isolate_from_table=False: the default marks the metadata's constraint as
                # "added by ALTER", and CREATE TABLE would then leave it out of every new database.
                conn.execute(AddConstraint(constraint, isolate_from_table=False))


def _rebuild_sqlite_tables(engine: Engine) -> None:
    """Rebuild the tables whose CHECKs are stale: SQLite cannot alter a constraint.

    The procedure of https://www.sqlite.org/lang_altertable.html ("Making Other Kinds Of Table
    Schema Changes"), all tables in one transaction.
    """
    with engine.connect() as conn:
        # Through the driver, not conn.execute: the PRAGMA is a silent no-op inside a transaction,
        # and SQLAlchemy would begin one first (campaign.db issues BEGIN IMMEDIATE on begin). An
        # AUTOCOMMIT connection would avoid that but reset pysqlite's isolation_level when it
        # goes back to the pool, undoing what campaign.db set on connect.
        driver = conn.connection.driver_connection
        if driver.in_transaction:
            raise RuntimeError("cannot rebuild SQLite tables: the connection is in a transaction")
        foreign_keys = driver.execute("PRAGMA foreign_keys").fetchone()[0]
        driver.execute("PRAGMA foreign_keys=OFF")
        try:
            # With foreign keys on, DROP TABLE deletes the referencing rows (ON DELETE CASCADE):
            # never go on unless they are off.
            if driver.execute("PRAGMA foreign_keys").fetchone()[0]:
                raise RuntimeError("cannot rebuild SQLite tables: foreign keys did not turn off")
            with conn.begin():
                if not driver.in_transaction:  # a plain pysqlite engine defers BEGIN past our DDL
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                # Checked again under the write lock: another process may have done it meanwhile.
                tables = [table for table in metadata.sorted_tables if _stale_checks(conn, table)]
                if not tables:
                    return
                # A rename checks every view and trigger, and those naming a dropped table fail it:
                # they go first and come back, unchanged, at the end.
                dependents = conn.exec_driver_sql(
                    "SELECT type, name, sql FROM sqlite_master WHERE type IN ('view', 'trigger') AND sql IS NOT NULL"
                ).all()
                for kind, name, _ in dependents:
                    conn.exec_driver_sql(f"DROP {kind.upper()} IF EXISTS {_quote(conn, name)}")
                for table in tables:
                    _rebuild_sqlite_table(conn, table)
                for _, _, statement in dependents:
                    conn.exec_driver_sql(statement)
                dangling = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                if dangling:
                    raise RuntimeError(
                        f"SQLite tables not rebuilt: {len(dangling)} rows refer to rows that do not exist "
                        f"(table, rowid, parent, key): {[tuple(row) for row in dangling[:10]]}"
                    )
        finally:
            driver.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


def _rebuild_sqlite_table(conn: Connection, table: Table) -> None:
    inspector = inspect(conn)
    columns = [column["name"] for column in inspector.get_columns(table.name)]
    unknown = [name for name in columns if name not in table.c]
    if unknown:  # the new table would not have them: their values would be lost
        raise RuntimeError(f"cannot rebuild {table.name}: columns {unknown} are not in the schema")
    # Indexes someone added by hand go with the old table: they come back after the metadata's.
    own_indexes = {index.name for index in table.indexes}
    extra_indexes = [
        statement
        for name, statement in conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
            (table.name,),
        )
        if name not in own_indexes
    ]

    # The new table, from the metadata, under another name. Its foreign keys name their tables,
    # so it is made in a copy of the whole metadata (the module's own is never changed).
    scratch = MetaData()
    for each in metadata.tables.values():
        each.to_metadata(scratch)
    new = scratch.tables[table.name].to_metadata(scratch, name=f"{table.name}__rebuilt")
    # A named CHECK the database has and the metadata does not is kept, as ALTER would keep it.
    ours = {constraint.name for constraint in table.constraints if isinstance(constraint, CheckConstraint)}
    for check in inspector.get_check_constraints(table.name):
        if check["name"] and check["name"] not in ours:
            new.append_constraint(CheckConstraint(text(check["sqltext"]), name=check["name"]))
    conn.execute(CreateTable(new))

    # The ids come along: rowid keys go on from the highest one, and references still match.
    conn.execute(new.insert().from_select(columns, select(*(table.c[name] for name in columns))))
    conn.exec_driver_sql(f"DROP TABLE {_quote(conn, table.name)}")
    conn.exec_driver_sql(f"ALTER TABLE {_quote(conn, new.name)} RENAME TO {_quote(conn, table.name)}")
    for index in table.indexes:
        index.create(conn)
    for statement in extra_indexes:
        conn.exec_driver_sql(statement)


# ---------------------------------------------------------------- the tracking service's role

# What the internet-facing tracking service (campaign.web.tracking_service) may do, and no more:
# read who was targeted and sent when, record events and flag a recipient's machine events, and
# blocklist a profile that unsubscribes. Columns are named so that a compromised service cannot
# read addresses (delivery_targets.email, broad_logs.email, profiles) or touch anything else.
TRACKING_ROLE_PRIVILEGES = (
    ("SELECT (delivery_id, profile_id)", "delivery_targets"),
    ("SELECT (id, delivery_id, url)", "delivery_links"),
    ("SELECT (delivery_id, profile_id, status, logged_at)", "broad_logs"),
    ("SELECT (id, delivery_id, profile_id, event_type, link_id, event_at, machine)", "tracking_logs"),
    ("INSERT", "tracking_logs"),
    ("UPDATE (machine, machine_rule)", "tracking_logs"),
    ("SELECT (id), UPDATE (blocklisted)", "profiles"),
)
# Column grants cannot say which values: row-level security does. Restrictive policies for the
# tracking role only (ANDed with the permissive one every role gets, which keeps the tables as
# they were for everyone else; the tables' owner, which the workers use, bypasses them anyway).
# {table: [(name, command, USING, WITH CHECK)]}
TRACKING_ROLE_POLICIES = {  # fmt: skip
    "profiles": [
        # an unsubscribe blocklists; nothing the service does un-blocklists anyone
        ("tracking_only_blocklists", "UPDATE", "true", "blocklisted"),
    ],
    "tracking_logs": [
        # only the events its endpoints record: never a complaint (that is the bounce mailbox's)
        (
            "tracking_inserts_its_events",
            "INSERT",
            None,
            "event_type IN ('open', 'click', 'hidden_link', 'unsubscribe')",
        ),
        # a machine verdict is only ever added, to events of the last minutes (the same moment)
        ("tracking_only_flags_machines", "UPDATE", "event_at > now() - interval '10 minutes'", "machine"),
    ],
}
EVERYONE_POLICY = "campaign_everyone"
_ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}")
# "SELECT (a, b), UPDATE (c)" -> (privilege, columns or None)
_PRIVILEGE = re.compile(r"(SELECT|INSERT|UPDATE)(?:\s*\(([^)]*)\))?")


def _policy_name(name: str, role: str) -> str:
    # One set of policies per role, named within PostgreSQL's 63 characters.
    return f"{name}_{hashlib.sha256(role.encode()).hexdigest()[:8]}"


def grant_tracking_role(engine: Engine, role: str) -> list[str]:
    """Give PostgreSQL role ``role`` (which must exist) what the tracking service needs, and only
    that: ``TRACKING_ROLE_PRIVILEGES``, the use of ``tracking_logs``' id sequence, and the
    row-level policies of ``TRACKING_ROLE_POLICIES`` on the values it may write; returns the
    statements run. Run it after ``create_schema``, as the owner of the tables, and again after
    each upgrade (a column added since gets no grant by itself). Raises ``InvalidInput`` for a
    role name that is not a plain identifier, ``ConfigurationError`` on SQLite (no roles) and
    when a privilege is still missing afterwards (PostgreSQL only warns when someone who may not
    grant it runs GRANT: not the owner).
    """
    if engine.dialect.name != "postgresql":
        raise ConfigurationError("Only PostgreSQL has roles: on SQLite the tracking service uses the database file.")
    if not _ROLE_NAME.fullmatch(role):
        raise InvalidInput(f"{role!r} is not a role name: letters, digits, _, $ and -, at most 63.")
    quoted = engine.dialect.identifier_preparer.quote(role)
    statements = [f"GRANT {privileges} ON {table} TO {quoted}" for privileges, table in TRACKING_ROLE_PRIVILEGES]
    for table, policies in TRACKING_ROLE_POLICIES.items():
        statements += [
            f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
            f"DROP POLICY IF EXISTS {EVERYONE_POLICY} ON {table}",
            f"CREATE POLICY {EVERYONE_POLICY} ON {table} AS PERMISSIVE FOR ALL TO PUBLIC "
            "USING (true) WITH CHECK (true)",
        ]
        for name, command, using, check in policies:
            policy = _policy_name(name, role)
            statements += [
                f"DROP POLICY IF EXISTS {policy} ON {table}",
                f"CREATE POLICY {policy} ON {table} AS RESTRICTIVE FOR {command} TO {quoted}"
                + (f" USING ({using})" if using else "")
                + f" WITH CHECK ({check})",
            ]
    with engine.begin() as conn:
        sequence = conn.execute(text("SELECT pg_get_serial_sequence('tracking_logs', 'id')")).scalar()
        if sequence:
            statements.append(f"GRANT USAGE ON SEQUENCE {sequence} TO {quoted}")
        try:
            for statement in statements:
                conn.execute(text(statement))
        except ProgrammingError as exc:  # not the owner: permission denied, must be owner
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            raise ConfigurationError(
                f"Cannot give role {role} the tracking privileges ({reason}): run grant-tracking as the owner of "
                "the campaign tables."
            ) from None
        missing = tracking_privileges_missing(conn, role)
    if missing:
        raise ConfigurationError(
            f"Role {role} still lacks {'; '.join(missing)}: run grant-tracking as the owner of the campaign tables."
        )
    return statements


def tracking_privileges_missing(conn: Connection, role: str | None = None) -> list[str]:
    """What ``role`` (default: the connected one) lacks of ``TRACKING_ROLE_PRIVILEGES``, as
    ``"UPDATE (blocklisted) on profiles"`` each; [] when nothing is missing, and on SQLite."""
    if conn.dialect.name != "postgresql":
        return []
    who = role or conn.execute(text("SELECT current_user")).scalar_one()
    missing = []
    for privileges, table in TRACKING_ROLE_PRIVILEGES:
        for privilege, columns in _PRIVILEGE.findall(privileges):
            names = [column.strip() for column in columns.split(",")] if columns else [None]
            for column in names:
                if column is None:
                    query, params = "SELECT has_table_privilege(:r, :t, :p)", {"r": who, "t": table, "p": privilege}
                else:
                    query = "SELECT has_column_privilege(:r, :t, :c, :p)"
                    params = {"r": who, "t": table, "c": column, "p": privilege}
                if not conn.execute(text(query), params).scalar_one():
                    missing.append(f"{privilege}{f' ({column})' if column else ''} on {table}")
    return missing
