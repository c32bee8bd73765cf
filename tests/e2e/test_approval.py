"""A challenger that needs approval: the verdict names the command, and it works.

The gate holds back a better challenger (auto-promotion made unreachable by the
threshold); the command the verdict's "What to do" names starts its canary through the
local rollout backend, and ``driftloop status`` then shows the canary with no problem.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import re
import shlex
from contextlib import redirect_stdout
from pathlib import Path

from driftloop.cli import main
from driftloop.config import Config
from driftloop.data.storage import open_store
from driftloop.demo.sample import sample_schema, write_sample_store
from driftloop.rollout.local import LocalRolloutBackend
from driftloop.steps.loop import run_loop


def _cli(args: list[str]) -> dict:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(args) == 0
    return json.loads(buf.getvalue())


def test_the_approve_command_of_a_needs_approval_verdict_starts_the_canary(tmp_path: Path):
    info = write_sample_store(tmp_path / "s", days=4, rows_per_day=500, drift_day=2,
                              label_share=0.6, malformed=False, seed=5)
    store, schema = open_store(info.root), sample_schema()
    base = Config()
    strict = dataclasses.replace(base, gate=dataclasses.replace(base.gate,
                                                                auto_threshold=0.99))

    def backend() -> LocalRolloutBackend:
        return LocalRolloutBackend(Path(info.root) / "rollout", "sample", "default")

    def end(d: int) -> dt.datetime:
        return dt.datetime.combine(info.first_day + dt.timedelta(days=d + 1), dt.time(),
                                   tzinfo=dt.UTC)

    run_loop(store, schema, "sample", now=end(0), run_id="d0", backend=backend())
    verdict = None
    for d in (2, 3):
        result = run_loop(store, schema, "sample", now=end(d), run_id=f"d{d}", config=strict,
                          backend=backend())
        if result.verdict is not None:
            verdict = result.verdict
            break
    assert verdict is not None and verdict.decision == "needs_approval"
    md = verdict.to_markdown()
    command = re.search(r"approve: `(driftloop promote [^`]+)`", md)
    assert command is not None and str(info.root) in command.group(1)
    args = shlex.split(command.group(1))[1:]
    step = _cli(args)
    assert step["action"] == "start" and step["canary"] == verdict.challenger.version
    status = _cli(["status", "--store", str(info.root), "--model", "sample"])
    assert status["canary"] == verdict.challenger.version and status["problems"] == []
    assert status["canary_percent"] == 10
