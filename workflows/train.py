"""Train an adapter: Feast training set -> dataset snapshot (cached) -> Optuna sweep -> final training -> evaluation.

    pyflyte run workflows/train.py train_wf --days 30 \\
        --sweep_config '{"n_trials": 8}' --train '{"max_steps": 200, "eval_every": 25}' --final_max_steps 600

MLFLOW_TRACKING_URI says which MLflow server receives the runs: the sweep (a parent run, one child
per trial), the final training run and its evaluation (table + metrics, in the final run).

The final training task is declared for the cluster: an Elastic PyTorch task on one node with two
processes, 2 A100s and nccl. `pyflyte run` (local) runs the same declaration through torch elastic's
launcher, so locally it is two CPU processes on gloo: the distributed path is the one tested.

Caching. The dataset task is cached by Flyte on a fingerprint of what the snapshot is made of (the
interaction ids and content Feast returns for the window, the dataset config and the tokenizer), so
a rerun on unchanged data reuses the snapshot, and late-arriving data in the window invalidates it.
Bump DATASET_CACHE_VERSION when training/dataset.py changes how rows are built.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple, Optional

from flytekit import Cache, Resources, current_context, task, workflow
from flytekit.extras.accelerators import A100
from flytekit.types.directory import FlyteDirectory
from flytekitplugins.kfpytorch import Elastic

from features.feast_store import FeastConfig, get_training_frame
from training.base_model import agentloop_home, resolve_base_model
from training.dataset import DatasetConfig, DatasetSnapshot, build_snapshot, tokenizer_identity
from training.evaluate import evaluate_adapter, held_out_prompts, log_evaluation, select_tool_examples
from training.sweep import SweepConfig, apply_overrides, run_sweep
from training.trainer import TrainConfig, train
from workflows.context import execution_id
from workflows.images import CPU_IMAGE, TRAIN_IMAGE

DATASET_CACHE_VERSION = "1"
FINAL_NPROC = 2  # processes (GPUs) of the final training task


def _feast(store: str):
    local = store and "://" not in store
    return FeastConfig(offline_store=os.path.abspath(os.path.expanduser(store)) if local else store)


def training_frame(store: str, end: datetime, days: int, agents: list[str], min_rating: int):
    """The training frame of [end - days, end) (features.feast_store: the only way training reads data)."""

    return get_training_frame(
        _feast(store),
        end - timedelta(days=days),
        end,
        agents=agents or None,
        min_rating=min_rating if min_rating > 0 else None,
    )


def held_out_tool_examples(tool_heldout: str, n: int) -> list[dict]:
    """n held-out tool-call examples of features.bfcl's file (`<raw dir>/_heldout/bfcl-heldout.jsonl`), chosen
    by a seeded hash of their ids: the evaluation and the frozen eval set pick the same ones. [] when no file
    is named or n is 0 (a chat-only scope)."""
    from features.bfcl import read_heldout

    if not tool_heldout or n == 0:
        return []
    path = Path(os.path.expanduser(tool_heldout))
    if not path.is_file():
        raise FileNotFoundError(
            f"held-out tool calls {path} not found: write them with `python -m features.bfcl --out <raw dir>` "
            "or pass tool_heldout=''"
        )
    return select_tool_examples(read_heldout(path), n)


def _tokenizer(base_model: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_base_model(base_model or None).path)


class TrainingData(NamedTuple):
    fingerprint: str
    end: datetime  # the window's end, fixed once: every later task reads the same window


@task(requests=Resources(cpu="1", mem="2Gi"), container_image=CPU_IMAGE)
def fingerprint_training_data(
    store: str,
    end: Optional[datetime],
    days: int,
    agents: list[str],
    min_rating: int,
    dataset: DatasetConfig,
    base_model: str,
) -> TrainingData:
    """sha256 of what a snapshot would be built from (the dataset task's cache key), and the window's end."""

    end = end or datetime.now(timezone.utc)
    frame = training_frame(store, end, days, agents, min_rating)
    h = hashlib.sha256()
    for iid, messages in sorted(
        zip(frame["interaction_id"].astype(str), frame["messages_json"].astype(str), strict=True)
    ):
        h.update(iid.encode() + b"\0" + hashlib.sha256(messages.encode()).digest())
    h.update(json.dumps(asdict(dataset), sort_keys=True).encode())
    h.update(tokenizer_identity(_tokenizer(base_model))["sha256"].encode())
    print(
        f"training data: {len(frame)} interactions in [{end - timedelta(days=days)}, {end}), "
        f"fingerprint {h.hexdigest()[:12]}"
    )
    return TrainingData(fingerprint=h.hexdigest(), end=end)


# `end` moves on every scheduled run; the fingerprint already says whether the window's content changed
@task(
    cache=Cache(version=DATASET_CACHE_VERSION, ignored_inputs=("end",)),
    requests=Resources(cpu="2", mem="8Gi"),
    container_image=CPU_IMAGE,
)
def build_dataset(
    fingerprint: str,
    store: str,
    end: datetime,
    days: int,
    agents: list[str],
    min_rating: int,
    dataset: DatasetConfig,
    base_model: str,
) -> FlyteDirectory:
    """The packed, split dataset snapshot (DatasetSnapshot.save), cached on the fingerprint."""

    snapshot = build_snapshot(
        training_frame(store, end, days, agents, min_rating), _tokenizer(base_model), dataset
    )
    if not snapshot.splits["train"] or not snapshot.splits["validation"]:
        raise ValueError(
            f"dataset snapshot {snapshot.snapshot_hash[:12]} has {len(snapshot.splits['train'])} train "
            f"and {len(snapshot.splits['validation'])} validation rows: widen the window (days), "
            "lower min_rating or change the split fractions"
        )
    out = Path(current_context().working_directory) / f"snapshot-{snapshot.snapshot_hash[:12]}"
    snapshot.save(out)
    print(
        f"dataset snapshot {snapshot.snapshot_hash} (fingerprint {fingerprint[:12]}): "
        f"{json.dumps({k: snapshot.stats[k] for k in ('examples', 'tokens', 'rows')})}"
    )
    return FlyteDirectory(str(out))


def load_snapshot(snapshot: FlyteDirectory):
    return DatasetSnapshot.load(snapshot.download())


class SweepOutputs(NamedTuple):
    best: TrainConfig
    sweep_run_id: str


@task(requests=Resources(cpu="4", mem="16Gi", gpu="1"), accelerator=A100, container_image=TRAIN_IMAGE)
def sweep(
    snapshot: FlyteDirectory, train: TrainConfig, sweep: SweepConfig, base_model: str, final_max_steps: int
) -> SweepOutputs:
    """Optuna sweep on short budgets; the best trial's config, at the final step budget when one is given."""

    if base_model:
        train = replace(train, base_model=base_model)
    result = run_sweep(sweep, train, load_snapshot(snapshot), flyte_execution_id=execution_id())
    print(
        f"sweep {result.study_name}: best trial {result.best_trial_number} (val loss {result.best_value:.4f}) of "
        f"{result.n_trials}: {result.n_complete} complete, {result.n_pruned} pruned, {result.n_failed} failed "
        f"in {result.wall_s:.0f}s; MLflow run {result.parent_run_id}"
    )
    best = apply_overrides(train, result.best_overrides)
    if final_max_steps > 0:
        warmup_share = best.warmup_steps / max(best.max_steps, 1)
        best = replace(
            best, max_steps=final_max_steps, warmup_steps=int(round(warmup_share * final_max_steps))
        )
    return SweepOutputs(
        best=replace(best, output_dir="", run_name="final"), sweep_run_id=result.parent_run_id
    )


class TrainOutputs(NamedTuple):
    adapter_dir: FlyteDirectory
    mlflow_run_id: str


@task(
    task_config=Elastic(nnodes=1, nproc_per_node=FINAL_NPROC, increase_shared_mem=False),
    shared_memory=True,
    requests=Resources(cpu="8", mem="32Gi", gpu=str(FINAL_NPROC)),
    limits=Resources(gpu=str(FINAL_NPROC)),
    accelerator=A100,
    container_image=TRAIN_IMAGE,
)
def final_train(snapshot: FlyteDirectory, config: TrainConfig, sweep_run_id: str) -> TrainOutputs:
    """The best config on the full budget: every worker runs this body; rank 0 logs, writes and returns."""
    from mlflow.tracking import MlflowClient

    if not config.output_dir:
        # the same folder in every worker (their working directories differ): named by the execution's output prefix
        key = hashlib.sha256(str(current_context().raw_output_prefix).encode()).hexdigest()[:12]
        config = replace(config, output_dir=str(agentloop_home() / "train" / f"final-{key}"))
    # torch elastic's workers run without the Flyte execution context; the launcher's run id is its name
    flyte_execution_id = execution_id() or os.environ.get("TORCHELASTIC_RUN_ID", "")
    result = train(config, load_snapshot(snapshot), flyte_execution_id=flyte_execution_id)
    if int(os.environ.get("RANK", "0")) == 0 and result.mlflow_run_id:
        MlflowClient().set_tag(result.mlflow_run_id, "agentloop.sweep_run_id", sweep_run_id)
    return TrainOutputs(
        adapter_dir=FlyteDirectory(str(result.adapter_dir)), mlflow_run_id=result.mlflow_run_id or ""
    )


@task(requests=Resources(cpu="4", mem="16Gi", gpu="1"), accelerator=A100, container_image=TRAIN_IMAGE)
def evaluate(
    snapshot: FlyteDirectory,
    adapter_dir: FlyteDirectory,
    mlflow_run_id: str,
    base_model: str,
    store: str,
    end: datetime,
    days: int,
    agents: list[str],
    min_rating: int,
    prompts: int,
    max_new_tokens: int,
    tool_heldout: str = "",
    tool_calls: int = 0,
) -> dict[str, float]:
    """Base vs adapter on the held-out split: loss, perplexity, replies (ROUGE-L, length, refusals) and
    tool-call accuracy on held-out calls -> MLflow (the per-call outcomes too: the gate reuses them)."""

    snap = load_snapshot(snapshot)
    frame = training_frame(store, end, days, agents, min_rating)
    chosen = held_out_prompts(
        frame,
        snap.interaction_ids("test") or snap.interaction_ids("validation"),
        n=prompts,
        dataset_config=snap.config,
    )
    result = evaluate_adapter(
        base_model or None,
        adapter_dir.download(),
        {s: snap.splits[s] for s in ("validation", "test")},
        chosen,
        max_new_tokens=max_new_tokens,
        tool_examples=held_out_tool_examples(tool_heldout, tool_calls),
    )
    if mlflow_run_id and os.environ.get("MLFLOW_TRACKING_URI"):
        log_evaluation(
            result.table,
            result.metrics,
            run_id=mlflow_run_id,
            tool_tables=result.tool_tables,
            tool_key=result.tool_key,
        )
    print("evaluation: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items())))
    return result.metrics


@workflow
def train_wf(
    store: str = "",
    end: Optional[datetime] = None,
    days: int = 30,
    agents: list[str] = [],
    min_rating: int = 0,
    base_model: str = "",
    dataset: DatasetConfig = DatasetConfig(),
    train: TrainConfig = TrainConfig(),
    sweep_config: SweepConfig = SweepConfig(),
    final_max_steps: int = 0,
    eval_prompts: int = 16,
    max_new_tokens: int = 64,
) -> TrainOutputs:
    """Interactions in [end - days, end) -> snapshot -> sweep -> final adapter (2 processes) -> evaluation."""
    data = fingerprint_training_data(
        store=store,
        end=end,
        days=days,
        agents=agents,
        min_rating=min_rating,
        dataset=dataset,
        base_model=base_model,
    )
    snapshot = build_dataset(
        fingerprint=data.fingerprint,
        store=store,
        end=data.end,
        days=days,
        agents=agents,
        min_rating=min_rating,
        dataset=dataset,
        base_model=base_model,
    )
    best = sweep(
        snapshot=snapshot,
        train=train,
        sweep=sweep_config,
        base_model=base_model,
        final_max_steps=final_max_steps,
    )
    final = final_train(snapshot=snapshot, config=best.best, sweep_run_id=best.sweep_run_id)
    evaluate(
        snapshot=snapshot,
        adapter_dir=final.adapter_dir,
        mlflow_run_id=final.mlflow_run_id,
        base_model=base_model,
        store=store,
        end=data.end,
        days=days,
        agents=agents,
        min_rating=min_rating,
        prompts=eval_prompts,
        max_new_tokens=max_new_tokens,
    )
    return final
