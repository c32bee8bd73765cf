"""A local stand-in for the Kubeflow Pipelines 2.17.0 v2beta1 REST API (what ``kfp.Client`` calls).

It is a real HTTP server on 127.0.0.1 (a free port, served from a thread) that keeps
experiments, runs and recurring runs in memory and answers like the KFP API server behind its
grpc-gateway v2 proxy. Everything was read from kubeflow/pipelines tag ``2.17.0`` (and
grpc-gateway ``v2.28.0``, robfig/cron ``v1.2.0``, the versions its ``go.mod`` pins); the wire
format (error bodies, query and body decoding, filters, paging, cron) lives in
:mod:`standins.kfp_wire`, which names its own sources. Each route's handler docstring names the
server function it plays:

========================================================  =========================================
route                                                     upstream (``backend/src/apiserver/...``)
========================================================  =========================================
``* /apis/v2beta1/healthz``                               ``main.go`` buildHTTPRouter, healthz
``POST /apis/v2beta1/experiments``                        ``server/experiment_server.go``
``GET /apis/v2beta1/experiments[/{id}]``                  ``server/experiment_server.go``
``DELETE /apis/v2beta1/experiments/{id}``                 ``server/experiment_server.go``,
                                                          ``resource/resource_manager.go``
``POST /apis/v2beta1/experiments/{id}:(un)archive``       same
``POST /apis/v2beta1/runs``                               ``server/run_server.go`` CreateRun,
                                                          ``server/api_converter.go`` toModelRun,
                                                          ``resource/resource_manager.go``
                                                          CreateRun, ``template/v2_template.go``
``GET /apis/v2beta1/runs[/{id}]``                         ``server/run_server.go``
``DELETE /apis/v2beta1/runs/{id}``, ``:terminate``,       ``server/run_server.go``,
``:archive``, ``:unarchive``                              ``resource/resource_manager.go``
``POST /apis/v2beta1/recurringruns``                      ``server/job_server.go``
                                                          CreateRecurringRun, ``api_converter.go``
                                                          toModelJob, ``resource_manager.go``
                                                          CreateJob
``GET /apis/v2beta1/recurringruns[/{id}]``                ``server/job_server.go``
``POST /apis/v2beta1/recurringruns/{id}:enable|:disable`` ``server/job_server.go``,
                                                          ``resource_manager.go`` ChangeJobMode
``DELETE /apis/v2beta1/recurringruns/{id}``               ``server/job_server.go``,
                                                          ``resource_manager.go`` DeleteJob
========================================================  =========================================

Routes the server has and the stand-in does not model (``:retry``, pipelines, uploads, reports,
visualizations, auth) answer 501 with a message saying so, never a made-up success. A path
under ``/apis/`` that no route matches gets the gateway's ``{"code": 5, "message": "Not
Found"}``; a known path with another method gets 501 ``Method Not Allowed`` (grpc-gateway
``runtime/mux.go``); any other path gets gorilla/mux's plain-text ``404 page not found``.

Behaviour worth knowing when a test fails here, all as KFP 2.17.0 does it:

* an empty run, recurring-run or experiment name is a 500 (``Internal Server Error``): the
  converters in ``api_converter.go`` wrap the invalid-input error in an internal one before the
  server's own 400 check is reached; a missing or invalid pipeline spec is a 500 too;
* ``filter`` is URL-unescaped a second time (``list_request_util.go``): a client must
  URL-encode the JSON it sends, or a ``+`` in a value becomes a space and a ``%`` a 400;
* filters compare strings case-insensitively (MySQL ``utf8_general_ci``), recurring runs filter
  only on id, name, description and times (``model/job.go``);
* the run parameters are checked against the spec's root inputs (``v2_template.go``
  ``validatePipelineJobInputs``): unknown, missing or mistyped ones are a 400;
* a single-user server ignores ``namespace`` on lists (``ReplaceNamespace``) and files
  recurring runs under its own namespace (``pod_namespace``, ``kubeflow``);
* deleting a recurring run garbage-collects the runs it started that are still in flight, as
  Kubernetes does with the ScheduledWorkflow's Workflows, unless the request asks for
  ``propagation_policy=ORPHAN`` (``resource_manager.go`` DeleteJob) and the stand-in emulates a
  backend that knows that option (``honours_propagation_policy``, default True; False emulates
  KFP <= 2.15, where the query parameter is an unknown field the gateway ignores).

Every request is recorded (method, path, query, JSON body, authorization header, status) so a
test can assert on what was sent and in which order. Test hooks: :meth:`KfpApiStandIn.fire`
(the scheduler starts a run of a recurring run), :meth:`KfpApiStandIn.set_run_state`,
:meth:`KfpApiStandIn.fail` and :meth:`KfpApiStandIn.respond` (inject an answer).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from standins.http import TrackingServer
from standins.kfp_wire import (
    CAMEL_VALUE_KEYS,
    FINAL_STATES,
    HTTP_STATUS,
    INTERNAL,
    INVALID_ARGUMENT,
    NOT_FOUND,
    PROPAGATION_POLICIES,
    RUNTIME_STATES,
    UNIMPLEMENTED,
    ApiError,
    GoError,
    QueryKind,
    already_exists,
    bad_request,
    decode_body,
    decode_message,
    encode_message,
    failed_precondition,
    gateway_error,
    internal_server,
    invalid_input,
    invalid_input_with_details,
    list_options,
    not_found,
    page,
    parse_cron,
    parse_query,
    query_fields,
    query_unescape,
)

API = "/apis/v2beta1"

#: Query fields of the list requests (``ListRunsRequest`` etc. in the ``.proto`` files).
_LIST_QUERY: dict[str, QueryKind] = {
    "page_token": "string", "page_size": "int32", "sort_by": "string", "filter": "string",
    "namespace": "string", "experiment_id": "string",
}  # fmt: skip
_RUN_QUERY: dict[str, QueryKind] = {"experiment_id": "string"}  # deprecated, ignored


# ----------------------------------------------------------------------------- recording


@dataclass
class RecordedRequest:
    """One request the stand-in received.

    Attributes:
        method: HTTP method.
        path: URL path without the query.
        query: Query parameters as Go's ``url.ParseQuery`` decodes them (the gateway's view).
        json: The decoded JSON body, or None when there was none or it was not JSON.
        body_text: The raw body text (for malformed or non-JSON bodies).
        authorization: The Authorization header, if any.
        status: The HTTP status answered.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    json: Any
    body_text: str
    authorization: str | None
    status: int = 0

    def param(self, name: str) -> str | None:
        """Return the first value of a query parameter, or None."""
        values = self.query.get(name)
        return values[0] if values else None

    def filter(self) -> Any:
        """The ``filter`` parameter as the API server reads it (unescaped again, value keys
        rewritten to snake_case, then JSON)."""
        text = self.param("filter")
        if text is None:
            return None
        decoded = query_unescape(text)
        for camel, snake in CAMEL_VALUE_KEYS:
            decoded = decoded.replace(camel, snake)
        return json.loads(decoded)


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    status: int
    code: int
    message: str
    times: int
    body: dict[str, Any] | str | None = None


