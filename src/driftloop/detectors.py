"""The only module that runs statistical tests: univariate tests with a multiple-testing correction.

KS tests go through alibi-detect's ``KSDrift``; the chi-squared test of a categorical column
runs here on *pooled* counts (see :func:`driftloop.distance.pool_rare_categories`) with
``scipy.stats.chi2_contingency``, because alibi-detect's ``ChiSquareDrift`` builds its own
table from raw codes and so tests categories whose expected counts are near 0, where the
chi-squared approximation fails (3,000 Zipf categories and 100 rows: ~35% false alarms at a
nominal 5%). One correction then spans the p-values of all columns of a run.

``import alibi_detect.cd`` takes seconds, so it happens inside :func:`run_tests`, never at
module import. Detectors are not persisted: they are rebuilt from the reference arrays stored
in the drift profile on every run, which costs only the array copy.

Notes on alibi-detect 0.13:

* ``KSDrift`` runs ``scipy.stats.ks_2samp(..., mode='asymp')`` per feature and returns the
  p-values as float32; ``drift_type='feature'`` gives them uncorrected.
* The correction is applied here with alibi-detect's semantics (``BaseUnivariateDrift``,
  ``drift_type='batch'``): with ``bonferroni`` the threshold is ``p_val / n``; with ``fdr``
  (``alibi_detect.utils.statstest.fdr``) it is the Benjamini-Hochberg cut-off ``q * k / n`` of
  the largest significant rank ``k`` when some test is significant, otherwise each column is
  judged against the cut-off ``q * rank / n`` of its own rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TestInput:
    """One column to test.

    Attributes:
        test: ``ks`` (continuous values) or ``chi2`` (counts per bucket).
        ref: Reference values (``ks``, float64 without NaN) or reference counts per bucket.
        cur: Current values or current counts over the same buckets.
    """

    __test__ = False  # not a pytest test class despite the name

    test: str
    ref: np.ndarray
    cur: np.ndarray


@dataclass(frozen=True)
class TestResults:
    """Per-test outcome of one corrected family of univariate tests.

    Attributes:
        tests: Test name per column: ``ks`` (continuous) or ``chi2`` (categorical counts).
        statistics: KS statistic or chi-squared statistic per column.
        p_values: p-value per column.
        thresholds: The corrected p-value threshold each column was judged against.
        drifted: ``p_value < threshold`` per column (significance alone, no effect size).
        detector: What ran the tests (``KSDrift``, ``chi2_contingency`` or both).
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


def run_tests(columns: Sequence[TestInput], *, p_value: float,
              correction: str) -> TestResults:
    """Run KS and chi-squared tests, corrected across all columns together.

    Args:
        columns: The columns, in report order.
        p_value: Family-wise significance level (``q`` for FDR) before correction.
        correction: ``bonferroni`` or ``fdr``.

    Returns:
        Per-column statistics, p-values and the corrected thresholds.

    Raises:
        ValueError: A column names an unknown test, or there are no columns.
    """
    if not columns:
        raise ValueError("run_tests: no columns to test")
    stats = np.zeros(len(columns))
    p_vals = np.ones(len(columns))
    used = []
    for i, col in enumerate(columns):
        if col.test == "ks":
            stats[i], p_vals[i] = _ks(col.ref, col.cur)
            used.append("KSDrift")
        elif col.test == "chi2":
            stats[i], p_vals[i] = chi2_pooled(col.ref, col.cur)
            used.append("chi2_contingency")
        else:
            raise ValueError(f"run_tests: unknown test {col.test!r}")
    thresholds = corrected_thresholds(p_vals, p_value, correction)
    return TestResults(
        tests=[c.test for c in columns],
        statistics=[float(v) for v in stats],
        p_values=[float(p) for p in p_vals],
        thresholds=thresholds,
        drifted=[bool(p < t) for p, t in zip(p_vals, thresholds, strict=True)],
        detector="+".join(dict.fromkeys(used)),
    )


def chi2_pooled(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """Chi-squared test of homogeneity on a ``2 x buckets`` table of (pooled) counts.

    Buckets empty on both sides are dropped (they carry no information and would make the
    expected counts 0). With fewer than two buckets left there is nothing to compare.

    Args:
        ref_counts: Reference counts per bucket.
        cur_counts: Current counts per bucket.

    Returns:
        ``(statistic, p_value)``; ``(0.0, 1.0)`` when fewer than two buckets have counts or
        a side is empty.
    """
    from scipy.stats import chi2_contingency

    table = np.vstack([np.asarray(ref_counts, dtype=np.float64),
                       np.asarray(cur_counts, dtype=np.float64)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or np.any(table.sum(axis=1) == 0):
        return 0.0, 1.0
    stat, p, _, _ = chi2_contingency(table)
    return float(stat), float(p)


def corrected_thresholds(p_vals: np.ndarray, p_value: float, correction: str) -> list[float]:
    """The p-value threshold each column is judged against after the correction.

    Args:
        p_vals: Uncorrected p-values, one per column.
        p_value: Family-wise level (``q`` for FDR).
        correction: ``bonferroni`` or ``fdr`` (Benjamini-Hochberg).

    Returns:
        One threshold per column (see the module notes for the FDR case).

    Raises:
        ValueError: Unknown correction.
    """
    p_vals = np.asarray(p_vals, dtype=np.float64)
    n = p_vals.size
    if correction == "bonferroni":
        return [p_value / n] * n
    if correction != "fdr":
        raise ValueError(f"unknown correction {correction!r}: bonferroni or fdr")
    from alibi_detect.utils.statstest import fdr

    _, threshold = fdr(p_vals, q_val=p_value)
    return _per_column_thresholds(p_vals, threshold)


def _ks(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    from alibi_detect.cd import KSDrift  # slow import

    detector = KSDrift(np.asarray(ref, dtype=np.float64).reshape(-1, 1), p_val=0.05)
    out = detector.predict(np.asarray(cur, dtype=np.float64).reshape(-1, 1),
                           drift_type="feature", return_p_val=True, return_distance=True)
    data = out["data"]
    return (float(np.asarray(data["distance"]).ravel()[0]),
            float(np.asarray(data["p_val"]).ravel()[0]))


def _per_column_thresholds(p_vals: np.ndarray, threshold: object) -> list[float]:
    arr = np.atleast_1d(np.asarray(threshold, dtype=np.float64))
    if arr.size == 1:
        return [float(arr[0])] * p_vals.size
    # FDR with nothing significant: each column had to beat the cut-off of its own rank.
    ranks = np.empty(p_vals.size, dtype=np.int64)
    ranks[np.argsort(p_vals, kind="stable")] = np.arange(p_vals.size)
    return [float(arr[r]) for r in ranks]
