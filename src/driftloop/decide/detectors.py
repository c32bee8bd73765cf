"""The only module that runs statistical tests: univariate tests with a multiple-testing correction.

Both tests are scipy's, on the columns :mod:`driftloop.decide.drift` prepares:

* KS: ``scipy.stats.ks_2samp`` with ``method="auto"`` (the exact p-value while both samples
  have at most 10,000 rows, the asymptotic one beyond; an asymptotic p-value below 1e-6 is
  kept as is, being far past any threshold, since the exact one can take 0.2 s).
  alibi-detect's ``KSDrift``, used before, always takes the asymptotic p-value, which is
  anti-conservative for equal sample sizes: 5.6% false alarms at 100 and at 1,000 rows
  per side for a nominal 5% (measured, 4,000 and 2,000 repetitions; exact: 3.9%, 4.5%).
* chi-squared: ``scipy.stats.chi2_contingency`` on *pooled* counts (see
  :func:`driftloop.decide.distance.pool_rare_categories`). alibi-detect's ``ChiSquareDrift`` builds
  its table from raw codes and so tests categories whose expected counts are near 0, where
  the chi-squared approximation fails (3,000 Zipf categories, 100 current rows: ~35% false
  alarms at a nominal 5%); it cannot be fed pooled buckets.

One correction then spans the p-values of all columns of a run, with the semantics
alibi-detect's ``drift_type='batch'`` had (so reports read the same): with ``bonferroni`` the
threshold is ``p_val / n``; with ``fdr`` it is the Benjamini-Hochberg cut-off ``q * k / n`` of
the largest significant rank ``k`` when some test is significant, otherwise each column is
judged against the cut-off ``q * rank / n`` of its own rank. alibi-detect is no longer
imported by the drift step.

A sharded window (:mod:`driftloop.decide.shards`) tests KS from counts (test ``ks_grid``):
the current values counted on the reference sample's own grid determine the KS statistic
exactly (see :func:`ks_from_grid`), and scipy's two-sample p-value depends only on the
statistic and the two sample sizes, so :func:`ks_pvalue` reproduces ``ks_2samp``'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_SCIPY_MAX_AUTO_N = 10000  # ks_2samp's local MAX_AUTO_N (scipy 1.17.1): exact up to here
_EXACT_BELOW = 1e-6  # asymptotic KS p-values below this are kept (exact agrees: tiny too)


@dataclass(frozen=True)
class TestInput:
    """One column to test.

    Attributes:
        test: ``ks`` (continuous values), ``ks_grid`` (counts per slot of a reference grid,
            see :func:`ks_from_grid`) or ``chi2`` (counts per bucket).
        ref: Reference values (``ks``, float64 without NaN) or reference counts per slot or
            bucket.
        cur: Current values or current counts over the same slots or buckets.
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
        detector: What ran the tests (``ks_2samp``, ``chi2_contingency`` or both).
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
            used.append("ks_2samp")
        elif col.test == "ks_grid":
            stats[i], p_vals[i] = ks_from_grid(col.ref, col.cur)
            used.append("ks_2samp")
        elif col.test == "chi2":
            stats[i], p_vals[i] = chi2_pooled(col.ref, col.cur)
            used.append("chi2_contingency")
        else:
            raise ValueError(f"run_tests: unknown test {col.test!r}")
    thresholds = corrected_thresholds(p_vals, p_value, correction)
    return TestResults(
        tests=["ks" if c.test == "ks_grid" else c.test for c in columns],
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
    order = np.argsort(p_vals, kind="stable")
    cutoffs = p_value * np.arange(1, n + 1) / n
    below = np.flatnonzero(p_vals[order] < cutoffs)
    if below.size:
        return [float(cutoffs[below.max()])] * n
    # Nothing significant: each column had to beat the cut-off of its own rank.
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n)
    return [float(cutoffs[r]) for r in ranks]


