"""The step functions behind the KFP components, called directly (no kfp involved)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftloop import steps
from driftloop.clock import logical_time
from driftloop.config import Config
from driftloop.data.storage import open_store
from driftloop.demo.sample import sample_schema, write_sample_store
from driftloop.errors import ConfigError, DriftloopError
from driftloop.models.registry import Registry, sha256_file
from driftloop.notify import NotificationError
from driftloop.steps.common import pipeline_config, run_key
from driftloop.steps.evaluate import classification_curves
from driftloop.steps.ingest import run_ingest
from driftloop.steps.records import list_runs, read_run

MODEL = "sample"


class Receiver:
    """A webhook on 127.0.0.1 that records JSON bodies and answers with ``status``."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.events.append(json.loads(body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def test_the_step_functions_import_no_kfp():
    code = ("import sys, driftloop.steps\n"
            "assert not [m for m in sys.modules if m == 'kfp' or m.startswith('kfp.')]")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


# --- small pure helpers ---------------------------------------------------------------------


def test_run_key_keeps_local_names_and_makes_display_names_path_safe():
    local = "continuous-training-2026-01-02-10-00-00-123456"
    assert run_key(local) == local
    assert run_key("Run of continuous-training (ab12)") == "Run-of-continuous-training-ab12"
    assert run_key("../../etc") == "etc"
    with pytest.raises(DriftloopError, match="run id"):
        run_key(" / ")


def test_run_key_maps_a_kfp_local_loop_iteration_to_its_run():
    # kfp.local resolves the job-name placeholder inside a ParallelFor to the iteration's
    # DAG name; those tasks must record into the run's own folder
    local = "continuous-training-2026-01-02-10-00-00-123456"
    assert run_key(f"{local}/for-loop-4-iteration-0") == local
    assert run_key(f"{local}/for-loop-2-iteration-11/for-loop-3-iteration-1") == local
    assert run_key("a/b-iteration-x") == "a-b-iteration-x"  # not an iteration: kept


def test_logical_time_reads_dates_as_the_end_of_the_day_in_utc():
    clock = dt.datetime(2026, 3, 4, 5, 6, tzinfo=dt.UTC)
    assert logical_time("", clock=clock) == clock
    # a bare date is the end of that day: the next midnight, so the run judges all of it
    assert logical_time("2026-01-02") == dt.datetime(2026, 1, 3, tzinfo=dt.UTC)
    assert logical_time("2026-01-02T10:00:00") == dt.datetime(2026, 1, 2, 10,
                                                                    tzinfo=dt.UTC)
    with pytest.raises(DriftloopError, match="run_date 'yesterday'"):
        logical_time("yesterday")


def test_a_recurring_run_uses_its_scheduled_time_and_kfp_local_falls_back_to_now():
    from driftloop.clock import run_logical_time

    clock = dt.datetime(2026, 3, 4, 5, 6, tzinfo=dt.UTC)
    assert run_logical_time("", "2026-03-02T00:00:00Z", clock=clock) == dt.datetime(
        2026, 3, 2, tzinfo=dt.UTC)
    assert run_logical_time("2026-01-02", "2026-03-02T00:00:00Z") == dt.datetime(
        2026, 1, 3, tzinfo=dt.UTC)  # an explicit run_date wins (a replay)
    assert run_logical_time("", "{{$.pipeline_job_schedule_time_utc}}", clock=clock) == clock
    assert run_logical_time("", "", clock=clock) == clock


def test_pipeline_config_overrides_only_the_given_thresholds():
    config = pipeline_config(p_value=0.01, max_age_days=3.0, auto_threshold=0.0)
    default = Config()
    assert config.drift.p_value == 0.01 and config.drift.min_samples == default.drift.min_samples
    assert config.trigger.max_age_days == 3.0
    assert config.trigger.min_new_labels == default.trigger.min_new_labels
    assert config.gate.auto_threshold == 0.0 and config.train == default.train
    assert pipeline_config() == default
    with pytest.raises(ConfigError, match=r"drift\.p_value"):
        pipeline_config(p_value=1.5)


def test_classification_curves_for_more_than_two_classes_use_the_micro_average():
    class Fixed:
        classes_ = np.array(["a", "b", "c"])

        def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
            return np.tile([0.6, 0.3, 0.1], (len(frame), 1))

    schema = sample_schema()
    eval_set = pd.DataFrame({"x0": [0.0] * 4, "x1": [0.0] * 4, "segment": ["north"] * 4,
                             "label": ["a", "b", "c", None]})
    curves = classification_curves(Fixed(), eval_set, schema)
    assert curves.positive == "micro-average"
    assert curves.labels == ["a", "b", "c"]
    assert curves.matrix == [[1, 0, 0], [1, 0, 0], [1, 0, 0]]  # the unlabelled row is left out
    assert curves.fpr[0] == 0.0 and curves.tpr[-1] == 1.0
    assert max(curves.thresholds) <= 1.0


