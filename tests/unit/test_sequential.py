"""Anytime-valid confidence sequences and the stratified risk difference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from driftloop.decide.sequential import (
    confidence_sequence,
    half_width,
    mixture_half_width,
    optimal_rho,
    planned_information,
    stratified_difference,
)


def test_mixture_half_width_is_the_robbins_boundary():
    v, alpha, rho = 400.0, 0.05, 0.1
    expected = math.sqrt((v * rho**2 + 1) / rho**2 * math.log((v * rho**2 + 1) / alpha**2)) / v
    assert mixture_half_width(v, alpha, rho) == pytest.approx(expected)


def test_optimal_rho_minimises_the_boundary_at_its_information():
    alpha, v_opt = 0.05, 1000.0
    best = optimal_rho(alpha, v_opt)
    grid = best * np.array([0.5, 0.8, 1.25, 2.0])
    at_best = mixture_half_width(v_opt, alpha, best)
    assert all(at_best <= mixture_half_width(v_opt, alpha, float(r)) for r in grid)


def test_the_sequence_is_wider_than_a_fixed_sample_interval_and_shrinks():
    planned = planned_information(0.02, 0.05, 0.95)
    info = np.array([100.0, 1_000.0, 10_000.0, planned])
    widths = half_width(info, 0.05, planned)
    assert np.all(np.diff(widths) < 0)
    assert np.all(widths > norm.ppf(0.975) / np.sqrt(info))


def test_planned_information_detects_the_margin_with_the_power():
    margin, alpha, power = 0.02, 0.05, 0.95
    planned = planned_information(margin, alpha, power)
    h = half_width(planned, alpha, planned)
    # theta_hat ~ N(-margin, 1/planned): P(theta_hat + h < 0) == power
    assert norm.cdf((margin - h) * math.sqrt(planned)) == pytest.approx(power)


def test_repeated_looks_keep_the_error_rate_where_a_wald_interval_does_not():
    # An equal canary looked at every day for 30 days: how often does any look exclude 0?
    rng = np.random.default_rng(0)
    reps, days, per_day, p = 2000, 30, 200, 0.9
    planned = planned_information(0.02, 0.05, 0.95)
    x1 = rng.binomial(per_day, p, (reps, days)).cumsum(axis=1)
    x2 = rng.binomial(per_day, p, (reps, days)).cumsum(axis=1)
    n = per_day * np.arange(1, days + 1)
    diff = x2 / n - x1 / n
    var = 2 * p * (1 - p) / n
    wald = (np.abs(diff) > 1.96 * np.sqrt(var)).any(axis=1).mean()
    cs = (np.abs(diff) > half_width(1 / var, 0.05, planned)).any(axis=1).mean()
    assert wald > 0.15  # the fresh Wald interval at every look
    assert cs <= 0.05


def test_a_version_right_every_time_still_has_variance():
    est = stratified_difference([1000], [1000], [1000], [1000])
    assert est.diff == 0 and est.variance > 1e-7
    low, high = confidence_sequence(est, 0.05, planned_information(0.02, 0.05, 0.95))
    assert low < -0.001 < 0.001 < high


def test_stratified_difference_removes_simpsons_paradox():
    # equal per stratum; version 2 mostly in the hard stratum
    x1, n1 = [873, 400], [900, 500]
    x2, n2 = [97, 1200], [100, 1500]
    pooled = sum(x2) / sum(n2) - sum(x1) / sum(n1)
    est = stratified_difference(x1, n1, x2, n2)
    assert pooled < -0.05
    assert est.diff == pytest.approx(0.0, abs=1e-12) and est.strata == 2


def test_mantel_haenszel_weights_and_empty_strata():
    est = stratified_difference([10, 50, 5], [20, 100, 10], [0, 30, 6], [0, 50, 10])
    w = np.array([100 * 50 / 150, 10 * 10 / 20])
    d = np.array([30 / 50 - 0.5, 0.6 - 0.5])
    assert est.diff == pytest.approx(float((w * d).sum() / w.sum()))
    assert (est.strata, est.n1, est.n2) == (2, 110, 60)
    nothing = stratified_difference([1], [2], [0], [0])
    assert nothing.strata == 0 and math.isnan(nothing.diff) and nothing.information == 0
    assert all(math.isnan(b) for b in confidence_sequence(nothing, 0.05, 1000.0))
