"""A retrain with a search, and a warm-start update, through the in-process loop (issue 14)."""

import datetime as dt
import json
from dataclasses import replace

import pytest

from driftloop.config import Config, TuningConfig
from driftloop.data.storage import open_store
from driftloop.demo.sample import sample_schema, write_sample_store
from driftloop.models.registry import Registry
from driftloop.steps.loop import run_loop


def _end_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


#: Label volume alone fires on day 1 (a small count, any learning gain); the search is small.
CONFIG = replace(
    Config(),
    trigger=replace(Config().trigger, min_new_labels=50, label_share=0.0, label_alpha=0.99,
                    min_learning_gain=0.0),
    tuning=TuningConfig(enabled=True, n_trials=2, folds=2, updates=True,
                        max_boost_iter=60, max_trees=60))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    info = write_sample_store(tmp_path_factory.mktemp("ch") / "s", days=2, rows_per_day=400,
                              drift_day=9, seed=5)
    store = open_store(info.root)
    out = [run_loop(store, sample_schema(), "sample", now=_end_of(info.first_day +
                                                                   dt.timedelta(d)),
                    run_id=f"d{d}", config=CONFIG, lookback_days=3) for d in range(2)]
    return store, out


def test_a_full_retrain_searches_every_candidate_and_the_card_says_why_the_winner_won(runs):
    store, (first, _) = runs
    assert first.decision.kind == "full" and first.train is not None
    registry = Registry(store, "sample")
    card = registry.metadata(first.train.version)["candidates"]
    results = {r["candidate"]: r for r in card["results"]}
    assert set(results) == {"hgb", "extra_trees", "linear"} and card["kind"] == "full"
    for r in results.values():  # each searched its own space, within its budget
        assert r["status"] == "ok" and r["n_trials"] == 2 and r["seconds"] > 0
        assert ("c" in r["params"]) == (r["candidate"] == "linear")
    best = max(results.values(), key=lambda r: r["score"])
    assert card["winner"] == best["candidate"] and card["reason"].startswith(best["candidate"])
    model = registry.load_model(first.train.version)
    expected = {"hgb": "HistGradientBoostingClassifier", "extra_trees": "ExtraTreesClassifier",
                "linear": "LogisticRegression"}[card["winner"]]
    assert type(model[-1]).__name__ == expected
    recorded = json.loads(store.read_text(f"runs/d0/tune-{card['winner']}.json"))
    assert recorded["params"] == best["params"]


def test_new_labels_alone_ask_for_an_update_that_the_gate_judges(runs):
    store, (first, update) = runs
    assert update.decision.fired == ["label_volume"] and update.decision.kind == "update"
    assert "retrain kind: update" in update.decision.reasons[-1]
    registry = Registry(store, "sample")
    champion = registry.metadata(first.train.version)
    card = registry.metadata(update.train.version)["candidates"]
    assert card["kind"] == "update" and card["winner"] == champion["candidates"]["winner"]
    assert [r["candidate"] for r in card["results"]] == [card["winner"]]
    assert card["results"][0]["status"] == "fixed" and card["results"][0]["n_trials"] == 0
    tuned = registry.metadata(update.train.version)["params"]["tuned"]
    assert tuned == champion["params"]["tuned"]
    # registered as a challenger and judged by the same gate against the champion
    assert update.verdict is not None and not update.verdict.first_model
    assert update.verdict.challenger.version == update.train.version
    assert update.verdict.champion is not None
    assert update.verdict.champion.version == first.train.version
