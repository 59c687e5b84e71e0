"""workflows/monitor.py: the hourly drift check under Flyte, and the branch that starts training on drift."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pandas as pd
import pytest

from tests.test_feast_store import write_store
from tests.test_monitor import CURRENT_END, DAYS, END, read_sample_rows, with_new_topic

ROOT = Path(__file__).resolve().parents[1]


def _serialized(entity):
    from flytekit.configuration import Image, ImageConfig, SerializationSettings
    from flytekit.tools.translator import get_serializable

    settings = SerializationSettings(
        image_config=ImageConfig(default_image=Image(name="default", fqn="agentloop", tag="test"))
    )
    return get_serializable(OrderedDict(), settings, entity)


def test_drift_hourly_runs_every_hour_with_the_schedule_time_as_end():
    from workflows.monitor import drift_hourly

    schedule = drift_hourly.schedule
    assert drift_hourly.name == "agentloop.drift_hourly"
    assert schedule.cron_schedule.schedule == "0 * * * *" and schedule.kickoff_time_input_arg == "end"
    defaults = drift_hourly.parameters.parameters
    assert defaults["store"].default.scalar.primitive.string_value.startswith("s3://")


def test_a_retrain_decision_branches_into_the_training_workflow():
    from workflows.monitor import monitor_wf

    nodes = _serialized(monitor_wf).template.nodes
    branch = next(n for n in nodes if n.branch_node is not None).branch_node.if_else
    spec = _serialized(monitor_wf)
    assert branch.case.then_node.workflow_node.sub_workflow_ref.name == "workflows.monitor.retrain_wf"
    retrain = next(w for w in spec.sub_workflows if w.id.name == "workflows.monitor.retrain_wf")
    assert [n.workflow_node.sub_workflow_ref.name for n in retrain.nodes] == ["workflows.train.train_wf"]
    assert branch.else_node.task_node.reference_id.name == "workflows.monitor.skip_training"
    gate = next(
        n
        for n in nodes
        if n.task_node is not None and n.task_node.reference_id.name == "workflows.monitor.training_gate"
    )
    assert branch.case.condition.comparison.left_value.var == f"{gate.id}.o0"


def _store_with_a_new_topic_on_the_last_day(root: Path) -> Path:
    from features.feast_store import FeastConfig, apply
    from features.sample_logs import generate_sample_logs

    generate_sample_logs(root / "raw", conversations=400, days=DAYS, seed=11, end_date=END, progress=False)
    frame = pd.DataFrame(read_sample_rows(root / "raw"))
    last = frame["day"] == END.isoformat()
    frame = pd.concat([frame[~last], with_new_topic(frame[last], seed=1)], ignore_index=True)
    store = root / "store"
    write_store(store, frame.to_dict("records"))
    apply(FeastConfig(offline_store=str(store)))
    return store


def _monitor_config(tmp_path: Path) -> dict:
    # a registered model nobody else creates: the fixed reference window (the days before) is used
    return {
        "registered_model": f"agentloop-chat-wf-{tmp_path.name}",
        "reference_days": 6,
        "embedding_sample": 300,
        "min_rows": 20,
    }


@pytest.mark.slow
def test_no_retraining_starts_when_the_decision_may_not_start_it(tmp_path, monkeypatch):
    """A local execution of the workflow (no MLflow): the check runs, the gate says no, the branch skips."""
    from serving.monitoring.decision import DecisionConfig
    from serving.monitoring.drift import MonitorConfig
    from serving.monitoring.metrics import MetricsConfig
    from workflows.monitor import monitor_wf

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = _store_with_a_new_topic_on_the_last_day(tmp_path)
    out = monitor_wf(
        store=str(store),
        end=CURRENT_END,
        window_hours=24,
        monitor=MonitorConfig(**_monitor_config(tmp_path)),
        decision=DecisionConfig(state_path=str(tmp_path / "state.json")),
        metrics=MetricsConfig(textfile=str(tmp_path / "drift.prom")),
        start_training=False,
    )
    assert out.decision.retrain, out.decision.reasons  # the decision itself says retrain ...
    assert out.training_run_id == "" and out.drift_run_id == ""  # ... but this run may not start it
    assert "agentloop_retrain_recommended 1.0" in (tmp_path / "drift.prom").read_text()


@pytest.mark.slow
def test_monitor_workflow_runs_under_pyflyte_and_starts_training_on_drift(
    tmp_path, base_model_dir, mlflow_uri
):
    from mlflow.tracking import MlflowClient
    from prometheus_client.parser import text_string_to_metric_families

    store = _store_with_a_new_topic_on_the_last_day(tmp_path)
    dataset = {"max_seq_len": 128, "over_long": "truncate", "val_fraction": 0.15, "test_fraction": 0.15}
    train = {
        "max_steps": 1,
        "eval_every": 1,
        "micro_batch_size": 1,
        "grad_accum_steps": 2,
        "warmup_steps": 0,
        "checkpoint_every": 0,
        "mlflow_experiment": "test-monitor-wf-train",
        "num_threads": 1,
    }
    sweep = {
        "study_name": "monitor-wf-test",
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
        "n_trials": 1,
        "lora_r": [4],
        "max_steps": [1],
        "pruner": "none",
        "output_dir": str(tmp_path / "sweeps"),
    }
    env = {
        **os.environ,
        "AGENTLOOP_HOME": str(tmp_path / "home"),
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "AGENTLOOP_BASE_MODEL_DIR": str(base_model_dir),
    }
    env.pop("AGENTLOOP_OFFLINE_STORE", None)
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("pyflyte")),
            "run",
            "workflows/monitor.py",
            "monitor_wf",
            "--store",
            str(store),
            "--end",
            CURRENT_END.strftime("%Y-%m-%dT%H:%M:%S"),
            "--window_hours",
            "24",
            "--monitor",
            json.dumps(_monitor_config(tmp_path)),
            "--decision",
            json.dumps({"state_path": str(tmp_path / "state.json")}),
            "--metrics",
            json.dumps({"textfile": str(tmp_path / "drift.prom")}),
            "--train_days",
            "7",
            "--dataset",
            json.dumps(dataset),
            "--train",
            json.dumps(train),
            "--sweep_config",
            json.dumps(sweep),
            "--final_max_steps",
            "1",
            "--eval_prompts",
            "2",
            "--max_new_tokens",
            "4",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-6000:]
    assert "RETRAIN: " in logs and "topic drift in last_user_message" in logs

    client = MlflowClient(mlflow_uri)
    drift_runs = client.search_runs(
        [client.get_experiment_by_name("monitoring").experiment_id],
        filter_string="tags.agentloop.retrain_recommended = 'true'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert drift_runs, "the drift check's MLflow run"
    drift_run = drift_runs[0]
    assert drift_run.data.tags["agentloop.reference_source"] == "fixed"
    assert drift_run.data.tags["flyte.execution_id"]
    assert {"drift_report.html", "drift_report.json"} <= {
        a.path for a in client.list_artifacts(drift_run.info.run_id)
    }

    training_run_id = re.search(r"training_run_id='([0-9a-f]+)'", proc.stdout)
    assert training_run_id, proc.stdout[-3000:]
    trained = client.get_run(training_run_id.group(1))
    assert trained.info.status == "FINISHED"
    assert trained.data.tags["flyte.execution_id"] == drift_run.data.tags["flyte.execution_id"], (
        "one execution"
    )

    families = {f.name for f in text_string_to_metric_families((tmp_path / "drift.prom").read_text())}
    assert {"agentloop_drift_share", "agentloop_retrain_recommended"} <= families
