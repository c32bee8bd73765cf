"""The foundation demo: a generated store, then the loop once per simulated day."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path

from driftloop.config import Config
from driftloop.loop import LoopResult, run_loop
from driftloop.notify import LogNotifier
from driftloop.sample import sample_schema, write_sample_store
from driftloop.storage import open_store


def _row(day: dt.date, r: LoopResult) -> str:
    if r.drift is None:
        drift = "-"
    else:
        score = "" if r.drift.max_psi is None else f" ({r.drift.max_psi:.2f})"
        drift = f"{r.drift.status}{score}"
    fired = ",".join(r.decision.fired) or "-"
    verdict = r.verdict.decision if r.verdict else "-"
    champion = r.aliases.champion if r.aliases else "(unchanged)"
    c = r.ingest.report.counts
    return (f"| {day} | {c.accepted} | {c.quarantined} | {c.labelled} | {drift} | "
            f"{fired} | {verdict} | {champion} |")


def run_demo(out: Path, *, days: int = 6, seed: int = 0, drift_day: int = 3) -> list[LoopResult]:
    """Write a sample store under ``out/store`` and run the loop for each day.

    Prints every step's result and ends with a timeline table.
    """
    store_dir = out / "store"
    if store_dir.exists():
        shutil.rmtree(store_dir)
    info = write_sample_store(store_dir, days=days, drift_day=drift_day, seed=seed)
    store, schema = open_store(store_dir), sample_schema()
    print(f"sample store: {store_dir} ({days} days, drift from day {drift_day}, schema "
          f"{info.schema_path})\n")
    results, rows = [], []
    for d in range(days):
        day = info.first_day + dt.timedelta(days=d)
        now = dt.datetime.combine(day, dt.time(23, 59, 59), tzinfo=dt.UTC)
        start = time.perf_counter()
        result = run_loop(store, schema, "sample", now=now, run_id=f"day-{d:02d}",
                          config=Config(), lookback_days=days, notifier=LogNotifier())
        took = time.perf_counter() - start
        print(f"== day {d} ({day}) run {result.run_id} [{took:.1f}s]")
        for line in result.lines():
            print(f"   {line}")
        print()
        results.append(result)
        rows.append(_row(day, result))
    print("| day | accepted | quarantined | labelled | drift (max PSI) | fired | verdict | "
          "champion |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nrun records: {store_dir / 'runs'}; registry: {store_dir / 'models' / 'sample'}")
    return results
