"""The drift check's outputs for people: one HTML page, a JSON file, and an MLflow run.

save_report(report, "out/", decision)           # drift_report.html + drift_report.json
html = report_html(report, decision)            # the verdicts on top, then Evidently's widgets
run_id = log_drift_report(report, decision)     # the MLflow experiment `monitoring`
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from features.mlflow_experiments import use_experiment
from serving.monitoring.config import DriftReport
from serving.registry import TAG_SNAPSHOT

# --- HTML -----------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def report_html(report: DriftReport, decision: Any = None, as_iframe: bool = False) -> str:
    """One self-contained HTML page: the verdicts (and the decision, when given) on top, then Evidently's
    drift widgets of the overall comparison."""
    from evidently.core.metric_types import render_widgets
    from evidently.legacy.renderers.html_widgets import CounterData, counter, table_data, text_widget

    o = report.overall
    ref = report.reference
    lines = [
        f"Current window [{report.current_start}, {report.current_end}): {o.current_rows} rows.",
        f"Reference ({ref.source}) [{ref.start}, {ref.end}): {o.reference_rows} rows. {ref.note}",
    ]
    if ref.champion_version:
        lines.append(
            f"Champion: {ref.registered_model} version {ref.champion_version}, dataset snapshot "
            f"{ref.snapshot_hash or '-'}."
        )
    if o.note:
        lines.append(o.note)
    if decision is not None:
        lines.append(
            ("RETRAIN RECOMMENDED: " if decision.retrain else "No retraining: ") + "; ".join(decision.reasons)
        )
    widgets = [
        counter(
            title="agentloop drift check",
            counters=[
                CounterData(f"{o.drift_share:.0%}", "columns drifted"),
                CounterData(", ".join(o.topic_drift) or "none", "topic drift"),
                CounterData(
                    f"{_fmt(o.mean_rating_reference, 2)} → {_fmt(o.mean_rating_current, 2)}", "mean rating"
                ),
                CounterData(
                    "yes"
                    if decision is not None and decision.retrain
                    else ("no" if decision is not None else "-"),
                    "retrain",
                ),
            ],
        ),
        text_widget(title="Windows", text="\n".join(lines)),
        table_data(
            title="Per scope",
            column_names=[
                "scope",
                "status",
                "reference rows",
                "current rows",
                "drift share",
                "drifted columns",
                "topic drift",
                "mean rating",
            ],
            data=[
                [
                    s.scope,
                    s.status,
                    s.reference_rows,
                    s.current_rows,
                    f"{s.drift_share:.0%}",
                    ", ".join(s.drifted_columns) or "-",
                    ", ".join(s.topic_drift) or "-",
                    f"{_fmt(s.mean_rating_reference, 2)} → {_fmt(s.mean_rating_current, 2)}",
                ]
                for s in [o, *report.agents.values()]
            ],
        ),
        table_data(
            title=f"Embedding drift ({report.embedding_model or 'off'})",
            column_names=["scope", "text column", "ROC AUC", "threshold", "rule", "drifted"],
            data=[
                [
                    s.scope,
                    e.column,
                    f"{e.score:.3f}",
                    f"{e.threshold:.3f}",
                    e.method,
                    "yes" if e.drifted else "no",
                ]
                for s in [o, *report.agents.values()]
                for e in s.embeddings
            ],
        ),
    ]
    if report.snapshot is not None:
        widgets += list(report.snapshot.to_snapshot_model().widgets)
    return render_widgets(widgets, as_iframe=as_iframe)


def drift_chart(report: DriftReport, decision: Any = None):
    """The overall column drift scores against their thresholds (drifted in red) and each agent's drift
    share, as an RGB array (matplotlib Agg, no pyplot state): the picture a reviewer sees first."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    o = report.overall
    cols = sorted(o.columns + o.embeddings, key=lambda c: (c.kind, c.column))
    agents = [(name, s) for name, s in sorted(report.agents.items())]
    fig = Figure(figsize=(9, 0.32 * (len(cols) + len(agents)) + 2.2), dpi=100)
    top, bottom = fig.subplots(2, 1, height_ratios=[max(len(cols), 1), max(len(agents), 1)])
    y = np.arange(len(cols))
    rel = [_relative(c) for c in cols]
    top.barh(y, rel, color=["#d62728" if c.drifted else "#1f77b4" for c in cols])
    top.axvline(1.0, color="k", lw=0.8, ls="--")
    top.set_yticks(y, [f"{c.column} ({c.method})" for c in cols], fontsize=7)
    top.invert_yaxis()
    top.set_xlabel("score relative to its drift threshold (> 1 = drifted)", fontsize=8)
    verdict = (
        "" if decision is None else (" — RETRAIN RECOMMENDED" if decision.retrain else " — no retraining")
    )
    top.set_title(
        f"drift {report.current_start[:16]} → {report.current_end[:16]}: {o.drift_share:.0%} of columns{verdict}",
        fontsize=9,
    )
    ya = np.arange(len(agents))
    bottom.barh(
        ya,
        [s.drift_share if s.status == "ok" else 0.0 for _, s in agents],
        color=[
            "#d62728" if s.dataset_drift else ("#bbbbbb" if s.status != "ok" else "#1f77b4")
            for _, s in agents
        ],
    )
    bottom.set_yticks(
        ya, [name if s.status == "ok" else f"{name} ({s.status})" for name, s in agents], fontsize=7
    )
    bottom.invert_yaxis()
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("share of drifted columns per agent", fontsize=8)
    fig.tight_layout()
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _relative(c) -> float:
    """A score over its threshold, oriented so that > 1 is drift: p-value tests drift below it, distances
    and AUCs above it. Capped at 5 so one column does not flatten the rest."""
    if math.isnan(c.score) or c.threshold <= 0:
        return 0.0
    if "p_value" in c.method.lower().replace("-", "_"):
        return min(c.threshold / max(c.score, 1e-12), 5.0)
    return min(c.score / c.threshold, 5.0)


