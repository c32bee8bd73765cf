"""A local stand-in for the Kubernetes API server's routes for KServe InferenceServices.

A real HTTP server on 127.0.0.1 (a free port, served from a thread) that answers the
custom-object routes the ``kubernetes`` Python client calls for
``serving.kserve.io/v1beta1`` ``inferenceservices``, as an API server with KServe does:

* ``GET  /apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices/{name}``
* ``GET  /apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices`` (list) and
  ``GET  /apis/serving.kserve.io/v1beta1/inferenceservices`` (all namespaces)
* ``POST /apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices`` (201; 409
  AlreadyExists)
* ``PATCH .../inferenceservices/{name}`` with ``Content-Type: application/merge-patch+json``
  (RFC 7386: ``null`` deletes a key); any other patch type gets 415. A patch carrying
  ``metadata.resourceVersion`` that is not the current one gets 409 Conflict.
* ``DELETE .../inferenceservices/{name}``
* ``GET /api/v1/namespaces/{ns}/events`` (the Warning events KServe's controller records)
* ``serving.kserve.io/v1alpha1`` ``inferencegraphs``: ``POST`` (201; 409), ``GET``,
  merge ``PATCH`` and ``DELETE`` of one graph, each write through KServe v0.20.0's graph
  validating webhook (``pkg/apis/serving/v1alpha1/inference_graph_validation.go``, as
  :func:`driftloop.rollout.ab_graph.graph_problems`: 403 with its message). The CRD
  (``config/crd/full/serving.kserve.io_inferencegraphs.yaml``) has a status subresource;
  the graph controller (its router Deployment or Knative Service, ``status.url``) is not
  simulated: a graph never gets a status here.

A write goes through what a cluster runs, in the API server's order (mutating admission,
schema validation, validating admission; :mod:`driftloop.rollout.admission`), for the
KServe release chosen with ``kserve`` (:data:`BEHAVIOURS`):

* KServe's mutating webhook (:meth:`K8sApiStandIn._mutate`);
* the CRD's structural schema: 422 ``Invalid`` (``canaryTrafficPercent`` must be an
  integer, with no range; ``storageUri`` a string, with no scheme check);
* KServe's validating webhook: 403 ``Forbidden`` whose message starts ``admission webhook
  "inferenceservice.kserve-webhook-server.validator" denied the request:``
  (controller-runtime v0.22.5 pkg/webhook/admission/response.go ``Denied``;
  k8s.io/apiserver v0.34.3 pkg/admission/plugin/webhook/errors/statuserror.go).

Errors are ``v1.Status`` objects (``{"kind": "Status", "apiVersion": "v1", "status":
"Failure", "reason": "NotFound", "code": 404, "message": ...}``). ``status`` in a body is
ignored (the status subresource). Every change bumps ``metadata.resourceVersion`` (one
counter for the whole server, like etcd) and a change of ``spec`` bumps
``metadata.generation``; a patch that changes nothing changes neither.

After each change KServe's controller and Knative are simulated by
:func:`driftloop.rollout.reconciler.reconcile` (shared with the local backend): revisions,
traffic with the ``prev`` (and, with tag routing, ``latest``) tags, ``observedGeneration``
counting the Knative Service's changes, and what the controller refuses after admission
(an unsupported ``storageUri`` scheme: an ``InternalError`` event and no status change).
Revisions are kept per object (:meth:`K8sApiStandIn.revisions`).

Test hooks: every request is recorded (:attr:`K8sApiStandIn.requests`, with the answer);
:meth:`~K8sApiStandIn.fail` answers the next matching requests with an error;
:meth:`~K8sApiStandIn.delay` answers late (carried out at once, as a real server does);
:meth:`~K8sApiStandIn.write_between` lets a concurrent writer change an object right after
the next GET of it is answered; :meth:`~K8sApiStandIn.put` stores an object directly;
:meth:`~K8sApiStandIn.break_model` makes a storageUri's revision fail;
:meth:`~K8sApiStandIn.lag` makes the controller slow (the status lags the spec).

Not modelled: authentication and RBAC (a 403 from RBAC comes from :meth:`fail`), JSON
patch, strategic merge patch and server-side apply (all 415), watches,
``dryRun``/``fieldManager``/``fieldValidation`` parameters (an unknown field is neither
pruned nor warned about: the tests check every body against kserve's models instead),
``generateName``, finalizers, label selectors and pagination of lists, other resources,
and the intermediate states of a rollout (a revision deploying, a model loading).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from driftloop.rollout.ab_graph import GRAPH_PLURAL, GRAPH_VERSION, graph_problems
from driftloop.rollout.admission import (
    VALIDATING_WEBHOOK,
    controller_problems,
    schema_problems,
    webhook_problems,
)
from driftloop.rollout.inference_service import (
    API_VERSION,
    DEPLOYMENT_MODE_ANNOTATION,
    GROUP,
    KIND,
    LEGACY_MODE_NAMES,
    PLURAL,
    merge_patch,
    parse_deployment_mode,
)
from driftloop.rollout.reconciler import reconcile
from standins.http import TrackingServer

PREFIX = f"/apis/{GROUP}/v1beta1"
MERGE_PATCH = "application/merge-patch+json"
_OBJECT = re.compile(rf"^{re.escape(PREFIX)}/namespaces/(?P<ns>[^/]+)/{PLURAL}/(?P<name>[^/]+)$")
_COLLECTION = re.compile(rf"^{re.escape(PREFIX)}/namespaces/(?P<ns>[^/]+)/{PLURAL}$")
_ALL = re.compile(rf"^{re.escape(PREFIX)}/{PLURAL}$")
_EVENTS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/events$")
_GRAPH = re.compile(rf"^/apis/{re.escape(GROUP)}/{GRAPH_VERSION}/namespaces/(?P<ns>[^/]+)/"
                    rf"{GRAPH_PLURAL}(/(?P<name>[^/]+))?$")
GRAPH_WEBHOOK = "inferencegraph.kserve-webhook-server.validator"
_MANAGED = ("name", "namespace", "uid", "creationTimestamp", "generation", "resourceVersion",
            "managedFields")


@dataclass(frozen=True)
class KServeBehaviour:
    """What differs between the KServe releases the stand-in plays.

    Attributes:
        version: ``"0.20"``, ``"0.16"`` or ``"0.15"``.
        rewrites_mode: The mutating webhook rewrites ``Serverless`` to ``Knative`` and
            ``RawDeployment`` to ``Standard`` on create and update (since v0.17:
            pkg/apis/serving/v1beta1/inference_service_defaults.go
            ``DefaultInferenceService``, kserve/kserve#5025).
        status_mode: The controller writes ``status.deploymentMode``, the mode it resolved
            with ``GetDeploymentMode`` (legacy names mapped; since v0.16:
            pkg/controller/v1beta1/inferenceservice/controller.go ``updateStatus``).
        denies_mode_change: The validating webhook refuses an update whose annotation
            differs from the stored ``status.deploymentMode`` (since v0.16:
            inference_service_validation.go ``validateDeploymentMode``; in v0.16 this
            refuses every update of a service annotated ``Serverless``, kserve/kserve#4798).
    """

    version: str
    rewrites_mode: bool
    status_mode: bool
    denies_mode_change: bool


#: The releases the stand-in plays, by version.
BEHAVIOURS = {
    "0.20": KServeBehaviour("0.20", rewrites_mode=True, status_mode=True,
                            denies_mode_change=True),
    "0.16": KServeBehaviour("0.16", rewrites_mode=False, status_mode=True,
                            denies_mode_change=True),
    "0.15": KServeBehaviour("0.15", rewrites_mode=False, status_mode=False,
                            denies_mode_change=False),
}


def status_body(code: int, reason: str, message: str,
                details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a ``v1.Status`` failure object as the API server sends it."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": message, "reason": reason,
                            "code": code}
    if details is not None:
        body["details"] = details
    return body


class ApiError(Exception):
    """An error answer: the HTTP status and the Status object."""

    def __init__(self, code: int, reason: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.body = status_body(code, reason, message, details)


def _not_found(name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{PLURAL}.{GROUP} "{name}" not found',
                    {"name": name, "group": GROUP, "kind": PLURAL})


def _conflict(name: str) -> ApiError:
    return ApiError(409, "Conflict",
                    f'Operation cannot be fulfilled on {PLURAL}.{GROUP} "{name}": the object '
                    "has been modified; please apply your changes to the latest version and "
                    "try again", {"name": name, "group": GROUP, "kind": PLURAL})


def _invalid(name: str, errors: list[str]) -> ApiError:
    """The API server's 422 for a schema violation (apimachinery errors.NewInvalid)."""
    causes = []
    for error in errors:
        path, _, message = error.partition(": ")
        causes.append({"reason": "FieldValueInvalid", "message": message, "field": path})
    return ApiError(422, "Invalid", f'{KIND}.{GROUP} "{name}" is invalid: ' + ", ".join(errors),
                    {"name": name, "group": GROUP, "kind": KIND, "causes": causes})


def webhook_denial(reason: str, webhook: str = VALIDATING_WEBHOOK) -> ApiError:
    """A validating webhook's denial as the API server returns it.

    controller-runtime v0.22.5 ``admission.Denied`` answers ``code 403, reason Forbidden``
    with the validator's error as message (pkg/webhook/admission/response.go
    ``ValidationResponse``; validator_custom.go); the API server prefixes it with
    ``admission webhook "<name>" denied the request: `` and adds no details
    (k8s.io/apiserver v0.34.3 pkg/admission/plugin/webhook/errors/statuserror.go).
    """
    return ApiError(403, "Forbidden", f'admission webhook "{webhook}" denied the request: '
                                      f"{reason}")


@dataclass
class RecordedRequest:
    """One request the stand-in received, and its answer.

    Attributes:
        method: HTTP method.
        path: URL path without the query.
        query: Query parameters.
        content_type: The Content-Type header, if any.
        json: The decoded JSON body (None when there was none or it was not JSON).
        body_text: The raw body.
        status: The HTTP status answered.
        response: The JSON answered.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    json: Any
    body_text: str
    status: int = 0
    response: Any = None


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    times: int
    status: int = 0
    reason: str = ""
    message: str = ""
    delay: float = 0.0


@dataclass
class K8sApiStandIn:
    """An in-memory Kubernetes API for InferenceServices on 127.0.0.1 (a context manager).

    Args:
        kserve: The KServe release to play (a key of :data:`BEHAVIOURS`).
    """

    kserve: str = "0.20"
    requests: list[RecordedRequest] = field(default_factory=list)
    #: Writes made by :meth:`write_between` (namespace, name, patch), in order.
    concurrent_writes: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.behaviour = BEHAVIOURS[self.kserve]
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        #: InferenceGraphs by (namespace, name).
        self.graphs: dict[tuple[str, str], dict[str, Any]] = {}
        self._revisions: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._events: list[dict[str, Any]] = []
        self._broken: dict[str, str] = {}
        self._lag = 0
        self._stale: dict[tuple[str, str], list[Any]] = {}  # key -> [status, reads left]
        self._rv = 1000
        self._faults: list[_Fault] = []
        self._between: list[tuple[str, str, dict[str, Any]]] = []
        self._server: TrackingServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Base URL for ``kubernetes.client.Configuration(host=...)``."""
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> K8sApiStandIn:
        """Start serving on a free port of 127.0.0.1."""
        self._server = TrackingServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> K8sApiStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test hooks

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object as if it had been created (no request is recorded)."""
        meta = obj.get("metadata") or {}
        with self._lock:
            return self._create(str(meta.get("namespace") or "default"), copy.deepcopy(obj))

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        """Return a copy of the stored object, with the status the controller wrote."""
        with self._lock:
            return copy.deepcopy(self._objects[(namespace, name)])

    def revisions(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """Return the simulated revisions of an object, oldest first."""
        with self._lock:
            return copy.deepcopy(self._revisions.get((namespace, name), []))

    def revision_uris(self, namespace: str, name: str) -> dict[str, str]:
        """Return revision name -> the storageUri it serves."""
        return {r["name"]: r["storageUri"] for r in self.revisions(namespace, name)}

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """Return the events recorded for an object (``v1.Event`` dicts), oldest first."""
        with self._lock:
            return [copy.deepcopy(e) for e in self._events
                    if e["involvedObject"]["namespace"] == namespace
                    and e["involvedObject"]["name"] == name]

    def break_model(self, storage_uri: str, message: str = "") -> None:
        """Make every revision serving ``storage_uri`` fail: its model never loads.

        What a cluster shows once Knative's progress deadline has passed for such a
        revision (knative.dev/serving v0.48.1; KServe v0.20.0
        ``PropagateStatus`` / ``PropagateModelStatus``): ``latestCreatedRevision`` is the
        new revision, ``latestReadyRevision`` the one before (which keeps the traffic),
        ``PredictorReady`` and ``Ready`` False with reason ``RevisionFailed``, and
        ``modelStatus`` ``BlockedByFailedLoad`` with ``lastFailureInfo`` ``ModelLoadFailed``
        and the storage initializer's message.
        """
        with self._lock:
            self._broken[storage_uri] = message or (
                f"RuntimeError: Failed to fetch model. No model found in {storage_uri}.")

    def lag(self, reads: int) -> None:
        """Make the controller slow: after each write, ``reads`` GETs show the old status.

        On a cluster the API server stores the spec and answers at once, and KServe's
        controller writes the status later; the write's own answer carries the old
        status too. ``reads=0`` (the default) reconciles within the write.
        """
        with self._lock:
            self._lag = reads

    def fail(self, method: str, path_regex: str = ".*", *, status: int = 500,
             reason: str = "InternalError", message: str = "etcdserver: request timed out",
             times: int = 1) -> None:
        """Answer the next ``times`` matching requests with an error Status."""
        with self._lock:
            self._faults.append(_Fault(method, re.compile(path_regex), times, status, reason,
                                       message))

    def delay(self, method: str, path_regex: str = ".*", *, seconds: float,
              times: int = 1) -> None:
        """Carry out the next ``times`` matching requests but answer them ``seconds`` late."""
        with self._lock:
            self._faults.append(_Fault(method, re.compile(path_regex), times, delay=seconds))

    def write_between(self, namespace: str, name: str, patch: dict[str, Any],
                      times: int = 1) -> None:
        """Apply ``patch`` as another writer right after each of the next ``times`` GETs."""
        with self._lock:
            self._between.extend([(namespace, name, patch)] * times)

    def patches(self) -> list[RecordedRequest]:
        """Return the recorded PATCH requests, in order."""
        return [r for r in self.requests if r.method == "PATCH"]

    def applied_patch_bodies(self) -> list[dict[str, Any]]:
        """Return the bodies of the PATCHes that succeeded, without ``metadata.resourceVersion``."""
        bodies = []
        for request in self.patches():
            if request.status == 200:
                body = copy.deepcopy(request.json)
                meta = body.get("metadata") or {}
                meta.pop("resourceVersion", None)
                if not meta:
                    body.pop("metadata", None)
                bodies.append(body)
        return bodies

    # ------------------------------------------------------------------ the API

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method == method and fault.path.search(path) and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def handle(self, method: str, raw_path: str, content_type: str | None,
               body: bytes) -> tuple[int, Any]:
        """Serve one request; record it; return ``(status, JSON answer)``."""
        parts = urlsplit(raw_path)
        text = body.decode("utf-8", errors="replace")
        try:
            decoded = json.loads(text) if text else None
        except json.JSONDecodeError:
            decoded = None
        record = RecordedRequest(method, parts.path, parse_qs(parts.query, keep_blank_values=True),
                                 content_type, decoded, text)
        with self._lock:
            self.requests.append(record)
        fault = self._take_fault(method, parts.path)
        try:
            if fault is not None and fault.status:
                raise ApiError(fault.status, fault.reason, fault.message)
            with self._lock:
                status, answer = self._route(method, parts.path, content_type, text, decoded)
        except ApiError as exc:
            status, answer = exc.code, exc.body
        record.status, record.response = status, copy.deepcopy(answer)
        if fault is not None and fault.delay:  # carried out at once, answered late
            time.sleep(fault.delay)
        return status, answer

    def _graph_route(self, method: str, ns: str, name: str | None, content_type: str | None,
                     body: Any) -> tuple[int, Any]:
        """The InferenceGraph routes: the webhook's validation on every write, no controller."""
        key = (ns, name or "")
        if name is None and method == "POST":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the body of the request was not a JSON object")
            key = (ns, str((body.get("metadata") or {}).get("name") or ""))
            if key in self.graphs:
                raise ApiError(409, "AlreadyExists",
                               f'{GRAPH_PLURAL}.{GROUP} "{key[1]}" already exists',
                               {"name": key[1], "group": GROUP, "kind": GRAPH_PLURAL})
            new = copy.deepcopy(body)
            new.pop("status", None)
        elif name is not None and key in self.graphs and method == "GET":
            return 200, copy.deepcopy(self.graphs[key])
        elif name is not None and key in self.graphs and method == "DELETE":
            del self.graphs[key]
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                         "status": "Success", "details": {"name": name, "group": GROUP,
                                                          "kind": GRAPH_PLURAL}}
        elif name is not None and key in self.graphs and method == "PATCH":
            if (content_type or "").split(";", 1)[0].strip().lower() != MERGE_PATCH:
                raise ApiError(415, "UnsupportedMediaType", "merge patch only")
            new = merge_patch(self.graphs[key], body)
        elif name is not None and method in ("GET", "DELETE", "PATCH"):
            raise ApiError(404, "NotFound", f'{GRAPH_PLURAL}.{GROUP} "{name}" not found',
                           {"name": name, "group": GROUP, "kind": GRAPH_PLURAL})
        else:
            raise ApiError(405, "MethodNotAllowed",
                           "the server does not allow this method on the requested resource")
        problems = graph_problems(new)
        if problems:
            raise webhook_denial(problems[0], GRAPH_WEBHOOK)
        meta = new.setdefault("metadata", {})
        meta.update(namespace=ns, resourceVersion=self._next_rv())
        meta.setdefault("uid", str(uuid.uuid4()))
        self.graphs[key] = new
        return (201 if method == "POST" else 200), copy.deepcopy(new)

    def _route(self, method: str, path: str, content_type: str | None, text: str,
               body: Any) -> tuple[int, Any]:
        if match := _GRAPH.match(path):
            return self._graph_route(method, match["ns"], match["name"], content_type, body)
        if match := _OBJECT.match(path):
            ns, name = match["ns"], match["name"]
            if method == "GET":
                answer = self._view(ns, name, read=True)
                self._write_between(ns, name)
                return 200, answer
            if method == "PATCH":
                self._patch(ns, name, content_type, text, body)
                return 200, self._view(ns, name)
            if method == "DELETE":
                self._require(ns, name)
                del self._objects[(ns, name)]
                self._revisions.pop((ns, name), None)
                return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                             "status": "Success", "details": {"name": name, "group": GROUP,
                                                              "kind": PLURAL}}
            raise ApiError(405, "MethodNotAllowed",
                           "the server does not allow this method on the requested resource")
        if match := _COLLECTION.match(path):
            ns = match["ns"]
            if method == "GET":
                return 200, self._list([self._view(n, o) for (n, o) in self._objects
                                        if n == ns])
            if method == "POST":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "the body of the request was not a JSON "
                                   "object")
                name = self._create(ns, copy.deepcopy(body))["metadata"]["name"]
                return 201, self._view(ns, name)
            raise ApiError(405, "MethodNotAllowed",
                           "the server does not allow this method on the requested resource")
        if _ALL.match(path) and method == "GET":
            return 200, self._list([self._view(n, o) for (n, o) in self._objects])
        if (match := _EVENTS.match(path)) and method == "GET":
            return 200, {"apiVersion": "v1", "kind": "EventList", "metadata": {},
                         "items": [e for e in self._events
                                   if e["involvedObject"]["namespace"] == match["ns"]]}
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _require(self, ns: str, name: str) -> dict[str, Any]:
        obj = self._objects.get((ns, name))
        if obj is None:
            raise _not_found(name)
        return obj

    def _view(self, ns: str, name: str, *, read: bool = False) -> dict[str, Any]:
        """The object as a client sees it: with the old status while the controller lags."""
        obj = copy.deepcopy(self._require(ns, name))
        stale = self._stale.get((ns, name))
        if stale is not None and stale[1] > 0:
            if stale[0] is None:
                obj.pop("status", None)
            else:
                obj["status"] = copy.deepcopy(stale[0])
            if read:
                stale[1] -= 1
        return obj

    def _list(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": f"{KIND}List",
                "items": sorted(items, key=lambda o: (o["metadata"]["namespace"],
                                                      o["metadata"]["name"])),
                "metadata": {"resourceVersion": str(self._rv)}}

    def _mutate(self, obj: dict[str, Any]) -> None:
        """KServe's mutating webhook, for the annotation we write.

        Since v0.17 (``DefaultInferenceService``, pkg/apis/serving/v1beta1/
        inference_service_defaults.go) the legacy deployment mode names are rewritten on
        create and update: ``Serverless`` -> ``Knative``, ``RawDeployment`` -> ``Standard``.
        Up to v0.16 the annotation is kept as written.
        """
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        mode = annotations.get(DEPLOYMENT_MODE_ANNOTATION)
        if self.behaviour.rewrites_mode and mode in LEGACY_MODE_NAMES:
            annotations[DEPLOYMENT_MODE_ANNOTATION] = LEGACY_MODE_NAMES[mode]

    def _admit(self, name: str, new: dict[str, Any], old: dict[str, Any] | None) -> None:
        """Mutating webhook, CRD schema (422), validating webhook (403), in that order."""
        self._mutate(new)
        errors = schema_problems(new)
        if errors:
            raise _invalid(name, errors)
        denials = webhook_problems(new, old, checks_mode_change=self.behaviour.denies_mode_change)
        if denials:
            raise webhook_denial(denials[0])

    def _controller(self, ns: str, name: str, obj: dict[str, Any]) -> None:
        """KServe's controller and Knative after a change (see the module docstring).

        ``status.deploymentMode``: v0.16 and later write the mode ``GetDeploymentMode``
        resolved (status first, legacy names mapped); v0.15 writes none.
        """
        key = (ns, name)
        old_status = obj.get("status")
        new, revisions = reconcile(obj, self._revisions.get(key, []),
                                   failing=self._broken.get)
        status = new["status"]
        if self.behaviour.status_mode:
            status["deploymentMode"] = parse_deployment_mode(str(status["deploymentMode"]))
        else:
            status.pop("deploymentMode", None)
        for kind, message in controller_problems(new):
            if kind == "storageUri":  # controller.go: Recorder.Eventf(... "InternalError" ...)
                self._record_event(new, "InternalError", message)
        if self._lag > 0:
            stale = self._stale.get(key)
            if stale is None or stale[1] <= 0:
                self._stale[key] = [copy.deepcopy(old_status), self._lag]
            else:
                stale[1] = self._lag  # the status lags further behind, from the same point
        self._objects[key] = new
        self._revisions[key] = revisions

    def _record_event(self, obj: dict[str, Any], reason: str, message: str) -> None:
        meta = obj["metadata"]
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._events.append({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                         "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "reason": reason, "message": message, "type": "Warning", "count": 1,
            "source": {"component": "v1beta1Controllers"},  # cmd/manager/main.go
            "firstTimestamp": stamp, "lastTimestamp": stamp,
        })

    def _create(self, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", f"{KIND}.{GROUP} \"\" is invalid: metadata.name: "
                           "Required value: name or generateName is required")
        if meta.get("namespace", ns) != ns:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not "
                           "match the namespace sent on the request")
        if (ns, name) in self._objects:
            raise ApiError(409, "AlreadyExists", f'{PLURAL}.{GROUP} "{name}" already exists',
                           {"name": name, "group": GROUP, "kind": PLURAL})
        obj.pop("status", None)
        self._admit(name, obj, None)
        meta.update(namespace=ns, uid=str(uuid.uuid4()), generation=1,
                    resourceVersion=self._next_rv(),
                    creationTimestamp=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        self._controller(ns, name, obj)
        return copy.deepcopy(self._objects[(ns, name)])

    def _patch(self, ns: str, name: str, content_type: str | None, text: str,
               body: Any) -> dict[str, Any]:
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media != MERGE_PATCH:
            raise ApiError(415, "UnsupportedMediaType",
                           f"the body of the request was in an unknown format - accepted media "
                           f"types include: {MERGE_PATCH} (this stand-in models merge patch "
                           f"only; got {content_type!r})")
        current = self._require(ns, name)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", f"error decoding patch: expected a JSON object, "
                           f"got {text[:80]!r}")
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and str(wanted) != current["metadata"]["resourceVersion"]:
            raise _conflict(name)
        return copy.deepcopy(self._apply(ns, name, body))

    def _apply(self, ns: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        current = self._objects[(ns, name)]
        clean = copy.deepcopy(patch)
        clean.pop("status", None)
        meta_patch = clean.get("metadata") or {}
        for key in _MANAGED:
            meta_patch.pop(key, None)
        new = merge_patch(current, clean)
        self._admit(name, new, current)

        def stable(obj: dict[str, Any]) -> dict[str, Any]:
            out = {k: v for k, v in obj.items() if k != "status"}
            out["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
            return out

        if stable(new) == stable(current):
            return current
        if new.get("spec") != current.get("spec"):
            new["metadata"]["generation"] = int(current["metadata"]["generation"]) + 1
        new["metadata"]["resourceVersion"] = self._next_rv()
        self._controller(ns, name, new)
        return self._objects[(ns, name)]

    def _write_between(self, ns: str, name: str) -> None:
        for i, (n, o, patch) in enumerate(self._between):
            if (n, o) == (ns, name):
                del self._between[i]
                self._apply(ns, name, patch)
                self.concurrent_writes.append((ns, name, copy.deepcopy(patch)))
                return


# ----------------------------------------------------------------------------- HTTP


def _make_handler(standin: K8sApiStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, answer = standin.handle(self.command, self.path,
                                            self.headers.get("Content-Type"), body)
            payload = json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:  # the client gave up (a delayed answer after its timeout)
                self.close_connection = True

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


def running(kserve: str = "0.20") -> Iterator[K8sApiStandIn]:
    """Yield a started stand-in and always stop it (for ``yield from`` in a pytest fixture)."""
    standin = K8sApiStandIn(kserve=kserve).start()
    try:
        yield standin
    finally:
        standin.stop()
