"""Decide whether to retrain, with the measured value and threshold behind every rule.

The rules and the error each controls:

* ``drift``: the drift report's decision (a test significant after correction AND an
  effect size above its threshold, :mod:`driftloop.decide.drift`). It has memory: after a
  drift-triggered challenger was not promoted, the same evidence does not fire again
  until the drift grew by ``drift_growth``, ``drift_refire_labels`` new labels arrived
  or ``drift_cooldown_days`` passed (the reason says which).
* ``performance``: two looks, each at ``perf_alpha / 2`` (Bonferroni: false alarms per
  run with nothing changed <= ``perf_alpha``), each with a relative accuracy drop of at
  least ``perf_drop`` (so a tiny but significant drop on many labels does not fire):
  the champion's live accuracy on the last ``perf_window_days`` of labelled records
  credibly below its held-out baseline (one-sided two-proportion z-test), or a step up
  in its live error stream (every labelled row it served since its cutoff, in time
  order; :func:`driftloop.decide.changepoint.error_change_point`) -- the second compares live
  with live, so it is not limited by a small validation split.
* ``label_volume``: new labels since the last training are at least ``min_new_labels``
  and would grow the training set by ``label_share`` (1.0: double it), and the last
  doubling paid: the champion's own learning curve (a fit on half its rows against all,
  on the same validation rows) shows a gain of at least ``min_learning_gain``, credible
  at ``label_alpha`` (one-sided sign test; a flat curve fires in at most that share of
  runs). Without a recorded curve the volume alone decides. Once the champion's
  training set is at its cap (``train.max_rows``, a sliding window) more labels no longer
  grow it, and the rule fires only when the new labels show a loss: the champion's
  accuracy on them credibly below its held-out baseline (one-sided, ``label_alpha``).
* ``disagreement``: a credible and material rise of the champion's disagreement rate
  (user label differs from its prediction) in the recent window over its own earlier live
  rate at the same class mix, on an anytime-valid interval
  (:mod:`driftloop.decide.disagreement`, computed by the decide step and passed in).
* ``schedule``: no training for ``max_age_days`` (off by default: a blind retrain).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import pandas as pd

from driftloop.config import TriggerConfig
from driftloop.decide.changepoint import ChangePoint
from driftloop.serde import JsonResult

PERFORMANCE = "performance"


class DriftLike(Protocol):
    """What the trigger needs from a drift report."""

    status: str
    drifted: bool
    reasons: list[str]


@dataclass(frozen=True)
class ChampionInfo:
    """The facts about the current champion the trigger rules look at.

    Attributes:
        version: The champion's version.
        created_at: When it was trained.
        training_cutoff: The newest record or label time of its training data.
        primary_metric: The gate's metric.
        baseline: Its primary metric on held-out rows (its validation split).
        baseline_accuracy: Its accuracy on the same held-out rows (NaN: unknown).
        baseline_n: How many held-out rows ``baseline_accuracy`` comes from.
        n_train: Rows it was trained on.
        learning_gain: Accuracy its fit on all rows gained over a fit on half of them
            (NaN: not measured).
        learning_p: One-sided p-value of that gain.
    """

    version: str
    created_at: dt.datetime
    training_cutoff: dt.datetime
    primary_metric: str
    baseline: float
    baseline_accuracy: float = float("nan")
    baseline_n: int = 0
    n_train: int = 0
    learning_gain: float = float("nan")
    learning_p: float = float("nan")


@dataclass(frozen=True)
class LastAttempt:
    """The latest challenger trained after the champion and not promoted (yet).

    Attributes:
        version: Its version.
        trained_at: When it was trained.
        fired: The rules that triggered it.
        drift_effect: The largest drift effect size of the run that trained it (None:
            drift did not fire).
        new_labels: Labels that arrived since it was trained.
    """

    version: str
    trained_at: dt.datetime
    fired: tuple[str, ...]
    drift_effect: float | None
    new_labels: int


@dataclass
class TriggerRule:
    """One rule's outcome: whether it fired, on what measurement, against what threshold."""

    name: str
    fired: bool
    measured: float | None
    threshold: float | None
    detail: str


