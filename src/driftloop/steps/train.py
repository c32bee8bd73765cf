"""The train step: fit a challenger on the planned rows, register it, hand on its eval rows.

:func:`run_train` trains and registers over an open store (a retried run finishes the
registered version's missing steps); :func:`train_step` is the step the ``train_model``
component and the in-process loop call: it also downloads the registered version
(sha256-verified) and writes the evaluation set.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from driftloop.clock import logical_time
from driftloop.config import Config
from driftloop.data.curate import quality_dict
from driftloop.data.runs import record_result
from driftloop.data.schema import Schema
from driftloop.data.storage import Store
from driftloop.decide.drift import (
    DriftReport,
)
from driftloop.decide.trigger import (
    RetrainDecision,
)
from driftloop.models.candidates import DEFAULT
from driftloop.models.candidates import builder as candidate_builder
from driftloop.models.registry import Registry
from driftloop.models.train import (
    ModelMetadata,
    TrainingError,
    data_hash,
    feature_importance,
    save_model_artifact,
    train_model,
)
from driftloop.serde import JsonResult
from driftloop.steps.champion import Champion, load_champion
from driftloop.steps.common import (
    logged_step,
    open_inputs,
    read_frame,
    recorded,
    run_key,
    write_frame,
)
from driftloop.steps.ingest import (
    Window,
    records_window,
)
from driftloop.steps.plan import (
    TrainingPlan,
    WindowChoice,
    build_profile,
    load_reference,
    plan_training,
    training_start,
    trigger_record,
)


@dataclass(frozen=True)
class Selection:
    """The challenger a search (or an update) chose, as :func:`run_train` fits it.

    Attributes:
        kind: ``full`` or ``update`` (the trigger's :attr:`RetrainDecision.kind`).
        candidate: Candidate name (:mod:`driftloop.models.candidates`).
        params: Its parameters.
        record: What the model card records (``ModelMetadata.candidates``).
        data_hash: The hash of the rows the search ran on ("" = not checked).
    """

    kind: str
    candidate: str
    params: dict[str, Any]
    record: dict[str, Any]
    data_hash: str = ""


def planned_rows(
    store: Store, champion: Champion | None, window: Window, schema: Schema, *,
    now: dt.datetime, config: Config, model_name: str, decision: RetrainDecision | None,
) -> tuple[TrainingPlan, WindowChoice]:
    """The rows a challenger of this run trains, is judged and profiled on (deterministic).

    The plan task and the select task of the pipeline both call it on the same store and
    records, so they see the same training rows (the select step checks the data hash).
    """
    reference = load_reference(store, schema, model_name, champion.version if champion else None)
    fired = list(decision.fired) if decision is not None else []
    choice = training_start(champion, window.records, schema, config, fired)
    plan = plan_training(reference, window.records, champion.info() if champion else None,
                         now=now, config=config, train_start=choice.train_start,
                         eval_start=choice.change_at, schema=schema)
    return plan, choice


@dataclass
class TrainOutcome:
    """A registered challenger and the evaluation set held out from its training."""

    version: str
    metadata: ModelMetadata
    eval_set: pd.DataFrame
    train_rows: int
    eval_source: str = field(default="production")
    profile_source: str = field(default="")
    feedback_quality: dict[str, Any] = field(default_factory=dict)


def run_train(
    store: Store, registry: Registry, champion: Champion | None, window: Window, schema: Schema,
    *, now: dt.datetime, config: Config, model_name: str,
    decision: RetrainDecision | None = None, drift: DriftReport | None = None,
    selection: Selection | None = None,
) -> TrainOutcome:
    """Train a challenger on the reference plus labelled production records and register it.

    The rows are chosen by :func:`plan_training` (from the detected change on when drift
    or a performance drop fired, :func:`training_start`); the model, its metadata (with
    why it was trained and on which window) and its drift profile are registered and its
    training set becomes the next reference. Its permutation feature importance on the
    evaluation rows (:func:`~driftloop.models.train.feature_importance`) goes into its
    metadata. ``selection`` is the candidate a search chose (its parameters and the
    search's record go into the metadata); ``None``: the fixed model.

    Raises:
        TrainingError: The planned training rows cannot train a model (the decision step
            postpones such a retrain unless forced).
    """
    fired = list(decision.fired) if decision is not None else []
    plan, choice = planned_rows(store, champion, window, schema, now=now, config=config,
                                model_name=model_name, decision=decision)
    if selection is not None and selection.data_hash:
        found = data_hash(plan.training, schema)
        if found != selection.data_hash:
            raise TrainingError(
                f"the training rows changed between plan_candidates and select_challenger "
                f"(data hash {selection.data_hash[:12]} -> {found[:12]}): rerun the retrain")
    make = None
    if selection is not None and selection.candidate != DEFAULT:
        make = candidate_builder(schema, config.train, selection.candidate, selection.params)
    result = train_model(plan.training, schema, config.train, model_name=model_name,
                         primary_metric=config.gate.primary_metric, now=now, builder=make)
    if selection is not None:
        result.metadata.params.update(candidate=selection.candidate,
                                      tuned=dict(selection.params))
        result.metadata.candidates = selection.record
    result.metadata.trigger = trigger_record(fired, drift, choice)
    result.metadata.feature_importance = feature_importance(
        result, plan.eval_set, plan.training, schema, config.train)
    metadata = result.metadata
    if registry.has_version(metadata.version):
        # A retry of an interrupted run (or a forced re-run at the same logical time):
        # the version name comes from the logical time and the data, so it is the same
        # training; finish its missing steps instead of failing on an immutable version.
        metadata = registered_training(registry, metadata)
        version = metadata.version
    else:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / metadata.version
            save_model_artifact(result, folder)
            profile = build_profile(plan, schema, config, metadata.version, result.model,
                                    builder=make)
            profile.save(folder)
            version = registry.register(folder)
    # rewriting the same rows is harmless; a run killed before this line left none
    store.write_bytes(f"reference/{model_name}/{version}.parquet",
                      plan.training.to_parquet(index=False))
    return TrainOutcome(version, metadata, plan.eval_set, len(plan.training),
                        plan.eval_source, plan.profile_source, quality_dict(plan.quality))


def registered_training(registry: Registry, trained: ModelMetadata) -> ModelMetadata:
    """The registered metadata of ``trained``'s version, when it holds the same training.

    Raises:
        RegistryError: The version exists but was trained on other rows (its data hash
            differs): a real conflict, not a retry.
    """
    from driftloop.models.registry import RegistryError

    stored = registry.metadata(trained.version)
    if stored.get("data_hash") != trained.data_hash:
        raise RegistryError(
            f"version {trained.version!r} of model {registry.model_name!r} already exists "
            f"with other training data (data hash {stored.get('data_hash')} != "
            f"{trained.data_hash}); versions are immutable")
    return ModelMetadata.from_json(registry.read_file(trained.version, "metadata.json").decode())


@dataclass
class TrainSummary(JsonResult):
    """The registered challenger, as recorded in ``runs/<run-id>/train.json``.

    Attributes:
        version: Registered version.
        model_sha256: sha256 of ``model.joblib``.
        model_uri: The version's folder in the registry.
        train_rows: Rows the model was trained on.
        eval_rows: Held-out rows written as the evaluation set.
        eval_source: Where the evaluation rows come from.
        primary_metric: Metric the gate compares.
        validation_score: The primary metric on the training set's validation split.
        created_at: The model's creation (logical) time.
        profile_source: Which rows the drift reference profile was built from.
        feedback_quality: What feedback curation did to the training rows
            (:class:`driftloop.data.curate.FeedbackQuality`: near-duplicates, excluded
            sources with their test, label-rate and prediction-rate shifts per slice).
        candidate: The candidate it is (``default``: the fixed model).
    """

    version: str
    model_sha256: str
    model_uri: str
    train_rows: int
    eval_rows: int
    eval_source: str
    primary_metric: str
    validation_score: float | None
    created_at: str
    profile_source: str = ""
    feedback_quality: dict[str, Any] = field(default_factory=dict)
    candidate: str = DEFAULT

    def to_markdown(self) -> str:
        """A short Markdown summary."""
        score = "n/a" if self.validation_score is None else f"{self.validation_score:.4f}"
        return (f"### Challenger `{self.version}`\n\n"
                f"- trained on {self.train_rows} rows; validation {self.primary_metric} "
                f"= {score}\n- {self.eval_rows} evaluation rows ({self.eval_source})\n"
                f"- drift reference: {self.profile_source or 'n/a'}\n"
                f"- feedback: {self.feedback_quality.get('note', 'n/a')}\n"
                f"- sha256 `{self.model_sha256}`\n- registry `{self.model_uri}`\n")


def summarise_training(outcome: TrainOutcome, registry: Registry) -> TrainSummary:
    """The record of a registered challenger written to ``runs/<run-id>/train.json``."""
    meta = outcome.metadata
    score = meta.validation_metrics.get(meta.primary_metric)
    return TrainSummary(
        version=outcome.version, model_sha256=meta.model_sha256,
        model_uri=registry.store.url(f"{registry.prefix}/{outcome.version}"),
        train_rows=outcome.train_rows, eval_rows=len(outcome.eval_set),
        eval_source=outcome.eval_source, primary_metric=meta.primary_metric,
        validation_score=None if score is None else float(score), created_at=meta.created_at,
        profile_source=outcome.profile_source, feedback_quality=outcome.feedback_quality,
        candidate=str(meta.params.get("candidate", DEFAULT)),
    )


@logged_step("train_model")
def train_step(
    store: Store | str, schema: Schema | str, model_name: str, records_path: str | Path, *,
    run_id: str, now: str, model_dir: str | Path, eval_path: str | Path,
    config: Config | None = None, selection: Selection | None = None,
) -> TrainSummary:
    """Train and register a challenger; write its model folder and its evaluation set.

    The registered version is downloaded (sha256-verified) into ``model_dir``; the rows
    held out from training go to ``eval_path`` as Parquet. Records ``train.json``.

    Args:
        store: The store, or its root URI.
        schema: The schema, or its file's URI.
        model_name: Model name in the registry.
        records_path: Parquet file of the lookback's records (from :func:`ingest_step`).
        run_id: The run's id (made path-safe by :func:`run_key`).
        now: The run's logical time (ISO-8601).
        model_dir: Folder to receive ``model.joblib``, ``metadata.json`` and the profile.
        eval_path: Where to write the held-out evaluation set.
        config: Every threshold (default: :class:`Config`).
        selection: The candidate chosen by the search (:func:`driftloop.steps.tune.select_step`
            passes it); ``None``: the fixed model.
    """
    run_id = run_key(run_id)
    store, schema = open_inputs(store, schema)
    registry = Registry(store, model_name)
    decision, drift = recorded(store, run_id, "decision", RetrainDecision), recorded(
        store, run_id, "drift", DriftReport)
    outcome = run_train(store, registry, load_champion(registry),
                        records_window(read_frame(records_path)), schema,
                        now=logical_time(now), config=config or Config(),
                        model_name=model_name, decision=decision, drift=drift,
                        selection=selection)
    write_frame(outcome.eval_set, eval_path)
    registry.download(outcome.version, Path(model_dir))
    summary = summarise_training(outcome, registry)
    record_result(store, run_id, "train", summary)
    return summary
