"""The model a run trains: the base model loaded for training with its LoRA adapter attached.

lean_lora_forward replaces PEFT's per-layer forward when it is safe to (one adapter, no dropout): see its
docstring for what it saves.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from training.distributed import Dist

log = logging.getLogger(__name__)


def use_bf16(config, device) -> bool:
    """config.bf16, where bf16 is fast on `device` (training.base_model.bf16_is_fast); else fp32, said once."""
    from training.base_model import bf16_is_fast

    if not config.bf16:
        return False
    if bf16_is_fast(device.type):
        return True
    if not getattr(use_bf16, "warned", False) and os.environ.get("RANK", "0") == "0":  # said by rank 0 only
        use_bf16.warned = True
        log.warning(
            "bf16 requested but %s has no fast bf16 kernels (no AVX-512 BF16/AMX): training in fp32", device
        )
    return False


def load_peft_model(config, d: Dist):
    """(PEFT model on d.device, tokenizer, BaseModelIdentity) for a TrainConfig; rank 0 prepares the base model first."""
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
    dtype = torch.bfloat16 if use_bf16(config, d.device) else torch.float32
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


def trainable_weights(peft_model) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in peft_model.named_parameters() if p.requires_grad}
