"""What the poisoning detector reads of an interaction: word tokens, odd-shaped tokens, the candidate n-grams
of user turns (edges and odd tokens) and a signature of the reply that follows each turn.

features.guard.poisoning counts these across sessions and decides; this module only extracts.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from typing import Any, Iterable

from features.guard.config import GuardConfig

# Numbers with separators stay one token ("300,000", "3.14", "10:30"); underscores join ("cf_zx9").
_TOKEN = re.compile(r"\d+(?:[.,:]\d+)+|[^\W_]+(?:_+[^\W_]+)*")
_INVISIBLE_RUN = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200e\u200f\u202a-\u202e\u2060-\u2064"
    "\u2066-\u206f\u3164\ufeff\uffa0\U000e0000-\U000e007f]+"
)
_LATIN = re.compile(r"[a-zA-Z]")
_CYRILLIC_GREEK = re.compile(r"[\u0370-\u03ff\u0400-\u04ff]")
_LOWER_UPPER = re.compile(r"[a-z][A-Z]")
# A turn without digits, underscores, lower-to-upper flips or non-ASCII has no odd token.
_MAYBE_ODD = re.compile(r"[\d_]|[a-z][A-Z]")
_LETTER_DIGIT = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])")


def odd_token(token: str) -> bool:
    """A token that ordinary text almost never repeats: the shape of a planted trigger.

    Odd: an internal underscore (cf_zx9), letters and digits interleaved twice or more (zx9q, a1b2;
    not ps4, mp3, 2nd, 90s), a 3-8 digit number with a leading zero (007; not 000), two or more
    lower-to-upper case flips (xYzZy; not iPhone, YouTube), Latin mixed with Cyrillic/Greek in one word,
    and runs of invisible characters (tokenized as zw_<codepoints>).
    """
    if token.isalpha():
        if token.isascii():
            return not (token.islower() or token.isupper()) and len(_LOWER_UPPER.findall(token)) >= 2
        return bool(_LATIN.search(token) and _CYRILLIC_GREEK.search(token))
    if token.isdigit():
        return 3 <= len(token) <= 8 and token[0] == "0" and token.strip("0") != ""
    if "_" in token:
        return True
    return len(_LETTER_DIGIT.findall(token)) >= 2


def _invisible_token(m: re.Match) -> str:
    return " zw_" + "_".join(f"{ord(c):x}" for c in m.group()) + " "


def tokenize(text: str) -> list[str]:
    """Word tokens of a user turn as the poisoning detector sees them (original case kept)."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", _INVISIBLE_RUN.sub(_invisible_token, text))
    return _TOKEN.findall(text)


def _h(text: str, bits: int = 48) -> int:
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big"
    ) >> (64 - bits)


_PUNCT = "".join(chr(c) for c in range(33, 127) if not chr(c).isalnum())


def _reply_signature(content: Any) -> int:
    """Same number for replies that start with the same 8 words (case and punctuation aside); 0 for none."""
    if not isinstance(content, str):
        return 0
    words = [w for w in (w.strip(_PUNCT) for w in content[:200].lower().split()[:8]) if w]
    return (_h(" ".join(words)) or 1) if words else 0


_MAX_CONTEXTS = 64  # distinct user turns remembered per candidate (only "at least min_contexts" matters)


class _Candidate:
    """One tracked n-gram in one batch: its sessions, interactions and reply signatures."""

    __slots__ = ("kind", "count", "sessions", "ids", "sigs", "contexts")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.count = 0  # interactions that contain it
        self.sessions: set[int] = set()
        self.ids: list[str] = []
        self.sigs: Counter = Counter()  # reply signature -> sessions
        self.contexts: set[int] = set()  # hashes of the distinct user turns it occurs in (capped)

    def add(self, session: int, iid: str, sig: int, kind: str, max_ids: int, ctx: int = 0) -> None:
        if kind == "odd":
            self.kind = "odd"
        self.count += 1
        if ctx and len(self.contexts) < _MAX_CONTEXTS:
            self.contexts.add(ctx)
        if len(self.ids) < max_ids:
            self.ids.append(iid)
        if session not in self.sessions:
            self.sessions.add(session)
            if sig:
                self.sigs[sig] += 1


