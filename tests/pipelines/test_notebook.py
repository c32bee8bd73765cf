"""Execute notebooks/submit_pipeline.ipynb headlessly against the KFP API stand-in."""

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from standins.kfp_api import KfpApiStandIn, running

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "submit_pipeline.ipynb"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("driftloop.kfp.pipeline") is None,
    reason="pipeline not built yet (driftloop.kfp.pipeline is missing)",
)


@pytest.fixture
def api() -> Iterator[KfpApiStandIn]:
    yield from running(seed=11)


def set_parameters(nb: Any, **values: object) -> None:
    """Rewrite assignments in the cell tagged ``parameters`` (each name must be there once)."""
    (cell,) = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    source = cell.source
    for name, value in values.items():
        pattern = re.compile(rf"^{name} = .*$", re.MULTILINE)
        assert len(pattern.findall(source)) == 1, f"{name} is not assigned once in {source!r}"
        source = pattern.sub(lambda _m, n=name, v=value: f"{n} = {v!r}", source)
    cell.source = source


def test_notebook_has_a_parameters_cell_first() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]

    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(c.outputs == [] and c.execution_count is None for c in code), "commit it clean"
    assert not any(re.search(r"^\s*(def|class) ", c.source, re.MULTILINE) for c in code)


def test_notebook_submits_and_schedules(
    api: KfpApiStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp/context.json, no ~/.ipython
    nb = nbformat.read(NOTEBOOK, as_version=4)
    set_parameters(
        nb,
        KFP_HOST=api.url,
        PACKAGE_PATH=str(tmp_path / "continuous_training.yaml"),
        STORE_URI="gs://nb-bucket/store",
        CRON="15 4 * * 1-5",
    )

    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    assert (tmp_path / "continuous_training.yaml").is_file()
    (run,) = api.calls("POST", r"/apis/v2beta1/runs$")
    (recurring,) = api.calls("POST", r"/apis/v2beta1/recurringruns$")
    expected_params = {
        "store_uri": "gs://nb-bucket/store",
        "schema_uri": "gs://my-bucket/driftloop/schema.yaml",
        "model_name": "sentiment",
        "isvc_name": "sentiment",
        "namespace": "driftloop",
    }
    for body in (run.json, recurring.json):
        spec = body["pipeline_spec"]
        spec = spec.get("pipeline_spec", spec)  # {pipeline_spec, platform_spec} with kfp-kubernetes
        assert spec["pipelineInfo"]["name"] == "continuous-training"
        assert body["runtime_config"]["parameters"] == expected_params
        assert body["service_account"] == "driftloop-pipeline"
    assert run.json["display_name"] == "driftloop-manual"
    assert recurring.json["display_name"] == "driftloop-nightly"
    assert recurring.json["trigger"]["cron_schedule"]["cron"] == "0 15 4 * * 1-5"
    assert recurring.json["max_concurrency"] == "1" and recurring.json["no_catchup"] is True
    assert len(api.calls("POST", r"/experiments$")) == 1

    # the last cell shows the schedule it created (after kfp's HTML link to the experiment)
    outputs = nb.cells[-1].outputs
    (shown,) = [o["data"]["text/plain"] for o in outputs if o["output_type"] == "execute_result"]
    assert "'cron': '0 15 4 * * 1-5'" in shown and "'status': 'ENABLED'" in shown
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
