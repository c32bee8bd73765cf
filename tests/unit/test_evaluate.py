from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from driftloop.config import GateConfig, TrainConfig
from driftloop.evaluate import (
    EvaluationError,
    Verdict,
    compute_metrics,
    evaluate_challenger,
    paired_bootstrap_ci,
)
from driftloop.metrics import confusion_metrics
from driftloop.schema import schema_from_dict
from driftloop.train import train_model

COLUMNS = [{"name": "x1", "kind": "numeric"}, {"name": "x2", "kind": "numeric"},
           {"name": "region", "kind": "categorical"}]
SCHEMA = schema_from_dict({"name": "tab", "columns": COLUMNS})
SLICED = schema_from_dict({"name": "tab", "columns": COLUMNS, "slice": "region"})
NOW = datetime(2024, 2, 1, tzinfo=UTC)
FAST = {"latency_rows": 10, "latency_repeats": 2}


def make_data(n: int, seed: int, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    region = np.where(rng.random(n) < 0.1, "small", "big")
    y = np.where(x1 + 0.5 * x2 > 0, "pos", "neg")
    return pd.DataFrame({
        "id": [f"r{start + i}" for i in range(n)],
        "timestamp": pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(n), "s"),
        "x1": x1, "x2": x2, "region": region.astype(object), "label": y.astype(object),
    })


class RuleModel:
    """A stand-in model whose mistakes are chosen exactly (tests only)."""

    classes_ = np.array(["neg", "pos"], dtype=object)

    def __init__(self, flip_when: str | None = None, small_says_pos: bool = False,
                 delay_s: float = 0.0) -> None:
        self.flip_when, self.small_says_pos, self.delay_s = flip_when, small_says_pos, delay_s

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        if self.delay_s:
            time.sleep(self.delay_s)
        pos = (X["x1"] + 0.5 * X["x2"] > 0).to_numpy()
        if self.flip_when is not None:
            pos ^= X.eval(self.flip_when).to_numpy()
        if self.small_says_pos:
            pos |= (X["region"] == "small").to_numpy()
        p = np.where(pos, 0.9, 0.1)
        return np.column_stack([1 - p, p])


@pytest.fixture(scope="module")
def eval_df() -> pd.DataFrame:
    return make_data(600, seed=1, start=10_000)


@pytest.fixture(scope="module")
def good_and_bad() -> tuple[Any, Any]:
    train = make_data(600, seed=0)
    config = TrainConfig(max_iter=30)
    good = train_model(train, SCHEMA, config, model_name="m", now=NOW).model
    shuffled = train.assign(label=np.random.default_rng(5).permutation(train["label"]))
    bad = train_model(shuffled, SCHEMA, config, model_name="m", now=NOW).model
    return good, bad


def gate(**overrides: Any) -> GateConfig:
    return GateConfig(**{"latency_ratio": 2.0, **overrides})


def test_binary_auc_scores_the_second_class_as_positive():
    rng = np.random.default_rng(0)
    y = rng.choice(["neg", "pos"], 300)
    p_pos = np.clip((y == "pos") * 0.3 + rng.random(300) * 0.7, 0, 1)
    m = compute_metrics(y, np.where(p_pos > 0.5, "pos", "neg"),
                        np.column_stack([1 - p_pos, p_pos]), ["neg", "pos"])
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y == "pos", p_pos))
    assert m["roc_auc"] > 0.7
    assert set(m) == {"accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc"}


def test_auc_is_undefined_with_one_class_and_multiclass_matches_sklearn():
    m = compute_metrics(["pos"] * 5, ["pos", "neg", "pos", "pos", "pos"],
                        np.full((5, 2), 0.5), ["neg", "pos"])
    assert np.isnan(m["roc_auc"]) and m["accuracy"] == pytest.approx(0.8)
    rng = np.random.default_rng(1)
    y = rng.choice(["a", "b", "c"], 400)
    proba = rng.dirichlet([1, 1, 1], 400)
    proba[np.arange(400), np.searchsorted(["a", "b", "c"], y)] += 0.5
    proba /= proba.sum(axis=1, keepdims=True)
    m = compute_metrics(y, y, proba, ["a", "b", "c"])
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"))


def test_vectorised_confusion_metrics_equal_sklearn_metrics():
    rng = np.random.default_rng(2)
    labels = np.array(["a", "b", "c", "d"])
    t = rng.integers(0, 3, 250)  # "d" only ever predicted
    p = np.where(rng.random(250) < 0.6, t, rng.integers(0, 4, 250))
    conf = np.zeros((4, 4))
    np.add.at(conf, (t, p), 1)
    fast = confusion_metrics(conf[None])
    slow = compute_metrics(labels[t], labels[p], None, list(labels))
    for name, values in fast.items():
        assert values[0] == pytest.approx(slow[name]), name


