"""The payload sink over real HTTP on 127.0.0.1: pairing, durability, dedup, limits, ingest."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from driftloop.data.ingest import ingest
from driftloop.data.storage import LocalStore, Store
from driftloop.demo.sample import sample_schema
from driftloop.serving.sink_bodies import SinkError, parse_feedback
from driftloop.serving.sink_events import REQUEST_TYPE, RESPONSE_TYPE
from driftloop.serving.sink_pairing import PayloadSink

DAY = dt.date(2026, 1, 1)
TIME = "2026-01-01T10:00:00.123456789Z"
LATER = "2026-01-01T10:00:00.223456789Z"
MODEL = "sample"


def ce_headers(ce_id: str, ce_type: str, *, time: str = TIME, **extra: str) -> dict[str, str]:
    """The headers KServe's logger sends (binary content mode, pkg/logger/worker.go)."""
    headers = {
        "Ce-Id": ce_id,
        "Ce-Type": ce_type,
        "Ce-Source": "http://localhost:9081/",
        "Ce-Specversion": "1.0",
        "Ce-Time": time,
        "Ce-Inferenceservicename": "sample",
        "Ce-Namespace": "ml",
        "Ce-Component": "predictor",
        "Ce-Endpoint": "canary",
        "Ce-Metadata": "{}",
        "Content-Type": "application/json",
    }
    headers.update(extra)
    return headers


def send(client: httpx.Client, ce_id: str, ce_type: str, body: Any, **kw: str) -> httpx.Response:
    return client.post("/", content=json.dumps(body), headers=ce_headers(ce_id, ce_type, **kw))


def request_body(n: int = 3, *, ids: dict[int, str] | None = None) -> dict[str, Any]:
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"x0": 0.1 * i, "x1": -0.2 * i, "segment": "north"}
        if ids and i in ids:
            row["id"] = ids[i]
        rows.append(row)
    return {"instances": rows}


def response_body(n: int = 3, version: str = "v1") -> dict[str, Any]:
    return {"predictions": [
        {"class": "yes", "probabilities": {"no": 0.25, "yes": 0.75}, "model_version": version}
        for _ in range(n)
    ], "model_name": MODEL, "model_version": version}


def lines_under(store: LocalStore, prefix: str) -> list[dict[str, Any]]:
    out = []
    for key in store.list(prefix):
        out += [json.loads(line) for line in store.read_text(key).splitlines() if line.strip()]
    return out


@pytest.fixture()
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store", create=True)


@pytest.fixture()
def sink(start_sink, store):
    sink, server = start_sink(store)
    with httpx.Client(base_url=server.url, timeout=10.0) as client:
        yield sink, server, client


# -- pairing and ingest -----------------------------------------------------------------


def test_pair_from_the_real_predictor_is_ingested_with_predictions(sink, store, predictor,
                                                                   registered):
    _, _, client = sink
    instances = [{"x0": 0.5, "x1": 1.0, "segment": "north", "id": "user-7"},
                 {"x0": -1.0, "x1": 0.2, "segment": "south"}]
    served = httpx.post(f"{predictor.url}/v1/models/{MODEL}:predict",
                        json={"instances": instances})
    assert served.status_code == 200
    first = send(client, "ev-1", REQUEST_TYPE, {"instances": instances})
    assert first.status_code == 200 and first.json()["status"] == "pending"
    second = client.post("/", content=served.content, headers=ce_headers("ev-1", RESPONSE_TYPE))
    assert second.json() == {"status": "stored", "records": 2}
    # Durable before the answer: the records are in the store right now.
    written = lines_under(store, f"requests/dt={DAY}")
    assert [r["id"] for r in written] == ["user-7", "ev-1-1"]
    preds = served.json()["predictions"]
    assert written[0]["prediction"] == preds[0]["class"]
    assert written[0]["score"] == max(preds[0]["probabilities"].values())
    assert written[0]["model_version"] == registered.version
    assert written[0]["timestamp"] == "2026-01-01T10:00:00.123456+00:00"
    assert (written[0]["inference_service"], written[0]["endpoint"]) == ("sample", "canary")
    assert written[0]["logged"] == "pair" and written[0]["event_id"] == "ev-1"

    result = ingest(store, sample_schema(), DAY, DAY)
    counts = result.report.counts
    assert (counts.rows_in, counts.accepted, counts.quarantined) == (2, 2, 0)
    records = result.records.set_index("id")
    assert records.loc["user-7", "prediction"] == preds[0]["class"]
    assert records.loc["ev-1-1", "model_version"] == registered.version
    assert records.loc["ev-1-1", "x0"] == -1.0