@dataclass
class RetrainDecision(JsonResult):
    """Whether to retrain now, and why (or why not)."""

    retrain: bool
    reasons: list[str]
    rules: list[TriggerRule]
    champion_version: str | None
    decided_at: str
    fired: list[str] = field(default_factory=list)
    #: Which retrain it asks for (:func:`retrain_kind`): ``full`` (a search from scratch)
    #: or ``update`` (the champion's settings refit on its rows plus the new labels).
    kind: str = "full"

    def to_markdown(self) -> str:
        """Render the decision and every rule as Markdown."""
        head = f"**Retrain ({self.kind})**" if self.retrain else "**No retrain**"
        lines = [f"### Retrain decision: {head}", ""]
        lines += [f"- {r}" for r in self.reasons]
        lines += ["", "| rule | fired | measured | threshold | detail |", "|---|---|---|---|---|"]
        for r in self.rules:
            m = "" if r.measured is None else f"{r.measured:.4g}"
            t = "" if r.threshold is None else f"{r.threshold:.4g}"
            lines.append(f"| {r.name} | {'yes' if r.fired else 'no'} | {m} | {t} | {r.detail} |")
        return "\n".join(lines) + "\n"


UPDATE_RULES = frozenset({"label_volume"})


def retrain_kind(fired: list[str], *, updates: bool) -> tuple[str, str]:
    """``(kind, reason)`` of a retrain that ``fired`` asks for.

    Only new labels (the label-volume rule alone) ask for an ``update`` when updates are
    on: the data's distribution has not been seen to move, so the champion's settings
    still fit and a refit on more rows is the cheap way to use them. Drift, a performance
    drop, the schedule, a forced run or a first model ask for a ``full`` retrain (a new
    search), and so does everything while updates are off.
    """
    if updates and fired and set(fired) <= UPDATE_RULES:
        return "update", "retrain kind: update (only new labels fired; updates on)"
    why = "updates off" if not updates else "fired: " + ", ".join(fired or ["none"])
    return "full", f"retrain kind: full ({why})"


def count_new_labels(records: pd.DataFrame, cutoff: dt.datetime | None) -> int:
    """Count labelled records whose label arrived after ``cutoff`` (all when ``None``)."""
    if records.empty or "label" not in records:
        return 0
    labelled = records["label"].notna()
    if cutoff is None:
        return int(labelled.sum())
    after = records["label_timestamp"] > pd.Timestamp(cutoff)
    return int((labelled & after).sum())


def performance_test(baseline: float, baseline_n: int, live: float, live_n: int
                     ) -> tuple[float, float]:
    """One-sided test that live accuracy is below the baseline: ``(z, p)``.

    Two independent proportions, unpooled standard error with one pseudo-success and
    one pseudo-failure per side (Agresti-Caffo), so 100 % or 0 % accuracy does not give
    a zero-width interval.
    """
    b = (baseline * baseline_n + 1) / (baseline_n + 2)
    c = (live * live_n + 1) / (live_n + 2)
    se = math.sqrt(b * (1 - b) / (baseline_n + 2) + c * (1 - c) / (live_n + 2))
    z = (c - b) / se
    return z, 0.5 * math.erfc(-z / math.sqrt(2.0))  # Phi(z), exact in both tails; no scipy


def _performance_rule(
    champion: ChampionInfo, current: float | None, samples: int, config: TriggerConfig,
    step: ChangePoint | None, scanned: int,
) -> TriggerRule:
    # Two looks share the error rate: each at half of it when the error stream was scanned.
    alpha = config.perf_alpha / 2 if scanned else config.perf_alpha
    base = _baseline_look(champion, current, samples, alpha, config)
    stepped = _step_look(step, scanned, alpha, config)
    if stepped is None:
        return base
    # the look that fired speaks first; both details are kept
    first, second = (stepped, base) if stepped.fired else (base, stepped)
    return replace(first, detail=f"{first.detail}; {second.detail}")


