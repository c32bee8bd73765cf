"""Payload sink sustained throughput over loopback, with a zero-loss check afterwards.

The sink runs as its own process (``python -m driftloop.serving.sink``) on 127.0.0.1 with a
local folder store (append mode: one fsync per event). Client threads post KServe logger
CloudEvent pairs (a request event with 2 instances, then its response event) for
``--seconds`` seconds each over keep-alive ``http.client`` connections. After SIGTERM, every
pair that got two 200s must have exactly its records in ``requests/`` (no loss, no
duplicates); ingest must read them all.

Run: ``.venv/bin/python benchmarks/sink_throughput.py [--seconds 10] [--clients 1,4]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from driftloop.data.ingest import ingest
from driftloop.data.storage import LocalStore
from driftloop.demo.sample import sample_schema

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
INSTANCES = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sink(store: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "driftloop.serving.sink", "--store", str(store),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"sink exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("sink did not become ready")


def headers(ce_id: str, ce_type: str) -> dict[str, str]:
    return {"Ce-Id": ce_id, "Ce-Type": ce_type, "Ce-Source": "bench", "Ce-Specversion": "1.0",
            "Ce-Time": dt.datetime.now(dt.UTC).isoformat(), "Ce-Inferenceservicename": "s",
            "Ce-Namespace": "ml", "Ce-Component": "predictor", "Ce-Endpoint": "default",
            "Content-Type": "application/json"}


REQUEST = json.dumps({"instances": [
    {"x0": 0.25 * i, "x1": -0.5, "segment": "north"} for i in range(INSTANCES)
]}).encode()
RESPONSE = json.dumps({"predictions": [
    {"class": "yes", "probabilities": {"no": 0.3, "yes": 0.7}, "model_version": "v1"}
    for _ in range(INSTANCES)
], "model_version": "v1"}).encode()


def client(port: int, name: str, seconds: float, accepted: list[str],
           latencies: list[float], errors: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        ce_id = f"{name}-{i}"
        i += 1
        ok = True
        for ce_type, body in ((REQUEST_TYPE, REQUEST), (RESPONSE_TYPE, RESPONSE)):
            start = time.perf_counter()
            conn.request("POST", "/", body=body, headers=headers(ce_id, ce_type))
            response = conn.getresponse()
            response.read()
            latencies.append(time.perf_counter() - start)
            if response.status != 200:
                errors.append(f"{ce_id} {ce_type}: HTTP {response.status}")
                ok = False
        if ok:
            accepted.append(ce_id)
    conn.close()


def run(clients: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="driftloop-sink-bench-") as tmp:
        root = Path(tmp) / "store"
        port = free_port()
        proc = start_sink(root, port)
        accepted: list[list[str]] = [[] for _ in range(clients)]
        latencies: list[list[float]] = [[] for _ in range(clients)]
        errors: list[str] = []
        threads = [threading.Thread(target=client, args=(port, f"c{c}", seconds, accepted[c],
                                                         latencies[c], errors))
                   for c in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=30)

        store = LocalStore(root)
        per_event: Counter[str] = Counter()
        for key in store.list("requests"):
            for line in store.read_text(key).splitlines():
                per_event[json.loads(line)["event_id"]] += 1
        ok_ids = [i for a in accepted for i in a]
        missing = [i for i in ok_ids if per_event[i] != INSTANCES]
        days = sorted({k.split("dt=")[1][:10] for k in store.list("requests")})
        counts = ingest(store, sample_schema(), dt.date.fromisoformat(days[0]),
                        dt.date.fromisoformat(days[-1])).report.counts
        lat = np.asarray([x for chunk in latencies for x in chunk]) * 1000
        return {
            "clients": clients, "seconds": wall, "pairs": len(ok_ids),
            "events_s": 2 * len(ok_ids) / wall, "records_s": INSTANCES * len(ok_ids) / wall,
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "errors": len(errors), "missing": len(missing),
            "extra": sum(per_event.values()) - INSTANCES * len(ok_ids),
            "ingested": counts.accepted, "exit": code,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", default="1,4", help="comma-separated client counts")
    args = parser.parse_args()
    rows = [run(int(c), args.seconds) for c in args.clients.split(",")]
    print(f"\nPayload sink, append mode with one fsync per event, {INSTANCES} instances per "
          f"pair ({platform.python_version()}, {os.cpu_count()} CPUs)\n")
    print("| clients | seconds | pairs | events/s | records/s | p50 ms | p99 ms | HTTP errors "
          "| lost | extra | ingested | exit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['seconds']:.1f} | {r['pairs']} | {r['events_s']:.0f} | "
              f"{r['records_s']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} | "
              f"{r['missing']} | {r['extra']} | {r['ingested']} | {r['exit']} |")
    if any(r["missing"] or r["extra"] or r["errors"] for r in rows):
        raise SystemExit("LOSS OR DUPLICATES: see the table")


if __name__ == "__main__":
    main()
