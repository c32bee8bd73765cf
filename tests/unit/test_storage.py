from __future__ import annotations

from pathlib import Path

import pytest

from driftloop.errors import StoreError
from driftloop.storage import LocalStore, Store, open_store, read_uri

ALL_BYTES = bytes(range(256)) * 4


@pytest.fixture(params=["local", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return open_store(tmp_path / "store", create=True)
    return request.getfixturevalue("gcs_store")


# -- local specifics ---------------------------------------------------------------


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, create=True)
    store.write_bytes("a/b/obj.bin", b"first version, longer")
    store.write_bytes("a/b/obj.bin", b"second")
    assert (tmp_path / "a/b/obj.bin").read_bytes() == b"second"
    assert sorted(p.name for p in (tmp_path / "a/b").iterdir()) == ["obj.bin"]


def test_local_list_with_prefixes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for key in ["m/v1/model.joblib", "m/v1/metadata.json", "m/v10/x", "mx/y", "top"]:
        store.write_bytes(key, b"1")
    assert store.list() == [
        "m/v1/metadata.json", "m/v1/model.joblib", "m/v10/x", "mx/y", "top",
    ]
    assert store.list("m") == ["m/v1/metadata.json", "m/v1/model.joblib", "m/v10/x"]
    assert store.list("m/v1/") == ["m/v1/metadata.json", "m/v1/model.joblib"]
    assert store.list("top") == ["top"]
    assert store.list("absent") == []


def test_local_missing_object_names_the_path(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(StoreError, match=r"nope/obj\.bin: object does not exist"):
        store.read_bytes("nope/obj.bin")


def test_local_missing_root_refused_unless_create(tmp_path: Path) -> None:
    root = tmp_path / "missing" / "root"
    with pytest.raises(StoreError, match="missing/root: folder does not exist"):
        open_store(root)
    assert not root.exists()
    store = open_store(root, create=True)
    assert root.is_dir()
    store.write_text("k", "v")
    assert (root / "k").read_text() == "v"


def test_local_read_json_error_names_the_key(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write_text("bad.json", "{not json")
    with pytest.raises(StoreError, match=r"bad\.json: not valid JSON"):
        store.read_json("bad.json")


def test_unsupported_scheme_refused() -> None:
    with pytest.raises(StoreError, match="only local folders"):
        open_store("s3://bucket/x")


# -- behaviour shared by local and gs:// ------------------------------------------


@pytest.mark.parametrize("key", ["../x", "a/../../x", "a/..", "..\\x"])
def test_dotdot_keys_refused(store: Store, key: str) -> None:
    with pytest.raises(StoreError, match=r"'\.\.' is not allowed"):
        store.write_bytes(key, b"x")
    with pytest.raises(StoreError, match=r"'\.\.' is not allowed"):
        store.read_bytes(key)


def test_round_trip_bytes_and_json(store: Store) -> None:
    store.write_bytes("dir/blob.bin", ALL_BYTES)
    store.write_json("dir/doc.json", {"a": [1, 2.5, None], "b": "é"})
    assert store.read_bytes("dir/blob.bin") == ALL_BYTES
    assert store.read_json("dir/doc.json") == {"a": [1, 2.5, None], "b": "é"}
    store.write_bytes("dir/blob.bin", b"replaced")
    assert store.read_bytes("dir/blob.bin") == b"replaced"


def test_list_under_prefix_returns_relative_keys(store: Store) -> None:
    for key in ["models/m/v1/a", "models/m/v1/b", "models/m/v2/a", "models/mx/v1/a", "c"]:
        store.write_bytes(key, key.encode())
    assert store.list("models/m") == ["models/m/v1/a", "models/m/v1/b", "models/m/v2/a"]
    assert store.list("models/m/v1/a") == ["models/m/v1/a"]
    assert store.list("models/nothing") == []
    assert store.list() == sorted(
        ["models/m/v1/a", "models/m/v1/b", "models/m/v2/a", "models/mx/v1/a", "c"]
    )
    for key in store.list():
        assert store.read_bytes(key) == key.encode()


def test_exists_and_delete(store: Store) -> None:
    store.write_bytes("x/y", b"1")
    assert store.exists("x/y")
    assert not store.exists("x")
    assert not store.exists("x/z")
    store.delete("x/y")
    assert not store.exists("x/y")
    assert store.list("x") == []
    store.delete("x/y")  # deleting a missing object is not an error


def test_missing_object_error_names_the_url(store: Store) -> None:
    with pytest.raises(StoreError, match=r"absent/obj: object does not exist") as info:
        store.read_bytes("absent/obj")
    assert store.url("absent/obj") in str(info.value)


def test_url_joins_root_and_key(store: Store) -> None:
    assert store.url("/a//b/./c") == f"{store.uri}/a/b/c"


# -- read_uri ----------------------------------------------------------------------


def test_read_uri_gs_object(gcs_store: Store) -> None:
    gcs_store.write_bytes("deep/obj.bin", ALL_BYTES)
    url = gcs_store.url("deep/obj.bin")
    assert url.startswith("gs://")
    assert read_uri(url) == ALL_BYTES
    with pytest.raises(StoreError, match="object does not exist"):
        read_uri(gcs_store.url("deep/missing.bin"))


def test_read_uri_local(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"hello")
    assert read_uri(tmp_path / "f.txt") == b"hello"
    assert read_uri(f"file://{tmp_path}/f.txt") == b"hello"
    with pytest.raises(StoreError, match=r"g\.txt: file does not exist"):
        read_uri(tmp_path / "g.txt")


def test_gcs_missing_bucket_is_a_store_error(gcs_emulator: str) -> None:
    store = open_store("gs://no-such-bucket-xyz/p")
    with pytest.raises(StoreError, match="gs://no-such-bucket-xyz/p/k: cannot write"):
        store.write_bytes("k", b"1")
    with pytest.raises(StoreError, match="gs://no-such-bucket-xyz/p: cannot list"):
        store.list()
