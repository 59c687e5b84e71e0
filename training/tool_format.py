"""The one chat template of agentloop, with tools, and the reading of tool calls out of generated text.

vLLM applies one chat template and one tool-call parser per server, not per adapter, so training,
evaluation, MLflow's pyfunc and the vLLM server all use the file `TEMPLATE_PATH` (versioned by its
sha256, `template_sha256()`, which the registry records on every version) and the server runs with
`--tool-call-parser hermes` (`TOOL_CALL_PARSER`).

Why Hermes: SmolLM2's own template knows no tools; the Hermes format writes a call as
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, plain text that SmolLM2's vocabulary
already spells (no new tokens, so the adapter needs no resized embeddings), and vLLM 0.32.0's
`hermes` parser (vllm/tool_parsers/hermes_tool_parser.py) matches its markers as text, not as token
ids. Without tools the template renders exactly as SmolLM2-135M-Instruct's own.

`parse_tool_calls` is a port of that parser's non-streaming `extract_tool_calls`, so that evaluation
in the training process reads a generation the way the server will; a test checks both agree
(tests/test_tool_format.py, in the serve venv).
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

TEMPLATE_PATH = Path(__file__).with_name("templates") / "chatml_tools.jinja"
TOOL_CALL_PARSER = "hermes"  # vLLM's --tool-call-parser
TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"

# vllm/tool_parsers/hermes_tool_parser.py (0.32.0): Hermes2ProToolParser.tool_call_regex
_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)


@lru_cache(maxsize=1)
def template_text() -> str:
    return TEMPLATE_PATH.read_text(encoding="utf-8")


def template_sha256() -> str:
    return hashlib.sha256(template_text().encode("utf-8")).hexdigest()


def apply_template(
    tokenizer,
    messages: list[dict],
    tools: list[dict] | None = None,
    add_generation_prompt: bool = False,
    **kwargs: Any,
):
    """`tokenizer.apply_chat_template` with agentloop's template (not the tokenizer's own).

    `tools` are OpenAI tool objects ({"type": "function", "function": {...}}); kwargs pass through
    (tokenize=False for text).
    """
    return tokenizer.apply_chat_template(
        messages,
        tools=tools or None,
        chat_template=template_text(),
        add_generation_prompt=add_generation_prompt,
        **kwargs,
    )


def parse_tool_calls(text: str) -> dict:
    """An OpenAI assistant message from generated text, read as vLLM's `hermes` parser reads it.

    {"role": "assistant", "content": str | None, "tool_calls": [{"type": "function", "function":
    {"name", "arguments" (a JSON string)}}]}. As in vLLM: no `<tool_call>` marker, or any call that is
    not a JSON object with "name" and "arguments", gives no tool calls and the whole text as content;
    the content of a message with calls is the text before the first marker (None when empty).
    """
    if TOOL_CALL_START not in text:
        return {"role": "assistant", "content": text, "tool_calls": []}
    try:
        raw = [json.loads(a if a else b) for a, b in _TOOL_CALL_RE.findall(text)]
        calls = [
            {
                "type": "function",
                "function": {
                    "name": c["name"],
                    "arguments": json.dumps(c["arguments"], ensure_ascii=False),
                },
            }
            for c in raw
        ]
    except Exception:  # noqa: BLE001 - vLLM's parser catches everything here and returns the text as content
        return {"role": "assistant", "content": text, "tool_calls": []}
    content = text[: text.find(TOOL_CALL_START)]
    return {"role": "assistant", "content": content or None, "tool_calls": calls}


def format_tool_calls(calls: list[dict]) -> str:
    """The Hermes text of a list of OpenAI tool calls, as the template renders it (for reports)."""
    parts = []
    for call in calls:
        fn = call.get("function", call)
        args = fn.get("arguments")
        args_text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        parts.append(
            f'{TOOL_CALL_START}\n{{"name": {json.dumps(fn["name"], ensure_ascii=False)}, "arguments": {args_text}}}\n{TOOL_CALL_END}'
        )
    return "\n".join(parts)
