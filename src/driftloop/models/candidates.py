"""The candidate estimators a retrain may choose from, each with its search space.

Every candidate is a plain scikit-learn pipeline (the serving side unpickles it with
scikit-learn alone) built from a name and a dict of parameters. ``default`` is today's
fixed model (:func:`driftloop.models.train.build_pipeline`), the only candidate when
tuning is off. A search space is a function of an Optuna-like ``trial`` (anything with
``suggest_float`` / ``suggest_int`` / ``suggest_categorical``, so this module does not
import optuna) and the bounds of :class:`~driftloop.config.TuningConfig`.

Tabular: ``hgb`` (histogram gradient boosting, categorical features native), ``extra_trees``
(extremely randomised trees on ordinal-encoded, imputed columns) and ``linear`` (L2
logistic regression on scaled numeric and one-hot categorical columns). Text: ``tfidf_lr``
(word TF-IDF + logistic regression), ``tfidf_svm`` (word TF-IDF + a linear SVM calibrated
to probabilities by 3-fold sigmoid calibration, since the gate and the drift profile need
``predict_proba``) and ``word_char`` (word 1-2-grams and character 2-5-grams side by side,
+ logistic regression).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import OrdinalEncoder
from sklearn.svm import LinearSVC

from driftloop.config import TABULAR_CANDIDATES, TEXT_CANDIDATES, TrainConfig, TuningConfig
from driftloop.data.schema import Schema
from driftloop.models.train import build_pipeline, side_columns

DEFAULT = "default"
_MAX_CATEGORIES = 255
#: Parameters that are integers: a value that crossed a float-only channel (kfp.local's
#: ``dsl.Collected``, a JSON number) is made an int again before scikit-learn sees it.
INT_PARAMS = frozenset({"max_iter", "max_leaf_nodes", "min_samples_leaf", "n_estimators",
                        "min_df", "char_max"})


def as_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """``params`` with the integer parameters as ints (5.0 → 5)."""
    return {k: int(v) if k in INT_PARAMS and isinstance(v, float) and v.is_integer() else v
            for k, v in (params or {}).items()}


class TrialLike(Protocol):
    """What a search space asks of an Optuna trial."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = ...) -> float:
        """A float in ``[low, high]``."""

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = ...) -> int:
        """An int in ``[low, high]``."""

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        """One of ``choices``."""


def candidates_for(schema: Schema, tuning: TuningConfig) -> list[str]:
    """The candidate names a retrain of ``schema``'s kind searches (``[default]`` when off)."""
    if not tuning.enabled:
        return [DEFAULT]
    names = TABULAR_CANDIDATES if schema.model_kind == "tabular" else TEXT_CANDIDATES
    chosen = [n for n in names if not tuning.candidates or n in tuning.candidates]
    return chosen or [DEFAULT]


def default_params(name: str, config: TrainConfig) -> dict[str, Any] | None:
    """The fixed model's settings in ``name``'s space (its first trial), if it has them."""
    if name == "hgb":
        return {"learning_rate": config.learning_rate, "max_iter": config.max_iter,
                "max_leaf_nodes": 31, "l2_regularization": 1e-6, "min_samples_leaf": 20}
    if name == "tfidf_lr":
        return {"c": config.c, "bigrams": True, "min_df": 1}
    return None


def search_space(name: str, trial: TrialLike, tuning: TuningConfig) -> dict[str, Any]:
    """Draw one trial's parameters for candidate ``name`` within ``tuning``'s bounds."""
    if name == "hgb":
        return {
            "learning_rate": trial.suggest_float("learning_rate", tuning.min_learning_rate,
                                                 tuning.max_learning_rate, log=True),
            "max_iter": trial.suggest_int("max_iter", 50, tuning.max_boost_iter, log=True),
            "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 8, 64, log=True),
            "l2_regularization": trial.suggest_float("l2_regularization", 1e-6, 10.0,
                                                     log=True),
            "min_samples_leaf": trial.suggest_int("min_samples_leaf", 5, 100, log=True),
        }
    if name == "extra_trees":
        return {
            "n_estimators": trial.suggest_int("n_estimators", 50, tuning.max_trees, log=True),
            "max_features": trial.suggest_float("max_features", 0.2, 1.0),
            "min_samples_leaf": trial.suggest_int("min_samples_leaf", 1, 20, log=True),
        }
    if name not in TABULAR_CANDIDATES + TEXT_CANDIDATES:
        raise ValueError(f"candidate {name!r} has no search space")
    c = {"c": trial.suggest_float("c", tuning.min_c, tuning.max_c, log=True)}
    if name in ("linear", "tfidf_svm"):
        return c
    if name == "tfidf_lr":
        return {**c, "bigrams": trial.suggest_categorical("bigrams", [True, False]),
                "min_df": trial.suggest_int("min_df", 1, 3)}
    if name == "word_char":
        return {**c, "char_max": trial.suggest_int("char_max", 3, 5)}
    raise ValueError(f"candidate {name!r} has no search space")


