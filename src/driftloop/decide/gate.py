"""The promotion gate: score champion and challenger on the same eval set and decide.

Both models are scored on the same labelled rows over ONE class set: the schema's
``labels`` (plus any other class seen, appended), with macro averages and ROC AUC over
the classes of that set that occur in the eval set. Every model's probabilities are
aligned to it (a class the model does not know has probability 0), so a model that
lacks a class is scored on every row, and every bootstrap resample uses the same set
for both models (see :mod:`driftloop.models.metrics`).

Decision rules (every measured value and threshold is kept in the :class:`Verdict`):

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
  (:func:`latency_allowance`: ``max(latency_ratio x champion, champion + 0.05 ms)``).
  Each row's time is the fastest of interleaved single-row calls measured with the
  calling thread's CPU clock (``time.thread_time_ns``), single-threaded, so time spent
  waiting for a core, the GIL or I/O while other work runs does not count; the median
  over rows of these minima is the robust statistic compared (see :func:`measure_latency`).
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
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from driftloop.config import GateConfig
from driftloop.data.schema import Schema
from driftloop.errors import DriftloopError
from driftloop.models.metrics import (
    LABEL_METRICS,
    align_proba,
    binary_auc,
    class_set,
    compute_metrics,
    confusion_class_metrics,
    confusion_metrics,
    per_class_metrics,
    roc_auc,
)
from driftloop.models.train import feature_frame, predict_frame
from driftloop.serde import JsonResult

__all__ = [
    "LATENCY_FLOOR_MS",
    "EvaluationError",
    "GateDecision",
    "ModelScore",
    "RuleResult",
    "SliceCheck",
    "Verdict",
    "compute_metrics",
    "evaluate_challenger",
    "gate_decision",
    "improvement",
    "latency_allowance",
    "latency_rule",
    "measure_latency",
    "min_judged_slice_size",
    "paired_bootstrap_ci",
]

# Sub-millisecond timing jitter must not reject a model: the challenger may always be
# this much slower than the champion, whatever the ratio allows.
LATENCY_FLOOR_MS = 0.05
LATENCY_EXTRA_ROUNDS = 2
MISSING_SLICE = "<missing>"
# Per-class slice value of each label metric (see per_class_metrics).
_CLASS_METRIC = {"accuracy": "recall", "recall_macro": "recall",
                 "precision_macro": "precision", "f1_macro": "f1"}


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
class SliceCheck:
    """How one slice was judged by the slice rule.

    ``drop`` is champion - challenger on the slice (positive: the challenger is worse),
    ``drop_low`` the lower bound of that drop at the Bonferroni level of the judged
    slices (None when not judged); ``failed`` means credibly worse by more than the
    tolerance (Holm step-down).
    """

    key: str
    n: int
    drop: float | None
    drop_low: float | None
    judged: bool
    failed: bool


@dataclass
class ModelScore:
    """One model's scores on the eval set.

    Latency is per row, in milliseconds of the calling thread's CPU time: the model's
    ``predict_proba`` on single-row frames (closer to serving than batch time / n),
    the fastest of the repeats of each row, then the 50th/95th percentile over the
    sampled rows (see :func:`measure_latency`). It excludes HTTP, payload decoding and
    time spent waiting (for a core, the GIL, I/O).
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
    """The gate's decision with every rule behind it.

    ``improvement_rel`` holds the improvement measured under ``improvement_rule``
    (the name is kept for old readers; verdicts written before the rule existed used
    ``relative``). ``labels`` is the class set both models were scored over,
    ``next_steps`` the commands a person can run (shown in the Markdown).
    """

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
    improvement_rule: str = "relative"
    labels: list[str] = field(default_factory=list)
    slice_checks: list[SliceCheck] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """Render the verdict for the KFP UI / a notification."""
        return _markdown(self)


