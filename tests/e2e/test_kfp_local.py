"""The compiled pipeline end to end through kfp.local (SubprocessRunner, no venv).

One sample store (seeded, drift from day 2) is run day by day; the runs are shared by
the tests through module-scoped fixtures, since each costs 10-25 s of subprocesses:

* day 0: no champion → train → promote the first model;
* day 1: no drift, few labels, young champion → nothing is trained (run via the CLI);
* day 3: drift → retrain → the challenger wins → its canary starts at 10% on the local
  rollout backend (the champion keeps the rest);
* a copy of the store after day 1 whose training labels were flipped, forced to retrain
  on day 1 with a search (n_trials 2: plan_candidates, a ParallelFor of three
  tune_candidate tasks, select_challenger over their dsl.Collected results) → the
  challenger is worse → reject, champion unchanged;
* a run whose schema does not exist → ingest fails → the exit handler records FAILED.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from driftloop.cli import main
from driftloop.config import Config, NotifyConfig, TuningConfig
from driftloop.data.storage import open_store
from driftloop.demo.sample import write_sample_store
from driftloop.errors import DriftloopError
from driftloop.kfp.local import LocalRun, run_local
from driftloop.models.registry import Registry
from driftloop.models.train import split_holdout
from driftloop.steps.records import list_runs, read_run

MODEL = "sample"
#: Tuning off (the default): the ParallelFor runs one iteration, the fixed model.
TRAIN_TASKS = ["plan-candidates", "tune-candidate", "select-challenger"]
ALL_TASKS = ["ingest-shard", "ingest", "analyse-canary", "drift-shard", "detect-drift",
             "decide-retrain", *TRAIN_TASKS, "evaluate-challenger", "notify", "promote-model",
             "notify-on-exit"]


def _main_tasks(tasks: list[str]) -> list[str]:
    """The tasks without curate_feedback, which must run after the canary analysis.

    It depends on ingest and analyse_canary only, so kfp.local may finish it before or
    after the drift tasks.
    """
    assert "curate-feedback" in tasks, tasks
    assert tasks.index("curate-feedback") > tasks.index("analyse-canary"), tasks
    return [t for t in tasks if t != "curate-feedback"]


class Receiver:
    """A webhook on 127.0.0.1 that records the JSON events it receives."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                events.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def of_run(self, run_id: str | None) -> list[dict]:
        return [e for e in self.events if e["run_id"] == run_id]


def flip_training_labels(store_dir: Path, days: list[str]) -> None:
    """Invert the feedback label of every record that lands on the training side."""
    for day in days:
        path = store_dir / f"feedback/dt={day}/part-0.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        train, _ = split_holdout(pd.DataFrame(rows), Config().train.eval_fraction,
                                 Config().train.seed)
        flip = set(train["id"])
        for row in rows:
            if row["id"] in flip:
                row["label"] = {"yes": "no", "no": "yes"}[row["label"]]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("kfp-local")
    store_a = root / "a"
    write_sample_store(store_a, days=4, rows_per_day=300, drift_day=2, seed=3,
                       reference_rows=500)
    schema = str(store_a / "schema.json")
    hook = Receiver()
    config = Config(notify=NotifyConfig(backend="webhook", webhook_url=hook.url))
    registry = Registry(open_store(store_a), MODEL)
    out: dict = {"hook": hook, "a": store_a, "versions": {}}

    def local(store: Path, date: str, cfg: Config = config, **kw: object) -> LocalRun:
        return run_local(str(store), schema, MODEL, run_date=date, lookback_days=4,
                         config=cfg, **kw)

    out["day0"] = local(store_a, "2026-01-01")
    out["versions"]["day0"] = registry.versions()
    out["day1_cli"] = cli_run(root, store_a, schema, hook.url)
    out["versions"]["day1"] = registry.versions()
    store_b = root / "b"
    shutil.copytree(store_a, store_b)
    searched = Config(notify=config.notify,
                      tuning=TuningConfig(enabled=True, n_trials=2, tuning_seconds=20.0))
    out["day3"] = local(store_a, "2026-01-04")
    flip_training_labels(store_b, ["2026-01-01", "2026-01-02"])
    out["b"] = store_b
    out["b_champion"] = Registry(open_store(store_b), MODEL).aliases()
    out["reject"] = local(store_b, "2026-01-02", searched, force_retrain=True)
    out["failed"] = run_local(str(store_a), str(root / "missing.json"), MODEL,
                              run_date="2026-01-04", config=config)
    try:
        yield out
    finally:
        hook.server.shutdown()
        hook.server.server_close()


