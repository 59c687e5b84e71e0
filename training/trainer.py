"""LoRA fine-tuning on a dataset snapshot: one process, or DDP under torchrun, one code path.

    result = train(TrainConfig(max_steps=200, output_dir="runs/a"), snapshot)
    torchrun --nproc_per_node 2 -m training.trainer --snapshot SNAP_DIR --config cfg.json --output runs/a

What a reader may question later:
- Batch. One optimizer step sees `micro_batch_size * grad_accum_steps` packed rows in total, however
  many processes share them: `grad_accum_steps` counts micro-batches over all ranks (it must divide
  by WORLD_SIZE). A config tuned on one CPU process therefore means the same thing on 2 GPUs.
- Loss. The sum of token cross-entropies over the step's label positions divided by the number of
  those positions in the whole global batch (not a mean of per-micro-batch means), so the result
  does not depend on how rows fall into micro-batches or ranks. Logits are computed only at label
  positions, in chunks, from the decoder's hidden states: the 49k-wide LM head never runs on
  system/user tokens and a full [rows, seq, vocab] logits tensor never exists.
- Packing. Rows go in with position_ids restarting per example and NO attention_mask (and
  use_cache=False): transformers then builds a block-diagonal causal mask, so examples in a row do
  not see each other. A target whose position is 0 (the first token of the next example) is never
  trained on, whatever its label.
- Determinism. Data order is a function of (seed, epoch); the learning rate a function of the step;
  dropout is reseeded per micro-batch from (seed, global micro-batch index). A run killed at any
  point resumes from its last checkpoint (training/checkpoint.py) to the same weights, and a run on
  2 processes matches one on 1 process up to float summation order.
- Outputs (rank 0 only): <output_dir>/adapter is the LoRA adapter at the best validation loss
  (the last step's when there is no validation split), with the tokenizer and a lineage file;
  it is written only when training ends normally (never after NonFiniteLossError or on_eval raising).
- bf16: autocast to bfloat16 with the frozen base held in bf16 (as saved) and LoRA weights,
  optimizer and loss in fp32. bf16=False trains fully in fp32.
- lora_dropout defaults to 0.0 (torchtune's and Unsloth's default too): on CPU, PEFT's dropout draws
  a Bernoulli mask for each of the 7 adapted layers' inputs in all 30 blocks, which multiplies the step
  time (bench/RESULTS.md, "Trainer step throughput"). The sweep may still search it; with dropout on,
  resume and DDP stay exact (masks are seeded per micro-batch).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.utils.checkpoint
from torch import nn

from training.adapter import save_adapter
from training.checkpoint import (
    checkpoint_root,
    fingerprint_diff,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from training.distributed import Dist, all_sum, broadcast, init_distributed, on_main_rank
from training.loss import LabelLoss, NonFiniteLossError, evaluate_rows
from training.peft_model import load_peft_model, trainable_weights, use_bf16
from training.row_stream import RowStream
from training.tracking import Tracker, end_status, flat_params, loss_curve, package_version

log = logging.getLogger(__name__)

# All linear layers of a Llama block. Attention-only LoRA (q/v) trains noticeably worse at equal
# rank (QLoRA, Dettmers et al. 2023); the MLP layers hold most of the weights a reply style lives in.
# Adapter cost at r=16 on SmolLM2-135M: 4.9M parameters (3.6%).
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainConfig:
    """How to fine-tune. Simple types only: Flyte passes it as a task input; defaults run the embedded world."""

    base_model: str = ""  # "" = the embedded SmolLM2-135M-Instruct; else a HF folder or hub id
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # see the module docstring: PEFT's dropout is slow on CPU
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    learning_rate: float = 2e-4
    min_lr_ratio: float = 0.1  # cosine decays to learning_rate * min_lr_ratio at max_steps
    weight_decay: float = 0.0
    warmup_steps: int = 10
    max_steps: int = 100  # optimizer steps
    micro_batch_size: int = 4  # packed rows per forward pass, per process
    grad_accum_steps: int = 4  # micro-batches per optimizer step over ALL processes (divisible by WORLD_SIZE)
    max_grad_norm: float = 1.0  # 0 = no clipping
    eval_every: int = 20  # steps; 0 = only at the end
    early_stopping_patience: int = 0  # evaluations without improvement before stopping; 0 = never stop early
    checkpoint_every: int = 50  # steps; 0 = no checkpoints
    keep_checkpoints: int = 2
    output_dir: str = ""  # "" = a fresh $AGENTLOOP_HOME/train/<run_name>-<time> (so no resume)
    seed: int = 0
    bf16: bool = (
        True  # bf16 autocast where bf16 is fast (GPU, CPU with AVX-512 BF16/AMX; else fp32); False = fp32
    )
    num_threads: int = 0  # torch CPU threads per process; 0 = torch's default
    loss_chunk_tokens: int = 1024  # label positions per LM-head chunk (bounds the logits memory)
    gradient_checkpointing: bool = False  # recompute activations in backward (large models / long rows)
    attn_implementation: str = "sdpa"
    log_every: int = 1  # steps between log lines / MLflow metric batches
    mlflow_experiment: str = "training"  # "" = no MLflow tracking
    run_name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):  # "q_proj,v_proj" from a CLI or a launch plan
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        for name in ("lora_r", "max_steps", "micro_batch_size", "grad_accum_steps", "loss_chunk_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"TrainConfig.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.target_modules:
            raise ValueError("TrainConfig.target_modules is empty: name the linear layers to adapt")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def fingerprint(self) -> dict:
        """The fields a checkpoint's weights depend on: resuming with any of them changed is refused."""
        loose = {
            "output_dir",
            "run_name",
            "num_threads",
            "log_every",
            "mlflow_experiment",
            "checkpoint_every",
            "keep_checkpoints",
            "attn_implementation",
            "gradient_checkpointing",
            "loss_chunk_tokens",
        }
        return {k: v for k, v in asdict(self).items() if k not in loose}


