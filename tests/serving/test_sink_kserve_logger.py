"""The payload sink fed the events KServe v0.20.0's payload logger really sends.

:class:`Logger` plays the logger in the predictor pod's agent, from its source:

* ``pkg/logger/handler.go``: the event id is the inference request's own ``Ce-Id`` header,
  else a new UUID (``getOrCreateID``); request and response share it. ``Ce-Time`` is when
  the request arrived (request event) or the response was read (response event). Both
  events carry the *request's* Content-Type and the same metadata (the request headers
  listed in ``metadataHeaders``); a response event only for HTTP 200.
* ``pkg/logger/worker.go``: binary content mode (``cloudevents.WithEncodingBinary``),
  types ``org.kubeflow.serving.inference.request`` / ``.response``, the extensions
  ``inferenceservicename``, ``namespace``, ``component``, ``endpoint``, ``metadata``
  (JSON) and ``recordedtime`` (when sent); never retried.
* ``pkg/webhook/admission/pod/agent_injector.go``: ``--source-uri`` is the pod's name,
  ``--endpoint`` the pod label ``endpoint`` (no v0.20.0 controller sets it: sent empty),
  ``--component`` the pod label ``component`` (``predictor``).
* cloudevents/sdk-go v2.16.2 (KServe's ``go.mod``): attributes as ``Ce-*`` headers,
  ``datacontenttype`` as Content-Type (none when empty), times as RFC 3339 with
  nanoseconds in UTC (``types.FormatTime``), an empty extension as an empty header.

The inferences themselves go to the real predictor, the V2 binary bodies are built by
kserve's own ``InferRequest`` / ``InferResponse`` (``infer_type.py``, v0.20.0).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from driftloop.data.ingest import ingest
from driftloop.data.storage import LocalStore
from driftloop.demo.sample import sample_schema
from driftloop.serving import clean_argv
from driftloop.serving.sink_events import REQUEST_TYPE, RESPONSE_TYPE, legacy_key
from driftloop.serving.sink_pairing import PENDING_PREFIX, QUARANTINE_PREFIX, PayloadSink

with clean_argv():
    from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse

MODEL = "sample"
DAY = dt.date(2026, 1, 1)
POD = "sample-predictor-00001-deployment-6d8f9c7b5-x2x4k"


def rfc3339_nano(ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: trailing zeros of the fraction trimmed."""
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f".{frac:09d}".rstrip("0").rstrip(".")
    return f"{stamp}{fraction}Z"


@dataclass
class Logged:
    """The two events one inference makes: (headers, body) each; ``response`` None if not 200."""

    request: tuple[dict[str, str], bytes]
    response: tuple[dict[str, str], bytes] | None
    answer: httpx.Response


class Logger:
    """KServe v0.20.0's payload logger in front of the predictor (see the module docstring).

    The sink's clock is 2026-01-01 10:00 UTC (conftest): the event times are on that day.
    """

    def __init__(self, predictor_url: str, *, pod: str = POD,
                 metadata_headers: tuple[str, ...] = ()) -> None:
        self.client = httpx.Client(base_url=predictor_url, timeout=10.0)
        self.pod = pod
        self.metadata_headers = metadata_headers
        self._ns = int(dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.UTC).timestamp()) * 10**9

    def _now(self) -> int:
        self._ns += 1_234_567  # time moves on between two stamps, in nanoseconds
        return self._ns

    def _event(self, ce_id: str, ce_type: str, ns: int, content_type: str,
               metadata: dict[str, list[str]], body: bytes) -> tuple[dict[str, str], bytes]:
        headers = {
            "Ce-Specversion": "1.0", "Ce-Id": ce_id, "Ce-Type": ce_type,
            "Ce-Source": self.pod, "Ce-Time": rfc3339_nano(ns),
            "Ce-Recordedtime": rfc3339_nano(ns + 1000),
            "Ce-Inferenceservicename": MODEL, "Ce-Namespace": "ml",
            "Ce-Component": "predictor", "Ce-Endpoint": "",
            "Ce-Metadata": json.dumps(metadata, separators=(",", ":")),
        }
        if content_type.strip():
            headers["Content-Type"] = content_type
        return headers, body

    def infer(self, path: str, body: bytes, headers: dict[str, str]) -> Logged:
        """Serve one inference through the predictor and return the events it logs."""
        sent = {k.title(): v for k, v in headers.items()}  # Go's canonical header names
        ce_id = sent.get("Ce-Id") or str(uuid.uuid4())
        content_type = sent.get("Content-Type", "")
        metadata = {k: [v] for k, v in sent.items() if k in self.metadata_headers}
        request_ns = self._now()
        answer = self.client.post(path, content=body, headers=headers)
        response_ns = self._now()
        request = self._event(ce_id, REQUEST_TYPE, request_ns, content_type, metadata, body)
        response = (self._event(ce_id, RESPONSE_TYPE, response_ns, content_type, metadata,
                                answer.content) if answer.status_code == 200 else None)
        return Logged(request, response, answer)

    def close(self) -> None:
        self.client.close()


