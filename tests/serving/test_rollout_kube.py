"""The Kubernetes rollout backend against a stand-in of the Kubernetes API on 127.0.0.1.

The backend talks to the stand-in through the real ``kubernetes`` client over HTTP; the
stand-in plays KServe's admission, controller and Knative (:mod:`standins.k8s_api`). The
rollout tests run against each KServe release it plays: 0.20 (the mutating webhook
rewrites ``Serverless`` to ``Knative``, ``status.deploymentMode: Knative``), 0.16
(``status.deploymentMode: Knative`` but the annotation kept, and a webhook that refuses the
mismatch) and 0.15 (``Serverless`` everywhere). Every body the backend sends is checked
against kserve 0.20's own models (``V1beta1InferenceService`` and what it nests): an
unknown field fails the test.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
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
from driftloop.rollout.errors import (
    AdmissionDenied,
    PermissionDenied,
    RevisionFailed,
    RolloutTimeout,
)
from driftloop.rollout.inference_service import (
    DEPLOYMENT_MODE_ANNOTATION,
    TEMPLATE_GENERATION_ANNOTATION,
    ServiceState,
    check_serverless,
)
from driftloop.rollout.kube import KubeRolloutBackend, load_api_client
from standins.k8s_api import PREFIX, K8sApiStandIn

NS = "ml"
NAME = "fraud"
V1 = "gs://models/registry/models/fraud/v1"
V2 = "gs://models/registry/models/fraud/v2"
R1, R2, R3 = (f"{NAME}-predictor-{i:05d}" for i in (1, 2, 3))
OBJECT_PATH = f"{PREFIX}/namespaces/{NS}/inferenceservices/{NAME}"
RELEASES = ("0.20", "0.16", "0.15")
#: The name each release stores in the annotation after our create (with Serverless).
STORED_MODE = {"0.20": "Knative", "0.16": "Serverless", "0.15": "Serverless"}
RBAC_MESSAGE = ('inferenceservices.serving.kserve.io "fraud" is forbidden: User '
                '"system:serviceaccount:ml:pipeline-runner" cannot patch resource '
                '"inferenceservices" in API group "serving.kserve.io" in the namespace "ml"')


# -- every body we send is a kserve model -------------------------------------------------


def _model_class(type_name: str) -> Any:
    import kubernetes.client

    from driftloop.serving import clean_argv

    with clean_argv():  # kserve parses sys.argv on import
        import kserve.models
    return getattr(kserve.models, type_name, None) or getattr(kubernetes.client, type_name,
                                                              None)


_SCALARS = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float),
            "object": (object,), "datetime": (str,), "date": (str,)}


def patch_problems(value: Any, type_name: str, path: str) -> list[str]:
    """Each key of a merge patch against kserve's (and kubernetes') models; null deletes."""
    if value is None:
        return []
    if type_name in _SCALARS:
        ok = isinstance(value, _SCALARS[type_name]) and not (
            type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{path}: {value!r} is not {type_name}"]
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [p for i, v in enumerate(value) for p in patch_problems(v, type_name[5:-1],
                                                                       f"{path}[{i}]")]
    if type_name.startswith("dict("):
        inner = type_name[5:-1].split(", ", 1)[1]
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        return [p for k, v in value.items() for p in patch_problems(v, inner, f"{path}.{k}")]
    cls = _model_class(type_name)
    if cls is None:
        return [f"{path}: no model {type_name}"]
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({type_name})"]
    fields = {json_name: cls.openapi_types[attr] for attr, json_name in cls.attribute_map.items()}
    problems = []
    for key, item in value.items():
        if key not in fields:
            problems.append(f"{path}.{key}: not a field of {type_name}")
        else:
            problems += patch_problems(item, fields[key], f"{path}.{key}")
    return problems


def body_problems(api: K8sApiStandIn) -> list[str]:
    """Every create and patch the backend sent, checked against kserve 0.20's models.

    A create must deserialise strictly into ``V1beta1InferenceService`` (unknown and
    missing required fields fail, tests/serving/test_manifest_models.py); a merge patch
    may name only fields of the models, and the object it leaves must deserialise too.
    """
    from test_manifest_models import model_problems

    problems: list[str] = []
    for request in api.requests:
        if "raw" in request.query or not 200 <= request.status < 300:
            continue  # the tests' own hand-made requests
        if request.method == "POST":
            problems += model_problems(request.json, "POST body")[1]
        elif request.method == "PATCH":
            problems += patch_problems(request.json, "V1beta1InferenceService", "PATCH body")
            stored = {k: v for k, v in request.response.items() if k != "status"}
            problems += model_problems(stored, "object after PATCH")[1]
    return problems


# -- fixtures ------------------------------------------------------------------------------


@dataclass
class Clock:
    """A fake monotonic clock that the backend's sleeps advance (no real waiting)."""

    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=RELEASES)