@dataclass
class TrainResult:
    adapter_dir: str  # the adapter at best_val_loss (the last step's when there was no validation split)
    best_val_loss: float | None
    final_val_loss: float | None  # at the last step
    steps: int
    tokens_seen: int  # non-padding tokens, all ranks
    loss_tokens_per_s: float  # label positions per second of training step time, all ranks
    mlflow_run_id: str
    history: list[dict]  # one entry per step: step, train_loss, lr, grad_norm, tokens, ... (+ val_loss)
    best_step: int = 0
    stopped_early: bool = False
    output_dir: str = ""


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup over warmup_steps, then cosine down to learning_rate * min_lr_ratio at max_steps."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / (config.warmup_steps + 1)
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    low = config.learning_rate * config.min_lr_ratio
    return low + 0.5 * (1 + math.cos(math.pi * progress)) * (config.learning_rate - low)


def train(
    config: TrainConfig,
    snapshot,
    *,
    on_eval: Callable[[int, float], None] | None = None,
    mlflow_parent_run_id: str | None = None,
    resume: bool = True,
    flyte_execution_id: str = "",
) -> TrainResult:
    """Fine-tune a LoRA adapter on snapshot.splits["train"], evaluating on "validation".

    on_eval(step, val_loss) runs on rank 0 after each evaluation; if it raises (optuna.TrialPruned),
    training stops, the MLflow run ends KILLED (pruned) or FAILED, and the exception propagates.
    With resume=True an output_dir holding checkpoints continues from the latest one.
    """
    d = init_distributed()
    threads = torch.get_num_threads()
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    try:
        return _train(
            config,
            snapshot,
            d,
            on_eval,
            mlflow_parent_run_id,
            resume,
            flyte_execution_id or os.environ.get("FLYTE_INTERNAL_EXECUTION_ID", ""),
        )
    finally:
        torch.set_num_threads(threads)
        if d.owns_group:
            dist.destroy_process_group()


