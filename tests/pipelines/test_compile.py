"""The committed component and pipeline YAML, and what the compiled pipeline says."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from driftloop import __version__
from driftloop.config import CanaryConfig, DriftConfig, GateConfig, TriggerConfig, TuningConfig
from driftloop.kfp.compile import compile_all, compile_pipeline
from driftloop.kfp.components import COMPONENTS
from driftloop.kfp.image import IMAGE
from driftloop.kfp.pipeline import GCS_SECRET, LOOKBACK_DAYS, WINDOW_DAYS

REPO = Path(__file__).resolve().parents[2]
STORE_TASKS = {"ingest-shard", "ingest", "analyse-canary", "curate-feedback", "drift-shard",
               "detect-drift", "decide-retrain", "plan-candidates", "tune-candidate",
               "select-challenger", "evaluate-challenger", "promote-model", "notify-on-exit"}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compiled")
    compile_all(out)
    return out


@pytest.fixture(scope="module")
def spec(fresh: Path) -> list[dict]:
    """The compiled pipeline: [pipeline spec, platform spec]."""
    return list(yaml.safe_load_all((fresh / "pipelines/continuous_training.yaml").read_text()))


def _tasks(pipeline: dict) -> dict[str, dict]:
    """Every task of the pipeline, over all nested DAGs, by name."""
    found = dict(pipeline["root"]["dag"]["tasks"])
    for comp in pipeline["components"].values():
        found.update(comp.get("dag", {}).get("tasks", {}))
    return found


def test_committed_yaml_equals_a_fresh_compile(fresh: Path):
    written = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert len(written) == 2 * len(COMPONENTS) + 3  # + the three pipelines
    stale = []
    for rel in written:
        committed = REPO / rel
        if not committed.exists() or committed.read_text() != (fresh / rel).read_text():
            stale.append(str(rel))
    assert not stale, f"run `make compile`: these differ from a fresh compile: {stale}"
    folders = {p.name for p in (REPO / "components").iterdir() if p.is_dir()}
    assert folders == set(COMPONENTS), "a component folder has no component (or vice versa)"


def test_compile_is_deterministic(tmp_path: Path, fresh: Path):
    path = compile_pipeline(tmp_path)
    assert path.read_text() == (fresh / "pipelines/continuous_training.yaml").read_text()


def test_pipeline_has_every_step_both_branches_and_the_exit_handler(spec):
    pipeline = spec[0]
    tasks = _tasks(pipeline)
    steps = {name for name, t in tasks.items()
             if not name.startswith(("condition-", "exit-", "for-loop-"))}
    assert steps == {"ingest-shard", "ingest", "analyse-canary", "curate-feedback", "drift-shard",
                     "detect-drift",
                     "decide-retrain", "plan-candidates", "tune-candidate",
                     "select-challenger", "evaluate-challenger", "notify",
                     "promote-model", "notify-on-exit"}
    conditions = sorted(t["triggerPolicy"]["condition"] for t in tasks.values()
                        if "condition" in t.get("triggerPolicy", {}))
    assert conditions == [
        "inputs.parameter_values['pipelinechannel--decide-retrain-Output'] == true",
        "inputs.parameter_values['pipelinechannel--evaluate-challenger-Output'] == 'promote'",
    ]
    # The retrain branch holds the search, select and evaluate; the promote branch notify,
    # then promote.
    branch = {name: comp["dag"]["tasks"] for name, comp in pipeline["components"].items()
              if name.startswith("comp-condition")}
    assert {"plan-candidates", "for-loop-5", "select-challenger",
            "evaluate-challenger"} <= set(branch["comp-condition-4"])
    assert set(branch["comp-condition-6"]) == {"notify", "promote-model"}
    assert branch["comp-condition-6"]["promote-model"]["dependentTasks"] == ["notify"]
    # The exit task runs after the whole body, whatever happened, and gets its status.
    exit_task = pipeline["root"]["dag"]["tasks"]["notify-on-exit"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert exit_task["dependentTasks"] == ["exit-handler-1"]
    status = exit_task["inputs"]["parameters"]["status"]
    assert status["taskFinalStatus"]["producerTask"] == "exit-handler-1"
    body = pipeline["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert {"ingest", "analyse-canary", "detect-drift", "decide-retrain",
            "condition-4", "for-loop-3"} <= set(body)
    # The canary is judged right after ingest; drift and the decision wait for it, and the
    # decision gets the version in flight (so it does not retrain while one is).
    assert body["analyse-canary"]["dependentTasks"] == ["ingest"]
    assert "analyse-canary" in body["for-loop-3"]["dependentTasks"]
    # curation (disagreements, review queue) judges the champion after the canary step
    assert set(body["curate-feedback"]["dependentTasks"]) == {"ingest", "analyse-canary"}
    canary = body["decide-retrain"]["inputs"]["parameters"]["canary_in_progress"]
    assert canary["taskOutputParameter"] == {"outputParameterKey": "Output",
                                             "producerTask": "analyse-canary"}
    # promote_model gets the rollout parameters
    promote = branch["comp-condition-6"]["promote-model"]["inputs"]["parameters"]
    assert {"rollout_backend", "rollout_state", "isvc_name", "namespace"} <= set(promote)


def test_drift_is_a_parallel_for_over_shards_then_a_merge(spec):
    pipeline = spec[0]
    body = pipeline["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    loop = body["for-loop-3"]
    assert loop["parameterIterator"]["items"] == {"inputParameter":
                                                  "pipelinechannel--drift_shards"}
    inner = pipeline["components"]["comp-for-loop-3"]["dag"]["tasks"]
    assert set(inner) == {"drift-shard"}  # one pod per shard, nothing else in the loop
    assert inner["drift-shard"]["inputs"]["parameters"]["shard"] == {
        "componentInputParameter": "pipelinechannel--drift_shards-loop-item"}
    # the merge collects every shard's profile, and the decision reads the merged report
    collected = body["detect-drift"]["inputs"]["artifacts"]["shard_profiles"]
    assert collected["taskOutputArtifact"]["producerTask"] == "for-loop-3"
    assert set(body["detect-drift"]["dependentTasks"]) == {"for-loop-3", "ingest"}  # its now
    # kfp.local 2.17 hands a loop the item in place of any upstream task output: none enter
    assert not [k for k, v in loop["inputs"]["parameters"].items()
                if "taskOutputParameter" in v], "an upstream output passed into the loop"
    merge = pipeline["components"]["comp-detect-drift"]["inputDefinitions"]["artifacts"]
    assert merge["shard_profiles"]["isArtifactList"] is True
    default = pipeline["root"]["inputDefinitions"]["parameters"]["drift_shards"]
    assert default["defaultValue"] == [0] and default["parameterType"] == "LIST"


def test_ingest_is_a_parallel_for_over_shards_then_a_merge(spec, fresh: Path):
    pipeline = spec[0]
    body = pipeline["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    loop = body["for-loop-2"]
    assert loop["parameterIterator"]["items"] == {"inputParameter":
                                                  "pipelinechannel--ingest_shards"}
    inner = pipeline["components"]["comp-for-loop-2"]["dag"]["tasks"]
    assert set(inner) == {"ingest-shard"}
    assert inner["ingest-shard"]["inputs"]["parameters"]["shard"] == {
        "componentInputParameter": "pipelinechannel--ingest_shards-loop-item"}
    collected = body["ingest"]["inputs"]["artifacts"]["shard_parts"]
    assert collected["taskOutputArtifact"]["producerTask"] == "for-loop-2"
    assert pipeline["components"]["comp-ingest"]["inputDefinitions"]["artifacts"][
        "shard_parts"]["isArtifactList"] is True
    for name in ("canary_analysis", "ab_analysis"):  # they ingest the same way
        other = next(yaml.safe_load_all((fresh / f"pipelines/{name}.yaml").read_text()))
        tasks = other["components"]["comp-exit-handler-1"]["dag"]["tasks"]
        assert tasks["ingest"]["inputs"]["artifacts"]["shard_parts"]["taskOutputArtifact"][
            "producerTask"] == "for-loop-2"


def test_the_search_is_a_parallel_for_over_candidates_then_a_collected_select(spec):
    pipeline = spec[0]
    branch = pipeline["components"]["comp-condition-4"]["dag"]["tasks"]
    loop = branch["for-loop-5"]
    assert loop["parameterIterator"]["items"] == {
        "inputParameter": "pipelinechannel--plan-candidates-Output"}
    assert loop["dependentTasks"] == ["plan-candidates"]
    inner = pipeline["components"]["comp-for-loop-5"]["dag"]["tasks"]
    assert set(inner) == {"tune-candidate"}  # one pod per candidate
    tune = inner["tune-candidate"]["inputs"]
    assert tune["parameters"]["candidate"] == {
        "componentInputParameter": "pipelinechannel--plan-candidates-Output-loop-item"}
    assert tune["artifacts"]["training"]["componentInputArtifact"] == \
        "pipelinechannel--plan-candidates-training"
    select = branch["select-challenger"]
    assert select["dependentTasks"] == ["for-loop-5"]
    assert select["inputs"]["parameters"]["results"]["taskOutputParameter"] == {
        "outputParameterKey": "pipelinechannel--tune-candidate-Output",
        "producerTask": "for-loop-5"}
    # the pods' resources come from run parameters (string quantities), the CPU limit too:
    # a task's threads follow its pod's CPU limit
    executors = pipeline["deploymentSpec"]["executors"]
    res = executors["exec-tune-candidate"]["container"]["resources"]
    assert res == {
        "resourceCpuLimit": "{{$.inputs.parameters['pipelinechannel--tune_cpu']}}",
        "resourceCpuRequest": "{{$.inputs.parameters['pipelinechannel--tune_cpu']}}",
        "resourceMemoryRequest": "{{$.inputs.parameters['pipelinechannel--tune_memory']}}"}
    assert executors["exec-select-challenger"]["container"]["resources"] == {
        "resourceCpuLimit": "{{$.inputs.parameters['pipelinechannel--tune_cpu']}}"}
    defaults = pipeline["root"]["inputDefinitions"]["parameters"]
    assert (defaults["n_trials"]["defaultValue"], defaults["n_trials"]["parameterType"]) == (
        0, "NUMBER_INTEGER")  # no search by default: the fixed model
    assert defaults["tuning_seconds"]["parameterType"] == "NUMBER_DOUBLE"
    assert defaults["tune_cpu"]["defaultValue"] == "1"


def test_caching_is_off_for_ingest_and_every_task_that_writes_the_store(spec):
    tasks = _tasks(spec[0])
    assert tasks["ingest"]["cachingOptions"].get("enableCache", False) is False
    for name, task in tasks.items():
        if "componentRef" in task and not name.startswith(("condition-", "exit-", "for-loop-")):
            assert not task["cachingOptions"].get("enableCache", False), name


def test_every_task_gets_the_run_name_as_its_run_id(spec):
    for name, task in _tasks(spec[0]).items():
        params = task.get("inputs", {}).get("parameters", {})
        if "run_id" in params:
            assert params["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_name}}", name


def test_ingest_gets_the_recurring_runs_scheduled_time_as_its_logical_time(spec):
    # a run that starts late, or a catch-up, must judge the window of its schedule slot
    params = _tasks(spec[0])["ingest"]["inputs"]["parameters"]
    assert params["scheduled_time"]["runtimeValue"]["constant"] == (
        "{{$.pipeline_job_schedule_time_utc}}")


def test_store_tasks_mount_the_credentials_secret(spec):
    pipeline, platform = spec
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == {f"exec-{t}" for t in STORE_TASKS}
    for name, config in executors.items():
        (volume,) = config["secretAsVolume"]
        assert volume["secretName"] == GCS_SECRET and volume["mountPath"] == "/secrets/gcs"
        env = pipeline["deploymentSpec"]["executors"][name]["container"]["env"]
        assert env == [{"name": "GOOGLE_APPLICATION_CREDENTIALS",
                        "value": "/secrets/gcs/key.json"}]
    assert "env" not in pipeline["deploymentSpec"]["executors"]["exec-notify"]["container"]


def test_without_a_secret_nothing_is_mounted(tmp_path: Path):
    docs = list(yaml.safe_load_all(compile_pipeline(tmp_path, gcs_secret="").read_text()))
    assert len(docs) == 1
    for executor in docs[0]["deploymentSpec"]["executors"].values():
        assert "env" not in executor["container"]


def test_every_executor_runs_the_pinned_project_image_and_installs_nothing(spec):
    assert IMAGE.endswith(f":{__version__}")
    for name, executor in spec[0]["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["image"] == IMAGE, name
        assert "pip install" not in " ".join(container["command"]), name
    dockerfile = (REPO / "components" / "Dockerfile").read_text()
    assert "constraints.txt" in dockerfile and "USER 10001" in dockerfile


def test_parameters_are_typed_and_default_to_the_config_dataclasses(spec):
    params = spec[0]["root"]["inputDefinitions"]["parameters"]
    expected = {
        "store_uri": ("STRING", None), "schema_uri": ("STRING", None),
        "model_name": ("STRING", None), "isvc_name": ("STRING", None),
        "namespace": ("STRING", None), "run_date": ("STRING", ""),
        "window_days": ("NUMBER_INTEGER", WINDOW_DAYS),
        "lookback_days": ("NUMBER_INTEGER", LOOKBACK_DAYS),
        "p_value": ("NUMBER_DOUBLE", DriftConfig.p_value),
        "effect_threshold": ("NUMBER_DOUBLE", DriftConfig.effect_threshold),
        "min_samples": ("NUMBER_INTEGER", DriftConfig.min_samples),
        "min_new_labels": ("NUMBER_INTEGER", TriggerConfig.min_new_labels),
        "perf_drop": ("NUMBER_DOUBLE", TriggerConfig.perf_drop),
        "max_age_days": ("NUMBER_DOUBLE", TriggerConfig.max_age_days),
        "auto_threshold": ("NUMBER_DOUBLE", GateConfig.auto_threshold),
        "canary_min_labelled": ("NUMBER_INTEGER", CanaryConfig.min_labelled),
        "canary_max_holds": ("NUMBER_INTEGER", CanaryConfig.max_holds),
        "force_retrain": ("BOOLEAN", False), "notify_webhook": ("STRING", ""),
        "rollout_backend": ("STRING", "local"), "rollout_state": ("STRING", ""),
        "prometheus_url": ("STRING", ""),
        "pushgateway_url": ("STRING", ""),
        "drift_shards": ("LIST", [0]),  # compiled as [0.0]: protobuf numbers
        "ingest_shards": ("LIST", [0]),
        "n_trials": ("NUMBER_INTEGER", 0),  # 0: no search (TuningConfig.enabled False)
        "tuning_seconds": ("NUMBER_DOUBLE", TuningConfig.tuning_seconds),
        "tuning_storage": ("STRING", TuningConfig.storage),
        "warm_updates": ("BOOLEAN", TuningConfig.updates),
        "tune_cpu": ("STRING", "1"), "tune_memory": ("STRING", "2Gi"),
    }
    assert {k: (v["parameterType"], v.get("defaultValue")) for k, v in params.items()} == \
        expected


def test_window_defaults_match_the_core_loop():
    from driftloop.steps.ingest import run_ingest

    defaults = inspect.signature(run_ingest).parameters
    core = (defaults["window_days"].default, defaults["lookback_days"].default)
    assert core == (WINDOW_DAYS, LOOKBACK_DAYS)


def test_component_readmes_list_every_input_and_output():
    for name, comp in COMPONENTS.items():
        readme = (REPO / "components" / name / "README.md").read_text()
        spec = comp.component_spec
        for key in [*(spec.inputs or {}), *(spec.outputs or {})]:
            assert f"| `{key}` |" in readme, (name, key)
        assert "driftloop.steps." in readme


def test_compiling_imports_neither_sklearn_nor_alibi_detect(tmp_path: Path):
    code = (
        "import sys\n"
        "from driftloop.cli import main\n"
        f"assert main(['compile', '--out-dir', {str(tmp_path)!r}]) == 0\n"
        "heavy = [m for m in ('sklearn', 'alibi_detect', 'driftloop.steps', 'driftloop.steps.loop')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "pipelines" / "continuous_training.yaml").exists()
    assert (tmp_path / "components" / "tune_candidate" / "component.yaml").exists()


def test_the_canary_pipeline_only_ingests_and_judges_the_canary(fresh: Path):
    # the canary is judged on its own cadence (an hourly recurring run), not once a day
    doc = next(yaml.safe_load_all((fresh / "pipelines/canary_analysis.yaml").read_text()))
    assert doc["pipelineInfo"]["name"] == "canary-analysis"
    tasks = _tasks(doc)
    assert {"ingest", "analyse-canary", "notify-on-exit"} <= set(tasks)
    assert not {"select-challenger", "detect-drift", "promote-model"} & set(tasks)
    params = tasks["ingest"]["inputs"]["parameters"]
    assert params["scheduled_time"]["runtimeValue"]["constant"] == (
        "{{$.pipeline_job_schedule_time_utc}}")
    defaults = doc["root"]["inputDefinitions"]["parameters"]
    assert defaults["canary_max_holds"]["defaultValue"] == 24 * CanaryConfig.max_holds


def test_the_in_process_loop_pushes_under_the_pipelines_names():
    from driftloop.kfp.pipeline import CANARY_PIPELINE_NAME, PIPELINE_NAME
    from driftloop.steps.loop import CANARY_PIPELINE, PIPELINE

    assert (PIPELINE, CANARY_PIPELINE) == (PIPELINE_NAME, CANARY_PIPELINE_NAME)


def test_the_ab_pipeline_ingests_and_judges_the_ab_tests(fresh: Path):
    from driftloop.config import ABConfig
    from driftloop.kfp.pipeline import AB_PIPELINE_NAME
    from driftloop.steps.loop import AB_PIPELINE

    doc = next(yaml.safe_load_all((fresh / "pipelines/ab_analysis.yaml").read_text()))
    assert doc["pipelineInfo"]["name"] == AB_PIPELINE_NAME == AB_PIPELINE
    tasks = _tasks(doc)
    assert {"ingest", "analyse-ab", "notify-on-exit"} <= set(tasks)
    assert not {"select-challenger", "detect-drift", "analyse-canary"} & set(tasks)
    assert tasks["analyse-ab"]["dependentTasks"] == ["ingest"]
    defaults = doc["root"]["inputDefinitions"]["parameters"]
    auto = defaults["auto_promote"]
    assert (auto["defaultValue"], auto["parameterType"]) == (ABConfig.auto_promote, "BOOLEAN")
