"""A run's decisions pushed to a real Pushgateway (Debian's package) on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import re
import socket
import urllib.request

import pytest

from driftloop.config import Config
from driftloop.data.runs import RunStatus
from driftloop.data.storage import open_store
from driftloop.demo.sample import sample_schema, write_sample_store
from driftloop.errors import DriftloopError
from driftloop.steps.loop import PIPELINE, run_loop
from driftloop.steps.pushgateway import exposition, group_url, run_samples
from driftloop.steps.records import read_run
from driftloop.steps.status import exit_step

GROUP = 'instance="",job="driftloop",model="sample",pipeline="continuous-training"'


def _scrape(url: str) -> dict[str, float]:
    """The gateway's own /metrics: ``{series: value}`` of the driftloop series it holds."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(driftloop_\w+)\{([^}]*)\} (\S+)$", line)
        if m:
            labels = ",".join(sorted(x for x in m.group(2).split(",") if x))
            out[f"{m.group(1)}{{{labels}}}"] = float(m.group(3))
    return out


def _series(scraped: dict[str, float], name: str, **labels: str) -> float:
    want = ",".join(sorted([*GROUP.split(","), *(f'{k}="{v}"' for k, v in labels.items())]))
    return scraped[f"{name}{{{want}}}"]


def _end_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def test_each_run_replaces_its_group_with_what_it_decided(pushgateway, tmp_path):
    info = write_sample_store(tmp_path / "store", days=2, rows_per_day=400, drift_day=9,
                              seed=5)
    st, schema, config = open_store(str(tmp_path / "store")), sample_schema(), Config()
    first = run_loop(st, schema, "sample", now=_end_of(info.first_day), run_id="r1",
                     config=config, pushgateway_url=pushgateway)
    assert first.verdict is not None and first.verdict.decision == "promote"
    pushed = _scrape(pushgateway)
    assert _series(pushed, "driftloop_run_success") == 1.0
    assert _series(pushed, "driftloop_run_info", state="SUCCEEDED") == 1.0
    assert _series(pushed, "driftloop_run_info", state="FAILED") == 0.0
    assert _series(pushed, "driftloop_retrain_decision") == 1.0
    assert _series(pushed, "driftloop_verdict", decision="promote") == 1.0
    assert _series(pushed, "driftloop_champion_info", version=first.train.version) == 1.0
    assert _series(pushed, "driftloop_training_rows") == first.train.train_rows
    assert _series(pushed, "driftloop_run_duration_seconds") >= 0
    assert read_run(st, "r1").status.pushed == sum(1 for k in pushed if "driftloop_" in k)

    second = run_loop(st, schema, "sample", now=_end_of(info.first_day + dt.timedelta(days=1)),
                      run_id="r2", config=config, pushgateway_url=pushgateway)
    pushed = _scrape(pushgateway)
    assert second.drift is not None
    for f in second.drift.features:  # one series per schema column, labelled by it
        assert _series(pushed, "driftloop_drift_statistic", feature=f.name) == pytest.approx(
            f.statistic)
    assert _series(pushed, "driftloop_drift_detected") == float(second.drift.drifted)
    fired = {r.name: r.fired for r in second.decision.rules}
    for rule, value in fired.items():
        assert _series(pushed, "driftloop_trigger_rule_fired", rule=rule) == float(value)
    if not second.decision.retrain:  # the group was replaced: no stale verdict remains
        assert not any(k.startswith("driftloop_verdict{") for k in pushed)
    # the age at the run's logical time: one day after the first model's
    assert _series(pushed, "driftloop_champion_age_seconds") == pytest.approx(86400, abs=1)
    assert _series(pushed, "driftloop_champion_created_timestamp_seconds") == (
        _end_of(info.first_day).timestamp())


def test_a_failed_run_pushes_its_failure(pushgateway, tmp_path):
    (tmp_path / "store").mkdir()
    st = open_store(str(tmp_path / "store"))
    day = dt.date(2026, 1, 1)
    # every row of the window quarantined: ingest fails the run
    st.write_text(f"requests/dt={day}/broken.jsonl", "{not json\n[1, 2]\n")
    with pytest.raises(DriftloopError):
        run_loop(st, sample_schema(), "sample", now=_end_of(day), run_id="bad",
                 pushgateway_url=pushgateway)
    pushed = _scrape(pushgateway)
    assert _series(pushed, "driftloop_run_success") == 0.0
    assert _series(pushed, "driftloop_run_info", state="FAILED") == 1.0
    assert read_run(st, "bad").status.state == "FAILED"


def test_an_unreachable_gateway_is_recorded_and_the_run_still_ends(tmp_path):
    (tmp_path / "s").mkdir()
    st = open_store(str(tmp_path / "s"))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    status = exit_step(st, model_name="m", run_id="x", state="SUCCEEDED",
                       pushgateway_url=url)
    assert status.pushed == 0 and status.push_error and url in status.push_error
    assert read_run(st, "x").status.push_error == status.push_error


def test_the_group_url_escapes_labels_and_refuses_other_schemes():
    assert group_url("http://gw:9091/", pipeline=PIPELINE, model="a/b c") == (
        "http://gw:9091/metrics/job/driftloop/pipeline/continuous-training/model/a%2Fb%20c")
    with pytest.raises(DriftloopError, match="pushgateway_url"):
        group_url("gw:9091", pipeline=PIPELINE, model="m")


def test_the_exposition_has_one_help_and_type_per_metric_and_no_nan(tmp_path):
    (tmp_path / "s").mkdir()
    st = open_store(str(tmp_path / "s"))
    from driftloop.data.runs import record_result

    record_result(st, "x", "status",
                  RunStatus(state="FAILED", finished_at="2026-01-02T00:00:00+00:00"))
    text = exposition(run_samples(st, "x", "m"))
    assert text.count("# TYPE driftloop_run_info gauge") == 1
    assert 'driftloop_run_info{state="FAILED"} 1.0' in text
    assert "nan" not in text.lower()
    assert "driftloop_run_duration_seconds" not in text  # no ingest: no start, no duration


def test_a_rollback_shows_even_when_the_same_run_starts_a_new_canary():
    from driftloop.models.registry import AliasChange
    from driftloop.steps.pushgateway import _samples, rolled_back

    def move(alias, old, new, run):
        return AliasChange("2026-01-02T00:00:00+00:00", alias, old, new, "why", run)

    history = [move("canary", None, "v-bad", "r1"),
               move("canary", "v-bad", None, "r2"),    # r2 rolled v-bad back...
               move("canary", None, "v-next", "r2"),   # ...and started v-next
               move("canary", "v-next", None, "r3"),   # r3 completed v-next
               move("champion", "v-0", "v-next", "r3")]
    assert rolled_back(history, "r2") and not rolled_back(history, "r3")
    assert not rolled_back(history, "r1")
    from driftloop.rollout.progressive import RolloutStep
    from driftloop.steps.records import RunRecord

    record = RunRecord("r2", rollout=RolloutStep("start", "v-next", 0, 10, reasons=["x"]))
    got = {dict(s.labels)["action"]: s.value for s in _samples(
        record, champion_created=None, champion=None, now=dt.datetime.now(dt.UTC),
        rolled_back=True) if s.name == "driftloop_rollout_action"}
    assert got["rollback"] == 1.0 and got["start"] == 1.0 and got["hold"] == 0.0
