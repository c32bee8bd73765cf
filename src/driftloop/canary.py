"""Judge a canary on live traffic: advance, hold or roll back, with the numbers behind it.

Inputs are the logged responses (records with ``model_version`` and ``prediction``, joined
with feedback labels by ingest). The live quality metric is accuracy on labelled responses:
a proportion, so the confidence interval of the canary-minus-champion difference is the
normal approximation ``diff ± z·se``. Error rate and p95 latency are judged when the records
carry ``error`` / ``latency_ms`` columns, and reported as not measured otherwise.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from driftloop.config import CanaryConfig
from driftloop.serde import JsonResult

ADVANCE, HOLD, ROLLBACK = "advance", "hold", "rollback"


@dataclass
class LiveStats:
    """One model version's live numbers over the analysed window."""

    version: str
    requests: int
    labelled: int
    accuracy: float | None
    error_rate: float | None
    latency_p95_ms: float | None


@dataclass
class CanaryRule:
    """One rule of the analysis: whether it passed, on what measurement, against what."""

    name: str
    passed: bool
    measured: float | None
    threshold: float | None
    detail: str


@dataclass
class CanaryAnalysis(JsonResult):
    """The decision on a canary at its current traffic step."""

    decision: str
    current_percent: int
    next_percent: int
    champion: LiveStats
    canary: LiveStats
    reasons: list[str]
    rules: list[CanaryRule] = field(default_factory=list)
    diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    analysed_at: str = ""

    @property
    def completes(self) -> bool:
        """Whether this analysis moves the canary to 100% (it becomes the champion)."""
        return self.decision == ADVANCE and self.next_percent == 100

    def to_markdown(self) -> str:
        """Render the decision, the per-version numbers and every rule."""
        lines = [f"### Canary analysis: **{self.decision}** "
                 f"({self.current_percent}% → {self.next_percent}%)", ""]
        lines += [f"- {r}" for r in self.reasons]
        lines += ["", "| version | role | requests | labelled | accuracy | error rate | p95 ms |",
                  "|---|---|---|---|---|---|---|"]
        for role, s in (("champion", self.champion), ("canary", self.canary)):
            lines.append(f"| {s.version} | {role} | {s.requests} | {s.labelled} | "
                         f"{_fmt(s.accuracy)} | {_fmt(s.error_rate)} | {_fmt(s.latency_p95_ms)} |")
        lines += ["", "| rule | passed | measured | threshold | detail |", "|---|---|---|---|---|"]
        for r in self.rules:
            lines.append(f"| {r.name} | {'yes' if r.passed else 'no'} | {_fmt(r.measured)} | "
                         f"{_fmt(r.threshold)} | {r.detail} |")
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def since_canary_started(records: pd.DataFrame, canary_version: str) -> pd.DataFrame:
    """The responses served since ``canary_version`` answered its first request.

    A canary is judged on everything both versions served side by side, across runs and
    traffic steps: at 10% a single day rarely holds enough labelled canary responses, and
    late labels keep arriving for earlier days. Rows from before the canary started are
    left out so the champion is measured over the same period. No canary row: no rows.
    """
    if "timestamp" not in records:  # cannot tell when: judge every row given
        return records
    if records.empty or "model_version" not in records:
        return records.iloc[0:0]
    ts = pd.to_datetime(records["timestamp"], utc=True)
    served = ts[records["model_version"] == canary_version]
    if served.empty:
        return records.iloc[0:0]
    return records.loc[ts >= served.min()].reset_index(drop=True)


def live_stats(records: pd.DataFrame, version: str) -> LiveStats:
    """Requests, labelled accuracy, error rate and p95 latency of one version."""
    missing = [c for c in ("model_version", "prediction", "label") if c not in records]
    if missing:  # e.g. batch drops that were never served: no live numbers for anyone
        return LiveStats(version, 0, 0, None, None, None)
    rows = records.loc[records["model_version"].astype(str) == version]
    labelled = rows.loc[rows["label"].notna() & rows["prediction"].notna()]
    accuracy = (
        float((labelled["prediction"].astype(str) == labelled["label"].astype(str)).mean())
        if len(labelled) else None
    )
    error_rate = float(rows["error"].astype(bool).mean()) if "error" in rows and len(rows) else None
    latency = (
        float(np.percentile(rows["latency_ms"].dropna(), 95))
        if "latency_ms" in rows and rows["latency_ms"].notna().any() else None
    )
    return LiveStats(version, len(rows), len(labelled), accuracy, error_rate, latency)


def next_step(current: int, steps: tuple[int, ...]) -> int:
    """The traffic step after ``current`` (100 stays 100)."""
    later = [s for s in steps if s > current]
    return later[0] if later else 100


