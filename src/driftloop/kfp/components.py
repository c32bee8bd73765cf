"""One thin lightweight component per pipeline step.

Every body imports :mod:`driftloop.steps` inside itself (compiling needs neither
scikit-learn nor alibi-detect), calls exactly one ``*_step`` function with the artifact
paths, and writes the outputs and the artifact metadata. The logic lives in the step
functions; see ``components/<name>/README.md`` for each interface.

Components run in the project image (:data:`driftloop.kfp.image.IMAGE`) with
``install_kfp_package=False``: the image already holds kfp and driftloop at pinned
versions, and nothing is pip-installed at run time.

A branch scalar (``decide_retrain``'s retrain flag, ``evaluate_challenger``'s verdict) is
the component's single return value, the output named ``Output``: kfp.local (2.17) can
evaluate a ``dsl.If`` only on an output of that name, so a NamedTuple field would never
branch locally. Other scalar outputs are NamedTuple fields.
"""

# No ``from __future__ import annotations``: kfp reads the real annotation objects.

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import (
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)

from driftloop.kfp.components_ab import analyse_ab
from driftloop.kfp.components_curation import curate_feedback
from driftloop.kfp.components_drift import detect_drift, drift_shard
from driftloop.kfp.components_ingest import ingest_shard
from driftloop.kfp.components_train import plan_candidates, select_challenger, tune_candidate
from driftloop.kfp.image import component


@component
def ingest(
    store_uri: str,
    schema_uri: str,
    run_id: str,
    run_date: str,
    scheduled_time: str,
    window_days: int,
    lookback_days: int,
    shard_parts: Input[list[Artifact]],
    records: Output[Dataset],
    current: Output[Dataset],
    quarantine: Output[Dataset],
    ingest_metrics: Output[Metrics],
) -> NamedTuple("IngestOutputs", [("now", str), ("rows", int)]):  # type: ignore[valid-type]
    """Merge the ingest shards' parts into the lookback's records, labels joined.

    Decides which rows are accepted, which are quarantined (with a reason each) and which
    are duplicates; rows in = accepted + quarantined + duplicates. Never cached: new data
    must never be served from a cache. Records runs/<run-id>/ingest.json.

    Args:
        store_uri: Store root: a folder or gs://bucket/prefix.
        schema_uri: Schema file (JSON or YAML, local or gs://).
        run_id: The run's id; its folder under runs/ in the store.
        run_date: ISO date (or time) of the logical run, for a replay ("" = the scheduled
            time): a date means the end of that day. Nothing stamped later is read.
        scheduled_time: KFP's PIPELINE_JOB_SCHEDULE_TIME_UTC placeholder: a recurring run's
            scheduled time, so a late or catch-up run judges the same window (unresolved
            or "" = now).
        window_days: Complete days before the logical time whose records form the current
            window for drift.
        lookback_days: Days of records and feedback read for labels and training.
        shard_parts: The ingest_shard tasks' parts (dsl.Collected), merged here.
        records: Every accepted record of the lookback, labels joined (Parquet).
        current: The current window's records (Parquet).
        quarantine: Rejected rows with the reason naming each field and rule (Parquet).
        ingest_metrics: Row accounting (rows in, accepted, quarantined, duplicates, labels).

    Returns:
        now: The run's logical time (ISO-8601), used by every later step.
        rows: Accepted records of the lookback.
    """
    from collections import namedtuple

    from driftloop import steps

    out = steps.ingest_step(
        store_uri, schema_uri, run_id=run_id, run_date=run_date,
        scheduled_time=scheduled_time, window_days=window_days,
        lookback_days=lookback_days, records_path=records.path, current_path=current.path,
        quarantine_path=quarantine.path, part_paths=[p.path for p in shard_parts],
    )
    records.metadata.update({"rows": out.n_records, "labelled": out.n_labelled,
                             "format": "parquet", "status": out.report.status})
    current.metadata.update({"rows": out.n_current, "format": "parquet"})
    quarantine.metadata.update({"rows": out.report.counts.quarantined, "format": "parquet"})
    for name, value in out.metrics().items():
        ingest_metrics.log_metric(name, value)
    IngestOutputs = namedtuple("IngestOutputs", ["now", "rows"])
    return IngestOutputs(out.now, out.n_records)


