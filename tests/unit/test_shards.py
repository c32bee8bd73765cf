"""Sharded drift: merged shard profiles give the in-memory report, column by column."""

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ks_2samp
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from driftloop.config import DriftConfig
from driftloop.data.schema import schema_from_dict
from driftloop.decide.detectors import _ks, ks_from_grid, ks_pvalue
from driftloop.decide.distance import histogram_shares, js_distance, psi
from driftloop.decide.drift import detect_drift
from driftloop.decide.profile import build_reference_profile
from driftloop.decide.shards import (
    Moments,
    ShardProfile,
    detect_drift_merged,
    merge_profiles,
    profile_shard,
    reference_grid,
    slot_counts,
)
from driftloop.errors import DriftloopError, StoreError

NOW = dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)
COLS = [{"name": f"x{i}", "kind": "numeric"} for i in range(4)] + [
    {"name": f"c{i}", "kind": "categorical"} for i in range(3)]
SCHEMA = schema_from_dict({"name": "t", "columns": COLS})
CONFIG = DriftConfig(min_samples=50, max_reference_rows=600)


def window(n, seed, *, drift=False):
    """Four numeric and three categorical columns; with ``drift`` x1, x3 and c1 move."""
    rng = np.random.default_rng(seed)
    x = {f"x{i}": rng.normal(0, 1, n) for i in range(4)}
    x["x2"] = np.round(rng.exponential(2.0, n), 1)  # ties with the reference grid
    x["x2"][rng.random(n) < 0.05] = np.nan
    cats = {f"c{i}": rng.choice(list("abcdefg"), size=n,
                                p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.04, 0.01]).astype(object)
            for i in range(3)}
    cats["c2"][rng.random(n) < 0.03] = None
    if drift:
        x["x1"] = x["x1"] + 0.5
        x["x3"] = x["x3"] * 2.0
        cats["c1"] = rng.choice(list("abcz"), size=n, p=[0.1, 0.2, 0.3, 0.4]).astype(object)
    return pd.DataFrame({"id": [f"r{seed}-{i}" for i in range(n)], **x, **cats})


@pytest.fixture(scope="module")
def profile():
    return build_reference_profile(window(2000, 1), SCHEMA, CONFIG, model_version="v1")


def sharded(profile, frame, parts, schema=SCHEMA, model=None):
    cuts = np.array_split(np.arange(len(frame)), parts)
    return merge_profiles([profile_shard(profile, frame.iloc[c], schema, model=model)
                           for c in cuts])


@pytest.mark.parametrize("drift", [False, True])
def test_sharded_report_equals_in_memory_report(profile, drift):
    current = window(3000, 2, drift=drift)
    whole = detect_drift(profile, current, SCHEMA, CONFIG, now=NOW)
    merged = detect_drift_merged(profile, sharded(profile, current, 7), SCHEMA, CONFIG, now=NOW)
    assert merged.to_json() == whole.to_json()  # every column: statistic, p, effect, decision
    drifted = {"x1", "x3", "c1"} if drift else set()
    assert set(whole.drifted_features) == drifted


def test_sharded_report_agrees_with_fdr_and_other_effect_sizes(profile):
    current = window(1500, 3, drift=True)
    for effect in ("ks", "js"):
        config = dataclasses.replace(CONFIG, correction="fdr", effect_size=effect,
                                     effect_threshold=0.05)
        whole = detect_drift(profile, current, SCHEMA, config, now=NOW)
        merged = detect_drift_merged(profile, sharded(profile, current, 3), SCHEMA, config,
                                     now=NOW)
        assert merged.to_json() == whole.to_json()


def test_counts_merge_exactly(profile):
    current = window(2500, 4, drift=True)
    merged = sharded(profile, current, 5)
    whole = profile_shard(profile, current, SCHEMA)
    for name in profile.numeric:
        assert np.array_equal(merged.numeric_bins[name], whole.numeric_bins[name])
        assert np.array_equal(merged.numeric_grid[name], whole.numeric_grid[name])
        shares = merged.numeric_bins[name] / merged.numeric_bins[name].sum()
        direct = histogram_shares(current[name].to_numpy(float), profile.bin_edges[name])
        ref = profile.numeric_shares[name]
        assert psi(ref, shares) == psi(ref, direct)
        assert js_distance(ref, shares) == js_distance(ref, direct)
    for name in profile.categorical:
        assert np.array_equal(merged.categorical_counts[name], whole.categorical_counts[name])
    assert merged.categorical_counts["c2"].sum() == 2500  # missing is a category: counted
    assert merged.numeric_missing["x2"] == int(current["x2"].isna().sum()) > 0
    assert (merged.n_rows, merged.shards) == (2500, 5)


