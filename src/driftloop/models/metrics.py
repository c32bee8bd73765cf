"""Classification metrics shared by training (validation metrics) and the promotion gate.

Comparing two models needs ONE class set for both (``labels=``): macro averages are the
mean over exactly those classes (0 for an undefined precision/recall/F1; a prediction of
a class outside the set still counts as a mistake), and every model's probabilities are
aligned to those classes (a class the model does not know has probability 0) so ROC AUC
scores every row: binary with ``labels[1]`` as the positive class, else the one-vs-rest
macro average over the classes of the set that occur. Without ``labels`` the macro
averages follow scikit-learn's default (the labels present in ``y_true`` or ``y_pred``,
which differ between models) and ROC AUC uses the model's own classes; that is fine for
one model's validation score, not for a comparison.

ROC AUC is computed from ranks (Mann-Whitney U, ties averaged), which equals
:func:`sklearn.metrics.roc_auc_score`.
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


def class_set(schema_labels: Sequence[str] | None, *observed: Any) -> list[str]:
    """The fixed class set of a comparison: the schema's labels, then any other class seen.

    Args:
        schema_labels: The schema's declared labels (their order is kept), or None.
        *observed: Iterables of class names (true labels, predictions, model classes);
            those outside ``schema_labels`` are appended sorted, so nothing is dropped.
    """
    base = [str(c) for c in schema_labels or ()]
    seen = {str(c) for values in observed for c in values}
    return base + sorted(seen - set(base))


def align_proba(proba: np.ndarray, classes: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Reorder probability columns from the model's ``classes`` to ``labels``.

    A label the model does not know gets probability 0; a model class outside
    ``labels`` is dropped.
    """
    proba = np.asarray(proba, dtype=float)
    out = np.zeros((proba.shape[0], len(labels)))
    where = {str(c): k for k, c in enumerate(classes)}
    for j, label in enumerate(labels):
        if label in where:
            out[:, j] = proba[:, where[label]]
    return out


def roc_auc(y_true: np.ndarray, proba: np.ndarray | None, classes: Sequence[str], *,
            labels: Sequence[str] | None = None) -> float:
    """ROC AUC: binary with the second class as positive, else one-vs-rest macro.

    With ``labels`` (the comparison's class set) the probabilities are aligned to it
    (see :func:`align_proba`) and every row counts: binary with ``labels[1]`` positive
    when it has two classes, else the mean one-vs-rest AUC over its classes that occur
    in ``y_true``. Without it the model's own ``classes`` are used and rows whose true
    label the model does not know are left out. NaN when undefined.
    """
    if proba is None:
        return float("nan")
    if labels is not None:
        lab = [str(c) for c in labels]
        if len(lab) < 2:
            return float("nan")
        aligned = align_proba(proba, classes, lab)
        y_all = np.asarray(y_true, dtype=object)
        if len(lab) == 2:
            return binary_auc(y_all == lab[1], aligned[:, 1])
        per = [binary_auc(y_all == c, aligned[:, k]) for k, c in enumerate(lab)]
        defined = [a for a in per if not np.isnan(a)]
        return float(np.mean(defined)) if defined else float("nan")
    if len(classes) < 2:
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
    y_true: Any, y_pred: Any, proba: np.ndarray | None, classes: Sequence[str], *,
    labels: Sequence[str] | None = None,
) -> dict[str, float]:
    """Accuracy, macro precision/recall/F1 and ROC AUC of one model on one set.

    Args:
        y_true: True class names.
        y_pred: Predicted class names.
        proba: Class probabilities, columns in the order of ``classes`` (or None).
        classes: The model's classes.
        labels: The class set the macro averages and ROC AUC run over; pass the same
            one for every model compared. None: scikit-learn's per-call default.

    Returns:
        Metric name -> value; ``roc_auc`` is NaN when it is undefined.
    """
    yt = np.asarray(y_true, dtype=object).astype(str)
    yp = np.asarray(y_pred, dtype=object).astype(str)
    if yt.size == 0:
        return {name: float("nan") for name in (*LABEL_METRICS, "roc_auc")}
    if labels is None:
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
    lab = [str(c) for c in labels]
    # Same values as scikit-learn with labels=lab; a confusion matrix is much faster.
    vocab = np.array(lab + sorted((set(yt) | set(yp)) - set(lab)))
    order = np.argsort(vocab)
    k = vocab.size
    t = order[np.searchsorted(vocab[order], yt)]
    p = order[np.searchsorted(vocab[order], yp)]
    conf = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    values = confusion_metrics(conf, labels=np.arange(len(lab)))
    return {
        **{name: float(values[name]) for name in LABEL_METRICS},
        "roc_auc": roc_auc(yt, proba, classes, labels=lab),
    }


