"""Paired bootstrap of the challenger - champion difference, overall and per slice.

Both models are scored on the same resampled rows each time, over one class set, so the
replicates are paired: the gate's ``confidence_interval`` rule reads the percentile
interval of the overall difference, its ``slices`` rule the standard error of each
slice's difference. Label metrics are vectorised through stacked confusion matrices
drawn as multinomial counts (:func:`label_replicates`); ROC AUC needs ranks and loops
over resamples (:func:`auc_replicates`). It is its own module because the resampling is
the gate's only numerically heavy part and is tested on its own
(:func:`paired_bootstrap_ci`); the rules in :mod:`driftloop.decide.gate` only read the
replicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from driftloop.models.metrics import (
    LABEL_METRICS,
    align_proba,
    binary_auc,
    class_set,
    confusion_class_metrics,
    confusion_metrics,
    roc_auc,
)

__all__ = [
    "Replicates",
    "auc_replicates",
    "codes",
    "label_replicates",
    "paired_bootstrap_ci",
    "percentile_interval",
]

# Per-class slice value of each label metric (see per_class_metrics).
_CLASS_METRIC = {"accuracy": "recall", "recall_macro": "recall",
                 "precision_macro": "precision", "f1_macro": "f1"}


def codes(values: Any, vocab: Sequence[str]) -> np.ndarray:
    """Positions in ``vocab`` of ``values`` (every value must be in it)."""
    names = np.asarray(vocab, dtype=str)
    order = np.argsort(names)
    return order[np.searchsorted(names[order], np.asarray(values, dtype=str))].astype(np.int64)


@dataclass
class Replicates:
    """Bootstrap replicates of challenger - champion, one row per resample."""

    overall: np.ndarray  # (R,) challenger - champion
    slices: np.ndarray  # (R, S) challenger - champion per slice (S may be 0)


def label_replicates(
    t: np.ndarray, ca: np.ndarray, cb: np.ndarray, k: int, metric: str, avg: np.ndarray, *,
    groups: np.ndarray | None, group_avg: Sequence[np.ndarray], class_idx: np.ndarray | None,
    resamples: int, seed: int,
) -> Replicates:
    """Label-metric differences on resampled rows, via stacked confusion matrices.

    A resample draws ``n`` rows with replacement. Rows with the same (slice, truth,
    champion's prediction, challenger's prediction) are interchangeable, so a resample
    is fully described by how many rows it draws of each such category: a multinomial
    draw (the same distribution as drawing row indices, in ``O(categories)`` instead of
    ``O(n)``). Both models' confusion matrices, overall and per slice, come from the
    same draw: the resamples are paired. Categories are ordered symmetrically in the
    two models, so swapping champion and challenger mirrors every difference (exactly,
    unless two mirrored categories have the same count).
    """
    n = t.size
    n_groups = len(group_avg) if groups is not None else 0
    g = groups if groups is not None else np.zeros(n, dtype=np.int64)
    width = max(n_groups, 1)
    cells = width * k * k
    cell_a, cell_b = (g * k + t) * k + ca, (g * k + t) * k + cb
    joint, freq = np.unique(cell_a * cells + cell_b, return_counts=True)
    ja, jb = joint // cells, joint % cells
    xa, xb = ja % k, jb % k
    order = np.lexsort((xa > xb, freq, np.maximum(xa, xb), np.minimum(xa, xb), ja // k))
    ja, jb, freq = ja[order], jb[order], freq[order]
    n_cat = freq.size
    to_a = np.zeros((n_cat, cells))
    to_a[np.arange(n_cat), ja] = 1
    to_b = np.zeros((n_cat, cells))
    to_b[np.arange(n_cat), jb] = 1
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, freq / n, size=resamples).astype(float)
    conf_a = (counts @ to_a).reshape(resamples, width, k, k)
    conf_b = (counts @ to_b).reshape(resamples, width, k, k)
    all_a, all_b = conf_a.sum(axis=1), conf_b.sum(axis=1)
    overall = (confusion_metrics(all_b, labels=avg)[metric]
               - confusion_metrics(all_a, labels=avg)[metric])
    if groups is not None:
        per = np.empty((resamples, n_groups))
        for s, labels in enumerate(group_avg):
            per[:, s] = (confusion_metrics(conf_b[:, s], labels=labels)[metric]
                         - confusion_metrics(conf_a[:, s], labels=labels)[metric])
    elif class_idx is not None:
        key = _CLASS_METRIC[metric]
        per = (confusion_class_metrics(all_b)[key][:, class_idx]
               - confusion_class_metrics(all_a)[key][:, class_idx])
    else:
        per = np.empty((resamples, 0))
    return Replicates(overall, per)


def auc_replicates(
    y: np.ndarray, pa: np.ndarray | None, pb: np.ndarray | None, vocab: Sequence[str],
    labels: Sequence[str], *, groups: np.ndarray | None,
    group_labels: Sequence[Sequence[str]], class_idx: np.ndarray | None,
    resamples: int, seed: int,
) -> Replicates:
    """ROC AUC differences on resampled rows (a loop: ranks do not vectorise)."""
    n = y.size
    rng = np.random.default_rng(seed)
    n_cols = len(group_labels) if groups is not None else (
        0 if class_idx is None else class_idx.size)
    overall = np.full(resamples, np.nan)
    per = np.full((resamples, n_cols), np.nan)
    if pa is None or pb is None:
        return Replicates(overall, per)
    for i in range(resamples):
        idx = rng.integers(0, n, size=n)
        yi, ai, bi = y[idx], pa[idx], pb[idx]
        overall[i] = (roc_auc(yi, bi, vocab, labels=labels)
                      - roc_auc(yi, ai, vocab, labels=labels))
        if groups is not None:
            gi = groups[idx]
            for s, lab in enumerate(group_labels):
                m = gi == s
                per[i, s] = (roc_auc(yi[m], bi[m], vocab, labels=lab)
                             - roc_auc(yi[m], ai[m], vocab, labels=lab))
        elif class_idx is not None:
            for j, c in enumerate(class_idx):
                pos = yi == vocab[c]
                per[i, j] = binary_auc(pos, bi[:, c]) - binary_auc(pos, ai[:, c])
    return Replicates(overall, per)


def percentile_interval(diffs: np.ndarray, confidence: float) -> tuple[float, float]:
    """Two-sided ``confidence`` percentile interval of ``diffs`` (NaN when none is defined)."""
    if diffs.size == 0 or np.isnan(diffs).all():
        return float("nan"), float("nan")
    alpha = 1 - confidence
    low, high = np.nanquantile(diffs, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def paired_bootstrap_ci(
    y_true: Any, pred_champion: Any, pred_challenger: Any, metric: str, *,
    proba_champion: np.ndarray | None = None, proba_challenger: np.ndarray | None = None,
    classes_champion: Sequence[str] = (), classes_challenger: Sequence[str] = (),
    resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
    labels: Sequence[str] | None = None,
) -> tuple[float, float]:
    """Percentile interval of ``metric(challenger) - metric(champion)``.

    Both models are scored on the same resampled rows each time, over one fixed class
    set: the macro averages and ROC AUC run over the classes of ``labels`` that occur
    in ``y_true`` (default: the classes of ``y_true``), in every resample, for both
    models; probabilities are aligned to the class set (unknown class: 0). Label
    metrics are vectorised through stacked confusion matrices; ROC AUC loops over
    resamples.
    """
    y = np.asarray(y_true, dtype=object).astype(str)
    if y.size == 0:
        return float("nan"), float("nan")
    pa = np.asarray(pred_champion, dtype=object).astype(str)
    pb = np.asarray(pred_challenger, dtype=object).astype(str)
    vocab = class_set(labels, y, pa, pb, classes_champion, classes_challenger)
    present = set(y)
    avg = [c for c in vocab if c in present]
    if metric in LABEL_METRICS:
        reps = label_replicates(
            codes(y, vocab), codes(pa, vocab), codes(pb, vocab), len(vocab), metric,
            np.array([vocab.index(c) for c in avg]), groups=None, group_avg=(),
            class_idx=None, resamples=resamples, seed=seed)
    else:
        qa = None if proba_champion is None else align_proba(
            proba_champion, [str(c) for c in classes_champion], vocab)
        qb = None if proba_challenger is None else align_proba(
            proba_challenger, [str(c) for c in classes_challenger], vocab)
        reps = auc_replicates(y, qa, qb, vocab, avg, groups=None, group_labels=(),
                               class_idx=None, resamples=resamples, seed=seed)
    return percentile_interval(reps.overall, confidence)
