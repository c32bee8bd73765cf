"""The drift steps: the current window against the champion's stored reference profile.

:func:`drift_step` compares a window held in memory. The pipeline and the in-process loop
run the window by shards instead: :func:`drift_shard_step` once per shard (a
``ParallelFor`` task each on a cluster) reads its share of the day's files and writes a
mergeable :class:`~driftloop.decide.shards.ShardProfile`; :func:`drift_merge_step` adds
them up and decides, with the same rule and the same report as :func:`drift_step`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from driftloop.clock import run_logical_time
from driftloop.config import Config
from driftloop.data.runs import record_result
from driftloop.data.schema import Schema
from driftloop.data.storage import Store
from driftloop.data.window_shards import read_window_shard
from driftloop.decide.drift import (
    DriftReport,
    detect_drift,
)
from driftloop.decide.shards import (
    ShardProfile,
    detect_drift_merged,
    merge_profiles,
    profile_shard,
)
from driftloop.errors import DriftloopError
from driftloop.models.registry import Registry
from driftloop.serde import dumps
from driftloop.steps.champion import Champion, load_champion
from driftloop.steps.common import (
    finite_metrics,
    logged_step,
    metric_name,
    open_inputs,
    pipeline_config,
    read_frame,
    run_key,
    shard_count,
)
from driftloop.steps.ingest import window_end


def run_drift(
    champion: Champion | None, current: pd.DataFrame, schema: Schema, config: Config
) -> DriftReport | None:
    """Compare the current window with the champion's reference (``None``: no champion)."""
    if champion is None:
        return None
    return detect_drift(champion.profile, current, schema, config.drift, model=champion.model)


@dataclass
class DriftOutcome:
    """The drift report of the run, or ``None`` when no champion serves yet."""

    report: DriftReport | None

    @property
    def status(self) -> str:
        """``drift``, ``no_drift``, ``insufficient_data`` or ``skipped``."""
        return "skipped" if self.report is None else self.report.status

    @property
    def drifted(self) -> bool:
        """Whether drift was detected."""
        return bool(self.report is not None and self.report.drifted)

    def to_json(self) -> str:
        """The report as JSON (``null`` when skipped)."""
        return dumps(self.report)

    def to_markdown(self) -> str:
        """The report as Markdown."""
        if self.report is None:
            return "### Drift: **skipped**\n\nNo champion serves yet: nothing to compare with.\n"
        return self.report.to_markdown()

    def metrics(self) -> dict[str, float]:
        """Drift scores for the KFP Metrics artifact (max and per-feature PSI, p, effect)."""
        r = self.report
        if r is None:
            return {}
        values: dict[str, Any] = {
            "drifted": float(r.drifted), "drifted_features": len(r.drifted_features),
            "n_current": r.n_current, "n_reference": r.n_reference,
            "max_psi": r.max_psi, "max_js": r.max_js,
        }
        values["significant_features"] = len(r.significant_features)
        for f in r.features:
            values[f"psi_{metric_name(f.name)}"] = f.psi
            values[f"pvalue_{metric_name(f.name)}"] = f.p_value
            values[f"effect_{metric_name(f.name)}"] = f.effect
        return finite_metrics(values)


@logged_step("detect_drift")
def drift_step(
    store: Store | str, schema: Schema | str, model_name: str, current_path: str | Path, *,
    run_id: str, p_value: float | None = None, min_samples: int | None = None,
    effect_threshold: float | None = None, config: Config | None = None,
) -> DriftOutcome:
    """Compare the current window with the champion's stored reference profile.

    Records ``runs/<run-id>/drift.json`` and ``drift.md`` (not when skipped).

    Args:
        store: The store, or its root URI.
        schema: The schema, or its file's URI.
        model_name: Model name in the registry.
        current_path: Parquet file of the current window (from :func:`ingest_step`).
        run_id: The run's id (made path-safe by :func:`run_key`).
        p_value: Significance level of the per-feature tests, before correction.
        min_samples: Current rows needed for a drift decision.
        effect_threshold: Effect size a significant feature needs to count as drifted.
        config: Every threshold (default: :class:`Config`); the knobs above override it.
    """
    run_id = run_key(run_id)
    store, schema = open_inputs(store, schema)
    config = pipeline_config(config, p_value=p_value, min_samples=min_samples,
                             effect_threshold=effect_threshold)
    champion = load_champion(Registry(store, model_name))
    report = run_drift(champion, read_frame(current_path), schema, config)
    if report is not None:
        record_result(store, run_id, "drift", report)
    return DriftOutcome(report)


@dataclass
class ShardOutcome:
    """What one drift shard read and summarised.

    Attributes:
        shard: The shard's index.
        n_shards: Shards of the window.
        files: Files it read (``[]`` when skipped: no champion yet).
        rows: Rows summarised (valid, inside the window, one per id within the shard).
        rejected: Rows the validation rejected (ingest quarantines them).
        duplicates: Rows dropped as a repeated id within the shard.
        model_version: Champion version summarised against (``""``: skipped).
    """

    shard: int
    n_shards: int
    files: list[str]
    rows: int
    rejected: int
    duplicates: int
    model_version: str

    def metrics(self) -> dict[str, float]:
        """Row accounting for the KFP Metrics artifact."""
        return {"files": float(len(self.files)), "rows": float(self.rows),
                "rejected": float(self.rejected), "duplicates": float(self.duplicates)}


