"""Evaluate an adapter against its base model: held-out loss on packed rows, and replies to held-out prompts.

    model, tokenizer, _ = load_model_and_tokenizer(base, dtype="float32")
    evaluate_loss(model, snapshot.splits["test"].rows)               # {"loss": 1.92, "perplexity": 6.8, ...}
    prompts = held_out_prompts(frame, snapshot_ids, n=16)             # conversations cut before the last reply
    table, summary = generation_check(base, adapter_dir, prompts)     # base and adapter on the same prompts
    log_evaluation(table, summary, run_id=run_id)                    # MLflow table + metrics

Every comparison is base vs adapter on the same rows and prompts, in one loaded model (the adapter
switched off for the base): a number for the adapter alone says nothing about whether training helped.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

IGNORE_INDEX = -100

# A heuristic, not a classifier: phrases with which chat models decline. The real agents' own replies
# are scored with it too, so its false-positive rate is visible in the same table.
REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|i (?:cannot|can ?not|can't|am unable to|'m unable to|won't be able to)"
    r"|as an ai\b|as a language model)",
    re.IGNORECASE,
)


# --- loss ------------------------------------------------------------------------------------------


def _autocast(device, enabled: bool):
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def evaluate_loss(model, rows: Sequence[Any], batch_size: int = 8, bf16: bool = True) -> dict[str, float]:
    """Token-weighted mean cross-entropy over the label tokens of packed rows, and its perplexity.

    Rows carry input_ids, labels and position_ids (labels aligned with input_ids: the token at t is
    predicted from position t-1). No attention mask: per-example position_ids keep packed examples
    apart. Logits are computed only where a label exists (the 49k-vocab head dominates otherwise).
    The same number as the trainer's validation loss (training.loss.evaluate_rows) on the same rows.
    """
    import torch
    import torch.nn.functional as F

    if not rows:
        raise ValueError("evaluate_loss got no rows: the split is empty (check the split fractions)")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.inference_mode(), _autocast(device, bf16):
            for i in range(0, len(rows), batch_size):
                batch = rows[i : i + batch_size]
                ids = torch.tensor([list(r.input_ids) for r in batch], device=device)
                labels = torch.tensor([list(r.labels) for r in batch], device=device)
                pos = torch.tensor([list(r.position_ids) for r in batch], device=device)
                keep = torch.zeros_like(labels, dtype=torch.bool)
                # position t predicts the label at t+1; never across examples (training.loss.label_positions)
                keep[:, :-1] = (labels[:, 1:] != IGNORE_INDEX) & (pos[:, 1:] != 0)
                if not keep.any():
                    continue
                out = model(
                    input_ids=ids, position_ids=pos, attention_mask=None, use_cache=False, logits_to_keep=keep
                )
                logits = out.logits.reshape(-1, out.logits.shape[-1]).float()
                targets = labels[:, 1:][keep[:, :-1]]
                total += F.cross_entropy(logits, targets, reduction="sum").item()
                count += int(targets.numel())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError(f"evaluate_loss: none of the {len(rows)} rows has a label token")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "loss_tokens": float(count)}


# --- prompts ---------------------------------------------------------------------------------------


@dataclass
class HeldOutPrompt:
    """A conversation cut just before its last assistant turn, and that turn (what the agent really said)."""

    interaction_id: str
    agent: str
    messages: list[dict]
    reference: str


def held_out_prompts(
    frame: pd.DataFrame,
    interaction_ids: Iterable[str] | None = None,
    n: int = 16,
    seed: int = 0,
    dataset_config=None,
) -> list[HeldOutPrompt]:
    """Up to n prompts from the training frame's rows (only `interaction_ids` when given, e.g. the test split).

    Messages are read as training reads them (training.dataset.parse_messages) and get the same
    system-prompt policy, so the model is asked in the form it was trained on: SmolLM2's template
    would otherwise slip in its default persona. The choice is a seeded hash order of interaction ids:
    stable across runs and machines, so two adapters evaluated on the same split see the same prompts.
    """
    from training.dataset import DatasetConfig, parse_messages

    config = dataset_config or DatasetConfig()
    wanted = set(interaction_ids) if interaction_ids is not None else None
    rows = frame if wanted is None else frame[frame["interaction_id"].astype(str).isin(wanted)]
    order = sorted(
        rows.itertuples(index=False),
        key=lambda r: hashlib.sha256(f"{seed}:{r.interaction_id}".encode()).hexdigest(),
    )
    out: list[HeldOutPrompt] = []
    for r in order:
        messages = parse_messages(r.messages_json)
        if not messages:
            continue
        if messages[0]["role"] != "system":
            if config.system_prompt_policy == "drop":
                continue
            messages = [
                {"role": "system", "content": config.default_system_prompt, "trainable": False},
                *messages,
            ]
        replies = [i for i, m in enumerate(messages) if m["trainable"]]
        if not replies:
            continue
        cut = replies[-1]
        out.append(
            HeldOutPrompt(
                interaction_id=str(r.interaction_id),
                agent=str(getattr(r, "agent", "") or ""),
                messages=[{"role": m["role"], "content": m["content"]} for m in messages[:cut]],
                reference=messages[cut]["content"],
            )
        )
        if len(out) >= n:
            break
    return out


# --- scores ----------------------------------------------------------------------------------------


@functools.cache
def _rouge_l_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"])  # its tokenizer: lowercase, split on anything not [a-z0-9]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (longest common subsequence of words) by Google's rouge-score; 0 when either is empty."""
    return _rouge_l_scorer().score(reference, candidate)["rougeL"].fmeasure


