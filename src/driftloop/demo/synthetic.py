"""The demo: a generated store, then the continuous-training pipeline once per simulated day.

By default each day runs the real pipeline through ``kfp.local`` (the embedded default);
``in_process=True`` calls the same steps directly in this process (faster, no KFP).
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path
from typing import Any

from driftloop.config import Config
from driftloop.data.schema import load_schema
from driftloop.data.storage import open_store
from driftloop.demo.sample import write_sample_store
from driftloop.errors import DriftloopError
from driftloop.notify import LogNotifier
from driftloop.steps.loop import run_loop

MODEL = "sample"


def _row(day: dt.date, record: Any) -> str:
    drift = record.drift
    if drift is None:
        drift_text = "-"
    else:
        score = "" if drift.max_psi is None else f" ({drift.max_psi:.2f})"
        drift_text = f"{drift.status}{score}"
    decision = record.decision
    fired = ",".join(decision.fired) if decision is not None and decision.fired else "-"
    verdict = record.verdict.decision if record.verdict else "-"
    champion = record.aliases.champion if record.aliases else "(unchanged)"
    step = record.rollout
    rollout = f"{step.action} {step.from_percent}%→{step.to_percent}%" if step else "-"
    c = record.ingest.counts if record.ingest is not None else None
    counts = f"{c.accepted} | {c.quarantined} | {c.labelled}" if c else "- | - | -"
    return f"| {day} | {counts} | {drift_text} | {fired} | {verdict} | {rollout} | {champion} |"


def run_demo(
    out: Path, *, days: int = 6, seed: int = 0, drift_day: int = 3, in_process: bool = False
) -> list[Any]:
    """Write a sample store under ``out/store`` and run the loop for each day.

    Prints every step's result and ends with a timeline table.

    Returns:
        One run record per day (``steps.RunRecord``), as read back from the store.

    Raises:
        DriftloopError: A pipeline run failed (its error is in the message).
    """
    from driftloop.steps.records import read_run

    store_dir = out / "store"
    if store_dir.exists():
        shutil.rmtree(store_dir)
    info = write_sample_store(store_dir, model_name=MODEL, days=days, drift_day=drift_day,
                              seed=seed)
    store, schema = open_store(store_dir), load_schema(info.schema_path)
    how = "in this process" if in_process else "through kfp.local (SubprocessRunner)"
    print(f"sample store: {store_dir} ({days} days, drift from day {drift_day}); "
          f"pipeline runs {how}\n", flush=True)
    records, rows = [], []
    for d in range(days):
        day = info.first_day + dt.timedelta(days=d)
        run_id = f"day-{d:02d}"
        start = time.perf_counter()
        if in_process:
            now = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
            run_loop(store, schema, MODEL, now=now, run_id=run_id, config=Config(),
                     lookback_days=days, notifier=LogNotifier())
        else:
            from driftloop.kfp.local import run_local

            run = run_local(str(store_dir), str(info.schema_path), MODEL,
                            run_date=day.isoformat(), lookback_days=days)
            if not run.ok or run.run_id is None:
                raise DriftloopError(f"demo day {d}: pipeline run failed: {run.error}")
            run_id = run.run_id
        record = read_run(store, run_id)
        print(f"== day {d} ({day}) run {run_id} [{time.perf_counter() - start:.1f}s]")
        for line in record.lines():
            print(f"   {line}")
        print(flush=True)
        records.append(record)
        rows.append(_row(day, record))
    print("| day | accepted | quarantined | labelled | drift (max PSI) | fired | verdict | "
          "rollout | champion |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nrun records: {store_dir / 'runs'}; registry: {store_dir / 'models' / MODEL}")
    return records
