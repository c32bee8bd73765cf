"""Read each model version's requests, errors and latency from Prometheus.

The logged responses cannot tell a canary's error rate: KServe's payload logger sends a
response event only for HTTP 200 (``pkg/logger/handler.go``, v0.20), so a failed request
leaves no record. The serving layer counts every request instead --
``driftloop_serving_requests_total{model_name, model_version, code}`` and the
``driftloop_serving_request_duration_seconds`` histogram (the local gateway exports them;
on a cluster the same numbers are Knative's per-revision queue-proxy series) -- and the
canary analysis reads them here over Prometheus' HTTP API (``GET /api/v1/query``), for the
period since the canary started, as Flagger and Argo Rollouts read theirs.

An error is a 5xx answer (a 4xx is the client's input). Counts are the counters'
differences between the two ends of the period; the p95 comes from ``increase()`` of the
histogram buckets (its extrapolation scales every bucket alike, so the quantile holds).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from driftloop.decide.canary import ServingStats
from driftloop.errors import DriftloopError

#: The predictor's series (what each version answered); the local gateway's are
#: ``driftloop_gateway_*``.
PREFIX = "driftloop_serving"


class PrometheusError(DriftloopError):
    """Prometheus could not be queried (the message names the URL and the cause)."""


def _query(url: str, promql: str, at: dt.datetime, timeout: float) -> list[dict[str, Any]]:
    import httpx

    try:
        answer = httpx.get(f"{url.rstrip('/')}/api/v1/query",
                           params={"query": promql, "time": f"{at.timestamp():.3f}"},
                           timeout=timeout)
    except httpx.HTTPError as exc:
        raise PrometheusError(f"prometheus {url}: {exc}") from None
    try:
        body = answer.json()
    except ValueError:
        body = {}
    if answer.status_code != 200 or body.get("status") != "success":
        raise PrometheusError(f"prometheus {url}: HTTP {answer.status_code}: "
                              f"{body.get('error') or answer.text[:200]}")
    return list(body["data"]["result"])


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def serving_stats(
    url: str, model_name: str, *, since: dt.datetime, until: dt.datetime,
    timeout: float = 10.0, prefix: str = PREFIX,
) -> dict[str, ServingStats]:
    """Requests, 5xx errors and p95 latency (ms) per model version over ``[since, until]``.

    Args:
        url: Prometheus' base URL (``http://prometheus:9090``).
        model_name: The model whose versions to read.
        since: Start of the period (the canary's start).
        until: End of the period (the run's logical time).
        timeout: HTTP timeout per query.
        prefix: The series' name prefix (``driftloop_serving``: the predictor's;
            ``driftloop_gateway``: the local gateway's).

    Returns:
        ``version -> ServingStats``; a version without a request in the period is absent.

    Raises:
        PrometheusError: Prometheus did not answer a query.
    """
    seconds = max(1, math.ceil((until - since).total_seconds()))
    window = f"[{seconds}s]"
    requests, latency = f"{prefix}_requests_total", f"{prefix}_request_duration_seconds_bucket"
    match = f'{{model_name="{_label(model_name)}"}}'
    counts: dict[str, dict[str, float]] = {}
    by_code = f"sum by (model_version, code) ({requests}{match})"
    before = {(i["metric"].get("model_version", ""), i["metric"].get("code", "")):
              float(i["value"][1]) for i in _query(url, by_code, since, timeout)}
    for item in _query(url, by_code, until, timeout):
        key = (item["metric"].get("model_version", ""), item["metric"].get("code", ""))
        value = float(item["value"][1])
        # the counter's own difference (exact; increase() extrapolates to the window's
        # edges); after a restart (a reset) the later value alone
        grown = value - before.get(key, 0.0)
        counts.setdefault(key[0], {})[key[1]] = grown if grown >= 0 else value
    p95: dict[str, float] = {}
    for item in _query(url, f"histogram_quantile(0.95, sum by (model_version, le) "
                            f"(increase({latency}{match}{window})))", until, timeout):
        value = float(item["value"][1])
        if math.isfinite(value):
            p95[item["metric"].get("model_version", "")] = value * 1000.0
    out = {}
    for version, codes in counts.items():
        total = round(sum(codes.values()))
        if total <= 0:
            continue
        errors = round(sum(v for c, v in codes.items() if c.startswith("5")))
        out[version] = ServingStats(requests=total, errors=errors,
                                    latency_p95_ms=p95.get(version))
    return out
