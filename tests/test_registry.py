"""serving/registry.py against a real MLflow server: an adapter becomes a tagged, described version that
answers chat messages through mlflow.pyfunc on CPU, with the adapter applied.

The tiny dataset, the trained adapter and its broken copies come from tests/conftest.py (shared with
test_gate.py, test_promote.py and test_promote_workflow.py; trained once per session).
"""

from __future__ import annotations

import pytest

from serving.registry import RegistryError, model_name_for
from tests.conftest import eval_set_dir, register, trained_adapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    from training.tool_format import TOOL_CALL_PARSER, template_sha256

    assert tags["agentloop.chat_template_sha256"] == template_sha256()
    assert tags["agentloop.tool_call_parser"] == TOOL_CALL_PARSER == "hermes"
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
    from training.tool_format import template_text

    assert (d / "artifacts/adapter/chat_template.jinja").read_text() == template_text(), (
        "the pyfunc must answer through the template training used"
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
    request = {
        "messages": [
            {"role": "system", "content": "You are Jamie, a parcel tracking agent."},
            {"role": "user", "content": "where is my parcel please"},
        ],
        "max_tokens": 12,
        "temperature": 0.0,
    }
    out = model.predict(request)
    reply = out["choices"][0]["message"]["content"]
    assert out["choices"][0]["message"]["role"] == "assistant" and reply.strip()
    assert 0 < out["usage"]["completion_tokens"] <= 12
    assert model.predict(request)["choices"][0]["message"]["content"] == reply, "greedy replies are fixed"

    # the same loaded model with its LoRA layers switched off answers as the base model does: the adapter
    # must change that fixed greedy reply, towards the style it was trained on (every reply "Jamie here: ...")
    chat_model = (
        model._model_impl.chat_model
    )  # a ChatModel's pyfunc wrapper (unwrap_python_model() is for PythonModel)
    with chat_model._model.disable_adapter():
        base_reply = model.predict(request)["choices"][0]["message"]["content"]
    assert reply != base_reply, f"the adapter changed nothing: {reply!r}"
    assert reply.startswith("Jamie here"), (reply, base_reply)


@pytest.mark.slow
def test_a_missing_training_run_is_named(tmp_path_factory, base_model_dir, mlflow_uri):
    adapter, _ = trained_adapter(tmp_path_factory, base_model_dir, mlflow_uri)
    with pytest.raises(RegistryError, match="training run 'nope' not found"):
        register(adapter, "nope", eval_set_dir(tmp_path_factory, base_model_dir), NAME)
