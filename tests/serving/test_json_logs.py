"""The services' logs as JSON: the sink and the predictor started as their containers are.

Each process is started on 127.0.0.1 with a free port and stopped with SIGTERM; its
stderr is read after it exits and every line must be one JSON object.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from driftloop import logs
from driftloop.data.storage import LocalStore
from driftloop.serving.server import start_app
from driftloop.serving.sink import create_app
from driftloop.serving.sink_pairing import PayloadSink

MODEL = "sample"  # the registered fixture's model (tests/serving/conftest.py)

REQUIRED = ("time", "level", "logger", "message")
TIME = "2026-01-01T00:00:00Z"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != logs.ENV_VAR}
    return {**env, **extra}


def _json_lines(text: str) -> list[dict]:
    lines = text.splitlines()
    assert lines, "the process logged nothing"
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(record, dict) and set(REQUIRED) <= set(record), line
        records.append(record)
    return records


def _wait_ready(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, "did not start"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> str:
    """SIGTERM, wait for a clean exit, return everything it wrote to stderr."""
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return err


def test_sink_logs_one_json_object_per_line(tmp_path: Path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "driftloop.serving.sink", "--store", str(tmp_path / "s"),
         "--host", "127.0.0.1", "--port", str(port), "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, f"{url}/healthz")
        ok = httpx.post(f"{url}/feedback", json={"id": "j1", "label": "yes",
                                                 "timestamp": TIME})
        bad = httpx.post(f"{url}/", content=b"{}", headers={"ce-id": "1"})
        assert (ok.status_code, bad.status_code) == (200, 400)
    finally:
        err = _stop(proc)
    records = _json_lines(err)
    assert {r["logger"] for r in records} >= {"uvicorn.error", "uvicorn.access"}
    access = [(r["method"], r["path"], r["status"]) for r in records
              if r["logger"] == "uvicorn.access"]
    assert ("POST", "/feedback", 200) in access and ("POST", "/", 400) in access
    assert all(r["time"].endswith("Z") for r in records)
    assert not any("color_message" in r for r in records)


def test_sink_json_from_the_environment_and_its_store_error_is_one_json_line(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    done = subprocess.run(
        [sys.executable, "-m", "driftloop.serving.sink", "--store", str(not_a_folder),
         "--port", str(_free_port())],
        capture_output=True, text=True, timeout=60, env=_env(**{logs.ENV_VAR: "json"}),
    )
    assert done.returncode != 0
    (record,) = _json_lines(done.stderr)
    assert record["level"] == "ERROR" and record["logger"] == "driftloop.serving.sink"
    assert record["message"].startswith("driftloop sink: error: store ")


@pytest.mark.parametrize(("args", "environ", "named"), [
    (["--log-format", "xml"], {}, "--log-format"),
    ([], {logs.ENV_VAR: "yaml"}, logs.ENV_VAR),
])
def test_sink_bad_log_format_is_one_line_naming_the_flag(tmp_path, args, environ, named):
    done = subprocess.run(
        [sys.executable, "-m", "driftloop.serving.sink", "--store", str(tmp_path / "s"),
         "--port", str(_free_port()), *args],
        capture_output=True, text=True, timeout=60, env=_env(**environ),
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"driftloop sink: error: {named}: ")
    assert not (tmp_path / "s").exists()  # refused before anything was opened


def test_predictor_logs_json_with_its_model_and_version(registered, tmp_path: Path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "driftloop.serving.predictor", "--model_dir",
         str(registered.folder), "--model_name", MODEL, "--host", "127.0.0.1",
         "--http_port", str(port), "--log_format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, f"{url}/v2/health/ready")
        answer = httpx.post(f"{url}/v1/models/{MODEL}:predict",
                            json={"instances": [{"x0": 0.1, "x1": -1.0, "segment": "north"}]})
        assert answer.status_code == 200
    finally:
        err = _stop(proc)
    records = _json_lines(err)
    assert all(r["model"] == MODEL and r["version"] == registered.version for r in records)
    assert any(r["logger"] == "uvicorn.access" and r["status"] == 200 for r in records)
    # A tampered model in JSON mode: the load error is the one line, and it is JSON.
    folder = tmp_path / "bad"
    shutil.copytree(registered.folder, folder)
    (folder / "model.joblib").write_bytes(b"not the model")
    bad = subprocess.run(
        [sys.executable, "-m", "driftloop.serving.predictor", "--model_dir", str(folder),
         "--http_port", str(port)],
        capture_output=True, text=True, timeout=60, env=_env(**{logs.ENV_VAR: "json"}),
    )
    assert bad.returncode == 3
    (record,) = _json_lines(bad.stderr)
    assert "sha256" in record["message"] and record["model"] == "model"


def test_in_process_servers_log_through_the_same_formatter(tmp_path: Path):
    # What `driftloop --log-format json demo` does: its sink (and gateway) are uvicorn
    # servers in threads of the command's process, so the command's handler formats them.
    stream = io.StringIO()
    sink = PayloadSink(LocalStore(tmp_path / "s", create=True))
    with logs.configure_logging("json", stream=stream):
        with start_app(create_app(sink), access_log=True, log_level="info") as server:
            assert httpx.post(f"{server.url}/feedback", json={
                "id": "p1", "label": "yes", "timestamp": TIME}).status_code == 200
        sink.close()
    records = _json_lines(stream.getvalue())
    assert ("POST", "/feedback", 200) in [(r.get("method"), r.get("path"), r.get("status"))
                                          for r in records]
