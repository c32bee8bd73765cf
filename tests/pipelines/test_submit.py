"""Submission and recurring schedules against a local stand-in of the KFP v2beta1 REST API.

No ``from __future__ import annotations`` here: kfp reads the components' annotations.
"""

import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driftloop.errors import ConfigError, DriftloopError
from driftloop.kfp import cluster
from driftloop.kfp.client import ClusterError, make_client
from driftloop.kfp.cron import kfp_cron
from standins.kfp_api import KfpApiStandIn, RecordedRequest, running

REPO = Path(__file__).resolve().parents[2]
CONTINUOUS_TRAINING = REPO / "pipelines" / "continuous_training.yaml"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _no_kfp_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep kfp.Client away from ~/.config/kfp/context.json."""
    import kfp.client.client as kfp_client

    monkeypatch.setattr(kfp_client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "ctx.json"))


@pytest.fixture
def api() -> Iterator[KfpApiStandIn]:
    yield from running(seed=7)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny compiled pipeline with one parameter of each scalar type."""
    from kfp import compiler, dsl

    @dsl.component(base_image="python:3.11-slim")
    def scale(a: int, b: float, s: str, flag: bool) -> float:
        return a * b if flag else b

    @dsl.pipeline(name="tiny-driftloop")
    def tiny(a: int = 1, b: float = 2.5, s: str = "x", flag: bool = False) -> None:
        scale(a=a, b=b, s=s, flag=flag)

    path = tmp_path_factory.mktemp("pkg") / "tiny.yaml"
    compiler.Compiler().compile(tiny, str(path))
    return path


