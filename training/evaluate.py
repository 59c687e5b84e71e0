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
import json
import math
import re
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
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

    from training.base_model import bf16_is_fast

    if enabled and bf16_is_fast(device.type):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


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
        # chat replies only (ROUGE-L): a tool-call turn is scored by training/tool_eval.py
        replies = [i for i, m in enumerate(messages) if m["trainable"] and not m.get("tool_calls")]
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
    texts = [
        tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True) for p in prompts
    ]
    return generate_texts(model, tokenizer, texts, max_new_tokens, batch_size, max_prompt_tokens)


def generate_texts(
    model,
    tokenizer,
    texts: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    max_prompt_tokens: int = 1024,
) -> list[str]:
    """Greedy continuations of already-templated prompt texts, in their order.

    Batches are formed in order of prompt length (less padding: tool schemas make lengths vary 10x)."""
    import torch

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sides = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = tokenizer.truncation_side = "left"
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    replies: list[str] = [""] * len(texts)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx],
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
            for i, row in zip(idx, out[:, enc["input_ids"].shape[1] :], strict=True):
                replies[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
    return replies


# --- tool calls ------------------------------------------------------------------------------------

# What the per-example tool-call table of one side holds (an MLflow table in the training run, read back by
# the gate): the outcome and the raw generation, so a person can see why an example was scored wrong.
TOOL_TABLE_COLUMNS = ("id", "category", "expected", "correct", "error_type", "n_calls", "malformed", "output")
TOOL_CALLS_ARTIFACT = "evaluation/tool_calls.json"  # one row per (side, held-out example)
TOOL_CALLS_KEY_ARTIFACT = "evaluation/tool_calls_key.json"  # what the table was generated on and how
TOOL_MAX_NEW_TOKENS = 96  # a BFCL call is 20-80 tokens; parallel calls beyond that are cut (scored wrong)
TOOL_MAX_PROMPT_TOKENS = 4096  # the longest held-out prompt (tools included) is ~3,000 tokens


def select_tool_examples(examples: Sequence[dict], n: int, seed: int = 0) -> list[dict]:
    """Up to n held-out examples, in a seeded hash order of their ids (the same n on every machine and run).

    Examples no call can pass (features.bfcl's `answerable` False) are left out: they would be wrong for
    every model and only dilute the paired test."""
    usable = [e for e in examples if e.get("answerable", True)]
    order = sorted(usable, key=lambda e: hashlib.sha256(f"{seed}:{e['id']}".encode()).hexdigest())
    return order[:n] if n >= 0 else order


def tool_prompt_text(tokenizer, example: dict) -> str:
    """The prompt of one held-out example: its messages and tools through agentloop's one template.

    Base and adapter get exactly this text (same tools, same format instructions in the system turn)."""
    from training.tool_format import apply_template

    return apply_template(
        tokenizer, example["messages"], tools=example.get("tools"), add_generation_prompt=True, tokenize=False
    )


def tool_examples_sha256(examples: Sequence[dict]) -> str:
    return hashlib.sha256(json.dumps(list(examples), sort_keys=True).encode()).hexdigest()


def tool_cache_key(
    examples: Sequence[dict], base_weights_sha256: str, max_new_tokens: int, max_prompt_tokens: int
) -> dict:
    """What makes two tool-call generations the same: examples, template, base weights, token budgets."""
    from training.tool_format import template_sha256

    return {
        "examples_sha256": tool_examples_sha256(examples),
        "template_sha256": template_sha256(),
        "base_weights_sha256": base_weights_sha256,
        "max_new_tokens": int(max_new_tokens),
        "max_prompt_tokens": int(max_prompt_tokens),
        "greedy": True,
    }


def tool_call_outcomes(
    model,
    tokenizer,
    examples: Sequence[dict],
    max_new_tokens: int = TOOL_MAX_NEW_TOKENS,
    batch_size: int = 8,
    max_prompt_tokens: int = TOOL_MAX_PROMPT_TOKENS,
) -> pd.DataFrame:
    """Greedy generations for held-out tool-call examples, read as vLLM's hermes parser reads them, scored by
    training.tool_eval (BFCL's AST checker; irrelevance: no call is right). One row per example."""
    texts = [tool_prompt_text(tokenizer, e) for e in examples]
    outputs = generate_texts(model, tokenizer, texts, max_new_tokens, batch_size, max_prompt_tokens)
    return score_tool_outputs(examples, outputs)


def score_tool_outputs(examples: Sequence[dict], outputs: Sequence[str]) -> pd.DataFrame:
    """The per-example table of generations however they were made (in process, or by a server)."""
    from training.tool_eval import score_example
    from training.tool_format import parse_tool_calls

    rows = []
    for example, output in zip(examples, outputs, strict=True):
        s = score_example(example, parse_tool_calls(output))
        rows.append(
            {
                "id": s.id,
                "category": s.category,
                "expected": example.get("expected", "call"),
                "correct": bool(s.correct),
                "error_type": s.error_type,
                "n_calls": s.n_calls,
                "malformed": ",".join(s.malformed),
                "output": output,
            }
        )
    return pd.DataFrame(rows, columns=list(TOOL_TABLE_COLUMNS))


def tool_summary(table: pd.DataFrame, side: str) -> dict[str, float]:
    """`tool_<side>_accuracy` overall and `tool_<side>_accuracy_<category>`, plus `tool_n`."""
    out = {"tool_n": float(len(table)), f"tool_{side}_accuracy": float(table["correct"].mean())}
    for category, group in table.groupby("category"):
        out[f"tool_{side}_accuracy_{category}"] = float(group["correct"].mean())
        out[f"tool_n_{category}"] = float(len(group))
    out[f"tool_{side}_malformed_share"] = float((table["malformed"] != "").mean())
    return out


def log_tool_outcomes(tables: dict[str, pd.DataFrame], key: dict, run_id: str) -> None:
    """The per-example outcomes of each side (e.g. base, adapter) and their cache key, into a run."""
    import mlflow

    rows = pd.concat([t.assign(side=side) for side, t in tables.items()], ignore_index=True)
    mlflow.log_table(rows, artifact_file=TOOL_CALLS_ARTIFACT, run_id=run_id)
    mlflow.log_dict(key, TOOL_CALLS_KEY_ARTIFACT, run_id=run_id)


def load_tool_outcomes(run_id: str, key: dict, tracking_uri: str = "") -> dict[str, pd.DataFrame]:
    """The sides a run's evaluation already generated for exactly `key` ({} when it has none or another key)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri or None)
    try:
        names = {a.path for a in client.list_artifacts(run_id, "evaluation")}
        if TOOL_CALLS_KEY_ARTIFACT not in names or TOOL_CALLS_ARTIFACT not in names:
            return {}
        with tempfile.TemporaryDirectory() as tmp:
            key_path = client.download_artifacts(run_id, TOOL_CALLS_KEY_ARTIFACT, tmp)
            if json.loads(Path(key_path).read_text()) != key:
                return {}
            table_path = client.download_artifacts(run_id, TOOL_CALLS_ARTIFACT, tmp)
            logged = json.loads(Path(table_path).read_text())
    except mlflow.exceptions.MlflowException:
        return {}
    rows = pd.DataFrame(logged["data"], columns=logged["columns"])
    rows["malformed"] = rows["malformed"].fillna("")
    return {
        str(side): t.drop(columns=["side"]).reset_index(drop=True)
        for side, t in rows.groupby("side", sort=False)
    }


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
    tool_tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # "base"/"adapter" -> per-example
    tool_key: dict = field(default_factory=dict)  # tool_cache_key of tool_tables ({} without tool examples)


def evaluate_adapter(
    base_model_ref: str | None,
    adapter_dir: str | Path,
    split_rows: dict[str, Sequence[Any]],
    prompts: Sequence[HeldOutPrompt],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    bf16: bool = True,
    tool_examples: Sequence[dict] = (),
    tool_max_new_tokens: int = TOOL_MAX_NEW_TOKENS,
) -> Evaluation:
    """Loss and perplexity per split (base and adapter on the same rows), the generation check and tool-call
    accuracy on held-out calls, one model load.

    Metric names: `<split>_loss`, `<split>_perplexity` (adapter), `base_<split>_loss`, ..., then the
    generation summary (`adapter_rouge_l`, `base_rouge_l`, `rouge_l_gain`, ...), then with tool examples
    `tool_base_accuracy`, `tool_adapter_accuracy`, `tool_accuracy_gain`, per category, `tool_n`."""
    model, tokenizer, identity = load_with_adapter(base_model_ref, adapter_dir)
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
    tool_tables: dict[str, pd.DataFrame] = {}
    key: dict = {}
    if tool_examples:
        with model.disable_adapter():
            tool_tables["base"] = tool_call_outcomes(
                model, tokenizer, tool_examples, tool_max_new_tokens, batch_size
            )
        tool_tables["adapter"] = tool_call_outcomes(
            model, tokenizer, tool_examples, tool_max_new_tokens, batch_size
        )
        for side, t in tool_tables.items():
            metrics.update(tool_summary(t, side))
        metrics["tool_accuracy_gain"] = metrics["tool_adapter_accuracy"] - metrics["tool_base_accuracy"]
        key = tool_cache_key(
            tool_examples, identity.weights_sha256, tool_max_new_tokens, TOOL_MAX_PROMPT_TOKENS
        )
    return Evaluation(metrics=metrics, table=table, tool_tables=tool_tables, tool_key=key)


def log_evaluation(
    table: pd.DataFrame,
    metrics: dict[str, float],
    run_id: str | None = None,
    prefix: str = "eval.",
    artifact_file: str = "evaluation/generations.json",
    tool_tables: dict[str, pd.DataFrame] | None = None,
    tool_key: dict | None = None,
) -> None:
    """Write the per-prompt table (an MLflow table: the run's Evaluation/Artifacts view), the per-example
    tool-call outcomes with their cache key (the gate reuses them), and the metrics.

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
    if tool_tables:
        log_tool_outcomes(tool_tables, tool_key or {}, run_id)
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
    "generate_texts",
    "select_tool_examples",
    "tool_prompt_text",
    "tool_cache_key",
    "tool_call_outcomes",
    "tool_summary",
    "log_tool_outcomes",
    "load_tool_outcomes",
]
