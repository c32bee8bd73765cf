"""Ingest by shards: peak memory and time per task, against one process reading it all.

A store holds ``--days`` daily partitions of ``--rows`` request rows each (the sample
schema: two numeric and one categorical feature; 60 % of rows labelled by feedback files
of the same day), written as ``--files`` JSONL files per day, as a sink writes them. Each
measurement runs in a fresh interpreter (``python -c``), as a pipeline task does, and
reports the task's peak resident memory (``ru_maxrss``: what a pod's memory limit must
cover), the memory it held after its imports, and the wall time:

* ``one reading``: :func:`driftloop.data.ingest.ingest` over the whole lookback;
* ``shard k of n``: :func:`~driftloop.data.ingest.read_part` for each shard, written as a
  part (the ``ingest_shard`` task; the largest shard's peak is the row);
* ``merge of n``: :func:`~driftloop.data.ingest.merge_parts` over the n parts (the
  ``ingest`` task), which holds the typed rows of the whole lookback.

The merged records are checked to be equal to one reading's (the same rows, labels and
report). Run: ``.venv/bin/python benchmarks/ingest_shards.py [--days 10] [--rows 20000]
[--shards 1 4 16] [--quick]``; writes benchmarks/results/ingest_shards{,_quick}.{md,csv,png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_info

RESULTS = Path(__file__).parent / "results"

#: Runs in a fresh interpreter: imports first, then the work, then its own peak and time.
_TASK = """
import datetime as dt, json, resource, sys, time
from pathlib import Path
from driftloop.data.ingest import IngestPart, ingest, merge_parts, read_part
from driftloop.data.schema import load_schema
from driftloop.data.storage import LocalStore
args = json.loads(sys.argv[1])
store, schema = LocalStore(args["store"]), load_schema(args["schema"])
first, last = dt.date.fromisoformat(args["first"]), dt.date.fromisoformat(args["last"])
base = next(int(line.split()[1]) for line in open("/proc/self/status")
            if line.startswith("VmRSS:"))
start = time.perf_counter()
out = {}
if args["kind"] == "one":
    result = ingest(store, schema, first, last)
    result.records.to_parquet(args["out"], index=False)
    out["rows"] = len(result.records)
elif args["kind"] == "shard":
    part = read_part(store, schema, first, last, shard=args["shard"], n_shards=args["n"])
    part.save(args["out"])
    out["rows"] = part.rows_in
else:
    parts = [IngestPart.load(p) for p in args["parts"]]
    result = merge_parts(store, schema, parts)
    result.records.to_parquet(args["out"], index=False)
    out["rows"] = len(result.records)
