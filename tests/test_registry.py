"""serving/registry.py against a real MLflow server: an adapter becomes a tagged, described version that
answers chat messages through mlflow.pyfunc on CPU.

The helpers at the top (a tiny dataset, a trained adapter, a deliberately broken one) are shared with
test_gate.py, test_promote.py and test_promote_workflow.py. Trained adapters are cached for the test
session under pytest's base temp folder, so each is trained once however many modules use it.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

from serving.registry import RegisterRequest, RegistryError, model_name_for

SEQ = 128
WORDS = (
    "parcel left the depot this morning and should arrive tomorrow before noon please keep your "
    "tracking number ready if the courier misses you"
).split()


# --- shared helpers ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Everything in-process (training, MLflow's validation of a ChatModel, the gate, the pyfunc) on one torch
    thread: on 2 busy cores, 2 OpenMP threads ran the gate's generation 5x slower (8.5 s vs 1.7 s measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def conversation(rng: random.Random) -> list[dict]:
    """An agent with an unmistakable style (every reply starts "Jamie here:"), so a few training steps show."""
    msgs = [{"role": "system", "content": "You are Jamie, a parcel tracking agent."}]
    for _ in range(rng.randint(1, 2)):
        msgs.append(
            {
                "role": "user",
                "content": "where is my parcel " + " ".join(rng.choices(WORDS, k=rng.randint(2, 6))),
            }
        )
        msgs.append(
            {
                "role": "assistant",
                "content": "Jamie here: " + " ".join(rng.choices(WORDS, k=rng.randint(4, 10))),
            }
        )
    return msgs


def tiny_frame(n: int = 48, seed: int = 7) -> pd.DataFrame:
    rng = random.Random(seed)
    return pd.DataFrame(
        {
            "interaction_id": [f"int-{i:03d}" for i in range(n)],
            "session_id": [f"sess-{i // 2}" for i in range(n)],
            "agent": ["agent-jamie"] * n,
            "messages_json": [json.dumps(conversation(rng)) for _ in range(n)],
        }
    )


def tiny_snapshot(base_model_dir):
    from transformers import AutoTokenizer

    from training.dataset import DatasetConfig, build_snapshot

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    return build_snapshot(
        tiny_frame(), tokenizer, DatasetConfig(max_seq_len=SEQ, val_fraction=0.15, test_fraction=0.15)
    )


def _session_cache(tmp_path_factory) -> Path:
    d = tmp_path_factory.getbasetemp() / "agentloop-promote-cache"
    d.mkdir(exist_ok=True)
    return d


def eval_set_dir(tmp_path_factory, base_model_dir) -> Path:
    """A frozen evaluation set from the tiny snapshot's test split: 4 prompts, replies of 16 tokens keep it quick."""
    from training.eval_set import build_eval_set

    out = _session_cache(tmp_path_factory) / "eval_set"
    if not (out / "eval_set.json").is_file():
        build_eval_set(tiny_snapshot(base_model_dir), tiny_frame(), n_prompts=4, max_rows=8).save(out)
    return out


def trained_adapter(tmp_path_factory, base_model_dir, mlflow_server: str, seed: int = 1) -> tuple[Path, str]:
    """(adapter dir, MLflow training run id): 24 real training steps on the tiny snapshot, cached per session."""
    import mlflow

    from training.trainer import TrainConfig, train

    out = _session_cache(tmp_path_factory) / f"trained-{seed}"
    done = out / "registry-test.json"
    if done.is_file():
        info = json.loads(done.read_text())
        return Path(info["adapter_dir"]), info["run_id"]
    mlflow.set_tracking_uri(mlflow_server)
    config = TrainConfig(
        base_model=str(base_model_dir),
        output_dir=str(out),
        lora_r=8,
        lora_alpha=16,
        micro_batch_size=2,
        grad_accum_steps=1,
        max_steps=24,
        warmup_steps=2,
        learning_rate=2e-3,
        eval_every=0,
        checkpoint_every=0,
        num_threads=1,
        seed=seed,
        mlflow_experiment="test-promotion-training",
        run_name=f"tiny-{seed}",
    )
    result = train(config, tiny_snapshot(base_model_dir), flyte_execution_id="f-test-exec")
    done.write_text(json.dumps({"adapter_dir": result.adapter_dir, "run_id": result.mlflow_run_id}))
    return Path(result.adapter_dir), result.mlflow_run_id


def scaled_adapter(src: Path, dest: Path, scale: float = 0.0, noise: float = 0.0, seed: int = 0) -> Path:
    """A copy of an adapter whose B matrices are multiplied by `scale` and get N(0, noise) added.

    scale=0.5: a milder copy of a good adapter (distinct weights, still sensible).
    noise=1.0: a deliberately broken adapter, measurably worse than the base model."""
    import torch
    from safetensors.torch import load_file, save_file

    if (dest / "adapter_model.safetensors").is_file():
        return dest
    shutil.copytree(src, dest, dirs_exist_ok=True)
    tensors = load_file(src / "adapter_model.safetensors")
    g = torch.Generator().manual_seed(seed)
    for k, t in tensors.items():
        if "lora_B" in k:
            tensors[k] = (
                (t.float() * scale + torch.randn(t.shape, generator=g) * noise).to(t.dtype).contiguous()
            )
    save_file(tensors, dest / "adapter_model.safetensors")
    return dest


