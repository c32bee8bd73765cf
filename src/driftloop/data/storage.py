"""Read, list and write objects under a root URI: a local folder or ``gs://bucket/prefix``.

Keys are always ``/``-separated and relative to the root (``models/m/v1/model.joblib``).
Local writes are atomic (temp file, fsync, rename) so a reader never sees half a file.

Read-modify-write of one object (the registry's ``aliases.json``) goes through
compare-and-swap: :meth:`Store.read_with_generation` returns the bytes with a generation,
and :meth:`Store.write_if_generation` writes only while the object still has that
generation (``0``: only while it does not exist), returning ``False`` otherwise so the
caller re-reads and tries again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from driftloop.errors import StoreError

#: Generation meaning "the object does not exist" (the value GCS's ``ifGenerationMatch`` uses).
NO_OBJECT = 0

#: Mode of files a LocalStore writes: owner read/write, group read. A predictor running as
#: another user in the same group (Kubernetes ``fsGroup``) can read the model; other users
#: cannot, since a pickle and its metadata may reveal training data.
FILE_MODE = 0o640
#: Mode of folders a LocalStore creates: group may list and enter, others may not.
DIR_MODE = 0o750
#: Age after which a leftover atomic-write temp file counts as abandoned (its writer was
#: killed). A live writer touches its temp file at every write and renames it within
#: seconds, so 15 minutes leaves a wide margin for a slow disk.
STALE_TEMP_SECONDS = 15 * 60
_TEMP_SUFFIX = ".tmp"


def content_generation(data: bytes | None) -> int:
    """Return the generation a store without native generations gives ``data``.

    A 63-bit digest of the bytes, never 0 (:data:`NO_OBJECT` is reserved for "absent").
    Equal bytes get equal generations; that is harmless for compare-and-swap, because an
    update computed from bytes identical to the current ones is still correct.
    """
    if data is None:
        return NO_OBJECT
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") | 1


def _clean_key(key: str) -> str:
    parts = [p for p in key.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise StoreError(f"store key {key!r}: '..' is not allowed in a key")
    return "/".join(parts)


class Store(ABC):
    """An object store rooted at one URI."""

    uri: str

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """Return the object's bytes; raise StoreError when it does not exist."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write the object atomically, replacing any previous version."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Return whether the object exists."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Return the sorted keys of all objects under ``prefix`` (recursively)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete the object if it exists."""

    def read_with_generation(self, key: str) -> tuple[bytes | None, int]:
        """Return the object's bytes and generation, or ``(None, NO_OBJECT)`` when absent.

        Pass the generation to :meth:`write_if_generation` to replace exactly this version.
        This default derives the generation from the content (:func:`content_generation`).
        """
        if not self.exists(key):
            return None, NO_OBJECT
        data = self.read_bytes(key)
        return data, content_generation(data)

    def write_if_generation(self, key: str, data: bytes, generation: int) -> bool:
        """Write ``data`` only if the object still has ``generation`` (0: does not exist).

        Returns:
            True when written; False when another writer changed the object since it
            was read (nothing was written: read again and retry).

        Raises:
            StoreError: The write failed for another reason, or the store cannot do it.
        """
        raise StoreError(f"store {self.uri}: conditional writes are not supported")

    def url(self, key: str) -> str:
        """Return the full URI of ``key`` (the root itself for an empty key)."""
        clean = _clean_key(key)
        return f"{self.uri.rstrip('/')}/{clean}" if clean else self.uri

    def read_text(self, key: str) -> str:
        """Return the object decoded as UTF-8."""
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        """Write ``text`` as UTF-8."""
        self.write_bytes(key, text.encode("utf-8"))

    def read_json(self, key: str) -> Any:
        """Return the object parsed as JSON; StoreError names the key when it is not JSON."""
        try:
            return json.loads(self.read_text(key))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{self.url(key)}: not valid JSON ({exc})") from exc

    def write_json(self, key: str, obj: Any) -> None:
        """Write ``obj`` as indented JSON."""
        self.write_text(key, json.dumps(obj, indent=2) + "\n")


