from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from driftloop.data.storage import LocalStore, Store
from driftloop.errors import IntegrityError, StoreError
from driftloop.models.registry import (
    UNPROTECTED,
    VERIFIED,
    AliasConflict,
    AliasState,
    ChampionChanged,
    Registry,
    RegistryError,
    VerifyReport,
    metadata_digest,
    sha256_bytes,
    sha256_file,
    verify_metadata,
)

MODEL = "churn"


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 3))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    return x, y


def make_artifact(folder: Path, version: str | None, *, seed: int = 0) -> LogisticRegression:
    """Write model.joblib, metadata.json and extra files the way a training step would."""
    folder.mkdir(parents=True)
    x, y = _data(seed)
    model = LogisticRegression(random_state=seed).fit(x, y)
    joblib.dump(model, folder / "model.joblib")
    meta: dict[str, Any] = {"model_sha256": sha256_file(folder / "model.joblib"), "seed": seed}
    if version is not None:
        meta["version"] = version
    (folder / "metadata.json").write_text(json.dumps(meta))
    (folder / "drift_profile.json").write_text(json.dumps({"features": ["a", "b", "c"]}))
    (folder / "reports").mkdir()
    (folder / "reports" / "eval.txt").write_text("f1=0.9")
    return model


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store", create=True)


@pytest.fixture
def registry(store: Store) -> Registry:
    return Registry(store, MODEL)


def evil_pickle(marker: Path) -> bytes:
    """Bytes that create ``marker`` when unpickled."""

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    buf = io.BytesIO()
    joblib.dump(Evil(), buf)
    return buf.getvalue()


# -- helpers -----------------------------------------------------------------------


def test_sha256_helpers(tmp_path: Path) -> None:
    assert sha256_bytes(b"") == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    data = bytes(range(256)) * 5000  # larger than one read chunk
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == sha256_bytes(data)
    with pytest.raises(StoreError, match="does not exist"):
        sha256_file(tmp_path / "missing")


# -- versions ----------------------------------------------------------------------


def test_register_and_load_round_trip(registry: Registry, store: Store, tmp_path: Path) -> None:
    model = make_artifact(tmp_path / "art", "v1")
    assert registry.register(tmp_path / "art") == "v1"
    assert registry.versions() == ["v1"]
    assert sorted(store.list("models/churn/v1")) == [
        "models/churn/v1/drift_profile.json",
        "models/churn/v1/metadata.json",
        "models/churn/v1/model.joblib",
        "models/churn/v1/reports/eval.txt",
    ]
    assert registry.metadata("v1")["seed"] == 0
    loaded = registry.load_model("v1")
    x, _ = _data(seed=7)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    np.testing.assert_allclose(loaded.predict_proba(x), model.predict_proba(x))
    assert json.loads(registry.read_file("v1", "drift_profile.json")) == {
        "features": ["a", "b", "c"]
    }


def test_explicit_version_and_conflicting_version(registry: Registry, tmp_path: Path) -> None:
    make_artifact(tmp_path / "a", None)
    with pytest.raises(RegistryError, match="no 'version' and none was given"):
        registry.register(tmp_path / "a")
    assert registry.register(tmp_path / "a", version="2024-01-01") == "2024-01-01"
    make_artifact(tmp_path / "b", "v2")
    with pytest.raises(RegistryError, match="'v2' differs from the requested 'v3'"):
        registry.register(tmp_path / "b", version="v3")
    with pytest.raises(RegistryError, match=r"version '\.\./x'"):
        registry.register(tmp_path / "a", version="../x")
    assert registry.versions() == ["2024-01-01"]


def test_download_copies_all_files(registry: Registry, tmp_path: Path) -> None:
    make_artifact(tmp_path / "art", "v1")
    registry.register(tmp_path / "art")
    dest = registry.download("v1", tmp_path / "out")
    assert dest == tmp_path / "out"
    for rel in ["model.joblib", "drift_profile.json", "reports/eval.txt"]:
        assert (dest / rel).read_bytes() == (tmp_path / "art" / rel).read_bytes()
    # metadata.json comes back sealed: the local content plus the digest of that content.
    local = json.loads((tmp_path / "art" / "metadata.json").read_text())
    got = json.loads((dest / "metadata.json").read_text())
    assert got == {**local, "metadata_sha256": metadata_digest(local)}


