"""What the KFP 2.17.0 API server does on the wire, for the KFP stand-in (:mod:`standins.kfp_api`).

Each piece names the upstream file it was read from (kubeflow/pipelines tag ``2.17.0``,
grpc-ecosystem/grpc-gateway ``v2.28.0`` as pinned by KFP's ``go.mod``, robfig/cron ``v1.2.0``):

* :class:`ApiError` and its factories: ``backend/src/common/util/error.go`` (``UserError``: the
  gRPC status message is the *internal* error chain, each ``util.Wrap`` prepending
  ``"<text>: "``; the detail is a ``google.rpc.Status`` with the *external* message; errors that
  are not ``UserError`` become code 13 with ``"Internal error: %+v"`` and a detail of code 2,
  see ``ToGRPCError``) and grpc-gateway's ``runtime/errors.go`` (HTTP status from the gRPC code,
  the body is the ``google.rpc.Status`` itself encoded by KFP's marshaler, so empty ``details``
  are left out);
* :func:`parse_query` / :func:`query_fields`: Go's ``net/url.ParseQuery`` behind the generated
  ``req.ParseForm()`` in ``backend/api/v2beta1/go_client/*.pb.gw.go`` and grpc-gateway's
  ``runtime/query.go`` (``DefaultQueryParser``: proto or JSON field names, unknown names
  ignored, ``too many values``, ``parsing field "x": ...``);
* :func:`decode_message` / :func:`encode_message`: protojson with
  ``backend/src/apiserver/common/utils.go`` ``CustomMarshaler`` (``UseProtoNames: true``,
  ``EmitUnpopulated: false``, ``DiscardUnknown: false``) over the messages of
  ``backend/api/v2beta1/{experiment,run,recurring_run,runtime_config}.proto``;
* :func:`parse_filter`: ``backend/src/apiserver/server/list_request_util.go`` ``parseAPIFilter``
  (the filter is ``url.QueryUnescape``-d a *second* time after the gateway's query decoding,
  then the camelCase value keys are rewritten, then ``protojson.Unmarshal``) and
  ``backend/src/apiserver/filter/filter.go`` (``toPredicate``, ``checkPredicate``,
  ``ReplaceKeys`` via ``backend/src/apiserver/list/list.go`` ``NewOptions``);
* :data:`FILTER_KEYS`: the ``APIToModelFieldMap`` of ``backend/src/apiserver/model/run.go``,
  ``job.go`` (recurring runs: no ``experiment_id``, no ``namespace``) and ``experiment.go``;
* :func:`parse_cron`: robfig/cron v1.2.0 ``parser.go`` ``Parse`` (seconds first, day-of-week
  optional, descriptors), which ``backend/src/apiserver/server/api_converter.go``
  ``toModelJob`` calls.

Not modelled: the line:column position protojson puts in its syntax errors, the stack traces
``%+v`` prints for errors that are not ``UserError`` (a ``[stack]`` marker stands in), and
MySQL collation beyond ``utf8_general_ci``'s case- and trailing-space-insensitive comparison.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# ----------------------------------------------------------------------------- gRPC codes

OK, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, UNIMPLEMENTED, INTERNAL = 0, 3, 5, 6, 12, 13
UNKNOWN, PERMISSION_DENIED, ABORTED, FAILED_PRECONDITION = 2, 7, 10, 9

#: grpc-gateway v2.28.0 ``runtime/errors.go`` ``HTTPStatusFromCode``.
HTTP_STATUS = {
    0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
    9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401,
}  # fmt: skip


def go_quote(text: str) -> str:
    """Go's ``%q`` of a string (``strconv.Quote``), close enough for printable text."""
    return json.dumps(text, ensure_ascii=False)


