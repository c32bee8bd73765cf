"""Feedback quality: what the training plan learns from, and from whom.

Three things, all on the rows a challenger would train on (:func:`curate_training`,
called by :func:`driftloop.steps.plan.plan_training`):

* **Near-duplicates count once.** Requests whose normalised text (lower case, URLs,
  @mentions, a leading ``rt`` and punctuation removed, whitespace collapsed) or whose
  rounded features hash to the same key are one example: the training set keeps one row
  per key (the group's most common label; ties: the latest label). A training row whose
  key is also an evaluation row's is dropped: it would let the challenger see a copy of a
  row it is judged on.
* **Sources that disagree with the consensus are excluded.** A label's source is the user
  or client id sent with ``POST /feedback`` (``source``; column ``label_source``). A
  label's consensus is the most common label other sources gave the same key, else the
  prediction that was served with it. Each source with at least ``source_min_labels``
  such labels is tested: one-sided exact binomial, ``P(X <= agreed | n, p0)`` with ``p0``
  the pooled agreement of every *other* source's labels, Holm-corrected over the tested
  sources at ``source_alpha``, and only when its agreement is also ``source_margin``
  below ``p0``. **Error controlled:** when every source labels as well as the rest
  (the same agreement rate), the chance that any honest source is excluded in a plan is at
  most ``source_alpha`` (family-wise; ``tests/unit/test_curate.py`` measures it by
  simulation).
* **Bias report.** Per slice (the schema's slice column; otherwise the served prediction)
  the share of traffic, the label rate and the predicted-class shares in the recent
  ``days`` against the rows before them (report only: no rule acts on it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binom

from driftloop.config import CurationConfig
from driftloop.data.schema import Schema
from driftloop.serde import JsonResult, to_jsonable

_URL = re.compile(r"https?://\S+|www\.\S+")
_MENTION = re.compile(r"@\w+")
_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")
_RT = re.compile(r"^(rt\s+)+")


def normalise_text(text: object) -> str:
    """The text a near-duplicate shares: lower case, no URLs, @mentions, RT or punctuation."""
    s = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text)
    s = _MENTION.sub(" ", _URL.sub(" ", s.lower()))
    s = _SPACE.sub(" ", _PUNCT.sub(" ", s)).strip()
    return _RT.sub("", s)


def _value_key(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"  # features equal to 6 significant digits are one
    return str(value)


def duplicate_keys(frame: pd.DataFrame, schema: Schema) -> pd.Series:
    """One key per row: equal keys are near-duplicate requests.

    A text model's key is its normalised text columns; a tabular model's a hash of the
    features rounded to six significant digits.
    """
    if frame.empty:
        return pd.Series([], index=frame.index, dtype=object)
    text = schema.names_of("text")
    cols = text if text else list(schema.feature_names)
    parts = [frame[c].map(normalise_text if text else _value_key) if c in frame
             else pd.Series("", index=frame.index) for c in cols]
    joined = parts[0].astype(str)
    for p in parts[1:]:
        joined = joined + "\x1f" + p.astype(str)
    return joined.map(lambda s: hashlib.sha1(s.encode()).hexdigest()[:16])


@dataclass
class SourceTest:
    """One feedback source's agreement with the consensus, and the test behind it."""

    source: str
    labels: int
    agreed: int
    agreement: float
    others: float
    p_value: float
    threshold: float
    excluded: bool


@dataclass
class SliceShift:
    """One slice's traffic share, label rate and predicted-class shares, before and recently."""

    slice: str
    rows_before: int
    rows_recent: int
    share_before: float
    share_recent: float
    label_rate_before: float
    label_rate_recent: float
    label_rate_z: float
    prediction_shift: float
    prediction_shares_recent: dict[str, float] = field(default_factory=dict)


