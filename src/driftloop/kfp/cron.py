"""Cron expressions for KFP recurring runs: the standard 5 fields into KFP's 6.

KFP parses a recurring run's ``cron`` with robfig/cron's seconds-first format, so the
usual ``"0 0 * * *"`` would fire every hour there. :func:`kfp_cron` takes the standard
form, prepends ``0`` seconds and checks every field, so a malformed ``--cron`` fails
before any request. It is its own module because it is pure text checking, with no
client and no server, and :func:`driftloop.kfp.cluster.schedule` is its only caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from driftloop.errors import ConfigError

__all__ = ["kfp_cron"]


_CRON_DESCRIPTORS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, 1)}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}


@dataclass(frozen=True)
class _CronField:
    name: str
    low: int
    high: int
    names: Mapping[str, int] | None = None
    question_mark: bool = False

    def rule(self) -> str:
        extra = ", JAN-DEC" if self.names is _MONTHS else ", SUN-SAT" if self.names is _DAYS else ""
        q = ", '?'" if self.question_mark else ""
        return f"{self.low}-{self.high}{extra}, '*'{q}, lists a,b, ranges a-b, steps */n or a-b/n"


_CRON_FIELDS = (
    _CronField("seconds", 0, 59),
    _CronField("minute", 0, 59),
    _CronField("hour", 0, 23),
    _CronField("day-of-month", 1, 31, question_mark=True),
    _CronField("month", 1, 12, names=_MONTHS),
    _CronField("day-of-week", 0, 6, names=_DAYS, question_mark=True),
)


def _cron_value(text: str, spec: _CronField) -> int | None:
    if text.isdigit():
        value = int(text)
    elif spec.names is not None and text.upper() in spec.names:
        value = spec.names[text.upper()]
    else:
        return None
    return value if spec.low <= value <= spec.high else None


def _cron_term_ok(term: str, spec: _CronField) -> bool:
    base, slash, step = term.partition("/")
    if slash and (not step.isdigit() or int(step) < 1):
        return False
    if base in ("*", "?"):
        return base == "*" or (spec.question_mark and not slash)
    low_text, dash, high_text = base.partition("-")
    low = _cron_value(low_text, spec)
    if low is None:
        return False
    if not dash:
        return True
    high = _cron_value(high_text, spec)
    return high is not None and low <= high


def kfp_cron(expression: str) -> str:
    """Return the 6-field cron (leading seconds) that KFP recurring runs take.

    KFP parses ``cron`` with robfig/cron's seconds-first format, in which a 5-field string means
    *seconds minute hour day-of-month month*: ``"0 0 * * *"`` would fire every hour, not daily.
    This function takes the standard 5-field form (minute hour day-of-month month day-of-week)
    and prepends ``0`` seconds; a 6-field expression is checked and kept; ``@daily``-style
    descriptors are expanded. Day-of-week is 0-6 (Sunday is 0, never 7).

    Args:
        expression: The cron expression as the user wrote it (``--cron``).

    Returns:
        The 6-field expression to send as ``trigger.cron_schedule.cron``.

    Raises:
        ConfigError: The expression is malformed; the message names ``--cron`` and the rule.
    """
    text = " ".join(str(expression).split())
    if text.lower() in _CRON_DESCRIPTORS:
        return _CRON_DESCRIPTORS[text.lower()]
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise ConfigError(
            f"--cron {expression!r}: expected 5 fields (minute hour day-of-month month "
            f"day-of-week, e.g. '0 2 * * *') or 6 with leading seconds, got {len(fields)}"
        )
    for value, spec in zip(fields, _CRON_FIELDS, strict=True):
        if not all(_cron_term_ok(term, spec) for term in value.split(",")):
            raise ConfigError(
                f"--cron {expression!r}: {spec.name} field {value!r} is not valid "
                f"(allowed: {spec.rule()})"
            )
    return " ".join(fields)