def test_paired_bootstrap_is_paired_seeded_and_signed():
    rng = np.random.default_rng(3)
    y = rng.choice(["neg", "pos"], 500)
    weak = np.where(rng.random(500) < 0.7, y, np.where(y == "pos", "neg", "pos"))
    assert paired_bootstrap_ci(y, weak, weak, "f1_macro") == (0.0, 0.0)
    low, high = paired_bootstrap_ci(y, weak, y, "accuracy", seed=4)
    assert 0 < low < 0.3 < high
    assert paired_bootstrap_ci(y, y, weak, "accuracy", seed=4) == pytest.approx((-high, -low))
    assert paired_bootstrap_ci(y, weak, y, "accuracy", seed=4) == (low, high)


def test_better_model_promoted_worse_rejected_and_swapping_flips(eval_df, good_and_bad):
    good, bad = good_and_bad
    up = evaluate_challenger(good, bad, eval_df, SCHEMA, gate(), challenger_version="good",
                             champion_version="bad", now=NOW, **FAST)
    down = evaluate_challenger(bad, good, eval_df, SCHEMA, gate(), challenger_version="bad",
                               champion_version="good", now=NOW, **FAST)
    assert up.decision == "promote" and not up.first_model
    assert down.decision == "reject"
    assert up.challenger.version == "good" and up.champion is not None
    assert up.champion.version == "bad"
    assert up.challenger.metrics["f1_macro"] > 0.85 > up.champion.metrics["f1_macro"]
    assert up.improvement_rel is not None and up.improvement_rel > 0.3
    assert down.improvement_rel is not None and down.improvement_rel < 0
    assert up.ci_low is not None and up.ci_low > 0 and down.ci_high is not None
    assert down.ci_high < 0
    rules = {r.name: r for r in down.rules}
    assert not rules["improvement"].passed and rules["improvement"].threshold == 0.05
    assert any("relative change" in reason for reason in down.reasons)


def test_no_champion_promotes_the_first_model(eval_df, good_and_bad):
    v = evaluate_challenger(good_and_bad[0], None, eval_df, SCHEMA, GateConfig(),
                            challenger_version="v1", champion_version=None, **FAST)
    assert v.decision == "promote" and v.first_model and v.champion is None
    assert "first model" in v.reasons[0]
    assert v.challenger.n == 600 and v.challenger.latency_p95_ms > 0


def test_better_but_below_auto_threshold_needs_approval(eval_df, good_and_bad):
    good, bad = good_and_bad
    v = evaluate_challenger(good, bad, eval_df, SCHEMA, gate(auto_threshold=50.0),
                            challenger_version="good", champion_version="bad", **FAST)
    assert v.decision == "needs_approval"
    rules = {r.name: r for r in v.rules}
    assert not rules["improvement"].passed and rules["improvement"].threshold == 50.0
    assert rules["confidence_interval"].passed
    swapped = evaluate_challenger(bad, good, eval_df, SCHEMA, gate(auto_threshold=50.0),
                                  challenger_version="bad", champion_version="good", **FAST)
    assert swapped.decision == "reject"


def test_improvement_within_noise_needs_approval(eval_df):
    champion = RuleModel(flip_when="x2 < -2.0")  # 19 of 600 wrong
    challenger = RuleModel(flip_when="x2 > 2.0")  # 13 other rows wrong: better, within noise
    v = evaluate_challenger(challenger, champion, eval_df, SCHEMA, gate(auto_threshold=0.0),
                            challenger_version="c", champion_version="p", **FAST)
    rules = {r.name: r for r in v.rules}
    assert rules["improvement"].passed and rules["improvement"].measured > 0
    assert not rules["confidence_interval"].passed
    assert rules["confidence_interval"].measured == v.ci_low
    assert v.ci_low is not None and v.ci_high is not None and v.ci_low <= 0 < v.ci_high
    assert v.decision == "needs_approval"