@dataclass
class FeedbackQuality(JsonResult):
    """What curation did to a training set, with the numbers (in the training summary)."""

    rows_in: int
    rows_out: int
    duplicates_dropped: int
    eval_copies_dropped: int
    source_labels_dropped: int
    excluded_sources: list[str]
    sources: list[SourceTest]
    source_alpha: float
    source_margin: float
    slice_by: str
    slices: list[SliceShift]

    def summary(self) -> str:
        """One line for the training summary."""
        out = (f"{self.rows_in} candidate training rows -> {self.rows_out}: "
               f"{self.duplicates_dropped} near-duplicates counted once, "
               f"{self.eval_copies_dropped} copies of evaluation rows dropped, "
               f"{self.source_labels_dropped} labels of excluded sources dropped")
        tested = len(self.sources)
        out += (f"; {tested} feedback source(s) tested (Holm, family-wise "
                f"{self.source_alpha:g}, margin {self.source_margin:g})")
        for s in self.sources:
            if s.excluded:
                out += (f"; excluded {s.source}: agreement {s.agreement:.2f} on {s.labels} "
                        f"labels vs {s.others:.2f} of the others, p={s.p_value:.2g} < "
                        f"{s.threshold:.2g}")
        return out


def consensus_agreement(frame: pd.DataFrame, keys: pd.Series) -> pd.Series:
    """Whether each labelled row's label agrees with its consensus (NaN: no consensus).

    The consensus is the most common label other sources gave the same key; without
    another source's label on it, the prediction served with the row (``prediction``).
    """
    agree = pd.Series(np.nan, index=frame.index, dtype=float)
    if frame.empty:
        return agree
    src = frame["label_source"] if "label_source" in frame else pd.Series(None, index=frame.index)
    src = src.fillna("").astype(str)
    label = frame["label"].astype(str)
    pred = frame["prediction"] if "prediction" in frame else pd.Series(None, index=frame.index)
    by_key: dict[str, list[tuple[Any, str, str]]] = {}
    for idx, k, s, lab in zip(frame.index, keys, src, label, strict=True):
        by_key.setdefault(k, []).append((idx, s, lab))
    for idx, k, s, lab, p in zip(frame.index, keys, src, label, pred, strict=True):
        # a row's peers: other rows of its key, from another source (or of unknown source)
        others = [ol for oi, os_, ol in by_key[k] if oi != idx and (os_ != s or not s)]
        if others:
            values, counts = np.unique(others, return_counts=True)
            agree[idx] = float(lab == values[counts.argmax()])
        elif p is not None and not (isinstance(p, float) and np.isnan(p)):
            agree[idx] = float(lab == str(p))
    return agree


def test_sources(frame: pd.DataFrame, agree: pd.Series, config: CurationConfig
                 ) -> list[SourceTest]:
    """Each source's agreement against every other source's, Holm-corrected (see module)."""
    if "label_source" not in frame:
        return []
    src = frame["label_source"]
    known = agree.notna() & src.notna()
    if not known.any():
        return []
    counts = src[known].value_counts()
    tested = [str(s) for s, n in counts.items() if n >= config.source_min_labels]
    total_n, total_a = int(agree.notna().sum()), float(agree[agree.notna()].sum())
    raw: list[tuple[str, int, int, float, float]] = []
    for s in tested:
        mine = known & (src.astype(str) == s)
        n, a = int(mine.sum()), int(agree[mine].sum())
        rest_n = total_n - n
        if rest_n <= 0:
            continue
        p0 = (total_a - a) / rest_n
        raw.append((s, n, a, p0, float(binom.cdf(a, n, p0))))
    out: list[SourceTest] = []
    m = len(raw)
    order = sorted(range(m), key=lambda i: raw[i][4])
    rejecting = True
    for rank, i in enumerate(order):
        s, n, a, p0, p = raw[i]
        threshold = config.source_alpha / (m - rank)
        # Holm: reject in order of p-value while each is below its step-down threshold
        rejecting = rejecting and p < threshold
        material = p0 - a / n >= config.source_margin
        out.append(SourceTest(s, n, a, a / n, p0, p, threshold, rejecting and material))
    return sorted(out, key=lambda t: t.source)