@pytest.fixture(scope="module")
def package_with_required(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kfp import compiler, dsl

    @dsl.component(base_image="python:3.11-slim")
    def echo(store_uri: str) -> str:
        return store_uri

    @dsl.pipeline(name="needs-store")
    def needs_store(store_uri: str) -> None:
        echo(store_uri=store_uri)

    path = tmp_path_factory.mktemp("pkg") / "needs_store.yaml"
    compiler.Compiler().compile(needs_store, str(path))
    return path


def client_for(api: KfpApiStandIn, **kwargs: Any) -> Any:
    client = make_client(api.url, **kwargs)
    api.requests.clear()  # the handshake is tested on its own
    return client


def index_of(api: KfpApiStandIn, method: str, path_regex: str, nth: int = 0) -> int:
    hits = [
        i
        for i, r in enumerate(api.requests)
        if r.method == method and re.search(path_regex, r.path)
    ]
    assert len(hits) > nth, f"no {method} {path_regex} #{nth} in {describe(api.requests)}"
    return hits[nth]


def describe(requests: list[RecordedRequest]) -> list[str]:
    return [f"{r.method} {r.path} {r.status}" for r in requests]


def assert_no_run_stopped(api: KfpApiStandIn) -> None:
    assert api.calls("DELETE", r"/runs/") == []
    assert api.calls("POST", r":terminate$") == []
    assert api.deleted_runs == [] and api.terminated_runs == []
    assert api.cascade_killed_runs == []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- client


def test_make_client_probes_healthz_and_sends_the_token(api: KfpApiStandIn) -> None:
    make_client(api.url, existing_token="s3cret")

    # our probe, then kfp.Client's own multi-user check
    assert describe(api.requests) == ["GET /apis/v2beta1/healthz 200"] * 2
    assert {r.authorization for r in api.requests} == {"Bearer s3cret"}


def test_make_client_with_namespace_skips_the_multi_user_check(api: KfpApiStandIn) -> None:
    client = make_client(api.url, namespace="team-a")

    assert describe(api.requests) == ["GET /apis/v2beta1/healthz 200"]
    assert client.get_user_namespace() == "team-a"


def test_make_client_unreachable_host_is_one_line() -> None:
    with pytest.raises(ClusterError) as info:
        make_client(f"http://127.0.0.1:{free_port()}")

    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("KFP connect to http://127.0.0.1:")
    assert "cannot reach the server" in message and "refused" in message


def test_make_client_server_error_fails_at_once_with_status(api: KfpApiStandIn) -> None:
    api.fail("GET", r"/healthz$", status=503, code=14, message="upstream connect error")

    with pytest.raises(ClusterError) as info:
        make_client(api.url)

    assert str(info.value) == (
        f"KFP connect to {api.url} failed: HTTP 503 Service Unavailable: upstream connect error"
    )
    assert info.value.status == 503


@pytest.mark.parametrize("host", ["", "   ", "ftp://example.com"])
def test_make_client_rejects_bad_host(host: str) -> None:
    with pytest.raises(ClusterError, match="--host"):
        make_client(host)


# ----------------------------------------------------------------------------- submit


def test_submit_posts_spec_typed_params_and_service_account(
    api: KfpApiStandIn, package: Path
) -> None:
    client = client_for(api)

    run_id = cluster.submit(
        client,
        package,
        params={"a": 3, "b": 0.25, "s": "gs://bucket/root", "flag": True},
        experiment="driftloop",
        run_name="manual-1",
        service_account="driftloop-pipeline",
        namespace=None,
    )

    (post,) = api.calls("POST", r"/apis/v2beta1/runs$")
    body = post.json
    assert body["display_name"] == "manual-1"
    assert body["service_account"] == "driftloop-pipeline"
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "tiny-driftloop"
    assert "root" in body["pipeline_spec"]
    params = body["runtime_config"]["parameters"]
    assert params == {"a": 3, "b": 0.25, "s": "gs://bucket/root", "flag": True}
    assert type(params["a"]) is int and type(params["b"]) is float
    assert type(params["flag"]) is bool
    (experiment,) = [e for e in api.experiments.values() if e["display_name"] == "driftloop"]
    assert body["experiment_id"] == experiment["experiment_id"]
    assert api.runs[run_id]["service_account"] == "driftloop-pipeline"
    assert api.runs[run_id]["state"] == "PENDING"


def test_submit_creates_the_experiment_once(api: KfpApiStandIn, package: Path) -> None:
    client = client_for(api)
    common: dict[str, Any] = {
        "params": {},
        "experiment": "driftloop",
        "service_account": None,
        "namespace": None,
    }

    first = cluster.submit(client, package, run_name="one", **common)
    second = cluster.submit(client, package, run_name="two", **common)

    assert len(api.calls("POST", r"/experiments$")) == 1
    lookups = api.calls("GET", r"/experiments$")
    assert len(lookups) == 2
    predicate = lookups[0].filter()["predicates"][0]
    assert predicate["key"] == "display_name" and predicate["string_value"] == "driftloop"
    assert first != second
    assert api.runs[first]["experiment_id"] == api.runs[second]["experiment_id"]
    # no service account given: the server's default applies
    assert "service_account" not in api.calls("POST", r"/runs$")[0].json
    assert api.runs[first]["service_account"] == "pipeline-runner"


def test_submit_recovers_when_another_client_creates_the_experiment(
    api: KfpApiStandIn, package: Path
) -> None:
    client = client_for(api)
    client.create_experiment(name="raced")
    api.requests.clear()
    # our lookup sees no experiment yet; the create then meets the real one: 409
    api.respond("GET", r"/experiments$", status=200, body={})

    cluster.submit(
        client,
        package,
        params={},
        experiment="raced",
        run_name="r",
        service_account=None,
        namespace=None,
    )

    posts = api.calls("POST", r"/experiments$")
    assert [p.status for p in posts] == [409]
    assert len([e for e in api.experiments.values() if e["display_name"] == "raced"]) == 1


@pytest.mark.parametrize("name", ["team+a", "50%-canary", "a%2Bb"])
def test_submit_reuses_an_experiment_whose_name_needs_escaping(
    api: KfpApiStandIn, package: Path, name: str
) -> None:
    """The server URL-unescapes ``filter`` a second time: an unencoded ``+`` or ``%`` breaks it."""
    client = client_for(api)
    common: dict[str, Any] = {"params": {}, "service_account": None, "namespace": None}

    first = cluster.submit(client, package, experiment=name, run_name="one", **common)
    second = cluster.submit(client, package, experiment=name, run_name="two", **common)

    (experiment,) = [e for e in api.experiments.values() if e["display_name"] == name]
    assert api.runs[first]["experiment_id"] == api.runs[second]["experiment_id"]
    assert api.runs[second]["experiment_id"] == experiment["experiment_id"]
    assert [p.status for p in api.calls("POST", r"/experiments$")] == [200]
    for lookup in api.calls("GET", r"/experiments$"):
        assert lookup.status == 200
        assert lookup.filter()["predicates"][0]["string_value"] == name


def test_submit_files_runs_under_the_experiment_the_server_says_has_that_name(
    api: KfpApiStandIn, package: Path
) -> None:
    """MySQL compares names case-insensitively: "Driftloop" is the existing "driftloop"."""
    client = client_for(api)
    client.create_experiment(name="driftloop")
    api.requests.clear()

    run_id = cluster.submit(
        client,
        package,
        params={},
        experiment="Driftloop",
        run_name="r",
        service_account=None,
        namespace=None,
    )

    (experiment,) = [e for e in api.experiments.values() if e["display_name"] == "driftloop"]
    assert api.runs[run_id]["experiment_id"] == experiment["experiment_id"]
    assert not [e for e in api.experiments.values() if e["display_name"] == "Driftloop"]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (
            {"a": 1, "typo": 2},
            r"pipeline parameter 'typo' is not declared \(declared: a, b, flag, s\)",
        ),
        ({"a": "3"}, r"pipeline parameter 'a': expected NUMBER_INTEGER, got str '3'"),
        ({"a": 2.5}, r"expected NUMBER_INTEGER, got float"),
        ({"flag": 1}, r"'flag': expected BOOLEAN, got int"),
        ({"b": True}, r"'b': expected NUMBER_DOUBLE, got bool"),
    ],
)
def test_submit_rejects_bad_params_before_any_request(
    api: KfpApiStandIn, package: Path, params: dict[str, object], match: str
) -> None:
    client = client_for(api)

    with pytest.raises(ConfigError, match=match):
        cluster.submit(
            client,
            package,
            params=params,
            experiment="e",
            run_name="r",
            service_account=None,
            namespace=None,
        )
    assert api.requests == []


