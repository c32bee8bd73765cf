"""The sink's entry point on a store it cannot use: one line and a non-zero exit, no server.

Each case starts ``python -m driftloop.serving.sink`` as a subprocess on 127.0.0.1; the
store check fails before anything binds, and ``timeout`` bounds every run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SINK = [sys.executable, "-m", "driftloop.serving.sink", "--host", "127.0.0.1", "--port", "0",
        "--log-level", "warning"]


def _assert_one_line(done: subprocess.CompletedProcess[str], path: Path, problem: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("driftloop sink: error: store ")
    assert str(path) in lines[0] and problem.lower() in lines[0].lower(), lines[0]


def _sink(store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SINK, "--store", str(store)], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture()
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "not-a-folder"
    path.write_text("a regular file\n")
    return path


def test_sink_on_a_regular_file_is_one_line(a_file: Path):
    _assert_one_line(_sink(a_file), a_file, "is a file, not a folder")
    assert a_file.read_text() == "a regular file\n"


def test_sink_under_a_regular_file_is_one_line(a_file: Path):
    store = a_file / "store"
    _assert_one_line(_sink(store), store, f"{a_file} is a file, not a folder")


@pytest.fixture()
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "ro"
    path.mkdir()
    os.chmod(path, 0o555)
    yield path
    os.chmod(path, 0o755)


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses permission bits; "
                    "test_sink_on_a_read_only_file_system covers the case")
def test_sink_on_a_read_only_folder_is_one_line(read_only_dir: Path):
    _assert_one_line(_sink(read_only_dir), read_only_dir, "cannot write (permission denied)")


def test_sink_on_a_read_only_file_system_is_one_line(tmp_path: Path):
    """A real read-only bind mount, private to the child's mount namespace."""
    source, target = tmp_path / "store", tmp_path / "ro"
    source.mkdir()
    target.mkdir()
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    mount = f"mount --bind '{source}' '{target}' && mount -o remount,ro,bind '{target}'"
    probe = subprocess.run([unshare, "-m", "sh", "-c", f"{mount} && ! touch '{target}/x'"],
                           capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no private read-only bind mount here: {probe.stderr.decode()[:200]}")
    done = subprocess.run(
        [unshare, "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *SINK, "--store",
         str(target)],
        capture_output=True, text=True, timeout=60,
    )
    _assert_one_line(done, target, "cannot write (read-only file system)")
    assert os.listdir(source) == []
