"""Payload sink restart time: reading the whole dedup window vs the seen-keys snapshot.

On start the sink rebuilds the event keys it has written (its dedup set) and the Ce-Ids
given to records. Without a snapshot it reads every record line of the dedup window, so
a restart grows with the day's volume, and KServe's logger drops what it sends meanwhile
(it never retries, ``pkg/logger/worker.go``). With ``sink/seen/snapshot.json``
(:mod:`driftloop.serving.sink_seen`) it loads the snapshot and reads only the bytes the
files gained after it.

For each size the store holds that many record lines (one instance per logged pair,
written in the sink's own line format, in files of at most 500,000 lines as successive
sink processes leave them) and three starts are timed, each in a fresh interpreter (the
``PayloadSink`` constructor: recovery, journal compaction), side by side:

* ``full read`` -- no snapshot (the sink before it);
* ``snapshot`` -- after a clean shutdown, which wrote one;
* ``snapshot + 10 % tail`` -- as after a ``kill -9``: a tenth more lines written after
  the snapshot, in a new file.

The same on ``gs://`` (the cluster's store, object mode: one object per logged pair) against
``gcp-storage-emulator`` on 127.0.0.1 (the test suite's emulator; in memory, so a real
bucket's per-request latency, tens of milliseconds, would make the full read far
slower): ``--objects`` pairs.

``--max-seen`` is the sink's default (1,000,000 keys; two keys per pair), so above
500,000 pairs the full read also forgets the oldest as it goes: the memory is the same,
the time is not.

Run: ``.venv/bin/python benchmarks/sink_restart.py [--quick]``; writes
benchmarks/results/sink_restart{,_quick}.{md,csv,png}.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import machine_info

NAME = "sink_restart"
RESULTS = Path(__file__).parent / "results"
FILE_LINES = 500_000
MAX_SEEN = 1_000_000


def template() -> str:
    """One record line as the sink writes it, with ``{n}`` for the pair's number."""
    from driftloop.data.storage import LocalStore
    from driftloop.serving.sink_events import REQUEST_TYPE, RESPONSE_TYPE
    from driftloop.serving.sink_pairing import PayloadSink

    request = json.dumps({"instances": [{"x0": 0.5, "x1": -1.0, "segment": "north"}]})
    response = json.dumps({"predictions": [{"class": "yes", "probabilities":
                                            {"no": 0.3, "yes": 0.7}}]})
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(tmp)
        sink = PayloadSink(store, mode="append", commit_max_batch=1)
        for ce_type, body in ((REQUEST_TYPE, request), (RESPONSE_TYPE, response)):
            sink.handle_event({"ce-id": "ID", "ce-type": ce_type, "ce-source": "pod",
                               "ce-specversion": "1.0", "ce-time": "2026-12-03T10:00:00Z",
                               "content-type": "application/json"}, body.encode())
        sink.close()
        (key,) = store.list("requests")
        line = store.read_text(key).splitlines()[0]
    line = line.replace("{", "{{").replace("}", "}}")
    line = line.replace('"id":"ID-0"', '"id":"{n}-0"').replace('"event_id":"ID"',
                                                               '"event_id":"{n}"')
    return re.sub(r'"event_keys":"[0-9a-f ]+"', '"event_keys":"{keys}"', line) + "\n"


def write_lines(folder: Path, name: str, first: int, count: int, line: str) -> None:
    with (folder / name).open("w") as fh:
        for chunk in range(first, first + count, 50_000):
            fh.write("".join(
                line.format(n=f"pair-{n:09d}", keys=" ".join(
                    hashlib.sha256(f"{n}{side}".encode()).hexdigest()[:32]
                    for side in "qr"))
                for n in range(chunk, min(chunk + 50_000, first + count))))


