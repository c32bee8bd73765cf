"""The A/B steps over a local store: start, status, stop, the pipeline step and the CLI."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_ab import records

from driftloop.cli import main
from driftloop.config import ABConfig, Config
from driftloop.data.storage import LocalStore
from driftloop.decide.ab_assign import ABTest, Variant, state_key
from driftloop.errors import DriftloopError
from driftloop.models.registry import Registry
from driftloop.notify import Delivery, Event, Notifier
from driftloop.steps.ab import ABOutcome, ab_status, ab_step, start_ab, stop_ab

MODEL = "m"
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
NOW = START + dt.timedelta(days=3)


class Recorder(Notifier):
    backend = "recorder"

    def __init__(self) -> None:
        self.events: list[Event] = []

    def send(self, event: Event) -> Delivery:
        self.events.append(event)
        return Delivery(self.backend, True, None)


class SplitBackend:
    """The rollout side's A/B interface: start_ab / stop_ab, recording the calls."""

    def __init__(self, refuse: bool = False) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.uris: dict[str, str] = {}
        self.refuse = refuse

    def start_ab(self, test: ABTest, storage_uris: dict[str, str] | None = None) -> None:
        if self.refuse:
            raise DriftloopError("no InferenceService to split")
        self.calls.append(("start", test.test_id, test.state))
        self.uris = dict(storage_uris or {})

    def stop_ab(self, test: ABTest) -> None:
        self.calls.append(("stop", test.test_id, test.state))


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    s = LocalStore(tmp_path / "store", create=True)
    reg = Registry(s, MODEL)
    for v in ("v1", "v2"):
        folder = tmp_path / "artifacts" / v
        folder.mkdir(parents=True)
        data = f"model {v}".encode()
        (folder / "model.joblib").write_bytes(data)
        (folder / "metadata.json").write_text(json.dumps(
            {"version": v, "model_sha256": hashlib.sha256(data).hexdigest()}))
        reg.register(folder)
    reg.promote("v1", reason="first")
    return s


def _variants() -> list[Variant]:
    return [Variant("a", "champion", 0.5), Variant("b", "v2", 0.5)]


def _records(tmp_path: Path, acc: dict[str, float]) -> Path:
    path = tmp_path / "records.parquet"
    frame: pd.DataFrame = records(acc).assign(
        timestamp=lambda f: f["timestamp"].map(lambda t: t.isoformat()))
    frame.to_parquet(path)
    return path


def test_start_records_the_test_configures_the_backend_and_refuses_a_second(
        store: LocalStore) -> None:
    backend = SplitBackend()
    _, note = start_ab(store, MODEL, _variants(), test_id="t1", now=START, backend=backend)
    assert store.exists(state_key(MODEL, "t1")) and "configured" in note
    assert backend.calls == [("start", "t1", "running")]
    # the pinned variant is served from its version folder, the alias by the service
    assert set(backend.uris) == {"b"} and backend.uris["b"].endswith("models/m/v2")
    with pytest.raises(DriftloopError, match="t1 is running"):
        start_ab(store, MODEL, _variants(), test_id="t2", now=START)
    stop_ab(store, MODEL, "t1")
    with pytest.raises(DriftloopError, match=r"ab\.variants\[b\]\.target"):
        start_ab(store, MODEL, [Variant("a", "v1", 0.5), Variant("b", "v9", 0.5)],
                 test_id="t3", now=START)
    with pytest.raises(DriftloopError, match="no InferenceService"):
        start_ab(store, MODEL, _variants(), test_id="t5", now=START,
                 backend=SplitBackend(refuse=True))
    assert not store.exists(state_key(MODEL, "t5"))  # refused: nothing left running
    _, note = start_ab(store, MODEL, _variants(), test_id="t4", now=START)
    assert "recorded only" in note  # no backend: says the request path must apply it


