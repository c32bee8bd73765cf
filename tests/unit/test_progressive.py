"""The progressive rollout policy over a local backend on tmp_path and hand-made records."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftloop.config import CanaryConfig, TriggerConfig
from driftloop.data.storage import LocalStore
from driftloop.decide.trigger import ChampionInfo, decide_retrain
from driftloop.errors import ConfigError
from driftloop.models.registry import Registry
from driftloop.notify import Delivery, Event, NotificationError, Notifier
from driftloop.rollout import InferenceServiceNotFound, make_backend, version_storage_uri
from driftloop.rollout.local import LocalRolloutBackend
from driftloop.rollout.progressive import (
    ProgressiveError,
    RolloutStep,
    manual_promote,
    manual_rollback,
    recorded_step,
    rollout_status,
    start_canary,
    step_canary,
)

MODEL = "m"
CONFIG = CanaryConfig(min_labelled=50)
NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


class Recorder(Notifier):
    """Records each event with the InferenceService's state at the moment it was sent."""

    backend = "recorder"

    def __init__(self, service: LocalRolloutBackend, ok: bool = True) -> None:
        self.service = service
        self.ok = ok
        self.events: list[tuple[Event, str | None, int]] = []

    def send(self, event: Event) -> Delivery:
        try:
            state = self.service.get()
            seen = (state.canary_storage_uri, state.canary_traffic_percent or 0)
        except InferenceServiceNotFound:
            seen = (None, 0)
        self.events.append((event, *seen))
        return Delivery(self.backend, self.ok, None if self.ok else "refused")

    @property
    def kinds(self) -> list[str]:
        return [e.kind for e, _, _ in self.events]


def _register(registry: Registry, folder: Path, version: str) -> None:
    folder.mkdir(parents=True)
    data = f"model {version}".encode()
    (folder / "model.joblib").write_bytes(data)
    (folder / "metadata.json").write_text(json.dumps(
        {"version": version, "model_sha256": hashlib.sha256(data).hexdigest()}))
    registry.register(folder)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(LocalStore(tmp_path / "store", create=True), MODEL)
    for v in ("v1", "v2", "v3"):
        _register(reg, tmp_path / "artifacts" / v, v)
    return reg


@pytest.fixture
def backend(tmp_path: Path) -> LocalRolloutBackend:
    return LocalRolloutBackend(tmp_path / "state", "m", "ml")


@pytest.fixture
def notifier(backend: LocalRolloutBackend) -> Recorder:
    return Recorder(backend)


def records(accuracies: dict[str, float], n: int = 200, seed: int = 0) -> pd.DataFrame:
    """``n`` labelled responses per version, a share ``accuracy`` of them correct."""
    rng = np.random.default_rng(seed)
    frames = []
    for version, acc in accuracies.items():
        label = rng.choice(["yes", "no"], n)
        correct = np.arange(n) < round(acc * n)
        prediction = np.where(correct, label, np.where(label == "yes", "no", "yes"))
        frames.append(pd.DataFrame({"id": [f"{version}-{i}" for i in range(n)],
                                    "model_version": version, "prediction": prediction,
                                    "label": label}))
    return pd.concat(frames, ignore_index=True)


def _with_champion(registry: Registry, backend: LocalRolloutBackend) -> None:
    registry.promote("v1", reason="seed", run_id="r0")
    backend.ensure(version_storage_uri(registry, "v1"))


def _start(registry: Registry, backend: LocalRolloutBackend, notifier: Notifier,
           version: str = "v2", run_id: str = "r1") -> RolloutStep:
    return start_canary(registry, backend, version, config=CONFIG, notifier=notifier,
                        run_id=run_id, model_name=MODEL, reason="verdict promote")


def _step(registry: Registry, backend: LocalRolloutBackend, notifier: Notifier,
          frame: pd.DataFrame, run_id: str) -> RolloutStep | None:
    return step_canary(registry, backend, frame, config=CONFIG, notifier=notifier,
                       run_id=run_id, model_name=MODEL, now=NOW)


def test_the_first_model_is_deployed_at_100_without_a_canary(registry, backend, notifier):
    step = _start(registry, backend, notifier, "v1")
    assert step.action == "deploy" and (step.from_percent, step.to_percent) == (0, 100)
    state = backend.get()
    assert state.spec_storage_uri == version_storage_uri(registry, "v1")
    assert not state.canary_in_progress
    assert registry.aliases().champion == "v1" and registry.aliases().canary is None
    # announced before the service existed
    assert notifier.events[0][0].kind == "model_update" and notifier.events[0][1:] == (None, 0)
    assert "no champion yet" in step.reasons[0]


