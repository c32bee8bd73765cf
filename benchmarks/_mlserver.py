"""MLServer 1.7.1 + mlserver-sklearn serving the same model.joblib: the serving benchmark's peer.

MLServer is KServe's V2 runtime for scikit-learn (the ``kserve-mlserver`` ServingRuntime).
It runs from its own venv (``make mlserver``: .venvs/mlserver in the repository) with its default
settings (one inference worker process, ``parallel_workers: 1``); only the ports are set,
and ``OMP_NUM_THREADS=1``: what driftloop's predictor does for small batches (on a shared
2-CPU machine a second OpenMP thread per tree only waits; measured here with the default,
MLServer answered 3 requests/s under load), so the peer gets its best single-row setting.
A request asks for ``predict_proba`` (what driftloop's predictor computes) and sends the
features as a ``pd`` (pandas) request, the string column with content type ``str``, so
the pipeline gets the same DataFrame it was trained on (mlserver's ``PandasCodec``).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MODEL = "sample"
PATH = f"/v2/models/{MODEL}/infer"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def body(rows: list[dict[str, Any]]) -> bytes:
    """A V2 request of ``rows`` (x0, x1 FP64; segment BYTES) asking for predict_proba."""
    n = len(rows)
    return json.dumps({
        "parameters": {"content_type": "pd"},
        "inputs": [
            {"name": "x0", "shape": [n], "datatype": "FP64", "data": [r["x0"] for r in rows]},
            {"name": "x1", "shape": [n], "datatype": "FP64", "data": [r["x1"] for r in rows]},
            {"name": "segment", "shape": [n], "datatype": "BYTES",
             "parameters": {"content_type": "str"}, "data": [r["segment"] for r in rows]},
        ],
        "outputs": [{"name": "predict_proba"}],
    }).encode()


def probabilities(port: int, rows: list[dict[str, Any]]) -> list[float]:
    """MLServer's flat predict_proba output for ``rows`` (to check it answers the same)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", PATH, body=body(rows), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    if response.status != 200:
        raise SystemExit(f"MLServer: HTTP {response.status}: {answer}")
    return [float(x) for x in answer["outputs"][0]["data"]]


def version(venv: Path) -> str:
    """The MLServer and mlserver-sklearn versions installed in ``venv``."""
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "from importlib.metadata import version as v; "
                          "print(v('mlserver'), v('mlserver-sklearn'), v('scikit-learn'))"],
                         capture_output=True, text=True, check=True).stdout.split()
    return f"MLServer {out[0]} + mlserver-sklearn {out[1]} (scikit-learn {out[2]})"


@contextmanager
def mlserver(venv: Path, model_dir: Path, workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes],
                                                                          int]]:
    """Serve ``model_dir/model.joblib`` with MLServer from ``venv``; yield (process, port)."""
    exe = venv / "bin" / "mlserver"
    if not exe.exists():
        raise SystemExit(f"{exe}: not installed (run `make mlserver`)")
    folder = workdir / "mlserver"
    (folder / MODEL).mkdir(parents=True)
    shutil.copy(model_dir / "model.joblib", folder / MODEL / "model.joblib")
    (folder / MODEL / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"}}))
    port = _free_port()
    (folder / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": _free_port(),
        "metrics_port": _free_port(), "debug": False}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(exe), "start", str(folder)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=folder, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"MLServer exited with {proc.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", f"/v2/models/{MODEL}/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("MLServer: not ready after 120 s")
            time.sleep(0.2)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