@dataclass
class GateDecision:
    """The gate's rules applied to predictions (see :func:`gate_decision`).

    ``improvement`` is measured under the config's ``improvement_rule``; ``diff`` is
    challenger - champion on the primary metric; ``labels`` the class set averaged over.
    """

    decision: str
    reasons: list[str]
    rules: list[RuleResult]
    labels: list[str]
    diff: float
    improvement: float
    ci_low: float
    ci_high: float
    champion_metrics: dict[str, float]
    challenger_metrics: dict[str, float]
    champion_slices: dict[str, dict[str, float]]
    challenger_slices: dict[str, dict[str, float]]
    slice_checks: list[SliceCheck]


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def _markdown(v: Verdict) -> str:
    pm = v.primary_metric
    lines = [f"## Verdict: {v.decision.upper()}", "", *[f"- {r}" for r in v.reasons], ""]
    if v.next_steps:
        lines += ["### What to do", "", *[f"- {s}" for s in v.next_steps], ""]
    lines += ["| rule | passed | measured | threshold | detail |", "|---|---|---|---|---|"]
    lines += [f"| {r.name} | {'yes' if r.passed else 'NO'} | {_fmt(r.measured)} | "
              f"{_fmt(r.threshold)} | {r.detail} |" for r in v.rules]
    scores = [s for s in (v.champion, v.challenger) if s is not None]
    lines += ["", "| model | version | n | " + " | ".join(v.challenger.metrics)
              + " | p50 ms | p95 ms |", "|---" * (len(v.challenger.metrics) + 5) + "|"]
    for role, s in zip(("champion", "challenger")[-len(scores):], scores, strict=True):
        cells = " | ".join(_fmt(s.metrics.get(m)) for m in v.challenger.metrics)
        lines.append(f"| {role} | {s.version} | {s.n} | {cells} | {s.latency_p50_ms:.3f} | "
                     f"{s.latency_p95_ms:.3f} |")
    checks = {c.key: c for c in v.slice_checks}
    lines += ["", f"| slice | n | champion {pm} | challenger {pm} | drop | drop lower bound "
              "| judged |", "|---|---|---|---|---|---|---|"]
    for key, vals in v.challenger.slices.items():
        before = v.champion.slices.get(key, {}).get(pm) if v.champion else None
        c = checks.get(key)
        judged = "n/a" if c is None else ("FAILED" if c.failed else
                                          "yes" if c.judged else "no (too few rows)")
        lines.append(f"| {key} | {int(vals['n'])} | {_fmt(before)} | {_fmt(vals.get(pm))} | "
                     f"{_fmt(c.drop if c else None, '+.4f')} | "
                     f"{_fmt(c.drop_low if c else None, '+.4f')} | {judged} |")
    if v.labels:
        lines += ["", f"Class set: {', '.join(v.labels)}."]
    return "\n".join(lines) + "\n"


def _next_steps(decision: str, version: str, store: str | None, model: str | None,
                ) -> list[str]:
    where = f"--store {store or 'STORE'} --model {model or 'MODEL'}"
    promote = f"`driftloop promote {version} {where}`"
    if decision == "needs_approval":
        return [f"approve: {promote} (starts a canary of {version})",
                "reject: no action needed: the champion keeps serving"]
    if decision == "promote":
        return [f"the loop starts a canary of {version}; to stop it: "
                f"`driftloop rollback {where}`"]
    return ["no action needed: the champion keeps serving",
            f"to ship {version} anyway (overriding the gate): {promote}"]


# --- latency ---------------------------------------------------------------------------


def _row_times(models: Sequence[Any], singles: list[pd.DataFrame], repeats: int) -> np.ndarray:
    times = np.empty((len(models), repeats, len(singles)))
    with threadpool_limits(limits=1):
        for model in models:  # warm-up: first calls pay for lazy caches
            model.predict_proba(singles[0])
        for r in range(repeats):
            for i, row in enumerate(singles):
                order = range(len(models)) if (r + i) % 2 == 0 else range(len(models))[::-1]
                for k in order:
                    start = time.thread_time_ns()
                    models[k].predict_proba(row)
                    times[k, r, i] = (time.thread_time_ns() - start) / 1e6
    return times.min(axis=1)