def _train(config, snapshot, d: Dist, on_eval, parent_run_id, resume, flyte_execution_id) -> TrainResult:
    from training.dataset import tokenizer_identity

    info = log.info if d.main else (lambda *a, **k: None)
    if config.grad_accum_steps % d.world:
        raise ValueError(
            f"TrainConfig.grad_accum_steps={config.grad_accum_steps} is global and must divide by "
            f"WORLD_SIZE={d.world}; use a multiple of {d.world}"
        )
    out = Path(config.output_dir or _fresh_output_dir(config))
    out = Path(broadcast(d, str(out)))
    model, tokenizer, identity = load_peft_model(config, d)
    if tokenizer_identity(tokenizer)["sha256"] != snapshot.tokenizer["sha256"]:
        raise ValueError(
            f"dataset snapshot {snapshot.snapshot_hash[:12]} was tokenized with "
            f"{snapshot.tokenizer['name_or_path']} (sha256 {snapshot.tokenizer['sha256'][:12]}), not the "
            f"tokenizer of base model {identity.path}; rebuild the snapshot with this base model"
        )
    train_rows = RowStream(snapshot.splits["train"], config.seed)
    val_rows = snapshot.splits.get("validation") or []
    loss_fn = LabelLoss(model, config.loss_chunk_tokens)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.learning_rate, weight_decay=config.weight_decay, betas=(0.9, 0.999), eps=1e-8
    )
    fingerprint = {
        "config": config.fingerprint(),
        "snapshot_hash": snapshot.snapshot_hash,
        "base_model_weights_sha256": identity.weights_sha256,
    }

    # where to start: the latest checkpoint, or a clean slate (final outputs exist only for finished runs)
    ckpt = latest_checkpoint(out) if (resume and d.main) else None
    ckpt = broadcast(d, str(ckpt) if ckpt else None)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out / "adapter", ignore_errors=True)
        (out / "result.json").unlink(missing_ok=True)
        if not ckpt:
            shutil.rmtree(checkpoint_root(out), ignore_errors=True)
    st = {
        "step": 0,
        "tokens_seen": 0,
        "loss_tokens_seen": 0,
        "train_time_s": 0.0,
        "best_val_loss": None,
        "best_step": 0,
        "bad_evals": 0,
        "history": [],
        "mlflow_run_id": "",
        "fingerprint": fingerprint,
    }
    best = None
    if ckpt:
        saved, best = load_checkpoint(ckpt, model, optimizer)
        if saved["fingerprint"] != fingerprint:
            diff = fingerprint_diff(saved["fingerprint"], fingerprint)
            raise ValueError(
                f"checkpoint {ckpt} was written by a different run ({diff}); resume=False or a "
                f"fresh output_dir starts over"
            )
        st.update(saved)
        info("resuming from %s (step %d)", ckpt, st["step"])

    ddp_model = loss_fn
    if d.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # The frozen base is identical on every rank by construction; don't broadcast 135M+ weights.
        frozen = [f"peft_model.{k}" for k, p in model.named_parameters() if not p.requires_grad]
        frozen += [f"peft_model.{k}" for k, _ in model.named_buffers()]
        DDP._set_params_and_buffers_to_ignore_for_model(loss_fn, frozen)
        ddp_model = DDP(loss_fn, device_ids=[d.device.index] if d.device.type == "cuda" else None)

    tracker = None
    if d.main and config.mlflow_experiment:
        tags = {
            "agentloop.stage": "training",
            "dataset.snapshot_hash": snapshot.snapshot_hash,
            "base_model.name": identity.name,
        }
        if flyte_execution_id:
            tags["flyte.execution_id"] = flyte_execution_id
        tracker = Tracker(config.mlflow_experiment, config.run_name, parent_run_id, st["mlflow_run_id"], tags)
        st["mlflow_run_id"] = tracker.run_id
        if not tracker.resumed:
            tracker.params(
                {
                    **flat_params("", {k: v for k, v in asdict(config).items()}),
                    **identity.as_params(),
                    "dataset.snapshot_hash": snapshot.snapshot_hash,
                    **flat_params("dataset.tokenizer.", snapshot.tokenizer),
                    **flat_params("dataset.", snapshot.stats),
                    **flat_params("dataset.source.", getattr(snapshot, "source", {}) or {}),
                    "world_size": d.world,
                    "device": d.device.type,
                    "output_dir": str(out),
                    "trainable_params": sum(p.numel() for p in params),
                    "versions.torch": torch.__version__,
                    "versions.transformers": package_version("transformers"),
                    "versions.peft": package_version("peft"),
                }
            )
    run = _Run(
        config=config,
        snapshot=snapshot,
        d=d,
        out=out,
        model=model,
        ddp_model=ddp_model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        train_rows=train_rows,
        val_rows=val_rows,
        state=st,
        best=best,
        tracker=tracker,
        tokenizer=tokenizer,
        identity=identity,
        on_eval=on_eval,
        info=info,
    )
    try:
        result = _fit(run)
    except BaseException as e:
        if tracker:
            tracker.end(end_status(e))
        raise
    if tracker:
        tracker.end("FINISHED")
    return result