def is_refusal(text: str) -> bool:
    return bool(REFUSAL.search(text))


# --- generation ------------------------------------------------------------------------------------


def generate_replies(
    model,
    tokenizer,
    prompts: Sequence[HeldOutPrompt],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    max_prompt_tokens: int = 1024,
) -> list[str]:
    """Greedy replies, batched with left padding (pad = eos on SmolLM2: the attention mask tells them apart).

    Prompts longer than max_prompt_tokens keep their most recent tokens, as a serving client would."""
    import torch

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sides = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = tokenizer.truncation_side = "left"
    replies: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [
                tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
                for p in prompts[i : i + batch_size]
            ]
            enc = tokenizer(
                texts,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_prompt_tokens,
                add_special_tokens=False,
            ).to(device)
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            for row in out[:, enc["input_ids"].shape[1] :]:
                replies.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
    return replies


def _score(prefix: str, replies: list[str], references: list[str]) -> dict[str, list]:
    return {
        f"{prefix}_reply": replies,
        f"{prefix}_rouge_l": [rouge_l(r, ref) for r, ref in zip(replies, references, strict=True)],
        f"{prefix}_words": [len(r.split()) for r in replies],
        f"{prefix}_empty": [not r.strip() for r in replies],
        f"{prefix}_refusal": [is_refusal(r) for r in replies],
    }