def _quality_rule(
    champ: LiveStats, canary: LiveStats, config: CanaryConfig
) -> tuple[CanaryRule, str, float | None, float | None, float | None]:
    assert champ.accuracy is not None and canary.accuracy is not None
    diff = canary.accuracy - champ.accuracy
    se = math.sqrt(
        champ.accuracy * (1 - champ.accuracy) / champ.labelled
        + canary.accuracy * (1 - canary.accuracy) / canary.labelled
    )
    low, high = diff - config.z * se, diff + config.z * se
    interval = (f"accuracy {canary.accuracy:.3f} (canary, n={canary.labelled}) vs "
                f"{champ.accuracy:.3f} (champion, n={champ.labelled}): difference {diff:+.3f}, "
                f"interval [{low:+.3f}, {high:+.3f}]")
    if high < -config.tolerance:
        rule = CanaryRule("quality", False, diff, -config.tolerance,
                          f"{interval}; clearly worse: upper bound < -{config.tolerance:g}")
        return rule, ROLLBACK, diff, low, high
    if low >= -config.tolerance:
        rule = CanaryRule("quality", True, diff, -config.tolerance,
                          f"{interval}; not worse: lower bound >= -{config.tolerance:g}")
        return rule, ADVANCE, diff, low, high
    rule = CanaryRule("quality", False, diff, -config.tolerance,
                      f"{interval}; inconclusive: the interval straddles -{config.tolerance:g}")
    return rule, HOLD, diff, low, high


def analyse_canary(
    records: pd.DataFrame,
    *,
    champion_version: str,
    canary_version: str,
    current_percent: int,
    config: CanaryConfig,
    now: dt.datetime | None = None,
) -> CanaryAnalysis:
    """Decide whether the canary advances to the next step, holds, or is rolled back.

    Args:
        records: Logged responses with ``model_version``, ``prediction`` and ``label``
            (labels joined by ingest); optional ``error`` (bool) and ``latency_ms``.
        champion_version: The stable version serving the rest of the traffic.
        canary_version: The version under test.
        current_percent: The canary's current canaryTrafficPercent.
        config: Steps and thresholds.
        now: Time stamp of the analysis (default: now, UTC).

    Returns:
        ``rollback`` when the canary is clearly worse on quality, error rate or latency;
        ``hold`` while either version has fewer than ``min_labelled`` labelled responses or
        the quality interval is inconclusive; ``advance`` otherwise (to the next step; the
        step to 100 completes the rollout).
    """
    stamp = (now or dt.datetime.now(dt.UTC)).isoformat()
    champ, canary = live_stats(records, champion_version), live_stats(records, canary_version)
    rules: list[CanaryRule] = []
    hard_fail: list[str] = []
    if champ.error_rate is not None and canary.error_rate is not None:
        rise = canary.error_rate - champ.error_rate
        ok = rise <= config.max_error_rate_increase
        rules.append(CanaryRule("error_rate", ok, rise, config.max_error_rate_increase,
                                f"error rate {canary.error_rate:.3%} vs {champ.error_rate:.3%}: "
                                f"increase {rise:+.3%}"))
        if not ok:
            hard_fail.append(rules[-1].detail)
    if champ.latency_p95_ms is not None and canary.latency_p95_ms is not None:
        limit = champ.latency_p95_ms * config.latency_ratio
        ok = canary.latency_p95_ms <= limit
        rules.append(CanaryRule("latency", ok, canary.latency_p95_ms, limit,
                                f"p95 {canary.latency_p95_ms:.2f} ms vs allowed {limit:.2f} ms"))
        if not ok:
            hard_fail.append(rules[-1].detail)
    enough = min(champ.labelled, canary.labelled) >= config.min_labelled
    rules.append(CanaryRule(
        "sample_size", enough, float(min(champ.labelled, canary.labelled)),
        float(config.min_labelled),
        f"labelled responses: canary {canary.labelled}, champion {champ.labelled} "
        f"(each needs >= {config.min_labelled})",
    ))
    diff = low = high = None
    if hard_fail:
        decision, reasons = ROLLBACK, hard_fail
    elif not enough:
        decision, reasons = HOLD, [rules[-1].detail + ": too few to judge yet"]
    else:
        rule, decision, diff, low, high = _quality_rule(champ, canary, config)
        rules.append(rule)
        reasons = [rule.detail]
    target = {ADVANCE: next_step(current_percent, config.steps), HOLD: current_percent,
              ROLLBACK: 0}[decision]
    return CanaryAnalysis(decision, current_percent, target, champ, canary, reasons, rules,
                          diff, low, high, stamp)