@pytest.fixture()
def logger(predictor) -> Iterator[Logger]:
    kserve_logger = Logger(predictor.url)
    yield kserve_logger
    kserve_logger.close()


@pytest.fixture()
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store", create=True)


@pytest.fixture()
def sink(start_sink, store):
    sink_obj, server = start_sink(store)
    with httpx.Client(base_url=server.url, timeout=10.0) as client:
        yield sink_obj, client


def post(client: httpx.Client, event: tuple[dict[str, str], bytes] | None) -> dict[str, Any]:
    assert event is not None
    answer = client.post("/", content=event[1], headers=event[0])
    assert answer.status_code == 200, answer.text
    return answer.json()


def records(store: LocalStore) -> list[dict[str, Any]]:
    out = []
    for key in store.list("requests"):
        out += [json.loads(line) for line in store.read_text(key).splitlines() if line]
    return out


def v1(*rows: tuple[float, float, str]) -> bytes:
    return json.dumps({"instances": [{"x0": a, "x1": b, "segment": s} for a, b, s in rows]}
                      ).encode()


JSON = {"Content-Type": "application/json"}


# -- a reused Ce-Id ---------------------------------------------------------------------


def test_a_client_reusing_its_ce_id_keeps_every_inference(sink, store, logger):
    """Two inferences with one client-set Ce-Id are two pairs, not one and a duplicate."""
    sink_obj, client = sink
    headers = {**JSON, "Ce-Id": "fixed-by-the-client"}
    first = logger.infer(f"/v1/models/{MODEL}:predict", v1((0.5, 1.0, "north")), headers)
    # The same body again: only KServe's Ce-Time tells the two inferences apart.
    second = logger.infer(f"/v1/models/{MODEL}:predict", v1((0.5, 1.0, "north")), headers)
    third = logger.infer(f"/v1/models/{MODEL}:predict", v1((-2.0, 0.1, "south")), headers)
    for logged in (first, second, third):
        assert post(client, logged.request)["status"] == "pending"
        assert post(client, logged.response) == {"status": "stored", "records": 1}
    written = records(store)
    assert [r["logged"] for r in written] == ["pair"] * 3
    assert len({r["id"] for r in written}) == 3  # ingest must not see duplicates
    assert written[0]["id"] == "fixed-by-the-client-0"
    assert [r["x0"] for r in written] == [0.5, 0.5, -2.0]
    assert sink_obj.stats.duplicates == 0 and sink_obj.stats.reused_ids == 2
    counts = ingest(store, sample_schema(), DAY, DAY).report.counts
    assert (counts.rows_in, counts.accepted, counts.duplicates) == (3, 3, 0)


def test_a_true_redelivery_is_dropped_exactly_once_also_after_a_restart(start_sink, store,
                                                                       logger):
    sink_obj, server = start_sink(store)
    headers = {**JSON, "Ce-Id": "reused"}
    a = logger.infer(f"/v1/models/{MODEL}:predict", v1((0.5, 1.0, "north")), headers)
    b = logger.infer(f"/v1/models/{MODEL}:predict", v1((0.5, 1.0, "north")), headers)
    with httpx.Client(base_url=server.url) as c:
        assert post(c, a.request)["status"] == "pending"
        assert post(c, a.request)["status"] == "duplicate"  # redelivered while pending
        assert post(c, a.response)["status"] == "stored"
        assert post(c, a.response)["status"] == "duplicate"
        assert post(c, b.request)["status"] == "pending"  # a new inference, same id
    assert sink_obj.stats.duplicates == 2
    server.stop()
    _, again = start_sink(store)
    with httpx.Client(base_url=again.url) as c:
        assert [post(c, e)["status"] for e in (a.request, a.response, b.request)] == [
            "duplicate"] * 3
        assert post(c, b.response)["status"] == "stored"
    assert [r["logged"] for r in records(store)] == ["pair", "pair"]


def test_interleaved_inferences_with_one_ce_id_pair_with_their_own_answers(sink, store,
                                                                           logger):
    """The logger's workers deliver in any order; each response finds its own request."""
    _, client = sink
    headers = {**JSON, "Ce-Id": "same"}
    bodies = [v1((x, 0.0, "north"), (x, 1.0, "east")) for x in (-3.0, 3.0)]
    first, second = (logger.infer(f"/v1/models/{MODEL}:predict", b, headers) for b in bodies)
    # request 1, request 2, then response 2 before response 1
    for event in (first.request, second.request, second.response, first.response):
        post(client, event)
    by_x0: dict[float, list[str]] = {}
    for record in records(store):
        assert record["logged"] == "pair"
        by_x0.setdefault(record["x0"], []).append(record["prediction"])
    for logged, x0 in ((first, -3.0), (second, 3.0)):
        assert by_x0[x0] == [p["class"] for p in logged.answer.json()["predictions"]]


