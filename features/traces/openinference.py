"""OpenInference spans (Arize Phoenix and its instrumentations) as messages, in the same OTLP container.

Spec: OpenInference semantic conventions
(https://github.com/Arize-ai/openinference/blob/main/spec/semantic_conventions.md, spec as of
openinference-semantic-conventions 0.1.x): `openinference.span.kind` (LLM, AGENT, TOOL, CHAIN, ...),
flattened lists `llm.input_messages.N.message.role|content|contents.M.message_content.text|name|
tool_call_id|tool_calls.M.tool_call.id|function.name|function.arguments`, the same under
`llm.output_messages`, `llm.tools.N.tool.json_schema`, `llm.token_count.prompt|completion|total`,
`llm.model_name`, `session.id`, `user.id`, `metadata` (JSON text).
"""

from __future__ import annotations

import json
import re
from typing import Any

from features.traces.genai import openai_tools

KIND = "openinference.span.kind"
HIDE_SETTING = "OPENINFERENCE_HIDE_INPUTS"
_MSG = re.compile(r"^llm\.(input|output)_messages\.(\d+)\.message\.(.+)$")
_CALL = re.compile(r"^tool_calls\.(\d+)\.tool_call\.(id|function\.name|function\.arguments)$")
_CONTENT = re.compile(r"^contents\.(\d+)\.message_content\.(type|text)$")
_TOOL = re.compile(r"^llm\.tools\.(\d+)\.tool\.json_schema$")


def is_openinference(span: dict) -> bool:
    return KIND in span["attrs"]


def is_chat_span(span: dict) -> bool:
    return span["attrs"].get(KIND) == "LLM"


def _message(fields: dict) -> dict | None:
    calls: dict[int, dict] = {}
    parts: dict[int, dict] = {}
    for key, value in fields.items():
        if m := _CALL.match(key):
            calls.setdefault(int(m.group(1)), {})[m.group(2)] = value
        elif m := _CONTENT.match(key):
            parts.setdefault(int(m.group(1)), {})[m.group(2)] = value
    content = fields.get("content")
    if content is None and parts:
        texts = [p.get("text") for _, p in sorted(parts.items()) if isinstance(p.get("text"), str)]
        content = "".join(texts) if texts else None
    role = fields.get("role")
    if content is None and not calls:
        return None
    msg: dict[str, Any] = {"role": role, "content": content}
    if calls:
        msg["tool_calls"] = [
            {
                "id": c.get("id") or "",
                "type": "function",
                "function": {
                    "name": c.get("function.name") or "",
                    "arguments": c.get("function.arguments") or "{}",
                },
            }
            for _, c in sorted(calls.items())
        ]
    if fields.get("tool_call_id"):
        msg["tool_call_id"] = fields["tool_call_id"]
    if isinstance(fields.get("name"), str) and role != "tool":
        msg["name"] = fields["name"]
    return msg


def conversation(span: dict) -> tuple[list[dict], list[dict], bool]:
    """(input messages, output messages, content_seen) of an OpenInference LLM span."""
    sides: dict[str, dict[int, dict]] = {"input": {}, "output": {}}
    for key, value in span["attrs"].items():
        if m := _MSG.match(key):
            sides[m.group(1)].setdefault(int(m.group(2)), {})[m.group(3)] = value
    inputs = [m for _, f in sorted(sides["input"].items()) if (m := _message(f))]
    outputs = [m for _, f in sorted(sides["output"].items()) if (m := _message(f))][:1]
    return inputs, outputs, bool(inputs or outputs)


def tools(attrs: dict) -> list[dict] | None:
    found = {}
    for key, value in attrs.items():
        if m := _TOOL.match(key):
            try:
                found[int(m.group(1))] = json.loads(value) if isinstance(value, str) else value
            except ValueError:
                continue
    return openai_tools([v for _, v in sorted(found.items())])


def usage(attrs: dict) -> dict | None:
    u = {
        "prompt_tokens": attrs.get("llm.token_count.prompt"),
        "completion_tokens": attrs.get("llm.token_count.completion"),
        "total_tokens": attrs.get("llm.token_count.total"),
    }
    return {k: v for k, v in u.items() if v is not None} or None


def model(attrs: dict) -> str | None:
    return attrs.get("llm.model_name")


def metadata(attrs: dict) -> dict | None:
    value = attrs.get("metadata")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def agent_name(span: dict) -> str | None:
    """The agent an AGENT span stands for: `agent.name`, else the span's name."""
    attrs = span["attrs"]
    if attrs.get(KIND) != "AGENT":
        return attrs.get("agent.name")
    return attrs.get("agent.name") or span["name"] or None
