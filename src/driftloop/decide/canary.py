"""Judge a canary on live traffic: advance, hold or roll back, with the numbers behind it.

Inputs are the logged responses (records with ``timestamp``, ``model_version``,
``prediction``, joined with feedback labels by ingest) and, optionally, per-version request,
error and latency counts from the serving side (:class:`ServingStats`, e.g. Prometheus).

Quality is accuracy on labelled responses, compared **within the same time buckets**
(``CanaryConfig.stratum_hours``, calendar days by default): the canary serves 10% one day
and 50% later, so pooling every response would compare the canary's mostly-late traffic
with the champion's mostly-early traffic (Simpson's paradox). The per-bucket differences
are combined as a Mantel-Haenszel risk difference and judged with an anytime-valid
confidence sequence (:mod:`driftloop.decide.sequential`): every run re-checks the cumulative data
and the error rate stays ``alpha``.

The quality rule (:func:`quality_decision`), with ``[low, high]`` the CS of canary minus
champion accuracy, ``tol`` the tolerance and the label budget the information at which a
canary worse by ``tol`` has its upper bound below 0 with probability ``power``:

1. fewer than ``min_labelled`` labels on either version: **hold**;
2. ``high < 0`` (credibly worse than the champion at all): **rollback**;
3. ``low > +tol`` and ``skip_steps``: **advance to 100** (overwhelming evidence);
4. ``low > -tol`` (credibly not worse by more than the tolerance): **advance**;
5. a step before the last (not credibly worse, ``min_labelled`` labels): **advance** (the
   early steps screen for gross failures, the last step decides);
6. label budget spent, still not credibly worse: **advance** (completes: an inconclusive
   canary at the end of its budget is not worse by ``tol`` with probability ``power``);
7. otherwise **hold** (``labels_needed`` says how many canary labels the budget takes);
8. the final look, ``max_days`` after the canary's first response (a budget that the label
   rate cannot fill in time): instead of a hold, **rollback** when the canary still has too
   few labels, or when this one look's fixed-sample interval (``diff + z se < 0``, z at
   ``alpha / 2``) shows it worse; else **advance to 100** (the policy: an inconclusive
   canary that is not shown worse completes). An equal canary is rolled back there with
   probability <= ``alpha / 2``; the power against one worse by ``tol`` depends on the
   labels by then (``benchmarks/canary_power.py``).

Error rate: with ``min_requests`` on both versions, rollback when the CS lower bound of the
error-rate increase exceeds ``max_error_rate_increase`` (a missing ``error`` value is not an
error). Latency: with ``min_requests`` on both, rollback when the canary's p95 exceeds
``latency_ratio`` times the champion's.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from driftloop.config import CanaryConfig
from driftloop.decide.sequential import (
    STANDARD_NORMAL,
    StratifiedDifference,
    confidence_sequence,
    planned_information,
    stratified_difference,
)
from driftloop.serde import JsonResult

if TYPE_CHECKING:  # records arrive as frames; the promote task's types need no pandas
    import pandas as pd

ADVANCE, HOLD, ROLLBACK = "advance", "hold", "rollback"
#: ``CanaryAnalysis.method`` of the stratified, anytime-valid rule.
METHOD = "mantel-haenszel risk difference, normal-mixture confidence sequence"
#: Accuracy assumed for ``labels_needed`` before anything can be measured.
PLANNING_ACCURACY = 0.9


@dataclass
class ServingStats:
    """One model version's serving counts from outside the logged records (e.g. Prometheus).

    Attributes:
        requests: Requests served over the analysed window.
        errors: Of those, how many failed.
        latency_p95_ms: p95 latency in milliseconds (None: not measured).
    """

    requests: int
    errors: int
    latency_p95_ms: float | None = None


@dataclass
class LiveStats:
    """One model version's live numbers over the analysed window."""

    version: str
    requests: int
    labelled: int
    accuracy: float | None
    error_rate: float | None
    latency_p95_ms: float | None
    errors: int | None = None


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
    """The decision on a canary at its current traffic step.

    Attributes:
        decision: ``advance``, ``hold`` or ``rollback``.
        current_percent: The canary's traffic share when analysed.
        next_percent: Its share after the decision (100 completes, 0 is a rollback; an
            overwhelming result may skip steps).
        champion: The champion's live numbers.
        canary: The canary's live numbers.
        reasons: Why, in words.
        rules: Every rule with its measurement and threshold.
        diff: Stratified canary-minus-champion accuracy (None: not judged).
        ci_low: Lower bound of its confidence sequence.
        ci_high: Upper bound of its confidence sequence.
        analysed_at: When (ISO-8601 UTC).
        labels_needed: Canary labels at which the label budget is spent and the canary is
            decided for sure (at the current traffic split; None in analyses from before
            the sequential rule).
        method: How quality was judged ("" in analyses from before the sequential rule).
    """

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
    labels_needed: int | None = None
    method: str = ""

    @property
    def completes(self) -> bool:
        """Whether this analysis moves the canary to 100% (it becomes the champion)."""
        return self.decision == ADVANCE and self.next_percent == 100

    def to_markdown(self) -> str:
        """Render the decision, the per-version numbers and every rule."""
        lines = [f"### Canary analysis: **{self.decision}** "
                 f"({self.current_percent}% → {self.next_percent}%)", ""]
        lines += [f"- {r}" for r in self.reasons]
        if self.labels_needed is not None:
            lines.append(f"- label budget: {self.labels_needed} labelled canary responses "
                         f"(has {self.canary.labelled}); {self.method}")
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


