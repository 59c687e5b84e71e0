"""OpenTelemetry GenAI semantic conventions: a chat span (and the log records of its content) as messages.

Spec: https://opentelemetry.io/docs/specs/semconv/gen-ai/ (semantic-conventions 1.37+, the
"latest experimental" GenAI conventions) and, for the forms deployed instrumentations still emit,
semantic-conventions 1.28-1.36 (GenAI events) and OpenLLMetry's indexed attributes. Read, in order
of preference for each part of a conversation:

- current: `gen_ai.system_instructions`, `gen_ai.input.messages`, `gen_ai.output.messages`, JSON
  arrays of messages made of parts (`text`, `tool_call`, `tool_call_response`), on the span or on a
  `gen_ai.client.inference.operation.details` event / log record; `gen_ai.tool.definitions`.
- events (span events or OTLP log records joined by trace and span id): `gen_ai.system.message`,
  `gen_ai.user.message`, `gen_ai.assistant.message`, `gen_ai.tool.message`, `gen_ai.choice`, whose
  body holds `content` (absent when capture is off), `tool_calls`, `id`, `message`.
- older span events `gen_ai.content.prompt` / `gen_ai.content.completion` (`gen_ai.prompt`,
  `gen_ai.completion` attributes holding JSON).
- indexed attributes `gen_ai.prompt.N.role|content|tool_call_id|tool_calls.M.*` and
  `gen_ai.completion.N.*`; tools in `llm.request.functions.N.*`.

Everything else of the record (model, usage, latency, agent, session, feedback) comes from
attributes: see docs/interaction-format.md for the mapping table.
"""

from __future__ import annotations

import json
import re
from typing import Any

CAPTURE_SETTING = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
CHAT_OPERATIONS = ("chat", "text_completion", "generate_content")
DETAILS_EVENT = "gen_ai.client.inference.operation.details"
EVALUATION_EVENT = "gen_ai.evaluation.result"
_EVENT_ROLES = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
_INDEXED = re.compile(r"^gen_ai\.(prompt|completion)\.(\d+)\.(.+)$")
_FUNCTIONS = re.compile(r"^llm\.request\.functions\.(\d+)\.(name|description|parameters)$")


