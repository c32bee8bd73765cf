"""The drift components: one task per shard of the current window, then the merge.

``drift_shard`` runs inside the pipeline's ``dsl.ParallelFor`` over ``drift_shards``: each
task (a pod on a cluster, its memory that of one shard) reads its share of the window's
request files from the store and writes a mergeable shard profile. ``detect_drift``
collects them (``dsl.Collected``), merges and decides: the same report, column by column,
as the whole window in one process (:mod:`driftloop.decide.shards`). The bodies call one
step each (:func:`driftloop.steps.drift_shard_step`, :func:`driftloop.steps.drift_merge_step`).
"""

# No ``from __future__ import annotations``: kfp reads the real annotation objects.

from typing import NamedTuple

from kfp.dsl import Artifact, Input, Markdown, Metrics, Output

from driftloop.kfp.image import component


@component
def drift_shard(
    store_uri: str,
    schema_uri: str,
    model_name: str,
    run_id: str,
    run_date: str,
    scheduled_time: str,
    window_days: int,
    shard: int,
    shards: list[int],
    shard_profile: Output[Artifact],
    shard_metrics: Output[Metrics],
) -> int:
    """Summarise one shard of the current window against the champion's reference profile.

    Reads every len(shards)-th request file of the window's partitions (from the store, not
    from ingest's artifact, so no pod holds the whole day), keeps the valid rows stamped in
    the window and writes their counts per reference bin, category and reference-grid
    point (an empty profile while no champion serves).

    Args:
        store_uri: Store root: a folder or gs://bucket/prefix.
        schema_uri: Schema file (JSON or YAML, local or gs://).
        model_name: Model name in the registry.
        run_id: The run's id (for the logs).
        run_date: The run's run_date (its logical time, as ingest reads it).
        scheduled_time: A recurring run's scheduled time (as ingest gets it).
        window_days: Complete days before the logical time that form the current window.
        shard: This task's shard (an item of shards).
        shards: All shards, [0, 1, ..., n-1] (the pipeline's drift_shards).
        shard_profile: The shard's mergeable drift profile (.npz, no pickle).
        shard_metrics: Files and rows read, rejected and duplicated within the shard.

    Returns:
        Rows summarised.
    """
    from driftloop import steps

    out = steps.drift_shard_step(store_uri, schema_uri, model_name, shard_profile.path,
                                 run_id=run_id, run_date=run_date,
                                 scheduled_time=scheduled_time, window_days=window_days,
                                 shard=shard, shards=shards)
    shard_profile.metadata.update({"rows": out.rows, "shard": out.shard,
                                   "model_version": out.model_version, "format": "npz"})
    for name, value in out.metrics().items():
        shard_metrics.log_metric(name, value)
    return out.rows


@component
def detect_drift(
    store_uri: str,
    schema_uri: str,
    model_name: str,
    run_id: str,
    now: str,
    window_days: int,
    p_value: float,
    effect_threshold: float,
    min_samples: int,
    shard_profiles: Input[list[Artifact]],
    drift_report: Output[Markdown],
    drift_json: Output[Artifact],
    drift_metrics: Output[Metrics],
) -> NamedTuple("DriftOutputs", [("drifted", bool), ("status", str)]):  # type: ignore[valid-type]
    """Merge the shards' profiles and compare the window with the champion's reference.

    Decides drift / no_drift / insufficient_data: a feature drifts when its test (KS per
    numeric, chi-squared over pooled categories; text: KS on the champion's predicted
    probabilities, and the out-of-vocabulary rate) is significant after one correction over
    all tests AND its effect size reaches effect_threshold; PSI and JS per feature. Merged
    shard counts give these exactly (KS from counts on the reference sample's grid).
    Skipped (status "skipped", JSON null) while no champion serves. Records
    runs/<run-id>/drift.json and drift.md.

    Args:
        store_uri: Store root: a folder or gs://bucket/prefix.
        schema_uri: Schema file (JSON or YAML, local or gs://).
        model_name: Model name in the registry.
        run_id: The run's id; its folder under runs/ in the store.
        now: The run's logical time (from ingest): the shards must have read its window.
        window_days: Complete days before now that form the current window.
        p_value: Significance level of the per-feature tests, before correction.
        effect_threshold: Effect size (PSI by default) a significant feature needs to count
            as drifted.
        min_samples: Current rows needed for a drift decision.
        shard_profiles: The drift_shard tasks' profiles (dsl.Collected).
        drift_report: The drift report: decision, per-feature table, reasons.
        drift_json: The drift report as JSON (null when skipped), read by decide_retrain.
        drift_metrics: Drift scores: max PSI and JS, PSI and p-value per feature.

    Returns:
        drifted: Whether drift was detected.
        status: drift, no_drift, insufficient_data or skipped.
    """
    from collections import namedtuple
    from pathlib import Path

    from driftloop import steps

    out = steps.drift_merge_step(store_uri, schema_uri, model_name,
                                 [p.path for p in shard_profiles], run_id=run_id, now=now,
                                 window_days=window_days, p_value=p_value,
                                 effect_threshold=effect_threshold, min_samples=min_samples)
    Path(drift_report.path).write_text(out.to_markdown())
    Path(drift_json.path).write_text(out.to_json() + "\n")
    drift_json.metadata.update({"status": out.status, "drifted": out.drifted})
    for name, value in out.metrics().items():
        drift_metrics.log_metric(name, value)
    DriftOutputs = namedtuple("DriftOutputs", ["drifted", "status"])
    return DriftOutputs(out.drifted, out.status)
