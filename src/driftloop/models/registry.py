"""The model registry: immutable, hash-verified versions and audited aliases over a Store.

Layout under the store root::

    models/<model>/<version>/model.joblib     the pickled estimator
    models/<model>/<version>/metadata.json    holds "version" and "model_sha256"
    models/<model>/<version>/...              any other file (drift_profile.*, ...)
    models/<model>/aliases.json               champion / canary / previous + history

A model file is unpickled only after its bytes match ``model_sha256``, and
``metadata.json`` is used only after it matches ``metadata_sha256``, the digest of its
canonical JSON without that field, which :meth:`Registry.register` records. This catches
corruption, accidental overwrites and hand edits (schema bounds, metrics, version); it
cannot stop someone who can rewrite both files and recompute the digests.

Versions registered before metadata digests existed have no ``metadata_sha256``. They are
still served (refusing them would strand every existing champion) but reported as
"unprotected (registered before digests)" by :meth:`Registry.verify` and logged once per
version; ``Registry(..., require_metadata_digest=True)`` refuses them instead.

Alias moves are compare-and-swap on ``aliases.json``'s generation
(:meth:`~driftloop.data.storage.Store.write_if_generation`): a move computed from a state
another writer has since replaced is recomputed from the new state, so concurrent moves
are all kept in the history. A caller that compared a challenger with one champion passes
``expect_champion``; if the champion changed meanwhile nothing moves and
:class:`ChampionChanged` is raised.
"""

from __future__ import annotations

import enum
import hashlib
import io
import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from driftloop.clock import utc_now_iso
from driftloop.data.storage import Store
from driftloop.errors import DriftloopError, IntegrityError, StoreError
from driftloop.serde import from_dict, to_jsonable

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
ALIASES_FILE = "aliases.json"
ALIASES: tuple[str, ...] = ("champion", "canary", "previous")
#: The field of metadata.json holding the digest of the rest of it.
METADATA_DIGEST = "metadata_sha256"
#: :meth:`Registry.verify`'s word for metadata whose digest matched.
VERIFIED = "verified"
#: Its word for metadata registered before digests were recorded.
UNPROTECTED = "unprotected (registered before digests)"

log = logging.getLogger(__name__)


class _Any(enum.Enum):
    CHAMPION = "any champion"


#: Default of ``expect_champion``: move whatever the current champion is (no check).
ANY_CHAMPION: Final = _Any.CHAMPION
#: What ``expect_champion`` accepts: a version, None (expect no champion) or no check.
ExpectedChampion = str | None | Literal[_Any.CHAMPION]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RegistryError(DriftloopError):
    """A version or alias request does not fit the registry's rules."""


class ChampionChanged(RegistryError):
    """The champion is not the one the caller expected, so no alias moved.

    Record it as "champion changed, not promoted": the challenger was compared with
    ``expected`` but the registry's champion is now ``actual``.

    Attributes:
        expected: The champion the caller compared against (None: no champion).
        actual: The champion found in the registry.
        version: The version the caller wanted to move an alias to.
    """

    def __init__(self, where: str, expected: str | None, actual: str | None,
                 version: str | None) -> None:
        self.expected, self.actual, self.version = expected, actual, version
        super().__init__(
            f"{where}: champion is {actual!r}, not the expected {expected!r}; "
            f"champion changed, {version!r} not promoted"
        )


class AliasConflict(RegistryError):
    """Other writers changed ``aliases.json`` at every attempt; nothing was moved."""


