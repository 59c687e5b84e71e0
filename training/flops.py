"""Model FLOPs of a LoRA training step: what the maths needs, not what kernels happen to do.

Per step, over its useful tokens (non-padding positions of the rows it trains on) and label positions:

    4 * N_body * useful   frozen decoder matmuls: forward 2N, backward to activations 2N (no weight grads)
  + 6 * N_lora * useful   LoRA matmuls: forward, backward to activations and to their own weights
  + 4 * d * V * labels    the LM head, forward + backward to the hidden state, only where loss is taken
                          (training.loss.LabelLoss)
  + 6 * d_attn * layers * sum(L * (L + 1)) over the step's examples of length L (causal QK^T and AV,
                          forward 2 * d_attn * L(L+1), backward twice that; block-diagonal, no padding)

Gradient-checkpointing recompute and padding are not counted: they are waste, not work. The benchmarks
(bench/train_throughput.py, bench/gpu_check.py) divide this by step time and a measured matmul peak.
"""

from __future__ import annotations

import json
from pathlib import Path


def model_dims(model_dir: str | Path, lora_r: int, target_modules: list[str]) -> dict:
    """The sizes the formula needs, from a Llama-style HF config.json and the LoRA rank and targets."""
    c = json.loads((Path(model_dir) / "config.json").read_text())
    d, ff, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    hd = c.get("head_dim") or d // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    shapes = {
        "q_proj": (d, q),
        "k_proj": (d, kv),
        "v_proj": (d, kv),
        "o_proj": (q, d),
        "gate_proj": (d, ff),
        "up_proj": (d, ff),
        "down_proj": (ff, d),
    }
    unknown = sorted(set(target_modules) - set(shapes))
    if unknown:
        raise ValueError(f"no FLOP model for LoRA target module(s) {unknown}; known: {sorted(shapes)}")
    return {
        "d": d,
        "vocab": c["vocab_size"],
        "layers": layers,
        "d_attn": q,
        "n_body": layers * sum(i * o for i, o in shapes.values()),
        "n_lora": layers * sum(lora_r * sum(shapes[m]) for m in target_modules),
    }


def step_flops(dims: dict, useful: int, labels: int, sum_l_l1: int) -> float:
    """Model FLOPs of steps with `useful` tokens, `labels` label positions, and sum(L * (L + 1)) `sum_l_l1`."""
    return (
        4 * dims["n_body"] * useful
        + 6 * dims["n_lora"] * useful
        + 4 * dims["d"] * dims["vocab"] * labels
        + 6 * dims["d_attn"] * dims["layers"] * sum_l_l1
    )
