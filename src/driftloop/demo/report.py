"""The demo's timeline table and its HTML report with plots.

One :class:`DayRow` per pipeline run, built from the run's record in the store and the
day's traffic; :func:`print_timeline` prints them as a Markdown table and
:func:`write_report` writes a self-contained ``report.html`` (plots embedded as PNG): the
timeline, live accuracy, what continuous training bought over the static model
(:class:`~driftloop.demo.traffic.Counterfactual`) and each version's permutation feature
importance (:func:`importance_table`).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import pandas as pd

from driftloop.demo.traffic import live_accuracy

if TYPE_CHECKING:
    from driftloop.demo.scenarios import Scenario
    from driftloop.demo.traffic import Counterfactual, DayTraffic
    from driftloop.steps.ab import ABHistory


@dataclass(frozen=True)
class TestPoint:
    """One drift test of one run: p-value and effect size against their thresholds.

    A feature drifts when both pass (:mod:`driftloop.decide.drift`).
    """

    name: str
    test: str
    p_value: float | None
    threshold: float
    drifted: bool
    effect: float | None = None
    effect_threshold: float | None = None


@dataclass
class DayRow:
    """One pipeline run on the timeline.

    Attributes:
        day: Simulated day (-1: the seed run that trains the first champion).
        date: Its date.
        regime: The true regime of the day's traffic (topic, before/after).
        requests: HTTP requests sent that day.
        rows: Rows predicted.
        labels: Feedback labels posted that day.
        drift: Drift status (``drift``, ``no_drift``, ``insufficient_data``; ``-``: none).
        tests: Every drift test of the run.
        oov: Out-of-vocabulary rate of the current window (text models).
        retrain: Whether the run retrained.
        fired: The rules that fired.
        verdict: The gate's decision (``-``: no challenger).
        rollout: The rollout step's action (``start``, ``advance``, ``hold``, ``rollback``,
            ``deploy``; ``-``: none) and version.
        canary_percent: The canary's traffic share after the run (0: no canary).
        champion: The champion after the run.
        accuracy: Live accuracy per model version on the day's labelled predictions:
            version -> (labelled, accuracy).
        static: On the day's labelled rows the static model did not train on:
            (rows, accuracy of what was served, accuracy of the static model); ``None``:
            not computed.
    """

    day: int
    date: dt.date
    regime: str
    requests: int = 0
    rows: int = 0
    labels: int = 0
    drift: str = "-"
    tests: list[TestPoint] = field(default_factory=list)
    oov: float | None = None
    retrain: bool = False
    fired: list[str] = field(default_factory=list)
    verdict: str = "-"
    rollout: str = "-"
    rollout_version: str = ""
    canary_percent: int = 0
    champion: str = "-"
    accuracy: dict[str, tuple[int, float]] = field(default_factory=dict)
    rolled_back: str = ""
    #: The canary's own midday analysis (``"advance …x 50%"``), if one ran.
    midday: str = ""
    static: tuple[int, float, float] | None = None

    @classmethod
    def from_run(cls, day: int, date: dt.date, regime: str, record: Any,
                 traffic: DayTraffic | None, accuracy: pd.DataFrame) -> DayRow:
        """Build the row from a run record (``steps.RunRecord``) and the day's traffic."""
        row = cls(day, date, regime)
        if traffic is not None:
            row.requests, row.rows, row.labels = (traffic.requests, traffic.rows,
                                                  traffic.feedback_posted)
        if record.drift is not None:
            row.drift = record.drift.status
            row.tests = [TestPoint(f.name, f.test, f.p_value, f.threshold, f.drifted,
                                   getattr(f, "effect", None),
                                   getattr(f, "effect_threshold", None))
                         for f in record.drift.features]
            row.oov = record.drift.oov_rate_current
        if record.decision is not None:
            row.retrain = bool(record.decision.retrain) and record.train is not None
            row.fired = list(record.decision.fired)
        if record.verdict is not None:
            row.verdict = record.verdict.decision
        if record.rollout is not None:
            step = record.rollout
            row.rollout, row.rollout_version = step.action, step.version
            row.canary_percent = step.to_percent if 0 < step.to_percent < 100 else 0
            if step.completes and step.champion:
                row.champion = step.champion  # the canary reached 100% and is champion
        if record.aliases is not None:
            row.champion = record.aliases.champion or row.champion
            # the canary step and a new canary's start share the run's rollout record:
            # a rollback earlier in the run shows in the alias history
            for change in record.aliases.history:
                if (change.run_id == record.run_id and change.alias == "canary"
                        and change.to_version is None and change.from_version):
                    row.rolled_back = change.from_version
        for item in accuracy.itertuples(index=False):
            row.accuracy[str(item.model_version)] = (int(item.labelled), float(item.accuracy))
        return row

    @property
    def strongest(self) -> TestPoint | None:
        """The test with the smallest p-value relative to its threshold."""
        scored = [t for t in self.tests if t.p_value is not None and t.threshold > 0]
        if not scored:
            return None
        return min(scored, key=lambda t: (t.p_value or 0.0) / t.threshold)