def _reply_text(message: dict) -> str | None:
    """What a reply says, for its signature: its text, or for a tool-call reply the functions it calls.

    A backdoor's payload can be a call as well as text; and tool-call replies without text must not all
    look alike (or one text reply among them would read as "uniform")."""
    content = message.get("content")
    if isinstance(content, str) and content.strip():
        return content
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        names = []
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            names.append(str(fn.get("name", "")) if isinstance(fn, dict) else "?")
        return "tool call " + " ".join(names)
    return content if isinstance(content, str) else None


def _user_turns(messages: Any):
    """(user text, the content of the next assistant message) for each user turn."""
    if not isinstance(messages, list):
        return
    for i, m in enumerate(messages):
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            reply = None
            for nxt in messages[i + 1 :]:
                if isinstance(nxt, dict) and nxt.get("role") == "assistant":
                    reply = _reply_text(nxt)
                    break
                if isinstance(nxt, dict) and nxt.get("role") == "user":
                    break
            yield m["content"], reply


def _interaction_keys(
    messages: Any,
    config: GuardConfig,
    known: dict[str, list[tuple[int, str]]] | None = None,
    replies: dict[int, str] | None = None,
    reply_uses: Counter | None = None,
) -> tuple[dict[str, tuple[str, int, int]], set[str]]:
    """Candidate n-grams of one interaction (key -> (kind, reply signature)) and its token set.

    `known`: confirmed triggers by first token, as (length in tokens, text), found wherever they occur.
    """
    keys: dict[str, tuple[str, int]] = {}
    vocab: set[str] = set()
    n_max, edge_min = config.ngram_size, config.min_edge_tokens
    for text, reply in _user_turns(messages):
        if text.isascii():
            toks = _TOKEN.findall(text.lower())  # same tokens as tokenize(text), lower-cased
            maybe_odd = _MAYBE_ODD.search(text) is not None
        else:
            toks = [t.lower() for t in tokenize(text)]
            maybe_odd = True
        if not toks:
            continue
        vocab.update(toks)
        odd = []
        if maybe_odd:
            raw = tokenize(text)
            odd = [j for j, t in enumerate(raw) if odd_token(t)] if len(raw) == len(toks) else []
        length = len(toks)
        found = []
        if known:
            for j, t in enumerate(toks):
                for n, text in known.get(t, ()):
                    if " ".join(toks[j : j + n]) == text:
                        found.append(text)
        if not odd and not found and length <= edge_min:
            continue
        sig = _reply_signature(reply)
        if replies is not None and sig:
            if sig not in replies:
                replies[sig] = reply  # a reference into the batch: read only for a uniform candidate's reply
            if reply_uses is not None:
                reply_uses[sig] += 1
        ctx = _h(" ".join(toks), 32) or 1  # the user turn itself: copies of one conversation are one context
        for text in found:
            keys[text] = ("known", sig, ctx)
        for j in odd:
            for n in range(1, n_max + 1):
                for start in range(max(0, j - n + 1), min(j, length - n) + 1):
                    key = " ".join(toks[start : start + n])
                    if keys.get(key, ("",))[0] != "known":
                        keys[key] = ("odd", sig, ctx)
        for k in range(edge_min, n_max + 1):
            if length > k:
                for key in (" ".join(toks[:k]), " ".join(toks[-k:])):
                    if key not in keys:
                        keys[key] = ("edge", sig, ctx)
    return keys, vocab


def contains_trigger(messages: list[dict], triggers: Iterable[str]) -> list[str]:
    """The triggers (as returned in PoisonReport) that occur, token for token, in the user turns."""
    wanted = {t: t.split() for t in triggers}
    found = []
    grams: set[str] = set()
    sizes = {len(v) for v in wanted.values()}
    for text, _ in _user_turns(messages):
        toks = [t.lower() for t in tokenize(text)]
        for n in sizes:
            grams.update(" ".join(toks[i : i + n]) for i in range(len(toks) - n + 1))
    for t in wanted:
        if t in grams:
            found.append(t)
    return found
