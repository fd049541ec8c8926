"""Defaults shared by the campaign DAGs: owner, retries and the rules that say when to retry."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule

from campaign.errors import MailboxUnavailable, PermanentError, SmtpUnavailable, TransientError

# Scheduled DAGs start here; with catchup off, only the latest interval runs.
START_DATE = datetime(2026, 1, 1, tzinfo=UTC)

# Operators can shorten it for a lab relay; tests do, so that retries do not wait a minute.
RETRY_DELAY = timedelta(seconds=float(os.environ.get("CAMPAIGN_RETRY_DELAY_SECONDS", "60")))

RETRY_POLICY = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=PermanentError,
            action=RetryAction.FAIL,
            reason="permanent: role denied, bad input or wrong delivery state; a retry gives the same answer",
        ),
        RetryRule(
            exception=SmtpUnavailable,
            action=RetryAction.RETRY,
            retry_delay=RETRY_DELAY,
            reason="SMTP server unreachable; recipients already sent are recorded and skipped on retry",
        ),
        RetryRule(
            exception=MailboxUnavailable,
            action=RetryAction.RETRY,
            retry_delay=RETRY_DELAY,
            reason="bounce mailbox unreachable; mail applied before is filed or is applied again without effect",
        ),
        RetryRule(
            exception=[TransientError, "sqlalchemy.exc.OperationalError"],
            action=RetryAction.RETRY,
            retry_delay=RETRY_DELAY,
            reason="campaign database busy or unreachable; the task is idempotent",
        ),
    ]
)

DEFAULT_ARGS = {
    "owner": "campaign-ops",
    "retries": 3,
    "retry_delay": RETRY_DELAY,
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=15),
    "retry_policy": RETRY_POLICY,
}