def test_submit_requires_required_params(
    api: KfpApiStandIn, package_with_required: Path, tmp_path: Path
) -> None:
    client = client_for(api)
    kwargs: dict[str, Any] = {
        "experiment": "e",
        "run_name": "r",
        "service_account": None,
        "namespace": None,
    }

    with pytest.raises(ConfigError, match="pipeline parameters missing a value: store_uri"):
        cluster.submit(client, package_with_required, params={}, **kwargs)
    with pytest.raises(ConfigError, match="pipeline package not found"):
        cluster.submit(client, tmp_path / "absent.yaml", params={}, **kwargs)
    with pytest.raises(ConfigError, match=r"must be a \.yaml or \.yml file"):
        cluster.submit(client, tmp_path / "pipeline.json", params={}, **kwargs)
    assert api.requests == []

    cluster.submit(client, package_with_required, params={"store_uri": "gs://b/p"}, **kwargs)
    assert api.calls("POST", r"/runs$")[0].json["runtime_config"]["parameters"] == {
        "store_uri": "gs://b/p"
    }


def test_pipeline_parameters_reads_the_compiled_inputs(package: Path) -> None:
    declared = cluster.pipeline_parameters(package)

    assert {n: (p.type, p.required, p.default) for n, p in declared.items()} == {
        "a": ("NUMBER_INTEGER", False, 1.0),
        "b": ("NUMBER_DOUBLE", False, 2.5),
        "s": ("STRING", False, "x"),
        "flag": ("BOOLEAN", False, False),
    }


# ----------------------------------------------------------------------------- schedule


