"""The serving champion as the steps need it: model, metadata and drift profile, verified.

The model itself is unpickled on first use: the drift merge needs only the profile and
the metadata, and so never imports scikit-learn.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from driftloop.clock import parse_time
from driftloop.decide.drift import (
    ReferenceProfile,
)
from driftloop.decide.trigger import (
    ChampionInfo,
)
from driftloop.models.metadata import ModelMetadata
from driftloop.models.registry import Registry

PROFILE_FILES = ("drift_profile.npz", "drift_profile.json")


class Champion:
    """The serving champion: its model, metadata and stored drift profile.

    Given a ``registry`` (as :func:`load_champion` does) and no ``model``, :attr:`model` is
    unpickled, its sha256 checked, the first time it is read.
    """

    def __init__(self, version: str, model: Any, metadata: ModelMetadata,
                 profile: ReferenceProfile, *, registry: Registry | None = None) -> None:
        self.version = version
        self.metadata = metadata
        self.profile = profile
        self._model = model
        self._registry = registry

    @property
    def model(self) -> Any:
        """The fitted estimator (unpickled on first access when loaded from the registry)."""
        if self._model is None and self._registry is not None:
            self._model = self._registry.load_model(self.version)
        return self._model

    def info(self) -> ChampionInfo:
        """The facts the trigger rules need."""
        meta = self.metadata
        return ChampionInfo(
            version=meta.version,
            created_at=parse_time(meta.created_at),
            training_cutoff=parse_time(meta.training_cutoff or meta.created_at),
            primary_metric=meta.primary_metric,
            # NaN when the training set was too small or too one-sided to validate
            baseline=float(meta.validation_metrics.get(meta.primary_metric, float("nan"))),
            baseline_accuracy=float(meta.validation_metrics.get("accuracy", float("nan"))),
            baseline_n=int(meta.n_validation_rows),
            n_train=int(meta.n_rows),
            learning_gain=float(meta.learning_curve.get("gain", float("nan"))),
            learning_p=float(meta.learning_curve.get("p", float("nan"))),
        )


def load_profile(registry: Registry, version: str) -> ReferenceProfile:
    """Load the drift profile stored beside model ``version``."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in PROFILE_FILES:
            (Path(tmp) / name).write_bytes(registry.read_file(version, name))
        return ReferenceProfile.load(Path(tmp))


def load_champion(registry: Registry) -> Champion | None:
    """Load the champion (sha256-verified), or ``None`` before the first model."""
    version = registry.champion()
    if version is None:
        return None
    meta = ModelMetadata.from_json(registry.read_file(version, "metadata.json").decode())
    return Champion(version, None, meta, load_profile(registry, version), registry=registry)
