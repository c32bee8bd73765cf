"""The KFP stand-in answers as KFP 2.17.0's API server does (sources named in standins.kfp_wire)."""

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driftloop.kfp.cron import kfp_cron
from standins import kfp_wire
from standins.kfp_api import KfpApiStandIn, running

SPEC = {"pipelineInfo": {"name": "p"}, "root": {"dag": {"tasks": {}}}}
SPEC_WITH_INPUTS = {
    "pipelineInfo": {"name": "p"},
    "root": {
        "dag": {"tasks": {}},
        "inputDefinitions": {
            "parameters": {
                "store_uri": {"parameterType": "STRING"},
                "rows": {"parameterType": "NUMBER_INTEGER", "defaultValue": 10},
            }
        },
    },
}


@pytest.fixture(autouse=True)
def _no_kfp_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kfp.client.client as kfp_client

    monkeypatch.setattr(kfp_client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "ctx.json"))


@pytest.fixture
def api() -> Iterator[KfpApiStandIn]:
    yield from running(seed=5)


def _raw(
    api: KfpApiStandIn, method: str, path: str, body: bytes | dict[str, Any] | None = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(api.url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read().decode()
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, text


def _filter(key: str, value: Any, *, operation: Any = 1, value_key: str = "string_value") -> str:
    """A filter query value URL-encoded once for the server's own second unescape."""
    text = json.dumps({"predicates": [{"operation": operation, "key": key, value_key: value}]})
    return urllib.parse.quote(urllib.parse.quote(text, safe=""), safe="")


def _recurring(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "display_name": name,
        "pipeline_spec": SPEC,
        "max_concurrency": "1",
        "mode": "ENABLE",
        "trigger": {"cron_schedule": {"cron": "0 0 2 * * *"}},
        **extra,
    }


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "message", "detail"),
    [
        # the gateway's own decoding errors carry no detail
        ("POST", "/apis/v2beta1/experiments", b'{"display_name": "x", "bogus": 1}', 400, 3,
         'proto: unknown field "bogus"', None),
        ("POST", "/apis/v2beta1/experiments", b'{"display_name": 5}', 400, 3,
         "invalid value for string field display_name", None),
        ("POST", "/apis/v2beta1/experiments", b"{not json", 400, 3, "syntax error", None),
        # toModelExperiment: an empty name is an internal error
        ("POST", "/apis/v2beta1/experiments", b"", 500, 13,
         "[ExperimentServer]: Failed to create a experiment due to conversion error: "
         "InternalServerError: Failed to convert API experiment to model experiment: "
         "Invalid input error: Experiment must have a non-empty name", "Internal Server Error"),
        ("POST", "/apis/v2beta1/experiments", b'{"displayName": "Default"}', 409, 6,
         "Failed to create a experiment: Already exist error: Failed to create a new experiment. "
         "The name Default already exists. Please specify a new name",
         "Failed to create a new experiment. The name Default already exists. Please specify a "
         "new name"),
        ("GET", "/apis/v2beta1/experiments/nope", None, 404, 5,
         "Failed to fetch experiment: ResourceNotFoundError: Experiment nope not found",
         "Experiment nope not found"),
        ("GET", "/apis/v2beta1/nothing-here", None, 404, 5, "Not Found", None),
        ("PATCH", "/apis/v2beta1/runs", b"{}", 501, 12, "Method Not Allowed", None),
        ("POST", "/apis/v2beta1/runs", b'{"display_name": "r"}', 500, 13,
         "Failed to create a new run: InternalServerError: Failed to create a run due to error "
         "fetching manifest: Invalid input error: Failed to fetch a template with an empty "
         "pipeline spec manifest", "Internal Server Error"),
        ("POST", "/apis/v2beta1/runs", b'{"display_name": "r", "pipeline_spec": {"root": {}}}',
         500, 13, "unknown template format: pipeline spec is invalid", "Internal Server Error"),
        ("POST", "/apis/v2beta1/recurringruns",
         json.dumps(_recurring("r", max_concurrency="11")).encode(), 400, 3,
         "Failed to create a recurring run due to conversion error: Invalid input error: Max "
         "concurrency of a recurring run must be at least 1 and at most 10. Received 11",
         "Max concurrency of a recurring run must be at least 1 and at most 10. Received 11"),
        ("POST", "/apis/v2beta1/recurringruns",
         json.dumps(_recurring("r", trigger={"cronSchedule": {"cron": "* * *"}})).encode(),
         400, 3, "Error: Expected 5 to 6 fields, found 3: * * *",
         "Schedule cron is not a supported format(https://godoc.org/github.com/robfig/cron). "
         "Error: Expected 5 to 6 fields, found 3: * * *"),
        ("POST", "/apis/v2beta1/recurringruns",
         json.dumps(_recurring("r", trigger={"cron_schedule": {"cron": "0 61 * * * *"}})).encode(),
         400, 3, "Error: End of range (61) above maximum (59): 61",
         "Schedule cron is not a supported format(https://godoc.org/github.com/robfig/cron). "
         "Error: End of range (61) above maximum (59): 61"),
        ("POST", "/apis/v2beta1/recurringruns",
         json.dumps({k: v for k, v in _recurring("r").items() if k != "pipeline_spec"}).encode(),
         500, 13, "Internal error: Cannot create a job with an empty pipeline ID", None),
        ("GET", f"/apis/v2beta1/runs?filter={_filter('color', 'x')}", None, 400, 3,
         'Failed to create list options: Invalid input error: no support for filtering on '
         'unrecognized field "color"', 'no support for filtering on unrecognized field "color"'),
        ("DELETE", "/apis/v2beta1/recurringruns/nope", None, 404, 5,
         "Failed to delete a recurring run: Failed to delete recurring run nope. Check if "
         "exists: ResourceNotFoundError: Job nope not found", "Job nope not found"),
        ("POST", "/apis/v2beta1/recurringruns/nope:disable", None, 404, 5,
         "Failed to disable a recurring run: Failed to change recurring run's mode to "
         "enable:false. Check if recurring run nope exists: ResourceNotFoundError: Job nope not "
         "found", "Job nope not found"),
        ("GET", "/apis/v2beta1/runs/nope", None, 404, 5,
         "Failed to get a run: Failed to fetch run nope: ResourceNotFoundError: Run nope not found",
         "Run nope not found"),
        ("POST", "/apis/v2beta1/runs/nope:retry", None, 501, 12, "not modelled", None),
    ],
)  # fmt: skip
def test_standin_answers_like_the_api_server(
    api: KfpApiStandIn,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
    code: int,
    message: str,
    detail: str | None,
) -> None:
    got_status, answer = _raw(api, method, path, body)

    assert got_status == status
    assert answer["code"] == code and message in answer["message"]
    if detail is None:  # grpc-gateway's own errors, and GoError's detail is its message
        assert "details" not in answer or answer["details"][0]["code"] == 2
    else:
        assert answer["details"] == [
            {"@type": "type.googleapis.com/google.rpc.Status", "code": code, "message": detail}
        ]
    assert api.requests[-1].status == status


