"""training/sweep.py: an Optuna study on RDB storage whose trials are nested MLflow runs of the real trainer."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from training.sweep import (
    SweepConfig,
    apply_overrides,
    best_adapter,
    load_study,
    make_storage,
    run_sweep,
    suggest,
)

FAKE_SNAPSHOT = SimpleNamespace(
    snapshot_hash="0" * 64, splits={"validation": ["a row"]}
)  # for a fake trainer

# 12 short conversations from the sample logs: a handful of packed rows at seq 128
N_CONVERSATIONS = 12


@pytest.fixture(scope="module")
def tiny_snapshot(base_model_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    from features.raw_sample import read_raw_sample
    from features.sample_logs import generate_sample_logs
    from training.dataset import DatasetConfig, build_snapshot

    raw = tmp_path_factory.mktemp("raw")
    generate_sample_logs(raw, conversations=80, seed=3, progress=False)
    records = [r for r in read_raw_sample(raw, n=80) if len(r["messages"]) <= 7][:N_CONVERSATIONS]
    frame = pd.DataFrame(
        {
            "interaction_id": [r["id"] for r in records],
            "session_id": [r["session_id"] for r in records],
            "agent": [r["agent"] for r in records],
            "messages_json": [json.dumps(r["messages"]) for r in records],
        }
    )
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    snapshot = build_snapshot(
        frame, tokenizer, DatasetConfig(max_seq_len=128, val_fraction=0.15, test_fraction=0.05)
    )
    assert snapshot.splits["train"] and 1 <= len(snapshot.splits["validation"]) <= 3, {
        k: len(v) for k, v in snapshot.splits.items()
    }
    return snapshot


def _base_config(tmp_path: Path, **overrides):
    from training.trainer import TrainConfig

    return replace(
        TrainConfig(),
        **{
            "max_steps": 2,
            "eval_every": 1,
            "micro_batch_size": 1,
            "grad_accum_steps": 1,
            "warmup_steps": 0,
            "checkpoint_every": 0,
            "early_stopping_patience": 0,
            "log_every": 1,
            "num_threads": 2,
            "mlflow_experiment": "test-sweep",
            "output_dir": str(tmp_path / "unused"),
            **overrides,
        },
    )


def _sweep_config(tmp_path: Path, storage: str, **overrides) -> SweepConfig:
    return replace(
        SweepConfig(
            study_name=f"test-{uuid.uuid4().hex[:8]}",
            storage=storage,
            n_trials=3,
            seed=7,
            pruner="median",
            pruner_startup_trials=1,
            learning_rate=[1e-4, 3e-3],
            lora_r=[4, 8],
            lora_alpha_ratio=[2.0],
            lora_dropout=[0.0, 0.1],
            max_steps=[2],
            warmup_fraction=[0.0, 0.25],
            output_dir=str(tmp_path / "sweeps"),
            sampler_startup_trials=2,
        ),
        **overrides,
    )


def _child_runs(client: MlflowClient, parent_run_id: str) -> list:
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


@pytest.mark.filterwarnings("ignore:Fixed parameter")  # the enqueued rates lie outside the searched range
def test_sweep_prunes_and_leaves_nested_runs(mlflow_uri, tmp_path, tiny_snapshot):
    """A learning trial completes, a non-learning one is pruned, a diverging one fails alone; a rerun adds trials."""
    config = _sweep_config(tmp_path, f"sqlite:///{tmp_path / 'optuna.db'}")
    base = _base_config(tmp_path)
    study = load_study(config)
    fixed = {"lora_r": 4, "lora_dropout": 0.0, "warmup_fraction": 0.0}
    study.enqueue_trial({**fixed, "learning_rate": 3e-3})  # 0: learns; the pruner's reference (startup trial)
    study.enqueue_trial({**fixed, "learning_rate": 1e-8})  # 1: learns nothing: worse than 0 at the first eval
    # 2: diverges. A large finite rate is not enough (Adam + clipping + RMSNorm keep the loss finite, ~10.8
    # at lr 1e4 and 1e8 alike); an infinite one makes the first update non-finite: NaN validation loss at step 1
    study.enqueue_trial({**fixed, "learning_rate": float("inf")})

    result = run_sweep(config, base, tiny_snapshot)

    study = load_study(config)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL], [
        (t.number, t.state, t.intermediate_values, t.user_attrs.get("error")) for t in study.trials
    ]
    assert "validation loss is nan at step 1" in study.trials[2].user_attrs["error"]
    assert (result.n_trials, result.n_complete, result.n_pruned, result.n_failed) == (3, 1, 1, 1)
    assert result.best_trial_number == 0 and not result.retrained
    assert result.best_value == pytest.approx(study.trials[0].value)
    assert (Path(result.best_adapter_dir) / "adapter_config.json").is_file()
    assert result.best_adapter_dir == study.trials[0].user_attrs["adapter_dir"]
    # the pruner saw every evaluation of the complete trial
    assert sorted(study.trials[0].intermediate_values) == [1, 2]

    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna.study_name"] == config.study_name
    assert parent.data.tags["optuna.best_trial"] == "0"
    assert parent.data.metrics["trials_pruned"] == 1 and parent.data.metrics["trials_failed"] == 1
    children = {int(r.data.tags["optuna.trial_number"]): r for r in _child_runs(client, result.parent_run_id)}
    assert {n: r.data.tags["optuna.trial_state"] for n, r in children.items()} == {
        0: "COMPLETE",
        1: "PRUNED",
        2: "FAIL",
    }
    assert {n: r.info.status for n, r in children.items()} == {0: "FINISHED", 1: "KILLED", 2: "FAILED"}
    assert children[0].info.run_id == result.best_run_id
    assert "pruned at step 1" in children[1].data.tags["optuna.note"]
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "optuna")}
    assert {
        "optuna/optimization_history.html",
        "optuna/optimization_history.png",
        "optuna/intermediate_values.html",
        "optuna/trials.csv",
    } <= artifacts

    # the same study again: trials are added (TPE, reseeded past the first session), under the same parent run
    again = run_sweep(replace(config, n_trials=1), base, tiny_snapshot)
    study = load_study(config)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert [t.state for t in study.trials[:3]] == states
    assert study.trials[3].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert again.parent_run_id == result.parent_run_id and again.n_trials == 4
    assert len(_child_runs(client, result.parent_run_id)) == 4
    if again.n_complete >= 2:
        assert "optuna/param_importances.html" in {
            a.path for a in client.list_artifacts(again.parent_run_id, "optuna")
        }


def _fake_train(calls: list):
    """A stand-in for training.trainer.train that writes an adapter folder and records how it was called."""

    def train(
        config, snapshot, *, on_eval=None, mlflow_parent_run_id=None, resume=True, flyte_execution_id=""
    ):
        calls.append({"config": config, "parent": mlflow_parent_run_id})
        out = Path(config.output_dir) / "adapter"
        out.mkdir(parents=True, exist_ok=True)
        (out / "adapter_config.json").write_text("{}")
        if on_eval:
            on_eval(1, 3.0 - config.learning_rate)
        return SimpleNamespace(
            adapter_dir=str(out),
            best_val_loss=3.0 - config.learning_rate,
            steps=1,
            mlflow_run_id=f"run-{len(calls)}",
        )

    return train


def test_best_adapter_is_reused_and_trained_again_only_when_its_folder_is_gone(
    mlflow_uri, tmp_path, monkeypatch
):
    import shutil

    import training.trainer

    calls: list = []
    monkeypatch.setattr(training.trainer, "train", _fake_train(calls))
    config = _sweep_config(tmp_path, f"sqlite:///{tmp_path / 'optuna.db'}", n_trials=2)
    base, snapshot = _base_config(tmp_path), FAKE_SNAPSHOT
    result = run_sweep(config, base, snapshot)
    assert len(calls) == 2 and not result.retrained  # the trial's own adapter, not a third training
    assert result.best_adapter_dir == calls[result.best_trial_number]["config"].output_dir + "/adapter"

    assert best_adapter(config, base, snapshot) == (result.best_adapter_dir, result.best_run_id, False)
    shutil.rmtree(Path(result.best_adapter_dir))  # e.g. the sweep ran in another pod
    adapter_dir, run_id, retrained = best_adapter(config, base, snapshot)
    assert retrained and (Path(adapter_dir) / "adapter_config.json").is_file() and run_id == "run-3"
    again = calls[-1]
    assert again["parent"] == result.parent_run_id  # nested under the sweep, like the trials
    assert again["config"] == apply_overrides(
        base,
        {
            **result.best_overrides,
            "output_dir": again["config"].output_dir,
            "run_name": again["config"].run_name,
        },
    )
    assert again["config"].lora_r == result.best_overrides["lora_r"]


@pytest.mark.services("postgres")
def test_sweep_on_postgres_storage(mlflow_uri, tmp_path, tiny_snapshot):
    import psycopg2

    db = f"agentloop_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{db}"')
    try:
        url = f"postgresql://postgres@127.0.0.1:5432/{db}"
        config = _sweep_config(tmp_path, url, n_trials=2, max_steps=[1], pruner="none")
        result = run_sweep(config, _base_config(tmp_path), tiny_snapshot)
        assert result.n_trials == 2 and result.n_complete == 2
        # a fresh connection sees the study (this is what lets sweep pods share it on the cluster)
        study = optuna.load_study(study_name=config.study_name, storage=make_storage(config))
        assert len(study.trials) == 2 and study.best_trial.number == result.best_trial_number
        assert study.user_attrs["mlflow_parent_run_id"] == result.parent_run_id
        assert (
            "postgresql" in MlflowClient(mlflow_uri).get_run(result.parent_run_id).data.tags["optuna.storage"]
        )
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


# --- cheap: no model ---------------------------------------------------------------------------------


def test_search_space_bounds_and_fixed_parameters():
    from training.trainer import TrainConfig

    config = SweepConfig(
        learning_rate=[1e-5, 1e-3],
        lora_r=[8, 16],
        lora_alpha_ratio=[2.0],
        lora_dropout=[0.05, 0.05],
        max_steps=[100, 200],
        warmup_fraction=[0.0, 0.1],
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        o = suggest(trial, config, TrainConfig())
        assert 1e-5 <= o["learning_rate"] <= 1e-3 and o["lora_r"] in (8, 16)
        assert o["lora_alpha"] == 2.0 * o["lora_r"] and o["lora_dropout"] == 0.05
        assert 0 <= o["warmup_steps"] <= 0.1 * o["max_steps"] + 1
        # fixed parameters are not searched: they would only add noise to the importance plot
        assert set(trial.params) == {"learning_rate", "lora_r", "max_steps", "warmup_fraction"}
        study.tell(trial, 1.0)
    cfg = apply_overrides(TrainConfig(), json.loads(json.dumps(o)))  # JSON round trip, as in trial user attrs
    assert isinstance(cfg.lora_r, int) and cfg.lora_r == o["lora_r"]
    with pytest.raises(KeyError, match="not TrainConfig fields"):
        apply_overrides(TrainConfig(), {"lora_rank": 8})
    with pytest.raises(ValueError, match="low must be > 0"):
        SweepConfig(learning_rate=[0.0, 1e-3])


def test_out_of_memory_fails_only_its_trial_but_a_bug_stops_the_sweep(mlflow_uri, tmp_path, monkeypatch):
    """Failure isolation is for failures of a configuration, not for errors in the code."""
    import training.trainer

    calls = []

    def fake_train(
        config, snapshot, *, on_eval=None, mlflow_parent_run_id=None, resume=True, flyte_execution_id=""
    ):
        calls.append(config.run_name)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if len(calls) == 2:
            out = Path(config.output_dir) / "adapter"
            out.mkdir(parents=True)
            (out / "adapter_config.json").write_text("{}")
            on_eval(1, 2.5)
            return SimpleNamespace(adapter_dir=str(out), best_val_loss=2.5, mlflow_run_id="", steps=1)
        raise RuntimeError("shapes (3, 4) and (5, 6) do not match")

    monkeypatch.setattr(training.trainer, "train", fake_train)
    config = _sweep_config(tmp_path, f"sqlite:///{tmp_path / 'optuna.db'}", n_trials=2)
    result = run_sweep(config, _base_config(tmp_path), FAKE_SNAPSHOT)
    assert (result.n_failed, result.n_complete, result.best_trial_number) == (1, 1, 1)
    client = MlflowClient(mlflow_uri)
    stub = [r for r in _child_runs(client, result.parent_run_id) if r.data.tags["optuna.trial_number"] == "0"]
    assert stub and stub[0].info.status == "FAILED" and "out of memory" in stub[0].data.tags["optuna.note"]

    with pytest.raises(RuntimeError, match="do not match"):
        run_sweep(replace(config, n_trials=1), _base_config(tmp_path), FAKE_SNAPSHOT)
    assert load_study(config).trials[-1].state == TrialState.FAIL
    assert client.get_run(result.parent_run_id).info.status == "FAILED"
