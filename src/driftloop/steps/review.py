"""The curation step: a run's disagreements and its review queue, from one champion pass.

:func:`curate_step` is what the ``curate_feedback`` component and the in-process loop call
after ingest. It scores the lookback's recent responses with the champion once and writes

* ``runs/<run-id>/disagreements.parquet``: labelled responses whose label differs from the
  prediction served with them (the champion's when none was logged), with the confidence
  (:func:`driftloop.decide.disagreement.disagreement_table`), and ``curation.json`` /
  ``.md`` with the counts per class and slice;
* ``runs/<run-id>/review_queue.jsonl``: the unlabelled responses most worth labelling
  (:func:`driftloop.decide.review.review_queue`). Labels for them come back through the
  sink's ``POST /feedback`` like any other and join their record by ``id``.

The trigger's ``disagreement`` rule is computed by the decide step
(:func:`disagreement_inputs` is shared), on the champion's own predictions.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.clock import logical_time
from driftloop.config import Config
from driftloop.data.runs import record_result
from driftloop.data.schema import Schema
from driftloop.data.storage import Store
from driftloop.decide.disagreement import (
    DisagreementSummary,
    disagreement_counts,
    disagreement_rule,
    disagreement_table,
)
from driftloop.decide.review import ReviewStats, review_queue, to_jsonl
from driftloop.decide.trigger import TriggerRule
from driftloop.models.registry import Registry
from driftloop.models.train import predict_frame
from driftloop.serde import JsonResult
from driftloop.steps.champion import Champion, load_champion
from driftloop.steps.common import logged_step, open_inputs, read_frame, run_key, write_frame

QUEUE_FILE, DISAGREEMENTS_FILE = "review_queue.jsonl", "disagreements.parquet"


def disagreement_inputs(champion: Champion, records: pd.DataFrame, schema: Schema,
                        *, now: dt.datetime, config: Config) -> TriggerRule:
    """The trigger's ``disagreement`` rule for ``champion`` on the lookback's records.

    The rows: labelled records served after the champion's training cutoff (rows it never
    trained on), with its own predictions (its baseline is its own earlier live rate).
    """
    if records.empty:
        return disagreement_rule(np.zeros(0, str), np.zeros(0, bool), pd.Series([], dtype=str),
                                 now=now, config=config.curation)
    served = pd.to_datetime(records["timestamp"], utc=True)
    cutoff = pd.Timestamp(champion.info().training_cutoff)
    rows = records.loc[records["label"].notna() & (served > cutoff) & (served < now)]
    if rows.empty:
        return disagreement_rule(np.zeros(0, str), np.zeros(0, bool), pd.Series([], dtype=str),
                                 now=now, config=config.curation)
    pred, _ = predict_frame(champion.model, rows, schema)
    wrong = pred != rows["label"].astype(str).to_numpy()
    return disagreement_rule(pred, wrong, rows["timestamp"], now=now, config=config.curation)


def _served_predictions(rows: pd.DataFrame, pred: np.ndarray, proba: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The prediction and confidence served with each row, the champion's where not logged."""
    conf = proba.max(axis=1) if len(proba) else np.zeros(0)
    out_pred = pred.astype(object).copy()
    out_conf = conf.astype(float).copy()
    if "prediction" in rows:
        logged = rows["prediction"].notna().to_numpy()
        out_pred[logged] = rows["prediction"].astype(str).to_numpy()[logged]
        if "score" in rows:
            score = pd.to_numeric(rows["score"], errors="coerce").to_numpy()
            use = logged & np.isfinite(score)
            out_conf[use] = score[use]
    return out_pred.astype(str), out_conf


@dataclass
class CurationOutcome(JsonResult):
    """What the curation step found and wrote (``runs/<run-id>/curation.json``)."""

    model_version: str | None
    disagreements: DisagreementSummary
    review: ReviewStats
    created_at: str = ""
    files: dict[str, str] = field(default_factory=dict)

    def to_markdown(self) -> str:
        """Disagreements and the review queue as Markdown."""
        return self.disagreements.to_markdown() + "\n" + self.review.to_markdown()

    def metrics(self) -> dict[str, float]:
        """Scalar metrics for the KFP UI."""
        d = self.disagreements
        return {"disagreements": float(d.disagreements), "labelled": float(d.labelled),
                "disagreement_rate": float(d.rate) if d.labelled else 0.0,
                "review_queued": float(self.review.queued),
                "review_candidates": float(self.review.candidates)}


