"""Reach a Kubeflow Pipelines API server, and turn its failures into one-line errors.

:func:`make_client` probes the server once before building a ``kfp.Client`` (kfp 2.17), so
a wrong URL, a refused bearer token or a server error fails at once with its HTTP status.
:func:`api_call` wraps every later request: what ``kfp.Client`` raises becomes a
:class:`ClusterError` naming the operation, the HTTP status and the server's own message,
which the CLI prints as is, and what the client prints (links to the KFP UI) goes to the
log instead of stdout.

It is its own module because connecting and reporting failures are the same for every
request, while :mod:`driftloop.kfp.cluster` holds what is requested (runs, recurring runs).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from driftloop.errors import DriftloopError

if TYPE_CHECKING:
    import kfp

__all__ = ["ClusterError", "api_call", "make_client", "one_line"]

logger = logging.getLogger(__name__)

_MESSAGE_LIMIT = 400


class ClusterError(DriftloopError):
    """A request to the Kubeflow Pipelines API failed or its answer was unusable.

    Attributes:
        status: The HTTP status of the failed request, or None when there was no HTTP answer.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def one_line(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    """``text`` on one line, whitespace collapsed, cut to ``limit`` characters."""
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
        return one_line(body)
    if isinstance(data, dict):
        for key in ("message", "error"):
            value = data.get(key)
            if isinstance(value, str) and value.strip():
                return one_line(value)
    return one_line(body)


def _as_cluster_error(operation: str, exc: BaseException) -> ClusterError:
    import kfp_server_api
    import urllib3

    if isinstance(exc, kfp_server_api.ApiException):
        status = int(exc.status or 0)
        reason = str(exc.reason or "").strip()
        message = _server_message(getattr(exc, "body", None))
        if status == 0:  # no HTTP answer (TLS failure, unusable request)
            return ClusterError(f"KFP {operation} failed: {one_line(reason or message)}")
        detail = f": {message}" if message and message != reason else ""
        return ClusterError(
            f"KFP {operation} failed: HTTP {status} {reason}{detail}".rstrip(), status=status
        )
    if isinstance(exc, urllib3.exceptions.HTTPError):
        cause = getattr(exc, "reason", None) or exc
        return ClusterError(
            f"KFP {operation} failed: cannot reach the server: {one_line(str(cause))}"
        )
    return ClusterError(f"KFP {operation} failed: {one_line(str(exc))}")


@contextlib.contextmanager
def api_call(operation: str) -> Iterator[None]:
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
    with api_call(operation):
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
        with api_call(operation):
            kwargs: dict[str, Any] = {"host": host, "existing_token": existing_token}
            if namespace:
                kwargs["namespace"] = namespace
            return kfp.Client(**kwargs)
