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
        text: ``""`` (now, UTC), an ISO date (the end of that day: the next midnight UTC,
            so the run judges that whole day and nothing after it) or an ISO date and
            time (a time without zone is UTC).
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
        value += dt.timedelta(days=1)
    return value


def run_logical_time(
    run_date: str, scheduled_time: str = "", *, clock: dt.datetime | None = None
) -> dt.datetime:
    """A pipeline run's logical time: ``run_date`` if set, else its scheduled time.

    KFP fills ``dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER``
    (``{{$.pipeline_job_schedule_time_utc}}``, kfp 2.17 ``kfp/dsl/__init__.py``) with the
    time a recurring run was scheduled for, so a run that starts late, or a catch-up run,
    judges the same window as an on-time run. ``kfp.local`` leaves the placeholder
    unresolved (``kfp/local/placeholder_utils.py`` substitutes only the job name/id, task
    name/id and pipeline root): an unresolved or empty value means "now".
    """
    if run_date.strip():
        return logical_time(run_date, clock=clock)
    stamp = scheduled_time.strip()
    if not stamp or stamp.startswith("{{"):
        return logical_time("", clock=clock)
    return logical_time(stamp, what="scheduled time", clock=clock)