def canary_age_days(records: pd.DataFrame, canary_version: str,
                    now: dt.datetime | None) -> float:
    """Days from the canary's first logged response to ``now`` (0: none, or no time)."""
    import pandas as pd

    if now is None or records.empty or "timestamp" not in records \
            or "model_version" not in records:
        return 0.0
    ts = pd.to_datetime(records["timestamp"], utc=True)[records["model_version"]
                                                       == canary_version]
    if ts.empty:
        return 0.0
    return (pd.Timestamp(now) - ts.min()).total_seconds() / 86400


def since_canary_started(records: pd.DataFrame, canary_version: str) -> pd.DataFrame:
    """The responses served since ``canary_version`` answered its first request.

    A canary is judged on everything both versions served side by side, across runs and
    traffic steps: at 10% a single day rarely holds enough labelled canary responses, and
    late labels keep arriving for earlier days. Rows from before the canary started are
    left out so the champion is measured over the same period. No canary row: no rows.
    """
    import pandas as pd

    if "timestamp" not in records:  # cannot tell when: judge every row given
        return records
    if records.empty or "model_version" not in records:
        return records.iloc[0:0]
    ts = pd.to_datetime(records["timestamp"], utc=True)
    served = ts[records["model_version"] == canary_version]
    if served.empty:
        return records.iloc[0:0]
    return records.loc[ts >= served.min()].reset_index(drop=True)


def _errors(rows: pd.DataFrame) -> int | None:
    """Failed requests among ``rows``: a missing ``error`` value (NaN/None) is no error."""
    if "error" not in rows:
        return None
    col = rows["error"]
    known = col[col.notna()]
    if known.empty:
        return 0
    if known.dtype == object:
        known = known.map(lambda v: str(v).strip().lower() not in ("", "0", "false", "no")
                          if isinstance(v, str) else bool(v))
    return int(known.astype(bool).sum())


def live_stats(records: pd.DataFrame, version: str,
               serving: ServingStats | None = None) -> LiveStats:
    """Requests, labelled accuracy, error rate and p95 latency of one version.

    Args:
        records: The logged responses (joined labels; optional ``error``, ``latency_ms``).
        version: The model version.
        serving: Counts from the serving side; when given they replace the records'
            request count, error rate and p95 latency (accuracy always comes from records).

    Returns:
        The version's live numbers.
    """
    missing = [c for c in ("model_version", "prediction", "label") if c not in records]
    if missing:  # e.g. batch drops that were never served: no live numbers for anyone
        rows = records.iloc[0:0]
        labelled = rows
        accuracy = None
    else:
        rows = records.loc[records["model_version"].astype(str) == version]
        labelled = rows.loc[rows["label"].notna() & rows["prediction"].notna()]
        accuracy = (
            float((labelled["prediction"].astype(str) == labelled["label"].astype(str)).mean())
            if len(labelled) else None
        )
    if serving is not None:
        rate = serving.errors / serving.requests if serving.requests else None
        return LiveStats(version, int(serving.requests), len(labelled), accuracy, rate,
                         serving.latency_p95_ms, int(serving.errors))
    if missing:
        return LiveStats(version, 0, 0, None, None, None)
    errors = _errors(rows)
    error_rate = errors / len(rows) if errors is not None and len(rows) else None
    latency = (
        float(np.percentile(rows["latency_ms"].dropna(), 95))
        if "latency_ms" in rows and rows["latency_ms"].notna().any() else None
    )
    return LiveStats(version, len(rows), len(labelled), accuracy, error_rate, latency,
                     errors if len(rows) else None)


def next_step(current: int, steps: tuple[int, ...]) -> int:
    """The traffic step after ``current`` (100 stays 100)."""
    later = [s for s in steps if s > current]
    return later[0] if later else 100


def strata_counts(records: pd.DataFrame, champion_version: str, canary_version: str,
                  stratum_hours: float) -> tuple[np.ndarray, ...]:
    """Correct and labelled responses of champion and canary per time bucket.

    Buckets are ``stratum_hours`` wide from the Unix epoch (UTC; 24 = calendar days);
    records without a ``timestamp`` column form one bucket.

    Args:
        records: Logged responses with ``model_version``, ``prediction`` and ``label``.
        champion_version: Version 1.
        canary_version: Version 2.
        stratum_hours: Bucket width in hours.

    Returns:
        ``(x1, n1, x2, n2)``: per-bucket correct and labelled counts of champion and canary.
    """
    import pandas as pd

    empty = np.zeros(0)
    if any(c not in records for c in ("model_version", "prediction", "label")):
        return empty, empty, empty, empty
    rows = records.loc[records["label"].notna() & records["prediction"].notna()]
    version = rows["model_version"].astype(str)
    rows = rows.loc[version.isin([champion_version, canary_version])]
    if rows.empty:
        return empty, empty, empty, empty
    if "timestamp" in rows:
        since_epoch = pd.to_datetime(rows["timestamp"], utc=True) - pd.Timestamp(0, tz="UTC")
        hours = (since_epoch / pd.Timedelta(hours=1)).to_numpy(dtype=float)  # any unit
        bucket = np.floor(hours / stratum_hours).astype(np.int64)
    else:
        bucket = np.zeros(len(rows), dtype=np.int64)
    frame = pd.DataFrame({
        "bucket": bucket,
        "canary": (rows["model_version"].astype(str) == canary_version).to_numpy(),
        "correct": (rows["prediction"].astype(str) == rows["label"].astype(str)).to_numpy(),
    })
    table = frame.groupby(["bucket", "canary"])["correct"].agg(["sum", "count"]).unstack(
        "canary", fill_value=0)
    def col(stat: str, flag: bool) -> np.ndarray:
        key = (stat, flag)
        return table[key].to_numpy(dtype=float) if key in table else np.zeros(len(table))
    return col("sum", False), col("count", False), col("sum", True), col("count", True)


@dataclass(frozen=True)
class QualityDecision:
    """The quality rule's outcome (:func:`quality_decision`).

    Attributes:
        decision: ``advance``, ``hold`` or ``rollback``.
        next_percent: The traffic share after it.
        diff: Stratified canary-minus-champion accuracy (nan: not judged).
        low: CS lower bound (nan: not judged).
        high: CS upper bound (nan: not judged).
        labels_needed: Canary labels at which the label budget is spent.
        detail: In words, with the numbers.
        judged: Whether the CS was computed (False: too few labels).
    """

    decision: str
    next_percent: int
    diff: float
    low: float
    high: float
    labels_needed: int
    detail: str
    judged: bool


def label_budget(config: CanaryConfig) -> float:
    """The planned information (1 / variance of the difference) of a canary's budget.

    A canary worse by ``tolerance`` has its CS upper bound below 0 with probability
    ``power`` at this information (:func:`driftloop.decide.sequential.planned_information`).
    """
    return planned_information(config.tolerance, config.alpha, config.power)


def _labels_needed(est: StratifiedDifference, planned: float, current_percent: int) -> int:
    if est.information > 0 and est.n2 > 0:
        return math.ceil(est.n2 * planned / est.information)
    share = min(max(current_percent, 1), 99) / 100.0
    pq = PLANNING_ACCURACY * (1 - PLANNING_ACCURACY)
    return math.ceil(planned * pq / (1.0 - share))  # n2 with n1 = n2 (1 - share) / share


