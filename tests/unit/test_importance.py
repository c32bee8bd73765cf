"""Permutation feature importance: what it measures, on which rows, and where it is kept."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftloop.config import Config, TrainConfig
from driftloop.data.schema import schema_from_dict
from driftloop.data.storage import LocalStore
from driftloop.models.registry import Registry
from driftloop.models.train import (
    ModelMetadata,
    feature_importance,
    permutation_feature_importance,
    train_model,
)
from driftloop.steps.ingest import records_window
from driftloop.steps.train import run_train

SCHEMA = schema_from_dict({"name": "tab", "columns": [
    {"name": "signal", "kind": "numeric"}, {"name": "noise", "kind": "numeric"},
    {"name": "colour", "kind": "categorical"},
]})
TEXT = schema_from_dict({"name": "txt", "labels": ["neg", "pos"], "columns": [
    {"name": "text", "kind": "text"}, {"name": "noise", "kind": "numeric"},
]})
CONFIG = TrainConfig(max_iter=40, importance_rows=300, importance_repeats=4)
T0 = pd.Timestamp("2024-01-01", tz="UTC")
NOW = dt.datetime(2024, 2, 1, tzinfo=dt.UTC)


def tabular(n: int, seed: int, prefix: str = "r") -> pd.DataFrame:
    """The label is a function of ``signal`` only; ``noise`` and ``colour`` are noise."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    ts = T0 + pd.to_timedelta(np.arange(n) * 5, unit="min")
    return pd.DataFrame({
        "id": [f"{prefix}{i}" for i in range(n)], "timestamp": ts,
        "signal": signal, "noise": rng.normal(size=n),
        "colour": rng.choice(["red", "blue", "green"], n).astype(object),
        "label": np.where(signal > 0, "pos", "neg").astype(object),
        "label_timestamp": ts + pd.Timedelta("1h"),
    })


def text_rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice(["neg", "pos"], n)
    words = {"pos": ["good", "great", "love"], "neg": ["bad", "awful", "hate"]}
    docs = [" ".join([*rng.choice(words[y], 2), *rng.choice(["the", "it", "was"], 3)])
            for y in labels]
    return pd.DataFrame({"id": [f"t{i}" for i in range(n)],
                         "timestamp": T0 + pd.to_timedelta(np.arange(n), unit="min"),
                         "text": docs, "noise": rng.normal(size=n),
                         "label": labels.astype(object)})


@pytest.fixture(scope="module")
def trained():
    return train_model(tabular(600, seed=0), SCHEMA, CONFIG, model_name="m", now=NOW)


def test_the_feature_the_label_depends_on_beats_pure_noise(trained):
    held = tabular(400, seed=1, prefix="h")
    found = permutation_feature_importance(trained.model, held, SCHEMA, CONFIG, source="held")
    by_name = {f["name"]: f for f in found["features"]}
    assert found["features"][0]["name"] == "signal"
    assert set(by_name) == {"signal", "noise", "colour"}
    assert by_name["signal"]["mean"] > 0.3  # shuffling it leaves a coin toss
    assert abs(by_name["noise"]["mean"]) < 0.05 and abs(by_name["colour"]["mean"]) < 0.05
    assert by_name["signal"]["mean"] > by_name["noise"]["mean"] + 5 * by_name["signal"]["std"]
    means = [f["mean"] for f in found["features"]]
    assert means == sorted(means, reverse=True)
    assert found["metric"] == "accuracy" and found["source"] == "held"
    assert found["repeats"] == 4 and found["baseline"] > 0.9


def test_the_row_cap_and_the_seed_bound_it_and_make_it_repeatable(trained):
    held = tabular(1000, seed=2, prefix="h")
    first = permutation_feature_importance(trained.model, held, SCHEMA, CONFIG, source="x")
    assert first["rows"] == 300
    assert first == permutation_feature_importance(trained.model, held, SCHEMA, CONFIG,
                                                   source="x")
    other_seed = dataclasses.replace(CONFIG, seed=1)
    assert permutation_feature_importance(trained.model, held, SCHEMA, other_seed,
                                          source="x") != first
    # unlabelled rows are not scored; no labelled row or a zero cap: nothing measured
    some = held.assign(label=[None] * 950 + list(held["label"].iloc[950:]))
    assert permutation_feature_importance(trained.model, some, SCHEMA, CONFIG,
                                          source="x")["rows"] == 50
    assert permutation_feature_importance(trained.model, held.assign(label=None), SCHEMA,
                                          CONFIG, source="x") == {}
    off = dataclasses.replace(CONFIG, importance_rows=0)
    assert permutation_feature_importance(trained.model, held, SCHEMA, off, source="x") == {}