def test_a_response_is_never_paired_with_a_later_request(sink, store, logger):
    """A reused id's lone response waits rather than take the next inference's request."""
    sink_obj, client = sink
    headers = {**JSON, "Ce-Id": "again"}
    old = logger.infer(f"/v1/models/{MODEL}:predict", v1((1.0, 1.0, "north")), headers)
    new = logger.infer(f"/v1/models/{MODEL}:predict", v1((2.0, 2.0, "north")), headers)
    assert post(client, old.response)["status"] == "pending"  # its request was lost
    assert post(client, new.request)["status"] == "pending"  # occurred after it: no pair
    assert post(client, new.response)["status"] == "stored"
    assert sink_obj.pending_count == 1
    [record] = records(store)
    assert record["x0"] == 2.0 and record["logged"] == "pair"


def test_reused_ids_in_object_mode_keep_every_pending_event(store, logger):
    """Journal objects are named by event, not by Ce-Id: no pending event overwrites another."""
    clock = _fixed_clock
    first = PayloadSink(store, mode="object", clock=clock)
    headers = {**JSON, "Ce-Id": "obj"}
    a, b = (logger.infer(f"/v1/models/{MODEL}:predict", v1((x, 0.0, "west")), headers)
            for x in (1.0, 2.0))
    for logged in (a, b):
        assert first.handle_event(_lower(logged.request[0]), logged.request[1])["status"] == (
            "pending")
    first.close()
    second = PayloadSink(store, mode="object", clock=clock)
    assert second.pending_count == 2
    for logged in (b, a):
        assert logged.response is not None
        assert second.handle_event(_lower(logged.response[0]), logged.response[1]) == {
            "status": "stored", "records": 1}
    assert sorted(r["x0"] for r in records(store)) == [1.0, 2.0]
    assert store.list(PENDING_PREFIX) == []


def test_records_and_journals_of_the_previous_version_still_deduplicate(store):
    """Written before events had keys: dedup was by (Ce-Id, side), and still resolves."""
    store.write_text(f"requests/dt={DAY}/old.jsonl", json.dumps(
        {"id": "old-0", "x0": 1.0, "event_id": "old", "logged": "pair"},
        separators=(",", ":")) + "\n")
    journal = [
        {"ce_id": "old", "side": "request", "time": "2026-01-01T10:00:00+00:00",
         "received": _fixed_clock(), "ext": {}, "data": {"instances": [{"x0": 1.0}]}},
        {"ce_id": "waiting", "side": "request", "time": "2026-01-01T10:00:00+00:00",
         "received": _fixed_clock(), "ext": {}, "data": {"instances": [{"x0": 2.0}]}},
    ]
    store.write_text(f"{PENDING_PREFIX}/dt={DAY}/old.jsonl",
                     "".join(json.dumps(doc) + "\n" for doc in journal))
    sink_obj = PayloadSink(store, clock=_fixed_clock)
    # "old" was written: its journal line is resolved; "waiting" is pending again.
    assert sink_obj.pending_count == 1
    assert legacy_key("waiting", "request") in sink_obj._pending


# -- V2 binary bodies -------------------------------------------------------------------


def _binary_request(rows: list[tuple[float, float, str]], *, request_id: str = "bin-1",
                    binary_output: bool = False) -> tuple[bytes, int]:
    """A V2 binary-extension request built by kserve's own InferRequest (infer_type.py)."""
    inputs = []
    for name, datatype, values in (
        ("x0", "FP64", np.array([r[0] for r in rows], dtype=np.float64)),
        ("x1", "FP64", np.array([r[1] for r in rows], dtype=np.float64)),
        ("segment", "BYTES", np.array([r[2].encode() for r in rows], dtype=np.object_)),
    ):
        tensor = InferInput(name, [len(rows)], datatype)
        tensor.set_data_from_numpy(values, binary_data=True)
        inputs.append(tensor)
    request = InferRequest(MODEL, inputs, request_id=request_id,
                           parameters={"binary_data_output": True} if binary_output else None)
    body, length = request.to_rest()
    assert isinstance(body, bytes) and length is not None
    return body, length


