"""Where did the champion start to fail? A change point in its labelled error stream.

After an abrupt change the training window is still mostly pre-change rows, and a
challenger trained on them learns mostly the past. When the trigger fires on drift or a
performance drop, :func:`error_change_point` looks for the time at which the champion's
error rate stepped up, so the challenger can train on the rows after it.

The test: for every split ``k`` of the time-ordered 0/1 error sequence (each side at least
``min_segment`` rows) the pooled two-proportion z statistic of "error rate after > error
rate before"; the largest one is compared with the normal quantile at
``alpha / number_of_splits`` (Bonferroni over the splits, conservative: the statistics of
neighbouring splits are strongly correlated). With no change the false detection rate is
therefore at most ``alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@dataclass(frozen=True)
class ChangePoint:
    """A detected step up in the error rate.

    Attributes:
        index: Position of the first row after the change in the ordered sequence.
        error_before: Error rate before the change.
        error_after: Error rate from the change on.
        z: The z statistic at the split.
        threshold: The Bonferroni-corrected critical value it exceeded.
        n_after: Rows from the change on.
    """

    index: int
    error_before: float
    error_after: float
    z: float
    threshold: float
    n_after: int


def error_change_point(errors: np.ndarray, *, alpha: float = 0.01,
                       min_segment: int = 30) -> ChangePoint | None:
    """The most likely step up of the error rate in ``errors``, if significant.

    Args:
        errors: 0/1 (or bool) errors in time order.
        alpha: Family-wise false detection rate with no change.
        min_segment: Rows each side of a split needs at least.

    Returns:
        The change point, or ``None`` when no split is significant (or too few rows).
    """
    e = np.asarray(errors, dtype=np.float64)
    n = e.size
    splits = np.arange(min_segment, n - min_segment + 1)
    if splits.size == 0:
        return None
    before = np.cumsum(e)[splits - 1]
    total = e.sum()
    n1, n2 = splits.astype(np.float64), (n - splits).astype(np.float64)
    p1, p2 = before / n1, (total - before) / n2
    pooled = total / n
    if pooled in (0.0, 1.0):
        return None
    z = (p2 - p1) / np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    best = int(np.argmax(z))
    threshold = -NormalDist().inv_cdf(alpha / splits.size)  # isf, exact for a small tail
    if not z[best] > threshold:
        return None
    k = int(splits[best])
    return ChangePoint(k, float(p1[best]), float(p2[best]), float(z[best]), threshold, n - k)
