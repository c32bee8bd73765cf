"""A trained model's card (``metadata.json``), light enough for steps that never train.

The drift merge, the promote step and the exit handler read a version's metadata; keeping
the card apart from :mod:`driftloop.models.train` spares them scikit-learn's import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from driftloop.serde import JsonResult


@dataclass
class ModelMetadata(JsonResult):
    """What a trained model is, what it was trained on and how it scored (metadata.json)."""

    model_name: str
    version: str
    created_at: str
    model_kind: str
    classes: list[str]
    features: list[str]
    schema: dict[str, Any]
    training_window_start: str | None
    training_window_end: str | None
    training_cutoff: str | None
    n_rows: int
    data_hash: str
    model_sha256: str
    library_versions: dict[str, str]
    params: dict[str, Any]
    validation_metrics: dict[str, float]
    primary_metric: str
    seed: int
    n_validation_rows: int = 0
    #: Why it was trained: the rules that fired, the drift effect size of that run and the
    #: training window chosen (``{"start": ISO or None, "reason": ...}``).
    trigger: dict[str, Any] = field(default_factory=dict)
    #: What the last doubling of its data bought (:func:`learning_curve`): the label-volume
    #: rule grows the training set again only while this credibly paid. Empty: unknown.
    learning_curve: dict[str, float] = field(default_factory=dict)
    #: Permutation importance on rows it never trained on (:func:`feature_importance`):
    #: ``{"rows", "source", "metric", "baseline", "repeats", "features": [{"name", "mean",
    #: "std"}, ...]}``, most important first. Empty: not measured (older versions too).
    feature_importance: dict[str, Any] = field(default_factory=dict)
    #: The search that chose it (:func:`driftloop.models.tuning.selection_record`):
    #: ``{"kind", "winner", "reason", "metric", "results": [every candidate's best score,
    #: params, trials, seconds or why it was skipped]}``. Empty: the fixed model, no search.
    candidates: dict[str, Any] = field(default_factory=dict)
