"""Submit the compiled pipeline to a Kubeflow Pipelines backend and keep a recurring schedule.

Everything here talks to the KFP v2beta1 REST API through ``kfp.Client`` (kfp 2.17). Each
function fails with a one-line :class:`ClusterError` naming the operation, the HTTP status and
the server's own message, so the CLI can print it as is.

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

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from driftloop.errors import ConfigError, DriftloopError

if TYPE_CHECKING:
    import kfp

logger = logging.getLogger(__name__)

#: Run states after which a run no longer holds any pod (``V2beta1RuntimeState``).
FINAL_RUN_STATES = frozenset({"SUCCEEDED", "SKIPPED", "FAILED", "CANCELED"})

#: Inclusive range the API server accepts for ``max_concurrency``.
MAX_CONCURRENCY_RANGE = (1, 10)

_PAGE_SIZE = 100
_MESSAGE_LIMIT = 400
_PACKAGE_SUFFIXES = (".yaml", ".yml")


class ClusterError(DriftloopError):
    """A request to the Kubeflow Pipelines API failed or its answer was unusable.

    Attributes:
        status: The HTTP status of the failed request, or None when there was no HTTP answer.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- errors


def _one_line(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _server_message(body: object) -> str:
    """Return the server's message from an error body (grpc-gateway v1 or v2 shape)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if not isinstance(body, str) or not body.strip():
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return _one_line(body)
    if isinstance(data, dict):
        for key in ("message", "error"):
            value = data.get(key)
            if isinstance(value, str) and value.strip():
                return _one_line(value)
    return _one_line(body)


def _as_cluster_error(operation: str, exc: BaseException) -> ClusterError:
    import kfp_server_api
    import urllib3

    if isinstance(exc, kfp_server_api.ApiException):
        status = int(exc.status or 0)
        reason = str(exc.reason or "").strip()
        message = _server_message(getattr(exc, "body", None))
        if status == 0:  # no HTTP answer (TLS failure, unusable request)
            return ClusterError(f"KFP {operation} failed: {_one_line(reason or message)}")
        detail = f": {message}" if message and message != reason else ""
        return ClusterError(
            f"KFP {operation} failed: HTTP {status} {reason}{detail}".rstrip(), status=status
        )
    if isinstance(exc, urllib3.exceptions.HTTPError):
        cause = getattr(exc, "reason", None) or exc
        return ClusterError(
            f"KFP {operation} failed: cannot reach the server: {_one_line(str(cause))}"
        )
    return ClusterError(f"KFP {operation} failed: {_one_line(str(exc))}")


@contextlib.contextmanager
def _api_call(operation: str) -> Iterator[None]:
    """Turn what ``kfp.Client`` raises for a failed request into one :class:`ClusterError`.

    What the client prints (links to the KFP UI) goes to the log at INFO level instead.
    """
    import kfp_server_api
    import urllib3

    # kfp.Client prints "Experiment details: URL" / "Run details: URL"; keep stdout for results.
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    except ClusterError:
        raise
    except (
        kfp_server_api.ApiException,
        urllib3.exceptions.HTTPError,
        ValueError,
        TimeoutError,
    ) as exc:
        raise _as_cluster_error(operation, exc) from exc
    finally:
        for line in printed.getvalue().splitlines():
            logger.info("%s", line)


# --------------------------------------------------------------------------- cron

_CRON_DESCRIPTORS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, 1)}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}


@dataclass(frozen=True)
class _CronField:
    name: str
    low: int
    high: int
    names: Mapping[str, int] | None = None
    question_mark: bool = False

    def rule(self) -> str:
        extra = ", JAN-DEC" if self.names is _MONTHS else ", SUN-SAT" if self.names is _DAYS else ""
        q = ", '?'" if self.question_mark else ""
        return f"{self.low}-{self.high}{extra}, '*'{q}, lists a,b, ranges a-b, steps */n or a-b/n"


_CRON_FIELDS = (
    _CronField("seconds", 0, 59),
    _CronField("minute", 0, 59),
    _CronField("hour", 0, 23),
    _CronField("day-of-month", 1, 31, question_mark=True),
    _CronField("month", 1, 12, names=_MONTHS),
    _CronField("day-of-week", 0, 6, names=_DAYS, question_mark=True),
)


def _cron_value(text: str, spec: _CronField) -> int | None:
    if text.isdigit():
        value = int(text)
    elif spec.names is not None and text.upper() in spec.names:
        value = spec.names[text.upper()]
    else:
        return None
    return value if spec.low <= value <= spec.high else None


def _cron_term_ok(term: str, spec: _CronField) -> bool:
    base, slash, step = term.partition("/")
    if slash and (not step.isdigit() or int(step) < 1):
        return False
    if base in ("*", "?"):
        return base == "*" or (spec.question_mark and not slash)
    low_text, dash, high_text = base.partition("-")
    low = _cron_value(low_text, spec)
    if low is None:
        return False
    if not dash:
        return True
    high = _cron_value(high_text, spec)
    return high is not None and low <= high


def kfp_cron(expression: str) -> str:
    """Return the 6-field cron (leading seconds) that KFP recurring runs take.

    KFP parses ``cron`` with robfig/cron's seconds-first format, in which a 5-field string means
    *seconds minute hour day-of-month month*: ``"0 0 * * *"`` would fire every hour, not daily.
    This function takes the standard 5-field form (minute hour day-of-month month day-of-week)
    and prepends ``0`` seconds; a 6-field expression is checked and kept; ``@daily``-style
    descriptors are expanded. Day-of-week is 0-6 (Sunday is 0, never 7).

    Args:
        expression: The cron expression as the user wrote it (``--cron``).

    Returns:
        The 6-field expression to send as ``trigger.cron_schedule.cron``.

    Raises:
        ConfigError: The expression is malformed; the message names ``--cron`` and the rule.
    """
    text = " ".join(str(expression).split())
    if text.lower() in _CRON_DESCRIPTORS:
        return _CRON_DESCRIPTORS[text.lower()]
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise ConfigError(
            f"--cron {expression!r}: expected 5 fields (minute hour day-of-month month "
            f"day-of-week, e.g. '0 2 * * *') or 6 with leading seconds, got {len(fields)}"
        )
    for value, spec in zip(fields, _CRON_FIELDS, strict=True):
        if not all(_cron_term_ok(term, spec) for term in value.split(",")):
            raise ConfigError(
                f"--cron {expression!r}: {spec.name} field {value!r} is not valid "
                f"(allowed: {spec.rule()})"
            )
    return " ".join(fields)


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
            f"{path}: not a readable pipeline package: {_one_line(str(exc))}"
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


# --------------------------------------------------------------------------- client


def make_client(
    host: str, *, namespace: str | None = None, existing_token: str | None = None
) -> kfp.Client:
    """Connect to a Kubeflow Pipelines API server.

    The server is probed once first (``GET /apis/v2beta1/healthz``, 5 s to connect, 30 s to
    answer) so that a wrong URL, a refused token or a server error fails at once with its HTTP
    status: ``kfp.Client`` would instead retry its own healthz call five times, 5 s apart, and
    report only a timeout. ``kfp.Client`` then asks healthz again, when no namespace is given,
    to learn whether the deployment is multi-user.

    Args:
        host: Base URL of the API, e.g. ``http://localhost:8080`` (a port-forward to
            ``ml-pipeline-ui``) or ``https://kubeflow.example.com/pipeline``.
        namespace: Kubernetes namespace (profile) for multi-user deployments; None for
            single-user ones. Kept in the client only (nothing is written to
            ``~/.config/kfp/context.json``).
        existing_token: Bearer token sent as ``Authorization`` on every request.

    Returns:
        A connected ``kfp.Client``.

    Raises:
        ClusterError: The host is empty or the server cannot be reached or refuses.
    """
    host = (host or "").strip()
    if not host:
        raise ClusterError("--host is empty: give the KFP API URL, e.g. http://localhost:8080")
    scheme, sep, _ = host.partition("://")
    if sep and scheme.lower() not in ("http", "https"):
        raise ClusterError(f"--host {host!r}: the URL must start with http:// or https://")
    import kfp
    import kfp_server_api

    operation = f"connect to {host}"
    with _api_call(operation):
        config = kfp_server_api.Configuration(host=host.rstrip("/"))
        if existing_token:
            config.api_key["authorization"] = existing_token
            config.api_key_prefix["authorization"] = "Bearer"
        with kfp_server_api.ApiClient(config) as probe:
            kfp_server_api.HealthzServiceApi(probe).healthz_service_get_healthz(
                _request_timeout=(5, 30)
            )
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="This client only works with", category=FutureWarning
        )
        with _api_call(operation):
            kwargs: dict[str, Any] = {"host": host, "existing_token": existing_token}
            if namespace:
                kwargs["namespace"] = namespace
            return kfp.Client(**kwargs)


def ensure_experiment(client: kfp.Client, name: str, *, namespace: str | None = None) -> str:
    """Return the id of the experiment named ``name``, creating it when missing.

    Args:
        client: A ``kfp.Client``.
        name: Experiment display name (unique per namespace on the server).
        namespace: Namespace for multi-user deployments.

    Returns:
        The experiment id.

    Raises:
        ConfigError: The name is empty.
        ClusterError: The server refused the lookup or the creation.
    """
    if not name or not name.strip():
        raise ConfigError("--experiment is empty: give an experiment name")
    try:
        with _api_call(f"create experiment {name!r}"):
            experiment = client.create_experiment(name=name, namespace=namespace)
    except ClusterError as err:
        if err.status != 409:  # another client created it between lookup and create
            raise
        with _api_call(f"get experiment {name!r}"):
            experiment = client.get_experiment(experiment_name=name, namespace=namespace)
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
        client: A ``kfp.Client`` (see :func:`make_client`).
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
    with _api_call(f"create run {run_name!r}"):
        result = client.create_run_from_pipeline_package(
            pipeline_file=str(package_path),
            arguments=arguments,
            run_name=run_name,
            experiment_id=experiment_id,
            service_account=service_account or None,
        )
    return str(result.run_id)


def _name_filter(key: str, value: str) -> str:
    # The same encoding kfp.Client uses for its own lookups (operation 1 = EQUALS).
    return json.dumps({"predicates": [{"operation": 1, "key": key, "stringValue": value}]})


def _recurring_runs_named(client: kfp.Client, name: str, namespace: str | None) -> list[Any]:
    found: list[Any] = []
    token = ""
    while True:
        with _api_call(f"list recurring runs named {name!r}"):
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
        with _api_call(f"list runs of recurring run {recurring_run_id}"):
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
        with _api_call(f"disable recurring run {old_id}"):
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
    with _api_call(f"delete recurring run {old_id}"):
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
    6-field form, see :func:`kfp_cron`), runs at most ``max_concurrency`` runs at once, and
    with ``no_catchup`` starts only the latest missed run after a pause instead of backfilling.

    Calling it again with the same name replaces the schedule: the new recurring run is created
    first, then older ones with that display name are disabled and deleted (see the module
    docstring). Deleting a recurring run with ``propagation_policy=ORPHAN`` does not stop the
    runs it already started; an older one that still has runs in flight is only disabled, so
    that no run in flight is stopped even on backends that ignore the propagation policy, and
    is removed by a later call once those runs end.

    Args:
        client: A ``kfp.Client`` (see :func:`make_client`).
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
    with _api_call(f"create recurring run {name!r}"):
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
    with _api_call(f"get recurring run {recurring_run_id}"):
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
