"""The campaign database schema: a public interface the data team queries, keep it stable.

Created from this metadata so that SQLite and PostgreSQL get the same tables, keys and checks.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
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
    text,
    true,
)

from campaign.db import sql

metadata = MetaData()

ROLE_START_DELIVERIES = "start_deliveries"
KNOWN_ROLES = (ROLE_START_DELIVERIES, "prepare_deliveries", "approve_deliveries")

# paused: held by an operator or the automatic brake, resumed later; stopping: a stop was asked
# and the run is ending; stopped: ended by a stop, the rest cancelled (campaign.controls).
DELIVERY_STATUSES = ("draft", "ready", "sending", "paused", "stopping", "stopped", "sent", "failed")
# cancelled: not processed because the send was stopped; not counted in processed.
LOG_STATUSES = ("sent", "bounced", "failed", "ignored", "cancelled")
FAILURE_TYPES = ("hard", "soft")
EVENT_TYPES = ("open", "click", "unsubscribe")
# What the delivery_audit trail records: a trigger refused for want of the role, the approval
# asked of the operator, and its outcome (campaign.approval); every change of a send's state, by
# an operator or the automatic brake (campaign.controls).
AUDIT_ACTIONS = (
    "role_refused", "approval_asked", "confirmed", "cancelled", "timed_out", "answer_refused",
    "paused", "auto_paused", "resumed", "stopped",
)  # fmt: skip

# Auto-increment keys: BIGINT on PostgreSQL, INTEGER PRIMARY KEY (the rowid) on SQLite.
Id = BigInteger().with_variant(Integer, "sqlite")


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
    # The database itself makes a second sending-log row for a recipient impossible.
    UniqueConstraint("delivery_id", "profile_id", name="broad_logs_one_per_recipient"),
    CheckConstraint(_in("status", LOG_STATUSES), name="broad_logs_status_known"),
    CheckConstraint(
        f"failure_type IS NULL OR {_in('failure_type', FAILURE_TYPES)}", name="broad_logs_failure_type_known"
    ),
)
# Covers every sending-log count of compute_delivery_kpis.sql: KPIs never read a broad_logs row.
Index("broad_logs_delivery_outcome", broad_logs.c.delivery_id, broad_logs.c.status, broad_logs.c.failure_type)
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
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("delivery_id", "profile_id"),
    CheckConstraint("(clicks > 0) = (first_click_at IS NOT NULL)", name="delivery_engagement_clicked_iff_clicks"),
    comment="per-recipient engagement folded from tracking_logs; the KPI counts are its sums",
)
# With the two rules above, unique opens, unique clicks and clicks of a delivery are counts and a
# sum over this narrow index alone (compute_delivery_kpis.sql).
Index("delivery_engagement_clicks", delivery_engagement.c.delivery_id, delivery_engagement.c.clicks)

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
    Column("computed_at", DateTime(timezone=True), nullable=False),
    Column("rates_updated_at", DateTime(timezone=True)),
)


# A unique index added to a database made by an older version must first find the table clean:
# the statement run, in the same transaction, before the index is created there.
_BEFORE_UNIQUE_INDEX = {"tracking_logs_one_unsubscribe": "delete_repeated_unsubscribes"}


def create_schema(engine: Engine) -> None:
    """Create every missing table, column and index; existing ones are left as they are.

    On a database made by an older version, nullable columns added since are added with
    ``ALTER TABLE … ADD COLUMN`` (SQLite and PostgreSQL both can), and the rows a new unique
    index would refuse are removed first (``_BEFORE_UNIQUE_INDEX``), each index in its own
    transaction.
    """
    metadata.create_all(engine)
    _add_missing_columns(engine)
    # create_all only indexes the tables it creates: databases made by an older version get the
    # indexes added since.
    for table in metadata.sorted_tables:
        for index in table.indexes:
            with engine.begin() as conn:
                if inspect(conn).has_index(table.name, index.name):
                    continue
                cleanup = _BEFORE_UNIQUE_INDEX.get(index.name)
                if cleanup is not None:
                    conn.execute(sql(cleanup))
                index.create(conn)


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