def test_an_empty_recurring_run_name_is_a_500_before_any_other_check(api: KfpApiStandIn) -> None:
    """toModelJob wraps "name cannot be empty" in an internal error, before max_concurrency."""
    body = _recurring("", max_concurrency="0")

    status, answer = _raw(api, "POST", "/apis/v2beta1/recurringruns", body)

    assert status == 500
    assert answer == {
        "code": 13,
        "message": "Failed to create a recurring run due to conversion error: "
        "InternalServerError: Failed to convert a API recurring run to its internal "
        "representation: Invalid input error: Recurring run's name cannot be empty",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.Status",
                "code": 13,
                "message": "Internal Server Error",
            }
        ],
    }
    assert api.recurring_runs == {}


def test_an_empty_run_name_is_a_500_too(api: KfpApiStandIn) -> None:
    status, answer = _raw(api, "POST", "/apis/v2beta1/runs", {"pipeline_spec": SPEC})

    assert status == 500
    assert answer["message"].endswith("Invalid input error: Run name cannot be empty")
    assert answer["details"][0]["message"] == "Internal Server Error"


def test_legacy_errors_carry_the_error_key() -> None:
    with KfpApiStandIn(error_style="gateway-v1") as api:
        status, answer = _raw(api, "GET", "/apis/v2beta1/experiments/nope")

    assert status == 404
    assert answer["error"] == answer["message"]
    assert answer["details"][0]["message"] == "Experiment nope not found"


