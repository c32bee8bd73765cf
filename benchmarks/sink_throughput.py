"""Payload sink throughput, group commit vs one fsync per event, with a kill -9 in the middle.

The sink runs as its own process (``python -m driftloop.serving.sink``) on 127.0.0.1 with a
local folder store (append mode), once with group commit (the default: one fsync per file
per batch, ``--commit-max-wait-ms 2``) and once with ``--commit-max-batch 1`` (one write +
fsync per event, as before group commit), side by side in the same run.

Clients: ``--clients`` separate processes (8), each playing one predictor pod's KServe
agent, which sends its logger CloudEvents from a pool of ``--workers`` goroutines (KServe
``cmd/agent/main.go``: ``--workers``, default 5; ``pkg/logger/worker.go``). Each worker
holds one keep-alive HTTP/1.1 connection (a raw socket: a few microseconds of client CPU
per event) and posts a request event (2 instances), then, once it is acknowledged, its
response event. Separate processes, so the clients never share a GIL with each other or
with the sink; the table shows the clients' CPU and the share of their time spent waiting
for the sink's answer (near 100 %: the clients are not the bottleneck).

Halfway through, the sink is killed with SIGKILL and restarted on the same store. A worker
whose connection breaks does not resend the event (KServe's logger never retries,
``worker.go``) and goes on with the next one once the sink is back. At the end the sink
writes every still-unpaired request alone (``--pending-ttl 2``), is stopped with SIGTERM,
and the store is counted twice: every acknowledged event's rows in the raw files, and in
what ``driftloop.data.ingest`` accepts. Every acknowledged pair (and every acknowledged
request whose response was cut off by the kill) must be there exactly once.

Run: ``.venv/bin/python benchmarks/sink_throughput.py [--seconds 60] [--quick]``; writes
benchmarks/results/sink_throughput{,_quick}.{md,csv,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_info

from driftloop.data.ingest import ingest
from driftloop.data.storage import LocalStore
from driftloop.demo.sample import sample_schema

NAME = "sink_throughput"
RESULTS = Path(__file__).parent / "results"
REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
INSTANCES = 2
PENDING_TTL = 2.0
MODES = {"group commit": [], "one fsync per event": ["--commit-max-batch", "1"]}

REQUEST = json.dumps({"instances": [
    {"x0": 0.25 * i, "x1": -0.5, "segment": "north"} for i in range(INSTANCES)
]}).encode()
RESPONSE = json.dumps({"predictions": [
    {"class": "yes", "probabilities": {"no": 0.3, "yes": 0.7}, "model_version": "v1"}
    for _ in range(INSTANCES)
], "model_version": "v1"}).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sink(store: Path, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "driftloop.serving.sink", "--store", str(store),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         "--pending-ttl", str(PENDING_TTL), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"sink exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("sink did not become ready")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Connection:
    """One keep-alive HTTP/1.1 connection on a raw socket: cheap on the client's CPU."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def post(self, head: bytes, body: bytes) -> int:
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        header, self.buf = self.buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in header.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        while len(self.buf) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        self.buf = self.buf[length:]
        return int(header[9:12])

    def close(self) -> None:
        self.sock.close()


def head(ce_id: str, ce_type: str, length: int) -> bytes:
    now = dt.datetime.now(dt.UTC).isoformat()
    return (f"POST / HTTP/1.1\r\nHost: sink\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\nCe-Id: {ce_id}\r\nCe-Type: {ce_type}\r\n"
            f"Ce-Source: bench\r\nCe-Specversion: 1.0\r\nCe-Time: {now}\r\n"
            f"Ce-Inferenceservicename: s\r\nCe-Namespace: ml\r\nCe-Component: predictor\r\n"
            f"Ce-Endpoint: default\r\n\r\n").encode()


def worker(port: int, name: str, end: float, out: dict[str, Any]) -> None:
    """Post pairs until ``end``; remember what was acknowledged and how long it took."""
    conn: Connection | None = None
    i = 0
    while time.monotonic() < end:
        if conn is None:
            try:
                conn = Connection(port)
            except OSError:
                time.sleep(0.02)  # the sink is restarting
                continue
        ce_id = f"{name}-{i}"
        i += 1
        try:
            for ce_type, body in ((REQUEST_TYPE, REQUEST), (RESPONSE_TYPE, RESPONSE)):
                started = time.perf_counter()
                status = conn.post(head(ce_id, ce_type, len(body)), body)
                done = time.perf_counter()
                if status != 200:
                    out["errors"] += 1
                    break
                out["latency"].append(done - started)
                out["acked_at"].append(time.monotonic())
                out["requests" if ce_type == REQUEST_TYPE else "pairs"].append(ce_id)
        except (OSError, ValueError):
            out["broken"] += 1  # killed mid-request: not acknowledged, not resent
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