def kserve(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def api(request: pytest.FixtureRequest) -> Iterator[K8sApiStandIn]:
    release = request.getfixturevalue("kserve") if "kserve" in request.fixturenames else "0.20"
    standin = K8sApiStandIn(kserve=release).start()
    try:
        yield standin
        problems = body_problems(standin)
    finally:
        standin.stop()
    assert problems == []


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps(clock: Clock) -> list[float]:
    return clock.sleeps


@pytest.fixture
def backend(api: K8sApiStandIn, clock: Clock) -> Iterator[KubeRolloutBackend]:
    b = KubeRolloutBackend(NAME, NS, api_client=load_api_client(host=api.url),
                           sleep=clock.sleep, clock=clock, request_timeout=5.0, max_attempts=3,
                           backoff_base=0.25, ready_timeout=30.0, poll_interval=1.0)
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
    request = urllib.request.Request(f"{api.url}{path}?raw=1", data=json.dumps(body).encode(),
                                     method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _merge(api: K8sApiStandIn, body: Any) -> tuple[int, dict[str, Any]]:
    return _raw(api, "PATCH", OBJECT_PATH, body, "application/merge-patch+json")


def _gen(n: int) -> dict[str, Any]:
    return {"annotations": {TEMPLATE_GENERATION_ANNOTATION: str(n)}}


# -- create, read, patch, in each KServe release ---------------------------------------------


def test_ensure_creates_with_post_once_and_get_reads_the_state(api, backend, kserve):
    state = backend.ensure(V1)
    assert [(r.method, r.path, r.status) for r in api.requests] == [
        ("GET", OBJECT_PATH, 404),
        ("POST", f"{PREFIX}/namespaces/{NS}/inferenceservices", 201),
        ("GET", OBJECT_PATH, 200),  # the wait: ready and serving
    ]
    created = api.requests[1].json
    assert created["apiVersion"] == "serving.kserve.io/v1beta1"
    assert created["kind"] == "InferenceService"
    assert created["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] == "Serverless"
    assert created["spec"]["predictor"]["model"] == {
        "modelFormat": {"name": "sklearn"}, "runtime": "driftloop-predictor",
        "protocolVersion": "v1", "storageUri": V1,
    }
    stored = api.get(NS, NAME)
    assert stored["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] == STORED_MODE[kserve]
    assert stored["status"].get("deploymentMode") == {"0.15": None}.get(kserve, "Knative")
    assert state.storage_uri == V1 and state.canary_storage_uri is None
    assert state.traffic_by_revision() == {R1: 100} and state.knative
    assert state.latest_rolled_out_revision == R1 and state.ready and state.settled

    api.requests.clear()
    assert backend.ensure(V1) == backend.get() == state
    assert {r.method for r in api.requests} == {"GET"}


def test_patch_is_a_merge_patch_with_the_resource_version(api, deployed, kserve):
    before = api.get(NS, NAME)["metadata"]["resourceVersion"]
    deployed.set_canary(V2, 10)
    (patch,) = api.patches()
    assert patch.content_type == "application/merge-patch+json"
    assert patch.path == OBJECT_PATH and patch.status == 200
    annotations = {PREVIOUS_URI_ANNOTATION: V1, TEMPLATE_GENERATION_ANNOTATION: "2"}
    if kserve == "0.16":  # its webhook refuses Serverless once the status reads Knative
        annotations[DEPLOYMENT_MODE_ANNOTATION] = "Knative"
    assert patch.json == {
        "metadata": {"annotations": annotations, "resourceVersion": before},
        "spec": {"predictor": {"model": {"storageUri": V2}, "canaryTrafficPercent": 10}},
    }
    after = api.get(NS, NAME)["metadata"]
    assert int(after["resourceVersion"]) > int(before) and after["generation"] == 2
    # the merge patch kept everything it did not name
    assert _spec(api)["model"]["runtime"] == "driftloop-predictor"
    assert _spec(api)["minReplicas"] == 1


@pytest.mark.parametrize("kserve", ["0.16"])
def test_kserve_016_refuses_an_update_that_keeps_serverless(api, deployed, kserve):
    # kserve/kserve#4798: 0.16 stores status.deploymentMode Knative for a Serverless
    # annotation, and its webhook then refuses every update that keeps the annotation.
    assert api.get(NS, NAME)["status"]["deploymentMode"] == "Knative"
    status, body = _merge(api, {"spec": {"predictor": {"canaryTrafficPercent": 10}}})
    assert (status, body["reason"], body["code"]) == (403, "Forbidden", 403)
    assert body["message"] == (
        'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the '
        "request: update rejected: deploymentMode cannot be changed from 'Knative' to "
        "'Serverless'")
    assert "details" not in body
    state = deployed.set_canary(V2, 10)  # ours renames the annotation in the same patch
    assert state.canary_traffic_percent == 10 and state.deployment_mode == "Knative"


# -- the canary steps ---------------------------------------------------------------------------


def test_canary_at_10_percent_splits_90_10_across_the_two_revisions(api, deployed, kserve):
    state = deployed.set_canary(V2, 10)
    assert api.revision_uris(NS, NAME) == {R1: V1, R2: V2}
    assert state.traffic_by_revision() == {R2: 10, R1: 90}
    prev = [t for t in state.traffic if t.tag == "prev"]
    assert [(t.revision_name, t.percent, t.latest_revision) for t in prev] == [(R1, 90, False)]
    assert state.storage_uri == V1 and state.canary_storage_uri == V2
    assert state.canary_traffic_percent == 10 and state.settled
    assert state.latest_ready_revision == R2 and state.latest_rolled_out_revision == R1
    assert deployed.get() == state


def test_advance_to_50_then_promote_at_100(api, deployed, kserve):
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


def test_rollback_during_a_canary_pins_the_old_revision_first(api, deployed, kserve):
    deployed.set_canary(V2, 10)
    deployed.set_traffic(50)
    api.requests.clear()
    state = deployed.rollback()
    patches = api.patches()
    assert api.applied_patch_bodies() == [
        {"spec": {"predictor": {"canaryTrafficPercent": 0}}},
        {"metadata": _gen(5), "spec": {"predictor": {"model": {"storageUri": V1}}}},
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


def test_rollback_after_promotion_returns_to_the_previous_model(api, deployed, kserve):
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


def test_an_interrupted_rollback_resumes(api, deployed, kserve):
    deployed.set_canary(V2, 10)
    # a rollback that died after its first patch (canaryTrafficPercent 0)
    status, _ = _merge(api, {"metadata": {"annotations": {DEPLOYMENT_MODE_ANNOTATION: (
        api.get(NS, NAME)["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION])}},
        "spec": {"predictor": {"canaryTrafficPercent": 0}}})
    assert status == 200
    api.requests.clear()
    state = deployed.rollback()
    assert api.applied_patch_bodies() == [
        {"metadata": _gen(4), "spec": {"predictor": {"model": {"storageUri": V1}}}},
        {"spec": {"predictor": {"canaryTrafficPercent": None}}},
    ]
    assert state.storage_uri == V1 and state.traffic_by_revision() == {R3: 100}


# -- idempotence ------------------------------------------------------------------------------


def test_reapplying_a_step_sends_no_patch(api, deployed, kserve):
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


# -- a step waits until it is in effect -------------------------------------------------------


def test_a_step_waits_for_a_slow_controller(api, deployed, clock, kserve):
    # Before the fix set_canary returned the PATCH's answer, whose status still showed R1
    # alone: a step "succeeded" before the canary revision existed.
    api.lag(reads=3)
    state = deployed.set_canary(V2, 10)
    patch = api.patches()[0]
    assert _traffic(patch.response) == {R1: 100}  # the write's own answer: the old status
    assert clock.sleeps == [1.0, 1.0, 1.0]  # three stale reads, one poll interval each
    assert state.latest_created_revision == R2 and state.traffic_by_revision() == {R2: 10, R1: 90}
    assert state.settled


def test_observed_generation_is_the_knative_services_counter(api, deployed):
    # Before the fix "reconciled" meant observedGeneration >= generation. KServe copies
    # observedGeneration from the Knative Service, which a metadata change bumps too: here
    # the stale status right after the restore patch of a rollback passed that check
    # while the revision serving V1 again did not exist yet.
    deployed.set_canary(V2, 10)
    api.write_between(NS, NAME, {"metadata": {"labels": {"team": "risk"}}})  # Knative: +1
    deployed.get()
    after_label = api.get(NS, NAME)
    assert after_label["status"]["observedGeneration"] > after_label["metadata"]["generation"]
    api.lag(reads=2)
    reads: list[ServiceState] = []
    steps: list[ServiceState] = []
    real_get, real_await = deployed.get, deployed._await

    def recording_get() -> ServiceState:
        reads.append(real_get())
        return reads[-1]

    def recording_await(*args: Any, **kwargs: Any) -> ServiceState:
        steps.append(real_await(*args, **kwargs))
        return steps[-1]

    deployed.get = recording_get  # type: ignore[method-assign]
    deployed._await = recording_await  # type: ignore[method-assign]
    deployed.rollback()
    restored = f"{NAME}-predictor-00004"  # R3 is the revision the label change made
    stale = [s for s in reads if s.spec_storage_uri == V1 and s.canary_traffic_percent == 0
             and restored not in s.traffic_by_revision()]
    # what the old check took for "reconciled": ready, the traffic as the spec says (0 %
    # on the latest ready revision), and observedGeneration >= generation
    assert stale and all(s.observed_generation >= s.generation and s.settled for s in stale)
    pin, restore, promote = steps[:3]
    assert pin.traffic_by_revision() == {R3: 0, R1: 100}
    assert restore.latest_created_revision == restored  # the restore waited for its revision
    assert restore.traffic_by_revision() == {restored: 0, R1: 100}
    assert promote.traffic_by_revision() == {restored: 100} and promote.settled
    assert api.revision_uris(NS, NAME)[restored] == V1


def test_a_model_that_never_loads_fails_the_step_with_knatives_reason(api, deployed, kserve):
    # Before the fix the PATCH's 200 was the step's success: the canary that never
    # became ready was reported as started.
    api.break_model(V2, "RuntimeError: Failed to fetch model. No model found in "
                        f"{V2}.")
    with pytest.raises(RevisionFailed) as caught:
        deployed.set_canary(V2, 10)
    failure = caught.value
    assert failure.reason == "RevisionFailed" and failure.revision == R2
    assert f'Revision "{R2}" failed with message' in failure.detail
    assert "RevisionFailed" in str(caught.value) and "\n" not in str(caught.value)
    state = deployed.get()
    assert state.latest_created_revision == R2 and state.latest_ready_revision == R1
    assert state.traffic_by_revision() == {R1: 100}  # Knative keeps serving the ready one
    assert (state.transition_status, state.failure_reason) == ("BlockedByFailedLoad",
                                                               "ModelLoadFailed")
    assert "No model found" in state.failure_message
    back = deployed.rollback()  # what the rollout policy does next
    assert back.storage_uri == V1 and back.settled and back.traffic_by_revision() == {R3: 100}


def test_an_unsupported_scheme_is_accepted_and_times_out_with_the_controllers_event(
        api, deployed, clock):
    # KServe checks the scheme in its controller (utils.ValidateStorageURI), not at
    # admission: 200, no revision, no status change, one Warning event.
    with pytest.raises(RolloutTimeout) as caught:
        deployed.set_canary("ftp://example.com/models/fraud/v2", 10)
    message = str(caught.value)
    assert [r.status for r in api.patches()] == [200]
    assert "not in effect after 30 s" in message and "a new revision" in message
    assert "KServe's events: InternalError: StorageURI not supported" in message
    assert "StorageUri [ftp://example.com/models/fraud/v2] is not supported" in message
    assert sum(clock.sleeps) == 30.0 and len(api.revisions(NS, NAME)) == 1
    (event,) = api.events(NS, NAME)
    assert (event["type"], event["reason"]) == ("Warning", "InternalError")
    assert deployed.rollback().storage_uri == V1


# -- concurrency and failures -------------------------------------------------------------------


def test_a_concurrent_write_between_get_and_patch_is_retried(api, deployed):
    api.write_between(NS, NAME, {"metadata": {"labels": {"team": "risk"}}})
    state = deployed.set_canary(V2, 10)
    assert [(r.method, r.status) for r in api.requests] == [
        ("GET", 200), ("PATCH", 409), ("GET", 200), ("PATCH", 200), ("GET", 200),
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


def test_a_schema_violation_is_reported_with_the_servers_message(api, deployed):
    api.fail("PATCH", status=422, reason="Invalid", message=(
        'InferenceService.serving.kserve.io "fraud" is invalid: spec.predictor.'
        'canaryTrafficPercent: Invalid value: "string": spec.predictor.canaryTrafficPercent '
        'in body must be of type integer: "string"'))
    with pytest.raises(RolloutRejected) as caught:
        deployed.set_canary(V2, 10)
    message = str(caught.value)
    assert "\n" not in message and "(422)" in message
    assert "must be of type integer" in message and not isinstance(caught.value, AdmissionDenied)
    assert _spec(api)["model"]["storageUri"] == V1


@pytest.mark.parametrize("mode", ["RawDeployment", "Standard", "ModelMesh"])
def test_a_mode_without_traffic_split_is_refused_before_any_patch(api, backend, mode):
    obj = build_inference_service(NAME, NS, V1)
    obj["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] = mode
    api.put(obj)
    for step in (lambda: backend.set_canary(V2, 10), lambda: backend.set_traffic(100),
                 backend.rollback, lambda: backend.ensure(V1)):
        with pytest.raises(UnsupportedDeploymentMode) as caught:
            step()
        message = str(caught.value)
        assert {"RawDeployment": "Standard"}.get(mode, mode) in message
        assert "ignores canaryTrafficPercent" in message and "\n" not in message
    assert api.patches() == []


def test_knative_and_serverless_are_the_same_mode_read_status_first():
    # Before the fix only "Serverless" was accepted: every step refused KServe >= 0.17.
    obj = build_inference_service(NAME, NS, V1)
    for annotation, status, fine in [("Knative", None, True), ("Serverless", "Knative", True),
                                     ("Knative", "Knative", True), (None, None, True),
                                     ("Serverless", "Standard", False),
                                     ("Standard", None, False), ("serverless", None, False)]:
        annotations = obj["metadata"]["annotations"]
        annotations.pop(DEPLOYMENT_MODE_ANNOTATION, None)
        if annotation is not None:
            annotations[DEPLOYMENT_MODE_ANNOTATION] = annotation
        obj["status"] = {"deploymentMode": status} if status else {}
        if fine:
            check_serverless(obj, "isvc")
        else:
            with pytest.raises(UnsupportedDeploymentMode):
                check_serverless(obj, "isvc")


def test_raw_deployment_by_cluster_default_is_seen_in_the_status(api, backend):
    obj = build_inference_service(NAME, NS, V1)
    del obj["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION]
    api.put(obj)
    with api._lock:  # the controller reports the mode it chose (the cluster's default)
        api._objects[(NS, NAME)]["status"]["deploymentMode"] = "Standard"
    with pytest.raises(UnsupportedDeploymentMode, match="Standard"):
        backend.set_canary(V2, 10)
    assert api.patches() == []


def test_transient_server_errors_are_retried_with_backoff(api, deployed, sleeps):
    api.fail("PATCH", status=500, times=1)
    api.fail("GET", status=503, reason="ServiceUnavailable", message="apiserver busy", times=1)
    state = deployed.set_canary(V2, 10)
    assert [(r.method, r.status) for r in api.requests] == [
        ("GET", 503), ("GET", 200), ("PATCH", 500), ("PATCH", 200), ("GET", 200),
    ]
    assert sleeps == [0.25, 0.25]  # one retry each, first backoff step
    assert state.canary_traffic_percent == 10


def test_backoff_doubles_and_gives_up_after_the_bound(api, deployed, sleeps):
    api.fail("GET", status=500, times=5)
    with pytest.raises(RolloutError, match=r"failed 3 times; last error: HTTP 500"):
        deployed.get()
    assert sleeps == [0.25, 0.5]
    assert deployed.backoff(10) == deployed.backoff_max


def test_a_timed_out_patch_that_was_applied_is_not_applied_twice(api, clock):
    with KubeRolloutBackend(NAME, NS, api_client=load_api_client(host=api.url),
                            sleep=clock.sleep, clock=clock, request_timeout=0.3) as backend:
        backend.ensure(V1)
        api.delay("PATCH", seconds=0.8)  # the server applies it; the answer comes too late
        state = backend.set_canary(V2, 10)
    statuses = [(r.method, r.status) for r in api.requests if r.method == "PATCH"]
    # the retry carries the old resourceVersion: 409, re-read, nothing left to do
    assert statuses == [("PATCH", 200), ("PATCH", 409)]
    assert len(clock.sleeps) == 1
    assert state.canary_storage_uri == V2 and state.traffic_by_revision() == {R2: 10, R1: 90}
    assert len(api.revisions(NS, NAME)) == 2


# -- 403: whose refusal ---------------------------------------------------------------------


def test_forbidden_by_rbac_names_the_rule_needed(api, deployed):
    api.fail("PATCH", status=403, reason="Forbidden", message=RBAC_MESSAGE)
    with pytest.raises(PermissionDenied) as caught:
        deployed.set_canary(V2, 10)
    message = str(caught.value)
    assert "not allowed by RBAC (403)" in message and "cannot patch resource" in message
    assert "needs patch on inferenceservices.serving.kserve.io in namespace ml" in message
    assert _spec(api)["model"]["storageUri"] == V1


def test_a_webhook_denial_is_not_reported_as_rbac(api, deployed):
    # Before the fix every 403 read "the service account needs get, patch and create".
    status, body = _merge(api, {"spec": {"predictor": {"sklearn": {"storageUri": V2}}}})
    assert (status, body["reason"]) == (403, "Forbidden")  # KServe's webhook, really
    api.fail("PATCH", status=403, reason="Forbidden", message=body["message"])
    with pytest.raises(AdmissionDenied) as caught:
        deployed.set_canary(V2, 10)
    denial = caught.value
    assert denial.webhook == "inferenceservice.kserve-webhook-server.validator"
    assert denial.reason.startswith("exactly one of [SKLearn")
    assert "the object was refused, not the service account" in str(denial)
    assert "needs" not in str(denial) and isinstance(denial, RolloutRejected)


def test_other_forbidden_answers_are_neither_rbac_nor_a_webhook(api, deployed):
    api.fail("PATCH", status=403, reason="Forbidden", message=(
        'inferenceservices.serving.kserve.io "fraud" is forbidden: unable to create new '
        "content in namespace ml because it is being terminated"))
    with pytest.raises(RolloutRejected, match="not an RBAC rule") as caught:
        deployed.set_canary(V2, 10)
    assert not isinstance(caught.value, (AdmissionDenied, PermissionDenied))


# -- the stand-in's own API behaviour -----------------------------------------------------------


def test_standin_answers_like_an_api_server(api, deployed):
    rv = api.get(NS, NAME)["metadata"]["resourceVersion"]
    status, body = _raw(api, "PATCH", OBJECT_PATH, [{"op": "add"}],
                        "application/json-patch+json")
    assert status == 415 and body["reason"] == "UnsupportedMediaType"
    status, body = _raw(api, "PATCH", OBJECT_PATH, {"spec": {}},
                        "application/strategic-merge-patch+json")
    assert status == 415
    status, body = _merge(api, {"spec": {"predictor": {"canaryTrafficPercent": "ten"}}})
    assert status == 422 and body["reason"] == "Invalid"
    assert "canaryTrafficPercent in body must be of type integer" in body["message"]
    status, body = _merge(api, {"metadata": {"resourceVersion": "1"}, "spec": {}})
    assert status == 409 and body["reason"] == "Conflict"
    assert api.get(NS, NAME)["metadata"]["resourceVersion"] == rv  # nothing changed
    status, body = _raw(api, "POST", f"{PREFIX}/namespaces/{NS}/inferenceservices",
                        build_inference_service(NAME, NS, V1))
    assert status == 409 and body["reason"] == "AlreadyExists"
    status, body = _raw(api, "POST", f"{PREFIX}/namespaces/{NS}/inferenceservices",
                        build_inference_service("Fraud_2", NS, V1))
    assert status == 403 and "a InferenceService name must consist of" in body["message"]
    status, body = _raw(api, "GET", f"{PREFIX}/namespaces/{NS}/inferenceservices", None)
    assert status == 200 and [o["metadata"]["name"] for o in body["items"]] == [NAME]
    # a patch of the status is ignored (status subresource); a no-op changes nothing
    status, body = _merge(api, {"status": {"url": "http://x"}})
    assert status == 200 and body["metadata"]["resourceVersion"] == rv
    status, body = _raw(api, "GET", f"{PREFIX}/namespaces/{NS}/inferenceservices/nope", None)
    assert status == 404 and body["reason"] == "NotFound" and body["code"] == 404


def test_standin_takes_any_canary_percent_and_knative_refuses_it_later(api, deployed):
    # Before the fix the stand-in answered 422 "TrafficPercent must be between [0, 100]";
    # KServe's CRD has no range and its webhook no check: Knative refuses the traffic.
    status, body = _merge(api, {"spec": {"predictor": {"canaryTrafficPercent": 150}}})
    assert status == 200
    state = ServiceState.from_object(body)
    ready = state.condition("PredictorReady")
    assert ready is not None and (ready.status, ready.reason) == ("False", "ReconcileFailed")
    assert "expected 0 <= 150 <= 100: spec.traffic[0].percent" in ready.message
    assert not state.ready and state.traffic_by_revision() == {R1: 100}
    status, body = _merge(api, {"spec": {"predictor": {"model": {"storageUri": "ftp://x/m"}}}})
    assert status == 200  # the scheme, too, is the controller's business


def test_a_kserve_model_object_is_a_template(api, clock):
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
                            template=template, sleep=clock.sleep, clock=clock) as backend:
        state = backend.ensure(V1)
    created = next(r.json for r in api.requests if r.method == "POST")
    assert created["spec"]["predictor"]["minReplicas"] == 2  # camelCase, as a cluster expects
    assert created["spec"]["predictor"]["model"]["storageUri"] == V1
    assert created["metadata"]["labels"] == {"team": "risk"}
    assert created["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] == "Serverless"
    assert state.traffic_by_revision() == {R1: 100}


def test_the_body_checker_catches_an_unknown_field():
    assert patch_problems({"spec": {"predictor": {"canaryTrafficPercnt": None}}},
                          "V1beta1InferenceService", "p") == [
        "p.spec.predictor.canaryTrafficPercnt: not a field of V1beta1PredictorSpec"]
    assert patch_problems({"spec": {"predictor": {"canaryTrafficPercent": "10"}}},
                          "V1beta1InferenceService", "p") == [
        "p.spec.predictor.canaryTrafficPercent: '10' is not int"]
    assert patch_problems({"metadata": {"annotations": {"a": "b"}}, "spec": {"predictor": {
        "model": {"storageUri": V2}, "canaryTrafficPercent": None}}},
        "V1beta1InferenceService", "p") == []


def test_wait_until_reconciled_waits_for_the_status_to_catch_up(api, deployed, clock):
    state = deployed.set_canary(V2, 10)
    assert deployed.wait_until_reconciled(timeout=1, poll=0.5) == state
    with api._lock:  # a controller that has not caught up yet: status of the old spec
        obj = api._objects[(NS, NAME)]
        obj["metadata"]["generation"] += 1
        obj["spec"]["predictor"]["canaryTrafficPercent"] = 50
    lagging = deployed.get()
    assert not lagging.settled and not lagging.traffic_matches_spec
    with pytest.raises(RolloutTimeout, match=r"not in effect after 2 s: still waiting for 50% "):
        deployed.wait_until_reconciled(timeout=2, poll=0.5)
    assert clock.sleeps[-4:] == [0.5] * 4
