"""The local rollout backend (YAML + controller stand-in) and the local traffic-split gateway.

The gateway runs two real registered models behind real kserve servers on 127.0.0.1 and
splits requests deterministically, so the tests assert exact counts.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from driftloop.config import TrainConfig
from driftloop.data.storage import LocalStore, Store
from driftloop.demo.sample import make_rows, sample_schema, write_sample_store
from driftloop.models.registry import Registry
from driftloop.models.train import save_model_artifact, train_model
from driftloop.rollout import (
    PREVIOUS_URI_ANNOTATION,
    ConflictError,
    InferenceServiceNotFound,
    RolloutRejected,
    UnsupportedDeploymentMode,
    build_inference_service,
    version_storage_uri,
)
from driftloop.rollout.errors import AdmissionDenied, RolloutTimeout
from driftloop.rollout.gateway import LocalGateway
from driftloop.rollout.inference_service import TEMPLATE_GENERATION_ANNOTATION
from driftloop.rollout.local import LocalRolloutBackend
from driftloop.rollout.reconciler import reconcile

MODEL = "sample"
NAME = "sample"
NS = "ml"
R1, R2, R3 = (f"{NAME}-predictor-{i:05d}" for i in (1, 2, 3))
#: kserve 0.20 answers with ORJSONResponse, which FastAPI deprecates on every request.
pytestmark = pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning")


@dataclass(frozen=True)
class Versions:
    """Two registered versions of the sample model."""

    registry: Registry
    a: str
    b: str
    uri_a: str
    uri_b: str
    folder_a: Path


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    root = tmp_path_factory.mktemp("rollout") / "store"
    write_sample_store(root, days=1, rows_per_day=50, reference_rows=600, seed=7)
    reference = pd.read_parquet(root / f"reference/{MODEL}/seed.parquet")
    registry = Registry(LocalStore(root), MODEL)
    folders = {}
    for version, config in (("v-a", TrainConfig(max_iter=40, seed=7)),
                            ("v-b", TrainConfig(max_iter=5, seed=3))):
        result = train_model(reference, sample_schema(), config, model_name=MODEL,
                             version=version, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        folders[version] = save_model_artifact(result, root.parent / version)
        registry.register(folders[version])
    return Versions(registry, "v-a", "v-b", version_storage_uri(registry, "v-a"),
                    version_storage_uri(registry, "v-b"), folders["v-a"])


@pytest.fixture
def backend(tmp_path: Path) -> LocalRolloutBackend:
    return LocalRolloutBackend(tmp_path / "state", NAME, NS)


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    frame = make_rows(50, np.random.default_rng(11), drifted=False)
    return frame[["x0", "x1", "segment"]].to_dict(orient="records")


def _on_disk(backend: LocalRolloutBackend) -> dict[str, Any]:
    return yaml.safe_load(backend.path.read_text())


def _count(client: httpx.Client, rows: list[dict[str, Any]], n: int = 100) -> Counter[str]:
    served: Counter[str] = Counter()
    for i in range(n):
        response = client.post(f"/v1/models/{MODEL}:predict",
                               json={"instances": [rows[i % len(rows)]]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["predictions"][0]["model_version"] == body["model_version"]
        served[body["model_version"]] += 1
    return served


# -- the backend on its YAML file ----------------------------------------------------------


def test_the_canary_sequence_on_the_yaml_file(backend):
    v1, v2 = "/models/sample/v1", "/models/sample/v2"
    with pytest.raises(InferenceServiceNotFound, match=f"{NS}/{NAME} not found"):
        backend.get()
    backend.ensure(v1)
    doc = _on_disk(backend)
    assert backend.path == backend.store.root / f"inferenceservices/{NS}/{NAME}.yaml"
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    assert doc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert doc["spec"]["predictor"]["model"]["storageUri"] == v1
    assert doc["status"]["components"]["predictor"]["traffic"] == [
        {"revisionName": R1, "latestRevision": True, "percent": 100}]

    state = backend.set_canary(v2, 10)
    doc = _on_disk(backend)
    assert doc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert doc["metadata"]["annotations"][PREVIOUS_URI_ANNOTATION] == v1
    assert state.traffic_by_revision() == {R2: 10, R1: 90}
    assert (state.storage_uri, state.canary_storage_uri) == (v1, v2)
    assert [(r["name"], r["storageUri"]) for r in backend.revisions()] == [(R1, v1), (R2, v2)]

    assert backend.set_traffic(50).traffic_by_revision() == {R2: 50, R1: 50}
    promoted = backend.set_traffic(100)
    assert "canaryTrafficPercent" not in _on_disk(backend)["spec"]["predictor"]
    assert promoted.traffic_by_revision() == {R2: 100}
    assert (promoted.latest_rolled_out_revision, promoted.previous_rolled_out_revision) == (R2, R1)

    version = _on_disk(backend)["metadata"]["resourceVersion"]
    backend.set_traffic(100)  # re-applied: nothing written
    assert _on_disk(backend)["metadata"]["resourceVersion"] == version

    backend.applied.clear()
    rolled_back = backend.rollback()
    assert [a.patch for a in backend.applied] == [
        {"spec": {"predictor": {"canaryTrafficPercent": 0}}},
        {"metadata": {"annotations": {TEMPLATE_GENERATION_ANNOTATION: "6"}},
         "spec": {"predictor": {"model": {"storageUri": v1}}}},
        {"spec": {"predictor": {"canaryTrafficPercent": None}}},
    ]
    assert rolled_back.storage_uri == v1 and rolled_back.traffic_by_revision() == {R3: 100}
    assert backend.revisions()[-1]["storageUri"] == v1
    assert _on_disk(backend)["metadata"]["generation"] == 7
    assert backend.rollback() == rolled_back and len(backend.applied) == 3


def test_a_concurrent_writer_is_detected_and_the_step_recomputed(tmp_path):
    ours = LocalRolloutBackend(tmp_path, NAME, NS)
    theirs = LocalRolloutBackend(tmp_path, NAME, NS)
    ours.ensure("/m/v1")
    real_read = ours._read_object
    reads = []

    def read_then_race() -> dict[str, Any]:
        obj = real_read()
        reads.append(obj["metadata"]["resourceVersion"])
        if len(reads) == 1:  # another writer changes the file between our read and write
            theirs._patch_object({"metadata": {"labels": {"team": "risk"}}})
        return obj

    ours._read_object = read_then_race  # type: ignore[method-assign]
    state = ours.set_canary("/m/v2", 10)
    # read, conflict, read again, then the read of the wait for the step to take effect
    assert len(reads) == 3 and reads[0] != reads[1]
    doc = _on_disk(ours)
    assert doc["metadata"]["labels"]["team"] == "risk"
    assert doc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert state.canary_storage_uri == "/m/v2"
    with pytest.raises(ConflictError, match="has been modified"):
        theirs._patch_object({"metadata": {"resourceVersion": "1"}, "spec": {}})


def test_invalid_changes_and_raw_deployment_leave_the_file_alone(backend, tmp_path):
    backend.ensure("/m/v1")
    before = backend.path.read_bytes()
    with pytest.raises(RolloutRejected, match="canaryTrafficPercent in body must be of type "
                                              "integer"):  # the CRD schema: 422
        backend._patch_object({"spec": {"predictor": {"canaryTrafficPercent": "10"}}})
    with pytest.raises(AdmissionDenied, match="exactly one of"):  # KServe's webhook: 403
        backend._patch_object({"spec": {"predictor": {"sklearn": {"storageUri": "/m/v2"}}}})
    assert backend.path.read_bytes() == before

    raw = LocalRolloutBackend(tmp_path / "raw", NAME, NS)
    obj = build_inference_service(NAME, NS, "/m/v1")
    obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    raw._create_object(obj)
    before = raw.path.read_bytes()
    assert "traffic" not in _on_disk(raw)["status"]["components"]["predictor"]
    with pytest.raises(UnsupportedDeploymentMode, match="ignores canaryTrafficPercent"):
        raw.set_canary("/m/v2", 10)
    assert raw.path.read_bytes() == before


def test_an_unsupported_storage_uri_is_accepted_and_never_takes_effect(backend):
    # KServe 0.20 checks the scheme in its controller, not at admission: the write is
    # stored, no revision is made, and the step says what the controller refused.
    backend.ensure("/m/v1")
    with pytest.raises(RolloutTimeout) as caught:
        backend.set_canary("ftp://x/m", 10)
    message = str(caught.value)
    assert "a new revision for the changed spec" in message
    assert "StorageURI not supported" in message and "StorageUri [ftp://x/m]" in message
    assert _on_disk(backend)["spec"]["predictor"]["model"]["storageUri"] == "ftp://x/m"
    assert [r["name"] for r in backend.revisions()] == [R1]
    state = backend.rollback()  # what the rollout policy does next
    assert state.storage_uri == "/m/v1" and state.settled
    assert state.traffic_by_revision() == {R2: 100}


def test_reconcile_tags_the_latest_revision_only_with_tag_routing():
    obj = build_inference_service(NAME, NS, "/m/v1")
    obj["metadata"].update(generation=1, resourceVersion="1")
    first, revisions = reconcile(obj, [])
    canary = {**first, "spec": {"predictor": {**first["spec"]["predictor"],
                                              "canaryTrafficPercent": 10,
                                              "model": {**first["spec"]["predictor"]["model"],
                                                        "storageUri": "/m/v2"}}}}
    canary["metadata"]["annotations"]["serving.kserve.io/enable-tag-routing"] = "true"
    second, revisions = reconcile(canary, revisions)
    tags = {t["revisionName"]: t.get("tag") for t in
            second["status"]["components"]["predictor"]["traffic"]}
    assert tags == {R2: "latest", R1: "prev"}
    assert len(revisions) == 2


# -- the gateway: a stand-in for Knative's traffic split --------------------------------------


def test_the_gateway_follows_each_rollout_step(backend, versions, rows):
    backend.ensure(versions.uri_a)
    with LocalGateway(backend, model_name=MODEL) as gateway, \
            httpx.Client(base_url=gateway.url, timeout=10.0) as client:
        assert _count(client, rows) == {"v-a": 100}
        backend.set_canary(versions.uri_b, 10)
        assert _count(client, rows, 200) == {"v-a": 180, "v-b": 20}  # deterministic: exactly 10 %
        assert gateway.split() == {R2: 10, R1: 90}
        backend.set_traffic(50)
        assert _count(client, rows) == {"v-a": 50, "v-b": 50}
        backend.set_traffic(100)
        assert _count(client, rows) == {"v-b": 100}
        answer = client.post(f"/v1/models/{MODEL}:predict", json={"instances": rows[:1]})
        assert answer.headers["x-driftloop-revision"] == R2
        backend.rollback()
        assert _count(client, rows) == {"v-a": 100}
        assert gateway.routes() == {R3: versions.uri_a}
        # each model was loaded once, although three revisions served them
        assert gateway.loads == [versions.uri_a, versions.uri_b]


def test_after_a_rollback_mid_canary_all_traffic_goes_to_the_champion(backend, versions, rows):
    backend.ensure(versions.uri_a)
    backend.set_canary(versions.uri_b, 10)
    with LocalGateway(backend, model_name=MODEL) as gateway, \
            httpx.Client(base_url=gateway.url, timeout=10.0) as client:
        assert _count(client, rows, 50) == {"v-a": 45, "v-b": 5}
        backend.set_traffic(0)  # the first step of a rollback, seen by the gateway at once
        assert _count(client, rows, 20) == {"v-a": 20}
        backend.rollback()
        assert _count(client, rows) == {"v-a": 100}
        assert gateway.served[R2] == 5


def test_the_gateway_serves_v2_and_answers_errors_like_kserve(backend, versions, rows):
    with LocalGateway(backend, model_name=MODEL) as gateway, \
            httpx.Client(base_url=gateway.url, timeout=10.0) as client:
        missing = client.post(f"/v1/models/{MODEL}:predict", json={"instances": rows[:1]})
        assert missing.status_code == 503 and "not found" in missing.json()["error"]
        backend.ensure(versions.uri_a)  # appears while the gateway runs
        n = 3
        body = {"id": "req-1", "inputs": [
            {"name": "x0", "shape": [n], "datatype": "FP64", "data": [r["x0"] for r in rows[:n]]},
            {"name": "x1", "shape": [n], "datatype": "FP64", "data": [r["x1"] for r in rows[:n]]},
            {"name": "segment", "shape": [n], "datatype": "BYTES",
             "data": [r["segment"] for r in rows[:n]]},
        ]}
        answer = client.post(f"/v2/models/{MODEL}/infer", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == "v-a" and answer.json()["id"] == "req-1"
        wrong = client.post("/v1/models/other:predict", json={"instances": rows[:1]})
        assert wrong.status_code == 404 and "other" in wrong.json()["error"]
        bad = client.post(f"/v1/models/{MODEL}:predict", json={"instances": [{"x0": "high"}]})
        assert bad.status_code == 400 and "x0" in bad.json()["error"]


def test_the_gateway_copies_a_gs_model_once_like_the_storage_initializer(
        tmp_path, versions, rows, gcs_store: Store):
    registry = Registry(gcs_store, MODEL)
    registry.register(versions.folder_a)
    uri = version_storage_uri(registry, "v-a")
    assert uri.startswith("gs://")
    backend = LocalRolloutBackend(tmp_path / "state", NAME, NS)
    backend.ensure(uri)
    with LocalGateway(backend, model_name=MODEL, cache_dir=tmp_path / "cache") as gateway, \
            httpx.Client(base_url=gateway.url, timeout=10.0) as client:
        assert _count(client, rows, 5) == {"v-a": 5}
        assert gateway.loads == [uri]
        (copied,) = (tmp_path / "cache").iterdir()
        assert sorted(p.name for p in copied.iterdir()) >= ["metadata.json", "model.joblib"]


def test_the_gateway_logs_each_inference_to_the_sink_like_kserves_logger(
        backend, versions, rows, tmp_path):
    from driftloop.serving.server import start_app
    from driftloop.serving.sink import PayloadSink, create_app

    store = LocalStore(tmp_path / "sink-store", create=True)
    moment = dt.datetime(2026, 5, 4, 9, 30, tzinfo=dt.UTC).timestamp()
    sink = PayloadSink(store, clock=lambda: moment)
    server = start_app(create_app(sink))
    backend.ensure(versions.uri_a)
    backend.set_canary(versions.uri_b, 50)
    try:
        with LocalGateway(backend, model_name=MODEL, logger_url=f"{server.url}/",
                          clock=lambda: moment) as gateway, \
                httpx.Client(base_url=gateway.url, timeout=10.0) as client:
            for i in range(4):
                batch = [{"id": f"r{i}-{k}", **rows[k]} for k in range(3)]
                answer = client.post(f"/v1/models/{MODEL}:predict", json={"instances": batch})
                assert answer.status_code == 200, answer.text
            # a failed inference is not logged
            bad = client.post(f"/v1/models/{MODEL}:predict", json={"instances": [{"x0": 1}]})
            assert bad.status_code >= 400
            assert gateway.log_failures == 0
    finally:
        server.stop()
        sink.close()
    lines = [line for key in store.list("requests")
             for line in store.read_text(key).splitlines() if line.strip()]
    records = [yaml.safe_load(line) for line in lines]
    assert sorted(r["id"] for r in records) == sorted(f"r{i}-{k}" for i in range(4)
                                                      for k in range(3))
    assert all(r["logged"] == "pair" and r["timestamp"].startswith("2026-05-04T09:30")
               for r in records)
    # the split is 50/50 and each record carries the version that answered it
    assert Counter(r["model_version"] for r in records) == {"v-a": 6, "v-b": 6}
    assert all(key.startswith("requests/dt=2026-05-04/") for key in store.list("requests"))


def test_a_dead_logger_does_not_fail_the_inference(backend, versions, rows):
    backend.ensure(versions.uri_a)
    with LocalGateway(backend, model_name=MODEL, logger_url="http://127.0.0.1:9/") as gateway, \
            httpx.Client(base_url=gateway.url, timeout=10.0) as client:
        answer = client.post(f"/v1/models/{MODEL}:predict", json={"instances": rows[:1]})
        assert answer.status_code == 200
        assert gateway.log_failures == 2  # the request and the response event


def _log_to(backend: LocalRolloutBackend, answer: Any,
            pairs: list[tuple[bytes, bytes, dict[str, str] | None]]) -> LocalGateway:
    """Send ``pairs`` through the gateway's payload logger to a loopback HTTP server.

    ``answer(handler)`` handles each POST (its headers are in ``handler.headers``) and
    returns whether to answer 200 (False: drop the connection unanswered).
    """
    import asyncio
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            if not answer(self):
                self.close_connection = True
                return
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    gateway = LocalGateway(backend, model_name=MODEL,
                           logger_url=f"http://127.0.0.1:{server.server_address[1]}/")

    async def log_all() -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            gateway._client = client
            for request, response, headers in pairs:
                await gateway._log_pair(request, response, "default", headers)

    try:
        asyncio.run(log_all())
    finally:
        server.shutdown()
        thread.join(timeout=5)
    return gateway


def test_the_payload_logger_sends_an_event_again_after_a_dropped_connection(backend):
    # Under load the sink may close an idle keep-alive connection just as the gateway
    # reuses it: the event was lost (log_failures 1 in the tweets demo). Sent again, the
    # sink stores its id once.
    seen: list[str] = []

    def answer(handler: Any) -> bool:
        seen.append(handler.headers["Ce-Type"])
        return len(seen) > 1  # drop the first one without an answer

    gateway = _log_to(backend, answer, [(b'{"instances": []}', b'{"predictions": []}', None)])
    assert gateway.log_failures == 0
    assert len(seen) == 3 and seen[0] == seen[1]  # the dropped request event came again


def test_the_payload_logger_sends_what_kserve_v0_20s_logger_sends(backend):
    # KServe v0.20.0 pkg/logger/handler.go: Ce-Id is the request's own Ce-Id header, else a
    # new UUID; Ce-Endpoint is empty; both events carry the request's Content-Type.
    seen: list[dict[str, str]] = []

    def answer(handler: Any) -> bool:
        seen.append({k.lower(): v for k, v in handler.headers.items()})
        return True

    _log_to(backend, answer, [(b"{}", b"{}", {"Ce-Id": "client-42",
                                             "Content-Type": "application/x"}),
                              (b"{}", b"{}", {})])
    assert [h["ce-id"] for h in seen[:2]] == ["client-42", "client-42"]
    assert [h["content-type"] for h in seen[:2]] == ["application/x"] * 2
    assert seen[2]["ce-id"] == seen[3]["ce-id"] != "client-42"  # a fresh id per inference
    assert all(h.get("ce-endpoint", "") == "" for h in seen)