def _ks(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    from scipy.stats import ks_2samp

    a, b = np.asarray(ref, dtype=np.float64), np.asarray(cur, dtype=np.float64)
    res = ks_2samp(a, b, method="asymp")
    if res.pvalue < _EXACT_BELOW:
        # Far beyond any threshold: the exact p-value would only cost time (up to ~0.2 s
        # per column for 5,000 x 10,000 rows and a large statistic).
        return float(res.statistic), float(res.pvalue)
    res = ks_2samp(a, b, method="auto")
    return float(res.statistic), float(res.pvalue)


def ks_from_grid(ref_slots: np.ndarray, cur_slots: np.ndarray) -> tuple[float, float]:
    """KS statistic and p-value from counts per slot of the reference grid.

    The grid is the sorted distinct reference values ``u_1 < ... < u_m``; slot ``2i`` counts
    the values strictly between ``u_i`` and ``u_{i+1}`` (slot 0: below ``u_1``, slot ``2m``:
    above ``u_m``) and slot ``2i + 1`` the values equal to ``u_i``. Both empirical CDFs are
    step functions and the reference one is constant between grid points, so the largest
    CDF difference is reached at a grid point or just below one: the cumulative counts at
    the slots' ends give ``ks_2samp``'s statistic exactly (no sketch error).

    Args:
        ref_slots: Reference counts per slot (``2m + 1``).
        cur_slots: Current counts per slot, same grid.

    Returns:
        ``(statistic, p_value)`` as :func:`_ks` gives them on the raw values.

    Raises:
        ValueError: The slot vectors differ in length or a side is empty.
    """
    ref = np.asarray(ref_slots, dtype=np.int64)
    cur = np.asarray(cur_slots, dtype=np.int64)
    if ref.shape != cur.shape:
        raise ValueError(f"ks_grid: slot vectors differ in length: {ref.shape} vs {cur.shape}")
    n1, n2 = int(ref.sum()), int(cur.sum())
    if min(n1, n2) == 0:
        raise ValueError("ks_grid: a side has no values")
    # The same float operations as ks_2samp (count / n, then the difference).
    diffs = np.cumsum(ref) / n1 - np.cumsum(cur) / n2
    min_s, max_s = float(np.clip(-diffs.min(), 0, 1)), float(diffs.max())
    d = min_s if min_s > max_s else max_s
    return _ks_of_statistic(d, n1, n2)


def ks_pvalue(d: float, n1: int, n2: int, method: str = "auto") -> tuple[float, float]:
    """Two-sided two-sample KS p-value from the statistic, as ``scipy.stats.ks_2samp``.

    Mirrors scipy 1.17.1's ``ks_2samp`` (``scipy/stats/_stats_py.py``) after it computed the
    statistic: ``exact`` rounds ``d`` to the lattice ``h / lcm(n1, n2)`` and counts paths
    (falling back to ``asymp`` when that fails); ``asymp`` is ``kstwo.sf(d, round(en))``
    with ``en = n1 n2 / (n1 + n2)``. A test compares it with ``ks_2samp`` on raw samples.

    Args:
        d: KS statistic.
        n1: Reference rows.
        n2: Current rows.
        method: ``auto`` (exact up to 10,000 rows per side), ``exact`` or ``asymp``.

    Returns:
        ``(statistic, p_value)``; exact mode returns the lattice-rounded statistic, as scipy.
    """
    from scipy.stats import distributions
    from scipy.stats._stats_py import _attempt_exact_2kssamp

    g = math.gcd(n1, n2)
    mode = method
    if mode == "auto":
        mode = "exact" if max(n1, n2) <= _SCIPY_MAX_AUTO_N else "asymp"
    elif mode == "exact" and n1 // g >= np.iinfo(np.int32).max / (n2 // g):
        mode = "asymp"
    prob = float("nan")
    if mode == "exact":
        success, d, prob = _attempt_exact_2kssamp(n1, n2, g, d, "two-sided")
        if not success:
            mode = "asymp"
    if mode == "asymp":
        m, n = sorted([float(n1), float(n2)], reverse=True)
        prob = distributions.kstwo.sf(d, np.round(m * n / (m + n)))
    return float(d), float(np.clip(prob, 0, 1))


def _ks_of_statistic(d: float, n1: int, n2: int) -> tuple[float, float]:
    # The same two-stage choice as _ks: asymptotic first, exact only where it matters.
    stat, p = ks_pvalue(d, n1, n2, "asymp")
    if p < _EXACT_BELOW:
        return stat, p
    return ks_pvalue(d, n1, n2, "auto")
