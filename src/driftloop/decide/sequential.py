"""Anytime-valid statistics for canary decisions: look at the data every run, keep alpha.

A canary is judged again on every pipeline run, on the cumulative data. A fixed-sample
(Wald) interval re-computed at every look rejects a true null far more often than its
nominal level. A *confidence sequence* (CS) instead covers the true value at all looks at
once: ``P(for all n: theta in CS_n) >= 1 - alpha``, so stopping whenever the CS excludes a
value keeps the error rate ``alpha`` however often one looks.

The boundary is the two-sided normal-mixture (Robbins) boundary: Howard, Ramdas,
McAuliffe & Sekhon (2021), "Time-uniform, nonparametric, nonasymptotic confidence
sequences", Ann. Statist. 49(2), eq. (14); used for an asymptotically normal estimator as
in the asymptotic confidence sequences of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas
(2023), "Time-uniform central limit theory and asymptotic confidence sequences", Thm 2.2.
For an estimator ``theta_hat`` with variance ``1 / V`` (``V`` the *information*, the
intrinsic time of the score process ``V * (theta_hat - theta)``, which behaves like a
Brownian motion at time ``V``) the CS is::

    theta_hat ± sqrt( (V*rho^2 + 1) / rho^2 * log((V*rho^2 + 1) / alpha^2) ) / V

The mixing scale ``rho`` sets where the boundary is tightest: the ``rho`` that minimises
it at the information ``V_opt`` is ``rho^2 = (-2 log alpha + log(1 - 2 log alpha)) / V_opt``
(Howard et al. 2021, eq. (15)). One ``rho`` tuned to a large planned sample is very wide on
small samples, so :func:`half_width` takes the intersection of the CSs of a few ``rho``
(each at ``alpha / k``, a union bound): tight early, to catch a gross failure on a few
labels, and near-optimal at the planned sample size.

The estimator is the stratified (Mantel-Haenszel / inverse-variance weighted) risk
difference of two proportions (:func:`stratified_difference`): comparing two model
versions within the same time buckets avoids Simpson's paradox when their traffic shares
change over time (a canary at 10% on one day, 50% later) and the traffic gets harder or
easier.

Pure numpy; no pandas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

#: Where the CS components are tuned, as shares of the planned information: a quarter of
#: the budget (a canary better by the tolerance is typically confirmed there) and 1/128 of
#: it (a gross failure is caught on the first hundred or so labels).
RHO_SHARES: tuple[float, ...] = (0.25, 1.0 / 128.0)

#: scipy.stats.norm's quantiles to double precision without importing scipy (0.6 s):
#: the promote and canary tasks load this module.
STANDARD_NORMAL = NormalDist()


def optimal_rho(alpha: float, information: float) -> float:
    """The mixing scale that makes the two-sided normal-mixture CS tightest at ``information``.

    ``rho^2 = (-2 log alpha + log(1 - 2 log alpha)) / V_opt`` (Howard et al. 2021, eq. 15).

    Args:
        alpha: Error level of the CS.
        information: The information ``V_opt`` (1 / variance) to tune for; > 0.

    Returns:
        ``rho`` (> 0).
    """
    la = -2.0 * math.log(alpha)
    return math.sqrt((la + math.log(1.0 + la)) / information)


def mixture_half_width(information: float | np.ndarray, alpha: float,
                       rho: float) -> float | np.ndarray:
    """Half-width of the normal-mixture CS at ``information`` for one ``rho``.

    ``sqrt((V rho^2 + 1) / rho^2 * log((V rho^2 + 1) / alpha^2)) / V`` (Howard et al. 2021,
    eq. 14, in information time; Waudby-Smith et al. 2023, eq. 2.6 with ``V = t / sigma^2``).

    Args:
        information: ``V`` = 1 / variance of the estimator (scalar or array, > 0).
        alpha: Error level.
        rho: Mixing scale.

    Returns:
        The half-width, in the estimator's units.
    """
    v = np.asarray(information, dtype=float)
    vr = v * rho * rho + 1.0
    out = np.sqrt(vr / (rho * rho) * np.log(vr / (alpha * alpha))) / v
    return float(out) if out.ndim == 0 else out


def _rhos(alpha: float, planned: float) -> list[float]:
    k = len(RHO_SHARES)
    return [optimal_rho(alpha / k, planned * s) for s in RHO_SHARES]


def half_width(information: float | np.ndarray, alpha: float,
               planned: float) -> float | np.ndarray:
    """Half-width of the CS used for canary decisions: the tightest of the tuned components.

    Each component is the normal-mixture CS at level ``alpha / k`` with ``rho`` tuned to a
    share (:data:`RHO_SHARES`) of the ``planned`` information; the intersection of ``k``
    CSs at ``alpha / k`` is a CS at ``alpha`` (union bound), and its half-width is the
    smallest component's.

    Args:
        information: ``V`` = 1 / variance of the estimator (> 0).
        alpha: Two-sided error level of the whole CS (P(ever miss) <= alpha).
        planned: The planned information (:func:`planned_information`).

    Returns:
        The half-width.
    """
    k = len(RHO_SHARES)
    widths = [mixture_half_width(information, alpha / k, rho) for rho in _rhos(alpha, planned)]
    out = np.minimum.reduce([np.asarray(w, dtype=float) for w in widths])
    return float(out) if np.ndim(out) == 0 else out


def planned_information(margin: float, alpha: float, power: float) -> float:
    """The information at which a difference of ``-margin`` is detected with ``power``.

    Detection means the CS upper bound falls below 0. With ``theta_hat ~ N(-margin, 1/V)``
    that happens with probability ``power`` when ``margin = h(V) + z_power / sqrt(V)``.
    As every ``rho`` is tuned to a share of ``V`` itself, ``h(V) * sqrt(V) = C`` is a
    constant and ``V = ((C + z_power) / margin)^2`` in closed form.

    Args:
        margin: The difference to detect (> 0), e.g. the canary tolerance.
        alpha: Two-sided error level of the CS.
        power: Probability to detect it (e.g. 0.95).

    Returns:
        The planned information (1 / variance).
    """
    c = float(half_width(1.0, alpha, 1.0))  # h(V) * sqrt(V) at V = planned
    return ((c + STANDARD_NORMAL.inv_cdf(power)) / margin) ** 2


@dataclass(frozen=True)
class StratifiedDifference:
    """A stratified risk difference ``p2 - p1`` and its variance.

    Attributes:
        diff: The weighted mean of the per-stratum differences (nan: no stratum where both
            versions have labels).
        variance: Its variance (with the variance floor; nan when ``diff`` is).
        strata: Strata that carry weight (both versions observed).
        n1: Observations of version 1 in those strata.
        n2: Observations of version 2 in those strata.
    """

    diff: float
    variance: float
    strata: int
    n1: int
    n2: int

    @property
    def information(self) -> float:
        """``1 / variance`` (0 when nothing to compare)."""
        if not math.isfinite(self.variance) or self.variance <= 0:
            return 0.0
        return 1.0 / self.variance


def stratified_difference(x1: Sequence[float] | np.ndarray, n1: Sequence[float] | np.ndarray,
                          x2: Sequence[float] | np.ndarray,
                          n2: Sequence[float] | np.ndarray) -> StratifiedDifference:
    """Mantel-Haenszel risk difference of version 2 minus version 1 across strata.

    Per stratum ``h``: ``d_h = x2_h / n2_h - x1_h / n1_h``, weight
    ``w_h = n1_h * n2_h / (n1_h + n2_h)`` (Mantel-Haenszel weights for the risk difference;
    strata where one version has no observation get weight 0). The estimate is
    ``sum(w_h d_h) / sum(w_h)`` and its variance
    ``sum(w_h^2 (q1_h (1 - q1_h) / n1_h + q2_h (1 - q2_h) / n2_h)) / sum(w_h)^2``.

    Variance floor (no zero-width interval at 0% or 100%): the per-stratum rates in the
    variance are Agresti-Caffo rates ``q_h = (x_h + 1) / (n_h + 2)`` (one success and one
    failure added per group and stratum; Agresti & Caffo 2000), so a version that is right
    on all ``n`` responses still has variance ~``1 / n``; the estimate itself is not
    shrunk.

    Args:
        x1: Successes of version 1 per stratum.
        n1: Observations of version 1 per stratum.
        x2: Successes of version 2 per stratum.
        n2: Observations of version 2 per stratum.

    Returns:
        The difference, its variance and what it rests on.
    """
    x1a, n1a = np.asarray(x1, dtype=float), np.asarray(n1, dtype=float)
    x2a, n2a = np.asarray(x2, dtype=float), np.asarray(n2, dtype=float)
    both = (n1a > 0) & (n2a > 0)
    if not both.any():
        return StratifiedDifference(math.nan, math.nan, 0, 0, 0)
    x1a, n1a, x2a, n2a = x1a[both], n1a[both], x2a[both], n2a[both]
    w = n1a * n2a / (n1a + n2a)
    d = x2a / n2a - x1a / n1a
    total = float(w.sum())
    q1 = (x1a + 1.0) / (n1a + 2.0)
    q2 = (x2a + 1.0) / (n2a + 2.0)
    var = float((w * w * (q1 * (1 - q1) / n1a + q2 * (1 - q2) / n2a)).sum()) / total ** 2
    return StratifiedDifference(float((w * d).sum()) / total, var, int(both.sum()),
                                int(n1a.sum()), int(n2a.sum()))


def confidence_sequence(estimate: StratifiedDifference, alpha: float,
                        planned: float) -> tuple[float, float]:
    """The CS ``estimate.diff ± half_width(information)`` at this look.

    Args:
        estimate: The stratified difference.
        alpha: Two-sided error level over all looks.
        planned: The planned information the CS is tuned to.

    Returns:
        ``(low, high)``; ``(nan, nan)`` when there is nothing to compare.
    """
    info = estimate.information
    if info <= 0 or not math.isfinite(estimate.diff):
        return math.nan, math.nan
    h = float(half_width(info, alpha, planned))
    return estimate.diff - h, estimate.diff + h
