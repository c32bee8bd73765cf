"""Shared fixtures: a real GCS emulator on 127.0.0.1 and fresh gs:// stores on it."""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftloop.data.storage import Store, open_store

_bucket_ids = itertools.count()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_answers(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gcp-storage-emulator exited early:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    pytest.fail(f"gcp-storage-emulator did not answer at {url}:\n{log.read_text()}")


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run an in-memory GCS emulator for the session and point clients at it."""
    exe = Path(sys.executable).parent / "gcp-storage-emulator"
    if not exe.exists():
        pytest.fail(f"{exe} not found: install the dev extra (gcp-storage-emulator)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("gcs-emulator") / "emulator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(exe), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_answers(url, proc, log)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("STORAGE_EMULATOR_HOST", url)
            yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def gcs_store(gcs_emulator: str) -> Store:
    """Return a store under a fresh bucket on the emulator."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = f"driftloop-test-{next(_bucket_ids)}"
    client.create_bucket(bucket)
    return open_store(f"gs://{bucket}/root/prefix")


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """A real Prometheus Pushgateway (Debian's ``prometheus-pushgateway``) on 127.0.0.1."""
    import shutil

    exe = shutil.which("prometheus-pushgateway")
    if exe is None:
        pytest.fail("prometheus-pushgateway is not installed: `make test` installs Debian's "
                    "package (apt-get install prometheus-pushgateway, as root)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "pushgateway.log"
    with log.open("wb") as out:
        # no persistence file: the gateway starts empty and leaves nothing behind
        proc = subprocess.Popen([exe, f"--web.listen-address=127.0.0.1:{port}",
                                 "--persistence.file="], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_answers(f"{url}/-/ready", proc, log)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def _fresh_log_context() -> Iterator[None]:
    """A server's main() run in process sets the process-wide log context: undo it."""
    from driftloop import logs

    saved = dict(logs._process_context)
    yield
    logs._process_context.clear()
    logs._process_context.update(saved)
