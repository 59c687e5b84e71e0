"""The LoRA trainer: loss at label positions, learning, exact resume after SIGKILL, DDP, NaN, MLflow, callbacks.

Small on purpose (rows of 128 tokens, 1-row micro-batches, a handful of steps, one torch thread): the
machine is shared, and 2 OpenMP threads on 2 busy cores ran these 4-7x slower than 1 thread.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from training.checkpoint import latest_checkpoint
from training.dataset import IGNORE, DatasetConfig, build_snapshot, collate
from training.loss import LabelLoss, NonFiniteLossError, label_positions
from training.row_stream import RowStream
from training.trainer import TrainConfig, lr_at, train

REPO = Path(__file__).resolve().parents[1]
SEQ = 128
WORDS = (
    "the quick brown fox jumps over a lazy dog while seven cats watch quietly near old river banks "
    "and tall green trees sway in warm summer wind"
).split()


def conversation(rng: random.Random) -> list[dict]:
    msgs = [{"role": "system", "content": "You are Jamie, an upbeat assistant."}]
    for _ in range(rng.randint(1, 3)):
        msgs.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(3, 12)))})
        msgs.append(
            {"role": "assistant", "content": "Jamie: " + " ".join(rng.choices(WORDS, k=rng.randint(3, 12)))}
        )
    return msgs


@pytest.fixture(scope="module")
def tokenizer(base_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_dir)


@pytest.fixture(scope="module")
def snapshot(tokenizer):
    rng = random.Random(7)
    n = 36
    frame = pd.DataFrame(
        {
            "interaction_id": [f"int-{i:03d}" for i in range(n)],
            "session_id": [f"sess-{i // 2}" for i in range(n)],
            "agent": ["agent-jamie"] * n,
            "messages_json": [json.dumps(conversation(rng)) for _ in range(n)],
        }
    )
    snap = build_snapshot(
        frame, tokenizer, DatasetConfig(max_seq_len=SEQ, val_fraction=0.15, test_fraction=0.1)
    )
    assert len(snap.splits["train"]) >= 6 and snap.splits["validation"], snap.stats["splits"]
    return snap


@pytest.fixture(scope="module")
def snapshot_dir(snapshot, tmp_path_factory) -> Path:
    return snapshot.save(tmp_path_factory.mktemp("snapshot"))


def config(base_model_dir, out: Path, **kw) -> TrainConfig:
    defaults = dict(
        base_model=str(base_model_dir),
        output_dir=str(out),
        micro_batch_size=1,
        grad_accum_steps=2,
        max_steps=3,
        warmup_steps=1,
        learning_rate=1e-3,
        eval_every=0,
        checkpoint_every=0,
        num_threads=1,
        mlflow_experiment="",
        seed=3,
    )
    return TrainConfig(**{**defaults, **kw})


def adapter_tensors(adapter_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(adapter_dir) / "adapter_model.safetensors")


def assert_same_adapter(a, b, rtol=1e-5, atol=1e-7):
    ta, tb = adapter_tensors(a), adapter_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


# --- pure functions ----------------------------------------------------------------------------------


def test_lr_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    c = TrainConfig(learning_rate=1e-3, warmup_steps=4, max_steps=20, min_lr_ratio=0.1)
    lrs = [lr_at(s, c) for s in range(21)]
    assert lrs[:4] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4])
    assert lrs[4] == pytest.approx(1e-3) and lrs[20] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))


def test_row_stream_visits_every_row_once_per_epoch_in_a_seeded_order(snapshot):
    rows = snapshot.splits["train"]
    stream = RowStream(rows, seed=5)
    n = len(rows)
    order = torch.cat([stream.rows(g, 1) for g in range(2 * n)]).tolist()
    assert sorted(order[:n]) == list(range(n)) and sorted(order[n:]) == list(range(n))
    assert order[:n] != order[n:]  # reshuffled per epoch
    assert torch.cat([RowStream(rows, seed=5).rows(g, 1) for g in range(2 * n)]).tolist() == order


def test_latest_checkpoint_ignores_unfinished_writes(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step-000004").mkdir(parents=True)
    (root / "step-000004" / "state.json").write_text("{}")
    (root / ".step-000006.tmpab12").mkdir()  # a writer killed mid-way
    (root / "step-000008").mkdir()  # no state.json: not a checkpoint
    assert latest_checkpoint(tmp_path) == root / "step-000004"


# --- the loss ------------------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_label_only_chunked_loss_equals_full_logits_cross_entropy(base_model_dir, snapshot, one_thread):
    """Gathering hidden states at label positions + LM head in chunks == HF full logits + masked CE."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():  # a non-zero adapter, so its gradient path is exercised too
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    batch = collate(snapshot.splits["train"][:2])
    keep = label_positions(batch["labels"], batch["position_ids"])
    assert 7 * 3 < int(keep.sum()) < keep.numel() / 2  # several chunks; most positions carry no loss

    loss, n = LabelLoss(model, chunk_tokens=7)(**batch)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    targets = batch["labels"][:, 1:].masked_fill(batch["position_ids"][:, 1:] == 0, IGNORE)
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum"
    )
    ref.backward()
    assert n == int((targets != IGNORE).sum())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for k, p in model.named_parameters():
        if p.requires_grad:  # fp32 both ways; only the summation order differs (custom CE backward)
            torch.testing.assert_close(grads[k], p.grad, rtol=1e-3, atol=1e-3 * float(p.grad.abs().max()))