# --- the chain of steps on a sample store -----------------------------------------------------


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run ingest → drift → decide → train → evaluate → promote for day 0, then day 3."""
    root = tmp_path_factory.mktemp("steps")
    store_dir = root / "store"
    write_sample_store(store_dir, days=4, rows_per_day=300, drift_day=2, seed=3,
                       reference_rows=500)
    store_uri, schema_uri = str(store_dir), str(store_dir / "schema.json")
    out: dict = {"root": root, "store": open_store(store_dir), "store_uri": store_uri,
                 "schema_uri": schema_uri}
    for day, date in ((0, "2026-01-01"), (3, "2026-01-04")):
        art = root / f"day{day}"
        run_id = f"steps day {day}"
        res: dict = {"art": art, "run_id": run_id}
        res["ingest"] = steps.ingest_step(
            store_uri, schema_uri, run_id=run_id, run_date=date, window_days=1,
            lookback_days=4, records_path=art / "records.parquet",
            current_path=art / "current.parquet", quarantine_path=art / "quarantine.parquet")
        res["canary"] = steps.analyse_canary_step(
            store_uri, MODEL, art / "current.parquet", run_id=run_id, now=res["ingest"].now,
            isvc_name="sample", namespace="ml")
        res["drift"] = steps.drift_step(store_uri, schema_uri, MODEL, art / "current.parquet",
                                        run_id=run_id)
        (art / "drift.json").write_text(res["drift"].to_json())
        shard_paths = [art / f"drift-shard-{i}.npz" for i in range(2)]
        res["shards"] = [steps.drift_shard_step(
            store_uri, schema_uri, MODEL, path, run_id=run_id, run_date=date,
            window_days=1, shard=i, shards=[0, 1]) for i, path in enumerate(shard_paths)]
        res["merged"] = steps.drift_merge_step(store_uri, schema_uri, MODEL, shard_paths,
                                               run_id=run_id, now=res["ingest"].now,
                                               window_days=1)
        res["decision"] = steps.decide_step(
            store_uri, schema_uri, MODEL, art / "records.parquet", art / "drift.json",
            run_id=run_id, now=res["ingest"].now, canary_in_progress=res["canary"].in_progress)
        res["train"] = steps.train_step(store_uri, schema_uri, MODEL, art / "records.parquet",
                                        run_id=run_id, now=res["ingest"].now,
                                        model_dir=art / "model", eval_path=art / "eval.parquet")
        res["evaluate"] = steps.evaluate_step(store_uri, schema_uri, MODEL, art / "model",
                                              art / "eval.parquet", run_id=run_id)
        (art / "verdict.json").write_text(res["evaluate"].verdict.to_json())
        res["promote"] = steps.promote_step(store_uri, MODEL, art / "verdict.json",
                                            run_id=run_id, isvc_name="sample", namespace="ml")
        out[day] = res
    return out


def test_ingest_writes_the_window_as_parquet_and_records_the_report(chain):
    day0, store = chain[0], chain["store"]
    ing = day0["ingest"]
    records = pd.read_parquet(day0["art"] / "records.parquet")
    current = pd.read_parquet(day0["art"] / "current.parquet")
    quarantine = pd.read_parquet(day0["art"] / "quarantine.parquet")
    # The same rows as the in-process loop's ingest, types intact after the round trip.
    now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    expected = run_ingest(store, sample_schema(), now=now, window_days=1, lookback_days=4)
    pd.testing.assert_frame_equal(records.fillna(np.nan), expected.records.fillna(np.nan))
    assert ing.now == now.isoformat()
    assert ing.n_records == len(records) and ing.n_current == len(current)
    assert len(quarantine) == ing.report.counts.quarantined == 3
    assert ing.report.counts.balanced()
    assert ing.metrics()["quarantined"] == 3.0
    stored = json.loads(store.read_text("runs/steps-day-0/ingest.json"))
    assert stored["counts"]["accepted"] == ing.n_records


def test_drift_by_shards_of_the_days_files_gives_the_in_memory_report(chain):
    day3 = chain[3]
    merged, whole = day3["merged"].report, day3["drift"].report
    assert merged is not None and whole is not None and whole.drifted
    merged.created_at = whole.created_at
    assert merged.to_json() == whole.to_json()
    rows = [s.rows for s in day3["shards"]]
    assert sum(rows) == whole.n_current == day3["ingest"].n_current
    files = [f for s in day3["shards"] for f in s.files]
    assert len(files) == len(set(files)) >= 1  # each file read by exactly one shard
    assert chain[0]["merged"].report is None  # no champion yet: skipped, as drift_step
    # shards that read another window than ingest's (a run straddling midnight) are refused
    with pytest.raises(DriftloopError, match="the shards read the window"):
        steps.drift_merge_step(chain["store_uri"], chain["schema_uri"], MODEL,
                               [day3["art"] / "drift-shard-0.npz"], run_id="x",
                               now="2026-01-06T00:00:00+00:00", window_days=1)


def test_day4_current_window_holds_only_the_last_day(chain):
    day3 = chain[3]
    current = pd.read_parquet(day3["art"] / "current.parquet")
    records = pd.read_parquet(day3["art"] / "records.parquet")
    assert current["timestamp"].min() >= pd.Timestamp("2026-01-04", tz="UTC")
    assert records["timestamp"].min() < pd.Timestamp("2026-01-02", tz="UTC")


def test_first_run_skips_drift_and_promotes_the_first_model(chain):
    day0, store = chain[0], chain["store"]
    assert day0["drift"].report is None and day0["drift"].status == "skipped"
    assert day0["drift"].to_json() == "null" and day0["drift"].metrics() == {}
    assert not store.exists("runs/steps-day-0/drift.json")
    assert day0["decision"].retrain and day0["decision"].fired == ["no_champion"]
    assert day0["evaluate"].decision == "promote" and day0["evaluate"].verdict.first_model
    assert day0["promote"].promoted
    assert day0["promote"].aliases.champion == day0["train"].version


def test_train_registers_the_version_and_hands_over_a_verified_copy(chain):
    day0, store = chain[0], chain["store"]
    summary, art = day0["train"], day0["art"]
    registry = Registry(store, MODEL)
    assert summary.version in registry.versions()
    assert sha256_file(art / "model" / "model.joblib") == summary.model_sha256
    meta = json.loads((art / "model" / "metadata.json").read_text())
    assert meta["version"] == summary.version and meta["model_sha256"] == summary.model_sha256
    assert (art / "model" / "drift_profile.json").exists()
    eval_set = pd.read_parquet(art / "eval.parquet")
    assert len(eval_set) == summary.eval_rows > 0
    train_ids = set(pd.read_parquet(store.path(f"reference/{MODEL}/{summary.version}.parquet"))
                    ["id"])
    assert not train_ids & set(eval_set["id"]), "evaluation rows leaked into training"
    assert json.loads(store.read_text("runs/steps-day-0/train.json"))["version"] == \
        summary.version


def test_drifted_day_detects_drift_retrains_and_promotes(chain):
    day0, day3 = chain[0], chain[3]
    drift = day3["drift"]
    assert drift.drifted and drift.status == "drift"
    metrics = drift.metrics()
    assert metrics["drifted"] == 1.0 and metrics["psi_x0"] > 0.2 > metrics["psi_x1"]
    assert metrics["effect_x0"] >= 0.1 and metrics["significant_features"] >= 1
    assert "drift" in day3["decision"].fired
    outcome = day3["evaluate"]
    assert outcome.decision == "promote"
    assert outcome.metrics()["challenger_f1_macro"] > outcome.metrics()["champion_f1_macro"]
    assert day0["canary"].in_progress == day3["canary"].in_progress == ""
    assert day0["promote"].rollout.action == "deploy"  # the first model: 100% at once
    # the winner starts as a canary at 10%; the champion serves the rest
    promote = day3["promote"]
    assert promote.canary_started and not promote.promoted
    assert (promote.rollout.from_percent, promote.rollout.to_percent) == (0, 10)
    aliases = promote.aliases
    assert aliases.champion == day0["train"].version
    assert aliases.canary == day3["train"].version
    assert "InferenceService ml/sample" in promote.to_markdown()
    assert "Canary started" in promote.to_markdown()


def test_a_canary_in_flight_is_analysed_and_blocks_retraining(chain):
    day3 = chain[3]
    canary = day3["train"].version
    art, uri = day3["art"], chain["store_uri"]
    # the sample's requests were not served by either version: nothing labelled to judge
    first = steps.analyse_canary_step(uri, MODEL, art / "current.parquet", run_id="day 4",
                                      now=day3["ingest"].now, isvc_name="sample",
                                      namespace="ml")
    assert first.in_progress == canary and first.step.action == "hold"
    assert "too few to judge" in first.step.reasons[0]
    again = steps.analyse_canary_step(uri, MODEL, art / "current.parquet", run_id="day 4",
                                      now=day3["ingest"].now, isvc_name="sample",
                                      namespace="ml")
    assert again.step == first.step
    decision = steps.decide_step(uri, chain["schema_uri"], MODEL, art / "records.parquet",
                                 art / "drift.json", run_id="day 4", now=day3["ingest"].now,
                                 canary_in_progress=first.in_progress)
    assert not decision.retrain and f"canary {canary} is in progress" in decision.reasons[0]


def test_confusion_matrix_counts_every_labelled_evaluation_row(chain):
    day3 = chain[3]
    curves = day3["evaluate"].curves
    eval_set = pd.read_parquet(day3["art"] / "eval.parquet")
    assert curves.labels == ["no", "yes"] and curves.positive == "yes"
    assert sum(map(sum, curves.matrix)) == eval_set["label"].notna().sum()
    assert curves.fpr[0] == 0.0 and curves.fpr[-1] == 1.0
    assert all(a <= b for a, b in zip(curves.tpr, curves.tpr[1:], strict=False))


def test_promote_does_nothing_for_a_verdict_other_than_promote(chain, tmp_path):
    verdict = json.loads((chain[0]["art"] / "verdict.json").read_text())
    verdict["decision"] = "reject"
    path = tmp_path / "verdict.json"
    path.write_text(json.dumps(verdict))
    before = Registry(chain["store"], MODEL).aliases()
    outcome = steps.promote_step(chain["store_uri"], MODEL, path, run_id="reject-check")
    assert not outcome.promoted and outcome.version == chain[0]["train"].version
    assert Registry(chain["store"], MODEL).aliases() == before


def test_run_records_read_back_as_the_decision_chain(chain):
    store = chain["store"]
    assert {"steps-day-0", "steps-day-3"} <= set(list_runs(store))
    record = read_run(store, "steps-day-3")
    assert record.recorded == ["ingest", "drift", "decision", "train", "verdict", "aliases",
                               "rollout"]
    lines = record.lines()
    assert [line.split()[0] for line in lines] == ["ingest", "drift", "decide", "train",
                                                   "evaluate", "registry", "rollout"]
    assert lines[-1].startswith("rollout  start")
    assert lines[2].startswith("decide   retrain")
    first = read_run(store, "steps-day-0").lines()
    assert "drift    skipped: no champion yet" in first
    with pytest.raises(DriftloopError, match="no run recorded"):
        read_run(store, "never-ran")


def test_decide_rejects_a_drift_artifact_that_is_not_a_report(chain, tmp_path):
    bad = tmp_path / "drift.json"
    bad.write_text('{"status": 1}')
    with pytest.raises(DriftloopError, match="not a valid drift report"):
        steps.decide_step(chain["store_uri"], chain["schema_uri"], MODEL,
                          chain[0]["art"] / "records.parquet", bad, run_id="x",
                          now="2026-01-01")


# --- notifications and the exit step ---------------------------------------------------------


def test_notify_posts_the_model_update_with_the_verdict(chain, webhook):
    delivery = steps.notify_step(chain[3]["art"] / "verdict.json", model_name=MODEL,
                                 run_id="run 7", webhook=webhook.url)
    assert delivery.ok
    (event,) = webhook.events
    assert event["kind"] == "model_update" and event["run_id"] == "run-7"
    assert event["details"]["version"] == chain[3]["train"].version
    assert event["details"]["decision"] == "promote"


def test_a_failed_webhook_delivery_stops_the_promotion(chain, webhook):
    webhook.status = 500
    with pytest.raises(NotificationError, match="HTTP 500"):
        steps.notify_step(chain[3]["art"] / "verdict.json", model_name=MODEL, run_id="r",
                          webhook=webhook.url)


def test_notify_without_webhook_only_logs(chain, caplog):
    caplog.set_level("INFO", logger="driftloop.notify")
    assert steps.notify_step(chain[3]["art"] / "verdict.json", model_name=MODEL,
                             run_id="r").ok
    assert "model_update" in caplog.text


def test_exit_step_records_a_failure_and_notifies(tmp_path: Path, webhook):
    status = steps.exit_step(str(tmp_path), model_name=MODEL, run_id="failed run",
                             state="FAILED", error="Task ingest failed.", task="run",
                             webhook=webhook.url)
    assert status.notified and status.delivery_error is None
    (event,) = webhook.events
    assert event["kind"] == "failure" and "FAILED" in event["title"]
    stored = json.loads((tmp_path / "runs" / "failed-run" / "status.json").read_text())
    assert stored["state"] == "FAILED" and stored["error"] == "Task ingest failed."


def test_exit_step_sends_nothing_for_a_successful_run(tmp_path: Path, webhook):
    status = steps.exit_step(str(tmp_path), model_name=MODEL, run_id="ok", state="SUCCEEDED",
                             webhook=webhook.url)
    assert webhook.events == [] and not status.notified
    assert read_run(open_store(tmp_path), "ok").status == status


def test_exit_step_never_raises_when_store_and_webhook_are_broken(tmp_path: Path):
    missing = tmp_path / "no-such-store"
    status = steps.exit_step(str(missing), model_name=MODEL, run_id="r", state="FAILED",
                             webhook="ftp://not-http")
    assert not status.notified and "http" in (status.delivery_error or "")
    assert not missing.exists()
