"""Train a challenger: assemble the training set, fit a plain scikit-learn pipeline, save it.

The saved folder holds ``model.joblib`` at its root, the layout KServe's sklearn server
loads, plus ``metadata.json`` (:class:`ModelMetadata`). The pipeline contains only
scikit-learn objects so the server needs nothing from driftloop to unpickle it. Every
function that fits or scores many rows runs within the ``train`` thread budget of
:mod:`driftloop.threads` (never wider than the run's).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn
from scipy.stats import binomtest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from driftloop.config import TrainConfig
from driftloop.data.schema import Schema
from driftloop.errors import DriftloopError, SchemaError
from driftloop.models.metadata import ModelMetadata
from driftloop.models.metrics import compute_metrics
from driftloop.threads import limited

MIN_TRAIN_ROWS = 10
# HistGradientBoosting accepts at most max_bins (255) categories per feature; rarer
# values beyond that are pooled into one "infrequent" code instead of failing the fit.
_MAX_CATEGORIES = 255


class TrainingError(DriftloopError):
    """The training data cannot produce a model (too few rows, one class, unknown labels)."""


def build_pipeline(schema: Schema, config: TrainConfig) -> Pipeline:
    """Return the unfitted pipeline for ``schema.model_kind``.

    Tabular: numeric columns pass through (missing values are handled natively),
    categorical columns are ordinal-encoded (unknown/missing -> NaN) and marked as
    categorical for a HistGradientBoostingClassifier. Text: one TF-IDF (uni+bigrams)
    per text column, plus imputed+scaled numeric and one-hot categorical columns,
    into a LogisticRegression.
    """
    numeric, categorical = schema.names_of("numeric"), schema.names_of("categorical")
    if schema.model_kind == "tabular":
        pre = ColumnTransformer(
            [
                ("numeric", "passthrough", numeric),
                ("categorical", OrdinalEncoder(
                    handle_unknown="use_encoded_value", unknown_value=np.nan,
                    encoded_missing_value=np.nan, max_categories=_MAX_CATEGORIES,
                ), categorical),
            ],
            verbose_feature_names_out=False,
        )
        clf: Any = HistGradientBoostingClassifier(
            categorical_features=[False] * len(numeric) + [True] * len(categorical),
            max_iter=config.max_iter, learning_rate=config.learning_rate,
            random_state=config.seed,
        )
        return Pipeline([("features", pre), ("classifier", clf)])
    steps: list[tuple[str, Any, Any]] = [
        (f"text_{name}", TfidfVectorizer(
            max_features=config.max_features, ngram_range=(1, 2), sublinear_tf=True,
        ), name)  # a scalar column name hands the vectoriser a 1-D column of documents
        for name in schema.names_of("text")
    ]
    steps += side_columns(schema)
    clf = LogisticRegression(C=config.c, max_iter=config.max_iter, random_state=config.seed)
    return Pipeline([("features", ColumnTransformer(steps)), ("classifier", clf)])


def side_columns(schema: Schema) -> list[tuple[str, Any, Any]]:
    """Imputed+scaled numeric and one-hot categorical columns (linear models, text extras)."""
    numeric, categorical = schema.names_of("numeric"), schema.names_of("categorical")
    steps: list[tuple[str, Any, Any]] = []
    if numeric:
        steps.append(("numeric", Pipeline([
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
        ]), numeric))
    if categorical:
        steps.append(("categorical", OneHotEncoder(handle_unknown="ignore"), categorical))
    return steps


def feature_frame(df: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Select the feature columns in declared order with the dtypes the pipeline expects.

    Numeric -> float64, categorical -> str (missing stays NaN), text -> str (missing -> "").

    Raises:
        SchemaError: A feature column is missing from ``df``.
    """
    missing = [c for c in schema.feature_names if c not in df.columns]
    if missing:
        raise SchemaError(f"{schema.source}: data lacks feature columns {missing}")
    out = pd.DataFrame(index=df.index)
    for col in schema.columns:
        values = df[col.name]
        if col.kind == "numeric":
            out[col.name] = values.astype("float64")
        elif col.kind == "categorical":
            out[col.name] = values.map(str, na_action="ignore").astype(object)
        else:
            out[col.name] = values.fillna("").astype(str)
    return out


