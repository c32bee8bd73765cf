"""The decide step: retrain or not, from drift, labels, live performance and age.

:func:`run_decide` gathers what the trigger rules (:func:`driftloop.decide.trigger.decide_retrain`)
need from the store and the champion; :func:`decide_step` is the step the
``decide_retrain`` component and the in-process loop call.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftloop.clock import logical_time, parse_time
from driftloop.config import Config
from driftloop.data.runs import record_result
from driftloop.data.schema import Schema
from driftloop.data.storage import Store
from driftloop.decide.drift import (
    DriftReport,
)
from driftloop.decide.trigger import (
    LastAttempt,
    RetrainDecision,
    count_new_labels,
    decide_retrain,
)
from driftloop.models.registry import Registry
from driftloop.models.train import (
    predict_frame,
    training_problem,
)
from driftloop.steps.champion import Champion, load_champion
from driftloop.steps.common import (
    logged_step,
    open_inputs,
    pipeline_config,
    read_frame,
    read_json_artifact,
    run_key,
)
from driftloop.steps.ingest import (
    Window,
    records_window,
)
from driftloop.steps.plan import (
    live_errors,
    load_reference,
    plan_training,
    training_start,
)
from driftloop.steps.review import disagreement_inputs


def last_retrain(metas: list[dict[str, Any]]) -> tuple[dt.datetime | None,
                                                         dt.datetime | None]:
    """When the latest version was trained, and the latest training cutoff of any version."""
    if not metas:
        return None, None
    created = max(parse_time(m["created_at"]) for m in metas)
    cutoff = max(parse_time(m.get("training_cutoff") or m["created_at"]) for m in metas)
    return created, cutoff


def champion_live_accuracy(
    champion: Champion, records: pd.DataFrame, schema: Schema, *, now: dt.datetime,
    days: float,
) -> tuple[float | None, int]:
    """The champion's live accuracy on recent rows it never saw, and how many there are.

    The rows: labelled records served in the ``days`` before ``now`` and after the
    champion's training cutoff.
    """
    if records.empty:
        return None, 0
    served = pd.to_datetime(records["timestamp"], utc=True)
    cutoff = pd.Timestamp(champion.info().training_cutoff)
    recent = served >= pd.Timestamp(now) - pd.Timedelta(days=days)
    rows = records.loc[records["label"].notna() & (served > cutoff) & recent]
    return _accuracy(champion, rows, schema), len(rows)


def _accuracy(champion: Champion, rows: pd.DataFrame, schema: Schema) -> float | None:
    """The champion's accuracy on labelled ``rows`` (None: no row)."""
    if rows.empty:
        return None
    pred, _ = predict_frame(champion.model, rows, schema)
    return float((pred == rows["label"].astype(str).to_numpy()).mean())


def accuracy_on_new_labels(champion: Champion, records: pd.DataFrame, schema: Schema,
                           since: dt.datetime) -> float | None:
    """The champion's accuracy on the records labelled after ``since`` (None: none)."""
    if records.empty:
        return None
    rows = records.loc[records["label"].notna()
                       & (pd.to_datetime(records["label_timestamp"], utc=True)
                          > pd.Timestamp(since))]
    return _accuracy(champion, rows, schema)


def last_attempt(metas: list[dict[str, Any]], champion: Champion, records: pd.DataFrame
                 ) -> LastAttempt | None:
    """The latest version trained after the champion and not promoted (None: none).

    It is the drift rule's memory: the evidence that version was trained on.

    Args:
        metas: Every registered version's metadata.
        champion: The champion.
        records: The lookback's records (for the labels since that version's cutoff).
    """
    created = parse_time(champion.metadata.created_at)
    later = [m for m in metas
             if m["version"] != champion.version and parse_time(m["created_at"]) > created]
    if not later:
        return None
    meta = max(later, key=lambda m: parse_time(m["created_at"]))
    why = meta.get("trigger") or {}
    cutoff = parse_time(meta.get("training_cutoff") or meta["created_at"])
    effect = why.get("drift_effect")
    return LastAttempt(meta["version"], parse_time(meta["created_at"]),
                       tuple(why.get("fired", ())),
                       float(effect) if effect is not None else None,
                       count_new_labels(records, cutoff))


def performance_scan(errors: np.ndarray, config: Config) -> dict[str, Any]:
    """The performance rule's second look: a step up in the champion's live error stream.

    Args:
        errors: The champion's live errors in serving order (:func:`live_errors`).
        config: Thresholds (``trigger.perf_alpha``).

    Returns:
        ``decide_retrain`` keyword arguments: ``error_step`` (found at
        ``trigger.perf_alpha / 2``, or None) and ``error_rows`` (rows scanned).
    """
    from driftloop.decide.changepoint import error_change_point

    step = (error_change_point(errors, alpha=config.trigger.perf_alpha / 2)
            if errors.size else None)
    return {"error_step": step, "error_rows": int(errors.size)}