def test_paths_outside_the_gateway(api: KfpApiStandIn) -> None:
    for method in ("GET", "POST"):  # gorilla/mux serves healthz for any method
        status, health = _raw(
            api, method, "/apis/v2beta1/healthz", b"" if method == "POST" else None
        )
        assert status == 200 and health["tag_name"] == "2.17.0"
    status, text = _raw(api, "GET", "/metrics-nope")
    assert (status, text) == (404, "404 page not found\n")


# ----------------------------------------------------------------------------- enums


@pytest.mark.parametrize(
    ("names", "model"),
    [
        (kfp_wire.RUNTIME_STATES, "V2beta1RuntimeState"),
        (kfp_wire.STORAGE_STATES, "V2beta1RunStorageState"),
        (kfp_wire.STORAGE_STATES, "V2beta1ExperimentStorageState"),
        (kfp_wire.MODES, "RecurringRunMode"),
        (kfp_wire.STATUSES, "V2beta1RecurringRunStatus"),
        (kfp_wire.PROPAGATION_POLICIES, "V2beta1DeletePropagationPolicy"),
        (kfp_wire.FILTER_OPERATIONS, "V2beta1PredicateOperation"),
    ],
)
def test_enum_names_are_the_generated_clients(names: dict[str, int], model: str) -> None:
    """kfp-server-api 2.17 is generated from the same protos: zero values are *_UNSPECIFIED."""
    import kfp_server_api

    assert list(names) == getattr(kfp_server_api, model).allowable_values


def test_zero_enum_names_decode_and_are_left_out_when_encoded(api: KfpApiStandIn) -> None:
    body = {
        "display_name": "r",
        "pipeline_spec": SPEC,
        "state": "RUNTIME_STATE_UNSPECIFIED",
        "storage_state": "STORAGE_STATE_UNSPECIFIED",
    }
    status, run = _raw(api, "POST", "/apis/v2beta1/runs", body)
    assert status == 200 and run["state"] == "PENDING" and run["storage_state"] == "AVAILABLE"

    status, answer = _raw(
        api, "POST", "/apis/v2beta1/runs", {**body, "state": "RUNTIMESTATE_UNSPECIFIED"}
    )
    assert status == 400 and "invalid value for enum field state" in answer["message"]

    status, rr = _raw(
        api, "POST", "/apis/v2beta1/recurringruns", _recurring("r", mode="MODE_UNSPECIFIED")
    )
    assert status == 200 and (rr["mode"], rr["status"]) == ("DISABLE", "DISABLED")


def test_an_unspecified_filter_operation_is_refused(api: KfpApiStandIn) -> None:
    path = "/apis/v2beta1/runs?filter="
    status, answer = _raw(
        api, "GET", path + _filter("name", "x", operation="OPERATION_UNSPECIFIED")
    )
    assert status == 400
    assert answer["message"] == (
        "Failed to create list options: UnknownApiVersionError: Error using "
        "Filter.Predicate.Operation with go_client.Predicate_Operation"
    )

    status, answer = _raw(api, "GET", path + _filter("name", "x", operation="UNSPECIFIED"))
    assert (
        status == 400
        and 'invalid value for enum field operation: "UNSPECIFIED"' in answer["message"]
    )


# ----------------------------------------------------------------------------- filters


@pytest.mark.parametrize("key", ["experiment_id", "namespace", "status", "mode"])
def test_recurring_runs_do_not_filter_on_what_the_job_model_lacks(
    api: KfpApiStandIn, key: str
) -> None:
    status, answer = _raw(api, "GET", f"/apis/v2beta1/recurringruns?filter={_filter(key, 'x')}")

    assert status == 400
    assert answer["message"] == (
        "Failed to list recurring runs due to error parsing the listing options: Invalid input "
        f'error: no support for filtering on unrecognized field "{key}"'
    )


