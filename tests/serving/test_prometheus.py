"""Serving metrics per version through a real Prometheus (Debian's package) on 127.0.0.1.

The gateway's counters are scraped by a real ``prometheus`` process; the canary analysis
reads each version's requests, 5xx errors and p95 latency back over Prometheus' HTTP API
and rolls back a canary whose failed requests never reached the payload log.
"""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from driftloop.config import CanaryConfig
from driftloop.decide.canary import analyse_canary
from driftloop.rollout.gateway import GATEWAY_METRICS, LocalGateway
from driftloop.rollout.local import LocalRolloutBackend
from driftloop.serving.prometheus import PrometheusError, serving_stats


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[tuple[LocalGateway, str]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: `make test` installs Debian's package "
                    "(apt-get install prometheus, as root)")
    from prometheus_client import start_http_server

    gateway = LocalGateway(LocalRolloutBackend(tmp_path / "rollout", "m", "default"),
                           model_name="m", cache_dir=tmp_path / "cache")
    target = _port()
    server, _ = start_http_server(target, addr="127.0.0.1", registry=gateway.registry)
    web = _port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n- job_name: gateway\n  static_configs:\n"
        f"  - targets: ['127.0.0.1:{target}']\n")
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{web}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("prometheus did not become ready in 30 s")
        yield gateway, url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        server.shutdown()


def _wait_for(url: str, query: str, wanted: float, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = httpx.get(f"{url}/api/v1/query", params={"query": query}).json()
        values = [float(r["value"][1]) for r in result["data"]["result"]]
        if values and sum(values) >= wanted:
            return
        time.sleep(0.3)
    pytest.fail(f"prometheus never scraped {query} >= {wanted}")


def test_a_canary_whose_failures_never_reach_the_log_is_rolled_back(scraped):
    gateway, url = scraped
    for version in ("v-champion", "v-canary"):  # series exist at 0 before any request
        gateway.count(version, 200, 0.003)
    _wait_for(url, 'driftloop_gateway_requests_total{code="200"}', 2)
    since = dt.datetime.now(dt.UTC)
    time.sleep(1.5)
    for _ in range(600):
        gateway.count("v-champion", 200, 0.003)
    for i in range(600):  # half of the canary's requests fail, and it is 10x slower
        gateway.count("v-canary", 500 if i % 2 else 200, 0.03)
    _wait_for(url, "driftloop_gateway_requests_total", 1202)
    time.sleep(1.5)
    stats = serving_stats(url, "m", since=since, until=dt.datetime.now(dt.UTC),
                          prefix=GATEWAY_METRICS)
    champ, canary = stats["v-champion"], stats["v-canary"]
    assert (champ.requests, champ.errors) == (600, 0)  # the counters' exact differences
    assert (canary.requests, canary.errors) == (600, 300)
    assert canary.latency_p95_ms is not None and champ.latency_p95_ms is not None
    assert canary.latency_p95_ms > 5 * champ.latency_p95_ms
    # the logged responses (200s only) look equally good for both versions
    records = pd.DataFrame({
        "timestamp": pd.Timestamp(since),
        "model_version": ["v-champion"] * 200 + ["v-canary"] * 200,
        "prediction": "a", "label": "a"})
    analysis = analyse_canary(records, champion_version="v-champion", canary_version="v-canary",
                              current_percent=50, config=CanaryConfig(), serving=stats)
    assert analysis.decision == "rollback"
    assert any(r.name == "error_rate" and not r.passed for r in analysis.rules)


def test_an_unreachable_prometheus_is_one_line_naming_it():
    url = f"http://127.0.0.1:{_port()}"
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(PrometheusError, match=url):
        serving_stats(url, "m", since=now - dt.timedelta(hours=1), until=now, timeout=1)