def is_chat_span(span: dict) -> bool:
    attrs = span["attrs"]
    op = attrs.get("gen_ai.operation.name")
    if op is not None:
        return op in CHAT_OPERATIONS
    # Before gen_ai.operation.name (semconv <= 1.26, OpenLLMetry): a GenAI client span with prompts,
    # or OpenLLMetry's llm.request.type; embeddings and other calls carry neither.
    if "gen_ai.system" not in attrs:
        return False
    return attrs.get("llm.request.type") in ("chat", "completion") or any(
        k.startswith("gen_ai.prompt.") for k in attrs
    )


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _text(content: Any) -> str | None:
    """Message content as text: a string, or the text of OpenAI-style or GenAI parts."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("content", p.get("text")) for p in content if isinstance(p, dict)]
        texts = [t for t in texts if isinstance(t, str)]
        return "".join(texts) if texts else None
    return json.dumps(content, ensure_ascii=False)


def _arguments(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value if value is not None else {}, ensure_ascii=False, separators=(",", ":"))


def _response(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# ------------------------------------------------------------------------------------------ current form


def messages_from_parts(messages: Any) -> list[dict]:
    """GenAI messages made of parts (gen_ai.input/output.messages) as OpenAI-style messages."""
    out: list[dict] = []
    for msg in messages if isinstance(messages, list) else []:
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        texts, calls, responses = [], [], []
        for part in msg.get("parts") or []:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("content"), str):
                texts.append(part["content"])
            elif kind == "tool_call":
                calls.append(
                    {
                        "id": part.get("id") or "",
                        "type": "function",
                        "function": {
                            "name": part.get("name") or "",
                            "arguments": _arguments(part.get("arguments")),
                        },
                    }
                )
            elif kind == "tool_call_response":
                responses.append(
                    {
                        "role": "tool",
                        "tool_call_id": part.get("id") or "",
                        "content": _response(part.get("response")),
                    }
                )
        if role == "tool" or (responses and not texts and not calls):
            out += responses
            continue
        m: dict[str, Any] = {"role": role, "content": "".join(texts) if texts else None}
        if calls:
            m["tool_calls"] = calls
        elif m["content"] is None:
            continue  # a message whose parts we do not keep (blob, uri, reasoning only)
        if isinstance(msg.get("name"), str):
            m["name"] = msg["name"]
        out.append(m)
        out += responses
    return out


def _system_from_parts(parts: Any) -> list[dict]:
    text = _text(parts) if isinstance(parts, list) else parts if isinstance(parts, str) else None
    return [{"role": "system", "content": text}] if text else []


def _current(attrs: dict) -> tuple[list[dict], list[dict]] | None:
    if "gen_ai.input.messages" not in attrs and "gen_ai.output.messages" not in attrs:
        return None
    inputs = _system_from_parts(_json(attrs.get("gen_ai.system_instructions")))
    inputs += messages_from_parts(_json(attrs.get("gen_ai.input.messages")))
    return inputs, messages_from_parts(_json(attrs.get("gen_ai.output.messages")))


# ------------------------------------------------------------------------------------------ event forms


def _openai_tool_calls(calls: Any) -> list[dict]:
    out = []
    for c in calls if isinstance(calls, list) else []:
        if not isinstance(c, dict):
            continue
        fn = c.get("function") or {}
        out.append(
            {
                "id": c.get("id") or "",
                "type": "function",
                "function": {"name": fn.get("name") or "", "arguments": _arguments(fn.get("arguments"))},
            }
        )
    return out


def _event_message(name: str, body: Any) -> tuple[str, dict | None]:
    """(input | output, message) of one legacy GenAI event; message None when it carries no content."""
    body = body if isinstance(body, dict) else {}
    if name == "gen_ai.choice":
        msg = body.get("message") if isinstance(body.get("message"), dict) else {}
        calls = _openai_tool_calls(msg.get("tool_calls") or body.get("tool_calls"))
        content = _text(msg.get("content"))
        if content is None and not calls:
            return "output", None
        m = {"role": "assistant", "content": content}
        if calls:
            m["tool_calls"] = calls
        return "output", m
    role = _EVENT_ROLES[name]
    content = _text(body.get("content"))
    calls = _openai_tool_calls(body.get("tool_calls")) if role == "assistant" else []
    if content is None and not calls:
        return "input", None
    m = {"role": role, "content": content}
    if calls:
        m["tool_calls"] = calls
    if role == "tool":
        m["tool_call_id"] = body.get("id") or body.get("tool_call_id") or ""
    return "input", m


def _events(events: list[dict]) -> tuple[list[dict], list[dict], bool] | None:
    """Messages of the legacy events (span events or log records, in time order); None when there are none.

    The third value says whether any event was seen at all (capture off leaves them without content).
    """
    relevant = [e for e in events if e["name"] in _EVENT_ROLES or e["name"] == "gen_ai.choice"]
    if not relevant:
        return None
    inputs, outputs = [], []
    choices = []
    for e in sorted(relevant, key=lambda e: e.get("time_ns") or 0):
        side, msg = _event_message(e["name"], e["body"])
        if msg is None:
            continue
        if side == "output":
            choices.append((e["body"].get("index", 0) if isinstance(e["body"], dict) else 0, msg))
        else:
            inputs.append(msg)
    if choices:
        outputs = [min(choices, key=lambda c: c[0] if isinstance(c[0], int) else 0)[1]]
    return inputs, outputs, True


def _content_events(events: list[dict]) -> tuple[list[dict], list[dict]] | None:
    prompt = next((e for e in events if e["name"] == "gen_ai.content.prompt"), None)
    completion = next((e for e in events if e["name"] == "gen_ai.content.completion"), None)
    if prompt is None and completion is None:
        return None
    inputs = _json((prompt or {}).get("body", {}).get("gen_ai.prompt")) or []
    outputs = _json((completion or {}).get("body", {}).get("gen_ai.completion")) or []
    return _openai_messages(inputs), _openai_messages(outputs)


def _openai_messages(messages: Any) -> list[dict]:
    out = []
    for m in messages if isinstance(messages, list) else []:
        if isinstance(m, dict) and "message" in m and "role" not in m:  # a choice
            m = m["message"]
        if not isinstance(m, dict):
            continue
        msg = {"role": m.get("role", "assistant"), "content": _text(m.get("content"))}
        calls = _openai_tool_calls(m.get("tool_calls"))
        if calls:
            msg["tool_calls"] = calls
        if m.get("tool_call_id"):
            msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    return out


def _indexed(attrs: dict) -> tuple[list[dict], list[dict]] | None:
    sides: dict[str, dict[int, dict]] = {"prompt": {}, "completion": {}}
    for key, value in attrs.items():
        m = _INDEXED.match(key)
        if m:
            sides[m.group(1)].setdefault(int(m.group(2)), {})[m.group(3)] = value
    if not sides["prompt"] and not sides["completion"]:
        return None

    def build(fields: dict, default_role: str) -> dict | None:
        calls = {}
        for k, v in fields.items():
            cm = re.match(r"^tool_calls\.(\d+)\.(id|name|arguments)$", k)
            if cm:
                calls.setdefault(int(cm.group(1)), {})[cm.group(2)] = v
        content = fields.get("content")
        if content is None and not calls:
            return None
        msg: dict[str, Any] = {
            "role": fields.get("role", default_role),
            "content": _text(
                _json(content) if isinstance(content, str) and content.startswith("[") else content
            ),
        }
        if calls:
            msg["tool_calls"] = [
                {
                    "id": c.get("id") or "",
                    "type": "function",
                    "function": {"name": c.get("name") or "", "arguments": _arguments(c.get("arguments"))},
                }
                for _, c in sorted(calls.items())
            ]
        if fields.get("tool_call_id"):
            msg["tool_call_id"] = fields["tool_call_id"]
        return msg

    inputs = [m for _, f in sorted(sides["prompt"].items()) if (m := build(f, "user"))]
    outputs = [m for _, f in sorted(sides["completion"].items()) if (m := build(f, "assistant"))][:1]
    return inputs, outputs


# ------------------------------------------------------------------------------------------ the span


def tools(attrs: dict) -> list[dict] | None:
    """Tool definitions offered (gen_ai.tool.definitions, or OpenLLMetry's llm.request.functions.N.*)."""
    defs = _json(attrs.get("gen_ai.tool.definitions"))
    if not isinstance(defs, list):
        indexed: dict[int, dict] = {}
        for key, value in attrs.items():
            m = _FUNCTIONS.match(key)
            if m:
                indexed.setdefault(int(m.group(1)), {})[m.group(2)] = (
                    _json(value) if m.group(2) == "parameters" else value
                )
        defs = [v for _, v in sorted(indexed.items())] or None
    return openai_tools(defs)


def openai_tools(defs: Any) -> list[dict] | None:
    """Tool definitions in either shape (flat {name, ...} or {"function": {...}}) as OpenAI's."""
    if not isinstance(defs, list):
        return None
    out = []
    for d in defs:
        if not isinstance(d, dict):
            continue
        fn = d.get("function") if isinstance(d.get("function"), dict) else d
        if not fn.get("name"):
            continue
        entry: dict[str, Any] = {"name": fn["name"]}
        if isinstance(fn.get("description"), str):
            entry["description"] = fn["description"]
        params = _json(fn.get("parameters"))
        if isinstance(params, dict):
            entry["parameters"] = params
        out.append({"type": "function", "function": entry})
    return out or None


def conversation(span: dict, logs: list[dict]) -> tuple[list[dict], list[dict], bool]:
    """(input messages, output messages, content_seen) of a chat span and its joined log records.

    content_seen is False when nothing carried message content: capture was off (or its records
    have not arrived yet).
    """
    inputs, outputs = _conversation(span, logs)
    # Capture off still records roles, tool-call ids and names: only text says the content was kept.
    seen = any(isinstance(m.get("content"), str) and m["content"] for m in inputs + outputs)
    return inputs, outputs, seen


def _conversation(span: dict, logs: list[dict]) -> tuple[list[dict], list[dict]]:
    attrs = span["attrs"]
    details = [e["attrs"] for e in span["events"] if e["name"] == DETAILS_EVENT]
    details += [r["attrs"] for r in logs if r["event_name"] == DETAILS_EVENT]
    for source in [attrs, *details]:
        found = _current(source)
        if found is not None and (found[0] or found[1]):
            return found
    events = [{"name": e["name"], "time_ns": e["time_ns"], "body": e["attrs"]} for e in span["events"]]
    events += [{"name": r["event_name"], "time_ns": r["time_ns"], "body": r["body"]} for r in logs]
    legacy = _events(events)
    if legacy is not None and (legacy[0] or legacy[1]):
        return legacy[0], legacy[1]
    found = _content_events(events) or _indexed(attrs)
    if found is not None:
        return found
    return [], []


def usage(attrs: dict) -> dict | None:
    u = {
        "prompt_tokens": attrs.get("gen_ai.usage.input_tokens", attrs.get("gen_ai.usage.prompt_tokens")),
        "completion_tokens": attrs.get(
            "gen_ai.usage.output_tokens", attrs.get("gen_ai.usage.completion_tokens")
        ),
        "total_tokens": attrs.get("llm.usage.total_tokens"),
    }
    return {k: v for k, v in u.items() if v is not None} or None


def model(attrs: dict) -> str | None:
    return attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model")


def evaluations(span: dict, logs: list[dict]) -> list[dict]:
    """gen_ai.evaluation.result events (on the span, or log records joined to it) as unified feedback."""
    found = [e["attrs"] for e in span["events"] if e["name"] == EVALUATION_EVENT]
    found += [r["attrs"] for r in logs if r["event_name"] == EVALUATION_EVENT]
    out = []
    for a in found:
        name = a.get("gen_ai.evaluation.name")
        value = a.get("gen_ai.evaluation.score.value")
        label = a.get("gen_ai.evaluation.score.label")
        if not name or (value is None and not label):
            continue
        item: dict[str, Any] = {
            "name": name,
            "value": value if value is not None else label,
            "source": "llm_judge",
        }
        if label is not None and value is not None:
            item["label"] = label
        if a.get("gen_ai.evaluation.explanation"):
            item["comment"] = a["gen_ai.evaluation.explanation"]
        out.append(item)
    return out