def test_tampered_model_is_refused_and_never_unpickled(
    registry: Registry, store: Store, tmp_path: Path
) -> None:
    make_artifact(tmp_path / "art", "v1")
    registry.register(tmp_path / "art")
    expected = registry.metadata("v1")["model_sha256"]
    marker = tmp_path / "unpickled.marker"
    evil = evil_pickle(marker)
    store.write_bytes("models/churn/v1/model.joblib", evil)

    with pytest.raises(IntegrityError) as info:
        registry.load_model("v1")
    message = str(info.value)
    assert store.url("models/churn/v1/model.joblib") in message
    assert expected in message
    assert sha256_bytes(evil) in message
    with pytest.raises(IntegrityError):
        registry.read_file("v1", "model.joblib")
    with pytest.raises(IntegrityError):
        registry.download("v1", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not marker.exists()

    # Control: the payload really does run when unpickled, so the check above means something.
    joblib.load(io.BytesIO(evil))
    assert marker.exists()


def test_register_refuses_hash_mismatch(registry: Registry, store: Store, tmp_path: Path) -> None:
    make_artifact(tmp_path / "art", "v1")
    (tmp_path / "art" / "model.joblib").write_bytes(b"not the model that was hashed")
    with pytest.raises(IntegrityError, match=r"art/model\.joblib: sha256 is [0-9a-f]{64}"):
        registry.register(tmp_path / "art")
    assert store.list() == []

    meta = json.loads((tmp_path / "art" / "metadata.json").read_text())
    del meta["model_sha256"]
    (tmp_path / "art" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="no model_sha256"):
        registry.register(tmp_path / "art")
    assert store.list() == []


def test_duplicate_version_refused(registry: Registry, store: Store, tmp_path: Path) -> None:
    make_artifact(tmp_path / "a", "v1", seed=0)
    make_artifact(tmp_path / "b", "v1", seed=1)
    registry.register(tmp_path / "a")
    before = store.read_bytes("models/churn/v1/model.joblib")
    with pytest.raises(RegistryError, match="version 'v1' of model 'churn' already exists"):
        registry.register(tmp_path / "b")
    assert store.read_bytes("models/churn/v1/model.joblib") == before
    assert registry.metadata("v1")["seed"] == 0


def test_interrupted_upload_is_invisible_and_retryable(
    registry: Registry, store: Store, tmp_path: Path
) -> None:
    make_artifact(tmp_path / "art", "v1")
    store.write_bytes("models/churn/v1/model.joblib", b"half an upload")
    assert registry.versions() == []
    registry.register(tmp_path / "art")
    assert registry.versions() == ["v1"]
    assert registry.load_model("v1") is not None


def test_versions_sorted_and_per_model(store: Store, tmp_path: Path) -> None:
    reg = Registry(store, MODEL)
    for i, version in enumerate(["b", "c", "a"]):
        make_artifact(tmp_path / version, version, seed=i)
        reg.register(tmp_path / version)
    make_artifact(tmp_path / "other", "z")
    Registry(store, "other-model").register(tmp_path / "other")
    assert reg.versions() == ["a", "b", "c"]
    assert Registry(store, "other-model").versions() == ["z"]
    with pytest.raises(RegistryError, match=r"no version 'd' \(registered: a, b, c\)"):
        reg.metadata("d")
    with pytest.raises(RegistryError, match="model name"):
        Registry(store, "../escape")


# -- aliases -----------------------------------------------------------------------


def _registered(registry: Registry, tmp_path: Path, *versions: str) -> None:
    for i, version in enumerate(versions):
        make_artifact(tmp_path / f"art-{version}", version, seed=i)
        registry.register(tmp_path / f"art-{version}")


def _history(state: AliasState) -> list[tuple[str, str | None, str | None, str, str]]:
    return [(c.alias, c.from_version, c.to_version, c.reason, c.run_id) for c in state.history]


def test_empty_aliases(registry: Registry) -> None:
    assert registry.aliases() == AliasState(None, None, None, [])
    assert registry.champion() is None


def test_promote_moves_champion_to_previous(
    registry: Registry, store: Store, tmp_path: Path
) -> None:
    _registered(registry, tmp_path, "v1", "v2")
    registry.promote("v1", reason="first model", run_id="run-1")
    registry.set_alias("canary", "v2", reason="canary 10%", run_id="run-2")
    state = registry.promote("v2", reason="gate passed", run_id="run-3")

    assert (state.champion, state.previous, state.canary) == ("v2", "v1", None)
    assert registry.champion() == "v2"
    assert registry.aliases() == state
    assert _history(state) == [
        ("champion", None, "v1", "first model", "run-1"),
        ("canary", None, "v2", "canary 10%", "run-2"),
        ("champion", "v1", "v2", "gate passed", "run-3"),
        ("previous", None, "v1", "gate passed", "run-3"),
        ("canary", "v2", None, "gate passed", "run-3"),
    ]
    for change in state.history:
        assert dt.datetime.fromisoformat(change.time).tzinfo is not None

    doc = store.read_json("models/churn/aliases.json")
    assert doc["model"] == MODEL
    assert doc["aliases"] == {"champion": "v2", "canary": None, "previous": "v1"}
    assert len(doc["history"]) == 5
    assert doc["history"][2]["from_version"] == "v1"


def test_promote_back_is_a_rollback(registry: Registry, tmp_path: Path) -> None:
    _registered(registry, tmp_path, "v1", "v2")
    registry.promote("v1", reason="r1")
    registry.promote("v2", reason="r2")
    state = registry.promote("v1", reason="rollback")
    assert (state.champion, state.previous) == ("v1", "v2")
    again = registry.promote("v1", reason="no-op")
    assert again.history == state.history


def test_set_alias_rules(registry: Registry, tmp_path: Path) -> None:
    _registered(registry, tmp_path, "v1")
    with pytest.raises(RegistryError, match="alias 'staging'"):
        registry.set_alias("staging", "v1", reason="x")
    with pytest.raises(RegistryError, match="no version 'v9'"):
        registry.set_alias("canary", "v9", reason="x")
    assert registry.aliases().history == []

    registry.set_alias("canary", "v1", reason="try", run_id="r")
    unchanged = registry.set_alias("canary", "v1", reason="same again")
    assert len(unchanged.history) == 1
    cleared = registry.set_alias("canary", None, reason="abort", run_id="r2")
    assert cleared.canary is None
    assert _history(cleared)[-1] == ("canary", "v1", None, "abort", "r2")


def test_history_only_grows(registry: Registry, store: Store, tmp_path: Path) -> None:
    _registered(registry, tmp_path, "v1", "v2", "v3")
    key = "models/churn/aliases.json"
    registry.promote("v1", reason="start")
    # An old entry carrying a field this code does not know must survive untouched.
    doc = store.read_json(key)
    doc["history"][0]["approved_by"] = "alice"
    store.write_json(key, doc)

    steps = [
        lambda: registry.set_alias("canary", "v2", reason="c"),
        lambda: registry.promote("v2", reason="p"),
        lambda: registry.set_alias("canary", "v3", reason="c3"),
        lambda: registry.promote("v3", reason="p3"),
        lambda: registry.promote("v1", reason="back"),
    ]
    previous = store.read_json(key)["history"]
    for step in steps:
        step()
        current = store.read_json(key)["history"]
        assert len(current) > len(previous)
        assert current[: len(previous)] == previous
        previous = current
    assert previous[0]["approved_by"] == "alice"


def test_corrupt_aliases_file_is_a_store_error(registry: Registry, store: Store) -> None:
    store.write_json("models/churn/aliases.json", {"model": "someone-else", "history": []})
    with pytest.raises(StoreError, match=r"aliases\.json: 'model' is 'someone-else'"):
        registry.aliases()
    store.write_json("models/churn/aliases.json", [1, 2])
    with pytest.raises(StoreError, match="'history' list"):
        registry.aliases()


# -- gs:// -------------------------------------------------------------------------


def test_registry_on_gcs_emulator(gcs_store: Store, tmp_path: Path) -> None:
    registry = Registry(gcs_store, MODEL)
    model = make_artifact(tmp_path / "art", "v1")
    registry.register(tmp_path / "art")
    assert registry.versions() == ["v1"]
    x, _ = _data(seed=3)
    np.testing.assert_array_equal(registry.load_model("v1").predict(x), model.predict(x))
    state = registry.promote("v1", reason="gcs", run_id="g1")
    assert Registry(gcs_store, MODEL).champion() == "v1"
    assert _history(state) == [("champion", None, "v1", "gcs", "g1")]
    gcs_store.write_bytes("models/churn/v1/model.joblib", b"tampered")
    with pytest.raises(IntegrityError, match="gs://"):
        registry.load_model("v1")


def test_register_needs_model_and_metadata(
    registry: Registry, store: Store, tmp_path: Path
) -> None:
    make_artifact(tmp_path / "art", "v1")
    (tmp_path / "art" / "model.joblib").unlink()
    with pytest.raises(StoreError, match=r"art/model\.joblib: file does not exist"):
        registry.register(tmp_path / "art")
    (tmp_path / "art" / "metadata.json").unlink()
    with pytest.raises(StoreError, match=r"art/metadata\.json: file does not exist"):
        registry.register(tmp_path / "art")
    assert store.list() == []


# -- metadata digest ---------------------------------------------------------------


def _edit_stored_metadata(store: Store, change: Any) -> None:
    key = "models/churn/v1/metadata.json"
    doc = store.read_json(key)
    change(doc)
    store.write_json(key, doc)  # the recorded digest is left as it was


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(seed=99),  # a metric or bound changed by hand
        lambda d: d.update(version="v2"),
        lambda d: d.update(schema={"columns": [{"name": "a", "max": 1e9}]}),
        lambda d: d.pop("seed"),
    ],
    ids=["value", "version", "added-field", "removed-field"],
)
def test_edited_metadata_is_refused_wherever_a_version_is_read(
    registry: Registry, store: Store, tmp_path: Path, change: Any
) -> None:
    make_artifact(tmp_path / "art", "v1")
    registry.register(tmp_path / "art")
    assert registry.verify("v1").metadata == VERIFIED
    _edit_stored_metadata(store, change)

    for read in (
        lambda: registry.metadata("v1"),
        lambda: registry.load_model("v1"),
        lambda: registry.read_file("v1", "metadata.json"),
        lambda: registry.verify("v1"),
        lambda: registry.download("v1", tmp_path / "out"),
    ):
        with pytest.raises(IntegrityError, match=r"v1/metadata\.json: metadata digest is"):
            read()
    assert not (tmp_path / "out").exists()


