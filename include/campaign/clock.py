from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    """Now, in UTC, as every timestamp of the campaign database is stored."""
    return datetime.now(UTC)


def as_datetime(value: Any) -> datetime | None:
    """A stored timestamp as an aware datetime: PostgreSQL gives datetimes, SQLite ISO text;
    naive values are UTC (how they were written)."""
    if value is None or isinstance(value, datetime):
        moment = value
    else:
        moment = datetime.fromisoformat(str(value))
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment
