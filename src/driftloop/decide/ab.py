"""Judge an A/B test on live traffic: per-variant metrics, a sequential test, a winner.

Inputs are the logged responses (records with ``timestamp``, ``prediction``, the joined
feedback ``label``, and the serving side's :data:`~driftloop.decide.ab_assign.VARIANT_COLUMN`
/ :data:`~driftloop.decide.ab_assign.KEYED_COLUMN`; optional ``error``, ``latency_ms`` and
the user key) and the test (:class:`~driftloop.decide.ab_assign.ABTest`).

What is compared: accuracy on labelled **keyed** responses since the test started. Unkeyed
responses (random split, a user may see both variants) are counted apart and never enter the
test. Each non-control variant is compared with the control (the first variant):

* **Estimate**: the Mantel-Haenszel risk difference within time buckets
  (``ABConfig.stratum_hours``), as the canary does, so a traffic mix that changes over the
  test (weekday/weekend, a topic change) cannot manufacture a difference (Simpson's paradox).
* **Variance**: per user (cluster-robust sandwich over the estimate's influence function):
  assignment is per user, and one user's responses are not independent (an easy user is
  easy for both variants), so the per-response binomial variance would understate it and
  inflate the false-winner rate. The binomial Agresti-Caffo variance of
  :func:`~driftloop.decide.sequential.stratified_difference` is a floor.
* **Test**: the anytime-valid confidence sequence of :mod:`driftloop.decide.sequential` at
  ``alpha / (k - 1)`` per comparison (Bonferroni over the ``k - 1`` comparisons), tuned to the
  planned information of the power calculation, so every run may look at the cumulative data
  and P(any false winner) <= ``alpha``.
* **Power calculation**: the planned information is where a difference of ``mde`` has its
  interval exclude 0 with probability ``power``
  (:func:`~driftloop.decide.sequential.planned_information`); ``labels_needed`` converts it
  to labelled responses per variant at the observed variance (before any data, at
  :data:`PLANNING_ACCURACY` and the test's split).

The stop rule, in order (``[low, high]`` the interval of variant minus control):

1. fewer than ``min_labelled`` labelled keyed responses on a variant: **continue**;
2. a variant with ``low > min_effect`` that passes the guardrails (error rate, latency): it
   **wins** (the best such by estimate); every variant with ``high < -min_effect``: the
   control wins;
3. every interval inside ``(-mde, +mde)``, or the planned information reached: **stop, no
   winner** (futility: no difference as large as the MDE);
4. ``max_days`` since the start: **stop, no winner** (max duration);
5. otherwise **continue** (``labels_needed`` says how many labels decide).

A winner is then promoted through the normal rollout (``ABConfig.auto_promote``) or
reported for approval: :attr:`ABAnalysis.action`.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from driftloop.config import ABConfig
from driftloop.decide.ab_assign import (
    KEY_COLUMN,
    KEYED_COLUMN,
    TEST_COLUMN,
    VARIANT_COLUMN,
    ABTest,
)
from driftloop.decide.sequential import (
    StratifiedDifference,
    confidence_sequence,
    planned_information,
    stratified_difference,
)
from driftloop.serde import JsonResult

CONTINUE, WINNER, NO_WINNER = "continue", "winner", "no_winner"
METHOD = ("mantel-haenszel risk difference per time bucket, per-user (cluster-robust) "
          "variance, normal-mixture confidence sequence")
#: Accuracy assumed for ``labels_needed`` before anything is measured.
PLANNING_ACCURACY = 0.8


@dataclass
class VariantStats:
    """One variant's live numbers since the test started.

    Attributes:
        name: The variant.
        target: What it serves (a version or an alias).
        versions: Model versions seen in its responses.
        requests: Keyed responses.
        unkeyed: Responses without a key (random split; not in the test).
        users: Distinct keys.
        labelled: Labelled keyed responses.
        accuracy: On those (None: none).
        macro_f1: Macro-F1 over the classes seen in labels or predictions (None: none).
        error_rate: Failed keyed requests / keyed requests (None: no ``error`` column).
        latency_p95_ms: p95 of ``latency_ms`` (None: not logged).
    """

    name: str
    target: str
    versions: list[str]
    requests: int
    unkeyed: int
    users: int
    labelled: int
    accuracy: float | None
    macro_f1: float | None
    error_rate: float | None
    latency_p95_ms: float | None


@dataclass
class Comparison:
    """One variant against the control: the estimate, its interval and what it rests on."""

    variant: str
    control: str
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    alpha: float
    strata: int
    labelled_variant: int
    labelled_control: int
    information: float
    planned_information: float
    labels_needed: int


@dataclass
class ABRule:
    """One rule of the analysis: whether it passed, on what measurement, against what."""

    name: str
    passed: bool
    measured: float | None
    threshold: float | None
    detail: str


@dataclass
class ABAnalysis(JsonResult):
    """The decision on an A/B test at one look.

    Attributes:
        test_id: The test.
        model_name: Its model.
        decision: ``continue``, ``winner`` or ``no_winner``.
        stop: Whether the test stops (a winner, futility or the max duration).
        winner: The winning variant (None: none).
        winner_target: What it serves.
        action: ``none``, ``promote`` (auto-promotion) or ``needs_approval``.
        variants: Every variant's live numbers.
        comparisons: Every variant against the control.
        rules: Every rule with its measurement and threshold.
        reasons: Why, in words.
        mixed_users: Keys seen in more than one variant (0 when assignment is sticky).
        days: Days since the test started.
        alpha: Error level over all looks and comparisons.
        power: Power of the plan against ``mde``.
        mde: Minimum detectable effect.
        labels_needed: Labelled responses per variant the plan needs.
        analysed_at: When (ISO-8601 UTC).
        method: How it was judged.
    """

    test_id: str
    model_name: str
    decision: str
    stop: bool
    winner: str | None
    winner_target: str | None
    action: str
    variants: list[VariantStats]
    comparisons: list[Comparison]
    rules: list[ABRule] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    mixed_users: int = 0
    days: float = 0.0
    alpha: float = 0.05
    power: float = 0.9
    mde: float = 0.02
    labels_needed: int = 0
    analysed_at: str = ""
    method: str = METHOD

    def to_markdown(self) -> str:
        """The decision, every variant's numbers and every rule."""
        win = f", winner **{self.winner}** ({self.winner_target})" if self.winner else ""
        lines = [f"### A/B test `{self.test_id}`: **{self.decision}**{win}, action "
                 f"{self.action}", ""]
        lines += [f"- {r}" for r in self.reasons]
        lines.append(f"- plan: alpha {self.alpha:g}, power {self.power:.0%} against "
                     f"{self.mde:+.3f}: {self.labels_needed} labelled responses per variant; "
                     f"{self.method}")
        lines += ["", "| variant | target | users | requests | unkeyed | labelled | accuracy "
                  "| macro-F1 | error rate | p95 ms |", "|---|---|---|---|---|---|---|---|---|---|"]
        for s in self.variants:
            lines.append(f"| {s.name} | {s.target} | {s.users} | {s.requests} | {s.unkeyed} "
                         f"| {s.labelled} | {_fmt(s.accuracy)} | {_fmt(s.macro_f1)} | "
                         f"{_fmt(s.error_rate)} | {_fmt(s.latency_p95_ms)} |")
        lines += ["", "| rule | passed | measured | threshold | detail |", "|---|---|---|---|---|"]
        lines += [f"| {r.name} | {'yes' if r.passed else 'no'} | {_fmt(r.measured)} | "
                  f"{_fmt(r.threshold)} | {r.detail} |" for r in self.rules]
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _truthy(col: pd.Series) -> pd.Series:
    if col.dtype == object:
        return col.map(lambda v: str(v).strip().lower() in ("1", "true", "yes")
                       if isinstance(v, str) else bool(v) if v is not None and v == v else False)
    return col.fillna(False).astype(bool)


def test_rows(records: pd.DataFrame, test: ABTest) -> pd.DataFrame:
    """The responses of ``test``: its variants, since it started, of this test only.

    Adds the columns ``_variant``, ``_keyed``, ``_user`` (the key, else the response id:
    one response = one cluster) and ``_correct`` (None when unlabelled).
    """
    names = [v.name for v in test.variants]
    if records.empty or VARIANT_COLUMN not in records:
        return pd.DataFrame(columns=["_variant", "_keyed", "_user", "_correct"])
    rows = records.loc[records[VARIANT_COLUMN].astype(str).isin(names)]
    if TEST_COLUMN in rows:
        rows = rows.loc[rows[TEST_COLUMN].isna() | (rows[TEST_COLUMN].astype(str) == test.test_id)]
    if test.started_at and "timestamp" in rows:
        ts = pd.to_datetime(rows["timestamp"], utc=True)
        rows = rows.loc[ts >= pd.Timestamp(test.started_at)]
    rows = rows.copy()
    rows["_variant"] = rows[VARIANT_COLUMN].astype(str)
    rows["_keyed"] = (_truthy(rows[KEYED_COLUMN]) if KEYED_COLUMN in rows
                      else pd.Series(True, index=rows.index))
    key = next((c for c in (KEY_COLUMN, test.key_field) if c in rows), None)
    fallback = (rows["id"].astype(str) if "id" in rows
                else pd.Series(rows.index.astype(str), index=rows.index))
    rows["_user"] = (rows[key].where(rows[key].notna(), None).astype(object)
                     if key else None)
    rows["_user"] = rows["_user"].where(rows["_user"].notna(), "response:" + fallback)
    rows["_user"] = rows["_user"].astype(str)
    if "label" in rows and "prediction" in rows:
        known = rows["label"].notna() & rows["prediction"].notna()
        rows["_correct"] = np.where(known, rows["prediction"].astype(str)
                                    == rows["label"].astype(str), np.nan)
    else:
        rows["_correct"] = np.nan
    return rows.reset_index(drop=True)