def _baseline_look(champion: ChampionInfo, current: float | None, samples: int,
                   alpha: float, config: TriggerConfig) -> TriggerRule:
    """Recent live accuracy vs the held-out baseline."""
    window = f"the last {config.perf_window_days:g} days"
    if current is None or samples < config.perf_min_samples:
        return TriggerRule(
            PERFORMANCE, False, float(samples), float(config.perf_min_samples),
            f"{samples} labelled records served in {window}, fewer than the "
            f"{config.perf_min_samples} needed to judge the champion's live accuracy")
    base, base_n = champion.baseline_accuracy, champion.baseline_n
    if not (base > 0) or base_n < 1:  # NaN: trained without a held-out validation split
        return TriggerRule(
            PERFORMANCE, False, current, None,
            f"live accuracy {current:.3f} on {samples} labels of {window}; champion "
            f"{champion.version} has no held-out accuracy to compare with")
    drop = (base - current) / base
    _, p = performance_test(base, base_n, current, samples)
    significant, material = p < alpha, drop >= config.perf_drop
    fired = significant and material
    verdict = ("credibly and materially below" if fired else
               "below but not materially" if significant else "not credibly below")
    return TriggerRule(
        PERFORMANCE, fired, drop, config.perf_drop,
        f"live accuracy {current:.3f} on {samples} labels served in {window} vs held-out "
        f"baseline {base:.3f} (n={base_n}): relative drop {drop:+.1%} "
        f"({'>=' if material else '<'} {config.perf_drop:.0%}), one-sided p={p:.2g} "
        f"({'<' if significant else '>='} {alpha:g}): {verdict}")


def _step_look(step: ChangePoint | None, scanned: int, alpha: float, config: TriggerConfig
               ) -> TriggerRule | None:
    """A step up in the live error stream (None: not scanned)."""
    if not scanned:
        return None
    if step is None:
        return TriggerRule(PERFORMANCE, False, 0.0, config.perf_drop,
                           f"no significant step in the champion's live error rate over "
                           f"{scanned} labelled rows (alpha {alpha:g})")
    before, after = 1 - step.error_before, 1 - step.error_after
    drop = (before - after) / before if before > 0 else 0.0
    material = drop >= config.perf_drop
    return TriggerRule(PERFORMANCE, material, drop, config.perf_drop, (
        f"live accuracy stepped from {before:.3f} to {after:.3f} over its last "
        f"{step.n_after} of {scanned} labelled rows: relative drop {drop:+.1%} "
        f"({'>=' if material else '<'} {config.perf_drop:.0%}), z {step.z:.1f} > "
        f"{step.threshold:.1f} (alpha {alpha:g})"
        + ("" if material else ": not material")))