def test_the_step_declares_a_winner_stops_the_test_and_asks_for_approval(
        store: LocalStore, tmp_path: Path) -> None:
    backend = SplitBackend()
    start_ab(store, MODEL, _variants(), test_id="t1", now=START, backend=backend)
    path = _records(tmp_path, {"a": 0.70, "b": 0.85})
    notifier = Recorder()
    out = ab_step(store, MODEL, path, run_id="r1", now=NOW.isoformat(), backend=backend,
                  notifier=notifier)
    (analysis,) = out.analyses
    assert analysis.winner == "b" and out.stopped == ["t1"] and out.approval == ["v2"]
    assert ("stop", "t1", "decided") in backend.calls
    assert Registry(store, MODEL).aliases().champion == "v1"  # nothing moved unapproved
    assert any("needs approval" in e.title for e in notifier.events)
    assert store.exists("runs/r1/ab.json") and store.exists("runs/r1/ab.md")
    assert ABOutcome.from_json(store.read_text("runs/r1/ab.json")) == out
    status = ab_status(store, MODEL)
    assert status[0]["test"].state == "decided" and status[0]["latest"].winner == "b"
    # a re-run of the run changes nothing; a later run has no running test
    assert ab_step(store, MODEL, path, run_id="r1", now=NOW.isoformat()) == out
    assert ab_step(store, MODEL, path, run_id="r2", now=NOW.isoformat()).analyses == []


def test_auto_promotion_moves_the_champion_with_a_notification(
        store: LocalStore, tmp_path: Path) -> None:
    start_ab(store, MODEL, _variants(), test_id="t1", now=START)
    notifier = Recorder()
    out = ab_step(store, MODEL, _records(tmp_path, {"a": 0.70, "b": 0.85}), run_id="r1",
                  now=NOW.isoformat(), notifier=notifier,
                  config=Config(ab=ABConfig(auto_promote=True)))
    assert out.promoted == ["v2"]
    assert Registry(store, MODEL).aliases().champion == "v2"
    assert [e.kind for e in notifier.events] == ["model_update"]


def test_an_undecided_test_keeps_running(store: LocalStore, tmp_path: Path) -> None:
    start_ab(store, MODEL, _variants(), test_id="t1", now=START)
    out = ab_step(store, MODEL, _records(tmp_path, {"a": 0.8, "b": 0.8}), run_id="r1",
                  now=NOW.isoformat(), notifier=Recorder())
    assert out.stopped == [] and out.analyses[0].decision == "continue"
    assert ab_status(store, MODEL)[0]["test"].state == "running"


