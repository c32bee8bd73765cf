"""Distribution distances (PSI, Jensen-Shannon, total variation) over bins fixed from the reference.

Also the pooling of rare categories that the chi-squared test and the categorical effect
size share (:func:`pool_rare_categories`).

Missing values (NaN, None) are not counted in any share: a column's share vector describes
the distribution of its present values. Empty input gives an all-zero share vector, and a
distance involving an all-zero vector is NaN ("not measurable") rather than a made-up 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def quantile_bin_edges(ref: np.ndarray, bins: int) -> np.ndarray:
    """Return bin edges at the reference quantiles, with open outer edges.

    Args:
        ref: Reference values; NaN is ignored.
        bins: Wanted number of bins (ties in ``ref`` can merge some, so fewer may result).

    Returns:
        Strictly increasing edges starting with ``-inf`` and ending with ``+inf``, so every
        later value falls into some bin.
    """
    values = np.asarray(ref, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0 or bins < 2:
        return np.array([-np.inf, np.inf])
    inner = np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    return np.concatenate(([-np.inf], inner, [np.inf]))


def histogram_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Return the share of ``values`` in each bin ``[edges[i], edges[i+1])``.

    Args:
        values: Values to bin; NaN is ignored.
        edges: Edges from :func:`quantile_bin_edges`.

    Returns:
        ``len(edges) - 1`` shares summing to 1 (all zero when no value is present).
    """
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    n_bins = len(edges) - 1
    idx = np.searchsorted(np.asarray(edges)[1:-1], arr, side="right")
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    return _normalise(counts)


def category_codes(values: Sequence[Any] | np.ndarray, categories: Sequence[str]) -> np.ndarray:
    """Map values to their index in ``categories``.

    Args:
        values: Category values; compared as strings.
        categories: The known categories.

    Returns:
        Integer codes: the index in ``categories``, ``len(categories)`` for an unseen value
        and ``-1`` for a missing one.
    """
    raw = np.asarray(values, dtype=object)
    missing = pd.isna(raw)
    if pd.api.types.infer_dtype(raw, skipna=True) not in ("string", "empty"):
        # Only mixed or non-string values pay for a per-element str().
        raw = raw.astype(str).astype(object)
        raw[missing] = None
    # A hash lookup: far cheaper than sorting and searching strings.
    codes = pd.Index([str(c) for c in categories], dtype=object).get_indexer(raw)
    codes = codes.astype(np.int64)
    codes[codes < 0] = len(categories)
    codes[missing] = -1
    return codes


def category_shares(values: Sequence[Any] | np.ndarray, categories: Sequence[str]) -> np.ndarray:
    """Return the share of each category plus a final ``unseen`` bucket.

    Args:
        values: Category values; missing ones are ignored.
        categories: The reference categories.

    Returns:
        ``len(categories) + 1`` shares summing to 1 (all zero when no value is present).
    """
    return shares_of_codes(category_codes(values, categories), len(categories))


def shares_of_codes(codes: np.ndarray, n_categories: int) -> np.ndarray:
    """Shares of ``n_categories`` categories plus ``unseen`` from :func:`category_codes` output."""
    counts = np.bincount(codes[codes >= 0], minlength=n_categories + 1)
    return _normalise(counts.astype(np.float64))


def pool_rare_categories(shares: np.ndarray, n_rows: float,
                         min_expected: float = 5.0) -> np.ndarray:
    """Map categories to buckets, pooling the rare ones into a final ``other`` bucket.

    A category keeps its own bucket when its expected count ``share * n_rows`` reaches
    ``min_expected``; the others, and the last entry (the ``unseen`` bucket of
    :func:`category_shares`), share the final bucket.

    For the chi-squared test of homogeneity pass the reference and current counts summed
    (the column totals of its table) and the smaller sample's size: the expected count of a
    cell is ``total share * rows of its sample``, and the test's null distribution is
    conditional on the column totals, so choosing buckets from them keeps it valid. Choosing
    them from the reference counts alone would not: categories that happened to be common
    in a small reference would be kept and look like they shrank.

    Args:
        shares: Share (or count) per category, the last entry being ``unseen``.
        n_rows: Rows of the smaller of the two samples compared.
        min_expected: Smallest expected count of a bucket of its own.

    Returns:
        Bucket index per entry of ``shares``: ``0..k-1`` for the ``k`` kept categories
        (in order) and ``k`` for ``other``.
    """
    weights = _normalise(np.asarray(shares, dtype=np.float64))
    keep = weights * n_rows >= min_expected
    keep[-1:] = False
    buckets = np.full(weights.size, int(keep.sum()), dtype=np.int64)
    buckets[keep] = np.arange(int(keep.sum()))
    return buckets


def pool(values: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    """Sum ``values`` (counts or shares per category) into :func:`pool_rare_categories` buckets."""
    b = np.asarray(buckets, dtype=np.int64)
    return np.bincount(b, weights=np.asarray(values, dtype=np.float64),
                       minlength=int(b.max()) + 1 if b.size else 0)


def total_variation(ref_shares: np.ndarray, cur_shares: np.ndarray) -> float:
    """Total variation distance ``max over sets of |cur - ref|`` = half the L1 distance.

    The categorical counterpart of the KS statistic (which takes the maximum over half-lines
    only): both are the largest change in the probability of some event.

    Args:
        ref_shares: Reference shares per bin.
        cur_shares: Current shares over the same bins.

    Returns:
        A value in ``[0, 1]``; NaN when either side has no values.
    """
    ref, cur = _pair(ref_shares, cur_shares)
    if ref is None or cur is None:
        return float("nan")
    return float(0.5 * np.abs(cur - ref).sum())


def psi(ref_shares: np.ndarray, cur_shares: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index ``sum((cur - ref) * ln(cur / ref))``.

    Args:
        ref_shares: Reference shares per bin.
        cur_shares: Current shares over the same bins.
        eps: Floor for empty bins, which would otherwise make the index infinite.

    Returns:
        The PSI (>= 0), or NaN when either side has no values.
    """
    ref, cur = _pair(ref_shares, cur_shares)
    if ref is None or cur is None:
        return float("nan")
    ref, cur = np.clip(ref, eps, None), np.clip(cur, eps, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def js_distance(ref_shares: np.ndarray, cur_shares: np.ndarray) -> float:
    """Jensen-Shannon distance (square root of the divergence, base 2).

    Args:
        ref_shares: Reference shares per bin.
        cur_shares: Current shares over the same bins.

    Returns:
        A value in ``[0, 1]``: 0 for identical, 1 for disjoint distributions; NaN when either
        side has no values.
    """
    ref, cur = _pair(ref_shares, cur_shares)
    if ref is None or cur is None:
        return float("nan")
    mid = (ref + cur) / 2.0
    div = 0.5 * _kl2(ref, mid) + 0.5 * _kl2(cur, mid)
    return float(np.sqrt(np.clip(div, 0.0, 1.0)))


def _kl2(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    return float(np.sum(p[mask] * np.log2(p[mask] / q[mask])))


def _normalise(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    ref = np.asarray(a, dtype=np.float64)
    cur = np.asarray(b, dtype=np.float64)
    if ref.shape != cur.shape:
        raise ValueError(f"share vectors differ in length: {ref.shape} vs {cur.shape}")
    ref_sum, cur_sum = ref.sum(), cur.sum()
    return (ref / ref_sum if ref_sum > 0 else None, cur / cur_sum if cur_sum > 0 else None)