def measure_latency(
    models: Sequence[Any], df: pd.DataFrame, schema: Schema, *, rows: int, repeats: int,
    seed: int, ratio: float | None = None,
) -> list[tuple[float, float]]:
    """Per-row ``(p50, p95)`` CPU time in ms of each model, measured interleaved.

    Every model predicts the same sampled single-row frames; the models alternate
    order row by row, so a burst of machine load hits them alike. A call is timed with
    the calling thread's CPU clock (``time.thread_time_ns``), not the wall clock: time
    the thread spends descheduled (other processes on the core, another thread holding
    the GIL, I/O) is not the model's cost and does not count. A row's time is the
    fastest of its calls (cache and frequency effects of other load only add time).
    Calls run single-threaded (``threadpool_limits(1)``), as one request is served,
    which also keeps the work on the timed thread.

    With ``ratio`` and ``models == [challenger, champion]``, a challenger median above
    :func:`latency_allowance` is re-measured (up to ``LATENCY_EXTRA_ROUNDS`` more rounds
    of ``repeats``, each row keeping its fastest time) before it stands.
    """
    X = feature_frame(df, schema)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(X), size=min(rows, len(X)), replace=False))
    singles = [X.iloc[[i]] for i in pick]
    times = _row_times(models, singles, repeats)
    rounds = LATENCY_EXTRA_ROUNDS if ratio is not None and len(models) == 2 else 0
    for _ in range(rounds):
        if np.median(times[0]) <= latency_allowance(float(np.median(times[1])), ratio or 1.0):
            break
        times = np.minimum(times, _row_times(models, singles, repeats))
    return [(float(np.percentile(t, 50)), float(np.percentile(t, 95))) for t in times]


def latency_allowance(champion_ms: float, ratio: float) -> float:
    """Largest acceptable challenger median: ``max(ratio x champion, champion + floor)``."""
    return max(champion_ms * ratio, champion_ms + LATENCY_FLOOR_MS)


def latency_rule(champion_p50_ms: float, challenger_p50_ms: float, ratio: float) -> RuleResult:
    """The hard latency rule on the median per-row CPU times of the two models."""
    allowed = latency_allowance(champion_p50_ms, ratio)
    return RuleResult(
        "latency", challenger_p50_ms <= allowed, challenger_p50_ms, allowed,
        f"challenger median CPU time per row {challenger_p50_ms:.3f} ms vs allowed "
        f"{allowed:.3f} ms (champion {champion_p50_ms:.3f} ms x {ratio:g}, at least "
        f"+{LATENCY_FLOOR_MS} ms); thread CPU time, fastest of interleaved calls per row, "
        "so other load on the machine does not count")


# --- bootstrap -------------------------------------------------------------------------


def _codes(values: Any, vocab: Sequence[str]) -> np.ndarray:
    """Positions in ``vocab`` of ``values`` (every value must be in it)."""
    names = np.asarray(vocab, dtype=str)
    order = np.argsort(names)
    return order[np.searchsorted(names[order], np.asarray(values, dtype=str))].astype(np.int64)


@dataclass
class _Replicates:
    overall: np.ndarray  # (R,) challenger - champion
    slices: np.ndarray  # (R, S) challenger - champion per slice (S may be 0)


