"""A local stand-in for the Kubeflow Pipelines v2beta1 REST API (what ``kfp.Client`` 2.17 calls).

It is a real HTTP server on 127.0.0.1 (a free port, served from a thread) that keeps
experiments, runs and recurring runs in memory and answers like the KFP API server behind its
grpc-gateway v2 proxy (KFP >= 2.14):

* routes and bodies of ``backend/api/v2beta1/{experiment,run,recurring_run}.proto``; request
  bodies are decoded like protojson with ``DiscardUnknown: false`` (proto or lowerCamel field
  names, unknown field -> 400, wrong JSON type -> 400, an empty body is an empty message);
* answers are encoded like the server's ``CustomMarshaler`` (proto field names,
  ``EmitUnpopulated: false``: empty strings, false, zero numbers, empty lists and zero enums are
  left out; int64 values are JSON strings; enums are names; the recurring-run list key is
  ``recurringRuns`` because that is the proto field's own name);
* errors are ``google.rpc.Status`` JSON with the HTTP status grpc-gateway derives from the gRPC
  code (404/5, 409/6, 400/3, 500/13, ...): ``{"code": 5, "message": ..., "details": [...]}``;
  ``error_style="gateway-v1"`` adds the ``"error"`` key older servers (grpc-gateway v1) sent;
* server-side checks the real server makes: experiment names unique per namespace (409),
  ``max_concurrency`` within 1-10, a cron of 5-6 fields, a pipeline source present, unknown
  ids -> 404, filters/sort keys it does not support -> 400; the single-user "Default" experiment
  exists from the start; an empty service account becomes ``pipeline-runner``;
* deleting a recurring run garbage-collects the runs it started that are still in flight, as
  Kubernetes does with the ScheduledWorkflow's Workflows, unless the request asks for
  ``propagation_policy=ORPHAN`` and the stand-in emulates a backend that knows that option
  (``honours_propagation_policy``, default True; False emulates KFP <= 2.15).

Every request is recorded (method, path, query, JSON body, authorization header, status) so a
test can assert on what was sent and in which order. Test hooks: :meth:`KfpApiStandIn.fire`
(the scheduler starts a run of a recurring run), :meth:`KfpApiStandIn.set_run_state`,
:meth:`KfpApiStandIn.fail` (inject an error answer).
"""

from __future__ import annotations

import base64
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
from urllib.parse import parse_qs, urlsplit

from standins.http import TrackingServer

API = "/apis/v2beta1"

# ----------------------------------------------------------------------------- gRPC codes

OK, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, UNIMPLEMENTED, INTERNAL = 0, 3, 5, 6, 12, 13

#: grpc-gateway's runtime.HTTPStatusFromCode.
HTTP_STATUS = {
    0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
    9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401,
}  # fmt: skip


