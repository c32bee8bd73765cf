"""Candidates and their Optuna search (issue 14): reproducible, budgeted, never fatal."""

from __future__ import annotations

import time

import numpy as np
import pytest
from tests.unit.test_train import TABULAR, TEXT, make_tabular, make_text

from driftloop.config import TrainConfig, TuningConfig
from driftloop.errors import ConfigError
from driftloop.models.candidates import DEFAULT, build_candidate, candidates_for
from driftloop.models.train import predict_frame, train_model
from driftloop.models.tuning import (
    FIXED,
    OK,
    SKIPPED,
    CandidateResult,
    resolve_storage,
    select_winner,
    selection_record,
    tune_candidate,
)
from driftloop.models.warm import update_spec

CONFIG = TrainConfig(max_iter=30)
FAST = TuningConfig(enabled=True, n_trials=4, tuning_seconds=60, folds=2,
                    max_boost_iter=60, max_trees=60)


@pytest.fixture(scope="module")
def tab():
    return make_tabular(240, 3)


def test_same_rows_and_seed_give_the_same_trials_and_winner(tab):
    runs = [[tune_candidate(tab.sample(frac=1, random_state=s), TABULAR, CONFIG, FAST, name)
             for name in ("extra_trees", "linear")] for s in (1, 2)]
    first, second = runs
    assert [r.params for r in first] == [r.params for r in second]
    assert [r.score for r in first] == [r.score for r in second]
    assert select_winner(first)[:2] == select_winner(second)[:2]
    assert all(r.status == OK and r.n_trials == 4 for r in first)
    other = tune_candidate(tab, TABULAR, TrainConfig(max_iter=30, seed=7), FAST, "extra_trees")
    assert other.params != first[0].params  # the seed really drives the sampler


def test_the_search_starts_from_the_fixed_model_and_a_one_trial_budget_is_quick(tab):
    started = time.monotonic()
    one = tune_candidate(tab, TABULAR, CONFIG, TuningConfig(enabled=True, n_trials=1,
                                                            folds=2), "hgb")
    assert time.monotonic() - started < 5
    assert one.status == OK and one.n_trials == 1
    assert one.params["learning_rate"] == CONFIG.learning_rate  # the enqueued fixed model
    assert one.params["max_iter"] == CONFIG.max_iter


def test_the_time_budget_stops_a_study_before_its_trials(tab):
    slow = tune_candidate(tab, TABULAR, CONFIG, TuningConfig(
        enabled=True, n_trials=500, tuning_seconds=0.5, folds=2), "extra_trees")
    assert slow.status == OK and 1 <= slow.n_trials < 500 and slow.seconds < 5


def test_a_candidate_that_cannot_fit_a_fold_is_skipped_with_its_reason():
    # 4 rows of "neu": a 2-fold training part holds 2, and the calibrated SVM asks 3 per
    # class of its inner 3-fold split, so every trial fails; the plain LR fits.
    df = make_text(80, 1)
    df.loc[df.index[:4], "label"] = "neu"
    cfg = TuningConfig(enabled=True, n_trials=2, folds=2)
    svm, lr = (tune_candidate(df, TEXT, CONFIG, cfg, n) for n in ("tfidf_svm", "tfidf_lr"))
    assert svm.status == SKIPPED and svm.n_failed == 2 and "3-fold" in svm.reason
    assert lr.status == OK
    winner, _, reason = select_winner([svm, lr])
    assert winner == "tfidf_lr" and "tfidf_svm skipped" in reason


def test_nothing_completed_falls_back_to_the_fixed_model():
    bad = CandidateResult("hgb", SKIPPED, "f1_macro", reason="every trial failed: X")
    winner, params, reason = select_winner([bad])
    assert (winner, params) == (DEFAULT, {}) and "hgb skipped (every trial failed: X)" in reason
    fixed = CandidateResult(DEFAULT, FIXED, "f1_macro", reason="tuning off")
    assert select_winner([fixed])[0] == DEFAULT


def test_the_winner_is_the_best_score_and_the_reason_names_the_margin():
    a = CandidateResult("hgb", OK, "f1_macro", score=0.80, n_trials=3, folds=3, rows=100)
    b = CandidateResult("linear", OK, "f1_macro", score=0.85, params={"c": 2.0},
                        n_trials=3, folds=3, rows=100)
    winner, params, reason = select_winner([a, b])
    assert (winner, params) == ("linear", {"c": 2.0})
    assert "0.8500" in reason and "ahead of hgb 0.8000 (+0.0500)" in reason
    record = selection_record("full", winner, reason, [a, b])
    assert [r["candidate"] for r in record["results"]] == ["hgb", "linear"]


def test_every_candidate_builds_fits_and_predicts_probabilities(tab):
    text = make_text(90, 2)
    for schema, df in ((TABULAR, tab), (TEXT, text)):
        names = candidates_for(schema, TuningConfig(enabled=True))
        assert len(names) == 3
        for name in names:
            model = build_candidate(schema, CONFIG, name).fit(
                df.drop(columns="label"), df["label"].astype(str))
            pred, proba = predict_frame(model, df, schema)
            assert proba.shape == (len(df), 2) and np.allclose(proba.sum(axis=1), 1)
            assert (pred == df["label"].to_numpy()).mean() > 0.7, name
    assert candidates_for(TABULAR, TuningConfig()) == [DEFAULT]
    with pytest.raises(ValueError, match="tfidf_lr"):
        build_candidate(TABULAR, CONFIG, "tfidf_lr")