def test_v2_pair_from_the_real_predictor(sink, store, predictor):
    _, _, client = sink
    body = {"id": "v2", "inputs": [
        {"name": "x0", "shape": [2], "datatype": "FP64", "data": [0.1, 2.0]},
        {"name": "x1", "shape": [2], "datatype": "FP64", "data": [0.3, -1.0]},
        {"name": "segment", "shape": [2], "datatype": "BYTES", "data": ["east", "west"]},
        {"name": "id", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
    ]}
    served = httpx.post(f"{predictor.url}/v2/models/{MODEL}/infer", json=body)
    assert served.status_code == 200
    assert send(client, "v2-ev", RESPONSE_TYPE, served.json()).json()["status"] == "pending"
    assert send(client, "v2-ev", REQUEST_TYPE, body).json()["status"] == "stored"
    outputs = {o["name"]: o for o in served.json()["outputs"]}
    result = ingest(store, sample_schema(), DAY, DAY)
    records = result.records.set_index("id")
    assert list(records.index) == ["a", "b"]
    assert list(records["prediction"]) == outputs["class"]["data"]
    assert records.loc["b", "segment"] == "west"
    assert 0.5 <= records.loc["a", "score"] <= 1.0


def test_feedback_is_durable_and_joined_as_labels(sink, store):
    _, _, client = sink
    send(client, "e1", REQUEST_TYPE, request_body(2, ids={0: "u0"}))
    send(client, "e1", RESPONSE_TYPE, response_body(2))
    answer = client.post("/feedback", json={"id": "u0", "label": "no",
                                            "timestamp": "2026-01-01T11:00:00Z"})
    assert answer.status_code == 200 and answer.json() == {"stored": 1}
    assert lines_under(store, f"feedback/dt={DAY}") == [
        {"id": "u0", "label": "no", "timestamp": "2026-01-01T11:00:00+00:00"}]
    many = [{"id": "e1-1", "label": "yes", "timestamp": "2026-01-01T12:00:00+00:00"},
            {"id": "e1-1", "label": "no", "timestamp": "2026-01-01T12:30:00+00:00"}]
    assert client.post("/feedback", json=many).json() == {"stored": 2}
    result = ingest(store, sample_schema(), DAY, DAY)
    labels = result.records.set_index("id")["label"]
    assert labels.to_dict() == {"u0": "no", "e1-1": "no"}
    assert result.report.counts.labels_superseded == 1


def test_feedback_is_partitioned_by_arrival_day(sink, store):
    _, _, client = sink
    assert client.post("/feedback", json=[
        {"id": "x", "label": "yes"},
        {"id": "y", "label": "no", "timestamp": "2025-12-30T08:00:00+01:00"},
    ]).status_code == 200
    rows = lines_under(store, f"feedback/dt={DAY}")
    assert rows[0]["id"] == "x" and rows[0]["timestamp"].startswith(DAY.isoformat())
    assert rows[1]["timestamp"] == "2025-12-30T07:00:00+00:00"


def test_response_before_request_and_structured_mode(sink, store):
    _, _, client = sink
    # One source for both sides, as KServe's agent sends (its --source-uri, the pod name).
    structured = {"specversion": "1.0", "id": "s1", "type": RESPONSE_TYPE,
                  "source": "http://localhost:9081/",
                  "time": TIME, "datacontenttype": "application/json",
                  "data": response_body(1)}
    answer = client.post("/events", json=structured,
                         headers={"content-type": "application/cloudevents+json"})
    assert answer.json()["status"] == "pending"
    assert send(client, "s1", REQUEST_TYPE, request_body(1)).json()["status"] == "stored"
    assert [r["id"] for r in lines_under(store, "requests")] == ["s1-0"]


# -- idempotence ------------------------------------------------------------------------


def test_a_retried_event_is_stored_once(sink, store):
    sink_obj, _, client = sink
    for _ in range(2):
        send(client, "dup", REQUEST_TYPE, request_body())
    assert send(client, "dup", RESPONSE_TYPE, response_body()).json()["status"] == "stored"
    again = [send(client, "dup", t, b).json()["status"]
             for t, b in ((REQUEST_TYPE, request_body()), (RESPONSE_TYPE, response_body()))]
    assert again == ["duplicate", "duplicate"]
    assert len(lines_under(store, "requests")) == 3
    assert sink_obj.stats.duplicates == 3
    assert ingest(store, sample_schema(), DAY, DAY).report.counts.duplicates == 0


def test_dedup_and_pending_survive_a_restart(start_sink, store):
    _, first = start_sink(store)
    with httpx.Client(base_url=first.url) as c:
        send(c, "a", REQUEST_TYPE, request_body(2))
        send(c, "a", RESPONSE_TYPE, response_body(2))
        assert send(c, "b", REQUEST_TYPE, request_body(1)).json()["status"] == "pending"
    first.stop()

    second_sink, second = start_sink(store)
    assert second_sink.stats.recovered_pending == 1 and second_sink.pending_count == 1
    with httpx.Client(base_url=second.url) as c:
        assert send(c, "a", REQUEST_TYPE, request_body(2)).json()["status"] == "duplicate"
        assert send(c, "a", RESPONSE_TYPE, response_body(2)).json()["status"] == "duplicate"
        assert send(c, "b", REQUEST_TYPE, request_body(1)).json()["status"] == "duplicate"
        assert send(c, "b", RESPONSE_TYPE, response_body(1)).json()["status"] == "stored"
    records = lines_under(store, "requests")
    assert sorted(r["id"] for r in records) == ["a-0", "a-1", "b-0"]
    assert all(r["logged"] == "pair" for r in records)
    # The journal was compacted at start: only the new process's file is left.
    assert len(store.list("sink/pending")) == 1


def test_odd_event_ids_and_the_seen_bound_survive_a_restart(store):
    odd = 'we"ird\\id ünï'
    first = PayloadSink(store, clock=_clock)
    for ce_type, body in ((REQUEST_TYPE, request_body(1)), (RESPONSE_TYPE, response_body(1))):
        headers = {k.lower(): v for k, v in ce_headers(odd, ce_type).items()}
        assert first.handle_event(headers, json.dumps(body).encode())["status"] != "duplicate"
    first.close()
    second = PayloadSink(store, clock=_clock)
    headers = {k.lower(): v for k, v in ce_headers(odd, REQUEST_TYPE).items()}
    assert second.handle_event(headers, json.dumps(request_body(1)).encode())["status"] == (
        "duplicate")
    bounded = PayloadSink(store, clock=_clock, max_seen=1)
    assert bounded.stats.recovered_ids == 1


# -- unpaired events --------------------------------------------------------------------


def _wait_until_nothing_pending(sink_obj: PayloadSink) -> None:
    deadline = time.monotonic() + 5
    while sink_obj.pending_count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink_obj.pending_count == 0


def test_unpaired_events_are_written_alone_after_the_ttl(start_sink, store):
    sink_obj, server = start_sink(store, pending_ttl=0.2)
    with httpx.Client(base_url=server.url) as c:
        send(c, "lonely-req", REQUEST_TYPE, request_body(1))
        send(c, "lonely-resp", RESPONSE_TYPE, response_body(2))
        _wait_until_nothing_pending(sink_obj)
        # A partner arriving after its event was written alone waits like any event (it
        # may be a later inference reusing the id) and is then written alone too, its row
        # id tagged so it cannot pass for the first one's at ingest.
        late = send(c, "lonely-req", RESPONSE_TYPE, response_body(1), time=LATER)
        assert late.json() == {"status": "pending", "records": 0}
        _wait_until_nothing_pending(sink_obj)
    by_logged: dict[str, list[dict[str, Any]]] = {}
    for r in lines_under(store, "requests"):
        by_logged.setdefault(r["logged"], []).append(r)
    assert [r["id"] for r in by_logged["request_only"]] == ["lonely-req-0"]
    assert by_logged["request_only"][0]["prediction"] is None
    assert len(by_logged["response_only"]) == 3
    tagged = by_logged["response_only"][-1]["id"]
    assert tagged.startswith("lonely-req.") and tagged.endswith("-0")
    result = ingest(store, sample_schema(), DAY, DAY)
    counts = result.report.counts
    # The lone request is a valid record; responses without features are quarantined,
    # with a reason: every row is accounted for.
    assert (counts.rows_in, counts.accepted, counts.quarantined) == (4, 1, 3)
    assert result.records["id"].tolist() == ["lonely-req-0"]
    assert "x0: required value missing" in result.quarantine["_reason"].iloc[0]


def test_max_pending_writes_the_oldest_alone(start_sink, store):
    sink_obj, server = start_sink(store, max_pending=2)
    with httpx.Client(base_url=server.url) as c:
        for i in range(3):
            send(c, f"p{i}", REQUEST_TYPE, request_body(1))
    assert sink_obj.pending_count == 2
    assert [r["event_id"] for r in lines_under(store, "requests")] == ["p0"]


# -- refusals ---------------------------------------------------------------------------


def test_oversized_bodies_are_413(start_sink, store):
    _, server = start_sink(store, max_body_bytes=4096)
    big = json.dumps({"instances": [{"x0": 1.0, "pad": "x" * 10_000}]})
    with httpx.Client(base_url=server.url) as c:
        answer = c.post("/", content=big, headers=ce_headers("big", REQUEST_TYPE))
        assert answer.status_code == 413 and "limit is 4096" in answer.json()["error"]

        def chunks():  # no Content-Length: the limit applies while streaming
            for _ in range(10):
                yield b"x" * 1000

        streamed = c.post("/feedback", content=chunks())
        assert streamed.status_code == 413
        assert c.post("/feedback", content=b" " * 5000).status_code == 413
    assert store.list("requests") == [] and store.list("feedback") == []


@pytest.mark.parametrize(
    ("headers", "body", "status", "needle"),
    [
        ({"Ce-Id": ""}, request_body(), 400, "Ce-Id: required"),
        ({"Ce-Type": "com.example.other"}, request_body(), 400, "ce-type"),
        ({"Ce-Specversion": "0.3"}, request_body(), 400, "only 1.0"),
        ({"Ce-Time": "yesterday"}, request_body(), 400, "ce-time"),
        ({}, b"{not json", 400, "body: not valid JSON"),
        ({}, [1, 2], 422, "body: expected a JSON object"),
        ({}, {"instances": "x"}, 422, "body.instances: expected a non-empty list"),
        ({}, {"instances": [[1, 2]]}, 422, "body.instances[0]: expected an object"),
        ({}, {"rows": []}, 422, "body.instances: required"),
        ({"Ce-Type": RESPONSE_TYPE}, {"predictions": 3}, 422, "body.predictions"),
        ({"Ce-Type": RESPONSE_TYPE}, {"outputs": [{"name": "c"}]}, 422,
         "body.outputs[c].data: required"),
    ],
)
def test_bad_events_are_4xx_naming_the_field(sink, store, headers, body, status, needle):
    _, _, client = sink
    sent = ce_headers("bad", REQUEST_TYPE)
    sent.update(headers)
    content = body if isinstance(body, bytes) else json.dumps(body)
    answer = client.post("/", content=content, headers={k: v for k, v in sent.items() if v})
    assert answer.status_code == status, answer.text
    assert needle.lower() in answer.json()["error"].lower()
    assert store.list("requests") == [] and store.list("sink") == []


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"nope", 400, "body: not valid JSON"),
        (b'{"label": "yes"}', 422, "id: required"),
        (b'{"id": "a"}', 422, "label: required"),
        (b'{"id": "a", "label": ["yes"]}', 422, "label: required"),
        (b'{"id": "a", "label": "yes", "timestamp": "soon"}', 422,
         "timestamp: 'soon' is not an ISO-8601 time"),
        (b'[{"id": "a", "label": "yes"}, {"id": "", "label": "no"}]', 422, "body[1].id"),
        (b"[]", 422, "non-empty list"),
        (b"3", 422, "body: expected an object"),
    ],
)
def test_bad_feedback_is_4xx_naming_the_field(sink, store, body, status, needle):
    _, _, client = sink
    answer = client.post("/feedback", content=body)
    assert answer.status_code == status, answer.text
    assert needle in answer.json()["error"]
    assert store.list("feedback") == []


