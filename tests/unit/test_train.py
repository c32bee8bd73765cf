from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import joblib
import numpy as np
import pandas as pd
import pytest

from driftloop.config import TrainConfig
from driftloop.data.schema import schema_from_dict
from driftloop.errors import DriftloopError, SchemaError
from driftloop.models.train import (
    ModelMetadata,
    TrainingError,
    assemble_training_set,
    data_hash,
    feature_frame,
    predict_frame,
    save_model_artifact,
    split_holdout,
    train_model,
)

TABULAR = schema_from_dict({
    "name": "tab", "columns": [
        {"name": "x1", "kind": "numeric"}, {"name": "x2", "kind": "numeric"},
        {"name": "c", "kind": "categorical"},
    ],
})
TEXT = schema_from_dict({"name": "txt", "columns": [{"name": "text", "kind": "text"}]})
CONFIG = TrainConfig(max_iter=30)
NOW = datetime(2024, 2, 1, tzinfo=UTC)
T0 = pd.Timestamp("2024-01-01", tz="UTC")


def make_tabular(n: int, seed: int, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    c = rng.choice(["a", "b", "c"], n)
    y = np.where(x1 + x2 + (c == "a") * 1.0 > 0.5, "pos", "neg")
    ts = T0 + pd.to_timedelta(np.arange(n) * 7, unit="min")
    return pd.DataFrame({
        "id": [f"r{start + i}" for i in range(n)], "timestamp": ts, "x1": x1, "x2": x2,
        "c": c.astype(object), "label": y.astype(object),
        "label_timestamp": ts + pd.Timedelta("1h"),
    })


POS = ["good", "great", "love", "excellent", "happy", "nice"]
NEG = ["bad", "awful", "hate", "poor", "sad", "terrible"]
NEUTRAL = ["the", "a", "service", "food", "today", "it", "was", "we"]


def make_text(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice(["neg", "pos"], n)
    docs = [" ".join(rng.permutation([*rng.choice(POS if y == "pos" else NEG, 2),
                                      *rng.choice(NEUTRAL, 4)])) for y in labels]
    return pd.DataFrame({
        "id": [f"t{seed}-{i}" for i in range(n)],
        "timestamp": T0 + pd.to_timedelta(np.arange(n), unit="min"),
        "text": docs, "label": labels.astype(object),
    })


@pytest.fixture(scope="module")
def tab_data() -> pd.DataFrame:
    return make_tabular(500, seed=0)


@pytest.fixture(scope="module")
def tab_result(tab_data: pd.DataFrame):
    return train_model(tab_data, TABULAR, CONFIG, model_name="m", now=NOW)


def test_training_is_deterministic_and_independent_of_row_order(tab_data, tab_result):
    shuffled = tab_data.sample(frac=1.0, random_state=3)
    again = train_model(shuffled, TABULAR, CONFIG, model_name="m", now=NOW)
    probe = make_tabular(200, seed=9, start=5000)
    _, p1 = predict_frame(tab_result.model, probe, TABULAR)
    _, p2 = predict_frame(again.model, probe, TABULAR)
    np.testing.assert_array_equal(p1, p2)
    assert again.metadata.data_hash == tab_result.metadata.data_hash
    assert again.metadata.version == tab_result.metadata.version
    assert again.metadata.validation_metrics == tab_result.metadata.validation_metrics


def test_data_hash_covers_ids_features_and_labels_only(tab_data):
    base = data_hash(tab_data, TABULAR)
    relabelled = tab_data.copy()
    relabelled.loc[0, "label"] = "pos" if relabelled.loc[0, "label"] == "neg" else "neg"
    moved = tab_data.copy()
    moved.loc[3, "x1"] += 1e-9
    renamed = tab_data.copy()
    renamed.loc[5, "id"] = "other"
    assert len({base, data_hash(relabelled, TABULAR), data_hash(moved, TABULAR),
                data_hash(renamed, TABULAR)}) == 4
    extra = tab_data.assign(prediction="pos", timestamp=T0)
    assert data_hash(extra, TABULAR) == base


def test_model_is_accurate_and_metadata_describes_its_data(tab_data, tab_result):
    meta = tab_result.metadata
    probe = make_tabular(400, seed=1, start=9000)
    pred, proba = predict_frame(tab_result.model, probe, TABULAR)
    assert (pred == probe["label"].to_numpy()).mean() > 0.85
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert meta.classes == ["neg", "pos"]
    assert meta.features == ["x1", "x2", "c"]
    assert meta.model_kind == "tabular" and meta.params["estimator"] == (
        "HistGradientBoostingClassifier")
    assert meta.n_rows == 500 and meta.seed == CONFIG.seed
    assert meta.training_window_start == tab_data["timestamp"].min().isoformat()
    assert meta.training_window_end == tab_data["timestamp"].max().isoformat()
    # Labels arrive an hour after the last record: the cutoff is the latest label time.
    assert meta.training_cutoff == tab_data["label_timestamp"].max().isoformat()
    assert meta.version == f"v20240201T000000Z-{meta.data_hash[:8]}"
    assert 60 < meta.n_validation_rows < 140
    assert meta.validation_metrics["f1_macro"] > 0.8
    assert set(meta.validation_metrics) >= {"accuracy", "roc_auc", "recall_macro"}


def test_artifact_folder_holds_model_whose_hash_is_in_metadata(tmp_path, tab_result):
    folder = save_model_artifact(tab_result, tmp_path / "models" / "m" / "v1")
    model_file = folder / "model.joblib"
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.joblib"]
    written = json.loads((folder / "metadata.json").read_text())
    assert written["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert ModelMetadata.from_json((folder / "metadata.json").read_text()) == (
        tab_result.metadata)
    loaded = joblib.load(model_file)
    probe = make_tabular(50, seed=2, start=7000)
    x = feature_frame(probe, TABULAR)
    np.testing.assert_array_equal(loaded.predict_proba(x), tab_result.model.predict_proba(x))
    assert set(loaded.predict(x)) <= {"neg", "pos"}


def test_tabular_model_tolerates_unseen_category_and_missing_values(tab_result):
    probe = make_tabular(4, seed=3, start=8000)
    probe.loc[0, "c"] = "never-seen"
    probe.loc[1, "c"] = None
    probe.loc[2, "x1"] = np.nan
    pred, proba = predict_frame(tab_result.model, probe, TABULAR)
    assert pred.shape == (4,) and np.isfinite(proba).all()


def test_predict_frame_names_missing_feature_columns(tab_result):
    with pytest.raises(SchemaError, match=r"\['c'\]"):
        predict_frame(tab_result.model, make_tabular(5, 0).drop(columns="c"), TABULAR)


def test_text_model_trains_and_generalises():
    result = train_model(make_text(300, seed=0), TEXT, TrainConfig(), model_name="txt", now=NOW)
    assert result.metadata.model_kind == "text"
    assert result.metadata.params["estimator"] == "LogisticRegression"
    probe = make_text(200, seed=1)
    probe.loc[0, "text"] = None
    pred, _ = predict_frame(result.model, probe, TEXT)
    assert (pred[1:] == probe["label"].to_numpy()[1:]).mean() > 0.9


def test_one_class_and_too_few_rows_are_clear_errors(tab_data):
    one_class = tab_data.assign(label="pos")
    with pytest.raises(TrainingError, match="only one class") as info:
        train_model(one_class, TABULAR, CONFIG, model_name="m")
    assert isinstance(info.value, DriftloopError) and "\n" not in str(info.value)
    with pytest.raises(TrainingError, match="5 labelled rows; at least 10"):
        train_model(tab_data.head(5), TABULAR, CONFIG, model_name="m")


def test_labels_outside_the_schema_are_rejected(tab_data):
    schema = schema_from_dict({**TABULAR.to_dict(), "labels": ["neg", "other"]})
    with pytest.raises(TrainingError, match=r"\['pos'\]"):
        train_model(tab_data, schema, CONFIG, model_name="m")


def test_split_holdout_is_stable_disjoint_and_per_record():
    df = make_tabular(2000, seed=4)
    rest, held = split_holdout(df, 0.3, seed=7)
    rest2, held2 = split_holdout(df.iloc[::-1], 0.3, seed=7)
    assert set(held["id"]) == set(held2["id"]) and set(rest["id"]) == set(rest2["id"])
    assert not set(held["id"]) & set(rest["id"])
    assert len(held) + len(rest) == len(df)
    assert 0.25 < len(held) / len(df) < 0.35
    # A record's side does not depend on which other records are present.
    _, held_sub = split_holdout(df.iloc[:300], 0.3, seed=7)
    assert set(held_sub["id"]) == set(held["id"]) & set(df["id"].iloc[:300])
    _, held_other = split_holdout(df, 0.3, seed=8)
    assert set(held_other["id"]) != set(held["id"])


def test_assemble_training_set_windows_filters_and_caps():
    reference = make_tabular(30, seed=5, start=90_000).assign(
        timestamp=pd.Timestamp("2023-06-01", tz="UTC"))
    prod = make_tabular(100, seed=6)  # one record every 7 minutes from T0
    prod.loc[prod.index[:10], "label"] = None
    now = (T0 + pd.Timedelta(minutes=7 * 79)).to_pydatetime()  # rows 80.. are "future"
    window_days = 7 * 40 / (24 * 60)  # the last 40 records before now (and now itself)
    out = assemble_training_set(reference, prod, TrainConfig(window_days=window_days), now)
    prod_ids = [f"r{i}" for i in range(39, 80)]
    assert set(out["id"]) == set(reference["id"]) | set(prod_ids)
    assert out["timestamp"].is_monotonic_increasing
    every = assemble_training_set(None, prod, TrainConfig(), now)
    assert set(every["id"]) == {f"r{i}" for i in range(10, 80)}  # unlabelled dropped
    capped = assemble_training_set(reference, prod, TrainConfig(max_rows=15), now)
    assert list(capped["id"]) == [f"r{i}" for i in range(65, 80)]  # the most recent


def test_assemble_training_set_keeps_production_row_for_a_repeated_id():
    reference = make_tabular(5, seed=7).assign(label="neg")
    prod = make_tabular(5, seed=7).assign(label="pos")
    out = assemble_training_set(reference, prod, TrainConfig(), NOW)
    assert len(out) == 5 and set(out["label"]) == {"pos"}


def test_validation_split_is_independent_of_the_eval_split(tab_data):
    # Training rows are what an eval split left over; the validation split inside training
    # must still hold rows out, or the champion has no baseline metric.
    rest, _ = split_holdout(tab_data, 0.3, CONFIG.seed)
    result = train_model(rest, TABULAR, CONFIG, model_name="m", now=NOW)
    assert result.metadata.n_validation_rows > 0.1 * len(rest)
    assert "f1_macro" in result.metadata.validation_metrics


def test_out_of_fold_probabilities_are_not_the_over_confident_in_sample_ones():
    import numpy as np

    from driftloop.config import TrainConfig
    from driftloop.data.schema import schema_from_dict
    from driftloop.models.train import build_pipeline, feature_frame, out_of_fold_proba

    rng = np.random.default_rng(0)
    n = 600
    words = np.array(["good", "bad", "fine", "meh", "great", "awful", "ok", "so"])
    labels = rng.choice(["neg", "pos"], size=n)
    text = [" ".join(rng.choice(words, size=6)) + (" good" if y == "pos" else " bad")
            for y in labels]
    df = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "text": text, "label": labels})
    schema = schema_from_dict({"columns": [{"name": "text", "kind": "text"}],
                               "labels": ["neg", "pos"]})
    config = TrainConfig()
    model = build_pipeline(schema, config).fit(feature_frame(df, schema), labels)
    inside = model.predict_proba(feature_frame(df, schema)).max(axis=1)
    oof = out_of_fold_proba(df, schema, config, ["neg", "pos"])
    assert oof.shape == (n, 2) and np.allclose(oof.sum(axis=1), 1)
    assert oof.max(axis=1).mean() < inside.mean()
    # the same rows and seed give the same probabilities
    assert np.array_equal(oof, out_of_fold_proba(df, schema, config, ["neg", "pos"]))


def test_learning_curve_tells_a_data_starved_model_from_a_saturated_one():
    rng = np.random.default_rng(3)
    pos, neg = [f"p{i}" for i in range(150)], [f"n{i}" for i in range(150)]
    labels = rng.choice(["neg", "pos"], 1500)
    starved = pd.DataFrame({
        "id": [f"s{i}" for i in range(1500)],
        "timestamp": T0 + pd.to_timedelta(np.arange(1500), unit="min"),
        "text": [" ".join([*rng.choice(pos if y == "pos" else neg, 1), *rng.choice(NEUTRAL, 3)])
                 for y in labels],
        "label": labels.astype(object)})
    curve = train_model(starved, TEXT, CONFIG, model_name="m", now=NOW).metadata.learning_curve
    # the half fit has not seen many of the sentiment words the full fit knows
    assert curve["gain"] > 0.05 and curve["p"] < 0.01
    assert curve["n_half"] < 0.6 * curve["n_full"]
    saturated = make_tabular(4000, seed=5)
    flat = train_model(saturated, TABULAR, CONFIG, model_name="m", now=NOW).metadata.learning_curve
    assert abs(flat["gain"]) < 0.02 and flat["p"] > 0.01
