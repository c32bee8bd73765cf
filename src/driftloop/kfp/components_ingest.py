"""The ingest shard component: one task per shard of the lookback's files.

``ingest_shard`` runs inside the pipeline's ``dsl.ParallelFor`` over ``ingest_shards``:
each task (a pod on a cluster, its memory that of its shard's raw rows) reads and
validates the request and feedback files it owns (by the CRC-32 of each file's key) and
writes a part; ``ingest`` collects them (``dsl.Collected``) and merges: the records of
one reading (:func:`driftloop.data.ingest.merge_parts`). The body calls one step
(:func:`driftloop.steps.ingest_shard_step`).
"""

# No ``from __future__ import annotations``: kfp reads the real annotation objects.

from kfp.dsl import Artifact, Metrics, Output

from driftloop.kfp.image import component


@component
def ingest_shard(
    store_uri: str,
    schema_uri: str,
    run_id: str,
    run_date: str,
    scheduled_time: str,
    window_days: int,
    lookback_days: int,
    shard: int,
    shards: list[int],
    part: Output[Artifact],
    shard_metrics: Output[Metrics],
) -> int:
    """Read and validate the lookback's request and feedback files this shard owns.

    Args:
        store_uri: Store root: a folder or gs://bucket/prefix.
        schema_uri: Schema file (JSON or YAML, local or gs://).
        run_id: The run's id (for the logs).
        run_date: The run's run_date (its logical time, as ingest reads it).
        scheduled_time: A recurring run's scheduled time (as ingest gets it).
        window_days: Complete days before the logical time that form the current window.
        lookback_days: Days of records and feedback read for labels and training.
        shard: This task's shard (an item of shards).
        shards: All shards, [0, 1, ..., n-1] (the pipeline's ingest_shards).
        part: The shard's typed valid rows, labels and quarantine (a folder of Parquet
            files and part.json).
        shard_metrics: Files, rows and labels read, rows quarantined.

    Returns:
        Request rows read.
    """
    from driftloop import steps

    out = steps.ingest_shard_step(store_uri, schema_uri, part.path, run_id=run_id,
                                  run_date=run_date, scheduled_time=scheduled_time,
                                  window_days=window_days, lookback_days=lookback_days,
                                  shard=shard, shards=shards)
    part.metadata.update({"shard": out.shard, "rows_in": out.rows_in, "format": "parquet"})
    for name, value in out.metrics().items():
        shard_metrics.log_metric(name, value)
    return out.rows_in