def test_a_text_column_is_one_feature():
    rows = text_rows(500, seed=3)
    result = train_model(rows, TEXT, CONFIG, model_name="t", now=NOW)
    found = permutation_feature_importance(result.model, text_rows(300, seed=4), TEXT, CONFIG,
                                           source="held")
    assert [f["name"] for f in found["features"]] == ["text", "noise"]
    assert found["features"][0]["mean"] > 0.3


def test_eval_rows_it_trained_on_are_left_out(trained):
    training = tabular(600, seed=0)
    eval_set = pd.concat([tabular(200, seed=5, prefix="e"), training.iloc[:100]],
                         ignore_index=True)
    eval_set.loc[:19, "label"] = None  # no feedback yet
    found = feature_importance(trained, eval_set, training, SCHEMA, CONFIG)
    assert found["rows"] == 180
    assert found["source"].startswith("evaluation set: 180 held-out labelled rows")
    fresh = eval_set.iloc[20:200]
    assert found == {**permutation_feature_importance(trained.model, fresh, SCHEMA, CONFIG,
                                                      source=found["source"])}


def test_a_first_model_without_eval_labels_is_measured_as_its_probe_on_the_validation_split(
        trained):
    found = feature_importance(trained, pd.DataFrame(), tabular(600, seed=0), SCHEMA, CONFIG)
    assert trained.probe is not None and trained.validation is not None
    assert found["rows"] == len(trained.validation) > 0
    assert "validation split" in found["source"] and "first model" in found["source"]
    expected = permutation_feature_importance(trained.probe, trained.validation, SCHEMA,
                                              CONFIG, source=found["source"])
    assert found == expected
    # the registered model was refit on the validation rows: it is not what was measured
    refit = permutation_feature_importance(trained.model, trained.validation, SCHEMA, CONFIG,
                                           source=found["source"])
    assert refit["baseline"] >= expected["baseline"]
    assert feature_importance(trained, tabular(10, 0).iloc[:0], tabular(600, 0), SCHEMA,
                              CONFIG)["source"] == found["source"]


def test_metadata_without_the_field_still_loads(trained):
    raw = json.loads(trained.metadata.to_json())
    raw.pop("feature_importance")
    assert ModelMetadata.from_json(json.dumps(raw)).feature_importance == {}


def test_run_train_records_it_in_the_registered_metadata(tmp_path: Path):
    store = LocalStore(tmp_path / "store", create=True)
    seed = tabular(400, seed=6, prefix="s")
    store.write_bytes("reference/tab/seed.parquet", seed.to_parquet(index=False))
    config = dataclasses.replace(Config(), train=CONFIG)
    registry = Registry(store, "tab")
    # the seed run: no production labels, so the validation split is measured
    first = run_train(store, registry, None, records_window(seed.iloc[:0]), SCHEMA,
                      now=NOW, config=config, model_name="tab")
    stored = registry.metadata(first.version)["feature_importance"]
    assert "validation split" in stored["source"]
    assert stored["features"][0]["name"] == "signal"
    # with production labels: the held-out evaluation rows, none of them trained on
    records = tabular(800, seed=7, prefix="p")
    second = run_train(store, registry, None, records_window(records), SCHEMA,
                       now=NOW + dt.timedelta(days=1), config=config, model_name="tab")
    stored = registry.metadata(second.version)["feature_importance"]
    assert stored["source"].startswith("evaluation set")
    assert stored["rows"] == min(len(second.eval_set), CONFIG.importance_rows) > 0
    assert second.metadata.feature_importance == stored
    assert stored["features"][0]["name"] == "signal"