def test_moments_merge_to_the_whole():
    rng = np.random.default_rng(5)
    parts = [rng.normal(3, 2, n) for n in (1, 400, 0, 77)]
    merged = Moments()
    for p in parts:
        merged = merged.merge(Moments.of(p))
    whole = np.concatenate(parts)
    assert merged.count == whole.size
    assert merged.mean == pytest.approx(whole.mean(), rel=1e-12)
    assert merged.std == pytest.approx(whole.std(ddof=1), rel=1e-12)
    assert (merged.min, merged.max) == (whole.min(), whole.max())


@pytest.mark.filterwarnings("ignore:divide by zero")  # scipy's kstwo at 1 x 1 rows, as in memory
@settings(max_examples=60, deadline=None, derandomize=True)
@given(ref=st.lists(st.sampled_from([-2.0, -0.5, 0.0, 0.25, 1.0, 3.0, np.nan]), min_size=1,
                    max_size=40),
       cur=st.lists(st.floats(-5, 5) | st.sampled_from([0.0, 1.0, np.nan]),
                    min_size=1, max_size=60))
def test_ks_from_the_grid_is_exactly_ks_2samp(ref, cur):
    # The stated bound on the KS statistic from shard counts is 0: ties, values between and
    # outside the grid points and missing values (+inf) included.
    a = np.where(np.isnan(ref), np.inf, ref)
    b = np.where(np.isnan(cur), np.inf, cur)
    grid = reference_grid(np.array(ref))
    assert ks_from_grid(slot_counts(grid, np.array(ref)), slot_counts(grid, np.array(cur))) \
        == _ks(a, b)


@pytest.mark.parametrize(("n1", "n2"), [(300, 300), (500, 12000), (5000, 9000)])
def test_ks_pvalue_from_the_statistic_matches_scipy(n1, n2):
    rng = np.random.default_rng(n1 + n2)
    a, b = rng.normal(0, 1, n1), rng.normal(0.05, 1, n2)
    res = ks_2samp(a, b)
    assert ks_pvalue(float(res.statistic), n1, n2) == (float(res.statistic),
                                                       float(res.pvalue))


def test_slot_counts_place_ties_between_and_outside():
    grid = np.array([0.0, 1.0, np.inf])
    counts = slot_counts(grid, np.array([-1.0, 0.0, 0.5, 1.0, 1.0, 7.0, np.nan]))
    assert counts.tolist() == [1, 1, 1, 2, 1, 1, 0]


def test_shard_profile_round_trips(profile, tmp_path):
    prof = sharded(profile, window(400, 6), 2)
    back = ShardProfile.load(prof.save(tmp_path / "s.npz"))
    report = detect_drift_merged(profile, back, SCHEMA, CONFIG, now=NOW)
    assert report.to_json() == detect_drift_merged(profile, prof, SCHEMA, CONFIG,
                                                   now=NOW).to_json()
    assert back.numeric_moments["x0"] == prof.numeric_moments["x0"]
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(StoreError, match=r"bad\.npz: not a shard drift profile"):
        ShardProfile.load(tmp_path / "bad.npz")


def test_too_few_rows_and_mismatches_are_refused(profile):
    small = sharded(profile, window(30, 7), 2)
    report = detect_drift_merged(profile, small, SCHEMA, CONFIG, now=NOW)
    assert report.status == "insufficient_data" and "only 30 current rows" in report.reasons[0]
    other = dataclasses.replace(small, model_version="v2")
    with pytest.raises(DriftloopError, match="model versions v1 and v2"):
        merge_profiles([small, other])
    with pytest.raises(DriftloopError, match="no shard profiles"):
        merge_profiles([])


def test_text_model_shards_agree_with_in_memory():
    schema = schema_from_dict({"name": "tw", "columns": [{"name": "text", "kind": "text"}]})
    rng = np.random.default_rng(8)
    words = np.array(["good", "bad", "flight", "delay", "great", "awful", "seat", "crew",
                      "late", "nice"])
    other = np.array(["phone", "screen", "battery", "apple", "music", "festival"])

    def texts(n, vocab):
        return pd.DataFrame({"text": [" ".join(rng.choice(vocab, 6)) for _ in range(n)]})

    ref = texts(400, words)
    ref["label"] = np.where(ref["text"].str.count("good|great|nice") > 1, "pos", "neg")
    model = Pipeline([("t", ColumnTransformer([("v", TfidfVectorizer(), "text")])),
                      ("m", LogisticRegression())]).fit(ref[["text"]], ref["label"])
    config = DriftConfig(min_samples=50)
    prof = build_reference_profile(ref, schema, config, model_version="v1", model=model)
    current = pd.concat([texts(200, words), texts(200, np.concatenate([words, other]))])
    whole = detect_drift(prof, current, schema, config, model=model, now=NOW)
    merged = detect_drift_merged(prof, sharded(prof, current, 3, schema, model), schema,
                                 config, now=NOW)
    assert merged.to_json() == whole.to_json()
    assert whole.oov_rate_current > 0.1