def test_schedule_posts_six_field_cron_concurrency_one_and_no_catchup(
    api: KfpApiStandIn, package: Path
) -> None:
    client = client_for(api)

    rr_id = cluster.schedule(
        client,
        package,
        name="driftloop-nightly",
        cron="0 2 * * *",
        params={"a": 5, "b": 1.5},
        experiment="driftloop",
        service_account="driftloop-pipeline",
    )

    (post,) = api.calls("POST", r"/recurringruns$")
    body = post.json
    assert body["display_name"] == "driftloop-nightly"
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert body["max_concurrency"] == "1"  # int64 as the API's JSON mapping has it
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["service_account"] == "driftloop-pipeline"
    assert body["runtime_config"]["parameters"] == {"a": 5, "b": 1.5}
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "tiny-driftloop"
    (experiment,) = [e for e in api.experiments.values() if e["display_name"] == "driftloop"]
    assert body["experiment_id"] == experiment["experiment_id"]

    assert cluster.describe_schedule(client, rr_id) == {
        "recurring_run_id": rr_id,
        "display_name": "driftloop-nightly",
        "cron": "0 0 2 * * *",
        "status": "ENABLED",
        "max_concurrency": 1,
        "no_catchup": True,
        "service_account": "driftloop-pipeline",
        "experiment_id": experiment["experiment_id"],
    }


def test_reschedule_creates_the_new_one_before_deleting_the_old(
    api: KfpApiStandIn, package: Path
) -> None:
    client = client_for(api)
    common: dict[str, Any] = {
        "name": "driftloop-nightly",
        "params": {},
        "experiment": "driftloop",
        "service_account": "driftloop-pipeline",
    }
    old_id = cluster.schedule(client, package, cron="0 2 * * *", **common)
    finished = api.fire(old_id, state="SUCCEEDED")  # an earlier, finished run
    api.requests.clear()

    new_id = cluster.schedule(client, package, cron="30 3 * * *", **common)

    create = index_of(api, "POST", r"/recurringruns$")
    disable = index_of(api, "POST", rf"/recurringruns/{old_id}:disable$")
    delete = index_of(api, "DELETE", rf"/recurringruns/{old_id}$")
    assert create < disable < delete, describe(api.requests)
    assert api.requests[delete].param("propagation_policy") == "ORPHAN"
    assert api.calls("DELETE", rf"/recurringruns/{new_id}") == []
    (only,) = api.recurring_runs_named("driftloop-nightly")
    assert only["recurring_run_id"] == new_id
    assert only["trigger"]["cron_schedule"]["cron"] == "0 30 3 * * *"
    assert only["status"] == "ENABLED"
    assert_no_run_stopped(api)
    assert api.runs[finished]["state"] == "SUCCEEDED"


@pytest.mark.parametrize("honours_orphan", [True, False], ids=["kfp-2.17", "kfp-2.15"])
def test_reschedule_never_stops_a_run_in_flight(package: Path, honours_orphan: bool) -> None:
    with KfpApiStandIn(seed=3, honours_propagation_policy=honours_orphan) as api:
        client = client_for(api)
        common: dict[str, Any] = {
            "name": "nightly",
            "cron": "0 2 * * *",
            "params": {},
            "experiment": "driftloop",
            "service_account": None,
        }
        old_id = cluster.schedule(client, package, **common)
        in_flight = api.fire(old_id)  # a scheduled run is going when we re-schedule

        new_id = cluster.schedule(client, package, **common)

        # the old schedule is disabled (starts nothing new) but kept while its run goes on
        assert index_of(api, "POST", r"/recurringruns$", nth=1) < index_of(
            api, "POST", rf"/recurringruns/{old_id}:disable$"
        )
        assert api.calls("DELETE", r"/recurringruns/") == []
        assert {
            r["recurring_run_id"]: r["status"] for r in api.recurring_runs_named("nightly")
        } == {
            old_id: "DISABLED",
            new_id: "ENABLED",
        }
        assert api.runs[in_flight]["state"] == "RUNNING"
        with pytest.raises(AssertionError, match="disabled"):
            api.fire(old_id)
        overlap = api.fire(new_id)  # the new schedule runs alongside the old run
        api.set_run_state(overlap, "SUCCEEDED")

        # once the run is over, the next call removes the old schedule
        api.set_run_state(in_flight, "SUCCEEDED")
        latest = cluster.schedule(client, package, **common)

        assert [r["recurring_run_id"] for r in api.recurring_runs_named("nightly")] == [latest]
        deletes = api.calls("DELETE", r"/recurringruns/")
        assert {d.path.rsplit("/", 1)[1] for d in deletes} == {old_id, new_id}
        assert {d.param("propagation_policy") for d in deletes} == {"ORPHAN"}
        assert_no_run_stopped(api)
        assert api.runs[in_flight]["state"] == "SUCCEEDED"