def cli_run(root: Path, store: Path, schema: str, url: str) -> dict:
    """``driftloop run --local`` for day 1, capturing its JSON and decision chain."""
    config = root / "config.json"
    config.write_text(json.dumps({"notify": {"backend": "webhook", "webhook_url": url}}))
    out_file = root / "day1.json"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["run", "--local", "--store", str(store), "--schema", schema,
                     "--model", MODEL, "--now", "2026-01-02", "--lookback-days", "4",
                     "--config", str(config), "--output", str(out_file)])
    return {"code": code, "json": json.loads(out_file.read_text()), "stderr": err.getvalue()}


def test_first_run_trains_and_promotes_the_first_model(runs):
    run = runs["day0"]
    assert run.ok, run.log[-3000:]
    assert _main_tasks(run.tasks) == ALL_TASKS
    record = run.record
    assert record.drift is None and record.decision.fired == ["no_champion"]
    assert record.verdict.decision == "promote" and record.verdict.first_model
    assert record.aliases.champion == record.train.version
    assert record.status.state == "SUCCEEDED"
    assert runs["versions"]["day0"] == [record.train.version]
    # The model update was announced (to the webhook) by the notify task of this run.
    (event,) = runs["hook"].of_run(run.run_id)
    assert event["kind"] == "model_update" and event["details"]["version"] == \
        record.train.version


def test_quiet_day_trains_nothing(runs):
    cli = runs["day1_cli"]
    assert cli["code"] == 0, cli["stderr"][-3000:]
    result = cli["json"]
    assert result["state"] == "SUCCEEDED" and result["retrain"] is False
    assert _main_tasks(result["tasks"]) == ["ingest-shard", "ingest", "analyse-canary",
                                            "drift-shard", "detect-drift", "decide-retrain",
                                            "notify-on-exit"]
    # the summary names the champion that serves, also when this run promoted nothing
    assert result["verdict"] is None and result["champion"] == runs["versions"]["day0"][0]
    assert runs["versions"]["day1"] == runs["versions"]["day0"], "a version was registered"
    record = read_run(open_store(runs["a"]), result["run_id"])
    assert record.drift.status == "no_drift" and not record.decision.fired
    assert record.train is None and record.verdict is None
    # The CLI printed the chain read back from runs/<run-id>/.
    assert "decide   no retrain: no rule fired" in cli["stderr"]
    assert f"records under runs/{result['run_id']}/" in cli["stderr"]
    assert runs["hook"].of_run(result["run_id"]) == []


def test_drifted_day_retrains_and_promotes_the_challenger(runs):
    run = runs["day3"]
    assert run.ok, run.log[-3000:]
    assert _main_tasks(run.tasks) == ALL_TASKS
    record = run.record
    assert record.drift.drifted and "x0" in record.drift.drifted_features
    assert "drift" in record.decision.fired
    assert record.verdict.decision == "promote" and record.verdict.improvement_rel > 0.05
    first = runs["day0"].record.train.version
    assert runs["day0"].record.rollout.action == "deploy"  # the first model: 100% at once
    # the winner starts as a canary at 10%; the champion keeps serving the rest
    assert record.rollout.action == "start" and record.rollout.to_percent == 10
    assert record.aliases.champion == first
    assert record.aliases.canary == record.train.version != first
    history = Registry(open_store(runs["a"]), MODEL).aliases().history
    assert [h.run_id for h in history if h.alias == "champion"] == [runs["day0"].run_id]
    assert [h.run_id for h in history if h.alias == "canary"] == [run.run_id]
    isvc = runs["a"] / "rollout" / "inferenceservices" / "local" / f"{MODEL}.yaml"
    assert "canaryTrafficPercent: 10" in isvc.read_text()


def test_worse_challenger_is_rejected_and_the_champion_stays(runs):
    run = runs["reject"]
    assert run.ok, run.log[-3000:]
    assert _main_tasks(run.tasks) == ["ingest-shard", "ingest", "analyse-canary", "drift-shard",
                                      "detect-drift", "decide-retrain", "plan-candidates",
                                      *["tune-candidate"] * 3, "select-challenger",
                                      "evaluate-challenger", "notify-on-exit"]
    record = run.record
    # every candidate's search crossed dsl.Collected into the model card (ints as ints)
    card = Registry(open_store(runs["b"]), MODEL).metadata(record.train.version)["candidates"]
    assert sorted(r["candidate"] for r in card["results"]) == ["extra_trees", "hgb", "linear"]
    assert all(r["n_trials"] == 2 and isinstance(r["n_trials"], int) for r in card["results"])
    assert record.train.candidate == card["winner"] and card["reason"].startswith(card["winner"])
    assert record.decision.fired[0] == "force"
    assert record.verdict.decision == "reject"
    assert record.verdict.improvement_rel < 0
    assert record.aliases is None, "promote_model ran for a rejected challenger"
    registry = Registry(open_store(runs["b"]), MODEL)
    assert record.train.version in registry.versions()
    assert registry.aliases() == runs["b_champion"]
    assert registry.champion() == runs["day0"].record.train.version
    assert runs["hook"].of_run(run.run_id) == []


