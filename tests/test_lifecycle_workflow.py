"""workflows/lifecycle.py: one round of the loop under `pyflyte run`, against the real local MLflow and vLLM servers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
MODEL = "agentloop-lifecycle-test"  # its own registered model and served name: other tests share the servers
KEY_ENV = "AGENTLOOP_LIFECYCLE_TEST_VLLM_KEY"
HELD_OUT_CALLS = 16
FINAL_STEPS = 30  # 2 processes x 2 rows a step: 120 rows, twice what trained_tool_adapter sees


def parcel_tool_logs(raw: Path, n: int = 48, held_out: int = HELD_OUT_CALLS) -> Path:
    """Parcel-tracking traffic that ends in a tool call, as agents log it (format v2: `tools` offered, the
    assistant's `tool_calls`), and a features.bfcl-style held-out file of other parcel questions.

    Returns the held-out file: under `_heldout/`, which ingestion skips (no held-out call is trained on).
    The logged calls ask for PX-1100.., the held-out ones for PX-1000.. (tests.test_evaluate.parcel_example)."""
    from tests.test_evaluate import PARCEL_TOOL, parcel_example

    end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    (raw / "parcel").mkdir(parents=True, exist_ok=True)
    with open(raw / "parcel" / "agent-jamie.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            number = f"PX-{1100 + i}"
            call = {"name": "get_parcel_status", "arguments": json.dumps({"tracking_number": number})}
            record = {
                "id": f"parcel-call-{i:03d}",
                "agent": "agent-jamie",
                "session_id": f"parcel-session-{i:03d}",
                "timestamp": (end - timedelta(hours=3 * i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "messages": [
                    {"role": "system", "content": "You are a parcel agent."},
                    {"role": "user", "content": f"Where is parcel {number}?"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{"id": "call_0", "type": "function", "function": call}],
                    },
                ],
                "tools": [PARCEL_TOOL],
            }
            f.write(json.dumps(record) + "\n")
    heldout = raw / "_heldout" / "bfcl-heldout.jsonl"
    heldout.parent.mkdir(parents=True, exist_ok=True)
    heldout.write_text("".join(json.dumps(parcel_example(i)) + "\n" for i in range(held_out)))
    return heldout


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
@pytest.mark.timeout(2700)  # a real training budget on 2 CPU cores: longer than the suite's 1200 s default
def test_lifecycle_round_registers_promotes_serves_and_checks_drift(
    tmp_path, base_model_dir, mlflow_uri, promotion_vllm
):
    from mlflow.tracking import MlflowClient

    from features.sample_logs import generate_sample_logs

    # chat traffic (the drift check's rows, the gate's chat prompts) and parcel traffic that calls a tool:
    # the scope has tool calls, so the gate judges the challenger by tool-call accuracy on held-out calls
    generate_sample_logs(tmp_path / "raw", conversations=24, seed=7, progress=False)
    heldout = parcel_tool_logs(tmp_path / "raw")
    # a parcel conversation with its tools block renders to ~280 tokens: 384 holds it whole
    dataset = {"max_seq_len": 384, "over_long": "truncate", "val_fraction": 0.15, "test_fraction": 0.15}
    train = {
        "max_steps": 3,
        "eval_every": 0,
        "micro_batch_size": 2,
        "grad_accum_steps": 2,  # global: one micro-batch a step on each of the 2 processes
        "warmup_steps": 0,
        "checkpoint_every": 0,
        "mlflow_experiment": "test-lifecycle",
        "num_threads": 1,
        # fp32: bf16 autocast is emulated on a CPU without AVX512-BF16/AMX (a 2-step bf16 trial took 10 min
        # on the 2-core CI box, an fp32 step of 2x384 tokens 14 s)
        "bf16": False,
    }
    # The sweep is wired and runs, on one short trial; the search space is pinned (lr 2e-3, r 8, alpha 16,
    # no dropout or warmup) because the final budget below is sized for it: the smallest budget that
    # teaches SmolLM2-135M the parcel call (tests/conftest.py trained_tool_adapter: 30 steps at 2e-3).
    sweep = {
        "study_name": "lifecycle-test",
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
        "n_trials": 1,
        "lora_r": [8],
        "lora_alpha_ratio": [2.0],
        "lora_dropout": [0.0, 0.0],
        "warmup_fraction": [0.0, 0.0],
        "learning_rate": [2e-3, 2e-3],
        "max_steps": [2],
        "pruner": "none",
        "output_dir": str(tmp_path / "sweeps"),
    }
    # The gate's defaults, nothing loosened: loss strictly below the base model's, no empty chat reply, no
    # safety finding, tool-call accuracy above the base model's with McNemar p < 0.05 on the held-out calls,
    # at the evaluation's budgets (the gate reuses its tool-call outcomes). An empty dict: the defaults.
    gate: dict = {}
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
    # pyflyte's output goes to files, not pipes: a run stopped by a timeout (or the OOM killer) leaves its log
    out_log, err_log = tmp_path / "pyflyte.out", tmp_path / "pyflyte.err"
    with open(out_log, "w") as out, open(err_log, "w") as err:
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
                str(FINAL_STEPS),
                "--eval_prompts",
                "2",
                "--max_new_tokens",
                "8",
                "--tool_heldout",
                str(heldout),
                "--eval_tool_calls",
                str(HELD_OUT_CALLS),
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
            stdout=out,
            stderr=err,
            text=True,
            timeout=2400,
        )
    stdout = out_log.read_text()
    logs = stdout + err_log.read_text()
    assert proc.returncode == 0, logs[-8000:]
    assert f"== agentloop round: {MODEL} v1, gate decision: PROMOTE" in stdout, stdout[-4000:]

    # MLflow: the version is @champion, with the lineage the monitoring reads
    client = MlflowClient(mlflow_uri)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1"
    assert champion.tags["agentloop.gate.decision"] == "promote"
    # ... on the tool-call metric, at the defaults' confidence: the trained adapter really beats the base model
    tags = champion.tags
    assert (
        tags["agentloop.gate.metric"] == "tool_call_accuracy" and tags["agentloop.gate.tool_alpha"] == "0.05"
    )
    assert float(tags["agentloop.gate.tool_n"]) == HELD_OUT_CALLS
    assert float(tags["agentloop.gate.challenger_tool_accuracy"]) > float(
        tags["agentloop.gate.base_tool_accuracy"]
    )
    assert float(tags["agentloop.gate.vs_base_p"]) < 0.05
    # measured once: the gate reused the evaluation's generations of this very adapter
    assert "tool-call outcomes of base and challenger reused" in champion.description, champion.description
    assert float(tags["agentloop.gate.challenger_loss"]) < float(tags["agentloop.gate.base_loss"])
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
    assert re.search(rf"adapter {MODEL}\s+\(\d", stdout), "the report shows the adapter's reply"

    # the drift check ran after the promotion, against the new champion, and left its report
    drift = re.search(r"drift report:\s+\S+/runs/([0-9a-f]+)", stdout)
    assert drift, stdout[-3000:]
    run = client.get_run(drift.group(1))
    assert run.data.tags.get("agentloop.champion_version") == "1"
    assert any(
        a.path.endswith(".html")
        for a in client.list_artifacts(run.info.run_id)
        for a in ([a] if not a.is_dir else client.list_artifacts(run.info.run_id, a.path))
    )
    assert (tmp_path / "agentloop_drift.prom").read_text().count("agentloop_drift_share") >= 1

    # The same gate refuses what training did not improve: the champion's adapter with its LoRA B matrices
    # zeroed (the base model's replies exactly), on the same frozen eval set and the same training run
    from serving.gate import GateConfig, run_gate
    from serving.registry import download_version, version_artifact
    from tests.conftest import register, scaled_adapter

    v1 = download_version(MODEL, "1", tmp_path / "v1", mlflow_uri)
    untrained = scaled_adapter(version_artifact(v1, "adapter"), tmp_path / "untrained" / "adapter", scale=0.0)
    v2 = register(untrained, training_run.info.run_id, version_artifact(v1, "eval_set"), MODEL)
    # (the training run's tool-call outcomes are the trained adapter's: the gate must not reuse them here)
    refused = run_gate(MODEL, v2.version, GateConfig(tracking_uri=mlflow_uri))
    assert not refused.promote
    assert refused.metrics["challenger_tool_accuracy"] == refused.metrics["base_tool_accuracy"]
    assert any("is not above the base model's" in r for r in refused.reasons), refused.reasons
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"


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
