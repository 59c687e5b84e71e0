"""Per-record rules: check_interaction runs the patterns on each scanned message."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from features.guard.config import GuardConfig, GuardHit
from features.guard.injection import keep_pattern_hit, scan
from features.guard.patterns import BY_MARK, BY_WORD, GATE_WORDS, PATTERNS, Pattern
from features.guard.replies import destructive_instruction, may_hold_instruction
from features.guard.text import SPACED_OUT, WORD, deleet, fold, squash

# --------------------------------------------------------------------------------------------------
# Per-record rules.


@dataclass
class _Views:
    plain: str  # folded
    leet: str  # folded and de-l33ted, same length
    index: list[int] | None  # folded position -> original position (None: identity)
    words: set[str]
    squashed: tuple[str, list[int]] | None  # letter-spaced text read again, when there is some


def _views(text: str) -> _Views:
    folded, index = fold(text)
    leet = deleet(folded)
    squashed = squash(folded, index) if SPACED_OUT.search(folded) else None
    return _Views(folded, leet, index, set(WORD.findall(leet)), squashed)


def _allowed_spans(views: _Views, allow: Sequence[str]) -> list[tuple[int, int]]:
    spans = []
    for phrase in allow:
        for m in re.finditer(re.escape(phrase), views.plain):
            if m.end() > m.start():
                start = views.index[m.start()] if views.index else m.start()
                end = views.index[m.end() - 1] + 1 if views.index else m.end()
                spans.append((start, end))
    return spans


def _scan(text: str, limit: int) -> tuple[str, int]:
    """The text to scan and the offset of its tail part: very long tool output keeps head and tail."""
    if len(text) <= limit:
        return text, 0
    half = limit // 2
    return text[:half] + "\n" + text[-half:], len(text) - half - (half + 1)


def _match_message(
    text: str, patterns: Sequence[Pattern], allow: Sequence[str], limit: int, role: str = "user"
):
    """(rule, start, end) per pattern that matched, then per cue rule (injection.scan); offsets in `text`.

    First match per pattern; `allow` holds folded allow-list phrases: a match inside one of them does
    not count. A pattern's match in a user or tool message that only quotes or discusses an attack
    (injection.keep_pattern_hit) does not count either; letter-spaced text is never a discussion.
    """
    scanned, tail_shift = _scan(text, limit)
    views = _views(scanned)
    allow_spans = _allowed_spans(views, allow) if allow else []
    gated = {id(p) for w in views.words & GATE_WORDS for p in BY_WORD[w]}
    gated.update(id(p) for mark, ps in BY_MARK.items() if mark in views.plain for p in ps)
    screen = role != "system"

    def place(start: int, end: int, index: list[int] | None) -> tuple[int, int] | None:
        """Offsets in `text` of a match in a view, or None inside an allowed phrase."""
        start = index[start] if index is not None else start
        end = index[end - 1] + 1 if index is not None else end
        if allow_spans and any(a <= start and end <= b for a, b in allow_spans):
            return None
        if tail_shift and start > len(scanned) // 2:
            start, end = start + tail_shift, end + tail_shift
        return start, end

    found = []
    for pattern in patterns if gated or views.squashed is not None else ():
        tries = []
        if id(pattern) in gated:
            tries.append((pattern.normal, views.leet if pattern.leet else views.plain, views.index, screen))
        if views.squashed is not None and pattern.squashed is not None:
            tries.append((pattern.squashed, views.squashed[0], views.squashed[1], False))
        hit = None
        for regex, view, index, discount in tries:
            for m in regex.finditer(view):
                if m.end() == m.start():
                    continue
                if discount and not keep_pattern_hit(views.leet, m.start(), m.end(), pattern.rule, role):
                    continue
                hit = place(m.start(), m.end(), index)
                if hit:
                    break
            if hit:
                found.append((pattern.rule, *hit))
                break
    for rule, start, end in scan(
        views.plain, views.leet, views.words, role
    ):  # the caller drops disabled rules
        hit = place(start, end, views.index)
        if hit:
            found.append((rule, *hit))
    return found


def check_interaction(messages: list[dict], config: GuardConfig | None = None) -> list[GuardHit]:
    """Per-record guard rules over one interaction's messages; [] when nothing fired.

    One hit per (rule, message) at most. Messages that are not objects or have no text are skipped,
    never an error: validation has its own codes for those.
    """
    config = config or GuardConfig()
    enabled = set(config.rules)
    hits: list[GuardHit] = []
    seen: set[tuple[str, int]] = set()

    def add(rule: str, index: int, start: int, end: int, content: str) -> None:
        if rule in enabled and (rule, index) not in seen:
            seen.add((rule, index))
            hits.append(GuardHit(rule, config.actions[rule], (start, end), index, content[start:end][:200]))

    user_patterns = [p for p in PATTERNS if p.rule in enabled]
    system_patterns = [p for p in PATTERNS if p.in_system]
    known = {" ".join(p.split()) for p in config.known_system_prompts}
    allow = [fold(a)[0] for a in config.allow_phrases if a.strip()]
    started = False
    scan_replies = "destructive_reply" in enabled and may_hold_instruction(
        [m["content"] for m in messages or [] if isinstance(m, dict) and m.get("role") == "assistant"
         and isinstance(m.get("content"), str)]
    )  # fmt: skip
    for index, message in enumerate(messages or []):
        if not isinstance(message, dict):
            continue
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str):
            content = ""
        if role == "system":
            if started:
                add("late_system_message", index, 0, min(len(content), 200), content)
            if "system_prompt_tampering" in enabled and content:
                if known and " ".join(content.split()) not in known:
                    add("system_prompt_tampering", index, 0, min(len(content), 200), content)
                for _, start, end in _match_message(
                    content, system_patterns, allow, config.max_scan_chars, "system"
                ):
                    add("system_prompt_tampering", index, start, end, content)
            continue
        started = started or role in ("user", "assistant", "tool")
        if role == "assistant" and scan_replies:
            reply_hit = destructive_instruction(content)
            if reply_hit:
                add("destructive_reply", index, reply_hit[0], reply_hit[1], content)
        if role not in config.roles or not content:
            continue
        for rule, start, end in _match_message(content, user_patterns, allow, config.max_scan_chars, role):
            add(rule, index, start, end, content)
    return hits


def quarantine_reason(hits: Iterable[GuardHit]) -> str | None:
    """`guard:<rule>` of the first quarantine-level hit, or None when the record may be kept."""
    for hit in hits:
        if hit.action == "quarantine":
            return hit.reason
    return None


def guard_flags(hits: Iterable[GuardHit]) -> str:
    """The Interaction.guard_flags value: comma-separated warn-level rules, sorted, "" when none."""
    return ",".join(sorted({h.rule for h in hits if h.action == "warn"}))
