"""The Kubernetes rollout backend against a stand-in of the Kubernetes API on 127.0.0.1.

The backend talks to the stand-in through the real ``kubernetes`` client over HTTP; the
stand-in simulates KServe's controller (revisions and the canary traffic split).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from driftloop.rollout import (
    PREVIOUS_URI_ANNOTATION,
    InferenceServiceNotFound,
    RolloutError,
    RolloutRejected,
    UnsupportedDeploymentMode,
    build_inference_service,
)
from driftloop.rollout.kube import KubeRolloutBackend, load_api_client
from standins.k8s_api import PREFIX, K8sApiStandIn, running

NS = "ml"
NAME = "fraud"
V1 = "gs://models/registry/models/fraud/v1"
V2 = "gs://models/registry/models/fraud/v2"
R1, R2, R3 = (f"{NAME}-predictor-{i:05d}" for i in (1, 2, 3))
OBJECT_PATH = f"{PREFIX}/namespaces/{NS}/inferenceservices/{NAME}"


@pytest.fixture
def api() -> Iterator[K8sApiStandIn]:
    yield from running()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def backend(api: K8sApiStandIn, sleeps: list[float]) -> Iterator[KubeRolloutBackend]:
    b = KubeRolloutBackend(NAME, NS, api_client=load_api_client(host=api.url),
                           sleep=sleeps.append, request_timeout=5.0, max_attempts=3,
                           backoff_base=0.25)
    try:
        yield b
    finally:
        b.api_client.close()


@pytest.fixture
def deployed(api: K8sApiStandIn, backend: KubeRolloutBackend) -> KubeRolloutBackend:
    """The service exists and serves V1 (created through the backend), requests cleared."""
    backend.ensure(V1)
    api.requests.clear()
    return backend


def _spec(api: K8sApiStandIn) -> dict[str, Any]:
    return api.get(NS, NAME)["spec"]["predictor"]


def _traffic(response: dict[str, Any]) -> dict[str, int]:
    shares: dict[str, int] = {}
    for target in response["status"]["components"]["predictor"]["traffic"]:
        shares[target["revisionName"]] = shares.get(target["revisionName"], 0) + target["percent"]
    return shares


def _raw(api: K8sApiStandIn, method: str, path: str, body: Any,
         content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{api.url}{path}", data=json.dumps(body).encode(),
                                     method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# -- create, read, patch ------------------------------------------------------------------


def test_ensure_creates_with_post_once_and_get_reads_the_state(api, backend):
    state = backend.ensure(V1)
    assert [(r.method, r.path, r.status) for r in api.requests] == [
        ("GET", OBJECT_PATH, 404),
        ("POST", f"{PREFIX}/namespaces/{NS}/inferenceservices", 201),
    ]
    created = api.requests[1].json
    assert created["apiVersion"] == "serving.kserve.io/v1beta1"
    assert created["kind"] == "InferenceService"
    assert created["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert created["spec"]["predictor"]["model"] == {
        "modelFormat": {"name": "sklearn"}, "runtime": "driftloop-predictor",
        "protocolVersion": "v1", "storageUri": V1,
    }
    assert state.storage_uri == V1 and state.canary_storage_uri is None
    assert state.traffic_by_revision() == {R1: 100}
    assert state.latest_rolled_out_revision == R1 and state.ready and state.reconciled

    api.requests.clear()
    assert backend.ensure(V1) == backend.get() == state
    assert {r.method for r in api.requests} == {"GET"}


def test_patch_is_a_merge_patch_with_the_resource_version(api, deployed):
    before = api.get(NS, NAME)["metadata"]["resourceVersion"]
    deployed.set_canary(V2, 10)
    (patch,) = api.patches()
    assert patch.content_type == "application/merge-patch+json"
    assert patch.path == OBJECT_PATH and patch.status == 200
    assert patch.json == {
        "metadata": {"annotations": {PREVIOUS_URI_ANNOTATION: V1}, "resourceVersion": before},
        "spec": {"predictor": {"model": {"storageUri": V2}, "canaryTrafficPercent": 10}},
    }
    after = api.get(NS, NAME)["metadata"]
    assert int(after["resourceVersion"]) > int(before) and after["generation"] == 2
    # the merge patch kept everything it did not name
    assert _spec(api)["model"]["runtime"] == "driftloop-predictor"
    assert _spec(api)["minReplicas"] == 1


# -- the canary steps ---------------------------------------------------------------------------


def test_canary_at_10_percent_splits_90_10_across_the_two_revisions(api, deployed):
    state = deployed.set_canary(V2, 10)
    assert api.revision_uris(NS, NAME) == {R1: V1, R2: V2}
    assert state.traffic_by_revision() == {R2: 10, R1: 90}
    prev = [t for t in state.traffic if t.tag == "prev"]
    assert [(t.revision_name, t.percent, t.latest_revision) for t in prev] == [(R1, 90, False)]
    assert state.storage_uri == V1 and state.canary_storage_uri == V2
    assert state.canary_traffic_percent == 10
    assert state.latest_ready_revision == R2 and state.latest_rolled_out_revision == R1
    assert deployed.get() == state


def test_advance_to_50_then_promote_at_100(api, deployed):
    deployed.set_canary(V2, 10)
    half = deployed.set_traffic(50)
    assert half.traffic_by_revision() == {R2: 50, R1: 50}
    done = deployed.set_traffic(100)
    assert done.traffic_by_revision() == {R2: 100}
    assert done.latest_rolled_out_revision == R2
    assert done.previous_rolled_out_revision == R1
    assert done.storage_uri == V2 and done.canary_storage_uri is None
    assert "canaryTrafficPercent" not in _spec(api)
    assert api.applied_patch_bodies()[1:] == [
        {"spec": {"predictor": {"canaryTrafficPercent": 50}}},
        {"spec": {"predictor": {"canaryTrafficPercent": None}}},  # promote: the field is removed
    ]
    assert set(api.revision_uris(NS, NAME)) == {R1, R2}  # routing changes make no revision


def test_rollback_during_a_canary_pins_the_old_revision_first(api, deployed):
    deployed.set_canary(V2, 10)
    deployed.set_traffic(50)
    api.requests.clear()
    state = deployed.rollback()
    patches = api.patches()
    assert api.applied_patch_bodies() == [
        {"spec": {"predictor": {"canaryTrafficPercent": 0}}},
        {"spec": {"predictor": {"model": {"storageUri": V1}}}},
        {"spec": {"predictor": {"canaryTrafficPercent": None}}},
    ]
    # after the first patch every request goes to the old revision already
    assert _traffic(patches[0].response) == {R2: 0, R1: 100}
    # the restored spec is a new revision serving V1, still on 0 % until the last patch
    assert _traffic(patches[1].response) == {R3: 0, R1: 100}
    assert api.revision_uris(NS, NAME) == {R1: V1, R2: V2, R3: V1}
    assert state.traffic_by_revision() == {R3: 100}
    assert state.storage_uri == V1 == _spec(api)["model"]["storageUri"]
    assert state.canary_storage_uri is None and state.canary_traffic_percent is None


def test_rollback_after_promotion_returns_to_the_previous_model(api, deployed):
    deployed.set_canary(V2, 10)
    deployed.set_traffic(100)
    api.requests.clear()
    state = deployed.rollback()
    patches = api.patches()
    assert [p.json["spec"] for p in patches] == [
        {"predictor": {"canaryTrafficPercent": 0}},
        {"predictor": {"model": {"storageUri": V1}}},
        {"predictor": {"canaryTrafficPercent": None}},
    ]
    assert _traffic(patches[0].response) == {R2: 0, R1: 100}
    first = patches[0].response["status"]["components"]["predictor"]
    assert first["latestRolledoutRevision"] == R1  # KServe moves it back to the previous one
    assert state.traffic_by_revision() == {R3: 100}
    assert api.revision_uris(NS, NAME)[R3] == V1
    assert state.storage_uri == V1


def test_an_interrupted_rollback_resumes(api, deployed):
    deployed.set_canary(V2, 10)
    # a rollback that died after its first patch (canaryTrafficPercent 0)
    status, _ = _raw(api, "PATCH", OBJECT_PATH,
                     {"spec": {"predictor": {"canaryTrafficPercent": 0}}},
                     "application/merge-patch+json")
    assert status == 200
    api.requests.clear()
    state = deployed.rollback()
    assert api.applied_patch_bodies() == [
        {"spec": {"predictor": {"model": {"storageUri": V1}}}},
        {"spec": {"predictor": {"canaryTrafficPercent": None}}},
    ]
    assert state.storage_uri == V1 and state.traffic_by_revision() == {R3: 100}


# -- idempotence ------------------------------------------------------------------------------


def test_reapplying_a_step_sends_no_patch(api, deployed):
    deployed.set_canary(V2, 10)
    deployed.set_canary(V2, 10)
    assert len(api.patches()) == 1
    deployed.set_traffic(50)
    deployed.set_traffic(50)
    deployed.set_canary(V2, 50)
    assert len(api.patches()) == 2
    deployed.set_traffic(100)
    deployed.set_traffic(100)
    deployed.set_canary(V2, 100)
    assert len(api.patches()) == 3
    deployed.rollback()
    assert len(api.patches()) == 6
    deployed.rollback()
    deployed.ensure(V1)
    assert len(api.patches()) == 6
    assert {r.method for r in api.requests} <= {"GET", "PATCH"}


def test_steps_out_of_order_are_refused_without_a_patch(api, deployed):
    with pytest.raises(RolloutError, match="no canary in progress"):
        deployed.set_traffic(50)
    with pytest.raises(RolloutError, match="already the rolled-out model"):
        deployed.set_canary(V1, 10)
    deployed.set_canary(V2, 10)
    with pytest.raises(RolloutError, match=r"stable model .* call rollback\(\)"):
        deployed.set_canary(V1, 10)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        deployed.set_traffic(150)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        deployed.set_canary(V2, -1)
    assert len(api.patches()) == 1


# -- concurrency and failures -------------------------------------------------------------------


def test_a_concurrent_write_between_get_and_patch_is_retried(api, deployed):
    api.write_between(NS, NAME, {"metadata": {"labels": {"team": "risk"}}})
    state = deployed.set_canary(V2, 10)
    assert [(r.method, r.status) for r in api.requests] == [
        ("GET", 200), ("PATCH", 409), ("GET", 200), ("PATCH", 200),
    ]
    conflict = api.requests[1].response
    assert conflict["kind"] == "Status" and conflict["reason"] == "Conflict"
    assert conflict["code"] == 409 and conflict["status"] == "Failure"
    first, second = api.patches()
    assert first.json["metadata"]["resourceVersion"] != second.json["metadata"]["resourceVersion"]
    obj = api.get(NS, NAME)
    assert obj["metadata"]["labels"]["team"] == "risk"  # their change
    assert obj["spec"]["predictor"]["model"]["storageUri"] == V2  # and ours
    assert obj["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert state.canary_storage_uri == V2 and state.storage_uri == V1
    assert state.traffic_by_revision()[state.latest_ready_revision] == 10


def test_conflicts_that_never_stop_give_up_after_a_bound(api, deployed):
    api.write_between(NS, NAME, {"metadata": {"labels": {"n": "x"}}}, times=1)
    api.write_between(NS, NAME, {"metadata": {"labels": {"n": "y"}}}, times=1)
    api.write_between(NS, NAME, {"metadata": {"labels": {"n": "x"}}}, times=1)
    deployed.max_conflict_retries = 2
    with pytest.raises(RolloutError, match=r"changed under us 3 times .*409 Conflict"):
        deployed.set_canary(V2, 10)
    assert [r.status for r in api.patches()] == [409, 409, 409]
    assert _spec(api)["model"]["storageUri"] == V1


def test_not_found_is_one_clear_line(api, backend):
    with pytest.raises(InferenceServiceNotFound) as caught:
        backend.get()
    message = str(caught.value)
    assert "\n" not in message
    assert f"InferenceService {NS}/{NAME} not found" in message and api.url in message
    with pytest.raises(InferenceServiceNotFound):
        backend.set_canary(V2, 10)
    assert api.patches() == []


def test_an_invalid_change_is_reported_with_the_servers_message(api, deployed):
    with pytest.raises(RolloutRejected) as caught:
        deployed.set_canary("ftp://example.com/models/fraud/v2", 10)
    message = str(caught.value)
    assert "\n" not in message and "(422)" in message
    assert "spec.predictor.model.storageUri" in message
    assert "StorageUri [ftp://example.com/models/fraud/v2] is not supported" in message
    assert [r.status for r in api.patches()] == [422]
    assert api.patches()[0].response["reason"] == "Invalid"
    assert _spec(api)["model"]["storageUri"] == V1


def test_raw_deployment_is_refused_before_any_patch(api, backend):
    obj = build_inference_service(NAME, NS, V1)
    obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    api.put(obj)
    for step in (lambda: backend.set_canary(V2, 10), lambda: backend.set_traffic(100),
                 backend.rollback, lambda: backend.ensure(V1)):
        with pytest.raises(UnsupportedDeploymentMode) as caught:
            step()
        message = str(caught.value)
        assert "RawDeployment" in message and "ignores canaryTrafficPercent" in message
        assert "\n" not in message
    assert api.patches() == []


def test_raw_deployment_by_cluster_default_is_seen_in_the_status(api, backend):
    obj = build_inference_service(NAME, NS, V1)
    del obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    api.put(obj)
    with api._lock:  # the controller reports the mode it chose (the cluster's default)
        api._objects[(NS, NAME)]["status"]["deploymentMode"] = "RawDeployment"
    with pytest.raises(UnsupportedDeploymentMode):
        backend.set_canary(V2, 10)
    assert api.patches() == []


def test_transient_server_errors_are_retried_with_backoff(api, deployed, sleeps):
    api.fail("PATCH", status=500, times=1)
    api.fail("GET", status=503, reason="ServiceUnavailable", message="apiserver busy", times=1)
    state = deployed.set_canary(V2, 10)
    assert [(r.method, r.status) for r in api.requests] == [
        ("GET", 503), ("GET", 200), ("PATCH", 500), ("PATCH", 200),
    ]
    assert sleeps == [0.25, 0.25]  # one retry each, first backoff step
    assert state.canary_traffic_percent == 10


def test_backoff_doubles_and_gives_up_after_the_bound(api, deployed, sleeps):
    api.fail("GET", status=500, times=5)
    with pytest.raises(RolloutError, match=r"failed 3 times; last error: HTTP 500"):
        deployed.get()
    assert sleeps == [0.25, 0.5]
    assert deployed.backoff(10) == deployed.backoff_max


def test_a_timed_out_patch_that_was_applied_is_not_applied_twice(api, sleeps):
    with KubeRolloutBackend(NAME, NS, api_client=load_api_client(host=api.url),
                            sleep=sleeps.append, request_timeout=0.3) as backend:
        backend.ensure(V1)
        api.delay("PATCH", seconds=0.8)  # the server applies it; the answer comes too late
        state = backend.set_canary(V2, 10)
    statuses = [(r.method, r.status) for r in api.requests if r.method == "PATCH"]
    # the retry carries the old resourceVersion: 409, re-read, nothing left to do
    assert statuses == [("PATCH", 200), ("PATCH", 409)]
    assert len(sleeps) == 1
    assert state.canary_storage_uri == V2 and state.traffic_by_revision() == {R2: 10, R1: 90}
    assert len(api.revisions(NS, NAME)) == 2


# -- the stand-in's own API behaviour -----------------------------------------------------------


def test_standin_answers_like_an_api_server(api, deployed):
    rv = api.get(NS, NAME)["metadata"]["resourceVersion"]
    status, body = _raw(api, "PATCH", OBJECT_PATH, [{"op": "add"}],
                        "application/json-patch+json")
    assert status == 415 and body["reason"] == "UnsupportedMediaType"
    status, body = _raw(api, "PATCH", OBJECT_PATH, {"spec": {}},
                        "application/strategic-merge-patch+json")
    assert status == 415
    status, body = _raw(api, "PATCH", OBJECT_PATH,
                        {"spec": {"predictor": {"canaryTrafficPercent": 150}}},
                        "application/merge-patch+json")
    assert status == 422 and body["reason"] == "Invalid"
    assert "TrafficPercent must be between [0, 100]" in body["message"]
    status, body = _raw(api, "PATCH", OBJECT_PATH,
                        {"spec": {"predictor": {"model": {"storageUri": None}}}},
                        "application/merge-patch+json")
    assert status == 422 and "storageUri: Required value" in body["message"]
    status, body = _raw(api, "PATCH", OBJECT_PATH,
                        {"metadata": {"resourceVersion": "1"}, "spec": {}},
                        "application/merge-patch+json")
    assert status == 409 and body["reason"] == "Conflict"
    assert api.get(NS, NAME)["metadata"]["resourceVersion"] == rv  # nothing changed
    status, body = _raw(api, "POST", f"{PREFIX}/namespaces/{NS}/inferenceservices",
                        build_inference_service(NAME, NS, V1))
    assert status == 409 and body["reason"] == "AlreadyExists"
    status, body = _raw(api, "GET", f"{PREFIX}/namespaces/{NS}/inferenceservices", None)
    assert status == 200 and [o["metadata"]["name"] for o in body["items"]] == [NAME]
    # a patch of the status is ignored (status subresource); a no-op changes nothing
    status, body = _raw(api, "PATCH", OBJECT_PATH, {"status": {"url": "http://x"}},
                        "application/merge-patch+json")
    assert status == 200 and body["metadata"]["resourceVersion"] == rv
    status, body = _raw(api, "GET", f"{PREFIX}/namespaces/{NS}/inferenceservices/nope", None)
    assert status == 404 and body["reason"] == "NotFound" and body["code"] == 404


def test_forbidden_names_the_rbac_rule_needed(api, deployed):
    api.fail("PATCH", status=403, reason="Forbidden",
             message='inferenceservices.serving.kserve.io "fraud" is forbidden: User '
                     '"system:serviceaccount:ml:pipeline-runner" cannot patch resource')
    with pytest.raises(RolloutError) as caught:
        deployed.set_canary(V2, 10)
    message = str(caught.value)
    assert "(403)" in message and "cannot patch resource" in message
    assert "get, patch and create on inferenceservices.serving.kserve.io in namespace ml" in message
    assert _spec(api)["model"]["storageUri"] == V1


def test_a_kserve_model_object_is_a_template(api, sleeps):
    from kubernetes.client import V1ObjectMeta

    from driftloop.serving import clean_argv

    with clean_argv():  # kserve parses sys.argv on import
        from kserve import (
            V1beta1InferenceService,
            V1beta1InferenceServiceSpec,
            V1beta1ModelFormat,
            V1beta1ModelSpec,
            V1beta1PredictorSpec,
        )
    template = V1beta1InferenceService(
        api_version="serving.kserve.io/v1beta1", kind="InferenceService",
        metadata=V1ObjectMeta(labels={"team": "risk"}),
        spec=V1beta1InferenceServiceSpec(predictor=V1beta1PredictorSpec(
            min_replicas=2,
            model=V1beta1ModelSpec(model_format=V1beta1ModelFormat(name="sklearn"),
                                   runtime="driftloop-predictor"))))
    with KubeRolloutBackend(NAME, NS, api_client=load_api_client(host=api.url),
                            template=template, sleep=sleeps.append) as backend:
        state = backend.ensure(V1)
    created = next(r.json for r in api.requests if r.method == "POST")
    assert created["spec"]["predictor"]["minReplicas"] == 2  # camelCase, as a cluster expects
    assert created["spec"]["predictor"]["model"]["storageUri"] == V1
    assert created["metadata"]["labels"] == {"team": "risk"}
    assert created["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert state.traffic_by_revision() == {R1: 100}


def test_wait_until_reconciled_waits_for_the_status_to_catch_up(api, deployed):
    state = deployed.set_canary(V2, 10)
    assert deployed.wait_until_reconciled(timeout=1, poll=0.01) == state
    with api._lock:  # a controller that has not caught up yet: status of the old spec
        obj = api._objects[(NS, NAME)]
        obj["metadata"]["generation"] += 1
        obj["spec"]["predictor"]["canaryTrafficPercent"] = 50
    lagging = deployed.get()
    assert not lagging.reconciled and not lagging.traffic_matches_spec
    with pytest.raises(RolloutError, match=r"not reconciled and ready after 0\.05 s"):
        deployed.wait_until_reconciled(timeout=0.05, poll=0.01)