def run_curation(champion: Champion | None, records: pd.DataFrame, schema: Schema, *,
                 now: dt.datetime, config: Config, previous_queue: pd.DataFrame | None = None
                 ) -> tuple[CurationOutcome, pd.DataFrame, pd.DataFrame]:
    """Disagreements of the recent labelled responses and the review queue of unlabelled ones.

    Returns:
        ``(outcome, disagreements table, review queue)``.
    """
    cur = config.curation
    version = champion.version if champion is not None else None
    slice_by = schema.slice_column
    served = (pd.to_datetime(records["timestamp"], utc=True) if len(records)
              else pd.Series([], dtype="datetime64[ns, UTC]"))
    days = max(cur.disagree_window_days, cur.review_days)
    recent = records.loc[(served >= pd.Timestamp(now) - pd.Timedelta(days=days))
                         & (served < pd.Timestamp(now))] if len(records) else records
    labelled = recent.loc[recent["label"].notna()] if len(recent) else recent
    lab_served = pd.to_datetime(labelled["timestamp"], utc=True) if len(labelled) else served[:0]
    labelled = labelled.loc[lab_served >= pd.Timestamp(now)
                            - pd.Timedelta(days=cur.disagree_window_days)]
    if champion is None or recent.empty:
        summary = disagreement_counts(labelled.iloc[:0], np.zeros(0), np.zeros(0), slice_by,
                                      version)
        empty_q, stats = review_queue(recent.iloc[:0], np.zeros((0, 0)), [], schema, 0,
                                      model_version=version)
        return (CurationOutcome(version, summary, stats, now.isoformat()),
                disagreement_table(labelled.iloc[:0], np.zeros(0), np.zeros(0), slice_by),
                empty_q)
    classes = [str(c) for c in champion.model.classes_]
    table = disagreement_table(labelled.iloc[:0], np.zeros(0), np.zeros(0), slice_by)
    summary = disagreement_counts(labelled.iloc[:0], np.zeros(0), np.zeros(0), slice_by,
                                  version)
    if len(labelled):
        pred, proba = predict_frame(champion.model, labelled, schema)
        pred, conf = _served_predictions(labelled, pred, proba)
        table = disagreement_table(labelled.reset_index(drop=True), pred, conf, slice_by)
        summary = disagreement_counts(labelled, pred, conf, slice_by, version)
    unlabelled = recent.loc[recent["label"].isna()].reset_index(drop=True)
    review_from = pd.Timestamp(now) - pd.Timedelta(days=cur.review_days)
    unlabelled = unlabelled.loc[pd.to_datetime(unlabelled["timestamp"], utc=True)
                                >= review_from].reset_index(drop=True)
    proba = (predict_frame(champion.model, unlabelled, schema)[1] if len(unlabelled)
             else np.zeros((0, len(classes))))
    queue, stats = review_queue(unlabelled, proba, classes, schema, cur.review_size,
                                model_version=version)
    if previous_queue is not None and len(previous_queue) and len(records):
        back = records.loc[records["id"].astype(str).isin(previous_queue["id"].astype(str))
                           & records["label"].notna()]
        asked = previous_queue.set_index(previous_queue["id"].astype(str))["prediction"]
        stats.returned, stats.returned_of = len(back), len(previous_queue)
        stats.returned_disagreeing = int((back["label"].astype(str).to_numpy()
                                          != asked.loc[back["id"].astype(str)].to_numpy()).sum())
    return CurationOutcome(version, summary, stats, now.isoformat()), table, queue


def latest_queue(store: Store, before: dt.datetime | None = None) -> pd.DataFrame | None:
    """The newest review queue recorded under ``runs/`` (of a run before ``before``), or None.

    Runs are ordered by the logical time their ``curation.json`` records (run ids need
    not sort by time).
    """
    found: list[tuple[str, str]] = []
    for key in store.list("runs"):
        if not key.endswith("/curation.json"):
            continue
        try:
            made = json.loads(store.read_bytes(key).decode()).get("created_at") or ""
        except (ValueError, OSError):
            continue  # a foreign or half-written record is not a queue
        if made and (before is None or made < before.isoformat()):
            found.append((made, key.rsplit("/", 1)[0] + "/" + QUEUE_FILE))
    if not found:
        return None
    newest = max(found)[1]
    if not store.exists(newest):
        return None
    text = store.read_bytes(newest).decode()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return pd.DataFrame(rows) if rows else None


def write_curation(store: Store, run_id: str, outcome: CurationOutcome, table: pd.DataFrame,
                   queue: pd.DataFrame, schema: Schema) -> None:
    """Write the disagreements, the queue and the outcome under ``runs/<run-id>/``."""
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    store.write_bytes(f"runs/{run_id}/{DISAGREEMENTS_FILE}", buf.getvalue())
    store.write_text(f"runs/{run_id}/{QUEUE_FILE}", to_jsonl(queue, schema.labels or []))
    outcome.files = {"disagreements": store.url(f"runs/{run_id}/{DISAGREEMENTS_FILE}"),
                     "review_queue": store.url(f"runs/{run_id}/{QUEUE_FILE}")}
    record_result(store, run_id, "curation", outcome)


@logged_step("curate_feedback")
def curate_step(
    store: Store | str, schema: Schema | str, model_name: str, records_path: str | Path, *,
    run_id: str, now: str, queue_path: str | Path | None = None,
    disagreements_path: str | Path | None = None, config: Config | None = None,
) -> CurationOutcome:
    """Write the run's disagreements and review queue (store and artifact paths).

    Args:
        store: The store, or its root URI.
        schema: The schema, or its file's URI.
        model_name: Model name in the registry.
        records_path: Parquet file of the lookback's records (from :func:`ingest_step`).
        run_id: The run's id (made path-safe by :func:`run_key`).
        now: The run's logical time (ISO-8601, from :func:`ingest_step`).
        queue_path: Where to write the review queue as JSONL (the KFP artifact).
        disagreements_path: Where to write the disagreements as Parquet (the KFP artifact).
        config: Every threshold (default: :class:`Config`).
    """
    run_id = run_key(run_id)
    store, schema = open_inputs(store, schema)
    config = config or Config()
    registry = Registry(store, model_name)
    records = read_frame(records_path)
    moment = logical_time(now)
    outcome, table, queue = run_curation(load_champion(registry), records, schema,
                                         now=moment, config=config,
                                         previous_queue=latest_queue(store, moment))
    write_curation(store, run_id, outcome, table, queue, schema)
    if queue_path is not None:
        Path(queue_path).write_text(to_jsonl(queue, schema.labels or []))
    if disagreements_path is not None:
        write_frame(table, disagreements_path)
    return outcome