def test_start_notifies_first_then_sets_the_canary_and_the_alias(registry, backend, notifier):
    _with_champion(registry, backend)
    step = _start(registry, backend, notifier)
    assert step.action == "start" and (step.from_percent, step.to_percent) == (0, 10)
    event, canary_uri_then, _ = notifier.events[0]
    assert event.kind == "model_update" and event.details["percent"] == 10
    assert canary_uri_then is None  # sent before the InferenceService changed
    state = backend.get()
    assert state.canary_storage_uri == version_storage_uri(registry, "v2")
    assert state.canary_traffic_percent == 10
    assert state.storage_uri == version_storage_uri(registry, "v1")
    aliases = registry.aliases()
    assert aliases.canary == "v2" and aliases.champion == "v1"
    assert aliases.history[-1].run_id == "r1" and "verdict promote" in aliases.history[-1].reason
    assert recorded_step(registry, "r1") == step


def test_starting_again_changes_nothing(registry, backend, notifier):
    _with_champion(registry, backend)
    _start(registry, backend, notifier)
    patches, history = len(backend.applied), len(registry.aliases().history)
    again = _start(registry, backend, notifier, run_id="r2")
    assert again.action == "noop" and again.to_percent == 10
    assert len(backend.applied) == patches
    assert len(registry.aliases().history) == history
    assert notifier.kinds == ["model_update"]


def test_a_second_canary_is_refused_while_one_is_in_flight(registry, backend, notifier):
    _with_champion(registry, backend)
    _start(registry, backend, notifier)
    with pytest.raises(ProgressiveError, match="canary v2 is in progress"):
        _start(registry, backend, notifier, "v3", run_id="r2")
    assert backend.get().canary_storage_uri == version_storage_uri(registry, "v2")


def test_a_required_notification_that_fails_stops_before_any_change(registry, backend):
    _with_champion(registry, backend)
    failing = Recorder(backend, ok=False)
    with pytest.raises(NotificationError):
        start_canary(registry, backend, "v2", config=CONFIG, notifier=failing, run_id="r1",
                     model_name=MODEL, require_notification=True)
    assert not backend.get().canary_in_progress and registry.aliases().canary is None


def test_no_canary_means_no_step(registry, backend, notifier):
    _with_champion(registry, backend)
    assert _step(registry, backend, notifier, records({"v1": 0.9}), "r1") is None
    assert recorded_step(registry, "r1") is None


def test_a_good_canary_goes_10_50_100_and_becomes_champion(registry, backend, notifier):
    _with_champion(registry, backend)
    _start(registry, backend, notifier, run_id="r1")
    good = records({"v1": 0.80, "v2": 0.90})
    first = _step(registry, backend, notifier, good, "r2")
    assert first is not None and first.action == "advance"
    assert (first.from_percent, first.to_percent) == (10, 50)
    assert first.analysis is not None and first.analysis.decision == "advance"
    assert backend.get().canary_traffic_percent == 50 and registry.aliases().canary == "v2"
    second = _step(registry, backend, notifier, good, "r3")
    assert second is not None and (second.from_percent, second.to_percent) == (50, 100)
    assert second.completes
    state = backend.get()
    assert not state.canary_in_progress
    assert state.spec_storage_uri == version_storage_uri(registry, "v2")
    aliases = registry.aliases()
    assert (aliases.champion, aliases.previous, aliases.canary) == ("v2", "v1", None)
    last = {c.alias: c for c in aliases.history if c.run_id == "r3"}
    assert set(last) == {"champion", "previous", "canary"}
    assert notifier.kinds == ["model_update", "model_update"]  # start, then completion
    assert _step(registry, backend, notifier, good, "r4") is None  # nothing in flight


def test_too_few_labels_hold_and_change_nothing(registry, backend, notifier):
    _with_champion(registry, backend)
    _start(registry, backend, notifier)
    patches, history = len(backend.applied), len(registry.aliases().history)
    step = _step(registry, backend, notifier, records({"v1": 0.9, "v2": 0.9}, n=20), "r2")
    assert step is not None and step.action == "hold"
    assert (step.from_percent, step.to_percent) == (10, 10)
    assert "too few to judge" in step.reasons[0]
    assert len(backend.applied) == patches and len(registry.aliases().history) == history


