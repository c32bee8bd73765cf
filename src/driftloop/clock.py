"""Time stamps and the parsing of a run's logical time, shared by the CLI and the steps."""

from __future__ import annotations

import datetime as dt

from driftloop.errors import DriftloopError


def utc_now_iso() -> str:
    """The current UTC time as ISO-8601, to the second."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def parse_time(text: str) -> dt.datetime:
    """Parse an ISO-8601 time written by driftloop (``Z`` accepted for UTC)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def logical_time(
    text: str, *, what: str = "run_date", clock: dt.datetime | None = None
) -> dt.datetime:
    """A run's logical time from a date or time given by a person or a pipeline parameter.

    Args:
        text: ``""`` (now, UTC), an ISO date (the end of that day, 23:59:59 UTC) or an
            ISO date and time (a time without zone is UTC).
        what: The parameter or flag named in the error message.
        clock: The current time for ``""`` (default: now).

    Raises:
        DriftloopError: ``text`` is not an ISO date or time.
    """
    stripped = text.strip()
    if not stripped:
        return clock or dt.datetime.now(dt.UTC)
    try:
        value = parse_time(stripped)
    except ValueError:
        raise DriftloopError(f"{what} {text!r}: not an ISO-8601 date or time") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    if len(stripped) == 10:  # a bare date means the end of that day
        value += dt.timedelta(hours=23, minutes=59, seconds=59)
    return value
