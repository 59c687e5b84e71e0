"""training/flops.py: the FLOP model's sizes agree with the weights actually saved in the base model."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from training.flops import model_dims, step_flops
from training.trainer import DEFAULT_TARGET_MODULES


def weight_shapes(model_dir) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            shapes.update({k: tuple(st.get_slice(k).get_shape()) for k in st.keys()})
    return shapes


def test_the_decoder_and_lora_sizes_match_the_saved_weights(base_model_dir):
    dims = model_dims(base_model_dir, 16, DEFAULT_TARGET_MODULES)
    shapes = weight_shapes(base_model_dir)
    proj = {k: s for k, s in shapes.items() if ".layers." in k and k.endswith("_proj.weight")}
    assert dims["n_body"] == sum(a * b for a, b in proj.values())
    # LoRA on a linear of weight [out, in] adds r * (in + out) parameters
    assert dims["n_lora"] == sum(16 * (a + b) for a, b in proj.values())
    assert (dims["vocab"], dims["d"]) == shapes["model.embed_tokens.weight"]
    assert len({k.split(".layers.")[1].split(".")[0] for k in proj}) == dims["layers"]


def test_step_flops_adds_the_four_terms():
    dims = {"n_body": 100, "n_lora": 10, "d": 4, "vocab": 50, "d_attn": 8, "layers": 2}
    # one example of 3 tokens, 2 of them labels: 4*100*3 + 6*10*3 + 4*4*50*2 + 6*8*2*(3*4)
    assert step_flops(dims, useful=3, labels=2, sum_l_l1=12) == 1200 + 180 + 1600 + 1152


def test_an_unknown_target_module_is_named(base_model_dir):
    with pytest.raises(ValueError, match=r"\['lm_head'\]"):
        model_dims(base_model_dir, 16, ["q_proj", "lm_head"])
