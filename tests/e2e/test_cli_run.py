"""`driftloop run` day by day as a user runs it: the summary and a clean stderr."""

import json
import subprocess
import sys
from pathlib import Path

STEP_LINES = ("ingest ", "curate ", "drift ", "decide ", "train ", "evaluate ", "registry ",
              "canary ", "promotion ", "status ")


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "driftloop"
    return subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=300,
                          check=False)


def test_every_run_reports_the_real_champion_and_stderr_holds_only_the_step_lines(tmp_path):
    # Regression: the JSON summary said "champion": null whenever a run did not promote,
    # although the registry had one.
    made = _cli("sample", "--out", str(tmp_path / "s"), "--days", "2")
    assert made.returncode == 0, made.stderr
    info = json.loads(made.stdout)
    summaries = []
    for day in ("2026-01-01", "2026-01-02"):
        run = _cli("run", "--store", info["store"], "--schema", info["schema"], "--model",
                   "sample", "--now", day)
        assert run.returncode == 0, run.stderr
        summaries.append(json.loads(run.stdout))
        # no library notices or warnings: every stderr line is a step of the decision chain
        for line in run.stderr.splitlines():
            assert line.startswith(STEP_LINES), line
    first, quiet = summaries
    assert first["verdict"] == "promote" and first["champion"]
    assert quiet["verdict"] is None and quiet["champion"] == first["champion"]