def description_markdown(report: DriftReport, decision: Any = None) -> str:
    """The run's description (MLflow renders it on the run page): the verdict, its reasons, every scope."""
    lines = []
    if decision is not None:
        verdict = "RETRAIN RECOMMENDED" if decision.retrain else "no retraining"
        lines += [f"**{verdict}**", "", *(f"- {r}" for r in decision.reasons), ""]
    lines += [
        "| scope | status | rows (ref → cur) | drift share | drifted columns | topic drift |",
        "|---|---|---|---|---|---|",
    ]
    for s in [report.overall, *report.agents.values()]:
        lines.append(
            f"| {s.scope} | {s.status} | {s.reference_rows} → {s.current_rows} | {s.drift_share:.0%} | "
            f"{', '.join(s.drifted_columns) or '-'} | {', '.join(s.topic_drift) or '-'} |"
        )
    lines += [
        "",
        "Chart: this experiment's chart view (image `drift`); full report: artifact `drift_report.html`.",
    ]
    return "\n".join(lines)


# --- MLflow ---------------------------------------------------------------------------------------

MONITORING_EXPERIMENT = "monitoring"


def _metric_key(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", text)


def drift_metrics(report: DriftReport, decision: Any = None) -> dict[str, float]:
    """The report's numbers as MLflow metric name -> value (NaN scores left out)."""
    o = report.overall
    out: dict[str, float] = {
        "drift_share": o.drift_share,
        "drifted_columns": len(o.drifted_columns),
        "dataset_drift": float(o.dataset_drift),
        "reference_rows": o.reference_rows,
        "current_rows": o.current_rows,
        "check_seconds": report.seconds,
    }
    for c in o.columns:
        out[f"drift_score.{_metric_key(c.column)}"] = c.score
        out[f"drifted.{_metric_key(c.column)}"] = float(c.drifted)
    for e in o.embeddings:
        out[f"embedding_auc.{e.column}"] = e.score
        out[f"embedding_drifted.{e.column}"] = float(e.drifted)
    for name, value in (("reference", o.mean_rating_reference), ("current", o.mean_rating_current)):
        if value is not None:
            out[f"mean_rating.{name}"] = value
    for agent, s in report.agents.items():
        key = _metric_key(agent)
        out[f"agent.{key}.current_rows"] = s.current_rows
        if s.status == "ok":
            out[f"agent.{key}.drift_share"] = s.drift_share
            for e in s.embeddings:
                out[f"agent.{key}.embedding_auc.{e.column}"] = e.score
    if decision is not None:
        out["retrain_recommended"] = float(decision.retrain)
        out["retrain_held_by_cooldown"] = float(decision.held_by_cooldown)
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


def log_drift_report(
    report: DriftReport,
    decision: Any = None,
    experiment: str = MONITORING_EXPERIMENT,
    flyte_execution_id: str = "",
) -> str:
    """One MLflow run in `experiment`: metrics, lineage tags, the decision as tags and description, and the
    HTML + JSON report as artifacts. Returns the run id."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    ref = report.reference
    use_experiment(experiment)
    when = report.current_end[:16].replace(":", "").replace("-", "")
    with mlflow.start_run(run_name=f"drift-{when}") as run:
        mlflow.log_params(
            {
                "current_start": report.current_start,
                "current_end": report.current_end,
                "reference_source": ref.source,
                "reference_start": ref.start,
                "reference_end": ref.end,
                "reference_agents": ",".join(ref.agents) or "all",
                "embedding_model": report.embedding_model or "off",
            }
        )
        tags = {
            "agentloop.champion_version": ref.champion_version or "none",
            "agentloop.registered_model": ref.registered_model,
            "agentloop.reference_source": ref.source,
            "agentloop.reference_note": ref.note[:5000],
            TAG_SNAPSHOT: ref.snapshot_hash,
        }
        if flyte_execution_id:
            tags["flyte.execution_id"] = flyte_execution_id
        if decision is not None:
            tags["agentloop.retrain_recommended"] = str(decision.retrain).lower()
            tags["agentloop.retrain_signals"] = ",".join(decision.signals)[:5000]
        tags["mlflow.note.content"] = description_markdown(report, decision)
        mlflow.set_tags({k: v for k, v in tags.items() if v})
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in drift_metrics(report, decision).items()]
        client = MlflowClient()
        for i in range(0, len(metrics), 500):
            client.log_batch(run.info.run_id, metrics=metrics[i : i + 500])
        chart = drift_chart(report, decision)
        mlflow.log_image(chart, key="drift", step=0)  # an image card in the experiment's chart view
        mlflow.log_image(chart, artifact_file="drift_chart.png")
        mlflow.log_text(report_html(report, decision), "drift_report.html")
        mlflow.log_text(report.to_json(decision), "drift_report.json")
        return run.info.run_id


def save_report(report: DriftReport, folder: str | os.PathLike, decision: Any = None) -> dict[str, str]:
    """Write drift_report.html and drift_report.json into folder; return their paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": str(out / "drift_report.html"), "json": str(out / "drift_report.json")}
    Path(paths["html"]).write_text(report_html(report, decision), encoding="utf-8")
    Path(paths["json"]).write_text(report.to_json(decision), encoding="utf-8")
    return paths
