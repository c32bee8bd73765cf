"""Thread pools sized by driftloop vs the libraries' defaults, with and without a competing load.

The same in-process tabular ``driftloop run --force`` (the CLI's own ``cmd_run``, not
kfp.local) on the generated sample store (:func:`driftloop.demo.sample.write_sample_store`,
a champion already serving, so every step runs: ingest, drift, decide, train, evaluate,
promote), once per case, each in a fresh interpreter on its own copy of the store:

* ``default``: ``runtime.max_threads = -1``: driftloop sets no limit; OpenMP
  (scikit-learn's libgomp) and both OpenBLAS pools (numpy's, scipy's) size themselves to
  every CPU, as before issue 16.
* ``all-usable``: ``runtime.max_threads = N`` (N = the usable CPUs): every pool limited
  to all the CPUs the process may use (what ``default`` amounts to without a quota).
* ``fixed``: ``runtime.max_threads = 0`` (the default config): :mod:`driftloop.threads`
  decides (``driftloop.threads.thread_budget``).

Each runs idle and under a competing load: one busy-loop process per usable CPU for the
whole case. The machine may be shared with other work too: the 1-minute load average at
the start of every case is recorded. Wall and CPU seconds are the run's own (measured in
the child around ``cmd_run``: interpreter start and imports left out).

    .venv/bin/python benchmarks/threads.py [--days 20 --rows-per-day 10000] [--repeats 1]

Prints a table and the machine, writes benchmarks/results/threads.{md,csv,png}.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine_info

MODEL = "sample"
RESULTS = Path(__file__).parent / "results"
BUSY = "while True:\n    pass\n"


def _child(store: str, config: str, now: str) -> None:
    """Run ``driftloop run`` in this process; print its wall and CPU seconds as JSON."""
    import contextlib
    import io

    from driftloop.cli import main

    start_wall, start_cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["run", "--store", store, "--schema", str(Path(store) / "schema.json"),
                     "--model", MODEL, "--now", now, "--force", "--config", config,
                     "--run-id", "bench"])
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    print(json.dumps({"code": code, "wall": wall, "cpu": cpu}))


def _case(base: Path, work: Path, mode: str, max_threads: int, load: bool, now: str,
          busy_count: int) -> dict[str, object]:
    store = work / f"{mode}-{'load' if load else 'idle'}"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(base, store)
    config = work / f"{mode}.json"
    config.write_text(json.dumps({"runtime": {"max_threads": max_threads}}))
    busy = [subprocess.Popen([sys.executable, "-c", BUSY])
            for _ in range(busy_count if load else 0)]
    try:
        time.sleep(0.5 if busy else 0)  # the load is running before the run starts
        load_avg = os.getloadavg()[0]
        out = subprocess.run([sys.executable, __file__, "--child", str(store), str(config), now],
                             capture_output=True, text=True, check=True)
    finally:
        for proc in busy:  # only the processes this case started, by their own handles
            proc.kill()
            proc.wait()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise SystemExit(f"{mode}: driftloop run exited {result['code']}")
    shutil.rmtree(store, ignore_errors=True)
    return {"mode": mode, "max_threads": max_threads, "load": "busy" if load else "none",
            "wall_s": result["wall"], "cpu_s": result["cpu"], "load_avg_1m": load_avg}


def _setup(base: Path, days: int, rows_per_day: int, reference_rows: int) -> str:
    """Write the store and serve a first champion; return the benchmark run's --now."""
    from driftloop.data.schema import load_schema
    from driftloop.data.storage import open_store
    from driftloop.demo.sample import write_sample_store
    from driftloop.steps.loop import run_loop

    info = write_sample_store(base, model_name=MODEL, days=days, rows_per_day=rows_per_day,
                              reference_rows=reference_rows, drift_day=days // 2, seed=0)
    first = dt.datetime.combine(info.first_day + dt.timedelta(days=1), dt.time(),
                                tzinfo=dt.UTC)
    run_loop(open_store(base), load_schema(info.schema_path), MODEL, now=first,
             run_id="setup")  # the champion the benchmark's challenger is judged against
    return (info.first_day + dt.timedelta(days=days - 1)).isoformat()  # its last day


def _libraries() -> str:
    """scikit-learn's version and each thread pool library with its version."""
    import sklearn
    import sklearn.ensemble  # loads libgomp
    from threadpoolctl import threadpool_info

    pools = sorted({f"{i['internal_api']} {i.get('version') or '?'}" for i in threadpool_info()})
    return f"scikit-learn {sklearn.__version__}, pools: {' + '.join(pools)}"


def _plot(rows: list[dict[str, object]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['mode']}\n{'+ busy loops' if r['load'] == 'busy' else 'no added load'}"
              for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([i - 0.2 for i in x], [float(r["wall_s"]) for r in rows], 0.4, label="wall s")
    ax.bar([i + 0.2 for i in x], [float(r["cpu_s"]) for r in rows], 0.4, label="CPU s")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("seconds")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=20, help="days of requests (<= 30)")
    parser.add_argument("--rows-per-day", type=int, default=10_000)
    parser.add_argument("--reference-rows", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=1, help="runs per case")
    parser.add_argument("--modes", default="default,all-usable,fixed")
    parser.add_argument("--child", nargs=3, metavar=("STORE", "CONFIG", "NOW"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    from driftloop.threads import cpu_limits, thread_budget

    limits = cpu_limits()
    usable = limits.usable
    modes = {"default": -1, "all-usable": usable, "fixed": 0}
    chosen = [m.strip() for m in args.modes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="driftloop-bench-threads-"))
    rows: list[dict[str, object]] = []
    try:
        now = _setup(tmp / "base", args.days, args.rows_per_day, args.reference_rows)
        for _ in range(args.repeats):
            for load in (False, True):
                for mode in chosen:
                    rows.append(_case(tmp / "base", tmp, mode, modes[mode], load, now,
                                      busy_count=limits.affinity))
                    print(f"{mode:10s} load={'busy' if load else 'none':4s} "
                          f"wall {rows[-1]['wall_s']:7.1f} s  CPU {rows[-1]['cpu_s']:7.1f} s",
                          file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    records = args.days * args.rows_per_day
    fixed = thread_budget("train")
    lines = [
        f"Thread pools: one in-process `driftloop run --force` (tabular sample store, "
        f"{args.days} days x {args.rows_per_day:,} requests = {records:,} records, "
        f"{args.reference_rows:,} reference rows)",
        f"machine: {machine_info(limits.describe(), _libraries())}",
        f"fixed = driftloop's budget here: {fixed} thread(s) for batch work; competing load: "
        f"{limits.affinity} busy-loop process(es)", "",
        "| mode | max_threads | competing load | wall s | CPU s | load avg (1 min) at start |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['mode']} | {r['max_threads']} | {r['load']} | {float(r['wall_s']):.1f} | "
              f"{float(r['cpu_s']):.1f} | {float(r['load_avg_1m']):.2f} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "threads.md").write_text(text + "\n")
    with (RESULTS / "threads.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, f"driftloop run, {records:,} records: wall and CPU seconds",
          RESULTS / "threads.png")


if __name__ == "__main__":
    main()
