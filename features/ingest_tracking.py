"""Show an ingest where people look: an HTML table (Flyte Deck) and an MLflow run in `ingestion`.

Only counts, reasons and source paths leave the store here; never record content (the report
holds none), so nothing sensitive reaches MLflow.
"""

from __future__ import annotations

import html
import re

import pandas as pd

from features.ingest import IngestReport
from features.mlflow_experiments import use_experiment


def _metric_key(reason: str) -> str:
    # MLflow metric names allow letters, digits and _-./ only: `bad_role:messages[2]` -> `bad_role.messages_2_`
    return re.sub(r"[^A-Za-z0-9_\-./]", "_", reason.replace(":", "."))


def report_frames(report: IngestReport) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-source counts, quarantine reasons per source) as tables."""
    sources = pd.DataFrame(
        [
            {
                "source": s.source,
                "status": s.status,
                "read": s.read,
                "accepted": s.accepted,
                "duplicates": s.duplicates,
                "quarantined": s.quarantined_total,
            }
            for s in report.sources
        ],
        columns=["source", "status", "read", "accepted", "duplicates", "quarantined"],
    )
    reasons = pd.DataFrame(
        [
            {"source": s.source, "reason": reason, "records": n}
            for s in report.sources
            for reason, n in sorted(s.quarantined.items())
        ],
        columns=["source", "reason", "records"],
    )
    return sources, reasons


def report_html(report: IngestReport) -> str:
    """A self-contained HTML view of the report (the Flyte Deck)."""
    sources, reasons = report_frames(report)
    totals = (
        f"read <b>{report.read}</b> · accepted <b>{report.accepted}</b> · duplicates "
        f"<b>{report.duplicates}</b> · quarantined <b>{report.quarantined_total}</b>"
    )
    by_reason = pd.DataFrame(sorted(report.quarantined.items()), columns=["reason", "records"])
    return (
        f"<h3>Ingest {html.escape(report.run_id)}</h3><p>store <code>{html.escape(report.store)}</code>, "
        f"{report.seconds:.1f}s</p><p>{totals}</p>"
        f"<h4>Quarantine by reason</h4>{by_reason.to_html(index=False)}"
        f"<h4>Per source</h4>{sources.to_html(index=False)}"
        + (f"<h4>Reasons per source</h4>{reasons.to_html(index=False)}" if len(reasons) else "")
    )


def log_ingest_report(
    report: IngestReport, experiment: str = "ingestion", flyte_execution_id: str = ""
) -> str:
    """Log the report to MLflow as metrics and tables; return the run id."""
    import mlflow

    use_experiment(experiment)
    sources, reasons = report_frames(report)
    with mlflow.start_run(run_name=f"ingest-{report.run_id}") as run:
        mlflow.log_params(
            {
                "store": report.store,
                "ingest_run_id": report.run_id,
                "sources": len(report.sources),
                "skipped_sources": len(report.skipped_sources),
            }
        )
        if flyte_execution_id:
            mlflow.set_tag("flyte.execution_id", flyte_execution_id)
        mlflow.log_metrics(
            {
                "read": report.read,
                "accepted": report.accepted,
                "duplicates": report.duplicates,
                "quarantined": report.quarantined_total,
                "records_per_second": report.records_per_second,
                **{f"quarantined.{_metric_key(reason)}": n for reason, n in report.quarantined.items()},
            }
        )
        mlflow.log_table(sources, artifact_file="ingest_sources.json")
        mlflow.log_table(reasons, artifact_file="ingest_quarantine_reasons.json")
        mlflow.log_text(report_html(report), "ingest_report.html")
        mlflow.log_text(report.to_markdown(), "ingest_report.md")
        return run.info.run_id
