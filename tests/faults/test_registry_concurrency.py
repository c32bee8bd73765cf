"""Concurrent alias moves from real OS processes, on a local folder and on gs://.

Each worker is a separate Python process (``subprocess``) that opens its own store and
registry, waits at a start line (a file the test creates once every worker is ready) and
then moves aliases as fast as it can. Before compare-and-swap, two workers doing 20
promotes each lost about 17 of the 40 moves from the history.

The gcp-storage-emulator ignores ``ifGenerationMatch`` (it never answers 412), so the
gs:// tests put :class:`PreconditionShim` between the client and the emulator: a loopback
proxy that serialises writes and answers a failed generation precondition with 412 and
GCS's error body. The real google-cloud-storage client therefore sends the precondition,
gets the 412 and raises ``PreconditionFailed`` exactly as against GCS; what stays untested
is GCS's own atomicity of check-and-write, which the shim only imitates.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import pytest

from driftloop.data.storage import NO_OBJECT, Store, open_store
from driftloop.models.registry import AliasState, Registry, sha256_bytes

MODEL = "race"
ROUNDS = 20  # promotes per worker

# A worker: promote alternately its own two versions, ROUNDS times, from the start line.
PROMOTE_WORKER = """
import os, sys, time
from driftloop.models.registry import Registry
from driftloop.data.storage import open_store
uri, model, wid, rounds, start = sys.argv[1:]
registry = Registry(open_store(uri), model)
open(start + ".ready" + wid, "w").close()
while not os.path.exists(start):
    time.sleep(0.001)
for k in range(int(rounds)):
    registry.promote(f"w{wid}-{k % 2}", reason=f"worker {wid}", run_id=f"w{wid}-{k}")
"""

# A worker that, each round, promotes its version only over the champion it was told about.
EXPECT_WORKER = """
import os, sys, time
from driftloop.models.registry import ChampionChanged, Registry
from driftloop.data.storage import open_store
uri, model, wid, rounds, start = sys.argv[1:]
registry = Registry(open_store(uri), model)
open(start + ".ready" + wid, "w").close()
for r in range(int(rounds)):
    go = f"{start}.{r}"
    while not os.path.exists(go):
        time.sleep(0.001)
    expected = open(go).read()
    try:
        registry.promote(f"w{wid}-0", reason=f"beats {expected}", run_id=f"w{wid}-r{r}",
                         expect_champion=expected)
        outcome = "promoted"
    except ChampionChanged as exc:
        outcome = f"changed:{exc.actual}"
    with open(f"{go}.part{wid}", "w") as fh:
        fh.write(outcome)
    os.replace(f"{go}.part{wid}", f"{go}.done{wid}")