@pytest.mark.parametrize("key", ["id", "recurring_run_id", "name", "display_name", "description"])
def test_recurring_runs_filter_on_the_job_models_keys(api: KfpApiStandIn, key: str) -> None:
    _, created = _raw(api, "POST", "/apis/v2beta1/recurringruns", _recurring("nightly"))
    value = {"id": created["recurring_run_id"], "recurring_run_id": created["recurring_run_id"],
             "description": ""}.get(key, "nightly")  # fmt: skip

    status, listed = _raw(api, "GET", f"/apis/v2beta1/recurringruns?filter={_filter(key, value)}")

    assert status == 200
    assert [r["recurring_run_id"] for r in listed["recurringRuns"]] == [created["recurring_run_id"]]


def test_filter_is_unescaped_a_second_time(api: KfpApiStandIn) -> None:
    """list_request_util.go parseAPIFilter: url.QueryUnescape after the gateway's decoding."""
    import kfp_server_api

    for name in ("a+b", "a b"):
        _raw(api, "POST", "/apis/v2beta1/recurringruns", _recurring(name))
    generated = kfp_server_api.RecurringRunServiceApi(
        kfp_server_api.ApiClient(kfp_server_api.Configuration(host=api.url))
    )
    plain = json.dumps({"predicates": [{"operation": 1, "key": "name", "stringValue": "a+b"}]})

    as_sent = generated.recurring_run_service_list_recurring_runs(filter=plain)
    encoded = generated.recurring_run_service_list_recurring_runs(
        filter=urllib.parse.quote(plain, safe="")
    )

    assert [r.display_name for r in as_sent.recurring_runs] == ["a b"]  # "+" became a space
    assert [r.display_name for r in encoded.recurring_runs] == ["a+b"]
    with pytest.raises(kfp_server_api.ApiException) as info:
        generated.recurring_run_service_list_recurring_runs(filter=plain.replace("+", "%"))
    assert info.value.status == 400
    assert json.loads(info.value.body)["message"].endswith('invalid URL escape "%b\\""')


def test_string_filters_compare_like_mysql(api: KfpApiStandIn) -> None:
    """utf8_general_ci: case-insensitive, trailing spaces ignored; IS_SUBSTRING is LIKE."""
    for name in ("Nightly", "nightly-canary", "weekly"):
        _raw(api, "POST", "/apis/v2beta1/recurringruns", _recurring(name))

    def names(key: str, value: Any, operation: Any) -> list[str]:
        query = _filter(key, value, operation=operation)
        _, listed = _raw(api, "GET", f"/apis/v2beta1/recurringruns?filter={query}")
        return sorted(r["display_name"] for r in listed.get("recurringRuns", []))

    assert names("display_name", "nightly ", "EQUALS") == ["Nightly"]
    assert names("display_name", "NIGHTLY", "IS_SUBSTRING") == ["Nightly", "nightly-canary"]
    assert names("display_name", "n_ghtly%canary", "IS_SUBSTRING") == ["nightly-canary"]
    query = _filter(
        "display_name", {"values": ["WEEKLY", "x"]}, operation="IN", value_key="string_values"
    )
    _, listed = _raw(api, "GET", f"/apis/v2beta1/recurringruns?filter={query}")
    assert [r["display_name"] for r in listed["recurringRuns"]] == ["weekly"]


def test_filter_predicates_are_checked_like_filter_go(api: KfpApiStandIn) -> None:
    cases = {
        _filter("name", "x", operation="IN"): "cannot use IN operator with scalar type string",
        _filter("name", {"values": ["x"]}, operation="EQUALS", value_key="string_values"):
            "cannot use scalar operator EQUALS on array type []string",
        _filter("name", 5, operation="IS_SUBSTRING", value_key="int_value"):
            "cannot use non string value type string with operator 5",
        _filter("", "x"): "Predicate key cannot be empty for operation EQUALS and value x",
        _filter("name", "x", value_key="bogus"): 'proto: unknown field "bogus"',
    }  # fmt: skip
    for query, fragment in cases.items():
        status, answer = _raw(api, "GET", f"/apis/v2beta1/experiments?filter={query}")
        assert status == 400, fragment
        assert fragment in answer["message"]


