"""The evaluate step: both models on the same held-out rows, then the promotion gate.

:func:`run_evaluate` applies the gate (:func:`driftloop.decide.gate.evaluate_challenger`;
a first model without fresh labels gets :func:`first_model_verdict`);
:func:`evaluate_step` is the step the ``evaluate_challenger`` component and the
in-process loop call, with the classification curves the KFP UI draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftloop.clock import utc_now_iso
from driftloop.config import Config
from driftloop.data.runs import record_result
from driftloop.data.schema import Schema
from driftloop.data.storage import Store
from driftloop.decide.gate import Verdict, evaluate_challenger
from driftloop.errors import DriftloopError
from driftloop.models.registry import Registry
from driftloop.models.train import (
    ModelMetadata,
    predict_frame,
)
from driftloop.steps.champion import Champion, load_champion
from driftloop.steps.common import (
    finite_metrics,
    logged_step,
    open_inputs,
    pipeline_config,
    read_frame,
    run_key,
)


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


@dataclass
class Curves:
    """The challenger's confusion matrix and ROC curve on the evaluation set.

    Attributes:
        labels: Class names, in the order of the matrix rows (true) and columns (predicted).
        matrix: Confusion counts.
        positive: The class the ROC curve is for (``micro-average`` for > 2 classes).
        fpr: False positive rates.
        tpr: True positive rates.
        thresholds: Score thresholds (capped at 1).
    """

    labels: list[str]
    matrix: list[list[int]]
    positive: str
    fpr: list[float]
    tpr: list[float]
    thresholds: list[float]


def classification_curves(model: Any, eval_set: pd.DataFrame, schema: Schema) -> Curves:
    """Confusion matrix and ROC of ``model`` on the labelled rows of ``eval_set``.

    Binary: the ROC of the second class (``classes_[1]``); more classes: the micro-average
    of the one-vs-rest curves.
    """
    from sklearn.metrics import confusion_matrix, roc_curve

    df = eval_set.loc[eval_set["label"].notna()] if "label" in eval_set else eval_set.iloc[0:0]
    classes = [str(c) for c in model.classes_]
    if df.empty:  # a first model without fresh held-out labels: nothing to draw
        zeros = [[0] * len(classes) for _ in classes]
        return Curves(classes, zeros, classes[-1] if classes else "", [], [], [])
    y = df["label"].astype(str).to_numpy()
    pred, proba = predict_frame(model, df, schema)
    matrix = confusion_matrix(y, np.asarray(pred, dtype=str), labels=classes)
    if len(classes) == 2:
        positive, truth, score = classes[1], (y == classes[1]).astype(int), proba[:, 1]
    else:
        onehot = (y[:, None] == np.asarray(classes)[None, :]).astype(int)
        positive, truth, score = "micro-average", onehot.ravel(), proba.ravel()
    if truth.min() == truth.max():  # one class only: no curve is defined
        fpr = tpr = thresholds = np.array([])
    else:
        fpr, tpr, thresholds = roc_curve(truth, score)
    return Curves(classes, matrix.astype(int).tolist(), positive, fpr.tolist(), tpr.tolist(),
                  np.minimum(thresholds, 1.0).tolist())


@dataclass
class EvaluateOutcome:
    """The gate's verdict on the challenger, with its classification curves."""

    verdict: Verdict
    curves: Curves

    @property
    def decision(self) -> str:
        """``promote``, ``needs_approval`` or ``reject``."""
        return self.verdict.decision

    def metrics(self) -> dict[str, float]:
        """Evaluation metrics for the KFP Metrics artifact."""
        v = self.verdict
        values: dict[str, Any] = {f"challenger_{k}": x for k, x in v.challenger.metrics.items()}
        if v.champion is not None:
            values |= {f"champion_{k}": x for k, x in v.champion.metrics.items()}
            values["champion_latency_p95_ms"] = v.champion.latency_p95_ms
        values |= {"improvement_rel": v.improvement_rel, "ci_low": v.ci_low,
                   "ci_high": v.ci_high, "eval_rows": v.challenger.n,
                   "challenger_latency_p95_ms": v.challenger.latency_p95_ms}
        return finite_metrics(values)


@logged_step("evaluate_challenger")
def evaluate_step(
    store: Store | str, schema: Schema | str, model_name: str, model_dir: str | Path,
    eval_path: str | Path, *, run_id: str, auto_threshold: float | None = None,
    config: Config | None = None,
) -> EvaluateOutcome:
    """Score the challenger in ``model_dir`` against the champion and apply the gate.

    Records ``runs/<run-id>/verdict.json`` and ``verdict.md``.

    Args:
        store: The store, or its root URI.
        schema: The schema, or its file's URI.
        model_name: Model name in the registry.
        model_dir: The challenger's folder (from :func:`train_step`); its
            ``metadata.json`` names the registered version, which is loaded verified.
        eval_path: Parquet evaluation set (from :func:`train_step`).
        run_id: The run's id (made path-safe by :func:`run_key`).
        auto_threshold: Relative improvement needed to promote without a person.
        config: Every threshold (default: :class:`Config`); the knobs above override it.
    """
    run_id = run_key(run_id)
    store, schema = open_inputs(store, schema)
    config = pipeline_config(config, auto_threshold=auto_threshold)
    registry = Registry(store, model_name)
    meta_path = Path(model_dir) / "metadata.json"
    try:
        version = ModelMetadata.from_json(meta_path.read_text()).version
    except FileNotFoundError:
        raise DriftloopError(f"{meta_path}: the challenger's metadata does not exist") from None
    eval_set = read_frame(eval_path)
    verdict = run_evaluate(registry, load_champion(registry), version, eval_set, schema,
                           config)
    record_result(store, run_id, "verdict", verdict)
    curves = classification_curves(registry.load_model(version), eval_set, schema)
    return EvaluateOutcome(verdict, curves)