def quality_decision(x1: np.ndarray, n1: np.ndarray, x2: np.ndarray, n2: np.ndarray, *,
                     current_percent: int, config: CanaryConfig,
                     final: bool = False) -> QualityDecision:
    """The quality rule on per-stratum counts (the numpy core of :func:`analyse_canary`).

    See the module docstring for the rule. ``x*``/``n*`` are correct and labelled
    responses per time bucket of the champion (1) and the canary (2).

    Args:
        x1: Champion's correct responses per stratum.
        n1: Champion's labelled responses per stratum.
        x2: Canary's correct responses per stratum.
        n2: Canary's labelled responses per stratum.
        current_percent: The canary's current traffic share.
        config: Steps and thresholds.
        final: The final look (``max_days`` reached): decide instead of holding.

    Returns:
        The decision with the numbers behind it.
    """
    decided = _quality_decision(x1, n1, x2, n2, current_percent=current_percent,
                                config=config)
    if not final or decided.decision != HOLD:
        return decided
    days = f"{config.max_days:g} days after the canary's first response (canary.max_days)"
    if not decided.judged:
        return replace(decided, decision=ROLLBACK, next_percent=0,
                       detail=f"{decided.detail}; {days}: it cannot be judged, rolled back")
    # One last fixed-sample look: the anytime penalty is for looks that may continue.
    est = stratified_difference(x1, n1, x2, n2)
    z = STANDARD_NORMAL.inv_cdf(1 - config.alpha / 2)
    upper = est.diff + z * math.sqrt(est.variance)
    look = (f"final look {days}: {1 - config.alpha:.0%} fixed-sample upper bound "
            f"{upper:+.3f}")
    if upper < 0:
        return replace(decided, decision=ROLLBACK, next_percent=0,
                       detail=f"{decided.detail}; {look} < 0: worse, rolled back")
    return replace(decided, decision=ADVANCE, next_percent=100,
                   detail=f"{decided.detail}; {look} >= 0: not shown worse, completed")


def _quality_decision(x1: np.ndarray, n1: np.ndarray, x2: np.ndarray, n2: np.ndarray, *,
                      current_percent: int, config: CanaryConfig) -> QualityDecision:
    tol = config.tolerance
    planned = label_budget(config)
    est = stratified_difference(x1, n1, x2, n2)
    needed = _labels_needed(est, planned, current_percent)
    have1, have2 = int(np.sum(n1)), int(np.sum(n2))
    nxt = next_step(current_percent, config.steps)
    nan = math.nan
    if min(have1, have2) < config.min_labelled or est.strata == 0:
        return QualityDecision(HOLD, current_percent, nan, nan, nan, needed,
                               f"labelled responses: canary {have2}, champion {have1} (each "
                               f"needs >= {config.min_labelled}, in the same periods)", False)
    low, high = confidence_sequence(est, config.alpha, planned)
    text = (f"stratified accuracy difference {est.diff:+.3f} over {est.strata} period(s) "
            f"(canary n={est.n2}, champion n={est.n1}), {1 - config.alpha:.0%} confidence "
            f"sequence [{low:+.3f}, {high:+.3f}]")
    spent = est.information >= planned
    if high < 0:
        return QualityDecision(ROLLBACK, 0, est.diff, low, high, needed,
                               f"{text}; clearly worse: upper bound < 0", True)
    if config.skip_steps and low > tol:
        return QualityDecision(ADVANCE, 100, est.diff, low, high, needed,
                               f"{text}; clearly better: lower bound > +{tol:g}, straight to "
                               "100%", True)
    if low > -tol:
        return QualityDecision(ADVANCE, nxt, est.diff, low, high, needed,
                               f"{text}; not worse: lower bound > -{tol:g}", True)
    if nxt < 100:
        return QualityDecision(ADVANCE, nxt, est.diff, low, high, needed,
                               f"{text}; not clearly worse after {have2} canary labels "
                               f"(>= {config.min_labelled}): next step, the last step "
                               "decides", True)
    if spent:
        return QualityDecision(ADVANCE, nxt, est.diff, low, high, needed,
                               f"{text}; label budget spent ({have2} >= {needed} canary "
                               f"labels) and not clearly worse: a canary worse by {tol:g} "
                               f"would have been caught with {config.power:.0%} power", True)
    return QualityDecision(HOLD, current_percent, est.diff, low, high, needed,
                           f"{text}; inconclusive: lower bound <= -{tol:g} and upper bound >= "
                           f"0, about {needed} canary labels decide at this traffic split "
                           f"(has {have2})", True)


def _error_rule(champ: LiveStats, canary: LiveStats, config: CanaryConfig) -> CanaryRule | None:
    if champ.errors is None or canary.errors is None or champ.error_rate is None \
            or canary.error_rate is None:
        return None
    rise = canary.error_rate - champ.error_rate
    limit = config.max_error_rate_increase
    rates = (f"error rate {canary.error_rate:.3%} (canary, {canary.requests} requests) vs "
             f"{champ.error_rate:.3%} (champion, {champ.requests}): increase {rise:+.3%}")
    if min(champ.requests, canary.requests) < config.min_requests:
        return CanaryRule("error_rate", True, rise, limit,
                          f"{rates}; too few requests for a verdict (each needs >= "
                          f"{config.min_requests})")
    # "success" = error: the CS of the error-rate increase, canary minus champion
    est = stratified_difference([champ.errors], [champ.requests], [canary.errors],
                                [canary.requests])
    planned = planned_information(max(limit, 1e-3), config.alpha, config.power)
    low, high = confidence_sequence(est, config.alpha, planned)
    ok = not low > limit
    verdict = (f"clearly above the allowed +{limit:.3%}" if not ok
               else f"not clearly above the allowed +{limit:.3%}")
    return CanaryRule("error_rate", ok, rise, limit,
                      f"{rates}, sequence [{low:+.3%}, {high:+.3%}]: {verdict}")


