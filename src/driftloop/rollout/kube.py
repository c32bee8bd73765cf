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

Errors: 404 -> :class:`~driftloop.rollout.base.InferenceServiceNotFound`; 400/422 ->
:class:`~driftloop.rollout.base.RolloutRejected` with the server's message; 401/403 ->
:class:`~driftloop.rollout.errors.RolloutError` naming the RBAC rule needed; timeouts,
connection errors, 429 and 5xx are retried with exponential backoff
(``backoff_base * 2**attempt`` seconds, capped at ``backoff_max``; a numeric ``Retry-After``
is honoured) up to ``max_attempts`` tries per request. A service in RawDeployment mode is
refused before any write (:class:`~driftloop.rollout.base.UnsupportedDeploymentMode`).

RBAC the caller's service account needs: ``get``, ``patch`` and ``create`` on
``inferenceservices.serving.kserve.io`` in the namespace.

On a cluster the status lags the spec: the state a step returns may still show the old
traffic. Call :meth:`~driftloop.rollout.base.RolloutBackend.wait_until_reconciled` before
reading the split.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from driftloop.rollout.base import (
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
        sleep: The sleep function (tests pass a recorder).
    """

    def __init__(self, name: str, namespace: str = "default", *, api_client: Any = None,
                 template: Any = None, max_conflict_retries: int = 5, max_attempts: int = 5,
                 backoff_base: float = 0.5, backoff_max: float = 8.0,
                 request_timeout: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        from kubernetes import client

        super().__init__(name, namespace, template=template,
                         max_conflict_retries=max_conflict_retries)
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._own_client = api_client is None
        self.api_client = api_client if api_client is not None else load_api_client()
        self.api = client.CustomObjectsApi(self.api_client)
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.request_timeout = request_timeout
        self._sleep = sleep

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
                elif status in (400, 422):
                    raise RolloutRejected(
                        f"{what}: the API server rejected the change ({status}): {message}"
                    ) from None
                elif status in (401, 403):
                    raise RolloutError(
                        f"{what}: not allowed ({status}): {message}; the service account needs "
                        f"get, patch and create on {PLURAL}.{GROUP} in namespace "
                        f"{self.namespace}"
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

    def close(self) -> None:
        """Close the API client if this backend created it."""
        if self._own_client:
            self.api_client.close()
