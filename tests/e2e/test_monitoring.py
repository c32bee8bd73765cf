"""Every dashboard query and every alert expression against a real Prometheus.

A short served scenario on 127.0.0.1, everything real but the cluster: a champion and a
deliberately worse canary (10 %) behind the local gateway, which logs each
request/response pair to the payload sink as KServe's logger does; feedback labels go to
the sink's ``POST /feedback``; then one in-process pipeline run (``run_loop``) rolls the
canary back, retrains on the drifted traffic and pushes its decisions to a real
Pushgateway (Debian's ``prometheus-pushgateway``). A real Prometheus (Debian's
``prometheus``) scrapes the gateway, a predictor server, the sink and the Pushgateway
(``honor_labels``, as a Pushgateway must be scraped) every second and loads the generated
``rules.yaml``.

Then every query of the generated dashboard JSON (Grafana's variables substituted as
Grafana would) and every alert expression of the generated rules file, read from the files
and not re-typed, must return series; an alert's comparisons are made ``bool`` first
(:func:`driftloop.serving.monitoring.disarm`), so an alert that does not fire still shows
that its signal exists. A misspelt metric returns nothing, and the test shows it does.
Every ``driftloop_*`` series Prometheus holds must be documented in
``manifests/monitoring/README.md``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from driftloop.config import CanaryConfig, Config, DriftConfig, TrainConfig
from driftloop.data.storage import LocalStore
from driftloop.decide.drift import build_reference_profile
from driftloop.demo.sample import make_rows, sample_schema
from driftloop.models.registry import Registry
from driftloop.models.train import save_model_artifact, train_model
from driftloop.notify import NullNotifier
from driftloop.rollout import version_storage_uri
from driftloop.rollout.local import LocalGateway, LocalRolloutBackend
from driftloop.rollout.progressive import start_canary
from driftloop.serving.dashboard import queries
from driftloop.serving.monitoring import (
    DASHBOARD_FILE,
    RULES_FILE,
    comparisons,
    disarm,
    substitute,
    variable_values,
)
from driftloop.serving.server import start_app
from driftloop.serving.sink import PayloadSink, create_app
from driftloop.steps.loop import PIPELINE, run_loop

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "manifests" / "monitoring"
MODEL = "sample"
CHAMPION, WORSE = "v-champion", "v-worse"
REQUESTS, LABEL_SHARE = 300, 0.7
CONFIG = Config(canary=CanaryConfig(min_labelled=15))
#: kserve 0.20 answers with ORJSONResponse, which FastAPI deprecates on every request.
pytestmark = pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _host(url: str) -> str:
    return url.removeprefix("http://").rstrip("/")


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """Start a real Prometheus with the given targets; stopped at the end of the test."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: `make test` installs Debian's package "
                    "(apt-get install prometheus, as root)")
    started: list[subprocess.Popen[bytes]] = []

    def start(targets: dict[str, str], *, honor: set[str]) -> str:
        jobs = [{"job_name": job, "honor_labels": job in honor,
                 "static_configs": [{"targets": [_host(url)]}]}
                for job, url in targets.items()]
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(MONITORING / RULES_FILE)], "scrape_configs": jobs}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        web = _free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{web}"], stdout=log, stderr=subprocess.STDOUT)
        started.append(proc)
        url = f"http://127.0.0.1:{web}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited:\n{(tmp_path / 'prometheus.log').read_text()}")
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail("prometheus did not become ready in 30 s")

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=10)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query; fails the test with Prometheus' error when it does not parse."""
    body = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert body["status"] == "success", f"{promql}\n-> {body.get('error')}"
    return list(body["data"]["result"])


