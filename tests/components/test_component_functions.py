"""The component bodies, called through ``.python_func`` on artifacts in tmp_path."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from kfp import dsl

from driftloop.data.storage import open_store
from driftloop.demo.sample import write_sample_store
from driftloop.kfp import components
from driftloop.kfp.image import IMAGE
from driftloop.models.registry import Registry

MODEL = "sample"
RUN = "component-run"


def _artifact(cls: type, root: Path, name: str) -> dsl.Artifact:
    return cls(name=name, uri=str(root / name), metadata={})


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every component body of one first run (no champion yet), in pipeline order."""
    root = tmp_path_factory.mktemp("components")
    store_dir = root / "store"
    write_sample_store(store_dir, days=2, rows_per_day=300, seed=3, reference_rows=500)
    art = root / "artifacts"
    art.mkdir()
    common = {"store_uri": str(store_dir), "schema_uri": str(store_dir / "schema.json")}
    a = {name: _artifact(cls, art, name) for name, cls in [
        ("records", dsl.Dataset), ("current", dsl.Dataset), ("quarantine", dsl.Dataset),
        ("ingest_metrics", dsl.Metrics), ("drift_report", dsl.Markdown),
        ("drift_json", dsl.Artifact), ("drift_metrics", dsl.Metrics),
        ("decision_report", dsl.Markdown), ("model", dsl.Model), ("eval_set", dsl.Dataset),
        ("train_metrics", dsl.Metrics), ("verdict_report", dsl.Markdown),
        ("verdict_json", dsl.Artifact), ("eval_metrics", dsl.Metrics),
        ("challenger_curves", dsl.ClassificationMetrics), ("promotion_report", dsl.Markdown),
        ("canary_report", dsl.Markdown), ("canary_metrics", dsl.Metrics),
        ("shard_profile", dsl.Artifact), ("shard_metrics", dsl.Metrics),
        ("training", dsl.Dataset), ("candidates_report", dsl.Markdown),
        ("study", dsl.Artifact), ("candidate_metrics", dsl.Metrics),
        ("part", dsl.Artifact), ("ingest_shard_metrics", dsl.Metrics),
    ]}
    out: dict = {"store": open_store(store_dir), "a": a}
    out["ingest_shard"] = components.ingest_shard.python_func(
        **common, run_id=RUN, run_date="2026-01-01", scheduled_time="", window_days=1,
        lookback_days=2, shard=0, shards=[0], part=a["part"],
        shard_metrics=a["ingest_shard_metrics"])
    out["ingest"] = components.ingest.python_func(
        **common, run_id=RUN, run_date="2026-01-01", scheduled_time="", window_days=1,
        lookback_days=2, shard_parts=[a["part"]],
        records=a["records"], current=a["current"], quarantine=a["quarantine"],
        ingest_metrics=a["ingest_metrics"])
    now = out["ingest"].now
    out["canary"] = components.analyse_canary.python_func(
        store_uri=common["store_uri"], model_name=MODEL, run_id=RUN, now=now,
        isvc_name="sample", namespace="ml", rollout_backend="local", rollout_state="",
        webhook="", min_labelled=100, max_holds=3, prometheus_url="",
        records=a["records"], canary_report=a["canary_report"],
        canary_metrics=a["canary_metrics"])
    out["shard"] = components.drift_shard.python_func(
        **common, model_name=MODEL, run_id=RUN, run_date="2026-01-01", scheduled_time="",
        window_days=1, shard=0, shards=[0], shard_profile=a["shard_profile"],
        shard_metrics=a["shard_metrics"])
    out["drift"] = components.detect_drift.python_func(
        **common, model_name=MODEL, run_id=RUN, now=now, window_days=1, p_value=0.05,
        effect_threshold=0.1, min_samples=100, shard_profiles=[a["shard_profile"]],
        drift_report=a["drift_report"], drift_json=a["drift_json"],
        drift_metrics=a["drift_metrics"])
    out["decide"] = components.decide_retrain.python_func(
        **common, model_name=MODEL, run_id=RUN, now=now, force=False, min_new_labels=500,
        perf_drop=0.1, max_age_days=7.0, warm_updates=False, canary_in_progress=out["canary"],
        records=a["records"], drift_json=a["drift_json"],
        decision_report=a["decision_report"])
    # tuning off (n_trials 0): the fixed model, one "default" candidate
    out["plan"] = components.plan_candidates.python_func(
        **common, model_name=MODEL, run_id=RUN, now=now, n_trials=0, tuning_seconds=0.0,
        records=a["records"], training=a["training"], candidates_report=a["candidates_report"])
    out["tuned"] = [components.tune_candidate.python_func(
        **common, model_name=MODEL, run_id=RUN, candidate=name, n_trials=0,
        tuning_seconds=0.0, tuning_storage="", cpu_request="1", memory_request="2Gi",
        training=a["training"], study=a["study"], candidate_metrics=a["candidate_metrics"])
        for name in out["plan"]]
    out["train"] = components.select_challenger.python_func(
        **common, model_name=MODEL, run_id=RUN, now=now, results=out["tuned"],
        records=a["records"], model=a["model"], eval_set=a["eval_set"],
        train_metrics=a["train_metrics"])
    out["evaluate"] = components.evaluate_challenger.python_func(
        **common, model_name=MODEL, run_id=RUN, auto_threshold=0.05, model=a["model"],
        eval_set=a["eval_set"], verdict_report=a["verdict_report"],
        verdict_json=a["verdict_json"], eval_metrics=a["eval_metrics"],
        challenger_curves=a["challenger_curves"])
    out["notify"] = components.notify.python_func(model_name=MODEL, run_id=RUN, webhook="",
                                                  verdict_json=a["verdict_json"])
    out["promote"] = components.promote_model.python_func(
        store_uri=common["store_uri"], model_name=MODEL, isvc_name="sample", namespace="ml",
        rollout_backend="local", rollout_state="", run_id=RUN,
        verdict_json=a["verdict_json"], promotion_report=a["promotion_report"])
    components.notify_on_exit.python_func(
        store_uri=common["store_uri"], model_name=MODEL, run_id=RUN, webhook="",
        pushgateway_url="", pipeline_name="continuous-training",
        status=dsl.PipelineTaskFinalStatus(state="SUCCEEDED", pipeline_job_resource_name="j",
                                           pipeline_task_name="run", error_code=None,
                                           error_message=None))
    return out