def _macro_f1(rows: pd.DataFrame) -> float | None:
    lab = rows.loc[rows["_correct"].notna()]
    if lab.empty:
        return None
    y, p = lab["label"].astype(str).to_numpy(), lab["prediction"].astype(str).to_numpy()
    scores = []
    for c in np.union1d(y, p):
        tp = float(np.sum((y == c) & (p == c)))
        denom = float(np.sum(y == c) + np.sum(p == c))
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def variant_stats(rows: pd.DataFrame, test: ABTest) -> list[VariantStats]:
    """Every variant's live numbers from :func:`test_rows` output."""
    out = []
    for v in test.variants:
        mine = rows.loc[rows["_variant"] == v.name]
        keyed = mine.loc[mine["_keyed"]]
        lab = keyed.loc[keyed["_correct"].notna()]
        error_rate = None
        if "error" in keyed and len(keyed):
            err = keyed["error"]
            error_rate = float(_truthy(err.where(err.notna(), False)).mean())
        latency = (float(np.percentile(keyed["latency_ms"].dropna(), 95))
                   if "latency_ms" in keyed and keyed["latency_ms"].notna().any() else None)
        versions = (sorted(keyed["model_version"].dropna().astype(str).unique())
                    if "model_version" in keyed else [])
        out.append(VariantStats(
            v.name, v.target, versions, len(keyed), len(mine) - len(keyed),
            int(keyed["_user"].nunique()), len(lab),
            float(lab["_correct"].mean()) if len(lab) else None,
            _macro_f1(keyed), error_rate, latency))
    return out


def _strata(rows: pd.DataFrame, stratum_hours: float) -> np.ndarray:
    if "timestamp" not in rows:
        return np.zeros(len(rows), dtype=np.int64)
    since = pd.to_datetime(rows["timestamp"], utc=True) - pd.Timestamp(0, tz="UTC")
    hours = (since / pd.Timedelta(hours=1)).to_numpy(dtype=float)
    return np.floor(hours / stratum_hours).astype(np.int64)


