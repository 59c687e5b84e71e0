"""The one template renders tool calls that vLLM's own hermes parser (in the serve venv) reads back to the
same calls, and training/tool_format.py's port of that parser agrees with it, malformed outputs included."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import absent_or_fail
from training.tool_format import apply_template, format_tool_calls, parse_tool_calls

SCRIPT = Path(__file__).resolve().parent / "data" / "vllm_hermes_parse.py"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} for tests",
            "parameters": {"type": "object", "properties": {"ns": {"type": "string"}}},
        },
    }
    for name in ("get_pods", "scale_deployment", "prometheus.query")
]
CALL_SETS = [
    [{"name": "get_pods", "arguments": {"ns": "prod"}}],
    [
        {"name": "scale_deployment", "arguments": {"ns": "prod", "name": "api", "replicas": 3}},
        {"name": "prometheus.query", "arguments": {"q": 'rate(http_requests_total{job="api"}[5m])'}},
    ],
    [
        {
            "name": "get_pods",
            "arguments": {"ns": 'café "quoted" \\ back', "nested": {"a": [1, 2.5, None, True]}},
        }
    ],
    [{"name": "get_pods", "arguments": {}}],
]
MALFORMED = [
    "no call at all",
    "",
    "<tool_call>\n{not json}\n</tool_call>",
    '<tool_call>\n{"name": "get_pods"}\n</tool_call>',  # no arguments
    '<tool_call>\n{"arguments": {}}\n</tool_call>',  # no name
    '<tool_call>\n{"name": "get_pods", "arguments": {"ns": "prod"}}',  # never closed: still read
    'Let me check.\n<tool_call>\n{"name": "get_pods", "arguments": {"ns": "a"}}\n</tool_call>',
    '<tool_call>\n{"name": "get_pods", "arguments": {"ns": "a"}}\n</tool_call>\n<tool_call>\n{"name": "x"',
    "<tool_call>",
    '<tool_call>\n["get_pods"]\n</tool_call>',
]


@pytest.fixture(scope="module")
def tokenizer(base_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_dir)


def vllm_parse(texts: list[str], base_model_dir) -> list[dict]:
    from serving.vllm_server import default_serve_python

    python = default_serve_python()
    if not Path(python).exists():
        absent_or_fail(f"the serve venv ({python}) is absent: `make serve-env` builds it")
    proc = subprocess.run(
        [python, str(SCRIPT), str(base_model_dir)],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def ours(text: str) -> dict:
    m = parse_tool_calls(text)
    calls = [
        {"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in m["tool_calls"]
    ]
    return {"tools_called": bool(calls), "content": m["content"], "calls": calls}


def test_rendered_calls_parse_back_with_vllms_parser_and_ours_to_the_same_calls(tokenizer, base_model_dir):
    texts = []
    for calls in CALL_SETS:
        openai_calls = [
            {
                "id": f"c{i}",
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
            }
            for i, c in enumerate(calls)
        ]
        messages = [
            {"role": "user", "content": "do it"},
            {"role": "assistant", "content": None, "tool_calls": openai_calls},
        ]
        prompt = apply_template(
            tokenizer, messages[:1], tools=TOOLS, add_generation_prompt=True, tokenize=False
        )
        full = apply_template(tokenizer, messages, tools=TOOLS, tokenize=False)
        assert full.startswith(prompt)
        generated = full[len(prompt) :].removesuffix("<|im_end|>\n")  # what the model emits before its eos
        assert generated == format_tool_calls(openai_calls)
        texts.append(generated)
    theirs = vllm_parse(texts, base_model_dir)
    for calls, text, got in zip(CALL_SETS, texts, theirs, strict=True):
        assert got == ours(text)
        assert got["tools_called"] and got["content"] is None
        assert [(c["name"], json.loads(c["arguments"])) for c in got["calls"]] == [
            (c["name"], c["arguments"]) for c in calls
        ]


def test_ours_agrees_with_vllms_parser_on_malformed_outputs(base_model_dir):
    theirs = vllm_parse(MALFORMED, base_model_dir)
    for text, got in zip(MALFORMED, theirs, strict=True):
        assert ours(text) == got, text