def compare_replies(
    model, tokenizer, prompts: Sequence[HeldOutPrompt], max_new_tokens: int = 64, batch_size: int = 8
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Base and adapter replies to the same prompts from one PeftModel (adapter disabled for the base)."""
    if not prompts:
        raise ValueError(
            "generation check got no prompts: the held-out split has no conversation with a reply"
        )
    with model.disable_adapter():
        base = generate_replies(model, tokenizer, prompts, max_new_tokens, batch_size)
    adapter = generate_replies(model, tokenizer, prompts, max_new_tokens, batch_size)
    refs = [p.reference for p in prompts]
    table = pd.DataFrame(
        {
            "interaction_id": [p.interaction_id for p in prompts],
            "agent": [p.agent for p in prompts],
            "prompt": [
                next((m["content"] for m in reversed(p.messages) if m["role"] == "user"), "") for p in prompts
            ],
            "agent_reply": refs,
            **_score("base", base, refs),
            **_score("adapter", adapter, refs),
        }
    )
    summary = summarize(table)
    return table, summary


def summarize(table: pd.DataFrame) -> dict[str, float]:
    """Mean scores per side, plus how often the adapter beat the base on the same prompt."""
    out: dict[str, float] = {
        "prompts": float(len(table)),
        "reference_mean_words": float(table["agent_reply"].str.split().str.len().mean()),
        "reference_refusal_share": float(table["agent_reply"].map(is_refusal).mean()),
    }
    for side in ("base", "adapter"):
        out[f"{side}_rouge_l"] = float(table[f"{side}_rouge_l"].mean())
        out[f"{side}_mean_words"] = float(table[f"{side}_words"].mean())
        out[f"{side}_empty_share"] = float(table[f"{side}_empty"].mean())
        out[f"{side}_refusal_share"] = float(table[f"{side}_refusal"].mean())
    out["rouge_l_gain"] = out["adapter_rouge_l"] - out["base_rouge_l"]
    out["adapter_win_share"] = float((table["adapter_rouge_l"] > table["base_rouge_l"]).mean())
    return out


def load_with_adapter(base_model_ref: str | None, adapter_dir: str | Path):
    """(PeftModel, tokenizer, base identity): the base in float32 (bf16 autocast at use, as in training), on the
    GPU when there is one."""
    import torch
    from peft import PeftModel

    from training.base_model import load_model_and_tokenizer

    model, tokenizer, identity = load_model_and_tokenizer(base_model_ref or None, dtype="float32")
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return model, tokenizer, identity


def generation_check(
    base_model_ref: str | None,
    adapter_dir: str | Path,
    prompts: Sequence[HeldOutPrompt],
    max_new_tokens: int = 64,
    batch_size: int = 8,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Replies of the base model and of the adapter to the same held-out prompts, scored against the real reply.

    Returns the per-prompt table (prompt, real reply, both replies, ROUGE-L, words, empty/refusal
    flags) and summary metrics (means per side, rouge_l_gain, adapter_win_share)."""
    model, tokenizer, _ = load_with_adapter(base_model_ref, adapter_dir)
    return compare_replies(model, tokenizer, prompts, max_new_tokens, batch_size)


@dataclass
class Evaluation:
    metrics: dict[str, float]
    table: pd.DataFrame  # one row per held-out prompt; empty when no prompts were given


def evaluate_adapter(
    base_model_ref: str | None,
    adapter_dir: str | Path,
    split_rows: dict[str, Sequence[Any]],
    prompts: Sequence[HeldOutPrompt],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    bf16: bool = True,
) -> Evaluation:
    """Loss and perplexity per split (base and adapter on the same rows) and the generation check, one model load.

    Metric names: `<split>_loss`, `<split>_perplexity` (adapter), `base_<split>_loss`, ..., then the
    generation summary (`adapter_rouge_l`, `base_rouge_l`, `rouge_l_gain`, ...)."""
    model, tokenizer, _ = load_with_adapter(base_model_ref, adapter_dir)
    metrics: dict[str, float] = {}
    for split, rows in split_rows.items():
        if not rows:
            continue
        with model.disable_adapter():
            base = evaluate_loss(model, rows, batch_size=batch_size, bf16=bf16)
        tuned = evaluate_loss(model, rows, batch_size=batch_size, bf16=bf16)
        metrics.update(
            {
                f"{split}_loss": tuned["loss"],
                f"{split}_perplexity": tuned["perplexity"],
                f"base_{split}_loss": base["loss"],
                f"base_{split}_perplexity": base["perplexity"],
                f"{split}_loss_tokens": tuned["loss_tokens"],
            }
        )
    table = pd.DataFrame()
    if prompts:
        table, summary = compare_replies(model, tokenizer, prompts, max_new_tokens, batch_size)
        metrics.update(summary)
    return Evaluation(metrics=metrics, table=table)


def log_evaluation(
    table: pd.DataFrame,
    metrics: dict[str, float],
    run_id: str | None = None,
    prefix: str = "eval.",
    artifact_file: str = "evaluation/generations.json",
) -> None:
    """Write the per-prompt table (an MLflow table: the run's Evaluation/Artifacts view) and the metrics.

    Into `run_id` when given (a finished run is fine), else the active run."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            raise RuntimeError("log_evaluation needs run_id or an active MLflow run (mlflow.start_run())")
        run_id = active.info.run_id
    if not table.empty:
        mlflow.log_table(table, artifact_file=artifact_file, run_id=run_id)
    now = int(time.time() * 1000)
    MlflowClient().log_batch(
        run_id,
        metrics=[
            Metric(f"{prefix}{k}", float(v), now, 0)
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ],
    )


__all__ = [
    "HeldOutPrompt",
    "Evaluation",
    "evaluate_loss",
    "held_out_prompts",
    "rouge_l",
    "is_refusal",
    "generate_replies",
    "compare_replies",
    "generation_check",
    "evaluate_adapter",
    "log_evaluation",
    "summarize",
]
