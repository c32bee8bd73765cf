"""``kill -9`` of ``driftloop run`` at each stage, then a retry of the same run succeeds.

The kill is real: a wrapper process patches the store's atomic write to send itself SIGKILL
just before the file of the chosen stage is written (nothing after it runs: no finally,
no atexit), then the same command is run again.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from driftloop.data.storage import open_store
from driftloop.models.registry import VERIFIED, Registry

KILLER = textwrap.dedent("""
    import fnmatch, os, signal, sys
    from driftloop.data import storage
    from driftloop.cli import main

    pattern = os.environ["KILL_AT"]
    original = storage.LocalStore._write_atomic

    def write(self, path, data):
        if fnmatch.fnmatch(path.relative_to(self.root).as_posix(), pattern):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, path, data)

    storage.LocalStore._write_atomic = write
    sys.exit(main(sys.argv[1:]))
""")

STAGES = {
    "the middle of registration (model written, metadata not)": "models/sample/*/metadata.json",
    "the reference of the new version": "reference/sample/*.parquet",
    "the champion alias": "models/sample/aliases.json",
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("kill") / "template"
    exe = Path(sys.executable).parent / "driftloop"
    made = subprocess.run([str(exe), "sample", "--out", str(out), "--days", "1"],
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(made.stdout)


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_run_killed_at_a_stage_is_retried_successfully(stage, sample, tmp_path):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(sample["store"], store)
    argv = ["run", "--store", str(store), "--schema", sample["schema"], "--model", "sample",
            "--now", "2026-01-01", "--run-id", "day-1"]
    killed = subprocess.run([sys.executable, "-c", KILLER, *argv], capture_output=True,
                            text=True, timeout=300, env={**_env(), "KILL_AT": STAGES[stage]},
                            check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    retry = subprocess.run([sys.executable, "-c", KILLER, *argv], capture_output=True,
                           text=True, timeout=300, env={**_env(), "KILL_AT": "-"}, check=False)
    assert retry.returncode == 0, retry.stderr
    summary = json.loads(retry.stdout)
    registry = Registry(open_store(store), "sample")
    assert summary["verdict"] == "promote" and summary["champion"] == registry.champion()
    assert len(registry.versions()) == 1  # the retry finished the version, made no other
    report = registry.verify(registry.versions()[0])  # digests intact after the kill
    assert (report.model, report.metadata) == (VERIFIED, VERIFIED)


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "KILL_AT"}
