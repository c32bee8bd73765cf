"""Classification metrics shared by training (validation metrics) and the promotion gate.

Macro averages follow scikit-learn: the mean over the labels present in ``y_true`` or
``y_pred``, with 0 for an undefined precision/recall/F1. ROC AUC is computed from ranks
(Mann-Whitney U, ties averaged), which equals :func:`sklearn.metrics.roc_auc_score`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

LABEL_METRICS: tuple[str, ...] = ("accuracy", "precision_macro", "recall_macro", "f1_macro")


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` for the boolean ``positive``; NaN unless both sides occur."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc(y_true: np.ndarray, proba: np.ndarray | None, classes: Sequence[str]) -> float:
    """ROC AUC: binary with ``classes[1]`` as positive, else one-vs-rest macro.

    Rows whose true label the model does not know are left out (they have no
    probability column). The multiclass average runs over the classes that occur in
    ``y_true``, so one class missing from a small eval set does not make the
    metric undefined. NaN when fewer than two known classes occur.
    """
    if proba is None or len(classes) < 2:
        return float("nan")
    cls = np.asarray(classes, dtype=object)
    y = np.asarray(y_true, dtype=object)
    known = np.isin(y, cls)
    y, proba = y[known], np.asarray(proba, dtype=float)[known]
    if len(cls) == 2:
        return binary_auc(y == cls[1], proba[:, 1])
    aucs = [binary_auc(y == c, proba[:, k]) for k, c in enumerate(cls)]
    finite = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(finite)) if finite else float("nan")


def compute_metrics(
    y_true: Any, y_pred: Any, proba: np.ndarray | None, classes: Sequence[str]
) -> dict[str, float]:
    """Accuracy, macro precision/recall/F1 and ROC AUC of one model on one set.

    Args:
        y_true: True class names.
        y_pred: Predicted class names.
        proba: Class probabilities, columns in the order of ``classes`` (or None).
        classes: The model's classes.

    Returns:
        Metric name -> value; ``roc_auc`` is NaN when it is undefined.
    """
    yt = np.asarray(y_true, dtype=object)
    yp = np.asarray(y_pred, dtype=object)
    if yt.size == 0:
        return {name: float("nan") for name in (*LABEL_METRICS, "roc_auc")}
    prec, rec, f1, _ = precision_recall_fscore_support(
        yt, yp, average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(yt, yp)),
        "precision_macro": float(prec),
        "recall_macro": float(rec),
        "f1_macro": float(f1),
        "roc_auc": roc_auc(yt, proba, classes),
    }


def confusion_metrics(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Label metrics from a stack of confusion matrices (rows true, columns predicted).

    Vectorised over the leading axis so thousands of bootstrap resamples cost a few
    array operations; the results equal :func:`compute_metrics` on the same rows.

    Args:
        conf: Counts of shape ``(..., K, K)``.

    Returns:
        Metric name -> array of shape ``conf.shape[:-2]``.
    """
    conf = np.asarray(conf, dtype=float)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    true_n = conf.sum(axis=-1)
    pred_n = conf.sum(axis=-2)
    present = (true_n + pred_n) > 0
    n_present = np.maximum(present.sum(axis=-1), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred_n > 0, tp / pred_n, 0.0)
        recall = np.where(true_n > 0, tp / true_n, 0.0)
        f1 = np.where(true_n + pred_n > 0, 2 * tp / (true_n + pred_n), 0.0)
    total = np.maximum(conf.sum(axis=(-2, -1)), 1)
    return {
        "accuracy": tp.sum(axis=-1) / total,
        "precision_macro": (precision * present).sum(axis=-1) / n_present,
        "recall_macro": (recall * present).sum(axis=-1) / n_present,
        "f1_macro": (f1 * present).sum(axis=-1) / n_present,
    }


def per_class_metrics(
    y_true: Any, y_pred: Any, proba: np.ndarray | None, classes: Sequence[str]
) -> dict[str, dict[str, float]]:
    """One-vs-rest metrics of each true class, keyed like :func:`compute_metrics`.

    For a class slice the macro metrics reduce to that class's own precision, recall
    and F1 (on the whole set), accuracy to its recall (accuracy on its rows) and
    ROC AUC to its one-vs-rest AUC; ``n`` is the number of rows of that class.
    """
    yt = np.asarray(y_true, dtype=object)
    yp = np.asarray(y_pred, dtype=object)
    cls = list(classes)
    out: dict[str, dict[str, float]] = {}
    for label in sorted({str(v) for v in yt}):
        is_true, is_pred = yt == label, yp == label
        tp = float((is_true & is_pred).sum())
        n_true, n_pred = float(is_true.sum()), float(is_pred.sum())
        recall = tp / n_true if n_true else 0.0
        auc = float("nan")
        if proba is not None and label in cls:
            auc = binary_auc(is_true, np.asarray(proba, dtype=float)[:, cls.index(label)])
        out[label] = {
            "accuracy": recall,
            "precision_macro": tp / n_pred if n_pred else 0.0,
            "recall_macro": recall,
            "f1_macro": 2 * tp / (n_true + n_pred) if n_true + n_pred else 0.0,
            "roc_auc": auc,
            "n": n_true,
        }
    return out
