"""The steps of one continuous-training run over a store, each a plain function.

Every KFP component, CLI subcommand and the in-process demo call these: a step reads
its inputs from the store and the previous step's results, calls the core modules and
records its typed result under ``runs/<run-id>/`` so the history of decisions is
queryable without KFP.
"""

from __future__ import annotations

import datetime as dt
import io
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from driftloop.clock import parse_time
from driftloop.config import Config
from driftloop.drift import DriftReport, ReferenceProfile, build_reference_profile, detect_drift
from driftloop.evaluate import Verdict, evaluate_challenger
from driftloop.ingest import IngestResult, ingest, read_file
from driftloop.metrics import compute_metrics
from driftloop.notify import Event, Notifier, NullNotifier
from driftloop.registry import AliasState, Registry
from driftloop.rollout.base import RolloutBackend
from driftloop.schema import Schema
from driftloop.serde import JsonResult, dumps
from driftloop.storage import Store
from driftloop.train import (
    ModelMetadata,
    assemble_training_set,
    predict_frame,
    save_model_artifact,
    split_holdout,
    train_model,
    training_problem,
)
from driftloop.trigger import ChampionInfo, RetrainDecision, count_new_labels, decide_retrain
from driftloop.validate import validate_records

if TYPE_CHECKING:
    from driftloop.progressive import RolloutStep

PROFILE_FILES = ("drift_profile.npz", "drift_profile.json")
MIN_EVAL_ROWS = 50


def record_result(store: Store, run_id: str, name: str, result: Any) -> str:
    """Write a step's result as ``runs/<run-id>/<name>.json`` (and ``.md`` when renderable)."""
    key = f"runs/{run_id}/{name}.json"
    store.write_text(key, dumps(result) + "\n")
    if hasattr(result, "to_markdown"):
        store.write_text(f"runs/{run_id}/{name}.md", result.to_markdown())
    return store.url(key)


# --- ingest ---------------------------------------------------------------------------


@dataclass
class Window:
    """The ingested rows of one run: all of the lookback, and the current window's share."""

    result: IngestResult
    current: pd.DataFrame

    @property
    def records(self) -> pd.DataFrame:
        """Every accepted record of the lookback (labels joined)."""
        return self.result.records


def window_end(now: dt.datetime) -> dt.datetime:
    """The end of the last complete day at or before ``now`` (UTC midnight).

    A run judges whole days that ended before its logical time: a daily run at 00:03
    judges yesterday (all of it), not the first three minutes of today.
    """
    utc = now.astimezone(dt.UTC) if now.tzinfo else now.replace(tzinfo=dt.UTC)
    return dt.datetime.combine(utc.date(), dt.time(), tzinfo=dt.UTC)


def run_ingest(
    store: Store, schema: Schema, *, now: dt.datetime, window_days: int = 1,
    lookback_days: int = 30,
) -> Window:
    """Ingest the lookback (for labels) and cut out the current window (for drift).

    Nothing stamped after ``now`` is read: records at or after it and labels after it
    are set aside (a replay at ``now`` sees what a live run at ``now`` saw). The current
    window is the last ``window_days`` complete days before ``now``
    (:func:`window_end`); the lookback is the ``lookback_days`` days before that, plus
    what arrived since midnight (labels for earlier records keep arriving).

    Args:
        store: The data store.
        schema: The records' schema.
        now: The run's logical time (a recurring run's scheduled time).
        window_days: Complete days whose records count as "current" for drift.
        lookback_days: Days of records and feedback read for labels and training.
    """
    end = window_end(now)
    first = (end - dt.timedelta(days=max(lookback_days, window_days))).date()
    last = max((now - dt.timedelta(microseconds=1)).date(), first)
    result = ingest(store, schema, first, last, until=now)
    first_current = pd.Timestamp(end - dt.timedelta(days=window_days))
    records = result.records
    ts = records["timestamp"]
    current = records.loc[(ts >= first_current) & (ts < pd.Timestamp(end))]
    return Window(result=result, current=current.reset_index(drop=True))


# --- champion -------------------------------------------------------------------------


