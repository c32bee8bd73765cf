"""The drift step: a reference profile per model version, and a drift report per run.

The profile is built once when a model version is trained and stored beside it
(:mod:`driftloop.decide.profile`); every later run only loads it and compares the current
window against it here (:func:`detect_drift`, which writes a :class:`DriftReport`). Tests (in
:mod:`driftloop.decide.detectors`): KS per numeric feature, chi-squared per categorical
feature (rare categories pooled into one ``other`` bucket first) and, for text models, KS
on the model's predicted probabilities (black-box shift detection) plus an
out-of-vocabulary rate check. One multiple-testing correction spans all tests of a run.

A column counts as drifted only when its test is significant *and* its effect size (PSI, KS or
JS, :attr:`DriftConfig.effect_size`) reaches the effect threshold: with large windows the tests
alone flag shifts far too small to be worth a retrain.

Missing values: a missing numeric value enters the KS test as ``+inf`` (so a change in the
missing rate moves the test) and the effect size as a bin of its own, but is left out of the
reported PSI/JS (which describe the present values); a missing categorical value is its own
category ``<missing>``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from driftloop.config import DriftConfig
from driftloop.data.schema import Schema
from driftloop.decide.detectors import TestInput, run_tests
from driftloop.decide.distance import (
    category_codes,
    histogram_shares,
    js_distance,
    pool,
    pool_rare_categories,
    psi,
    total_variation,
)
from driftloop.decide.profile import (
    ReferenceProfile,
    categorical_values,
    numeric_values,
    oov_rate,
    proba_columns,
    require_columns,
    text_values,
)

# kept importable for steps/plan.py and tests/e2e/test_canary_flow.py (not used here)
from driftloop.decide.profile import build_reference_profile as build_reference_profile
from driftloop.errors import DriftloopError
from driftloop.serde import JsonResult

_EFFECT_NAMES = {"psi": "PSI", "ks": "KS", "js": "JS"}


@dataclass
class FeatureDrift:
    """One test of one feature (or model output) in a drift report.

    Attributes:
        name: Feature name; ``proba[<class>]`` for a text model's predicted probability.
        kind: ``numeric``, ``categorical`` or ``text``.
        test: ``ks``, ``chi2``, ``ks_proba`` or ``oov``.
        statistic: KS or chi-squared statistic; for ``oov`` the OOV rate increase.
        p_value: p-value of the test (``None`` for ``oov``).
        threshold: Corrected p-value threshold; for ``oov`` the allowed OOV increase.
        psi: Population stability index over the reference bins (numeric: present values
            only; categorical: every reference category plus ``unseen``), ``None`` if not
            measurable.
        js: Jensen-Shannon distance over the same bins.
        drifted: Whether the column drifted: its test is significant after correction *and*
            its effect reaches ``effect_threshold`` (for ``oov``: the increase exceeds the
            threshold).
        effect: The effect size the decision used (:attr:`DriftReport.effect_size`): over
            the quantile bins plus a missing-value bin (numeric, model output) or over the
            buckets the chi-squared test compared (categorical, rare categories pooled).
            ``None`` for ``oov``, in reports written before effect sizes existed, or when
            not measurable (then the test alone decides).
        effect_threshold: The effect threshold of this column (``None`` for ``oov``).
        significant: Whether the test alone is significant after correction (read as
            ``drifted`` from reports written before this field existed).
        pooled: Reference categories pooled into the ``other`` bucket before the
            chi-squared test (``None`` for other tests).
    """

    name: str
    kind: str
    test: str
    statistic: float
    p_value: float | None
    threshold: float
    psi: float | None
    js: float | None
    drifted: bool
    effect: float | None = None
    effect_threshold: float | None = None
    significant: bool | None = None
    pooled: int | None = None

    def __post_init__(self) -> None:
        if self.significant is None:  # older reports: drifted meant significant
            self.significant = self.drifted


@dataclass
class DriftReport(JsonResult):
    """The drift decision of one run, with the measurements behind it.

    Attributes:
        status: ``drift``, ``no_drift`` or ``insufficient_data``.
        drifted: Whether drift was detected.
        reasons: Sentences stating each measured value against its threshold.
        n_reference: Reference rows the tests compared against (the profile's sample).
        n_current: Current rows.
        min_samples: Current rows needed for a decision.
        p_value: Significance level before correction.
        correction: ``bonferroni`` or ``fdr``.
        model_version: Model version the reference profile belongs to.
        features: One entry per test.
        oov_rate_reference: Baseline OOV rate of the reference (``None`` for tabular).
        oov_rate_current: OOV rate of the current text (``None`` for tabular).
        psi_threshold: PSI above which a feature's shift is noted in the reasons.
        created_at: ISO timestamp of the run.
        effect_size: ``psi``, ``ks`` or ``js``: the effect size a significant column had to
            reach (``""`` in reports written before effect sizes existed).
        effect_threshold: The default effect threshold (columns may override it, see
            :attr:`FeatureDrift.effect_threshold`).
    """

    status: str
    drifted: bool
    reasons: list[str]
    n_reference: int
    n_current: int
    min_samples: int
    p_value: float
    correction: str
    model_version: str
    features: list[FeatureDrift] = field(default_factory=list)
    oov_rate_reference: float | None = None
    oov_rate_current: float | None = None
    psi_threshold: float = 0.2
    created_at: str = ""
    effect_size: str = ""
    effect_threshold: float | None = None

    @property
    def drifted_features(self) -> list[str]:
        """Names of the features that drifted (significant test and large enough effect)."""
        return [f.name for f in self.features if f.drifted]

    @property
    def significant_features(self) -> list[str]:
        """Names of the features whose test alone is significant (drifted or not)."""
        return [f.name for f in self.features if f.significant]

    @property
    def max_psi(self) -> float | None:
        """Largest PSI over all features: the drift score plotted on timelines."""
        return _max(f.psi for f in self.features)

    @property
    def max_js(self) -> float | None:
        """Largest Jensen-Shannon distance over all features."""
        return _max(f.js for f in self.features)

    def to_markdown(self) -> str:
        """Render the decision, a per-feature table and the reasons as Markdown."""
        effect = f", effect {self.effect_size.upper()} >= {_num(self.effect_threshold)}" \
            if self.effect_size else ""
        lines = [
            f"### Drift: **{self.status}** (model {self.model_version})",
            "",
            f"{self.n_current} current vs {self.n_reference} reference rows; "
            f"p={_num(self.p_value)} with {self.correction} correction{effect}.",
            "",
        ]
        if self.features:
            name = {"": "-", "ks": "KS; TV on categories"}.get(
                self.effect_size, self.effect_size.upper())
            lines += [f"| feature | kind | test | statistic | p-value | threshold "
                      f"| effect ({name}) | effect threshold | significant | PSI | JS "
                      "| drifted |", "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|"]
            lines += [
                f"| {f.name.replace('|', chr(92) + '|')} | {f.kind} | {f.test} "
                f"| {_num(f.statistic)} | {_num(f.p_value)} | {_num(f.threshold)} "
                f"| {_num(f.effect)} | {_num(f.effect_threshold)} "
                f"| {'yes' if f.significant else 'no'} "
                f"| {_num(f.psi)} | {_num(f.js)} | {'**yes**' if f.drifted else 'no'} |"
                for f in self.features
            ]
            lines.append("")
        if self.oov_rate_current is not None:
            lines += [f"OOV rate: {_num(self.oov_rate_current)} "
                      f"(baseline {_num(self.oov_rate_reference)}).", ""]
        lines += ["Reasons:", *(f"- {r}" for r in self.reasons)]
        return "\n".join(lines) + "\n"


def detect_drift(
    profile: ReferenceProfile,
    current: pd.DataFrame,
    schema: Schema,
    config: DriftConfig,
    *,
    model: Any | None = None,
    now: dt.datetime | None = None,
) -> DriftReport:
    """Compare the current window against a model version's reference profile.

    Args:
        profile: The reference profile of the model version serving now.
        current: Current records.
        schema: The records' schema (must declare the profile's features).
        config: Drift settings (``p_value``, ``correction``, ``min_samples``, ...).
        model: The model of ``profile``; required for text schemas.
        now: Timestamp of the report (default: the current UTC time).

    Returns:
        The report; ``insufficient_data`` below ``config.min_samples`` current rows.

    Raises:
        DriftloopError: Schema and profile disagree, a feature column is missing, or no model
            is given for a text schema.
    """
    check_profile(profile, schema)
    report = new_report(profile, len(current), config, now)
    if too_few_rows(report, config):
        return report
    require_columns(current, schema, "current data")
    cols = _tabular_columns(profile, current, config)
    if profile.text:
        cols += _proba_columns(profile, current, schema, model)
    oov = (oov_rate(text_values(current, profile.text), set(profile.vocabulary))
           if profile.text else None)
    return finish_report(report, profile, cols, config, oov_rate_current=oov)


def new_report(profile: ReferenceProfile, n_current: int, config: DriftConfig,
               now: dt.datetime | None = None) -> DriftReport:
    """An ``insufficient_data`` report with the run's settings, before any test ran."""
    return DriftReport(
        status="insufficient_data", drifted=False, reasons=[], n_reference=profile.n_sample,
        n_current=n_current, min_samples=config.min_samples, p_value=config.p_value,
        correction=config.correction, model_version=profile.model_version,
        psi_threshold=config.psi_threshold, created_at=_now(now),
        effect_size=config.effect_size, effect_threshold=config.effect_threshold,
    )


