"""Ingest agent logs into the offline store, then apply and materialize Feast.

    pyflyte run workflows/ingest.py ingest_wf --sources '["~/.cache/agentloop/data/raw"]'

The daily launch plan `ingest_daily` runs it at 02:00 UTC with the run's scheduled time as
`kickoff_time` (the end of the materialization window). On the cluster, sources are s3:// URLs
on MinIO and the store an s3:// prefix; credentials come from the AWS_* variables.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Optional

from flytekit import CronSchedule, Deck, LaunchPlan, Resources, task, workflow

from features.aggregates import write_agent_daily_stats
from features.drain import DrainConfig, drain
from features.feast_store import FeastConfig, apply, materialize_incremental
from features.ingest import IngestConfig, ingest
from features.ingest_tracking import log_ingest_report, report_html
from workflows.cluster import CLUSTER
from workflows.context import execution_id
from workflows.images import CPU_IMAGE


def _expand(path: str) -> str:
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


@task(requests=Resources(cpu="2", mem="4Gi"), enable_deck=True, container_image=CPU_IMAGE)
def ingest_logs(sources: list[str], store: str, max_line_bytes: int, track: bool) -> dict:
    """Parse, validate, redact, dedup and guard new log files into the store; returns the report's totals.

    The full per-source report is the task's Deck and, when MLFLOW_TRACKING_URI is set, an MLflow run
    in the `ingestion` experiment."""
    report = ingest(
        [_expand(s) for s in sources],
        IngestConfig(
            store=_expand(store) if store else IngestConfig().store,
            max_line_bytes=max_line_bytes,
            progress=False,
        ),
    )
    Deck("ingest report", report_html(report))
    print(report.summary())
    mlflow_run_id = ""
    if track and os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow_run_id = log_ingest_report(report, flyte_execution_id=execution_id())
    return {
        "run_id": report.run_id,
        "store": report.store,
        "read": report.read,
        "accepted": report.accepted,
        "duplicates": report.duplicates,
        "quarantined": report.quarantined,
        "quarantined_total": report.quarantined_total,
        "mlflow_run_id": mlflow_run_id,
    }


@task(requests=Resources(cpu="1", mem="1Gi"), container_image=CPU_IMAGE)
def drain_events(landing: str, queue: str, max_messages: int, max_seconds: float) -> str:
    """Drain the interaction CloudEvents queue into durable landing files (acked only once written)."""
    report = drain(
        DrainConfig(
            landing=_expand(landing),
            queue=queue,
            max_messages=max_messages or None,
            max_seconds=max_seconds or None,
        )
    )
    print(
        f"drained {report.consumed} messages from {report.queue}: {report.written} events in "
        f"{report.files} files, {report.rejected} rejected (kept) in {report.rejected_files} files"
    )
    return _expand(landing)


@task(requests=Resources(cpu="1", mem="2Gi"), container_image=CPU_IMAGE)
def refresh_feast(report: dict, kickoff_time: Optional[datetime], online_store: str) -> dict:
    """Recompute daily aggregates, apply the Feast definitions and materialize up to kickoff_time (default now)."""
    config = FeastConfig(offline_store=report["store"], online_store=online_store)
    stats = write_agent_daily_stats(report["store"])
    objects = apply(config)
    windows = materialize_incremental(config, kickoff_time or datetime.now(timezone.utc))
    return {
        "objects": objects,
        "daily_stats_days": len(stats.days),
        "materialized": {view: [s.isoformat(), e.isoformat()] for view, (s, e) in windows.items()},
    }


@workflow
def ingest_wf(
    sources: list[str] = ["~/.cache/agentloop/data/raw"],
    store: str = "",
    kickoff_time: Optional[datetime] = None,
    online_store: str = "",
    max_line_bytes: int = 1 << 20,
    track: bool = True,
) -> dict:
    """Agent logs -> offline store -> Feast (applied and materialized). Returns the ingest report."""
    report = ingest_logs(sources=sources, store=store, max_line_bytes=max_line_bytes, track=track)
    refresh_feast(report=report, kickoff_time=kickoff_time, online_store=online_store)
    return report


ingest_daily = LaunchPlan.get_or_create(
    workflow=ingest_wf,
    name="agentloop.ingest_daily",
    schedule=CronSchedule(schedule="0 2 * * *", kickoff_time_input_arg="kickoff_time"),
    default_inputs={
        "sources": [CLUSTER.agent_logs],
        "store": CLUSTER.store,
        "online_store": CLUSTER.redis,
    },
)


@workflow
def drain_ingest_wf(
    landing: str = "~/.cache/agentloop/data/landing",
    queue: str = "agentloop-drain",
    store: str = "",
    max_messages: int = 0,
    max_seconds: float = 600.0,
    online_store: str = "",
    kickoff_time: Optional[datetime] = None,
) -> dict:
    """The live source: RabbitMQ CloudEvents -> landing files -> the same ingestion as files."""
    landed = drain_events(landing=landing, queue=queue, max_messages=max_messages, max_seconds=max_seconds)
    report = ingest_logs(sources=[landed], store=store, max_line_bytes=1 << 20, track=True)
    refresh_feast(report=report, kickoff_time=kickoff_time, online_store=online_store)
    return report