@dataclass
class Champion:
    """The serving champion: its model, metadata and stored drift profile."""

    version: str
    model: Any
    metadata: ModelMetadata
    profile: ReferenceProfile

    def info(self) -> ChampionInfo:
        """The facts the trigger rules need."""
        meta = self.metadata
        return ChampionInfo(
            version=meta.version,
            created_at=parse_time(meta.created_at),
            training_cutoff=parse_time(meta.training_cutoff or meta.created_at),
            primary_metric=meta.primary_metric,
            # NaN when the training set was too small or too one-sided to validate
            baseline=float(meta.validation_metrics.get(meta.primary_metric, float("nan"))),
        )


def load_profile(registry: Registry, version: str) -> ReferenceProfile:
    """Load the drift profile stored beside model ``version``."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in PROFILE_FILES:
            (Path(tmp) / name).write_bytes(registry.read_file(version, name))
        return ReferenceProfile.load(Path(tmp))


def load_champion(registry: Registry) -> Champion | None:
    """Load the champion (sha256-verified), or ``None`` before the first model."""
    version = registry.champion()
    if version is None:
        return None
    meta = ModelMetadata.from_json(registry.read_file(version, "metadata.json").decode())
    return Champion(version, registry.load_model(version), meta, load_profile(registry, version))


# --- drift and decision ---------------------------------------------------------------


def run_drift(
    champion: Champion | None, current: pd.DataFrame, schema: Schema, config: Config
) -> DriftReport | None:
    """Compare the current window with the champion's reference (``None``: no champion)."""
    if champion is None:
        return None
    return detect_drift(champion.profile, current, schema, config.drift, model=champion.model)


def _last_retrain(registry: Registry) -> tuple[dt.datetime | None, dt.datetime | None]:
    """When the latest version was trained, and the latest training cutoff of any version."""
    metas = [registry.metadata(v) for v in registry.versions()]
    if not metas:
        return None, None
    created = max(parse_time(m["created_at"]) for m in metas)
    cutoff = max(parse_time(m.get("training_cutoff") or m["created_at"]) for m in metas)
    return created, cutoff


def champion_metric_on_new_labels(
    champion: Champion, records: pd.DataFrame, schema: Schema
) -> tuple[float | None, int]:
    """The champion's primary metric on records labelled after its training cutoff."""
    cutoff = pd.Timestamp(champion.info().training_cutoff)
    new = records.loc[records["label"].notna() & (records["label_timestamp"] > cutoff)]
    if new.empty:
        return None, 0
    pred, proba = predict_frame(champion.model, new, schema)
    classes = [str(c) for c in champion.model.classes_]
    metrics = compute_metrics(new["label"].astype(str).to_numpy(), pred, proba, classes)
    value = metrics.get(champion.metadata.primary_metric)
    return (None if value is None else float(value)), len(new)


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
    metric, samples = champion_metric_on_new_labels(champion, window.records, schema)
    last_at, last_cutoff = _last_retrain(registry)
    # Count labels since the latest training, promoted or not: a rejected challenger has
    # already seen the labels before its cutoff, so they must not trigger again.
    since = max(info.training_cutoff, last_cutoff) if last_cutoff else info.training_cutoff
    decide = partial(
        decide_retrain, info, now=now, config=config.trigger, drift=drift,
        new_labels=count_new_labels(window.records, since), current_metric=metric,
        metric_samples=samples, last_retrain_at=last_at, force=force,
        canary_in_progress=canary_in_progress,
    )
    decision = decide()
    if not decision.retrain:
        return decision  # a quiet run reads no reference and plans nothing
    reference = load_reference(registry.store, schema, registry.model_name, champion.version)
    plan = plan_training(reference, window.records, info, now=now, config=config)
    problem = training_problem(plan.training, schema)
    return decision if problem is None else decide(train_problem=problem)


# --- train ----------------------------------------------------------------------------