def clustered_difference(correct: np.ndarray, treated: np.ndarray, stratum: np.ndarray,
                         user: np.ndarray,
                         labelled: np.ndarray | None = None) -> StratifiedDifference:
    """Stratified (Mantel-Haenszel) difference treated - control with a per-user variance.

    The estimate is that of :func:`~driftloop.decide.sequential.stratified_difference`. Its
    influence function gives each response ``i`` of arm ``a`` in stratum ``h`` the term
    ``±(w_h / W) (c_i - p_ah) / n_ah``; summed per user (the unit of assignment) and squared,
    with the small-sample factor ``G / (G - 1)`` over ``G`` users, it is the sandwich
    variance of the estimate. The Agresti-Caffo binomial variance is a floor, so a cluster
    structure can only widen the interval.

    Args:
        correct: 1/0 per labelled response (or correct responses per row, with
            ``labelled``).
        treated: True for the variant, False for the control.
        stratum: Time bucket per response.
        user: Cluster (user key) per response.
        labelled: Labelled responses per row (default 1 each: one row per response); rows
            may aggregate one user's responses in one stratum (the benchmark's simulation).

    Returns:
        The difference with the larger of the two variances.
    """
    ones = np.ones(len(correct)) if labelled is None else np.asarray(labelled, dtype=float)
    frame = pd.DataFrame({"c": correct.astype(float), "n": ones, "t": treated.astype(bool),
                          "h": stratum, "u": user})
    g = frame.groupby(["h", "t"])[["c", "n"]].sum().rename(
        columns={"c": "sum", "n": "count"}).unstack("t", fill_value=0)

    def col(stat: str, flag: bool) -> pd.Series:
        return g[(stat, flag)] if (stat, flag) in g else pd.Series(0.0, index=g.index)

    x1, n1, x2, n2 = col("sum", False), col("count", False), col("sum", True), col("count", True)
    base = stratified_difference(x1.to_numpy(), n1.to_numpy(), x2.to_numpy(), n2.to_numpy())
    if base.strata == 0:
        return base
    both = (n1 > 0) & (n2 > 0)
    w = (n1 * n2 / (n1 + n2)).where(both, 0.0)
    total = float(w.sum())
    p1, p2 = (x1 / n1.where(n1 > 0)).fillna(0), (x2 / n2.where(n2 > 0)).fillna(0)
    h = frame["h"].to_numpy()
    t = frame["t"].to_numpy()
    wh = w.reindex(h).to_numpy() / total
    p = np.where(t, p2.reindex(h).to_numpy(), p1.reindex(h).to_numpy())
    n = np.where(t, n2.reindex(h).to_numpy(), n1.reindex(h).to_numpy())
    infl = np.where(n > 0, wh * (frame["c"].to_numpy() - p * frame["n"].to_numpy())
                    / np.maximum(n, 1), 0.0)
    infl = np.where(t, infl, -infl)
    per_user = pd.Series(infl).groupby(frame["u"].to_numpy()).sum().to_numpy()
    groups = len(per_user)
    robust = float(np.sum(per_user ** 2)) * (groups / (groups - 1) if groups > 1 else 1.0)
    return StratifiedDifference(base.diff, max(robust, base.variance), base.strata,
                                base.n1, base.n2)


def _labels_needed(est: StratifiedDifference, planned: float, share: float) -> int:
    """Labelled responses of the larger arm at which the planned information is reached."""
    if est.information > 0 and est.n2 > 0 and est.n1 > 0:
        # information grows ~linearly in labels at the current mix
        return math.ceil(max(est.n1, est.n2) * planned / est.information)
    # before any data: variance pq (1/n1 + 1/n2) = pq / (n s (1 - s)) over n labels in all
    s = min(max(share, 1e-3), 1 - 1e-3)
    pq = PLANNING_ACCURACY * (1 - PLANNING_ACCURACY)
    return math.ceil(planned * pq / (s * (1 - s)) * max(s, 1 - s))