def _ordinal() -> OrdinalEncoder:
    return OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan,
                          encoded_missing_value=np.nan, max_categories=_MAX_CATEGORIES)


def _text_columns(schema: Schema, vectoriser: Callable[[], Any]) -> list[tuple[str, Any, Any]]:
    # a scalar column name hands the vectoriser a 1-D column of documents
    return [(f"text_{name}", vectoriser(), name) for name in schema.names_of("text")]


def build_candidate(schema: Schema, config: TrainConfig, name: str,
                    params: dict[str, Any] | None = None) -> Pipeline:
    """The unfitted pipeline of candidate ``name`` with ``params`` (its search-space keys).

    Raises:
        ValueError: ``name`` is not a candidate of ``schema``'s model kind.
    """
    p = as_params(params)
    if name == DEFAULT:
        return build_pipeline(schema, config)
    kinds = TABULAR_CANDIDATES if schema.model_kind == "tabular" else TEXT_CANDIDATES
    if name not in kinds:
        raise ValueError(f"candidate {name!r} is not one of {list(kinds)} "
                         f"({schema.model_kind} models)")
    numeric, categorical = schema.names_of("numeric"), schema.names_of("categorical")
    seed = config.seed
    if name == "hgb":
        pre = ColumnTransformer([("numeric", "passthrough", numeric),
                                 ("categorical", _ordinal(), categorical)],
                                verbose_feature_names_out=False)
        clf: Any = HistGradientBoostingClassifier(
            categorical_features=[False] * len(numeric) + [True] * len(categorical),
            random_state=seed, **p)
        return Pipeline([("features", pre), ("classifier", clf)])
    if name == "extra_trees":
        pre = ColumnTransformer([
            ("numeric", SimpleImputer(strategy="median", keep_empty_features=True), numeric),
            ("categorical", Pipeline([("encode", _ordinal()), ("impute", SimpleImputer(
                strategy="constant", fill_value=-1, keep_empty_features=True))]), categorical),
        ])
        # n_jobs=1: the thread budget of driftloop.threads covers OpenMP/BLAS only, and
        # joblib workers for the trees would start pools of their own
        clf = ExtraTreesClassifier(random_state=seed, n_jobs=1, **p)
        return Pipeline([("features", pre), ("classifier", clf)])
    c = float(p.pop("c", config.c))
    if name == "linear":
        return Pipeline([("features", ColumnTransformer(side_columns(schema))),
                         ("classifier", LogisticRegression(C=c, max_iter=config.max_iter,
                                                           random_state=seed))])
    words = (1, 2) if p.get("bigrams", True) else (1, 1)
    min_df = int(p.get("min_df", 1))

    def word_tfidf() -> TfidfVectorizer:
        return TfidfVectorizer(max_features=config.max_features, ngram_range=words,
                               min_df=min_df, sublinear_tf=True)

    if name == "word_char":
        char_max = int(p.get("char_max", 5))

        def union() -> FeatureUnion:
            return FeatureUnion([
                ("word", word_tfidf()),
                ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, char_max),
                                         max_features=config.max_features,
                                         sublinear_tf=True)),
            ])
        features = ColumnTransformer(_text_columns(schema, union) + side_columns(schema))
    else:
        features = ColumnTransformer(_text_columns(schema, word_tfidf) + side_columns(schema))
    if name == "tfidf_svm":
        clf = CalibratedClassifierCV(LinearSVC(C=c, random_state=seed), method="sigmoid", cv=3)
    else:
        clf = LogisticRegression(C=c, max_iter=config.max_iter, random_state=seed)
    return Pipeline([("features", features), ("classifier", clf)])


def builder(schema: Schema, config: TrainConfig, name: str,
            params: dict[str, Any] | None = None) -> Callable[[], Pipeline]:
    """A zero-argument factory of candidate ``name`` (what :func:`train_model` refits)."""
    frozen = dataclasses.replace(config)
    return lambda: build_candidate(schema, frozen, name, params)