def short(version: str) -> str:
    """A registry version shortened for tables and legends (its last 8 characters)."""
    return version if len(version) <= 10 else "…" + version[-8:]


def _drift_cell(row: DayRow) -> str:
    best = row.strongest
    if best is None:
        return row.drift
    effect = ("" if best.effect is None or best.effect_threshold is None else
              f", effect {best.effect:.3g} vs {best.effect_threshold:.3g}")
    return f"{row.drift} (p={best.p_value:.1e} vs {best.threshold:.3g}{effect}, {best.name})"


def _accuracy_cell(row: DayRow) -> str:
    return ", ".join(f"{short(v)} {acc:.2f} (n={n})" for v, (n, acc) in row.accuracy.items()) \
        or "-"


def _rollout_cell(row: DayRow) -> str:
    back = (f"rollback {short(row.rolled_back)}"
            if row.rolled_back and not (row.rollout == "rollback"
                                        and row.rollout_version == row.rolled_back) else "")
    noon = f"12:00 {row.midday}; " if row.midday else ""
    if row.rollout == "-":
        return (noon + back).rstrip("; ") or "-"
    share = f" {row.canary_percent}%" if row.canary_percent else (
        " 100%" if row.rollout == "advance" else "")
    cell = f"{row.rollout} {short(row.rollout_version)}{share}"
    return noon + (f"{back}; {cell}" if back else cell)


def _static_cell(row: DayRow) -> str:
    if row.static is None or row.static[0] == 0:
        return "-"
    n, served, static = row.static
    return f"{served:.2f} vs {static:.2f} (n={n})"


def attach_counterfactual(rows: list[DayRow], counterfactual: Counterfactual) -> None:
    """Set each served day's :attr:`DayRow.static` from ``counterfactual.daily``."""
    by_day = {int(d.day): (int(d.labelled), float(d.served), float(d.static))
              for d in counterfactual.daily.itertuples(index=False)}
    for row in rows:
        if row.day >= 0:
            row.static = by_day.get(row.day, (0, math.nan, math.nan))


HEADER = ("day", "regime", "requests", "labels", "drift (strongest test)", "trigger",
          "verdict", "rollout", "champion", "live accuracy by version",
          "served vs static model (same rows)")


def table_rows(rows: list[DayRow]) -> list[list[str]]:
    """The timeline as cells (one list per run, in :data:`HEADER` order)."""
    out = []
    for r in rows:
        fired = ",".join(r.fired) if r.retrain else ("(" + ",".join(r.fired) + ")"
                                                     if r.fired else "-")
        out.append([str(r.day) if r.day >= 0 else "seed", r.regime, str(r.requests),
                    str(r.labels), _drift_cell(r), fired, r.verdict, _rollout_cell(r),
                    short(r.champion), _accuracy_cell(r), _static_cell(r)])
    return out


def print_timeline(rows: list[DayRow], stream: TextIO) -> None:
    """Print the timeline as a Markdown table."""
    print("| " + " | ".join(HEADER) + " |", file=stream)
    print("|" + "---|" * len(HEADER), file=stream)
    for cells in table_rows(rows):
        print("| " + " | ".join(cells) + " |", file=stream)
    stream.flush()


# --- plots ---------------------------------------------------------------------------


def _pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _change_lines(ax: Any, scenario: Scenario, n_days: int) -> None:
    for d in scenario.change_days:
        if d < n_days:
            ax.axvline(d - 0.5, color="0.4", ls="--", lw=1)
            ax.text(d - 0.45, 1.0, scenario.regimes[d], transform=ax.get_xaxis_transform(),
                    va="top", fontsize=8, color="0.3")