def run_decide(
    registry: Registry, champion: Champion | None, window: Window, drift: DriftReport | None,
    schema: Schema, *, now: dt.datetime, config: Config, force: bool = False,
    canary_in_progress: str | None = None,
) -> RetrainDecision:
    """Decide whether to retrain from the drift report, labels, performance and age.

    ``canary_in_progress`` (the version whose canary is in flight) blocks retraining
    unless forced; so does a run without a label since the last training. Rows that
    cannot train a model (:func:`plan_training` gives one class, say) block it always.
    """
    if champion is None:
        return decide_retrain(None, now=now, config=config.trigger, force=force)
    info = champion.info()
    metric, samples = champion_live_accuracy(champion, window.records, schema, now=now,
                                             days=config.trigger.perf_window_days)
    metas = [registry.metadata(v) for v in registry.versions()]  # read once per decision
    last_at, last_cutoff = last_retrain(metas)
    # Count labels since the latest training, promoted or not: a rejected challenger has
    # already seen the labels before its cutoff, so they must not trigger again.
    since = max(info.training_cutoff, last_cutoff) if last_cutoff else info.training_cutoff
    # the champion's live errors: read by the performance rule and the training window
    live = live_errors(champion, window.records, schema)
    decide = partial(
        decide_retrain, info, now=now, config=config.trigger, drift=drift,
        new_labels=count_new_labels(window.records, since), current_metric=metric,
        metric_samples=samples, last_retrain_at=last_at, force=force,
        canary_in_progress=canary_in_progress,
        last_attempt=last_attempt(metas, champion, window.records),
        train_cap=config.train.max_rows, updates=config.tuning.updates,
        new_label_accuracy=accuracy_on_new_labels(champion, window.records, schema, since),
        **performance_scan(live[2], config),
        disagreement=disagreement_inputs(champion, window.records, schema, now=now,
                                         config=config),
    )
    decision = decide()
    if not decision.retrain:
        return decision  # a quiet run reads no reference and plans nothing
    reference = load_reference(registry.store, schema, registry.model_name, champion.version)
    choice = training_start(champion, window.records, schema, config, decision.fired,
                            live=live)
    plan = plan_training(reference, window.records, info, now=now, config=config,
                         train_start=choice.train_start, eval_start=choice.change_at,
                         schema=schema)
    problem = training_problem(plan.training, schema)
    if problem is None and plan.eval_needed:
        return decide(eval_needed=plan.eval_needed, eval_have=len(plan.eval_set))
    return decision if problem is None else decide(train_problem=problem)


@logged_step("decide_retrain")
def decide_step(
    store: Store | str, schema: Schema | str, model_name: str, records_path: str | Path,
    drift_path: str | Path, *, run_id: str, now: str, force: bool = False,
    min_new_labels: int | None = None, perf_drop: float | None = None,
    max_age_days: float | None = None, canary_in_progress: str = "",
    config: Config | None = None, warm_updates: bool | None = None,
) -> RetrainDecision:
    """Decide whether to retrain; records ``runs/<run-id>/decision.json`` and ``.md``.

    Args:
        store: The store, or its root URI.
        schema: The schema, or its file's URI.
        model_name: Model name in the registry.
        records_path: Parquet file of the lookback's records (from :func:`ingest_step`).
        drift_path: The drift report JSON (from :func:`drift_step`; ``null`` = skipped).
        run_id: The run's id (made path-safe by :func:`run_key`).
        now: The run's logical time (ISO-8601, from :func:`ingest_step`).
        force: Retrain regardless of the rules.
        min_new_labels: New labels since the last training cutoff that trigger.
        perf_drop: Relative drop of the champion's live accuracy that triggers.
        max_age_days: Days without any training (promoted or not) that trigger a scheduled
            retrain (0: no schedule).
        canary_in_progress: The version whose canary was in flight at the start of the run
            (from :func:`analyse_canary_step`; ``""``: none). Blocks retraining unless forced.
        config: Every threshold (default: :class:`Config`); the knobs above override it.
        warm_updates: Overrides ``tuning.updates`` (a label-only retrain is an update).
    """
    run_id = run_key(run_id)
    store, schema = open_inputs(store, schema)
    config = pipeline_config(config, min_new_labels=min_new_labels, perf_drop=perf_drop,
                             max_age_days=max_age_days)
    if warm_updates is not None:
        config = replace(config, tuning=replace(config.tuning, updates=warm_updates))
    registry = Registry(store, model_name)
    drift = read_json_artifact(DriftReport, drift_path, "drift report")
    decision = run_decide(registry, load_champion(registry),
                          records_window(read_frame(records_path)), drift, schema,
                          now=logical_time(now), config=config, force=force,
                          canary_in_progress=canary_in_progress or None)
    record_result(store, run_id, "decision", decision)
    return decision
