"""The chat template and the loss mask: which token of a rendered conversation carries loss (training/dataset.py
explains the masking)."""

from __future__ import annotations

import bisect
import json
import logging
from dataclasses import dataclass
from typing import Any

from training.tool_format import apply_template

log = logging.getLogger(__name__)

IGNORE = -100  # the label of a position that carries no loss (torch's CrossEntropyLoss ignore_index)


# --- chat template and masking ----------------------------------------------------------------------


class TemplateError(ValueError):
    """The tokenizer's chat template cannot be used for position-based masking."""


def _content_text(content: Any) -> str:
    """OpenAI content: a string, None, or a list of parts ({"type": "text", "text": ...})."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def _tool_calls(calls: Any) -> list[dict] | None:
    """OpenAI tool calls with their arguments parsed to objects, or None when one is malformed."""
    if not isinstance(calls, list):
        return None
    out = []
    for c in calls:
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            return None
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        out.append(
            {"id": c.get("id"), "type": "function", "function": {"name": fn["name"], "arguments": args}}
        )
    return out


def parse_tools(tools_json: Any) -> list[dict] | None:
    """The OpenAI tools offered to the model (a record's tools_json), [] when none, None when malformed."""
    if tools_json is None or (isinstance(tools_json, float) and tools_json != tools_json):  # None / NaN
        return []
    try:
        raw = json.loads(tools_json) if isinstance(tools_json, (str, bytes)) else tools_json
    except (TypeError, ValueError):
        return None
    if raw is None:
        return []
    if not isinstance(raw, list):
        return None
    tools = []
    for t in raw:
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            return None
        tools.append({"type": "function", "function": fn})
    return tools


def parse_messages(messages_json: Any) -> list[dict] | None:
    """[{"role", "content", "trainable", ...}] from a record's messages_json, or None when it is not messages.

    An assistant message is trainable when it has text or tool calls: its calls render in the template's
    Hermes format (training/tool_format.py) and carry loss like its text. A message whose tool calls are
    malformed (arguments not a JSON object, no function name) keeps them raw under "bad_tool_calls" so
    that `tool_use_problem` can name the reason; tool results (role "tool") keep their tool_call_id.
    """
    try:
        raw = json.loads(messages_json) if isinstance(messages_json, (str, bytes)) else messages_json
    except (TypeError, ValueError):
        return None
    if not isinstance(raw, list) or not raw:
        return None
    out = []
    for m in raw:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return None
        text = _content_text(m.get("content"))
        msg: dict[str, Any] = {"role": m["role"], "content": text}
        if m.get("tool_calls"):
            calls = _tool_calls(m["tool_calls"])
            if calls is None:
                msg["bad_tool_calls"] = m["tool_calls"]
            else:
                msg["tool_calls"] = calls
        if m["role"] == "tool":
            msg["tool_call_id"] = m.get("tool_call_id")
        msg["trainable"] = m["role"] == "assistant" and (bool(text.strip()) or bool(msg.get("tool_calls")))
        out.append(msg)
    return out


# Why a record with tools is kept out of training (it still counts in the evaluation statistics).
TOOL_PROBLEMS = ("tool_call_bad_arguments", "tool_call_not_offered", "tool_result_without_call", "bad_tools")


def tool_use_problem(messages: list[dict], tools: list[dict] | None) -> str:
    """ "" when the conversation's tool use is trainable, else one of TOOL_PROBLEMS.

    A call whose arguments are not a JSON object, a call to a function not offered, or a tool result
    whose tool_call_id names no earlier call (a result with no id follows some earlier call).
    """
    if tools is None:
        return "bad_tools"
    offered = {t["function"]["name"] for t in tools}
    call_ids: set[str] = set()
    any_call = False
    for m in messages:
        if "bad_tool_calls" in m:
            return "tool_call_bad_arguments"
        for c in m.get("tool_calls") or ():
            if c["function"]["name"] not in offered:
                return "tool_call_not_offered"
            any_call = True
            if c.get("id"):
                call_ids.add(str(c["id"]))
        if m["role"] == "tool":
            cid = m.get("tool_call_id")
            if not any_call or (cid and call_ids and str(cid) not in call_ids):
                return "tool_result_without_call"
    return ""


_TEMPLATE_KEYS = ("role", "content", "tool_calls", "tool_call_id")


def _render(
    tokenizer, messages: list[dict], generation_prompt: bool = False, tools: list[dict] | None = None
) -> str:
    """The conversation through agentloop's one chat template (training/tool_format.py), with its tools."""
    plain = [{k: m[k] for k in _TEMPLATE_KEYS if k in m} for m in messages]
    if not plain and not generation_prompt:
        return ""  # an empty conversation renders nothing
    return apply_template(
        tokenizer, plain, tools=tools, add_generation_prompt=generation_prompt, tokenize=False
    )


@dataclass
class _Rendered:
    input_ids: list[int]
    labels: list[int]
    block_starts: list[int]  # token index where message i's block starts; one extra entry: the end


def _blocks_fast(
    tokenizer, messages: list[dict], text: str, tools: list[dict] | None = None
) -> tuple[list[int], list[int]] | None:
    """Block bounds and assistant content starts from each message rendered after the first alone.

    Linear in the conversation; valid only when the pieces add up to the full rendering (the block of
    a message does not depend on the messages around it), else None.
    """
    empty = _render(tokenizer, [], tools=tools)
    base = _render(tokenizer, messages[:1], tools=tools)
    header = _render(tokenizer, messages[:1], generation_prompt=True, tools=tools)
    if not base.startswith(empty) or not header.startswith(base):
        return None
    header = header[len(base) :]
    bounds, pieces = [len(empty), len(base)], [base]
    for m in messages[1:]:
        two = _render(tokenizer, [messages[0], m], tools=tools)
        if not two.startswith(base):
            return None
        pieces.append(two[len(base) :])
        bounds.append(bounds[-1] + len(pieces[-1]))
    if "".join(pieces) != text:
        return None
    starts = []
    for i, m in enumerate(messages):
        if m["trainable"]:
            if i == 0 or not text.startswith(header, bounds[i]):
                return None
            starts.append(bounds[i] + len(header))
    return bounds, starts


def _blocks_by_prefix(
    tokenizer, messages: list[dict], text: str, tools: list[dict] | None = None
) -> tuple[list[int], list[int]]:
    """The same from rendering every prefix of the conversation: quadratic, for context-dependent templates."""
    prefixes = [_render(tokenizer, messages[:i], tools=tools) for i in range(len(messages))] + [text]
    bounds = [len(p) for p in prefixes]
    starts = []
    for i, m in enumerate(messages):
        prefix = prefixes[i]
        if not prefixes[i + 1].startswith(prefix) or not text.startswith(prefix):
            raise TemplateError(
                f"the chat template of {tokenizer.name_or_path!r} does not render messages "
                "as consecutive blocks; position-based masking needs one that does"
            )
        if m["trainable"]:
            header = _render(tokenizer, messages[:i], generation_prompt=True, tools=tools)
            if not header.startswith(prefix) or not text.startswith(header):
                raise TemplateError(
                    f"the chat template of {tokenizer.name_or_path!r}: the generation prompt is "
                    f"not how an assistant turn begins (message {i})"
                )
            starts.append(len(header))
    return bounds, starts


def render_and_mask(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> _Rendered:
    """Token ids of the templated conversation and their labels, chosen by character position.

    The template must render a conversation as the concatenation of per-message blocks (each prefix of
    the conversation renders to a prefix of the text); SmolLM2's, Llama's and ChatML templates do.
    """
    eos = tokenizer.eos_token
    if not eos:
        raise TemplateError(f"tokenizer {tokenizer.name_or_path!r} has no eos token: cannot find turn ends")
    text = _render(tokenizer, messages, tools=tools)
    bounds, content_starts = _blocks_fast(tokenizer, messages, text, tools) or _blocks_by_prefix(
        tokenizer, messages, text, tools
    )
    spans = []  # character spans that carry loss: assistant content + the eos that closes it
    trainable = [i for i, m in enumerate(messages) if m["trainable"]]
    for i, start in zip(trainable, content_starts, strict=True):
        end = text.rfind(eos, start, bounds[i + 1])
        if end < 0:
            raise TemplateError(
                f"the chat template of {tokenizer.name_or_path!r} closes assistant turns without "
                f"the eos token {eos!r}: the model would never learn to stop"
            )
        spans.append((start, end + len(eos)))

    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    starts = [s for s, _ in offsets]
    block_starts = []
    for b in bounds:
        k = bisect.bisect_left(starts, b)
        if k > 0 and offsets[k - 1][1] > b:
            raise TemplateError(
                f"a token of {tokenizer.name_or_path!r} straddles a message boundary at character {b}"
            )
        block_starts.append(k)
    labels = [IGNORE] * len(ids)
    for lo, hi in spans:
        for k in range(bisect.bisect_left(starts, lo), len(ids)):
            s, e = offsets[k]
            if s >= hi:
                break
            if e <= hi:  # a token merged across the header/content boundary starts before lo: skipped
                labels[k] = ids[k]
    return _Rendered(ids, labels, block_starts)