def too_few_rows(report: DriftReport, config: DriftConfig) -> bool:
    """Whether ``report`` has fewer current rows than a decision needs (then says so)."""
    if report.n_current >= config.min_samples:
        return False
    report.reasons.append(f"only {report.n_current} current rows, need at least "
                          f"{config.min_samples} (drift.min_samples)")
    return True


def finish_report(report: DriftReport, profile: ReferenceProfile, cols: list[DriftColumn],
                  config: DriftConfig, *, oov_rate_current: float | None) -> DriftReport:
    """Test the prepared columns together and decide: the rule of every drift report.

    Shared by :func:`detect_drift` (the window in memory) and
    :func:`driftloop.decide.shards.detect_drift_merged` (a window merged from shards), so
    the two decide by the same test, correction, effect size and thresholds.

    Args:
        report: From :func:`new_report`, with enough current rows.
        profile: The reference profile.
        cols: The tested columns, in report order.
        config: Drift settings.
        oov_rate_current: The window's out-of-vocabulary rate (text models; else ``None``).

    Returns:
        ``report``, filled in.
    """
    res = run_tests([c.test for c in cols], p_value=config.p_value,
                    correction=config.correction)
    for i, c in enumerate(cols):
        effect = _effect(c, res.statistics[i], config.effect_size)
        threshold, _ = config.effect_threshold_for(c.name)
        large = effect is None or effect >= threshold  # not measurable: the test decides
        report.features.append(FeatureDrift(
            name=c.name, kind=c.kind, test="ks_proba" if c.proba else res.tests[i],
            statistic=res.statistics[i], p_value=res.p_values[i],
            threshold=res.thresholds[i], psi=_finite(psi(c.ref_shares, c.cur_shares)),
            js=_finite(js_distance(c.ref_shares, c.cur_shares)),
            drifted=res.drifted[i] and large, effect=effect, effect_threshold=threshold,
            significant=res.drifted[i], pooled=c.pooled,
        ))
    unit = "test" if profile.text else "feature"
    family = f"{config.correction} over {len(cols)} {unit}{'s' if len(cols) > 1 else ''}"
    report.reasons += _test_reasons(report.features, family, config)
    if profile.text:
        report.features.append(_oov_feature(report, profile, oov_rate_current or 0.0,
                                                    config))
    report.drifted = any(f.drifted for f in report.features)
    report.status = "drift" if report.drifted else "no_drift"
    report.reasons += [
        f"{_label(f)}: PSI {_num(f.psi)} > {_num(config.psi_threshold)} "
        "(drift.psi_threshold; shift noted, not drift: that needs a significant test and a "
        "large enough effect)"
        for f in report.features
        if f.psi is not None and f.psi > config.psi_threshold and not f.drifted
    ]
    return report


