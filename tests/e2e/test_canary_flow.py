"""The whole local canary flow over real HTTP on 127.0.0.1.

A champion trained before the concept drift serves traffic drawn after it. A challenger is
started as a canary on the local backend; the local gateway splits real requests between
two real predictor servers; each request/response pair is posted to the payload sink as
KServe's logger would (binary CloudEvents) and a share of the requests get a feedback label
through the sink's ``POST /feedback``. Each simulated day then runs the in-process loop
with the backend: ingest from the store, judge and step the canary, no retraining while it
is in flight.

* a good challenger (trained on the post-drift concept) holds on a day with too few
  labels, then goes 10 → 50 → 100 and becomes the champion;
* a deliberately worse one (trained on flipped labels) is rolled back: all traffic is on
  the champion again and every feedback label posted is in the store.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from driftloop.config import CanaryConfig, Config, DriftConfig, TrainConfig
from driftloop.data.storage import LocalStore
from driftloop.decide.drift import build_reference_profile
from driftloop.demo.sample import make_rows, sample_schema
from driftloop.models.registry import Registry
from driftloop.models.train import save_model_artifact, train_model
from driftloop.notify import Delivery, Event, Notifier
from driftloop.rollout import version_storage_uri
from driftloop.rollout.local import LocalGateway, LocalRolloutBackend
from driftloop.rollout.progressive import start_canary
from driftloop.serving.server import RunningServer, start_app
from driftloop.serving.sink import REQUEST_TYPE, RESPONSE_TYPE, PayloadSink, create_app
from driftloop.steps.loop import LoopResult, run_loop

MODEL = "sample"
CHAMPION, GOOD, WORSE = "v-champion", "v-good", "v-worse"
FIRST_DAY = dt.date(2026, 2, 1)
TRAINED_AT = dt.datetime(2026, 1, 25, tzinfo=dt.UTC)
LABEL_SHARE = 0.7
CONFIG = Config(canary=CanaryConfig(min_labelled=15))
#: kserve 0.20 answers with ORJSONResponse, which FastAPI deprecates on every request.
pytestmark = pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning")


class Recording(Notifier):
    """Keeps every event (the loop's notifier)."""

    backend = "recording"

    def __init__(self) -> None:
        self.events: list[Event] = []

    def send(self, event: Event) -> Delivery:
        self.events.append(event)
        return Delivery(self.backend, True)


class SimClock:
    """The sink's clock: real seconds elapsed, on the simulated day."""

    def __init__(self) -> None:
        self.day = FIRST_DAY
        self._start = time.time()

    def __call__(self) -> float:
        noon = dt.datetime.combine(self.day, dt.time(10), tzinfo=dt.UTC).timestamp()
        return noon + (time.time() - self._start)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three trained model folders (with drift profiles), trained once for the module."""
    base = tmp_path_factory.mktemp("canary-models")
    schema = sample_schema()
    rng = np.random.default_rng(5)
    before = make_rows(800, rng, drifted=False)
    after = make_rows(800, rng, drifted=True)
    flipped = after.assign(label=np.where(after["label"] == "yes", "no", "yes"))
    folders = {}
    for version, rows in ((CHAMPION, before), (GOOD, after), (WORSE, flipped)):
        stamps = [pd.Timestamp(TRAINED_AT) - pd.Timedelta(minutes=i) for i in range(len(rows))]
        frame = rows.assign(id=[f"{version}-{i}" for i in range(len(rows))], timestamp=stamps)
        result = train_model(frame, schema, TrainConfig(max_iter=40, seed=7), model_name=MODEL,
                             version=version, now=TRAINED_AT)
        folder = save_model_artifact(result, base / version)
        frame.to_parquet(base / f"{version}.parquet", index=False)  # its training set
        build_reference_profile(frame, schema, DriftConfig(), model_version=version,
                                model=result.model).save(folder)
        folders[version] = folder
    return folders


@dataclass
class Flow:
    """A store with the champion serving, the gateway, the sink and the loop's notifier."""

    store: LocalStore
    registry: Registry
    backend: LocalRolloutBackend
    gateway: LocalGateway
    sink_url: str
    clock: SimClock
    notifier: Recording
    labels_posted: int = 0

    def serve_day(self, day: dt.date, n: int, seed: int) -> Counter[str]:
        """Send ``n`` requests of ``day`` through the gateway, log them, post feedback."""
        self.clock.day = day
        rng = np.random.default_rng(seed)
        rows = make_rows(n, rng, drifted=True)
        feedback = []
        served: Counter[str] = Counter()
        with httpx.Client(base_url=self.gateway.url, timeout=30.0) as gateway, \
                httpx.Client(base_url=self.sink_url, timeout=30.0) as sink:
            for i, row in enumerate(rows.to_dict(orient="records")):
                rid = f"{day.isoformat()}-{seed}-{i:04d}"
                request = {"instances": [{"id": rid, "x0": row["x0"], "x1": row["x1"],
                                          "segment": row["segment"]}]}
                answer = gateway.post(f"/v1/models/{MODEL}:predict", json=request)
                assert answer.status_code == 200, answer.text
                served[answer.json()["model_version"]] += 1
                stamp = f"{day.isoformat()}T10:{i // 60 % 60:02d}:{i % 60:02d}Z"
                ce_id = uuid.UUID(int=seed * 100_000 + i).hex
                for ce_type, body in ((REQUEST_TYPE, request), (RESPONSE_TYPE, answer.json())):
                    logged = sink.post("/", content=json.dumps(body),
                                       headers=_ce_headers(ce_id, ce_type, stamp))
                    assert logged.status_code == 200, logged.text
                if rng.random() < LABEL_SHARE:
                    feedback.append({"id": rid, "label": row["label"],
                                     "timestamp": f"{day.isoformat()}T12:00:00Z"})
            stored = sink.post("/feedback", json=feedback)
            assert stored.status_code == 200 and stored.json() == {"stored": len(feedback)}
        self.labels_posted += len(feedback)
        return served

    def run(self, day: dt.date) -> LoopResult:
        """One in-process loop run at the end of ``day`` with the local backend."""
        now = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        return run_loop(self.store, sample_schema(), MODEL, now=now, run_id=f"run-{day}",
                        config=CONFIG, notifier=self.notifier, backend=self.backend)


def _ce_headers(ce_id: str, ce_type: str, stamp: str) -> dict[str, str]:
    """The headers KServe's logger sends (binary content mode, pkg/logger/worker.go)."""
    return {"Ce-Id": ce_id, "Ce-Type": ce_type, "Ce-Source": "http://localhost:9081/",
            "Ce-Specversion": "1.0", "Ce-Time": stamp, "Ce-Inferenceservicename": MODEL,
            "Ce-Namespace": "ml", "Ce-Component": "predictor", "Ce-Endpoint": "default",
            "Ce-Metadata": "{}", "Content-Type": "application/json"}


@pytest.fixture
def flow(tmp_path: Path, artifacts: dict[str, Path]) -> Iterator[Flow]:
    store = LocalStore(tmp_path / "store", create=True)
    registry = Registry(store, MODEL)
    for version, folder in artifacts.items():
        registry.register(folder)
        store.write_bytes(f"reference/{MODEL}/{version}.parquet",
                          (folder.parent / f"{version}.parquet").read_bytes())
    registry.promote(CHAMPION, reason="the first model", run_id="seed")
    backend = LocalRolloutBackend(tmp_path / "store" / "rollout", MODEL, "ml")
    backend.ensure(version_storage_uri(registry, CHAMPION))
    clock = SimClock()
    sink = PayloadSink(store, clock=clock, labels=("no", "yes"))
    server: RunningServer = start_app(create_app(sink, sweep_interval=0.05))
    try:
        with LocalGateway(backend, model_name=MODEL, cache_dir=tmp_path / "cache") as gateway:
            yield Flow(store, registry, backend, gateway, server.url, clock, Recording())
    finally:
        server.stop()
        sink.close()


def _start(flow: Flow, version: str) -> None:
    step = start_canary(flow.registry, flow.backend, version, config=CONFIG.canary,
                        notifier=flow.notifier, run_id="run-start", model_name=MODEL,
                        reason="verdict: promote")
    assert step.action == "start" and step.to_percent == 10


def _feedback_lines(store: LocalStore) -> list[dict[str, Any]]:
    return [json.loads(line) for key in store.list("feedback")
            for line in store.read_text(key).splitlines() if line.strip()]


def _assert_blocked(result: LoopResult, version: str) -> None:
    assert not result.decision.retrain and result.train is None
    assert f"canary {version} is in progress" in result.decision.reasons[0]


def test_a_good_challenger_goes_10_50_100_and_becomes_champion(flow: Flow):
    _start(flow, GOOD)
    days = [FIRST_DAY + dt.timedelta(days=d) for d in range(3)]

    served = flow.serve_day(days[0], 60, seed=1)  # too few labels on the canary
    assert served == {CHAMPION: 54, GOOD: 6}
    held = flow.run(days[0])
    assert held.rollout is not None and held.rollout.action == "hold"
    assert "too few to judge" in held.rollout.reasons[0]
    assert flow.backend.get().canary_traffic_percent == 10
    _assert_blocked(held, GOOD)

    assert flow.serve_day(days[1], 300, seed=2) == {CHAMPION: 270, GOOD: 30}
    first = flow.run(days[1])
    assert first.rollout is not None and first.rollout.action == "advance"
    assert (first.rollout.from_percent, first.rollout.to_percent) == (10, 50)
    analysis = first.rollout.analysis
    assert analysis is not None and analysis.canary.labelled >= 15
    assert analysis.canary.accuracy is not None and analysis.champion.accuracy is not None
    assert analysis.canary.accuracy > analysis.champion.accuracy + 0.2
    _assert_blocked(first, GOOD)

    assert flow.serve_day(days[2], 300, seed=3) == {CHAMPION: 150, GOOD: 150}
    done = flow.run(days[2])
    assert done.rollout is not None and done.rollout.completes
    assert (done.rollout.from_percent, done.rollout.to_percent) == (50, 100)
    _assert_blocked(done, GOOD)

    aliases = flow.registry.aliases()
    assert (aliases.champion, aliases.previous, aliases.canary) == (GOOD, CHAMPION, None)
    moves = {(c.alias, c.to_version): c.run_id for c in aliases.history}
    assert moves[("canary", GOOD)] == "run-start"
    assert moves[("champion", GOOD)] == moves[("previous", CHAMPION)] == f"run-{days[2]}"
    assert moves[("canary", None)] == f"run-{days[2]}"
    steps = [json.loads(flow.store.read_text(f"runs/run-{d}/rollout.json"))["action"]
             for d in days]
    assert steps == ["hold", "advance", "advance"]
    assert [e.kind for e in flow.notifier.events] == ["model_update", "model_update"]
    with httpx.Client(base_url=flow.gateway.url, timeout=30.0) as client:
        versions = Counter(client.post(f"/v1/models/{MODEL}:predict", json={"instances": [
            {"x0": 1.0, "x1": 0.5, "segment": "north"}]}).json()["model_version"]
            for _ in range(20))
    assert versions == {GOOD: 20}
    assert len(_feedback_lines(flow.store)) == flow.labels_posted


def test_a_worse_challenger_is_rolled_back_and_no_feedback_is_lost(flow: Flow):
    _start(flow, WORSE)
    day = FIRST_DAY
    assert flow.serve_day(day, 300, seed=4) == {CHAMPION: 270, WORSE: 30}
    labels_first_day = flow.labels_posted
    result = flow.run(day)
    # every label of the day was joined to its logged record by ingest
    assert int(result.records["label"].notna().sum()) == labels_first_day > 150
    step = result.rollout
    assert step is not None and step.action == "rollback"
    assert (step.from_percent, step.to_percent) == (10, 0)
    assert step.analysis is not None and step.analysis.decision == "rollback"
    assert "clearly worse" in step.reasons[0]
    # rolled back: nothing is in flight any more, so the rules decide this very run
    assert not any("in progress" in r for r in result.decision.reasons)
    assert result.decision.retrain and "drift" in result.decision.fired
    assert result.verdict is not None and result.verdict.decision != "promote"

    state = flow.backend.get()
    assert not state.canary_in_progress
    assert state.spec_storage_uri == version_storage_uri(flow.registry, CHAMPION)
    aliases = flow.registry.aliases()
    assert (aliases.champion, aliases.canary) == (CHAMPION, None)
    assert aliases.history[-1].run_id == f"run-{day}"
    assert "rollback of v-worse" in aliases.history[-1].reason
    kinds = [e.kind for e in flow.notifier.events]
    assert kinds == ["model_update", "rollback"]
    assert flow.notifier.events[-1].details["version"] == WORSE

    # all traffic on the champion again, through the gateway
    assert flow.serve_day(day + dt.timedelta(days=1), 50, seed=5) == {CHAMPION: 50}
    # every label posted (before and after the rollback) is in the store
    lines = _feedback_lines(flow.store)
    assert len(lines) == flow.labels_posted > labels_first_day
    assert len({x["id"] for x in lines}) == len(lines)