def test_time_filters_take_timestamps_and_seconds(api: KfpApiStandIn) -> None:
    _, older = _raw(api, "POST", "/apis/v2beta1/experiments", {"display_name": "older"})
    _, newer = _raw(api, "POST", "/apis/v2beta1/experiments", {"display_name": "newer"})
    query = _filter(
        "created_at",
        newer["created_at"],
        operation="GREATER_THAN_EQUALS",
        value_key="timestamp_value",
    )
    _, listed = _raw(api, "GET", f"/apis/v2beta1/experiments?filter={query}")
    assert [e["display_name"] for e in listed["experiments"]] == ["newer"]

    seconds = kfp_wire._epoch(older["created_at"])
    query = _filter("created_at", seconds, operation="LESS_THAN_EQUALS", value_key="long_value")
    _, listed = _raw(api, "GET", f"/apis/v2beta1/experiments?filter={query}")
    assert {e["display_name"] for e in listed["experiments"]} == {"Default", "older"}


def test_a_run_filter_the_standin_does_not_model_is_a_501(api: KfpApiStandIn) -> None:
    status, answer = _raw(api, "GET", f"/apis/v2beta1/runs?filter={_filter('status', 'x')}")
    assert status == 501 and "does not model" in answer["message"]


# ----------------------------------------------------------------------------- query and paging


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("page_size=abc",
         'parsing field "page_size": strconv.ParseInt: parsing "abc": invalid syntax'),
        ("page_size=99999999999", 'parsing field "page_size": strconv.ParseInt: parsing '
         '"99999999999": value out of range'),
        ("filter=%zz", 'invalid URL escape "%zz"'),
        ("filter=a&filter=b", 'too many values for field "filter": a, b'),
        ("sort_by=name;x", "invalid semicolon separator in query"),
    ],
)  # fmt: skip
def test_query_errors_come_from_the_gateway(api: KfpApiStandIn, query: str, message: str) -> None:
    status, answer = _raw(api, "GET", f"/apis/v2beta1/runs?{query}")

    assert status == 400
    assert answer == {"code": 3, "message": message}  # no detail: not a KFP error


def test_unknown_query_parameters_are_ignored(api: KfpApiStandIn) -> None:
    status, _ = _raw(api, "GET", "/apis/v2beta1/runs?color=blue&pageSize=5")
    assert status == 200


@pytest.mark.parametrize(
    ("sort_by", "status", "fragment"),
    [
        ("Display_Name DESC", 200, ""),
        ("display_name  asc", 200, ""),
        ("display_name down", 400, "Received invalid sort by format"),
        ("color", 400, 'Invalid sorting field: "color" on listable type Job'),
        ("namespace", 400, 'Invalid sorting field: "namespace" on listable type Job'),
    ],
)
def test_sort_by_is_parsed_like_list_go(
    api: KfpApiStandIn, sort_by: str, status: int, fragment: str
) -> None:
    for name in ("b", "a", "c"):
        _raw(api, "POST", "/apis/v2beta1/recurringruns", _recurring(name))

    got, answer = _raw(
        api, "GET", f"/apis/v2beta1/recurringruns?sort_by={urllib.parse.quote(sort_by)}"
    )

    assert got == status
    if status == 200:
        names = [r["display_name"] for r in answer["recurringRuns"]]
        assert names == (["c", "b", "a"] if "desc" in sort_by.lower() else ["a", "b", "c"])
    else:
        assert fragment in answer["message"]


