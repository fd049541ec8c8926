"""Settings a deployment gives in environment variables, read into checked values.

A wrong value is one sentence naming the variable (``ConfigurationError``: the task fails at once,
since a retry would read the same value), never a traceback from ``int()`` or ``float()``.
"""

from __future__ import annotations

import os

from campaign.errors import ConfigurationError


def whole_number(name: str, default: int, *, minimum: int, what: str) -> int:
    """The integer in variable ``name`` (``default`` when unset or blank), at least ``minimum``.

    ``what`` says what the number counts, for the error: ``... must be {what}, got '...'.``
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < minimum:
        raise ConfigurationError(f"{name} must be {what}, got {text!r}.")
    return int(text)


def seconds_list(name: str, default: tuple[float, ...], *, example: str, below: float = 3600) -> tuple[float, ...]:
    """Comma-separated seconds in variable ``name`` (``default`` when unset or blank), each from 0
    to under ``below``; NaN and infinity are refused like any other wrong value."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or any(not (0 <= value < below) for value in values):  # NaN fails the comparison
        raise ConfigurationError(
            f"{name} must be comma-separated seconds under {below:g}, such as {example}; got {text!r}."
        )
    return values
