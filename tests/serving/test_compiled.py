"""Compiled inference: the ONNX form equals scikit-learn, or scikit-learn is served and says why.

The bound is :data:`driftloop.serving.compiled.TOLERANCE` (1e-6 absolute on every class
probability, and the same class) on rows the check at load never saw: categorical values
seen, unseen and missing, missing numbers, a category pooled as infrequent.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from driftloop.config import TrainConfig
from driftloop.data.schema import Schema, schema_from_dict
from driftloop.demo.datasets import load_tweets
from driftloop.models.train import feature_frame, train_model
from driftloop.serving import compiled as c
from driftloop.serving.compiled_text import probe_tokenizer
from driftloop.serving.predictor import DriftloopModel
from driftloop.serving.server import RunningServer, serve

MODEL = "sample"  # the registered fixture's model (tests/serving/conftest.py)

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TABULAR = schema_from_dict({"name": "trees", "labels": ["x", "y", "z"], "columns": [
    {"name": "n", "kind": "numeric", "dtype": "float", "required": False},
    {"name": "k", "kind": "numeric", "dtype": "int"},
    {"name": "c", "kind": "categorical", "dtype": "string", "required": False},
    {"name": "many", "kind": "categorical", "dtype": "string"},  # > 255 values: pooled
]})


def _tabular_rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = rng.choice(["x", "y", "z"], n)
    many = rng.integers(0, 300, n)
    return pd.DataFrame({
        "n": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n) + (label == "x")),
        "k": rng.integers(0, 5, n).astype(float),
        "c": np.where(rng.random(n) < 0.2, None,
                      np.where(label == "y", "b", rng.choice(["a", "b", "c"], n))),
        "many": [f"m{v}" for v in np.where(label == "z", many // 2, many)],
        "label": label, "id": [f"r{seed}-{i}" for i in range(n)],
    })


@pytest.fixture(scope="module")
def trees() -> Any:
    rows = _tabular_rows(1500, 0)
    return train_model(rows, TABULAR, TrainConfig(max_iter=60, seed=1), model_name="trees",
                       now=NOW).model


def _diff(pipeline: Any, compiled: c.Compiled, frame: pd.DataFrame, schema: Schema
          ) -> tuple[float, bool]:
    return c.check(pipeline, compiled, frame, schema)


def test_tabular_compiled_equals_sklearn_on_unseen_missing_and_unknown_values(trees: Any
                                                                                ) -> None:
    compiled, report = c.compile_pipeline(trees, TABULAR, _tabular_rows(400, 1), "rows")
    assert compiled is not None and report.compiled, report.reason
    assert report.max_abs_diff is not None and report.max_abs_diff <= c.TOLERANCE
    fresh = _tabular_rows(600, 2)
    fresh.loc[::7, "c"] = "never-seen"        # unknown category
    fresh.loc[::5, "many"] = "m-unknown"
    fresh.loc[::3, "n"] = np.nan              # missing number
    fresh.loc[1::4, "c"] = None               # missing category
    diff, same = _diff(trees, compiled, fresh, TABULAR)
    assert same and diff <= c.TOLERANCE
    # A wrong code for one category would move probabilities far beyond the bound.
    expected = trees.predict_proba(feature_frame(fresh, TABULAR))
    assert np.ptp(expected[:, 0]) > 0.1


def test_check_rows_cover_every_split_threshold_and_category(trees: Any) -> None:
    compiled = c.CompiledTrees(trees)
    base = {"n": 0.0, "k": 1.0, "c": "a", "many": "m1"}
    rows = c.edge_rows(base, TABULAR, trees, compiled)
    thresholds = compiled.split_thresholds(trees)
    assert set(thresholds) == {"n", "k"}
    at = {r["n"] for r in rows if r["k"] == 1.0 and r["c"] == "a" and r["many"] == "m1"}
    t = float(thresholds["n"][0])
    assert t in at and float(np.nextafter(t, np.inf)) in at
    assert any(r["c"] is None for r in rows) and any(r["c"] == c.UNSEEN for r in rows)


def test_binary_model_compiles(registered: Any) -> None:
    reference = pd.read_parquet(registered.store_root / f"reference/{MODEL}/seed.parquet")
    compiled, report = c.compile_pipeline(registered.model, registered.schema, reference,
                                          "seed")
    assert compiled is not None, report.reason
    frame = reference.sample(200, random_state=3)
    diff, same = c.check(registered.model, compiled, frame, registered.schema)
    assert same and diff <= c.TOLERANCE


def test_a_pipeline_that_cannot_be_converted_falls_back_with_the_reason(trees: Any) -> None:
    from sklearn.preprocessing import StandardScaler

    rows = _tabular_rows(300, 4)
    pipeline = train_model(rows, TABULAR, TrainConfig(max_iter=10, seed=1), model_name="t",
                           now=NOW).model
    pre = pipeline.steps[0][1]
    name, _, cols = pre.transformers_[0]
    pre.transformers_[0] = (name, StandardScaler().fit(feature_frame(rows, TABULAR)[cols]),
                            cols)
    compiled, report = c.compile_pipeline(pipeline, TABULAR, rows, "rows")
    assert compiled is None and report.backend == "sklearn"
    assert "StandardScaler" in report.reason and "not handled" in report.reason
    assert report.parameters()["compile_fallback_reason"] == report.reason


@pytest.mark.parametrize("offset, kept", [(0.5e-6, True), (2e-6, False)])
def test_a_difference_beyond_the_tolerance_falls_back(trees: Any, monkeypatch: pytest.MonkeyPatch,
                                                      offset: float, kept: bool) -> None:
    exact = c.CompiledTrees.predict_proba

    def shifted(self: c.CompiledTrees, columns: Any) -> np.ndarray:
        proba = exact(self, columns)
        proba[:, 0] += offset
        return proba

    monkeypatch.setattr(c.CompiledTrees, "predict_proba", shifted)
    compiled, report = c.compile_pipeline(trees, TABULAR, _tabular_rows(100, 5), "rows")
    assert (compiled is not None) is kept
    assert report.max_abs_diff == pytest.approx(offset, rel=1e-3)
    if not kept:
        assert "mismatch" in report.reason and "1e-06" in report.reason


def test_text_model_on_real_tweets_serves_sklearn_and_says_why() -> None:
    tweets = load_tweets(Path("data/tweets.csv")).sample(700, random_state=0)
    rows = tweets.rename(columns={"sentiment": "label"})[["label", "text"]]
    rows = rows.assign(id=[f"t{i}" for i in range(len(rows))]).reset_index(drop=True)
    schema = schema_from_dict({"name": "tweets", "labels": ["negative", "neutral", "positive"],
                               "columns": [{"name": "text", "kind": "text", "dtype": "string"}]})
    model = train_model(rows.iloc[:500], schema, TrainConfig(max_iter=50, seed=0),
                        model_name="tweets", now=NOW).model
    compiled, report = c.compile_pipeline(model, schema, rows.iloc[500:], "tweets")
    assert compiled is None and "tokenizer" in report.reason
    vectorizer = model.steps[0][1].transformers_[0][1]
    with pytest.raises(c.ConversionError, match="texts split differently"):
        probe_tokenizer(vectorizer, rows["text"].tolist())
    # Plain ASCII words split the same: the probe does not refuse every text.
    assert probe_tokenizer(vectorizer, ["Flight delayed again", "great crew, thanks"]) == 2


@pytest.fixture(scope="module")
def both(registered: Any) -> Iterator[tuple[RunningServer, DriftloopModel, DriftloopModel]]:
    fast = DriftloopModel("fast", store_uri=str(registered.store_root), model_name=MODEL,
                          version=registered.version)
    plain = DriftloopModel("plain", store_uri=str(registered.store_root), model_name=MODEL,
                           version=registered.version, compile=False)
    with serve([fast, plain]) as server:
        yield server, fast, plain


def test_both_paths_answer_the_same_over_http(
        both: tuple[RunningServer, DriftloopModel, DriftloopModel]) -> None:
    server, fast, plain = both
    assert fast.compiled is not None and plain.compiled is None
    rng = np.random.default_rng(9)
    rows = [{"x0": float(a), "x1": float(b), "segment": s} for a, b, s in zip(
        rng.normal(size=40).round(4), rng.normal(size=40).round(4),
        rng.choice(["north", "south", "east", "west"], 40), strict=True)]
    with httpx.Client(base_url=server.url, timeout=10) as client:
        answers = {name: client.post(f"/v1/models/{name}:predict", json={"instances": rows})
                   for name in ("fast", "plain")}
        v2 = {name: client.post(f"/v2/models/{name}/infer", json={"inputs": [
            {"name": k, "shape": [len(rows)], "datatype": "FP64" if k != "segment" else "BYTES",
             "data": [r[k] for r in rows]} for k in ("x0", "x1", "segment")]})
            for name in ("fast", "plain")}
        meta = {name: client.get(f"/v2/models/{name}").json() for name in ("fast", "plain")}
    a, b = (answers[n].json()["predictions"] for n in ("fast", "plain"))
    assert [p["class"] for p in a] == [p["class"] for p in b]
    for pa, pb in zip(a, b, strict=True):
        for k, v in pb["probabilities"].items():
            assert abs(pa["probabilities"][k] - v) <= c.TOLERANCE
    o2 = {n: {o["name"]: o["data"] for o in v2[n].json()["outputs"]} for n in v2}
    assert o2["fast"]["class"] == o2["plain"]["class"] == [p["class"] for p in b]
    assert np.max(np.abs(np.subtract(o2["fast"]["probabilities"],
                                     o2["plain"]["probabilities"]))) <= c.TOLERANCE
    assert meta["fast"]["parameters"]["inference_backend"] == "onnxruntime"
    assert meta["plain"]["parameters"]["inference_backend"] == "sklearn"
    assert "DRIFTLOOP_COMPILE=0" in meta["plain"]["parameters"]["compile_fallback_reason"]
    assert [i["name"] for i in meta["fast"]["inputs"]] == ["x0", "x1", "segment"]


def test_fallback_is_logged(registered: Any, caplog: pytest.LogCaptureFixture,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Any, pipeline: Any) -> None:
        raise c.ConversionError("refused for the test")

    monkeypatch.setattr(c.CompiledTrees, "__init__", refuse)
    model = DriftloopModel(MODEL, model_dir=registered.folder)
    with caplog.at_level(logging.WARNING, logger="driftloop.serving.predictor"):
        model.load()
    assert model.compiled is None
    assert any("serving scikit-learn: cannot convert: refused for the test" in r.getMessage()
               for r in caplog.records)
    assert model.metadata_parameters()["inference_backend"] == "sklearn"
