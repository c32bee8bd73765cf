"""The promotion gate: score champion and challenger on the same eval set and decide.

Decision rules (every measured value and threshold is kept in the :class:`Verdict`):

* ``improvement``: relative change of the primary metric >= ``auto_threshold``.
* ``confidence_interval``: lower bound of the paired bootstrap interval of
  challenger - champion > 0.
* ``latency`` (hard): challenger p95 <= allowed p95 (see :func:`latency_allowance`).
* ``slices`` (hard): no slice with >= ``min_slice_size`` rows loses more than
  ``slice_tolerance`` (absolute) of the primary metric.

``promote`` when all pass; ``needs_approval`` when both hard rules pass and the
challenger is better (difference > 0) but the improvement or interval rule fails;
``reject`` otherwise. Without a champion the challenger is promoted as the first model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from driftloop.config import GateConfig
from driftloop.errors import DriftloopError
from driftloop.metrics import (
    LABEL_METRICS,
    compute_metrics,
    confusion_metrics,
    per_class_metrics,
    roc_auc,
)
from driftloop.schema import Schema
from driftloop.serde import JsonResult
from driftloop.train import feature_frame, predict_frame

__all__ = [
    "LATENCY_FLOOR_MS",
    "EvaluationError",
    "ModelScore",
    "RuleResult",
    "Verdict",
    "compute_metrics",
    "evaluate_challenger",
    "latency_allowance",
    "measure_latency",
    "paired_bootstrap_ci",
]

# Sub-millisecond timing jitter must not reject a model: the challenger may always be
# this much slower than the champion, whatever the ratio allows.
LATENCY_FLOOR_MS = 0.05
LATENCY_EXTRA_ROUNDS = 2
MISSING_SLICE = "<missing>"


class EvaluationError(DriftloopError):
    """The eval set cannot score the models (no labelled rows, no label column)."""


@dataclass
class RuleResult:
    """One gate rule: what was measured, against what, and the verdict in a sentence."""

    name: str
    passed: bool
    measured: float | None
    threshold: float | None
    detail: str


@dataclass
class ModelScore:
    """One model's scores on the eval set.

    Latency is per row: the model's ``predict_proba`` on single-row frames (closer to
    serving than batch time / n), the fastest of the repeats of each row, then the
    50th/95th percentile over the sampled rows (see :func:`measure_latency`). It
    excludes HTTP and payload decoding.
    ``slices`` maps ``column=value`` (or ``class=<true label>`` without a slice column)
    to that slice's metrics and ``n``.
    """

    version: str
    n: int
    metrics: dict[str, float]
    latency_p50_ms: float
    latency_p95_ms: float
    slices: dict[str, dict[str, float]]


@dataclass
class Verdict(JsonResult):
    """The gate's decision with every rule behind it."""

    decision: str
    first_model: bool
    reasons: list[str]
    rules: list[RuleResult]
    primary_metric: str
    improvement_rel: float | None
    ci_low: float | None
    ci_high: float | None
    champion: ModelScore | None
    challenger: ModelScore
    created_at: str
    confidence: float = 0.95

    def to_markdown(self) -> str:
        """Render the verdict for the KFP UI / a notification."""
        return _markdown(self)


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def _markdown(v: Verdict) -> str:
    pm = v.primary_metric
    lines = [f"## Verdict: {v.decision.upper()}", "", *[f"- {r}" for r in v.reasons], "",
             "| rule | passed | measured | threshold | detail |", "|---|---|---|---|---|"]
    lines += [f"| {r.name} | {'yes' if r.passed else 'NO'} | {_fmt(r.measured)} | "
              f"{_fmt(r.threshold)} | {r.detail} |" for r in v.rules]
    scores = [s for s in (v.champion, v.challenger) if s is not None]
    lines += ["", "| model | version | n | " + " | ".join(v.challenger.metrics)
              + " | p50 ms | p95 ms |", "|---" * (len(v.challenger.metrics) + 5) + "|"]
    for role, s in zip(("champion", "challenger")[-len(scores):], scores, strict=True):
        cells = " | ".join(_fmt(s.metrics.get(m)) for m in v.challenger.metrics)
        lines.append(f"| {role} | {s.version} | {s.n} | {cells} | {s.latency_p50_ms:.3f} | "
                     f"{s.latency_p95_ms:.3f} |")
    lines += ["", f"| slice | n | champion {pm} | challenger {pm} |", "|---|---|---|---|"]
    for key, vals in v.challenger.slices.items():
        before = v.champion.slices.get(key, {}).get(pm) if v.champion else None
        lines.append(f"| {key} | {int(vals['n'])} | {_fmt(before)} | {_fmt(vals.get(pm))} |")
    return "\n".join(lines) + "\n"