def test_reschedule_keeps_an_old_schedule_that_is_busy_and_says_so(
    api: KfpApiStandIn, package: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_for(api)
    common: dict[str, Any] = {
        "name": "nightly",
        "cron": "0 2 * * *",
        "params": {},
        "experiment": "e",
        "service_account": None,
    }
    old_id = cluster.schedule(client, package, **common)
    run_id = api.fire(old_id)

    with caplog.at_level(logging.WARNING, logger="driftloop.kfp.cluster"):
        cluster.schedule(client, package, **common)

    assert f"recurring run 'nightly' ({old_id}) is disabled but kept" in caplog.text
    assert run_id in caplog.text


def test_standin_models_the_cascade_that_schedule_avoids(package: Path, tmp_path: Path) -> None:
    """Deleting a recurring run without ORPHAN on an old server kills its runs in flight."""
    with KfpApiStandIn(honours_propagation_policy=False) as api:
        client = client_for(api)
        rr_id = cluster.schedule(
            client,
            package,
            name="n",
            cron="@daily",
            params={},
            experiment="e",
            service_account=None,
        )
        run_id = api.fire(rr_id)

        client.delete_recurring_run(rr_id)  # what a naive delete-then-create would do

        assert api.cascade_killed_runs == [run_id]
        assert client.get_run(run_id).state == "FAILED"


@pytest.mark.parametrize("name", ["nightly+retrain", "100%-daily", "a b"])
def test_reschedule_finds_the_old_schedule_whatever_its_name(
    api: KfpApiStandIn, package: Path, name: str
) -> None:
    """The name filter is URL-encoded, so the server's second unescape gives it back intact."""
    client = client_for(api)
    common: dict[str, Any] = {
        "name": name,
        "cron": "0 2 * * *",
        "params": {},
        "experiment": "e",
        "service_account": None,
    }
    old_id = cluster.schedule(client, package, **common)

    new_id = cluster.schedule(client, package, **common)

    assert [r["recurring_run_id"] for r in api.recurring_runs_named(name)] == [new_id]
    assert api.calls("DELETE", rf"/recurringruns/{old_id}$")[0].status == 200
    lookups = api.calls("GET", r"/recurringruns$")
    assert [r.filter()["predicates"][0]["string_value"] for r in lookups] == [name, name]


def test_schedule_lists_every_page_of_same_named_schedules(
    api: KfpApiStandIn, package: Path
) -> None:
    client = client_for(api)
    spec = {"pipelineInfo": {"name": "x"}, "root": {}}
    for _ in range(cluster._PAGE_SIZE + 5):  # more than one page of leftovers
        api.recurring_runs[api._new_id()] = {
            "recurring_run_id": "",
            "display_name": "busy-name",
            "experiment_id": next(iter(api.experiments)),
            "pipeline_spec": spec,
            "status": "DISABLED",
            "mode": "DISABLE",
            "created_at": api._tick(),
        }
    for rr_id, rr in api.recurring_runs.items():
        rr["recurring_run_id"] = rr_id

    new_id = cluster.schedule(
        client,
        package,
        name="busy-name",
        cron="0 0 * * 0",
        params={},
        experiment="e",
        service_account=None,
    )

    assert len(api.calls("GET", r"/recurringruns$")) == 2
    assert [r["recurring_run_id"] for r in api.recurring_runs_named("busy-name")] == [new_id]
    assert api.calls("POST", r":disable$") == []  # already disabled


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 0 * * *", "0 0 0 * * *"),
        ("*/15 9-17 * * MON-FRI", "0 */15 9-17 * * MON-FRI"),
        ("0 30 2 1,15 * ?", "0 30 2 1,15 * ?"),
        ("  5   4 * * sun ", "0 5 4 * * sun"),
        ("0 0 12 1 JAN-JUN/2 *", "0 0 12 1 JAN-JUN/2 *"),
        ("@daily", "0 0 0 * * *"),
        ("@Hourly", "0 0 * * * *"),
    ],
)
def test_kfp_cron_converts_standard_cron(expression: str, expected: str) -> None:
    assert kfp_cron(expression) == expected