def _wait(url: str, promql: str, wanted: float, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    got: list[float] = []
    while time.monotonic() < deadline:
        got = [float(r["value"][1]) for r in query(url, promql)]
        if got and sum(got) >= wanted:
            return
        time.sleep(0.25)
    pytest.fail(f"prometheus never had {promql} >= {wanted} (last: {got})")


def _train(base: Path, now: dt.datetime) -> dict[str, Path]:
    """A champion trained before the drift and a worse one (flipped labels) after it."""
    schema = sample_schema()
    rng = np.random.default_rng(5)
    trained_at = now - dt.timedelta(days=10)
    before = make_rows(600, rng, drifted=False)
    flipped = make_rows(600, rng, drifted=True)
    flipped = flipped.assign(label=np.where(flipped["label"] == "yes", "no", "yes"))
    folders = {}
    for version, rows in ((CHAMPION, before), (WORSE, flipped)):
        stamps = [pd.Timestamp(trained_at) - pd.Timedelta(minutes=i) for i in range(len(rows))]
        frame = rows.assign(id=[f"{version}-{i}" for i in range(len(rows))], timestamp=stamps)
        result = train_model(frame, schema, TrainConfig(max_iter=40, seed=7), model_name=MODEL,
                             version=version, now=trained_at)
        folder = save_model_artifact(result, base / version)
        frame.to_parquet(base / f"{version}.parquet", index=False)
        build_reference_profile(frame, schema, DriftConfig(), model_version=version,
                                model=result.model).save(folder)
        folders[version] = folder
    return folders


def _serve(gateway_url: str, sink_url: str, n: int, seed: int) -> tuple[dict[str, int], int]:
    """``n`` requests through the gateway (logged to the sink by it), labels to the sink."""
    rng = np.random.default_rng(seed)
    rows = make_rows(n, rng, drifted=True)
    served: dict[str, int] = {}
    feedback = []
    with httpx.Client(base_url=gateway_url, timeout=30.0) as gateway:
        for i, row in enumerate(rows.to_dict(orient="records")):
            rid = f"r-{seed}-{i:04d}"
            answer = gateway.post(f"/v1/models/{MODEL}:predict", json={"instances": [
                {"id": rid, "x0": row["x0"], "x1": row["x1"], "segment": row["segment"]}]})
            assert answer.status_code == 200, answer.text
            version = answer.json()["model_version"]
            served[version] = served.get(version, 0) + 1
            if rng.random() < LABEL_SHARE:
                feedback.append({"id": rid, "label": row["label"]})
        # one request that breaks the schema: a 400, counted per version, not a 5xx
        bad = gateway.post(f"/v1/models/{MODEL}:predict",
                           json={"instances": [{"x0": "a", "x1": 0.0, "segment": "north"}]})
        assert bad.status_code == 400
    stored = httpx.post(f"{sink_url}/feedback", json=feedback, timeout=30.0)
    assert stored.status_code == 200 and stored.json() == {"stored": len(feedback)}
    return served, len(feedback)


_DOCUMENTED_SUFFIXES = ("_bucket", "_sum", "_count", "_created")


def _documented(name: str, readme: str) -> bool:
    """Whether the README names the metric ``name`` (a histogram's or counter's family)."""
    candidates = {name}
    for suffix in _DOCUMENTED_SUFFIXES:
        if name.endswith(suffix):
            base = name.removesuffix(suffix)
            candidates |= {base, f"{base}_total"}
    return any(re.search(rf"`{re.escape(c)}[`{{]", readme) for c in candidates)


def test_every_panel_and_every_alert_returns_series(tmp_path: Path, pushgateway: str,
                                                    prometheus: Any) -> None:
    began = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    folders = _train(tmp_path / "models", now)
    store = LocalStore(tmp_path / "store", create=True)
    registry = Registry(store, MODEL)
    for version, folder in folders.items():
        registry.register(folder)
        store.write_bytes(f"reference/{MODEL}/{version}.parquet",
                          (folder.parent / f"{version}.parquet").read_bytes())
    registry.promote(CHAMPION, reason="the first model", run_id="seed")
    backend = LocalRolloutBackend(tmp_path / "store" / "rollout", MODEL, "ml")
    backend.ensure(version_storage_uri(registry, CHAMPION))
    start_canary(registry, backend, WORSE, config=CONFIG.canary, notifier=NullNotifier(),
                 run_id="run-start", model_name=MODEL, reason="verdict: promote")

    sink = PayloadSink(store, labels=("no", "yes"))
    sink_server = start_app(create_app(sink, sweep_interval=0.05))
    try:
        with LocalGateway(backend, model_name=MODEL, cache_dir=tmp_path / "cache",
                          logger_url=f"{sink_server.url}/") as gateway:
            # the first request starts the champion's predictor server: scrape it then
            _, warm_labels = _serve(gateway.url, sink_server.url, 10, seed=1)
            predictor = gateway.predictors.get(gateway.loads[0]).url
            url = prometheus({"gateway": gateway.url, "predictor": predictor,
                              "sink": sink_server.url, "pushgateway": pushgateway},
                             honor={"pushgateway"})
            served, labels = _serve(gateway.url, sink_server.url, REQUESTS, seed=2)
            assert sum(served.values()) == REQUESTS and 25 <= served[WORSE] <= 35, served
            # the run at the end of the day: today's records are its current window
            midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(),
                                           tzinfo=dt.UTC)
            result = run_loop(store, sample_schema(), MODEL, now=midnight, run_id="run-1",
                              config=CONFIG, backend=backend, pushgateway_url=pushgateway)
            assert result.rollout is not None and result.rollout.action == "rollback"
            assert result.drift.status == "drift"  # the traffic is drawn after the drift
            assert result.verdict is not None  # and it retrained on it
            sent = REQUESTS + 10 + 2  # two refused requests
            _wait(url, "sum(driftloop_gateway_requests_total)", sent)
            _wait(url, 'sum(driftloop_feedback_received_total{outcome="joined"})',
                  labels + warm_labels)
            _wait(url, "count(driftloop_run_success)", 1)
            time.sleep(2.5)  # a few more scrapes: every rate has samples on both sides

            checked = _check_dashboard(url) + _check_rules(url)
            _check_names(url, checked)
            _check_values(url)
    finally:
        sink_server.stop()
        sink.close()
    assert time.monotonic() - began < 90


