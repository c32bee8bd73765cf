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

import numpy as np
import pandas as pd

from driftloop.clock import parse_time, utc_now_iso
from driftloop.config import Config
from driftloop.data.ingest import IngestResult, ingest, read_file
from driftloop.data.runs import record_failure, record_result
from driftloop.data.schema import Schema
from driftloop.data.storage import Store
from driftloop.data.validate import validate_records
from driftloop.decide.distance import histogram_shares, quantile_bin_edges
from driftloop.decide.drift import (
    DriftReport,
    ReferenceProfile,
    build_reference_profile,
    detect_drift,
    proba_columns,
)
from driftloop.decide.gate import Verdict, evaluate_challenger
from driftloop.decide.trigger import (
    ChampionInfo,
    LastAttempt,
    RetrainDecision,
    count_new_labels,
    decide_retrain,
    drift_effect,
)
from driftloop.models.registry import AliasState, Registry
from driftloop.models.train import (
    ModelMetadata,
    assemble_training_set,
    out_of_fold_proba,
    predict_frame,
    save_model_artifact,
    split_holdout,
    train_model,
    training_problem,
)
from driftloop.notify import Event, Notifier, NullNotifier
from driftloop.rollout.base import RolloutBackend
from driftloop.serde import JsonResult

if TYPE_CHECKING:
    from driftloop.rollout.progressive import RolloutStep

PROFILE_FILES = ("drift_profile.npz", "drift_profile.json")
#: Fresh held-out labels the gate needs before it judges a challenger.
MIN_EVAL_ROWS = 50
#: Served records the drift reference of the input features should hold at least.
MIN_FEATURE_REFERENCE_ROWS = 1000


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
            baseline_accuracy=float(meta.validation_metrics.get("accuracy", float("nan"))),
            baseline_n=int(meta.n_validation_rows),
            n_train=int(meta.n_rows),
            learning_gain=float(meta.learning_curve.get("gain", float("nan"))),
            learning_p=float(meta.learning_curve.get("p", float("nan"))),
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


@dataclass(frozen=True)
class WindowChoice:
    """Which rows a challenger trains and is judged on after a change, and why.

    Attributes:
        train_start: Train only on rows served from this time on (``None``: the whole
            window, the reference included).
        change_at: The detected change in the champion's error rate (``None``: none):
            the gate judges both models on rows served after it, when enough exist.
        reason: Why, in words (recorded in the model's metadata).
    """

    train_start: dt.datetime | None
    change_at: dt.datetime | None
    reason: str


def trigger_record(fired: list[str], drift: Any, choice: WindowChoice) -> dict[str, Any]:
    """Why a version was trained, as kept in its metadata (``trigger``).

    The rules that fired, the drift effect size behind them (the drift rule's memory) and
    the chosen training window.
    """
    return {
        "fired": list(fired),
        "drift_effect": drift_effect(drift) if drift is not None and "drift" in fired
        else None,
        "training_window": {
            "start": choice.train_start.isoformat() if choice.train_start else None,
            "change_at": choice.change_at.isoformat() if choice.change_at else None,
            "reason": choice.reason},
    }


#: ``(rows, served times, errors)`` of :func:`live_errors`, in serving order.
LiveErrors = tuple[pd.DataFrame, pd.Series, np.ndarray]


