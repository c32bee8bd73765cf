"""The promotion gate: score champion and challenger on the same eval set and decide.

Both models are scored on the same labelled rows over ONE class set: the schema's
``labels`` (plus any other class seen, appended), with macro averages and ROC AUC over
the classes of that set that occur in the eval set. Every model's probabilities are
aligned to it (a class the model does not know has probability 0), so a model that
lacks a class is scored on every row, and every bootstrap resample uses the same set
for both models (see :mod:`driftloop.models.metrics`).

Decision rules (every measured value and threshold is kept in the
:class:`~driftloop.decide.verdict.Verdict`):

* ``improvement``: the primary metric improves by at least ``auto_threshold`` under
  ``improvement_rule``. The default, ``error_reduction``, is the share of the
  champion's error (``1 - metric``) the challenger removes,
  ``(after - before) / (1 - before)``: it has no ceiling (a champion at 0.953 is beaten
  automatically by 0.9554 with the default 5%, where the 5% relative rule needed
  1.0007). ``relative`` (``(after - before) / before``, the seeds' "5% relative
  improvement") and ``absolute`` (``after - before``, a margin) remain available.
* ``confidence_interval``: lower bound of the two-sided ``confidence`` paired bootstrap
  interval of challenger - champion > 0 (> ``auto_threshold`` with ``absolute``: the
  margin is judged on the interval).
* ``latency`` (hard): the challenger's median per-row CPU time <= the allowance
  (:func:`~driftloop.decide.latency.latency_allowance`:
  ``max(latency_ratio x champion, champion + 0.05 ms)``).
  Each row's time is the fastest of interleaved single-row calls measured with the
  calling thread's CPU clock (``time.thread_time_ns``), single-threaded, so time spent
  waiting for a core, the GIL or I/O while other work runs does not count; the median
  over rows of these minima is the robust statistic compared (see
  :func:`~driftloop.decide.latency.measure_latency`).
* ``slices`` (hard): a slice fails only when the challenger is credibly worse on it by
  more than ``slice_tolerance``: the lower bound of the drop (champion - challenger on
  that slice's rows; a normal interval with the paired bootstrap's standard error,
  one-sided at ``(1 - confidence) / 2`` and Holm-corrected across the judged slices)
  exceeds the tolerance. Slices with fewer than :func:`min_judged_slice_size` rows are
  reported as not judged: below it no interval could be narrower than the tolerance.

``promote`` when the challenger is better, both hard rules pass and both the
improvement and the interval rules pass; ``needs_approval`` when the challenger is
better (difference > 0) and passes the hard rules but is not clearly better enough;
``reject`` otherwise (not better, or a hard rule fails). Without a champion the
challenger is promoted as the first model. Under the default settings a challenger
that is not better is promoted only when the interval's lower tail (2.5% nominal) lies
above 0: 1.8-3.2% of the time for an equal one and <= 0.2% for one 2 points worse in
``benchmarks/gate_power.py`` (300-5,000 rows, 4 or 20 slices).

:func:`gate_decision` applies these rules to predictions and probabilities alone (no
models, no latency measurement), so a simulation can run the very rules the gate uses.

This module holds the rules and :func:`evaluate_challenger`, which scores both models and
applies them. What they rest on lives beside it: the paired bootstrap in
:mod:`driftloop.decide.bootstrap`, the latency measurement in
:mod:`driftloop.decide.latency`, and the typed results with the verdict's Markdown in
:mod:`driftloop.decide.verdict`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from driftloop.config import GateConfig
from driftloop.data.schema import Schema
from driftloop.decide.bootstrap import auc_replicates, codes, label_replicates, percentile_interval
from driftloop.decide.latency import latency_rule, measure_latency
from driftloop.decide.verdict import (
    GateDecision,
    ModelScore,
    RuleResult,
    SliceCheck,
    Verdict,
    fmt,
    next_steps_for,
)
from driftloop.errors import DriftloopError
from driftloop.models.metrics import (
    LABEL_METRICS,
    align_proba,
    class_set,
    compute_metrics,
    per_class_metrics,
)
from driftloop.models.train import predict_frame

__all__ = [
    "EvaluationError",
    "evaluate_challenger",
    "gate_decision",
    "improvement",
    "min_judged_slice_size",
]

MISSING_SLICE = "<missing>"


class EvaluationError(DriftloopError):
    """The eval set cannot score the models (no labelled rows, no label column)."""



def improvement(before: float, after: float, rule: str) -> float:
    """The improvement of ``after`` over ``before`` under ``rule``.

    ``error_reduction``: ``(after - before) / (1 - before)``, the share of the error
    removed; ``relative``: ``(after - before) / |before|``; ``absolute``:
    ``after - before``. A 1e-6 floor keeps the ratios finite.
    """
    diff = after - before
    if rule == "relative":
        return diff / max(abs(before), 1e-6)
    if rule == "error_reduction":
        return diff / max(1.0 - before, 1e-6)
    return diff


def min_judged_slice_size(config: GateConfig) -> int:
    """Fewest rows a slice needs to be judged by the slice rule.

    A drop of ``slice_tolerance`` needs at least that share ``t`` of the slice's rows to
    change from right to wrong; the paired difference then has a standard deviation of
    at least ``sqrt(t (1 - t) / n)``, so the interval half-width ``z sqrt(t (1 - t) / n)``
    (``z`` of the two-sided ``confidence``) can be below the tolerance only from
    ``n = z^2 (1 - t) / t`` rows on (73 for 0.05 at 95%). ``min_slice_size`` is a floor.
    """
    tol = config.slice_tolerance
    z = NormalDist().inv_cdf(1 - (1 - config.confidence) / 2)
    derived = math.ceil(z * z * (1 - tol) / tol) if 0 < tol < 1 else 0
    return max(config.min_slice_size, derived)


def _slice_rule(
    keys: list[str], n_rows: list[int], drops: np.ndarray, reps: np.ndarray,
    config: GateConfig, metric: str,
) -> tuple[RuleResult, list[SliceCheck]]:
    tol = config.slice_tolerance
    n_min = min_judged_slice_size(config)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN slice: not judged
        se = (np.nanstd(reps, axis=0, ddof=1) if reps.shape[0] > 1 and reps.shape[1]
              else np.full(len(keys), np.nan))
    judged = [i for i in range(len(keys))
              if n_rows[i] >= n_min and math.isfinite(drops[i]) and math.isfinite(se[i])]
    not_judged = [keys[i] for i in range(len(keys)) if i not in judged]
    alpha = (1 - config.confidence) / 2
    m = len(judged)
    z_bonf = NormalDist().inv_cdf(1 - alpha / m) if m else math.nan
    normal = NormalDist()

    def p_value(i: int) -> float:  # H0: drop <= tol; small p: credibly worse than tol
        if se[i] == 0:
            return 0.0 if drops[i] > tol else 1.0
        return 1 - normal.cdf((drops[i] - tol) / se[i])

    failed: set[int] = set()
    for rank, i in enumerate(sorted(judged, key=p_value)):  # Holm step-down
        if p_value(i) > alpha / (m - rank):
            break
        failed.add(i)
    low = {i: float(drops[i] - z_bonf * se[i]) for i in judged}
    checks = [SliceCheck(keys[i], int(n_rows[i]),
                         float(drops[i]) if math.isfinite(drops[i]) else None,
                         low.get(i), i in low, i in failed) for i in range(len(keys))]
    skipped = (f"; {len(not_judged)} slice(s) with fewer than {n_min} rows not judged "
               f"({', '.join(not_judged)})" if not_judged else "")
    if not judged:
        return RuleResult("slices", True, None, tol,
                          f"no slice has >= {n_min} rows (the size from which the interval "
                          f"could be narrower than the tolerance {tol:.4f}) and a defined "
                          f"{metric}: {len(keys)} slice(s) not judged"), checks
    worst = max(judged, key=low.__getitem__)
    how = (f"one-sided {1 - alpha:.1%} bound, Holm-corrected over {m} judged slice(s), "
           "standard error from the paired bootstrap")
    if failed:
        names = ", ".join(f"{keys[i]} (drop {drops[i]:+.4f}, lower bound {low[i]:+.4f})"
                          for i in sorted(failed))
        detail = (f"{metric} is credibly lower by more than {tol:.4f} on {names} "
                  f"({how}){skipped}")
    else:
        detail = (f"no slice is credibly worse by more than {tol:.4f}: the largest lower "
                  f"bound of a {metric} drop is {low[worst]:+.4f} ({keys[worst]}; {how})"
                  f"{skipped}")
    return RuleResult("slices", not failed, low[worst], tol, detail), checks


def _decide(rules: list[RuleResult], diff: float, ci_high: float) -> str:
    passed = {r.name: r.passed for r in rules}
    if not (passed.get("latency", True) and passed["slices"]):
        return "reject"
    if not diff > 0 or ci_high < 0:
        return "reject"
    if passed["improvement"] and passed["confidence_interval"]:
        return "promote"
    return "needs_approval"


def _headline(decision: str, rules: list[RuleResult], diff: float, metric: str) -> str:
    if decision == "promote":
        return f"promote: the challenger beats the champion on {metric} and passes every rule"
    if decision == "needs_approval":
        short = [r.name for r in rules if r.name in ("improvement", "confidence_interval")
                 and not r.passed]
        return (f"needs approval: the challenger is better on {metric} ({diff:+.4f}) but not "
                f"clearly enough to promote automatically ({', '.join(short)} not met)")
    parts = []
    if not diff > 0:
        parts.append(f"is not better than the champion on {metric} ({diff:+.4f})")
    hard = [r.name for r in rules if r.name in ("latency", "slices") and not r.passed]
    if hard:
        parts.append(f"fails the hard rule(s) {', '.join(hard)}")
    return "reject: the challenger " + " and ".join(parts or ["is credibly worse"])


def _score_rows(
    y: np.ndarray, pred: np.ndarray, proba: np.ndarray | None, vocab: list[str],
    avg: list[str], groups: np.ndarray | None, group_keys: list[str],
    group_avg: list[list[str]],
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    metrics = compute_metrics(y, pred, proba, vocab, labels=avg)
    if groups is None:
        per = per_class_metrics(y, pred, proba, vocab, labels=avg)
        return metrics, {f"class={k}": v for k, v in per.items()}
    slices = {}
    for s, key in enumerate(group_keys):
        rows = groups == s
        slices[key] = {**compute_metrics(y[rows], pred[rows],
                                         None if proba is None else proba[rows], vocab,
                                         labels=group_avg[s]),
                       "n": float(rows.sum())}
    return metrics, slices


def _improvement_text(rule: str, before: float, after: float, value: float,
                      threshold: float, metric: str) -> str:
    head = f"{metric} {fmt(after)} vs champion {fmt(before)}: "
    if rule == "error_reduction":
        return (head + f"the challenger removes {fmt(value, '+.2%')} of the champion's "
                f"error (1 - {metric}); auto-promote needs >= {threshold:.2%}")
    if rule == "relative":
        return head + (f"relative change {fmt(value, '+.2%')} "
                       f"(auto-promote needs >= {threshold:.2%})")
    return head + (f"absolute change {fmt(value, '+.4f')} "
                   f"(auto-promote needs >= {threshold:.4f})")


def gate_decision(
    y_true: Any, pred_champion: Any, pred_challenger: Any, config: GateConfig, *,
    proba_champion: np.ndarray | None = None, proba_challenger: np.ndarray | None = None,
    classes_champion: Sequence[str] = (), classes_challenger: Sequence[str] = (),
    labels: Sequence[str] | None = None, slices: Any = None,
    latency: RuleResult | None = None,
) -> GateDecision:
    """Apply the gate's rules to two models' predictions on the same labelled rows.

    Args:
        y_true: True class names.
        pred_champion: The champion's predicted class names.
        pred_challenger: The challenger's predicted class names.
        config: Gate thresholds.
        proba_champion: The champion's probabilities (columns: ``classes_champion``).
        proba_challenger: The challenger's probabilities (columns: ``classes_challenger``).
        classes_champion: The champion's classes.
        classes_challenger: The challenger's classes.
        labels: The schema's labels (the class set; other classes seen are appended).
        slices: Per-row slice key (e.g. ``region=eu``); None: one slice per true class.
        latency: The latency rule's result, when measured; None leaves it out.

    Returns:
        The decision, the rules behind it and both models' metrics and slices.
    """
    metric = config.primary_metric
    y = np.asarray(y_true, dtype=object).astype(str)
    pa = np.asarray(pred_champion, dtype=object).astype(str)
    pb = np.asarray(pred_challenger, dtype=object).astype(str)
    vocab = class_set(labels, y, pa, pb, classes_champion, classes_challenger)
    present = set(y)
    avg = [c for c in vocab if c in present]
    qa = None if proba_champion is None else align_proba(
        proba_champion, [str(c) for c in classes_champion], vocab)
    qb = None if proba_challenger is None else align_proba(
        proba_challenger, [str(c) for c in classes_challenger], vocab)
    groups: np.ndarray | None = None
    group_keys: list[str] = []
    group_avg: list[list[str]] = []
    if slices is not None:
        skeys = np.asarray(slices, dtype=object).astype(str)
        group_keys = sorted(set(skeys))
        groups = codes(skeys, group_keys)
        group_avg = [[c for c in vocab if c in set(y[groups == s])]
                     for s in range(len(group_keys))]
    m_a, s_a = _score_rows(y, pa, qa, vocab, avg, groups, group_keys, group_avg)
    m_b, s_b = _score_rows(y, pb, qb, vocab, avg, groups, group_keys, group_avg)
    class_idx = None if groups is not None else np.array(
        [vocab.index(k.removeprefix("class=")) for k in s_a], dtype=np.int64)
    if metric in LABEL_METRICS:
        reps = label_replicates(
            codes(y, vocab), codes(pa, vocab), codes(pb, vocab), len(vocab), metric,
            np.array([vocab.index(c) for c in avg], dtype=np.int64), groups=groups,
            group_avg=[np.array([vocab.index(c) for c in g], dtype=np.int64)
                       for g in group_avg],
            class_idx=class_idx, resamples=config.bootstrap, seed=config.seed)
    else:
        reps = auc_replicates(y, qa, qb, vocab, avg, groups=groups, group_labels=group_avg,
                               class_idx=class_idx, resamples=config.bootstrap,
                               seed=config.seed)
    low, high = percentile_interval(reps.overall, config.confidence)
    before, after = m_a[metric], m_b[metric]
    diff = after - before
    value = improvement(before, after, config.improvement_rule)
    margin = config.auto_threshold if config.improvement_rule == "absolute" else 0.0
    keys = list(s_a)
    drops = np.array([s_a[k].get(metric, math.nan) - s_b[k].get(metric, math.nan)
                      for k in keys])
    slice_result, checks = _slice_rule(keys, [int(s_a[k]["n"]) for k in keys], drops,
                                       -reps.slices, config, metric)
    rules = [
        RuleResult("improvement", value >= config.auto_threshold, value,
                   config.auto_threshold,
                   _improvement_text(config.improvement_rule, before, after, value,
                                     config.auto_threshold, metric)),
        RuleResult("confidence_interval", low > margin, low, margin,
                   f"{config.confidence:.0%} paired bootstrap interval of the {metric} "
                   f"difference is [{fmt(low, '+.4f')}, {fmt(high, '+.4f')}] over "
                   f"{config.bootstrap} resamples (lower bound must be > {margin:g})"),
        *([latency] if latency is not None else []),
        slice_result,
    ]
    decision = _decide(rules, diff, high)
    failed = [r.detail for r in rules if not r.passed]
    reasons = [_headline(decision, rules, diff, metric), *(failed or [r.detail for r in rules])]
    return GateDecision(decision, reasons, rules, avg, diff, value, low, high, m_a, m_b,
                        s_a, s_b, checks)


def _slice_keys(df: pd.DataFrame, schema: Schema) -> np.ndarray | None:
    if schema.slice_column is None:
        return None
    col = schema.slice_column
    keys = df[col].map(str, na_action="ignore").fillna(MISSING_SLICE)
    return (f"{col}=" + keys.astype(str)).to_numpy(dtype=object)


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
    store: str | None = None,
    model: str | None = None,
) -> Verdict:
    """Score both models on the same labelled eval rows and apply the gate.

    Args:
        challenger: Fitted model with ``predict_proba`` and ``classes_``.
        champion: The serving model, or None when there is none yet.
        eval_df: Records with a ``label``; unlabelled rows are ignored.
        schema: The model's schema (features, labels = the class set, slice column).
        config: Gate thresholds.
        challenger_version: Recorded in the verdict.
        champion_version: Recorded in the verdict.
        latency_rows: Rows sampled for the single-row latency measurement
            (default: ``config.latency_rows``).
        latency_repeats: Timed calls per row and model (default: ``config.latency_repeats``).
        now: Time stamped on the verdict (default: now, UTC).
        store: Store root written into the commands of the verdict's Markdown
            (default: the placeholder ``STORE``).
        model: Model name written into those commands (default: ``MODEL``).

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
    stamp = (now or datetime.now(UTC)).isoformat()
    metric = config.primary_metric
    keys = _slice_keys(df, schema)
    pred_b, proba_b = predict_frame(challenger, df, schema)
    classes_b = [str(c) for c in challenger.classes_]
    if champion is None:
        vocab = class_set(schema.labels, y, pred_b, classes_b)
        avg = [c for c in vocab if c in set(y)]
        groups, group_keys, group_avg = None, [], []
        if keys is not None:
            group_keys = sorted(set(keys))
            groups = codes(keys, group_keys)
            group_avg = [[c for c in vocab if c in set(y[groups == s])]
                         for s in range(len(group_keys))]
        metrics, slices = _score_rows(y, pred_b, align_proba(proba_b, classes_b, vocab),
                                      vocab, avg, groups, group_keys, group_avg)
        score = ModelScore(challenger_version, len(y), metrics, lat[0][0], lat[0][1], slices)
        rule = RuleResult("champion", True, None, None,
                          "no champion is serving: this is the first model, promoted "
                          "without comparison")
        return Verdict("promote", True, [rule.detail], [rule], metric, None, None, None,
                       None, score, stamp, config.confidence, config.improvement_rule, avg,
                       [], next_steps_for("promote", challenger_version, store, model))
    pred_a, proba_a = predict_frame(champion, df, schema)
    classes_a = [str(c) for c in champion.classes_]
    out = gate_decision(
        y, pred_a, pred_b, config, proba_champion=proba_a, proba_challenger=proba_b,
        classes_champion=classes_a, classes_challenger=classes_b, labels=schema.labels,
        slices=keys, latency=latency_rule(lat[1][0], lat[0][0], config.latency_ratio))
    champ = ModelScore(champion_version or "champion", len(y), out.champion_metrics,
                       lat[1][0], lat[1][1], out.champion_slices)
    chall = ModelScore(challenger_version, len(y), out.challenger_metrics, lat[0][0],
                       lat[0][1], out.challenger_slices)
    return Verdict(out.decision, False, out.reasons, out.rules, metric, out.improvement,
                   out.ci_low, out.ci_high, champ, chall, stamp, config.confidence,
                   config.improvement_rule, out.labels, out.slice_checks,
                   next_steps_for(out.decision, challenger_version, store, model))