def accuracy_plot(scenario: Scenario, rows: list[DayRow], served: pd.DataFrame) -> Any:
    """Live accuracy per day by model version, with the true changes and rollout markers."""
    plt = _pyplot()
    days = [r for r in rows if r.day >= 0]
    fig, ax = plt.subplots(figsize=(10, 4.2))
    labelled = served[served["labelled"]] if not served.empty else served
    if not labelled.empty:
        overall = labelled.assign(ok=labelled["prediction"] == labelled["label"]) \
            .groupby("day")["ok"].mean()
        ax.plot(overall.index, overall.values, color="black", lw=2, label="all traffic")
        for version, part in live_accuracy(served).groupby("model_version", sort=False):
            ax.plot(part["day"], part["accuracy"], marker="o", ms=4, lw=1, alpha=0.8,
                    label=f"{short(str(version))}")
    _change_lines(ax, scenario, len(days))
    marks = {"retrain": ("^", "tab:blue"), "start": ("o", "tab:orange"),
             "promote": ("*", "tab:green"), "rollback": ("X", "tab:red")}
    seen: set[str] = set()
    for r in days:
        events = []
        if r.retrain:
            events.append("retrain")
        if r.rollout == "start":
            events.append("start")
        if r.rollout in ("advance", "deploy") and r.canary_percent == 0:
            events.append("promote")
        if r.rollout == "rollback" or r.rolled_back:
            events.append("rollback")
        for k, name in enumerate(events):
            marker, color = marks[name]
            label = {"retrain": "retrained", "start": "canary started",
                     "promote": "promoted (100 %)", "rollback": "rolled back"}[name]
            ax.scatter([r.day], [0.03 + 0.05 * k], marker=marker, color=color, s=70,
                       zorder=5, label=None if name in seen else label)
            seen.add(name)
    ax.set(xlabel="simulated day (pipeline run at its end)", ylabel="live accuracy "
           "(labelled predictions)", ylim=(0, 1.02), xticks=[r.day for r in days])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    ax.set_title(f"{scenario.name}: live accuracy by model version")
    return fig


def drift_plot(scenario: Scenario, rows: list[DayRow]) -> Any:
    """Each drift test's p-value and effect size per day against their thresholds.

    A feature drifts only when both pass: p below its corrected threshold (top, log
    scale) and the effect size at or above its threshold (bottom).
    """
    plt = _pyplot()

    days = [r for r in rows if r.day >= 0]
    fig, (ax, ax_e) = plt.subplots(2, 1, figsize=(10, 6.4), sharex=True)
    names = list(dict.fromkeys(t.name for r in days for t in r.tests))
    floor = 1e-12
    for name in names:
        xs, ps, ths, kind = [], [], [], ""
        ex, es, ets = [], [], []
        for r in days:
            for t in r.tests:
                if t.name == name and t.p_value is not None:
                    xs.append(r.day)
                    ps.append(max(t.p_value, floor))
                    ths.append(t.threshold)
                    kind = t.test
                if t.name == name and t.effect is not None:
                    ex.append(r.day)
                    es.append(t.effect)
                    ets.append(t.effect_threshold)
        line = ax.plot(xs, ps, marker="o", ms=4, label=f"{name} ({kind})")[0]
        ax.plot(xs, ths, ls=":", color=line.get_color(), lw=1)
        if ex:
            ax_e.plot(ex, es, marker="o", ms=4, color=line.get_color())
            ax_e.plot(ex, ets, ls=":", color=line.get_color(), lw=1)
    _change_lines(ax, scenario, len(days))
    _change_lines(ax_e, scenario, len(days))
    ax.set_yscale("log")
    ax.set(ylabel="p-value (dotted: threshold)")
    ax_e.set(xlabel="simulated day", ylabel="effect size (dotted: threshold)",
             xticks=[r.day for r in days])
    ax.grid(alpha=0.3)
    ax_e.grid(alpha=0.3)
    if names:
        ax_e.legend(*ax.get_legend_handles_labels(), fontsize=7, ncol=4, loc="upper center",
                    bbox_to_anchor=(0.5, -0.2))
    ax.set_title("drift tests: drifted = p below its dotted line AND effect above its dotted "
                 "line (p under 1e-12 drawn at 1e-12)")
    return fig