def test_feedback_labels_are_checked_against_the_schema():
    with pytest.raises(SinkError, match=r"label: 'maybe' is not one of \['no', 'yes'\]"):
        parse_feedback(b'{"id": "a", "label": "maybe"}', labels=("no", "yes"))
    assert parse_feedback(b'{"id": 7, "label": true}')[0]["label"] == "true"


def test_a_failed_write_is_a_503_and_not_marked_seen(start_sink, store):
    sink_obj, server = start_sink(store)
    with httpx.Client(base_url=server.url) as c:
        send(c, "w", REQUEST_TYPE, request_body(1))
        original = sink_obj.writer.fsync

        def broken(fd: int) -> None:  # the data reached the file, the fsync fails
            raise OSError(28, "No space left on device")

        sink_obj.writer.fsync = broken
        answer = send(c, "w", RESPONSE_TYPE, response_body(1))
        assert answer.status_code == 503 and "No space left" in answer.json()["error"]
        assert lines_under(store, "requests") == []  # cut back: nothing acknowledged
        sink_obj.writer.fsync = original
        assert send(c, "w", RESPONSE_TYPE, response_body(1)).json()["status"] == "stored"
    assert len(lines_under(store, "requests")) == 1


def test_metrics_and_health(sink):
    _, _, client = sink
    send(client, "m", REQUEST_TYPE, request_body(1))
    send(client, "m", RESPONSE_TYPE, response_body(1))
    client.post("/feedback", content=b"{")
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["mode"] == "append" and health["pending"] == 0
    text = client.get("/metrics").text
    assert 'driftloop_sink_records_total{logged="pair"} 1.0' in text
    assert 'driftloop_sink_rejected_total{status="400"} 1.0' in text
    assert "driftloop_sink_write_seconds_count 2.0" in text