def test_every_body_imports_driftloop_inside_and_calls_one_step_function():
    for name, comp in components.COMPONENTS.items():
        source = inspect.getsource(comp.python_func)
        assert "from driftloop import steps" in source, name
        assert len(re.findall(r"steps\.\w+\(", source)) == 1, name
        spec = comp.component_spec.implementation.container
        assert spec.image == IMAGE
        assert "pip install" not in " ".join(spec.command or []), name


def test_ingest_outputs_parquet_and_row_accounting(run):
    a, out = run["a"], run["ingest"]
    records = pd.read_parquet(a["records"].path)
    assert out.now == "2026-01-02T00:00:00+00:00" and out.rows == len(records)
    assert a["records"].metadata["rows"] == len(records)
    assert a["current"].metadata["rows"] == len(pd.read_parquet(a["current"].path))
    m = a["ingest_metrics"].metadata
    assert m["rows_in"] == m["accepted"] + m["quarantined"] + m["duplicates"]
    assert a["quarantine"].metadata["rows"] == m["quarantined"] == 3


def test_drift_is_skipped_without_a_champion_and_says_so(run):
    a = run["a"]
    assert tuple(run["drift"]) == (False, "skipped")
    assert run["shard"] == 0 and a["shard_profile"].metadata["model_version"] == ""
    assert Path(a["drift_json"].path).read_text().strip() == "null"
    assert "skipped" in Path(a["drift_report"].path).read_text()
    assert a["drift_metrics"].metadata == {}


def test_decide_returns_the_branch_flag_and_renders_the_rules(run):
    a = run["a"]
    assert run["decide"] is True
    assert a["decision_report"].metadata == {"retrain": True, "fired": ["no_champion"],
                                             "kind": "full"}
    assert "Retrain decision: **Retrain (full)**" in Path(a["decision_report"].path).read_text()


def test_tuning_off_plans_the_fixed_model_and_select_registers_it(run):
    a = run["a"]
    assert run["plan"] == ["default"] and a["candidates_report"].metadata["kind"] == "full"
    assert a["training"].metadata["rows"] == len(pd.read_parquet(a["training"].path))
    assert [t["status"] for t in run["tuned"]] == ["fixed"]
    assert a["candidate_metrics"].metadata["n_trials"] == 0.0
    assert run["train"].candidate == "default" == a["model"].metadata["candidate"]


def test_train_model_metadata_names_the_registered_version_and_its_hash(run):
    a = run["a"]
    meta = a["model"].metadata
    stored = json.loads((Path(a["model"].path) / "metadata.json").read_text())
    assert run["train"].version == meta["version"] == stored["version"]
    assert meta["sha256"] == stored["model_sha256"]
    assert meta["registry_uri"].endswith(f"models/{MODEL}/{meta['version']}")
    assert a["train_metrics"].metadata["eval_rows"] == len(pd.read_parquet(a["eval_set"].path))


def test_evaluate_logs_metrics_confusion_matrix_and_roc(run):
    a = run["a"]
    assert run["evaluate"] == "promote"
    assert json.loads(Path(a["verdict_json"].path).read_text())["decision"] == "promote"
    assert 0.5 < a["eval_metrics"].metadata["challenger_f1_macro"] <= 1.0
    curves = a["challenger_curves"].metadata
    matrix = curves["confusionMatrix"]
    assert [c["displayName"] for c in matrix["annotationSpecs"]] == ["no", "yes"]
    assert sum(map(sum, (r["row"] for r in matrix["rows"]))) == \
        a["eval_metrics"].metadata["eval_rows"]
    roc = curves["confidenceMetrics"]
    assert roc[0]["falsePositiveRate"] == 0.0 and roc[-1]["recall"] == 1.0


def test_notify_and_promote_move_the_champion(run):
    a = run["a"]
    assert run["notify"] is True
    assert run["promote"].champion == run["train"].version
    assert Registry(run["store"], MODEL).champion() == run["train"].version
    assert a["promotion_report"].metadata == {"promoted": True,
                                              "version": run["train"].version,
                                              "canary_started": False}
    # the first model is deployed at 100% on the local backend under <store>/rollout
    isvc = run["store"].path("rollout/inferenceservices/ml/sample.yaml")
    assert run["train"].version in isvc.read_text()


def test_analyse_canary_without_a_canary_says_so(run):
    a = run["a"]
    assert run["canary"] == ""
    assert "none in progress" in Path(a["canary_report"].path).read_text()
    assert a["canary_report"].metadata == {"in_progress": "", "action": "none"}


def test_exit_component_records_the_final_status(run):
    status = json.loads(run["store"].read_text(f"runs/{RUN}/status.json"))
    assert status["state"] == "SUCCEEDED" and status["task"] == "run"
    recorded = sorted(k.rsplit("/", 1)[-1] for k in run["store"].list(f"runs/{RUN}"))
    assert recorded == ["aliases.json", "candidates.json", "candidates.md", "decision.json",
                        "decision.md", "ingest.json", "rollout.json", "rollout.md",
                        "status.json", "train.json", "train.md", "tune-default.json",
                        "verdict.json", "verdict.md"]
