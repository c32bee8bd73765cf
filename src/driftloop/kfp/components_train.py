"""The components of a retrain's search: plan the candidates, tune one, select the winner.

The pipeline runs ``plan_candidates``, then a ``dsl.ParallelFor`` of ``tune_candidate``
over its candidate list (each iteration one pod on a cluster, with the CPU and memory the
run's parameters ask for), then ``select_challenger`` over the ``dsl.Collected`` results.
Each body calls exactly one step of :mod:`driftloop.steps.tune`.

``tune_candidate`` takes its CPU and memory quantities as inputs although only the task's
resource settings use them: kfp.local (2.17) resolves a pipeline parameter inside a
ParallelFor only when a component of the loop consumes it (otherwise "Parent pipeline
input argument ... not found"); the values are recorded in the study's metadata.
"""

# No ``from __future__ import annotations``: kfp reads the real annotation objects.

from typing import NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from driftloop.kfp.image import component


@component
def plan_candidates(
    store_uri: str,
    schema_uri: str,
    model_name: str,
    run_id: str,
    now: str,
    n_trials: int,
    tuning_seconds: float,
    records: Input[Dataset],
    training: Output[Dataset],
    candidates_report: Output[Markdown],
) -> list:
    """Plan the retrain's training rows and list the candidates to search on them.

    The rows are the ones the challenger will be trained on (the gate's evaluation rows
    are held out first, so no search sees them). A full retrain lists the model kind's
    candidates (tuning on: n_trials >= 1) or the fixed model (n_trials 0); an update
    (the trigger's kind) lists "update". Records runs/<run-id>/candidates.json.

    Args:
        store_uri: Store root: a folder or gs://bucket/prefix.
        schema_uri: Schema file (JSON or YAML, local or gs://).
        model_name: Model name in the registry.
        run_id: The run's id; its folder under runs/ in the store.
        now: The run's logical time (from ingest).
        n_trials: Trials per candidate (0: no search, the fixed model).
        tuning_seconds: Seconds per candidate's search (0: the config's budget).
        records: Every accepted record of the lookback (from ingest).
        training: The planned training rows (Parquet), read by every tune task.
        candidates_report: The candidate list and budget as Markdown.

    Returns:
        The candidate names (the output named Output, the ParallelFor's items).
    """
    from pathlib import Path

    from driftloop import steps

    out = steps.plan_candidates_step(
        store_uri, schema_uri, model_name, records.path, run_id=run_id, now=now,
        training_path=training.path, n_trials=n_trials, tuning_seconds=tuning_seconds)
    training.metadata.update({"rows": out.train_rows, "data_hash": out.data_hash,
                              "format": "parquet"})
    Path(candidates_report.path).write_text(out.to_markdown())
    candidates_report.metadata.update({"kind": out.kind, "candidates": out.candidates})
    return list(out.candidates)