@pytest.mark.parametrize(
    ("expression", "match"),
    [
        ("0 0 * *", r"expected 5 fields .* got 4"),
        ("0 0 0 0 * * *", r"got 7"),
        ("", r"got 0"),
        ("61 * * * *", r"minute field '61'"),
        ("0 24 * * *", r"hour field '24'"),
        ("* * 0 * *", r"day-of-month field '0'"),
        ("* * * 13 *", r"month field '13'"),
        ("* * * * 7", r"day-of-week field '7' is not valid \(allowed: 0-6, SUN-SAT"),
        ("*/0 * * * *", r"minute field '\*/0'"),
        ("5-1 * * * *", r"minute field '5-1'"),
        ("0 0 L * *", r"day-of-month field 'L'"),
        ("? * * * *", r"minute field '\?'"),
        ("@reboot", r"expected 5 fields"),
    ],
)
def test_malformed_cron_is_rejected_before_any_request(
    api: KfpApiStandIn, package: Path, expression: str, match: str
) -> None:
    client = client_for(api)

    with pytest.raises(ConfigError, match=match) as info:
        cluster.schedule(
            client,
            package,
            name="n",
            cron=expression,
            params={},
            experiment="e",
            service_account=None,
        )

    message = str(info.value)
    assert message.startswith(f"--cron {expression!r}: ")
    assert "\n" not in message
    assert api.requests == []


@pytest.mark.parametrize("value", [0, 11, True])
def test_max_concurrency_out_of_range_is_rejected_before_any_request(
    api: KfpApiStandIn, package: Path, value: int
) -> None:
    client = client_for(api)

    with pytest.raises(ConfigError, match=r"--max-concurrency .*: must be 1-10"):
        cluster.schedule(
            client,
            package,
            name="n",
            cron="0 0 * * *",
            params={},
            experiment="e",
            service_account=None,
            max_concurrency=value,
        )
    assert api.requests == []


def test_schedule_in_a_multi_user_deployment(package: Path) -> None:
    with KfpApiStandIn(multi_user=True) as api:
        client = client_for(api, namespace="team-a")
        rr_id = cluster.schedule(
            client,
            package,
            name="n",
            cron="0 0 * * *",
            params={},
            experiment="e",
            service_account=None,
            namespace="team-a",
        )

        assert api.recurring_runs[rr_id]["namespace"] == "team-a"
        assert api.recurring_runs[rr_id]["service_account"] == "default-editor"
        assert api.calls("GET", r"/recurringruns$")[0].param("namespace") == "team-a"

        # without namespace=, schedule uses the client's and replaces the same schedule
        again = cluster.schedule(
            client,
            package,
            name="n",
            cron="0 1 * * *",
            params={},
            experiment="e",
            service_account=None,
        )
        assert [r["recurring_run_id"] for r in api.recurring_runs_named("n")] == [again]
        assert api.calls("GET", r"/recurringruns$")[1].param("namespace") == "team-a"

        bare = client_for(api)  # no namespace: the server says what is missing
        with pytest.raises(ClusterError) as info:
            cluster.submit(
                bare,
                package,
                params={},
                experiment="e",
                run_name="r",
                service_account=None,
                namespace=None,
            )
        assert "HTTP 400 Bad Request" in str(info.value)
        assert "An experiment cannot have an empty namespace in multi-user mode" in str(info.value)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("style", ["gateway-v2", "gateway-v1"])
