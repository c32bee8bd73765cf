"""What the compiled forms share: the tolerance, the ONNX Runtime session, the layout.

:mod:`driftloop.serving.compiled` (trees, the check, the report) and
:mod:`driftloop.serving.compiled_text` (skl2onnx's text conversion) both build on these;
a module of its own so that neither imports the other's converter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: Largest absolute difference between a compiled and a scikit-learn class probability
#: accepted on any check row (else scikit-learn is served).
TOLERANCE = 1e-6
#: Real-text edge cases for text models: unicode letters and accents, emoji, punctuation
#: joined to words, apostrophes, URLs, mentions, hashtags, digits, case, whitespace.
TEXT_EDGES = (
    "", " ", "Ünïcödé café naïve — résumé", "I can't wait!!! #Coachella2015 @user",
    "http://t.co/AbC123 RT @JetBlue: 2:55 tomorrow from RIC to BOS.", "😀🔥 emoji only 😀",
    "MiXeD CaSe WORDS and words", "don't won't isn't", "tab\tand\nnewline",
    "señor piñata straße ΑΒΓ δέλτα кириллица 日本語", "a b c d e f", "_under_score__",
)

Columns = Mapping[str, Sequence[Any]]


class ConversionError(Exception):
    """A pipeline (or one of its steps) that this module cannot convert."""


#: Batches of at least this many rows run on the session sized to the serve thread budget.
BATCH_ROWS = 256


def session(model_bytes: bytes, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session of ``model_bytes`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One request is one row or a small batch: a thread pool would only spin and wait
    # (and compete with the server's own threads on a 2-CPU pod).
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def is_passthrough(transformer: Any) -> bool:
    """Whether ``transformer`` passes its columns through unchanged.

    ``"passthrough"``, or the identity FunctionTransformer a fitted ColumnTransformer puts
    in its place (scikit-learn >= 1.2).
    """
    from sklearn.preprocessing import FunctionTransformer

    if isinstance(transformer, str):
        return transformer == "passthrough"
    return (type(transformer) is FunctionTransformer and transformer.func is None
            and transformer.inverse_func is None)


def column_layout(pre: Any) -> list[tuple[str, Any, list[str]]]:
    """``(kind, transformer, columns)`` of a fitted ColumnTransformer; refuse a remainder."""
    layout = []
    for name, transformer, cols in pre.transformers_:
        if name == "remainder":
            if transformer != "drop" and len(cols):
                raise ConversionError(f"ColumnTransformer remainder {transformer!r}")
            continue
        if isinstance(cols, str):
            cols = [cols]
        layout.append((name, transformer, list(cols)))
    return layout


__all__ = [
    "BATCH_ROWS",
    "TEXT_EDGES",
    "TOLERANCE",
    "Columns",
    "ConversionError",
    "column_layout",
    "is_passthrough",
    "session",
]
