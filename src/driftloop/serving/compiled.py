r"""Compiled inference: the fitted scikit-learn pipeline as an ONNX Runtime session, checked.

At load the predictor calls :func:`compile_pipeline`. It converts the pipeline, runs both
forms on check rows (a seeded sample of the version's own rows plus edge cases built from
the fitted pipeline: every known category, a missing and an unknown one, every tree split
threshold of each numeric feature and the float64 number just above it) and keeps the
compiled form only when the classes agree and the probabilities differ by at most
:data:`TOLERANCE` (1e-6, absolute) on every row. Otherwise, or when a step cannot be
converted, the predictor serves scikit-learn; the :class:`CompileReport` says which and
why (the predictor logs it and puts it in its ``/v2/models/NAME`` metadata).

Tabular pipelines (``ColumnTransformer(passthrough numeric + OrdinalEncoder categorical) →
HistGradientBoostingClassifier`` with categorical features): skl2onnx 1.20.0 cannot be
used for the trees, because its HistGradientBoosting converter
(``skl2onnx/common/tree_ensemble.py``, ``add_tree_to_attribute_pairs_hist_gradient_boosting``)
writes every split as ``BRANCH_LEQ`` on ``num_threshold`` and ignores categorical splits
(``is_categorical`` / ``raw_left_cat_bitsets``), i.e. silently wrong answers for our
categorical columns. :class:`CompiledTrees` writes the ensemble itself as one ONNX
``ai.onnx.ml`` opset-5 ``TreeEnsemble`` node in float64 (``BRANCH_LEQ`` for numeric
splits, ``BRANCH_MEMBER`` with the categories that go left for categorical ones, missing
values routed by ``nodes_missing_value_tracks_true``), exactly as scikit-learn 1.9.1's
``_hist_gradient_boosting/_predictor.pyx`` (``_predict_one_from_raw_data``) routes a row:
NaN by ``missing_go_to_left``; a category in the split's left bitset goes left, a known
one right, an unknown one as missing. The categorical codes come from the fitted
OrdinalEncoder itself (its ``transform`` of each of its categories, of a missing and of
an unseen value) and are looked up in a dict in Python: no strings reach ONNX, no pandas
frame is built. The class probabilities are the loss' link (``expit`` for two classes,
``softmax`` otherwise) of the baseline plus the ensemble's sum, as in
``HistGradientBoostingClassifier.predict_proba``.

Text pipelines (TF-IDF + LogisticRegression) go through skl2onnx's converter. Its
tokenizer is ONNX Runtime's regex (RE2, ASCII ``\w``) and its ``StringNormalizer`` needs a
named locale, so it does not reproduce scikit-learn's ``(?u)\b\w\w+\b`` on real tweets
(measured: probabilities up to 0.097 apart on 1,000 airline/apple/coachella tweets);
the check then keeps scikit-learn, and says so with the measured difference.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import pandas as pd

from driftloop.data.schema import Schema
from driftloop.models.train import feature_frame
from driftloop.serving.compiled_common import (
    BATCH_ROWS,
    TEXT_EDGES,
    TOLERANCE,
    Columns,
    ConversionError,
    column_layout,
    is_passthrough,
    session,
)

if TYPE_CHECKING:
    from driftloop.serving.compiled_text import CompiledOnnx

log = logging.getLogger(__name__)

#: Rows sampled (seeded) from the version's own rows for the check.
CHECK_SAMPLE = 500
#: Split thresholds per numeric feature turned into edge rows (each at and just above).
MAX_THRESHOLDS = 64
#: A category no fitted encoder has seen.
UNSEEN = "\x00driftloop-unseen-category"
@dataclass(frozen=True)
class CompileReport:
    """How the predictor answers and why (its log line and metadata parameters).

    Attributes:
        backend: ``onnxruntime`` (compiled, checked) or ``sklearn``.
        reason: Why scikit-learn is served (empty when compiled).
        check_rows: Rows compared (the sample plus the edge rows).
        check_source: Where the sampled rows came from.
        max_abs_diff: Largest probability difference seen (None: not compared).
        tolerance: The bound it was held to.
        classes_equal: Whether every row's class agreed (None: not compared).
    """

    backend: str
    reason: str
    check_rows: int
    check_source: str
    max_abs_diff: float | None
    tolerance: float = TOLERANCE
    classes_equal: bool | None = None

    @property
    def compiled(self) -> bool:
        """Whether the compiled form is served."""
        return self.backend == "onnxruntime"

    def parameters(self) -> dict[str, str]:
        """The metadata ``parameters`` (strings: V2 parameters are scalars)."""
        out = {
            "inference_backend": self.backend,
            "compile_tolerance": f"{self.tolerance:g}",
            "compile_check_rows": str(self.check_rows),
            "compile_check_source": self.check_source,
        }
        if self.max_abs_diff is not None:
            out["compile_max_abs_diff"] = f"{self.max_abs_diff:.3g}"
        if self.classes_equal is not None:
            out["compile_classes_equal"] = str(self.classes_equal).lower()
        if self.reason:
            out["compile_fallback_reason"] = self.reason
        return out

    def describe(self) -> str:
        """One log line."""
        diff = "n/a" if self.max_abs_diff is None else f"{self.max_abs_diff:.3g}"
        if self.compiled:
            return (f"serving the compiled model (onnxruntime): {self.check_rows} check rows "
                    f"({self.check_source}) agree, max |p - p_sklearn| {diff} <= "
                    f"{self.tolerance:g}")
        return f"serving scikit-learn: {self.reason}"


class CompiledTrees:
    """A tabular pipeline (passthrough + OrdinalEncoder → HistGradientBoosting) in ONNX.

    Args:
        pipeline: The fitted ``Pipeline([("features", ColumnTransformer), ("classifier",
            HistGradientBoostingClassifier)])``.

    Raises:
        ConversionError: Another structure (a step, option or encoder setting not handled).
    """

    def __init__(self, pipeline: Any) -> None:
        from sklearn.compose import ColumnTransformer
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.preprocessing import OrdinalEncoder

        steps = getattr(pipeline, "steps", None)
        if not steps or len(steps) != 2:
            raise ConversionError(f"expected a 2-step Pipeline, got {type(pipeline).__name__}")
        pre, clf = steps[0][1], steps[1][1]
        if type(pre) is not ColumnTransformer:
            raise ConversionError(f"step {steps[0][0]!r} is {type(pre).__name__}, "
                                  "not a ColumnTransformer")
        if type(clf) is not HistGradientBoostingClassifier:
            raise ConversionError(f"classifier {type(clf).__name__} is not handled")
        # The features in the ColumnTransformer's output order (transformers_ order).
        names: list[str] = []
        encoded: set[str] = set()
        for name, transformer, cols in column_layout(pre):
            if transformer == "drop":
                continue
            if is_passthrough(transformer):
                names += cols
                continue
            if type(transformer) is not OrdinalEncoder:
                raise ConversionError(f"transformer {name!r} ({type(transformer).__name__}) "
                                      "is not handled")
            if type(transformer) is OrdinalEncoder:
                if transformer.handle_unknown != "use_encoded_value":
                    raise ConversionError(
                        f"OrdinalEncoder handle_unknown={transformer.handle_unknown!r}")
                encoded.update(cols)
            names += cols
        if len(names) != clf.n_features_in_:
            raise ConversionError(f"{len(names)} features out of the ColumnTransformer, "
                                  f"the classifier takes {clf.n_features_in_}")
        # scikit-learn >= 1.4 re-encodes categorical features inside the classifier (its
        # own OrdinalEncoder on our codes) and puts them first: follow both encodings.
        inner = getattr(clf, "_preprocessor", None)
        position = list(range(len(names)))
        if inner is not None:
            mask = np.asarray(clf.is_categorical_, dtype=bool)
            order = [i for i in range(len(names)) if mask[i]] + \
                [i for i in range(len(names)) if not mask[i]]
            position = [order.index(i) for i in range(len(names))]
            if any(mask[i] != (n in encoded) for i, n in enumerate(names)):
                raise ConversionError("categorical features of the classifier differ from "
                                      "the encoded columns")

        def chain(frame: pd.DataFrame) -> np.ndarray:
            out = pre.transform(frame)
            return np.asarray(inner.transform(out) if inner is not None else out, dtype=float)

        self._getters: list[tuple[str, Callable[[Any], float] | None]] = [
            ("", None)] * len(names)
        for i, name in enumerate(names):
            lookup = (self._lookup(chain, pre, encoded, name, position[i])
                      if name in encoded else None)
            self._getters[position[i]] = (name, lookup)
        #: The codes each categorical input can take (what its lookup returns, NaN aside).
        self._codes: dict[int, list[float]] = {}
        for j, (_, lookup) in enumerate(self._getters):
            if lookup is not None:
                table = getattr(lookup, "codes", [])
                if any(not float(c).is_integer() or not 0 <= c < 256 for c in table):
                    raise ConversionError(f"categorical codes of {self._getters[j][0]!r} outside "
                                          "0..255")
                self._codes[j] = table
        self.classes = clf.classes_
        self.n_targets = int(clf.n_trees_per_iteration_)
        self.baseline = np.asarray(clf._baseline_prediction, dtype=np.float64).reshape(1, -1)
        from driftloop.threads import thread_budget

        model_bytes = self._onnx(clf)
        self.session = session(model_bytes)
        # A large batch may use the CPUs the pod may use (as scikit-learn's "serve" budget).
        threads = thread_budget("serve") or 1
        self.batch_session = self.session if threads == 1 else session(model_bytes, threads)
        self._input = self.session.get_inputs()[0].name

    @staticmethod
    def _lookup(chain: Callable[[pd.DataFrame], np.ndarray], pre: Any, encoded: set[str],
                name: str, out: int) -> Callable[[Any], float]:
        """Column ``name``'s code in the classifier's input, as one dict lookup per value.

        The codes are what the fitted encoders themselves give each known category, a
        missing value and an unseen one (every other column held missing).
        """
        categories: list[str] = []
        for _, transformer, cols in column_layout(pre):
            if name in cols and hasattr(transformer, "categories_"):
                categories = [c for c in transformer.categories_[cols.index(name)]
                              if isinstance(c, str)]
        values: list[Any] = [*categories, None, UNSEEN]
        frame = pd.DataFrame({c: pd.Series([None] * len(values), dtype=object)
                              if c in encoded else np.full(len(values), np.nan)
                              for c in pre.feature_names_in_})
        frame[name] = pd.Series(values, dtype=object)
        codes = chain(frame)[:, out].tolist()
        table = dict(zip(categories, codes[:-2], strict=True))
        missing, unknown = codes[-2], codes[-1]
        get = table.get

        def lookup(v: Any) -> float:
            return missing if v is None else get(v, unknown)

        lookup.codes = sorted({x for x in codes if not math.isnan(x)})  # type: ignore[attr-defined]
        return lookup

    def _onnx(self, clf: Any) -> bytes:
        from onnx import TensorProto, helper, numpy_helper

        known_bitsets, f_idx_map = clf._bin_mapper.make_known_categories_bitsets()
        feat: list[int] = []
        modes: list[int] = []
        splits: list[float] = []
        missing_true: list[int] = []
        true_ids: list[int] = []
        true_leaf: list[int] = []
        false_ids: list[int] = []
        false_leaf: list[int] = []
        members: list[float] = []
        leaf_target: list[int] = []
        leaf_weight: list[float] = []
        roots: list[int] = []

        def in_bitset(bits: np.ndarray, value: int) -> bool:
            return bool((int(bits[value // 32]) >> (value % 32)) & 1)

        for iteration in clf._predictors:
            for target, predictor in enumerate(iteration):
                nodes, cat_bits = predictor.nodes, predictor.raw_left_cat_bitsets
                # Interior nodes and leaves get their own index spaces (opset 5).
                interior = {i: len(feat) + k for k, i in enumerate(
                    i for i in range(len(nodes)) if not nodes[i]["is_leaf"])}
                leaves = {i: len(leaf_weight) + k for k, i in enumerate(
                    i for i in range(len(nodes)) if nodes[i]["is_leaf"])}
                for i in range(len(nodes)):
                    if nodes[i]["is_leaf"]:
                        leaf_target.append(target)
                        leaf_weight.append(float(nodes[i]["value"]))
                if not interior:  # a single-leaf tree: one split with both sides on it
                    roots.append(len(feat))
                    feat.append(0)
                    modes.append(0)
                    splits.append(0.0)
                    missing_true.append(0)
                    true_ids.append(leaves[0])
                    false_ids.append(leaves[0])
                    true_leaf.append(1)
                    false_leaf.append(1)
                    continue
                roots.append(interior[0])
                for i in interior:
                    node = nodes[i]
                    left, right = int(node["left"]), int(node["right"])
                    go_left_missing = bool(node["missing_go_to_left"])
                    feat.append(int(node["feature_idx"]))
                    if node["is_categorical"]:
                        bits = cat_bits[node["bitset_idx"]]
                        known = known_bitsets[f_idx_map[node["feature_idx"]]]
                        codes = self._codes[int(node["feature_idx"])]
                        goes_left = [c for c in codes if in_bitset(bits, int(c))
                                     or (go_left_missing and not in_bitset(known, int(c)))]
                        left_set = set(goes_left)
                        goes_right = [c for c in codes if c not in left_set]
                        # Only the codes the lookup can produce are listed, and the shorter
                        # side: ONNX Runtime tests a member set one value at a time.
                        if len(goes_right) < len(goes_left):
                            left, right = right, left
                            goes_left, go_left_missing = goes_right, not go_left_missing
                        modes.append(6)  # BRANCH_MEMBER: in the set -> the true branch
                        splits.append(math.nan)
                        members += [*goes_left, math.nan]  # NaN ends the node's set
                    else:
                        modes.append(0)  # BRANCH_LEQ
                        splits.append(float(node["num_threshold"]))
                    missing_true.append(int(go_left_missing))
                    for child, ids, is_leaf in ((left, true_ids, true_leaf),
                                                (right, false_ids, false_leaf)):
                        if nodes[child]["is_leaf"]:
                            ids.append(leaves[child])
                            is_leaf.append(1)
                        else:
                            ids.append(interior[child])
                            is_leaf.append(0)
        attrs: dict[str, Any] = dict(
            aggregate_function=1, n_targets=self.n_targets, post_transform=0,
            nodes_featureids=feat,
            nodes_modes=numpy_helper.from_array(np.asarray(modes, dtype=np.uint8)),
            nodes_splits=numpy_helper.from_array(np.asarray(splits, dtype=np.float64)),
            nodes_truenodeids=true_ids, nodes_trueleafs=true_leaf,
            nodes_falsenodeids=false_ids, nodes_falseleafs=false_leaf,
            nodes_missing_value_tracks_true=missing_true,
            leaf_targetids=leaf_target,
            leaf_weights=numpy_helper.from_array(np.asarray(leaf_weight, dtype=np.float64)),
            tree_roots=roots,
        )
        if members:
            attrs["membership_values"] = numpy_helper.from_array(
                np.asarray(members, dtype=np.float64))
        node = helper.make_node("TreeEnsemble", ["X"], ["raw"], domain="ai.onnx.ml", **attrs)
        n_features = len(self._getters)
        graph = helper.make_graph(
            [node], "driftloop_trees",
            [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, n_features])],
            [helper.make_tensor_value_info("raw", TensorProto.DOUBLE, [None, self.n_targets])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                        helper.make_opsetid("ai.onnx.ml", 5)])
        model.ir_version = 10
        return model.SerializeToString()

    def matrix(self, columns: Columns) -> np.ndarray:
        """The classifier's float64 input for checked columns (the ColumnTransformer's)."""
        n = len(next(iter(columns.values())))
        x = np.empty((n, len(self._getters)), dtype=np.float64)
        for j, (name, code) in enumerate(self._getters):
            values = columns[name]
            x[:, j] = values if code is None else [code(v) for v in values]
        return x

    def predict_proba(self, columns: Columns) -> np.ndarray:
        """Class probabilities (columns in ``classes`` order) of checked feature columns."""
        x = self.matrix(columns)
        session = self.session if len(x) < BATCH_ROWS else self.batch_session
        raw = session.run(None, {self._input: x})[0] + self.baseline
        if self.n_targets == 1:
            p = 1.0 / (1.0 + np.exp(-raw[:, 0]))
            return np.column_stack([1.0 - p, p])
        raw = raw - raw.max(axis=1, keepdims=True)
        e = np.exp(raw)
        return e / e.sum(axis=1, keepdims=True)

    def split_thresholds(self, pipeline: Any) -> dict[str, np.ndarray]:
        """The numeric split thresholds of every tree, per passthrough feature name."""
        clf = pipeline.steps[-1][1]
        names = [name for name, code in self._getters]
        found: dict[int, set[float]] = {}
        for iteration in clf._predictors:
            for predictor in iteration:
                for node in predictor.nodes:
                    if not node["is_leaf"] and not node["is_categorical"]:
                        found.setdefault(int(node["feature_idx"]), set()).add(
                            float(node["num_threshold"]))
        return {names[j]: np.sort(np.fromiter(v, dtype=float)) for j, v in found.items()
                if self._getters[j][1] is None}


Compiled: TypeAlias = "CompiledTrees | CompiledOnnx"


def frame_columns(frame: pd.DataFrame, schema: Schema) -> dict[str, list[Any]]:
    """Rows as the predictor's checked columns (float/NaN, str/None, str/"")."""
    features = feature_frame(frame, schema)
    out: dict[str, list[Any]] = {}
    for c in schema.columns:
        values = features[c.name]
        if c.kind == "numeric":
            out[c.name] = values.astype(float).tolist()
        elif c.kind == "categorical":
            out[c.name] = [None if not isinstance(v, str) else v for v in values]
        else:
            out[c.name] = [v if isinstance(v, str) else "" for v in values]
    return out