# -- bodies that used to be 500s: over one keep-alive connection ------------------------

DEEP = "[" * 100_000 + "]" * 100_000  # far beyond json's recursion limit
DEEP_OBJECT = '{"a":' * 100_000 + "1" + "}" * 100_000


def _exchange(conn: http.client.HTTPConnection, path: str, body: bytes,
              headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    conn.request("POST", path, body=body, headers=headers)
    answer = conn.getresponse()
    return answer.status, json.loads(answer.read())


@pytest.fixture()
def conn(sink) -> Iterator[http.client.HTTPConnection]:
    """One keep-alive connection to the sink (timeouts bound each exchange)."""
    _, server, _ = sink
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    yield connection
    connection.close()


def _bad_then_good(conn: http.client.HTTPConnection, path: str, bad: bytes,
                   headers: dict[str, str]) -> tuple[int, str]:
    """Send ``bad``, then a good body on the same connection; return the bad answer."""
    status, answer = _exchange(conn, path, bad, headers)
    sock = conn.sock
    if path == "/feedback":
        good = json.dumps({"id": "good", "label": "yes"}).encode()
        ok_status, ok = _exchange(conn, path, good, {"Content-Type": "application/json"})
        assert (ok_status, ok) == (200, {"stored": 1})
    else:
        good = json.dumps(request_body(1)).encode()
        ok_status, ok = _exchange(conn, path, good, ce_headers("good", REQUEST_TYPE))
        assert (ok_status, ok["status"]) == (200, "pending")
    assert conn.sock is sock  # the same connection: it was kept alive after the refusal
    return status, answer["error"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('{"instances": ' + DEEP + "}", "body: JSON nested deeper than 64 levels"),
        ('{"instances": [' + DEEP_OBJECT + "]}", "body: JSON nested deeper than 64 levels"),
        # Deep enough to defeat the writes after the 2xx, shallow enough for json.loads.
        ('{"instances": [{"x0": ' + "[" * 500 + "1" + "]" * 500 + "}]}",
         "body: JSON nested deeper than 64 levels"),
    ],
)
def test_deeply_nested_events_are_400_and_the_connection_lives(sink, store, conn, body, needle):
    headers = ce_headers("deep", REQUEST_TYPE)
    status, error = _bad_then_good(conn, "/", body.encode(), headers)
    assert status == 400 and needle in error
    _only_the_good_event_is_pending(store)