def load_reference(store: Store, schema: Schema, model_name: str, version: str | None) -> (
    pd.DataFrame
):
    """The reference set: the champion's training set, or the seed set before the first model.

    The seed set is every JSONL/CSV/Parquet file under ``reference/<model>/seed*``; its rows
    carry their label inline and are validated like any record (invalid rows are dropped
    here and reported by ``driftloop ingest``).
    """
    if version is not None:
        key = f"reference/{model_name}/{version}.parquet"
        return pd.read_parquet(io.BytesIO(store.read_bytes(key)))
    keys = [k for k in store.list(f"reference/{model_name}")
            if k.rsplit("/", 1)[-1].startswith("seed")]
    frames = [read_file(store, k)[0] for k in keys]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    valid, _ = validate_records(pd.concat(frames, ignore_index=True), schema)
    return valid.loc[valid["label"].notna()].drop_duplicates("id").reset_index(drop=True)


@dataclass
class TrainingPlan:
    """What a challenger is trained on, judged on and profiled on, fixed before training.

    Attributes:
        training: The training rows (reference plus held-in production labels).
        eval_set: Held-out rows both models are scored on.
        eval_source: Where ``eval_set`` comes from, in words.
        profile_rows: Rows the new model never trained on, for its drift reference.
        profile_source: Where ``profile_rows`` come from, in words.
    """

    training: pd.DataFrame
    eval_set: pd.DataFrame
    eval_source: str
    profile_rows: pd.DataFrame
    profile_source: str


