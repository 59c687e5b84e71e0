"""Training checkpoints: one folder per step, written whole or not at all.

Layout of `<output_dir>/checkpoints/step-000040/`:

    adapter/adapter_model.safetensors   current LoRA weights, PEFT format (loadable as an adapter)
    adapter/adapter_config.json
    best_adapter.safetensors            LoRA weights at the best validation loss so far (if any)
    optimizer.pt                        AdamW state (torch.save of state_dict, tensors only)
    state.json                          step, counters, history, best loss, MLflow run id, fingerprint

A checkpoint is built in a hidden temporary folder beside its final name, flushed to disk and then
renamed, so a run killed at any moment (SIGKILL, preemption) leaves either the complete folder or
nothing; leftovers of interrupted writes are hidden names that `latest_checkpoint` never returns.
The learning rate and the data order are functions of the step, and dropout is reseeded per
micro-batch, so (weights, optimizer, step) is all a run needs to continue exactly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from features.fsutil import atomic_dir

_NAME = re.compile(r"^step-(\d{6,})$")


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if p.is_dir() and (m := _NAME.match(p.name)) and (p / "state.json").exists()
    ]
    return max(found)[1] if found else None


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    peft_model,
    optimizer: torch.optim.Optimizer,
    state: dict,
    best_trainable: dict[str, torch.Tensor] | None,
    keep: int = 2,
) -> Path:
    """Write the checkpoint for `step` atomically; keep the newest `keep` checkpoints."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*.tmp*"):  # what a killed writer left behind
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{step:06d}"
    # the same step written again after a resume replaces the folder whole
    with atomic_dir(final, durable=True) as tmp:
        peft_model.save_pretrained(tmp / "adapter")
        if best_trainable is not None:
            save_file(
                {k: v.contiguous() for k, v in best_trainable.items()}, tmp / "best_adapter.safetensors"
            )
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True, allow_nan=True))
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)))
    for _, old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    path: str | os.PathLike, peft_model, optimizer: torch.optim.Optimizer
) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """Restore weights and optimizer in place; return (state, best trainable weights or None)."""
    from peft import set_peft_model_state_dict

    path = Path(path)
    adapter = load_file(path / "adapter" / "adapter_model.safetensors")
    result = set_peft_model_state_dict(peft_model, adapter)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise RuntimeError(
            f"checkpoint {path} lacks LoRA weights {missing[:3]}...: it was written for another "
            f"adapter layout (target_modules / lora_r); resume into a fresh output_dir"
        )
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    best_file = path / "best_adapter.safetensors"
    best = load_file(best_file) if best_file.exists() else None
    return json.loads((path / "state.json").read_text()), best


def fingerprint_diff(a: dict, b: dict, prefix: str = "") -> str:
    """What differs between two (nested) fingerprints, as "key: old -> new; ..."."""
    keys = sorted(set(a) | set(b))
    parts = []
    for k in keys:
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            sub = fingerprint_diff(a[k], b[k], f"{prefix}{k}.")
            parts += [sub] if sub else []
        elif a.get(k) != b.get(k):
            parts.append(f"{prefix}{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return "; ".join(parts)