def test_pages_keep_the_filter_and_refuse_another_one(api: KfpApiStandIn) -> None:
    for i in range(5):
        _raw(api, "POST", "/apis/v2beta1/recurringruns", _recurring("same" if i % 2 else "other"))
    _raw(api, "POST", "/apis/v2beta1/recurringruns", _recurring("same"))
    query = f"filter={_filter('name', 'same')}&page_size=2"

    _, first = _raw(api, "GET", f"/apis/v2beta1/recurringruns?{query}")
    token = urllib.parse.quote(first["next_page_token"], safe="")
    _, rest = _raw(api, "GET", f"/apis/v2beta1/recurringruns?page_token={token}&page_size=2")
    status, refused = _raw(
        api, "GET", f"/apis/v2beta1/recurringruns?page_token={token}&filter={_filter('name', 'x')}"
    )

    assert first["total_size"] == 3 and len(first["recurringRuns"]) == 2
    assert [r["display_name"] for r in rest["recurringRuns"]] == ["same"]  # the token's filter
    assert "next_page_token" not in rest
    assert status == 400 and "page token does not match" in refused["message"]


def test_single_user_lists_ignore_the_namespace(api: KfpApiStandIn) -> None:
    _, rr = _raw(api, "POST", "/apis/v2beta1/recurringruns", _recurring("n"))

    _, listed = _raw(api, "GET", "/apis/v2beta1/recurringruns?namespace=anything")

    assert rr["namespace"] == "kubeflow"  # the ScheduledWorkflow's, i.e. the server's own
    assert [r["recurring_run_id"] for r in listed["recurringRuns"]] == [rr["recurring_run_id"]]


def test_multi_user_lists_need_a_namespace() -> None:
    with KfpApiStandIn(multi_user=True) as api:
        status, answer = _raw(api, "GET", "/apis/v2beta1/runs")
        assert status == 400 and answer["message"] == (
            "Failed to list runs: Failed to list runs due to authorization error. Check if you "
            "have permission to access namespace : Invalid input error: A run cannot have an "
            "empty namespace in multi-user mode"
        )
        status, answer = _raw(api, "GET", "/apis/v2beta1/recurringruns")
        assert status == 400 and answer["message"].endswith(
            "a recurring run cannot have an empty namespace in multi-user mode"
        )


# ----------------------------------------------------------------------------- bodies


def test_run_parameters_are_checked_against_the_spec(api: KfpApiStandIn) -> None:
    """v2_template.go validatePipelineJobInputs."""

    def create(parameters: dict[str, Any]) -> tuple[int, Any]:
        body = {"display_name": "r", "pipeline_spec": SPEC_WITH_INPUTS,
                "runtime_config": {"parameters": parameters}}  # fmt: skip
        return _raw(api, "POST", "/apis/v2beta1/runs", body)

    assert create({"store_uri": "gs://b"})[0] == 200
    status, answer = create({"store_uri": "gs://b", "typo": 1})
    assert status == 400 and answer["message"] == (
        "Failed to create a new run: Failed to generate the ExecutionSpec: invalid pipeline job "
        "inputs: Invalid input error: parameter(s) provided are not required by pipeline: typo"
    )
    status, answer = create({})
    assert status == 400 and answer["details"][0]["message"] == (
        "parameter store_uri is not optional, yet has neither default value nor user provided value"
    )
    status, answer = create({"store_uri": 5})
    assert status == 400 and answer["details"][0]["message"] == (
        "input parameter store_uri requires type string, but the input parameter is not of "
        "string value type"
    )
    assert create({"store_uri": "gs://b", "rows": 2.5})[0] == 200  # any number passes


def test_recurring_run_parameters_are_checked_too(api: KfpApiStandIn) -> None:
    body = _recurring("n", pipeline_spec=SPEC_WITH_INPUTS, runtime_config={"parameters": {}})

    status, answer = _raw(api, "POST", "/apis/v2beta1/recurringruns", body)

    assert status == 400
    assert answer["message"].startswith(
        "Failed to create a recurring run: Failed to create a recurring run during scheduled "
        "workflow creation: invalid pipeline job inputs: Invalid input error: parameter "
        "store_uri is not optional"
    )