@dataclass
class _Run:
    """What one training run holds while it fits: built by _train, advanced step by step by _fit."""

    config: TrainConfig
    snapshot: Any  # training.dataset.DatasetSnapshot
    d: Dist
    out: Path
    model: nn.Module  # the PEFT model
    ddp_model: nn.Module  # what forward and backward go through: loss_fn, DDP-wrapped when distributed
    loss_fn: LabelLoss
    optimizer: torch.optim.Optimizer
    train_rows: RowStream
    val_rows: list
    state: dict  # step, token counts, best validation loss, history: what a checkpoint saves
    best: dict[str, torch.Tensor] | None  # the trainable weights at the best validation loss
    tracker: Tracker | None
    tokenizer: Any
    identity: Any  # training.base_model.BaseModelIdentity
    on_eval: Callable[[int, float], None] | None
    info: Callable[..., None]  # log.info on rank 0, silent elsewhere

    @property
    def autocast(self):
        if use_bf16(self.config, self.d.device):
            return torch.autocast(self.d.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def _fit(run: _Run) -> TrainResult:
    config, st = run.config, run.state
    run.info(
        "training %s on %d train rows (%d validation), world %d, global batch %d rows x %d tokens, %d steps",
        run.identity.name,
        run.train_rows.n,
        len(run.val_rows),
        run.d.world,
        config.micro_batch_size * config.grad_accum_steps,
        run.snapshot.seq_len,
        config.max_steps,
    )
    stopped_early = False
    run.model.train()
    while st["step"] < config.max_steps:
        entry = _optimizer_step(run)
        step = entry["step"]
        last = step == config.max_steps
        val = _evaluate_if_due(run, entry, last)
        if run.tracker and (step % config.log_every == 0 or val is not None or last):
            run.tracker.metrics(step, {k: v for k, v in entry.items() if k != "step"})
        if step % config.log_every == 0 or last or val is not None:
            _log_step(run, entry, val)
        if val is not None:
            on_main_rank(run.d, f"on_eval at step {step}", run.on_eval, step, val)
            if config.early_stopping_patience and st["bad_evals"] >= config.early_stopping_patience:
                run.info("early stop at step %d: %d evaluations without improvement", step, st["bad_evals"])
                stopped_early = True
                break
        if run.d.main and config.checkpoint_every and step % config.checkpoint_every == 0 and not last:
            save_checkpoint(run.out, step, run.model, run.optimizer, st, run.best, config.keep_checkpoints)
    return _finish(run, stopped_early)


def _optimizer_step(run: _Run) -> dict:
    """One optimizer step over the global batch (this rank's share of its micro-batches); its history entry."""
    config, d, st, rows = run.config, run.d, run.state, run.train_rows
    mbs, accum = config.micro_batch_size, config.grad_accum_steps
    step = st["step"]
    lr = lr_at(step, config)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    t0 = time.perf_counter()
    micro = range(step * accum + d.rank, (step + 1) * accum, d.world)  # this rank's global micro-batch ids
    idx = [rows.rows(g, mbs) for g in range(step * accum, (step + 1) * accum)]
    n_loss = max(1, int(sum(rows.loss_tokens[i].sum() for i in idx)))  # label positions, all ranks
    loss_sum = torch.zeros((), device=d.device)
    autocast = run.autocast
    for k, g in enumerate(micro):
        if d.ddp:  # all-reduce gradients only after the last micro-batch
            run.ddp_model.require_backward_grad_sync = k == len(micro) - 1
        torch.manual_seed(config.seed * 1_000_003 + g)  # dropout depends on the micro-batch, not the rank
        with autocast:
            s, _ = run.ddp_model(**rows.batch(idx[g - step * accum], d.device))
        (s * (d.world / n_loss)).backward()  # DDP averages over ranks; undo it: the loss is a global sum
        loss_sum += s.detach()
    loss = all_sum(d, float(loss_sum))[0] / n_loss
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            step + 1,
            loss,
            hint=f"lr was {lr:.3g}; lower TrainConfig.learning_rate "
            f"({config.learning_rate:g}) or inspect the rows of this step",
        )
    grad_norm = float(nn.utils.clip_grad_norm_(run.params, config.max_grad_norm or float("inf")))
    if not math.isfinite(grad_norm):
        raise NonFiniteLossError(step + 1, grad_norm, "gradient norm", f"lr was {lr:.3g}")
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0

    tokens = int(sum(rows.tokens[i].sum() for i in idx))
    st["step"] = step + 1
    st["tokens_seen"] += tokens
    st["loss_tokens_seen"] += n_loss
    st["train_time_s"] += dt
    entry = {
        "step": step + 1,
        "train_loss": loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens": tokens,
        "loss_tokens": n_loss,
        "step_time_s": dt,
        "tokens_per_s": tokens / dt,
        "loss_tokens_per_s": n_loss / dt,
    }
    st["history"].append(entry)
    return entry


def _evaluate_if_due(run: _Run, entry: dict, last: bool) -> float | None:
    """The validation loss when this step evaluates (recorded in `entry`, best weights kept), else None."""
    config, st, step = run.config, run.state, entry["step"]
    if not ((config.eval_every and step % config.eval_every == 0) or last):
        return None
    entry["val_loss"] = val = evaluate_rows(
        run.loss_fn, run.val_rows, config.micro_batch_size, run.d, run.autocast
    )
    run.model.train()
    if val is not None and (st["best_val_loss"] is None or val < st["best_val_loss"]):
        st["best_val_loss"], st["best_step"], st["bad_evals"] = val, step, 0
        run.best = trainable_weights(run.model)
    elif val is not None:
        st["bad_evals"] += 1
    return val


