import datetime as dt
import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from driftloop.config import DriftConfig, config_from_dict
from driftloop.data.schema import schema_from_dict
from driftloop.decide.detectors import TestInput, chi2_pooled, corrected_thresholds, run_tests
from driftloop.decide.drift import DriftReport, detect_drift
from driftloop.decide.profile import (
    PROFILE_JSON,
    PROFILE_NPZ,
    ReferenceProfile,
    build_reference_profile,
    oov_rate,
    tokenize,
)
from driftloop.errors import ConfigError, DriftloopError, StoreError

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
TABULAR = schema_from_dict({"name": "t", "columns": [
    {"name": "x0", "kind": "numeric"},
    {"name": "x1", "kind": "numeric"},
    {"name": "c0", "kind": "categorical"},
]})
TEXT = schema_from_dict({"name": "tweets", "columns": [{"name": "text", "kind": "text"}]})
CONFIG = DriftConfig(min_samples=50)


def records(n, seed, *, x0_shift=0.0, c0_p=(0.5, 0.3, 0.2), x1_missing=0.0):
    rng = np.random.default_rng(seed)
    x1 = rng.exponential(2.0, n)
    x1[rng.random(n) < x1_missing] = np.nan
    return pd.DataFrame({
        "id": [f"r{seed}-{i}" for i in range(n)],
        "timestamp": pd.date_range("2024-01-01", periods=n, freq="min", tz="UTC"),
        "x0": rng.normal(x0_shift, 1.0, n),
        "x1": x1,
        "c0": rng.choice(["a", "b", "c"], size=n, p=list(c0_p)).astype(object),
        "label": rng.choice(["yes", "no"], size=n).astype(object),
        "prediction": "yes",  # not a feature: must be ignored
    })


@pytest.fixture(scope="module")
def profile():
    return build_reference_profile(records(800, 1), TABULAR, CONFIG, model_version="v1")


def by_name(report):
    return {f.name: f for f in report.features}


def test_same_distribution_is_no_drift(profile):
    report = detect_drift(profile, records(400, 2), TABULAR, CONFIG, now=NOW)
    assert report.status == "no_drift" and report.drifted is False
    assert report.drifted_features == []
    assert [f.name for f in report.features] == ["x0", "x1", "c0"]
    assert [f.test for f in report.features] == ["ks", "ks", "chi2"]
    assert all(f.threshold == pytest.approx(0.05 / 3) for f in report.features)
    assert all(f.p_value >= f.threshold for f in report.features)
    assert report.max_psi < CONFIG.psi_threshold
    assert report.max_js < 0.2
    assert report.n_current == 400 and report.n_reference == 800
    assert report.model_version == "v1" and report.oov_rate_current is None
    assert "no test significant" in report.reasons[0]
    assert report.created_at == NOW.isoformat()


def test_shifted_numeric_feature_drifts_alone(profile):
    report = detect_drift(profile, records(400, 3, x0_shift=1.0), TABULAR, CONFIG, now=NOW)
    feats = by_name(report)
    assert report.status == "drift" and report.drifted
    assert report.drifted_features == ["x0"]
    assert feats["x0"].p_value < 1e-6 and feats["x0"].statistic > 0.3
    assert feats["x0"].psi > CONFIG.psi_threshold and feats["x0"].js > feats["x1"].js
    assert report.max_psi == feats["x0"].psi
    assert report.reasons[0].startswith("feature 'x0': KS p=")
    assert "< 0.01667 (bonferroni over 3 features)" in report.reasons[0]
    assert any("PSI" in r and "'x0'" in r for r in report.reasons)


def test_shifted_categorical_feature_drifts_alone(profile):
    current = records(400, 4, c0_p=(0.2, 0.3, 0.5))
    report = detect_drift(profile, current, TABULAR, CONFIG, now=NOW)
    assert report.drifted_features == ["c0"]
    c0 = by_name(report)["c0"]
    assert c0.test == "chi2" and c0.p_value < 1e-6
    assert "feature 'c0': chi2 p=" in report.reasons[0]


def test_unseen_category_is_counted(profile):
    current = records(400, 5)
    current.loc[:99, "c0"] = "brand-new"
    report = detect_drift(profile, current, TABULAR, CONFIG, now=NOW)
    assert report.drifted_features == ["c0"]
    assert by_name(report)["c0"].psi > 1.0  # 25% mass in a bucket the reference never had


def test_missing_rate_increase_drifts(profile):
    report = detect_drift(profile, records(400, 6, x1_missing=0.4), TABULAR, CONFIG, now=NOW)
    assert report.drifted_features == ["x1"]
    # PSI describes the present values only, which are unchanged
    assert by_name(report)["x1"].psi < CONFIG.psi_threshold