def test_lean_lora_forward_matches_peft(base_model_dir, snapshot, one_thread):
    """The trainer's LoRA forward (no input upcast, scale on the rank-r side, add inside addmm) == PEFT's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from training.peft_model import lean_lora_forward

    def build():
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
        model = get_peft_model(
            base,
            LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"]),
        )
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
        return model

    batch = collate(snapshot.splits["train"][:2])
    results = []
    for lean in (False, True):
        model = build()
        if lean:
            assert lean_lora_forward(model) == 3 * model.config.num_hidden_layers
        loss, _ = LabelLoss(model, chunk_tokens=64)(**batch)
        loss.backward()
        results.append((loss.item(), {k: p.grad for k, p in model.named_parameters() if p.requires_grad}))
    (peft_loss, peft_grads), (lean_loss, lean_grads) = results
    assert lean_loss == pytest.approx(peft_loss, rel=1e-5)
    for k, g in peft_grads.items():
        torch.testing.assert_close(lean_grads[k], g, rtol=1e-3, atol=1e-3 * float(g.abs().max()))
    with model.disable_adapter():  # disabled adapters still fall back to the base layer alone
        base_loss, _ = LabelLoss(model, chunk_tokens=64)(**batch)
    assert base_loss.item() != pytest.approx(lean_loss, rel=1e-4)


def test_a_few_steps_reduce_the_loss_on_a_repeated_batch(base_model_dir, snapshot, tmp_path):
    one_row = replace(snapshot, splits={**snapshot.splits, "train": snapshot.splits["train"][:1]})
    result = train(
        config(
            base_model_dir,
            tmp_path,
            max_steps=4,
            grad_accum_steps=1,
            warmup_steps=0,
            learning_rate=2e-3,
            lora_dropout=0.0,
        ),
        one_row,
    )
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.3, losses
    assert all(h["loss_tokens"] > 0 for h in result.history)
    assert result.loss_tokens_per_s > 0 and result.tokens_seen == 4 * sum(one_row.splits["train"][0].lengths)
    assert (Path(result.adapter_dir) / "adapter_model.safetensors").is_file()
    assert (Path(result.adapter_dir) / "tokenizer.json").is_file()
    lineage = json.loads((Path(result.adapter_dir) / "agentloop-adapter.json").read_text())
    assert lineage["dataset_snapshot_hash"] == snapshot.snapshot_hash


# --- failure and stopping ---------------------------------------------------------------------------------


def test_non_finite_loss_raises_naming_the_step_and_writes_no_adapter(base_model_dir, snapshot, tmp_path):
    (tmp_path / "adapter").mkdir()  # a previous run's adapter must not pass for this run's
    with pytest.raises(NonFiniteLossError, match=r"step 2: training loss is nan") as err:
        train(config(base_model_dir, tmp_path, learning_rate=math.inf, max_steps=3), snapshot)
    assert err.value.step == 2
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "result.json").exists()


def test_early_stopping_stops_after_patience_evaluations_without_improvement(
    base_model_dir, snapshot, tmp_path
):
    # lr 1e-30 moves no weight: the validation loss stays put, so the second evaluation is no improvement
    result = train(
        config(
            base_model_dir,
            tmp_path,
            learning_rate=1e-30,
            eval_every=1,
            early_stopping_patience=1,
            max_steps=5,
        ),
        snapshot,
    )
    assert result.stopped_early and result.steps == 2 and result.best_step == 1
    assert [h.get("val_loss") is not None for h in result.history] == [True, True]


# --- resume after SIGKILL ---------------------------------------------------------------------------------


def cli(snapshot_dir: Path, cfg: TrainConfig) -> list[str]:
    from dataclasses import asdict

    return [
        sys.executable,
        "-m",
        "training.trainer",
        "--snapshot",
        str(snapshot_dir),
        "--config",
        json.dumps(asdict(cfg)),
    ]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(base_model_dir, snapshot, snapshot_dir, tmp_path):
    kw = dict(max_steps=3, checkpoint_every=1, eval_every=2, lora_dropout=0.1)  # dropout: RNG must resume too
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cli(snapshot_dir, config(base_model_dir, killed, **kw)),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 240
    while latest_checkpoint(killed) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed mid-way:\n{output[-3000:]}"
    assert not (killed / "adapter").exists()
    assert latest_checkpoint(killed).name in {"step-000001", "step-000002"}

    resumed = train(config(base_model_dir, killed, **kw), snapshot, resume=True)
    fresh = train(config(base_model_dir, tmp_path / "fresh", **kw), snapshot)
    assert resumed.steps == fresh.steps == 3
    assert [h["step"] for h in resumed.history] == [1, 2, 3]
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(
        [h["train_loss"] for h in fresh.history], rel=1e-5
    )
    assert resumed.final_val_loss == pytest.approx(fresh.final_val_loss, rel=1e-5)
    assert_same_adapter(resumed.adapter_dir, fresh.adapter_dir)


# --- two processes ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(base_model_dir, snapshot, snapshot_dir, tmp_path):
    kw = dict(max_steps=2, grad_accum_steps=2, eval_every=1, num_threads=1, lora_dropout=0.1)
    two = tmp_path / "two"
    logs = tmp_path / "torchrun-logs"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--redirects",
        "3",
        "--log-dir",
        str(logs),
        *cli(snapshot_dir, config(base_model_dir, two, **kw))[1:],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    rank_logs = {p.parent.name + "/" + p.name: p.read_text() for p in logs.rglob("*.log")}
    assert run.returncode == 0, f"{run.stderr[-3000:]}\n{json.dumps(rank_logs)[-3000:]}"

    one = train(config(base_model_dir, tmp_path / "one", **kw), snapshot)
    two_result = json.loads((two / "result.json").read_text())
    assert [h["train_loss"] for h in two_result["history"]] == pytest.approx(
        [h["train_loss"] for h in one.history], rel=1e-3
    )
    assert two_result["final_val_loss"] == pytest.approx(one.final_val_loss, rel=1e-3)
    assert_same_adapter(two_result["adapter_dir"], one.adapter_dir, rtol=1e-3, atol=1e-5)
    # rank 0 alone reports and writes: rank 1 printed no result and logged no progress
    assert any("[train rank 0]" in text for name, text in rank_logs.items() if name.startswith("0/"))
    assert any(name.startswith("1/") for name in rank_logs), sorted(rank_logs)
    for name, text in rank_logs.items():
        if name.startswith("1/"):
            assert "[train rank 1]" not in text and '"adapter_dir"' not in text, (name, text[-2000:])
    assert sorted(p.name for p in two.iterdir()) == ["adapter", "loss_curve.png", "result.json"]


# --- MLflow and callbacks -------------------------------------------------------------------------------


def test_mlflow_run_has_lineage_params_step_metrics_and_artifacts(
    base_model_dir, snapshot, tmp_path, mlflow_uri
):
    from mlflow.tracking import MlflowClient

    from training.base_model import resolve_base_model

    cfg = config(
        base_model_dir,
        tmp_path,
        max_steps=2,
        eval_every=1,
        mlflow_experiment="test-trainer",
        run_name="mlflow-check",
    )
    result = train(cfg, snapshot, flyte_execution_id="f-exec-1")
    client = MlflowClient(mlflow_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["base_model.weights_sha256"] == resolve_base_model(base_model_dir).weights_sha256
    assert params["dataset.snapshot_hash"] == snapshot.snapshot_hash
    assert params["lora_r"] == "16" and params["target_modules"].startswith("q_proj")
    assert run.data.tags["flyte.execution_id"] == "f-exec-1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2]
    for key in ("lr", "loss_tokens_per_s", "grad_norm"):
        assert key in run.data.metrics
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "loss_curve.png", "result.json"} <= top
    adapter = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "agentloop-adapter.json",
    } <= adapter


def test_on_eval_raising_stops_the_run_and_propagates(base_model_dir, snapshot, tmp_path, mlflow_uri):
    import optuna
    from mlflow.tracking import MlflowClient

    seen = []

    def on_eval(step, val_loss):
        seen.append((step, val_loss))
        raise optuna.TrialPruned(f"pruned at step {step}")

    cfg = config(
        base_model_dir,
        tmp_path,
        max_steps=4,
        eval_every=1,
        mlflow_experiment="test-trainer",
        run_name="pruned",
    )
    with pytest.raises(optuna.TrialPruned, match="pruned at step 1"):
        train(cfg, snapshot, on_eval=on_eval)
    assert len(seen) == 1 and math.isfinite(seen[0][1])
    assert not (tmp_path / "adapter").exists()
    runs = MlflowClient(mlflow_uri).search_runs(
        [MlflowClient(mlflow_uri).get_experiment_by_name("test-trainer").experiment_id],
        filter_string="attributes.run_name = 'pruned'",
    )
    assert [r.info.status for r in runs] == ["KILLED"]
