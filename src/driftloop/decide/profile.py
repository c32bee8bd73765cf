"""The reference profile: what drift detection keeps of a model version's reference data.

A profile is built once, when a model version is trained (:func:`build_reference_profile`),
and stored beside the model as ``drift_profile.json`` plus ``drift_profile.npz`` (no pickle);
every later run only loads it (:meth:`ReferenceProfile.load`) and
:func:`driftloop.decide.drift.detect_drift` compares the current window against it. It
holds sampled reference values per feature, the quantile bins and shares of the effect
sizes, and for text models the model's predicted probabilities on the sample and a
vocabulary with its baseline out-of-vocabulary rate.

It is its own module because building and storing the profile happens at training time and
its file format must stay readable by every later run, while the tests and the report of a
run change independently. The column readers (:func:`numeric_values`,
:func:`categorical_values`, :func:`text_values`, :func:`require_columns`) live here because
the profile and the current window must read their columns the same way.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftloop.config import DriftConfig
from driftloop.data.schema import Schema
from driftloop.decide.distance import (
    category_codes,
    category_shares,
    histogram_shares,
    quantile_bin_edges,
)
from driftloop.errors import DriftloopError, SchemaError, StoreError

__all__ = [
    "MISSING",
    "PROFILE_FORMAT",
    "PROFILE_JSON",
    "PROFILE_NPZ",
    "ReferenceProfile",
    "build_reference_profile",
    "categorical_values",
    "numeric_values",
    "oov_rate",
    "proba_columns",
    "require_columns",
    "text_values",
    "tokenize",
]

PROFILE_JSON = "drift_profile.json"
PROFILE_NPZ = "drift_profile.npz"
PROFILE_FORMAT = 1
MISSING = "<missing>"
_TOKEN = re.compile(r"\w+")


def tokenize(text: Any) -> list[str]:
    r"""Split text into lowercase ``\w+`` tokens (non-strings give no tokens)."""
    return _TOKEN.findall(text.lower()) if isinstance(text, str) else []


def oov_rate(texts: Iterable[Any], vocabulary: Set[str]) -> float:
    """Share of the tokens of ``texts`` that are not in ``vocabulary`` (0 with no tokens)."""
    total = unseen = 0
    for text in texts:
        tokens = tokenize(text)
        total += len(tokens)
        unseen += sum(tok not in vocabulary for tok in tokens)
    return unseen / total if total else 0.0


@dataclass(eq=False)
class ReferenceProfile:
    """What drift detection needs to know about a model version's reference data.

    Built once per model version by :func:`build_reference_profile` and stored beside the
    model. No detector is stored: :func:`~driftloop.decide.drift.detect_drift` tests the
    current window against the sampled reference arrays held here (nothing is fitted).

    Attributes:
        model_version: Model version the profile belongs to.
        model_kind: ``text`` or ``tabular``.
        numeric: Numeric feature names.
        categorical: Categorical feature names.
        text: Text feature names.
        n_rows: Rows of the reference the profile was built from.
        n_sample: Rows kept in the sampled arrays (at most ``max_reference_rows``).
        bins: Requested number of quantile bins.
        seed: Seed of the sampling.
        created_at: ISO timestamp of the build.
        numeric_sample: Sampled values per numeric feature (NaN kept).
        bin_edges: Quantile bin edges per numeric feature (from the full reference).
        numeric_shares: Reference share per bin per numeric feature.
        categories: Sorted reference categories per categorical feature.
        categorical_sample: Sampled category codes per categorical feature.
        categorical_shares: Reference share per category (plus ``unseen``) per feature.
        classes: Model classes (text only).
        reference_proba: Predicted probabilities on the sample, ``(n_sample, n_classes)``.
        proba_edges: Bin edges per tested probability column (see :func:`proba_columns`).
        proba_shares: Reference shares per tested probability column.
        vocabulary: Tokens of one half of the sampled reference text.
        oov_rate_reference: OOV rate of the other half against ``vocabulary``.
    """

    model_version: str
    model_kind: str
    numeric: list[str]
    categorical: list[str]
    text: list[str]
    n_rows: int
    n_sample: int
    bins: int
    seed: int
    created_at: str
    numeric_sample: dict[str, np.ndarray] = field(default_factory=dict)
    bin_edges: dict[str, np.ndarray] = field(default_factory=dict)
    numeric_shares: dict[str, np.ndarray] = field(default_factory=dict)
    categories: dict[str, list[str]] = field(default_factory=dict)
    categorical_sample: dict[str, np.ndarray] = field(default_factory=dict)
    categorical_shares: dict[str, np.ndarray] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    reference_proba: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    proba_edges: list[np.ndarray] = field(default_factory=list)
    proba_shares: list[np.ndarray] = field(default_factory=list)
    vocabulary: list[str] = field(default_factory=list)
    oov_rate_reference: float | None = None

    _ARRAYS = ("numeric_sample", "bin_edges", "numeric_shares", "categorical_sample",
               "categorical_shares")

    def save(self, folder: Path) -> list[Path]:
        """Write ``drift_profile.json`` and ``drift_profile.npz`` (no pickle) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"reference_proba": self.reference_proba}
        for attr in self._ARRAYS:
            names = self.numeric if attr.startswith(("numeric", "bin")) else self.categorical
            mapping: dict[str, np.ndarray] = getattr(self, attr)
            arrays.update({f"{attr}_{i}": mapping[n] for i, n in enumerate(names)})
        for i, (edges, shares) in enumerate(zip(self.proba_edges, self.proba_shares,
                                                strict=True)):
            arrays[f"proba_edges_{i}"], arrays[f"proba_shares_{i}"] = edges, shares
        meta = {
            "format": PROFILE_FORMAT,
            **{k: getattr(self, k) for k in (
                "model_version", "model_kind", "numeric", "categorical", "text", "n_rows",
                "n_sample", "bins", "seed", "created_at", "categories", "classes",
                "vocabulary", "oov_rate_reference")},
            "n_proba_columns": len(self.proba_edges),
        }
        json_path, npz_path = folder / PROFILE_JSON, folder / PROFILE_NPZ
        with npz_path.open("wb") as fh:
            np.savez_compressed(fh, **arrays)
        json_path.write_text(json.dumps(meta, indent=1) + "\n")
        return [json_path, npz_path]

    @classmethod
    def load(cls, folder: Path) -> ReferenceProfile:
        """Read a profile written by :meth:`save`."""
        json_path, npz_path = Path(folder) / PROFILE_JSON, Path(folder) / PROFILE_NPZ
        if not json_path.is_file() or not npz_path.is_file():
            raise StoreError(f"{folder}: no drift profile ({PROFILE_JSON} and {PROFILE_NPZ})")
        try:
            meta = json.loads(json_path.read_text())
        except json.JSONDecodeError as exc:
            raise StoreError(f"{json_path}: not valid JSON ({exc.msg})") from exc
        if meta.get("format") != PROFILE_FORMAT:
            raise StoreError(f"{json_path}: format {meta.get('format')!r} is not "
                             f"{PROFILE_FORMAT}")
        n_proba = meta.pop("n_proba_columns")
        meta.pop("format")
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        prof = cls(**meta, reference_proba=arrays["reference_proba"],
                   proba_edges=[arrays[f"proba_edges_{i}"] for i in range(n_proba)],
                   proba_shares=[arrays[f"proba_shares_{i}"] for i in range(n_proba)])
        for attr in cls._ARRAYS:
            names = prof.numeric if attr.startswith(("numeric", "bin")) else prof.categorical
            setattr(prof, attr, {n: arrays[f"{attr}_{i}"] for i, n in enumerate(names)})
        return prof