def _label_volume_rule(champion: ChampionInfo, new_labels: int, cap: int | None,
                       accuracy: float | None, config: TriggerConfig) -> TriggerRule:
    name, n = "label_volume", champion.n_train
    if cap is None or n < cap:
        room = new_labels if cap is None else min(n + new_labels, cap) - n
        need = max(config.min_new_labels, math.ceil(config.label_share * n))
        vol = new_labels >= config.min_new_labels and room >= config.label_share * n
        detail = (f"{new_labels} new labels since the last training cutoff "
                  f"{'>=' if vol else '<'} {need} (at least {config.min_new_labels}, growing "
                  f"the champion's {n} training rows by {config.label_share:g}x"
                  + (f", cap {cap}" if cap is not None else "") + ")")
        gain, p = champion.learning_gain, champion.learning_p
        if not (math.isfinite(gain) and math.isfinite(p)):
            return TriggerRule(name, vol, float(new_labels), float(need),
                               detail + "; no learning curve recorded: volume alone decides")
        big, credible = gain >= config.min_learning_gain, p < config.label_alpha
        pays = big and credible
        curve = (f"its last doubling {'paid' if pays else 'did not credibly pay'}: accuracy "
                 f"{gain:+.3f} from half to all of its rows ({'>=' if big else '<'} "
                 f"{config.min_learning_gain:g}), one-sided p={p:.2g} "
                 f"({'<' if credible else '>='} {config.label_alpha:g})")
        return TriggerRule(name, vol and pays, float(new_labels), float(need),
                           f"{detail}; {curve}")
    if new_labels < config.min_new_labels:
        return TriggerRule(name, False, float(new_labels), float(config.min_new_labels),
                           f"{new_labels} new labels < {config.min_new_labels}; the training "
                           f"set is at its cap ({cap} rows)")
    base, base_n = champion.baseline_accuracy, champion.baseline_n
    if accuracy is None or not base > 0 or base_n < 1:
        return TriggerRule(name, False, float(new_labels), float(config.min_new_labels),
                           f"{new_labels} new labels, but the training set is at its cap "
                           f"({cap} rows) and no held-out baseline to test them against")
    _, p = performance_test(base, base_n, accuracy, new_labels)
    loss = p < config.label_alpha
    return TriggerRule(
        name, loss, p, config.label_alpha,
        f"{new_labels} new labels; the training set is at its cap ({cap} rows), so they "
        f"count only if they show a loss: champion accuracy {accuracy:.3f} on them vs "
        f"held-out {base:.3f}, one-sided p={p:.2g} {'<' if loss else '>='} "
        f"{config.label_alpha:g}")


def _drift_rule(drift: DriftLike | None, attempt: LastAttempt | None, now: dt.datetime,
                config: TriggerConfig) -> TriggerRule:
    if drift is None:
        return TriggerRule("drift", False, None, None, "drift not computed")
    detail = "; ".join(drift.reasons) or drift.status
    effect = drift_effect(drift)
    if not drift.drifted or attempt is None or attempt.drift_effect is None:
        return TriggerRule("drift", bool(drift.drifted), effect, None,
                           f"{drift.status}: {detail}")
    # The same evidence already trained a challenger that was not promoted: fire again
    # only on new evidence.
    days = (now - attempt.trained_at).total_seconds() / 86400
    grown = effect is not None and effect >= config.drift_growth * attempt.drift_effect
    labels = attempt.new_labels >= config.drift_refire_labels
    cooled = days >= config.drift_cooldown_days
    why = (f"it grew from {attempt.drift_effect:.3g} to {effect:.3g} (x{config.drift_growth:g})"
           if grown and effect is not None else
           f"it persists and {attempt.new_labels} new labels arrived since "
           f"(>= {config.drift_refire_labels})" if labels else
           f"{days:.1f} days passed (cooldown {config.drift_cooldown_days:g})" if cooled
           else "")
    prev = (f"challenger {attempt.version}, trained {days:.1f} days ago on drift of "
            f"effect {attempt.drift_effect:.3g}, was not promoted")
    if why:
        return TriggerRule("drift", True, effect, attempt.drift_effect,
                           f"{drift.status}: {detail}; fires again: {prev}, and {why}")
    return TriggerRule(
        "drift", False, effect, attempt.drift_effect,
        f"{drift.status} on the same evidence: {prev}; fires again when the effect reaches "
        f"{config.drift_growth * attempt.drift_effect:.3g}, after "
        f"{config.drift_refire_labels} new labels (now {attempt.new_labels}) or "
        f"{config.drift_cooldown_days:g} days")