def metadata_digest(meta: dict[str, Any]) -> str:
    """Return the sha256 of ``meta``'s canonical JSON, leaving out its own digest field.

    Canonical: sorted keys, no whitespace, UTF-8; so re-indenting the file or reordering
    its keys keeps the digest, while any change of a value does not.
    """
    body = {k: v for k, v in meta.items() if k != METADATA_DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def verify_metadata(meta: dict[str, Any], where: str, *, required: bool = False) -> str:
    """Check ``meta`` against its recorded ``metadata_sha256``.

    Use it wherever a version's metadata.json is read outside the registry (e.g. a
    predictor reading a downloaded folder).

    Args:
        meta: The parsed metadata.json.
        where: The file's path or URL, for messages.
        required: Refuse metadata without a digest instead of reporting it unprotected.

    Returns:
        :data:`VERIFIED`, or :data:`UNPROTECTED` when no digest was recorded.

    Raises:
        IntegrityError: The digest does not match (the file was edited), or it is
            missing and ``required`` is set.
    """
    expected = meta.get(METADATA_DIGEST)
    if expected is None:
        if required:
            raise IntegrityError(f"{where}: no {METADATA_DIGEST}; {UNPROTECTED}, refused")
        return UNPROTECTED
    actual = metadata_digest(meta)
    if expected != actual:
        raise IntegrityError(
            f"{where}: metadata digest is {actual}, {METADATA_DIGEST} records {expected}; "
            "metadata.json was changed after registration, refusing to use it"
        )
    return VERIFIED


@dataclass
class VerifyReport:
    """What :meth:`Registry.verify` checked for one version."""

    version: str
    model_sha256: str
    model: str
    metadata: str


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
        require_metadata_digest: Refuse versions registered before metadata digests
            instead of serving them with a warning.
        max_attempts: Compare-and-swap attempts of one alias move before
            :class:`AliasConflict`.
    """

    def __init__(
        self,
        store: Store,
        model_name: str,
        *,
        require_metadata_digest: bool = False,
        max_attempts: int = 40,
    ) -> None:
        self.store = store
        self.model_name = _check_name("model name", model_name)
        self.prefix = f"models/{model_name}"
        self.require_metadata_digest = require_metadata_digest
        self.max_attempts = max(1, max_attempts)
        self._warned: set[str] = set()
        # Unseeded on purpose: writers that collided must not back off in lockstep.
        self._jitter = random.Random()

    def _key(self, version: str, name: str) -> str:
        return f"{self.prefix}/{version}/{name}"

    # -- versions ------------------------------------------------------------------

    def register(self, folder: Path, *, version: str | None = None) -> str:
        """Upload a local artifact folder as a new, immutable version.

        The stored ``metadata.json`` gains ``metadata_sha256`` (see
        :func:`metadata_digest`); the local folder is left as it is.

        Args:
            folder: Holds ``model.joblib``, ``metadata.json`` and any other files.
            version: The version name; defaults to ``metadata.json``'s ``version``.

        Returns:
            The registered version.

        Raises:
            IntegrityError: ``model_sha256`` does not match ``model.joblib``, or the
                folder's metadata.json carries a ``metadata_sha256`` that does not match.
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
        # A folder downloaded from a registry carries a digest: an edit since is refused.
        verify_metadata(meta, str(meta_path))
        sealed = {**meta, METADATA_DIGEST: metadata_digest(meta)}
        meta_bytes = (json.dumps(sealed, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
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
            if rel == MODEL_FILE:
                data = model
            elif rel == METADATA_FILE:
                data = meta_bytes
            else:
                data = (folder / rel).read_bytes()
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

    def _metadata(self, version: str) -> tuple[bytes, dict[str, Any], str]:
        self._require(version)
        key = self._key(version, METADATA_FILE)
        url = self.store.url(key)
        data = self.store.read_bytes(key)
        meta = _parse_metadata(data, url)
        status = verify_metadata(meta, url, required=self.require_metadata_digest)
        if status == UNPROTECTED and version not in self._warned:
            self._warned.add(version)
            log.warning("%s: %s; edits to it cannot be detected", url, UNPROTECTED)
        return data, meta, status

    def metadata(self, version: str) -> dict[str, Any]:
        """Return the version's ``metadata.json`` after checking its digest.

        Raises:
            IntegrityError: metadata.json was changed after registration (or has no
                digest and the registry requires one).
        """
        return self._metadata(version)[1]

    def _model_bytes(self, version: str, meta: dict[str, Any] | None = None) -> bytes:
        expected = (self.metadata(version) if meta is None else meta).get("model_sha256")
        key = self._key(version, MODEL_FILE)
        data = self.store.read_bytes(key)
        _verify(self.store.url(key), expected, sha256_bytes(data))
        return data

    def verify(self, version: str) -> VerifyReport:
        """Check a version's model and metadata digests without unpickling anything.

        Returns:
            The report; its ``metadata`` is :data:`VERIFIED` or :data:`UNPROTECTED`.

        Raises:
            IntegrityError: The model or metadata.json does not match its digest.
        """
        _, meta, status = self._metadata(version)
        self._model_bytes(version, meta)
        return VerifyReport(version, str(meta["model_sha256"]), VERIFIED, status)

    def load_model(self, version: str) -> Any:
        """Return the unpickled model after verifying its hash.

        Raises:
            IntegrityError: The stored bytes do not match ``model_sha256``; nothing
                was unpickled.
        """
        import joblib  # with the first model: steps that only move aliases never load it

        return joblib.load(io.BytesIO(self._model_bytes(version)))

    def read_file(self, version: str, name: str) -> bytes:
        """Return one file of a version (``model.joblib`` and ``metadata.json`` verified)."""
        self._require(version)
        if name == MODEL_FILE:
            return self._model_bytes(version)
        if name == METADATA_FILE:
            return self._metadata(version)[0]
        return self.store.read_bytes(self._key(version, name))

    def download(self, version: str, dest: Path) -> Path:
        """Copy every file of a version into the local folder ``dest``.

        The model and metadata are verified before anything is written, and the bytes
        written are the bytes verified.

        Returns:
            ``dest``.
        """
        meta_bytes, meta, _ = self._metadata(version)
        model = self._model_bytes(version, meta)
        base = f"{self.prefix}/{version}/"
        dest = Path(dest)
        for key in self.store.list(base):
            rel = key.removeprefix(base)
            if rel == MODEL_FILE:
                data = model
            elif rel == METADATA_FILE:
                data = meta_bytes
            else:
                data = self.store.read_bytes(key)
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return dest

    # -- aliases -------------------------------------------------------------------

    @property
    def _aliases_key(self) -> str:
        return f"{self.prefix}/{ALIASES_FILE}"

    def _parse_aliases(self, raw: bytes | None) -> tuple[AliasState, list[Any]]:
        if raw is None:
            return AliasState(), []
        url = self.store.url(self._aliases_key)
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{url}: not valid JSON ({exc})") from exc
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
        return self._parse_aliases(self.store.read_with_generation(self._aliases_key)[0])[0]

    def champion(self) -> str | None:
        """Return the champion version, if any."""
        return self.aliases().champion

    def _apply(
        self,
        plan: Callable[[AliasState], dict[str, str | None]],
        reason: str,
        run_id: str,
        expect_champion: ExpectedChampion,
    ) -> AliasState:
        """Compute the moves from the current state and write them by compare-and-swap.

        A lost race re-reads and re-plans from the winner's state (so ``previous`` is the
        champion actually replaced), after a full-jitter exponential pause.
        """
        key = self._aliases_key
        for attempt in range(self.max_attempts):
            raw, generation = self.store.read_with_generation(key)
            state, raw_history = self._parse_aliases(raw)
            moves = plan(state)
            # Already where this move puts it counts as expected: that is the state after
            # our own write whose answer was lost, or after another run did the same move.
            if expect_champion is not ANY_CHAMPION and state.champion not in (
                expect_champion, moves.get("champion", expect_champion)
            ):
                wanted = moves.get("champion", next(iter(moves.values()), None))
                raise ChampionChanged(self.store.url(key), expect_champion, state.champion,
                                      wanted)
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
            data = (json.dumps(doc, indent=2) + "\n").encode("utf-8")
            if self.store.write_if_generation(key, data, generation):
                return state
            time.sleep(self._jitter.uniform(0.0, min(0.25, 0.005 * 2**attempt)))
        raise AliasConflict(
            f"{self.store.url(key)}: changed by other writers at each of "
            f"{self.max_attempts} attempts; no alias moved"
        )

    def set_alias(
        self,
        alias: str,
        version: str | None,
        *,
        reason: str,
        run_id: str = "",
        expect_champion: ExpectedChampion = ANY_CHAMPION,
    ) -> AliasState:
        """Point ``alias`` at ``version`` (``None`` clears it) and record the move.

        Setting an alias to where it already points changes nothing and records nothing.

        Args:
            alias: ``champion``, ``canary`` or ``previous``.
            version: The target version, or None to clear the alias.
            reason: Why, for the history.
            run_id: The run that moved it, for the history.
            expect_champion: Move only if the champion is this version (None: only if
                there is none), checked in the same compare-and-swap as the write. The
                default checks nothing.

        Raises:
            ChampionChanged: The champion is not ``expect_champion``; nothing moved.
            AliasConflict: Concurrent writers won every attempt; nothing moved.
            RegistryError: Unknown alias or unregistered version.
        """
        if alias not in ALIASES:
            raise RegistryError(f"alias {alias!r}: must be one of {', '.join(ALIASES)}")
        if version is not None:
            self._require(version)
        return self._apply(lambda _: {alias: version}, reason, run_id, expect_champion)

    def promote(
        self,
        version: str,
        *,
        reason: str,
        run_id: str = "",
        expect_champion: ExpectedChampion = ANY_CHAMPION,
    ) -> AliasState:
        """Make ``version`` the champion; the old champion becomes ``previous``.

        A canary pointing at ``version`` is cleared. One history entry is recorded
        per alias that changed. Promoting the current champion moves nothing.

        Args:
            version: The version to promote.
            reason: Why, for the history.
            run_id: The run that promoted it, for the history.
            expect_champion: The champion the caller compared ``version`` with (None: there
                was none). If the champion is another version by the time of the write,
                nothing moves and :class:`ChampionChanged` is raised; record it as
                "champion changed, not promoted". The default checks nothing.

        Raises:
            ChampionChanged: The champion is neither ``expect_champion`` nor ``version``.
            AliasConflict: Concurrent writers won every attempt; nothing moved.
            RegistryError: ``version`` is not registered.
        """
        self._require(version)

        def plan(state: AliasState) -> dict[str, str | None]:
            moves: dict[str, str | None] = {"champion": version}
            if state.champion is not None and state.champion != version:
                moves["previous"] = state.champion
            if state.canary == version:
                moves["canary"] = None
            return moves

        return self._apply(plan, reason, run_id, expect_champion)


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

