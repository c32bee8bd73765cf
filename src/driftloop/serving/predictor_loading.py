"""Loading the predictor's model: verify the bytes against ``metadata.json``, then unpickle.

The predictor serves either a local folder (``model.joblib`` + ``metadata.json``, the layout
KServe's storage initializer puts in ``/mnt/models``) or a registry version. Both paths end
in a :class:`LoadedModel`: a classifier, its metadata and the schema its inputs are checked
against. This is its own module because it is the one place where pickled bytes are
trusted, and only once they match the recorded ``model_sha256`` (and the metadata its own
digest, when one was recorded); answering requests needs none of it.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import pandas as pd

from driftloop.data.schema import Schema, schema_from_dict
from driftloop.data.storage import open_store
from driftloop.errors import StoreError
from driftloop.models.registry import (
    ALIASES,
    METADATA_FILE,
    MODEL_FILE,
    Registry,
    RegistryError,
    _parse_metadata,
    _verify,
    sha256_bytes,
    verify_metadata,
)


@dataclass(frozen=True)
class LoadedModel:
    """A verified, unpickled model with its metadata."""

    model: Any
    metadata: dict[str, Any]
    schema: Schema
    version: str
    classes: list[str]
    source: str
    #: The version's own rows found at load (for the compiled model's check), if any.
    check_rows: pd.DataFrame | None = None
    #: Where ``check_rows`` come from.
    check_source: str = "none found"


log = logging.getLogger(__name__)


def _profile_rows(folder: Path, schema: Schema) -> pd.DataFrame | None:
    """The drift profile's sampled reference rows (tabular: numeric and categorical).

    A folder copied by KServe's storage initializer holds model.joblib, metadata.json and
    the drift profile: its row-aligned samples are the version's own reference rows.
    """
    from driftloop.decide.profile import PROFILE_JSON, ReferenceProfile

    if not (folder / PROFILE_JSON).is_file() or schema.model_kind != "tabular":
        return None
    try:
        profile = ReferenceProfile.load(folder)
    except Exception as exc:  # the check falls back to edge rows; serving goes on
        log.warning("%s: drift profile unreadable for the compile check (%s)", folder, exc)
        return None
    data: dict[str, Any] = dict(profile.numeric_sample)
    for name, codes in profile.categorical_sample.items():
        categories = profile.categories.get(name, [])
        data[name] = [categories[c] if 0 <= c < len(categories) else None
                      for c in codes.tolist()]
    if set(data) != set(schema.feature_names):
        return None
    return pd.DataFrame(data)


def _schema_of(meta: dict[str, Any], where: str) -> Schema:
    raw = meta.get("schema")
    if not isinstance(raw, dict):
        raise StoreError(f"{where}: metadata.json has no 'schema' object to validate input with")
    return schema_from_dict(raw, source=f"{where} schema")


def _finish(model: Any, meta: dict[str, Any], schema: Schema, where: str,
            version: str | None, rows: pd.DataFrame | None = None,
            rows_source: str = "none found") -> LoadedModel:
    if not hasattr(model, "predict_proba") or not hasattr(model, "classes_"):
        raise StoreError(f"{where}: the model has no predict_proba/classes_ (not a classifier)")
    return LoadedModel(
        model=model,
        metadata=meta,
        schema=schema,
        version=str(version or meta.get("version") or "unknown"),
        classes=[str(c) for c in model.classes_],
        source=where,
        check_rows=rows,
        check_source=rows_source if rows is not None else "none found",
    )


def load_from_folder(folder: str | Path) -> LoadedModel:
    """Load ``folder/model.joblib`` after checking it against ``folder/metadata.json``.

    The bytes are read once, hashed with the registry's code and unpickled from memory,
    so the bytes verified are exactly the bytes loaded.

    Raises:
        IntegrityError: The hash does not match (nothing was unpickled).
        StoreError: A file is missing or metadata.json is not valid.
    """
    folder = Path(folder)
    meta_path, model_path = folder / METADATA_FILE, folder / MODEL_FILE
    try:
        meta = _parse_metadata(meta_path.read_bytes(), str(meta_path))
        data = model_path.read_bytes()
    except FileNotFoundError as exc:
        raise StoreError(f"{exc.filename}: file does not exist") from None
    # KServe's storage initializer copied the folder: check what the registry recorded
    verify_metadata(meta, str(meta_path))
    schema = _schema_of(meta, str(folder))  # a broken schema fails before any unpickling
    _verify(str(model_path), meta.get("model_sha256"), sha256_bytes(data))
    rows = _profile_rows(folder, schema)
    return _finish(joblib.load(io.BytesIO(data)), meta, schema, str(folder), None, rows,
                   "drift profile sample")


def load_from_registry(store_uri: str, model_name: str, version: str | None) -> LoadedModel:
    """Load a registered version (or alias: champion, canary, previous; None = champion).

    Raises:
        IntegrityError: The stored model does not match its ``model_sha256``.
        RegistryError: No such version, or the alias points nowhere.
    """
    registry = Registry(open_store(store_uri), model_name)
    resolved = version
    if version is None or (version in ALIASES and not registry.has_version(version)):
        alias = version or "champion"
        resolved = getattr(registry.aliases(), alias)
        if resolved is None:
            where = registry.store.url(registry.prefix)
            raise RegistryError(f"{where}: alias {alias!r} is not set")
    assert resolved is not None
    meta = registry.metadata(resolved)
    where = registry.store.url(f"{registry.prefix}/{resolved}")
    schema = _schema_of(meta, where)
    model = registry.load_model(resolved)  # verifies the sha256 before unpickling
    # The version's training set, kept by the train step as the next drift reference.
    key = f"reference/{model_name}/{resolved}.parquet"
    rows = None
    if registry.store.exists(key):
        rows = pd.read_parquet(io.BytesIO(registry.store.read_bytes(key)))
    return _finish(model, meta, schema, where, resolved, rows, registry.store.url(key))


__all__ = ["LoadedModel", "load_from_folder", "load_from_registry"]