def confusion_class_metrics(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall and F1 from stacked confusion matrices.

    Args:
        conf: Counts of shape ``(..., K, K)`` (rows true, columns predicted).

    Returns:
        ``precision``, ``recall`` and ``f1`` of shape ``conf.shape[:-1]`` (0 when
        undefined), and ``true_n``, the rows of each true class.
    """
    conf = np.asarray(conf, dtype=float)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    true_n = conf.sum(axis=-1)
    pred_n = conf.sum(axis=-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred_n > 0, tp / np.maximum(pred_n, 1), 0.0)
        recall = np.where(true_n > 0, tp / np.maximum(true_n, 1), 0.0)
        f1 = np.where(true_n + pred_n > 0, 2 * tp / np.maximum(true_n + pred_n, 1), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "true_n": true_n}


def confusion_metrics(
    conf: np.ndarray, *, labels: Sequence[int] | np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Label metrics from a stack of confusion matrices (rows true, columns predicted).

    Vectorised over the leading axis so thousands of bootstrap resamples cost a few
    array operations; the results equal :func:`compute_metrics` with the same class
    set on the same rows. The class set is fixed: every matrix of the stack (each
    model, each resample) averages over the same classes, whether they occur in that
    matrix or not.

    Args:
        conf: Counts of shape ``(..., K, K)``.
        labels: Indices (of the K classes) the macro averages run over; default all K.

    Returns:
        Metric name -> array of shape ``conf.shape[:-2]``.
    """
    conf = np.asarray(conf, dtype=float)
    k = conf.shape[-1]
    idx = np.arange(k) if labels is None else np.asarray(labels, dtype=int)
    per = confusion_class_metrics(conf)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    total = np.maximum(conf.sum(axis=(-2, -1)), 1)
    n_avg = max(idx.size, 1)
    return {
        "accuracy": tp.sum(axis=-1) / total,
        "precision_macro": per["precision"][..., idx].sum(axis=-1) / n_avg,
        "recall_macro": per["recall"][..., idx].sum(axis=-1) / n_avg,
        "f1_macro": per["f1"][..., idx].sum(axis=-1) / n_avg,
    }


def per_class_metrics(
    y_true: Any, y_pred: Any, proba: np.ndarray | None, classes: Sequence[str], *,
    labels: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """One-vs-rest metrics of each true class, keyed like :func:`compute_metrics`.

    For a class slice the macro metrics reduce to that class's own precision, recall
    and F1 (on the whole set), accuracy to its recall (accuracy on its rows) and
    ROC AUC to its one-vs-rest AUC; ``n`` is the number of rows of that class.

    Args:
        y_true: True class names.
        y_pred: Predicted class names.
        proba: Class probabilities, columns in the order of ``classes`` (or None).
        classes: The model's classes.
        labels: The comparison's class set: the classes of it that occur in ``y_true``
            are reported (in its order), and a class the model does not know scores
            its AUC with probability 0 (instead of NaN). None: the classes of ``y_true``.
    """
    yt = np.asarray(y_true, dtype=object).astype(str)
    yp = np.asarray(y_pred, dtype=object).astype(str)
    cls = [str(c) for c in classes]
    present = {str(v) for v in yt}
    keys = sorted(present) if labels is None else [c for c in labels if c in present]
    aligned = None
    if proba is not None and labels is not None:
        aligned = align_proba(proba, cls, keys)
    out: dict[str, dict[str, float]] = {}
    for j, label in enumerate(keys):
        is_true, is_pred = yt == label, yp == label
        tp = float((is_true & is_pred).sum())
        n_true, n_pred = float(is_true.sum()), float(is_pred.sum())
        recall = tp / n_true if n_true else 0.0
        auc = float("nan")
        if aligned is not None:
            auc = binary_auc(is_true, aligned[:, j])
        elif proba is not None and label in cls:
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
