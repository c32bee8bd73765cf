"""``driftloop status | promote | rollback`` on a local backend and on the Kubernetes stand-in."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driftloop.cli import main
from driftloop.data.storage import LocalStore
from driftloop.models.registry import Registry
from driftloop.rollout import version_storage_uri
from standins.k8s_api import K8sApiStandIn, running

MODEL = "m"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    registry = Registry(LocalStore(root, create=True), MODEL)
    for version in ("v1", "v2"):
        folder = tmp_path / "artifacts" / version
        folder.mkdir(parents=True)
        data = f"model {version}".encode()
        (folder / "model.joblib").write_bytes(data)
        (folder / "metadata.json").write_text(json.dumps(
            {"version": version, "model_sha256": hashlib.sha256(data).hexdigest()}))
        registry.register(folder)
    return root


def _flags(store: Path) -> list[str]:
    return ["--store", str(store), "--model", MODEL, "--namespace", "ml"]


def test_promote_status_rollback_on_the_local_backend(store: Path, capsys):
    flags = _flags(store)
    code, status, _ = _run(capsys, "status", *flags)
    assert code == 0 and status["champion"] is None and status["serving"] is None

    code, step, _ = _run(capsys, "promote", "v1", *flags)
    assert code == 0 and step["action"] == "deploy" and step["champion"] == "v1"
    assert (store / "rollout" / "inferenceservices" / "ml" / f"{MODEL}.yaml").exists()

    code, step, _ = _run(capsys, "promote", "v2", *flags, "--run-id", "manual-1")
    assert code == 0 and step["action"] == "start" and step["to_percent"] == 10
    assert step["run_id"] == "manual-1" and (store / "runs/manual-1/rollout.json").exists()

    code, status, _ = _run(capsys, "status", *flags)
    assert (status["champion"], status["canary"], status["canary_percent"]) == ("v1", "v2", 10)
    assert sorted(t["percent"] for t in status["serving"]["traffic"]) == [10, 90]
    assert status["last_step"]["action"] == "start" and status["problems"] == []

    code, step, _ = _run(capsys, "rollback", *flags, "--reason", "looks off")
    assert code == 0 and step["action"] == "rollback" and step["from_percent"] == 10
    code, status, _ = _run(capsys, "status", *flags)
    assert status["canary"] is None and status["canary_percent"] is None
    assert [t["percent"] for t in status["serving"]["traffic"]] == [100]
    registry = Registry(LocalStore(store), MODEL)
    assert status["serving"]["storage_uri"] == version_storage_uri(registry, "v1")
    assert "looks off" in registry.aliases().history[-1].reason


def test_promote_full_then_rollback_the_champion(store: Path, capsys):
    flags = _flags(store)
    _run(capsys, "promote", "v1", *flags)
    code, step, _ = _run(capsys, "promote", "v2", "--full", *flags)
    assert code == 0 and step["action"] == "promote" and step["to_percent"] == 100
    assert (step["champion"], step["previous"]) == ("v2", "v1")
    code, step, _ = _run(capsys, "rollback", *flags)
    assert code == 0 and (step["champion"], step["previous"]) == ("v1", "v2")
    code, status, _ = _run(capsys, "status", *flags)
    registry = Registry(LocalStore(store), MODEL)
    assert status["serving"]["storage_uri"] == version_storage_uri(registry, "v1")


def test_errors_are_one_line(store: Path, tmp_path: Path, capsys):
    flags = _flags(store)
    code, out, err = _run(capsys, "rollback", *flags)
    assert code == 2 and out is None and "nothing to roll back" in err
    assert err.count("\n") == 1
    code, _, err = _run(capsys, "status", "--store", "gs://bucket/prefix", "--model", MODEL)
    assert code == 2 and "only for a local store" in err
    code, _, err = _run(capsys, "promote", "v9", *flags)
    assert code == 2 and "no version 'v9'" in err


@pytest.fixture
def api() -> Iterator[K8sApiStandIn]:
    yield from running()


def test_the_kubernetes_backend_against_the_api_stand_in(store: Path, api: K8sApiStandIn,
                                                          capsys):
    flags = [*_flags(store), "--backend", "kubernetes", "--kube-host", api.url,
             "--isvc", "fraud"]
    code, step, _ = _run(capsys, "promote", "v1", *flags)
    assert code == 0 and step["action"] == "deploy"
    code, step, _ = _run(capsys, "promote", "v2", *flags)
    assert code == 0 and step["action"] == "start"
    registry = Registry(LocalStore(store), MODEL)
    predictor = api.get("ml", "fraud")["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["model"]["storageUri"] == version_storage_uri(registry, "v2")
    code, status, _ = _run(capsys, "status", *flags)
    assert status["canary_percent"] == 10 and status["service"].startswith(
        "InferenceService ml/fraud")
    assert not (store / "rollout").exists()  # nothing local for the kubernetes backend


def test_the_ready_timeout_flag_reaches_the_kubernetes_backend():
    from driftloop.cli.parser import build_parser
    from driftloop.rollout import make_backend
    from driftloop.rollout.base import DEFAULT_READY_TIMEOUT

    args = build_parser().parse_args(["status", "--store", "s", "--model", "m", "--backend",
                                      "kubernetes", "--ready-timeout", "30"])
    backend = make_backend("kubernetes", name="m", kube_host="http://127.0.0.1:9",
                           ready_timeout=args.ready_timeout)
    assert backend.ready_timeout == 30.0
    assert make_backend("kubernetes", name="m",
                        kube_host="http://127.0.0.1:9").ready_timeout == DEFAULT_READY_TIMEOUT