class ApiError(Exception):
    """An error answer, built the way KFP's ``util.UserError`` builds its gRPC status.

    Args:
        code: The gRPC code.
        message: The status message: for a ``UserError`` its internal error chain.
        external: The user-facing message carried in the ``google.rpc.Status`` detail.
        detail_code: The detail's code (the status code unless said otherwise).
        details: False for errors of the gateway itself (routing, body and query decoding),
            which carry no detail.
    """

    def __init__(
        self,
        code: int,
        message: str,
        *,
        external: str | None = None,
        detail_code: int | None = None,
        details: bool = True,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.external = message if external is None else external
        self.detail_code = code if detail_code is None else detail_code
        self.details = details

    def wrap(self, text: str) -> ApiError:
        """``util.Wrap(err, text)``: prepend to the internal chain, keep code and external."""
        return ApiError(
            self.code,
            f"{text}: {self.message}",
            external=self.external,
            detail_code=self.detail_code,
            details=self.details,
        )

    def body(self, *, legacy: bool = False) -> dict[str, Any]:
        """The JSON answer: ``google.rpc.Status`` with unpopulated fields left out.

        With ``legacy`` the ``"error"`` key of grpc-gateway v1 (KFP before 2.14) is added.
        """
        out: dict[str, Any] = {}
        if legacy:
            out["error"] = self.message
        if self.code:
            out["code"] = self.code
        if self.message:
            out["message"] = self.message
        if self.details:
            detail: dict[str, Any] = {"@type": "type.googleapis.com/google.rpc.Status"}
            if self.detail_code:
                detail["code"] = self.detail_code
            if self.external:
                detail["message"] = self.external
            out["details"] = [detail]
        return out


class GoError(ApiError):
    """A plain Go error (not a ``UserError``): ``ToGRPCError`` makes it code 13.

    The status message is ``"Internal error: %+v"``; ``%+v`` of a ``pkg/errors`` chain prints
    the innermost message first, each wrap's text on its own line after a stack trace.
    """

    def __init__(self, chain: str) -> None:
        self.chain = chain
        text = f"Internal error: {chain}\n[stack]"
        super().__init__(INTERNAL, text, external=text, detail_code=UNKNOWN)

    def wrap(self, text: str) -> ApiError:
        return GoError(f"{self.chain}\n[stack]\n{text}")


def invalid_input(message: str) -> ApiError:
    """``util.NewInvalidInputError``."""
    return ApiError(INVALID_ARGUMENT, f"Invalid input error: {message}", external=message)


def invalid_input_with_details(cause: str, external: str) -> ApiError:
    """``util.NewInvalidInputErrorWithDetails``."""
    return ApiError(INVALID_ARGUMENT, f"InvalidInputError: {external}: {cause}", external=external)


def internal_server(cause: ApiError | str, message: str) -> ApiError:
    """``util.NewInternalServerError``: the user sees only ``Internal Server Error``."""
    inner = cause.message if isinstance(cause, ApiError) else cause
    return ApiError(
        INTERNAL, f"InternalServerError: {message}: {inner}", external="Internal Server Error"
    )


def not_found(kind: str, ident: str) -> ApiError:
    """``util.NewResourceNotFoundError`` (``kind`` is the store's: Experiment, Run, Job)."""
    external = f"{kind} {ident} not found"
    return ApiError(NOT_FOUND, f"ResourceNotFoundError: {external}", external=external)


def already_exists(message: str) -> ApiError:
    """``util.NewAlreadyExistError``."""
    return ApiError(ALREADY_EXISTS, f"Already exist error: {message}", external=message)


def bad_request(cause: ApiError, message: str) -> ApiError:
    """``util.NewBadRequestError``: code Aborted, hence HTTP 409."""
    return ApiError(ABORTED, f"BadRequestError: {message}: {cause.message}", external=message)


def failed_precondition(cause: str, message: str) -> ApiError:
    """``util.NewFailedPreconditionError``."""
    return ApiError(
        FAILED_PRECONDITION, f"FailedPreconditionError: {message}: {cause}", external=message
    )


def unknown_api_version(what: str, type_name: str) -> ApiError:
    """``util.NewUnknownApiVersionError`` (``type_name`` is Go's ``%T``)."""
    external = f"Error using {what} with {type_name}"
    return ApiError(INVALID_ARGUMENT, f"UnknownApiVersionError: {external}", external=external)


def gateway_error(code: int, message: str) -> ApiError:
    """An error grpc-gateway answers itself (``status.Errorf``): no detail."""
    return ApiError(code, message, details=False)


def proto_error(message: str) -> ApiError:
    """A protojson decoding error of a request body, as the gateway returns it."""
    return gateway_error(INVALID_ARGUMENT, f"proto: {message}")


# ----------------------------------------------------------------------------- query strings

_HEX = "0123456789abcdefABCDEF"


def query_unescape(text: str) -> str:
    """Go's ``url.QueryUnescape``: ``+`` is a space, ``%XX`` a byte, a bad escape an error.

    Raises:
        ValueError: With Go's message, e.g. ``invalid URL escape "%zz"``.
    """
    out = bytearray()
    i = 0
    raw = text.encode("utf-8", errors="surrogateescape")
    while i < len(raw):
        c = raw[i]
        if c == 0x25:  # %
            pair = raw[i + 1 : i + 3].decode("latin-1")
            if len(pair) < 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                bad = raw[i : i + 3].decode("utf-8", errors="replace")
                raise ValueError(f"invalid URL escape {go_quote(bad)}")
            out.append(int(pair, 16))
            i += 3
            continue
        out.append(0x20 if c == 0x2B else c)
        i += 1
    return out.decode("utf-8", errors="replace")


def parse_query(raw: str) -> tuple[dict[str, list[str]], str | None]:
    """Go's ``url.ParseQuery``: the values, and the first error (``req.ParseForm`` fails on it).

    Since Go 1.17 a ``;`` in a key is an error rather than a separator.
    """
    values: dict[str, list[str]] = {}
    first: str | None = None
    for part in raw.split("&"):
        if not part:
            continue
        if ";" in part:  # Go checks the whole "key=value" piece
            first = first or "invalid semicolon separator in query"
            continue
        key, _, value = part.partition("=")
        try:
            key, value = query_unescape(key), query_unescape(value)
        except ValueError as exc:
            first = first or str(exc)
            continue
        values.setdefault(key, []).append(value)
    return values, first


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


#: Query kinds: "string", "int32", ("enum", {name: number}).
QueryKind = str | tuple[str, dict[str, int]]

_GO_INT_RE = re.compile(r"^[+-]?\d+$")


def query_fields(values: dict[str, list[str]], fields: dict[str, QueryKind]) -> dict[str, Any]:
    """grpc-gateway's ``DefaultQueryParser.Parse`` into the request's non-path fields.

    Raises:
        ApiError: 400 with the gateway's message (no detail).
    """
    by_json = {_camel(n): n for n in fields}
    out: dict[str, Any] = {}
    for key, given in values.items():
        name = key if key in fields else by_json.get(key)
        if name is None:  # "field not found": logged and ignored
            continue
        if len(given) > 1:
            raise gateway_error(
                INVALID_ARGUMENT, f"too many values for field {go_quote(name)}: {', '.join(given)}"
            )
        out[name] = _query_value(name, fields[name], given[0])
    return out


def _query_value(name: str, kind: QueryKind, value: str) -> Any:
    def fail(reason: str) -> ApiError:
        return gateway_error(INVALID_ARGUMENT, f"parsing field {go_quote(name)}: {reason}")

    if isinstance(kind, tuple):
        names = kind[1]
        if value in names:
            return value
        if _GO_INT_RE.match(value):
            matching = [n for n, number in names.items() if number == int(value)]
            if matching:
                return matching[0]
        raise fail(f"{go_quote(value)} is not a valid value")
    if kind == "int32":
        if not _GO_INT_RE.match(value):
            raise fail(f"strconv.ParseInt: parsing {go_quote(value)}: invalid syntax")
        number = int(value)
        if not -(2**31) <= number < 2**31:
            raise fail(f"strconv.ParseInt: parsing {go_quote(value)}: value out of range")
        return number
    return value


# ----------------------------------------------------------------------------- messages

#: Zero values are ``*_UNSPECIFIED`` (the ``.proto`` files name them so; protojson writes names).
RUNTIME_STATES = {
    "RUNTIME_STATE_UNSPECIFIED": 0, "PENDING": 1, "RUNNING": 2, "SUCCEEDED": 3, "SKIPPED": 4,
    "FAILED": 5, "CANCELING": 6, "CANCELED": 7, "PAUSED": 8,
}  # fmt: skip
FINAL_STATES = frozenset({"SUCCEEDED", "SKIPPED", "FAILED", "CANCELED"})
STORAGE_STATES = {"STORAGE_STATE_UNSPECIFIED": 0, "AVAILABLE": 1, "ARCHIVED": 2}
MODES = {"MODE_UNSPECIFIED": 0, "ENABLE": 1, "DISABLE": 2}
STATUSES = {"STATUS_UNSPECIFIED": 0, "ENABLED": 1, "DISABLED": 3}
PROPAGATION_POLICIES = {
    "DELETE_PROPAGATION_POLICY_UNSPECIFIED": 0, "FOREGROUND": 1, "BACKGROUND": 2, "ORPHAN": 3,
}  # fmt: skip
FILTER_OPERATIONS = {
    "OPERATION_UNSPECIFIED": 0, "EQUALS": 1, "NOT_EQUALS": 2, "GREATER_THAN": 3,
    "GREATER_THAN_EQUALS": 5, "LESS_THAN": 6, "LESS_THAN_EQUALS": 7, "IN": 8, "IS_SUBSTRING": 9,
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

PACKAGE = "kubeflow.pipelines.backend.api.v2beta1"

_INT_RE = re.compile(r"^-?\d+$")
_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _decode_value(kind: Kind, value: Any, name: str) -> Any:
    shown = json.dumps(value)
    if isinstance(kind, tuple):
        tag, arg = kind
        if tag == "enum":
            if isinstance(value, str) and value in arg:
                return value
            if isinstance(value, int) and not isinstance(value, bool):
                names = [n for n, num in arg.items() if num == value]
                if names:
                    return names[0]
            raise proto_error(f"invalid value for enum field {name}: {shown}")
        if not isinstance(value, dict):
            raise proto_error(f"invalid value for message field {name}: {shown}")
        return decode_message(arg, value)
    if kind == "string" and isinstance(value, str):
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind in ("int64", "int32") and not isinstance(value, bool):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str) and _INT_RE.match(value):
            value = int(value)
        if isinstance(value, int):
            return str(value) if kind == "int64" else value
    if kind == "timestamp":
        if not isinstance(value, str) or not _TS_RE.match(value):
            raise proto_error(f"invalid google.protobuf.Timestamp value {shown}")
        return value
    if kind in ("struct", "map", "object"):
        if not isinstance(value, dict):
            raise proto_error(f"invalid value for {kind} field {name}: {shown}")
        return copy.deepcopy(value)
    if kind == "list" and isinstance(value, list):
        return copy.deepcopy(value)
    raise proto_error(f"invalid value for {kind} field {name}: {shown}")


def decode_message(message: str, data: dict[str, Any]) -> dict[str, Any]:
    """Decode a JSON object into canonical proto-name form, like ``protojson.Unmarshal``."""
    fields = SCHEMA[message]
    by_json = {_camel(n): n for n in fields}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key if key in fields else by_json.get(key)
        if name is None:
            raise proto_error(f"unknown field {json.dumps(key)}")
        if name in out:
            raise proto_error(f"duplicate field {json.dumps(key)}")
        if value is None:  # null leaves a field unset
            continue
        for oneof, members in ONEOFS.get(message, {}).items():
            if name in members and any(m in out for m in members):
                raise proto_error(
                    f"error parsing {json.dumps(key)}, oneof {PACKAGE}.{message}.{oneof} "
                    "is already set"
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
    """Encode like protojson with ``UseProtoNames`` and ``EmitUnpopulated: false``.

    Zero enums (``*_UNSPECIFIED``), empty strings, false, zero numbers and empty lists are
    left out; a set sub-message is written even when empty.
    """
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


def decode_body(text: str) -> dict[str, Any]:
    """The gateway's ``marshaler.NewDecoder(req.Body).Decode``: an empty body is empty."""
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        column = getattr(exc, "pos", 0) + 1
        raise proto_error(f"syntax error (line 1:{column}): invalid value") from None
    if not isinstance(data, dict):
        raise proto_error(f"syntax error (line 1:1): unexpected token {json.dumps(data)[:20]}")
    return data


# ----------------------------------------------------------------------------- filters

#: Per resource: API filter/sort key -> (stored field, column type), from the models'
#: ``APIToModelFieldMap``. Column types: "str", "time" (seconds in SQL, RFC 3339 here),
#: "unmodelled" (a key the server knows but the stand-in keeps no column for).
FILTER_KEYS: dict[str, dict[str, tuple[str, str]]] = {
    # backend/src/apiserver/model/run.go runAPIToModelFieldMap
    "Run": {
        "run_id": ("run_id", "str"), "id": ("run_id", "str"),
        "display_name": ("display_name", "str"), "name": ("display_name", "str"),
        "created_at": ("created_at", "time"), "finished_at": ("finished_at", "time"),
        "description": ("description", "str"), "scheduled_at": ("scheduled_at", "time"),
        "storage_state": ("storage_state", "str"), "status": ("Conditions", "unmodelled"),
        "namespace": ("namespace", "str"), "experiment_id": ("experiment_id", "str"),
        "state": ("state", "str"), "state_history": ("StateHistory", "unmodelled"),
        "runtime_details": ("PipelineRuntimeManifest", "unmodelled"),
        "recurring_run_id": ("recurring_run_id", "str"),
    },
    # backend/src/apiserver/model/job.go jobAPIToModelFieldMap
    "RecurringRun": {
        "id": ("recurring_run_id", "str"), "recurring_run_id": ("recurring_run_id", "str"),
        "name": ("display_name", "str"), "display_name": ("display_name", "str"),
        "created_at": ("created_at", "time"), "updated_at": ("updated_at", "time"),
        "description": ("description", "str"),
    },
    # backend/src/apiserver/model/experiment.go experimentAPIToModelFieldMap
    "Experiment": {
        "id": ("experiment_id", "str"), "experiment_id": ("experiment_id", "str"),
        "name": ("display_name", "str"), "display_name": ("display_name", "str"),
        "created_at": ("created_at", "time"),
        "last_run_created_at": ("last_run_created_at", "time"),
        "description": ("description", "str"), "namespace": ("namespace", "str"),
        "storage_state": ("storage_state", "str"),
    },
}  # fmt: skip

#: The Go type name ``%T`` prints for each predicate value.
_VALUE_TYPES = {
    "int_value": "int32", "long_value": "int64", "string_value": "string",
    "timestamp_value": "int64",  # toValue converts it to Unix seconds
    "int_values": "[]int32", "long_values": "[]int64", "string_values": "[]string",
}  # fmt: skip

#: list_request_util.go transformJSONForBackwardCompatibility (a plain string replacer).
CAMEL_VALUE_KEYS = [
    ('"intValue":', '"int_value":'), ('"longValue":', '"long_value":'),
    ('"stringValue":', '"string_value":'), ('"timestampValue":', '"timestamp_value":'),
    ('"intValues":', '"int_values":'), ('"longValues":', '"long_values":'),
    ('"stringValues":', '"string_values":'),
]  # fmt: skip


@dataclass(frozen=True)
class Predicate:
    """One parsed predicate: operation name, API key, value and its Go type name."""

    operation: str
    key: str
    value: Any
    go_type: str


def _epoch(text: str) -> int:
    return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def _go_value(value: Any) -> str:
    """Go's ``%v`` of a predicate value."""
    if isinstance(value, list):
        return "[" + " ".join(str(v) for v in value) + "]"
    return str(value)


def _decode_predicate(raw: Any) -> tuple[int, str, str | None, Any]:
    """protojson of one ``Predicate``: (operation number, key, value field, value)."""
    if not isinstance(raw, dict):
        raise ValueError(f"proto: invalid value for message field predicates: {json.dumps(raw)}")
    operation, key, value_field, value = 0, "", None, None
    for name, item in raw.items():
        if name == "operation":
            if isinstance(item, str) and item in FILTER_OPERATIONS:
                operation = FILTER_OPERATIONS[item]
            elif isinstance(item, int) and not isinstance(item, bool):
                operation = item  # protojson keeps unknown enum numbers
            elif item is not None:
                raise ValueError(
                    f"proto: invalid value for enum field operation: {json.dumps(item)}"
                )
        elif name == "key":
            if not isinstance(item, str):
                raise ValueError(f"proto: invalid value for string field key: {json.dumps(item)}")
            key = item
        elif name in _VALUE_TYPES:
            if item is None:
                continue
            if value_field is not None:
                raise ValueError(
                    f'proto: error parsing "{name}", oneof {PACKAGE}.Predicate.value is already set'
                )
            value_field, value = name, _decode_predicate_value(name, item)
        else:
            raise ValueError(f"proto: unknown field {json.dumps(name)}")
    return operation, key, value_field, value


def _decode_predicate_value(name: str, item: Any) -> Any:
    def integer(v: Any, bits: int) -> int:
        if isinstance(v, str) and _INT_RE.match(v):
            v = int(v)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if (
            not isinstance(v, int)
            or isinstance(v, bool)
            or not -(2 ** (bits - 1)) <= v < 2 ** (bits - 1)
        ):
            raise ValueError(f"proto: invalid value for int{bits} field {name}: {json.dumps(v)}")
        return v

    if name in ("int_value", "long_value"):
        return integer(item, 32 if name == "int_value" else 64)
    if name == "string_value":
        if not isinstance(item, str):
            raise ValueError(f"proto: invalid value for string field {name}: {json.dumps(item)}")
        return item
    if name == "timestamp_value":
        if not isinstance(item, str) or not _TS_RE.match(item):
            raise ValueError(f"proto: invalid google.protobuf.Timestamp value {json.dumps(item)}")
        return _epoch(item)
    if not isinstance(item, dict) or set(item) - {"values"}:
        raise ValueError(f"proto: invalid value for message field {name}: {json.dumps(item)}")
    values = item.get("values") or []
    if not isinstance(values, list):
        raise ValueError(f"proto: invalid value for list field values: {json.dumps(values)}")
    if name == "string_values":
        if not all(isinstance(v, str) for v in values):
            raise ValueError("proto: invalid value for string field values")
        return list(values)
    return [integer(v, 32 if name == "int_values" else 64) for v in values]


def parse_filter(encoded: str) -> list[Predicate]:
    """``parseAPIFilter`` + ``filter.New``: the gateway-decoded ``filter`` into predicates.

    The text is URL-unescaped once more (``url.QueryUnescape``): a ``+`` becomes a space and a
    ``%`` must start an escape, so a client must URL-encode the JSON it sends.

    Raises:
        ApiError: 400 (``Invalid input error`` or ``UnknownApiVersionError``).
    """
    if encoded == "":
        return []
    try:
        decoded = query_unescape(encoded)
    except ValueError as exc:
        raise invalid_input(
            f"failed to parse valid filter from {go_quote(encoded)}: {exc}"
        ) from None
    for camel, snake in CAMEL_VALUE_KEYS:
        decoded = decoded.replace(camel, snake)
    try:
        try:
            data = json.loads(decoded)
        except ValueError:
            raise ValueError("proto: syntax error: invalid value") from None
        if not isinstance(data, dict):
            raise ValueError("proto: syntax error (line 1:1): unexpected token")
        for name in data:
            if name != "predicates":
                raise ValueError(f"proto: unknown field {json.dumps(name)}")
        raw = data.get("predicates") or []
        if not isinstance(raw, list):
            raise ValueError("proto: invalid value for list field predicates")
        decoded_predicates = [_decode_predicate(p) for p in raw]
    except ValueError as exc:
        raise invalid_input(
            f"failed to parse valid filter from {go_quote(encoded)}: {exc}"
        ) from None
    predicates = []
    names = {v: k for k, v in FILTER_OPERATIONS.items()}
    for number, key, value_field, value in decoded_predicates:
        operation = names.get(number)
        if operation is None or number == 0:  # filter.go toOperation
            raise unknown_api_version("Filter.Predicate.Operation", "go_client.Predicate_Operation")
        if value_field is None:  # filter.go toValue
            raise unknown_api_version("Filter.Predicate.Value", "<nil>")
        if key == "":
            raise invalid_input(
                f"Predicate key cannot be empty for operation {operation} and value "
                f"{_go_value(value)}"
            )
        predicates.append(Predicate(operation, key, value, _VALUE_TYPES[value_field]))
    for p in predicates:  # filter.go checkPredicate
        is_list = p.go_type.startswith("[]")
        if p.operation == "IN" and not is_list:
            raise invalid_input(f"cannot use IN operator with scalar type {p.go_type}")
        if p.operation not in ("IN", "IS_SUBSTRING") and is_list:
            raise invalid_input(
                f"cannot use scalar operator {p.operation} on array type {p.go_type}"
            )
        if p.operation == "IS_SUBSTRING" and p.go_type != "string":
            # upstream passes (operation, value) to "...type %T with operator %v"
            raise invalid_input(
                f"cannot use non string value type string with operator {_go_value(p.value)}"
            )
    return predicates


def check_filter_keys(predicates: list[Predicate], resource: str) -> None:
    """``Filter.ReplaceKeys``: every key must be in the resource's ``APIToModelFieldMap``.

    Raises:
        ApiError: 400 for an unknown key; 501 for a key the stand-in does not model.
    """
    keys = FILTER_KEYS[resource]
    for p in predicates:
        if p.key not in keys:
            raise invalid_input(f"no support for filtering on unrecognized field {go_quote(p.key)}")
        if keys[p.key][1] == "unmodelled":
            raise gateway_error(
                UNIMPLEMENTED, f"the KFP stand-in does not model filtering on {p.key!r}"
            )


def _mysql_text(value: Any) -> str:
    # utf8_general_ci: case-insensitive, trailing spaces ignored (PAD SPACE)
    return str(value).rstrip(" ").casefold()


def _like(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL | re.IGNORECASE)


def matches(obj: dict[str, Any], predicates: list[Predicate], resource: str) -> bool:
    """Whether a stored object passes the SQL ``WHERE`` of ``Filter.AddToSelect`` (MySQL).

    String columns compare case-insensitively (``utf8_general_ci``, the database's default
    collation: ``backend/src/apiserver/client/sql.go`` opens it with ``charset=utf8``);
    ``IS_SUBSTRING`` is ``LIKE '%v%'`` so ``%`` and ``_`` in the value are wildcards.
    """
    keys = FILTER_KEYS[resource]
    for p in predicates:
        stored, column = keys[p.key]
        have: Any = obj.get(stored, "")
        wanted = p.value
        if column == "time":
            have = _epoch(have) if have else 0
            compare: Callable[[Any], Any] = lambda v: v if isinstance(v, int) else str(v)  # noqa: E731
        else:
            compare = _mysql_text
        if p.operation == "IS_SUBSTRING":
            if not _like(f"%{wanted}%").fullmatch(str(have)):
                return False
            continue
        if p.operation == "IN":
            if compare(have) not in {compare(v) for v in wanted}:
                return False
            continue
        a, b = compare(have), compare(wanted)
        if type(a) is not type(b):
            a, b = str(a), str(b)
        ok = {
            "EQUALS": a == b, "NOT_EQUALS": a != b, "GREATER_THAN": a > b,
            "GREATER_THAN_EQUALS": a >= b, "LESS_THAN": a < b, "LESS_THAN_EQUALS": a <= b,
        }[p.operation]  # fmt: skip
        if not ok:
            return False
    return True


# ----------------------------------------------------------------------------- paging


@dataclass(frozen=True)
class ListOptions:
    """``list.Options``: page size, sort and filter, and where the page starts."""

    page_size: int
    sort_field: str
    desc: bool
    predicates: tuple[Predicate, ...]
    start: tuple[Any, str] | None = None  # (sort value, key) of the page's first row

    def token(self, row: tuple[Any, str]) -> str:
        """The next page token: the next row's keys and the sort and filter (``token``)."""
        data = {
            "SortByFieldName": self.sort_field,
            "IsDesc": self.desc,
            "SortByFieldValue": row[0],
            "KeyFieldValue": row[1],
            "Filter": [[p.operation, p.key, p.value, p.go_type] for p in self.predicates],
        }
        return base64.b64encode(json.dumps(data).encode()).decode()

    def same_criteria(self, other: ListOptions) -> bool:
        """``Options.Matches``: same sort and filter (page size may differ)."""
        return (self.sort_field, self.desc, self.predicates) == (
            other.sort_field,
            other.desc,
            other.predicates,
        )


def list_options(
    resource: str, page_token: str, page_size: int, sort_by: str, filter_text: str
) -> ListOptions:
    """``validatedListOptions``: parse and check paging, sort and filter, in upstream order.

    Raises:
        ApiError: 400 for a bad filter, page size, sort or token.
    """

    def fresh() -> ListOptions:
        predicates = parse_filter(filter_text)
        if page_size < 0:  # list.go validatePageSize
            raise invalid_input(f"The page size should be greater than 0. Got {page_size}")
        fields = sort_by.lower().split()
        if len(fields) > 2 or (len(fields) == 2 and fields[1] not in ("desc", "asc")):
            raise invalid_input(
                f"Received invalid sort by format {go_quote(sort_by)}. Supported format: "
                '"field_name", "field_name desc", or "field_name asc"'
            )
        sort_field = "created_at"  # DefaultSortField: CreatedAtInSec for all three
        if fields:
            if fields[0] not in FILTER_KEYS[resource] and not (
                resource == "Run" and fields[0].startswith("metric:")
            ):
                listable = {"RecurringRun": "Job"}.get(resource, resource)
                raise invalid_input(
                    f"Invalid sorting field: {go_quote(fields[0])} on listable type {listable}"
                )
            if (
                fields[0].startswith("metric:")
                or FILTER_KEYS[resource][fields[0]][1] == "unmodelled"
            ):
                raise gateway_error(
                    UNIMPLEMENTED, f"the KFP stand-in does not model sorting on {fields[0]!r}"
                )
            sort_field = fields[0]
        check_filter_keys(predicates, resource)
        return ListOptions(
            _page_size(page_size),
            sort_field,
            len(fields) == 2 and fields[1] == "desc",
            tuple(predicates),
        )

    if not page_token:
        return fresh()
    try:
        data = json.loads(base64.b64decode(page_token.encode(), validate=True))
        start = (data["SortByFieldValue"], str(data["KeyFieldValue"]))
        from_token = ListOptions(
            _page_size(page_size),
            str(data["SortByFieldName"]),
            bool(data["IsDesc"]),
            tuple(Predicate(*p) for p in data["Filter"]),
            start,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise invalid_input_with_details(str(exc), "Invalid page token") from None
    if (sort_by or filter_text) and not from_token.same_criteria(fresh()):
        raise invalid_input(
            "page token does not match the supplied sort by and/or filtering criteria. "
            "Either specify the same criteria or leave the latter empty if page token is "
            "specified"
        )
    return from_token


def _page_size(size: int) -> int:
    if size < 0:
        raise invalid_input(f"The page size should be greater than 0. Got {size}")
    return 20 if size == 0 else min(size, 200)  # list.go defaultPageSize, maxPageSize


def page(
    items: list[dict[str, Any]], options: ListOptions, resource: str, id_field: str
) -> tuple[list[dict[str, Any]], int, str]:
    """Filter, sort (key field as tie-break) and cut one page; return it, the total, the token.

    Pages are keyset pages as in ``list.go`` ``AddSortingToSelect``: the token holds the
    sort value and key of the next page's first row.
    """
    kept = [i for i in items if matches(i, list(options.predicates), resource)]
    stored, column = FILTER_KEYS[resource][options.sort_field]

    def sort_key(item: dict[str, Any]) -> tuple[Any, str]:
        value = item.get(stored, "")
        value = (_epoch(value) if value else 0) if column == "time" else _mysql_text(value)
        return value, item[id_field]

    kept.sort(key=sort_key, reverse=options.desc)
    if options.start is not None:
        start = tuple(options.start)
        kept_after = [
            i for i in kept if (sort_key(i) <= start if options.desc else sort_key(i) >= start)
        ]
    else:
        kept_after = kept
    rows = kept_after[: options.page_size]
    token = ""
    if len(kept_after) > options.page_size:
        token = options.token(sort_key(kept_after[options.page_size]))
    return rows, len(kept), token


# ----------------------------------------------------------------------------- cron

_CRON_BOUNDS = (
    (0, 59, None), (0, 59, None), (0, 23, None), (1, 31, None),
    (1, 12, {m: i for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)}),
    (0, 6, {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}),
)  # fmt: skip
_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def parse_cron(spec: str) -> None:
    """robfig/cron v1.2.0 ``Parse`` (seconds first, day-of-week optional): raise on a bad spec.

    Raises:
        ValueError: With robfig/cron's message.
    """
    if not spec:
        raise ValueError("Empty spec string")
    if spec[0] == "@":
        if spec in _DESCRIPTORS:
            return
        if spec.startswith("@every "):
            if not re.fullmatch(r"([0-9.]+(ns|us|µs|ms|s|m|h))+", spec[len("@every ") :]):
                raise ValueError(f"Failed to parse duration {spec}: time: invalid duration")
            return
        raise ValueError(f"Unrecognized descriptor: {spec}")
    fields = spec.split()
    if not 5 <= len(fields) <= 6:
        raise ValueError(f"Expected 5 to 6 fields, found {len(fields)}: {spec}")
    for text, (low, high, names) in zip(fields, _CRON_BOUNDS, strict=False):
        for expr in (part for part in text.split(",") if part):
            _cron_range(expr, low, high, names)


def _cron_range(expr: str, low: int, high: int, names: dict[str, int] | None) -> None:
    range_and_step = expr.split("/")
    low_and_high = range_and_step[0].split("-")

    def number(text: str) -> int:
        if names and text.lower() in names:
            return names[text.lower()]
        if not _GO_INT_RE.match(text):
            raise ValueError(
                f"Failed to parse int from {text}: strconv.Atoi: parsing {go_quote(text)}: "
                "invalid syntax"
            )
        value = int(text)
        if value < 0:
            raise ValueError(f"Negative number ({value}) not allowed: {text}")
        return value

    if low_and_high[0] in ("*", "?"):
        start, end = low, high
    else:
        start = number(low_and_high[0])
        if len(low_and_high) == 1:
            end = start
        elif len(low_and_high) == 2:
            end = number(low_and_high[1])
        else:
            raise ValueError(f"Too many hyphens: {expr}")
    if len(range_and_step) == 1:
        step = 1
    elif len(range_and_step) == 2:
        if not _GO_INT_RE.match(range_and_step[1]):
            raise ValueError(
                f"Failed to parse int from {range_and_step[1]}: strconv.Atoi: parsing "
                f"{go_quote(range_and_step[1])}: invalid syntax"
            )
        step = int(range_and_step[1])
        if step < 0:
            raise ValueError(f"Negative number ({step}) not allowed: {range_and_step[1]}")
        if len(low_and_high) == 1:
            end = high
    else:
        raise ValueError(f"Too many slashes: {expr}")
    if start < low:
        raise ValueError(f"Beginning of range ({start}) below minimum ({low}): {expr}")
    if end > high:
        raise ValueError(f"End of range ({end}) above maximum ({high}): {expr}")
    if start > end:
        raise ValueError(f"Beginning of range ({start}) beyond end of range ({end}): {expr}")
    if step == 0:
        raise ValueError(f"Step of range should be a positive number: {expr}")
