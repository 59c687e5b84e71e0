"""workflows/train.py: declared for 2xA100 Elastic on the cluster, and runnable end to end under `pyflyte run` here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _serialized(entity):
    from flytekit.configuration import Image, ImageConfig, SerializationSettings
    from flytekit.tools.translator import get_serializable

    settings = SerializationSettings(
        image_config=ImageConfig(default_image=Image(name="default", fqn="agentloop", tag="test"))
    )
    return get_serializable(OrderedDict(), settings, entity).template


def _resources(entries) -> dict[str, str]:
    from flytekit.models.task import Resources

    names = {getattr(Resources.ResourceName, n): n for n in ("CPU", "GPU", "MEMORY", "EPHEMERAL_STORAGE")}
    return {names[e.name]: e.value for e in entries}


def test_final_training_task_is_declared_for_two_a100s_with_elastic():
    from flytekitplugins.kfpytorch import Elastic

    from workflows.train import build_dataset, final_train, sweep

    assert isinstance(final_train.task_config, Elastic)
    assert (final_train.task_config.nnodes, final_train.task_config.nproc_per_node) == (1, 2)
    template = _serialized(final_train)  # what `pyflyte register` sends to the cluster
    assert _resources(template.container.resources.requests)["GPU"] == "2"
    assert _resources(template.container.resources.limits)["GPU"] == "2"
    assert template.extended_resources.gpu_accelerator.device == "nvidia-tesla-a100"
    assert template.extended_resources.shared_memory.mount_path == "/dev/shm"  # NCCL between the 2 processes
    # the dataset is cached (keyed by the data fingerprint input); the sweep runs its trials on one GPU
    dataset = _serialized(build_dataset)
    assert dataset.metadata.discoverable and dataset.metadata.discovery_version
    assert "fingerprint" in dataset.interface.inputs
    assert list(dataset.metadata.cache_ignore_input_vars) == [
        "end"
    ]  # it moves every run; the fingerprint decides
    assert _resources(_serialized(sweep).container.resources.requests)["GPU"] == "1"


def _build_store(root: Path) -> Path:
    from features.aggregates import write_agent_daily_stats
    from features.feast_store import FeastConfig, apply
    from features.ingest import IngestConfig, ingest
    from features.sample_logs import generate_sample_logs

    generate_sample_logs(root / "raw", conversations=30, seed=4, progress=False)
    store = root / "store"
    report = ingest([str(root / "raw")], IngestConfig(store=str(store), progress=False))
    assert report.accepted >= 25, report.summary()
    write_agent_daily_stats(str(store))
    apply(FeastConfig(offline_store=str(store)))
    return store


@pytest.mark.slow
def test_train_workflow_runs_under_pyflyte(tmp_path, base_model_dir, mlflow_uri):
    from mlflow.tracking import MlflowClient

    store = _build_store(tmp_path)
    dataset = {"max_seq_len": 128, "over_long": "truncate", "val_fraction": 0.15, "test_fraction": 0.15}
    train = {
        "max_steps": 2,
        "eval_every": 1,
        "micro_batch_size": 1,
        "grad_accum_steps": 2,
        "warmup_steps": 0,
        "checkpoint_every": 0,
        "mlflow_experiment": "test-train-wf",
        "num_threads": 1,
    }
    sweep = {
        "study_name": "wf-test",
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
        "n_trials": 2,
        "lora_r": [4],
        "max_steps": [2],
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
            "workflows/train.py",
            "train_wf",
            "--store",
            str(store),
            "--dataset",
            json.dumps(dataset),
            "--train",
            json.dumps(train),
            "--sweep_config",
            json.dumps(sweep),
            "--final_max_steps",
            "2",
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

    out = re.search(r"TrainOutputs\(adapter_dir=(\S+?), mlflow_run_id='([0-9a-f]+)'\)", proc.stdout)
    assert out, proc.stdout[-3000:]
    adapter_dir, run_id = Path(out.group(1)), out.group(2)
    assert (adapter_dir / "adapter_config.json").is_file()

    client = MlflowClient(mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2", (
        "the final task trains with 2 processes (torch elastic, gloo)"
    )
    assert run.data.params["max_steps"] == "2" and run.data.params["lora_r"] == "4"
    sweep_run = client.get_run(run.data.tags["agentloop.sweep_run_id"])
    assert run.data.tags["flyte.execution_id"] == sweep_run.data.tags["flyte.execution_id"] != ""
    assert sweep_run.data.tags["optuna.study_name"] == "wf-test"
    assert sweep_run.data.metrics["trials_complete"] == 2
    trials = client.search_runs(
        [sweep_run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{sweep_run.info.run_id}'"
    )
    assert len(trials) == 2
    # the evaluation went into the final run: base vs adapter numbers and the per-prompt table
    for name in (
        "eval.validation_loss",
        "eval.base_validation_loss",
        "eval.adapter_rouge_l",
        "eval.base_rouge_l",
    ):
        assert name in run.data.metrics, sorted(run.data.metrics)
    assert "evaluation/generations.json" in {a.path for a in client.list_artifacts(run_id, "evaluation")}
