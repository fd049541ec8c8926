"""A ready demo: two operators (one may confirm sends), a few thousand profiles, one ready delivery."""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine, func, select

from campaign import deliveries, operators, profiles
from campaign.schema import ROLE_START_DELIVERIES, create_schema
from campaign.schema import profiles as profiles_table

FIRST_NAMES = ["Ada", "Bruno", "Chloé", "Dmitri", "Elena", "Farid", "Grace", "Hugo", "Inès", "Jonas", "Kemal", "Lena"]
LAST_NAMES = ["Martin", "Bernard", "Dubois", "Kowalski", "Rossi", "Schmidt", "Nguyen", "Silva", "Haddad", "Okafor"]
LOCALES = ["en_GB", "fr_FR", "de_DE", "it_IT"]

DEMO_SPEC = {
    "label": "Winter sale 2026",
    "sender": "Campaign Demo <news@campaign-demo.test>",
    "subject": "{{ profile.first_name or 'Hello' }}, the winter sale starts today",
    "text": (
        "Hello {{ profile.first_name or 'there' }},\n\n"
        "Our winter sale starts today: up to 40% off.\n"
        "See the offers: https://shop.campaign-demo.test/winter\n\n"
        "You receive this mail as {{ profile.email }}.\n"
    ),
    "html": (
        "<html><body><h1>Hello {{ profile.first_name or 'there' }},</h1>"
        "<p>Our winter sale starts today: up to 40% off.</p>"
        '<p><a href="https://shop.campaign-demo.test/winter">See the offers</a></p>'
        "<p><small>You receive this mail as {{ profile.email }}.</small></p></body></html>"
    ),
    "tracking": True,
}


@dataclass
class DemoSummary:
    allowed_operator: str
    refused_operator: str
    profiles: int
    delivery_id: int
    target_count: int


def demo_profiles(count: int, seed: int = 2026) -> pd.DataFrame:
    """Deterministic profiles; a few addresses the local SMTP server bounces, a few blocklisted."""
    rng = random.Random(seed)
    rows = []
    for i in range(1, count + 1):
        domain = "example.test"
        if i % 500 == 7:
            domain = "hard-bounce.test"
        elif i % 700 == 11:
            domain = "soft-bounce.test"
        rows.append(
            {
                "email": f"customer{i:06d}@{domain}",
                "first_name": rng.choice(FIRST_NAMES),
                "last_name": rng.choice(LAST_NAMES),
                "locale": rng.choice(LOCALES),
                "blocklisted": "true" if i % 250 == 0 else "false",
            }
        )
    return pd.DataFrame(rows)


def seed_demo(engine: Engine, profile_count: int = 3000, allowed: str = "alice", refused: str = "bob") -> DemoSummary:
    """Idempotent for operators and profiles; adds one new ready delivery on every call."""
    create_schema(engine)
    operators.create_operator(engine, allowed, "Alice (may start deliveries)")
    operators.grant_role(engine, allowed, ROLE_START_DELIVERIES)
    operators.create_operator(engine, refused, "Bob (no Start deliveries role)")
    with tempfile.TemporaryDirectory() as folder:
        csv_path = Path(folder) / "profiles.csv"
        demo_profiles(profile_count).to_csv(csv_path, index=False)
        profiles.import_profiles_csv(engine, csv_path)
    delivery_id = deliveries.create_delivery(engine, DEMO_SPEC)
    target_count = deliveries.prepare_delivery(engine, delivery_id, prepared_by=allowed)
    deliveries.approve_delivery(engine, delivery_id, approved_by=allowed)
    with engine.begin() as conn:
        total = conn.execute(select(func.count()).select_from(profiles_table)).scalar_one()
    return DemoSummary(allowed, refused, total, delivery_id, target_count)
