"""Live quality per model version: the sink joins feedback labels to logged predictions.

Through the sink's HTTP app on 127.0.0.1 (logged pairs, then ``POST /feedback``) and on
:class:`LiveQuality` itself for the bounds (size, age, versions) and the memory per entry.
"""

from __future__ import annotations

import json
import sys
import time
import tracemalloc
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from test_sink import lines_under, request_body, response_body, send

from driftloop.data.storage import LocalStore
from driftloop.serving.sink import ROUTE_CODES
from driftloop.serving.sink_events import REQUEST_TYPE, RESPONSE_TYPE
from driftloop.serving.sink_quality import OUTCOMES, LiveQuality, label_text

MODEL = "sample"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(sample name, sorted labels) -> value`` of a /metrics text."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def log_pair(client: httpx.Client, ce_id: str, ids: list[str], version: str,
             classes: list[str], time: str = "2026-01-01T10:00:00Z") -> None:
    """One logged inference: a request of ``len(ids)`` rows and the version's answers."""
    request = request_body(len(ids), ids=dict(enumerate(ids)))
    response = response_body(len(ids), version)
    for row, label in zip(response["predictions"], classes, strict=True):
        row["class"] = label
    assert send(client, ce_id, REQUEST_TYPE, request, time=time).status_code == 200
    assert send(client, ce_id, RESPONSE_TYPE, response, time=time).json()["status"] == "stored"


@pytest.fixture()
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store", create=True)


@pytest.fixture()
def client(start_sink, store):
    _, server = start_sink(store, labels=("no", "yes"))
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        yield c


def test_labels_join_the_logged_predictions_per_version(client, store):
    log_pair(client, "a", ["u1", "u2", "u3"], "v1", ["yes", "yes", "no"])
    log_pair(client, "b", ["u4", "u5"], "v2", ["no", "yes"])
    feedback = [{"id": "u1", "label": "yes", "timestamp": "2026-01-01T10:30:00Z"},
                {"id": "u2", "label": "no", "timestamp": "2026-01-01T11:00:00Z"},
                {"id": "u3", "label": "no", "timestamp": "2026-01-01T10:00:05Z"},
                {"id": "u4", "label": "no", "timestamp": "2026-01-02T10:00:00Z"},
                {"id": "nobody", "label": "yes"}]
    assert client.post("/feedback", json=feedback).json() == {"stored": 5}
    text = client.get("/metrics").text
    v1 = {"model_name": MODEL, "model_version": "v1"}
    v2 = {"model_name": MODEL, "model_version": "v2"}
    assert value(text, "driftloop_feedback_labels_total", **v1) == 3
    assert value(text, "driftloop_feedback_correct_total", **v1) == 2  # u1 and u3
    assert value(text, "driftloop_feedback_labels_total", **v2) == 1
    assert value(text, "driftloop_feedback_correct_total", **v2) == 1
    assert value(text, "driftloop_feedback_received_total", outcome="joined") == 4
    assert value(text, "driftloop_feedback_received_total", outcome="unmatched") == 1
    # lag: prediction Ce-Time 10:00:00 -> the labels' timestamps
    lag = {"model_name": MODEL}
    assert value(text, "driftloop_feedback_label_lag_seconds_count", **lag) == 4
    assert value(text, "driftloop_feedback_label_lag_seconds_sum", **lag) == 1800 + 3600 + 5 \
        + 86400
    assert value(text, "driftloop_feedback_label_lag_seconds_bucket", le="10.0", **lag) == 1
    assert value(text, "driftloop_feedback_label_lag_seconds_bucket", le="3600.0", **lag) == 3
    # the rows are stored whatever the live join made of them
    assert len(lines_under(store, "feedback")) == 5


def test_every_outcome_has_a_series_from_the_start(client):
    text = client.get("/metrics").text
    for outcome in OUTCOMES:
        assert value(text, "driftloop_feedback_received_total", outcome=outcome) == 0
    for route, codes in ROUTE_CODES.items():
        for code in codes:
            assert value(text, "driftloop_sink_requests_total", route=route, code=code) == 0


def test_a_second_label_is_relabelled_not_counted_twice(client):
    log_pair(client, "a", ["u1"], "v1", ["yes"])
    client.post("/feedback", json={"id": "u1", "label": "yes"})
    client.post("/feedback", json={"id": "u1", "label": "no"})  # a correction
    text = client.get("/metrics").text
    v1 = {"model_name": MODEL, "model_version": "v1"}
    assert value(text, "driftloop_feedback_labels_total", **v1) == 1
    assert value(text, "driftloop_feedback_correct_total", **v1) == 1
    assert value(text, "driftloop_feedback_received_total", outcome="relabelled") == 1