def counterfactual_plot(scenario: Scenario, rows: list[DayRow],
                        counterfactual: Counterfactual) -> Any:
    """Daily accuracy of what was served and of the static model, on the same rows."""
    plt = _pyplot()
    days = [r for r in rows if r.day >= 0]
    fig, ax = plt.subplots(figsize=(10, 3.8))
    daily = counterfactual.daily
    if len(daily):
        ax.plot(daily["day"], daily["served"], marker="o", ms=4, color="black", lw=2,
                label="served (continuous training)")
        ax.plot(daily["day"], daily["static"], marker="s", ms=4, color="tab:gray", lw=1.5,
                ls="--", label=f"static model {short(counterfactual.static_version)} "
                               "(never retrained)")
    _change_lines(ax, scenario, len(days))
    promoted = [r.day for r in days
                if r.rollout in ("advance", "deploy") and r.canary_percent == 0]
    if promoted:
        ax.scatter(promoted, [0.03] * len(promoted), marker="*", color="tab:green", s=80,
                   zorder=5, label="promoted (100 %)")
    ax.set(xlabel="simulated day", ylabel="accuracy (labelled served rows)", ylim=(0, 1.02),
           xticks=[r.day for r in days])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    ax.set_title(f"{scenario.name}: what was served vs the first champion, same rows "
                 f"({counterfactual.gain:+.1f} points)")
    return fig


def importance_table(importances: dict[str, dict[str, Any]], top: int = 5) -> (
    tuple[list[str], list[list[str]]]
):
    """Mean permutation importance, feature x version (the versions in ``importances`` order).

    The rows are the union of every version's ``top`` features, most important (at its
    highest) first; a version that did not record importance shows ``-``.

    Returns:
        ``(header, rows)``: ``["feature", version...]`` and one list of cells per feature.
    """
    versions = list(importances)
    means: dict[str, dict[str, float]] = {}
    chosen: dict[str, float] = {}
    for version, found in importances.items():
        for rank, item in enumerate(found.get("features") or []):
            means.setdefault(str(item["name"]), {})[version] = float(item["mean"])
            if rank < top:
                chosen[str(item["name"])] = max(chosen.get(str(item["name"]), -math.inf),
                                                float(item["mean"]))
    order = sorted(chosen, key=lambda name: (-chosen[name], name))
    cells = [[name, *(f"{means[name][v]:+.3f}" if v in means[name] else "-"
                      for v in versions)] for name in order]
    return ["feature", *(short(v) for v in versions)], cells


def _importance_html(importances: dict[str, dict[str, Any]], top: int = 5) -> list[str]:
    items = []
    for version, found in importances.items():
        feats = found.get("features") or []
        if not feats:
            items.append(f"<li><code>{html.escape(version)}</code>: not recorded</li>")
            continue
        best = ", ".join(f"{html.escape(str(f['name']))} {f['mean']:+.3f} ± {f['std']:.3f}"
                         for f in feats[:top])
        baseline = float(found.get("baseline", math.nan))
        items.append(f"<li><code>{html.escape(version)}</code>: {best} "
                     f"<small>({html.escape(str(found.get('source', '')))}; "
                     f"{found.get('rows', 0)} rows, accuracy {baseline:.3f}, "
                     f"{found.get('repeats', 0)} shuffles)</small></li>")
    header, cells = importance_table(importances, top)
    table = ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                       for r in cells) + "</table>")
    return ["<h2>Feature importance by version</h2>",
            "<p>Permutation importance: the drop in accuracy when one feature's column is "
            "shuffled across the rows (a text column is one feature), measured at training "
            "time on rows the version did not train on and kept in its "
            f"<code>metadata.json</code>. Top {top} per version:</p>",
            "<ul>" + "".join(items) + "</ul>",
            "<p>How they changed across versions (mean importance):</p>", table]


def _num(value: float | None, fmt: str = "+.3f") -> str:
    return "-" if value is None else format(value, fmt)


