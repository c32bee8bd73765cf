"""The continuous-training pipeline: ingest → drift → decide → train → evaluate → promote.

::

    exit handler (notify_on_exit: records runs/<run-id>/status.json, notifies on failure)
    └── ParallelFor(ingest_shards): ingest_shard
        → ingest → analyse_canary → curate_feedback (disagreements, review queue)
                                → ParallelFor(drift_shards): drift_shard → detect_drift
                                                                         → decide_retrain
                                └── if retrain: plan_candidates
                                                ├── ParallelFor candidate: tune_candidate
                                                └── select_challenger (Collected results)
                                                    → evaluate_challenger
                                                └── if verdict == "promote": notify → promote_model

Each ``tune_candidate`` task (one candidate's Optuna search, a pod of its own on a
cluster) gets its CPU request *and limit* and its memory request from the run's
``tune_cpu`` / ``tune_memory`` parameters: a task's threads follow its pod's CPU limit
(:mod:`driftloop.threads`). kfp 2.17's ``PipelineTask.set_cpu_request`` /
``set_cpu_limit`` / ``set_memory_request`` accept a pipeline parameter (a
``PipelineChannel``: ``kfp/dsl/pipeline_task.py`` skips the quantity check for it and the
compiler writes a placeholder resolved at run time); the value must be a string quantity
(``"1"``, ``"500m"``, ``"2Gi"``). The select task, which refits the winner on every row,
gets the same CPU limit.

The run id of every record under ``runs/<run-id>/`` is the KFP run name
(:data:`kfp.dsl.PIPELINE_JOB_NAME_PLACEHOLDER`, made path-safe by
:func:`driftloop.steps.common.run_key`): the run's display name on a cluster, the timestamped
``continuous-training-YYYY-MM-DD-HH-MM-SS-ffffff`` in kfp.local. Caching is off for every
task: each one reads new data or writes the store (run records, registry), and a cached
task would do neither.

Drift runs as a ``dsl.ParallelFor`` over the ``drift_shards`` parameter (``[0, 1, ..., n-1]``):
each ``drift_shard`` task (one pod) reads every n-th request file of the window from the
store and writes a mergeable profile; ``detect_drift`` collects them (``dsl.Collected``)
and decides, with the report the whole window gives in one process
(:mod:`driftloop.decide.shards`). The default ``[0]`` is one shard: one extra task per run.
Ingest does the same over ``ingest_shards``: each ``ingest_shard`` task reads and validates
the lookback's files that hash to it; ``ingest`` merges their typed rows into the records
one reading gives (:func:`driftloop.data.ingest.merge_parts`).

On a cluster the tasks that touch the store get the storage credentials from a
Kubernetes Secret (kfp-kubernetes): the secret is mounted at :data:`GCS_SECRET_MOUNT` and
``GOOGLE_APPLICATION_CREDENTIALS`` points at its ``key.json``. It is a compile-time
option (:func:`build_pipeline`); without it the pods use their service account's
identity (e.g. GKE Workload Identity), which the run's service account gets at
submission.
"""

# No ``from __future__ import annotations``: kfp reads the real annotation objects.

from collections.abc import Sequence
from typing import Any

from kfp import dsl, kubernetes

from driftloop.config import ABConfig, CanaryConfig, DriftConfig, GateConfig, TriggerConfig
from driftloop.config import TuningConfig as _Tuning
from driftloop.kfp.components import (
    analyse_ab,
    analyse_canary,
    curate_feedback,
    decide_retrain,
    detect_drift,
    drift_shard,
    evaluate_challenger,
    ingest,
    ingest_shard,
    notify,
    notify_on_exit,
    promote_model,
)
from driftloop.kfp.components_train import plan_candidates, select_challenger, tune_candidate