@component
def analyse_canary(
    store_uri: str,
    model_name: str,
    run_id: str,
    now: str,
    isvc_name: str,
    namespace: str,
    rollout_backend: str,
    rollout_state: str,
    webhook: str,
    min_labelled: int,
    max_holds: int,
    prometheus_url: str,
    records: Input[Dataset],
    canary_report: Output[Markdown],
    canary_metrics: Output[Metrics],
) -> str:
    """Judge the canary in progress on live traffic and advance, hold or roll it back.

    Per model_version on the logged responses joined with feedback, served since the
    canary started (across runs and traffic steps):
    accuracy (interval of the canary-minus-champion difference), error rate and p95
    latency, with a minimum of labelled responses per version. Decides advance (next
    traffic step; at 100 the canary becomes the champion and the old champion previous),
    hold (too few labels or inconclusive) or rollback (canaryTrafficPercent 0, the previous
    storageUri restored, the canary alias cleared, a rollback event sent). Does nothing
    when no canary is in progress. Records runs/<run-id>/rollout.json and rollout.md.

    Args:
        store_uri: Store root: a folder or gs://bucket/prefix.
        model_name: Model name in the registry.
        run_id: The run's id; its folder under runs/ in the store.
        now: The run's logical time (from ingest).
        isvc_name: KServe InferenceService serving the model ("" = registry only).
        namespace: Kubernetes namespace of the InferenceService.
        rollout_backend: local (state folder), kubernetes (the cluster's API) or none.
        rollout_state: The local backend's state folder ("" = <store>/rollout).
        webhook: http(s) URL receiving rollback and promotion events ("" = log only).
        min_labelled: Labelled responses each version needs before the canary is judged.
        max_holds: Runs in a row the canary may hold at one step without a new labelled
            response before it is rolled back.
        prometheus_url: Prometheus base URL for each version's requests, 5xx errors and p95
            latency ("" = from the logged records only).
        records: The lookback's records (from ingest).
        canary_report: The step and the analysis (per-version numbers, every rule).
        canary_metrics: Traffic shares, live accuracies and the interval.

    Returns:
        The version whose canary was in flight when the run started, unless this run
        rolled it back ("" = none); the retrain decision waits while it is set.
    """
    from pathlib import Path

    from driftloop import steps

    out = steps.analyse_canary_step(
        store_uri, model_name, records.path, run_id=run_id, now=now, isvc_name=isvc_name,
        namespace=namespace, rollout_backend=rollout_backend, rollout_state=rollout_state,
        webhook=webhook, min_labelled=min_labelled, max_holds=max_holds,
        prometheus_url=prometheus_url,
    )
    Path(canary_report.path).write_text(out.to_markdown())
    canary_report.metadata.update({
        "in_progress": out.in_progress,
        "action": out.step.action if out.step is not None else "none",
    })
    for name, value in out.metrics().items():
        canary_metrics.log_metric(name, value)
    return out.in_progress


@component
def decide_retrain(
    store_uri: str,
    schema_uri: str,
    model_name: str,
    run_id: str,
    now: str,
    force: bool,
    min_new_labels: int,
    perf_drop: float,
    max_age_days: float,
    warm_updates: bool,
    canary_in_progress: str,
    records: Input[Dataset],
    drift_json: Input[Artifact],
    decision_report: Output[Markdown],
) -> bool:
    """Decide whether to retrain, with the measured value and threshold behind each rule.

    Rules: no champion yet, force, drift, new-label volume, performance drop of the
    champion on newly labelled records, time since the last training (schedule), cooldown,
    and no new challenger while a canary is in flight (unless forced). Records
    runs/<run-id>/decision.json and decision.md.

    Args:
        store_uri: Store root: a folder or gs://bucket/prefix.
        schema_uri: Schema file (JSON or YAML, local or gs://).
        model_name: Model name in the registry.
        run_id: The run's id; its folder under runs/ in the store.
        now: The run's logical time (from ingest).
        force: Retrain regardless of the rules.
        min_new_labels: New labels since the champion's training cutoff that trigger.
        perf_drop: Relative drop of the champion's live accuracy that triggers.
        max_age_days: Days without any training (promoted or not) that trigger a scheduled
            retrain (0: no schedule).
        warm_updates: A retrain asked for by new labels alone is an update (the champion's
            settings refit, no search); the decision's kind and reason say which.
        canary_in_progress: The canary version in flight ("" = none, from analyse_canary).
        records: Every accepted record of the lookback (from ingest).
        drift_json: The drift report JSON (from detect_drift).
        decision_report: The decision and every rule as Markdown.

    Returns:
        Whether to retrain (the output named Output, which the retrain branch tests).
    """
    from pathlib import Path

    from driftloop import steps

    decision = steps.decide_step(
        store_uri, schema_uri, model_name, records.path, drift_json.path, run_id=run_id,
        now=now, force=force, min_new_labels=min_new_labels, perf_drop=perf_drop,
        max_age_days=max_age_days, canary_in_progress=canary_in_progress,
        warm_updates=warm_updates,
    )
    Path(decision_report.path).write_text(decision.to_markdown())
    decision_report.metadata.update({"retrain": decision.retrain, "fired": decision.fired,
                                     "kind": decision.kind})
    return decision.retrain