out["seconds"] = time.perf_counter() - start
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out["base_mb"] = base / 1024
print(json.dumps(out))
"""


def write_store(root: Path, days: int, rows: int, files: int, seed: int = 0) -> dict[str, Any]:
    """Write the lookback as JSONL files; returns the store, schema and days."""
    import datetime as dt

    from driftloop.data.schema import write_schema
    from driftloop.demo.sample import sample_schema

    rng = np.random.default_rng(seed)
    schema_path = root / "schema.json"
    root.mkdir(parents=True)
    write_schema(sample_schema(), schema_path)
    first = dt.date(2026, 1, 1)
    for d in range(days):
        day = first + dt.timedelta(days=d)
        ts = f"{day.isoformat()}T12:00:00+00:00"
        x0, x1 = rng.normal(size=rows), rng.normal(size=rows)
        seg = rng.choice(["north", "south", "east", "west"], size=rows)
        labelled = rng.random(rows) < 0.6
        for f in range(files):
            part = range(f, rows, files)
            req = root / f"requests/dt={day}/part-{f:03d}.jsonl"
            req.parent.mkdir(parents=True, exist_ok=True)
            req.write_text("".join(json.dumps(
                {"id": f"{day}-{i}", "timestamp": ts, "x0": float(x0[i]), "x1": float(x1[i]),
                 "segment": str(seg[i])}) + "\n" for i in part))
            fb = root / f"feedback/dt={day}/part-{f:03d}.jsonl"
            fb.parent.mkdir(parents=True, exist_ok=True)
            fb.write_text("".join(json.dumps(
                {"id": f"{day}-{i}", "label": "yes" if x0[i] > 0 else "no",
                 "timestamp": f"{day.isoformat()}T18:00:00+00:00"}) + "\n"
                for i in part if labelled[i]))
    return {"store": str(root), "schema": str(schema_path), "first": first.isoformat(),
            "last": (first + dt.timedelta(days=days - 1)).isoformat()}


def task(args: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", _TASK, json.dumps(args)], capture_output=True,
                          text=True, check=True, timeout=3600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--rows", type=int, default=20_000, help="request rows per day")
    parser.add_argument("--files", type=int, default=8, help="JSONL files per day and kind")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--quick", action="store_true", help="3 days x 4,000 rows")
    args = parser.parse_args()
    if args.quick:
        args.days, args.rows, args.shards = 3, 4_000, [1, 4]
    import pandas as pd

    tmp = Path(tempfile.mkdtemp(prefix="driftloop-ingest-shards-"))
    rows: list[dict[str, Any]] = []
    try:
        base = write_store(tmp / "store", args.days, args.rows, args.files)
        one = task({**base, "kind": "one", "out": str(tmp / "one.parquet")})
        rows.append({"run": "one reading", "tasks": 1, **one})
        expected = pd.read_parquet(tmp / "one.parquet")
        for n in args.shards:
            shards = [task({**base, "kind": "shard", "shard": k, "n": n,
                            "out": str(tmp / f"n{n}-p{k}")}) for k in range(n)]
            rows.append({"run": f"largest shard of {n}", "tasks": n,
                         "rows": max(s["rows"] for s in shards),
                         "seconds": max(s["seconds"] for s in shards),
                         "peak_mb": max(s["peak_mb"] for s in shards),
                         "base_mb": max(s["base_mb"] for s in shards),
                         "sum_seconds": sum(s["seconds"] for s in shards)})
            merged = task({**base, "kind": "merge", "parts": [str(tmp / f"n{n}-p{k}")
                                                              for k in range(n)],
                           "out": str(tmp / f"n{n}.parquet")})
            same = pd.read_parquet(tmp / f"n{n}.parquet").equals(expected)
            rows.append({"run": f"merge of {n}", "tasks": 1, **merged, "same": same})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = args.days * args.rows
    lines = [f"Ingest by shards: {args.days} days x {args.rows:,} request rows "
             f"({total:,} rows, 60 % labelled), {args.files} JSONL files per day and kind; "
             "each task a fresh interpreter; peak RSS of the task, and its RSS after the "
             "imports",
             f"machine: {machine_info()}", "",
             "| run | tasks | rows | s | peak RSS MB | after imports MB | same records as one "
             "reading |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        secs = f"{r['seconds']:.2f}" + (f" (sum {r['sum_seconds']:.2f})" if "sum_seconds" in r
                                        else "")
        same = {True: "yes", False: "NO"}.get(r.get("same"), "")
        lines.append(f"| {r['run']} | {r['tasks']} | {r['rows']:,} | {secs} | "
                     f"{r['peak_mb']:.0f} | {r['base_mb']:.0f} | {same} |")
    text = "\n".join(lines)
    print(text)
    name = "ingest_shards_quick" if args.quick else "ingest_shards"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text + "\n")
    with (RESULTS / f"{name}.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["run", "tasks", "rows", "seconds", "peak_mb", "base_mb", "same"])
        writer.writerows([(r["run"], r["tasks"], r["rows"], f"{r['seconds']:.3f}",
                           f"{r['peak_mb']:.1f}", f"{r['base_mb']:.1f}", r.get("same", ""))
                          for r in rows])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([r["run"] for r in rows], [r["peak_mb"] for r in rows], label="peak RSS")
    ax.barh([r["run"] for r in rows], [r["base_mb"] for r in rows], label="after imports")
    ax.invert_yaxis()
    ax.legend()
    ax.set_xlabel("MB")
    ax.set_title(f"Ingest memory per task, {total:,} rows")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)
    if not all(r.get("same", True) for r in rows):
        raise SystemExit("a merge differs from one reading")


if __name__ == "__main__":
    main()
