"""Small helpers shared by tests in several folders."""

from __future__ import annotations

from campaign.devtools import free_port, wait_until

wait_for = wait_until

__all__ = ["free_port", "wait_for"]