def test_fdr_threshold_grows_with_the_number_of_discoveries(profile):
    current = records(400, 7, x0_shift=1.0)
    current["x1"] = current["x1"] * 2.0
    fdr = DriftConfig(min_samples=50, correction="fdr")
    report = detect_drift(profile, current, TABULAR, fdr, now=NOW)
    assert report.drifted_features == ["x0", "x1"]
    # Benjamini-Hochberg: largest significant rank 2 of 3 -> q * 2 / 3
    assert [f.threshold for f in report.features] == pytest.approx([0.05 * 2 / 3] * 3)
    assert "(fdr over 3 features)" in report.reasons[0]


def test_fdr_without_discoveries_reports_rank_thresholds(profile):
    fdr = DriftConfig(min_samples=50, correction="fdr")
    report = detect_drift(profile, records(400, 2), TABULAR, fdr, now=NOW)
    assert report.status == "no_drift"
    ranked = sorted(report.features, key=lambda f: f.p_value)
    assert [f.threshold for f in ranked] == pytest.approx([0.05 / 3, 0.05 * 2 / 3, 0.05])


def test_insufficient_data_does_not_decide(profile):
    report = detect_drift(profile, records(49, 8, x0_shift=5.0), TABULAR, CONFIG, now=NOW)
    assert report.status == "insufficient_data" and report.drifted is False
    assert report.features == [] and report.max_psi is None
    assert report.reasons == ["only 49 current rows, need at least 50 (drift.min_samples)"]


def test_reference_is_sampled_with_the_seed():
    config = DriftConfig(max_reference_rows=300, seed=3)
    ref = records(1000, 9)
    a = build_reference_profile(ref, TABULAR, config, model_version="v1")
    b = build_reference_profile(ref, TABULAR, config, model_version="v1")
    assert a.n_rows == 1000 and a.n_sample == 300 and len(a.numeric_sample["x0"]) == 300
    np.testing.assert_array_equal(a.numeric_sample["x0"], b.numeric_sample["x0"])
    assert set(a.numeric_sample["x0"]) <= set(ref["x0"])
    assert len(a.bin_edges["x0"]) == config.bins + 1


def test_profile_round_trip_gives_identical_report(profile, tmp_path):
    current = records(400, 10, x0_shift=0.5)
    before = detect_drift(profile, current, TABULAR, CONFIG, now=NOW)
    paths = profile.save(tmp_path / "model")
    assert sorted(p.name for p in paths) == [PROFILE_JSON, PROFILE_NPZ]
    with np.load(tmp_path / "model" / PROFILE_NPZ, allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)
    loaded = ReferenceProfile.load(tmp_path / "model")
    assert loaded.categories == profile.categories and loaded.model_version == "v1"
    after = detect_drift(loaded, current, TABULAR, CONFIG, now=NOW)
    assert after == before
    assert before.drifted_features == ["x0"]


def test_load_without_profile_names_the_folder(tmp_path):
    with pytest.raises(StoreError, match=str(tmp_path)):
        ReferenceProfile.load(tmp_path)


def test_report_json_round_trip(profile):
    report = detect_drift(profile, records(400, 11, x0_shift=1.0), TABULAR, CONFIG, now=NOW)
    text = report.to_json()
    assert json.loads(text)["features"][0]["name"] == "x0"
    again = DriftReport.from_json(text)
    assert again == report
    assert isinstance(again.features[0].psi, float)


def test_markdown_has_every_feature_and_the_reasons(profile):
    report = detect_drift(profile, records(400, 12, x0_shift=1.0), TABULAR, CONFIG, now=NOW)
    md = report.to_markdown()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["x0", "x1", "c0"]
    assert "**drift**" in md and "**yes**" in rows[1]
    assert all(f"- {r}" in md for r in report.reasons)


def test_schema_mismatch_is_rejected(profile):
    other = schema_from_dict({"columns": [{"name": "x0", "kind": "numeric"}]})
    with pytest.raises(DriftloopError, match="numeric features"):
        detect_drift(profile, records(400, 13), other, CONFIG)


# --- text -----------------------------------------------------------------------------

SPORT = [
    "goal", "match", "team", "coach", "player", "score",
    "league", "stadium", "referee", "striker", "keeper", "pitch",
]
FOOD = [
    "recipe", "oven", "flour", "butter", "sugar", "bake",
    "pasta", "sauce", "garlic", "onion", "pepper", "kitchen",
]
FINANCE = [
    "stock", "bond", "market", "yield", "dividend", "equity",
    "broker", "fund", "asset", "price", "hedge", "loan",
]