def slice_shifts(records: pd.DataFrame, schema: Schema, now: dt.datetime, days: float
                 ) -> tuple[str, list[SliceShift]]:
    """Per slice: traffic share, label rate and predicted-class shares, recent vs before."""
    by = schema.slice_column if schema.slice_column and schema.slice_column in records \
        else "prediction"
    if records.empty or by not in records:
        return by, []
    served = pd.to_datetime(records["timestamp"], utc=True)
    recent = (served >= pd.Timestamp(now) - pd.Timedelta(days=days)).to_numpy()
    key = records[by].astype(str).where(records[by].notna(), "(none)")
    labelled = records["label"].notna().to_numpy()
    pred = records["prediction"].astype(str) if "prediction" in records else None
    out = []
    n_old, n_new = int((~recent).sum()), int(recent.sum())
    for value in sorted(key.unique()):
        here = (key == value).to_numpy()
        old, new = here & ~recent, here & recent
        a, b = int(old.sum()), int(new.sum())
        r1 = float(labelled[old].mean()) if a else float("nan")
        r2 = float(labelled[new].mean()) if b else float("nan")
        z = float("nan")
        if a and b:
            pooled = (labelled[old].sum() + labelled[new].sum()) / (a + b)
            se = np.sqrt(pooled * (1 - pooled) * (1 / a + 1 / b))
            z = float((r2 - r1) / se) if se > 0 else 0.0
        shift, shares = float("nan"), {}
        if pred is not None and b:
            s_new = pred[new].value_counts(normalize=True)
            shares = {str(k): round(float(v), 4) for k, v in s_new.items()}
            if a:
                s_old = pred[old].value_counts(normalize=True)
                both = s_new.index.union(s_old.index)
                shift = float((s_new.reindex(both, fill_value=0)
                               - s_old.reindex(both, fill_value=0)).abs().max())
        out.append(SliceShift(str(value), a, b, a / n_old if n_old else float("nan"),
                              b / n_new if n_new else float("nan"), r1, r2, z, shift, shares))
    return by, out


def curate_training(
    training: pd.DataFrame, eval_set: pd.DataFrame, records: pd.DataFrame, schema: Schema,
    config: CurationConfig, *, now: dt.datetime, days: float,
) -> tuple[pd.DataFrame, FeedbackQuality]:
    """Apply the feedback-quality rules to a planned training set (see the module).

    Args:
        training: The planned training rows (labelled).
        eval_set: The gate's evaluation rows (never trained on; their copies are dropped).
        records: The lookback's records (for the source test and the bias report).
        schema: The model's schema.
        config: The curation thresholds.
        now: The run's logical time.
        days: The recent window of the bias report.

    Returns:
        The curated training rows and what was done, with the numbers.
    """
    rows_in = len(training)
    labelled = records.loc[records["label"].notna()] if len(records) else records
    sources: list[SourceTest] = []
    dropped_src = 0
    if len(labelled) and "label_source" in labelled:
        agree = consensus_agreement(labelled, duplicate_keys(labelled, schema))
        sources = test_sources(labelled, agree, config)
    bad = {s.source for s in sources if s.excluded}
    out = training
    if bad and "label_source" in out:
        drop = out["label_source"].astype(str).isin(bad) & out["label_source"].notna()
        dropped_src = int(drop.sum())
        out = out.loc[~drop]
    dups = copies = 0
    if config.dedup and len(out):
        keys = duplicate_keys(out, schema)
        if len(eval_set):
            copy = keys.isin(set(duplicate_keys(eval_set, schema)))
            copies = int(copy.sum())
            out, keys = out.loc[~copy], keys.loc[~copy]
        out, dups = _one_per_key(out, keys)
    by, shifts = slice_shifts(records, schema, now, days)
    quality = FeedbackQuality(rows_in, len(out), dups, copies, dropped_src, sorted(bad),
                              sources, config.source_alpha, config.source_margin, by, shifts)
    return out.reset_index(drop=True), quality


def _one_per_key(frame: pd.DataFrame, keys: pd.Series) -> tuple[pd.DataFrame, int]:
    """Keep one row per key: the group's most common label, the latest such label."""
    if frame.empty:
        return frame, 0
    work = pd.DataFrame({"key": keys.to_numpy(), "label": frame["label"].astype(str).to_numpy(),
                         "pos": np.arange(len(frame))})
    stamp = (pd.to_datetime(frame["label_timestamp"], utc=True) if "label_timestamp" in frame
             else pd.Series(pd.NaT, index=frame.index))
    work["t"] = stamp.to_numpy()
    work["votes"] = work.groupby(["key", "label"])["label"].transform("size")
    work = work.sort_values(["key", "votes", "t", "pos"], na_position="first", kind="stable")
    keep = work.drop_duplicates("key", keep="last")["pos"].to_numpy()
    return frame.iloc[np.sort(keep)], len(frame) - len(keep)


def quality_dict(quality: FeedbackQuality | None) -> dict[str, Any]:
    """The JSON form of a curation result with its one-line ``note`` (empty: none)."""
    return {} if quality is None else {"note": quality.summary(), **to_jsonable(quality)}