def training_start(
    champion: Champion | None, records: pd.DataFrame, schema: Schema, config: Config,
    fired: list[str], *, live: LiveErrors | None = None,
) -> WindowChoice:
    """Where a challenger's training window starts, and why.

    When drift or a performance drop fired, the champion's errors on the labelled
    records it never saw (served after its cutoff, in time order) are searched for a
    step up (:func:`driftloop.decide.changepoint.error_change_point`). Once at least
    ``trigger.min_post_change_rows`` training rows (labelled, not held out for the
    gate) exist after it, the challenger trains on the rows from the change on only;
    before that on the whole window (a model fitted on a few hundred post-change rows
    is worse than one that also knows the past). Either way the gate then compares the
    two models on rows served after the change: that is what the challenger must be
    good at. ``live`` is :func:`live_errors` of ``records`` when the caller has it.
    """
    if champion is None or not {"drift", "performance"} & set(fired) or records.empty:
        return WindowChoice(None, None, "the whole window (no drift or performance rule fired)")
    from driftloop.decide.changepoint import error_change_point

    rows, ts, errors = live or live_errors(champion, records, schema)
    if rows.empty:
        return WindowChoice(None, None, "the whole window (no labelled record after the "
                                        "champion's cutoff)")
    cp = error_change_point(errors, alpha=config.trigger.change_alpha)
    if cp is None:
        return WindowChoice(None, None, (
            f"the whole window (no significant step in the champion's error rate over "
            f"{len(rows)} labelled rows, alpha {config.trigger.change_alpha:g})"))
    start = ts.iloc[cp.index].to_pydatetime()
    found = (f"the champion's error rate stepped from {cp.error_before:.3f} to "
             f"{cp.error_after:.3f} at {start.isoformat()} (z {cp.z:.1f} > {cp.threshold:.1f})")
    after = rows.iloc[cp.index:]
    _, held = split_holdout(after, config.train.eval_fraction, EVAL_SEED, salt=EVAL_SALT)
    n_train = len(after) - len(held)
    need = config.trigger.min_post_change_rows
    if n_train < need:
        return WindowChoice(None, start, (
            f"the whole window: {found}, but only {n_train} training rows after it "
            f"(< {need}); the gate judges on the rows after it"))
    return WindowChoice(start, start, (f"rows from the change on: {found}; {n_train} "
                                       f"training rows after it"))


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
        train_cap=config.train.max_rows,
        new_label_accuracy=accuracy_on_new_labels(champion, window.records, schema, since),
        **performance_scan(live[2], config),
    )
    decision = decide()
    if not decision.retrain:
        return decision  # a quiet run reads no reference and plans nothing
    reference = load_reference(registry.store, schema, registry.model_name, champion.version)
    choice = training_start(champion, window.records, schema, config, decision.fired,
                            live=live)
    plan = plan_training(reference, window.records, info, now=now, config=config,
                         train_start=choice.train_start, eval_start=choice.change_at)
    problem = training_problem(plan.training, schema)
    if problem is None and plan.eval_needed:
        return decide(eval_needed=plan.eval_needed, eval_have=len(plan.eval_set))
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
        training: The training rows (reference plus labelled production rows, minus the
            evaluation rows).
        eval_set: Held-out rows both models are scored on: labelled production rows that
            neither the champion nor the challenger trained on.
        eval_source: Where ``eval_set`` comes from, in words.
        profile_rows: Rows the new model never trained on, for the drift tests of its
            predicted probabilities (they need rows the model has not seen).
        profile_source: Where ``profile_rows`` come from, in words.
        feature_rows: A large, representative sample of the traffic the model's data
            covers, for the drift tests of the input features (``None``: use
            ``profile_rows``).
        feature_source: Where ``feature_rows`` come from, in words.
        eval_needed: Fresh held-out labels still missing before the gate can judge a
            challenger (0: enough; always 0 for the first model, which is not compared).
    """

    training: pd.DataFrame
    eval_set: pd.DataFrame
    eval_source: str
    profile_rows: pd.DataFrame
    profile_source: str
    feature_rows: pd.DataFrame | None = None
    feature_source: str = ""
    eval_needed: int = 0


def live_errors(champion: Champion, records: pd.DataFrame, schema: Schema) -> LiveErrors:
    """The champion's errors on the labelled rows it served after its cutoff, in time order.

    Returns:
        ``(rows, served times, errors)``, all in serving order (empty: no such row).
    """
    if records.empty:
        return records, pd.Series(dtype="datetime64[ns, UTC]"), np.zeros(0, dtype=bool)
    served = pd.to_datetime(records["timestamp"], utc=True)
    cutoff = pd.Timestamp(champion.info().training_cutoff)
    rows, ts = _by_time(records.loc[records["label"].notna() & (served > cutoff)])
    if rows.empty:
        return rows, ts, np.zeros(0, dtype=bool)
    pred, _ = predict_frame(champion.model, rows, schema)
    return rows, ts, pred != rows["label"].astype(str).to_numpy()


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


#: Salt and seed of the evaluation hold-out: fixed, not taken from the configuration, so
#: changing ``train.seed`` cannot move rows that judged a model into a training set.
EVAL_SALT, EVAL_SEED = "eval", 0


def _feature_reference(records: pd.DataFrame, training: pd.DataFrame, now: dt.datetime,
                       config: Config) -> tuple[pd.DataFrame, str]:
    """All traffic (labelled or not) of the complete days the new model's data covers.

    Feedback rarely comes for a random sample of the traffic, so a reference built from
    held-out or labelled rows only is selection-biased; the feature tests need the whole
    population of those days. Below ``drift.min_reference_rows`` the training rows are
    added (and the source says so).

    ``MIN_FEATURE_REFERENCE_ROWS`` is 1,000: at that size the KS and chi-square tests
    against it reach 95 % power for a PSI-0.2 shift (``benchmarks/drift_false_alarms.py``).
    """
    end = pd.Timestamp(window_end(now))
    starts = pd.to_datetime(training["timestamp"], utc=True) if len(training) else None
    first = starts.min() if starts is not None and len(starts) else None
    served = (pd.to_datetime(records["timestamp"], utc=True) if len(records)
              else pd.Series([], dtype="datetime64[ns, UTC]"))
    keep = served < end
    if first is not None and not pd.isna(first):
        keep &= served >= first.floor("D")
    traffic = records.loc[keep.to_numpy()] if len(records) else records
    wanted = MIN_FEATURE_REFERENCE_ROWS
    if len(traffic) >= wanted:
        return traffic.reset_index(drop=True), (
            f"all {len(traffic)} records served in the complete days the training data "
            f"covers (before {end.date()})")
    pool = pd.concat([traffic, training], ignore_index=True).drop_duplicates("id")
    return pool.reset_index(drop=True), (
        f"{len(traffic)} served records of the training period plus the training rows "
        f"({len(pool)} in all): fewer than {wanted} served records")


def plan_training(
    reference: pd.DataFrame, records: pd.DataFrame, champion: ChampionInfo | None, *,
    now: dt.datetime, config: Config, train_start: dt.datetime | None = None,
    eval_start: dt.datetime | None = None,
) -> TrainingPlan:
    """Choose the training, evaluation and drift-reference rows of a challenger.

    Evaluation (the gate): labelled production records held out by a fixed hash of their
    id (``EVAL_SALT``/``EVAL_SEED``, whatever the configuration) and never in the
    champion's training set (``reference`` is that set), labelled after the champion's
    cutoff and served in the last ``gate.eval_days`` (or the newest ``MIN_EVAL_ROWS``).
    No model is ever judged on rows it trained on: the challenger's training excludes
    every evaluation row, and with fewer than ``MIN_EVAL_ROWS`` such rows
    ``eval_needed`` says how many more fresh labels the gate must wait for. The first
    model is not compared with anything, so it trains on every row (nothing is held out
    for a comparison it never makes) and is scored on whatever fresh held-out labels
    exist. The reference is never split: it does not shrink from cycle to cycle.

    Args:
        reference: The champion's training set (before the first model: the seed set).
        records: The lookback's accepted records, labels joined.
        champion: The serving champion, or ``None`` before the first model.
        now: The run's logical time.
        config: Every threshold.
        train_start: Train only on rows served from this time on (a detected change
            point); the reference is then left out as well (it predates the change).
        eval_start: Judge both models on rows served from this time on (a detected
            change), when at least ``MIN_EVAL_ROWS`` such rows exist.
    """
    labelled = records.loc[records["label"].notna()] if len(records) else records
    _, held = split_holdout(labelled, config.train.eval_fraction, EVAL_SEED, salt=EVAL_SALT)
    eval_needed = 0
    if champion is None:
        eval_set = held
        source = "production labels held out from training (first model: not compared)"
        train_prod = labelled.loc[~labelled["id"].isin(held["id"])]
    else:
        fresh = held.loc[~held["id"].isin(reference["id"])] if len(reference) else held
        labelled_at = pd.to_datetime(fresh["label_timestamp"], utc=True)
        since = fresh.loc[labelled_at > pd.Timestamp(champion.training_cutoff)]
        eval_set = newest_rows(since, now, config.gate.eval_days, MIN_EVAL_ROWS)
        source = (f"held-out production labels neither model trained on, labelled after "
                  f"the champion's cutoff, served in the last {config.gate.eval_days:g} days "
                  f"(or the newest {MIN_EVAL_ROWS})")
        if eval_start is not None:
            served_at = pd.to_datetime(since["timestamp"], utc=True)
            after = since.loc[served_at >= pd.Timestamp(eval_start)]
            if len(after) >= MIN_EVAL_ROWS:
                eval_set = after.reset_index(drop=True)
                source = (f"held-out production labels neither model trained on, served "
                          f"after the detected change at {eval_start.isoformat()}")
        eval_needed = max(0, MIN_EVAL_ROWS - len(eval_set))
        train_prod = labelled.loc[~labelled["id"].isin(eval_set["id"])]
    base = reference
    if train_start is not None:
        served = pd.to_datetime(train_prod["timestamp"], utc=True)
        train_prod = train_prod.loc[served >= pd.Timestamp(train_start)]
        base = None
    training = assemble_training_set(base, train_prod, config.train, now)
    if len(eval_set):
        training = training.loc[~training["id"].isin(eval_set["id"])].reset_index(drop=True)
    unseen = records.loc[~records["id"].isin(training["id"])] if len(records) else records
    pool = pd.concat([eval_set, unseen], ignore_index=True).drop_duplicates("id")
    wanted = max(config.drift.min_samples, MIN_EVAL_ROWS)
    if len(pool) >= wanted:
        profile = newest_rows(pool, now, config.gate.eval_days, wanted)
        profile_source = (f"{len(profile)} records not trained on, served in the last "
                          f"{config.gate.eval_days:g} days (or the newest {wanted})")
    else:
        profile = training
        profile_source = (f"the training rows, probabilities cross-fitted (5 folds): only "
                          f"{len(pool)} records not trained on (fewer than {wanted})")
    features, feature_source = _feature_reference(records, training, now, config)
    return TrainingPlan(training, eval_set.reset_index(drop=True), source, profile,
                        profile_source, features, feature_source, eval_needed)


def build_profile(plan: TrainingPlan, schema: Schema, config: Config, version: str,
                  model: Any) -> ReferenceProfile:
    """The new version's drift profile, from two row sets of the plan.

    The input-feature tests compare against the representative traffic of the training
    period (``plan.feature_rows``); the model-output (probability) tests of a text model
    against rows the model never saw (``plan.profile_rows``): on its own training rows
    its probabilities are over-confident.
    """
    features = plan.feature_rows if plan.feature_rows is not None else plan.profile_rows
    profile = build_reference_profile(features, schema, config.drift, model_version=version,
                                      model=model)
    if schema.model_kind != "text":
        return profile
    if plan.profile_rows is plan.training:  # no unseen rows: cross-fitted probabilities
        proba = out_of_fold_proba(plan.training, schema, config.train, profile.classes,
                                  max_rows=config.drift.max_reference_rows)
        profile.reference_proba = proba
        profile.proba_edges = [quantile_bin_edges(proba[:, c], config.drift.bins)
                               for c in proba_columns(profile.classes)]
        profile.proba_shares = [histogram_shares(proba[:, c], e) for c, e in
                                zip(proba_columns(profile.classes), profile.proba_edges,
                                    strict=True)]
    elif features is not plan.profile_rows:
        outputs = build_reference_profile(plan.profile_rows, schema, config.drift,
                                          model_version=version, model=model)
        profile.classes, profile.reference_proba = outputs.classes, outputs.reference_proba
        profile.proba_edges, profile.proba_shares = outputs.proba_edges, outputs.proba_shares
    return profile


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
    decision: RetrainDecision | None = None, drift: DriftReport | None = None,
) -> TrainOutcome:
    """Train a challenger on the reference plus labelled production records and register it.

    The rows are chosen by :func:`plan_training` (from the detected change on when drift
    or a performance drop fired, :func:`training_start`); the model, its metadata (with
    why it was trained and on which window) and its drift profile are registered and its
    training set becomes the next reference.

    Raises:
        TrainingError: The planned training rows cannot train a model (the decision step
            postpones such a retrain unless forced).
    """
    reference = load_reference(store, schema, model_name, champion.version if champion else None)
    fired = list(decision.fired) if decision is not None else []
    choice = training_start(champion, window.records, schema, config, fired)
    plan = plan_training(reference, window.records, champion.info() if champion else None,
                         now=now, config=config, train_start=choice.train_start,
                         eval_start=choice.change_at)
    result = train_model(plan.training, schema, config.train, model_name=model_name,
                         primary_metric=config.gate.primary_metric, now=now)
    result.metadata.trigger = trigger_record(fired, drift, choice)
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
            profile = build_profile(plan, schema, config, metadata.version, result.model)
            profile.save(folder)
            version = registry.register(folder)
    # rewriting the same rows is harmless; a run killed before this line left none
    store.write_bytes(f"reference/{model_name}/{version}.parquet",
                      plan.training.to_parquet(index=False))
    return TrainOutcome(version, metadata, plan.eval_set, len(plan.training),
                        plan.eval_source, plan.profile_source)


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
    """Score champion and challenger on the same held-out rows and apply the gate.

    The first model is not compared with anything; without a fresh held-out label it is
    promoted on its validation metrics (never on rows it trained on).
    """
    challenger = registry.load_model(challenger_version)
    if champion is None and ("label" not in eval_set or not eval_set["label"].notna().any()):
        return first_model_verdict(registry, challenger_version, config)
    return evaluate_challenger(
        challenger,
        champion.model if champion else None,
        eval_set,
        schema,
        config.gate,
        challenger_version=challenger_version,
        champion_version=champion.version if champion else None,
        store=registry.store.url("").rstrip("/") or None, model=registry.model_name,
    )


def first_model_verdict(registry: Registry, version: str, config: Config) -> Verdict:
    """The verdict of a first model without held-out production labels: promote."""
    from driftloop.decide.gate import ModelScore, RuleResult

    meta = registry.metadata(version)
    metrics = {k: float(v) for k, v in (meta.get("validation_metrics") or {}).items()}
    rule = RuleResult("champion", True, None, None,
                      "no champion is serving: this is the first model, promoted without "
                      "comparison (no held-out production label yet; scores are its "
                      "validation split's)")
    score = ModelScore(version, int(meta.get("n_validation_rows") or 0), metrics, 0.0, 0.0, {})
    return Verdict("promote", True, [rule.detail], [rule], config.gate.primary_metric, None,
                   None, None, None, score, utc_now_iso(), config.gate.confidence)


def run_promote(
    registry: Registry, verdict: Verdict, *, notifier: Notifier, run_id: str, model_name: str,
    backend: RolloutBackend | None = None, config: Config | None = None,
) -> AliasState:
    """Act on a promote verdict; notify before changing anything.

    Without a backend the champion alias moves at once (registry only). With one, the
    challenger starts its canary at the first traffic step
    (:func:`driftloop.rollout.progressive.start_canary`; the first model is deployed at 100%).
    """
    version = verdict.challenger.version
    if verdict.decision == "needs_approval":
        # a person decides: tell them what to run (the verdict's next steps)
        notifier.send(Event("info", f"challenger {version} needs approval", model_name,
                            {"version": version, "reasons": verdict.reasons,
                             "next_steps": list(getattr(verdict, "next_steps", []))},
                            run_id=run_id))
    if verdict.decision != "promote":
        return registry.aliases()
    reason = "; ".join(verdict.reasons)
    judged = verdict.champion.version if verdict.champion is not None else None
    if backend is not None:
        from driftloop.rollout.progressive import start_canary

        now = registry.aliases().champion
        if now != judged:  # another run promoted since this verdict was made
            return _champion_changed(registry, notifier, run_id, model_name, version,
                                     judged, now)
        start_canary(registry, backend, version, config=(config or Config()).canary,
                     notifier=notifier, run_id=run_id, model_name=model_name, reason=reason)
        return registry.aliases()
    from driftloop.models.registry import ChampionChanged

    notifier.send(Event("model_update", f"promoting {version} to champion", model_name,
                        {"version": version, "reasons": verdict.reasons}, run_id=run_id))
    try:
        # compare-and-swap: only over the champion the challenger was compared with
        return registry.promote(version, reason=reason, run_id=run_id, expect_champion=judged)
    except ChampionChanged as exc:
        return _champion_changed(registry, notifier, run_id, model_name, version, judged,
                                 exc.actual)


@dataclass
class ChampionChangedRecord(JsonResult):
    """``runs/<run-id>/promotion.json`` when a promote verdict was not applied.

    Attributes:
        version: The challenger that was not promoted (left for the next run).
        judged_against: The champion it was compared with.
        champion: The champion another run had promoted meanwhile.
        reason: In words.
    """

    version: str
    judged_against: str | None
    champion: str | None
    reason: str


def _champion_changed(registry: Registry, notifier: Notifier, run_id: str, model_name: str,
                      version: str, judged: str | None, actual: str | None) -> AliasState:
    why = (f"champion changed, not promoted: {version} was compared with {judged}, but the "
           f"champion is now {actual}; the next run compares it with the new champion")
    record_result(registry.store, run_id, "promotion",
                  ChampionChangedRecord(version, judged, actual, why))
    notifier.send(Event("info", why, model_name, {"version": version, "judged_against": judged,
                                                 "champion": actual}, run_id=run_id))
    return registry.aliases()


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


def run_canary_analysis(
    store: Store, schema: Schema, model_name: str, *, now: dt.datetime, run_id: str,
    backend: RolloutBackend, config: Config | None = None, lookback_days: int = 30,
    notifier: Notifier | None = None,
) -> RolloutStep | None:
    """The canary's own cadence: ingest up to ``now`` and judge the canary in progress.

    What the ``canary-analysis`` pipeline runs (e.g. hourly): no drift, no training. The
    confidence sequence behind the analysis stays valid however often it looks.

    Returns:
        The rollout step, or ``None`` when no canary is in progress.
    """
    from driftloop.rollout.progressive import step_canary

    config = config or Config()
    registry = Registry(store, model_name)
    window = run_ingest(store, schema, now=now, lookback_days=lookback_days)
    record_result(store, run_id, "ingest", window.result.report)
    return step_canary(registry, backend, window.records, config=config.canary,
                       notifier=notifier or NullNotifier(), run_id=run_id,
                       model_name=model_name, now=now)


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
            judged and stepped first (:func:`driftloop.rollout.progressive.step_canary`) and no new
            challenger is trained while it is in flight; a promote verdict starts a canary.
    """
    try:
        return _run_loop(store, schema, model_name, now=now, run_id=run_id,
                         config=config or Config(), force=force, window_days=window_days,
                         lookback_days=lookback_days, notifier=notifier or NullNotifier(),
                         backend=backend)
    except Exception as exc:
        record_failure(store, run_id, exc)
        raise


def _run_loop(
    store: Store, schema: Schema, model_name: str, *, now: dt.datetime, run_id: str,
    config: Config, force: bool, window_days: int, lookback_days: int, notifier: Notifier,
    backend: RolloutBackend | None,
) -> LoopResult:
    registry = Registry(store, model_name)
    window = run_ingest(store, schema, now=now, window_days=window_days,
                        lookback_days=lookback_days)
    record_result(store, run_id, "ingest", window.result.report)
    rollout: RolloutStep | None = None
    if backend is not None:
        from driftloop.rollout.progressive import step_canary

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
                             model_name=model_name, decision=decision, drift=drift)
    record_result(store, run_id, "train", summarise_training(result.train, registry))
    result.verdict = run_evaluate(registry, champion, result.train.version,
                                  result.train.eval_set, schema, config)
    record_result(store, run_id, "verdict", result.verdict)
    result.aliases = run_promote(registry, result.verdict, notifier=notifier, run_id=run_id,
                                 model_name=model_name, backend=backend, config=config)
    if backend is not None and result.verdict.decision == "promote":
        from driftloop.rollout.progressive import recorded_step

        result.rollout = recorded_step(registry, run_id)
    record_result(store, run_id, "aliases", result.aliases)
    return result
