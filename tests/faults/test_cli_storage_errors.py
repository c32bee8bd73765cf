"""Storage errors from the CLI: one line naming the path and the problem, a non-zero exit.

Permission checks do not apply to root, so the chmod cases run only as another user; as
root a read-only store is made real by a read-only bind mount in a private mount namespace
(``unshare -m``: the mount vanishes with the process), and the denied case is replaced by a
path under a regular file.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftloop.cli import main

MODEL = "sample"
IS_ROOT = os.geteuid() == 0
needs_non_root = pytest.mark.skipif(
    IS_ROOT, reason="root bypasses permission bits; the read-only mount and the path under "
                    "a file cover these cases"
)
#: Runs driftloop's main(argv) in a child process (for the private mount namespace).
CHILD = "import sys; from driftloop.cli import main; sys.exit(main(sys.argv[1:]))"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line(code: int, err: str, path: Path, *problems: str) -> str:
    assert code != 0
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0], lines[0]
    assert any(p.lower() in lines[0].lower() for p in problems), lines[0]
    return lines[0]


@pytest.fixture()
def sample_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    root = tmp_path / "store"
    code, _, err = _run(capsys, "sample", "--out", str(root), "--days", "2")
    assert code == 0, err
    return root


@pytest.fixture()
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "not-a-folder"
    path.write_text("a regular file\n")
    return path


def _chmod_tree(root: Path, dir_mode: int) -> None:
    for folder, _, _ in os.walk(root):
        os.chmod(folder, dir_mode)


@pytest.fixture()
def read_only_store(sample_store: Path) -> Iterator[Path]:
    """The sample store with every folder r-x (restored so tmp_path can be removed)."""
    _chmod_tree(sample_store, 0o555)
    yield sample_store
    os.chmod(sample_store, 0o755)
    _chmod_tree(sample_store, 0o755)


@pytest.fixture()
def denied_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "denied"
    path.mkdir()
    os.chmod(path, 0)
    yield path
    os.chmod(path, stat.S_IRWXU)


# -- a file where the store should be -----------------------------------------------------


@pytest.mark.parametrize("command", ["status", "sample", "run"])
def test_store_that_is_a_regular_file_is_one_line(capsys, a_file, sample_store, command):
    argv = {
        "status": ["status", "--store", str(a_file), "--model", MODEL],
        "sample": ["sample", "--out", str(a_file), "--days", "1"],
        "run": ["run", "--store", str(a_file), "--schema", str(sample_store / "schema.json"),
                "--model", MODEL],
    }[command]
    code, out, err = _run(capsys, *argv)
    _assert_one_line(code, err, a_file, "is a file, not a folder")
    assert out == "" and a_file.read_text() == "a regular file\n"


@pytest.mark.parametrize("command", ["status", "sample"])
def test_store_under_a_regular_file_is_one_line(capsys, a_file, command):
    """The denied case's stand-in as root: the OS refuses the path (ENOTDIR)."""
    store = a_file / "store"
    argv = (["status", "--store", str(store), "--model", MODEL] if command == "status"
            else ["sample", "--out", str(store), "--days", "1"])
    code, _, err = _run(capsys, *argv)
    line = _assert_one_line(code, err, store, "is a file, not a folder")
    assert f"{a_file} is a file" in line


def test_status_on_a_missing_store_says_so_and_creates_nothing(capsys, tmp_path: Path):
    store = tmp_path / "missing"
    code, out, err = _run(capsys, "status", "--store", str(store), "--model", MODEL)
    line = _assert_one_line(code, err, store, "does not exist")
    assert f"store {store}: does not exist" in line and out == ""
    assert not store.exists()  # the local rollout backend used to create <store>/rollout


# -- permissions (not as root) ----------------------------------------------------------------


@needs_non_root
def test_run_on_a_read_only_store_is_one_line(capsys, read_only_store: Path):
    code, _, err = _run(capsys, "run", "--store", str(read_only_store), "--schema",
                        str(read_only_store / "schema.json"), "--model", MODEL)
    _assert_one_line(code, err, read_only_store, "permission denied")


@needs_non_root
@pytest.mark.parametrize("command", ["status", "sample"])
def test_read_only_store_is_one_line(capsys, read_only_store: Path, command):
    argv = (["status", "--store", str(read_only_store), "--model", MODEL]
            if command == "status" else ["sample", "--out", str(read_only_store)])
    code, _, err = _run(capsys, *argv)
    _assert_one_line(code, err, read_only_store, "permission denied")


@needs_non_root
@pytest.mark.parametrize("command", ["status", "sample"])
def test_permission_denied_store_is_one_line(capsys, denied_dir: Path, command):
    argv = (["status", "--store", str(denied_dir), "--model", MODEL] if command == "status"
            else ["sample", "--out", str(denied_dir)])
    code, _, err = _run(capsys, *argv)
    _assert_one_line(code, err, denied_dir, "cannot be read (permission denied)")


# -- a real read-only file system (works as root) -------------------------------------------


@pytest.fixture()
def read_only_mount(sample_store: Path, tmp_path: Path):
    """Run driftloop in a child that sees ``sample_store`` read-only at ``<tmp>/ro``.

    The bind mount lives in the child's own mount namespace, so nothing outlives it.
    """
    target = tmp_path / "ro"
    target.mkdir()
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    mount = (f"mount --bind '{sample_store}' '{target}' && "
             f"mount -o remount,ro,bind '{target}'")
    probe = subprocess.run([unshare, "-m", "sh", "-c", f"{mount} && ! touch '{target}/x'"],
                           capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no private read-only bind mount here: {probe.stderr.decode()[:200]}")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        script = f'{mount} && exec "$0" -c "$@"'  # $0: python, $1: CHILD
        return subprocess.run([unshare, "-m", "sh", "-c", script, sys.executable, CHILD,
                               *argv], capture_output=True, text=True, timeout=120)

    return target, run


@pytest.mark.parametrize("command", ["run", "status", "sample"])
def test_store_on_a_read_only_file_system_is_one_line(read_only_mount, command):
    target, run = read_only_mount
    argv = {
        "run": ["run", "--store", str(target), "--schema", str(target / "schema.json"),
                "--model", MODEL],
        "status": ["status", "--store", str(target), "--model", MODEL],
        "sample": ["sample", "--out", str(target), "--days", "1"],
    }[command]
    done = run(*argv)
    _assert_one_line(done.returncode, done.stderr, target, "read-only file system")
    assert done.stdout == ""