@dataclass
class DriftColumn:
    """One tested column: the test's input and the share vectors of the effect size.

    ``ref_shares``/``cur_shares`` give the reported PSI/JS (present values; every category);
    ``effect_ref``/``effect_cur`` the effect size (with a missing-value bin; pooled buckets).
    """

    name: str
    kind: str
    test: TestInput
    ref_shares: np.ndarray
    cur_shares: np.ndarray
    effect_ref: np.ndarray
    effect_cur: np.ndarray
    proba: bool = False
    pooled: int | None = None


def _tabular_columns(profile: ReferenceProfile, current: pd.DataFrame,
                     config: DriftConfig) -> list[DriftColumn]:
    cols = []
    for name in profile.numeric:
        values = numeric_values(current[name])
        missing = float(np.isnan(values).mean()) if values.size else 0.0
        cols.append(numeric_column(
            profile, name, TestInput("ks", nan_high(profile.numeric_sample[name]),
                                     nan_high(values)),
            histogram_shares(values, profile.bin_edges[name]), missing))
    for name in profile.categorical:
        codes = category_codes(categorical_values(current[name]), profile.categories[name])
        cur_counts = np.bincount(codes[codes >= 0], minlength=len(profile.categories[name]) + 1)
        cols.append(categorical_column(profile, name, cur_counts, config))
    return cols