@component
def evaluate_challenger(
    store_uri: str,
    schema_uri: str,
    model_name: str,
    run_id: str,
    auto_threshold: float,
    model: Input[Model],
    eval_set: Input[Dataset],
    verdict_report: Output[Markdown],
    verdict_json: Output[Artifact],
    eval_metrics: Output[Metrics],
    challenger_curves: Output[ClassificationMetrics],
) -> str:
    """Score challenger and champion on the same held-out rows and apply the promotion gate.

    Decides promote / needs_approval / reject: relative improvement of the primary metric
    (>= auto_threshold), the lower bound of a paired bootstrap interval (> 0), p95 latency
    and per-slice regressions (hard rules). Without a champion the challenger is promoted
    as the first model. Records runs/<run-id>/verdict.json and verdict.md.

    Args:
        store_uri: Store root: a folder or gs://bucket/prefix.
        schema_uri: Schema file (JSON or YAML, local or gs://).
        model_name: Model name in the registry.
        run_id: The run's id; its folder under runs/ in the store.
        auto_threshold: Relative improvement needed to promote without a person.
        model: The challenger (from select_challenger); loaded from the registry, sha256-verified.
        eval_set: The held-out evaluation rows (from select_challenger).
        verdict_report: The verdict, every rule and both models' scores as Markdown.
        verdict_json: The verdict as JSON, read by notify and promote_model.
        eval_metrics: Both models' metrics, the improvement, interval and latencies.
        challenger_curves: The challenger's confusion matrix and ROC curve.

    Returns:
        The verdict: promote, needs_approval or reject (the output named Output, which
        the promote branch tests).
    """
    from pathlib import Path

    from driftloop import steps

    out = steps.evaluate_step(store_uri, schema_uri, model_name, model.path, eval_set.path,
                              run_id=run_id, auto_threshold=auto_threshold)
    Path(verdict_report.path).write_text(out.verdict.to_markdown())
    Path(verdict_json.path).write_text(out.verdict.to_json() + "\n")
    verdict_json.metadata.update({"decision": out.decision,
                                  "challenger": out.verdict.challenger.version})
    for name, value in out.metrics().items():
        eval_metrics.log_metric(name, value)
    challenger_curves.log_confusion_matrix(out.curves.labels, out.curves.matrix)
    if out.curves.fpr:
        challenger_curves.log_roc_curve(out.curves.fpr, out.curves.tpr, out.curves.thresholds)
    return out.decision


@component
def notify(
    model_name: str,
    run_id: str,
    webhook: str,
    verdict_json: Input[Artifact],
) -> bool:
    """Announce the model change before it happens.

    A promote verdict sends a model_update event (version, decision, reasons) to the
    webhook as a JSON POST, or to the log when no webhook is set. With a webhook the
    delivery is required: a failed POST fails this task, so promote_model does not run.

    Args:
        model_name: Model name.
        run_id: The run's id.
        webhook: http(s) URL receiving the event ("" = log only).
        verdict_json: The verdict JSON (from evaluate_challenger).

    Returns:
        Whether the event was delivered.
    """
    from driftloop import steps

    delivery = steps.notify_step(verdict_json.path, model_name=model_name, run_id=run_id,
                                 webhook=webhook)
    return delivery.ok