def _log_step(run: _Run, entry: dict, val: float | None) -> None:
    st = run.state
    run.info(
        "step %d/%d | loss %.4f | lr %.2e | grad %.3f | %.0f loss-tok/s | %.1fs%s",
        entry["step"],
        run.config.max_steps,
        entry["train_loss"],
        entry["lr"],
        entry["grad_norm"],
        entry["loss_tokens_per_s"],
        entry["step_time_s"],
        "" if val is None else f" | val {val:.4f} (best {st['best_val_loss']:.4f} at step {st['best_step']})",
    )


def _finish(run: _Run, stopped_early: bool) -> TrainResult:
    """The result; on rank 0 the best adapter, result.json and the loss curve, written and logged."""
    st, out = run.state, run.out
    final_val = next((h["val_loss"] for h in reversed(st["history"]) if "val_loss" in h), None)
    adapter_dir = out / "adapter"
    result = TrainResult(
        adapter_dir=str(adapter_dir),
        best_val_loss=st["best_val_loss"],
        final_val_loss=final_val,
        steps=st["step"],
        tokens_seen=st["tokens_seen"],
        loss_tokens_per_s=st["loss_tokens_seen"] / max(st["train_time_s"], 1e-9),
        mlflow_run_id=st["mlflow_run_id"],
        history=st["history"],
        best_step=st["best_step"] or st["step"],
        stopped_early=stopped_early,
        output_dir=str(out),
    )
    if run.d.main:
        if run.best is not None:  # the adapter that reached best_val_loss
            unexpected = run.model.load_state_dict(run.best, strict=False).unexpected_keys
            assert not unexpected, unexpected
        save_adapter(
            run.model,
            run.tokenizer,
            adapter_dir,
            {
                "base_model": asdict(run.identity),
                "dataset_snapshot_hash": run.snapshot.snapshot_hash,
                "mlflow_run_id": result.mlflow_run_id,
                "step": result.best_step,
                "val_loss": result.best_val_loss,
                "train_config": asdict(run.config),
            },
        )
        (out / "result.json").write_text(json.dumps(asdict(result), indent=1))
        curve = loss_curve(st["history"], out / "loss_curve.png")
        if run.tracker:
            run.tracker.metrics(
                result.steps,
                {"best_val_loss": result.best_val_loss, "loss_tokens_per_s_mean": result.loss_tokens_per_s},
            )
            run.tracker.artifacts(adapter_dir, "adapter")
            run.tracker.artifacts(curve)
            run.tracker.artifacts(out / "result.json")
        run.info(
            "done: %d steps, best validation loss %s at step %d, %.0f loss-tokens/s, adapter %s",
            result.steps,
            result.best_val_loss,
            result.best_step,
            result.loss_tokens_per_s,
            adapter_dir,
        )
    if run.d.ddp:
        dist.barrier()  # no rank returns before the outputs exist
    return result


def _fresh_output_dir(config: TrainConfig) -> Path:
    from training.base_model import agentloop_home

    return agentloop_home() / "train" / f"{config.run_name or 'run'}-{time.strftime('%Y%m%dT%H%M%S')}"


# --- CLI (torchrun / Flyte Elastic entry) ---------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="LoRA fine-tune on a saved dataset snapshot (torchrun-ready).")
    p.add_argument("--snapshot", required=True, help="folder written by DatasetSnapshot.save")
    p.add_argument("--config", default="{}", help="TrainConfig as JSON text or a path to a JSON file")
    p.add_argument("--output", default=None, help="output_dir (overrides the config's)")
    p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    p.add_argument("--mlflow-parent-run-id", default=None)
    p.add_argument("--flyte-execution-id", default="")
    args = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        stream=sys.stderr,
        format=f"%(asctime)s [train rank {rank}] %(message)s",
    )
    from training.dataset import DatasetSnapshot

    text = args.config
    raw = json.loads(Path(text).read_text() if not text.lstrip().startswith("{") else text)
    if args.output:
        raw["output_dir"] = args.output
    config = TrainConfig.from_dict(raw)
    result = train(
        config,
        DatasetSnapshot.load(args.snapshot),
        resume=not args.no_resume,
        mlflow_parent_run_id=args.mlflow_parent_run_id,
        flyte_execution_id=args.flyte_execution_id,
    )
    if rank == 0:
        print(json.dumps({k: v for k, v in asdict(result).items() if k != "history"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
