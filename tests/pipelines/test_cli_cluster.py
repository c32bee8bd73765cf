"""`driftloop submit` / `schedule` against the local KFP v2beta1 stand-in (no backend runs here)."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftloop.cli import main
from standins.kfp_api import KfpApiStandIn, running

PACKAGE = Path(__file__).resolve().parents[2] / "pipelines" / "continuous_training.yaml"


@pytest.fixture(autouse=True)
def _no_kfp_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kfp.client.client as kfp_client

    monkeypatch.setattr(kfp_client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "ctx.json"))


@pytest.fixture
def api() -> Iterator[KfpApiStandIn]:
    yield from running(seed=3)


def _base(api: KfpApiStandIn) -> list[str]:
    return ["--host", api.url, "--package", str(PACKAGE), "--store", "gs://b/driftloop",
            "--schema", "gs://b/driftloop/schema.json", "--model", "tweets",
            "--namespace", "ml", "--service-account", "driftloop-pipeline"]


def test_submit_posts_typed_parameters_and_service_account(api, tmp_path: Path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"trigger": {"min_new_labels": 200}}))
    code = main(["submit", *_base(api), "--config", str(config), "--force"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    (post,) = api.calls("POST", r"/apis/v2beta1/runs$")
    body = post.json
    params = body["runtime_config"]["parameters"]
    assert params["min_new_labels"] == 200 and params["force_retrain"] is True
    assert params["store_uri"] == "gs://b/driftloop" and params["isvc_name"] == "tweets"
    assert body["service_account"] == "driftloop-pipeline"
    assert body["display_name"] == out["run_name"]
    # With kfp-kubernetes settings kfp.Client sends the pipeline and platform specs together.
    spec = body["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "continuous-training"
    assert "driftloop-gcs" in json.dumps(spec["platform_spec"])


def test_schedule_twice_with_one_name_leaves_one_schedule(api, capsys):
    args = ["schedule", *_base(api), "--cron", "0 0 * * *", "--name", "daily"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)["recurring_run_id"]
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)["recurring_run_id"]
    (left,) = api.recurring_runs_named("daily")
    assert left["recurring_run_id"] == second != first
    creates = api.calls("POST", r"/apis/v2beta1/recurringruns$")
    assert creates[0].json["trigger"]["cron_schedule"]["cron"] == "0 0 0 * * *"
    assert creates[0].json["max_concurrency"] == "1" and creates[0].json["no_catchup"] is True


def test_bad_cron_is_one_line_and_sends_nothing(api, capsys):
    code = main(["schedule", *_base(api), "--cron", "0 0 * *"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--cron" in err
    assert api.calls("POST") == []


def test_the_canary_analysis_is_scheduled_hourly_with_only_its_own_parameters(api, capsys):
    canary = PACKAGE.parent / "canary_analysis.yaml"
    args = [a if a != str(PACKAGE) else str(canary) for a in _base(api)]
    assert main(["schedule", *args, "--cron", "0 * * * *", "--name", "tweets-canary"]) == 0
    (create,) = api.calls("POST", r"/apis/v2beta1/recurringruns$")
    body = create.json
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 * * * *"
    params = body["runtime_config"]["parameters"]
    assert params["canary_min_labelled"] == 100 and "force_retrain" not in params
    assert "p_value" not in params and params["model_name"] == "tweets"
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "canary-analysis"