def sentences(vocab, n, rng):
    return [" ".join(rng.choice(vocab, size=8)) for _ in range(n)]


def text_frame(topics, n, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for topic, vocab in topics:
        rows += [(s, topic) for s in sentences(vocab, n, rng)]
    order = rng.permutation(len(rows))
    return pd.DataFrame({"text": [rows[i][0] for i in order],
                         "label": [rows[i][1] for i in order]})


@pytest.fixture(scope="module")
def text_model_and_profile():
    ref = text_frame([("sport", SPORT), ("food", FOOD)], 200, 20)
    model = Pipeline([
        ("features", ColumnTransformer([("tfidf", TfidfVectorizer(), "text")])),
        ("clf", LogisticRegression(random_state=0)),
    ]).fit(ref[["text"]], ref["label"])
    return model, build_reference_profile(ref, TEXT, CONFIG, model_version="t1", model=model)


def test_tokenizer_and_oov_rate():
    assert tokenize("Goal! GOAL, 2-1 at_home") == ["goal", "goal", "2", "1", "at_home"]
    assert tokenize(None) == []
    assert oov_rate(["a b c d", None], {"a", "b"}) == 0.5
    assert oov_rate([], {"a"}) == 0.0


def test_text_same_topics_is_no_drift(text_model_and_profile):
    model, prof = text_model_and_profile
    assert prof.classes == ["food", "sport"]
    assert prof.reference_proba.shape == (400, 2)
    assert 0 <= prof.oov_rate_reference < CONFIG.oov_threshold
    current = text_frame([("sport", SPORT), ("food", FOOD)], 100, 21)
    report = detect_drift(prof, current, TEXT, CONFIG, model=model, now=NOW)
    assert report.status == "no_drift"
    assert [(f.name, f.test) for f in report.features] == [("proba[sport]", "ks_proba"),
                                                           ("text", "oov")]
    assert report.oov_rate_current - report.oov_rate_reference <= CONFIG.oov_threshold
    assert report.features[0].psi is not None and report.features[0].psi < 0.2


def test_text_new_topic_drifts(text_model_and_profile, tmp_path):
    model, prof = text_model_and_profile
    current = text_frame([("sport", FINANCE)], 200, 22)
    report = detect_drift(prof, current, TEXT, CONFIG, model=model, now=NOW)
    feats = by_name(report)
    assert report.status == "drift"
    assert set(report.drifted_features) == {"proba[sport]", "text"}
    assert feats["proba[sport]"].p_value < feats["proba[sport]"].threshold == 0.05
    assert report.oov_rate_current == 1.0
    assert feats["text"].statistic == pytest.approx(1.0 - report.oov_rate_reference)
    assert any(r.startswith("text OOV rate 1 vs baseline") for r in report.reasons)
    prof.save(tmp_path)
    again = detect_drift(ReferenceProfile.load(tmp_path), current, TEXT, CONFIG, model=model,
                         now=NOW)
    assert again == report


def test_text_needs_the_model(text_model_and_profile):
    _, prof = text_model_and_profile
    frame = text_frame([("sport", SPORT)], 60, 23)
    with pytest.raises(DriftloopError, match="needs the model"):
        build_reference_profile(frame, TEXT, CONFIG, model_version="t1")
    with pytest.raises(DriftloopError, match="needs the model"):
        detect_drift(prof, frame, TEXT, CONFIG)


def test_oov_baseline_is_measured_on_held_out_reference(text_model_and_profile):
    model, _ = text_model_and_profile
    rng = np.random.default_rng(24)
    # every sentence carries one token of its own: 1 in 9 tokens is new even without drift
    ref = pd.DataFrame({"text": [f"{s} id{i}" for i, s in enumerate(sentences(SPORT, 300, rng))]})
    prof = build_reference_profile(ref, TEXT, CONFIG, model_version="t1", model=model)
    assert prof.oov_rate_reference == pytest.approx(1 / 9)
    cur = pd.DataFrame({"text": [f"{s} new{i}" for i, s in enumerate(sentences(SPORT, 100, rng))]})
    report = detect_drift(prof, cur, TEXT, CONFIG, model=model, now=NOW)
    oov = by_name(report)["text"]
    assert oov.drifted is False and oov.statistic == pytest.approx(0.0, abs=0.01)


@pytest.mark.parametrize(("columns", "shift", "test"), [
    ([{"name": "x0", "kind": "numeric"}], {"x0_shift": 1.0}, "ks"),
    ([{"name": "c0", "kind": "categorical"}], {"c0_p": (0.2, 0.3, 0.5)}, "chi2"),
])
def test_single_kind_schemas(columns, shift, test):
    schema = schema_from_dict({"columns": columns})
    prof = build_reference_profile(records(500, 25), schema, CONFIG, model_version="v2")
    calm = detect_drift(prof, records(300, 26), schema, CONFIG, now=NOW)
    moved = detect_drift(prof, records(300, 27, **shift), schema, CONFIG, now=NOW)
    assert calm.status == "no_drift" and moved.status == "drift"
    assert moved.features[0].test == test and moved.features[0].threshold == 0.05
    assert "(bonferroni over 1 feature)" in moved.reasons[0]


# --- effect size (issue "Retrain only when it pays", defect 3) -------------------------

ONE_NUMERIC = schema_from_dict({"columns": [{"name": "x0", "kind": "numeric"}]})
BIG = DriftConfig(max_reference_rows=20_000)


@pytest.fixture(scope="module")
def big_profile():
    return build_reference_profile(records(20_000, 30), ONE_NUMERIC, BIG, model_version="v1")


def test_tiny_significant_shift_is_not_drift(big_profile):
    # 0.08 sd with 20,000 rows per side: KS is significant, PSI ~0.006 is far below 0.1
    report = detect_drift(big_profile, records(20_000, 31, x0_shift=0.08), ONE_NUMERIC, BIG,
                          now=NOW)
    assert report.drifted is False and report.status == "no_drift"
    x0 = report.features[0]
    assert x0.p_value < x0.threshold
    assert x0.significant is True and x0.drifted is False
    assert x0.effect < 0.02 and x0.effect_threshold == BIG.effect_threshold
    assert any("significant but small: PSI" in r and "< 0.1" in r for r in report.reasons)
    assert report.significant_features == ["x0"] and report.drifted_features == []


def test_large_shift_is_drift_with_both_measures_in_the_reason(big_profile):
    report = detect_drift(big_profile, records(20_000, 32, x0_shift=0.5), ONE_NUMERIC, BIG,
                          now=NOW)
    x0 = report.features[0]
    assert report.drifted and x0.significant and x0.drifted
    assert x0.effect == pytest.approx(0.25, abs=0.05) and x0.effect == pytest.approx(x0.psi)
    assert re.fullmatch(r"feature 'x0': KS p=\S+ < 0\.05 \(bonferroni over 1 feature\) and "
                        r"PSI 0\.2\d* >= 0\.1 \(drift\.effect_threshold\)", report.reasons[0])


def test_per_feature_threshold_override_from_json_config(big_profile):
    # JSON lists of lists arrive as a tuple of lists: normalised to a tuple of pairs
    config = config_from_dict({"drift": {"max_reference_rows": 20_000,
                                         "feature_thresholds": [["x0", 0.005]]}}).drift
    assert config.feature_thresholds == (("x0", 0.005),)
    assert hash(config) == hash(DriftConfig(max_reference_rows=20_000,
                                            feature_thresholds={"x0": 0.005}))
    report = detect_drift(big_profile, records(20_000, 31, x0_shift=0.08), ONE_NUMERIC,
                          config, now=NOW)
    assert report.drifted_features == ["x0"] and report.features[0].effect_threshold == 0.005
    assert "(drift.feature_thresholds)" in report.reasons[0]
    strict = DriftConfig(max_reference_rows=20_000, feature_thresholds=(("x0", 0.5),))
    moved = detect_drift(big_profile, records(20_000, 32, x0_shift=0.5), ONE_NUMERIC, strict,
                         now=NOW)
    assert moved.drifted is False and moved.significant_features == ["x0"]
    with pytest.raises(ConfigError, match="feature_thresholds"):
        DriftConfig(feature_thresholds=(("x0", -1.0),))
    with pytest.raises(ConfigError, match="effect_size"):
        DriftConfig(effect_size="wasserstein")


@pytest.mark.parametrize(("effect_size", "name"), [("ks", "KS"), ("js", "JS")])
def test_other_effect_sizes(big_profile, effect_size, name):
    config = DriftConfig(max_reference_rows=20_000, effect_size=effect_size)
    small = detect_drift(big_profile, records(20_000, 31, x0_shift=0.08), ONE_NUMERIC, config,
                         now=NOW)
    large = detect_drift(big_profile, records(20_000, 32, x0_shift=0.5), ONE_NUMERIC, config,
                         now=NOW)
    assert small.drifted is False and f"significant but small: {name} " in small.reasons[0]
    assert large.drifted and f" and {name} " in large.reasons[0]
    if effect_size == "ks":
        assert large.features[0].effect == large.features[0].statistic


def test_missing_values_count_in_the_effect_size(profile):
    report = detect_drift(profile, records(400, 6, x1_missing=0.4), TABULAR, CONFIG, now=NOW)
    x1 = by_name(report)["x1"]
    assert x1.psi < 0.1 < x1.effect  # present values unchanged; 40% now missing


def test_markdown_shows_the_effect_next_to_p(big_profile):
    report = detect_drift(big_profile, records(20_000, 31, x0_shift=0.08), ONE_NUMERIC, BIG,
                          now=NOW)
    md = report.to_markdown()
    head, _, row = [line for line in md.splitlines() if line.startswith("|")]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    header = [c.strip() for c in head.split("|")[1:-1]]
    assert header[4:9] == ["p-value", "threshold", "effect (PSI)", "effect threshold",
                           "significant"]
    assert cells[6] == f"{report.features[0].effect:.4g}" and cells[7] == "0.1"
    assert cells[8] == "yes" and cells[-1] == "no"
    assert "effect PSI >= 0.1" in md


def test_report_written_before_effect_sizes_still_loads(profile):
    report = detect_drift(profile, records(400, 11, x0_shift=1.0), TABULAR, CONFIG, now=NOW)
    old = json.loads(report.to_json())
    for key in ("effect_size", "effect_threshold"):
        del old[key]
    for f in old["features"]:
        for key in ("effect", "effect_threshold", "significant", "pooled"):
            del f[key]
    again = DriftReport.from_json(json.dumps(old))
    assert again.drifted_features == ["x0"] and again.significant_features == ["x0"]
    assert again.features[0].effect is None and again.effect_size == ""
    assert "effect (-)" in again.to_markdown()


# --- chi-squared on many categories (defect 4) -----------------------------------------

ONE_CATEGORICAL = schema_from_dict({"columns": [{"name": "c0", "kind": "categorical"}]})


def test_chi2_false_alarms_on_many_rare_categories_stay_near_nominal():
    # Stationary Zipf data over 3,000 categories: most have expected counts far below 5
    # in 100 current rows; without pooling the chi-squared test fired ~35% of the time.
    cats = np.array([f"k{i}" for i in range(3000)], dtype=object)
    shares = 1.0 / np.arange(1, 3001)
    shares /= shares.sum()
    config = DriftConfig(min_samples=50)
    alarms = 0
    for rep in range(100):
        rng = np.random.default_rng(1000 + rep)
        ref = pd.DataFrame({"c0": cats[rng.choice(3000, size=5000, p=shares)]})
        cur = pd.DataFrame({"c0": cats[rng.choice(3000, size=100, p=shares)]})
        prof = build_reference_profile(ref, ONE_CATEGORICAL, config, model_version="z")
        report = detect_drift(prof, cur, ONE_CATEGORICAL, config, now=NOW)
        alarms += report.features[0].p_value < report.features[0].threshold
    assert alarms <= 10


# --- the tests themselves ----------------------------------------------------------------


def test_ks_uses_the_exact_p_value_for_small_samples():
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(40)
    a, b = rng.normal(size=150), rng.normal(0.2, 1.0, size=120)
    res = run_tests([TestInput("ks", a, b)], p_value=0.05, correction="bonferroni")
    exact = ks_2samp(a, b, method="exact")
    assert res.p_values[0] == pytest.approx(exact.pvalue, rel=1e-9)
    assert res.p_values[0] != pytest.approx(ks_2samp(a, b, method="asymp").pvalue, rel=1e-3)
    assert res.detector == "ks_2samp" and res.statistics[0] == pytest.approx(exact.statistic)


def test_benjamini_hochberg_thresholds():
    p = np.array([0.001, 0.04, 0.03, 0.5])
    # sorted 0.001 0.03 0.04 0.5 vs cut-offs 0.0125 0.025 0.0375 0.05: largest rank below is 1
    assert corrected_thresholds(p, 0.05, "fdr") == pytest.approx([0.0125] * 4)
    p = np.array([0.2, 0.9, 0.06])
    assert corrected_thresholds(p, 0.05, "fdr") == pytest.approx([0.05 * 2 / 3, 0.05, 0.05 / 3])
    assert corrected_thresholds(p, 0.05, "bonferroni") == pytest.approx([0.05 / 3] * 3)


def test_chi2_on_pooled_counts_drops_empty_buckets():
    stat, p = chi2_pooled(np.array([50, 30, 20, 0]), np.array([20, 30, 50, 0]))
    assert p < 1e-5 and stat > 20
    assert chi2_pooled(np.array([10, 0]), np.array([7, 0])) == (0.0, 1.0)  # one bucket left