@pytest.mark.parametrize("body", [DEEP, "[" + DEEP_OBJECT + "]"])
def test_deeply_nested_feedback_is_400_and_the_connection_lives(sink, store, conn, body):
    status, error = _bad_then_good(conn, "/feedback", body.encode(), {})
    assert status == 400 and "body: JSON nested deeper than 64 levels" in error
    assert [r["id"] for r in lines_under(store, "feedback")] == ["good"]


def _only_the_good_event_is_pending(store: LocalStore) -> None:
    # Refused means unacknowledged and unrecorded: nothing journaled, nothing seen.
    journal = lines_under(store, "sink/pending")
    assert [e["ce_id"] for e in journal] == ["good"]
    assert store.list("requests") == []


@pytest.mark.parametrize(
    ("body", "headers", "needle"),
    [
        (rb'{"instances": [{"x0": 1, "segment": "\ud800"}]}', {},
         "body.instances[0].segment: not valid Unicode, a lone surrogate '\\ud800'"),
        # The surrogate's own UTF-8 bytes: json reads bytes with "surrogatepass".
        (b'{"instances": [{"x0": 1, "segment": "a\xed\xb0\x80"}]}', {},
         "body.instances[0].segment: not valid Unicode, a lone surrogate '\\udc00' at "
         "character 1"),
        (rb'{"instances": [{"x0": 1, "\udfff": 2}]}', {},
         "body.instances[0]: key '\\udfff' is not valid Unicode"),
        (rb'{"inputs": [{"name": "id", "shape": [1], "data": ["\ud800"]}]}', {},
         "body.inputs[0].data[0]: not valid Unicode"),
        (rb'{"predictions": [{"class": "\udbff", "probabilities": {"yes": 1.0}}]}',
         {"Ce-Type": RESPONSE_TYPE}, "body.predictions[0].class: not valid Unicode"),
        # The same in UTF-16 (json detects it): the escape is not visible byte by byte.
        ('{"instances": [{"x0": 1, "segment": "\\ud800"}]}'.encode("utf-16-le"), {},
         "body.instances[0].segment: not valid Unicode"),
    ],
)
def test_lone_surrogates_in_events_are_422_naming_the_field(sink, store, conn, body, headers,
                                                            needle):
    sent = ce_headers("surrogate", REQUEST_TYPE)
    sent.update(headers)
    status, error = _bad_then_good(conn, "/", body, sent)
    assert status == 422 and needle in error
    _only_the_good_event_is_pending(store)