def numeric_column(profile: ReferenceProfile, name: str, test: TestInput,
                   cur_shares: np.ndarray, missing: float) -> DriftColumn:
    """The tested column of numeric feature ``name``.

    Args:
        profile: The reference profile.
        name: The feature.
        test: Its KS input (raw values, or counts on the reference grid).
        cur_shares: Current shares of the present values per reference bin.
        missing: Share of the current rows whose value is missing.
    """
    sample = profile.numeric_sample[name]
    ref_shares = profile.numeric_shares[name]
    return DriftColumn(name, "numeric", test, ref_shares, cur_shares,
                       with_missing(ref_shares, sample), with_missing_share(cur_shares, missing))


def categorical_column(profile: ReferenceProfile, name: str, cur_counts: np.ndarray,
                       config: DriftConfig) -> DriftColumn:
    """The tested column of categorical feature ``name`` from its current counts.

    Args:
        profile: The reference profile.
        name: The feature.
        cur_counts: Current rows per reference category plus ``unseen`` (missing excluded).
        config: Drift settings (``min_expected``).
    """
    cats = profile.categories[name]
    ref_codes = profile.categorical_sample[name]
    ref_counts = np.bincount(ref_codes[ref_codes >= 0], minlength=len(cats) + 1)
    cur_counts = np.asarray(cur_counts, dtype=np.int64)
    # Rare categories (and unseen ones) share one bucket: the chi-squared approximation
    # needs expected counts (column total share x sample rows) of ~5 in both samples.
    n_small = min(int(ref_counts.sum()), int(cur_counts.sum()))
    buckets = pool_rare_categories(ref_counts + cur_counts, n_small, config.min_expected)
    kept = int(buckets.max())
    total = cur_counts.sum()
    cur_shares = cur_counts / total if total > 0 else np.zeros(len(cur_counts))
    return DriftColumn(
        name, "categorical", TestInput("chi2", pool(ref_counts, buckets),
                                       pool(cur_counts, buckets)),
        profile.categorical_shares[name], cur_shares,
        pool(profile.categorical_shares[name], buckets),
        pool(cur_counts / max(cur_counts.sum(), 1), buckets), pooled=len(cats) - kept)