def remove_stale_temp_files(folder: Path, max_age: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete atomic-write temp files in ``folder`` older than ``max_age`` seconds.

    Only names a LocalStore write creates (``.<name>.<random>.tmp``) are touched, and only
    old ones, so a concurrent writer's fresh temp file survives. Errors are ignored: the
    clean-up must never fail the write that triggered it.

    Returns:
        The files removed.
    """
    removed: list[Path] = []
    cutoff = time.time() - max_age
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(_TEMP_SUFFIX)):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # another writer renamed or removed it first
    return removed


class LocalStore(Store):
    """A store in a local folder.

    Files are written with ``file_mode`` and new folders get ``dir_mode``, whatever the
    process umask: a restrictive umask (077) must not leave the model unreadable to a
    predictor that runs as another user of the same group. Existing folders keep
    their mode; the store never loosens what someone else set.

    Conditional writes (:meth:`write_if_generation`) hold an exclusive ``fcntl.flock`` on
    a hidden sidecar file ``.<name>.lock`` while they compare and rename. A flock is
    released by the kernel when its holder dies, so a killed writer never leaves a stale
    lock behind; a lock *file* made with ``O_CREAT | O_EXCL`` would need guesses by age or
    pid, which break for a slow live holder and across containers (pid namespaces). The
    sidecar is never deleted: removing a lock file others may be waiting on would let two
    writers lock different inodes. flock needs a local file system or NFSv4 (Linux maps it
    to NFS byte-range locks); it does not exclude writers on other hosts of a FUSE mount.

    Args:
        root: The folder (a path or ``file://`` URI).
        create: Create a missing folder instead of failing.
        file_mode: Permission bits of written files (default :data:`FILE_MODE`).
        dir_mode: Permission bits of created folders (default :data:`DIR_MODE`).
        lock_timeout: Seconds a conditional write waits for the lock before failing.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        create: bool = False,
        file_mode: int = FILE_MODE,
        dir_mode: int = DIR_MODE,
        lock_timeout: float = 30.0,
    ) -> None:
        self.root = Path(str(root).removeprefix("file://")).expanduser().resolve()
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self.lock_timeout = lock_timeout
        if create:
            self._make_dirs(self.root)
        elif not self.root.is_dir():
            raise StoreError(f"store {self.root}: folder does not exist")
        self.uri = str(self.root)

    def path(self, key: str) -> Path:
        """Return the local path of ``key``."""
        return self.root / _clean_key(key)

    def _make_dirs(self, folder: Path) -> None:
        missing: list[Path] = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for made in reversed(missing):
            try:
                made.mkdir()
            except FileExistsError:
                continue  # a concurrent writer made it; it sets the mode itself
            # chmod after mkdir: mkdir's mode argument is filtered by the umask.
            os.chmod(made, self.dir_mode)

    def read_bytes(self, key: str) -> bytes:  # noqa: D102
        path = self.path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{path}: object does not exist") from None
        except OSError as exc:
            raise StoreError(f"{path}: cannot read ({exc.strerror})") from exc

    def write_bytes(self, key: str, data: bytes) -> None:  # noqa: D102
        path = self.path(key)
        self._make_dirs(path.parent)
        self._write_atomic(path, data)

    def _write_atomic(self, path: Path, data: bytes) -> None:
        remove_stale_temp_files(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                # mkstemp makes the file 0o600; set the shared mode before it is visible.
                os.fchmod(fh.fileno(), self.file_mode)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        lock_path = path.parent / f".{path.name}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, self.file_mode)
        except OSError as exc:
            raise StoreError(f"{lock_path}: cannot open the lock ({exc.strerror})") from exc
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) != self.file_mode:
                # O_CREAT's mode is filtered by the umask; another user's lock file may
                # not be ours to change, which does not matter for locking it.
                with contextlib.suppress(PermissionError):
                    os.fchmod(fd, self.file_mode)
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise StoreError(f"{lock_path}: cannot lock ({exc.strerror})") from exc
                    if time.monotonic() > deadline:
                        raise StoreError(
                            f"{lock_path}: still locked by another writer after "
                            f"{self.lock_timeout:g} s"
                        ) from None
                    time.sleep(0.002)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def read_with_generation(self, key: str) -> tuple[bytes | None, int]:
        """Return the bytes and their :func:`content_generation` (``(None, 0)`` if absent)."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, NO_OBJECT
        except OSError as exc:
            raise StoreError(f"{path}: cannot read ({exc.strerror})") from exc
        return data, content_generation(data)

    def write_if_generation(self, key: str, data: bytes, generation: int) -> bool:
        """Write under the sidecar lock if the file still has ``generation``.

        The generation is re-read under the lock, and the rename happens before the lock
        is released, so two conditional writers can never both succeed from the same
        generation. Plain :meth:`write_bytes` does not take the lock.
        """
        path = self.path(key)
        self._make_dirs(path.parent)
        with self._locked(path):
            if self.read_with_generation(key)[1] != generation:
                return False
            self._write_atomic(path, data)
        return True

    def exists(self, key: str) -> bool:  # noqa: D102
        return self.path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:  # noqa: D102
        base = self.path(prefix) if prefix else self.root
        if base.is_file():
            return [_clean_key(prefix)]
        if not base.is_dir():
            return []
        keys = [
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        ]
        return sorted(keys)

    def delete(self, key: str) -> None:  # noqa: D102
        self.path(key).unlink(missing_ok=True)


class GCSStore(Store):
    """A store under ``gs://bucket/prefix`` through google-cloud-storage.

    When ``STORAGE_EMULATOR_HOST`` is set (a local GCS emulator), the client uses
    anonymous credentials, as the emulator expects.

    Compare-and-swap relies on GCS object generations and request preconditions as
    google-cloud-storage exposes them: ``Bucket.get_blob`` fills ``Blob.generation``;
    ``Blob.download_as_bytes(if_generation_match=g)`` and
    ``Blob.upload_from_string(data, if_generation_match=g)`` send ``ifGenerationMatch=g``
    (``g = 0``: the object must not exist), and GCS answers a failed precondition with
    HTTP 412, which the library raises as ``google.api_core.exceptions.PreconditionFailed``.
    With a generation given, the library's default retry
    (``DEFAULT_RETRY_IF_GENERATION_SPECIFIED``) retries transient errors; if a first
    attempt landed but its answer was lost, the retry sees 412 and the write reports a
    conflict although it happened: callers re-read and must treat "already in the state
    I wanted" as done (the registry does). GCS also throttles writes to one object to
    about one per second (429, retried by the library), which bounds alias moves per
    model, not correctness.

    The gcp-storage-emulator used by the tests (2026.7.19) ignores ``ifGenerationMatch``
    on uploads and downloads (it never answers 412; see
    ``gcp_storage_emulator/handlers/objects.py``), so a bare emulator cannot show that
    GCS rejects a stale write. The tests run the real client through a loopback shim that
    enforces the precondition the way GCS documents it; GCS's own atomicity of the
    check-and-write is taken from its documentation, not tested here.
    """

    def __init__(self, uri: str, client: Any | None = None) -> None:
        from google.cloud import storage

        rest = uri.removeprefix("gs://")
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StoreError(f"store {uri}: a gs:// URI needs a bucket name")
        if client is None:
            if os.environ.get("STORAGE_EMULATOR_HOST"):
                from google.auth.credentials import AnonymousCredentials

                client = storage.Client(
                    project="driftloop-local", credentials=AnonymousCredentials()
                )
            else:
                client = storage.Client()
        self.client = client
        self.bucket = client.bucket(bucket)
        self.prefix = _clean_key(prefix)
        self.uri = f"gs://{bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def _name(self, key: str) -> str:
        key = _clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def read_bytes(self, key: str) -> bytes:  # noqa: D102
        from google.api_core import exceptions

        try:
            return bytes(self.bucket.blob(self._name(key)).download_as_bytes())
        except exceptions.NotFound:
            raise StoreError(f"{self.url(key)}: object does not exist") from None
        except exceptions.GoogleAPIError as exc:
            raise StoreError(f"{self.url(key)}: cannot read ({exc})") from exc

    def write_bytes(self, key: str, data: bytes) -> None:  # noqa: D102
        from google.api_core import exceptions

        # A GCS upload is atomic per object: readers see the old or the new version.
        try:
            self.bucket.blob(self._name(key)).upload_from_string(data)
        except exceptions.GoogleAPIError as exc:
            raise StoreError(f"{self.url(key)}: cannot write ({exc})") from exc

    def read_with_generation(self, key: str) -> tuple[bytes | None, int]:
        """Return the bytes and their GCS generation (``(None, 0)`` when absent).

        The download carries ``ifGenerationMatch`` so bytes and generation belong to the
        same version; a write in between (412) makes it read again.
        """
        from google.api_core import exceptions

        name = self._name(key)
        for _ in range(5):
            try:
                blob = self.bucket.get_blob(name)
                if blob is None:
                    return None, NO_OBJECT
                generation = int(blob.generation)
                data = bytes(blob.download_as_bytes(if_generation_match=generation))
            except exceptions.PreconditionFailed:
                continue  # replaced between the metadata and the download: read again
            except exceptions.NotFound:
                return None, NO_OBJECT
            except exceptions.GoogleAPIError as exc:
                raise StoreError(f"{self.url(key)}: cannot read ({exc})") from exc
            return data, generation
        raise StoreError(f"{self.url(key)}: changed at every read; too many writers")

    def write_if_generation(self, key: str, data: bytes, generation: int) -> bool:
        """Upload with ``ifGenerationMatch=generation``; False on HTTP 412."""
        from google.api_core import exceptions

        try:
            self.bucket.blob(self._name(key)).upload_from_string(
                data, if_generation_match=generation
            )
        except exceptions.PreconditionFailed:
            return False
        except exceptions.GoogleAPIError as exc:
            raise StoreError(f"{self.url(key)}: cannot write ({exc})") from exc
        return True

    def exists(self, key: str) -> bool:  # noqa: D102
        from google.api_core import exceptions

        try:
            return bool(self.bucket.blob(self._name(key)).exists())
        except exceptions.GoogleAPIError as exc:
            raise StoreError(f"{self.url(key)}: cannot check ({exc})") from exc

    def list(self, prefix: str = "") -> list[str]:  # noqa: D102
        from google.api_core import exceptions

        full = self._name(prefix) if prefix else self.prefix
        strip = f"{self.prefix}/" if self.prefix else ""
        try:
            # No trailing "/" in the query so a prefix naming one object lists that
            # object, as LocalStore does; the filter keeps "a/b" from matching "a/bc".
            names = [b.name for b in self.client.list_blobs(self.bucket, prefix=full or None)]
        except exceptions.GoogleAPIError as exc:
            raise StoreError(f"{self.url(prefix)}: cannot list ({exc})") from exc
        keep = [
            n for n in names
            if not full or n.startswith(f"{full}/") or (prefix and n == full)
        ]
        return sorted(n.removeprefix(strip) for n in keep if not n.endswith("/"))

    def delete(self, key: str) -> None:  # noqa: D102
        from google.api_core import exceptions

        try:
            self.bucket.blob(self._name(key)).delete()
        except exceptions.NotFound:
            pass
        except exceptions.GoogleAPIError as exc:
            raise StoreError(f"{self.url(key)}: cannot delete ({exc})") from exc


def open_store(uri: str | Path, *, create: bool = False, client: Any | None = None) -> Store:
    """Open the store at ``uri`` (a folder path, ``file://`` or ``gs://`` URI).

    Args:
        uri: The store root.
        create: Create a missing local folder instead of failing.
        client: An optional ``google.cloud.storage.Client`` for ``gs://`` roots.

    Raises:
        StoreError: The local folder does not exist and ``create`` is false.
    """
    text = str(uri)
    if text.startswith("gs://"):
        return GCSStore(text, client=client)
    if "://" in text and not text.startswith("file://"):
        raise StoreError(f"store {text}: only local folders, file:// and gs:// are supported")
    return LocalStore(text, create=create)


def read_uri(uri: str | Path) -> bytes:
    """Read one object given its full URI (a local path or ``gs://bucket/key``)."""
    text = str(uri)
    if text.startswith("gs://"):
        parent, _, name = text.rpartition("/")
        return open_store(parent).read_bytes(name)
    path = Path(text.removeprefix("file://"))
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{path}: file does not exist") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read ({exc.strerror})") from exc


# --- checking a local store root (one clear line instead of a traceback) ---------------


def _local_root(uri: str | Path) -> Path | None:
    """The folder of a local store URI (a path or ``file://``); None for ``gs://`` and co."""
    text = str(uri)
    if "://" in text and not text.startswith("file://"):
        return None
    return Path(text.removeprefix("file://")).expanduser().absolute()


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a folder, else None."""
    for parent in path.parents:
        try:
            mode = os.stat(parent).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return None  # unreadable: the caller's own error says so
        return None if stat.S_ISDIR(mode) else parent
    return None


def check_store_root(uri: str | Path, *, create: bool = False) -> None:
    """Check a local store root before a step uses it, so a bad one is one clear line.

    A missing root is refused unless ``create`` (nothing is created here); ``gs://`` roots
    are left to their store. Writes can still fail later (a read-only folder): ``main``
    reports those OS errors as one line too.

    Args:
        uri: The store root as given on the command line.
        create: The step creates a missing root (``sample``, the sink).

    Raises:
        StoreError: The root is a file or under one, is missing (and not ``create``), or
            cannot be read.
    """
    root = _local_root(uri)
    if root is None:
        return
    try:
        mode = os.stat(root).st_mode
    except (FileNotFoundError, NotADirectoryError):
        blocker = _file_in_the_way(root)
        if blocker is not None:
            raise StoreError(f"store {root}: {blocker} is a file, not a folder") from None
        if not create:
            raise StoreError(f"store {root}: does not exist") from None
        return
    except OSError as exc:  # e.g. a parent folder without search permission
        raise StoreError(f"store {root}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISDIR(mode):
        raise StoreError(f"store {root}: is a file, not a folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise StoreError(f"store {root}: cannot be read (permission denied)")


def describe_os_error(exc: OSError, root: str | Path | None = None) -> str:
    """One line for an OS error met while using a store: the path, then the problem.

    Args:
        exc: The error (``filename`` and ``strerror`` are used when set).
        root: The store root the command works on, named first when given.
    """
    problem = exc.strerror or str(exc) or type(exc).__name__
    name = exc.filename
    if isinstance(name, str):
        name = Path(name).absolute()
    text = f"{name}: {problem}" if name else problem
    if exc.filename2:
        text += f" (and {exc.filename2})"
    return f"store {_local_root(root) or root}: {text}" if root else text