def test_lone_surrogates_in_a_structured_event_id_are_422(sink, store, conn):
    event = {"id": "\ud800", "type": REQUEST_TYPE, "source": "s", "specversion": "1.0",
             "data": request_body(1)}
    headers = {"Content-Type": "application/cloudevents+json"}
    body = json.dumps(event).encode()  # ensure_ascii writes the surrogate as \\ud800
    status, error = _bad_then_good(conn, "/", body, headers)
    assert status == 422 and "body.id: not valid Unicode" in error
    _only_the_good_event_is_pending(store)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (rb'{"id": "\ud800", "label": "yes"}', "body.id: not valid Unicode, a lone surrogate"),
        (rb'[{"id": "ok", "label": "yes"}, {"id": "x\udc00", "label": "yes"}]',
         "body[1].id: not valid Unicode, a lone surrogate '\\udc00' at character 1"),
        (rb'{"id": "a", "label": "\ud800"}', "body.label: not valid Unicode"),
    ],
)
def test_lone_surrogates_in_feedback_are_422_naming_the_field(sink, store, conn, body, needle):
    status, error = _bad_then_good(conn, "/feedback", body, {})
    assert status == 422 and needle in error
    # All or nothing: the valid first item of the refused list was not stored either.
    assert [r["id"] for r in lines_under(store, "feedback")] == ["good"]


def test_valid_surrogate_pairs_and_escapes_are_stored(sink, store):
    _, _, client = sink
    body = rb'{"id": "\ud83d\ude00 and \\ud800", "label": "yes"}'
    assert client.post("/feedback", content=body).status_code == 200
    assert lines_under(store, "feedback")[0]["id"] == "\U0001f600 and \\ud800"