def test_a_version_without_a_correct_label_has_accuracy_zero_not_none(client):
    log_pair(client, "a", ["u1"], "v-bad", ["yes"])
    client.post("/feedback", json={"id": "u1", "label": "no"})
    text = client.get("/metrics").text
    bad = {"model_name": MODEL, "model_version": "v-bad"}
    assert value(text, "driftloop_feedback_labels_total", **bad) == 1
    assert value(text, "driftloop_feedback_correct_total", **bad) == 0


def test_a_label_before_its_response_and_for_a_lone_request_is_unmatched(start_sink, store):
    sink, server = start_sink(store, pending_ttl=0.2)
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        assert send(c, "r", REQUEST_TYPE, request_body(1, ids={0: "early"})).json()[
            "status"] == "pending"
        c.post("/feedback", json={"id": "early", "label": "yes"})  # its response is pending
        deadline = 50
        while sink.pending_count and deadline:  # written alone: a request, no prediction
            time.sleep(0.1)
            deadline -= 1
        c.post("/feedback", json={"id": "early", "label": "yes"})
        text = c.get("/metrics").text
    assert value(text, "driftloop_feedback_received_total", outcome="unmatched") == 2
    assert value(text, "driftloop_feedback_received_total", outcome="joined") == 0
    assert lines_under(store, "requests")[0]["logged"] == "request_only"


@pytest.mark.parametrize(("body", "status"), [
    (b"{", 400), (json.dumps({"id": "u1"}).encode(), 422),
    (json.dumps({"id": "u1", "label": "maybe"}).encode(), 422),
    (b"x" * (2 << 20), 413)])
def test_a_refused_feedback_body_counts_as_rejected(client, body, status):
    assert client.post("/feedback", content=body).status_code == status
    text = client.get("/metrics").text
    assert value(text, "driftloop_feedback_received_total", outcome="rejected") == 1
    assert value(text, "driftloop_sink_requests_total", route="feedback",
                 code=str(status)) == 1


def test_a_failed_feedback_write_is_a_503_and_joins_nothing(start_sink, store):
    sink, server = start_sink(store)
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        log_pair(c, "a", ["u1"], "v1", ["yes"])
        original = sink.writer.fsync

        def fail(*args: Any, **kwargs: Any) -> None:
            raise OSError(28, "No space left on device")

        sink.writer.fsync = fail
        assert c.post("/feedback", json={"id": "u1", "label": "yes"}).status_code == 503
        sink.writer.fsync = original
        text = c.get("/metrics").text
        assert value(text, "driftloop_feedback_received_total", outcome="joined") == 0
        assert value(text, "driftloop_sink_requests_total", route="feedback", code="503") == 1
        # the label can be sent again and then joins
        assert c.post("/feedback", json={"id": "u1", "label": "yes"}).status_code == 200
        text = c.get("/metrics").text
    assert value(text, "driftloop_feedback_received_total", outcome="joined") == 1


def test_every_answer_is_counted_by_route_and_code(client):
    log_pair(client, "a", ["u1"], "v1", ["yes"])
    client.post("/", content=b"{}", headers={"Content-Type": "application/json"})  # no Ce-*
    client.post("/feedback", json={"id": "u1", "label": "yes"})
    text = client.get("/metrics").text
    assert value(text, "driftloop_sink_requests_total", route="events", code="200") == 2
    assert value(text, "driftloop_sink_requests_total", route="events", code="400") == 1
    assert value(text, "driftloop_sink_requests_total", route="feedback", code="200") == 1
    assert value(text, "driftloop_sink_request_duration_seconds_count", route="events") == 3


# -- the bounds, on LiveQuality itself ------------------------------------------------------


def _record(rid: str, version: str = "v1", prediction: Any = "yes",
            timestamp: str = "2026-01-01T00:00:00+00:00") -> dict[str, Any]:
    return {"id": rid, "prediction": prediction, "model_version": version,
            "timestamp": timestamp}


