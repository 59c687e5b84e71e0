"""Drift monitoring: Feast monitoring_v1 -> Evidently (reference = the champion's training data) -> decision
-> the training workflow when the decision says retrain.

    pyflyte run workflows/monitor.py monitor_wf --store ~/.cache/agentloop/store --window_hours 24

The hourly launch plan `agentloop.drift_hourly` runs it at minute 0 with the scheduled time as `end`.
What people see: the task's Deck (the HTML report with the decision on top), an MLflow run in the
`monitoring` experiment (when MLFLOW_TRACKING_URI is set), and Prometheus metrics (a textfile and,
when MetricsConfig.pushgateway_url is set, a push) that deploy/monitoring/prometheus-rule.yaml
alerts on. When retraining is recommended (and start_training is true), `train_wf` of
workflows/train.py runs as a branch of this workflow on the days before `end`.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import NamedTuple, Optional

from flytekit import CronSchedule, Deck, LaunchPlan, Resources, conditional, task, workflow

from serving.monitoring.decision import DecisionConfig, RetrainDecision, decide
from serving.monitoring.drift import MonitorConfig, run_drift_check
from serving.monitoring.metrics import MetricsConfig, export_metrics
from serving.monitoring.report import log_drift_report, report_html
from training.dataset import DatasetConfig
from training.sweep import SweepConfig
from training.trainer import TrainConfig
from workflows.cluster import CLUSTER
from workflows.context import execution_id
from workflows.images import CPU_IMAGE
from workflows.train import train_wf


class DriftCheck(NamedTuple):
    retrain: bool
    decision: RetrainDecision
    end: datetime  # the current window's end, fixed once: training reads the days before it
    mlflow_run_id: str


def _expand(path: str) -> str:
    return path if not path or "://" in path else os.path.abspath(os.path.expanduser(path))


@task(requests=Resources(cpu="2", mem="6Gi"), enable_deck=True, container_image=CPU_IMAGE)
def check_drift(
    store: str,
    end: Optional[datetime],
    window_hours: int,
    monitor: MonitorConfig,
    decision: DecisionConfig,
    metrics: MetricsConfig,
    track: bool,
) -> DriftCheck:
    """Compare the current window with the champion's training data, decide, publish (Deck, MLflow, Prometheus)."""
    from dataclasses import replace

    end = end or datetime.now(timezone.utc)
    monitor = replace(
        monitor,
        store=_expand(store) or monitor.store,
        progress=False,
        window_hours=window_hours if window_hours > 0 else monitor.window_hours,
    )
    report = run_drift_check(monitor, end)
    verdict = decide(report, decision)
    Deck("drift report", report_html(report, verdict, as_iframe=True))
    exported = export_metrics(report, verdict, metrics)
    run_id = ""
    if track and os.environ.get("MLFLOW_TRACKING_URI"):
        run_id = log_drift_report(report, verdict, flyte_execution_id=execution_id())
    print(
        f"drift {report.overall.drift_share:.0%} of columns ({', '.join(report.overall.drifted_columns) or 'none'}); "
        f"topic drift: {', '.join(report.overall.topic_drift) or 'none'}; reference {report.reference.source} "
        f"{report.reference.champion_version or ''}; metrics {exported.textfile}; MLflow run {run_id or '-'}"
    )
    print(("RETRAIN: " if verdict.retrain else "no retraining: ") + "; ".join(verdict.reasons))
    return DriftCheck(retrain=verdict.retrain, decision=verdict, end=end, mlflow_run_id=run_id)


@task(requests=Resources(cpu="100m", mem="64Mi"), container_image=CPU_IMAGE)
def training_gate(retrain: bool, start_training: bool) -> bool:
    """Start training only when the decision says so and this run may start it."""
    return retrain and start_training


@task(requests=Resources(cpu="100m", mem="64Mi"), container_image=CPU_IMAGE)
def skip_training() -> str:
    """The else branch: no training run."""
    return ""


@workflow
def retrain_wf(
    store: str,
    end: datetime,
    days: int,
    agents: list[str],
    min_rating: int,
    base_model: str,
    dataset: DatasetConfig,
    train: TrainConfig,
    sweep_config: SweepConfig,
    final_max_steps: int,
    eval_prompts: int,
    max_new_tokens: int,
) -> str:
    """train_wf, reduced to its final MLflow run id: both branches of the conditional then have one output
    of one name (flytekit's local execution pairs a branch's outputs with the common names by position)."""
    final = train_wf(
        store=store,
        end=end,
        days=days,
        agents=agents,
        min_rating=min_rating,
        base_model=base_model,
        dataset=dataset,
        train=train,
        sweep_config=sweep_config,
        final_max_steps=final_max_steps,
        eval_prompts=eval_prompts,
        max_new_tokens=max_new_tokens,
    )
    return final.mlflow_run_id


class MonitorOutputs(NamedTuple):
    decision: RetrainDecision
    drift_run_id: str
    training_run_id: str  # "" when no training started


@workflow
def monitor_wf(
    store: str = "",
    end: Optional[datetime] = None,
    window_hours: int = 24,
    monitor: MonitorConfig = MonitorConfig(),
    decision: DecisionConfig = DecisionConfig(),
    metrics: MetricsConfig = MetricsConfig(),
    track: bool = True,
    start_training: bool = True,
    train_days: int = 30,
    train_agents: list[str] = [],
    train_min_rating: int = 0,
    base_model: str = "",
    dataset: DatasetConfig = DatasetConfig(),
    train: TrainConfig = TrainConfig(),
    sweep_config: SweepConfig = SweepConfig(),
    final_max_steps: int = 0,
    eval_prompts: int = 16,
    max_new_tokens: int = 64,
) -> MonitorOutputs:
    """Drift check of [end - window_hours, end) -> retrain decision -> train_wf on [end - train_days, end) if so."""
    drift = check_drift(
        store=store,
        end=end,
        window_hours=window_hours,
        monitor=monitor,
        decision=decision,
        metrics=metrics,
        track=track,
    )
    gate = training_gate(retrain=drift.retrain, start_training=start_training)
    trained = (
        conditional("retrain")
        .if_(gate.is_true())
        .then(
            retrain_wf(
                store=store,
                end=drift.end,
                days=train_days,
                agents=train_agents,
                min_rating=train_min_rating,
                base_model=base_model,
                dataset=dataset,
                train=train,
                sweep_config=sweep_config,
                final_max_steps=final_max_steps,
                eval_prompts=eval_prompts,
                max_new_tokens=max_new_tokens,
            )
        )
        .else_()
        .then(skip_training())
    )
    return MonitorOutputs(decision=drift.decision, drift_run_id=drift.mlflow_run_id, training_run_id=trained)


drift_hourly = LaunchPlan.get_or_create(
    workflow=monitor_wf,
    name="agentloop.drift_hourly",
    schedule=CronSchedule(schedule="0 * * * *", kickoff_time_input_arg="end"),
    default_inputs={
        "store": CLUSTER.store,
        "decision": DecisionConfig(state_path=CLUSTER.monitor_state),
        "metrics": MetricsConfig(pushgateway_url=CLUSTER.pushgateway),
    },
)