def test_labels_accumulate_across_runs_since_the_canary_started(registry, backend, notifier):
    # 30 labelled responses a day per version, 50 needed: day 1 alone holds; the lookback
    # of days 1-2 (what ingest hands the step) is enough. Day 0 was served before the canary
    # started and does not count, even for the champion.
    _with_champion(registry, backend)
    _start(registry, backend, notifier)
    days = []
    for day, versions in enumerate(({"v1": 0.2}, {"v1": 0.6, "v2": 0.95},
                                    {"v1": 0.6, "v2": 0.95})):
        frame = records(versions, n=30, seed=day)
        frame["id"] = f"d{day}-" + frame["id"]
        frame["timestamp"] = pd.Timestamp(NOW) + pd.Timedelta(days=day, minutes=1)
        days.append(frame)
    first = _step(registry, backend, notifier, pd.concat(days[:2], ignore_index=True), "r2")
    assert first is not None and first.action == "hold"
    second = _step(registry, backend, notifier, pd.concat(days, ignore_index=True), "r3")
    assert second is not None and second.action == "advance"
    assert second.analysis is not None
    champ, canary = second.analysis.champion, second.analysis.canary
    assert champ.labelled == canary.labelled == 60  # day 0 left out
    assert champ.accuracy == pytest.approx(0.6)


def test_a_canary_that_holds_max_holds_runs_in_a_row_is_rolled_back(registry, backend,
                                                                     notifier):
    _with_champion(registry, backend)
    _start(registry, backend, notifier)
    few = records({"v1": 0.9, "v2": 0.9}, n=20)  # too few labels: hold
    config = CanaryConfig(min_labelled=50, max_holds=2)

    def step(run_id: str) -> RolloutStep | None:
        return step_canary(registry, backend, few, config=config, notifier=notifier,
                           run_id=run_id, model_name=MODEL, now=NOW)

    assert [step(r).action for r in ("r2", "r3")] == ["hold", "hold"]  # type: ignore[union-attr]
    assert step("r3").action == "hold"  # a re-run of r3 is not another hold  # type: ignore[union-attr]
    last = step("r4")
    assert last is not None and last.action == "rollback" and last.to_percent == 0
    assert ("held 2 runs in a row at 10% without a new labelled canary response "
            "(canary.max_holds 2)") in last.reasons[-1]
    assert registry.aliases().canary is None and not backend.get().canary_in_progress
    assert notifier.kinds[-1] == "rollback"


def test_holds_count_only_at_the_current_step(registry, backend, notifier):
    _with_champion(registry, backend)
    _start(registry, backend, notifier)
    config = CanaryConfig(min_labelled=50, max_holds=1)
    few, good = records({"v1": 0.9, "v2": 0.9}, n=20), records({"v1": 0.80, "v2": 0.95})

    def step(frame: pd.DataFrame, run_id: str) -> str:
        out = step_canary(registry, backend, frame, config=config, notifier=notifier,
                          run_id=run_id, model_name=MODEL, now=NOW)
        assert out is not None
        return out.action

    # a hold at 10 %, an advance to 50 %, then one hold at 50 % is still allowed
    assert [step(few, "r2"), step(good, "r3"), step(few, "r4")] == ["hold", "advance", "hold"]
    assert step(few, "r5") == "rollback"


def test_a_worse_canary_is_rolled_back(registry, backend, notifier):
    _with_champion(registry, backend)
    _start(registry, backend, notifier)
    step = _step(registry, backend, notifier, records({"v1": 0.90, "v2": 0.60}), "r2")
    assert step is not None and step.action == "rollback" and step.to_percent == 0
    assert "clearly worse" in step.reasons[0]
    event, canary_then, percent_then = notifier.events[-1]
    assert event.kind == "rollback" and percent_then == 10  # sent before the rollback
    assert canary_then == version_storage_uri(registry, "v2")
    state = backend.get()
    assert not state.canary_in_progress
    assert state.spec_storage_uri == version_storage_uri(registry, "v1")
    assert state.traffic_by_revision() == {state.latest_ready_revision: 100}
    aliases = registry.aliases()
    assert aliases.canary is None and aliases.champion == "v1"
    assert aliases.history[-1].run_id == "r2" and "rollback of v2" in aliases.history[-1].reason


def test_rerunning_a_run_returns_its_step_and_changes_nothing(registry, backend, notifier):
    _with_champion(registry, backend)
    _start(registry, backend, notifier)
    good = records({"v1": 0.80, "v2": 0.90})
    first = _step(registry, backend, notifier, good, "r2")
    patches, history = len(backend.applied), len(registry.aliases().history)
    again = _step(registry, backend, notifier, good, "r2")
    assert again == first and backend.get().canary_traffic_percent == 50
    assert len(backend.applied) == patches and len(registry.aliases().history) == history


