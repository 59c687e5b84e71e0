"""The promotion's smoke requests: what is sent to a replica after a swap, and which replies pass.

A version's smoke requests come from its frozen eval set: its first held-out conversations (traffic in the form
the agents send it, their system prompt included), cut to a bounded length, and, when the set holds tool calls,
its first held-out tool-call questions sent with their tools and `tool_choice: "auto"`, so a promotion proves
the replica still returns structured calls through the chat template and the tool-call parser it was started
with (a server without `--enable-auto-tool-choice` answers such a request with HTTP 400: the swap fails and is
undone, as it should, since agents rely on it).

A reply passes when it is non-empty: text, or tool calls (content null is right for a reply that calls a tool)
whose functions were offered and whose arguments are a JSON object. A smoke request is no accuracy check
(the gate did that): a tool question answered in text passes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from training.eval_set import EvalSet


@dataclass
class SmokeRequest:
    messages: list[dict]
    tools: list[dict] = field(default_factory=list)  # OpenAI tools; [] = a chat request

    @property
    def kind(self) -> str:
        return "tools" if self.tools else "chat"

    def body(self, model: str, max_tokens: int, tool_max_tokens: int) -> dict[str, Any]:
        """The /v1/chat/completions request (greedy)."""
        body: dict[str, Any] = {"model": model, "messages": self.messages, "temperature": 0}
        if self.tools:
            body.update(tools=self.tools, tool_choice="auto", max_tokens=tool_max_tokens)
        else:
            body["max_tokens"] = max_tokens
        return body

    def label(self) -> str:
        """The last user turn, cut: for an error message (never logged with the reply)."""
        return next((str(m.get("content")) for m in reversed(self.messages) if m.get("role") == "user"), "")[
            :80
        ]


def bounded_conversation(messages: list[dict], max_chars: int) -> list[dict]:
    """The conversation cut to its system turn(s) and the latest turns within `max_chars` of content (the last
    user turn always kept): smoke requests stay short whatever the eval set holds."""
    system = [m for m in messages if m.get("role") == "system"]
    rest = [m for m in messages if m.get("role") != "system"]
    budget = max_chars - sum(len(str(m.get("content") or "")) for m in system)
    kept: list[dict] = []
    for m in reversed(rest):
        size = len(str(m.get("content") or ""))
        if kept and size > budget:
            break
        kept.insert(0, m)
        budget -= size
    while kept and kept[0].get("role") in ("assistant", "tool"):  # a turn answers something kept before it
        kept.pop(0)
    return system + kept


def smoke_budgets(baseline_s: list[float], config) -> list[float]:
    """Per smoke request: latency_multiple x the replica's own latency before the swap, within [floor, ceiling]
    (config: serving.promote.PromoteConfig)."""
    return [
        min(config.latency_budget_s, max(config.latency_floor_s, config.latency_multiple * b))
        for b in baseline_s
    ]


def _single_turn(example: dict) -> bool:
    """A question the model answers from the user's turn alone (no earlier tool results to keep consistent)."""
    return all(m.get("role") in ("system", "user") for m in example.get("messages", []))


def eval_set_requests(
    eval_set: EvalSet, chat_count: int, tool_count: int, max_chars: int
) -> list[SmokeRequest]:
    """The first `chat_count` held-out conversations, then the first `tool_count` held-out tool-call questions
    that expect a call and need no earlier tool results (sent with their tools)."""
    requests = [
        SmokeRequest(bounded_conversation(p.messages, max_chars)) for p in eval_set.prompts[:chat_count]
    ]
    tool_questions = [
        e
        for e in eval_set.tool_examples
        if e.get("expected", "call") == "call" and e.get("tools") and _single_turn(e)
    ]
    for e in tool_questions[:tool_count]:
        requests.append(SmokeRequest(bounded_conversation(e["messages"], max_chars), list(e["tools"])))
    return requests


def reply_problem(message: dict, request: SmokeRequest) -> str:
    """ "" when an OpenAI chat reply message passes the smoke check, else what is wrong with it."""
    calls = message.get("tool_calls") or []
    text = (message.get("content") or "").strip()
    if not calls:
        return "" if text else "an empty reply (no text, no tool call)"
    offered = {t.get("function", {}).get("name") for t in request.tools}
    for c in calls:
        fn = c.get("function") or {}
        name = fn.get("name")
        if name not in offered:
            return (
                f"a call to {name!r}, which the request did not offer (offered: {sorted(map(str, offered))})"
            )
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            return f"a call to {name!r} whose arguments are not JSON"
        if not isinstance(args, dict):
            return f"a call to {name!r} whose arguments are not a JSON object"
    return ""


def reply_summary(message: dict) -> str:
    """What the reply was, without its content (no traffic text in results or logs): text length or called
    function names."""
    calls = message.get("tool_calls") or []
    if calls:
        return "tool_calls: " + ",".join(str((c.get("function") or {}).get("name")) for c in calls)
    return f"text: {len((message.get('content') or '').strip())} chars"


__all__ = [
    "SmokeRequest",
    "bounded_conversation",
    "smoke_budgets",
    "eval_set_requests",
    "reply_problem",
    "reply_summary",
]
