"""A run interrupted after it registered its challenger is retried with the same inputs."""

import datetime as dt
import json

import pytest

from driftloop.config import Config
from driftloop.data.storage import LocalStore, open_store
from driftloop.demo.sample import sample_schema, write_sample_store
from driftloop.models.registry import Registry
from driftloop.steps.loop import run_loop


def _end_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


class Crash(Exception):
    """Stands in for a kill -9 at one write."""


def test_a_run_killed_after_registration_succeeds_on_retry_and_records_its_failure(
        tmp_path, monkeypatch):
    # Regression: the version name is deterministic and registered before the reference
    # Parquet is written; a crash there left "version ... already exists; versions are
    # immutable" on every retry.
    info = write_sample_store(tmp_path / "store", days=1, rows_per_day=300, seed=4)
    store = open_store(tmp_path / "store")
    now = _end_of(info.first_day)
    real = LocalStore.write_bytes

    def crash_at_reference(self, key, data):
        if key.startswith("reference/sample/"):
            raise Crash("killed after registration")
        return real(self, key, data)

    monkeypatch.setattr(LocalStore, "write_bytes", crash_at_reference)
    with pytest.raises(Crash):
        run_loop(store, sample_schema(), "sample", now=now, run_id="r1", config=Config(),
                 lookback_days=1)
    registry = Registry(store, "sample")
    [version] = registry.versions()  # registered, never evaluated or promoted
    assert registry.aliases().champion is None
    failure = json.loads(store.read_text("runs/r1/failure.json"))
    assert failure["error"] == "Crash" and "killed after registration" in failure["message"]

    monkeypatch.setattr(LocalStore, "write_bytes", real)
    retry = run_loop(store, sample_schema(), "sample", now=now, run_id="r1", config=Config(),
                     lookback_days=1)
    assert retry.train is not None and retry.train.version == version
    assert retry.verdict is not None and retry.verdict.decision == "promote"
    assert registry.aliases().champion == version
    assert store.exists(f"reference/sample/{version}.parquet")
    assert registry.versions() == [version]


def test_a_forced_rerun_on_the_same_data_reuses_the_version_instead_of_failing(tmp_path):
    # Regression: a second forced retrain at the same logical time trains on the same rows,
    # gets the same version name and failed with "version ... already exists".
    info = write_sample_store(tmp_path / "store", days=3, rows_per_day=300, seed=4)
    store = open_store(tmp_path / "store")
    run_loop(store, sample_schema(), "sample", now=_end_of(info.first_day), run_id="a",
             lookback_days=3)
    now = _end_of(info.first_day + dt.timedelta(days=2))
    forced = [run_loop(store, sample_schema(), "sample", now=now, run_id=run, force=True,
                       lookback_days=3) for run in ("b", "c")]
    assert all(r.train is not None and r.verdict is not None for r in forced)
    assert forced[0].train.version == forced[1].train.version
    assert forced[1].verdict.decision == forced[0].verdict.decision
    assert len(Registry(store, "sample").versions()) == 2