@pytest.mark.parametrize(
    ("headers", "body", "needle"),
    [
        # rows > values used to pass the shape check and build a billion empty lists.
        ({}, {"inputs": [{"name": "a", "shape": [1_000_000_000], "data": []}]},
         "body.inputs[a].shape: [1000000000] does not fit 0 values"),
        ({"Ce-Type": RESPONSE_TYPE},
         '{"predictions": [{"class": "yes", "probabilities": {"yes": 1%s}}]}' % ("0" * 399),
         "body.predictions[0].probabilities.yes: a 400-digit integer is not a probability"),
        ({"Ce-Type": RESPONSE_TYPE},
         {"outputs": [{"name": "class", "shape": [1], "data": ["yes"]},
                      {"name": "probabilities", "shape": [1, 2], "data": [0.5, "x"],
                       "parameters": {"classes": '["no", "yes"]'}}]},
         "body.outputs[probabilities].data[0][1]: expected a number, got str"),
        ({"Ce-Type": RESPONSE_TYPE},
         {"outputs": [{"name": "class", "shape": [1], "data": ["yes"]},
                      {"name": "probabilities", "shape": [1, 1], "data": [1.0],
                       "parameters": 5}]}, None),
    ],
)
def test_odd_tensors_and_probabilities_are_4xx_or_stored(sink, store, conn, headers, body,
                                                         needle):
    sent = ce_headers("odd", REQUEST_TYPE)
    sent.update(headers)
    content = (body if isinstance(body, str) else json.dumps(body)).encode()
    status, answer = _exchange(conn, "/", content, sent)
    if needle is None:  # parameters that are not an object: no classes, still stored
        assert (status, answer["status"]) == (200, "pending")
        return
    assert status == 422 and needle in answer["error"]
    assert store.list("sink") == [] and store.list("requests") == []


def test_an_acknowledged_request_the_predictor_refused_is_written_alone(start_sink, store):
    """KServe logs the request of a 400 too: the sink keeps it, and no response comes."""
    _, server = start_sink(store, pending_ttl=0.2)
    big = "1" + "0" * 399
    body = ('{"inputs": [{"name": "x0", "shape": [1], "datatype": "FP64", "data": [' + big
            + ']}, {"name": "x1", "shape": [1], "datatype": "FP64", "data": [0.5]},'
            ' {"name": "segment", "shape": [1], "datatype": "BYTES", "data": ["north"]}]}')
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        answer = c.post("/", content=body, headers=ce_headers("refused", REQUEST_TYPE))
        assert answer.status_code == 200 and answer.json()["status"] == "pending"
        deadline = time.monotonic() + 10
        # the file appears before its line is appended: wait for the line itself
        while not lines_under(store, "requests"):
            assert time.monotonic() < deadline, "the lone request was never written"
            time.sleep(0.02)
    [record] = lines_under(store, "requests")
    # Stored as sent: judging the value is ingest's job (its schema quarantines it).
    assert record["logged"] == "request_only" and record["x0"] == int(big)


# -- object mode (gs://) ----------------------------------------------------------------


def _clock() -> float:
    return dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.UTC).timestamp()


def _object_mode_round_trip(store: Store) -> None:
    first = PayloadSink(store, mode="object", clock=_clock)
    headers = {k.lower(): v for k, v in ce_headers("o", REQUEST_TYPE).items()}
    assert first.handle_event(headers, json.dumps(request_body(2)).encode())["status"] == (
        "pending")
    first.close()
    second = PayloadSink(store, mode="object", clock=_clock)
    assert second.pending_count == 1
    assert second.handle_event(headers, json.dumps(request_body(2)).encode())["status"] == (
        "duplicate")
    headers["ce-type"] = RESPONSE_TYPE
    assert second.handle_event(headers, json.dumps(response_body(2)).encode())["status"] == (
        "stored")
    assert second.handle_event(headers, json.dumps(response_body(2)).encode())["status"] == (
        "duplicate")
    assert store.list("sink") == []  # the resolved pending object was deleted
    third = PayloadSink(store, mode="object", clock=_clock)
    assert third.handle_event(headers, json.dumps(response_body(2)).encode())["status"] == (
        "duplicate")
    result = ingest(store, sample_schema(), DAY, DAY)
    assert sorted(result.records["id"]) == ["o-0", "o-1"]


def test_object_mode_on_a_local_store(store):
    _object_mode_round_trip(store)


def test_object_mode_on_gcs(gcs_store):
    _object_mode_round_trip(gcs_store)


# -- the command line -------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_main_serves_until_sigterm(tmp_path: Path):
    port = _free_port()
    root = tmp_path / "cli-store"
    proc = subprocess.Popen(
        [sys.executable, "-m", "driftloop.serving.sink", "--store", str(root),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "sink did not start"
            time.sleep(0.05)
        answer = httpx.post(f"{url}/feedback", json={"id": "cli", "label": "yes",
                                                     "timestamp": TIME})
        assert answer.status_code == 200
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert lines_under(LocalStore(root), "feedback")[0]["id"] == "cli"