"""


def _register(registry: Registry, tmp_path: Path, version: str) -> None:
    folder = tmp_path / "art" / version
    folder.mkdir(parents=True)
    joblib.dump({"version": version}, folder / "model.joblib")
    digest = sha256_bytes((folder / "model.joblib").read_bytes())
    meta = {"version": version, "model_sha256": digest}
    (folder / "metadata.json").write_text(json.dumps(meta))
    registry.register(folder)


def _start_workers(
    script: str, uri: str, workers: int, rounds: int, start: Path, env: dict[str, str]
) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, uri, MODEL, str(w), str(rounds), str(start)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for w in range(workers)
    ]
    deadline = time.monotonic() + 20
    while not all(Path(f"{start}.ready{w}").exists() for w in range(workers)):
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"worker exited early: {proc.communicate()[1]}")
        assert time.monotonic() < deadline, "workers did not get ready in 20 s"
        time.sleep(0.01)
    return procs


def _finish(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err


def _check_promote_history(state: AliasState, workers: int, rounds: int) -> None:
    """Every promote is in the history once, and the moves form one unbroken chain."""
    champion_moves = [c for c in state.history if c.alias == "champion"]
    expected = {f"w{w}-{k}" for w in range(workers) for k in range(rounds)}
    run_ids = [c.run_id for c in champion_moves]
    missing = expected - set(run_ids)
    assert not missing, f"{len(missing)} of {len(expected)} promotes lost: {sorted(missing)}"
    assert len(run_ids) == len(expected)  # and none recorded twice
    for before, after in itertools.pairwise(champion_moves):
        # A lost update shows here: a move "from" a champion that was already replaced.
        assert after.from_version == before.to_version, (before, after)
    previous = {c.run_id: c for c in state.history if c.alias == "previous"}
    for move in champion_moves[1:]:
        assert previous[move.run_id].to_version == move.from_version
    for w in range(workers):  # each worker's own promotes stay in its order
        mine = [int(r.split("-")[1]) for r in run_ids if r.startswith(f"w{w}-")]
        assert mine == sorted(mine)
    assert state.champion == champion_moves[-1].to_version
    assert state.previous == champion_moves[-1].from_version


def _run_promote_race(store: Store, tmp_path: Path, env: dict[str, str], workers: int) -> None:
    registry = Registry(store, MODEL)
    for w in range(workers):
        for k in (0, 1):
            _register(registry, tmp_path, f"w{w}-{k}")
    started = time.monotonic()
    procs = _start_workers(PROMOTE_WORKER, store.uri, workers, ROUNDS, tmp_path / "go", env)
    (tmp_path / "go").touch()
    _finish(procs)
    assert time.monotonic() - started < 30
    _check_promote_history(Registry(store, MODEL).aliases(), workers, ROUNDS)


def _run_expect_race(store: Store, tmp_path: Path, env: dict[str, str], rounds: int) -> None:
    workers = 2
    registry = Registry(store, MODEL)
    for name in ["base-0", "base-1", *(f"w{w}-0" for w in range(workers))]:
        _register(registry, tmp_path, name)
    start = tmp_path / "go"
    procs = _start_workers(EXPECT_WORKER, store.uri, workers, rounds, start, env)
    for r in range(rounds):
        base = f"base-{r % 2}"
        registry.promote(base, reason="round start", run_id=f"base-r{r}")
        # Written then renamed: a worker must never see the start file empty.
        Path(f"{start}.{r}.tmp").write_text(base)
        os.replace(f"{start}.{r}.tmp", f"{start}.{r}")
        deadline = time.monotonic() + 20
        done = [Path(f"{start}.{r}.done{w}") for w in range(workers)]
        while not all(p.exists() for p in done):
            assert time.monotonic() < deadline, f"round {r} did not finish"
            time.sleep(0.005)
        outcomes = sorted(p.read_text() for p in done)
        winner = registry.champion()
        # Exactly one worker moved over the champion both compared with; the other saw
        # the winner in place and moved nothing.
        assert outcomes == ["changed:" + str(winner), "promoted"], (r, outcomes)
        assert winner in {f"w{w}-0" for w in range(workers)}
    _finish(procs)
    history = registry.aliases().history
    for r in range(rounds):
        moves = [c for c in history if c.alias == "champion" and c.run_id.endswith(f"-r{r}")
                 and c.run_id.startswith("w")]
        assert len(moves) == 1 and moves[0].from_version == f"base-{r % 2}", (r, moves)


# -- local folder ------------------------------------------------------------------


def test_two_processes_promoting_at_once_lose_no_move_locally(tmp_path: Path) -> None:
    store = open_store(tmp_path / "store", create=True)
    _run_promote_race(store, tmp_path, dict(os.environ), workers=2)


def test_expected_champion_lets_exactly_one_concurrent_run_promote_locally(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "store", create=True)
    _run_expect_race(store, tmp_path, dict(os.environ), rounds=5)


# -- gs:// through the precondition shim ---------------------------------------------


class PreconditionShim(http.server.ThreadingHTTPServer):
    """A loopback proxy to the emulator that enforces ``ifGenerationMatch`` as GCS does.

    Writes (any method but GET/HEAD) are serialised by one lock, and a request carrying
    ``ifGenerationMatch`` is checked against the object's generation inside that lock,
    so check and write are atomic as in GCS. A failed check answers 412 with GCS's
    ``conditionNotMet`` error body and never reaches the emulator.
    """

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.write_lock = threading.Lock()
        self.rejected = 0
        super().__init__(("127.0.0.1", 0), _ShimHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


_UPLOAD = re.compile(r"^/upload/storage/v1/b/([^/]+)/o$")
_OBJECT = re.compile(r"^/(?:download/)?storage/v1/b/([^/]+)/o/(.+)$")
_NAME = re.compile(rb'"name"\s*:\s*("(?:[^"\\]|\\.)*")')


class _ShimHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: PreconditionShim

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean

    def _target(self, body: bytes) -> tuple[str, str] | None:
        path = urllib.parse.urlsplit(self.path).path
        if match := _OBJECT.match(path):
            return match[1], urllib.parse.unquote(match[2])
        if (match := _UPLOAD.match(path)) and (name := _NAME.search(body)):
            return match[1], json.loads(name[1])
        return None

    def _generation(self, bucket: str, name: str) -> int:
        conn = http.client.HTTPConnection(self.server.upstream.netloc, timeout=10)
        try:
            conn.request("GET", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}")
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        return NO_OBJECT if resp.status == 404 else int(json.loads(data)["generation"])

    def _forward(self, body: bytes) -> None:
        conn = http.client.HTTPConnection(self.server.upstream.netloc, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        wanted = query.get("ifGenerationMatch")
        is_write = self.command not in ("GET", "HEAD")
        lock = self.server.write_lock if is_write or wanted else contextlib.nullcontext()
        with lock:
            target = self._target(body) if wanted else None
            if wanted and target and self._generation(*target) != int(wanted[0]):
                self.server.rejected += 1
                error = {"error": {"code": 412, "message": "At least one of the pre-conditions "
                                   "you specified did not hold.",
                                   "errors": [{"reason": "conditionNotMet"}]}}
                data = json.dumps(error).encode()
                self.send_response(412)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self._forward(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


@pytest.fixture
def shim(gcs_emulator: str) -> Iterator[PreconditionShim]:
    server = PreconditionShim(gcs_emulator)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def shim_store(
    shim: PreconditionShim, gcs_store: Store, monkeypatch: pytest.MonkeyPatch
) -> Store:
    """The gcs_store's bucket, reached through the shim."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", shim.url)
    return open_store(gcs_store.uri)


