"""How fast each model answers one row: the measurement behind the gate's latency rule.

The gate's ``latency`` rule is hard: a challenger slower than :func:`latency_allowance`
(``max(latency_ratio x champion, champion + 0.05 ms)``) is rejected whatever its metrics.
So the measurement must not reject a model for load it did not cause: each row's time is
the fastest of interleaved single-row calls timed with the calling thread's CPU clock
(``time.thread_time_ns``), single-threaded, and the median over rows is compared (see
:func:`measure_latency`). It is its own module because timing models is a different
concern from scoring them: it calls the models, the rest of the gate only reads their
predictions (:func:`driftloop.decide.gate.gate_decision` takes the rule's result as given).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from driftloop.data.schema import Schema
from driftloop.decide.verdict import RuleResult
from driftloop.models.train import feature_frame

__all__ = [
    "LATENCY_EXTRA_ROUNDS",
    "LATENCY_FLOOR_MS",
    "latency_allowance",
    "latency_rule",
    "measure_latency",
]

# Sub-millisecond timing jitter must not reject a model: the challenger may always be
# this much slower than the champion, whatever the ratio allows.
LATENCY_FLOOR_MS = 0.05
LATENCY_EXTRA_ROUNDS = 2


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