def test_metadata_digest_ignores_layout_but_not_values(
    registry: Registry, store: Store, tmp_path: Path
) -> None:
    make_artifact(tmp_path / "art", "v1")
    registry.register(tmp_path / "art")
    key = "models/churn/v1/metadata.json"
    doc = store.read_json(key)
    assert doc["metadata_sha256"] == metadata_digest(doc)
    # Reordered keys and other whitespace are the same metadata: still verified.
    store.write_text(key, json.dumps(dict(reversed(list(doc.items())))))
    assert registry.metadata("v1") == doc
    assert json.loads(registry.read_file("v1", "metadata.json")) == doc
    assert metadata_digest({**doc, "seed": 0.0}) != metadata_digest(doc)  # 0 vs 0.0 differ


def test_register_refuses_a_folder_whose_metadata_was_edited_after_download(
    registry: Registry, tmp_path: Path
) -> None:
    make_artifact(tmp_path / "art", "v1")
    registry.register(tmp_path / "art")
    other = Registry(registry.store, "copy")
    folder = registry.download("v1", tmp_path / "dl")
    assert other.register(folder) == "v1"  # an unedited download registers again
    meta = json.loads((folder / "metadata.json").read_text())
    meta["version"] = "v2"
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="changed after registration"):
        other.register(folder)
    assert other.versions() == ["v1"]