def test_emulator_alone_ignores_generation_preconditions(gcs_store: Store) -> None:
    # The reason for the shim. If this fails, the emulator now honours ifGenerationMatch:
    # drop the shim and run the races against the bare emulator.
    assert gcs_store.write_if_generation("k", b"one", NO_OBJECT)
    _, generation = gcs_store.read_with_generation("k")
    assert gcs_store.write_if_generation("k", b"two", NO_OBJECT)
    assert gcs_store.write_if_generation("k", b"three", generation)
    assert gcs_store.read_bytes("k") == b"three"


def test_gcs_compare_and_swap_through_real_412s(shim: PreconditionShim, shim_store: Store) -> None:
    assert shim_store.read_with_generation("k") == (None, NO_OBJECT)
    assert shim_store.write_if_generation("k", b"one", NO_OBJECT)
    data, first = shim_store.read_with_generation("k")
    assert (data, first != NO_OBJECT) == (b"one", True)
    assert not shim_store.write_if_generation("k", b"again", NO_OBJECT)  # exists already
    assert shim_store.write_if_generation("k", b"two", first)
    data, second = shim_store.read_with_generation("k")
    assert data == b"two" and second != first
    assert not shim_store.write_if_generation("k", b"stale", first)
    assert shim_store.read_bytes("k") == b"two"
    assert shim.rejected == 2


def test_two_processes_promoting_at_once_lose_no_move_on_gcs(
    shim: PreconditionShim, shim_store: Store, tmp_path: Path
) -> None:
    env = {**os.environ, "STORAGE_EMULATOR_HOST": shim.url}
    _run_promote_race(shim_store, tmp_path, env, workers=2)
    # The workers really collided: stale writes were refused with 412 and retried.
    assert shim.rejected > 0
    print(f"412 conflicts retried: {shim.rejected}")


def test_expected_champion_lets_exactly_one_concurrent_run_promote_on_gcs(
    shim: PreconditionShim, shim_store: Store, tmp_path: Path
) -> None:
    env = {**os.environ, "STORAGE_EMULATOR_HOST": shim.url}
    _run_expect_race(shim_store, tmp_path, env, rounds=3)