class ApiError(Exception):
    """An error answer: a gRPC code, the status message and the user-facing message."""

    def __init__(
        self, code: int, message: str, external: str | None = None, *, details: bool = True
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.external = external if external is not None else message
        # KFP's own errors carry an api.Error detail; the gateway's routing and decoding
        # errors carry none.
        self.details = details


def _invalid(message: str) -> ApiError:
    return ApiError(INVALID_ARGUMENT, f"Invalid input error: {message}", message)


def _not_found(kind: str, ident: str, wrap: str) -> ApiError:
    external = f"{kind} {ident} not found."
    return ApiError(NOT_FOUND, f"{wrap}: ResourceNotFoundError: {external}", external)


# ----------------------------------------------------------------------------- schema

RUNTIME_STATES = {
    "RUNTIMESTATE_UNSPECIFIED": 0, "PENDING": 1, "RUNNING": 2, "SUCCEEDED": 3, "SKIPPED": 4,
    "FAILED": 5, "CANCELING": 6, "CANCELED": 7, "PAUSED": 8,
}  # fmt: skip
FINAL_STATES = frozenset({"SUCCEEDED", "SKIPPED", "FAILED", "CANCELED"})
STORAGE_STATES = {"STORAGESTATE_UNSPECIFIED": 0, "AVAILABLE": 1, "ARCHIVED": 2}
MODES = {"MODE_UNSPECIFIED": 0, "ENABLE": 1, "DISABLE": 2}
STATUSES = {"STATUS_UNSPECIFIED": 0, "ENABLED": 1, "DISABLED": 3}
PROPAGATION_POLICIES = {
    "DELETE_PROPAGATION_POLICY_UNSPECIFIED": 0, "FOREGROUND": 1, "BACKGROUND": 2, "ORPHAN": 3,
}  # fmt: skip
FILTER_OPERATIONS = {
    "UNSPECIFIED": 0, "EQUALS": 1, "NOT_EQUALS": 2, "GREATER_THAN": 3, "GREATER_THAN_EQUALS": 5,
    "LESS_THAN": 6, "LESS_THAN_EQUALS": 7, "IN": 8, "IS_SUBSTRING": 9,
}  # fmt: skip

# A field kind is "string", "bool", "int64", "int32", "timestamp", "struct" (an object),
# "object" (a message the stand-in keeps opaque), "map" (map<string, Value>), "list",
# ("enum", {name: number}) or ("message", "Name").
Kind = str | tuple[str, Any]

SCHEMA: dict[str, dict[str, Kind]] = {
    "Experiment": {
        "experiment_id": "string",
        "display_name": "string",
        "description": "string",
        "created_at": "timestamp",
        "namespace": "string",
        "storage_state": ("enum", STORAGE_STATES),
        "last_run_created_at": "timestamp",
    },
    "PipelineVersionReference": {"pipeline_id": "string", "pipeline_version_id": "string"},
    "RuntimeConfig": {"parameters": "map", "pipeline_root": "string"},
    "Run": {
        "experiment_id": "string",
        "run_id": "string",
        "display_name": "string",
        "storage_state": ("enum", STORAGE_STATES),
        "description": "string",
        "pipeline_version_id": "string",
        "pipeline_spec": "struct",
        "pipeline_version_reference": ("message", "PipelineVersionReference"),
        "runtime_config": ("message", "RuntimeConfig"),
        "service_account": "string",
        "created_at": "timestamp",
        "scheduled_at": "timestamp",
        "finished_at": "timestamp",
        "state": ("enum", RUNTIME_STATES),
        "error": "object",
        "run_details": "object",
        "recurring_run_id": "string",
        "state_history": "list",
        "plugins_input": "map",
        "plugins_output": "map",
    },
    "CronSchedule": {"start_time": "timestamp", "end_time": "timestamp", "cron": "string"},
    "PeriodicSchedule": {
        "start_time": "timestamp",
        "end_time": "timestamp",
        "interval_second": "int64",
    },
    "Trigger": {
        "cron_schedule": ("message", "CronSchedule"),
        "periodic_schedule": ("message", "PeriodicSchedule"),
    },
    "RecurringRun": {
        "recurring_run_id": "string",
        "display_name": "string",
        "description": "string",
        "pipeline_version_id": "string",
        "pipeline_spec": "struct",
        "pipeline_version_reference": ("message", "PipelineVersionReference"),
        "runtime_config": ("message", "RuntimeConfig"),
        "service_account": "string",
        "max_concurrency": "int64",
        "trigger": ("message", "Trigger"),
        "mode": ("enum", MODES),
        "created_at": "timestamp",
        "updated_at": "timestamp",
        "status": ("enum", STATUSES),
        "error": "object",
        "no_catchup": "bool",
        "namespace": "string",
        "experiment_id": "string",
        "plugins_input": "map",
    },
}

ONEOFS: dict[str, dict[str, tuple[str, ...]]] = {
    "Run": {
        "pipeline_source": ("pipeline_version_id", "pipeline_spec", "pipeline_version_reference")
    },
    "RecurringRun": {
        "pipeline_source": ("pipeline_version_id", "pipeline_spec", "pipeline_version_reference")
    },
    "Trigger": {"trigger": ("cron_schedule", "periodic_schedule")},
}

PACKAGE = {
    "Experiment": "kubeflow.pipelines.backend.api.v2beta1.Experiment",
    "Run": "kubeflow.pipelines.backend.api.v2beta1.Run",
    "RecurringRun": "kubeflow.pipelines.backend.api.v2beta1.RecurringRun",
    "Trigger": "kubeflow.pipelines.backend.api.v2beta1.Trigger",
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


_INT_RE = re.compile(r"^-?\d+$")
_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _decode_value(kind: Kind, value: Any, name: str) -> Any:
    def bad() -> ApiError:
        shown = json.dumps(value)
        if isinstance(kind, tuple):
            return _proto_error(f"invalid value for enum field {name}: {shown}")
        return _proto_error(f"invalid value for {kind} field {name}: {shown}")

    if isinstance(kind, tuple):
        tag, arg = kind
        if tag == "enum":
            if isinstance(value, str) and value in arg:
                return value
            if isinstance(value, int) and not isinstance(value, bool):
                names = [n for n, num in arg.items() if num == value]
                if names:
                    return names[0]
            raise bad()
        if not isinstance(value, dict):
            raise _proto_error(f"invalid value for message field {name}: {json.dumps(value)}")
        return decode_message(arg, value)
    if kind == "string":
        if not isinstance(value, str):
            raise bad()
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad()
        return value
    if kind in ("int64", "int32"):
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str) and _INT_RE.match(value):
            value = int(value)
        if not isinstance(value, int):
            raise bad()
        return str(value) if kind == "int64" else value
    if kind == "timestamp":
        if not isinstance(value, str) or not _TS_RE.match(value):
            raise _proto_error(f"invalid google.protobuf.Timestamp value {json.dumps(value)}")
        return value
    if kind in ("struct", "map", "object"):
        if not isinstance(value, dict):
            raise _proto_error(f"invalid value for {kind} field {name}: {json.dumps(value)}")
        return copy.deepcopy(value)
    if kind == "list":
        if not isinstance(value, list):
            raise bad()
        return copy.deepcopy(value)
    raise AssertionError(f"unknown kind {kind!r}")


def _proto_error(message: str) -> ApiError:
    return ApiError(INVALID_ARGUMENT, f"proto: {message}", details=False)


def decode_message(message: str, data: dict[str, Any]) -> dict[str, Any]:
    """Decode a JSON object into canonical proto-name form, like protojson.Unmarshal."""
    fields = SCHEMA[message]
    by_json = {_camel(n): n for n in fields}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key if key in fields else by_json.get(key)
        if name is None:
            raise _proto_error(f"unknown field {json.dumps(key)}")
        if name in out:
            raise _proto_error(f"duplicate field {json.dumps(key)}")
        if value is None:  # null leaves a field unset
            continue
        for oneof, members in ONEOFS.get(message, {}).items():
            if name in members and any(m in out for m in members):
                full = PACKAGE.get(message, message)
                raise _proto_error(
                    f"error parsing {json.dumps(key)}, oneof {full}.{oneof} is already set"
                )
        out[name] = _decode_value(fields[name], value, name)
    return out


def _is_default(kind: Kind, value: Any) -> bool:
    if value is None:
        return True
    if isinstance(kind, tuple):
        return kind[0] == "enum" and kind[1].get(value) == 0
    if kind == "string":
        return value == ""
    if kind == "bool":
        return value is False
    if kind == "int64":
        return value in ("0", 0)
    if kind == "int32":
        return value == 0
    if kind in ("map", "list"):
        return not value
    return False


def encode_message(message: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Encode like protojson with UseProtoNames and EmitUnpopulated=false."""
    fields = SCHEMA[message]
    out: dict[str, Any] = {}
    for name, kind in fields.items():
        value = obj.get(name)
        if _is_default(kind, value):
            continue
        if isinstance(kind, tuple) and kind[0] == "message":
            value = encode_message(kind[1], value)
        out[name] = copy.deepcopy(value)
    return out


# ----------------------------------------------------------------------------- filters

# API filter/sort keys -> stored field, per resource (the server's APIToModelFieldMap).
FILTER_KEYS: dict[str, dict[str, str]] = {
    "Experiment": {
        "experiment_id": "experiment_id", "id": "experiment_id", "display_name": "display_name",
        "name": "display_name", "created_at": "created_at", "description": "description",
        "namespace": "namespace", "storage_state": "storage_state",
        "last_run_created_at": "last_run_created_at",
    },
    "Run": {
        "run_id": "run_id", "id": "run_id", "display_name": "display_name", "name": "display_name",
        "created_at": "created_at", "finished_at": "finished_at", "description": "description",
        "scheduled_at": "scheduled_at", "storage_state": "storage_state", "state": "state",
        "experiment_id": "experiment_id", "recurring_run_id": "recurring_run_id",
        "namespace": "namespace",
    },
    "RecurringRun": {
        "recurring_run_id": "recurring_run_id", "id": "recurring_run_id",
        "display_name": "display_name", "name": "display_name", "created_at": "created_at",
        "updated_at": "updated_at", "description": "description", "experiment_id": "experiment_id",
        "namespace": "namespace",
    },
}  # fmt: skip

_PREDICATE_VALUE_KEYS = {
    "int_value": "int", "long_value": "int", "string_value": "str", "timestamp_value": "ts",
    "int_values": "ints", "long_values": "ints", "string_values": "strs",
}  # fmt: skip


def _epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _parse_filter(text: str, resource: str) -> list[tuple[str, str, Any]]:
    """Parse a JSON-serialized Filter proto into (field, operation, value) triples."""
    try:
        data = json.loads(text)
    except ValueError:
        raise _invalid(f"Failed to parse valid filter from {text!r}: not JSON") from None
    if not isinstance(data, dict):
        raise _invalid(f"Failed to parse valid filter from {text!r}")
    keys = FILTER_KEYS[resource]
    predicates: list[tuple[str, str, Any]] = []
    for raw in data.get("predicates") or []:
        if not isinstance(raw, dict):
            raise _invalid(f"Failed to parse valid filter from {text!r}")
        pred = {k if k in ("operation", "key") else _snake(k): v for k, v in raw.items()}
        op = pred.get("operation", 0)
        if isinstance(op, int):
            op = next((n for n, v in FILTER_OPERATIONS.items() if v == op), None)
        if op not in FILTER_OPERATIONS or op == "UNSPECIFIED":
            raise _invalid(f"Invalid filter operation {pred.get('operation')!r}")
        key = pred.get("key", "")
        if key not in keys:
            raise _invalid(
                "Failed to create list options: "
                f"no support for filtering on unrecognized field {key!r}"
            )
        values = [(k, v) for k, v in pred.items() if k in _PREDICATE_VALUE_KEYS]
        if len(values) != 1:
            raise _invalid(f"Filter predicate on {key!r} must have exactly one value")
        value_key, value = values[0]
        sort = _PREDICATE_VALUE_KEYS[value_key]
        if sort in ("ints", "strs"):
            value = (value or {}).get("values", [])
        if sort == "int" or sort == "ints":
            value = [int(v) for v in value] if isinstance(value, list) else int(value)
        predicates.append((keys[key], str(op), value))
    return predicates


def _snake(name: str) -> str:
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _matches(obj: dict[str, Any], predicates: list[tuple[str, str, Any]]) -> bool:
    for field_name, op, wanted in predicates:
        have: Any = obj.get(field_name, "")
        if field_name.endswith("_at") and have:
            have = _epoch(have)
            if isinstance(wanted, str):
                wanted = _epoch(wanted)
        if op == "EQUALS" and have != wanted:
            return False
        if op == "NOT_EQUALS" and have == wanted:
            return False
        if op == "IN" and have not in wanted:
            return False
        if op == "IS_SUBSTRING" and str(wanted) not in str(have):
            return False
        if op in ("GREATER_THAN", "GREATER_THAN_EQUALS", "LESS_THAN", "LESS_THAN_EQUALS"):
            compare = {
                "GREATER_THAN": lambda a, b: a > b,
                "GREATER_THAN_EQUALS": lambda a, b: a >= b,
                "LESS_THAN": lambda a, b: a < b,
                "LESS_THAN_EQUALS": lambda a, b: a <= b,
            }[op]
            if not compare(have, wanted):
                return False
    return True


# ----------------------------------------------------------------------------- recording


@dataclass
class RecordedRequest:
    """One request the stand-in received.

    Attributes:
        method: HTTP method.
        path: URL path without the query.
        query: Query parameters (each name -> list of values, blanks kept).
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

RouteHandler = Callable[[dict[str, str], dict[str, list[str]], Any], Any]


@dataclass
class KfpApiStandIn:
    """An in-memory KFP v2beta1 API server on 127.0.0.1; use it as a context manager.

    Args:
        seed: Seeds the generated ids.
        multi_user: Emulate a multi-user deployment (healthz says so; namespaces required).
        honours_propagation_policy: Whether ``DELETE .../recurringruns/{id}`` honours
            ``propagation_policy=ORPHAN`` (KFP with kubeflow/pipelines#12574) or ignores it
            and garbage-collects in-flight runs anyway (KFP <= 2.15).
        error_style: ``"gateway-v2"`` (``google.rpc.Status``) or ``"gateway-v1"`` (adds
            ``"error"``, as servers before KFP 2.14 did).
        tag_name: The version healthz reports.
    """

    seed: int = 0
    multi_user: bool = False
    honours_propagation_policy: bool = True
    error_style: str = "gateway-v2"
    tag_name: str = "2.17.0"
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
        if not self.multi_user:  # the API server creates it at start-up in single-user mode
            self._create_experiment(
                {
                    "display_name": "Default",
                    "description": "All runs created without specifying an experiment"
                    " will be grouped here.",
                }
            )
        self._routes: list[tuple[str, re.Pattern[str], RouteHandler]] = []
        for method, pattern, handler in (
            ("GET", "/healthz", self._healthz),
            ("POST", "/experiments", self._post_experiment),
            ("GET", "/experiments", self._list_experiments),
            ("GET", "/experiments/{experiment_id}", self._get_experiment),
            ("DELETE", "/experiments/{experiment_id}", self._delete_experiment),
            ("POST", "/experiments/{experiment_id}:archive", self._archive_experiment),
            ("POST", "/experiments/{experiment_id}:unarchive", self._unarchive_experiment),
            ("POST", "/runs", self._post_run),
            ("GET", "/runs", self._list_runs),
            ("GET", "/runs/{run_id}", self._get_run),
            ("DELETE", "/runs/{run_id}", self._delete_run),
            ("POST", "/runs/{run_id}:terminate", self._terminate_run),
            ("POST", "/runs/{run_id}:archive", self._archive_run),
            ("POST", "/runs/{run_id}:unarchive", self._unarchive_run),
            ("POST", "/recurringruns", self._post_recurring_run),
            ("GET", "/recurringruns", self._list_recurring_runs),
            ("GET", "/recurringruns/{recurring_run_id}", self._get_recurring_run),
            ("DELETE", "/recurringruns/{recurring_run_id}", self._delete_recurring_run),
            ("POST", "/recurringruns/{recurring_run_id}:enable", self._enable_recurring_run),
            ("POST", "/recurringruns/{recurring_run_id}:disable", self._disable_recurring_run),
            ("POST", "/pipelines/upload", self._not_modelled),
            ("POST", "/pipelines/upload_version", self._not_modelled),
        ):
            regex = re.sub(
                r"\{(\w+)\}",
                r"(?P<\1>[^/:]+)",
                re.escape(API + pattern).replace(r"\{", "{").replace(r"\}", "}"),
            )
            self._routes.append((method, re.compile(f"^{regex}$"), handler))

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
                "namespace": rr.get("namespace", ""),
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
    ) -> tuple[int, dict[str, Any] | str]:
        """Serve one request; return (HTTP status, JSON answer or raw text)."""
        parts = urlsplit(raw_path)
        path = parts.path
        query = parse_qs(parts.query, keep_blank_values=True)
        text = body.decode("utf-8", errors="replace")
        try:
            parsed: Any = json.loads(text) if text.strip() else None
        except ValueError:
            parsed = None
        record = RecordedRequest(method, path, query, parsed, text, authorization)
        with self._lock:
            self.requests.append(record)
            status, answer = self._dispatch(method, path, query, text)
            record.status = status
        return status, answer

    def _dispatch(
        self, method: str, path: str, query: dict[str, list[str]], text: str
    ) -> tuple[int, dict[str, Any] | str]:
        for fault in self._faults:
            if fault.times > 0 and fault.method == method and fault.path.search(path):
                fault.times -= 1
                if fault.body is not None:
                    return fault.status, copy.deepcopy(fault.body)
                return fault.status, self._error_body(ApiError(fault.code, fault.message))
        path_matched = False
        for route_method, regex, handler in self._routes:
            match = regex.match(path)
            if not match:
                continue
            path_matched = True
            if route_method != method:
                continue
            try:
                body = self._decode_body(text) if method in ("POST", "PATCH", "PUT") else None
                answer = handler(match.groupdict(), query, body)
            except ApiError as err:
                return HTTP_STATUS.get(err.code, 500), self._error_body(err)
            return 200, answer if answer is not None else {}
        if path_matched:  # grpc-gateway v2: a known path with another method
            err = ApiError(UNIMPLEMENTED, "Method Not Allowed", details=False)
            return HTTP_STATUS[UNIMPLEMENTED], self._error_body(err)
        return 404, self._error_body(ApiError(NOT_FOUND, "Not Found", details=False))

    @staticmethod
    def _decode_body(text: str) -> Any:
        if not text.strip():
            return {}  # grpc-gateway decodes an empty body as an empty message
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise _proto_error(
                f"syntax error (line 1:{exc.pos + 1 if hasattr(exc, 'pos') else 1}): invalid value"
            ) from None
        if not isinstance(data, dict):
            raise _proto_error(f"syntax error (line 1:1): unexpected token {json.dumps(data)[:20]}")
        return data

    def _error_body(self, err: ApiError) -> dict[str, Any]:
        details = []
        if err.details:
            details.append(
                {
                    "@type": "type.googleapis.com/api.Error",
                    "error_message": err.external,
                    "error_details": err.message,
                }
            )
        body: dict[str, Any] = {"code": err.code, "message": err.message, "details": details}
        if self.error_style == "gateway-v1":
            body = {"error": err.message, **body}
        return body

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _q(query: dict[str, list[str]], name: str) -> str:
        values = query.get(name) or query.get(_camel(name)) or [""]
        return values[0]

    def _page(
        self, query: dict[str, list[str]], items: list[dict[str, Any]], resource: str
    ) -> tuple[list[dict[str, Any]], int, str]:
        filter_text = self._q(query, "filter")
        if filter_text:
            predicates = _parse_filter(filter_text, resource)
            items = [i for i in items if _matches(i, predicates)]
        sort_by = self._q(query, "sort_by").strip()
        key_field, reverse = "created_at", False
        if sort_by:
            key_name, _, direction = sort_by.partition(" ")
            if key_name not in FILTER_KEYS[resource] or direction.strip() not in (
                "",
                "asc",
                "desc",
            ):
                raise _invalid(f"Failed to create list options: invalid sorting field {sort_by!r}")
            key_field, reverse = FILTER_KEYS[resource][key_name], direction.strip() == "desc"
        id_field = {
            "Experiment": "experiment_id",
            "Run": "run_id",
            "RecurringRun": "recurring_run_id",
        }[resource]
        items = sorted(
            items, key=lambda i: (str(i.get(key_field, "")), i[id_field]), reverse=reverse
        )
        size_text = self._q(query, "page_size") or "0"
        if not _INT_RE.match(size_text) or int(size_text) < 0:
            raise _proto_error(f'parsing field "page_size": invalid value {size_text!r}')
        size = int(size_text) or 20
        size = min(size, 200)
        token = self._q(query, "page_token")
        offset = 0
        if token:
            try:
                offset = int(
                    base64.urlsafe_b64decode(token.encode()).decode().removeprefix("offset:")
                )
            except ValueError:
                raise _invalid(f"Invalid page token {token!r}") from None
        page = items[offset : offset + size]
        next_token = ""
        if offset + size < len(items):
            next_token = base64.urlsafe_b64encode(f"offset:{offset + size}".encode()).decode()
        return page, len(items), next_token

    def _resolve_experiment(self, experiment_id: str, namespace: str) -> tuple[str, str]:
        if experiment_id:
            if experiment_id not in self.experiments:
                raise _not_found("Experiment", experiment_id, "Failed to get experiment")
            return experiment_id, self.experiments[experiment_id].get("namespace", "")
        if self.multi_user:
            raise _invalid(
                "Experiment id is empty in multi-user mode. Please specify a valid experiment id"
            )
        default = next(e for e in self.experiments.values() if e["display_name"] == "Default")
        return default["experiment_id"], ""

    @staticmethod
    def _check_pipeline_source(obj: dict[str, Any], what: str) -> None:
        sources = [
            k
            for k in ("pipeline_spec", "pipeline_version_reference", "pipeline_version_id")
            if obj.get(k)
        ]
        if not sources:
            raise _invalid(
                f"Failed to create a {what}: "
                "pipeline spec or pipeline version reference is required"
            )
        spec = obj.get("pipeline_spec")
        if spec is not None:
            inner = spec.get("pipeline_spec", spec) if isinstance(spec, dict) else None
            if not isinstance(inner, dict) or "root" not in inner or "pipelineInfo" not in inner:
                raise _invalid(
                    f"Failed to create a {what}: "
                    "pipeline_spec is not a valid PipelineSpec (no root or pipelineInfo)"
                )

    def _default_service_account(self) -> str:
        return "default-editor" if self.multi_user else "pipeline-runner"

    # ------------------------------------------------------------------ healthz

    def _healthz(self, _p: dict[str, str], _q: dict[str, list[str]], _b: Any) -> dict[str, Any]:
        return {
            "commit_sha": "standin",
            "tag_name": self.tag_name,
            "multi_user": self.multi_user,
            "pipeline_store": "database",
        }

    # ------------------------------------------------------------------ experiments

    def _create_experiment(self, data: dict[str, Any]) -> dict[str, Any]:
        name = data.get("display_name", "")
        if not name:
            raise _invalid("Experiment name is empty. Please specify a valid experiment name")
        namespace = data.get("namespace", "") if self.multi_user else ""
        if self.multi_user and not namespace:
            raise _invalid("Experiment namespace is empty. Please specify a valid namespace")
        for existing in self.experiments.values():
            if existing["display_name"] == name and existing.get("namespace", "") == namespace:
                external = (
                    f"Failed to create a new experiment. The name {name} already exists. "
                    "Please specify a new name"
                )
                raise ApiError(
                    ALREADY_EXISTS,
                    f"Failed to create an experiment: Already exist error: {external}",
                    external,
                )
        experiment = {
            "experiment_id": self._new_id(),
            "display_name": name,
            "description": data.get("description", ""),
            "created_at": self._tick(),
            "namespace": namespace,
            "storage_state": "AVAILABLE",
            "last_run_created_at": "1970-01-01T00:00:00Z",
        }
        self.experiments[experiment["experiment_id"]] = experiment
        return experiment

    def _post_experiment(
        self, _p: dict[str, str], _q: dict[str, list[str]], body: Any
    ) -> dict[str, Any]:
        return encode_message(
            "Experiment", self._create_experiment(decode_message("Experiment", body))
        )

    def _experiment(self, experiment_id: str) -> dict[str, Any]:
        if experiment_id not in self.experiments:
            raise _not_found("Experiment", experiment_id, "Failed to get experiment")
        return self.experiments[experiment_id]

    def _list_experiments(
        self, _p: dict[str, str], query: dict[str, list[str]], _b: Any
    ) -> dict[str, Any]:
        namespace = self._q(query, "namespace")
        if self.multi_user and not namespace:
            raise _invalid(
                "Invalid ListExperiment request. No namespace provided in multi-user mode."
            )
        items = [
            e
            for e in self.experiments.values()
            if not self.multi_user or e["namespace"] == namespace
        ]
        page, total, token = self._page(query, items, "Experiment")
        return _prune_list(
            "experiments", [encode_message("Experiment", e) for e in page], total, token
        )

    def _get_experiment(
        self, p: dict[str, str], _q: dict[str, list[str]], _b: Any
    ) -> dict[str, Any]:
        return encode_message("Experiment", self._experiment(p["experiment_id"]))

    def _delete_experiment(self, p: dict[str, str], _q: dict[str, list[str]], _b: Any) -> None:
        self._experiment(p["experiment_id"])
        del self.experiments[p["experiment_id"]]

    def _archive_experiment(self, p: dict[str, str], _q: dict[str, list[str]], _b: Any) -> None:
        self._experiment(p["experiment_id"])["storage_state"] = "ARCHIVED"

    def _unarchive_experiment(self, p: dict[str, str], _q: dict[str, list[str]], _b: Any) -> None:
        self._experiment(p["experiment_id"])["storage_state"] = "AVAILABLE"

    # ------------------------------------------------------------------ runs

    def _post_run(
        self, _p: dict[str, str], query: dict[str, list[str]], body: Any
    ) -> dict[str, Any]:
        data = decode_message("Run", body)
        if not data.get("display_name"):
            raise _invalid("The run name is empty. Please specify a valid name")
        self._check_pipeline_source(data, "run")
        experiment_id, namespace = self._resolve_experiment(
            data.get("experiment_id") or self._q(query, "experiment_id"), ""
        )
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
        return encode_message("Run", run)

    def _run(self, run_id: str) -> dict[str, Any]:
        if run_id not in self.runs:
            raise _not_found("Run", run_id, "Failed to get a run: Failed to fetch run")
        return self.runs[run_id]

    def _list_runs(
        self, _p: dict[str, str], query: dict[str, list[str]], _b: Any
    ) -> dict[str, Any]:
        items = list(self.runs.values())
        experiment_id = self._q(query, "experiment_id")
        if experiment_id:
            self._experiment(experiment_id)
            items = [r for r in items if r["experiment_id"] == experiment_id]
        namespace = self._q(query, "namespace")
        if self.multi_user and not namespace and not experiment_id:
            raise _invalid(
                "ListRuns must filter by resource reference or namespace in multi-user mode."
            )
        if namespace:
            items = [r for r in items if r.get("namespace", "") == namespace]
        page, total, token = self._page(query, items, "Run")
        return _prune_list("runs", [encode_message("Run", r) for r in page], total, token)

    def _get_run(self, p: dict[str, str], _q: dict[str, list[str]], _b: Any) -> dict[str, Any]:
        return encode_message("Run", self._run(p["run_id"]))

    def _delete_run(self, p: dict[str, str], _q: dict[str, list[str]], _b: Any) -> None:
        self._run(p["run_id"])
        del self.runs[p["run_id"]]
        self.deleted_runs.append(p["run_id"])

    def _terminate_run(self, p: dict[str, str], _q: dict[str, list[str]], _b: Any) -> None:
        run = self._run(p["run_id"])
        if run["state"] not in FINAL_STATES:
            run["state"] = "CANCELING"
        self.terminated_runs.append(p["run_id"])

    def _archive_run(self, p: dict[str, str], _q: dict[str, list[str]], _b: Any) -> None:
        self._run(p["run_id"])["storage_state"] = "ARCHIVED"

    def _unarchive_run(self, p: dict[str, str], _q: dict[str, list[str]], _b: Any) -> None:
        self._run(p["run_id"])["storage_state"] = "AVAILABLE"

    # ------------------------------------------------------------------ recurring runs

    def _post_recurring_run(
        self, _p: dict[str, str], _q: dict[str, list[str]], body: Any
    ) -> dict[str, Any]:
        data = decode_message("RecurringRun", body)
        self._check_pipeline_source(data, "recurring run")
        concurrency = int(data.get("max_concurrency", "0"))
        if not 1 <= concurrency <= 10:
            raise _invalid(
                "The max concurrency of the recurring run is out of range. "
                f"Support 1-10. Received {concurrency}."
            )
        trigger = data.get("trigger", {})
        cron = (trigger.get("cron_schedule") or {}).get("cron")
        if cron is not None and not cron.startswith("@"):  # robfig/cron also takes @daily etc.
            fields = cron.split()
            if not 5 <= len(fields) <= 6:
                raise _invalid(
                    "Schedule cron is not a supported format"
                    "(https://godoc.org/github.com/robfig/cron). "
                    f"Error: Expected 5 to 6 fields, found {len(fields)}: {cron}"
                )
        periodic = trigger.get("periodic_schedule")
        if periodic is not None and int(periodic.get("interval_second", "0")) < 1:
            raise _invalid(
                f"Found invalid period schedule interval {periodic.get('interval_second', '0')}. "
                "Set at interval to least 1 second."
            )
        if not data.get("display_name"):
            raise _invalid("Recurring run name is empty. Please specify a valid name")
        experiment_id, namespace = self._resolve_experiment(data.get("experiment_id", ""), "")
        now = self._tick()
        enabled = data.get("mode") == "ENABLE"
        recurring = {
            **data,
            "recurring_run_id": self._new_id(),
            "experiment_id": experiment_id,
            "namespace": namespace,
            "service_account": data.get("service_account") or self._default_service_account(),
            "created_at": now,
            "updated_at": now,
            "mode": "ENABLE" if enabled else "DISABLE",
            "status": "ENABLED" if enabled else "DISABLED",
        }
        self.recurring_runs[recurring["recurring_run_id"]] = recurring
        return encode_message("RecurringRun", recurring)

    def _recurring(self, recurring_run_id: str, wrap: str) -> dict[str, Any]:
        if recurring_run_id not in self.recurring_runs:
            raise _not_found("RecurringRun", recurring_run_id, wrap)
        return self.recurring_runs[recurring_run_id]

    def _list_recurring_runs(
        self, _p: dict[str, str], query: dict[str, list[str]], _b: Any
    ) -> dict[str, Any]:
        items = list(self.recurring_runs.values())
        experiment_id = self._q(query, "experiment_id")
        namespace = self._q(query, "namespace")
        if self.multi_user and not namespace and not experiment_id:
            raise _invalid(
                "Invalid ListRecurringRuns request. No namespace provided in multi-user mode."
            )
        if experiment_id:
            self._experiment(experiment_id)
            items = [r for r in items if r["experiment_id"] == experiment_id]
        if namespace:
            items = [r for r in items if r.get("namespace", "") == namespace]
        page, total, token = self._page(query, items, "RecurringRun")
        return _prune_list(
            "recurringRuns", [encode_message("RecurringRun", r) for r in page], total, token
        )

    def _get_recurring_run(
        self, p: dict[str, str], _q: dict[str, list[str]], _b: Any
    ) -> dict[str, Any]:
        rr = self._recurring(
            p["recurring_run_id"], "Failed to fetch a recurring run: Failed to get a recurring run"
        )
        return encode_message("RecurringRun", rr)

    def _set_mode(self, recurring_run_id: str, enable: bool) -> None:
        verb = "enable" if enable else "disable"
        rr = self._recurring(
            recurring_run_id, f"Failed to {verb} a recurring run: Failed to get a recurring run"
        )
        rr["mode"] = "ENABLE" if enable else "DISABLE"
        rr["status"] = "ENABLED" if enable else "DISABLED"
        rr["updated_at"] = self._tick()

    def _enable_recurring_run(self, p: dict[str, str], _q: dict[str, list[str]], _b: Any) -> None:
        self._set_mode(p["recurring_run_id"], True)

    def _disable_recurring_run(self, p: dict[str, str], _q: dict[str, list[str]], _b: Any) -> None:
        self._set_mode(p["recurring_run_id"], False)

    def _delete_recurring_run(
        self, p: dict[str, str], query: dict[str, list[str]], _b: Any
    ) -> None:
        policy = self._q(query, "propagation_policy") or "DELETE_PROPAGATION_POLICY_UNSPECIFIED"
        if policy.isdigit():
            policy = next((n for n, v in PROPAGATION_POLICIES.items() if v == int(policy)), policy)
        if self.honours_propagation_policy and policy not in PROPAGATION_POLICIES:
            raise _proto_error(f'parsing field "propagation_policy": {policy!r} is not valid value')
        rr_id = p["recurring_run_id"]
        self._recurring(
            rr_id,
            "Failed to delete a recurring run: "
            f"Failed to delete recurring run {rr_id}. Check if exists",
        )
        orphan = self.honours_propagation_policy and policy == "ORPHAN"
        if not orphan:  # Kubernetes garbage-collects the ScheduledWorkflow's Workflows
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

    def _not_modelled(self, _p: dict[str, str], _q: dict[str, list[str]], _b: Any) -> None:
        raise ApiError(UNIMPLEMENTED, "pipeline upload is not modelled by the KFP stand-in")


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
            status, answer = standin.handle(
                self.command, self.path, body, self.headers.get("Authorization")
            )
            if isinstance(answer, str):
                payload, content_type = answer.encode(), "text/html; charset=utf-8"
            else:
                payload, content_type = json.dumps(answer).encode(), "application/json"
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