def _binary_headers(length: int) -> dict[str, str]:
    # what kserve's InferenceRESTClient sends with a binary request (inference_client.py)
    return {"Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(length)}


ROWS = [(0.5, 1.0, "north"), (-1.5, 0.25, "south"), (2.0, -0.5, "east")]


@pytest.mark.parametrize("metadata", [(), ("Inference-Header-Content-Length",)])
def test_v2_binary_requests_are_decoded_into_records(start_sink, store, predictor, metadata):
    """Binary tensors used to be a 400 (not JSON): now they are rows like any request."""
    sink_obj, server = start_sink(store)
    body, length = _binary_request(ROWS)
    kserve_logger = Logger(predictor.url, metadata_headers=metadata)
    try:
        logged = kserve_logger.infer(f"/v2/models/{MODEL}/infer", body, _binary_headers(length))
    finally:
        kserve_logger.close()
    assert logged.answer.status_code == 200, logged.answer.text
    with httpx.Client(base_url=server.url) as c:
        assert post(c, logged.request)["status"] == "pending"
        assert post(c, logged.response) == {"status": "stored", "records": 3}
    written = records(store)
    assert [(r["x0"], r["x1"], r["segment"]) for r in written] == ROWS
    assert [r["prediction"] for r in written] == logged.answer.json()["outputs"][0]["data"]
    assert written[0]["source"] == POD and "endpoint" not in written[0]  # sent empty
    assert sink_obj.stats.quarantined == 0
    counts = ingest(store, sample_schema(), DAY, DAY).report.counts
    assert (counts.rows_in, counts.accepted) == (3, 3)


def test_v2_binary_responses_are_decoded(sink, store, logger):
    """A runtime answering binary_data_output with raw tensors (InferResponse.to_rest)."""
    _, client = sink
    body, length = _binary_request(ROWS, binary_output=True)
    logged = logger.infer(f"/v2/models/{MODEL}/infer", body, _binary_headers(length))
    answer = InferResponse.from_rest(logged.answer.json())
    binary = InferResponse(answer.id, answer.model_name, answer.outputs,
                           model_version=answer.model_version, use_binary_outputs=True)
    raw, json_length = binary.to_rest()
    assert isinstance(raw, bytes) and json_length is not None and json_length < len(raw)
    assert logged.response is not None
    post(client, logged.request)
    assert post(client, (logged.response[0], raw)) == {"status": "stored", "records": 3}
    written = records(store)
    probabilities = np.asarray(logged.answer.json()["outputs"][1]["data"]).reshape(3, 2)
    assert [r["score"] for r in written] == pytest.approx(probabilities.max(axis=1))
    assert [r["prediction"] for r in written] == logged.answer.json()["outputs"][0]["data"]


@pytest.mark.parametrize(
    ("cut", "needle"),
    [
        (8, "inputs[x1]: shape needs 24 bytes of FP64"),  # bytes missing from a tensor
        (-1, "bytes after the last binary tensor"),  # trailing garbage
    ],
)
def test_undecodable_binary_bodies_are_quarantined_raw_with_a_reason(sink, store, logger,
                                                                     cut, needle):
    sink_obj, client = sink
    body, length = _binary_request(ROWS)
    if cut > 0:  # drop 8 bytes of x1 and shrink nothing else: the sizes no longer add up
        header = json.loads(body[:length])
        header["inputs"][1]["parameters"]["binary_data_size"] -= cut
        head = json.dumps(header).encode()
        offset = length + 24
        bad = head + body[length:offset] + body[offset + cut:]
    else:
        bad = body + b"\x00garbage"
    logged = logger.infer(f"/v2/models/{MODEL}/infer", bad, _binary_headers(length))
    answer = post(client, logged.request)
    assert answer["status"] == "quarantined" and needle in answer["reason"]
    assert store.list("requests") == [] and store.list(PENDING_PREFIX) == []
    [kept] = [json.loads(line) for key in store.list(QUARANTINE_PREFIX)
              for line in store.read_text(key).splitlines()]
    assert base64.b64decode(kept["body_base64"]) == bad  # nothing lost
    assert kept["headers"]["ce-id"] == logged.request[0]["Ce-Id"]
    assert kept["headers"]["content-type"] == "application/octet-stream"
    assert needle in kept["reason"] and kept["side"] == "request"
    assert post(client, logged.request)["status"] == "duplicate"
    assert sink_obj.stats.quarantined == 1
    # Restarted, the sink still knows the quarantined event.
    again = PayloadSink(store, clock=_fixed_clock)
    assert again.handle_event(_lower(logged.request[0]), bad)["status"] == "duplicate"


def test_other_bodies_that_are_not_json_are_still_refused(sink, store):
    """Not a V2 binary body (no JSON header with inputs): a 400, as before."""
    _, client = sink
    headers = {"Ce-Id": "x", "Ce-Type": REQUEST_TYPE, "Ce-Source": POD,
               "Ce-Specversion": "1.0", "Content-Type": "text/plain"}
    for body in (b"\x00\x01binary", b'{"instances": []} trailing'):
        answer = client.post("/", content=body, headers=headers)
        assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]
    assert store.list("sink") == []


def _fixed_clock() -> float:
    return dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.UTC).timestamp()


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}