def test_failed_run_is_recorded_and_notified_by_the_exit_handler(runs):
    run = runs["failed"]
    assert not run.ok and "Inner task failed: 'ingest-shard'" in (run.error or "")
    assert "StoreError: " in run.error and "missing.json: file does not exist" in run.error
    assert run.tasks == ["notify-on-exit"]
    assert run.record.recorded == ["status"] and run.record.status.state == "FAILED"
    (event,) = runs["hook"].of_run(run.run_id)
    assert event["kind"] == "failure" and event["details"]["state"] == "FAILED"
    assert run.record.status.notified


def test_every_run_has_its_own_record_folder(runs):
    ids = [runs[k].run_id for k in ("day0", "day3", "failed")] + [runs["day1_cli"]["json"]
                                                                  ["run_id"]]
    assert len(set(ids)) == 4 and all(i.startswith("continuous-training-") for i in ids)
    assert set(ids) <= set(list_runs(open_store(runs["a"])))


# --- fast checks of the local entry points (no pipeline run) --------------------------------


def test_pipeline_arguments_take_thresholds_and_webhook_from_the_config():
    from dataclasses import replace

    from driftloop.kfp.local import pipeline_arguments

    base = Config()
    config = replace(base, drift=replace(base.drift, p_value=0.01),
                     gate=replace(base.gate, auto_threshold=0.2),
                     canary=replace(base.canary, min_labelled=30, max_holds=2),
                     notify=NotifyConfig(backend="webhook", webhook_url="http://127.0.0.1:9/x"))
    args = pipeline_arguments(config)
    assert args["p_value"] == 0.01 and args["auto_threshold"] == 0.2
    assert args["min_new_labels"] == base.trigger.min_new_labels
    assert args["canary_min_labelled"] == 30 and args["canary_max_holds"] == 2
    assert args["notify_webhook"] == "http://127.0.0.1:9/x"
    assert pipeline_arguments(base)["notify_webhook"] == ""
    with pytest.raises(DriftloopError, match=r"train\.max_iter cannot be set"):
        pipeline_arguments(replace(base, train=replace(base.train, max_iter=5)))
    with pytest.raises(DriftloopError, match=r"canary\.tolerance cannot be set"):
        pipeline_arguments(replace(base, canary=replace(base.canary, tolerance=0.5)))
    # silently ignored before: a kfp.local task sizes its threads itself
    with pytest.raises(DriftloopError, match=r"runtime\.max_threads cannot be set"):
        pipeline_arguments(replace(base, runtime=replace(base.runtime, max_threads=2)))


def test_run_local_refuses_a_run_id_and_a_bad_date(tmp_path: Path, capsys):
    args = ["run", "--local", "--store", str(tmp_path), "--schema", "s.json", "--model", MODEL]
    assert main([*args, "--run-id", "x"]) == 2
    assert "--run-id cannot be set" in capsys.readouterr().err
    assert main([*args, "--now", "yesterday"]) == 2
    assert "not an ISO-8601 date" in capsys.readouterr().err


def test_run_local_restores_print_when_kfp_leaves_its_indenting_print_installed(
        tmp_path: Path, monkeypatch):
    # kfp.local's ParallelFor threads can leave kfp's indenting print in builtins; every
    # later print of the process would then write four spaces to stdout
    import builtins

    import driftloop.kfp.pipeline as pipeline_module

    original = builtins.print

    def leaky_pipeline(**_: object) -> None:
        builtins.print = lambda *a, **k: original("    ", end="")

    monkeypatch.setattr(pipeline_module, "build_pipeline", lambda **_: leaky_pipeline)
    store = tmp_path / "store"
    store.mkdir()
    run = run_local(str(store), str(tmp_path / "schema.json"), "m",
                    pipeline_root=tmp_path / "root")
    assert builtins.print is original
    assert run.run_id is None  # the fake pipeline made no run folder
