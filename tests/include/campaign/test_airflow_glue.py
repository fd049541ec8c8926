"""What the Airflow glue reads from the deployment: the slots of pool campaign_smtp."""

from __future__ import annotations

import pytest

from campaign.airflow_glue import smtp_pool_slots
from campaign.errors import ConfigurationError


def test_pool_slots_default_to_four(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAMPAIGN_SMTP_POOL_SLOTS", raising=False)

    assert smtp_pool_slots() == 4


def test_pool_slots_come_from_the_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPAIGN_SMTP_POOL_SLOTS", "8")

    assert smtp_pool_slots() == 8


@pytest.mark.parametrize("value", ["0", "-2", "four", "2.5"])
def test_pool_slots_refuse_what_is_not_a_positive_count(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CAMPAIGN_SMTP_POOL_SLOTS", value)

    with pytest.raises(
        ConfigurationError, match=rf"^CAMPAIGN_SMTP_POOL_SLOTS must be a positive number of slots, got '{value}'\.$"
    ):
        smtp_pool_slots()
