"""workflows/lifecycle.py: one round of the loop under `pyflyte run`, against the real local MLflow and vLLM servers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
MODEL = "agentloop-lifecycle-test"  # its own registered model and served name: other tests share the servers
KEY_ENV = "AGENTLOOP_LIFECYCLE_TEST_VLLM_KEY"


def test_lifecycle_workflow_wires_every_stage_into_the_next():
    """Each stage reads what the one before produced (lineage in the Flyte graph), drift after promotion."""
    from workflows.lifecycle import lifecycle_wf

    names = {n.id: n.metadata.name for n in lifecycle_wf.nodes}
    upstream = {
        names[n.id].split(".")[-1]: {names[u.id].split(".")[-1] for u in n.upstream_nodes}
        for n in lifecycle_wf.nodes
    }
    assert upstream["ingested_store"] >= {"ingest_logs", "refresh_feast"}
    assert "ingested_store" in upstream["fingerprint_training_data"]
    assert {"build_dataset"} <= upstream["sweep"] and {"sweep", "build_dataset"} <= upstream["final_train"]
    # the gate runs after the evaluation, whose tool-call outcomes it reuses
    assert {"final_train", "frozen_eval_set", "training_window", "evaluate"} <= upstream["promote_wf"]
    assert (
        "promote_wf" in upstream["watching"] and "watching" in upstream["check_drift"]
    )  # after the promotion
    assert {"promote_wf", "check_drift", "evaluate"} <= upstream["what_to_check"]


@pytest.mark.slow
# a whole round (sweep, training, evaluation, gate, promotion, drift) in fp32 on an AVX2-only CPU (no fast bf16)
# took past the suite's 1,200 s under load; the subprocess keeps its own 2,400 s limit
@pytest.mark.timeout(2700)
def test_lifecycle_round_registers_promotes_serves_and_checks_drift(
    tmp_path, base_model_dir, mlflow_uri, promotion_vllm
):
    from mlflow.tracking import MlflowClient

    from features.sample_logs import generate_sample_logs

    generate_sample_logs(tmp_path / "raw", conversations=80, seed=7, progress=False)
    dataset = {"max_seq_len": 128, "over_long": "truncate", "val_fraction": 0.15, "test_fraction": 0.15}
    train = {
        "max_steps": 3,
        "eval_every": 1,
        "micro_batch_size": 2,
        "grad_accum_steps": 2,
        "warmup_steps": 0,
        "checkpoint_every": 0,
        "mlflow_experiment": "test-lifecycle",
        "num_threads": 1,
    }
    sweep = {
        "study_name": "lifecycle-test",
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
        "n_trials": 2,
        "lora_r": [8],
        "learning_rate": [1e-3, 2e-3],
        "max_steps": [3],
        "pruner": "none",
        "output_dir": str(tmp_path / "sweeps"),
    }
    # a few steps lower the loss for sure; ROUGE-L of 8-token replies is noise, so only "not far worse" here
    gate = {"loss_margin": 0.0, "rouge_margin": -1.0, "max_empty_share": 1.0, "max_new_tokens": 8}
    promote = {
        "replica_urls": [promotion_vllm.base_url],
        "api_key_env": KEY_ENV,
        "store": str(tmp_path / "models"),
        "manifest_path": str(tmp_path / "serving-manifest.json"),
        "k8s_dir": str(tmp_path / "k8s"),
        "smoke_max_tokens": 8,
        "tracking_uri": mlflow_uri,
    }
    monitor = {"min_rows": 5, "embedding_sample": 64, "per_agent": False}
    decision = {"state_path": str(tmp_path / "decision_state.json")}
    metrics = {"textfile": str(tmp_path / "agentloop_drift.prom")}
    env = {
        **os.environ,
        "AGENTLOOP_HOME": str(tmp_path / "home"),
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "AGENTLOOP_BASE_MODEL_DIR": str(base_model_dir),
        KEY_ENV: promotion_vllm.api_key,
    }
    env.pop("AGENTLOOP_OFFLINE_STORE", None)
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("pyflyte")),
            "run",
            "workflows/lifecycle.py",
            "lifecycle_wf",
            "--sources",
            json.dumps([str(tmp_path / "raw")]),
            "--store",
            str(tmp_path / "store"),
            "--model_name",
            MODEL,
            "--dataset",
            json.dumps(dataset),
            "--train",
            json.dumps(train),
            "--sweep_config",
            json.dumps(sweep),
            "--final_max_steps",
            "3",
            "--eval_prompts",
            "2",
            "--max_new_tokens",
            "8",
            "--gate_config",
            json.dumps(gate),
            "--promote_config",
            json.dumps(promote),
            "--drift_window_hours",
            "72",
            "--monitor",
            json.dumps(monitor),
            "--decision",
            json.dumps(decision),
            "--metrics",
            json.dumps(metrics),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-8000:]
    assert f"== agentloop round: {MODEL} v1, gate decision: PROMOTE" in proc.stdout, proc.stdout[-4000:]

    # MLflow: the version is @champion, with the lineage the monitoring reads
    client = MlflowClient(mlflow_uri)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1"
    assert champion.tags["agentloop.gate.decision"] == "promote"
    assert champion.tags["agentloop.data_start"] < champion.tags["agentloop.data_end"]
    training_run = client.get_run(
        champion.run_id if champion.run_id else champion.tags["agentloop.training_run_id"]
    )
    assert training_run.data.params["world_size"] == "2"

    # vLLM serves the adapter under the model's name, and it answers
    headers = {"Authorization": f"Bearer {promotion_vllm.api_key}"}
    models = requests.get(f"{promotion_vllm.base_url}/v1/models", headers=headers, timeout=30).json()["data"]
    assert MODEL in {m["id"] for m in models}
    r = requests.post(
        f"{promotion_vllm.base_url}/v1/chat/completions",
        headers=headers,
        timeout=120,
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi there!"}], "max_tokens": 8},
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip()
    assert re.search(rf"adapter {MODEL}\s+\(\d", proc.stdout), "the report shows the adapter's reply"

    # the drift check ran after the promotion, against the new champion, and left its report
    drift = re.search(r"drift report:\s+\S+/runs/([0-9a-f]+)", proc.stdout)
    assert drift, proc.stdout[-3000:]
    run = client.get_run(drift.group(1))
    assert run.data.tags.get("agentloop.champion_version") == "1"
    assert any(
        a.path.endswith(".html")
        for a in client.list_artifacts(run.info.run_id)
        for a in ([a] if not a.is_dir else client.list_artifacts(run.info.run_id, a.path))
    )
    assert (tmp_path / "agentloop_drift.prom").read_text().count("agentloop_drift_share") >= 1


def test_the_report_shows_base_vs_adapter_tool_accuracy_and_one_held_out_call_side_by_side(mlflow_uri):
    import mlflow
    import pandas as pd

    from serving.lifecycle_report import tool_call_lines
    from tests.test_evaluate import parcel_example
    from training.eval_set import EvalSet
    from training.evaluate import log_tool_outcomes, tool_cache_key

    examples = [parcel_example(1), parcel_example(2)]
    right = '<tool_call>\n{"name": "get_parcel_status", "arguments": {"tracking_number": "PX-1002"}}\n</tool_call>'
    table = pd.DataFrame(
        {
            "id": ["parcel_1", "parcel_2"],
            "category": ["simple_python"] * 2,
            "expected": ["call"] * 2,
            "correct": [False, True],
            "error_type": ["simple_function_checker:wrong_count", ""],
            "n_calls": [0, 1],
            "malformed": ["", ""],
            "output": ["I cannot help", right],
        }
    )
    mlflow.set_experiment("test-lifecycle-report")
    with mlflow.start_run() as run:
        pass
    base = table.assign(correct=[False, False], output=["I cannot help", "Parcels are great"])
    log_tool_outcomes(
        {"base": base, "adapter": table}, tool_cache_key(examples, "w", 96, 4096), run.info.run_id
    )
    metrics = {
        "tool_n": 2.0,
        "tool_base_accuracy": 0.0,
        "tool_adapter_accuracy": 0.5,
        "tool_base_accuracy_simple_python": 0.0,
        "tool_adapter_accuracy_simple_python": 0.5,
        "tool_n_simple_python": 2.0,
    }
    es = EvalSet([], [], [], "", {}, examples)
    lines = tool_call_lines(metrics, es, run.info.run_id)
    assert lines[0] == "tool calls (2 held-out BFCL calls): base 0.000, adapter 0.500"
    assert "simple_python 0.00/0.50 (2)" in lines[1]
    text = "\n".join(lines)
    assert "held-out call parcel_2" in text and "Where is parcel PX-1002?" in text  # the one they disagree on
    assert "base model (wrong):" in text and "Parcels are great" in text
    assert (
        "adapter (right):" in text and "truth (first possible answer):" in text and text.count("PX-1002") >= 3
    )