def test_a_chosen_candidate_is_what_train_model_fits(tab):
    from driftloop.models.candidates import builder

    result = train_model(tab, TABULAR, CONFIG, model_name="m",
                         builder=builder(TABULAR, CONFIG, "linear", {"c": 0.5}))
    assert type(result.model[-1]).__name__ == "LogisticRegression"
    assert result.model[-1].C == 0.5 and result.metadata.validation_metrics


def test_sqlite_storage_resumes_a_study_with_only_the_missing_trials(tab, tmp_path):
    url = resolve_storage("sqlite", tmp_path)
    cfg = TuningConfig(enabled=True, n_trials=2, folds=2, max_trees=60)
    first = tune_candidate(tab, TABULAR, CONFIG, cfg, "extra_trees", storage=url)
    again = tune_candidate(tab, TABULAR, CONFIG, cfg, "extra_trees", storage=url)
    assert (tmp_path / "optuna.db").exists()
    assert first.n_trials == again.n_trials == 2 and again.params == first.params
    assert resolve_storage("", tmp_path) is None
    assert resolve_storage("postgresql://h/db", None) == "postgresql://h/db"


def test_an_update_reuses_the_champions_candidate_and_params():
    meta = {"version": "v1", "params": {"tuned": {"c": 3.0}},
            "candidates": {"winner": "tfidf_svm", "results": []}}
    assert update_spec(meta)[:2] == ("tfidf_svm", {"c": 3.0})
    old = {"version": "v0", "params": {}, "candidates": {}}
    name, params, reason = update_spec(old)
    assert (name, params) == (DEFAULT, {}) and "fixed model" in reason
    collected = {"candidates": {"winner": "hgb", "results": [
        {"candidate": "hgb", "params": {"max_iter": 80.0, "learning_rate": 0.1}}]}}
    assert update_spec(collected)[1] == {"max_iter": 80, "learning_rate": 0.1}


def test_tuning_config_names_the_field_and_the_rule():
    with pytest.raises(ConfigError, match=r"tuning\.candidates"):
        TuningConfig(candidates=("nope",))
    with pytest.raises(ConfigError, match=r"tuning\.n_trials/folds"):
        TuningConfig(n_trials=0)


def test_only_new_labels_ask_for_an_update_and_only_when_updates_are_on():
    from tests.unit.test_trigger import CHAMP, NOW, Drift

    from driftloop.config import TriggerConfig
    from driftloop.decide.trigger import decide_retrain, retrain_kind

    assert retrain_kind(["label_volume"], updates=True)[0] == "update"
    for fired in (["drift"], ["label_volume", "performance"], ["force"], ["schedule"], []):
        assert retrain_kind(fired, updates=True)[0] == "full", fired
    assert retrain_kind(["label_volume"], updates=False) == ("full",
                                                             "retrain kind: full (updates off)")
    labels = decide_retrain(CHAMP, now=NOW, config=TriggerConfig(min_new_labels=500),
                            drift=Drift(), new_labels=600, updates=True)
    assert labels.retrain and labels.fired == ["label_volume"] and labels.kind == "update"
    assert labels.reasons[-1].startswith("retrain kind: update")
    forced = decide_retrain(CHAMP, now=NOW, config=TriggerConfig(min_new_labels=500),
                            drift=Drift(), new_labels=600, updates=True, force=True)
    assert forced.kind == "full" and "retrain kind: full" in forced.reasons[-1]


def test_parameters_that_crossed_a_float_channel_still_build(tab):
    # kfp.local's dsl.Collected turns every int into a float
    collected = CandidateResult.from_collected({
        "candidate": "extra_trees", "status": "ok", "metric": "f1_macro", "score": 0.9,
        "params": {"n_estimators": 60.0, "min_samples_leaf": 5.0, "max_features": 0.5},
        "n_trials": 2.0, "folds": 2.0})
    assert collected.n_trials == 2 and collected.params["min_samples_leaf"] == 5
    model = build_candidate(TABULAR, CONFIG, "extra_trees", {"n_estimators": 60.0,
                                                             "min_samples_leaf": 5.0})
    model.fit(tab.drop(columns="label"), tab["label"])
    assert model[-1].min_samples_leaf == 5 and isinstance(model[-1].n_estimators, int)


def test_run_flags_and_pipeline_parameters_turn_the_search_on_and_off(capsys):
    from driftloop.cli.commands import _config
    from driftloop.cli.parser import build_parser
    from driftloop.kfp.local import pipeline_arguments

    base = ["run", "--store", "s", "--schema", "x.json", "--model", "m"]
    on = _config(build_parser().parse_args([*base, "--n-trials", "3", "--tuning-seconds", "5"]))
    assert on.tuning.enabled and (on.tuning.n_trials, on.tuning.tuning_seconds) == (3, 5.0)
    off = _config(build_parser().parse_args([*base, "--n-trials", "0"]))
    assert not off.tuning.enabled
    assert (pipeline_arguments(on)["n_trials"], pipeline_arguments(off)["n_trials"]) == (3, 0)
    assert pipeline_arguments(on)["tuning_seconds"] == 5.0
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--n-trials", "-1"])
    assert "--n-trials: '-1': must be >= 0" in capsys.readouterr().err