def _latency_rule(champ: LiveStats, canary: LiveStats,
                  config: CanaryConfig) -> CanaryRule | None:
    if champ.latency_p95_ms is None or canary.latency_p95_ms is None:
        return None
    limit = champ.latency_p95_ms * config.latency_ratio
    text = f"p95 {canary.latency_p95_ms:.2f} ms vs allowed {limit:.2f} ms"
    if min(champ.requests, canary.requests) < config.min_requests:
        return CanaryRule("latency", True, canary.latency_p95_ms, limit,
                          f"{text}; too few requests for a verdict (each needs >= "
                          f"{config.min_requests})")
    ok = canary.latency_p95_ms <= limit
    return CanaryRule("latency", ok, canary.latency_p95_ms, limit, text)


def _none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def analyse_canary(
    records: pd.DataFrame,
    *,
    champion_version: str,
    canary_version: str,
    current_percent: int,
    config: CanaryConfig,
    now: dt.datetime | None = None,
    serving: dict[str, ServingStats] | None = None,
) -> CanaryAnalysis:
    """Decide whether the canary advances (maybe several steps), holds, or is rolled back.

    Args:
        records: Logged responses with ``timestamp``, ``model_version``, ``prediction``
            and ``label`` (labels joined by ingest); optional ``error`` (bool; missing
            values are no error) and ``latency_ms``.
        champion_version: The stable version serving the rest of the traffic.
        canary_version: The version under test.
        current_percent: The canary's current canaryTrafficPercent.
        config: Steps and thresholds.
        now: Time stamp of the analysis (default: now, UTC).
        serving: Per-version request, error and p95 latency counts from the serving side
            (e.g. Prometheus); a version found here uses them instead of the records'
            ``error`` / ``latency_ms`` columns.

    Returns:
        ``rollback`` when the canary is clearly worse on quality (CS upper bound < 0),
        error rate or latency; otherwise the quality rule of :func:`quality_decision`.
    """
    stamp = (now or dt.datetime.now(dt.UTC)).isoformat()
    serving = serving or {}
    champ = live_stats(records, champion_version, serving.get(champion_version))
    canary = live_stats(records, canary_version, serving.get(canary_version))
    rules: list[CanaryRule] = []
    hard_fail: list[str] = []
    for rule in (_error_rule(champ, canary, config), _latency_rule(champ, canary, config)):
        if rule is not None:
            rules.append(rule)
            if not rule.passed:
                hard_fail.append(rule.detail)
    x1, n1, x2, n2 = strata_counts(records, champion_version, canary_version,
                                   config.stratum_hours)
    quality = quality_decision(x1, n1, x2, n2, current_percent=current_percent, config=config,
                               final=canary_age_days(records, canary_version, now)
                               >= config.max_days)
    have = float(min(champ.labelled, canary.labelled))
    if not quality.judged:
        rules.append(CanaryRule("sample_size", False, have, float(config.min_labelled),
                                quality.detail))
    else:
        rules.append(CanaryRule("sample_size", True, have, float(config.min_labelled),
                                f"labelled responses: canary {canary.labelled}, champion "
                                f"{champ.labelled} (each needs >= {config.min_labelled})"))
        rules.append(CanaryRule("quality", quality.decision != ROLLBACK, _none(quality.diff),
                                0.0, quality.detail))
    if hard_fail:
        decision, target, reasons = ROLLBACK, 0, hard_fail
    elif not quality.judged and quality.decision == HOLD:
        decision, target = HOLD, current_percent
        reasons = [quality.detail + ": too few to judge yet"]
    elif not quality.judged:
        decision, target, reasons = quality.decision, quality.next_percent, [quality.detail]
    else:
        decision, target, reasons = quality.decision, quality.next_percent, [quality.detail]
    return CanaryAnalysis(decision, current_percent, target, champ, canary, reasons, rules,
                          _none(quality.diff), _none(quality.low), _none(quality.high), stamp,
                          labels_needed=quality.labels_needed, method=METHOD)