def test_server_error_on_create_run_is_one_line(package: Path, style: str) -> None:
    with KfpApiStandIn(error_style=style) as api:
        client = client_for(api)
        api.fail("POST", r"/runs$", message="Failed to create a run: database is\nlocked")

        with pytest.raises(ClusterError) as info:
            cluster.submit(
                client,
                package,
                params={},
                experiment="e",
                run_name="nightly-1",
                service_account=None,
                namespace=None,
            )

    assert str(info.value) == (
        "KFP create run 'nightly-1' failed: HTTP 500 Internal Server Error: "
        "Failed to create a run: database is locked"
    )
    assert info.value.status == 500
    assert isinstance(info.value, DriftloopError)


def test_not_found_is_one_line(api: KfpApiStandIn) -> None:
    client = client_for(api)

    with pytest.raises(ClusterError) as info:
        cluster.describe_schedule(client, "0000-missing")

    assert str(info.value) == (
        "KFP get recurring run 0000-missing failed: HTTP 404 Not Found: Failed to fetch a "
        "recurring run: ResourceNotFoundError: Job 0000-missing not found"
    )


def test_error_while_retiring_the_old_schedule_names_it(api: KfpApiStandIn, package: Path) -> None:
    client = client_for(api)
    common: dict[str, Any] = {
        "name": "n",
        "cron": "0 0 * * *",
        "params": {},
        "experiment": "e",
        "service_account": None,
    }
    old_id = cluster.schedule(client, package, **common)
    api.fail(
        "DELETE", rf"/recurringruns/{old_id}$", status=403, code=7, message="RBAC: access denied"
    )

    with pytest.raises(ClusterError) as info:
        cluster.schedule(client, package, **common)

    assert str(info.value) == (
        f"KFP delete recurring run {old_id} failed: HTTP 403 Forbidden: RBAC: access denied"
    )
    # the new schedule exists already: there is never a moment without one
    assert {r["status"] for r in api.recurring_runs_named("n")} == {"ENABLED", "DISABLED"}


def test_non_json_error_body_is_reported_on_one_line(api: KfpApiStandIn, package: Path) -> None:
    client = client_for(api)
    api.respond("GET", r"/experiments$", status=502, body="<html><h1>Bad\nGateway</h1></html>")

    with pytest.raises(ClusterError) as info:
        cluster.submit(
            client,
            package,
            params={},
            experiment="e",
            run_name="r",
            service_account=None,
            namespace=None,
        )
    assert str(info.value) == (
        "KFP find experiment 'e' failed: HTTP 502 Bad Gateway: <html><h1>Bad Gateway</h1></html>"
    )


# ----------------------------------------------------------------------------- the real package


def test_submit_and_schedule_the_continuous_training_package(api: KfpApiStandIn) -> None:
    if not CONTINUOUS_TRAINING.exists():
        pytest.skip("pipelines/continuous_training.yaml not compiled yet (run `make compile`)")
    client = client_for(api)
    samples = {
        "STRING": "gs://driftloop-test/store",
        "NUMBER_INTEGER": 1,
        "NUMBER_DOUBLE": 0.5,
        "BOOLEAN": False,
        "LIST": [],
        "STRUCT": {},
    }
    declared = cluster.pipeline_parameters(CONTINUOUS_TRAINING)
    params = {n: samples[p.type] for n, p in declared.items() if p.required}

    run_id = cluster.submit(
        client,
        CONTINUOUS_TRAINING,
        params=params,
        experiment="driftloop",
        run_name="ct-1",
        service_account="driftloop-pipeline",
        namespace=None,
    )
    rr_id = cluster.schedule(
        client,
        CONTINUOUS_TRAINING,
        name="ct-nightly",
        cron="0 2 * * *",
        params=params,
        experiment="driftloop",
        service_account="driftloop-pipeline",
    )

    spec = api.calls("POST", r"/runs$")[0].json["pipeline_spec"]
    inner = spec.get("pipeline_spec", spec)  # {pipeline_spec, platform_spec} with kfp-kubernetes
    assert inner["pipelineInfo"]["name"]
    assert set(params) <= set(inner["root"].get("inputDefinitions", {}).get("parameters", {}))
    assert api.runs[run_id]["service_account"] == "driftloop-pipeline"
    assert api.recurring_runs[rr_id]["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"