# ----------------------------------------------------------------------------- the stand-in

RouteHandler = Callable[[dict[str, str], dict[str, Any], Any], Any]


@dataclass
class _Route:
    method: str
    regex: re.Pattern[str]
    handler: RouteHandler
    query: dict[str, QueryKind] | None  # None: the generated handler never parses the query
    body: str | None  # the message the body decodes into, if any


@dataclass
class KfpApiStandIn:
    """An in-memory KFP 2.17.0 v2beta1 API server on 127.0.0.1; use it as a context manager.

    Args:
        seed: Seeds the generated ids.
        multi_user: Emulate a multi-user deployment (healthz says so; namespaces required).
        honours_propagation_policy: Whether ``DELETE .../recurringruns/{id}`` honours
            ``propagation_policy=ORPHAN`` (KFP with kubeflow/pipelines#12574) or ignores it
            and garbage-collects in-flight runs anyway (KFP <= 2.15).
        error_style: ``"gateway-v2"`` (``google.rpc.Status``) or ``"gateway-v1"`` (adds
            ``"error"``, as servers before KFP 2.14 did).
        tag_name: The version healthz reports.
        pod_namespace: The API server's own namespace (``POD_NAMESPACE``), where a
            single-user server runs everything.
    """

    seed: int = 0
    multi_user: bool = False
    honours_propagation_policy: bool = True
    error_style: str = "gateway-v2"
    tag_name: str = "2.17.0"
    pod_namespace: str = "kubeflow"
    requests: list[RecordedRequest] = field(default_factory=list)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    recurring_runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Runs Kubernetes garbage-collected because their recurring run was deleted.
    cascade_killed_runs: list[str] = field(default_factory=list)
    #: Runs deleted or terminated through the API.
    deleted_runs: list[str] = field(default_factory=list)
    terminated_runs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.error_style not in ("gateway-v2", "gateway-v1"):
            raise ValueError(f"error_style {self.error_style!r}")
        self._rng = random.Random(self.seed)
        self._clock = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        self._lock = threading.RLock()
        self._faults: list[_Fault] = []
        self._server: TrackingServer | None = None
        self._thread: threading.Thread | None = None
        self._fired = 0
        self._default_experiment = ""
        if not self.multi_user:  # main.go initWithDefaultExperiment, single-user only
            self._default_experiment = self._store_experiment(
                "Default",
                "All runs created without specifying an experiment will be grouped here.",
                "",
            )["experiment_id"]
        recurring_delete_query: dict[str, QueryKind] = (
            {"propagation_policy": ("enum", PROPAGATION_POLICIES)}
            if self.honours_propagation_policy
            else {}
        )
        self._routes: list[_Route] = []
        for method, pattern, handler, query, body in (
            ("POST", "/experiments", self._post_experiment, None, "Experiment"),
            ("GET", "/experiments", self._list_experiments, _LIST_QUERY, None),
            ("GET", "/experiments/{experiment_id}", self._get_experiment, None, None),
            ("DELETE", "/experiments/{experiment_id}", self._delete_experiment, None, None),
            ("POST", "/experiments/{experiment_id}:archive", self._archive_experiment, None, None),
            ("POST", "/experiments/{experiment_id}:unarchive", self._unarchive_experiment, None,
             None),
            ("POST", "/runs", self._post_run, _RUN_QUERY, "Run"),
            ("GET", "/runs", self._list_runs, _LIST_QUERY, None),
            ("GET", "/runs/{run_id}", self._get_run, _RUN_QUERY, None),
            ("DELETE", "/runs/{run_id}", self._delete_run, _RUN_QUERY, None),
            ("POST", "/runs/{run_id}:terminate", self._terminate_run, _RUN_QUERY, None),
            ("POST", "/runs/{run_id}:archive", self._archive_run, _RUN_QUERY, None),
            ("POST", "/runs/{run_id}:unarchive", self._unarchive_run, _RUN_QUERY, None),
            ("POST", "/runs/{run_id}:retry", self._not_modelled, _RUN_QUERY, None),
            ("POST", "/recurringruns", self._post_recurring_run, None, "RecurringRun"),
            ("GET", "/recurringruns", self._list_recurring_runs, _LIST_QUERY, None),
            ("GET", "/recurringruns/{recurring_run_id}", self._get_recurring_run, None, None),
            ("DELETE", "/recurringruns/{recurring_run_id}", self._delete_recurring_run,
             recurring_delete_query, None),
            ("POST", "/recurringruns/{recurring_run_id}:enable", self._enable_recurring_run,
             None, None),
            ("POST", "/recurringruns/{recurring_run_id}:disable", self._disable_recurring_run,
             None, None),
            ("POST", "/pipelines", self._not_modelled, None, None),
            ("GET", "/pipelines", self._not_modelled, None, None),
            ("POST", "/pipelines/create", self._not_modelled, None, None),
            ("GET", "/pipelines/{pipeline_id}", self._not_modelled, None, None),
            ("GET", "/pipelines/names/{name}", self._not_modelled, None, None),
            ("DELETE", "/pipelines/{pipeline_id}", self._not_modelled, None, None),
            ("POST", "/pipelines/{pipeline_id}/versions", self._not_modelled, None, None),
            ("GET", "/pipelines/{pipeline_id}/versions", self._not_modelled, None, None),
            ("GET", "/pipelines/{pipeline_id}/versions/{version_id}", self._not_modelled, None,
             None),
            ("POST", "/workflows", self._not_modelled, None, None),
            ("POST", "/scheduledworkflows", self._not_modelled, None, None),
            ("POST", "/visualizations/{namespace}", self._not_modelled, None, None),
            ("GET", "/auth", self._not_modelled, None, None),
        ):  # fmt: skip
            regex = re.sub(
                r"\{(\w+)\}",
                r"(?P<\1>[^/:]+)",
                re.escape(API + pattern).replace(r"\{", "{").replace(r"\}", "}"),
            )
            self._routes.append(_Route(method, re.compile(f"^{regex}$"), handler, query, body))

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Base URL to pass as ``kfp.Client(host=...)``."""
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> KfpApiStandIn:
        """Start serving on a free port of 127.0.0.1."""
        self._server = TrackingServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
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

    def __enter__(self) -> KfpApiStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test hooks

    def fail(
        self,
        method: str,
        path_regex: str,
        *,
        status: int = 500,
        code: int = INTERNAL,
        message: str = "Internal Server Error",
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching requests with an error instead of serving them."""
        self.respond(
            method, path_regex, status=status, body=None, times=times, code=code, message=message
        )

    def respond(
        self,
        method: str,
        path_regex: str,
        *,
        status: int,
        body: dict[str, Any] | str | None,
        times: int = 1,
        code: int = INTERNAL,
        message: str = "",
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` and ``body`` as given.

        With ``body=None`` the answer is the error body for ``code`` and ``message``; a string
        body is sent as ``text/html`` (what a proxy in front of the API server may answer).
        """
        with self._lock:
            self._faults.append(
                _Fault(method.upper(), re.compile(path_regex), status, code, message, times, body)
            )

    def fire(self, recurring_run_id: str, *, state: str = "RUNNING") -> str:
        """Start a run of a recurring run, as the ScheduledWorkflow controller would."""
        with self._lock:
            rr = self.recurring_runs[recurring_run_id]
            if rr.get("status") != "ENABLED":
                raise AssertionError(
                    f"recurring run {recurring_run_id} is disabled: it cannot start runs"
                )
            self._fired += 1
            now = self._tick()
            run_id = self._new_id()
            self.runs[run_id] = {
                "run_id": run_id,
                "experiment_id": rr["experiment_id"],
                "display_name": f"{rr['display_name']}-{self._fired}",
                "storage_state": "AVAILABLE",
                "pipeline_spec": copy.deepcopy(rr.get("pipeline_spec")),
                "runtime_config": copy.deepcopy(rr.get("runtime_config", {})),
                "service_account": rr.get("service_account", ""),
                "created_at": now,
                "scheduled_at": now,
                "state": state,
                "state_history": [{"update_time": now, "state": state}],
                "recurring_run_id": recurring_run_id,
                "namespace": self.experiments[rr["experiment_id"]].get("namespace", ""),
            }
            return run_id

    def set_run_state(self, run_id: str, state: str) -> None:
        """Move a run to ``state`` (e.g. ``SUCCEEDED``)."""
        if state not in RUNTIME_STATES:
            raise ValueError(state)
        with self._lock:
            run = self.runs[run_id]
            now = self._tick()
            run["state"] = state
            run["state_history"].append({"update_time": now, "state": state})
            if state in FINAL_STATES:
                run["finished_at"] = now

    def calls(
        self, method: str | None = None, path_regex: str | None = None
    ) -> list[RecordedRequest]:
        """Return the recorded requests, optionally only those matching method and path."""
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method.upper())
                and (path_regex is None or re.search(path_regex, r.path))
            ]

    def recurring_runs_named(self, name: str) -> list[dict[str, Any]]:
        """Return the stored recurring runs with this display name."""
        with self._lock:
            return [r for r in self.recurring_runs.values() if r.get("display_name") == name]

    # ------------------------------------------------------------------ plumbing

    def _tick(self) -> str:
        self._clock += dt.timedelta(seconds=1)
        return self._clock.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def handle(
        self, method: str, raw_path: str, body: bytes, authorization: str | None
    ) -> tuple[int, dict[str, Any] | str, str]:
        """Serve one request; return (HTTP status, JSON answer or raw text, content type)."""
        parts = urlsplit(raw_path)
        path = parts.path
        query, query_error = parse_query(parts.query)
        text = body.decode("utf-8", errors="replace")
        try:
            parsed: Any = json.loads(text) if text.strip() else None
        except ValueError:
            parsed = None
        record = RecordedRequest(method, path, query, parsed, text, authorization)
        with self._lock:
            self.requests.append(record)
            status, answer, content_type = self._dispatch(method, path, query, query_error, text)
            record.status = status
        return status, answer, content_type

    def _error(self, err: ApiError) -> tuple[int, dict[str, Any], str]:
        body = err.body(legacy=self.error_style == "gateway-v1")
        return HTTP_STATUS.get(err.code, 500), body, "application/json"

    def _dispatch(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        query_error: str | None,
        text: str,
    ) -> tuple[int, dict[str, Any] | str, str]:
        for fault in self._faults:
            if fault.times > 0 and fault.method == method and fault.path.search(path):
                fault.times -= 1
                if isinstance(fault.body, str):
                    return fault.status, fault.body, "text/html; charset=utf-8"
                if fault.body is not None:
                    return fault.status, copy.deepcopy(fault.body), "application/json"
                err = ApiError(fault.code, fault.message)
                return fault.status, self._error(err)[1], "application/json"
        if path == API + "/healthz":  # main.go: gorilla/mux, any method, encoding/json
            return 200, self._healthz(), "application/json"
        if path in (API + "/pipelines/upload", API + "/pipelines/upload_version"):
            return self._error(gateway_error(UNIMPLEMENTED, "pipeline upload is not modelled"))
        if not path.startswith("/apis/"):  # gorilla/mux NotFoundHandler
            return 404, "404 page not found\n", "text/plain; charset=utf-8"
        path_matched = False
        for route in self._routes:
            match = route.regex.match(path)
            if not match:
                continue
            path_matched = True
            if route.method != method:
                continue
            try:
                fields: dict[str, Any] = {}
                if route.query is not None:
                    if query_error is not None:  # generated handler: req.ParseForm()
                        raise gateway_error(INVALID_ARGUMENT, query_error)
                    fields = query_fields(query, route.query)
                decoded = decode_body(text) if route.body else None
                if route.body:
                    decoded = decode_message(route.body, decoded or {})
                answer = route.handler(match.groupdict(), fields, decoded)
            except ApiError as err:
                return self._error(err)
            return 200, answer if answer is not None else {}, "application/json"
        if path_matched:  # runtime/mux.go: a known path with another method
            return self._error(gateway_error(UNIMPLEMENTED, "Method Not Allowed"))
        return self._error(gateway_error(NOT_FOUND, "Not Found"))

    # ------------------------------------------------------------------ helpers

    def _page(
        self, fields: dict[str, Any], items: list[dict[str, Any]], resource: str, wrap: str
    ) -> tuple[list[dict[str, Any]], int, str]:
        id_field = {
            "Experiment": "experiment_id",
            "Run": "run_id",
            "RecurringRun": "recurring_run_id",
        }[resource]
        try:
            options = list_options(
                resource,
                fields.get("page_token", ""),
                fields.get("page_size", 0),
                fields.get("sort_by", ""),
                fields.get("filter", ""),
            )
        except ApiError as err:
            raise err.wrap(wrap) from None
        return page(items, options, resource, id_field)

    def _replace_namespace(self, namespace: str) -> str:
        # resource_manager.go ReplaceNamespace
        return namespace if self.multi_user else ""

    def _namespace_of_experiment(self, experiment_id: str) -> str:
        # resource_manager.go GetNamespaceFromExperimentId
        if experiment_id not in self.experiments:
            raise not_found("Experiment", experiment_id).wrap(
                f"Failed to fetch namespace from experiment {experiment_id}"
            )
        return str(self.experiments[experiment_id].get("namespace", ""))

    def _experiment_pair(self, experiment_id: str) -> tuple[str, str]:
        # resource_manager.go GetValidExperimentNamespacePair (the API sends no namespace)
        if self.multi_user and not experiment_id:
            raise invalid_input("Experiment id can not be empty in multi-user mode")
        if experiment_id:
            try:
                namespace = self._namespace_of_experiment(experiment_id)
            except ApiError as err:
                raise err.wrap(
                    f"Failed to fetch namespace for experiment {experiment_id}"
                ) from None
            return experiment_id, namespace
        return self._default_experiment, ""

    def _default_service_account(self) -> str:
        # template.go: DEFAULTPIPELINERUNNERSERVICEACCOUNT, which Kubeflow's multi-user
        # manifests set to default-editor
        return "default-editor" if self.multi_user else "pipeline-runner"

    def _check_spec(self, obj: dict[str, Any], what: str) -> dict[str, Any] | None:
        """``fetchTemplateFromPipelineSpec`` + ``template.New``: the inner PipelineSpec.

        Returns None when no spec was sent; raises the server's 500 for one that is not a v2
        PipelineSpec (``template.go`` ``isPipelineSpec``: strict protojson, a pipeline name
        and a root), and 501 for pipeline versions, which the stand-in does not store.
        """
        if obj.get("pipeline_version_id") or obj.get("pipeline_version_reference"):
            raise gateway_error(
                UNIMPLEMENTED, "pipeline versions are not modelled by the KFP stand-in"
            )
        spec = obj.get("pipeline_spec")
        if spec is None:
            return None
        inner = spec.get("pipeline_spec", spec) if isinstance(spec, dict) else None
        if not _is_pipeline_spec(inner):
            raise internal_server(
                invalid_input_with_details(
                    "pipeline spec is invalid", "unknown template format"
                ).wrap("Failed to fetch a template with an invalid pipeline spec manifest"),
                f"Failed to create a {what} with an invalid pipeline spec manifest"
                if what == "recurring run"
                else "Failed to create a run due to error fetching manifest",
            )
        assert isinstance(inner, dict)
        return inner

    # ------------------------------------------------------------------ healthz

    def _healthz(self) -> dict[str, Any]:
        # main.go healthzResponse: encoding/json, pipeline_store omitempty
        return {
            "commit_sha": "standin",
            "tag_name": self.tag_name,
            "multi_user": self.multi_user,
            "pipeline_store": "database",
        }

    # ------------------------------------------------------------------ experiments

    def _store_experiment(self, name: str, description: str, namespace: str) -> dict[str, Any]:
        experiment = {
            "experiment_id": self._new_id(),
            "display_name": name,
            "description": description,
            "created_at": self._tick(),
            "namespace": namespace,
            "storage_state": "AVAILABLE",
            "last_run_created_at": "1970-01-01T00:00:00Z",
        }
        self.experiments[experiment["experiment_id"]] = experiment
        return experiment

    def _post_experiment(self, _p: dict[str, str], _f: dict[str, Any], data: Any) -> Any:
        """experiment_server.go CreateExperiment, api_converter.go toModelExperiment."""
        outer = "Failed to create a experiment"
        name, namespace = data.get("display_name", ""), data.get("namespace", "")
        convert = "Failed to convert API experiment to model experiment"
        problem = ""
        if not name:
            problem = "Experiment must have a non-empty name"
        elif len(name.encode()) > 128:  # validation/length.go
            problem = "Experiment.Name length cannot exceed 128"
        elif len(namespace.encode()) > 63:
            problem = "Experiment.Namespace length cannot exceed 63"
        if problem:
            raise internal_server(invalid_input(problem), convert).wrap(
                "[ExperimentServer]: Failed to create a experiment due to conversion error"
            )
        namespace = self._replace_namespace(namespace)
        if self.multi_user and not namespace:
            raise (
                invalid_input("An experiment cannot have an empty namespace in multi-user mode")
                .wrap("Failed to authorize the request")
                .wrap(outer)
            )
        key = _mysql_key(name)
        for existing in self.experiments.values():
            if _mysql_key(existing["display_name"]) == key and existing["namespace"] == namespace:
                raise already_exists(
                    f"Failed to create a new experiment. The name {name} already exists. "
                    "Please specify a new name"
                ).wrap(outer)
        created = self._store_experiment(name, data.get("description", ""), namespace)
        return encode_message("Experiment", created)

    def _experiment(self, experiment_id: str, outer: str) -> dict[str, Any]:
        """The experiment, or the 404 the server gives through ``canAccessExperiment``."""
        if experiment_id in self.experiments:
            return self.experiments[experiment_id]
        err = not_found("Experiment", experiment_id)
        if self.multi_user:
            err = err.wrap("Failed to authorize with the experiment ID")
            err = err.wrap("Failed to authorize the request")
        raise err.wrap(outer)

    def _list_experiments(self, _p: dict[str, str], fields: dict[str, Any], _b: Any) -> Any:
        """experiment_server.go ListExperiments / listExperiments."""
        namespace = self._replace_namespace(fields.get("namespace", ""))
        items = [
            e
            for e in self.experiments.values()
            if not self.multi_user or e["namespace"] == namespace
        ]
        rows, total, token = self._page(
            fields, items, "Experiment", "Failed to create list options"
        )
        if self.multi_user and not namespace:
            raise (
                invalid_input("An experiment cannot have an empty namespace in multi-user mode")
                .wrap("Failed to authorize with API")
                .wrap("List experiments failed")
            )
        return _prune_list(
            "experiments", [encode_message("Experiment", e) for e in rows], total, token
        )

    def _get_experiment(self, p: dict[str, str], _f: dict[str, Any], _b: Any) -> Any:
        """experiment_server.go GetExperiment."""
        return encode_message(
            "Experiment", self._experiment(p["experiment_id"], "Failed to fetch experiment")
        )

    def _delete_experiment(self, p: dict[str, str], _f: dict[str, Any], _b: Any) -> None:
        """experiment_server.go DeleteExperiment, resource_manager.go DeleteExperiment."""
        experiment_id, outer = p["experiment_id"], "Failed to delete experiment"
        if self.multi_user:
            self._experiment(experiment_id, outer)
        if self._default_experiment and experiment_id == self._default_experiment:
            raise bad_request(
                invalid_input(f"Experiment id cannot be equal to the default id {experiment_id}"),
                f"Failed to delete experiment {experiment_id}. The default experiment cannot be "
                "deleted",
            ).wrap(outer)
        if experiment_id not in self.experiments:
            raise (
                not_found("Experiment", experiment_id)
                .wrap(f"Failed to delete experiment {experiment_id} due to error fetching it")
                .wrap(outer)
            )
        del self.experiments[experiment_id]

    def _archive_experiment(self, p: dict[str, str], _f: dict[str, Any], _b: Any) -> None:
        """resource_manager.go ArchiveExperiment: its runs archived, its recurring runs disabled.

        The store's UPDATE checks no row: an unknown id is a 200 on a single-user server.
        """
        experiment_id = p["experiment_id"]
        if self.multi_user:
            self._experiment(experiment_id, "Failed to archive experiment")
        if experiment_id not in self.experiments:
            return
        now = self._tick()
        for rr in self.recurring_runs.values():
            if rr["experiment_id"] == experiment_id and rr["mode"] == "ENABLE":
                rr.update(mode="DISABLE", status="DISABLED", updated_at=now)
        for run in self.runs.values():
            if run["experiment_id"] == experiment_id:
                run["storage_state"] = "ARCHIVED"
        self.experiments[experiment_id]["storage_state"] = "ARCHIVED"

    def _unarchive_experiment(self, p: dict[str, str], _f: dict[str, Any], _b: Any) -> None:
        """resource_manager.go UnarchiveExperiment: the experiment only (runs stay archived)."""
        experiment_id = p["experiment_id"]
        if self.multi_user:
            self._experiment(experiment_id, "Failed to unarchive experiment")
        if experiment_id in self.experiments:
            self.experiments[experiment_id]["storage_state"] = "AVAILABLE"

    # ------------------------------------------------------------------ runs

    def _post_run(self, _p: dict[str, str], _f: dict[str, Any], data: Any) -> Any:
        """run_server.go CreateRun -> toModelRun -> createRun -> resource_manager.go CreateRun."""
        if "plugins_output" in data:
            raise ApiError(
                10,
                "BadRequestError: plugins_output is server-owned and populated exclusively via "
                "plugin lifecycle hooks: plugins_output must not be set by the client",
                external="plugins_output is server-owned and populated exclusively via plugin "
                "lifecycle hooks",
            )
        outer = "Failed to create a new run"
        if not data.get("display_name"):
            raise internal_server(
                invalid_input("Run name cannot be empty"),
                "Failed to convert a API run detail to its internal representation",
            ).wrap("CreateJob(job.ToV2())Failed to create a run due to conversion error")
        try:
            experiment_id, namespace = self._experiment_pair(data.get("experiment_id", ""))
        except ApiError as err:
            raise err.wrap(
                "Failed to create a run due to invalid experimentId and namespace combination"
            ).wrap(outer) from None
        if self.multi_user and not namespace:
            raise invalid_input("A run cannot have an empty namespace in multi-user mode").wrap(
                outer
            )
        try:
            spec = self._check_spec(data, "run")
            if spec is None:
                raise internal_server(
                    invalid_input(
                        "Failed to fetch a template with an empty pipeline spec manifest"
                    ),
                    "Failed to create a run due to error fetching manifest",
                )
            _check_inputs(
                spec, data.get("runtime_config") or {}, "Failed to generate the ExecutionSpec"
            )
        except ApiError as err:
            raise err.wrap(outer) from None
        now = self._tick()
        run = {
            **data,
            "run_id": self._new_id(),
            "experiment_id": experiment_id,
            "storage_state": "AVAILABLE",
            "service_account": data.get("service_account") or self._default_service_account(),
            "created_at": now,
            "scheduled_at": now,
            "state": "PENDING",
            "state_history": [{"update_time": now, "state": "PENDING"}],
            "namespace": namespace,
        }
        self.runs[run["run_id"]] = run
        self.experiments[experiment_id]["last_run_created_at"] = now
        return _encode_run(run)

    def _run(self, run_id: str, action: str, outer: str) -> dict[str, Any]:
        """The run, or the 404 the server builds for ``action`` (through ``canAccessRun``)."""
        if run_id in self.runs:
            return self.runs[run_id]
        err = not_found("Run", run_id).wrap(f"Failed to fetch run {run_id}")
        if self.multi_user:
            err = err.wrap(f"Failed to authorize with the run ID {run_id}")
            err = err.wrap("Failed to authorize the request")
        elif action:
            err = err.wrap(action)
        raise err.wrap(outer)

    def _scoped(self, items: list[dict[str, Any]], fields: dict[str, Any], what: str,
                one: str, outer: str) -> list[dict[str, Any]]:
        """The items a list of ``what`` may show: of its experiment, else of its namespace.

        run_server.go listRuns and job_server.go listJobs do the same steps with their own
        messages (``one`` starts the empty-namespace one: "A run" / "a recurring run").
        """
        namespace = self._replace_namespace(fields.get("namespace", ""))
        experiment_id = fields.get("experiment_id", "")
        if experiment_id:
            try:
                namespace = self._namespace_of_experiment(experiment_id)
            except ApiError as err:
                raise err.wrap(
                    f"Failed to list {what} due to error fetching namespace for experiment "
                    f"{experiment_id}. Try filtering based on namespace"
                ).wrap(outer) from None
        if self.multi_user and not namespace:
            raise (
                invalid_input(f"{one} cannot have an empty namespace in multi-user mode")
                .wrap(
                    f"Failed to list {what} due to authorization error. Check if you have "
                    f"permission to access namespace {namespace}"
                )
                .wrap(outer)
            )
        if experiment_id:
            return [r for r in items if r["experiment_id"] == experiment_id]
        if namespace:
            return [r for r in items if r.get("namespace", "") == namespace]
        return items

    def _list_runs(self, _p: dict[str, str], fields: dict[str, Any], _b: Any) -> Any:
        """run_server.go ListRuns / listRuns."""
        outer = "Failed to list runs"
        items = list(self.runs.values())
        self._page(fields, [], "Run", "Failed to create list options")  # options come first
        items = self._scoped(items, fields, "runs", "A run", outer)
        rows, total, token = self._page(fields, items, "Run", "Failed to create list options")
        return _prune_list("runs", [_encode_run(r) for r in rows], total, token)

    def _get_run(self, p: dict[str, str], _f: dict[str, Any], _b: Any) -> Any:
        """run_server.go GetRun, resource_manager.go GetRun."""
        return _encode_run(self._run(p["run_id"], "", "Failed to get a run"))

    def _delete_run(self, p: dict[str, str], _f: dict[str, Any], _b: Any) -> None:
        """run_server.go DeleteRun, resource_manager.go DeleteRun."""
        run_id = p["run_id"]
        self._run(
            run_id, f"Failed to delete run {run_id} as it does not exist", "Failed to delete a run"
        )
        del self.runs[run_id]
        self.deleted_runs.append(run_id)

    def _terminate_run(self, p: dict[str, str], _f: dict[str, Any], _b: Any) -> None:
        """run_server.go TerminateRun, resource_manager.go TerminateRun."""
        run_id = p["run_id"]
        run = self._run(
            run_id,
            f"Failed to terminate run {run_id} due to error fetching the run",
            "Failed to terminate a run",
        )
        if run["state"] not in FINAL_STATES:
            run["state"] = "CANCELING"
        self.terminated_runs.append(run_id)

    def _archive_run(self, p: dict[str, str], _f: dict[str, Any], _b: Any) -> None:
        """run_server.go ArchiveRun, resource_manager.go ArchiveRun."""
        run_id = p["run_id"]
        self._run(
            run_id,
            f"Failed to archive run {run_id} as it failed to be retrieved",
            "Failed to archive a run",
        )["storage_state"] = "ARCHIVED"

    def _unarchive_run(self, p: dict[str, str], _f: dict[str, Any], _b: Any) -> None:
        """run_server.go UnarchiveRun, resource_manager.go UnarchiveRun."""
        run_id, outer = p["run_id"], "Failed to unarchive a run"
        run = self._run(run_id, f"Failed to unarchive run {run_id} as it does not exist", outer)
        experiment = self.experiments.get(run["experiment_id"], {})
        if experiment.get("storage_state") == "ARCHIVED":
            raise failed_precondition(
                "Unarchive the experiment first to allow the run to be restored",
                f"Failed to unarchive run {run_id} as experiment {run['experiment_id']} must be "
                "un-archived first",
            ).wrap(outer)
        run["storage_state"] = "AVAILABLE"

    # ------------------------------------------------------------------ recurring runs

    def _post_recurring_run(self, _p: dict[str, str], _f: dict[str, Any], data: Any) -> Any:
        """job_server.go CreateRecurringRun -> toModelJob -> createJob -> CreateJob.

        The checks come in the server's order: toModelJob first (an empty name is a 500
        there, before ``createJob``'s own 400 for it can run; then max concurrency 1-10, the
        cron through robfig/cron v1, the period), then the experiment, then the spec and its
        inputs.
        """
        outer = "Failed to create a recurring run"
        conversion = "Failed to create a recurring run due to conversion error"
        if not data.get("display_name"):
            raise internal_server(
                invalid_input("Recurring run's name cannot be empty"),
                "Failed to convert a API recurring run to its internal representation",
            ).wrap(conversion)
        concurrency = int(data.get("max_concurrency", "0"))
        if not 1 <= concurrency <= 10:
            raise invalid_input(
                "Max concurrency of a recurring run must be at least 1 and at most 10. "
                f"Received {concurrency}"
            ).wrap(conversion)
        trigger = data.get("trigger") or {}
        if "cron_schedule" in trigger:
            cron = trigger["cron_schedule"].get("cron", "")
            try:
                parse_cron(cron)
            except ValueError as exc:
                raise invalid_input(
                    "Schedule cron is not a supported format"
                    f"(https://godoc.org/github.com/robfig/cron). Error: {exc}"
                ).wrap(conversion) from None
        if "periodic_schedule" in trigger:
            interval = int(trigger["periodic_schedule"].get("interval_second", "0"))
            if interval < 1:
                raise invalid_input(
                    f"Found invalid period schedule interval {interval}. "
                    "Set at interval to least 1 second"
                ).wrap(conversion)
        try:
            experiment_id, namespace = self._experiment_pair(data.get("experiment_id", ""))
        except ApiError as err:
            raise err.wrap(
                "Failed to create a recurring run due to invalid experimentId and namespace "
                "combination"
            ).wrap(outer) from None
        if self.multi_user and not namespace:
            raise invalid_input(
                "Recurring run cannot have an empty namespace in multi-user mode"
            ).wrap(outer)
        try:
            spec = self._check_spec(data, "recurring run")
            if spec is None:
                raise GoError("Cannot create a job with an empty pipeline ID")
            _check_inputs(
                spec,
                data.get("runtime_config") or {},
                "Failed to create a recurring run during scheduled workflow creation",
            )
        except ApiError as err:
            raise err.wrap(outer) from None
        now = self._tick()
        enabled = data.get("mode") == "ENABLE"
        recurring = {
            **data,
            "recurring_run_id": self._new_id(),
            "experiment_id": experiment_id,
            # resource_manager.go CreateJob: the ScheduledWorkflow's namespace
            "namespace": namespace or self.pod_namespace,
            "service_account": data.get("service_account") or self._default_service_account(),
            "max_concurrency": str(concurrency),
            "created_at": now,
            "updated_at": now,
            "mode": "ENABLE" if enabled else "DISABLE",
            "status": "ENABLED" if enabled else "DISABLED",
        }
        self.recurring_runs[recurring["recurring_run_id"]] = recurring
        return _encode_recurring(recurring)

    def _recurring(self, recurring_run_id: str, action: str, outer: str) -> dict[str, Any]:
        """The recurring run, or the 404 the server builds (through ``canAccessJob``)."""
        if recurring_run_id in self.recurring_runs:
            return self.recurring_runs[recurring_run_id]
        err = not_found("Job", recurring_run_id)
        if self.multi_user:
            err = err.wrap("failed to authorize with the recurring run ID")
            err = err.wrap("Failed to authorize the request")
        elif action:
            err = err.wrap(action)
        raise err.wrap(outer)

    def _list_recurring_runs(self, _p: dict[str, str], fields: dict[str, Any], _b: Any) -> Any:
        """job_server.go ListRecurringRuns / listJobs."""
        outer = "Failed to list jobs"
        wrap = "Failed to list recurring runs due to error parsing the listing options"
        items = list(self.recurring_runs.values())
        self._page(fields, [], "RecurringRun", wrap)  # options come first
        items = self._scoped(items, fields, "recurring runs", "a recurring run", outer)
        rows, total, token = self._page(fields, items, "RecurringRun", wrap)
        # the proto field is named recurringRuns, so UseProtoNames writes it so
        return _prune_list("recurringRuns", [_encode_recurring(r) for r in rows], total, token)

    def _get_recurring_run(self, p: dict[str, str], _f: dict[str, Any], _b: Any) -> Any:
        """job_server.go GetRecurringRun."""
        rr = self._recurring(p["recurring_run_id"], "", "Failed to fetch a recurring run")
        return _encode_recurring(rr)

    def _set_mode(self, recurring_run_id: str, enable: bool) -> None:
        """resource_manager.go ChangeJobMode; the UPDATE only touches a row whose mode changes."""
        verb = "enable" if enable else "disable"
        rr = self._recurring(
            recurring_run_id,
            f"Failed to change recurring run's mode to enable:{str(enable).lower()}. "
            f"Check if recurring run {recurring_run_id} exists",
            f"Failed to {verb} a recurring run",
        )
        mode = "ENABLE" if enable else "DISABLE"
        if rr["mode"] != mode:
            rr.update(
                mode=mode, status="ENABLED" if enable else "DISABLED", updated_at=self._tick()
            )

    def _enable_recurring_run(self, p: dict[str, str], _f: dict[str, Any], _b: Any) -> None:
        """job_server.go EnableRecurringRun."""
        self._set_mode(p["recurring_run_id"], True)

    def _disable_recurring_run(self, p: dict[str, str], _f: dict[str, Any], _b: Any) -> None:
        """job_server.go DisableRecurringRun."""
        self._set_mode(p["recurring_run_id"], False)

    def _delete_recurring_run(self, p: dict[str, str], fields: dict[str, Any], _b: Any) -> None:
        """job_server.go DeleteRecurringRun, resource_manager.go DeleteJob.

        The ScheduledWorkflow is deleted with the propagation policy asked for; without
        ORPHAN, Kubernetes garbage-collects the Workflows it owns, i.e. its runs in flight.
        """
        rr_id = p["recurring_run_id"]
        self._recurring(
            rr_id,
            f"Failed to delete recurring run {rr_id}. Check if exists",
            "Failed to delete a recurring run",
        )
        orphan = fields.get("propagation_policy") == "ORPHAN"
        if not orphan:
            for run in self.runs.values():
                if run.get("recurring_run_id") == rr_id and run["state"] not in FINAL_STATES:
                    now = self._tick()
                    run["state"] = "FAILED"
                    run["finished_at"] = now
                    run["state_history"].append({"update_time": now, "state": "FAILED"})
                    run["error"] = {
                        "code": 10,
                        "message": "Workflow deleted with its ScheduledWorkflow",
                    }
                    self.cascade_killed_runs.append(run["run_id"])
        del self.recurring_runs[rr_id]

    def _not_modelled(self, _p: dict[str, str], _f: dict[str, Any], _b: Any) -> None:
        raise gateway_error(UNIMPLEMENTED, "this route is not modelled by the KFP stand-in")


# ----------------------------------------------------------------------------- encoding


def _mysql_key(text: str) -> str:
    # the experiments' unique index (Name, Namespace) compares under utf8_general_ci
    return text.rstrip(" ").casefold()


def _is_pipeline_spec(spec: Any) -> bool:
    """template.go isPipelineSpec: strict protojson into PipelineSpec, a name and a root."""
    if not isinstance(spec, dict):
        return False
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    message = pipeline_spec_pb2.PipelineSpec()
    try:
        json_format.ParseDict(spec, message)
    except json_format.ParseError:
        return False
    return bool(message.pipeline_info.name) and message.HasField("root")


_PARAMETER_KINDS = {
    "NUMBER_DOUBLE": (int, float), "NUMBER_INTEGER": (int, float), "STRING": (str,),
    "BOOLEAN": (bool,), "LIST": (list,), "STRUCT": (dict,),
}  # fmt: skip
_PARAMETER_WORDS = {
    "NUMBER_DOUBLE": ("double or integer", "number"),
    "NUMBER_INTEGER": ("double or integer", "number"), "STRING": ("string", "string"),
    "BOOLEAN": ("bool", "bool"), "LIST": ("list", "list"), "STRUCT": ("struct", "struct"),
}  # fmt: skip


def _check_inputs(spec: dict[str, Any], runtime_config: dict[str, Any], wrap: str) -> None:
    """v2_template.go validatePipelineJobInputs (parameter literals are not modelled).

    Declared parameters are visited in name order (Go's map order is random, so upstream
    reports any one of several problems).
    """
    root = spec.get("root") or {}
    declared = ((root.get("inputDefinitions") or {}).get("parameters")) or {}
    given = runtime_config.get("parameters") or {}

    def fail(message: str) -> ApiError:
        return invalid_input(message).wrap("invalid pipeline job inputs").wrap(wrap)

    for name in sorted(declared):
        param = declared[name] or {}
        if name not in given:
            if not param.get("isOptional") and "defaultValue" not in param:
                raise fail(
                    f"parameter {name} is not optional, yet has neither default value nor "
                    "user provided value"
                )
            continue
        kind = param.get("parameterType", "PARAMETER_TYPE_ENUM_UNSPECIFIED")
        value = given[name]
        if kind not in _PARAMETER_KINDS:
            raise fail(f"input parameter {name} has unspecified type")
        ok = isinstance(value, _PARAMETER_KINDS[kind]) and (
            kind == "BOOLEAN" or not isinstance(value, bool)
        )
        if not ok:
            wanted, actual = _PARAMETER_WORDS[kind]
            if kind.startswith("NUMBER"):
                raise fail(
                    f"input parameter {name} requires type {wanted}, but the parameter value is "
                    "not of number value type"
                )
            raise fail(
                f"input parameter {name} requires type {wanted}, but the input parameter is not "
                f"of {actual} value type"
            )
    extra = [n for n in given if n not in declared]
    if extra:
        raise fail(f"parameter(s) provided are not required by pipeline: {', '.join(extra)}")


def _encode_run(run: dict[str, Any]) -> dict[str, Any]:
    out = encode_message("Run", run)
    if out.get("runtime_config") == {}:  # api_converter.go toApiRuntimeConfig: nil when empty
        del out["runtime_config"]
    return out


def _encode_recurring(rr: dict[str, Any]) -> dict[str, Any]:
    out = encode_message("RecurringRun", rr)
    if out.get("runtime_config") == {}:  # toApiRecurringRun: nil when empty
        del out["runtime_config"]
    return out


def _prune_list(key: str, items: list[dict[str, Any]], total: int, token: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if items:
        out[key] = items
    if total:
        out["total_size"] = total
    if token:
        out["next_page_token"] = token
    return out


# ----------------------------------------------------------------------------- HTTP


def _make_handler(standin: KfpApiStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes: without this, Nagle's algorithm and the
            # client's delayed ACK add ~40 ms to every answer.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, answer, content_type = standin.handle(
                self.command, self.path, body, self.headers.get("Authorization")
            )
            payload = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


def running(**kwargs: Any) -> Iterator[KfpApiStandIn]:
    """Yield a started stand-in and always stop it (for ``yield from`` in a pytest fixture)."""
    standin = KfpApiStandIn(**kwargs).start()
    try:
        yield standin
    finally:
        standin.stop()
