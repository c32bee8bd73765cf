"""Serving fixtures: a real registered model, a predictor server and sink servers on 127.0.0.1.

Every server is started by a fixture and stopped by it, also when a test fails.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from driftloop.config import TrainConfig
from driftloop.data.schema import Schema
from driftloop.data.storage import LocalStore
from driftloop.demo.sample import sample_schema, write_sample_store
from driftloop.models.registry import Registry
from driftloop.models.train import save_model_artifact, train_model
from driftloop.serving.predictor import DriftloopModel
from driftloop.serving.server import RunningServer, serve, start_app
from driftloop.serving.sink import create_app
from driftloop.serving.sink_pairing import PayloadSink

MODEL = "sample"


@dataclass(frozen=True)
class Registered:
    """A trained model registered in a sample store."""

    store_root: Path
    folder: Path
    version: str
    model: Any
    schema: Schema
    first_day: dt.date


@pytest.fixture(scope="session")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Registered:
    root = tmp_path_factory.mktemp("serving") / "store"
    info = write_sample_store(root, days=1, rows_per_day=50, reference_rows=600, seed=7)
    schema = sample_schema()
    reference = pd.read_parquet(root / f"reference/{MODEL}/seed.parquet")
    result = train_model(reference, schema, TrainConfig(max_iter=40, seed=7), model_name=MODEL,
                         now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    folder = save_model_artifact(result, root.parent / "artifact")
    version = Registry(LocalStore(root), MODEL).register(folder)
    return Registered(root, folder, version, result.model, schema, info.first_day)


@pytest.fixture(scope="module")
def predictor(registered: Registered) -> Iterator[RunningServer]:
    model = DriftloopModel(MODEL, store_uri=str(registered.store_root),
                           version=registered.version)
    with serve([model]) as server:
        yield server


@pytest.fixture()
def client(predictor: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=predictor.url, timeout=10.0) as c:
        yield c


SinkFactory = Callable[..., tuple[PayloadSink, RunningServer]]
#: The sinks under test live on 2026-01-01 from 10:00 UTC (their clock runs at real speed),
#: so every partition they write is dt=2026-01-01.
SINK_EPOCH = dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.UTC).timestamp()
_OFFSET = time.time() - SINK_EPOCH


def sink_clock() -> float:
    """The sinks' clock: real time moved back to 2026-01-01 10:00 UTC."""
    return time.time() - _OFFSET


@pytest.fixture()
def start_sink() -> Iterator[SinkFactory]:
    """Start sink servers on 127.0.0.1; all are stopped at the end of the test."""
    running: list[RunningServer] = []

    def start(store: LocalStore, *, max_body_bytes: int = 1 << 20,
              **kwargs: Any) -> tuple[PayloadSink, RunningServer]:
        kwargs.setdefault("clock", sink_clock)
        sink = PayloadSink(store, **kwargs)
        server = start_app(create_app(sink, max_body_bytes=max_body_bytes,
                                      sweep_interval=0.05))
        running.append(server)
        return sink, server

    yield start
    for server in running:
        if server.running:
            server.stop()
