"""V2 model metadata: a client discovers the predictor's tensors and infers with nothing else.

``GET /v2/models/NAME`` used to list no inputs and no outputs (kserve's base ``Model``
returns ``[]``). The metadata is read with kserve v0.20.0's own ``ModelMetadataResponse``
(``protocol/rest/v2_datamodels.py``), and the requests are built from it alone with
kserve's ``InferInput`` / ``InferRequest`` and sent by its ``InferenceRESTClient`` (binary
tensors) and as plain JSON, as a generic V2 client (Triton's, kserve's) would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from driftloop.config import TrainConfig
from driftloop.data.schema import schema_from_dict
from driftloop.models.train import save_model_artifact, train_model
from driftloop.serving import clean_argv
from driftloop.serving.predictor import DriftloopModel
from driftloop.serving.server import RunningServer, serve

with clean_argv():
    from kserve.inference_client import InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse
    from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse

NAME = "every-dtype"
LABELS = ["x", "y", "z"]
COLUMNS = [
    {"name": "f", "kind": "numeric", "dtype": "float"},
    {"name": "i", "kind": "numeric", "dtype": "int", "required": False},
    {"name": "s", "kind": "categorical", "dtype": "string", "allowed": ["a", "b", "c"]},
    {"name": "ci", "kind": "categorical", "dtype": "int"},
    {"name": "flag", "kind": "categorical", "dtype": "bool"},
    {"name": "t", "kind": "text", "dtype": "string"},
]
#: What the metadata must say for COLUMNS (the V2 datatypes of predictor_inputs).
EXPECTED_INPUTS = [
    {"name": "f", "datatype": "FP64", "shape": [-1]},
    {"name": "i", "datatype": "INT64", "shape": [-1]},
    {"name": "s", "datatype": "BYTES", "shape": [-1]},
    {"name": "ci", "datatype": "INT64", "shape": [-1]},
    {"name": "flag", "datatype": "BOOL", "shape": [-1]},
    {"name": "t", "datatype": "BYTES", "shape": [-1]},
]
EXPECTED_OUTPUTS = [
    {"name": "class", "datatype": "BYTES", "shape": [-1]},
    {"name": "probabilities", "datatype": "FP64", "shape": [-1, len(LABELS)]},
]
#: Values per column a client would send (its own data), by column name.
VALUES: dict[str, list[Any]] = {
    "f": [0.5, -1.25, 2.0], "i": [3, 0, 7], "s": ["a", "c", "b"], "ci": [1, 2, 1],
    "flag": [True, False, True], "t": ["red fast x", "slow blue", "green"],
}
#: numpy dtypes of the V2 datatypes (kserve's utils/numpy_codec.py to_np_dtype).
NUMPY = {"FP64": np.float64, "INT64": np.int64, "BOOL": np.bool_, "BYTES": np.object_}


def _training_rows(n: int, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = rng.choice(LABELS, n)
    words = np.asarray(["red", "green", "blue", "fast", "slow"])
    return pd.DataFrame({
        "f": rng.normal(size=n) + (label == "x"),
        "i": rng.integers(0, 9, n).astype(float),
        "s": rng.choice(["a", "b", "c"], n),
        "ci": rng.integers(1, 3, n),
        "flag": rng.random(n) < 0.5,
        "t": [" ".join(rng.choice(words, 2)) + f" {lab}" for lab in label],
        "label": label,
        "id": [f"r-{k}" for k in range(n)],
    })


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    schema = schema_from_dict({"name": NAME, "labels": LABELS, "columns": COLUMNS})
    result = train_model(_training_rows(240), schema, TrainConfig(max_iter=30, seed=3),
                         model_name=NAME, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    folder = save_model_artifact(result, tmp_path_factory.mktemp(NAME) / "model")
    with serve([DriftloopModel(NAME, model_dir=Path(folder))]) as running:
        yield running


def _metadata(server: RunningServer) -> ModelMetadataResponse:
    answer = httpx.get(f"{server.url}/v2/models/{NAME}", timeout=10)
    assert answer.status_code == 200, answer.text
    return ModelMetadataResponse.model_validate(answer.json())


def test_metadata_lists_one_input_per_feature_and_the_outputs(server):
    metadata = _metadata(server)
    assert metadata.name == NAME
    assert [t.model_dump() for t in metadata.inputs] == EXPECTED_INPUTS
    assert [t.model_dump() for t in metadata.outputs] == EXPECTED_OUTPUTS


def _request_from_metadata(metadata: ModelMetadataResponse, *, binary: bool) -> InferRequest:
    """What a generic V2 client builds: one tensor per listed input, -1 set to the rows."""
    inputs = []
    for tensor in metadata.inputs:
        values = VALUES[tensor.name]
        shape = [len(values) if d == -1 else d for d in tensor.shape]
        infer_input = InferInput(tensor.name, shape, tensor.datatype)
        array = np.array([v.encode() if isinstance(v, str) else v for v in values],
                         dtype=NUMPY[tensor.datatype])
        infer_input.set_data_from_numpy(array, binary_data=binary)
        inputs.append(infer_input)
    return InferRequest(NAME, inputs, request_id="from-metadata")


def _check_outputs(response: InferResponse, metadata: ModelMetadataResponse, n: int) -> None:
    got = [(o.name, o.datatype, o.shape) for o in response.outputs]
    listed = [(t.name, t.datatype, [n if d == -1 else d for d in t.shape])
              for t in metadata.outputs]
    assert got == listed
    by_name = {o.name: o for o in response.outputs}
    classes = by_name["class"].as_numpy().reshape(-1).tolist()
    assert {c.decode() if isinstance(c, bytes) else c for c in classes} <= set(LABELS)
    probabilities = by_name["probabilities"].as_numpy().reshape(n, len(LABELS))
    assert np.allclose(probabilities.sum(axis=1), 1.0)


def test_kserves_rest_client_infers_with_binary_tensors_from_the_metadata(server):
    metadata = _metadata(server)
    request = _request_from_metadata(metadata, binary=True)
    body, json_length = request.to_rest()
    assert isinstance(body, bytes) and json_length  # really the binary extension

    async def infer() -> Any:
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=10))
        try:
            return await client.infer(server.url, _request_from_metadata(metadata, binary=True),
                                      model_name=NAME)
        finally:
            await client.close()

    response = asyncio.run(infer())
    assert isinstance(response, InferResponse)
    _check_outputs(response, metadata, len(VALUES["f"]))


def test_a_json_request_built_from_the_metadata_is_served(server):
    metadata = _metadata(server)
    body, _ = _request_from_metadata(metadata, binary=False).to_rest()
    answer = httpx.post(f"{server.url}/v2/models/{NAME}/infer", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    _check_outputs(InferResponse.from_rest(answer.json()), metadata, len(VALUES["f"]))


def test_metadata_is_empty_before_load():
    model = DriftloopModel("unloaded", model_dir="/nonexistent")
    assert model.get_input_types() == [] and model.get_output_types() == []
