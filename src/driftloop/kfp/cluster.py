"""Submit the compiled pipeline to a Kubeflow Pipelines backend and keep a recurring schedule.

Everything here talks to the KFP v2beta1 REST API through ``kfp.Client`` (kfp 2.17), connected
by :func:`driftloop.kfp.client.make_client`. Each function fails with a one-line
:class:`~driftloop.kfp.client.ClusterError` naming the operation, the HTTP status and the
server's own message, so the CLI can print it as is. Run arguments are checked against the
parameters the compiled package declares (:func:`check_params`) and the cron expression is
converted to KFP's 6-field form (:func:`driftloop.kfp.cron.kfp_cron`) before any request.

Replacing a schedule (:func:`schedule` called again with the same name) never leaves a moment
without one and never stops a run in flight:

1. the new recurring run is created first (enabled);
2. each older recurring run with the same display name is then disabled, so it starts nothing
   new;
3. it is deleted only when none of the runs it started is still in flight, and the delete asks
   Kubernetes to orphan (``propagation_policy=ORPHAN``) whatever it owns. An older schedule that
   still has runs in flight stays, disabled, and is deleted by the next :func:`schedule` call
   after those runs end.

Step 3 is careful because deleting a recurring run deletes its ScheduledWorkflow, and by
default Kubernetes garbage-collects the Argo Workflows it owns: the runs it started and that are
still going are killed (kubeflow/pipelines#7421, #12573, reported up to KFP 2.15). Backends that
know the ``propagation_policy`` delete option (kubeflow/pipelines#12574; kfp-server-api 2.17
sends it) honour ORPHAN; older ones ignore the unknown query parameter, which is why the
in-flight check comes first. Disabling a recurring run only stops it from scheduling runs
(the ScheduledWorkflow controller leaves active Workflows alone).

``max_concurrency`` counts each recurring run's own runs: while a replaced schedule still has a
run in flight, the new one may start another, so two runs can overlap during a replacement.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from driftloop.errors import ConfigError
from driftloop.kfp.client import ClusterError, api_call, one_line

# kept importable for notebooks/submit_pipeline.ipynb, which calls cluster.make_client
from driftloop.kfp.client import make_client as make_client
from driftloop.kfp.cron import kfp_cron

if TYPE_CHECKING:
    import kfp

logger = logging.getLogger(__name__)

#: Run states after which a run no longer holds any pod (``V2beta1RuntimeState``).
FINAL_RUN_STATES = frozenset({"SUCCEEDED", "SKIPPED", "FAILED", "CANCELED"})

#: Inclusive range the API server accepts for ``max_concurrency``.
MAX_CONCURRENCY_RANGE = (1, 10)

_PAGE_SIZE = 100
_PACKAGE_SUFFIXES = (".yaml", ".yml")


# --------------------------------------------------------------------------- package


@dataclass(frozen=True)
class PipelineParameter:
    """One input parameter a compiled pipeline declares.

    Attributes:
        name: Parameter name.
        type: KFP parameter type (``STRING``, ``NUMBER_INTEGER``, ``NUMBER_DOUBLE``,
            ``BOOLEAN``, ``LIST`` or ``STRUCT``).
        required: True when it has neither a default nor ``isOptional``.
        default: The compiled default value, if any.
    """

    name: str
    type: str
    required: bool
    default: Any = None


def _check_package(package_path: Path | str) -> Path:
    path = Path(package_path)
    if path.suffix.lower() not in _PACKAGE_SUFFIXES:
        raise ConfigError(f"{path}: a compiled pipeline package must be a .yaml or .yml file")
    if not path.is_file():
        raise ConfigError(f"{path}: pipeline package not found (compile the pipeline first)")
    return path


def pipeline_parameters(package_path: Path | str) -> dict[str, PipelineParameter]:
    """Read the input parameters a compiled pipeline package declares.

    Args:
        package_path: The compiled pipeline (YAML written by ``kfp.compiler``).

    Returns:
        The declared parameters by name.

    Raises:
        ConfigError: The file is missing or is not a compiled KFP pipeline.
    """
    path = _check_package(package_path)
    try:
        with path.open(encoding="utf-8") as handle:
            spec = next(iter(yaml.safe_load_all(handle)), None)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{path}: not a readable pipeline package: {one_line(str(exc))}"
        ) from None
    if not isinstance(spec, dict) or not isinstance(spec.get("root"), dict):
        raise ConfigError(f"{path}: not a compiled KFP pipeline (no 'root' section)")
    declared = ((spec["root"].get("inputDefinitions") or {}).get("parameters")) or {}
    result: dict[str, PipelineParameter] = {}
    for name, info in declared.items():
        info = info or {}
        has_default = "defaultValue" in info
        result[name] = PipelineParameter(
            name=name,
            type=str(info.get("parameterType", "STRING")),
            required=not has_default and not info.get("isOptional", False),
            default=info.get("defaultValue"),
        )
    return result


def _type_ok(value: object, kind: str) -> bool:
    if kind == "STRING":
        return isinstance(value, str)
    if kind == "BOOLEAN":
        return isinstance(value, bool)
    if kind == "NUMBER_INTEGER":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "NUMBER_DOUBLE":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "LIST":
        return isinstance(value, list | tuple)
    if kind == "STRUCT":
        return isinstance(value, dict)
    return True


def check_params(package_path: Path | str, params: Mapping[str, object]) -> dict[str, object]:
    """Check run arguments against the parameters the compiled pipeline declares.

    The API server accepts any ``runtime_config.parameters``; a misspelt or mistyped argument
    would only fail inside the run. Values are passed on unchanged (numbers stay numbers).

    Args:
        package_path: The compiled pipeline.
        params: Argument values by parameter name.

    Returns:
        The arguments as a plain dict, ready for ``runtime_config.parameters``.

    Raises:
        ConfigError: An argument is unknown, has the wrong type, or a required one is missing.
    """
    declared = pipeline_parameters(package_path)
    known = ", ".join(sorted(declared)) or "none"
    for name, value in params.items():
        if name not in declared:
            raise ConfigError(f"pipeline parameter {name!r} is not declared (declared: {known})")
        kind = declared[name].type
        if not _type_ok(value, kind):
            raise ConfigError(
                f"pipeline parameter {name!r}: expected {kind}, "
                f"got {type(value).__name__} {value!r}"
            )
    missing = sorted(n for n, p in declared.items() if p.required and n not in params)
    if missing:
        raise ConfigError(f"pipeline parameters missing a value: {', '.join(missing)}")
    return {name: list(v) if isinstance(v, tuple) else v for name, v in params.items()}


# --------------------------------------------------------------------------- runs


def _experiment_named(client: kfp.Client, name: str, namespace: str | None) -> Any:
    """The experiment the server files under ``name``, or None.

    An exact match wins; otherwise the server's only match is taken, because MySQL's default
    collation (KFP's database, ``backend/src/apiserver/client/sql.go`` in 2.17.0) compares
    names case-insensitively for this filter and for the unique (name, namespace) index alike:
    the experiment it returns is the one a create with ``name`` collides with.
    """
    with api_call(f"find experiment {name!r}"):
        # The generated API, not kfp.Client.get_experiment, whose filter is not URL-encoded.
        page = client.experiments.experiment_service_list_experiments(
            filter=_name_filter("display_name", name),
            namespace=namespace,
            page_size=_PAGE_SIZE,
        )
    found = list(page.experiments or [])
    exact = [e for e in found if e.display_name == name]
    if exact:
        return exact[0]
    return found[0] if len(found) == 1 else None


def ensure_experiment(client: kfp.Client, name: str, *, namespace: str | None = None) -> str:
    """Return the id of the experiment named ``name``, creating it when missing.

    The lookup is ours rather than ``kfp.Client.create_experiment``'s, whose name filter the
    server's second unescape garbles (see :func:`_name_filter`).

    Args:
        client: A ``kfp.Client``.
        name: Experiment display name (unique per namespace on the server).
        namespace: Namespace for multi-user deployments (default: the client's).

    Returns:
        The experiment id.

    Raises:
        ConfigError: The name is empty.
        ClusterError: The server refused the lookup or the creation.
    """
    import kfp_server_api

    if not name or not name.strip():
        raise ConfigError("--experiment is empty: give an experiment name")
    namespace = namespace or client.get_user_namespace() or None
    experiment = _experiment_named(client, name, namespace)
    if experiment is None:
        try:
            with api_call(f"create experiment {name!r}"):
                experiment = client.experiments.experiment_service_create_experiment(
                    experiment=kfp_server_api.V2beta1Experiment(
                        display_name=name, namespace=namespace
                    )
                )
        except ClusterError as err:
            if err.status != 409:  # another client created it between lookup and create
                raise
            experiment = _experiment_named(client, name, namespace)
            if experiment is None:
                raise
    return str(experiment.experiment_id)


def submit(
    client: kfp.Client,
    package_path: Path,
    *,
    params: Mapping[str, object],
    experiment: str,
    run_name: str,
    service_account: str | None,
    namespace: str | None,
) -> str:
    """Start one run of a compiled pipeline.

    The run carries the pipeline spec inline, the arguments as typed values, and the
    Kubernetes service account its pods run as (None lets the server pick its default,
    ``pipeline-runner`` on a standard install).

    Args:
        client: A ``kfp.Client`` (see :func:`~driftloop.kfp.client.make_client`).
        package_path: The compiled pipeline YAML.
        params: Pipeline arguments; checked against the parameters the package declares.
        experiment: Experiment to file the run under; created if missing.
        run_name: Display name of the run.
        service_account: Kubernetes service account for the run's pods.
        namespace: Namespace for multi-user deployments.

    Returns:
        The new run's id.

    Raises:
        ConfigError: The package, a parameter or a name is invalid (before any request).
        ClusterError: The server refused a request.
    """
    arguments = check_params(package_path, params)
    if not run_name or not run_name.strip():
        raise ConfigError("--run-name is empty: give the run a name")
    experiment_id = ensure_experiment(client, experiment, namespace=namespace)
    with api_call(f"create run {run_name!r}"):
        result = client.create_run_from_pipeline_package(
            pipeline_file=str(package_path),
            arguments=arguments,
            run_name=run_name,
            experiment_id=experiment_id,
            service_account=service_account or None,
        )
    return str(result.run_id)


def _name_filter(key: str, value: str) -> str:
    """A list ``filter`` for ``key == value`` (operation 1 = EQUALS), URL-encoded.

    The API server URL-unescapes ``filter`` once more after the HTTP layer has decoded the
    query (``url.QueryUnescape`` in ``parseAPIFilter``, ``backend/src/apiserver/server/
    list_request_util.go``, KFP 2.17.0 and every release since 2019): sent as plain JSON, a
    ``+`` in the value would become a space and a ``%`` a 400. Encoded, it arrives intact.
    """
    text = json.dumps({"predicates": [{"operation": 1, "key": key, "string_value": value}]})
    return urllib.parse.quote(text, safe="")


def _recurring_runs_named(client: kfp.Client, name: str, namespace: str | None) -> list[Any]:
    found: list[Any] = []
    token = ""
    while True:
        with api_call(f"list recurring runs named {name!r}"):
            page = client.list_recurring_runs(
                page_token=token,
                page_size=_PAGE_SIZE,
                namespace=namespace or None,
                filter=_name_filter("display_name", name),
            )
        found.extend(r for r in page.recurring_runs or [] if r.display_name == name)
        token = page.next_page_token or ""
        if not token:
            return found


def runs_in_flight(client: kfp.Client, recurring_run_id: str) -> list[str]:
    """Return the ids of the runs a recurring run started that have not finished.

    Args:
        client: A ``kfp.Client``.
        recurring_run_id: The recurring run.

    Returns:
        Ids of its runs whose state is not final (``SUCCEEDED``, ``SKIPPED``, ``FAILED``,
        ``CANCELED``); a run without a state yet counts as in flight.

    Raises:
        ClusterError: The server refused the listing.
    """
    in_flight: list[str] = []
    token = ""
    while True:
        with api_call(f"list runs of recurring run {recurring_run_id}"):
            page = client.list_runs(
                page_token=token,
                page_size=_PAGE_SIZE,
                filter=_name_filter("recurring_run_id", recurring_run_id),
            )
        for run in page.runs or []:
            if run.recurring_run_id == recurring_run_id and str(run.state) not in FINAL_RUN_STATES:
                in_flight.append(str(run.run_id))
        token = page.next_page_token or ""
        if not token:
            return in_flight


def _retire(client: kfp.Client, old: Any) -> bool:
    """Disable an older recurring run, and delete it when none of its runs is in flight."""
    old_id = str(old.recurring_run_id)
    if str(old.status) != "DISABLED":
        with api_call(f"disable recurring run {old_id}"):
            client.disable_recurring_run(recurring_run_id=old_id)
    busy = runs_in_flight(client, old_id)
    if busy:
        logger.warning(
            "recurring run %r (%s) is disabled but kept: runs %s are still in flight; "
            "the next schedule call deletes it once they end",
            old.display_name,
            old_id,
            ", ".join(busy),
        )
        return False
    with api_call(f"delete recurring run {old_id}"):
        # The generated API, because kfp.Client.delete_recurring_run (2.17) has no way to pass
        # the propagation policy.
        client.recurring_runs.recurring_run_service_delete_recurring_run(
            recurring_run_id=old_id, propagation_policy="ORPHAN"
        )
    return True


def schedule(
    client: kfp.Client,
    package_path: Path,
    *,
    name: str,
    cron: str,
    params: Mapping[str, object],
    experiment: str,
    service_account: str | None,
    max_concurrency: int = 1,
    no_catchup: bool = True,
    namespace: str | None = None,
) -> str:
    """Create or replace the recurring run called ``name``.

    The recurring run fires on ``cron`` (a standard 5-field expression is converted to KFP's
    6-field form, see :func:`~driftloop.kfp.cron.kfp_cron`), runs at most
    ``max_concurrency`` runs at once, and with ``no_catchup`` starts only the latest missed
    run after a pause instead of backfilling.

    Calling it again with the same name replaces the schedule: the new recurring run is created
    first, then older ones with that display name are disabled and deleted (see the module
    docstring). Deleting a recurring run with ``propagation_policy=ORPHAN`` does not stop the
    runs it already started; an older one that still has runs in flight is only disabled, so
    that no run in flight is stopped even on backends that ignore the propagation policy, and
    is removed by a later call once those runs end.

    Args:
        client: A ``kfp.Client`` (see :func:`~driftloop.kfp.client.make_client`).
        package_path: The compiled pipeline YAML; its spec is stored in the recurring run.
        name: Display name; identifies the schedule across calls.
        cron: Cron expression (``--cron``), 5 or 6 fields.
        params: Pipeline arguments; checked against the parameters the package declares.
        experiment: Experiment the scheduled runs are filed under; created if missing.
        service_account: Kubernetes service account for the scheduled runs' pods.
        max_concurrency: Runs allowed at once, 1-10.
        no_catchup: Skip backfilling missed intervals.
        namespace: Namespace for multi-user deployments (default: the client's).

    Returns:
        The new recurring run's id.

    Raises:
        ConfigError: The cron, a parameter, the package or a name is invalid (before any
            request).
        ClusterError: The server refused a request.
    """
    trigger = kfp_cron(cron)
    if not name or not name.strip():
        raise ConfigError("--name is empty: give the schedule a name")
    low, high = MAX_CONCURRENCY_RANGE
    if isinstance(max_concurrency, bool) or not low <= int(max_concurrency) <= high:
        raise ConfigError(f"--max-concurrency {max_concurrency!r}: must be {low}-{high}")
    arguments = check_params(package_path, params)
    namespace = namespace or client.get_user_namespace() or None
    experiment_id = ensure_experiment(client, experiment, namespace=namespace)
    older = _recurring_runs_named(client, name, namespace)
    with api_call(f"create recurring run {name!r}"):
        created = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=name,
            cron_expression=trigger,
            max_concurrency=str(int(max_concurrency)),  # int64 travels as a JSON string
            no_catchup=bool(no_catchup),
            params=arguments,
            pipeline_package_path=str(package_path),
            enabled=True,
            service_account=service_account or None,
        )
    new_id = str(created.recurring_run_id)
    for old in older:
        if str(old.recurring_run_id) != new_id:
            _retire(client, old)
    return new_id


def describe_schedule(client: kfp.Client, recurring_run_id: str) -> dict[str, Any]:
    """Return the essentials of a recurring run as plain JSON-ready data.

    Args:
        client: A ``kfp.Client``.
        recurring_run_id: The recurring run.

    Returns:
        Id, name, cron, status, max concurrency, catch-up flag, service account and
        experiment id.

    Raises:
        ClusterError: The server refused the request (e.g. HTTP 404 for an unknown id).
    """
    with api_call(f"get recurring run {recurring_run_id}"):
        rr = client.get_recurring_run(recurring_run_id=recurring_run_id)
    cron_schedule = rr.trigger.cron_schedule if rr.trigger else None
    return {
        "recurring_run_id": rr.recurring_run_id,
        "display_name": rr.display_name,
        "cron": cron_schedule.cron if cron_schedule else None,
        "status": rr.status,
        "max_concurrency": int(rr.max_concurrency) if rr.max_concurrency else None,
        "no_catchup": bool(rr.no_catchup),
        "service_account": rr.service_account,
        "experiment_id": rr.experiment_id,
    }