def client_process(port: int, index: int, workers: int, end: float, path: str) -> None:
    """One KServe agent: ``workers`` connections; results to ``path`` as JSON."""
    outs = [{"latency": [], "acked_at": [], "requests": [], "pairs": [], "errors": 0,
             "broken": 0} for _ in range(workers)]
    threads = [threading.Thread(target=worker, args=(port, f"a{index}w{w}", end, outs[w]))
               for w in range(workers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    Path(path).write_text(json.dumps({"outs": outs, "cpu": time.process_time(),
                                      "wall": wall}))


def count_store(root: Path) -> tuple[Counter[str], Counter[str], Any]:
    """Rows per event id in the raw files, rows per event id that ingest accepted."""
    store = LocalStore(root)
    raw: Counter[str] = Counter()
    for key in store.list("requests"):
        for line in store.read_text(key).splitlines():
            with contextlib.suppress(ValueError, KeyError):  # a torn line: ingest
                raw[json.loads(line)["event_id"]] += 1  # quarantines it
    days = sorted({k.split("dt=")[1][:10] for k in store.list("requests")})
    result = ingest(store, sample_schema(), dt.date.fromisoformat(days[0]),
                    dt.date.fromisoformat(days[-1]))
    accepted: Counter[str] = Counter(
        str(i).rsplit("-", 1)[0] for i in result.records["id"])
    return raw, accepted, result.report.counts


def run(mode: str, clients: int, workers: int, seconds: float, kill: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="driftloop-sink-bench-") as tmp:
        root, port = Path(tmp) / "store", free_port()
        proc = start_sink(root, port, MODES[mode])
        load_before = os.getloadavg()
        start = time.monotonic()
        end = start + seconds
        ctx = mp.get_context("fork")
        paths = [str(Path(tmp) / f"client{c}.json") for c in range(clients)]
        procs = [ctx.Process(target=client_process, args=(port, c, workers, end, paths[c]))
                 for c in range(clients)]
        for p in procs:
            p.start()
        sink_cpu = 0.0
        down = (0.0, 0.0)
        if kill:
            time.sleep(max(0.0, start + seconds / 2 - time.monotonic()))
            sink_cpu += cpu_seconds(proc.pid)
            killed = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            proc = start_sink(root, port, MODES[mode])
            down = (killed - start, time.monotonic() - start)
        for p in procs:
            p.join()
        wall = time.monotonic() - start
        sink_cpu += cpu_seconds(proc.pid)
        load = os.getloadavg()
        time.sleep(PENDING_TTL + 2.5)  # acknowledged lone requests are written alone
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=30)
        outs, client_cpu = [], 0.0
        for path in paths:
            doc = json.loads(Path(path).read_text())
            outs.extend(doc["outs"])
            client_cpu += doc["cpu"]
        raw, accepted, counts = count_store(root)

    pairs = {i for o in outs for i in o["pairs"]}
    lone = {i for o in outs for i in o["requests"]} - pairs  # response cut off by the kill
    acked = pairs | lone
    lat = np.asarray([x for o in outs for x in o["latency"]]) * 1000
    acked_at = np.asarray([x for o in outs for x in o["acked_at"]]) - start
    up = wall - (down[1] - down[0])
    per_second = np.bincount(acked_at.astype(int), minlength=int(wall) + 1)[: int(wall)]
    steady = [n for s, n in enumerate(per_second)
              if not down[0] - 1 <= s <= down[1] + 1 and 1 <= s < int(wall) - 1]
    return {
        "mode": mode, "clients": clients, "workers": workers, "seconds": wall,
        "events": len(lat), "events_s": len(lat) / up,
        "min_1s": float(min(steady)) if steady else float("nan"),
        "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
        "sink_cpu": sink_cpu / wall, "sink_us": 1e6 * sink_cpu / max(len(lat), 1),
        "client_cpu": client_cpu / wall,
        "client_us": 1e6 * client_cpu / max(len(lat), 1),
        "waiting": float(lat.sum() / 1000 / (clients * workers * up)),
        "downtime": down[1] - down[0], "broken": sum(o["broken"] for o in outs),
        "errors": sum(o["errors"] for o in outs),
        "acked_pairs": len(pairs), "acked_lone": len(lone),
        "lost": sum(1 for i in acked if raw[i] < INSTANCES),
        "duplicated": sum(1 for i in acked if raw[i] > INSTANCES),
        "ingest_missing": sum(1 for i in acked if accepted[i] != INSTANCES),
        "ingest_duplicates": counts.duplicates,
        "unacked_stored": sum(1 for i in raw if i not in acked),
        "exit": code, "load": " / ".join(f"{x:.2f}" for x in load),
        "load_before": " / ".join(f"{x:.2f}" for x in load_before),
        "per_second": per_second.tolist(), "down": down,
    }


COLUMNS = [
    ("mode", "mode", "{}"), ("clients x workers", None, "{}"), ("s", "seconds", "{:.0f}"),
    ("acked events", "events", "{}"), ("events/s (up)", "events_s", "{:.0f}"),
    ("slowest 1 s", "min_1s", "{:.0f}"), ("p50 ms", "p50", "{:.2f}"), ("p99 ms", "p99", "{:.2f}"),
    ("sink CPU cores", "sink_cpu", "{:.2f}"), ("sink CPU us/event", "sink_us", "{:.0f}"),
    ("client CPU cores", "client_cpu", "{:.2f}"),
    ("client us/event", "client_us", "{:.0f}"), ("clients waiting", "waiting", "{:.0%}"),
    ("kill gap s", "downtime", "{:.1f}"), ("acked pairs", "acked_pairs", "{}"),
    ("acked lone requests", "acked_lone", "{}"), ("lost", "lost", "{}"),
    ("twice", "duplicated", "{}"), ("missing in ingest", "ingest_missing", "{}"),
    ("ingest duplicates", "ingest_duplicates", "{}"),
    ("unacked but stored", "unacked_stored", "{}"), ("HTTP errors", "errors", "{}"),
    ("exit", "exit", "{}"), ("load 1/5/15 min", "load", "{}"),
]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(c[0] for c in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [f"{r['clients']} x {r['workers']}" if key is None else fmt.format(r[key])
                 for _, key, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for r in rows:
        ax.plot(range(len(r["per_second"])), r["per_second"],
                label=f"{r['mode']} (p99 {r['p99']:.1f} ms)")
        ax.axvspan(*r["down"], alpha=0.15, color="grey")
    ax.axhline(5000, ls="--", color="k", lw=0.8, label="target 5,000 events/s")
    ax.set_xlabel("seconds (grey: kill -9 and restart)")
    ax.set_ylabel("acknowledged events per second")
    ax.set_title(f"Payload sink, {rows[0]['clients']} clients x {rows[0]['workers']} workers")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8, help="client processes (agents)")
    parser.add_argument("--workers", type=int, default=5, help="connections per client")
    parser.add_argument("--quick", action="store_true", help="10 s per mode")
    parser.add_argument("--no-kill", action="store_true")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", help="result file stem in benchmarks/results (default "
                        f"{NAME}, {NAME}_quick with --quick)")
    args = parser.parse_args()
    seconds = 10.0 if args.quick else args.seconds
    args.out = args.out or (f"{NAME}_quick" if args.quick else NAME)
    rows = [run(m, args.clients, args.workers, seconds, not args.no_kill)
            for m in args.modes.split(",")]
    info = machine_info(f"load before {rows[0]['load_before']}")
    text = (f"Payload sink over loopback, append mode, {INSTANCES} instances per pair, "
            f"kill -9 at half time ({info}). Taken under load: the 2 cores are shared with "
            "other work (load average in the table).\n\n" + table(rows))
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text(text + "\n")
    with (RESULTS / f"{args.out}.csv").open("w", newline="") as fh:
        keys = [k for k in rows[0] if k not in ("per_second", "down")]
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, RESULTS / f"{args.out}.png")
    if any(r["lost"] or r["duplicated"] or r["ingest_missing"] or r["ingest_duplicates"]
           or r["exit"] for r in rows):
        raise SystemExit("LOSS OR DUPLICATES: see the table")


if __name__ == "__main__":
    main()