def _check_dashboard(url: str) -> list[str]:
    model = json.loads((MONITORING / DASHBOARD_FILE).read_text())
    values = variable_values(model)
    found = queries(model)
    assert len(found) >= 15
    empty = []
    for where, expr in found:
        promql = disarm(substitute(expr, values))
        if not query(url, promql):
            empty.append(f"{where}: {promql}")
    assert empty == [], "dashboard queries without series:\n" + "\n".join(empty)
    return [e for _, e in found]


def _check_rules(url: str) -> list[str]:
    rules = yaml.safe_load((MONITORING / RULES_FILE).read_text())["groups"][0]["rules"]
    empty = []
    for rule in rules:
        query(url, rule["expr"])  # the armed expression parses and evaluates
        assert comparisons(rule["expr"]) >= 1, rule["alert"]
        if not query(url, disarm(rule["expr"])):
            empty.append(f"{rule['alert']}: {disarm(rule['expr'])}")
    assert empty == [], "alert expressions without series:\n" + "\n".join(empty)
    # Prometheus itself loaded and evaluated every rule of the generated file
    answer = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {r["name"]: r for g in answer for r in g["rules"]}
    assert set(loaded) == {r["alert"] for r in rules}
    assert {name: r["health"] for name, r in loaded.items()} == dict.fromkeys(loaded, "ok")
    # a misspelt metric returns nothing: the check above would catch it
    live = rules[0]["expr"]
    assert query(url, disarm(live))
    assert not query(url, disarm(live.replace("driftloop_feedback_labels_total",
                                              "driftloop_feedback_label_total")))
    return [r["expr"] for r in rules]


def _check_names(url: str, expressions: list[str]) -> None:
    """Every metric any expression names has series; every series is documented."""
    named = {m for e in expressions for m in re.findall(r"\bdriftloop_\w+", e)}
    missing = [m for m in sorted(named) if not query(url, f'count({{__name__="{m}"}})')]
    assert missing == [], missing
    names = httpx.get(f"{url}/api/v1/label/__name__/values", timeout=10).json()["data"]
    held = sorted(n for n in names if n.startswith("driftloop_"))
    readme = (MONITORING / "README.md").read_text()
    undocumented = [n for n in held if not _documented(n, readme)]
    assert undocumented == [], f"not in manifests/monitoring/README.md: {undocumented}"
    assert len(held) > 40, held


def _check_values(url: str) -> None:
    """A few numbers that must make sense, beyond the series existing."""
    accuracy = {r["metric"]["model_version"]: float(r["value"][1]) for r in query(
        url, 'sum by (model_version) (driftloop_feedback_correct_total{model_name="sample"})'
             ' / sum by (model_version) (driftloop_feedback_labels_total{model_name="sample"})')}
    assert set(accuracy) == {CHAMPION, WORSE}
    assert 0 <= accuracy[WORSE] < accuracy[CHAMPION] <= 1, accuracy
    pushed = {(r["metric"]["__name__"], r["metric"].get("pipeline")): float(r["value"][1])
              for r in query(url, '{job="driftloop", __name__=~"driftloop_run_success|'
                                  'driftloop_canary_traffic_percent"}')}
    assert pushed == {("driftloop_run_success", PIPELINE): 1.0,
                      ("driftloop_canary_traffic_percent", PIPELINE): 0.0}
    codes = {(r["metric"]["model_version"], r["metric"]["code"]): float(r["value"][1])
             for r in query(url, "sum by (model_version, code) "
                                 "(driftloop_gateway_requests_total)")}
    assert sum(v for (_, c), v in codes.items() if c == "400") == 2
    assert not any(c.startswith("5") for _, c in codes)
