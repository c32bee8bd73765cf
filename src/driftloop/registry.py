"""The model registry: immutable, hash-verified versions and audited aliases over a Store.

Layout under the store root::

    models/<model>/<version>/model.joblib     the pickled estimator
    models/<model>/<version>/metadata.json    holds "version" and "model_sha256"
    models/<model>/<version>/...              any other file (drift_profile.*, ...)
    models/<model>/aliases.json               champion / canary / previous + history

A model file is unpickled only after its bytes match ``model_sha256``. This catches
corruption and accidental overwrites; it cannot stop someone who can rewrite both files.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib

from driftloop.clock import utc_now_iso
from driftloop.errors import DriftloopError, IntegrityError, StoreError
from driftloop.serde import from_dict, to_jsonable
from driftloop.storage import Store

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
ALIASES_FILE = "aliases.json"
ALIASES: tuple[str, ...] = ("champion", "canary", "previous")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RegistryError(DriftloopError):
    """A version or alias request does not fit the registry's rules."""


def sha256_bytes(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Return the hex SHA-256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise StoreError(f"{path}: file does not exist") from None
    return digest.hexdigest()


@dataclass
class AliasChange:
    """One alias move, as recorded in the append-only history."""

    time: str
    alias: str
    from_version: str | None
    to_version: str | None
    reason: str
    run_id: str = ""


@dataclass
class AliasState:
    """Where each alias points, with the full history of moves (oldest first)."""

    champion: str | None = None
    canary: str | None = None
    previous: str | None = None
    history: list[AliasChange] = field(default_factory=list)


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise RegistryError(
            f"{kind} {value!r}: must start with a letter or digit and use only "
            "letters, digits, '.', '_' and '-'"
        )
    return value


class Registry:
    """Versions and aliases of one model in a store.

    Args:
        store: The store holding ``models/``.
        model_name: The model's name (letters, digits, ``.``, ``_``, ``-``).
    """

    def __init__(self, store: Store, model_name: str) -> None:
        self.store = store
        self.model_name = _check_name("model name", model_name)
        self.prefix = f"models/{model_name}"

    def _key(self, version: str, name: str) -> str:
        return f"{self.prefix}/{version}/{name}"

    # -- versions ------------------------------------------------------------------

    def register(self, folder: Path, *, version: str | None = None) -> str:
        """Upload a local artifact folder as a new, immutable version.

        Args:
            folder: Holds ``model.joblib``, ``metadata.json`` and any other files.
            version: The version name; defaults to ``metadata.json``'s ``version``.

        Returns:
            The registered version.

        Raises:
            IntegrityError: ``model_sha256`` does not match ``model.joblib``.
            RegistryError: No version given, a version conflict, or it already exists.
            StoreError: A required file is missing or unreadable.
        """
        folder = Path(folder)
        meta_path = folder / METADATA_FILE
        try:
            meta = _parse_metadata(meta_path.read_bytes(), str(meta_path))
        except FileNotFoundError:
            raise StoreError(f"{meta_path}: file does not exist") from None
        recorded = meta.get("version")
        if version is None:
            if not recorded:
                raise RegistryError(f"{meta_path}: no 'version' and none was given")
            version = str(recorded)
        elif recorded is not None and str(recorded) != version:
            raise RegistryError(
                f"{meta_path}: version {recorded!r} differs from the requested {version!r}"
            )
        _check_name("version", version)
        model_path = folder / MODEL_FILE
        try:
            # Read once: the bytes uploaded are exactly the bytes verified.
            model = model_path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{model_path}: file does not exist") from None
        _verify(str(model_path), meta.get("model_sha256"), sha256_bytes(model))
        if self.has_version(version):
            raise RegistryError(
                f"{self.store.url(self._key(version, METADATA_FILE))}: version {version!r} "
                f"of model {self.model_name!r} already exists; versions are immutable"
            )
        # Hidden files are skipped: LocalStore.list() does not show them either.
        files = sorted(
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)
        )
        # metadata.json goes last: it marks the version complete, so an interrupted
        # upload is invisible to versions() and may be retried.
        for rel in sorted(files, key=lambda rel: rel == METADATA_FILE):
            data = model if rel == MODEL_FILE else (folder / rel).read_bytes()
            self.store.write_bytes(self._key(version, rel), data)
        return version

    def has_version(self, version: str) -> bool:
        """Return whether ``version`` is fully registered."""
        return self.store.exists(self._key(_check_name("version", version), METADATA_FILE))

    def versions(self) -> list[str]:
        """Return the registered versions, sorted as strings."""
        found = {
            key.split("/")[2]
            for key in self.store.list(self.prefix)
            if key.count("/") == 3 and key.endswith(f"/{METADATA_FILE}")
        }
        return sorted(found)

    def _require(self, version: str) -> None:
        if not self.has_version(version):
            known = ", ".join(self.versions()) or "none"
            raise RegistryError(
                f"{self.store.url(self.prefix)}: no version {version!r} (registered: {known})"
            )

    def metadata(self, version: str) -> dict[str, Any]:
        """Return the version's ``metadata.json``."""
        self._require(version)
        key = self._key(version, METADATA_FILE)
        return _parse_metadata(self.store.read_bytes(key), self.store.url(key))

    def _model_bytes(self, version: str) -> bytes:
        expected = self.metadata(version).get("model_sha256")
        key = self._key(version, MODEL_FILE)
        data = self.store.read_bytes(key)
        _verify(self.store.url(key), expected, sha256_bytes(data))
        return data

    def load_model(self, version: str) -> Any:
        """Return the unpickled model after verifying its hash.

        Raises:
            IntegrityError: The stored bytes do not match ``model_sha256``; nothing
                was unpickled.
        """
        return joblib.load(io.BytesIO(self._model_bytes(version)))

    def read_file(self, version: str, name: str) -> bytes:
        """Return one file of a version (``model.joblib`` is hash-verified)."""
        self._require(version)
        if name == MODEL_FILE:
            return self._model_bytes(version)
        return self.store.read_bytes(self._key(version, name))

    def download(self, version: str, dest: Path) -> Path:
        """Copy every file of a version into the local folder ``dest``.

        The model is verified before anything is written.

        Returns:
            ``dest``.
        """
        model = self._model_bytes(version)
        base = f"{self.prefix}/{version}/"
        dest = Path(dest)
        for key in self.store.list(base):
            rel = key.removeprefix(base)
            data = model if rel == MODEL_FILE else self.store.read_bytes(key)
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return dest

    # -- aliases -------------------------------------------------------------------

    def _read_aliases(self) -> tuple[AliasState, list[Any]]:
        key = f"{self.prefix}/{ALIASES_FILE}"
        if not self.store.exists(key):
            return AliasState(), []
        doc = self.store.read_json(key)
        url = self.store.url(key)
        if not isinstance(doc, dict) or not isinstance(doc.get("history"), list):
            raise StoreError(f"{url}: expected an object with 'aliases' and a 'history' list")
        if doc.get("model") != self.model_name:
            raise StoreError(f"{url}: 'model' is {doc.get('model')!r}, not {self.model_name!r}")
        names = doc.get("aliases") or {}
        if not isinstance(names, dict):
            raise StoreError(f"{url}: 'aliases' must be an object")
        try:
            history = [from_dict(AliasChange, entry) for entry in doc["history"]]
        except (TypeError, AttributeError) as exc:
            raise StoreError(f"{url}: malformed history entry ({exc})") from exc
        state = AliasState(**{a: names.get(a) for a in ALIASES}, history=history)
        return state, doc["history"]

    def aliases(self) -> AliasState:
        """Return the current aliases and history (empty when none were ever set)."""
        return self._read_aliases()[0]

    def champion(self) -> str | None:
        """Return the champion version, if any."""
        return self.aliases().champion

    def _apply(self, moves: dict[str, str | None], reason: str, run_id: str) -> AliasState:
        state, raw_history = self._read_aliases()
        now = utc_now_iso()
        changes = [
            AliasChange(now, alias, getattr(state, alias), target, reason, run_id)
            for alias, target in moves.items()
            if getattr(state, alias) != target
        ]
        if not changes:
            return state
        for change in changes:
            setattr(state, change.alias, change.to_version)
        state.history.extend(changes)
        # The old entries are written back exactly as read: history is append-only.
        doc = {
            "model": self.model_name,
            "aliases": {a: getattr(state, a) for a in ALIASES},
            "history": raw_history + [to_jsonable(c) for c in changes],
        }
        self.store.write_json(f"{self.prefix}/{ALIASES_FILE}", doc)
        return state

    def set_alias(
        self, alias: str, version: str | None, *, reason: str, run_id: str = ""
    ) -> AliasState:
        """Point ``alias`` at ``version`` (``None`` clears it) and record the move.

        Setting an alias to where it already points changes nothing and records nothing.

        Raises:
            RegistryError: Unknown alias or unregistered version.
        """
        if alias not in ALIASES:
            raise RegistryError(f"alias {alias!r}: must be one of {', '.join(ALIASES)}")
        if version is not None:
            self._require(version)
        return self._apply({alias: version}, reason, run_id)

    def promote(self, version: str, *, reason: str, run_id: str = "") -> AliasState:
        """Make ``version`` the champion; the old champion becomes ``previous``.

        A canary pointing at ``version`` is cleared. One history entry is recorded
        per alias that changed.
        """
        self._require(version)
        state = self.aliases()
        moves: dict[str, str | None] = {"champion": version}
        if state.champion is not None and state.champion != version:
            moves["previous"] = state.champion
        if state.canary == version:
            moves["canary"] = None
        return self._apply(moves, reason, run_id)


def _parse_metadata(data: bytes, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise StoreError(f"{where}: must hold a JSON object")
    return meta


def _verify(where: str, expected: Any, actual: str) -> None:
    if not expected:
        raise IntegrityError(f"{where}: metadata.json has no model_sha256 to verify against")
    if expected != actual:
        raise IntegrityError(
            f"{where}: sha256 is {actual}, metadata.json expects {expected}; refusing to use it"
        )