PIPELINE_NAME = "continuous-training"
#: The Kubernetes Secret with the storage credentials (key ``key.json``) in the committed spec.
GCS_SECRET = "driftloop-gcs"
GCS_SECRET_MOUNT = "/secrets/gcs"
GCS_KEY_FILE = "key.json"
#: Defaults of the window parameters, the same as :func:`driftloop.steps.ingest.run_ingest`'s
#: (a test keeps them equal; loop is not imported here because it imports scikit-learn).
WINDOW_DAYS = 1
LOOKBACK_DAYS = 30
#: The default shards of the drift window: one (``[0, 1, 2, 3]`` runs four pods).
DRIFT_SHARDS = [0]
#: The default shards of the lookback's files for ingest: one.
INGEST_SHARDS = [0]
#: A search is off by default (``n_trials`` 0: the fixed model); these are the quantities a
#: candidate's pod asks for when it runs.
TUNE_CPU = "1"
TUNE_MEMORY = "2Gi"


def _mount_store_credentials(task: dsl.PipelineTask, secret: str) -> None:
    kubernetes.use_secret_as_volume(task, secret_name=secret, mount_path=GCS_SECRET_MOUNT)
    task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS",
                          f"{GCS_SECRET_MOUNT}/{GCS_KEY_FILE}")


def _ingest_tasks(store_uri: str, schema_uri: str, run_id: str, run_date: str,
                  scheduled: str, window_days: Any, lookback_days: Any,
                  ingest_shards: Any) -> tuple[dsl.PipelineTask, dsl.PipelineTask]:
    """ParallelFor(ingest_shards): ingest_shard, then ingest merging their parts.

    Returns:
        ``(ingest, ingest_shard)``: the merge task (whose outputs later steps read) and
        the loop's shard task.
    """
    with dsl.ParallelFor(items=ingest_shards, name="ingest-shards") as shard:
        part = ingest_shard(store_uri=store_uri, schema_uri=schema_uri, run_id=run_id,
                            run_date=run_date, scheduled_time=scheduled,
                            window_days=window_days, lookback_days=lookback_days,
                            shard=shard, shards=ingest_shards)
    merged = ingest(store_uri=store_uri, schema_uri=schema_uri, run_id=run_id,
                    run_date=run_date, scheduled_time=scheduled, window_days=window_days,
                    lookback_days=lookback_days,
                    shard_parts=dsl.Collected(part.outputs["part"]))
    return merged, part


def _store_tasks(tasks: Sequence[dsl.PipelineTask], gcs_secret: str) -> None:
    """Never cache ``tasks`` (each reads new data or writes the store) and mount the secret."""
    for task in tasks:
        task.set_caching_options(False)
        if gcs_secret:
            _mount_store_credentials(task, gcs_secret)


