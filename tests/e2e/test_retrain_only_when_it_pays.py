"""`driftloop run` day by day: no retrain without a real change, a retrain soon after one.

The acceptance test of the "retrain only when it pays" rules on generated data: every
rule (drift with effect size and memory, performance, label volume, schedule) runs with
its defaults, as a user's daily schedule would run them.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from driftloop.cli import main
from driftloop.demo.sample import write_sample_store


def _run_days(tmp_path: Path, *, days: int, drift_day: int, seed: int) -> list[dict]:
    info = write_sample_store(tmp_path / "s", days=days, rows_per_day=400, drift_day=drift_day,
                              label_share=0.5, malformed=False, seed=seed)
    out = []
    for d in range(days):
        day = info.first_day + dt.timedelta(days=d)
        buf = io.StringIO()
        with redirect_stdout(buf):
            assert main(["run", "--store", str(info.root), "--schema", str(info.schema_path),
                         "--model", "sample", "--now", day.isoformat(),
                         "--run-id", f"day-{d}", "--lookback-days", "7"]) == 0
        out.append(json.loads(buf.getvalue()))
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_a_stationary_stream_does_not_retrain(tmp_path: Path, seed: int):
    runs = _run_days(tmp_path, days=7, drift_day=99, seed=seed)
    assert runs[0]["retrain"]  # the first model
    assert [r["retrain"] for r in runs[1:]] == [False] * 6


def test_a_real_change_is_retrained_within_two_runs(tmp_path: Path):
    runs = _run_days(tmp_path, days=6, drift_day=3, seed=3)
    assert [r["retrain"] for r in runs[1:3]] == [False, False]
    assert runs[3]["retrain"] or runs[4]["retrain"]