def _row_times(models: Sequence[Any], singles: list[pd.DataFrame], repeats: int) -> np.ndarray:
    times = np.empty((len(models), repeats, len(singles)))
    with threadpool_limits(limits=1):
        for model in models:  # warm-up: first calls pay for lazy caches
            model.predict_proba(singles[0])
        for r in range(repeats):
            for i, row in enumerate(singles):
                order = range(len(models)) if (r + i) % 2 == 0 else range(len(models))[::-1]
                for k in order:
                    start = time.perf_counter_ns()
                    models[k].predict_proba(row)
                    times[k, r, i] = (time.perf_counter_ns() - start) / 1e6
    return times.min(axis=1)


def measure_latency(
    models: Sequence[Any], df: pd.DataFrame, schema: Schema, *, rows: int, repeats: int,
    seed: int, ratio: float | None = None,
) -> list[tuple[float, float]]:
    """Per-row ``(p50, p95)`` latency in ms of each model, measured interleaved.

    Every model predicts the same sampled single-row frames; the models alternate
    order row by row, so a burst of machine load hits them alike. A row's time is the
    fastest of its calls: that is the model's own cost for the row, the slower calls
    measure the machine. Calls run single-threaded, as one request is served: on
    shared cores OpenMP barriers otherwise stall for whole scheduler slices.

    With ``ratio`` and ``models == [challenger, champion]``, a challenger p95 above
    :func:`latency_allowance` is re-measured (up to ``LATENCY_EXTRA_ROUNDS`` more rounds
    of ``repeats``, each row keeping its fastest time) before it stands, so a burst of
    load cannot fail the rule while a really slower model stays slower.
    """
    X = feature_frame(df, schema)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(X), size=min(rows, len(X)), replace=False))
    singles = [X.iloc[[i]] for i in pick]
    times = _row_times(models, singles, repeats)
    rounds = LATENCY_EXTRA_ROUNDS if ratio is not None and len(models) == 2 else 0
    for _ in range(rounds):
        if np.percentile(times[0], 95) <= latency_allowance(
            float(np.percentile(times[1], 95)), ratio or 1.0
        ):
            break
        times = np.minimum(times, _row_times(models, singles, repeats))
    return [(float(np.percentile(t, 50)), float(np.percentile(t, 95))) for t in times]


def latency_allowance(champion_p95_ms: float, ratio: float) -> float:
    """Largest acceptable challenger p95: ``max(ratio x champion, champion + floor)``."""
    return max(champion_p95_ms * ratio, champion_p95_ms + LATENCY_FLOOR_MS)