def build_pipeline(gcs_secret: str = GCS_SECRET, *, schedule_time: bool = True) -> Any:
    """Build the pipeline.

    Args:
        gcs_secret: Name of the Kubernetes Secret holding the storage service-account key
            (``key.json``), mounted into every task that reads or writes the store.
            ``""``: no secret (workload identity, or a local run).
        schedule_time: Pass KFP's schedule-time placeholder to ingest (a recurring run's
            logical time). ``False`` for ``kfp.local``: kfp 2.17's local runner cannot
            resolve that placeholder (``placeholder_utils.resolve_io_placeholders`` raises
            IndexError on it), and a local run's logical time is ``run_date`` or now.

    Returns:
        The ``@dsl.pipeline`` graph component: call it under ``kfp.local`` or compile it.
    """

    @dsl.pipeline(name=PIPELINE_NAME)
    def continuous_training(
        store_uri: str,
        schema_uri: str,
        model_name: str,
        isvc_name: str,
        namespace: str,
        run_date: str = "",
        window_days: int = WINDOW_DAYS,
        lookback_days: int = LOOKBACK_DAYS,
        p_value: float = DriftConfig.p_value,
        effect_threshold: float = DriftConfig.effect_threshold,
        min_samples: int = DriftConfig.min_samples,
        min_new_labels: int = TriggerConfig.min_new_labels,
        perf_drop: float = TriggerConfig.perf_drop,
        max_age_days: float = TriggerConfig.max_age_days,
        auto_threshold: float = GateConfig.auto_threshold,
        canary_min_labelled: int = CanaryConfig.min_labelled,
        canary_max_holds: int = CanaryConfig.max_holds,
        force_retrain: bool = False,
        n_trials: int = 0,
        tuning_seconds: float = _Tuning.tuning_seconds,
        tuning_storage: str = "",
        warm_updates: bool = False,
        tune_cpu: str = TUNE_CPU,
        tune_memory: str = TUNE_MEMORY,
        notify_webhook: str = "",
        rollout_backend: str = "local",
        rollout_state: str = "",
        prometheus_url: str = "",
        pushgateway_url: str = "",
        drift_shards: list = DRIFT_SHARDS,
        ingest_shards: list = INGEST_SHARDS,
    ) -> None:
        """One continuous-training run: retrain on drift or new labels, promote if better.

        Args:
            store_uri: Store root: a folder or gs://bucket/prefix.
            schema_uri: Schema file of the model's records (JSON or YAML, local or gs://).
            model_name: Model name in the registry.
            isvc_name: KServe InferenceService serving the model.
            namespace: Kubernetes namespace of the InferenceService.
            run_date: ISO date of the logical run, for a replay ("" = the run's scheduled
                time; a one-off run: now). The run judges the complete days before it.
            window_days: Days whose records form the current window for drift.
            lookback_days: Days of records and feedback read for labels and training.
            p_value: Significance level of the drift tests, before correction.
            effect_threshold: Effect size (PSI) a significant feature needs to drift.
            min_samples: Current rows needed for a drift decision.
            min_new_labels: New labels since the last training cutoff that trigger a retrain.
            perf_drop: Relative drop of the champion's primary metric that triggers.
            max_age_days: Days without any training (promoted or not) that trigger a
                scheduled retrain (0: no schedule, the default).
            auto_threshold: Relative improvement needed to promote without a person.
            canary_min_labelled: Labelled responses each version needs in the current
                window before a canary is judged.
            canary_max_holds: Runs in a row a canary may hold at one step without a new
                labelled canary response before it is rolled back.
            force_retrain: Retrain regardless of the rules.
            n_trials: Optuna trials per candidate model (0: no search, the fixed model).
            tuning_seconds: Seconds of each candidate's search.
            tuning_storage: Optuna storage: "" in memory, "sqlite" in each task's folder,
                else an RDB URL (a study shared across pods).
            warm_updates: A retrain asked for by new labels alone refits the champion's
                settings on its rows plus the new labels (an update, no search).
            tune_cpu: CPU request and limit of each candidate's task (e.g. "1", "500m").
            tune_memory: Memory request of each candidate's task (e.g. "2Gi").
            notify_webhook: http(s) URL for model-update and failure events ("" = log).
            rollout_backend: Where the canary runs: local (a state folder), kubernetes
                (the cluster's KServe InferenceService) or none (registry aliases only).
            rollout_state: The local backend's state folder ("" = <store>/rollout).
            prometheus_url: Prometheus base URL: the canary's requests, 5xx errors and p95
                latency per version come from its serving metrics ("" = from the logged
                records only).
            pushgateway_url: Prometheus Pushgateway base URL: the exit task pushes the
                run's decisions there as gauges ("" = push nothing).
            drift_shards: Shards of the drift window, [0, 1, ..., n-1]: one drift_shard
                task (pod) each, every n-th request file of the window.
            ingest_shards: Shards of the lookback's files, [0, 1, ..., n-1]: one
                ingest_shard task (pod) each, the files whose key hashes to it.
        """
        run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        scheduled = dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER if schedule_time else ""
        finale = notify_on_exit(store_uri=store_uri, model_name=model_name, run_id=run_id,
                                webhook=notify_webhook, pushgateway_url=pushgateway_url,
                                pipeline_name=PIPELINE_NAME)
        store_tasks = [finale]
        with dsl.ExitHandler(finale, name="run"):
            ingested, ingest_part = _ingest_tasks(store_uri, schema_uri, run_id, run_date,
                                                  scheduled, window_days, lookback_days,
                                                  ingest_shards)
            canary = analyse_canary(
                store_uri=store_uri, model_name=model_name, run_id=run_id,
                now=ingested.outputs["now"], isvc_name=isvc_name, namespace=namespace,
                rollout_backend=rollout_backend, rollout_state=rollout_state,
                webhook=notify_webhook, min_labelled=canary_min_labelled,
                max_holds=canary_max_holds, prometheus_url=prometheus_url,
                records=ingested.outputs["records"],
            )
            curated = curate_feedback(store_uri=store_uri, schema_uri=schema_uri,
                                      model_name=model_name, run_id=run_id,
                                      now=ingested.outputs["now"],
                                      records=ingested.outputs["records"]).after(canary)
            with dsl.ParallelFor(items=drift_shards, name="drift-shards") as shard:
                # not ingest's "now": kfp.local (2.17) would pass the loop item instead
                part = drift_shard(store_uri=store_uri, schema_uri=schema_uri,
                                   model_name=model_name, run_id=run_id, run_date=run_date,
                                   scheduled_time=scheduled, window_days=window_days,
                                   shard=shard, shards=drift_shards,
                                   ).after(canary)  # a completed canary is the new champion
            drift = detect_drift(store_uri=store_uri, schema_uri=schema_uri,
                                 model_name=model_name, run_id=run_id,
                                 now=ingested.outputs["now"], window_days=window_days,
                                 p_value=p_value,
                                 effect_threshold=effect_threshold, min_samples=min_samples,
                                 shard_profiles=dsl.Collected(part.outputs["shard_profile"]))
            decision = decide_retrain(
                store_uri=store_uri, schema_uri=schema_uri, model_name=model_name,
                run_id=run_id, now=ingested.outputs["now"], force=force_retrain,
                min_new_labels=min_new_labels, perf_drop=perf_drop, max_age_days=max_age_days,
                warm_updates=warm_updates, canary_in_progress=canary.outputs["Output"],
                records=ingested.outputs["records"], drift_json=drift.outputs["drift_json"],
            )
            store_tasks += [ingest_part, ingested, canary, curated, part, drift, decision]
            with dsl.If(decision.outputs["Output"] == True, name="retrain"):  # noqa: E712
                planned = plan_candidates(store_uri=store_uri, schema_uri=schema_uri,
                                          model_name=model_name, run_id=run_id,
                                          now=ingested.outputs["now"], n_trials=n_trials,
                                          tuning_seconds=tuning_seconds,
                                          records=ingested.outputs["records"])
                with dsl.ParallelFor(planned.outputs["Output"], name="candidates") as name:
                    tuned = tune_candidate(
                        store_uri=store_uri, schema_uri=schema_uri, model_name=model_name,
                        run_id=run_id, candidate=name, n_trials=n_trials,
                        tuning_seconds=tuning_seconds, tuning_storage=tuning_storage,
                        cpu_request=tune_cpu, memory_request=tune_memory,
                        training=planned.outputs["training"])
                    tuned.set_cpu_request(tune_cpu).set_cpu_limit(tune_cpu)
                    tuned.set_memory_request(tune_memory)
                trained = select_challenger(
                    store_uri=store_uri, schema_uri=schema_uri, model_name=model_name,
                    run_id=run_id, now=ingested.outputs["now"],
                    results=dsl.Collected(tuned.outputs["Output"]),
                    records=ingested.outputs["records"])
                trained.set_cpu_limit(tune_cpu)
                verdict = evaluate_challenger(
                    store_uri=store_uri, schema_uri=schema_uri, model_name=model_name,
                    run_id=run_id, auto_threshold=auto_threshold,
                    model=trained.outputs["model"], eval_set=trained.outputs["eval_set"],
                )
                store_tasks += [planned, tuned, trained, verdict]
                with dsl.If(verdict.outputs["Output"] == "promote", name="promote"):
                    announced = notify(model_name=model_name, run_id=run_id,
                                       webhook=notify_webhook,
                                       verdict_json=verdict.outputs["verdict_json"])
                    promoted = promote_model(
                        store_uri=store_uri, model_name=model_name, isvc_name=isvc_name,
                        namespace=namespace, rollout_backend=rollout_backend,
                        rollout_state=rollout_state, run_id=run_id,
                        verdict_json=verdict.outputs["verdict_json"],
                    ).after(announced)
                    store_tasks.append(promoted)
        for task in [*store_tasks, announced]:
            task.set_caching_options(False)
        if gcs_secret:  # notify reads only its input artifact: no store access
            for task in store_tasks:
                _mount_store_credentials(task, gcs_secret)

    return continuous_training


