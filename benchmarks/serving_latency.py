"""Predictor latency over loopback: single-row V1 and V2, sequential and concurrent clients.

The predictor runs as its own process (``python -m driftloop.serving.predictor``, the
container entry point) on 127.0.0.1, serving a model trained on the generated sample store
with the default TrainConfig. Clients use keep-alive ``http.client`` connections, one per
thread. A last row times ``DriftloopModel.predict`` in-process (no HTTP) to show how much
of the latency is the model itself.

Run: ``.venv/bin/python benchmarks/serving_latency.py [--requests 1000] [--clients 8]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.config import TrainConfig
from driftloop.sample import make_rows, sample_schema, write_sample_store
from driftloop.train import save_model_artifact, train_model

MODEL = "sample"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def train(folder: Path, max_iter: int) -> Path:
    root = folder / "store"
    write_sample_store(root, days=1, rows_per_day=10, reference_rows=2000, seed=0)
    reference = pd.read_parquet(root / f"reference/{MODEL}/seed.parquet")
    result = train_model(reference, sample_schema(), TrainConfig(max_iter=max_iter),
                         model_name=MODEL)
    return save_model_artifact(result, folder / "model")


def start_predictor(model_dir: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "driftloop.serving.predictor", "--model_dir", str(model_dir),
         "--model_name", MODEL, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"predictor exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", f"/v1/models/{MODEL}")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("predictor did not become ready")


def bodies(n: int) -> tuple[list[bytes], list[bytes]]:
    rows = make_rows(n, np.random.default_rng(1), drifted=False)
    v1, v2 = [], []
    for r in rows.to_dict(orient="records"):
        v1.append(json.dumps({"instances": [{"x0": r["x0"], "x1": r["x1"],
                                             "segment": r["segment"]}]}).encode())
        v2.append(json.dumps({"id": "b", "inputs": [
            {"name": "x0", "shape": [1], "datatype": "FP64", "data": [r["x0"]]},
            {"name": "x1", "shape": [1], "datatype": "FP64", "data": [r["x1"]]},
            {"name": "segment", "shape": [1], "datatype": "BYTES", "data": [r["segment"]]},
        ]}).encode())
    return v1, v2


def client_run(port: int, path: str, payloads: list[bytes], out: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    for body in payloads:
        start = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"{path}: HTTP {response.status}")
        out.append(time.perf_counter() - start)
    conn.close()


def measure(port: int, path: str, payloads: list[bytes], clients: int) -> dict[str, float]:
    per_client = [payloads[i::clients] for i in range(clients)]
    results: list[list[float]] = [[] for _ in range(clients)]
    threads = [threading.Thread(target=client_run, args=(port, path, p, r))
               for p, r in zip(per_client, results, strict=True)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.asarray([x for r in results for x in r]) * 1000
    return {"n": len(lat), "p50": float(np.percentile(lat, 50)),
            "p90": float(np.percentile(lat, 90)), "p99": float(np.percentile(lat, 99)),
            "mean": float(lat.mean()), "rps": len(lat) / wall}


def in_process(model_dir: Path, payloads: list[bytes]) -> dict[str, float]:
    from driftloop.serving.predictor import DriftloopModel

    model = DriftloopModel(MODEL, model_dir=model_dir)
    model.load()
    decoded = [json.loads(p) for p in payloads]
    for body in decoded[:50]:
        model.predict(body)
    lat = []
    for body in decoded:
        start = time.perf_counter()
        model.predict(body)
        lat.append((time.perf_counter() - start) * 1000)
    arr = np.asarray(lat)
    return {"n": len(arr), "p50": float(np.percentile(arr, 50)),
            "p90": float(np.percentile(arr, 90)), "p99": float(np.percentile(arr, 99)),
            "mean": float(arr.mean()), "rps": 1000.0 / statistics.fmean(lat)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per scenario")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--max-iter", type=int, default=TrainConfig().max_iter,
                        help="boosting iterations of the model (default: TrainConfig's)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="driftloop-bench-") as tmp:
        model_dir = train(Path(tmp), args.max_iter)
        port = free_port()
        proc = start_predictor(model_dir, port)
        try:
            v1, v2 = bodies(args.requests)
            measure(port, f"/v1/models/{MODEL}:predict", v1[:100], 1)  # warm-up
            rows = [
                ("V1 sequential", measure(port, f"/v1/models/{MODEL}:predict", v1, 1)),
                ("V2 sequential", measure(port, f"/v2/models/{MODEL}/infer", v2, 1)),
                (f"V1 {args.clients} clients",
                 measure(port, f"/v1/models/{MODEL}:predict", v1, args.clients)),
                (f"V2 {args.clients} clients",
                 measure(port, f"/v2/models/{MODEL}/infer", v2, args.clients)),
            ]
        finally:
            proc.terminate()
            proc.wait(timeout=15)
        rows.append(("in-process predict (no HTTP)", in_process(model_dir, v1)))

    print(f"\nPredictor latency, single-row requests over loopback "
          f"({platform.python_version()}, {os.cpu_count()} CPUs, HistGradientBoosting "
          f"max_iter={args.max_iter})\n")
    print(f"| {'scenario':<30} | {'n':>5} | {'p50 ms':>7} | {'p90 ms':>7} | {'p99 ms':>7} "
          f"| {'mean ms':>7} | {'req/s':>7} |")
    print(f"|{'-' * 32}|{'-' * 7}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
    for name, r in rows:
        print(f"| {name:<30} | {r['n']:>5.0f} | {r['p50']:>7.2f} | {r['p90']:>7.2f} | "
              f"{r['p99']:>7.2f} | {r['mean']:>7.2f} | {r['rps']:>7.0f} |")


if __name__ == "__main__":
    main()
