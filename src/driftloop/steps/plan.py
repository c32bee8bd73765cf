"""Which rows a challenger trains, is judged and is profiled on, fixed before training.

Shared by the decide step (a retrain the plan cannot serve — one class, too few fresh
held-out labels — is postponed there) and the train step (which trains on the plan).
The rules: no model is judged on rows it trained on; after a detected change in the
champion's errors the window starts at the change (:func:`training_start`).
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from driftloop.config import Config
from driftloop.data.curate import FeedbackQuality, curate_training
from driftloop.data.readers import read_file
from driftloop.data.schema import Schema
from driftloop.data.storage import Store
from driftloop.data.validate import validate_records
from driftloop.decide.distance import histogram_shares, quantile_bin_edges
from driftloop.decide.drift import (
    ReferenceProfile,
    build_reference_profile,
    proba_columns,
)
from driftloop.decide.trigger import (
    ChampionInfo,
    drift_effect,
)
from driftloop.models.train import (
    assemble_training_set,
    out_of_fold_proba,
    predict_frame,
    split_holdout,
)
from driftloop.steps.champion import Champion
from driftloop.steps.ingest import (
    window_end,
)

#: Fresh held-out labels the gate needs before it judges a challenger.
MIN_EVAL_ROWS = 50


#: Served records the drift reference of the input features should hold at least.
MIN_FEATURE_REFERENCE_ROWS = 1000


#: Salt and seed of the evaluation hold-out: fixed, not taken from the configuration, so
#: changing ``train.seed`` cannot move rows that judged a model into a training set.
EVAL_SALT, EVAL_SEED = "eval", 0


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


def _by_time(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    ts = pd.to_datetime(frame["timestamp"], utc=True)
    order = ts.sort_values(kind="stable").index
    return frame.loc[order].reset_index(drop=True), ts.loc[order].reset_index(drop=True)


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
    if champion is None or not {"drift", "performance", "disagreement"} & set(fired) or (
            records.empty):
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
        quality: What feedback curation did to the training rows
            (:func:`driftloop.data.curate.curate_training`; ``None``: not curated).
    """

    training: pd.DataFrame
    eval_set: pd.DataFrame
    eval_source: str
    profile_rows: pd.DataFrame
    profile_source: str
    feature_rows: pd.DataFrame | None = None
    feature_source: str = ""
    eval_needed: int = 0
    quality: FeedbackQuality | None = None


def newest_rows(frame: pd.DataFrame, now: dt.datetime, days: float, at_least: int) -> (
    pd.DataFrame
):
    """Rows served in the ``days`` before ``now``, or the newest ``at_least`` when fewer."""
    ordered, ts = _by_time(frame)
    recent = int((ts >= pd.Timestamp(now) - pd.Timedelta(days=days)).sum())
    return ordered.tail(max(recent, min(at_least, len(ordered)))).reset_index(drop=True)


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
    eval_start: dt.datetime | None = None, schema: Schema | None = None,
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
        schema: The model's schema: the training rows are curated
            (:func:`driftloop.data.curate.curate_training`: near-duplicates once, no copy
            of an evaluation row, no label of an excluded source; ``plan.quality`` says
            what was done). ``None``: not curated.
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
    quality = None
    if schema is not None:
        # near-duplicates once, copies of evaluation rows out, untrustworthy sources out
        training, quality = curate_training(training, eval_set, records, schema,
                                            config.curation, now=now,
                                            days=config.gate.eval_days)
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
                        profile_source, features, feature_source, eval_needed, quality)


def build_profile(plan: TrainingPlan, schema: Schema, config: Config, version: str,
                  model: Any, *, builder: Any = None) -> ReferenceProfile:
    """The new version's drift profile, from two row sets of the plan.

    The input-feature tests compare against the representative traffic of the training
    period (``plan.feature_rows``); the model-output (probability) tests of a text model
    against rows the model never saw (``plan.profile_rows``): on its own training rows
    its probabilities are over-confident. ``builder`` makes the model's unfitted pipeline
    for the cross-fitted probabilities (a searched candidate; ``None``: the fixed model).
    """
    features = plan.feature_rows if plan.feature_rows is not None else plan.profile_rows
    profile = build_reference_profile(features, schema, config.drift, model_version=version,
                                      model=model)
    if schema.model_kind != "text":
        return profile
    if plan.profile_rows is plan.training:  # no unseen rows: cross-fitted probabilities
        proba = out_of_fold_proba(plan.training, schema, config.train, profile.classes,
                                  max_rows=config.drift.max_reference_rows, builder=builder)
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