def _by_time(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    ts = pd.to_datetime(frame["timestamp"], utc=True)
    order = ts.sort_values(kind="stable").index
    return frame.loc[order].reset_index(drop=True), ts.loc[order].reset_index(drop=True)


def newest_rows(frame: pd.DataFrame, now: dt.datetime, days: float, at_least: int) -> (
    pd.DataFrame
):
    """Rows served in the ``days`` before ``now``, or the newest ``at_least`` when fewer."""
    ordered, ts = _by_time(frame)
    recent = int((ts >= pd.Timestamp(now) - pd.Timedelta(days=days)).sum())
    return ordered.tail(max(recent, min(at_least, len(ordered)))).reset_index(drop=True)


def plan_training(
    reference: pd.DataFrame, records: pd.DataFrame, champion: ChampionInfo | None, *,
    now: dt.datetime, config: Config,
) -> TrainingPlan:
    """Choose the training, evaluation and drift-reference rows of a challenger.

    The labelled production records are split by a hash of ``id`` into training and
    held-out rows. With a champion, both models are judged on the held-out labels since
    its training cutoff, narrowed to the last ``gate.eval_days`` (what changed is what the
    challenger must be good at). With fewer than ``MIN_EVAL_ROWS`` such rows (before the
    first model, or when labels are scarce) part of the reference is held out as well.
    The drift reference is rows the model never trained on (held-out and unlabelled
    records) of the last ``gate.eval_days``: its probabilities on its own training rows
    are over-confident, so a test against them would fire on unchanged data.
    """
    labelled = records.loc[records["label"].notna()] if len(records) else records
    train_part, eval_part = split_holdout(labelled, config.train.eval_fraction, config.train.seed)
    eval_set, source = eval_part, "production labels held out from training"
    if champion is not None:
        labelled_at = pd.to_datetime(eval_part["label_timestamp"], utc=True)
        since = eval_part.loc[labelled_at > pd.Timestamp(champion.training_cutoff)]
        if len(since) >= MIN_EVAL_ROWS:
            eval_set = newest_rows(since, now, config.gate.eval_days, MIN_EVAL_ROWS)
            source = (f"held-out production labels since the champion's cutoff, served in "
                      f"the last {config.gate.eval_days:g} days (or the newest {MIN_EVAL_ROWS})")
    if len(eval_set) < MIN_EVAL_ROWS and len(reference):
        # A salt of its own per champion: the reference is the training side of earlier
        # splits, and the same split again would hold out nothing.
        salt = f"reference:{champion.version}" if champion else "reference"
        reference, ref_eval = split_holdout(reference, config.train.eval_fraction,
                                            config.train.seed, salt=salt)
        source = (f"reference hold-out plus {len(eval_set)} production labels (fewer than "
                  f"{MIN_EVAL_ROWS} production labels held out"
                  + ("; the champion trained on the reference rows)" if champion else ")"))
        eval_set = pd.concat([eval_set, ref_eval], ignore_index=True)
    training = assemble_training_set(reference, train_part, config.train, now)
    unseen = records.loc[~records["id"].isin(training["id"])] if len(records) else records
    pool = pd.concat([eval_set, unseen], ignore_index=True).drop_duplicates("id")
    wanted = max(config.drift.min_samples, MIN_EVAL_ROWS)
    if len(pool) >= wanted:
        profile = newest_rows(pool, now, config.gate.eval_days, wanted)
        profile_source = (f"{len(profile)} records not trained on, served in the last "
                          f"{config.gate.eval_days:g} days (or the newest {wanted})")
    else:
        profile = training
        profile_source = (f"the training rows: only {len(pool)} records not trained on "
                          f"(fewer than {wanted}); probabilities may look over-confident")
    return TrainingPlan(training, eval_set.reset_index(drop=True), source, profile,
                        profile_source)


@dataclass
class TrainOutcome:
    """A registered challenger and the evaluation set held out from its training."""

    version: str
    metadata: ModelMetadata
    eval_set: pd.DataFrame
    train_rows: int
    eval_source: str = field(default="production")
    profile_source: str = field(default="")


def run_train(
    store: Store, registry: Registry, champion: Champion | None, window: Window, schema: Schema,
    *, now: dt.datetime, config: Config, model_name: str,
) -> TrainOutcome:
    """Train a challenger on the reference plus labelled production records and register it.

    The rows are chosen by :func:`plan_training`; the model, its metadata and its drift
    profile are registered and its training set becomes the next reference.

    Raises:
        TrainingError: The planned training rows cannot train a model (the decision step
            postpones such a retrain unless forced).
    """
    reference = load_reference(store, schema, model_name, champion.version if champion else None)
    plan = plan_training(reference, window.records, champion.info() if champion else None,
                         now=now, config=config)
    result = train_model(plan.training, schema, config.train, model_name=model_name,
                         primary_metric=config.gate.primary_metric, now=now)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / result.metadata.version
        save_model_artifact(result, folder)
        profile = build_reference_profile(plan.profile_rows, schema, config.drift,
                                          model_version=result.metadata.version,
                                          model=result.model)
        profile.save(folder)
        version = registry.register(folder)
    store.write_bytes(f"reference/{model_name}/{version}.parquet",
                      plan.training.to_parquet(index=False))
    return TrainOutcome(version, result.metadata, plan.eval_set, len(plan.training),
                        plan.eval_source, plan.profile_source)


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

    def to_markdown(self) -> str:
        """A short Markdown summary."""
        score = "n/a" if self.validation_score is None else f"{self.validation_score:.4f}"
        return (f"### Challenger `{self.version}`\n\n"
                f"- trained on {self.train_rows} rows; validation {self.primary_metric} "
                f"= {score}\n- {self.eval_rows} evaluation rows ({self.eval_source})\n"
                f"- drift reference: {self.profile_source or 'n/a'}\n"
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
        profile_source=outcome.profile_source,
    )


# --- evaluate and promote ---------------------------------------------------------------


def run_evaluate(
    registry: Registry, champion: Champion | None, challenger_version: str,
    eval_set: pd.DataFrame, schema: Schema, config: Config,
) -> Verdict:
    """Score champion and challenger on the same held-out rows and apply the gate."""
    challenger = registry.load_model(challenger_version)
    return evaluate_challenger(
        challenger,
        champion.model if champion else None,
        eval_set,
        schema,
        config.gate,
        challenger_version=challenger_version,
        champion_version=champion.version if champion else None,
    )


def run_promote(
    registry: Registry, verdict: Verdict, *, notifier: Notifier, run_id: str, model_name: str,
    backend: RolloutBackend | None = None, config: Config | None = None,
) -> AliasState:
    """Act on a promote verdict; notify before changing anything.

    Without a backend the champion alias moves at once (registry only). With one, the
    challenger starts its canary at the first traffic step
    (:func:`driftloop.progressive.start_canary`; the first model is deployed at 100%).
    """
    version = verdict.challenger.version
    if verdict.decision != "promote":
        return registry.aliases()
    reason = "; ".join(verdict.reasons)
    if backend is not None:
        from driftloop.progressive import start_canary

        start_canary(registry, backend, version, config=(config or Config()).canary,
                     notifier=notifier, run_id=run_id, model_name=model_name, reason=reason)
        return registry.aliases()
    notifier.send(Event("model_update", f"promoting {version} to champion", model_name,
                        {"version": version, "reasons": verdict.reasons}, run_id=run_id))
    return registry.promote(version, reason=reason, run_id=run_id)


# --- the whole loop in one process ------------------------------------------------------


@dataclass
class LoopResult:
    """Everything one run decided."""

    run_id: str
    ingest: IngestResult
    drift: DriftReport | None
    decision: RetrainDecision
    train: TrainOutcome | None = None
    verdict: Verdict | None = None
    aliases: AliasState | None = None
    rollout: RolloutStep | None = None


def run_loop(
    store: Store, schema: Schema, model_name: str, *, now: dt.datetime, run_id: str,
    config: Config | None = None, force: bool = False, window_days: int = 1,
    lookback_days: int = 30, notifier: Notifier | None = None,
    backend: RolloutBackend | None = None,
) -> LoopResult:
    """Run ingest → (canary step) → drift → decide → train → evaluate → promote in-process.

    Args:
        store: The data store.
        schema: The records' schema.
        model_name: Model name in the registry.
        now: The run's logical time.
        run_id: The run's folder under ``runs/``.
        config: Every threshold (default: :class:`Config`).
        force: Retrain regardless of the rules (and of a canary in flight).
        window_days: Days whose records count as current for drift.
        lookback_days: Days of records and feedback read for labels and training.
        notifier: Receives model-update and rollback events (default: none).
        backend: The serving rollout backend. None: registry aliases only (a promote
            verdict moves the champion alias at once). With one, a canary in progress is
            judged and stepped first (:func:`driftloop.progressive.step_canary`) and no new
            challenger is trained while it is in flight; a promote verdict starts a canary.
    """
    config = config or Config()
    notifier = notifier or NullNotifier()
    registry = Registry(store, model_name)
    window = run_ingest(store, schema, now=now, window_days=window_days,
                        lookback_days=lookback_days)
    record_result(store, run_id, "ingest", window.result.report)
    rollout: RolloutStep | None = None
    if backend is not None:
        from driftloop.progressive import step_canary

        canary = registry.aliases().canary
        # judged on the lookback's responses served since the canary started
        rollout = step_canary(registry, backend, window.records, config=config.canary,
                              notifier=notifier, run_id=run_id, model_name=model_name, now=now)
        if rollout is not None and rollout.action == "rollback":
            canary = None  # rolled back: nothing in flight, the rules may retrain now
    else:
        canary = None
    champion = load_champion(registry)
    drift = run_drift(champion, window.current, schema, config)
    if drift is not None:
        record_result(store, run_id, "drift", drift)
    decision = run_decide(registry, champion, window, drift, schema, now=now, config=config,
                          force=force, canary_in_progress=canary)
    record_result(store, run_id, "decision", decision)
    result = LoopResult(run_id, window.result, drift, decision, rollout=rollout)
    if not decision.retrain:
        return result
    result.train = run_train(store, registry, champion, window, schema, now=now, config=config,
                             model_name=model_name)
    record_result(store, run_id, "train", summarise_training(result.train, registry))
    result.verdict = run_evaluate(registry, champion, result.train.version,
                                  result.train.eval_set, schema, config)
    record_result(store, run_id, "verdict", result.verdict)
    result.aliases = run_promote(registry, result.verdict, notifier=notifier, run_id=run_id,
                                 model_name=model_name, backend=backend, config=config)
    if backend is not None and result.verdict.decision == "promote":
        from driftloop.progressive import recorded_step

        result.rollout = recorded_step(registry, run_id)
    record_result(store, run_id, "aliases", result.aliases)
    return result