def _guardrails(stats: VariantStats, control: VariantStats, config: ABConfig) -> list[ABRule]:
    rules = []
    if stats.error_rate is not None and control.error_rate is not None:
        rise = stats.error_rate - control.error_rate
        enough = min(stats.requests, control.requests) >= config.min_requests
        ok = True
        text = (f"{stats.name}: error rate {stats.error_rate:.3%} vs control "
                f"{control.error_rate:.3%} ({rise:+.3%}, allowed +"
                f"{config.max_error_rate_increase:.3%})")
        if enough:
            est = stratified_difference([control.error_rate * control.requests],
                                        [control.requests],
                                        [stats.error_rate * stats.requests], [stats.requests])
            planned = planned_information(max(config.max_error_rate_increase, 1e-3),
                                          config.alpha, config.power)
            low, _ = confidence_sequence(est, config.alpha, planned)
            ok = not low > config.max_error_rate_increase
            text += f", sequence lower bound {low:+.3%}"
        else:
            text += f"; too few requests (each needs >= {config.min_requests})"
        rules.append(ABRule(f"error_rate[{stats.name}]", ok, rise,
                            config.max_error_rate_increase, text))
    if stats.latency_p95_ms is not None and control.latency_p95_ms is not None:
        limit = control.latency_p95_ms * config.latency_ratio
        enough = min(stats.requests, control.requests) >= config.min_requests
        ok = not enough or stats.latency_p95_ms <= limit
        rules.append(ABRule(f"latency[{stats.name}]", ok, stats.latency_p95_ms, limit,
                            f"{stats.name}: p95 {stats.latency_p95_ms:.2f} ms vs allowed "
                            f"{limit:.2f} ms" + ("" if enough else "; too few requests")))
    return rules


def test_age_days(test: ABTest, now: dt.datetime) -> float:
    """Days since ``test.started_at`` (0 when it has no start time)."""
    if not test.started_at:
        return 0.0
    start = dt.datetime.fromisoformat(test.started_at)
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.UTC)
    return max((now - start).total_seconds() / 86400, 0.0)