def drift_effect(drift: Any) -> float | None:
    """The largest effect size among the drifted features of a report.

    Falls back to PSI, then the test statistic, for reports without effect sizes;
    ``None`` without a drifted feature.
    """
    values = []
    for f in getattr(drift, "features", []) or []:
        if not getattr(f, "drifted", False):
            continue
        value = getattr(f, "effect", None)
        if value is None:
            value = getattr(f, "psi", None)
        if value is None:
            value = getattr(f, "statistic", None)
        if value is not None and math.isfinite(value):
            values.append(float(value))
    return max(values) if values else None


def decide_retrain(
    champion: ChampionInfo | None,
    *,
    now: dt.datetime,
    config: TriggerConfig,
    drift: DriftLike | None = None,
    new_labels: int | None = None,
    current_metric: float | None = None,
    metric_samples: int = 0,
    last_retrain_at: dt.datetime | None = None,
    force: bool = False,
    canary_in_progress: str | None = None,
    train_problem: str | None = None,
    last_attempt: LastAttempt | None = None,
    eval_needed: int = 0,
    train_cap: int | None = None,
    new_label_accuracy: float | None = None,
    eval_have: int = 0,
    error_step: ChangePoint | None = None,
    error_rows: int = 0,
    disagreement: TriggerRule | None = None,
    updates: bool = False,
) -> RetrainDecision:
    """Combine the retrain rules into one decision.

    Args:
        champion: The serving champion, or ``None`` before the first model.
        now: The decision time (a pipeline run's logical time).
        config: Thresholds.
        drift: The drift report of the current window (``None``: not computed).
        new_labels: Labelled records since the latest training cutoff (``None``: not
            counted). Zero postpones a retrain (unless forced): nothing new to learn from.
        current_metric: The champion's live accuracy on the labelled records served in the
            last ``config.perf_window_days`` after its training cutoff.
        metric_samples: How many labelled records ``current_metric`` is based on.
        last_retrain_at: When the latest version (promoted or not) was trained: the
            cooldown and the schedule count from it.
        force: Retrain regardless of the other rules, the cooldown and a canary.
        canary_in_progress: The version whose canary is in flight, if any: no new
            challenger is trained until it finished or was rolled back (unless forced).
        train_problem: Why the rows a challenger would be trained on cannot train a model
            (e.g. one class), if so: the retrain is postponed, even when forced.
        last_attempt: The latest challenger trained after the champion and not promoted:
            the drift rule's memory.
        eval_needed: Fresh held-out labels (neither model trained on them) still missing
            before the gate could judge a challenger: the retrain waits for them, even
            when forced (a challenger that cannot be judged cannot ship).
        eval_have: How many such labels there are now (for the reason).
        train_cap: The most rows a training set keeps (``train.max_rows``; None: no cap).
        new_label_accuracy: The champion's accuracy on the ``new_labels`` (the label-volume
            rule's loss test once the training set is at its cap).
        error_step: The step up found in the champion's live error stream by
            :func:`driftloop.decide.changepoint.error_change_point` at ``perf_alpha / 2``
            (``None``: none found or not scanned).
        error_rows: How many labelled rows that scan looked at (0: not scanned; the
            baseline look then gets the whole ``perf_alpha``).
        disagreement: The ``disagreement`` rule's outcome
            (:func:`driftloop.decide.disagreement.disagreement_rule`; ``None``: not
            computed).
        updates: Warm-start updates are enabled (``tuning.updates``): a retrain asked
            for by new labels alone is an ``update`` (:func:`retrain_kind`).

    Returns:
        The decision; ``rules`` holds every evaluated rule, fired or not.
    """
    stamp = now.isoformat()
    if champion is None:
        first = "no champion yet: train the first model"
        rule = TriggerRule("no_champion", True, None, None, first)
        return RetrainDecision(True, [rule.detail], [rule], None, stamp, ["no_champion"])

    rules = [TriggerRule("force", force, None, None,
                         "forced by the run's parameters" if force else "not forced")]
    rules.append(_drift_rule(drift, last_attempt, now, config))
    if new_labels is None:
        rules.append(TriggerRule("label_volume", False, None, float(config.min_new_labels),
                                 "new labels not counted"))
    else:
        rules.append(_label_volume_rule(champion, new_labels, train_cap, new_label_accuracy,
                                        config))
    rules.append(_performance_rule(champion, current_metric, metric_samples, config,
                                   error_step, error_rows))
    if disagreement is not None:
        rules.append(disagreement)
    # The schedule counts from the latest training of any version: a challenger trained
    # and rejected since the champion has already looked at that data, so the schedule must
    # not fire again on every run until one is promoted.
    trained_at = champion.created_at
    if last_retrain_at is not None and last_retrain_at > trained_at:
        trained_at = last_retrain_at
    age_days = (now - trained_at).total_seconds() / 86400
    basis = ("champion " + champion.version if trained_at == champion.created_at
             else "a challenger, not promoted")
    if config.max_age_days > 0:
        old = age_days >= config.max_age_days
        rules.append(TriggerRule(
            "schedule", old, age_days, config.max_age_days,
            f"last training {age_days:.2f} days ago ({basis}) "
            f"{'>=' if old else '<'} {config.max_age_days:g}",
        ))
    else:
        rules.append(TriggerRule("schedule", False, age_days, None,
                                 f"schedule off (max_age_days 0); last training "
                                 f"{age_days:.2f} days ago ({basis})"))
    fired = [r.name for r in rules if r.fired]
    retrain = bool(fired)
    if retrain and not force and last_retrain_at is not None and config.cooldown_hours > 0:
        since = (now - last_retrain_at).total_seconds() / 3600
        cooling = since < config.cooldown_hours
        rules.append(TriggerRule(
            "cooldown", cooling, since, config.cooldown_hours,
            f"last retrain {since:.1f} h ago {'<' if cooling else '>='} "
            f"cooldown {config.cooldown_hours:g} h",
        ))
        retrain = not cooling
    blocked = False
    if canary_in_progress is not None:
        blocked = not force
        rules.append(TriggerRule(
            "canary", blocked, None, None,
            f"canary {canary_in_progress} is in progress"
            + (": no new challenger until it finishes or is rolled back" if blocked
               else ": forced, retraining anyway"),
        ))
    if retrain and not blocked and not force and new_labels == 0:
        # Without a label since the last training a challenger would be fitted on the
        # same rows as the last one: wait for feedback instead of spending a retrain.
        blocked = True
        rules.append(TriggerRule(
            "nothing_new", True, 0.0, 1.0,
            "no labelled record since the last training: a challenger would learn "
            "nothing new",
        ))
    if retrain and not blocked and train_problem is not None:
        blocked = True
        rules.append(TriggerRule("training_data", True, None, None, train_problem))
    if retrain and not blocked and eval_needed > 0:
        blocked = True
        rules.append(TriggerRule(
            "eval_labels", True, float(eval_have), float(eval_have + eval_needed),
            f"wait for labels: {eval_have} fresh held-out labels neither model trained on, "
            f"the gate needs {eval_have + eval_needed} ({eval_needed} more)"))
    if retrain and blocked:
        retrain = False
        reasons = [rules[-1].detail + ": retrain postponed"]
    elif blocked:
        reasons = [rules[-1].detail]
    elif retrain:
        reasons = [r.detail for r in rules if r.fired]
        kind, why = retrain_kind(fired, updates=updates)
        reasons.append(why)
        return RetrainDecision(retrain, reasons, rules, champion.version, stamp, fired, kind)
    elif fired:
        reasons = [rules[-1].detail + ": retrain postponed"]
    else:
        reasons = ["no rule fired: " + "; ".join(r.detail for r in rules[1:])]
    return RetrainDecision(retrain, reasons, rules, champion.version, stamp, fired)
