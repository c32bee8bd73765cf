"""The KServe predictor over real HTTP on 127.0.0.1: V1, V2, input errors, metrics, tampering."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from driftloop.demo.sample import make_rows
from driftloop.errors import IntegrityError
from driftloop.models.train import predict_frame
from driftloop.serving.predictor import DriftloopModel
from driftloop.serving.server import RunningServer, serve

MODEL = "sample"
V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"


def _rows(n: int, seed: int = 11) -> list[dict]:
    frame = make_rows(n, np.random.default_rng(seed), drifted=False)
    return frame[["x0", "x1", "segment"]].to_dict(orient="records")


def _expected(registered, rows):
    labels, proba = predict_frame(registered.model, pd.DataFrame(rows), registered.schema)
    return labels, proba


def _v2_body(rows: list[dict], **override) -> dict:
    n = len(rows)
    inputs = [
        {"name": "x0", "shape": [n], "datatype": "FP64", "data": [r["x0"] for r in rows]},
        {"name": "x1", "shape": [n, 1], "datatype": "FP64", "data": [[r["x1"]] for r in rows]},
        {"name": "segment", "shape": [n], "datatype": "BYTES",
         "data": [r["segment"] for r in rows]},
    ]
    for item in inputs:
        item.update(override.get(item["name"], {}))
    return {"id": "req-1", "inputs": inputs}


def _error(response: httpx.Response) -> str:
    body = response.json()
    return json.dumps(body)


# -- round trips ------------------------------------------------------------------------


def test_v1_round_trip_matches_predict_proba_in_process(client, registered):
    rows = _rows(20)
    instances = [dict(r, id=f"r-{i}") for i, r in enumerate(rows)]
    response = client.post(V1, json={"instances": instances})
    assert response.status_code == 200, response.text
    body = response.json()
    labels, proba = _expected(registered, rows)
    classes = [str(c) for c in registered.model.classes_]
    assert body["model_version"] == registered.version
    assert len(body["predictions"]) == 20
    for i, pred in enumerate(body["predictions"]):
        assert pred["class"] == labels[i]
        assert pred["id"] == f"r-{i}"
        assert pred["model_version"] == registered.version
        assert list(pred["probabilities"]) == classes
        assert np.allclose([pred["probabilities"][c] for c in classes], proba[i], atol=1e-12)


def test_v1_accepts_ints_and_ignores_unknown_keys(client, registered):
    response = client.post(V1, json={"instances": [
        {"x0": 1, "x1": -2, "segment": "east", "timestamp": "ignored", "extra": [1, 2]},
    ]})
    assert response.status_code == 200, response.text
    pred = response.json()["predictions"][0]
    assert "id" not in pred
    labels, _ = _expected(registered, [{"x0": 1.0, "x1": -2.0, "segment": "east"}])
    assert pred["class"] == labels[0]


def test_v2_round_trip_matches_predict_proba_in_process(client, registered):
    rows = _rows(7, seed=3)
    response = client.post(V2, json=_v2_body(rows))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "req-1"
    assert body["model_name"] == MODEL and body["model_version"] == registered.version
    outputs = {o["name"]: o for o in body["outputs"]}
    labels, proba = _expected(registered, rows)
    assert outputs["class"]["datatype"] == "BYTES" and outputs["class"]["shape"] == [7]
    assert outputs["class"]["data"] == list(labels)
    probs = outputs["probabilities"]
    assert probs["datatype"] == "FP64" and probs["shape"] == [7, 2]
    assert json.loads(probs["parameters"]["classes"]) == [str(c) for c in
                                                          registered.model.classes_]
    assert np.allclose(np.asarray(probs["data"]).reshape(7, 2), proba, atol=1e-12)


def test_v2_without_request_id_still_answers_with_an_id(client):
    body = _v2_body(_rows(1))
    del body["id"]
    body["inputs"].append({"name": "id", "shape": [1], "datatype": "BYTES", "data": ["abc"]})
    response = client.post(V2, json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["id"]
    assert {o["name"]: o for o in out["outputs"]}["id"]["data"] == ["abc"]


def test_kserve_health_routes(client):
    assert client.get(f"/v1/models/{MODEL}").json() == {"name": MODEL, "ready": True}
    assert client.get(f"/v2/models/{MODEL}/ready").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


# -- input errors: 4xx naming the field, never 500 ---------------------------------------


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"instances": [{"x1": 0.1, "segment": "north"}]}, "instances[0].x0: required"),
        ({"instances": [{"x0": "abc", "x1": 0.1, "segment": "north"}]},
         "instances[0].x0: expected a number, got string 'abc'"),
        ({"instances": [{"x0": True, "x1": 0.1, "segment": "north"}]},
         "instances[0].x0: expected a number, got boolean"),
        ({"instances": [{"x0": 0.1, "x1": 0.1, "segment": "mars"}]},
         "instances[0].segment: 'mars' is not one of the allowed values"),
        ({"instances": [{"x0": 0.1, "x1": 999, "segment": "north"}]},
         "instances[0].x1: 999 is above max 50"),
        ({"instances": [{"x0": 0.1, "x1": 0.1, "segment": ["north"]}]},
         "instances[0].segment: expected a string, got array"),
        ({"instances": [[0.1, 0.1, "north"]]}, "instances[0]: expected an object"),
        ({"instances": []}, "instances: expected a non-empty list"),
        ({"instances": {"x0": 1}}, "instances"),
        ({"rows": []}, "instances: required field missing"),
        ({"instances": [{"x0": 0.1, "x1": 0.1, "segment": "north", "id": {"a": 1}}]},
         "instances[0].id: expected a non-empty string id"),
    ],
)
def test_v1_bad_input_is_a_400_naming_the_field(client, payload, needle):
    response = client.post(V1, json=payload)
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]


def test_v1_lists_every_broken_row(client):
    rows = [{"x0": "a", "x1": 0.0, "segment": "north"}, {"x0": 0.0, "x1": 0.0, "segment": "x"}]
    error = client.post(V1, json={"instances": rows}).json()["error"]
    assert "instances[0].x0" in error and "instances[1].segment" in error


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b"{not json", "application/json"), (b"x0=1", "text/plain"), (b"", "application/json"),
     (b"[1, 2]", "application/json"), (b'"text"', "application/json")],
)
def test_v1_non_json_or_non_object_body_is_a_400(client, content, content_type):
    response = client.post(V1, content=content, headers={"content-type": content_type})
    assert response.status_code == 400, response.text
    assert response.json()["error"]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"x0": {"shape": [3]}}, "inputs[x0]: shape [3] needs 3 values, data has 2"),
        ({"x1": {"shape": [2, 2]}}, "inputs[x1].shape: expected [n] or [n, 1]"),
        ({"segment": {"shape": [1]}, "x0": {}}, "inputs[segment]"),
        ({"x0": {"datatype": "BYTES", "data": ["1", "2"]}},
         "inputs[x0].datatype: BYTES does not fit a numeric column; send FP64"),
        ({"x0": {"data": ["a", "b"]}}, "inputs[x0][0]: expected a number, got string 'a'"),
        ({"segment": {"datatype": "FP64", "data": [1.5, 2.5]}},
         "inputs[segment].datatype: FP64 does not fit a categorical column; send BYTES"),
        ({"segment": {"data": ["north", "pluto"]}}, "inputs[segment][1]: 'pluto'"),
        ({"x0": {"name": "x9"}}, "inputs[x9]: unknown input"),
    ],
)
def test_v2_bad_input_is_a_400_naming_the_tensor(client, override, needle):
    response = client.post(V2, json=_v2_body(_rows(2), **override))
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]


def test_v2_missing_feature_and_malformed_bodies_are_4xx(client):
    body = _v2_body(_rows(2))
    body["inputs"] = [i for i in body["inputs"] if i["name"] != "x1"]
    response = client.post(V2, json=body)
    assert response.status_code == 400
    assert "inputs[x1]: required feature missing" in response.json()["error"]
    for content in (b"{garbage", b'{"inputs": "x"}', b"[]", b'{"inputs": [{"name": "x0"}]}'):
        response = client.post(V2, content=content, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, (content, response.status_code, response.text)


# -- bodies that used to be 500s: over one keep-alive connection ------------------------

BIG = "1" + "0" * 399  # a 400-digit integer: valid JSON, beyond float64


@pytest.fixture()
def conn(predictor: RunningServer) -> Iterator[http.client.HTTPConnection]:
    """One keep-alive connection to the predictor (the timeout bounds each exchange)."""
    connection = http.client.HTTPConnection("127.0.0.1", predictor.port, timeout=10)
    yield connection
    connection.close()


def _bad_then_good(conn: http.client.HTTPConnection, path: str, body: bytes,
                   headers: dict[str, str]) -> tuple[int, str]:
    """Send ``body``, then a good request on the same connection; return the first answer."""
    conn.request("POST", path, body=body, headers=headers)
    answer = conn.getresponse()
    status, error = answer.status, json.loads(answer.read())["error"]
    sock = conn.sock
    conn.request("POST", V2, body=json.dumps(_v2_body(_rows(2))).encode(),
                 headers={"content-type": "application/json"})
    good = conn.getresponse()
    assert good.status == 200, good.read()
    assert json.loads(good.read())["outputs"][0]["name"] == "class"
    assert conn.sock is sock  # the refusal kept the connection alive
    return status, error


def _with_big(datatype: str, column: str = "x0") -> bytes:
    text = json.dumps(_v2_body(_rows(2), **{column: {"datatype": datatype,
                                                     "data": [0.5, "BIG"]}}))
    return text.replace('"BIG"', BIG).encode()


@pytest.mark.parametrize("datatype", ["FP64", "INT64"])
def test_v2_integer_beyond_float64_is_a_400_naming_the_tensor(conn, datatype):
    status, error = _bad_then_good(conn, V2, _with_big(datatype),
                                   {"content-type": "application/json"})
    assert status == 400
    assert ("inputs[x0][1]: expected a number within the float64 range, got an integer of "
            "400 digits") in error


def _binary(x0: bytes, x0_shape: list[int], size: int | None = None, *,
            datatype: str = "FP64") -> tuple[bytes, dict[str, str]]:
    """A V2 binary-extension request: x0 as raw bytes after the JSON header."""
    n = x0_shape[0]
    rows = _rows(n)
    header = {"inputs": [
        {"name": "x0", "shape": x0_shape, "datatype": datatype,
         "parameters": {"binary_data_size": len(x0) if size is None else size}},
        {"name": "x1", "shape": [n], "datatype": "FP64", "data": [r["x1"] for r in rows]},
        {"name": "segment", "shape": [n], "datatype": "BYTES",
         "data": [r["segment"] for r in rows]},
    ]}
    head = json.dumps(header).encode()
    return head + x0, {"content-type": "application/octet-stream",
                       "inference-header-content-length": str(len(head))}


@pytest.mark.parametrize(
    ("x0", "shape", "size", "datatype", "needle"),
    [
        (struct.pack("<d", 1.0), [2], None, "FP64",
         "inputs[x0]: shape [2] of FP64 needs 16 bytes, the binary data has 8"),
        (struct.pack("<d", 1.0), [2], 16, "FP64",
         "inputs[x0]: binary_data_size is 16 bytes, but only 8 bytes of the body are left"),
        (struct.pack("<q", 1), [2], None, "INT64",
         "inputs[x0]: shape [2] of INT64 needs 16 bytes, the binary data has 8"),
        (struct.pack("<I", 9) + b"ab", [1], None, "BYTES",
         "inputs[x0]: shape [1] needs 1 BYTES elements, the binary data has malformed"),
        (struct.pack("<d", 1.0), [1], -1, "FP64",
         "inputs[x0].parameters.binary_data_size: expected a non-negative integer"),
    ],
    ids=["fp64-short", "size-past-the-body", "int64-short", "bytes-malformed", "negative-size"],
)
def test_v2_binary_tensor_not_matching_its_shape_is_a_400(conn, x0, shape, size, datatype,
                                                          needle):
    body, headers = _binary(x0, shape, size, datatype=datatype)
    status, error = _bad_then_good(conn, V2, body, headers)
    assert status == 400 and needle in error


def test_v2_binary_tensor_that_fits_is_served(client, registered):
    rows = _rows(2)
    body, headers = _binary(struct.pack("<2d", *(r["x0"] for r in rows)), [2])
    answer = client.post(V2, content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    _, proba = _expected(registered, rows)
    probabilities = answer.json()["outputs"][1]["data"]
    assert np.allclose(probabilities, np.asarray(proba).ravel())


def test_v2_lone_surrogate_id_is_a_400_not_an_unencodable_response(conn):
    body = _v2_body(_rows(2))
    body["inputs"].append({"name": "id", "shape": [2], "datatype": "BYTES",
                           "data": ["ok", "\ud800"]})
    content = json.dumps(body).encode()  # ensure_ascii writes the surrogate as \ud800
    status, error = _bad_then_good(conn, V2, content, {"content-type": "application/json"})
    assert status == 400 and "inputs[id][1]: not valid Unicode: a lone surrogate" in error


def test_unknown_model_is_a_404(client):
    response = client.post("/v1/models/nope:predict", json={"instances": [{}]})
    assert response.status_code == 404


# -- metrics ----------------------------------------------------------------------------


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_confidence_and_classes_by_version(client, registered):
    before = client.get("/metrics").text
    version = registered.version
    rows = _rows(12, seed=5)
    assert client.post(V1, json={"instances": rows}).status_code == 200
    assert client.post(V2, json=_v2_body(rows[:3])).status_code == 200
    assert client.post(V1, json={"instances": [{"x0": "bad"}]}).status_code == 400
    after = client.get("/metrics")
    assert after.status_code == 200
    text = after.text
    # every answer per version and code, the 400 too (the canary's error rate source)
    served = "driftloop_serving_requests_total"
    for code, n in (("200", 2), ("400", 1)):
        assert (_metric(text, served, model_version=version, code=code)
                - _metric(before, served, model_version=version, code=code)) == n
    count = "driftloop_prediction_confidence_count"
    assert (_metric(text, count, model_version=version)
            - _metric(before, count, model_version=version)) == 15
    labels, _ = _expected(registered, rows + rows[:3])
    for cls in set(labels):
        delta = (_metric(text, "driftloop_predictions_total", model_version=version,
                         **{"class": cls})
                 - _metric(before, "driftloop_predictions_total", model_version=version,
                           **{"class": cls}))
        assert delta == list(labels).count(cls)
    assert 'le="0.9"' in text and f'model_version="{version}"' in text
    assert _metric(text, "driftloop_invalid_requests_total", model_version=version) >= 1
    # kserve's own latency histograms are on the same route.
    assert _metric(text, "request_predict_seconds_count", model_name=MODEL) >= 2


def test_metrics_survive_a_second_server_in_the_same_process(registered, client):
    model = DriftloopModel("second", model_dir=registered.folder)
    with serve([model]) as other, httpx.Client(base_url=other.url) as c:
        assert c.post("/v1/models/second:predict",
                      json={"instances": _rows(2)}).status_code == 200
        assert "driftloop_prediction_confidence" in c.get("/metrics").text
    assert not other.running


# -- loading ----------------------------------------------------------------------------


def test_local_folder_and_registry_give_the_same_model(registered):
    a = DriftloopModel("a", model_dir=registered.folder)
    b = DriftloopModel("b", store_uri=str(registered.store_root))  # champion unset -> error
    a.load()
    assert a.version == registered.version and a.ready
    with pytest.raises(Exception, match="alias 'champion' is not set"):
        b.load()


def test_a_tampered_model_file_refuses_to_load(registered, tmp_path: Path):
    folder = tmp_path / "model"
    shutil.copytree(registered.folder, folder)
    with (folder / "model.joblib").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(IntegrityError, match="sha256"):
        DriftloopModel(MODEL, model_dir=folder).load()
    with pytest.raises(IntegrityError):
        serve([DriftloopModel(MODEL, model_dir=folder)])
    store = tmp_path / "store"
    shutil.copytree(registered.store_root, store)
    stored = store / f"models/{MODEL}/{registered.version}/model.joblib"
    stored.write_bytes(stored.read_bytes()[:-1] + b"x")
    with pytest.raises(IntegrityError, match="refusing to use it"):
        DriftloopModel(MODEL, store_uri=str(store), version=registered.version).load()


def test_server_binds_loopback_and_stops(registered):
    with serve([DriftloopModel(MODEL, model_dir=registered.folder)]) as srv:
        assert srv.host == "127.0.0.1" and srv.url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{srv.url}/v2/health/live").status_code == 200
    assert not srv.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{srv.url}/v2/health/live", timeout=1.0)


def test_importing_the_predictor_ignores_our_argv(registered):
    # "--model" would abbreviate kserve's --model_name and "--http_port" is kserve's own flag.
    code = (
        "import sys; sys.argv = ['x', '--model', 'evil', '--http_port', '1'];"
        "import driftloop.serving.predictor;"
        "from kserve.model_server import args;"
        "print(args.model_name, args.http_port)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["model", "8080"]


def test_predict_in_process_agrees_with_the_server(registered, predictor: RunningServer):
    model = DriftloopModel("direct", model_dir=registered.folder)
    model.load()
    rows = _rows(5, seed=9)
    direct = model.predict({"instances": rows})
    served = httpx.post(f"{predictor.url}{V1}", json={"instances": rows}).json()
    assert [p["class"] for p in direct["predictions"]] == [p["class"] for p in
                                                            served["predictions"]]


def test_container_entry_point_serves_and_stops_on_sigterm(registered, tmp_path: Path):
    import signal
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "driftloop.serving.predictor", "--model_dir",
         str(registered.folder), "--model_name", MODEL, "--host", "127.0.0.1",
         "--http_port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "predictor did not start"
            time.sleep(0.05)
        answer = httpx.post(f"{url}{V1}", json={"instances": _rows(1)})
        assert answer.status_code == 200
        assert answer.json()["model_version"] == registered.version
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # A tampered model: one line on stderr and the integrity exit code, nothing served.
    folder = tmp_path / "bad"
    shutil.copytree(registered.folder, folder)
    (folder / "model.joblib").write_bytes(b"not the model")
    bad = subprocess.run(
        [sys.executable, "-m", "driftloop.serving.predictor", "--model_dir", str(folder),
         "--http_port", str(port)],
        capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 3
    assert "sha256" in bad.stderr and "Traceback" not in bad.stderr


def test_metadata_without_a_schema_refuses_to_load(registered, tmp_path: Path):
    from driftloop.errors import StoreError

    folder = tmp_path / "noschema"
    shutil.copytree(registered.folder, folder)
    meta = json.loads((folder / "metadata.json").read_text())
    del meta["schema"]
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="no 'schema'"):
        DriftloopModel(MODEL, model_dir=folder).load()