def _confusions(t: np.ndarray, p: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    codes = t[idx] * k + p[idx] + np.arange(idx.shape[0])[:, None] * k * k
    return np.bincount(codes.ravel(), minlength=idx.shape[0] * k * k).reshape(-1, k, k)


def paired_bootstrap_ci(
    y_true: Any, pred_champion: Any, pred_challenger: Any, metric: str, *,
    proba_champion: np.ndarray | None = None, proba_challenger: np.ndarray | None = None,
    classes_champion: Sequence[str] = (), classes_challenger: Sequence[str] = (),
    resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``metric(challenger) - metric(champion)``.

    Both models are scored on the same resampled rows each time. Label metrics are
    vectorised through stacked confusion matrices; ROC AUC loops over resamples.
    """
    y = np.asarray(y_true, dtype=object)
    n = y.size
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    if metric in LABEL_METRICS:
        pa = np.asarray(pred_champion, dtype=object)
        pb = np.asarray(pred_challenger, dtype=object)
        labels, codes = np.unique(np.concatenate([y, pa, pb]).astype(str), return_inverse=True)
        t, ca, cb = codes[:n], codes[n:2 * n], codes[2 * n:]
        chunk = max(1, 2_000_000 // n)  # bounds the (chunk x n) index matrix in memory
        for start in range(0, resamples, chunk):
            idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
            a = confusion_metrics(_confusions(t, ca, idx, len(labels)))[metric]
            b = confusion_metrics(_confusions(t, cb, idx, len(labels)))[metric]
            diffs[start:start + idx.shape[0]] = b - a
    else:
        for i in range(resamples):
            idx = rng.integers(0, n, size=n)
            diffs[i] = (
                roc_auc(y[idx], None if proba_challenger is None else proba_challenger[idx],
                        classes_challenger)
                - roc_auc(y[idx], None if proba_champion is None else proba_champion[idx],
                          classes_champion)
            )
    if np.isnan(diffs).all():
        return float("nan"), float("nan")
    alpha = 1 - confidence
    low, high = np.nanquantile(diffs, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


@dataclass
class _Scored:
    score: ModelScore
    pred: np.ndarray
    proba: np.ndarray
    classes: list[str]


def _score(model: Any, df: pd.DataFrame, y: np.ndarray, schema: Schema, version: str,
           latency: tuple[float, float]) -> _Scored:
    pred, proba = predict_frame(model, df, schema)
    classes = [str(c) for c in model.classes_]
    if schema.slice_column is not None:
        keys = df[schema.slice_column].map(str, na_action="ignore").fillna(MISSING_SLICE)
        slices = {}
        for value in sorted(keys.unique()):
            rows = (keys == value).to_numpy()
            slices[f"{schema.slice_column}={value}"] = {
                **compute_metrics(y[rows], pred[rows], proba[rows], classes),
                "n": float(rows.sum()),
            }
    else:
        slices = {f"class={k}": v for k, v in per_class_metrics(y, pred, proba, classes).items()}
    score = ModelScore(version, len(y), compute_metrics(y, pred, proba, classes),
                       latency[0], latency[1], slices)
    return _Scored(score, pred, proba, classes)


def _slice_rule(champ: ModelScore, chall: ModelScore, metric: str,
                config: GateConfig) -> RuleResult:
    drops: dict[str, float] = {}
    for key, before in champ.slices.items():
        after = chall.slices.get(key, {})
        value_before, value_after = before.get(metric, math.nan), after.get(metric, math.nan)
        if before["n"] >= config.min_slice_size and math.isfinite(value_before) and (
            math.isfinite(value_after)
        ):
            drops[key] = value_before - value_after
    if not drops:
        return RuleResult("slices", True, None, config.slice_tolerance,
                          f"no slice has >= {config.min_slice_size} rows with a defined "
                          f"{metric}: nothing to judge")
    worst = max(drops, key=drops.__getitem__)
    failing = [f"{k} ({-d:+.4f})" for k, d in drops.items() if d > config.slice_tolerance]
    if failing:
        detail = (f"{metric} drops by more than {config.slice_tolerance:.4f} on "
                  f"{', '.join(failing)}")
    else:
        detail = (f"largest {metric} drop over {len(drops)} slices is {drops[worst]:+.4f} "
                  f"({worst}), within the tolerance {config.slice_tolerance:.4f}")
    return RuleResult("slices", not failing, drops[worst], config.slice_tolerance, detail)


def _rules(champ: _Scored, chall: _Scored, y: np.ndarray, config: GateConfig,
           ) -> tuple[list[RuleResult], float, float, float, float]:
    metric = config.primary_metric
    before, after = champ.score.metrics[metric], chall.score.metrics[metric]
    diff = after - before
    # The 1e-6 floor keeps the ratio finite when the champion scores zero.
    rel = diff / max(abs(before), 1e-6)
    low, high = paired_bootstrap_ci(
        y, champ.pred, chall.pred, metric, proba_champion=champ.proba,
        proba_challenger=chall.proba, classes_champion=champ.classes,
        classes_challenger=chall.classes, resamples=config.bootstrap,
        confidence=config.confidence, seed=config.seed)
    allowed = latency_allowance(champ.score.latency_p95_ms, config.latency_ratio)
    p95 = chall.score.latency_p95_ms
    rules = [
        RuleResult("improvement", rel >= config.auto_threshold, rel, config.auto_threshold,
                   f"{metric} {_fmt(after)} vs champion {_fmt(before)}: relative change "
                   f"{_fmt(rel, '+.2%')} (auto-promote needs >= {config.auto_threshold:.2%})"),
        RuleResult("confidence_interval", low > 0, low, 0.0,
                   f"{config.confidence:.0%} paired bootstrap interval of the {metric} "
                   f"difference is [{_fmt(low, '+.4f')}, {_fmt(high, '+.4f')}] over "
                   f"{config.bootstrap} resamples (lower bound must be > 0)"),
        RuleResult("latency", p95 <= allowed, p95, allowed,
                   f"challenger p95 latency {p95:.3f} ms vs allowed {allowed:.3f} ms "
                   f"(champion {champ.score.latency_p95_ms:.3f} ms x {config.latency_ratio:g}, "
                   f"at least +{LATENCY_FLOOR_MS} ms)"),
        _slice_rule(champ.score, chall.score, metric, config),
    ]
    return rules, diff, rel, low, high


def _decide(rules: list[RuleResult], diff: float) -> str:
    passed = {r.name: r.passed for r in rules}
    if not (passed["latency"] and passed["slices"]):
        return "reject"
    if passed["improvement"] and passed["confidence_interval"]:
        return "promote"
    return "needs_approval" if diff > 0 else "reject"


def _headline(decision: str, rules: list[RuleResult], diff: float, metric: str) -> str:
    if decision == "promote":
        return f"promote: the challenger beats the champion on {metric} and passes every rule"
    if decision == "needs_approval":
        return (f"needs approval: the challenger is better on {metric} ({diff:+.4f}) but not "
                "clearly enough to promote automatically")
    parts = []
    if not diff > 0:
        parts.append(f"is not better than the champion on {metric} ({diff:+.4f})")
    hard = [r.name for r in rules if r.name in ("latency", "slices") and not r.passed]
    if hard:
        parts.append(f"fails the hard rule(s) {', '.join(hard)}")
    return "reject: the challenger " + " and ".join(parts)


def evaluate_challenger(
    challenger: Any,
    champion: Any | None,
    eval_df: pd.DataFrame,
    schema: Schema,
    config: GateConfig,
    *,
    challenger_version: str,
    champion_version: str | None,
    latency_rows: int | None = None,
    latency_repeats: int | None = None,
    now: datetime | None = None,
) -> Verdict:
    """Score both models on the same labelled eval rows and apply the gate.

    Args:
        challenger: Fitted model with ``predict_proba`` and ``classes_``.
        champion: The serving model, or None when there is none yet.
        eval_df: Records with a ``label``; unlabelled rows are ignored.
        schema: The model's schema (features and slice column).
        config: Gate thresholds.
        challenger_version: Recorded in the verdict.
        champion_version: Recorded in the verdict.
        latency_rows: Rows sampled for the single-row latency measurement
            (default: ``config.latency_rows``).
        latency_repeats: Timed calls per row and model (default: ``config.latency_repeats``).
        now: Time stamped on the verdict (default: now, UTC).

    Raises:
        EvaluationError: ``eval_df`` has no label column or no labelled row.
    """
    if "label" not in eval_df.columns or eval_df["label"].notna().sum() == 0:
        raise EvaluationError("eval set has no labelled rows: cannot score the models")
    df = eval_df[eval_df["label"].notna()].reset_index(drop=True)
    y = df["label"].astype(str).to_numpy(dtype=object)
    models = [challenger] if champion is None else [challenger, champion]
    rows = config.latency_rows if latency_rows is None else latency_rows
    repeats = config.latency_repeats if latency_repeats is None else latency_repeats
    lat = measure_latency(models, df, schema, rows=rows, repeats=repeats,
                          seed=config.seed, ratio=config.latency_ratio)
    chall = _score(challenger, df, y, schema, challenger_version, lat[0])
    stamp = (now or datetime.now(UTC)).isoformat()
    metric = config.primary_metric
    if champion is None:
        rule = RuleResult("champion", True, None, None,
                          "no champion is serving: this is the first model, promoted "
                          "without comparison")
        return Verdict("promote", True, [rule.detail], [rule], metric, None, None, None,
                       None, chall.score, stamp, config.confidence)
    champ = _score(champion, df, y, schema, champion_version or "champion", lat[1])
    rules, diff, rel, low, high = _rules(champ, chall, y, config)
    decision = _decide(rules, diff)
    failed = [r.detail for r in rules if not r.passed]
    reasons = [_headline(decision, rules, diff, metric), *(failed or [r.detail for r in rules])]
    return Verdict(decision, False, reasons, rules, metric, rel, low, high, champ.score,
                   chall.score, stamp, config.confidence)