def register(adapter: Path, run_id: str, eval_set: Path, model_name: str, **kw):
    from serving.registry import register_adapter

    return register_adapter(
        RegisterRequest(
            adapter_dir=str(adapter),
            training_run_id=run_id,
            eval_set_dir=str(eval_set),
            model_name=model_name,
            data_start="2026-01-01T00:00:00Z",
            data_end="2026-01-31T00:00:00Z",
            git_commit="0123abc",
            **kw,
        )
    )


# --- fast -------------------------------------------------------------------------------------------


def test_one_registered_model_per_training_scope():
    assert model_name_for([]) == "agentloop-chat"
    assert model_name_for(None) == "agentloop-chat"
    assert model_name_for(["Support Bot_2"]) == "agentloop-support-bot-2"
    assert model_name_for("agent-a") == "agentloop-agent-a"
    with pytest.raises(ValueError, match="one registered model per training scope"):
        model_name_for(["a", "b"])


def test_registering_a_folder_that_is_not_an_adapter_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}.*not a PEFT adapter.*output_dir>/adapter"):
        register(tmp_path, "no-run", tmp_path, "agentloop-test-registry")


# --- against MLflow -----------------------------------------------------------------------------------

NAME = "agentloop-test-registry"


@pytest.fixture(scope="module")
def registered(tmp_path_factory, base_model_dir, mlflow_server):
    import mlflow

    adapter, run_id = trained_adapter(tmp_path_factory, base_model_dir, mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    try:
        yield register(
            adapter, run_id, eval_set_dir(tmp_path_factory, base_model_dir), NAME, agents=["agent-jamie"]
        )
    finally:
        mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_a_registered_version_carries_lineage_tags_a_description_and_the_challenger_alias(
    registered, mlflow_server
):
    from mlflow.tracking import MlflowClient

    from training.base_model import resolve_base_model

    c = MlflowClient(mlflow_server)
    mv = c.get_model_version(NAME, registered.version)
    run = c.get_run(registered.run_id)
    tags = mv.tags
    assert (
        tags["agentloop.data_start"] == "2026-01-01T00:00:00Z"
        and tags["agentloop.data_end"] == "2026-01-31T00:00:00Z"
    )
    assert tags["agentloop.agents"] == "agent-jamie"
    assert tags["dataset.snapshot_hash"] == run.data.tags["dataset.snapshot_hash"]
    assert tags["agentloop.training_run_id"] == registered.run_id
    assert tags["agentloop.feature_service"] == "training_v1"
    assert tags["flyte.execution_id"] == "f-test-exec"
    assert tags["agentloop.git_commit"] == "0123abc"
    assert tags["agentloop.base_model_sha256"] == resolve_base_model("").weights_sha256
    assert c.get_model_version_by_alias(NAME, "challenger").version == registered.version
    assert mv.run_id == registered.run_id
    for heading in ("### Data", "### Evaluation", "### Sweep", "### Lineage"):
        assert heading in mv.description


@pytest.mark.slow
def test_the_version_holds_the_adapter_tokenizer_and_eval_set_but_no_base_weights(
    registered, mlflow_server, tmp_path
):
    from serving.registry import download_version

    d = download_version(NAME, registered.version, tmp_path, mlflow_server)
    adapter = {p.name for p in (d / "artifacts" / "adapter").iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "generation_config.json",
    } <= adapter
    assert (
        "chat_template.jinja" in adapter
        or "chat_template" in (d / "artifacts/adapter/tokenizer_config.json").read_text()
    )
    assert (d / "artifacts" / "eval_set" / "eval_set.json").is_file()
    assert not list(d.rglob("model.safetensors")), "base model weights must not be copied into the version"
    mlmodel = (d / "MLmodel").read_text()
    assert "signature" in mlmodel and "input_example" in mlmodel and "weights_sha256" in mlmodel


@pytest.mark.slow
def test_the_pyfunc_loads_from_an_alias_and_answers_chat_messages(registered, mlflow_server):
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@challenger")
    out = model.predict(
        {
            "messages": [
                {"role": "system", "content": "You are Jamie, a parcel tracking agent."},
                {"role": "user", "content": "where is my parcel please"},
            ],
            "max_tokens": 12,
            "temperature": 0.0,
        }
    )
    reply = out["choices"][0]["message"]["content"]
    assert out["choices"][0]["message"]["role"] == "assistant" and reply.strip()
    assert 0 < out["usage"]["completion_tokens"] <= 12


@pytest.mark.slow
def test_a_missing_training_run_is_named(tmp_path_factory, base_model_dir, mlflow_uri):
    adapter, _ = trained_adapter(tmp_path_factory, base_model_dir, mlflow_uri)
    with pytest.raises(RegistryError, match="training run 'nope' not found"):
        register(adapter, "nope", eval_set_dir(tmp_path_factory, base_model_dir), NAME)
