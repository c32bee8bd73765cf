"""Read, list and write objects under a root URI: a local folder or ``gs://bucket/prefix``.

Keys are always ``/``-separated and relative to the root (``models/m/v1/model.joblib``).
Local writes are atomic (temp file, fsync, rename) so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from driftloop.errors import StoreError


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


class LocalStore(Store):
    """A store in a local folder."""

    def __init__(self, root: str | Path, *, create: bool = False) -> None:
        self.root = Path(str(root).removeprefix("file://")).expanduser().resolve()
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise StoreError(f"store {self.root}: folder does not exist")
        self.uri = str(self.root)

    def path(self, key: str) -> Path:
        """Return the local path of ``key``."""
        return self.root / _clean_key(key)

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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
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
