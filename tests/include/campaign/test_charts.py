"""The Deployment page's charts: inline SVG with the series, labels and titles, nothing external."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from campaign import charts

ROOT = Path(__file__).resolve().parents[3]
ZERO = {"sent": 0, "bounced": 0, "failed": 0, "ignored": 0, "cancelled": 0}
MINUTES = [
    {"minute": "2026-11-27T10:00:00+00:00", **ZERO, "sent": 700, "bounced": 12, "ignored": 3},
    {"minute": "2026-11-27T10:01:00+00:00", **ZERO},
    {"minute": "2026-11-27T10:02:00+00:00", **ZERO, "sent": 812, "bounced": 4, "failed": 2},
]
HOURS = [
    {"hour": "2026-11-27T10:00:00+00:00", "opens": 140, "clicks": 21},
    {"hour": "2026-11-27T11:00:00+00:00", "opens": 0, "clicks": 0},
    {"hour": "2026-11-27T12:00:00+00:00", "opens": 35, "clicks": 4},
]


def _comments(svg: str) -> list[str]:
    """The text matplotlib drew as paths: it writes each one as a comment before its glyphs."""
    return [comment.strip() for comment in re.findall(r"<!--(.*?)-->", svg)]


def _y_ticks(svg: str, chart_id: str) -> list[int]:
    """The y axis' tick labels (the axis' own label comes after them, in the same group)."""
    axis = svg[svg.index(f'id="{chart_id}-matplotlib.axis_2"') :]
    labels = _comments(axis[: axis.index(f'id="{chart_id}-legend_1"')])
    return [int(label) for label in labels if label.isdigit()]


def test_messages_chart_stacks_each_outcome_present_with_its_label() -> None:
    svg = charts.messages_chart(MINUTES)

    assert svg.startswith('<svg role="img" aria-labelledby="messages-title messages-desc" id="messages-chart"')
    assert svg.rstrip().endswith("</svg>")
    assert '<title id="messages-title">Messages processed per minute, by outcome</title>' in svg
    assert '<desc id="messages-desc">3 minutes from 2026-11-27T10:00 UTC: sent 1,512, bounced 16, failed 2, ' in svg
    for present in ("sent", "bounced", "failed", "ignored"):
        assert f'id="messages-series-{present}"' in svg
        assert present in _comments(svg)  # its legend entry
    assert 'id="messages-series-cancelled"' not in svg and "cancelled" not in _comments(svg)
    # the stack's peak, 812 + 4 + 2 messages in the third minute, is under the top tick, the
    # first one above it (the y axis is rounded up to a tick)
    assert max(_y_ticks(svg, "messages")) >= 818 > sorted(_y_ticks(svg, "messages"))[-2]
    assert {"10:00", "10:01", "10:02", "10:03", "UTC", "messages a minute"} <= set(_comments(svg))


def test_events_chart_draws_opens_and_clicks_per_hour() -> None:
    svg = charts.events_chart(HOURS)

    assert '<title id="events-title">Opens and clicks per hour since the send</title>' in svg
    assert "3 hours from 2026-11-27T10:00 UTC: 175 open events, 25 click events." in svg
    assert 'id="events-series-opens"' in svg and 'id="events-series-clicks"' in svg
    assert {"opens", "clicks", "events an hour", "10:00", "11:00", "12:00"} <= set(_comments(svg))
    assert max(_y_ticks(svg, "events")) >= 140 > sorted(_y_ticks(svg, "events"))[-2]


@pytest.mark.parametrize("draw", [charts.messages_chart, charts.events_chart])
def test_no_series_draws_no_chart(draw) -> None:
    assert draw([]) is None


def test_two_charts_on_one_page_share_no_id_and_refer_only_to_their_own() -> None:
    page = charts.messages_chart(MINUTES) + charts.events_chart(HOURS)

    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))
    references = re.findall(r'(?:href="#|url\(#)([^")]+)', page)
    assert references and set(references) <= set(ids)
    # the style matplotlib writes applies to its own chart, not to the whole page
    assert re.findall(r'<style type="text/css">(\S+) \*\{', page) == ["#messages-chart", "#events-chart"]


def test_nothing_is_fetched_and_no_font_is_needed() -> None:
    svg = charts.messages_chart(MINUTES) + charts.events_chart(HOURS)

    # Only the XML namespace names, which a browser never fetches.
    assert set(re.findall(r"https?://[^\s\"')]+", svg)) == {
        "http://www.w3.org/2000/svg",
        "http://www.w3.org/1999/xlink",
    }
    assert "<text" not in svg and "font-family" not in svg  # glyphs drawn as paths
    assert "<?xml" not in svg and "<!DOCTYPE" not in svg and "<metadata" not in svg


def test_the_same_figures_draw_the_same_bytes() -> None:
    assert charts.messages_chart(MINUTES) == charts.messages_chart(MINUTES)


def test_drawing_never_imports_pyplot() -> None:
    code = (
        "import sys; from campaign import charts; "
        f"charts.messages_chart({MINUTES!r}); charts.events_chart({HOURS!r}); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(ROOT / "include")}, capture_output=True, text=True
    )

    assert done.returncode == 0, done.stderr
