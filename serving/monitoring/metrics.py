"""Prometheus metrics of a drift check: a textfile in the exposition format and, optionally, a Pushgateway push.

    export_metrics(report, decision, MetricsConfig(textfile="/var/lib/node_exporter/agentloop_drift.prom",
                                                   pushgateway_url="http://pushgateway:9091"))

The textfile is for node_exporter's textfile collector (or any scraper of a file); the push is for
batch jobs that are gone before Prometheus scrapes them (the hourly Flyte run). Both carry the
same registry. deploy/monitoring/prometheus-rule.yaml alerts on these names:

    agentloop_drift_share{agent}                      share of drifted columns; agent="all" is overall
    agentloop_drifted_columns{agent}                  how many
    agentloop_column_drift_score{agent="all",column}  Evidently's drift score (p-value or distance)
    agentloop_column_drifted{agent="all",column}      1 when that column drifted
    agentloop_embedding_drift_auc{agent,column}       topic signal: the embedding classifier's ROC AUC
    agentloop_embedding_drifted{agent,column}         1 when the text column's topic drifted
    agentloop_mean_rating{agent,window}               window = reference | current
    agentloop_window_rows{agent,window}
    agentloop_retrain_recommended                     1 when the decision says retrain
    agentloop_retrain_held_by_cooldown                1 when a signal fired but the cooldown held it
    agentloop_drift_check_timestamp_seconds           when the check ran (alert when it stops running)
    agentloop_drift_check_info{champion_version,reference_source,registered_model}
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import datetime

from features.home import agentloop_home
from serving.monitoring.config import DriftReport, ScopeDrift
from serving.monitoring.decision import RetrainDecision

PUSH_JOB = "agentloop_drift"


@dataclass
class MetricsConfig:
    """Where the metrics go. "" textfile = $AGENTLOOP_HOME/monitor/agentloop_drift.prom; "" URL = no push."""

    textfile: str = ""
    pushgateway_url: str = ""  # e.g. http://pushgateway.monitoring.svc:9091
    job: str = PUSH_JOB
    instance: str = ""  # grouping key `instance` of the push ("" = none: one series per job)


@dataclass
class MetricsExport:
    textfile: str
    pushed_to: str  # the Pushgateway URL, "" when not pushed
    text: str  # the exposition text that was written


def default_textfile() -> str:
    return str(agentloop_home() / "monitor" / "agentloop_drift.prom")


def drift_registry(report: DriftReport, decision: RetrainDecision | None = None):
    """A fresh CollectorRegistry holding the report's (and decision's) metrics."""
    from prometheus_client import CollectorRegistry, Gauge, Info

    registry = CollectorRegistry()
    share = Gauge(
        "agentloop_drift_share",
        "Share of monitored columns whose distribution drifted (agent=all: overall)",
        ["agent"],
        registry=registry,
    )
    drifted = Gauge(
        "agentloop_drifted_columns", "Number of monitored columns that drifted", ["agent"], registry=registry
    )
    col_score = Gauge(
        "agentloop_column_drift_score",
        "Evidently drift score of a column (p-value or distance)",
        ["agent", "column"],
        registry=registry,
    )
    col_drifted = Gauge(
        "agentloop_column_drifted", "1 when the column drifted", ["agent", "column"], registry=registry
    )
    emb_auc = Gauge(
        "agentloop_embedding_drift_auc",
        "ROC AUC of a classifier telling the windows' text embeddings apart (0.5 = same topics)",
        ["agent", "column"],
        registry=registry,
    )
    emb_drifted = Gauge(
        "agentloop_embedding_drifted",
        "1 when the text column's topics drifted",
        ["agent", "column"],
        registry=registry,
    )
    rating = Gauge(
        "agentloop_mean_rating",
        "Mean user rating (1-5) of the window",
        ["agent", "window"],
        registry=registry,
    )
    rows = Gauge(
        "agentloop_window_rows", "Interactions compared in the window", ["agent", "window"], registry=registry
    )
    verdict = Gauge(
        "agentloop_drift_verdict",
        "1 when the scope had enough rows for a drift verdict",
        ["agent"],
        registry=registry,
    )

    def scope(s: ScopeDrift, detail: bool) -> None:
        verdict.labels(s.scope).set(1 if s.status == "ok" else 0)
        rows.labels(s.scope, "reference").set(s.reference_rows)
        rows.labels(s.scope, "current").set(s.current_rows)
        for window, value in (("reference", s.mean_rating_reference), ("current", s.mean_rating_current)):
            if value is not None:
                rating.labels(s.scope, window).set(value)
        if s.status != "ok":
            return
        share.labels(s.scope).set(s.drift_share)
        drifted.labels(s.scope).set(len(s.drifted_columns))
        if detail:
            for c in s.columns:
                if not math.isnan(c.score):
                    col_score.labels(s.scope, c.column).set(c.score)
                col_drifted.labels(s.scope, c.column).set(1 if c.drifted else 0)
        for e in s.embeddings:
            emb_auc.labels(s.scope, e.column).set(e.score)
            emb_drifted.labels(s.scope, e.column).set(1 if e.drifted else 0)

    scope(report.overall, detail=True)
    for s in report.agents.values():
        scope(s, detail=False)  # per-column series per agent would multiply cardinality for little use

    Gauge(
        "agentloop_retrain_recommended",
        "1 when the last drift check recommended retraining",
        registry=registry,
    ).set(1 if decision is not None and decision.retrain else 0)
    Gauge(
        "agentloop_retrain_held_by_cooldown",
        "1 when a retrain signal fired but the cooldown held it back",
        registry=registry,
    ).set(1 if decision is not None and decision.held_by_cooldown else 0)
    checked = datetime.fromisoformat(report.checked_at)
    Gauge(
        "agentloop_drift_check_timestamp_seconds", "Unix time of the last drift check", registry=registry
    ).set(checked.timestamp())
    Info("agentloop_drift_check", "What the last drift check compared", registry=registry).info(
        {
            "champion_version": report.reference.champion_version or "none",
            "reference_source": report.reference.source,
            "registered_model": report.reference.registered_model or "",
        }
    )
    return registry


def exposition(registry) -> str:
    """The registry in the Prometheus text exposition format."""
    from prometheus_client import generate_latest

    return generate_latest(registry).decode("utf-8")


def export_metrics(
    report: DriftReport, decision: RetrainDecision | None = None, config: MetricsConfig | None = None
) -> MetricsExport:
    """Write the textfile (atomically: a scraper never reads half a file) and push when a URL is given."""
    from prometheus_client import push_to_gateway, write_to_textfile

    config = config or MetricsConfig()
    registry = drift_registry(report, decision)
    path = os.path.abspath(os.path.expanduser(config.textfile or default_textfile()))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_to_textfile(path, registry)
    pushed = ""
    if config.pushgateway_url:
        grouping = {"instance": config.instance} if config.instance else None
        try:
            push_to_gateway(
                config.pushgateway_url, job=config.job, registry=registry, grouping_key=grouping, timeout=30
            )
        except OSError as exc:  # URLError and connection errors
            raise ConnectionError(
                f"pushing drift metrics to the Pushgateway {config.pushgateway_url} (job "
                f"{config.job}) failed: {exc}; check MetricsConfig.pushgateway_url, or leave it "
                f"empty to write only the textfile ({path})"
            ) from exc
        pushed = config.pushgateway_url
    return MetricsExport(textfile=path, pushed_to=pushed, text=exposition(registry))