def measure(root: Path | str) -> dict[str, Any]:
    """Time one sink start on ``root`` (a folder or a gs:// URI) in a fresh interpreter."""
    code = (
        "import json, resource, time, sys\n"
        "from driftloop.data.storage import open_store\n"
        "from driftloop.serving.sink_pairing import PayloadSink\n"
        f"store = open_store({str(root)!r})\n"
        "t = time.perf_counter()\n"
        f"s = PayloadSink(store, max_seen={MAX_SEEN})\n"
        "took = time.perf_counter() - t\n"
        "out = {'seconds': took, 'bytes_read': s.stats.recovery_bytes_read,\n"
        "       'files_read': s.stats.recovery_files_read,\n"
        "       'keys': len(s._seen.keys), 'ids': len(s._seen.ids),\n"
        "       'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}\n"
        "s.close()\n"
        "out['snapshot'] = s.stats.snapshots\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_gcs(pairs: int, line: str) -> list[dict[str, Any]]:
    """The same three starts on gs:// (object mode) against the GCS emulator."""
    import os
    import socket

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from driftloop.data.storage import open_store

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).parent / "gcp-storage-emulator"
    emulator = subprocess.Popen([str(exe), "start", "--host", "127.0.0.1", "--port",
                                 str(port), "--in-memory"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = storage.Client(project="bench", credentials=AnonymousCredentials())
                client.create_bucket("driftloop-bench")
                break
            except Exception:  # not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        uri = "gs://driftloop-bench/store"
        store = open_store(uri)
        day = dt.datetime.now(dt.UTC).date().isoformat()

        def write(first: int, count: int) -> None:
            for n in range(first, first + count):
                data = line.format(n=f"pair-{n:09d}", keys=" ".join(
                    hashlib.sha256(f"{n}{side}".encode()).hexdigest()[:32] for side in "qr"))
                store.write_bytes(f"requests/dt={day}/ev-{n:024x}-pair.jsonl", data.encode())

        write(0, pairs)
        size = pairs * len(line)
        full = measure(uri)  # its close() writes the snapshot
        snapshot = store.read_bytes("sink/seen/snapshot.json")
        store.delete("sink/seen/snapshot.json")
        full = measure(uri)
        store.write_bytes("sink/seen/snapshot.json", snapshot)
        snap = measure(uri)
        write(pairs, pairs // 10)
        tail = measure(uri)
        return [{"lines": pairs, "mb": size / 1e6, "mode": f"gs:// {mode}", **r}
                for mode, r in (("full read", full), ("snapshot", snap),
                                ("snapshot + 10 % tail", tail))]
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
        del os.environ["STORAGE_EMULATOR_HOST"]


def run(lines: int, line: str) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="driftloop-sink-restart-") as tmp:
        root = Path(tmp) / "store"
        day = dt.datetime.now(dt.UTC).date().isoformat()
        folder = root / "requests" / f"dt={day}"
        folder.mkdir(parents=True)
        for i, first in enumerate(range(0, lines, FILE_LINES)):
            write_lines(folder, f"sink-bench-{i}.jsonl", first,
                        min(FILE_LINES, lines - first), line)
        size = sum(p.stat().st_size for p in folder.iterdir())
        full = measure(root)  # no snapshot yet; its close() writes one
        assert full["snapshot"] == 1, full
        (root / "sink" / "seen" / "snapshot.json").rename(Path(tmp) / "snapshot.json")
        full = measure(root)  # the same, timed again (the first also warmed the cache)
        (Path(tmp) / "snapshot.json").replace(root / "sink" / "seen" / "snapshot.json")
        snap = measure(root)
        write_lines(folder, "sink-bench-tail.jsonl", lines, lines // 10, line)
        tail = measure(root)
        for mode, r in (("full read", full), ("snapshot", snap),
                        ("snapshot + 10 % tail", tail)):
            rows.append({"lines": lines, "mb": size / 1e6, "mode": mode, **r})
    return rows


COLUMNS = [("record lines", "lines", "{:,}"), ("files MB", "mb", "{:.0f}"), ("start", "mode", "{}"),
           ("restart s", "seconds", "{:.2f}"), ("files/objects read", "files_read", "{:,}"),
           ("bytes read MB", "bytes_read", "{:.1f}"),
           ("keys kept", "keys", "{:,}"), ("ids kept", "ids", "{:,}"),
           ("peak RSS MB", "rss_mb", "{:.0f}")]


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| " + " | ".join(c[0] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [fmt.format(r[key] / 1e6 if key == "bytes_read" else r[key])
                 for _, key, fmt in COLUMNS]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = [r for r in rows if r["mode"] == mode]
        ax.plot([r["lines"] for r in mine], [r["seconds"] for r in mine], "o-", label=mode)
    ax.set_xscale("log")
    ax.set_xlabel("record lines in the dedup window")
    ax.set_ylabel("sink start, seconds")
    ax.set_title("Payload sink restart: whole window vs seen-keys snapshot")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000,3000000",
                        help="record lines per case, comma-separated")
    parser.add_argument("--objects", default="2000,10000",
                        help="pairs (objects) per gs:// case, comma-separated")
    parser.add_argument("--quick", action="store_true",
                        help="100,000 and 300,000 lines; 1,000 objects")
    args = parser.parse_args()
    sizes = [100_000, 300_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    objects = [1000] if args.quick else [int(s) for s in args.objects.split(",") if s]
    out = f"{NAME}_quick" if args.quick else NAME
    line = template()
    started = time.perf_counter()
    rows = [row for n in sizes for row in run(n, line)]
    rows += [row for n in objects for row in run_gcs(n, line)]
    info = machine_info(f"{time.perf_counter() - started:.0f} s in all")
    text = (f"Payload sink start (recovery) on a local folder store, max_seen {MAX_SEEN:,}, "
            f"each start in a fresh interpreter, files in the page cache ({info}).\n\n"
            + table(rows))
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{out}.md").write_text(text + "\n")
    with (RESULTS / f"{out}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, RESULTS / f"{out}.png")


if __name__ == "__main__":
    main()