def shard_window(now: dt.datetime, window_days: int) -> tuple[dt.datetime, dt.datetime]:
    """The current window ``[start, end)`` of a run at ``now``, as ingest cuts it."""
    end = window_end(now)
    return end - dt.timedelta(days=window_days), end


@logged_step("drift_shard")
def drift_shard_step(
    store: Store | str, schema: Schema | str, model_name: str, profile_path: str | Path, *,
    run_id: str, window_days: int, shard: int, shards: int | Sequence[int],
    run_date: str = "", scheduled_time: str = "", now: dt.datetime | None = None,
) -> ShardOutcome:
    """Summarise one shard of the current window against the champion's reference profile.

    Writes the shard's :class:`~driftloop.decide.shards.ShardProfile` to ``profile_path``
    (an empty one, of no model version, while no champion serves). Its memory is that of
    its own files' rows.

    Args:
        store: The store, or its root URI.
        schema: The schema, or its file's URI.
        model_name: Model name in the registry.
        profile_path: Where to write the shard profile (``.npz``).
        run_id: The run's id (for the logs).
        window_days: Complete days before the logical time that form the current window.
        shard: This shard's index.
        shards: The number of shards, or the pipeline's list ``[0, ..., n-1]``.
        run_date: The run's ``run_date`` parameter (see :func:`run_logical_time`).
        scheduled_time: A recurring run's scheduled time (as ingest gets it).
        now: The logical time itself (an in-process run: ingest's); wins over both strings.

    The pipeline gives the logical time's inputs, not ingest's ``now`` output: kfp 2.17's
    local runner replaces every upstream task output passed into a ``ParallelFor`` by the
    loop item (``kfp/local/orchestrator/task_spec_utils.py``,
    ``create_parameter_loop_iteration_task_spec``). The shard states its window and
    :func:`drift_merge_step` checks it against ingest's.
    """
    n_shards = shard_count(shards, "drift_shards")
    store, schema = open_inputs(store, schema)
    champion = load_champion(Registry(store, model_name))
    when = now or run_logical_time(run_date, scheduled_time)
    start, end = shard_window(when, window_days)
    window = f"{start.isoformat()}/{end.isoformat()}"
    if champion is None:
        ShardProfile(model_version="", n_rows=0, window=window).save(profile_path)
        return ShardOutcome(shard, n_shards, [], 0, 0, 0, "")
    part = read_window_shard(store, schema, start=start, end=end, until=when, shard=shard,
                             n_shards=n_shards)
    prof = profile_shard(champion.profile, part.frame, schema, model=champion.model)
    prof.window = window
    prof.save(profile_path)
    return ShardOutcome(shard, n_shards, part.files, len(part.frame), part.rejected,
                        part.duplicates, champion.profile.model_version)


@logged_step("detect_drift")
def drift_merge_step(
    store: Store | str, schema: Schema | str, model_name: str,
    shard_paths: Sequence[str | Path], *, run_id: str, now: str | dt.datetime,
    window_days: int, p_value: float | None = None, min_samples: int | None = None,
    effect_threshold: float | None = None, config: Config | None = None,
) -> DriftOutcome:
    """Merge the shards' profiles and decide drift: the report :func:`drift_step` gives.

    Records ``runs/<run-id>/drift.json`` and ``drift.md`` (not when skipped).

    Args:
        store: The store, or its root URI.
        schema: The schema, or its file's URI.
        model_name: Model name in the registry.
        shard_paths: The shard profiles (from :func:`drift_shard_step`).
        run_id: The run's id (made path-safe by :func:`run_key`).
        now: Ingest's logical time: the shards' window must be the one it cut.
        window_days: Days of the current window.
        p_value: Significance level of the per-feature tests, before correction.
        min_samples: Current rows needed for a drift decision.
        effect_threshold: Effect size a significant feature needs to count as drifted.
        config: Every threshold (default: :class:`Config`); the knobs above override it.

    Raises:
        DriftloopError: A shard was summarised against another champion than the one
            serving now, or over another window than ingest's (a one-off run whose tasks
            straddle midnight: run it again, or give ``run_date``).
    """
    run_id = run_key(run_id)
    store, schema = open_inputs(store, schema)
    config = pipeline_config(config, p_value=p_value, min_samples=min_samples,
                             effect_threshold=effect_threshold)
    champion = load_champion(Registry(store, model_name))
    if champion is None:
        return DriftOutcome(None)
    merged = merge_profiles([ShardProfile.load(p) for p in shard_paths])
    start, end = shard_window(dt.datetime.fromisoformat(now) if isinstance(now, str) else now,
                              window_days)
    if merged.window != f"{start.isoformat()}/{end.isoformat()}":
        raise DriftloopError(f"drift merge: the shards read the window {merged.window} but "
                             f"ingest's is {start.isoformat()}/{end.isoformat()}; run again "
                             "(or set run_date)")
    report = detect_drift_merged(champion.profile, merged, schema, config.drift)
    record_result(store, run_id, "drift", report)
    return DriftOutcome(report)