def proba_columns(classes: list[str]) -> list[int]:
    """Probability columns that are tested: one for binary models (the other is redundant)."""
    return [1] if len(classes) == 2 else list(range(len(classes)))


def build_reference_profile(
    reference: pd.DataFrame,
    schema: Schema,
    config: DriftConfig,
    *,
    model_version: str,
    model: Any | None = None,
) -> ReferenceProfile:
    """Profile the reference data of a model version for later drift runs.

    Args:
        reference: Reference records (typically the model's training data).
        schema: The records' schema.
        config: Drift settings (``bins``, ``max_reference_rows``, ``seed``).
        model_version: Version of the model the profile belongs to.
        model: The fitted model; required for text schemas (its ``predict_proba`` on the
            reference sample is the baseline of the black-box shift test).

    Returns:
        The profile; persist it with :meth:`ReferenceProfile.save`.

    Raises:
        DriftloopError: No reference rows, a missing feature column, or no model for text.
    """
    require_columns(reference, schema, "reference data")
    if reference.empty:
        raise DriftloopError("reference data: no rows; a drift profile needs at least one")
    if schema.model_kind == "text" and model is None:
        raise DriftloopError("drift profile: a text schema needs the model "
                             "(its predicted probabilities are the reference)")
    rng = np.random.default_rng(config.seed)
    n_rows = len(reference)
    idx = np.arange(n_rows)
    if n_rows > config.max_reference_rows:
        idx = np.sort(rng.choice(n_rows, size=config.max_reference_rows, replace=False))
    sample = reference.iloc[idx].reset_index(drop=True)
    prof = ReferenceProfile(
        model_version=model_version, model_kind=schema.model_kind,
        numeric=schema.names_of("numeric"), categorical=schema.names_of("categorical"),
        text=schema.names_of("text"), n_rows=n_rows, n_sample=len(sample),
        bins=config.bins, seed=config.seed, created_at=dt.datetime.now(dt.UTC).isoformat(),
    )
    for name in prof.numeric:
        full = numeric_values(reference[name])
        prof.bin_edges[name] = quantile_bin_edges(full, config.bins)
        prof.numeric_shares[name] = histogram_shares(full, prof.bin_edges[name])
        prof.numeric_sample[name] = numeric_values(sample[name])
    for name in prof.categorical:
        full_values = categorical_values(reference[name])
        prof.categories[name] = sorted(set(full_values.tolist()))
        prof.categorical_shares[name] = category_shares(full_values, prof.categories[name])
        prof.categorical_sample[name] = category_codes(categorical_values(sample[name]),
                                                       prof.categories[name])
    if prof.text:
        _profile_text(prof, sample, schema, model, rng)
    return prof


