r"""Compiled text models: skl2onnx's TF-IDF + linear conversion, tried only where it is faithful.

skl2onnx 1.20.0 converts ``TfidfVectorizer`` with ONNX Runtime's ``Tokenizer`` (RE2 regular
expressions: ``\w`` is ASCII) and ``StringNormalizer`` (lowercasing under a named locale;
``en_US.UTF-8``, its default, does not load in a slim image, so ``C.UTF-8`` is asked for);
see ``skl2onnx/operator_converters/text_vectoriser.py``. scikit-learn's default pattern
``(?u)\b\w\w+\b`` matches Unicode words (accents, other scripts) in Python's ``re``.
:func:`probe_tokenizer` first runs those two ONNX nodes on real texts and compares their
tokens with the vectoriser's own (no skl2onnx import needed); only when every text splits
the same is the whole model converted and checked like any other
(:func:`driftloop.serving.compiled.compile_pipeline`). On the tweets it does not hold
("café" becomes "caf", "naïve" "na" and "ve"), and the predictor serves scikit-learn,
saying why.

Its own module: the text conversion pulls skl2onnx in, which a tabular predictor never needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from driftloop.data.schema import Schema
from driftloop.serving.compiled_common import (
    TEXT_EDGES,
    Columns,
    ConversionError,
    column_layout,
    session,
)

#: Texts the tokenizer probe compares (from the check rows, plus :data:`TEXT_EDGES`).
PROBE_TEXTS = 200
_PAD = "#"  # the Tokenizer's padding: never a token of r"\b\w\w+\b"
_SKL2ONNX_OPTIONS = {
    # The closest RE2 (ONNX Runtime's tokenizer) comes to sklearn's default pattern; C.UTF-8
    # is the only UTF-8 locale a slim image has (en_US.UTF-8 fails to load there).
    "locale": "C.UTF-8", "tokenexp": r"\b\w\w+\b",
}


def _skl2onnx(model: Any, types: list[tuple[str, Any]], options: dict[int, Any]) -> Any:
    """A session of ``model`` converted by skl2onnx (any failure is a ConversionError)."""
    from skl2onnx import convert_sklearn

    try:
        onx = convert_sklearn(model, initial_types=types, options=options,
                              target_opset={"": 17, "ai.onnx.ml": 3})
        return session(onx.SerializeToString())
    except Exception as exc:  # skl2onnx and onnxruntime raise many kinds
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConversionError(f"skl2onnx/onnxruntime: {type(exc).__name__}: {first}") from exc


def _onnx_tokens(texts: Sequence[str]) -> list[list[str]]:
    """The tokens skl2onnx's TF-IDF graph would see: its StringNormalizer + Tokenizer nodes."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("StringNormalizer", ["X"], ["L"], case_change_action="LOWER",
                         is_case_sensitive=0, locale=_SKL2ONNX_OPTIONS["locale"]),
        helper.make_node("Tokenizer", ["L"], ["T"], domain="com.microsoft", mark=0,
                         mincharnum=1, pad_value=_PAD, tokenexp=_SKL2ONNX_OPTIONS["tokenexp"]),
    ]
    graph = helper.make_graph(
        nodes, "tokens", [helper.make_tensor_value_info("X", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("T", TensorProto.STRING, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    out = session(model.SerializeToString()).run(
        None, {"X": np.asarray(list(texts), dtype=object)})[0]
    return [[t for t in row if t != _PAD] for row in np.asarray(out).reshape(len(texts), -1)]


def probe_tokenizer(vectorizer: Any, texts: Sequence[str]) -> int:
    """Check that ONNX Runtime splits ``texts`` into the words ``vectorizer`` does.

    The same StringNormalizer + Tokenizer nodes skl2onnx writes (its options here) run on
    the texts, and their tokens are compared with the vectoriser's own preprocessor and
    tokenizer (before n-grams, stop words and the vocabulary, which skl2onnx converts as
    data). It needs onnx and onnxruntime only, not skl2onnx (whose import takes seconds),
    so a text model whose tokens differ is refused cheaply.

    Returns:
        The number of texts compared.

    Raises:
        ConversionError: Some text is split differently (the message counts them and
            shows the first), or the vectoriser is not a plain word analyser.
    """
    if vectorizer.analyzer != "word" or vectorizer.tokenizer is not None or \
            vectorizer.preprocessor is not None:
        raise ConversionError("TfidfVectorizer with a custom analyzer, tokenizer or "
                              "preprocessor")
    texts = [t for t in texts if isinstance(t, str)]
    preprocess, tokenize = vectorizer.build_preprocessor(), vectorizer.build_tokenizer()
    expected = [tokenize(preprocess(vectorizer.decode(t))) for t in texts]
    got = _onnx_tokens(texts)
    differ = [i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
    if differ:
        i = differ[0]
        k = next((j for j, (a, b) in enumerate(zip(got[i], expected[i], strict=False))
                  if a != b), min(len(got[i]), len(expected[i])))
        raise ConversionError(
            f"the ONNX tokenizer does not keep scikit-learn's: {len(differ)} of {len(texts)} "
            f"texts split differently, e.g. {texts[i][:50]!r}: tokens {got[i][k:k + 3]} vs "
            f"scikit-learn's {expected[i][k:k + 3]}")
    return len(texts)


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
        from sklearn.feature_extraction.text import TfidfVectorizer

        steps = getattr(pipeline, "steps", None)
        if not steps or len(steps) != 2:
            raise ConversionError(f"expected a 2-step Pipeline, got {type(pipeline).__name__}")
        options: dict[int, dict[str, Any]] = {id(steps[-1][1]): {"zipmap": False}}
        sample = [*list(texts)[:PROBE_TEXTS], *TEXT_EDGES]
        for _, transformer, _ in column_layout(steps[0][1]):
            if isinstance(transformer, TfidfVectorizer):
                probe_tokenizer(transformer, sample)  # before skl2onnx is even imported
                options[id(transformer)] = dict(_SKL2ONNX_OPTIONS)
        from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

        types = [(c.name, DoubleTensorType([None, 1]) if c.kind == "numeric"
                  else StringTensorType([None, 1])) for c in schema.columns]
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
