from __future__ import annotations

import fcntl
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftloop.data.storage import (
    NO_OBJECT,
    STALE_TEMP_SECONDS,
    LocalStore,
    Store,
    content_generation,
    open_store,
    read_uri,
)
from driftloop.errors import StoreError

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


# -- generations and compare-and-swap ----------------------------------------------


def test_read_with_generation_tracks_versions(store: Store) -> None:
    assert store.read_with_generation("g/obj") == (None, NO_OBJECT)
    store.write_bytes("g/obj", b"one")
    data, first = store.read_with_generation("g/obj")
    assert (data, first != NO_OBJECT) == (b"one", True)
    store.write_bytes("g/obj", b"two")
    data, second = store.read_with_generation("g/obj")
    assert data == b"two" and second not in (first, NO_OBJECT)
    # A conditional create, then a replace from the generation just read.
    assert store.write_if_generation("g/new", b"a", NO_OBJECT)
    _, gen = store.read_with_generation("g/new")
    assert store.write_if_generation("g/new", b"b", gen)
    assert store.read_bytes("g/new") == b"b"


def test_local_conditional_write_refuses_a_stale_generation(tmp_path: Path) -> None:
    # (The GCS side is in tests/faults/test_registry_concurrency.py: the emulator alone
    # ignores ifGenerationMatch.)
    store = LocalStore(tmp_path, create=True)
    assert store.write_if_generation("k", b"one", NO_OBJECT)
    assert not store.write_if_generation("k", b"again", NO_OBJECT)  # exists already
    _, gen = store.read_with_generation("k")
    store.write_bytes("k", b"someone else")  # a plain write changes the generation too
    assert not store.write_if_generation("k", b"stale", gen)
    assert store.read_bytes("k") == b"someone else"
    assert store.list() == ["k"]  # the hidden lock file is not an object


def test_content_generation() -> None:
    assert content_generation(None) == NO_OBJECT
    assert content_generation(b"") != NO_OBJECT
    assert content_generation(b"a") == content_generation(b"a") != content_generation(b"b")


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[Path]:
    """Hold the sidecar lock of ``k`` through another open file description."""
    lock = tmp_path / ".k.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield lock
    finally:
        os.close(fd)


def test_local_conditional_write_waits_for_the_lock_then_gives_up(
    tmp_path: Path, held_lock: Path
) -> None:
    store = LocalStore(tmp_path, lock_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"\.k\.lock: still locked by another writer"):
        store.write_if_generation("k", b"x", NO_OBJECT)
    assert time.monotonic() - started >= 0.2
    assert not store.exists("k")


def test_a_killed_lock_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    # The holder takes the lock and is SIGKILLed while holding it: the kernel drops a
    # flock with its owner, whereas an O_EXCL lock file would stay behind.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('locked', flush=True)\n"
         "time.sleep(60)\n",
         str(tmp_path / ".k.lock")],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    store = LocalStore(tmp_path, lock_timeout=0.2)
    with pytest.raises(StoreError, match="still locked"):
        store.write_if_generation("k", b"x", NO_OBJECT)  # really held
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    assert store.write_if_generation("k", b"x", NO_OBJECT)


def test_store_without_conditional_writes_says_so(tmp_path: Path) -> None:
    class Plain(LocalStore):
        write_if_generation = Store.write_if_generation

    with pytest.raises(StoreError, match="conditional writes are not supported"):
        Plain(tmp_path).write_if_generation("k", b"x", NO_OBJECT)


# -- file modes and leftover temp files --------------------------------------------


@pytest.fixture
def strict_umask() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_local_files_are_group_readable_despite_a_strict_umask(
    tmp_path: Path, strict_umask: None
) -> None:
    (tmp_path / "existing").mkdir(mode=0o700)
    store = LocalStore(tmp_path / "existing" / "root", create=True)
    store.write_bytes("models/m/v1/model.joblib", b"model")
    store.write_if_generation("models/m/aliases.json", b"{}", NO_OBJECT)
    root = tmp_path / "existing" / "root"
    assert _mode(root / "models/m/v1/model.joblib") == 0o640
    assert _mode(root / "models/m/aliases.json") == 0o640
    assert _mode(root / "models/m/.aliases.json.lock") == 0o640
    for folder in [root, root / "models", root / "models/m", root / "models/m/v1"]:
        assert _mode(folder) == 0o750, folder
    assert _mode(tmp_path / "existing") == 0o700  # a folder it did not make is left alone


def test_local_modes_are_configurable(tmp_path: Path, strict_umask: None) -> None:
    store = LocalStore(tmp_path, file_mode=0o644, dir_mode=0o755)
    store.write_bytes("d/f", b"x")
    assert (_mode(tmp_path / "d/f"), _mode(tmp_path / "d")) == (0o644, 0o755)


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_old_temp_files_are_removed_on_the_next_write_to_their_folder(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, create=True)
    store.write_bytes("d/other", b"1")
    folder = tmp_path / "d"
    names = {
        "old": ".obj.bin.k3j2h1.tmp",
        "fresh": ".obj.bin.a8b7c6.tmp",  # a concurrent writer's, still being written
        "lock": ".obj.bin.lock",
        "hidden": ".keep",
        "visible": "data.tmp",  # an object of the store that merely ends in .tmp
    }
    for kind, name in names.items():
        (folder / name).write_bytes(b"x")
        if kind != "fresh":
            _age(folder / name, STALE_TEMP_SECONDS + 60)
    _age(folder / names["fresh"], STALE_TEMP_SECONDS - 60)
    store.write_bytes("d/obj.bin", b"new")
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted(["other", "obj.bin", *(n for k, n in names.items() if k != "old")])


def test_temp_file_of_a_killed_writer_is_cleaned_up(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, create=True)
    store.write_bytes("d/obj.bin", b"before")
    # The writer dies between writing its temp file and renaming it (SIGKILL: no cleanup).
    killed = subprocess.run(
        [sys.executable, "-c",
         "import os, signal, sys\n"
         "from driftloop.data.storage import LocalStore\n"
         "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
         "LocalStore(sys.argv[1]).write_bytes('d/obj.bin', b'never renamed')\n",
         str(tmp_path)],
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL
    leftovers = [p for p in (tmp_path / "d").iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].read_bytes() == b"never renamed"
    assert store.read_bytes("d/obj.bin") == b"before"

    store.write_bytes("d/obj.bin", b"after")  # too recent: a live writer may own it
    assert leftovers[0].exists()
    _age(leftovers[0], STALE_TEMP_SECONDS + 1)
    store.write_bytes("d/obj.bin", b"after")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["obj.bin"]