def test_version_registered_before_digests_is_served_but_reported_unprotected(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(store, MODEL)
    make_artifact(tmp_path / "art", "v1")
    registry.register(tmp_path / "art")
    _edit_stored_metadata(store, lambda d: d.pop("metadata_sha256"))  # as an old registry wrote

    with caplog.at_level("WARNING", logger="driftloop.models.registry"):
        assert registry.metadata("v1")["seed"] == 0
        assert registry.load_model("v1") is not None
    assert [r.getMessage().count(UNPROTECTED) for r in caplog.records] == [1]  # once
    report = registry.verify("v1")
    assert report == VerifyReport("v1", report.model_sha256, VERIFIED, UNPROTECTED)

    strict = Registry(store, MODEL, require_metadata_digest=True)
    with pytest.raises(IntegrityError, match=r"no metadata_sha256; unprotected"):
        strict.load_model("v1")


def test_verify_metadata_for_folders_read_outside_the_registry() -> None:
    meta: dict[str, Any] = {"version": "v1", "model_sha256": "ab"}
    assert verify_metadata(meta, "f") == UNPROTECTED
    sealed = {**meta, "metadata_sha256": metadata_digest(meta)}
    assert verify_metadata(sealed, "f") == VERIFIED
    with pytest.raises(IntegrityError, match=r"^f: metadata digest"):
        verify_metadata({**sealed, "version": "v9"}, "f")


# -- expected champion ---------------------------------------------------------------


def test_promote_over_an_unexpected_champion_moves_nothing(
    registry: Registry, store: Store, tmp_path: Path
) -> None:
    _registered(registry, tmp_path, "v1", "v2", "v3")
    registry.promote("v1", reason="first", expect_champion=None)
    registry.promote("v2", reason="another run won", run_id="run-a")
    before = store.read_bytes("models/churn/aliases.json")

    with pytest.raises(ChampionChanged) as info:
        registry.promote("v3", reason="beats v1", run_id="run-b", expect_champion="v1")
    assert (info.value.expected, info.value.actual, info.value.version) == ("v1", "v2", "v3")
    assert "champion changed, 'v3' not promoted" in str(info.value)
    assert isinstance(info.value, RegistryError)
    assert store.read_bytes("models/churn/aliases.json") == before
    with pytest.raises(ChampionChanged):
        registry.promote("v3", reason="no champion, I thought", expect_champion=None)

    state = registry.promote("v3", reason="beats v2", run_id="run-c", expect_champion="v2")
    assert (state.champion, state.previous) == ("v3", "v2")
    # Already champion: nothing to move, whatever was expected (e.g. a retried write).
    again = registry.promote("v3", reason="retry", expect_champion="v2")
    assert again.history == state.history


def test_set_alias_checks_the_expected_champion(registry: Registry, tmp_path: Path) -> None:
    _registered(registry, tmp_path, "v1", "v2")
    registry.promote("v1", reason="first")
    with pytest.raises(ChampionChanged):
        registry.set_alias("canary", "v2", reason="canary", expect_champion="v0")
    assert registry.aliases().canary is None
    state = registry.set_alias("canary", "v2", reason="canary", expect_champion="v1")
    assert state.canary == "v2"


# -- compare-and-swap ----------------------------------------------------------------


class RacingStore(LocalStore):
    """A LocalStore that lets ``interloper`` run just before each conditional write."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, create=True)
        self.interlopers: list[Any] = []
        self.conditional_writes = 0

    def write_if_generation(self, key: str, data: bytes, generation: int) -> bool:
        self.conditional_writes += 1
        if self.interlopers:
            self.interlopers.pop(0)()
        return super().write_if_generation(key, data, generation)


def test_a_lost_race_is_replanned_from_the_winners_state(tmp_path: Path) -> None:
    store = RacingStore(tmp_path / "store")
    registry = Registry(store, MODEL)
    _registered(registry, tmp_path, "v1", "v2", "v3")
    registry.promote("v1", reason="first", run_id="r1")
    other = Registry(store, MODEL)
    store.interlopers.append(lambda: other.promote("v2", reason="other run", run_id="r2"))
    store.conditional_writes = 0

    state = registry.promote("v3", reason="mine", run_id="r3")
    # 3 writes: mine (lost to the interloper's, which is the 2nd), then mine again.
    assert store.conditional_writes == 3
    assert (state.champion, state.previous) == ("v3", "v2")  # v2 was really replaced
    assert _history(registry.aliases()) == [
        ("champion", None, "v1", "first", "r1"),
        ("champion", "v1", "v2", "other run", "r2"),
        ("previous", None, "v1", "other run", "r2"),
        ("champion", "v2", "v3", "mine", "r3"),
        ("previous", "v1", "v2", "mine", "r3"),
    ]


def test_expected_champion_is_checked_again_after_a_lost_race(tmp_path: Path) -> None:
    store = RacingStore(tmp_path / "store")
    registry = Registry(store, MODEL)
    _registered(registry, tmp_path, "v1", "v2", "v3")
    registry.promote("v1", reason="first")
    other = Registry(store, MODEL)
    store.interlopers.append(lambda: other.promote("v2", reason="other run"))
    with pytest.raises(ChampionChanged, match="champion is 'v2', not the expected 'v1'"):
        registry.promote("v3", reason="beats v1", expect_champion="v1")
    assert registry.champion() == "v2"


def test_alias_conflict_after_bounded_attempts(tmp_path: Path) -> None:
    class AlwaysLoses(LocalStore):
        calls = 0

        def write_if_generation(self, key: str, data: bytes, generation: int) -> bool:
            AlwaysLoses.calls += 1
            return False

    store = AlwaysLoses(tmp_path / "store", create=True)
    registry = Registry(store, MODEL, max_attempts=4)
    _registered(registry, tmp_path, "v1")
    with pytest.raises(AliasConflict, match="each of 4 attempts; no alias moved"):
        registry.promote("v1", reason="x")
    assert AlwaysLoses.calls == 4
    assert not store.exists("models/churn/aliases.json")
