"""The predictor's per-request fast path gives what the generic code would give.

``DriftloopModel.build_frame`` builds the pipeline's input frame straight from arrays; it
must equal :func:`driftloop.models.train.feature_frame` for every column kind and for missing
values, and the responses and metrics must match :func:`driftloop.models.train.predict_frame`.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import REGISTRY

from driftloop.config import TrainConfig
from driftloop.data.schema import Schema, schema_from_dict
from driftloop.models.train import feature_frame, predict_frame, save_model_artifact, train_model
from driftloop.serving import clean_argv
from driftloop.serving import predictor as p
from driftloop.serving.predictor import DriftloopModel
from driftloop.serving.predictor_inputs import check_value, parse_v1, parse_v2
from driftloop.serving.predictor_loading import load_from_folder

with clean_argv():
    from kserve.protocol.infer_type import InferRequest

COLUMNS = [
    {"name": "n", "kind": "numeric", "dtype": "float", "required": False},
    {"name": "k", "kind": "numeric", "dtype": "int", "required": True},
    {"name": "c", "kind": "categorical", "dtype": "string", "required": False,
     "allowed": ["a", "b", "c"]},
]
TEXT_COLUMN = {"name": "t", "kind": "text", "dtype": "string", "required": False}


def _schema(name: str, text: bool) -> Schema:
    columns = [*COLUMNS, TEXT_COLUMN] if text else COLUMNS
    return schema_from_dict({"name": name, "labels": ["x", "y", "z"], "columns": columns})


def _training_rows(n: int, text: bool, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = rng.choice(["x", "y", "z"], n)
    frame = pd.DataFrame({
        "n": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n) + (label == "x")),
        "k": rng.integers(0, 5, n).astype(float),
        "c": np.where(rng.random(n) < 0.2, None, rng.choice(["a", "b", "c"], n)),
        "label": label,
        "id": [f"t-{i}" for i in range(n)],
    })
    if text:
        words = np.asarray(["red", "green", "blue", "fast", "slow"])
        frame["t"] = [" ".join(rng.choice(words, 3)) + f" {lab}" for lab in label]
        frame.loc[rng.random(n) < 0.2, "t"] = None
    return frame


@pytest.fixture(scope="module", params=[False, True], ids=["tabular", "text"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> DriftloopModel:
    text = bool(request.param)
    name = "fast-text" if text else "fast-tabular"
    schema = _schema(name, text)
    result = train_model(_training_rows(300, text), schema, TrainConfig(max_iter=200, seed=1),
                         model_name=name, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    folder = save_model_artifact(result, tmp_path_factory.mktemp(name) / "model")
    # The scikit-learn path (the compiled one is checked in test_compiled.py): its answers
    # must equal predict_frame exactly.
    served = DriftloopModel(name, model_dir=Path(folder), compile=False)
    served.load()
    return served


def _instances(schema: Schema) -> list[dict[str, object]]:
    """Rows with every kind of value, missing ones included (absent key or null)."""
    text = any(c.kind == "text" for c in schema.columns)
    rows: list[dict[str, object]] = [
        {"n": 0.5, "k": 1, "c": "a", "id": "r-0"},
        {"k": 2, "c": None},                       # n absent, c null
        {"n": None, "k": 3},                       # n null, c absent
        {"n": -1.25, "k": 0, "c": "c", "id": 7},
        {"n": 3, "k": 4, "c": "b"},
    ]
    if text:
        for i, row in enumerate(rows):
            if i % 2 == 0:
                row["t"] = ["red fast x", "", "blue", "slow y z", "green"][i]
    return rows


def test_build_frame_equals_feature_frame(model: DriftloopModel) -> None:
    assert model.loaded is not None
    schema = model.loaded.schema
    columns, _ = parse_v1({"instances": _instances(schema)}, schema)
    expected = feature_frame(pd.DataFrame(columns), schema)
    pd.testing.assert_frame_equal(model.build_frame(columns), expected)
    one = {name: values[1:2] for name, values in columns.items()}  # all-missing columns
    pd.testing.assert_frame_equal(model.build_frame(one),
                                  feature_frame(pd.DataFrame(one), schema))


def test_build_frame_without_pandas_internal_constructor(
    model: DriftloopModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert model.loaded is not None
    schema = model.loaded.schema
    columns, _ = parse_v1({"instances": _instances(schema)}, schema)
    fast = model.build_frame(columns)
    monkeypatch.delattr(pd.DataFrame, "_from_arrays", raising=False)
    pd.testing.assert_frame_equal(model.build_frame(columns), fast)
    pd.testing.assert_frame_equal(fast, feature_frame(pd.DataFrame(columns), schema))


def _count(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_v1_and_v2_answers_and_metrics_match_predict_frame(model: DriftloopModel) -> None:
    loaded = model.loaded
    assert loaded is not None
    schema = loaded.schema
    rows = _instances(schema)
    columns, _ = parse_v1({"instances": rows}, schema)
    labels, proba = predict_frame(loaded.model, pd.DataFrame(columns), schema)
    base = {"model_name": model.name, "model_version": loaded.version}
    before = {c: _count("driftloop_predictions_total", {**base, "class": c})
              for c in loaded.classes}
    conf_before = _count("driftloop_prediction_confidence_count", base)

    v1 = model.predict({"instances": rows})
    assert isinstance(v1, dict)
    assert v1["model_name"] == model.name and v1["model_version"] == loaded.version
    for i, pred in enumerate(v1["predictions"]):
        expected: dict[str, object] = {
            "class": str(labels[i]),
            "probabilities": dict(zip(loaded.classes, proba[i].tolist(), strict=True)),
            "model_version": loaded.version,
        }
        if rows[i].get("id") is not None:
            expected["id"] = str(rows[i]["id"])
        assert pred == expected
        assert type(pred["class"]) is str

    body = {"id": "q", "inputs": [
        {"name": name, "shape": [len(rows)],
         "datatype": "FP64" if spec.kind == "numeric" else "BYTES",
         "data": [r.get(name) for r in rows]}
        for name, spec in ((c.name, c) for c in schema.columns)
    ] + [{"name": "id", "shape": [len(rows)], "datatype": "BYTES",
          "data": [str(r.get("id") or "-") for r in rows]}]}
    raw = json.dumps(body).encode()
    request = InferRequest.from_bytes(raw, len(raw), model.name)
    assert parse_v2(request, schema)[0] == columns
    rest, _ = model.predict(request).to_rest()  # type: ignore[union-attr]
    assert isinstance(rest, dict)
    outputs = {o["name"]: o for o in rest["outputs"]}
    assert rest["id"] == "q" and rest["model_version"] == loaded.version
    assert outputs["class"] == {"name": "class", "shape": [len(rows)], "datatype": "BYTES",
                                "data": [str(x) for x in labels]}
    assert outputs["probabilities"]["shape"] == [len(rows), len(loaded.classes)]
    assert outputs["probabilities"]["data"] == proba.ravel().tolist()
    assert json.loads(outputs["probabilities"]["parameters"]["classes"]) == loaded.classes
    assert outputs["id"]["data"] == [str(r.get("id") or "-") for r in rows]

    # Two answers (V1 + V2) for every row.
    assert _count("driftloop_prediction_confidence_count", base) - conf_before == 2 * len(rows)
    for c in loaded.classes:
        delta = _count("driftloop_predictions_total", {**base, "class": c}) - before[c]
        assert delta == 2 * list(labels).count(c)


def test_one_openmp_thread_limits_and_restores(model: DriftloopModel) -> None:
    libraries = p._openmp_libraries()
    if not libraries:
        pytest.skip("no OpenMP library loaded")
    before = [lib.num_threads for lib in libraries]
    with p._one_openmp_thread():
        assert [lib.num_threads for lib in libraries] == [1] * len(libraries)
    assert [lib.num_threads for lib in libraries] == before
    with pytest.raises(RuntimeError), p._one_openmp_thread():
        raise RuntimeError("boom")
    assert [lib.num_threads for lib in libraries] == before


def test_entry_point_freezes_the_loaded_heap_before_serving(
    model: DriftloopModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driftloop.serving import server

    calls: list[str] = []
    monkeypatch.setattr(p.gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(server, "run", lambda models, **kw: calls.append(
        f"run {models[0].version} {kw['host']}:{kw['port']}"))
    assert model.model_dir is not None
    assert p.main(["--model_dir", str(model.model_dir), "--port", "1234"]) == 0
    assert calls == ["freeze", f"run {model.version} 127.0.0.1:1234"]


def test_a_downloaded_folder_with_edited_metadata_is_refused(tmp_path: Path):
    # Regression: editing metadata.json (schema bounds, metrics, version) passed and the
    # predictor served the model under the altered schema.
    from driftloop.data.storage import LocalStore
    from driftloop.errors import IntegrityError
    from driftloop.models.registry import Registry

    schema = _schema("edited", text=False)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(60)], "n": rng.normal(size=60),
                          "k": rng.integers(0, 5, 60), "c": rng.choice(["a", "b"], 60),
                          "label": rng.choice(["x", "y"], 60)})
    result = train_model(frame, schema, TrainConfig(max_iter=5), model_name="edited",
                         version="v1")
    save_model_artifact(result, tmp_path / "art")
    registry = Registry(LocalStore(tmp_path / "store", create=True), "edited")
    registry.register(tmp_path / "art")
    folder = registry.download("v1", tmp_path / "copy")
    assert load_from_folder(folder).metadata["version"] == "v1"
    meta = json.loads((folder / "metadata.json").read_text())
    meta["schema"]["columns"][0]["max"] = 1e9
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="metadata"):
        load_from_folder(folder)


def test_check_value_mirrors_ingest_for_booleans_and_allowed_infinities():
    flag = schema_from_dict({"columns": [
        {"name": "b", "kind": "categorical", "dtype": "bool", "allowed": [True, False]},
        {"name": "x", "kind": "numeric", "allow_infinite": True},
        {"name": "y", "kind": "numeric"}]})
    b, x, y = flag.columns
    assert check_value(b, True) == ("true", None)
    assert check_value(b, "FALSE") == ("false", None)
    assert check_value(b, 1)[1] == "expected a boolean, got number 1"
    assert check_value(x, float("inf")) == (float("inf"), None)
    assert check_value(y, float("inf"))[1] == "expected a finite number, got inf"


def test_a_large_batch_predicts_within_the_serving_thread_budget(registered, monkeypatch):
    import contextlib

    from driftloop.serving import predictor as p

    entered: list[str] = []

    @contextlib.contextmanager
    def recording(purpose: str):
        entered.append(purpose)
        yield 1

    monkeypatch.setattr(p, "thread_limits", recording)
    model = p.DriftloopModel("sample", store_uri=str(registered.store_root),
                             version=registered.version)
    model.load()
    rows = pd.read_parquet(registered.store_root / "reference/sample/seed.parquet")
    columns = {c: rows[c].tolist() for c in ("x0", "x1", "segment")}
    small = {c: v[:10] for c, v in columns.items()}
    model.predict_frame(model.build_frame(small))
    assert entered == []  # a few rows: one OpenMP thread, no pool-wide limit
    big = {c: v[:p.SINGLE_THREAD_BELOW] for c, v in columns.items()}
    model.predict_frame(model.build_frame(big))
    assert entered == ["serve"]
