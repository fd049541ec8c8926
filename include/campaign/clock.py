from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, in UTC, as every timestamp of the campaign database is stored."""
    return datetime.now(UTC)