def test_encodes_like_the_server_marshaler(api: KfpApiStandIn) -> None:
    status, created = _raw(
        api,
        "POST",
        "/apis/v2beta1/recurringruns",
        {
            "displayName": "r",
            "pipelineSpec": SPEC,
            "maxConcurrency": 2,
            "noCatchup": False,
            "mode": 1,
            "trigger": {"cron_schedule": {"cron": "0 0 0 * * *"}},
        },
    )
    assert status == 200
    assert created["max_concurrency"] == "2" and created["mode"] == "ENABLE"
    assert "no_catchup" not in created  # false is left out
    assert "runtime_config" not in created  # nil when it holds nothing
    assert created["status"] == "ENABLED" and created["service_account"] == "pipeline-runner"

    status, listed = _raw(api, "GET", "/apis/v2beta1/recurringruns")
    assert status == 200 and set(listed) == {"recurringRuns", "total_size"}

    status, empty = _raw(api, "GET", "/apis/v2beta1/runs")
    assert status == 200 and empty == {}  # empty lists and zero totals are left out

    status, health = _raw(api, "GET", "/apis/v2beta1/healthz")
    assert health["multi_user"] is False and health["pipeline_store"] == "database"


def test_the_default_experiment_cannot_be_deleted(api: KfpApiStandIn) -> None:
    (default,) = api.experiments

    status, answer = _raw(api, "DELETE", f"/apis/v2beta1/experiments/{default}")

    assert status == 409  # BadRequestError is codes.Aborted
    assert answer["details"][0]["message"] == (
        f"Failed to delete experiment {default}. The default experiment cannot be deleted"
    )


def test_archiving_an_experiment_archives_its_runs_and_disables_its_schedules(
    api: KfpApiStandIn,
) -> None:
    _, exp = _raw(api, "POST", "/apis/v2beta1/experiments", {"display_name": "e"})
    eid = exp["experiment_id"]
    _, run = _raw(api, "POST", "/apis/v2beta1/runs",
                  {"display_name": "r", "pipeline_spec": SPEC, "experiment_id": eid})  # fmt: skip
    _, rr = _raw(api, "POST", "/apis/v2beta1/recurringruns", _recurring("n", experiment_id=eid))

    assert _raw(api, "POST", f"/apis/v2beta1/experiments/{eid}:archive")[0] == 200
    status, refused = _raw(api, "POST", f"/apis/v2beta1/runs/{run['run_id']}:unarchive")

    assert api.runs[run["run_id"]]["storage_state"] == "ARCHIVED"
    assert api.recurring_runs[rr["recurring_run_id"]]["status"] == "DISABLED"
    assert status == 400 and refused["code"] == 9  # FailedPrecondition
    assert _raw(api, "POST", "/apis/v2beta1/experiments/nope:archive")[0] == 200  # no row check


# ----------------------------------------------------------------------------- cron


@pytest.mark.parametrize(
    "expression",
    ["0 0 * * *", "*/15 9-17 * * MON-FRI", "0 30 2 1,15 * ?", "5 4 * * sun",
     "0 0 12 1 JAN-JUN/2 *", "@daily", "@hourly", "59 23 31 12 6"],
)  # fmt: skip
def test_every_cron_kfp_cron_writes_parses_with_robfig_cron_v1(expression: str) -> None:
    kfp_wire.parse_cron(kfp_cron(expression))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "Empty spec string"),
        ("0 0 * * * * *", "Expected 5 to 6 fields, found 7: 0 0 * * * * *"),
        ("0 0 24 * * *", "End of range (24) above maximum (23): 24"),
        ("0 0 0 0 * *", "Beginning of range (0) below minimum (1): 0"),
        ("0 */0 * * * *", "Step of range should be a positive number: */0"),
        ("0 5-1 * * * *", "Beginning of range (5) beyond end of range (1): 5-1"),
        ("0 0 0 * * 7", "End of range (7) above maximum (6): 7"),
        ("0 x * * * *", 'Failed to parse int from x: strconv.Atoi: parsing "x": invalid syntax'),
        ("@reboot", "Unrecognized descriptor: @reboot"),
    ],
)
def test_robfig_cron_v1_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        kfp_wire.parse_cron(spec)
    assert str(info.value) == message


# ----------------------------------------------------------------------------- lifecycle


def test_stops_and_frees_its_port() -> None:
    api = KfpApiStandIn().start()
    url = api.url
    _raw(api, "GET", "/apis/v2beta1/healthz")
    api.stop()
    api.stop()  # idempotent

    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/apis/v2beta1/healthz", timeout=2)