def _profile_text(prof: ReferenceProfile, sample: pd.DataFrame, schema: Schema, model: Any,
                  rng: np.random.Generator) -> None:
    prof.classes = [str(c) for c in model.classes_]
    prof.reference_proba = np.asarray(model.predict_proba(sample[schema.feature_names]),
                                      dtype=np.float64)
    for col in proba_columns(prof.classes):
        edges = quantile_bin_edges(prof.reference_proba[:, col], prof.bins)
        prof.proba_edges.append(edges)
        prof.proba_shares.append(histogram_shares(prof.reference_proba[:, col], edges))
    # Vocabulary from one half, baseline OOV on the other: on its own vocabulary the
    # reference would score exactly 0 and any new text would look like drift.
    order = rng.permutation(len(sample))
    half = (len(sample) + 1) // 2
    vocab_rows, held_rows = sample.iloc[order[:half]], sample.iloc[order[half:]]
    prof.vocabulary = sorted({tok for text in text_values(vocab_rows, prof.text)
                              for tok in tokenize(text)})
    prof.oov_rate_reference = oov_rate(text_values(held_rows, prof.text), set(prof.vocabulary))


def require_columns(frame: pd.DataFrame, schema: Schema, what: str) -> None:
    """Fail with a :class:`SchemaError` naming the schema's feature columns ``frame`` lacks."""
    missing = [n for n in schema.feature_names if n not in frame.columns]
    if missing:
        raise SchemaError(f"{what}: missing feature columns {missing} (schema {schema.name})")


def numeric_values(series: pd.Series) -> np.ndarray:
    """A numeric column as float64; missing or unparseable values become NaN."""
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def categorical_values(series: pd.Series) -> np.ndarray:
    """A categorical column as strings; a missing value is the category ``<missing>``."""
    values = series.astype(object)
    return values.where(values.notna(), MISSING).astype(str).to_numpy(dtype=object)


def text_values(frame: pd.DataFrame, columns: list[str]) -> Iterable[Any]:
    """The values of the text ``columns``, one column after the other."""
    for name in columns:
        yield from frame[name]