def edge_rows(base: dict[str, Any], schema: Schema, pipeline: Any,
              compiled: Compiled | None) -> list[dict[str, Any]]:
    """Rows that vary one feature of ``base`` at a time over its hard cases."""
    rows: list[dict[str, Any]] = []
    thresholds = (compiled.split_thresholds(pipeline)
                  if isinstance(compiled, CompiledTrees) else {})
    for c in schema.columns:
        if c.kind == "numeric":
            values: list[Any] = [math.nan, 0.0]
            ts = thresholds.get(c.name, np.empty(0))
            if len(ts) > MAX_THRESHOLDS:
                ts = ts[np.linspace(0, len(ts) - 1, MAX_THRESHOLDS).astype(int)]
            for t in ts:  # each side of every split: equality goes left
                values += [float(t), float(np.nextafter(t, np.inf))]
        elif c.kind == "categorical":
            values = [*(c.allowed or []), None, UNSEEN]
        else:
            values = list(TEXT_EDGES)
        rows += [{**base, c.name: v} for v in values]
    return rows


def check(pipeline: Any, compiled: Compiled, frame: pd.DataFrame, schema: Schema
          ) -> tuple[float, bool]:
    """Compare both forms on ``frame``: ``(max abs probability difference, classes equal)``."""
    expected = np.asarray(pipeline.predict_proba(feature_frame(frame, schema)), dtype=float)
    got = compiled.predict_proba(frame_columns(frame, schema))
    if got.shape != expected.shape:
        return math.inf, False
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if math.isnan(diff):
        return math.inf, False
    return diff, bool(np.array_equal(got.argmax(axis=1), expected.argmax(axis=1)))


