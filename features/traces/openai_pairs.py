"""OpenAI request/response pairs, as logging proxies (LiteLLM, Helicone-style loggers, mitm dumps) keep them.

One line: `{"request": <request body>, "response": <response body>, ...}`, optionally with
`timestamp`/`created_at`, `latency_ms`/`duration_ms`, `agent`, `session_id`, `user`, `metadata`.
Both API shapes (https://platform.openai.com/docs/api-reference):
- Chat Completions: request `messages`, `tools`, `model`, `user`; response `id`, `created`,
  `model`, `choices[0].message` (content, tool_calls), `usage` (prompt/completion/total_tokens).
- Responses: request `input` (a string or items: messages, `function_call`,
  `function_call_output`), `instructions`, `tools` (flat function definitions); response `id`,
  `created_at`, `model`, `output` items (`message` with `output_text` parts, `function_call`),
  `usage` (input/output/total_tokens).
The interaction id is the response's id; agent and session come from the line, then the request's
`metadata`, then `user`/the response id (a pair on its own is a session of one).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from features.canonical import LINEAGE, content_id, with_agent
from features.traces.genai import openai_tools


def is_openai_pair(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("request"), dict) and "response" in obj


def _text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(texts) if texts else None
    return json.dumps(content, ensure_ascii=False)


def _chat_messages(messages: Any) -> list[dict]:
    out = []
    for m in messages if isinstance(messages, list) else []:
        if not isinstance(m, dict):
            continue
        role = "system" if m.get("role") == "developer" else m.get("role")
        msg: dict[str, Any] = {"role": role, "content": _text(m.get("content"))}
        for key in ("name", "tool_call_id", "tool_calls"):
            if m.get(key) is not None:
                msg[key] = m[key]
        out.append(msg)
    return out


def _responses_items(items: Any) -> list[dict]:
    """Responses API input/output items as chat messages (function calls grouped onto one assistant turn)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message":
            role = "system" if item.get("role") == "developer" else item.get("role")
            out.append({"role": role, "content": _text(item.get("content"))})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id") or item.get("id") or "",
                "type": "function",
                "function": {"name": item.get("name") or "", "arguments": item.get("arguments") or "{}"},
            }
            if out and out[-1]["role"] == "assistant" and "tool_calls" in out[-1]:
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id") or "",
                    "content": output if isinstance(output, str) else json.dumps(output),
                }
            )
    return out


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _when(value: Any) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, tz=timezone.utc).isoformat().replace("+00:00", "Z")
        except (OverflowError, OSError, ValueError):
            return None
    return value if isinstance(value, str) else None


def read_pair(obj: dict, raw: bytes) -> dict:
    """The format record of one request/response pair (validation decides whether it is complete)."""
    req, resp = obj["request"], obj.get("response") if isinstance(obj.get("response"), dict) else {}
    meta = req.get("metadata") if isinstance(req.get("metadata"), dict) else {}
    line_agent, line_session = _str(obj.get("agent")), _str(obj.get("session_id"))
    if "choices" in resp or "messages" in req:
        api = "chat.completions"
        messages = _chat_messages(req.get("messages"))
        choices = resp.get("choices") if isinstance(resp.get("choices"), list) else []
        if choices and isinstance(choices[0], dict) and isinstance(choices[0].get("message"), dict):
            reply = _chat_messages([{"role": "assistant", **choices[0]["message"]}])
            messages += reply
        created = resp.get("created")
    else:
        api = "responses"
        messages = []
        if isinstance(req.get("instructions"), str):
            messages.append({"role": "system", "content": req["instructions"]})
        messages += _responses_items(req.get("input"))
        messages += _responses_items(resp.get("output"))
        created = resp.get("created_at")
    rid = _str(resp.get("id")) or content_id("openai", raw)
    record: dict[str, Any] = {
        "id": rid,
        "session_id": line_session or _str(meta.get("session_id")) or _str(req.get("user")) or rid,
        "timestamp": _when(obj.get("timestamp") or obj.get("created_at")) or _when(created),
        "messages": messages,
    }
    with_agent(record, line_agent or _str(meta.get("agent")), "openai-client")
    if _str(resp.get("model")) or _str(req.get("model")):
        record["model"] = _str(resp.get("model")) or _str(req.get("model"))
    if isinstance(resp.get("usage"), dict):
        record["usage"] = {k: v for k, v in resp["usage"].items() if k in _USAGE_KEYS}
    tools = openai_tools(req.get("tools"))
    if tools:
        record["tools"] = tools
    latency = obj.get("latency_ms", obj.get("duration_ms"))
    if latency is not None:
        record["latency_ms"] = latency
    user = _str(obj.get("user")) or _str(req.get("user")) or _str(meta.get("user_id"))
    if isinstance(user, str) and user:
        record["user_id"] = user
    if isinstance(obj.get("feedback"), dict):
        record["feedback"] = obj["feedback"]
    if isinstance(obj.get("error"), dict):
        record["error"] = obj["error"]
    record["metadata"] = {"api": api, **({"request_metadata": meta} if meta else {})}
    record[LINEAGE] = {"format": "openai"}
    return record


_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens", "input_tokens", "output_tokens")