def predict_frame(model: Any, df: pd.DataFrame, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(predicted class names, class probabilities)`` for the rows of ``df``.

    The prediction is the most probable class, so it always agrees with ``proba``
    (whose columns follow ``model.classes_``).
    """
    proba = np.asarray(model.predict_proba(feature_frame(df, schema)), dtype=float)
    classes = np.asarray([str(c) for c in model.classes_], dtype=object)
    return classes[proba.argmax(axis=1)].astype(str), proba


def split_holdout(
    labelled: pd.DataFrame, fraction: float, seed: int, *, salt: str = "eval"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split into ``(rest, holdout)`` by a hash of ``salt``, ``seed`` and each row's ``id``.

    A record's side depends only on its id and the seed, never on the other rows or
    their order, so it stays on the same side across runs as data accumulates. Splits
    with different purposes use different salts: a split made from the ``rest`` of
    another split with the same salt would hold out nothing.
    """
    ids = labelled["id"].astype(str)
    u = np.fromiter(
        (int.from_bytes(hashlib.sha256(f"{salt}:{seed}:{i}".encode()).digest()[:8], "big")
         for i in ids),
        dtype=np.float64, count=len(ids),
    ) / 2.0**64
    held = u < fraction
    return labelled[~held], labelled[held]


def _utc(ts: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(ts)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def assemble_training_set(
    reference: pd.DataFrame | None, labelled: pd.DataFrame, config: TrainConfig, now: datetime
) -> pd.DataFrame:
    """Combine the reference set with recent labelled production records.

    Production records count when ``now - window_days <= timestamp <= now`` (no lower
    bound when ``window_days`` is None); records after ``now`` are excluded so a
    replay cannot learn from the future. Rows without a label are dropped, a repeated
    id keeps its most recent row (production wins a tie with the reference), and the
    most recent ``max_rows`` rows are kept.

    Returns:
        The training rows sorted by timestamp (oldest first).
    """
    now_ts = _utc(now)
    prod = labelled.copy()
    ts = pd.to_datetime(prod["timestamp"], utc=True)
    keep = ts <= now_ts
    if config.window_days is not None:
        keep &= ts >= now_ts - timedelta(days=config.window_days)
    parts = [prod[keep]]
    if reference is not None:
        parts.insert(0, reference)
    df = pd.concat(parts, ignore_index=True)
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    if "label_timestamp" in df.columns:
        df["label_timestamp"] = pd.to_datetime(df["label_timestamp"], utc=True)
    df = df[df["label"].notna()].sort_values("timestamp", kind="stable", na_position="first")
    df = df.drop_duplicates(subset="id", keep="last")
    return df.tail(config.max_rows).reset_index(drop=True)


@dataclass
class TrainResult:
    """A fitted pipeline and its metadata.

    ``probe`` is the pipeline fitted without the ``validation`` rows (the validation
    metrics are its scores on them); ``None`` when no validation split was scored.
    """

    model: Pipeline
    metadata: ModelMetadata
    probe: Pipeline | None = None
    validation: pd.DataFrame | None = None


def _canonical_rows(df: pd.DataFrame, schema: Schema) -> list[str]:
    cols = ["id", *schema.feature_names, "label"]
    frame = feature_frame(df, schema)
    frame.insert(0, "id", df["id"].astype(str))
    frame["label"] = df["label"].astype(str)
    values = frame[cols].astype(object).where(frame[cols].notna(), None)
    rows = values.itertuples(index=False, name=None)
    return [json.dumps(row, ensure_ascii=False) for row in rows]


def _hash_lines(sorted_lines: list[str]) -> str:
    digest = hashlib.sha256()
    for line in sorted_lines:
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()


def data_hash(df: pd.DataFrame, schema: Schema) -> str:
    """sha256 of the rows' ids, features and labels, independent of row order."""
    return _hash_lines(sorted(_canonical_rows(df, schema)))


def _iso(value: Any) -> str | None:
    return None if pd.isna(value) else pd.Timestamp(value).isoformat()


def training_problem(train_df: pd.DataFrame, schema: Schema) -> str | None:
    """Why ``train_df`` cannot train a model, or ``None`` when it can.

    Checked before a run commits to training (so a one-class window postpones the retrain
    with this reason instead of failing the run) and again by :func:`train_model`.
    """
    if "label" not in train_df.columns:
        return "training data has no 'label' column"
    labels = train_df["label"].dropna().astype(str)
    classes = sorted(labels.unique())
    if len(labels) < MIN_TRAIN_ROWS:
        return (f"training data has {len(labels)} labelled rows; "
                f"at least {MIN_TRAIN_ROWS} are needed")
    if len(classes) < 2:
        return f"training data has only one class {classes}; at least 2 classes are needed"
    if schema.labels is not None:
        unknown = sorted(set(classes) - set(schema.labels))
        if unknown:
            return f"training labels {unknown} are not in schema labels {list(schema.labels)}"
    return None


def _prepare(train_df: pd.DataFrame, schema: Schema) -> tuple[pd.DataFrame, str]:
    problem = training_problem(train_df, schema)
    if problem is not None:
        raise TrainingError(problem)
    df = train_df[train_df["label"].notna()].copy()
    df["label"] = df["label"].astype(str)
    # A canonical row order makes the fit independent of how the input was ordered.
    lines = _canonical_rows(df, schema)
    order = sorted(range(len(lines)), key=lines.__getitem__)
    return df.iloc[order].reset_index(drop=True), _hash_lines([lines[i] for i in order])


@limited("train")
def train_model(
    train_df: pd.DataFrame,
    schema: Schema,
    config: TrainConfig,
    *,
    model_name: str,
    primary_metric: str = "f1_macro",
    version: str | None = None,
    now: datetime | None = None,
    builder: Callable[[], Pipeline] | None = None,
) -> TrainResult:
    """Fit the challenger and describe it.

    Validation metrics come from a fit on the rows outside a ``validation_fraction``
    hash holdout; the returned model is then refit on every row. The same rows (in
    any order) and seed give identical predictions and the same ``data_hash``.

    Args:
        train_df: Labelled training rows (see :func:`assemble_training_set`).
        schema: The model's schema.
        config: Training settings.
        model_name: Name recorded in the metadata.
        primary_metric: Metric the gate will compare, recorded in the metadata.
        version: Version id; default ``v<UTC yyyymmddTHHMMSSZ>-<data hash[:8]>`` (sortable).
        now: Creation time (default: the current UTC time).
        builder: Makes the unfitted pipeline (a chosen candidate,
            :func:`driftloop.models.candidates.builder`); default :func:`build_pipeline`.

    Raises:
        TrainingError: Fewer than ``MIN_TRAIN_ROWS`` labelled rows, one class, or labels
            outside ``schema.labels``.
    """
    created = _utc(now or datetime.now(UTC))
    make = builder or (lambda: build_pipeline(schema, config))
    df, digest = _prepare(train_df, schema)
    X, y = feature_frame(df, schema), df["label"].to_numpy(dtype=str)
    fit_part, val_part = split_holdout(df, config.validation_fraction, config.seed,
                                       salt="validation")
    val_metrics: dict[str, float] = {}
    curve: dict[str, float] = {}
    probe: Pipeline | None = None
    if len(val_part) and fit_part["label"].nunique() >= 2:
        probe = make().fit(X.loc[fit_part.index], y[fit_part.index])
        pred, proba = predict_frame(probe, val_part, schema)
        val_metrics = compute_metrics(y[val_part.index], pred, proba,
                                      [str(c) for c in probe.classes_])
        curve = learning_curve(fit_part, val_part, pred, schema, config, builder=make)
    model = make().fit(X, y)
    stamps = [df[c].max() for c in ("timestamp", "label_timestamp") if c in df.columns]
    stamps = [s for s in stamps if not pd.isna(s)]
    metadata = ModelMetadata(
        model_name=model_name,
        version=version or f"v{created.strftime('%Y%m%dT%H%M%SZ')}-{digest[:8]}",
        created_at=created.isoformat(),
        model_kind=schema.model_kind,
        classes=[str(c) for c in model.classes_],
        features=schema.feature_names,
        schema=schema.to_dict(),
        training_window_start=_iso(df["timestamp"].min()) if "timestamp" in df else None,
        training_window_end=_iso(df["timestamp"].max()) if "timestamp" in df else None,
        training_cutoff=_iso(max(stamps)) if stamps else None,
        n_rows=len(df),
        data_hash=digest,
        model_sha256="",
        library_versions={
            "sklearn": sklearn.__version__, "numpy": np.__version__,
            "pandas": pd.__version__, "joblib": joblib.__version__,
            "python": platform.python_version(),
        },
        params={"estimator": type(model[-1]).__name__, **dataclasses.asdict(config)},
        validation_metrics=val_metrics,
        primary_metric=primary_metric,
        seed=config.seed,
        n_validation_rows=len(val_part) if val_metrics else 0,
        learning_curve=curve,
    )
    return TrainResult(model=model, metadata=metadata, probe=probe,
                       validation=val_part if probe is not None else None)


@limited("train")
def learning_curve(fit_part: pd.DataFrame, val_part: pd.DataFrame, full_pred: np.ndarray,
                   schema: Schema, config: TrainConfig, *,
                   builder: Callable[[], Pipeline] | None = None) -> dict[str, float]:
    """What doubling the data bought: a fit on half the rows against the fit on all of them.

    Both are scored on the same validation rows; ``p`` is the one-sided exact sign
    (McNemar) test that the full fit is more accurate, on the rows where exactly one of
    the two is right. Learning curves flatten, so when the last doubling did not
    credibly pay, the next one is not expected to either.

    Args:
        fit_part: The rows the validation probe was fitted on.
        val_part: The validation rows.
        full_pred: The probe's predictions on ``val_part``.
        schema: The model's schema.
        config: Training settings.
        builder: Makes the unfitted pipeline (default :func:`build_pipeline`).

    Returns:
        ``{"n_half", "n_full", "accuracy_half", "accuracy_full", "gain", "p"}`` (a half
        that holds one class predicts that class); empty without rows.
    """
    _, half = split_holdout(fit_part, 0.5, config.seed, salt="learning-curve")
    if half.empty:
        return {}
    if half["label"].nunique() < 2:  # what a fit on one class predicts: that class
        half_pred = np.full(len(val_part), str(half["label"].iloc[0]), dtype=object)
    else:
        model = (builder or (lambda: build_pipeline(schema, config)))().fit(
            feature_frame(half, schema),
                                                   half["label"].to_numpy(dtype=str))
        half_pred, _ = predict_frame(model, val_part, schema)
    truth = val_part["label"].to_numpy(dtype=str)
    full_ok, half_ok = full_pred == truth, half_pred == truth
    wins, losses = int((full_ok & ~half_ok).sum()), int((half_ok & ~full_ok).sum())
    p = binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue if wins + losses else 1.0
    return {"n_half": float(len(half)), "n_full": float(len(fit_part)),
            "accuracy_half": float(half_ok.mean()), "accuracy_full": float(full_ok.mean()),
            "gain": float(full_ok.mean() - half_ok.mean()), "p": float(p)}


@limited("train")
def permutation_feature_importance(
    model: Any, rows: pd.DataFrame, schema: Schema, config: TrainConfig, *, source: str,
) -> dict[str, Any]:
    """Permutation importance of each feature column of ``schema`` for ``model`` on ``rows``.

    A feature's importance is the drop in accuracy when its column is shuffled across the
    rows (``config.importance_repeats`` seeded shuffles: mean and standard deviation); a
    text column is one feature (its documents are shuffled whole). At most
    ``config.importance_rows`` labelled rows are used (a seeded sample). ``rows`` must be
    rows the model never trained on: on its own training rows a model's importances say
    what it memorised.

    Returns:
        ``{"rows", "source", "metric": "accuracy", "baseline", "repeats", "features"}``,
        ``features`` sorted by mean importance (largest first, then by name); empty
        without labelled rows or when ``config.importance_rows`` is 0.
    """
    from sklearn.inspection import permutation_importance

    labelled = rows.loc[rows["label"].notna()] if "label" in rows.columns else rows.iloc[:0]
    if labelled.empty or config.importance_rows == 0:
        return {}
    if len(labelled) > config.importance_rows:
        pick = np.random.default_rng(config.seed).choice(len(labelled),
                                                         size=config.importance_rows,
                                                         replace=False)
        labelled = labelled.iloc[np.sort(pick)]
    X = feature_frame(labelled, schema).reset_index(drop=True)
    y = labelled["label"].astype(str).to_numpy()
    baseline = float((model.predict(X).astype(str) == y).mean())
    # n_jobs=1: joblib's workers would be processes with pools of their own; the model's
    # predict already uses the thread budget this function runs in
    found = permutation_importance(model, X, y, scoring="accuracy",
                                   n_repeats=config.importance_repeats,
                                   random_state=config.seed, n_jobs=1)
    features = [{"name": name, "mean": float(found.importances_mean[i]),
                 "std": float(found.importances_std[i])}
                for i, name in enumerate(X.columns)]
    features.sort(key=lambda f: (-f["mean"], f["name"]))
    return {"rows": len(labelled), "source": source, "metric": "accuracy",
            "baseline": baseline, "repeats": config.importance_repeats,
            "features": features}


def feature_importance(result: TrainResult, eval_set: pd.DataFrame, training: pd.DataFrame,
                       schema: Schema, config: TrainConfig) -> dict[str, Any]:
    """The new model's permutation importance on its evaluation rows (for its metadata).

    The rows are ``eval_set``'s labelled rows outside ``training`` (by id): the rows the
    gate judges it on. When there are none (a first model, before any production label),
    the validation probe of :func:`train_model` is measured on the validation split it was
    not fitted on, and ``source`` says so: the registered model was refit on those rows,
    so it cannot be measured on them.
    """
    unseen = eval_set
    if len(eval_set) and "label" in eval_set.columns:
        unseen = eval_set.loc[eval_set["label"].notna()]
        if len(training) and "id" in unseen.columns:
            unseen = unseen.loc[~unseen["id"].astype(str).isin(training["id"].astype(str))]
    if len(unseen) and "label" in unseen.columns:
        return permutation_feature_importance(
            result.model, unseen, schema, config,
            source=f"evaluation set: {len(unseen)} held-out labelled rows it did not train on")
    if result.probe is None or result.validation is None or result.validation.empty:
        return {}
    return permutation_feature_importance(
        result.probe, result.validation, schema, config,
        source=(f"validation split (no labelled evaluation rows: a first model): the "
                f"validation probe, fitted without these {len(result.validation)} rows, "
                f"not the registered model, which was refit on them"))


def save_model_artifact(result: TrainResult, folder: Path) -> Path:
    """Write ``folder/model.joblib`` and ``folder/metadata.json``; return the folder.

    ``metadata.model_sha256`` is set to the sha256 of the bytes actually written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / "model.joblib"
    joblib.dump(result.model, model_path)
    result.metadata.model_sha256 = hashlib.sha256(model_path.read_bytes()).hexdigest()
    (folder / "metadata.json").write_text(result.metadata.to_json() + "\n")
    return folder


@limited("train")
def out_of_fold_proba(
    train_df: pd.DataFrame, schema: Schema, config: TrainConfig, classes: list[str], *,
    folds: int = 5, max_rows: int = 5000, builder: Callable[[], Pipeline] | None = None,
) -> np.ndarray:
    """Class probabilities of the training rows, each from a model that did not see it.

    The drift test of a model's outputs needs the probabilities the model gives rows it
    never trained on (on its own rows it is over-confident, and unchanged traffic would
    look like drift). When no such rows exist (a first model trained on the whole seed
    set), ``folds``-fold cross-fitting gives them: each fold's rows are predicted by a
    copy of the pipeline fitted on the other folds (same estimator and settings), and the
    columns follow ``classes`` (a class a fold's model lacks has probability 0). Rows are
    sampled to at most ``max_rows`` first (seeded). ``builder`` makes the pipeline
    (default :func:`build_pipeline`: the chosen candidate's, when there was a search).

    Returns:
        ``(n_rows, len(classes))`` probabilities.
    """
    df = train_df.loc[train_df["label"].notna()].reset_index(drop=True)
    if len(df) > max_rows:
        pick = np.random.default_rng(config.seed).choice(len(df), size=max_rows, replace=False)
        df = df.iloc[np.sort(pick)].reset_index(drop=True)
    X, y = feature_frame(df, schema), df["label"].astype(str).to_numpy()
    fold = np.random.default_rng(config.seed).permutation(len(df)) % folds
    out = np.zeros((len(df), len(classes)))
    col = {c: i for i, c in enumerate(classes)}
    for k in range(folds):
        test, fit = fold == k, fold != k
        if not test.any() or len(set(y[fit])) < 2:
            continue
        model = (builder or (lambda: build_pipeline(schema, config)))().fit(X.loc[fit], y[fit])
        proba = model.predict_proba(X.loc[test])
        for j, c in enumerate(str(c) for c in model.classes_):
            if c in col:
                out[test, col[c]] = proba[:, j]
    return out