def ab_html(histories: list[ABHistory]) -> list[str]:
    """The A/B tests section: each test's state, variants and every run's decision."""
    out = ["<h2>A/B tests</h2>"]
    for h in histories:
        t = h.test
        arms = ", ".join(f"{html.escape(v.name)} → <code>{html.escape(v.target)}</code> "
                         f"{v.weight:.0%}" for v in t.variants)
        out.append(f"<h3>{html.escape(t.test_id)}: {html.escape(t.state)}</h3><p>Variants "
                   f"(first = control): {arms}; key: header <code>{html.escape(t.key_header)}"
                   f"</code> else field <code>{html.escape(t.key_field)}</code>; started "
                   f"{html.escape(t.started_at or '-')}.</p>")
        if not h.decisions:
            out.append("<p>Not analysed yet.</p>")
            continue
        names = [v.name for v in t.variants]
        head = ["run", "analysed", "decision", *(f"{n} acc (n)" for n in names),
                *(f"{c} - {names[0]} [interval]" for c in names[1:]), "action", "reasons"]
        body = []
        for run_id, a in h.decisions:
            by = {s.name: s for s in a.variants}
            accs = [f"{_num(by[n].accuracy, '.3f')} ({by[n].labelled})" if n in by else "-"
                    for n in names]
            comps = {c.variant: c for c in a.comparisons}
            diffs = [f"{_num(comps[n].diff)} [{_num(comps[n].ci_low)}, "
                     f"{_num(comps[n].ci_high)}]" if n in comps else "-" for n in names[1:]]
            decision = a.decision + (f": {a.winner}" if a.winner else "")
            body.append([run_id, a.analysed_at[:16], decision, *accs, *diffs, a.action,
                         "; ".join(a.reasons)])
        out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head)
                   + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>"
                                                        for c in r) + "</tr>" for r in body)
                   + "</table>")
        last = h.decisions[-1][1]
        out.append(f"<p><small>{html.escape(last.method)}; alpha {last.alpha:g} over all "
                   f"looks, power {last.power:.0%} against {last.mde:+.3f}: "
                   f"{last.labels_needed} labelled responses per variant planned.</small></p>")
    return out


def write_report(path: Path, scenario: Scenario, rows: list[DayRow], served: pd.DataFrame,
                 *, seconds: float, how: str, counterfactual: Counterfactual | None = None,
                 importances: dict[str, dict[str, Any]] | None = None,
                 ab_tests: list[ABHistory] | None = None) -> Path:
    """Write ``report.html``: the timeline, the plots and how the run was made.

    With ``counterfactual``, its line and a plot of both daily accuracies; with
    ``importances`` (version -> its metadata's ``feature_importance``, in registration
    order), each version's top features and the feature x version table; with
    ``ab_tests`` (:func:`driftloop.steps.ab.ab_history`), every A/B test's state and
    decisions.
    """
    plt = _pyplot()

    plots = [("Live accuracy", accuracy_plot(scenario, rows, served))]
    if counterfactual is not None:
        plots.append(("What continuous training bought",
                      counterfactual_plot(scenario, rows, counterfactual)))
    plots.append(("Drift tests", drift_plot(scenario, rows)))
    figures = []
    for title, fig in plots:
        figures.append((title, _png(fig)))
        plt.close(fig)
    cells = table_rows(rows)
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in HEADER) + "</tr>" + \
        "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                for r in cells) + "</table>"
    labelled = served[served["labelled"]] if not served.empty else served
    overall = (float((labelled["prediction"] == labelled["label"]).mean())
               if not labelled.empty else math.nan)
    body = [
        f"<h1>driftloop demo: {html.escape(scenario.name)}</h1>",
        f"<p>{html.escape(scenario.description)}. {len(rows) - 1} simulated days, pipeline "
        f"run {html.escape(how)}; wall time {seconds:.0f} s. True changes on days "
        f"{html.escape(', '.join(map(str, scenario.change_days)))}. Live accuracy over all "
        f"labelled predictions: {overall:.3f}.</p>",
        *([f"<p class='counterfactual'><b>{html.escape(counterfactual.line())}</b></p>"]
          if counterfactual is not None else []),
        *(f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' "
          f"src='data:image/png;base64,{png}'>" for t, png in figures),
        "<h2>Timeline</h2>", table,
        *(_importance_html(importances) if importances else []),
        *(ab_html(ab_tests) if ab_tests else []),
        "<p>Serving: the real predictor behind the local gateway (a stand-in for Knative's "
        "traffic split) on 127.0.0.1; nothing here ran on a Kubernetes cluster.</p>",
    ]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
             "table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>driftloop "
                    f"demo</title><style>{style}</style></head><body>{''.join(body)}"
                    "</body></html>\n", encoding="utf-8")
    return path