def analyse_ab(records: pd.DataFrame, test: ABTest, *, config: ABConfig,
               now: dt.datetime | None = None) -> ABAnalysis:
    """Decide an A/B test at this look: continue, a winner, or stop without one.

    Args:
        records: Logged responses (see the module docstring for the columns).
        test: The test (variants, split, start time).
        config: Thresholds and the plan.
        now: Time of the look (default: now, UTC).

    Returns:
        The analysis with the numbers behind every reason.
    """
    now = now or dt.datetime.now(dt.UTC)
    rows = test_rows(records, test)
    stats = variant_stats(rows, test)
    control = test.variants[0]
    k = len(test.variants) - 1
    alpha_each = config.alpha / k
    planned = planned_information(config.mde, alpha_each, config.power)
    keyed_lab = rows.loc[rows["_keyed"] & rows["_correct"].notna()]
    strata = _strata(keyed_lab, config.stratum_hours)
    comparisons: list[Comparison] = []
    rules: list[ABRule] = []
    reasons: list[str] = []
    keyed = rows.loc[rows["_keyed"]]
    mixed = int((keyed.groupby("_user")["_variant"].nunique() > 1).sum()) if len(keyed) else 0
    if mixed:
        reasons.append(f"{mixed} user(s) saw more than one variant: assignment is not sticky "
                       "for them (their responses still count per variant served)")
    for v in test.variants[1:]:
        pick = keyed_lab["_variant"].isin([control.name, v.name]).to_numpy()
        sub = keyed_lab.loc[pick]
        est = clustered_difference(sub["_correct"].to_numpy(dtype=float),
                                   (sub["_variant"] == v.name).to_numpy(), strata[pick],
                                   sub["_user"].to_numpy())
        low, high = confidence_sequence(est, alpha_each, planned)
        share = v.weight / (v.weight + control.weight)
        comparisons.append(Comparison(
            v.name, control.name, _none(est.diff), _none(low), _none(high), alpha_each,
            est.strata, est.n2, est.n1, est.information, planned,
            _labels_needed(est, planned, share)))
    needed = max(c.labels_needed for c in comparisons)
    by_name = {s.name: s for s in stats}
    blocked = set()
    for s in stats[1:]:
        for rule in _guardrails(s, stats[0], config):
            rules.append(rule)
            if not rule.passed:
                blocked.add(s.name)
    fewest = min(s.labelled for s in stats)
    size_rule = ABRule("sample_size", fewest >= config.min_labelled, float(fewest),
                        float(config.min_labelled),
                        "labelled keyed responses: " + ", ".join(
                            f"{s.name} {s.labelled}" for s in stats)
                        + f" (each needs >= {config.min_labelled}; unkeyed "
                          f"{sum(s.unkeyed for s in stats)} counted apart)")
    rules.append(size_rule)
    for c in comparisons:
        text = (f"{c.variant} - {c.control}: accuracy difference {_fmt(c.diff)} over "
                f"{c.strata} period(s), {1 - c.alpha:.1%} confidence sequence "
                f"[{_fmt(c.ci_low)}, {_fmt(c.ci_high)}]")
        judged = c.ci_low is not None and c.ci_high is not None
        rules.append(ABRule(f"effect[{c.variant}]", judged and (
            c.ci_low > config.min_effect or c.ci_high < -config.min_effect),  # type: ignore[operator]
            c.diff, config.min_effect, text))
    days = test_age_days(test, now)
    decision, winner = CONTINUE, None
    if fewest < config.min_labelled or any(c.ci_low is None for c in comparisons):
        reasons.append(size_rule.detail + ": too few to judge yet")
    else:
        better = [c for c in comparisons if c.ci_low > config.min_effect  # type: ignore[operator]
                  and c.variant not in blocked]
        if better:
            best = max(better, key=lambda c: c.diff or 0.0)
            decision, winner = WINNER, best.variant
            reasons.append(f"{best.variant} wins: {_effect(best)} lies above "
                           f"{config.min_effect:+g}")
        elif all(c.ci_high < -config.min_effect for c in comparisons):  # type: ignore[operator]
            decision, winner = WINNER, control.name
            reasons.append(f"{control.name} (control) wins: every variant's interval lies "
                           f"below {-config.min_effect:+g} (" + "; ".join(
                               _effect(c) for c in comparisons) + ")")
        elif all(-config.mde < c.ci_low and c.ci_high < config.mde  # type: ignore[operator]
                 for c in comparisons):
            decision = NO_WINNER
            reasons.append(f"futility: every interval lies inside (-{config.mde:g}, "
                           f"+{config.mde:g}): no difference as large as the MDE ("
                           + "; ".join(_effect(c) for c in comparisons) + ")")
        elif all(c.information >= c.planned_information for c in comparisons):
            decision = NO_WINNER
            reasons.append(f"planned sample reached ({needed} labelled per variant) without "
                           f"a winner: a difference of {config.mde:g} would have been found "
                           f"with {config.power:.0%} power")
        for name in sorted(blocked):
            reasons.append(f"{name} cannot win: a guardrail failed")
    if decision == CONTINUE and days >= config.max_days:
        decision = NO_WINNER
        reasons.append(f"max duration: {days:.1f} days >= {config.max_days:g} (ab.max_days) "
                       "without a winner")
    elif decision == CONTINUE and fewest >= config.min_labelled:
        reasons.append("inconclusive: " + "; ".join(_effect(c) for c in comparisons)
                       + f"; about {needed} labelled responses per variant decide")
    rules.append(ABRule("max_duration", days < config.max_days, days, config.max_days,
                        f"{days:.1f} days since {test.started_at or 'start'}"))
    action = "none"
    if winner is not None:
        action = "promote" if config.auto_promote else "needs_approval"
    return ABAnalysis(
        test.test_id, test.model_name, decision, decision != CONTINUE, winner,
        by_name[winner].target if winner else None, action, stats, comparisons, rules,
        reasons, mixed, days, config.alpha, config.power, config.mde, needed,
        now.isoformat(), METHOD)


def _effect(c: Comparison) -> str:
    return (f"{c.variant} - {c.control} {_fmt(c.diff)} [{_fmt(c.ci_low)}, "
            f"{_fmt(c.ci_high)}]")
