"""The review queue round trip: export → labels through the sink's POST /feedback → training.

A champion trained before a concept change scores a day of unlabelled requests after it;
``driftloop review export`` writes the queue (JSONL); a reviewer's labels for the queued
ids go to the payload sink over real HTTP on 127.0.0.1 with their ``source``; the next
run's challenger trains on them (those not held out for the gate, which judges on the
rest), and ``driftloop review stats`` counts them as returned.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from driftloop.cli import main
from driftloop.config import Config, DriftConfig, TrainConfig
from driftloop.data.schema import write_schema
from driftloop.data.storage import LocalStore
from driftloop.decide.drift import build_reference_profile
from driftloop.demo.sample import make_rows, sample_schema
from driftloop.models.registry import Registry
from driftloop.models.train import save_model_artifact, train_model
from driftloop.serving.server import RunningServer, start_app
from driftloop.serving.sink import PayloadSink, create_app
from driftloop.steps.loop import run_loop

MODEL = "sample"
DAY = dt.date(2026, 2, 1)
TRAINED_AT = dt.datetime(2026, 1, 25, tzinfo=dt.UTC)
pytestmark = pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[LocalStore, Path, pd.DataFrame]]:
    schema = sample_schema()
    store = LocalStore(tmp_path / "store", create=True)
    rng = np.random.default_rng(11)
    before = make_rows(600, rng, drifted=False)
    before = before.assign(id=[f"seed-{i}" for i in range(len(before))],
                           timestamp=[pd.Timestamp(TRAINED_AT) - pd.Timedelta(minutes=i)
                                      for i in range(len(before))])
    result = train_model(before, schema, TrainConfig(max_iter=30, seed=3), model_name=MODEL,
                         version="v-champion", now=TRAINED_AT)
    folder = save_model_artifact(result, tmp_path / "v-champion")
    build_reference_profile(before, schema, DriftConfig(), model_version="v-champion",
                            model=result.model).save(folder)
    registry = Registry(store, MODEL)
    registry.register(folder)
    store.write_bytes(f"reference/{MODEL}/v-champion.parquet", before.to_parquet(index=False))
    registry.promote("v-champion", reason="the first model", run_id="seed")
    # a day of unlabelled requests after the change (a batch drop: no served prediction)
    after = make_rows(800, rng, drifted=True)
    after = after.assign(id=[f"req-{i:04d}" for i in range(len(after))],
                         timestamp=[f"{DAY.isoformat()}T{8 + i // 100:02d}:{i % 60:02d}:00Z"
                                    for i in range(len(after))])
    lines = "".join(json.dumps({k: v for k, v in r.items() if k != "label"}) + "\n"
                    for r in after.to_dict(orient="records"))
    store.write_text(f"requests/dt={DAY.isoformat()}/batch.jsonl", lines)
    schema_path = tmp_path / "schema.json"
    write_schema(schema, schema_path)
    yield store, schema_path, after.set_index("id")


def test_review_export_round_trips_through_feedback_into_the_next_training_set(
        store, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    store_, schema_path, truth = store
    common = ["--store", str(store_.root), "--schema", str(schema_path), "--model", MODEL]
    out = tmp_path / "queue.jsonl"
    now = DAY.isoformat()  # the end of the day of requests
    assert main(["review", "export", *common, "--now", now, "--size", "220",
                 "--out", str(out)]) == 0
    stats = json.loads(capsys.readouterr().out)
    queue = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(queue) == 220 == stats["review"]["queued"]
    assert {"id", "x0", "x1", "segment", "prediction", "confidence", "choices"} <= set(queue[0])
    # the least certain first, and every slice is asked
    margins = [q["margin"] for q in queue]
    assert np.median(margins[:30]) < 0.15 and np.median(margins[:30]) < np.median(margins)
    assert {q["segment"] for q in queue} == {"north", "south", "east", "west"}
    # the reviewer labels every queued id through the sink over HTTP
    label_day = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time(9), tzinfo=dt.UTC)
    sink = PayloadSink(store_, clock=lambda: label_day.timestamp(), labels=("no", "yes"))
    server: RunningServer = start_app(create_app(sink, sweep_interval=0.05))
    try:
        body = [{"id": q["id"], "label": truth.loc[q["id"], "label"], "source": "reviewer-1"}
                for q in queue]
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            answer = client.post("/feedback", json=body)
        assert answer.status_code == 200 and answer.json() == {"stored": 220}
    finally:
        server.stop()
        sink.close()
    # the next run's challenger trains on the reviewed labels (the gate judges on the rest)
    result = run_loop(store_, sample_schema(), MODEL,
                      now=dt.datetime.combine(DAY + dt.timedelta(days=2), dt.time(),
                                              tzinfo=dt.UTC),
                      run_id="run-next", config=Config(), force=True)
    assert result.train is not None, result.decision.reasons
    training = pd.read_parquet(store_.root / f"reference/{MODEL}/{result.train.version}.parquet")
    ids = {q["id"] for q in queue}
    trained = training.loc[training["id"].isin(ids)].set_index("id")
    assert len(trained) >= 0.5 * len(ids)
    assert (trained["label"] == truth.loc[trained.index, "label"]).all()
    assert (trained["label_source"] == "reviewer-1").all()
    # the training summary carries the curation numbers (one source and no logged
    # prediction: nothing to compare its labels with, so it is not tested)
    recorded = json.loads(store_.read_text("runs/run-next/train.json"))
    quality = recorded["feedback_quality"]
    assert quality["excluded_sources"] == [] and quality["sources"] == []
    assert quality["rows_out"] == recorded["train_rows"] and "near-duplicates" in quality["note"]
    # stats after the labels came (before the next run's own queue): all came back
    assert main(["review", "stats", *common, "--now",
                 f"{(DAY + dt.timedelta(days=1)).isoformat()}T12:00:00Z"]) == 0
    back = json.loads(capsys.readouterr().out)["review"]
    assert (back["returned"], back["returned_of"]) == (220, 220)
