"""``kill -9`` of the payload sink under load: every acknowledged record exactly once.

The sink runs as its own process on 127.0.0.1 (group commit, the default); four client
threads send KServe logger request/response pairs (so batches form) and one sends user
feedback while the process is killed with SIGKILL three times and restarted on the same
store. Every pair whose response was answered 2xx, every feedback answered 2xx and every
request event answered 2xx must be in the store after the last restart (records,
feedback, or the pending journal the sink recovers from); every acknowledged pair's record
is there exactly once, in the files and in what ingest accepts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from driftloop.data.ingest import ingest
from driftloop.data.storage import LocalStore
from driftloop.demo.sample import sample_schema
from driftloop.serving.sink_events import REQUEST_TYPE, RESPONSE_TYPE

TIME = "2026-01-01T10:00:00Z"
ANSWER = {"predictions": [{"class": "yes", "model_version": "v1",
                           "probabilities": {"no": 0.3, "yes": 0.7}}],
          "model_name": "sample", "model_version": "v1"}


def _headers(ce_id: str, ce_type: str) -> dict[str, str]:
    # the headers KServe's logger sends (binary content mode, pkg/logger/worker.go)
    return {"Ce-Id": ce_id, "Ce-Type": ce_type, "Ce-Source": "http://localhost:9081/",
            "Ce-Specversion": "1.0", "Ce-Time": TIME, "Ce-Inferenceservicename": "sample",
            "Ce-Namespace": "ml", "Ce-Component": "predictor", "Ce-Endpoint": "default",
            "Content-Type": "application/json"}


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(root: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "driftloop.serving.sink", "--store", str(root), "--host",
         "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
        assert proc.poll() is None, "sink exited"
    proc.kill()
    raise AssertionError("sink did not start")


class Load:
    """Two clients sending until told to stop; what was acknowledged is remembered."""

    def __init__(self, url: str, round_: int) -> None:
        self.url, self.round = url, round_
        self.stop = threading.Event()
        self.pairs: set[str] = set()
        self.requests: set[str] = set()
        self.feedback: set[str] = set()

    def _pairs(self, thread: int) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            for k in range(100_000):
                if self.stop.is_set():
                    return
                rid = f"p{self.round}-{thread}-{k}"
                body = {"instances": [{"id": rid, "x0": 0.1, "x1": 0.2, "segment": "north"}]}
                answer = ANSWER
                try:
                    if client.post("/", content=json.dumps(body),
                                   headers=_headers(rid, REQUEST_TYPE)).is_success:
                        self.requests.add(rid)
                    if client.post("/", content=json.dumps(answer),
                                   headers=_headers(rid, RESPONSE_TYPE)).is_success:
                        self.pairs.add(rid)
                except httpx.TransportError:
                    return  # killed

    def _feedback(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            for k in range(100_000):
                if self.stop.is_set():
                    return
                fid = f"f{self.round}-{k}"
                try:
                    if client.post("/feedback", json={"id": fid, "label": "yes",
                                                      "timestamp": TIME}).is_success:
                        self.feedback.add(fid)
                except httpx.TransportError:
                    return

    def run_until_killed(self, proc: subprocess.Popen[bytes], acks: int) -> None:
        threads = [threading.Thread(target=self._pairs, args=(t,)) for t in range(4)]
        threads.append(threading.Thread(target=self._feedback))
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(self.pairs) + len(self.feedback) < acks and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-traffic: requests are in flight
        proc.wait(timeout=10)
        self.stop.set()
        for t in threads:
            t.join(timeout=10)


def _ids_under(root: Path, folder: str) -> Counter[str]:
    ids: Counter[str] = Counter()
    for path in (root / folder).rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a torn last line (never an
                ids[json.loads(line).get("id", "")] += 1  # acknowledged one: see below)
    return ids


def _text_under(root: Path, folder: str) -> str:
    return "".join(p.read_text() for p in (root / folder).rglob("*") if p.is_file())


def test_three_kill_9s_under_load_keep_every_acknowledged_record_exactly_once(tmp_path: Path):
    root, port = tmp_path / "store", _port()
    loads = []
    for round_ in range(3):
        proc = _start(root, port)
        load = Load(f"http://127.0.0.1:{port}", round_)
        load.run_until_killed(proc, acks=150)
        loads.append(load)
    proc = _start(root, port)  # recovers the pending journal
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    records, feedback = _ids_under(root, "requests"), _ids_under(root, "feedback")
    pending = _text_under(root, "sink/pending")
    pairs = set().union(*(x.pairs for x in loads))
    labels = set().union(*(x.feedback for x in loads))
    requests = set().union(*(x.requests for x in loads))
    assert len(pairs) >= 50 and len(pairs) + len(labels) >= 450  # the load was real
    assert pairs <= set(records), sorted(pairs - set(records))[:5]
    assert labels <= set(feedback), sorted(labels - set(feedback))[:5]
    lost = {r for r in requests - set(records) if f'"{r}"' not in pending}
    assert not lost, sorted(lost)[:5]
    twice = {r for r in pairs if records[r] != 1}
    assert not twice, sorted(twice)[:5]  # exactly once in the files...
    today = dt.datetime.now(dt.UTC).date()
    accepted = ingest(LocalStore(root), sample_schema(), today - dt.timedelta(days=1),
                      today + dt.timedelta(days=1))
    ingested = Counter(accepted.records["id"])
    assert {r for r in pairs if ingested[r] != 1} == set()  # ...and in what ingest accepts
    assert accepted.report.counts.duplicates == 0
    # the SIGTERM wrote a snapshot of the seen events; a start from it still knows the
    # pairs acknowledged before the kills
    assert (root / "sink" / "seen" / "snapshot.json").is_file()
    proc = _start(root, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            again = client.post("/", content=json.dumps(ANSWER),
                                headers=_headers(min(loads[0].pairs), RESPONSE_TYPE))
        assert again.json()["status"] == "duplicate"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