@component
def promote_model(
    store_uri: str,
    model_name: str,
    isvc_name: str,
    namespace: str,
    rollout_backend: str,
    rollout_state: str,
    run_id: str,
    verdict_json: Input[Artifact],
    promotion_report: Output[Markdown],
) -> NamedTuple("PromoteOutputs", [("champion", str)]):  # type: ignore[valid-type]
    """Start the challenger's canary when the verdict says promote.

    The challenger serves canaryTrafficPercent = the first step (10) of the
    InferenceService and becomes the registry's "canary"; later runs advance it
    (analyse_canary). The first model ever is deployed at 100% and becomes the champion at
    once. With rollout_backend "none" (or no isvc_name) only the registry moves: the
    challenger becomes the champion and the old one "previous". Every alias move is
    appended to the registry's history with the verdict's reasons and the run id. Records
    runs/<run-id>/aliases.json and rollout.json.

    Args:
        store_uri: Store root: a folder or gs://bucket/prefix.
        model_name: Model name in the registry.
        isvc_name: The KServe InferenceService serving the model ("" = registry only).
        namespace: Its Kubernetes namespace.
        rollout_backend: local (state folder), kubernetes (the cluster's API) or none.
        rollout_state: The local backend's state folder ("" = <store>/rollout).
        run_id: The run's id; its folder under runs/ in the store.
        verdict_json: The verdict JSON (from evaluate_challenger).
        promotion_report: What moved, as Markdown.

    Returns:
        champion: The champion version after this step.
    """
    from collections import namedtuple
    from pathlib import Path

    from driftloop import steps

    out = steps.promote_step(store_uri, model_name, verdict_json.path, run_id=run_id,
                             isvc_name=isvc_name, namespace=namespace,
                             rollout_backend=rollout_backend, rollout_state=rollout_state)
    Path(promotion_report.path).write_text(out.to_markdown())
    promotion_report.metadata.update({"promoted": out.promoted, "version": out.version,
                                      "canary_started": out.canary_started})
    PromoteOutputs = namedtuple("PromoteOutputs", ["champion"])
    return PromoteOutputs(out.aliases.champion or "")


@component
def notify_on_exit(
    store_uri: str,
    model_name: str,
    run_id: str,
    webhook: str,
    pushgateway_url: str,
    pipeline_name: str,
    status: dsl.PipelineTaskFinalStatus,
) -> None:
    """The exit handler: record how the run ended; send a failure event unless it succeeded.

    Runs after the pipeline's body whatever happened (KFP exit task). Records
    runs/<run-id>/status.json; a failed or cancelled run sends a failure event to the
    webhook (or the log); with a Pushgateway the run's decisions are pushed there as
    gauges (grouping key job=driftloop, pipeline, model). Problems recording, delivering
    or pushing are logged, never raised.

    Args:
        store_uri: Store root: a folder or gs://bucket/prefix.
        model_name: Model name.
        run_id: The run's id; its folder under runs/ in the store.
        webhook: http(s) URL receiving the failure event ("" = log only).
        pushgateway_url: Prometheus Pushgateway base URL ("" = push nothing).
        pipeline_name: The pipeline's name, part of the Pushgateway grouping key.
        status: The final status of the pipeline's body (set by KFP).
    """
    from driftloop import steps

    steps.exit_step(store_uri, model_name=model_name, run_id=run_id, state=status.state,
                    error=status.error_message or "", task=status.pipeline_task_name,
                    webhook=webhook, pushgateway_url=pushgateway_url,
                    pipeline_name=pipeline_name)


#: Every component, by name, in pipeline order (components of a later feature live in
#: their own ``kfp/components_<topic>.py`` with the same decorator and are listed here).
COMPONENTS = {
    "ingest_shard": ingest_shard,
    "ingest": ingest,
    "analyse_canary": analyse_canary,
    "drift_shard": drift_shard,
    "curate_feedback": curate_feedback,
    "detect_drift": detect_drift,
    "decide_retrain": decide_retrain,
    "plan_candidates": plan_candidates,
    "tune_candidate": tune_candidate,
    "select_challenger": select_challenger,
    "evaluate_challenger": evaluate_challenger,
    "notify": notify,
    "promote_model": promote_model,
    "notify_on_exit": notify_on_exit,
    "analyse_ab": analyse_ab,
}