def with_missing(shares: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Shares of the present values scaled to all rows, plus a final missing-value bin."""
    missing = float(np.isnan(values).mean()) if values.size else 0.0
    return with_missing_share(shares, missing)


def with_missing_share(shares: np.ndarray, missing: float) -> np.ndarray:
    """:func:`with_missing` from the share of missing values itself (merged shards)."""
    return np.append(np.asarray(shares, dtype=np.float64) * (1.0 - missing), missing)


def _effect(col: DriftColumn, ks_statistic: float, effect_size: str) -> float | None:
    if effect_size == "psi":
        value = psi(col.effect_ref, col.effect_cur)
    elif effect_size == "js":
        value = js_distance(col.effect_ref, col.effect_cur)
    elif col.test.test in ("ks", "ks_grid"):  # ks_grid: KS from a sharded window's counts
        value = ks_statistic
    else:
        value = total_variation(col.effect_ref, col.effect_cur)
    return _finite(value)


def model_probabilities(profile: ReferenceProfile, frame: pd.DataFrame, schema: Schema,
                        model: Any | None) -> tuple[list[str], np.ndarray]:
    """The profiled model's classes and its predicted probabilities for ``frame``'s rows.

    Raises:
        DriftloopError: No model, or its classes are not the profile's.
    """
    if model is None:
        raise DriftloopError("drift detection: a text schema needs the model "
                             f"(version {profile.model_version}) for its predicted probabilities")
    classes = [str(c) for c in model.classes_]
    if classes != profile.classes:
        raise DriftloopError(f"drift detection: model classes {classes} differ from the "
                             f"profile's {profile.classes} (model {profile.model_version})")
    if not len(frame):
        return classes, np.empty((0, len(classes)))
    return classes, np.asarray(model.predict_proba(frame[schema.feature_names]),
                               dtype=np.float64)


def _proba_columns(profile: ReferenceProfile, current: pd.DataFrame, schema: Schema,
                   model: Any | None) -> list[DriftColumn]:
    classes, proba = model_probabilities(profile, current, schema, model)
    cols = []
    for col, edges, shares in zip(proba_columns(classes), profile.proba_edges,
                                  profile.proba_shares, strict=True):
        cur_shares = histogram_shares(proba[:, col], edges)
        cols.append(DriftColumn(
            f"proba[{classes[col]}]", "text",
            TestInput("ks", profile.reference_proba[:, col], proba[:, col]), shares,
            cur_shares, shares, cur_shares, proba=True))
    return cols


def _oov_feature(report: DriftReport, profile: ReferenceProfile, rate: float,
                 config: DriftConfig) -> FeatureDrift:
    base = profile.oov_rate_reference or 0.0
    report.oov_rate_reference, report.oov_rate_current = base, rate
    increase = rate - base
    drifted = increase > config.oov_threshold
    op = ">" if drifted else "<="
    report.reasons.append(
        f"text OOV rate {_num(rate)} vs baseline {_num(base)}: increase {_num(increase)} "
        f"{op} {_num(config.oov_threshold)} (drift.oov_threshold)")
    return FeatureDrift(name="+".join(profile.text), kind="text", test="oov",
                        statistic=increase, p_value=None, threshold=config.oov_threshold,
                        psi=None, js=None, drifted=drifted)


def _label(f: FeatureDrift) -> str:
    return f"model output {f.name}" if f.test == "ks_proba" else f"feature {f.name!r}"


def _effect_name(f: FeatureDrift, effect_size: str) -> str:
    """How the effect of ``f`` is named in the reasons (KS becomes TV on categories)."""
    if effect_size == "ks" and f.test == "chi2":
        return "TV"
    return _EFFECT_NAMES[effect_size]


def _test_reasons(features: list[FeatureDrift], family: str,
                  config: DriftConfig) -> list[str]:
    def test(f: FeatureDrift) -> str:
        return "chi2" if f.test == "chi2" else "KS"

    def effect(f: FeatureDrift, op: str) -> str:
        _, override = config.effect_threshold_for(f.name)
        source = "drift.feature_thresholds" if override else "drift.effect_threshold"
        pooled = f" over buckets with {f.pooled} rare categories pooled" if f.pooled else ""
        return (f"{_effect_name(f, config.effect_size)} {_num(f.effect)} {op} "
                f"{_num(f.effect_threshold)} ({source}){pooled}")

    def p_text(f: FeatureDrift) -> str:
        return f"{test(f)} p={_num(f.p_value)} < {_num(f.threshold)} ({family})"

    reasons = []
    for f in features:
        if f.drifted and f.effect is None:
            reasons.append(f"{_label(f)}: {p_text(f)}; effect size not measurable, the test "
                           "decides")
        elif f.drifted:
            reasons.append(f"{_label(f)}: {p_text(f)} and {effect(f, '>=')}")
        elif f.significant:
            reasons.append(f"{_label(f)}: significant but small: {effect(f, '<')}, "
                           f"though {p_text(f)}")
    if any(f.significant for f in features):
        return reasons
    best = min(features, key=lambda f: (f.p_value if f.p_value is not None else 1.0))
    return [f"no test significant: smallest {test(best)} p={_num(best.p_value)} at "
            f"{_label(best)} >= {_num(best.threshold)} ({family})"]


def check_profile(profile: ReferenceProfile, schema: Schema) -> None:
    """Fail with a :class:`DriftloopError` where ``profile`` and ``schema`` name other features."""
    for kind in ("numeric", "categorical", "text"):
        if getattr(profile, kind) != schema.names_of(kind):
            raise DriftloopError(
                f"drift profile of model {profile.model_version}: {kind} features "
                f"{getattr(profile, kind)} but the schema declares {schema.names_of(kind)}")


def nan_high(values: np.ndarray) -> np.ndarray:
    """``values`` with every NaN replaced by ``+inf`` (how the KS test sees a missing value)."""
    # KS needs a value for every row; +inf sorts above all, so missingness shifts the CDF.
    return np.where(np.isnan(values), np.inf, values)


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _max(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def _now(now: dt.datetime | None) -> str:
    return (now or dt.datetime.now(dt.UTC)).isoformat()
