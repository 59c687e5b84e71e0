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
  a Bernoulli mask for each of the 7 adapted layers' inputs in all 30 blocks, and that cost
  2.7x the step time at seq 512 (16-core AMX CPU: 176 vs 483 loss-tokens/s). The sweep may still
  search it; with dropout on, resume and DDP stay exact (masks are seeded per micro-batch).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from features.mlflow_experiments import ensure_experiment
from training.checkpoint import checkpoint_root, latest_checkpoint, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

IGNORE = -100
# All linear layers of a Llama block. Attention-only LoRA (q/v) trains noticeably worse at equal
# rank (QLoRA, Dettmers et al. 2023); the MLP layers hold most of the weights a reply style lives in.
# Adapter cost at r=16 on SmolLM2-135M: 4.9M parameters (3.6%).
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LINEAGE_FILE = "agentloop-adapter.json"


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) of a step is NaN or infinite: the run stops, no adapter is written."""

    def __init__(self, step: int, value: float, what: str = "training loss", hint: str = ""):
        self.step, self.value, self.what = step, value, what
        super().__init__(
            f"step {step}: {what} is {value}; training stopped before the optimizer applied it "
            f"and no final adapter was written. {hint}".strip()
        )


@dataclass
class TrainConfig:
    """How to fine-tune. Simple types only: Flyte passes it as a task input; defaults run the embedded world."""

    base_model: str = ""  # "" = the embedded SmolLM2-135M-Instruct; else a HF folder or hub id
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # see the module docstring: dropout costs 2.7x on CPU
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
    bf16: bool = True  # bf16 autocast (CPU with AMX / GPU); False = fp32
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


# --- the model: loss at label positions only ------------------------------------------------------------


def label_positions(labels: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """[rows, seq-1] bool: which next-token targets carry loss (labels set, not an example's first token)."""
    return (labels[:, 1:] != IGNORE) & (position_ids[:, 1:] != 0)


class LabelLoss(nn.Module):
    """Summed cross-entropy over label positions, from the decoder's hidden states (no full logits).

    forward(input_ids, position_ids, labels) -> (loss_sum fp32 scalar, number of label positions).
    This is the module DDP wraps, so gradient sync sees every forward.
    """

    def __init__(self, peft_model: nn.Module, chunk_tokens: int = 1024):
        super().__init__()
        self.peft_model = peft_model
        self.chunk_tokens = chunk_tokens

    def forward(self, input_ids, position_ids, labels):
        base = self.peft_model.get_base_model()
        hidden = base.get_decoder()(
            input_ids=input_ids, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        keep = label_positions(labels, position_ids)
        h, targets = hidden[:, :-1][keep], labels[:, 1:][keep]
        n = targets.numel()
        if n == 0:  # keep every parameter in the graph (DDP expects a gradient for each)
            return hidden.sum() * 0.0, n
        head = base.get_output_embeddings()
        if (
            head.weight.requires_grad or getattr(head, "bias", None) is not None
        ):  # a trained head: plain autograd
            total = hidden.new_zeros((), dtype=torch.float32)
            for i in range(0, n, self.chunk_tokens):
                total = total + torch.utils.checkpoint.checkpoint(
                    _head_cross_entropy,
                    head,
                    h[i : i + self.chunk_tokens],
                    targets[i : i + self.chunk_tokens],
                    use_reentrant=False,
                )
            return total, n
        return HeadCrossEntropy.apply(h, head.weight, targets, self.chunk_tokens), n


def _head_cross_entropy(head: nn.Module, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(h).float(), targets, reduction="sum")


class HeadCrossEntropy(torch.autograd.Function):
    """sum_i CE(h_i @ W^T, t_i) for a frozen LM head W, a chunk of logits at a time, forward and backward.

    Autograd's path (log_softmax, nll, their backwards, a zero-filled [n, vocab] gradient) makes ~5
    passes over the logits; this makes 2 in forward (fp32 logsumexp, gather) and 2 in backward
    (softmax from the saved logsumexp, minus one-hot), recomputing each chunk's logits instead of
    keeping them. The 49k-wide head is ~15% of a step on CPU, so this is worth a custom backward.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, chunk: int):
        w = weight.to(h.dtype)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        for i in range(0, h.shape[0], chunk):
            logits = (h[i : i + chunk] @ w.t()).float()
            lse[i : i + chunk] = torch.logsumexp(logits, dim=-1)
            total += (lse[i : i + chunk] - logits.gather(1, targets[i : i + chunk, None]).squeeze(1)).sum()
        ctx.save_for_backward(h, weight, targets, lse)
        ctx.chunk = chunk
        return total

    @staticmethod
    def backward(ctx, grad):
        h, weight, targets, lse = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        w, chunk = weight.to(h.dtype), ctx.chunk
        grad_h = torch.empty_like(h)
        for i in range(0, h.shape[0], chunk):
            p = (h[i : i + chunk] @ w.t()).float().sub_(lse[i : i + chunk, None]).exp_()  # softmax
            p[torch.arange(p.shape[0], device=p.device), targets[i : i + chunk]] -= 1.0
            grad_h[i : i + chunk] = p.mul_(grad).to(h.dtype) @ w
        return grad_h, None, None, None


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup over warmup_steps, then cosine down to learning_rate * min_lr_ratio at max_steps."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / (config.warmup_steps + 1)
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    low = config.learning_rate * config.min_lr_ratio
    return low + 0.5 * (1 + math.cos(math.pi * progress)) * (config.learning_rate - low)


# --- data order --------------------------------------------------------------------------------------


class RowStream:
    """A split's packed rows as tensors, read as an endless stream of per-epoch shuffles.

    Micro-batch g holds stream positions [g * mbs, (g + 1) * mbs); position i is row perm(i // N)[i % N].
    """

    def __init__(self, rows, seed: int, shuffle: bool = True):
        from training.dataset import collate

        if not rows:
            raise ValueError("no rows to train on")
        self.tensors = collate(rows)
        self.loss_tokens = label_positions(self.tensors["labels"], self.tensors["position_ids"]).sum(1)
        self.tokens = torch.tensor([sum(r.lengths) for r in rows])  # padding excluded
        self.n, self.seed, self.shuffle = len(rows), seed, shuffle
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {
                e: p for e, p in self._perms.items() if e == epoch - 1
            }  # a batch spans <= 2 epochs
            self._perms[epoch] = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        return self._perms[epoch]

    def rows(self, g: int, mbs: int) -> torch.Tensor:
        return torch.stack([self._perm(i // self.n)[i % self.n] for i in range(g * mbs, (g + 1) * mbs)])

    def batch(self, idx: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        return {k: v[idx].to(device, non_blocking=True) for k, v in self.tensors.items()}


# --- distributed ---------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1


def init_distributed() -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1): nccl on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Dist(device=torch.device("cuda") if cuda else torch.device("cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, device, owns)


def _all_sum(d: Dist, *values: float) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    if d.ddp:
        dist.all_reduce(t)
    return t.tolist()


def _broadcast(d: Dist, obj: Any) -> Any:
    if not d.ddp:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --- MLflow (rank 0) ---------------------------------------------------------------------------------


class Tracker:
    """One MLflow run through MlflowClient (no global active run: callers may have their own)."""

    def __init__(
        self,
        experiment: str,
        run_name: str,
        parent_run_id: str | None,
        resume_run_id: str,
        tags: dict[str, str],
    ):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        exp_id = ensure_experiment(experiment, self.client)
        self.resumed = False
        if resume_run_id:
            try:
                self.client.get_run(resume_run_id)
                self.client.update_run(resume_run_id, status="RUNNING")
                self.run_id, self.resumed = resume_run_id, True
            except Exception:  # noqa: BLE001 - another tracking server: start a new run
                log.warning(
                    "MLflow run %s of the checkpoint is not on %s; starting a new run",
                    resume_run_id,
                    self.client.tracking_uri,
                )
        if not self.resumed:
            if parent_run_id:
                tags = {**tags, "mlflow.parentRunId": parent_run_id}
            self.run_id = self.client.create_run(exp_id, run_name=run_name or None, tags=tags).info.run_id

    def params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[
                Metric(k, float(v), now, step)
                for k, v in values.items()
                if v is not None and math.isfinite(v)
            ],
        )

    def artifacts(self, local: Path, artifact_path: str | None = None) -> None:
        if local.is_dir():
            self.client.log_artifacts(self.run_id, str(local), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(local), artifact_path)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


def _end_status(error: BaseException | None) -> str:
    if error is None:
        return "FINISHED"
    if isinstance(error, KeyboardInterrupt) or type(error).__name__ == "TrialPruned":
        return "KILLED"  # stopped on purpose (a pruned Optuna trial, ^C), not broken
    return "FAILED"


def _flat(prefix: str, d: dict) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(f"{prefix}{k}.", v))
        elif isinstance(v, (list, tuple)):
            out[f"{prefix}{k}"] = ",".join(map(str, v))
        else:
            out[f"{prefix}{k}"] = v
    return out


def loss_curve(history: list[dict], path: Path) -> Path:
    """Train loss per step and validation loss per evaluation, as a PNG (Agg; no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot()
    ax.plot([h["step"] for h in history], [h["train_loss"] for h in history], lw=1, label="train")
    val = [h for h in history if h.get("val_loss") is not None]
    if val:
        ax.plot([h["step"] for h in val], [h["val_loss"] for h in val], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / label token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


# --- train -------------------------------------------------------------------------------------------


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


def _load(config: TrainConfig, d: Dist):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.base_model import resolve_base_model

    if d.main:  # may convert the embedded model on first use; the others wait for it
        identity = resolve_base_model(config.base_model)
    if d.ddp:
        dist.barrier()
    if not d.main:
        identity = resolve_base_model(config.base_model)
    tokenizer = AutoTokenizer.from_pretrained(identity.path)
    dtype = torch.bfloat16 if config.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        identity.path, dtype=dtype, attn_implementation=config.attn_implementation
    )
    model.config.use_cache = False
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(config.seed)  # LoRA A init: the same on every rank and every (re)start
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)  # LoRA weights in fp32 (PEFT's autocast_adapter_dtype)
    if config.lora_dropout == 0.0:
        lean_lora_forward(peft_model)
    return peft_model.to(d.device), tokenizer, identity


def lean_lora_forward(peft_model) -> int:
    """Give each LoRA linear a forward without PEFT's input upcast; returns how many were changed.

    PEFT casts the layer's bf16 input to the adapter's fp32 dtype (a full-activation copy), autocast
    casts it back for the matmul (another), then scales and adds the [rows, seq, out] update (two more
    passes), for every adapted layer. Here the adapter weights are cast instead (16 x 576, cheap), the
    scale is applied on the rank-16 intermediate, and the update is added inside the GEMM (addmm).
    Same maths; only for a single adapter without dropout, anything else keeps PEFT's forward.
    """
    from peft.tuners.lora.layer import Linear

    def forward(self, x, *args, **kwargs):
        if self.disable_adapters or self.merged or self.active_adapters != ["default"] or self.lora_variant:
            return Linear.forward(self, x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        a, b = self.lora_A["default"].weight.to(x.dtype), self.lora_B["default"].weight.to(x.dtype)
        low = F.linear(x, a) * self.scaling["default"]
        out = torch.addmm(result.reshape(-1, result.shape[-1]), low.reshape(-1, low.shape[-1]), b.t())
        return out.view(result.shape)

    changed = 0
    for module in peft_model.modules():
        if isinstance(module, Linear) and isinstance(module.lora_dropout["default"], nn.Identity):
            module.forward = forward.__get__(module)
            changed += 1
    return changed


def _trainable(peft_model) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in peft_model.named_parameters() if p.requires_grad}


def _train(config, snapshot, d: Dist, on_eval, parent_run_id, resume, flyte_execution_id) -> TrainResult:
    from training.dataset import tokenizer_identity

    info = log.info if d.main else (lambda *a, **k: None)
    if config.grad_accum_steps % d.world:
        raise ValueError(
            f"TrainConfig.grad_accum_steps={config.grad_accum_steps} is global and must divide by "
            f"WORLD_SIZE={d.world}; use a multiple of {d.world}"
        )
    out = Path(config.output_dir or _fresh_output_dir(config))
    out = Path(_broadcast(d, str(out)))
    model, tokenizer, identity = _load(config, d)
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
    ckpt = _broadcast(d, str(ckpt) if ckpt else None)
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
            diff = _diff(saved["fingerprint"], fingerprint)
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
                    **_flat("", {k: v for k, v in asdict(config).items()}),
                    **identity.as_params(),
                    "dataset.snapshot_hash": snapshot.snapshot_hash,
                    **_flat("dataset.tokenizer.", snapshot.tokenizer),
                    **_flat("dataset.", snapshot.stats),
                    **_flat("dataset.source.", getattr(snapshot, "source", {}) or {}),
                    "world_size": d.world,
                    "device": d.device.type,
                    "output_dir": str(out),
                    "trainable_params": sum(p.numel() for p in params),
                    "versions.torch": torch.__version__,
                    "versions.transformers": _version("transformers"),
                    "versions.peft": _version("peft"),
                }
            )
    try:
        result = _fit(
            config,
            snapshot,
            d,
            out,
            model,
            ddp_model,
            loss_fn,
            optimizer,
            train_rows,
            val_rows,
            st,
            best,
            tracker,
            tokenizer,
            identity,
            on_eval,
            info,
        )
    except BaseException as e:
        if tracker:
            tracker.end(_end_status(e))
        raise
    if tracker:
        tracker.end("FINISHED")
    return result


def _fit(
    config,
    snapshot,
    d,
    out,
    model,
    ddp_model,
    loss_fn,
    optimizer,
    train_rows,
    val_rows,
    st,
    best,
    tracker,
    tokenizer,
    identity,
    on_eval,
    info,
) -> TrainResult:
    mbs, accum = config.micro_batch_size, config.grad_accum_steps
    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16) if config.bf16 else nullcontext()
    params = [p for p in model.parameters() if p.requires_grad]
    info(
        "training %s on %d train rows (%d validation), world %d, global batch %d rows x %d tokens, %d steps",
        identity.name,
        train_rows.n,
        len(val_rows),
        d.world,
        mbs * accum,
        snapshot.seq_len,
        config.max_steps,
    )
    stopped_early = False
    model.train()
    while st["step"] < config.max_steps:
        step = st["step"]
        lr = lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        micro = range(
            step * accum + d.rank, (step + 1) * accum, d.world
        )  # this rank's global micro-batch ids
        idx = [train_rows.rows(g, mbs) for g in range(step * accum, (step + 1) * accum)]
        n_loss = max(1, int(sum(train_rows.loss_tokens[i].sum() for i in idx)))  # label positions, all ranks
        loss_sum = torch.zeros((), device=d.device)
        for k, g in enumerate(micro):
            if d.ddp:  # all-reduce gradients only after the last micro-batch
                ddp_model.require_backward_grad_sync = k == len(micro) - 1
            torch.manual_seed(config.seed * 1_000_003 + g)  # dropout depends on the micro-batch, not the rank
            with autocast:
                s, _ = ddp_model(**train_rows.batch(idx[g - step * accum], d.device))
            (s * (d.world / n_loss)).backward()  # DDP averages over ranks; undo it: the loss is a global sum
            loss_sum += s.detach()
        loss = _all_sum(d, float(loss_sum))[0] / n_loss
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                step + 1,
                loss,
                hint=f"lr was {lr:.3g}; lower TrainConfig.learning_rate "
                f"({config.learning_rate:g}) or inspect the rows of this step",
            )
        grad_norm = float(nn.utils.clip_grad_norm_(params, config.max_grad_norm or float("inf")))
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(step + 1, grad_norm, "gradient norm", f"lr was {lr:.3g}")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0

        tokens = int(sum(train_rows.tokens[i].sum() for i in idx))
        st["step"] = step = step + 1
        st["tokens_seen"] += tokens
        st["loss_tokens_seen"] += n_loss
        st["train_time_s"] += dt
        entry = {
            "step": step,
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

        last = step == config.max_steps
        val = None
        if (config.eval_every and step % config.eval_every == 0) or last:
            entry["val_loss"] = val = evaluate_rows(loss_fn, val_rows, mbs, d, autocast)
            model.train()
            if val is not None and (st["best_val_loss"] is None or val < st["best_val_loss"]):
                st["best_val_loss"], st["best_step"], st["bad_evals"] = val, step, 0
                best = _trainable(model)
            elif val is not None:
                st["bad_evals"] += 1
        if tracker and (step % config.log_every == 0 or "val_loss" in entry or last):
            tracker.metrics(step, {k: v for k, v in entry.items() if k != "step"})
        if step % config.log_every == 0 or last or val is not None:
            info(
                "step %d/%d | loss %.4f | lr %.2e | grad %.3f | %.0f loss-tok/s | %.1fs%s",
                step,
                config.max_steps,
                loss,
                lr,
                grad_norm,
                n_loss / dt,
                dt,
                ""
                if val is None
                else f" | val {val:.4f} (best {st['best_val_loss']:.4f} at step {st['best_step']})",
            )
        if val is not None:
            _call_on_eval(on_eval, step, val, d)
            if config.early_stopping_patience and st["bad_evals"] >= config.early_stopping_patience:
                info("early stop at step %d: %d evaluations without improvement", step, st["bad_evals"])
                stopped_early = True
                break
        if d.main and config.checkpoint_every and step % config.checkpoint_every == 0 and not last:
            save_checkpoint(out, step, model, optimizer, st, best, config.keep_checkpoints)

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
    if d.main:
        if best is not None:  # the adapter that reached best_val_loss
            unexpected = model.load_state_dict(best, strict=False).unexpected_keys
            assert not unexpected, unexpected
        _save_adapter(
            model,
            tokenizer,
            adapter_dir,
            {
                "base_model": asdict(identity),
                "dataset_snapshot_hash": snapshot.snapshot_hash,
                "mlflow_run_id": result.mlflow_run_id,
                "step": result.best_step,
                "val_loss": result.best_val_loss,
                "train_config": asdict(config),
            },
        )
        (out / "result.json").write_text(json.dumps(asdict(result), indent=1))
        curve = loss_curve(st["history"], out / "loss_curve.png")
        if tracker:
            tracker.metrics(
                result.steps,
                {"best_val_loss": result.best_val_loss, "loss_tokens_per_s_mean": result.loss_tokens_per_s},
            )
            tracker.artifacts(adapter_dir, "adapter")
            tracker.artifacts(curve)
            tracker.artifacts(out / "result.json")
        info(
            "done: %d steps, best validation loss %s at step %d, %.0f loss-tokens/s, adapter %s",
            result.steps,
            result.best_val_loss,
            result.best_step,
            result.loss_tokens_per_s,
            adapter_dir,
        )
    if d.ddp:
        dist.barrier()  # no rank returns before the outputs exist
    return result


@torch.no_grad()
def evaluate_rows(
    loss_fn: LabelLoss, rows, micro_batch_size: int, d: Dist | None = None, autocast=None
) -> float | None:
    """Mean cross-entropy per label position over rows (sharded over ranks); None when there are none."""
    d = d or Dist()
    if not rows:
        return None
    from training.dataset import collate

    loss_fn.eval()
    mine = rows[d.rank :: d.world]
    total = count = 0.0
    for i in range(0, len(mine), micro_batch_size):
        batch = {k: v.to(d.device) for k, v in collate(mine[i : i + micro_batch_size]).items()}
        with autocast or nullcontext():
            s, n = loss_fn(**batch)
        total, count = total + float(s), count + n
    total, count = _all_sum(d, total, count)
    return total / count if count else None


def _call_on_eval(on_eval, step: int, val: float, d: Dist) -> None:
    """Rank 0 runs the callback; every rank learns whether it raised, so none waits forever."""
    error = None
    if on_eval and d.main:
        try:
            on_eval(step, val)
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the other ranks know
            error = e
    if d.ddp and _all_sum(d, float(error is not None))[0] and error is None:
        raise RuntimeError(f"rank {d.rank}: stopping at step {step} because on_eval raised on rank 0")
    if error is not None:
        raise error


def _save_adapter(model, tokenizer, adapter_dir: Path, lineage: dict) -> None:
    """Adapter (PEFT format) + tokenizer + lineage, renamed into place whole."""
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.tmp", dir=adapter_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / LINEAGE_FILE).write_text(json.dumps(lineage, indent=1, default=str))
        tmp.chmod(0o755)
        shutil.rmtree(adapter_dir, ignore_errors=True)
        os.replace(tmp, adapter_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fresh_output_dir(config: TrainConfig) -> Path:
    from training.base_model import agentloop_home

    return agentloop_home() / "train" / f"{config.run_name or 'run'}-{time.strftime('%Y%m%dT%H%M%S')}"


def _diff(a: dict, b: dict, prefix: str = "") -> str:
    keys = sorted(set(a) | set(b))
    parts = []
    for k in keys:
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            sub = _diff(a[k], b[k], f"{prefix}{k}.")
            parts += [sub] if sub else []
        elif a.get(k) != b.get(k):
            parts.append(f"{prefix}{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return "; ".join(parts)


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


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
