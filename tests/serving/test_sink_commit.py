"""Group commit in the payload sink: batches share an fsync, and a 2xx means durable.

The sink's data-file fsync is replaced (``AppendWriter.fsync``) to count, hold or fail it;
everything else is the real sink, over HTTP on 127.0.0.1 where the answer matters.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from test_sink import ce_headers, lines_under, request_body, store  # noqa: F401

from driftloop.config import SinkConfig, config_from_dict
from driftloop.data.storage import LocalStore
from driftloop.errors import ConfigError
from driftloop.serving.sink_events import REQUEST_TYPE
from driftloop.serving.sink_pairing import PayloadSink

N = 24


def _headers(ce_id: str) -> dict[str, str]:
    return {k.lower(): v for k, v in ce_headers(ce_id, REQUEST_TYPE).items()}


def _concurrently(n: int, call: Callable[[int], Any]) -> list[Any]:
    """Run ``call(i)`` for i < n in n threads released together; return the results."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = call(i)
        except Exception as exc:  # returned, not lost in the thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def _slow_counting_fsync(sink: PayloadSink, seconds: float) -> list[int]:
    calls: list[int] = []
    real = sink.writer.fsync  # type: ignore[attr-defined]

    def fsync(fd: int) -> None:
        calls.append(fd)
        time.sleep(seconds)  # a slow disk: the others arrive during it
        real(fd)

    sink.writer.fsync = fsync  # type: ignore[attr-defined]
    return calls


@pytest.mark.parametrize(("max_batch", "most_fsyncs"), [(512, 4), (1, N)])
def test_concurrent_events_share_an_fsync_unless_batches_are_one(store, max_batch,  # noqa: F811
                                                                 most_fsyncs):
    sink = PayloadSink(store, commit_max_batch=max_batch, commit_max_wait=0.002)
    calls = _slow_counting_fsync(sink, 0.02)
    body = json.dumps(request_body(1)).encode()
    answers = _concurrently(N, lambda i: sink.handle_event(_headers(f"e{i}"), body))
    sink.close()
    assert [a["status"] for a in answers] == ["pending"] * N
    assert len(lines_under(store, "sink/pending")) == N
    if max_batch == 1:  # the baseline: one fsync per event
        assert len(calls) == N
    else:  # every event's journal line, in a handful of rounds
        assert 1 <= len(calls) <= most_fsyncs < N


def test_no_event_is_answered_before_its_fsync_returns(start_sink, store):  # noqa: F811
    sink, server = start_sink(store)
    gate, entered = threading.Event(), threading.Event()
    real = sink.writer.fsync  # type: ignore[attr-defined]

    def held_fsync(fd: int) -> None:
        entered.set()
        assert gate.wait(10)
        real(fd)

    sink.writer.fsync = held_fsync  # type: ignore[attr-defined]
    answers: list[httpx.Response] = []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        post = threading.Thread(target=lambda: answers.append(client.post(
            "/", content=json.dumps(request_body(1)), headers=ce_headers("h", REQUEST_TYPE))))
        post.start()
        assert entered.wait(5)  # the line is written, its fsync is running...
        time.sleep(0.3)
        assert answers == []  # ...and the client has no answer yet
        gate.set()
        post.join(timeout=10)
    assert answers[0].status_code == 200 and answers[0].json()["status"] == "pending"


def test_a_failing_fsync_fails_every_event_of_its_batch(start_sink, store):  # noqa: F811
    sink, server = start_sink(store)
    gate = threading.Event()
    rounds: list[int] = []
    real = sink.writer.fsync  # type: ignore[attr-defined]

    def fsync(fd: int) -> None:
        rounds.append(fd)
        if len(rounds) == 1:
            assert gate.wait(10)  # round 1 (one event) holds while the batch queues
        elif len(rounds) == 2:
            raise OSError(5, "Input/output error")  # round 2: the batch of 8
        real(fd)

    sink.writer.fsync = fsync  # type: ignore[attr-defined]
    body = json.dumps(request_body(1))
    with httpx.Client(base_url=server.url, timeout=10) as first:
        held = threading.Thread(target=lambda: first.post(
            "/", content=body, headers=ce_headers("first", REQUEST_TYPE)))
        held.start()
        deadline = time.monotonic() + 5
        while not rounds and time.monotonic() < deadline:
            time.sleep(0.01)

        def post(i: int) -> int:
            with httpx.Client(base_url=server.url, timeout=10) as c:
                return c.post("/", content=body,
                              headers=ce_headers(f"b{i}", REQUEST_TYPE)).status_code

        results: list[Any] = []
        batch = threading.Thread(target=lambda: results.extend(_concurrently(8, post)))
        batch.start()
        while sink._commit.queued < 8 and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.01)
        gate.set()
        batch.join(timeout=20)
        held.join(timeout=10)
    assert results == [503] * 8  # none of the batch acknowledged, not only one
    assert [d["ce_id"] for d in lines_under(store, "sink/pending")] == ["first"]  # cut back
    with httpx.Client(base_url=server.url, timeout=10) as client:  # nothing counted as seen
        again = [client.post("/", content=body, headers=ce_headers(f"b{i}", REQUEST_TYPE))
                 for i in range(8)]
    assert [a.json()["status"] for a in again] == ["pending"] * 8
    assert len(lines_under(store, "sink/pending")) == 9


def test_sink_config_is_checked_and_read():
    assert config_from_dict({"sink": {"commit_max_batch": 1}}).sink == SinkConfig(1, 2.0)
    with pytest.raises(ConfigError, match=r"sink\.commit_max_batch: must be an integer"):
        SinkConfig(commit_max_batch=0)
    with pytest.raises(ConfigError, match=r"sink\.commit_max_wait_ms: must be from 0 to 1000"):
        SinkConfig(commit_max_wait_ms=-1)


def test_the_sink_cli_refuses_a_bad_commit_setting(tmp_path, capsys):
    from driftloop.serving.sink import main

    code = main(["--store", str(tmp_path / "s"), "--commit-max-batch", "0"])
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sink.commit_max_batch: must be an integer" in err[0]


def test_lines_survive_a_restart_after_group_commit(store):  # noqa: F811
    sink = PayloadSink(store)
    body = json.dumps(request_body(1)).encode()
    _concurrently(8, lambda i: sink.handle_event(_headers(f"r{i}"), body))
    sink.close()
    again = PayloadSink(LocalStore(store.root))
    assert again.pending_count == 8
    assert again.handle_event(_headers("r3"), body)["status"] == "duplicate"
    again.close()


def test_an_unexpected_error_in_a_round_is_a_503_not_a_hang(store):  # noqa: F811
    from driftloop.serving.sink_bodies import SinkError

    sink = PayloadSink(store)
    real = sink.writer.fsync  # type: ignore[attr-defined]

    def bug(fd: int) -> None:
        raise RuntimeError("not an OSError")

    sink.writer.fsync = bug  # type: ignore[attr-defined]
    body = json.dumps(request_body(1)).encode()
    started = time.monotonic()
    with pytest.raises(SinkError, match="RuntimeError: not an OSError") as failed:
        sink.handle_event(_headers("u"), body)
    assert failed.value.status == 503 and time.monotonic() - started < 5
    sink.writer.fsync = real  # type: ignore[attr-defined]
    assert sink.handle_event(_headers("u"), body)["status"] == "pending"  # healed, not seen
    sink.close()
    assert [d["ce_id"] for d in lines_under(store, "sink/pending")] == ["u"]