@component
def tune_candidate(
    store_uri: str,
    schema_uri: str,
    model_name: str,
    run_id: str,
    candidate: str,
    n_trials: int,
    tuning_seconds: float,
    tuning_storage: str,
    cpu_request: str,
    memory_request: str,
    training: Input[Dataset],
    study: Output[Artifact],
    candidate_metrics: Output[Metrics],
) -> dict:
    """Search one candidate's hyperparameters with Optuna on the planned training rows.

    Seeded TPE sampler, at most n_trials trials and tuning_seconds seconds, median
    pruning after each cross-validation fold. A candidate that cannot fit (e.g. a fold with
    one class) is returned as skipped with its reason, never a failed task. Records
    runs/<run-id>/tune-<candidate>.json.

    Args:
        store_uri: Store root: a folder or gs://bucket/prefix.
        schema_uri: Schema file (JSON or YAML, local or gs://).
        model_name: Model name in the registry (an update reads the champion's settings).
        run_id: The run's id; its folder under runs/ in the store.
        candidate: The candidate's name (one ParallelFor item), or "update".
        n_trials: Trials per candidate (0: no search).
        tuning_seconds: Seconds of the search (0: the config's budget).
        tuning_storage: Optuna storage: "" in memory, "sqlite" a file in this task's
            study artifact, else an RDB URL (a shared study).
        cpu_request: The task's CPU request and limit (its threads follow the limit).
        memory_request: The task's memory request.
        training: The planned training rows (from plan_candidates).
        study: The task's folder (the SQLite study when tuning_storage is "sqlite").
        candidate_metrics: The best score, trials, pruned and failed trials and seconds
            (shown per candidate in the KFP UI).

    Returns:
        The candidate's result (collected by select_challenger).
    """
    from driftloop import steps
    from driftloop.serde import to_jsonable

    out = steps.tune_step(store_uri, schema_uri, model_name, training.path, candidate,
                          run_id=run_id, work_dir=study.path, n_trials=n_trials,
                          tuning_seconds=tuning_seconds, storage=tuning_storage)
    study.metadata.update({"candidate": out.candidate, "status": out.status,
                           "reason": out.reason, "cpu_request": cpu_request,
                           "memory_request": memory_request})
    if out.score is not None:
        candidate_metrics.log_metric(f"cv_{out.metric}", out.score)
    for name in ("n_trials", "n_pruned", "n_failed", "seconds"):
        candidate_metrics.log_metric(name, float(getattr(out, name)))
    # kfp.local (2.17) cannot pass a None inside a collected dict: leave unset fields out
    result: dict = {k: v for k, v in to_jsonable(out).items() if v is not None}
    return result


@component
def select_challenger(
    store_uri: str,
    schema_uri: str,
    model_name: str,
    run_id: str,
    now: str,
    results: list,
    records: Input[Dataset],
    model: Output[Model],
    eval_set: Output[Dataset],
    train_metrics: Output[Metrics],
) -> NamedTuple("SelectOutputs", [("version", str), ("candidate", str)]):  # type: ignore[valid-type]
    """Choose the best candidate, refit it on every training row and register it.

    The best cross-validated score wins (ties: the earlier candidate; nothing completed:
    the fixed model). The training rows are planned again and must hash as the plan
    task's did. The model card (metadata.json) records every candidate's score, params,
    trials and seconds and why the winner won. Records runs/<run-id>/train.json.

    Args:
        store_uri: Store root: a folder or gs://bucket/prefix.
        schema_uri: Schema file (JSON or YAML, local or gs://).
        model_name: Model name in the registry.
        run_id: The run's id; its folder under runs/ in the store.
        now: The run's logical time (from ingest); stamps the version.
        results: Every tune task's result (dsl.Collected).
        records: Every accepted record of the lookback (from ingest).
        model: The registered version's folder (model.joblib, metadata.json, drift
            profile); metadata: version, sha256, registry URI, candidate, validation score.
        eval_set: The held-out evaluation rows (Parquet).
        train_metrics: Training rows and the validation score of the primary metric.

    Returns:
        version: The registered challenger version.
        candidate: The winning candidate.
    """
    from collections import namedtuple

    from driftloop import steps

    out = steps.select_step(store_uri, schema_uri, model_name, records.path, results,
                            run_id=run_id, now=now, model_dir=model.path,
                            eval_path=eval_set.path)
    model.metadata.update({
        "version": out.version, "sha256": out.model_sha256, "registry_uri": out.model_uri,
        "framework": "scikit-learn", "primary_metric": out.primary_metric,
        "validation_score": out.validation_score, "created_at": out.created_at,
        "candidate": out.candidate,
    })
    eval_set.metadata.update({"rows": out.eval_rows, "source": out.eval_source,
                              "format": "parquet"})
    train_metrics.log_metric("train_rows", float(out.train_rows))
    train_metrics.log_metric("eval_rows", float(out.eval_rows))
    if out.validation_score is not None:
        train_metrics.log_metric(f"validation_{out.primary_metric}", out.validation_score)
    SelectOutputs = namedtuple("SelectOutputs", ["version", "candidate"])
    return SelectOutputs(out.version, out.candidate)
