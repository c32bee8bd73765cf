r"""Compiled text models: skl2onnx's TF-IDF + linear conversion, tried only where it is faithful.

skl2onnx 1.20.0 converts ``TfidfVectorizer`` with ONNX Runtime's ``Tokenizer`` (RE2 regular
expressions: ``\w`` is ASCII) and ``StringNormalizer`` (lowercasing under a named locale;
``en_US.UTF-8``, its default, does not load in a slim image, so ``C.UTF-8`` is asked for);
see ``skl2onnx/operator_converters/text_vectoriser.py``. scikit-learn's default pattern
``(?u)\b\w\w+\b`` matches Unicode words (accents, other scripts) in Python's ``re``.
:func:`probe_tokenizer` measures the difference on real texts first (a copy of the
vectoriser fitted on them, cheap to convert); only when it holds is the whole model
converted and checked like any other (:func:`driftloop.serving.compiled.compile_pipeline`).
On the tweets it does not hold, and the predictor serves scikit-learn, saying why.

Its own module: the text conversion pulls skl2onnx in, which a tabular predictor never needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from driftloop.data.schema import Schema
from driftloop.serving.compiled_common import (
    TEXT_EDGES,
    TOLERANCE,
    Columns,
    ConversionError,
    column_layout,
    session,
)

#: Texts the tokenizer probe compares (from the check rows, plus :data:`TEXT_EDGES`).
PROBE_TEXTS = 200
_SKL2ONNX_OPTIONS = {
    # The closest RE2 (ONNX Runtime's tokenizer) comes to sklearn's default pattern; C.UTF-8
    # is the only UTF-8 locale a slim image has (en_US.UTF-8 fails to load there).
    "locale": "C.UTF-8", "tokenexp": r"\b\w\w+\b",
}


def _skl2onnx(model: Any, types: list[tuple[str, Any]], options: dict[int, Any]) -> Any:
    from skl2onnx import convert_sklearn

    try:
        onx = convert_sklearn(model, initial_types=types, options=options,
                              target_opset={"": 17, "ai.onnx.ml": 3})
        return session(onx.SerializeToString())
    except Exception as exc:  # skl2onnx and onnxruntime raise many kinds
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConversionError(f"skl2onnx/onnxruntime: {type(exc).__name__}: {first}") from exc


def probe_tokenizer(vectorizer: Any, texts: Sequence[str],
                    tolerance: float = TOLERANCE) -> float:
    """How far skl2onnx's TF-IDF is from scikit-learn's on ``texts`` (max abs difference).

    A copy of ``vectorizer``'s settings is fitted on ``texts`` (a small vocabulary, so the
    conversion takes a fraction of a second, not the seconds of the served 20,000-term
    one) and both forms transform them.

    Raises:
        ConversionError: The difference exceeds ``tolerance``: the ONNX tokenizer does not
            keep scikit-learn's behaviour, and converting the whole model is not tried.
    """
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.base import clone

    small = clone(vectorizer).set_params(max_features=None, min_df=1, max_df=1.0)
    texts = list(texts)
    try:
        expected = small.fit_transform(texts).toarray()
    except ValueError:  # no token at all in the texts
        return 0.0
    session = _skl2onnx(small, [("t", StringTensorType([None, 1]))],
                        {id(small): dict(_SKL2ONNX_OPTIONS)})
    got = session.run(None, {"t": np.asarray(texts, dtype=object).reshape(-1, 1)})[0]
    diff = float(np.max(np.abs(np.asarray(got, dtype=float) - expected)))
    if not diff <= tolerance:
        worst = int(np.argmax(np.abs(np.asarray(got, dtype=float) - expected).max(axis=1)))
        raise ConversionError(
            f"the ONNX tokenizer does not keep scikit-learn's (TF-IDF values up to {diff:.3g} "
            f"apart on {len(texts)} texts, e.g. {texts[worst][:60]!r})")
    return diff


class CompiledOnnx:
    """A pipeline converted by skl2onnx (the text model: TF-IDF + linear), one input per column.

    Args:
        pipeline: The fitted pipeline.
        schema: Its schema.
        texts: Real texts for :func:`probe_tokenizer` (run first for every TF-IDF step).

    Raises:
        ConversionError: The tokenizer probe fails, or skl2onnx cannot convert it or ONNX
            Runtime cannot load the result.
    """

    def __init__(self, pipeline: Any, schema: Schema, texts: Sequence[str] = ()) -> None:
        from skl2onnx.common.data_types import DoubleTensorType, StringTensorType
        from sklearn.feature_extraction.text import TfidfVectorizer

        steps = getattr(pipeline, "steps", None)
        if not steps or len(steps) != 2:
            raise ConversionError(f"expected a 2-step Pipeline, got {type(pipeline).__name__}")
        types = [(c.name, DoubleTensorType([None, 1]) if c.kind == "numeric"
                  else StringTensorType([None, 1])) for c in schema.columns]
        options: dict[int, dict[str, Any]] = {id(steps[-1][1]): {"zipmap": False}}
        sample = [*list(texts)[:PROBE_TEXTS], *TEXT_EDGES]
        for _, transformer, _ in column_layout(steps[0][1]):
            if isinstance(transformer, TfidfVectorizer):
                probe_tokenizer(transformer, sample)
                options[id(transformer)] = dict(_SKL2ONNX_OPTIONS)
        self.session = _skl2onnx(pipeline, types, options)
        self.schema = schema
        self.classes = pipeline.classes_
        self._proba = [o.name for o in self.session.get_outputs()][-1]

    def predict_proba(self, columns: Columns) -> np.ndarray:
        """Class probabilities of checked feature columns."""
        feeds = {}
        for c in self.schema.columns:
            values = columns[c.name]
            if c.kind == "numeric":
                feeds[c.name] = np.asarray(values, dtype=np.float64).reshape(-1, 1)
            else:
                feeds[c.name] = np.asarray(["" if v is None else v for v in values],
                                           dtype=object).reshape(-1, 1)
        out = self.session.run([self._proba], feeds)[0]
        return np.asarray(out, dtype=np.float64)


__all__ = ["PROBE_TEXTS", "CompiledOnnx", "probe_tokenizer"]