def compile_pipeline(pipeline: Any, schema: Schema, rows: pd.DataFrame | None,
                     source: str, *, tolerance: float = TOLERANCE, seed: int = 0,
                     ) -> tuple[Compiled | None, CompileReport]:
    """Convert ``pipeline`` and check it; return ``(compiled or None, report)``.

    Args:
        pipeline: The fitted scikit-learn pipeline being served.
        schema: Its schema (the feature columns and their kinds).
        rows: The version's own rows to sample from (None: edge rows only).
        source: Where ``rows`` come from (for the report).
        tolerance: The largest probability difference accepted.
        seed: Seed of the sample.
    """
    if rows is not None and len(rows):
        sample = rows.sample(min(CHECK_SAMPLE, len(rows)), random_state=seed)
        sample = feature_frame(sample, schema).reset_index(drop=True)
    else:
        sample = pd.DataFrame(columns=schema.feature_names)
        source = "edge cases only"
    texts = [t for c in schema.names_of("text") for t in sample[c].tolist()]
    try:
        if schema.model_kind == "tabular":
            compiled: Compiled = CompiledTrees(pipeline)
        else:
            from driftloop.serving.compiled_text import CompiledOnnx

            compiled = CompiledOnnx(pipeline, schema, texts)
    except ConversionError as exc:
        return None, CompileReport("sklearn", f"cannot convert: {exc}", 0, source, None,
                                   tolerance)
    base = (sample.iloc[0].to_dict() if len(sample) else
            {c.name: (0.0 if c.kind == "numeric" else
                      (c.allowed[0] if c.allowed else "") if c.kind == "categorical" else "")
             for c in schema.columns})
    edges = pd.DataFrame(edge_rows(base, schema, pipeline, compiled),
                         columns=schema.feature_names)
    frame = pd.concat([sample, edges], ignore_index=True) if len(sample) else edges
    try:
        diff, same = check(pipeline, compiled, frame, schema)
    except Exception as exc:  # a runtime failure of the compiled form: serve sklearn
        return None, CompileReport("sklearn", f"compiled model failed on the check rows: "
                                   f"{type(exc).__name__}: {exc}", len(frame), source, None,
                                   tolerance)
    if not same or not diff <= tolerance:
        what = "the classes differ, " if not same else ""
        return None, CompileReport(
            "sklearn", f"mismatch on the check rows: {what}max |p - p_sklearn| {diff:.3g} "
            f"(tolerance {tolerance:g})", len(frame), source, diff, tolerance, same)
    return compiled, CompileReport("onnxruntime", "", len(frame), source, diff, tolerance,
                                   same)


__all__ = [
    "CHECK_SAMPLE",
    "TOLERANCE",
    "CompileReport",
    "Compiled",
    "CompiledTrees",
    "ConversionError",
    "check",
    "column_layout",
    "compile_pipeline",
    "edge_rows",
    "frame_columns",
    "session",
]
