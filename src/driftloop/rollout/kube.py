"""The Kubernetes rollout backend: a KServe InferenceService through the Kubernetes API.

Uses the ``kubernetes`` client's ``CustomObjectsApi`` on ``serving.kserve.io/v1beta1``
``inferenceservices``:

* GET to read; POST to create (:meth:`~driftloop.rollout.base.RolloutBackend.ensure`);
* PATCH with ``Content-Type: application/merge-patch+json`` (RFC 7386). kubernetes 30.1's
  ``patch_namespaced_custom_object`` offers only that content type, so the client's
  ``select_header_content_type`` picks it; no override is needed. Each patch carries
  ``metadata.resourceVersion``: the API server refuses a write based on a stale read with
  409 Conflict, and the step is recomputed from a fresh read (bounded, see
  :class:`~driftloop.rollout.base.RolloutBackend`).

Errors: 404 -> :class:`~driftloop.rollout.errors.InferenceServiceNotFound`; 400/422 ->
:class:`~driftloop.rollout.errors.RolloutRejected` with the server's message; a 403 is told
apart by its ``Status`` message (:func:`classify_forbidden`): an admission webhook's denial
-> :class:`~driftloop.rollout.errors.AdmissionDenied` (a refusal of the object, not of the
caller), the authorizer's refusal -> :class:`~driftloop.rollout.errors.PermissionDenied`
naming the RBAC rule needed, anything else (a terminating namespace, a quota) ->
:class:`~driftloop.rollout.errors.RolloutRejected`; 401 ->
:class:`~driftloop.rollout.errors.PermissionDenied` (the credentials). Timeouts, connection
errors, 429 and 5xx are retried with exponential backoff (``backoff_base * 2**attempt``
seconds, capped at ``backoff_max``; a numeric ``Retry-After`` is honoured) up to
``max_attempts`` tries per request. A service in Standard/RawDeployment or ModelMesh mode
is refused before any write (:class:`~driftloop.rollout.errors.UnsupportedDeploymentMode`).

RBAC the caller's service account needs: ``get``, ``patch`` and ``create`` on
``inferenceservices.serving.kserve.io`` in the namespace.

On a cluster the status lags the spec; every step polls it until the write is in effect
(``ready_timeout``, ``poll_interval``: :class:`~driftloop.rollout.base.RolloutBackend`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from driftloop.rollout.base import (
    DEFAULT_POLL_INTERVAL,
    DEFAULT_READY_TIMEOUT,
    GROUP,
    PLURAL,
    VERSION,
    AlreadyExistsError,
    ConflictError,
    InferenceServiceNotFound,
    RolloutBackend,
    RolloutError,
    RolloutRejected,
)
from driftloop.rollout.errors import AdmissionDenied, PermissionDenied

log = logging.getLogger(__name__)

#: HTTP statuses worth retrying: throttled or the server (or a proxy) failed.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


def load_api_client(*, host: str | None = None, kubeconfig: str | None = None,
                    context: str | None = None, in_cluster: bool | None = None) -> Any:
    """Return a ``kubernetes.client.ApiClient``.

    Args:
        host: An API server URL used without credentials (``kubectl proxy``, tests).
        kubeconfig: A kubeconfig file (default: ``$KUBECONFIG`` or ``~/.kube/config``).
        context: The kubeconfig context (default: the current one).
        in_cluster: Use the pod's service account; default: when ``KUBERNETES_SERVICE_HOST``
            is set.

    The client's own urllib3 retries are switched off: the backend retries with backoff
    and knows which writes are safe to repeat.

    Raises:
        RolloutError: No configuration could be loaded.
    """
    from kubernetes import client, config

    if host is not None:
        configuration = client.Configuration(host=host.rstrip("/"))
    else:
        configuration = client.Configuration()
        use_cluster = in_cluster if in_cluster is not None else bool(
            os.environ.get("KUBERNETES_SERVICE_HOST"))
        try:
            if use_cluster:
                config.load_incluster_config(client_configuration=configuration)
            else:
                config.load_kube_config(config_file=kubeconfig, context=context,
                                        client_configuration=configuration)
        except config.ConfigException as exc:
            where = "in-cluster service account" if use_cluster else (
                kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config")
            raise RolloutError(f"Kubernetes configuration ({where}): {exc}") from exc
    configuration.retries = False
    return client.ApiClient(configuration)


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str) and body:
        try:
            doc = json.loads(body)
        except json.JSONDecodeError:
            return body.strip().splitlines()[0][:300]
        if isinstance(doc, dict) and doc.get("message"):
            return str(doc["message"])
    return str(getattr(exc, "reason", "") or "no message")


def _server_reason(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    try:
        doc = json.loads(body) if isinstance(body, str) else None
    except json.JSONDecodeError:
        return ""
    return str(doc.get("reason", "")) if isinstance(doc, dict) else ""


#: How the API server words a webhook's denial (k8s.io/apiserver v0.34.3
#: pkg/admission/plugin/webhook/errors/statuserror.go ``ToStatusErr``): the webhook's own
#: Status with this prefix; KServe's validator answers through controller-runtime v0.22.5
#: ``admission.Denied``, i.e. code 403 and reason Forbidden, like an RBAC refusal.
WEBHOOK_DENIAL = re.compile(
    r'admission webhook "(?P<webhook>[^"]*)" denied the request(?::\s*(?P<why>.*)| without '
    r"explanation)?", re.DOTALL)
#: How the authorizer words its refusal (k8s.io/apiserver v0.34.3
#: pkg/endpoints/handlers/responsewriters/errors.go ``forbiddenMessage``, wrapped by
#: k8s.io/apimachinery pkg/api/errors ``NewForbidden``: '<resource> "<name>" is forbidden:
#: User "<user>" cannot <verb> resource "<resource>" in API group "<group>" in the
#: namespace "<ns>"').
RBAC_DENIAL = re.compile(
    r'User "(?P<user>[^"]*)" cannot (?P<verb>\S+) (?:resource "(?P<resource>[^"]*)" in API '
    r'group "(?P<group>[^"]*)"|path "(?P<path>[^"]*)")')


def classify_forbidden(message: str) -> tuple[str, dict[str, str]]:
    """Tell a 403's cause from its Status message.

    Returns:
        ``("webhook", {"webhook", "why"})``, ``("rbac", {"user", "verb", "resource",
        "group"})`` or ``("other", {})``.
    """
    denial = WEBHOOK_DENIAL.search(message)
    if denial is not None:
        return "webhook", {"webhook": denial["webhook"], "why": (denial["why"] or "").strip()}
    rbac = RBAC_DENIAL.search(message)
    if rbac is not None:
        return "rbac", {k: v or "" for k, v in rbac.groupdict().items()}
    return "other", {}


def _retry_after(exc: Any) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class KubeRolloutBackend(RolloutBackend):
    """The rollout interface on a cluster's InferenceService (KServe Serverless mode).

    Args:
        name: The InferenceService's name.
        namespace: Its namespace.
        api_client: A ``kubernetes.client.ApiClient`` (default: :func:`load_api_client`).
        template: The template :meth:`ensure` creates from (a dict or kserve model object).
        max_conflict_retries: How many times a step is recomputed after a 409 Conflict.
        max_attempts: Tries per request for timeouts, connection errors, 429 and 5xx.
        backoff_base: The first retry's delay in seconds (doubled each retry).
        backoff_max: The longest delay between retries.
        request_timeout: Seconds to connect, and seconds to wait for the answer.
        ready_timeout: Seconds a step waits for its write to take effect.
        poll_interval: Seconds between two reads of the status while it waits.
        sleep: The sleep function for backoff and polling (tests pass a recorder).
        clock: The monotonic clock of ``ready_timeout`` (tests pass a fake).
    """

    def __init__(self, name: str, namespace: str = "default", *, api_client: Any = None,
                 template: Any = None, max_conflict_retries: int = 5, max_attempts: int = 5,
                 backoff_base: float = 0.5, backoff_max: float = 8.0,
                 request_timeout: float = 30.0, ready_timeout: float = DEFAULT_READY_TIMEOUT,
                 poll_interval: float = DEFAULT_POLL_INTERVAL,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from kubernetes import client

        super().__init__(name, namespace, template=template,
                         max_conflict_retries=max_conflict_retries,
                         ready_timeout=ready_timeout, poll_interval=poll_interval,
                         sleep=sleep, clock=clock)
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._own_client = api_client is None
        self.api_client = api_client if api_client is not None else load_api_client()
        self.api = client.CustomObjectsApi(self.api_client)
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.request_timeout = request_timeout

    @property
    def host(self) -> str:
        """The API server's URL."""
        return str(self.api_client.configuration.host)

    @property
    def where(self) -> str:  # noqa: D102
        return f"InferenceService {self.namespace}/{self.name} (API server {self.host})"

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        return float(min(self.backoff_max, self.backoff_base * (2 ** attempt)))

    def _call(self, verb: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Call the API; map errors to driftloop errors; retry transient failures."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        what = f"{verb} {self.where}"
        last = ""
        for attempt in range(self.max_attempts):
            delay: float | None = None
            try:
                # kubernetes 30.1 ignores a float timeout (only an int or a (connect, read)
                # pair is applied): always pass the pair.
                return fn(*args, _request_timeout=(self.request_timeout, self.request_timeout))
            except ApiException as exc:
                status = int(exc.status or 0)
                message = _server_message(exc)
                if status in TRANSIENT_STATUSES:
                    last = f"HTTP {status}: {message}"
                    delay = _retry_after(exc)
                elif status == 404:
                    raise InferenceServiceNotFound(
                        f"InferenceService {self.namespace}/{self.name} not found (API server "
                        f"{self.host}): check the name and namespace, or create it with "
                        "ensure(storage_uri)"
                    ) from None
                elif status == 409:
                    if _server_reason(exc) == "AlreadyExists":
                        raise AlreadyExistsError(f"{what}: {message}") from None
                    raise ConflictError(f"{what}: {message}") from None
                elif status in (400, 403, 422):
                    raise self._refusal(what, status, message) from None
                elif status == 401:
                    raise PermissionDenied(
                        f"{what}: not authenticated (401): {message}; check the kubeconfig or "
                        "the service account token"
                    ) from None
                else:
                    raise RolloutError(f"{what}: HTTP {status}: {message}") from None
            except urllib3.exceptions.HTTPError as exc:  # timeouts, refused/reset connections
                last = f"{type(exc).__name__}: {exc}"
            if attempt + 1 < self.max_attempts:
                wait = delay if delay is not None else self.backoff(attempt)
                log.warning("%s failed (%s); retry %d/%d in %.2f s", what, last, attempt + 1,
                            self.max_attempts - 1, wait)
                self._sleep(wait)
        raise RolloutError(f"{what}: failed {self.max_attempts} times; last error: {last}")

    def _refusal(self, what: str, status: int, message: str) -> RolloutError:
        """The error for a 400/403/422: whose refusal it is, from the Status message."""
        kind, parts = classify_forbidden(message)
        if kind == "webhook":
            return AdmissionDenied(
                f"{what}: admission webhook {parts['webhook']} denied the change ({status}): "
                f"{parts['why'] or 'without explanation'} (the object was refused, not the "
                "service account)", webhook=parts["webhook"], reason=parts["why"])
        if kind == "rbac" and status == 403:
            verb = parts["verb"]
            rule = (f"{verb} on {parts['resource']}.{parts['group']}".rstrip(".")
                    if parts["resource"] else f"{verb} on path {parts['path']}")
            return PermissionDenied(
                f"{what}: not allowed by RBAC ({status}): {message}; the service account "
                f"needs {rule} in namespace {self.namespace} (a rollout needs get, patch and "
                f"create on {PLURAL}.{GROUP})")
        if status == 403:
            return RolloutRejected(f"{what}: the API server refused the change (403 "
                                   f"Forbidden, not an RBAC rule): {message}")
        return RolloutRejected(
            f"{what}: the API server rejected the change ({status}): {message}")

    def _diagnosis(self) -> str:
        """KServe's Warning events for the service, for a step that timed out.

        An unsupported ``storageUri`` scheme, an unknown runtime and the like are reported
        only as events (KServe v0.20.0 controller.go: ``Recorder.Eventf(isvc, Warning,
        "InternalError", ...)``). Best effort: it needs ``list`` on ``events`` (without it,
        or on any error, nothing is added to the message).
        """
        from kubernetes import client

        try:
            events = client.CoreV1Api(self.api_client).list_namespaced_event(
                self.namespace, field_selector=(
                    f"involvedObject.kind=InferenceService,involvedObject.name={self.name}"),
                _request_timeout=(self.request_timeout, self.request_timeout))
        except Exception as exc:  # a diagnosis must not hide the timeout
            log.info("%s: events not readable (%s)", self.where, exc)
            return ""
        warnings = [e for e in events.items or [] if e.type == "Warning"
                    and e.involved_object is not None and e.involved_object.name == self.name]
        if not warnings:
            return ""
        return "KServe's events: " + "; ".join(f"{e.reason}: {e.message}" for e in warnings[-3:])

    def _read_object(self) -> dict[str, Any]:
        obj = self._call("GET", self.api.get_namespaced_custom_object, GROUP, VERSION,
                         self.namespace, PLURAL, self.name)
        return dict(obj)

    def _patch_object(self, patch: dict[str, Any]) -> dict[str, Any]:
        obj = self._call("PATCH", self.api.patch_namespaced_custom_object, GROUP, VERSION,
                         self.namespace, PLURAL, self.name, patch)
        return dict(obj)

    def _create_object(self, obj: dict[str, Any]) -> dict[str, Any]:
        created = self._call("POST", self.api.create_namespaced_custom_object, GROUP, VERSION,
                             self.namespace, PLURAL, obj)
        return dict(created)

    # -- A/B tests: KServe's InferenceGraph (rollout/ab_graph.py) ---------------------------

    def _custom(self, verb: str, plural: str, version: str, name: str | None = None,
                body: Any = None) -> Any:
        """One call on a namespaced custom object other than this service."""
        group = GROUP
        args: tuple[Any, ...]
        if verb == "POST":
            fn, args = self.api.create_namespaced_custom_object, (group, version,
                                                                 self.namespace, plural, body)
        elif verb == "PATCH":
            fn, args = self.api.patch_namespaced_custom_object, (
                group, version, self.namespace, plural, name, body)
        else:
            fn, args = self.api.delete_namespaced_custom_object, (
                group, version, self.namespace, plural, name)
        return self._call(f"{verb} {plural}/{name or ''}", fn, *args)

    def _create_or_patch(self, plural: str, version: str, obj: dict[str, Any]) -> None:
        try:
            self._custom("POST", plural, version, body=obj)
        except AlreadyExistsError:
            self._custom("PATCH", plural, version, obj["metadata"]["name"], obj)

    def start_ab(self, test: Any, storage_uris: Mapping[str, str] | None = None) -> Any:
        """Create the test's InferenceGraph, its pinned variant services, mark the service.

        Refused while a canary is in progress: marking the service for its logger is a
        spec change, i.e. a new revision, which would take over the canary's share.
        Clients then send to the graph's URL (``status.url``) with ``ab_bucket`` set
        (:func:`~driftloop.rollout.ab_graph.stamp_instances`).

        Returns:
            The objects applied (:func:`~driftloop.rollout.ab_graph.build_ab_objects`).
        """
        from driftloop.rollout.ab_graph import GRAPH_PLURAL, GRAPH_VERSION, build_ab_objects
        from driftloop.rollout.ab_split import resolve_routes

        obj = self.get_object()
        state = self.get()
        if state.canary_in_progress:
            raise RolloutError(f"{self.where}: a canary is in progress; finish or roll it back "
                               f"before starting A/B test {test.test_id}")
        routes = resolve_routes(test, state.storage_uri or "", storage_uris)
        objects = build_ab_objects(test, obj, {k: v for k, v in routes.routes.items() if v})
        for pinned in objects["services"]:
            self._create_or_patch(PLURAL, VERSION, pinned)
        if objects["service_patch"] is not None:
            self._patch_object(objects["service_patch"])
        self._create_or_patch(GRAPH_PLURAL, GRAPH_VERSION, objects["graph"])
        return objects

    def stop_ab(self, test: Any) -> None:
        """Delete the test's graph and pinned services; unmark the service (idempotent)."""
        from driftloop.rollout.ab_graph import (
            GRAPH_PLURAL,
            GRAPH_VERSION,
            graph_name,
            unpatch_service,
            variant_service,
        )
        from driftloop.rollout.ab_split import SERVICE_ALIAS

        deletes = [(GRAPH_PLURAL, GRAPH_VERSION, graph_name(self.name))]
        deletes += [(PLURAL, VERSION, variant_service(self.name, test, v.name))
                    for v in test.variants if v.target != SERVICE_ALIAS]
        for plural, version, name in deletes:
            # already gone: _call maps every 404 to InferenceServiceNotFound
            with contextlib.suppress(InferenceServiceNotFound):
                self._custom("DELETE", plural, version, name)
        self._patch_object(unpatch_service(self.get_object()))

    def close(self) -> None:
        """Close the API client if this backend created it."""
        if self._own_client:
            self.api_client.close()
