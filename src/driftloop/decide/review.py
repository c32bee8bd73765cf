"""The review queue: the unlabelled responses most worth a person's time to label.

Uncertainty sampling (Lewis & Gale 1994; Settles 2009, "Active Learning Literature
Survey", §3.1): a row is informative when the model is unsure of it, by the **margin**
between its two most probable classes (lowest first; ties: higher **entropy** first).
Taking the lowest margins alone piles the queue onto one region of the traffic (one topic,
one near-duplicate cluster), so the queue is **diverse across slices**: each slice gets a
share in proportion to its uncertain rows, its most uncertain first, every slice at
least its most uncertain row (:func:`select_for_review`), and near-duplicates
(:func:`driftloop.data.curate.duplicate_keys`) are asked once.
``benchmarks/active_learning.py`` measures what it buys over as many random labels.

The export (:func:`export_rows`) holds what a labelling tool needs: the request ``id`` that
``POST /feedback`` takes, the features (or text), the prediction, its confidence, the
margin and entropy, the slice and the classes to choose from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from driftloop.data.curate import duplicate_keys
from driftloop.data.schema import Schema
from driftloop.serde import JsonResult, to_jsonable


def uncertainty(proba: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(confidence, margin, entropy)`` of each row of class probabilities."""
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or p.shape[0] == 0:
        z = np.zeros(0)
        return z, z, z
    top = np.sort(p, axis=1)[:, ::-1]
    second = top[:, 1] if p.shape[1] > 1 else np.zeros(len(p))
    safe = np.clip(p, 1e-12, 1.0)
    entropy = -(p * np.log(safe)).sum(axis=1)
    return top[:, 0], top[:, 0] - second, entropy


def select_for_review(margin: np.ndarray, entropy: np.ndarray, slices: Sequence[str],
                      keys: Sequence[str], size: int) -> np.ndarray:
    """Positions of the ``size`` rows to label: uncertain first, every slice its share.

    Each slice's rows are ranked by margin (ties: higher entropy first); the queue takes
    rows in the order of ``rank in its slice / weight of its slice``, where a slice's
    weight is how many of its rows are at most the median margin of all candidates (at
    least 1). So a slice gets a share of the queue in proportion to its uncertain rows,
    every slice with candidates gets its most uncertain row near the top, and a slice of
    confident predictions is not asked as often as a confused one (equal quotas would
    spend labels on its confident rows).

    Args:
        margin: Top-1 minus top-2 probability per row.
        entropy: Entropy of the probabilities per row (breaks ties).
        slices: Each row's slice.
        keys: Each row's near-duplicate key: a key is asked once.
        size: How many rows to pick (fewer when there are fewer distinct keys).
    """
    n = len(margin)
    if n == 0 or size <= 0:
        return np.zeros(0, dtype=int)
    margin = np.asarray(margin, dtype=float)
    order = np.lexsort((-np.asarray(entropy, dtype=float), margin))
    names = np.asarray([str(s) for s in slices], dtype=object)
    median = float(np.median(margin))
    weight = {s: max(1, int(((names == s) & (margin <= median)).sum())) for s in set(names)}
    seen_in: dict[str, int] = {}
    priority = np.empty(n)
    for i in order:
        r = seen_in.get(names[i], 0)
        seen_in[names[i]] = r + 1
        priority[i] = r / weight[names[i]]
    picked: list[int] = []
    asked: set[str] = set()
    for i in np.lexsort((margin, priority)):
        key = str(keys[i])
        if key in asked:
            continue
        asked.add(key)
        picked.append(int(i))
        if len(picked) >= size:
            break
    return np.asarray(picked, dtype=int)


@dataclass
class ReviewStats(JsonResult):
    """What a review queue holds, and how much of an earlier one came back labelled."""

    candidates: int
    queued: int
    slice_by: str
    per_slice: dict[str, int]
    median_margin: float
    model_version: str | None
    returned: int | None = None
    returned_of: int | None = None
    returned_disagreeing: int | None = None

    def to_markdown(self) -> str:
        """A short Markdown summary."""
        lines = [f"### Review queue: {self.queued} of {self.candidates} unlabelled responses",
                 "", f"- median margin {self.median_margin:.3f} (model {self.model_version})",
                 f"- per {self.slice_by}: "
                 + ", ".join(f"{k} {v}" for k, v in sorted(self.per_slice.items()))]
        if self.returned_of:
            lines.append(f"- labels back for {self.returned} of {self.returned_of} queued "
                         f"earlier ({self.returned_disagreeing} disagreeing with the "
                         f"prediction)")
        return "\n".join(lines) + "\n"


def review_queue(candidates: pd.DataFrame, proba: np.ndarray, classes: Sequence[str],
                 schema: Schema, size: int, *, model_version: str | None = None,
                 ) -> tuple[pd.DataFrame, ReviewStats]:
    """The review queue of ``candidates`` (unlabelled rows) given the model's probabilities.

    Returns:
        The queue, most informative first (columns: ``rank``, ``id``, ``timestamp``,
        ``prediction``, ``confidence``, ``margin``, ``entropy``, ``slice``,
        ``model_version``, ``proba_<class>`` and the features), and its statistics.
    """
    slice_by = (schema.slice_column if schema.slice_column and schema.slice_column in candidates
                else "prediction")
    if candidates.empty:
        empty = pd.DataFrame(columns=["rank", "id", "prediction", "confidence", "margin"])
        return empty, ReviewStats(0, 0, slice_by, {}, float("nan"), model_version)
    conf, margin, entropy = uncertainty(proba)
    pred = np.asarray(classes, dtype=object)[np.asarray(proba).argmax(axis=1)].astype(str)
    slices = (candidates[slice_by].astype(str).to_numpy() if slice_by != "prediction"
              else pred)
    keys = duplicate_keys(candidates, schema).to_numpy()
    pick = select_for_review(margin, entropy, slices, keys, size)
    rows = candidates.iloc[pick].reset_index(drop=True)
    out = pd.DataFrame({
        "rank": np.arange(1, len(pick) + 1), "id": rows["id"].astype(str),
        "timestamp": rows["timestamp"].astype(str) if "timestamp" in rows else None,
        "prediction": pred[pick], "confidence": conf[pick], "margin": margin[pick],
        "entropy": entropy[pick], "slice": slices[pick],
        "model_version": model_version})
    for j, c in enumerate(classes):
        out[f"proba_{c}"] = np.asarray(proba)[pick, j]
    for f in schema.feature_names:
        if f in rows and f not in out:
            out[f] = rows[f].to_numpy()
    per = pd.Series(slices[pick]).value_counts()
    stats = ReviewStats(len(candidates), len(out), slice_by,
                        {str(k): int(v) for k, v in per.items()},
                        float(np.median(margin[pick])) if len(pick) else float("nan"),
                        model_version)
    return out, stats


def export_rows(queue: pd.DataFrame, labels: Sequence[str]) -> list[dict[str, Any]]:
    """The queue as JSON objects for a labelling tool (``choices``: the classes)."""
    out = []
    for rec in queue.to_dict(orient="records"):
        item = {k: to_jsonable(v) for k, v in rec.items()}
        item["choices"] = list(labels)
        out.append(item)
    return out


def to_jsonl(queue: pd.DataFrame, labels: Sequence[str]) -> str:
    """JSON Lines, one queued response per line."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in export_rows(queue, labels))


def to_csv(queue: pd.DataFrame) -> str:
    """CSV with a header (the ``choices`` are not repeated per row)."""
    return queue.to_csv(index=False)