def _counts(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for outcome in OUTCOMES:
        got = registry.get_sample_value("driftloop_feedback_received_total",
                                        {"outcome": outcome})
        out[outcome] = got or 0.0
    return out


def _label(rid: str, label: str = "yes") -> dict[str, str]:
    return {"id": rid, "label": label, "timestamp": "2026-01-01T01:00:00+00:00"}


def test_the_oldest_prediction_goes_first_when_the_map_is_full():
    registry = CollectorRegistry()
    quality = LiveQuality(registry, max_predictions=3)
    quality.logged([_record(f"r{i}") for i in range(5)], MODEL, 100.0)
    assert len(quality) == 3
    quality.feedback([_label("r0"), _label("r1"), _label("r2"), _label("r4")], 101.0)
    assert _counts(registry) == {"joined": 2, "relabelled": 0, "unmatched": 2, "rejected": 0}


def test_a_prediction_older_than_the_ttl_is_forgotten():
    registry = CollectorRegistry()
    quality = LiveQuality(registry, ttl=60.0)
    quality.logged([_record("old")], MODEL, 1000.0)
    quality.logged([_record("new")], MODEL, 1050.0)
    quality.feedback([_label("old"), _label("new")], 1061.0)  # old: 61 s, new: 11 s
    assert _counts(registry)["unmatched"] == 1 and _counts(registry)["joined"] == 1
    assert len(quality) == 1


def test_a_reused_id_points_at_its_latest_prediction():
    registry = CollectorRegistry()
    quality = LiveQuality(registry)
    quality.logged([_record("u", "v1", "no")], MODEL, 1.0)
    quality.logged([_record("u", "v2", "yes")], MODEL, 2.0)
    quality.feedback([_label("u", "yes")], 3.0)
    get = registry.get_sample_value
    assert get("driftloop_feedback_labels_total", {"model_name": MODEL, "model_version": "v2"}) == 1
    assert get("driftloop_feedback_labels_total", {"model_name": MODEL, "model_version": "v1"}) == 0
    assert get("driftloop_feedback_correct_total",
               {"model_name": MODEL, "model_version": "v2"}) == 1


def test_versions_beyond_the_bound_are_counted_as_other():
    registry = CollectorRegistry()
    quality = LiveQuality(registry, max_versions=2)
    quality.logged([_record(f"r{i}", f"v{i}") for i in range(4)], MODEL, 1.0)
    quality.feedback([_label(f"r{i}") for i in range(4)], 2.0)
    versions = {s.labels["model_version"]: s.value for family in registry.collect()
                for s in family.samples if s.name == "driftloop_feedback_labels_total"}
    assert versions == {"v0": 1, "v1": 1, "other": 2}


def test_lag_is_never_negative_and_missing_versions_are_unknown():
    registry = CollectorRegistry()
    quality = LiveQuality(registry)
    quality.logged([_record("u", "", timestamp="2026-01-01T02:00:00Z")], MODEL, 1.0)
    quality.feedback([_label("u")], 2.0)  # labelled at 01:00, an hour "before" 02:00
    get = registry.get_sample_value
    assert get("driftloop_feedback_label_lag_seconds_sum", {"model_name": MODEL}) == 0
    assert get("driftloop_feedback_labels_total",
               {"model_name": MODEL, "model_version": "unknown"}) == 1


def test_labels_compare_as_feedback_stores_them():
    assert [label_text(v) for v in (True, False, 1, "yes")] == ["true", "false", "1", "yes"]
    registry = CollectorRegistry()
    quality = LiveQuality(registry)
    quality.logged([_record("b", prediction=True), _record("i", prediction=1)], MODEL, 1.0)
    quality.feedback([_label("b", "true"), _label("i", "1")], 2.0)
    assert registry.get_sample_value("driftloop_feedback_correct_total",
                                     {"model_name": MODEL, "model_version": "v1"}) == 2


def test_bad_bounds_are_refused():
    for kwargs in ({"max_predictions": 0}, {"ttl": 0}, {"max_versions": 0}):
        with pytest.raises(ValueError, match="required"):
            LiveQuality(CollectorRegistry(), **kwargs)  # type: ignore[arg-type]


def test_memory_per_remembered_prediction_is_bounded():
    """The docstring's figure: ~350 bytes per entry with 40-character ids."""
    quality = LiveQuality(CollectorRegistry(), max_predictions=20_000)
    records = [_record(f"{i:040d}") for i in range(20_000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    quality.logged(records, MODEL, 1.0)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # the ids were made before tracing; in the sink the map is what keeps them alive
    per_entry = used / len(quality) + sys.getsizeof(records[0]["id"])
    assert 200 < per_entry < 450, per_entry
