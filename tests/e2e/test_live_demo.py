"""The real-data demo end to end: tweets served over HTTP, feedback, the loop per day.

Traffic goes through the local gateway to real predictor servers on 127.0.0.1; the
gateway logs each pair to the real payload sink; the store is then read by the loop.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from driftloop.cli import main
from driftloop.data.storage import LocalStore
from driftloop.demo.live import run_live_demo
from driftloop.demo.traffic import TrafficConfig

DATA = Path(__file__).resolve().parents[2] / "data"
#: kserve 0.20 answers with ORJSONResponse, which FastAPI deprecates on every request.
pytestmark = pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning")


def _lines(store: LocalStore, prefix: str) -> list[dict]:
    return [json.loads(line) for key in store.list(prefix)
            for line in store.read_text(key).splitlines() if line.strip()]


def test_the_tweets_demo_finds_the_topic_change_and_keeps_every_record(tmp_path: Path):
    out = tmp_path / "demo"
    printed = io.StringIO()
    result = run_live_demo(out, "tweets", data_dir=DATA, in_process=True, days=4,
                           rows_per_day=300, traffic=TrafficConfig(seed=4), seed=4,
                           stream=printed)
    store = LocalStore(out / "store")
    # every prediction was logged by the gateway and stored by the sink, none twice
    records = _lines(store, "requests")
    assert result.log_failures == 0
    assert sorted(r["id"] for r in records) == sorted(result.served["id"])
    assert all(r["logged"] == "pair" and r["model_version"] for r in records)
    # every feedback label the users posted is in the store, on the day it was posted
    feedback = _lines(store, "feedback")
    assert len(feedback) == sum(r.labels for r in result.rows)
    assert 0.15 < len(feedback) / len(records) < 0.31  # 30 % drawn, some still in flight
    days = result.rows[1:]
    assert [r.regime for r in days] == ["airline", "airline", "apple", "apple"]
    # airline traffic is what the champion knows; the apple tweets drift at once
    assert [r.drift for r in days[:2]] == ["no_drift", "no_drift"]
    assert days[2].drift == "drift" and "drift" in days[2].fired and days[2].retrain
    first = result.rows[0].champion
    champion_acc = [r.accuracy[first][1] for r in days]
    assert min(champion_acc[:2]) > max(champion_acc[2:]) + 0.1
    text = printed.getvalue()
    assert "| day | regime | requests |" in text and text.count("\n| ") >= 5
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2


def test_make_demo_runs_the_pipeline_through_kfp_local(tmp_path: Path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--scenario", "tweets", "--out", str(out), "--data", str(DATA),
                 "--days", "1"]) == 0
    text = capsys.readouterr().out
    assert "pipeline runs through kfp.local" in text
    store = LocalStore(out / "store")
    runs = sorted(p.name for p in (out / "store" / "runs").iterdir())
    assert len(runs) == 2 and all(r.startswith("continuous-training") for r in runs)
    status = [json.loads(store.read_text(f"runs/{r}/status.json"))["state"] for r in runs]
    assert status == ["SUCCEEDED", "SUCCEEDED"]
    assert len(_lines(store, "requests")) == 1000
    assert (out / "report.html").exists() and (out / "served.csv").exists()