def test_cli_start_status_stop(store: LocalStore, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from driftloop.rollout import version_storage_uri
    from driftloop.rollout.local import LocalRolloutBackend

    root = str(store.root)
    common = ["--store", root, "--model", MODEL, "--state", str(tmp_path / "rollout")]
    # a served model for the split to stand in front of (the local backend's service)
    with LocalRolloutBackend(tmp_path / "rollout", MODEL, "default") as service:
        service.ensure(version_storage_uri(Registry(store, MODEL), "v1"))

    def run(*argv: str) -> Any:
        code = main(["ab", *argv, *common])
        out, err = capsys.readouterr()
        return code, (json.loads(out) if code == 0 else err)

    code, out = run("start", "--test-id", "t1", "--variant", "a=champion",
                    "--variant", "b=v2:0.5")
    assert code == 2 and "weight to every variant or to none" in out
    code, out = run("start", "--test-id", "t1", "--variant", "a=champion:0.8",
                    "--variant", "b=v2:0.2", "--key-header", "x-session")
    assert code == 0 and out["test"]["variants"][1] == {"name": "b", "target": "v2",
                                                        "weight": 0.2}
    assert out["test"]["key_header"] == "x-session"
    code, out = run("status")
    assert code == 0 and out[0]["test"]["state"] == "running" and out[0]["latest"] is None
    code, out = run("stop")
    assert code == 2 and "--test-id is required" in out
    code, out = run("stop", "--test-id", "t1")
    assert code == 0 and out["test"]["state"] == "stopped"


def test_the_report_shows_every_test_state_and_decision(store: LocalStore,
                                                        tmp_path: Path) -> None:
    from driftloop.demo.report import ab_html
    from driftloop.steps.ab import ab_history

    start_ab(store, MODEL, _variants(), test_id="t1", now=START)
    even = _records(tmp_path, {"a": 0.8, "b": 0.8})
    ab_step(store, MODEL, even, run_id="r1", now=(START + dt.timedelta(days=1)).isoformat(),
            notifier=Recorder())
    ab_step(store, MODEL, _records(tmp_path, {"a": 0.70, "b": 0.85}), run_id="r2",
            now=NOW.isoformat(), notifier=Recorder())
    (history,) = ab_history(store, MODEL)
    assert [run for run, _ in history.decisions] == ["r1", "r2"]
    text = "".join(ab_html(ab_history(store, MODEL)))
    assert "t1: decided" in text and "winner: b" in text and "needs_approval" in text
    assert text.count("<tr>") == 3  # header + one row per run
    diff = history.decisions[-1][1].comparisons[0]
    assert f"[{diff.ci_low:+.3f}, {diff.ci_high:+.3f}]" in text


def test_the_in_process_ab_pipeline_reads_the_logged_columns_and_stops_the_split(
        store: LocalStore, tmp_path: Path) -> None:
    # logged records as the sink writes them (ab_* columns), feedback joined by ingest,
    # the real local backend's split started and stopped
    from driftloop.data.schema import schema_from_dict
    from driftloop.rollout import version_storage_uri
    from driftloop.rollout.local import LocalRolloutBackend
    from driftloop.steps.loop import run_ab_analysis

    rng = np.random.default_rng(7)
    for day in range(3):
        date = (START + dt.timedelta(days=day)).date().isoformat()
        requests, feedback = [], []
        for u in range(300):
            variant = "b" if u % 2 else "a"
            for j in range(3):
                rid = f"{date}-{u}-{j}"
                ts = START + dt.timedelta(days=day, hours=1 + j, seconds=u)
                label = str(rng.choice(["no", "yes"]))
                right = rng.random() < (0.9 if variant == "b" else 0.7)
                requests.append({"id": rid, "timestamp": ts.isoformat(), "x0": 0.1,
                                 "x1": 0.2, "segment": "north",
                                 "prediction": label if right else
                                 ("no" if label == "yes" else "yes"),
                                 "model_version": "v2" if variant == "b" else "v1",
                                 "ab_test": "t1", "ab_variant": variant, "ab_keyed": True,
                                 "ab_key": f"user-{u}"})
                feedback.append({"id": rid, "label": label,
                                 "timestamp": (ts + dt.timedelta(minutes=5)).isoformat()})
        store.write_text(f"requests/dt={date}/part-0.jsonl",
                         "".join(json.dumps(r) + "\n" for r in requests))
        store.write_text(f"feedback/dt={date}/part-0.jsonl",
                         "".join(json.dumps(r) + "\n" for r in feedback))
    with LocalRolloutBackend(tmp_path / "rollout", MODEL, "default") as backend:
        backend.ensure(version_storage_uri(Registry(store, MODEL), "v1"))
        start_ab(store, MODEL, _variants(), test_id="t1", now=START, backend=backend)
        split = Path(backend.ab_path)
        assert split.exists()
        schema = schema_from_dict({"name": MODEL, "labels": ["no", "yes"], "columns": [
            {"name": "x0", "kind": "numeric", "dtype": "float"},
            {"name": "x1", "kind": "numeric", "dtype": "float"},
            {"name": "segment", "kind": "categorical", "dtype": "string"}]}, "test")
        out = run_ab_analysis(store, schema, MODEL, now=NOW, run_id="r1",
                              backend=backend)
    (analysis,) = out.analyses
    by = {s.name: s for s in analysis.variants}
    assert by["a"].labelled == by["b"].labelled == 150 * 3 * 3
    assert by["b"].users == 150 and by["b"].versions == ["v2"]
    assert analysis.winner == "b" and out.stopped == ["t1"]
    assert not split.exists()  # the split is gone from the request path
    assert Registry(store, MODEL).aliases().champion == "v1"  # approval, not promotion
