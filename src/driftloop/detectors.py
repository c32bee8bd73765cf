"""The only module that touches alibi-detect: univariate tests with a multiple-testing correction.

``import alibi_detect.cd`` takes seconds, so it happens inside :func:`run_tests`, never at
module import. Detectors are not persisted: they are rebuilt from the reference arrays stored
in the drift profile on every run, which costs only the array copy.

Notes on alibi-detect 0.13 (``BaseUnivariateDrift.predict``):

* ``drift_type='feature'`` returns the *uncorrected* ``p_val`` as ``threshold``; only
  ``drift_type='batch'`` applies the correction, so that is what is used here.
* With ``bonferroni`` the batch threshold is ``p_val / n_features``. With ``fdr`` it is the
  Benjamini-Hochberg cut-off ``q * k / n`` of the largest significant rank ``k`` when some test
  is significant, otherwise the whole array ``q * (1..n) / n`` of per-rank cut-offs.
* Per-feature p-values and statistics come back as float32 arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TestResults:
    """Per-test outcome of one corrected family of univariate tests.

    Attributes:
        tests: Test name per column: ``ks`` (continuous) or ``chi2`` (categorical codes).
        statistics: KS statistic or chi-squared statistic per column.
        p_values: p-value per column.
        thresholds: The corrected p-value threshold each column was judged against.
        drifted: ``p_value < threshold`` per column.
        detector: Name of the alibi-detect class that ran the tests.
    """

    __test__ = False  # not a pytest test class despite the name

    tests: list[str]
    statistics: list[float]
    p_values: list[float]
    thresholds: list[float]
    drifted: list[bool]
    detector: str

    @property
    def any_drift(self) -> bool:
        """Whether any test is significant after correction."""
        return any(self.drifted)


def run_tests(
    x_ref: np.ndarray,
    x_cur: np.ndarray,
    categorical: Sequence[int],
    *,
    p_value: float,
    correction: str,
) -> TestResults:
    """Run KS (continuous) and chi-squared (categorical) tests, corrected across all columns.

    Picks ``KSDrift`` when every column is continuous, ``ChiSquareDrift`` when every column is
    categorical and ``TabularDrift`` for a mix, so one correction always spans all columns.
    Categorical columns hold integer codes; their categories are inferred from ``x_ref`` and
    unioned with the current batch by alibi-detect, so a category seen only now is counted.

    Args:
        x_ref: Reference matrix ``(n_ref, n_columns)`` (float64, no NaN).
        x_cur: Current matrix ``(n_cur, n_columns)`` with the same columns.
        categorical: Indices of the categorical columns.
        p_value: Family-wise significance level (``q`` for FDR) before correction.
        correction: ``bonferroni`` or ``fdr``.

    Returns:
        Per-column statistics, p-values and the corrected thresholds.
    """
    from alibi_detect.cd import ChiSquareDrift, KSDrift, TabularDrift  # slow import

    n_cols = x_ref.shape[1]
    cat = sorted(set(categorical))
    detector: Any
    if not cat:
        detector = KSDrift(x_ref, p_val=p_value, correction=correction)
    elif len(cat) == n_cols:
        detector = ChiSquareDrift(x_ref, p_val=p_value, correction=correction)
    else:
        detector = TabularDrift(x_ref, p_val=p_value, correction=correction,
                                categories_per_feature=dict.fromkeys(cat))
    out = detector.predict(x_cur, drift_type="batch", return_p_val=True, return_distance=True)
    data = out["data"]
    p_vals = np.asarray(data["p_val"], dtype=np.float64)
    thresholds = _per_column_thresholds(p_vals, data["threshold"])
    drifted = [bool(p < t) for p, t in zip(p_vals, thresholds, strict=True)]
    return TestResults(
        tests=["chi2" if i in cat else "ks" for i in range(n_cols)],
        statistics=[float(v) for v in np.asarray(data["distance"], dtype=np.float64)],
        p_values=[float(p) for p in p_vals],
        thresholds=thresholds,
        drifted=drifted,
        detector=type(detector).__name__,
    )


def _per_column_thresholds(p_vals: np.ndarray, threshold: Any) -> list[float]:
    arr = np.atleast_1d(np.asarray(threshold, dtype=np.float64))
    if arr.size == 1:
        return [float(arr[0])] * p_vals.size
    # FDR with nothing significant: each column had to beat the cut-off of its own rank.
    ranks = np.empty(p_vals.size, dtype=np.int64)
    ranks[np.argsort(p_vals, kind="stable")] = np.arange(p_vals.size)
    return [float(arr[r]) for r in ranks]
