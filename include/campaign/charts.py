"""The Deployment page's charts, drawn on the server as inline SVG by matplotlib.

Only matplotlib's object API (``Figure``, the SVG canvas): pyplot keeps a global registry of
figures and is not safe in the API server, which answers requests in threads. Settings go through
one ``rc_context`` under a lock, because matplotlib's settings are global to the process and a
matplotlibrc could otherwise change how the page looks. Text is drawn as paths from matplotlib's
own DejaVu Sans (``svg.fonttype`` ``path``), so the chart looks the same in any browser with no
font installed, and nothing is fetched from anywhere. The series come from
``campaign.deployment.delivery_charts``.
"""

from __future__ import annotations

import html
import io
import re
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import matplotlib
import matplotlib.dates as mdates
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from campaign.schema import LOG_STATUSES

MESSAGES_TITLE = "Messages processed per minute, by outcome"
EVENTS_TITLE = "Opens and clicks per hour since the send"
OUTCOME_COLOURS = {
    "sent": "#00a86b", "bounced": "#f59e0b", "failed": "#c62828", "ignored": "#9aa5b1", "cancelled": "#6b46c1",
}  # fmt: skip
EVENT_COLOURS = {"opens": "#017cee", "clicks": "#c2185b"}
FIGURE_SIZE = (9.0, 3.0)  # inches; the SVG is 72 units an inch and scales with the page

_RC = {
    "svg.fonttype": "path",
    # Clip-path ids are hashes salted by this: the same figures give the same bytes.
    "svg.hashsalt": "campaign-charts",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    # The y axis ends on a labelled tick above the highest bar, so the peak can be read off.
    "axes.autolimit_mode": "round_numbers",
}
_DRAWING = threading.Lock()
_ID = re.compile(r'\bid="([^"]+)"')
_REFERENCE = re.compile(r'(href="#|url\(#)([^")]+)')


def messages_chart(series: Sequence[dict[str, Any]]) -> str | None:
    """Sending-log rows per minute stacked by outcome, as an ``<svg>`` element; None when empty.

    ``series``: ``campaign.deployment.messages_per_minute``'s rows (``minute`` ISO text, one
    count per status of ``LOG_STATUSES``), consecutive minutes. Each outcome with a count is one
    stacked area, its group id ``messages-series-<status>``; outcomes without any stay out of the
    chart and its legend.
    """
    if not series:
        return None
    edges = _edges([row["minute"] for row in series], timedelta(minutes=1))
    shown = [status for status in LOG_STATUSES if any(row[status] for row in series)]
    totals = {status: sum(row[status] for row in series) for status in shown}
    summary = ", ".join(f"{status} {count:,}" for status, count in totals.items())
    description = f"{len(series)} minutes from {series[0]['minute'][:16]} UTC: {summary or 'nothing'}."
    with _DRAWING, matplotlib.rc_context(_RC):
        figure, axes = _figure(MESSAGES_TITLE, "messages a minute")
        bottom = np.zeros(len(series))
        for status in shown:
            top = bottom + np.array([row[status] for row in series], dtype=float)
            area = axes.stairs(
                top, edges, baseline=bottom, fill=True, color=OUTCOME_COLOURS[status], label=status, linewidth=0
            )
            area.set_gid(f"series-{status}")
            bottom = top
        _finish(axes, edges, legend=bool(shown))
        return _svg(figure, "messages", MESSAGES_TITLE, description)


def events_chart(series: Sequence[dict[str, Any]]) -> str | None:
    """Open and click events per hour as two step lines, as an ``<svg>`` element; None when empty.

    ``series``: ``campaign.deployment.events_per_hour``'s rows (``hour`` ISO text, ``opens``,
    ``clicks``: events, not unique recipients), consecutive hours. The lines' group ids are
    ``events-series-opens`` and ``events-series-clicks``.
    """
    if not series:
        return None
    edges = _edges([row["hour"] for row in series], timedelta(hours=1))
    totals = {name: sum(row[name] for row in series) for name in EVENT_COLOURS}
    description = (
        f"{len(series)} hours from {series[0]['hour'][:13]}:00 UTC: "
        f"{totals['opens']:,} open events, {totals['clicks']:,} click events."
    )
    with _DRAWING, matplotlib.rc_context(_RC):
        figure, axes = _figure(EVENTS_TITLE, "events an hour")
        for name, colour in EVENT_COLOURS.items():
            line = axes.stairs([row[name] for row in series], edges, color=colour, label=name, linewidth=2)
            line.set_gid(f"series-{name}")
        _finish(axes, edges, legend=True)
        return _svg(figure, "events", EVENTS_TITLE, description)


def _edges(starts: list[str], step: timedelta) -> np.ndarray:
    """Bucket edges as matplotlib date numbers: each bucket's start, and the end of the last."""
    moments = [datetime.fromisoformat(start) for start in starts]
    return mdates.date2num([*moments, moments[-1] + step])


def _figure(title: str, unit: str) -> tuple[Figure, Any]:
    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_ylabel(unit)
    axes.set_xlabel("UTC")
    axes.grid(axis="y", color="#e4e7eb", linewidth=0.8)
    axes.set_axisbelow(True)
    return figure, axes


def _finish(axes: Any, edges: np.ndarray, legend: bool) -> None:
    locator = mdates.AutoDateLocator(tz=mdates.UTC, minticks=3, maxticks=8)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=mdates.UTC))
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlim(edges[0], edges[-1])
    axes.set_ylim(bottom=0)
    if legend:
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def _svg(figure: Figure, chart_id: str, title: str, description: str) -> str:
    """The figure as an ``<svg>`` element to put in an HTML page: no XML prolog or doctype, every
    id prefixed (two charts of one page share matplotlib's ids, and an id refers to the first
    element that has it in the whole page), a title and a description for screen readers."""
    buffer = io.StringIO()
    # No metadata block: nothing that changes between two drawings of the same figures.
    figure.savefig(buffer, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = _ID.sub(lambda m: f'id="{chart_id}-{m.group(1)}"', text)
    text = _REFERENCE.sub(lambda m: f"{m.group(1)}{chart_id}-{m.group(2)}", text)
    # A <style> inside inline SVG applies to the whole page: keep matplotlib's to its own chart.
    text = text.replace('<style type="text/css">*{', f'<style type="text/css">#{chart_id}-chart *{{', 1)
    # Scales down with the page; the fixed width and height in points would not.
    size = re.compile(r'width="[\d.]+pt" height="[\d.]+pt"')
    text = size.sub('width="100%" style="max-width:54rem;height:auto"', text, count=1)
    head = f'<svg role="img" aria-labelledby="{chart_id}-title {chart_id}-desc" id="{chart_id}-chart"'
    text = text.replace("<svg", head, 1)
    opening_end = text.index(">") + 1
    accessible = (
        f'<title id="{chart_id}-title">{html.escape(title)}</title>'
        f'<desc id="{chart_id}-desc">{html.escape(description)}</desc>'
    )
    return text[:opening_end] + accessible + text[opening_end:]