def test_slice_regression_rejects_despite_overall_gain(eval_df):
    champion = RuleModel(flip_when="x2 > 0.85")  # ~20% wrong everywhere
    challenger = RuleModel(small_says_pos=True)  # perfect on "big", guesses on "small"
    args = (challenger, champion, eval_df, SLICED)
    kw: dict[str, Any] = {"challenger_version": "c", "champion_version": "p", **FAST}
    v = evaluate_challenger(*args, gate(), **kw)
    rules = {r.name: r for r in v.rules}
    assert rules["improvement"].passed and rules["confidence_interval"].passed
    assert not rules["slices"].passed and "region=small" in rules["slices"].detail
    assert rules["slices"].measured is not None and rules["slices"].measured > 0.3
    assert v.decision == "reject" and "hard rule(s) slices" in v.reasons[0]
    assert set(v.challenger.slices) == {"region=big", "region=small"}
    assert v.challenger.slices["region=small"]["n"] == (eval_df["region"] == "small").sum()
    assert evaluate_challenger(*args, gate(slice_tolerance=0.9), **kw).decision == "promote"


def test_small_slices_are_reported_but_not_judged(eval_df):
    champion, challenger = RuleModel(flip_when="x2 > 0.85"), RuleModel(small_says_pos=True)
    v = evaluate_challenger(challenger, champion, eval_df, SLICED, gate(min_slice_size=100),
                            challenger_version="c", champion_version="p", **FAST)
    assert v.decision == "promote" and "region=small" in v.challenger.slices


def test_slower_challenger_is_rejected_on_latency(eval_df):
    few = {"latency_rows": 6, "latency_repeats": 2}
    champion = RuleModel(flip_when="x2 > 0.85")
    slow = RuleModel(delay_s=0.015)  # far above timing noise, so the test is not flaky
    v = evaluate_challenger(slow, champion, eval_df, SCHEMA, GateConfig(),
                            challenger_version="c", champion_version="p", **few)
    rules = {r.name: r for r in v.rules}
    assert v.decision == "reject" and not rules["latency"].passed
    assert "hard rule(s) latency" in v.reasons[0]
    assert rules["improvement"].passed and rules["slices"].passed
    assert rules["latency"].measured is not None and rules["latency"].measured > 15.0
    assert v.champion is not None and rules["latency"].threshold == pytest.approx(
        max(v.champion.latency_p95_ms * 1.10, v.champion.latency_p95_ms + 0.05))
    fast = evaluate_challenger(RuleModel(), RuleModel(flip_when="x2 > 0.85", delay_s=0.015),
                               eval_df, SCHEMA, GateConfig(), challenger_version="c",
                               champion_version="p", **few)
    assert fast.decision == "promote"


def test_identical_models_never_fail_latency_on_noise(eval_df, good_and_bad):
    good = good_and_bad[0]
    v = evaluate_challenger(good, good, eval_df, SCHEMA, GateConfig(), challenger_version="a",
                            champion_version="b", latency_rows=30, latency_repeats=3)
    rules = {r.name: r for r in v.rules}
    assert rules["latency"].passed, rules["latency"].detail
    assert v.decision == "reject" and v.improvement_rel == 0.0  # identical: nothing gained


def test_class_slices_without_a_slice_column(eval_df):
    v = evaluate_challenger(RuleModel(), RuleModel(flip_when="x2 > 0.85"), eval_df, SCHEMA,
                            gate(), challenger_version="c", champion_version="p", **FAST)
    counts = eval_df["label"].value_counts()
    assert set(v.challenger.slices) == {"class=neg", "class=pos"}
    assert v.challenger.slices["class=pos"]["n"] == counts["pos"]
    assert v.challenger.slices["class=pos"]["f1_macro"] == 1.0
    # For a class slice, accuracy is the share of that class's rows predicted right.
    pos = eval_df[eval_df["label"] == "pos"]
    assert v.champion is not None and v.champion.slices["class=pos"]["accuracy"] == (
        pytest.approx(1 - (pos["x2"] > 0.85).mean()))


def test_verdict_json_round_trip_and_markdown(eval_df):
    v = evaluate_challenger(RuleModel(small_says_pos=True), RuleModel(flip_when="x2 > 0.85"),
                            eval_df, SLICED, gate(), challenger_version="c",
                            champion_version="p", now=NOW, **FAST)
    back = Verdict.from_json(v.to_json())
    assert back.decision == v.decision == "reject"
    assert back.rules == v.rules and back.reasons == v.reasons
    assert back.challenger.slices == v.challenger.slices
    assert back.champion is not None and back.champion.version == "p"
    assert back.created_at == NOW.isoformat()
    md = v.to_markdown()
    assert "REJECT" in md and all(f"| {r.name} |" in md for r in v.rules)


def test_eval_set_without_labels_is_an_error(eval_df):
    with pytest.raises(EvaluationError, match="no labelled rows"):
        evaluate_challenger(RuleModel(), None, eval_df.assign(label=None), SCHEMA, gate(),
                            challenger_version="c", champion_version=None)
