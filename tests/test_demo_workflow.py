"""The foundation demo runs under `pyflyte run` in a subprocess and leaves a real MLflow run."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from features.mlflow_experiments import ui_link
from features.sample_logs import generate_sample_logs

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_workflow_replies_and_logs_to_mlflow(tmp_path, mlflow_uri, base_model_dir):
    raw = tmp_path / "raw"
    generate_sample_logs(raw, conversations=40, seed=3)
    pyflyte = Path(sys.executable).with_name("pyflyte")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "AGENTLOOP_BASE_MODEL_DIR": str(base_model_dir)}
    proc = subprocess.run(
        [
            str(pyflyte),
            "run",
            "workflows/demo.py",
            "base_model_demo",
            "--raw_dir",
            str(raw),
            "--n",
            "2",
            "--max_new_tokens",
            "12",
            "--experiment",
            "test-demo",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    match = re.search(r"run_id=([0-9a-f]{32}) url=(\S+)", proc.stdout)
    assert match, proc.stdout[-2000:]
    run_id, url = match.groups()
    run = MlflowClient(mlflow_uri).get_run(run_id)
    # the run's page, in the UI's model-training view
    assert url == ui_link(mlflow_uri, f"experiments/{run.info.experiment_id}/runs/{run_id}")
    assert run.data.params["sample.size"] == "2"
    identity = json.loads((base_model_dir / "agentloop-identity.json").read_text())
    assert run.data.params["base_model.weights_sha256"] == identity["weights_sha256"]
    assert run.data.tags["flyte.execution_id"], "run is linked to the Flyte execution"
    logged = mlflow.artifacts.load_dict(f"runs:/{run_id}/sample_replies.json")
    table = pd.DataFrame(logged["data"], columns=logged["columns"])
    assert len(table) == 2
    assert table["model_reply"].str.len().min() > 0
    assert set(table.columns) >= {"interaction_id", "agent", "prompt", "agent_reply", "model_reply"}
