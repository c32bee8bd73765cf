import math

import numpy as np
import pytest

from driftloop.decide.distance import (
    category_codes,
    category_shares,
    histogram_shares,
    js_distance,
    pool,
    pool_rare_categories,
    psi,
    quantile_bin_edges,
    total_variation,
)


def test_quantile_edges_are_unique_with_open_outer_edges():
    rng = np.random.default_rng(0)
    edges = quantile_bin_edges(rng.normal(size=1000), 4)
    assert edges[0] == -np.inf and edges[-1] == np.inf
    assert len(edges) == 5
    assert np.all(np.diff(edges) > 0)
    assert edges[2] == pytest.approx(0.0, abs=0.1)  # the median of N(0, 1)


def test_quantile_edges_merge_ties_and_ignore_nan():
    edges = quantile_bin_edges(np.array([1.0] * 50 + [2.0] * 50 + [np.nan] * 10), 10)
    assert edges[0] == -np.inf and edges[-1] == np.inf
    assert np.all(np.diff(edges) > 0)
    assert edges[1:-1].tolist() == [1.0, 1.5, 2.0]  # 9 quantiles collapse to 3 edges
    assert quantile_bin_edges(np.array([np.nan]), 10).tolist() == [-np.inf, np.inf]


def test_histogram_shares_counts_each_bin_and_skips_nan():
    edges = np.array([-np.inf, 0.0, 1.0, np.inf])
    shares = histogram_shares(np.array([-5.0, 0.0, 0.5, 1.0, 7.0, np.nan]), edges)
    # bins are [lo, hi): 0.0 goes to the middle bin, 1.0 to the top bin
    np.testing.assert_allclose(shares, [1 / 5, 2 / 5, 2 / 5])
    assert histogram_shares(np.array([]), edges).tolist() == [0.0, 0.0, 0.0]


def test_category_shares_have_an_unseen_bucket():
    shares = category_shares(np.array(["a", "b", "b", "z", None], dtype=object), ["a", "b"])
    np.testing.assert_allclose(shares, [0.25, 0.5, 0.25])
    codes = category_codes(np.array(["b", "q", None, "a"], dtype=object), ["a", "b"])
    assert codes.tolist() == [1, 2, -1, 0]
    assert category_shares([], ["a"]).tolist() == [0.0, 0.0]


def test_identical_distributions_have_zero_distance():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    assert psi(p, p) == pytest.approx(0.0, abs=1e-12)
    assert js_distance(p, p) == pytest.approx(0.0, abs=1e-7)


def test_psi_matches_hand_computed_example():
    ref = np.array([0.5, 0.3, 0.2])
    cur = np.array([0.3, 0.3, 0.4])
    # (0.3-0.5)ln(0.3/0.5) + 0 + (0.4-0.2)ln(0.4/0.2) = 0.2*ln(5/3) + 0.2*ln 2
    expected = 0.2 * math.log(5 / 3) + 0.2 * math.log(2)
    assert psi(ref, cur) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.24079, abs=1e-5)


def test_disjoint_distributions_reach_the_maxima():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert js_distance(a, b) == pytest.approx(1.0)
    # both bins floored at eps: 2 * (1 - eps) * ln(1 / eps)
    assert psi(a, b, eps=1e-4) == pytest.approx(2 * (1 - 1e-4) * math.log(1e4))


def test_js_is_symmetric_bounded_and_normalises_counts():
    p, q = np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.3, 0.6])
    d = js_distance(p, q)
    assert 0 < d < 1
    assert d == pytest.approx(js_distance(q, p))
    assert js_distance(p * 10, q * 3) == pytest.approx(d)


def test_empty_side_is_not_measurable():
    z = np.zeros(3)
    p = np.array([0.2, 0.3, 0.5])
    assert math.isnan(psi(z, p))
    assert math.isnan(js_distance(p, z))
    with pytest.raises(ValueError, match="differ in length"):
        psi(p, np.array([0.5, 0.5]))


def test_rare_and_unseen_categories_share_the_other_bucket():
    shares = np.array([0.6, 0.3, 0.06, 0.04, 0.0])  # last entry: unseen
    # 100 rows: expected 60, 30, 6, 4 -> the 4 (below 5) joins unseen in "other"
    buckets = pool_rare_categories(shares, 100)
    assert buckets.tolist() == [0, 1, 2, 3, 3]
    assert pool(np.array([60, 30, 6, 4, 7]), buckets).tolist() == [60, 30, 6, 11]
    assert pool_rare_categories(shares, 10).tolist() == [0, 1, 1, 1, 1]  # only 6 >= 5
    assert pool_rare_categories(shares, 10, min_expected=0).tolist() == [0, 1, 2, 3, 4]
    assert pool_rare_categories(shares * 7, 100).tolist() == buckets.tolist()  # normalised


def test_total_variation_is_half_the_l1_distance():
    ref, cur = np.array([0.5, 0.3, 0.2]), np.array([0.3, 0.3, 0.4])
    assert total_variation(ref, cur) == pytest.approx(0.2)
    assert total_variation(ref, ref * 5) == pytest.approx(0.0)
    assert total_variation(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert math.isnan(total_variation(np.zeros(3), ref))