#: The pipeline as committed in ``pipelines/continuous_training.yaml``.
continuous_training = build_pipeline()


CANARY_PIPELINE_NAME = "canary-analysis"
#: Holds without a new label allowed to the hourly canary analysis: the daily default,
#: in hours.
CANARY_HOURLY_MAX_HOLDS = CanaryConfig.max_holds * 24


def build_canary_pipeline(gcs_secret: str = GCS_SECRET, *, schedule_time: bool = True) -> Any:
    """Build the small pipeline that only judges the canary: ingest → analyse_canary.

    A canary is judged on its own cadence (e.g. an hourly recurring run,
    ``driftloop schedule --package pipelines/canary_analysis.yaml --cron "0 * * * *"``),
    so 10 → 50 → 100 does not take one day per step: the confidence sequence behind the
    analysis stays valid however often it looks. It reads everything logged up to its
    logical time; holds are counted in runs, hence the larger ``canary_max_holds``
    default (the daily default x 24).

    Args:
        gcs_secret: See :func:`build_pipeline`.
        schedule_time: See :func:`build_pipeline`.
    """

    @dsl.pipeline(name=CANARY_PIPELINE_NAME)
    def canary_analysis(
        store_uri: str,
        schema_uri: str,
        model_name: str,
        isvc_name: str,
        namespace: str,
        run_date: str = "",
        lookback_days: int = LOOKBACK_DAYS,
        canary_min_labelled: int = CanaryConfig.min_labelled,
        canary_max_holds: int = CANARY_HOURLY_MAX_HOLDS,
        notify_webhook: str = "",
        rollout_backend: str = "local",
        rollout_state: str = "",
        prometheus_url: str = "",
        pushgateway_url: str = "",
        ingest_shards: list = INGEST_SHARDS,
    ) -> None:
        """Judge the canary in progress and advance, hold or roll it back.

        Args:
            store_uri: Store root: a folder or gs://bucket/prefix.
            schema_uri: Schema file of the model's records (JSON or YAML, local or gs://).
            model_name: Model name in the registry.
            isvc_name: KServe InferenceService serving the model.
            namespace: Kubernetes namespace of the InferenceService.
            run_date: ISO date or time of the logical run for a replay ("" = the run's
                scheduled time; a one-off run: now).
            lookback_days: Days of records and feedback read.
            canary_min_labelled: Labelled responses each version needs before the canary
                is judged.
            canary_max_holds: Runs in a row a canary may hold at one step without a new
                labelled canary response before it is rolled back.
            notify_webhook: http(s) URL for promotion, rollback and failure events.
            rollout_backend: local, kubernetes or none (see the main pipeline).
            rollout_state: The local backend's state folder ("" = <store>/rollout).
            prometheus_url: Prometheus base URL: the canary's requests, 5xx errors and p95
                latency per version come from its serving metrics ("" = from the logged
                records only).
            pushgateway_url: Prometheus Pushgateway base URL: the exit task pushes the
                run's decisions there as gauges ("" = push nothing).
            ingest_shards: Shards of the lookback's files (see the main pipeline).
        """
        run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        scheduled = dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER if schedule_time else ""
        finale = notify_on_exit(store_uri=store_uri, model_name=model_name, run_id=run_id,
                                webhook=notify_webhook, pushgateway_url=pushgateway_url,
                                pipeline_name=CANARY_PIPELINE_NAME)
        with dsl.ExitHandler(finale, name="run"):
            ingested, ingest_part = _ingest_tasks(store_uri, schema_uri, run_id, run_date,
                                                  scheduled, WINDOW_DAYS, lookback_days,
                                                  ingest_shards)
            canary = analyse_canary(
                store_uri=store_uri, model_name=model_name, run_id=run_id,
                now=ingested.outputs["now"], isvc_name=isvc_name, namespace=namespace,
                rollout_backend=rollout_backend, rollout_state=rollout_state,
                webhook=notify_webhook, min_labelled=canary_min_labelled,
                max_holds=canary_max_holds, prometheus_url=prometheus_url,
                records=ingested.outputs["records"])
        _store_tasks((finale, ingest_part, ingested, canary), gcs_secret)

    return canary_analysis