def test_manual_promote_full_and_manual_rollback_of_the_champion(registry, backend, notifier):
    _with_champion(registry, backend)
    _start(registry, backend, notifier)
    step = manual_promote(registry, backend, "v2", config=CONFIG, notifier=notifier,
                          run_id="manual-1", model_name=MODEL, full=True)
    assert step.action == "promote" and step.to_percent == 100
    assert backend.get().spec_storage_uri == version_storage_uri(registry, "v2")
    assert (registry.aliases().champion, registry.aliases().previous) == ("v2", "v1")
    back = manual_rollback(registry, backend, notifier=notifier, run_id="manual-2",
                           model_name=MODEL)
    assert back.action == "rollback" and back.version == "v1"
    state = backend.get()
    assert state.spec_storage_uri == version_storage_uri(registry, "v1")
    assert not state.canary_in_progress
    assert (registry.aliases().champion, registry.aliases().previous) == ("v1", "v2")
    assert notifier.kinds[-1] == "rollback"


def test_manual_rollback_of_a_canary_and_nothing_to_roll_back(registry, backend, notifier):
    _with_champion(registry, backend)
    with pytest.raises(ProgressiveError, match="nothing to roll back"):
        manual_rollback(registry, backend, notifier=notifier, run_id="x", model_name=MODEL)
    _start(registry, backend, notifier)
    step = manual_rollback(registry, backend, notifier=notifier, run_id="x", model_name=MODEL)
    assert step.action == "rollback" and step.from_percent == 10
    assert registry.aliases().canary is None and not backend.get().canary_in_progress


def test_manual_promote_without_full_starts_a_canary(registry, backend, notifier):
    _with_champion(registry, backend)
    step = manual_promote(registry, backend, "v3", config=CONFIG, notifier=notifier,
                          run_id="m", model_name=MODEL)
    assert step.action == "start" and backend.get().canary_traffic_percent == 10


def test_status_shows_aliases_traffic_and_the_last_step(registry, backend, notifier):
    _with_champion(registry, backend)
    _start(registry, backend, notifier)
    status = rollout_status(registry, backend)
    assert (status.champion, status.canary, status.canary_percent) == ("v1", "v2", 10)
    assert status.problems == []
    assert status.last_step is not None and status.last_step.action == "start"
    assert status.serving is not None and len(status.serving["traffic"]) == 2
    registry.set_alias("canary", None, reason="someone", run_id="")
    assert "registry does not know" in rollout_status(registry, backend).problems[0]


def test_a_service_that_no_longer_serves_the_canary_clears_the_alias(registry, backend,
                                                                    notifier):
    _with_champion(registry, backend)
    _start(registry, backend, notifier)
    backend.rollback()  # someone rolled back outside driftloop
    step = _step(registry, backend, notifier, records({"v1": 0.9, "v2": 0.9}), "r2")
    assert step is not None and step.action == "rollback"
    assert registry.aliases().canary is None


def test_decide_retrain_waits_for_a_canary_unless_forced():
    champ = ChampionInfo("v1", NOW - dt.timedelta(days=30), NOW - dt.timedelta(days=30),
                         "f1_macro", 0.8)
    blocked = decide_retrain(champ, now=NOW, config=TriggerConfig(), new_labels=10_000,
                             canary_in_progress="v2")
    assert not blocked.retrain and "canary v2 is in progress" in blocked.reasons[0]
    assert blocked.rules[-1].name == "canary" and blocked.rules[-1].fired
    forced = decide_retrain(champ, now=NOW, config=TriggerConfig(), canary_in_progress="v2",
                            force=True)
    assert forced.retrain and not forced.rules[-1].fired
    free = decide_retrain(champ, now=NOW, config=TriggerConfig(), new_labels=10_000)
    assert free.retrain and all(r.name != "canary" for r in free.rules)


def test_make_backend(tmp_path: Path):
    local = make_backend("local", name="m", namespace="ml", store_uri=tmp_path / "store")
    assert isinstance(local, LocalRolloutBackend)
    assert local.store.root == tmp_path / "store" / "rollout"
    explicit = make_backend("local", name="m", state_dir=tmp_path / "s")
    assert isinstance(explicit, LocalRolloutBackend) and explicit.store.root == tmp_path / "s"
    with pytest.raises(ConfigError, match="only for a local store"):
        make_backend("local", name="m", store_uri="gs://bucket/prefix")
    with pytest.raises(ConfigError, match="must be one of local, kubernetes"):
        make_backend("helm", name="m", state_dir=tmp_path)


