"""The chat template and the loss mask: which token of a rendered conversation carries loss (training/dataset.py
explains the masking)."""

from __future__ import annotations

import bisect
import json
import logging
from dataclasses import dataclass
from typing import Any

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


def parse_messages(messages_json: Any) -> list[dict] | None:
    """[{"role", "content", "trainable"}] from a record's messages_json, or None when it is not messages.

    An assistant message is trainable when it has text and calls no tools; tool calls are kept as
    context (as compact JSON after the text, since the template knows no tools).
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
        calls = m.get("tool_calls")
        if calls:
            text = (text + "\n" if text else "") + json.dumps(
                calls, ensure_ascii=False, separators=(",", ":")
            )
        trainable = m["role"] == "assistant" and not calls and bool(text.strip())
        out.append({"role": m["role"], "content": text, "trainable": trainable})
    return out


def _render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not plain and not generation_prompt:
        try:
            return tokenizer.apply_chat_template(plain, tokenize=False)
        except Exception:  # noqa: BLE001 - some templates refuse an empty conversation; it renders nothing
            return ""
    return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=generation_prompt)


@dataclass
class _Rendered:
    input_ids: list[int]
    labels: list[int]
    block_starts: list[int]  # token index where message i's block starts; one extra entry: the end


def _blocks_fast(tokenizer, messages: list[dict], text: str) -> tuple[list[int], list[int]] | None:
    """Block bounds and assistant content starts from each message rendered after the first alone.

    Linear in the conversation; valid only when the pieces add up to the full rendering (the block of
    a message does not depend on the messages around it), else None.
    """
    empty = _render(tokenizer, [])
    base = _render(tokenizer, messages[:1])
    header = _render(tokenizer, messages[:1], generation_prompt=True)
    if not base.startswith(empty) or not header.startswith(base):
        return None
    header = header[len(base) :]
    bounds, pieces = [len(empty), len(base)], [base]
    for m in messages[1:]:
        two = _render(tokenizer, [messages[0], m])
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


def _blocks_by_prefix(tokenizer, messages: list[dict], text: str) -> tuple[list[int], list[int]]:
    """The same from rendering every prefix of the conversation: quadratic, for context-dependent templates."""
    prefixes = [_render(tokenizer, messages[:i]) for i in range(len(messages))] + [text]
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
            header = _render(tokenizer, messages[:i], generation_prompt=True)
            if not header.startswith(prefix) or not text.startswith(header):
                raise TemplateError(
                    f"the chat template of {tokenizer.name_or_path!r}: the generation prompt is "
                    f"not how an assistant turn begins (message {i})"
                )
            starts.append(len(header))
    return bounds, starts


def render_and_mask(tokenizer, messages: list[dict]) -> _Rendered:
    """Token ids of the templated conversation and their labels, chosen by character position.

    The template must render a conversation as the concatenation of per-message blocks (each prefix of
    the conversation renders to a prefix of the text); SmolLM2's, Llama's and ChatML templates do.
    """
    eos = tokenizer.eos_token
    if not eos:
        raise TemplateError(f"tokenizer {tokenizer.name_or_path!r} has no eos token: cannot find turn ends")
    text = _render(tokenizer, messages)
    bounds, content_starts = _blocks_fast(tokenizer, messages, text) or _blocks_by_prefix(
        tokenizer, messages, text
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
