"""Decide whether to retrain, with the measured value and threshold behind every rule."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Protocol

import pandas as pd

from driftloop.config import TriggerConfig
from driftloop.serde import JsonResult


class DriftLike(Protocol):
    """What the trigger needs from a drift report."""

    status: str
    drifted: bool
    reasons: list[str]


@dataclass(frozen=True)
class ChampionInfo:
    """The facts about the current champion the trigger rules look at."""

    version: str
    created_at: dt.datetime
    training_cutoff: dt.datetime
    primary_metric: str
    baseline: float


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

    def to_markdown(self) -> str:
        """Render the decision and every rule as Markdown."""
        head = "**Retrain**" if self.retrain else "**No retrain**"
        lines = [f"### Retrain decision: {head}", ""]
        lines += [f"- {r}" for r in self.reasons]
        lines += ["", "| rule | fired | measured | threshold | detail |", "|---|---|---|---|---|"]
        for r in self.rules:
            m = "" if r.measured is None else f"{r.measured:.4g}"
            t = "" if r.threshold is None else f"{r.threshold:.4g}"
            lines.append(f"| {r.name} | {'yes' if r.fired else 'no'} | {m} | {t} | {r.detail} |")
        return "\n".join(lines) + "\n"


def count_new_labels(records: pd.DataFrame, cutoff: dt.datetime | None) -> int:
    """Count labelled records whose label arrived after ``cutoff`` (all when ``None``)."""
    if records.empty or "label" not in records:
        return 0
    labelled = records["label"].notna()
    if cutoff is None:
        return int(labelled.sum())
    after = records["label_timestamp"] > pd.Timestamp(cutoff)
    return int((labelled & after).sum())


def _performance_rule(
    champion: ChampionInfo, current: float | None, samples: int, config: TriggerConfig
) -> TriggerRule:
    name = "performance"
    if current is None or samples < config.perf_min_samples:
        return TriggerRule(
            name, False, float(samples), float(config.perf_min_samples),
            f"{samples} newly labelled records, fewer than the {config.perf_min_samples} "
            "needed to judge the champion's performance",
        )
    if not champion.baseline > 0:  # NaN: the champion was trained without a validation split
        return TriggerRule(
            name, False, current, None,
            f"{champion.primary_metric} {current:.3f} on {samples} new labels; champion "
            f"{champion.version} has no validation {champion.primary_metric} to compare with",
        )
    drop = (champion.baseline - current) / champion.baseline
    fired = drop >= config.perf_drop
    return TriggerRule(
        name, fired, drop, config.perf_drop,
        f"{champion.primary_metric} {current:.3f} on {samples} new labels vs baseline "
        f"{champion.baseline:.3f}: relative drop {drop:.1%} "
        f"{'>=' if fired else '<'} {config.perf_drop:.0%}",
    )


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
) -> RetrainDecision:
    """Combine the retrain rules into one decision.

    Args:
        champion: The serving champion, or ``None`` before the first model.
        now: The decision time (a pipeline run's logical time).
        config: Thresholds.
        drift: The drift report of the current window (``None``: not computed).
        new_labels: Labelled records since the latest training cutoff (``None``: not
            counted). Zero postpones a retrain (unless forced): nothing new to learn from.
        current_metric: The champion's primary metric on the newly labelled records.
        metric_samples: How many labelled records ``current_metric`` is based on.
        last_retrain_at: When the latest version (promoted or not) was trained: the
            cooldown and the schedule count from it.
        force: Retrain regardless of the other rules, the cooldown and a canary.
        canary_in_progress: The version whose canary is in flight, if any: no new
            challenger is trained until it finished or was rolled back (unless forced).
        train_problem: Why the rows a challenger would be trained on cannot train a model
            (e.g. one class), if so: the retrain is postponed, even when forced.

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
    if drift is None:
        rules.append(TriggerRule("drift", False, None, None, "drift not computed"))
    else:
        detail = "; ".join(drift.reasons) or drift.status
        rules.append(TriggerRule("drift", bool(drift.drifted), None, None,
                                 f"{drift.status}: {detail}"))
    if new_labels is None:
        rules.append(TriggerRule("label_volume", False, None, float(config.min_new_labels),
                                 "new labels not counted"))
    else:
        vol = new_labels >= config.min_new_labels
        rules.append(TriggerRule(
            "label_volume", vol, float(new_labels), float(config.min_new_labels),
            f"{new_labels} new labels since the last training cutoff "
            f"{'>=' if vol else '<'} {config.min_new_labels}",
        ))
    rules.append(_performance_rule(champion, current_metric, metric_samples, config))
    # The schedule counts from the latest training of any version: a challenger trained
    # and rejected since the champion has already looked at that data, so the schedule must
    # not fire again on every run until one is promoted.
    trained_at = champion.created_at
    if last_retrain_at is not None and last_retrain_at > trained_at:
        trained_at = last_retrain_at
    age_days = (now - trained_at).total_seconds() / 86400
    old = age_days >= config.max_age_days
    basis = ("champion " + champion.version if trained_at == champion.created_at
             else "a challenger, not promoted")
    rules.append(TriggerRule(
        "schedule", old, age_days, config.max_age_days,
        f"last training {age_days:.2f} days ago ({basis}) "
        f"{'>=' if old else '<'} {config.max_age_days:g}",
    ))
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
    if retrain and blocked:
        retrain = False
        reasons = [rules[-1].detail + ": retrain postponed"]
    elif blocked:
        reasons = [rules[-1].detail]
    elif retrain:
        reasons = [r.detail for r in rules if r.fired]
    elif fired:
        reasons = [rules[-1].detail + ": retrain postponed"]
    else:
        reasons = ["no rule fired: " + "; ".join(r.detail for r in rules[1:])]
    return RetrainDecision(retrain, reasons, rules, champion.version, stamp, fired)