def test_holds_while_labels_keep_arriving_do_not_count_towards_max_holds(registry, backend,
                                                                        notifier):
    # Regression: max_holds counted every hold, so a canary whose labels flowed too slowly
    # for its budget was rolled back after max_holds runs whatever the evidence said.
    _with_champion(registry, backend)
    _start(registry, backend, notifier)
    config = CanaryConfig(min_labelled=50, max_holds=2)

    def step(run_id: str, n: int) -> str:
        done = step_canary(registry, backend, records({"v1": 0.9, "v2": 0.9}, n=n),
                           config=config, notifier=notifier, run_id=run_id, model_name=MODEL,
                           now=NOW)
        assert done is not None
        return done.action

    # run ids sort after the start's "r1": steps recorded within one second keep their order
    assert [step(f"s{n}", n) for n in (10, 20, 30, 40)] == ["hold"] * 4  # labels grow
    # no label since s40: s40 and s41 are two holds without progress, s42 the next one
    assert [step("s41", 40), step("s42", 40)] == ["hold", "rollback"]


# -- a write that does not take effect is rolled back -------------------------------------------


def _broken(registry: Registry, tmp_path: Path, *versions: str) -> LocalRolloutBackend:
    """A backend whose controller stand-in never loads the models of ``versions``."""
    uris = {version_storage_uri(registry, v): f"No model found in {v}" for v in versions}
    return LocalRolloutBackend(tmp_path / "state", "m", "ml", failing=uris.get)


def test_a_canary_that_never_becomes_ready_is_rolled_back_with_the_reason(registry, tmp_path):
    # Before the fix the PATCH's 200 was enough: "start" was recorded (canary alias set,
    # 10% announced) for a revision that never served a request.
    backend = _broken(registry, tmp_path, "v2")
    notifier = Recorder(backend)
    _with_champion(registry, backend)
    step = _start(registry, backend, notifier)
    assert step.action == "rollback" and (step.from_percent, step.to_percent) == (0, 0)
    assert step.reasons[0] == (
        "the canary at 10% of v2 did not take effect (revision m-predictor-00002): "
        'RevisionFailed: Revision "m-predictor-00002" failed with message: ReplicaSet '
        '"m-predictor-00002-deployment" has timed out progressing..')
    assert "the champion v1 serves all traffic" in step.reasons[1]
    state = backend.get()
    assert state.spec_storage_uri == version_storage_uri(registry, "v1") and state.settled
    assert not state.canary_in_progress
    assert state.traffic_by_revision() == {"m-predictor-00003": 100}
    assert registry.aliases().canary is None and registry.aliases().champion == "v1"
    assert notifier.kinds == ["model_update", "rollback"]
    assert notifier.events[1][0].details["reasons"] == step.reasons
    assert recorded_step(registry, "r1") == step


def test_an_advance_that_does_not_take_effect_rolls_back(registry, backend, notifier,
                                                          monkeypatch):
    from driftloop.rollout.errors import RolloutTimeout

    _with_champion(registry, backend)
    _start(registry, backend, notifier)

    def never(percent: int) -> None:
        raise RolloutTimeout(f"not in effect after 720 s: still waiting for {percent}% of the "
                             "traffic on m-predictor-00002", reason="Timeout")

    monkeypatch.setattr(backend, "set_traffic", never)
    step = _step(registry, backend, notifier, records({"v1": 0.80, "v2": 0.90}), "r2")
    assert step is not None and step.action == "rollback" and step.from_percent == 10
    assert step.reasons[0].startswith("the step to 50% of v2 did not take effect: not in "
                                      "effect after 720 s")
    assert step.analysis is not None and step.analysis.decision == "advance"
    assert registry.aliases().canary is None and not backend.get().canary_in_progress


def test_the_first_model_that_never_loads_is_not_promoted(registry, tmp_path):
    backend = _broken(registry, tmp_path, "v1")
    with pytest.raises(ProgressiveError, match=r"the first model v1 did not take effect .*"
                                               "RevisionFailed.*nothing was promoted"):
        _start(registry, backend, Recorder(backend), "v1")
    assert registry.aliases().champion is None


def test_a_full_manual_promotion_that_never_loads_is_rolled_back(registry, tmp_path):
    backend = _broken(registry, tmp_path, "v2")
    notifier = Recorder(backend)
    _with_champion(registry, backend)
    step = manual_promote(registry, backend, "v2", config=CONFIG, notifier=notifier,
                          run_id="manual-1", model_name=MODEL, full=True)
    assert step.action == "rollback" and "RevisionFailed" in step.reasons[0]
    assert registry.aliases().champion == "v1"
    assert backend.get().spec_storage_uri == version_storage_uri(registry, "v1")
    assert notifier.kinds == ["rollback"]