def _label_replicates(
    t: np.ndarray, ca: np.ndarray, cb: np.ndarray, k: int, metric: str, avg: np.ndarray, *,
    groups: np.ndarray | None, group_avg: Sequence[np.ndarray], class_idx: np.ndarray | None,
    resamples: int, seed: int,
) -> _Replicates:
    """Label-metric differences on resampled rows, via stacked confusion matrices.

    A resample draws ``n`` rows with replacement. Rows with the same (slice, truth,
    champion's prediction, challenger's prediction) are interchangeable, so a resample
    is fully described by how many rows it draws of each such category: a multinomial
    draw (the same distribution as drawing row indices, in ``O(categories)`` instead of
    ``O(n)``). Both models' confusion matrices, overall and per slice, come from the
    same draw: the resamples are paired. Categories are ordered symmetrically in the
    two models, so swapping champion and challenger mirrors every difference (exactly,
    unless two mirrored categories have the same count).
    """
    n = t.size
    n_groups = len(group_avg) if groups is not None else 0
    g = groups if groups is not None else np.zeros(n, dtype=np.int64)
    width = max(n_groups, 1)
    cells = width * k * k
    cell_a, cell_b = (g * k + t) * k + ca, (g * k + t) * k + cb
    joint, freq = np.unique(cell_a * cells + cell_b, return_counts=True)
    ja, jb = joint // cells, joint % cells
    xa, xb = ja % k, jb % k
    order = np.lexsort((xa > xb, freq, np.maximum(xa, xb), np.minimum(xa, xb), ja // k))
    ja, jb, freq = ja[order], jb[order], freq[order]
    n_cat = freq.size
    to_a = np.zeros((n_cat, cells))
    to_a[np.arange(n_cat), ja] = 1
    to_b = np.zeros((n_cat, cells))
    to_b[np.arange(n_cat), jb] = 1
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, freq / n, size=resamples).astype(float)
    conf_a = (counts @ to_a).reshape(resamples, width, k, k)
    conf_b = (counts @ to_b).reshape(resamples, width, k, k)
    all_a, all_b = conf_a.sum(axis=1), conf_b.sum(axis=1)
    overall = (confusion_metrics(all_b, labels=avg)[metric]
               - confusion_metrics(all_a, labels=avg)[metric])
    if groups is not None:
        per = np.empty((resamples, n_groups))
        for s, labels in enumerate(group_avg):
            per[:, s] = (confusion_metrics(conf_b[:, s], labels=labels)[metric]
                         - confusion_metrics(conf_a[:, s], labels=labels)[metric])
    elif class_idx is not None:
        key = _CLASS_METRIC[metric]
        per = (confusion_class_metrics(all_b)[key][:, class_idx]
               - confusion_class_metrics(all_a)[key][:, class_idx])
    else:
        per = np.empty((resamples, 0))
    return _Replicates(overall, per)


def _auc_replicates(
    y: np.ndarray, pa: np.ndarray | None, pb: np.ndarray | None, vocab: Sequence[str],
    labels: Sequence[str], *, groups: np.ndarray | None,
    group_labels: Sequence[Sequence[str]], class_idx: np.ndarray | None,
    resamples: int, seed: int,
) -> _Replicates:
    """ROC AUC differences on resampled rows (a loop: ranks do not vectorise)."""
    n = y.size
    rng = np.random.default_rng(seed)
    n_cols = len(group_labels) if groups is not None else (
        0 if class_idx is None else class_idx.size)
    overall = np.full(resamples, np.nan)
    per = np.full((resamples, n_cols), np.nan)
    if pa is None or pb is None:
        return _Replicates(overall, per)
    for i in range(resamples):
        idx = rng.integers(0, n, size=n)
        yi, ai, bi = y[idx], pa[idx], pb[idx]
        overall[i] = (roc_auc(yi, bi, vocab, labels=labels)
                      - roc_auc(yi, ai, vocab, labels=labels))
        if groups is not None:
            gi = groups[idx]
            for s, lab in enumerate(group_labels):
                m = gi == s
                per[i, s] = (roc_auc(yi[m], bi[m], vocab, labels=lab)
                             - roc_auc(yi[m], ai[m], vocab, labels=lab))
        elif class_idx is not None:
            for j, c in enumerate(class_idx):
                pos = yi == vocab[c]
                per[i, j] = binary_auc(pos, bi[:, c]) - binary_auc(pos, ai[:, c])
    return _Replicates(overall, per)


def _interval(diffs: np.ndarray, confidence: float) -> tuple[float, float]:
    if diffs.size == 0 or np.isnan(diffs).all():
        return float("nan"), float("nan")
    alpha = 1 - confidence
    low, high = np.nanquantile(diffs, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def paired_bootstrap_ci(
    y_true: Any, pred_champion: Any, pred_challenger: Any, metric: str, *,
    proba_champion: np.ndarray | None = None, proba_challenger: np.ndarray | None = None,
    classes_champion: Sequence[str] = (), classes_challenger: Sequence[str] = (),
    resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
    labels: Sequence[str] | None = None,
) -> tuple[float, float]:
    """Percentile interval of ``metric(challenger) - metric(champion)``.

    Both models are scored on the same resampled rows each time, over one fixed class
    set: the macro averages and ROC AUC run over the classes of ``labels`` that occur
    in ``y_true`` (default: the classes of ``y_true``), in every resample, for both
    models; probabilities are aligned to the class set (unknown class: 0). Label
    metrics are vectorised through stacked confusion matrices; ROC AUC loops over
    resamples.
    """
    y = np.asarray(y_true, dtype=object).astype(str)
    if y.size == 0:
        return float("nan"), float("nan")
    pa = np.asarray(pred_champion, dtype=object).astype(str)
    pb = np.asarray(pred_challenger, dtype=object).astype(str)
    vocab = class_set(labels, y, pa, pb, classes_champion, classes_challenger)
    present = set(y)
    avg = [c for c in vocab if c in present]
    if metric in LABEL_METRICS:
        reps = _label_replicates(
            _codes(y, vocab), _codes(pa, vocab), _codes(pb, vocab), len(vocab), metric,
            np.array([vocab.index(c) for c in avg]), groups=None, group_avg=(),
            class_idx=None, resamples=resamples, seed=seed)
    else:
        qa = None if proba_champion is None else align_proba(
            proba_champion, [str(c) for c in classes_champion], vocab)
        qb = None if proba_challenger is None else align_proba(
            proba_challenger, [str(c) for c in classes_challenger], vocab)
        reps = _auc_replicates(y, qa, qb, vocab, avg, groups=None, group_labels=(),
                               class_idx=None, resamples=resamples, seed=seed)
    return _interval(reps.overall, confidence)


# --- the rules -------------------------------------------------------------------------


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
    head = f"{metric} {_fmt(after)} vs champion {_fmt(before)}: "
    if rule == "error_reduction":
        return (head + f"the challenger removes {_fmt(value, '+.2%')} of the champion's "
                f"error (1 - {metric}); auto-promote needs >= {threshold:.2%}")
    if rule == "relative":
        return head + (f"relative change {_fmt(value, '+.2%')} "
                       f"(auto-promote needs >= {threshold:.2%})")
    return head + (f"absolute change {_fmt(value, '+.4f')} "
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
        groups = _codes(skeys, group_keys)
        group_avg = [[c for c in vocab if c in set(y[groups == s])]
                     for s in range(len(group_keys))]
    m_a, s_a = _score_rows(y, pa, qa, vocab, avg, groups, group_keys, group_avg)
    m_b, s_b = _score_rows(y, pb, qb, vocab, avg, groups, group_keys, group_avg)
    class_idx = None if groups is not None else np.array(
        [vocab.index(k.removeprefix("class=")) for k in s_a], dtype=np.int64)
    if metric in LABEL_METRICS:
        reps = _label_replicates(
            _codes(y, vocab), _codes(pa, vocab), _codes(pb, vocab), len(vocab), metric,
            np.array([vocab.index(c) for c in avg], dtype=np.int64), groups=groups,
            group_avg=[np.array([vocab.index(c) for c in g], dtype=np.int64)
                       for g in group_avg],
            class_idx=class_idx, resamples=config.bootstrap, seed=config.seed)
    else:
        reps = _auc_replicates(y, qa, qb, vocab, avg, groups=groups, group_labels=group_avg,
                               class_idx=class_idx, resamples=config.bootstrap,
                               seed=config.seed)
    low, high = _interval(reps.overall, config.confidence)
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
                   f"difference is [{_fmt(low, '+.4f')}, {_fmt(high, '+.4f')}] over "
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
            groups = _codes(keys, group_keys)
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
                       [], _next_steps("promote", challenger_version, store, model))
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
                   _next_steps(out.decision, challenger_version, store, model))