AB_PIPELINE_NAME = "ab-analysis"


def build_ab_pipeline(gcs_secret: str = GCS_SECRET, *, schedule_time: bool = True) -> Any:
    """Build the small pipeline that judges the running A/B tests: ingest → analyse_ab.

    Like the canary's, on its own cadence (e.g. daily or hourly,
    ``driftloop schedule --package pipelines/ab_analysis.yaml``): the confidence sequence
    behind the analysis stays valid however often it looks.

    Args:
        gcs_secret: See :func:`build_pipeline`.
        schedule_time: See :func:`build_pipeline`.
    """

    @dsl.pipeline(name=AB_PIPELINE_NAME)
    def ab_analysis(
        store_uri: str,
        schema_uri: str,
        model_name: str,
        isvc_name: str,
        namespace: str,
        run_date: str = "",
        lookback_days: int = LOOKBACK_DAYS,
        auto_promote: bool = ABConfig.auto_promote,
        notify_webhook: str = "",
        rollout_backend: str = "local",
        rollout_state: str = "",
        pushgateway_url: str = "",
        ingest_shards: list = INGEST_SHARDS,
    ) -> None:
        """Judge every running A/B test; stop the decided ones and act on their winners.

        Args:
            store_uri: Store root: a folder or gs://bucket/prefix.
            schema_uri: Schema file of the model's records (JSON or YAML, local or gs://).
            model_name: Model name in the registry.
            isvc_name: KServe InferenceService serving the model.
            namespace: Kubernetes namespace of the InferenceService.
            run_date: ISO date or time of the logical run for a replay ("" = the run's
                scheduled time; a one-off run: now).
            lookback_days: Days of records and feedback read (a test longer than this is
                judged on its last lookback_days only: keep it >= ab.max_days).
            auto_promote: Promote a winner at once (a canary start) instead of asking for
                approval.
            notify_webhook: http(s) URL for the A/B, promotion and failure events.
            rollout_backend: local, kubernetes or none (see the main pipeline).
            rollout_state: The local backend's state folder ("" = <store>/rollout).
            pushgateway_url: Prometheus Pushgateway base URL for the exit task ("" = none).
            ingest_shards: Shards of the lookback's files (see the main pipeline).
        """
        run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        scheduled = dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER if schedule_time else ""
        finale = notify_on_exit(store_uri=store_uri, model_name=model_name, run_id=run_id,
                                webhook=notify_webhook, pushgateway_url=pushgateway_url,
                                pipeline_name=AB_PIPELINE_NAME)
        with dsl.ExitHandler(finale, name="run"):
            ingested, ingest_part = _ingest_tasks(store_uri, schema_uri, run_id, run_date,
                                                  scheduled, WINDOW_DAYS, lookback_days,
                                                  ingest_shards)
            analysed = analyse_ab(
                store_uri=store_uri, model_name=model_name, run_id=run_id,
                now=ingested.outputs["now"], isvc_name=isvc_name, namespace=namespace,
                rollout_backend=rollout_backend, rollout_state=rollout_state,
                webhook=notify_webhook, auto_promote=auto_promote,
                records=ingested.outputs["records"])
        _store_tasks((finale, ingest_part, ingested, analysed), gcs_secret)

    return ab_analysis
