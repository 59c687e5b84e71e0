"""Resolution of overlapping spans and the Redactor, with the module-level API on a default one."""

from __future__ import annotations

import bisect
import json
import re
from typing import Any

from features.redact.cli import CLI_GATE, find_cli_credentials
from features.redact.detectors import (
    find_aws_secrets,
    find_bearer,
    find_cards,
    find_emails,
    find_formats,
    find_high_entropy,
    find_ips,
    find_jwts,
    find_key_values,
    find_private_keys,
    find_url_passwords,
    find_with_detect_secrets,
)
from features.redact.patterns import (
    ASCII_LOWER,
    DIGIT_OR_AT,
    FORMAT_GATE,
    KEYWORDS,
    LETTER_RUN,
    NUMBERISH,
    PLACEHOLDER_RE,
    PLACEHOLDERS,
    STEMS,
    TOKEN_RUN,
    RedactionResult,
    Span,
)
from features.redact.validated import (
    IBAN_GATE,
    PHONE_REGIONS,
    find_codice_fiscale,
    find_iban,
    find_national_ids,
    find_phones_validated,
)

# ---------------------------------------------------------------- resolution and the public API
_DIGIT = re.compile(r"\d")


def _resolve(text: str, spans: list[Span]) -> list[Span]:
    """Non-overlapping spans: lower rank first, then longer; nothing that touches a placeholder."""
    starts: list[int] = []  # taken intervals, sorted and disjoint: bisect finds the neighbours
    ends: list[int] = []
    if "<" in text:
        for m in PLACEHOLDER_RE.finditer(text):
            starts.append(m.start())
            ends.append(m.end())
    kept = []
    for sp in sorted(spans, key=lambda sp: (sp.rank, sp.start - sp.end, sp.start)):
        if sp.end <= sp.start:
            continue
        i = bisect.bisect_left(starts, sp.end)  # intervals [0, i) start before sp ends
        if i and ends[i - 1] > sp.start:
            continue
        starts.insert(i, sp.start)
        ends.insert(i, sp.end)
        kept.append(sp)
    kept.sort()
    return kept


_MAX_ROUNDS = 4


class Redactor:
    """The detectors above behind one call.

    `detect_secrets_scan` adds detect-secrets' plugin scan (a safety net, off by default: see the
    module docstring). `gate=False` skips the cheap pre-filter; only the benchmark wants that.
    """

    def __init__(
        self,
        detect_secrets_scan: bool = False,
        gate: bool = True,
        phone_regions: tuple[str, ...] = PHONE_REGIONS,
    ):
        self.detect_secrets_scan = detect_secrets_scan
        self.gate = gate
        self.phone_regions = tuple(phone_regions)

    def find(self, text: str) -> list[Span]:
        """The spans that redact_text would replace, in order."""
        if not text:
            return []
        low = text.lower()
        keyword = any(w in low for w in KEYWORDS)
        # Command lines have a " -flag" (or are a kube `value:` / rabbitmqctl line): three substring tests.
        cli = (" -" in text or "value:" in low or "rabbitmqctl" in low) and CLI_GATE.search(low) is not None
        if self.gate and not (DIGIT_OR_AT.search(text) or keyword or cli or LETTER_RUN.search(text)):
            return []
        if not self.gate:
            keyword = True
        spans: list[Span] = []
        if keyword and ("PRIVATE KEY" in text or "PuTTY-User-Key-File" in text):
            find_private_keys(text, spans)
        if (TOKEN_RUN.search(text) or "whsec_" in text or "AccountKey=" in text) and FORMAT_GATE.search(text):
            find_formats(text, spans)
        if "eyJ" in text:
            find_jwts(text, spans)
        if "@" in text:
            find_url_passwords(text, spans)
            find_emails(text, spans)
        if "aws" in low or "akia" in low or "asia" in low:
            find_aws_secrets(text, spans)
        if _DIGIT.search(text):
            if NUMBERISH.search(text):
                find_cards(text, spans)
                find_phones_validated(text, spans, self.phone_regions)
                # IBANs, SSNs and national ids all hold a run of 7+ digits or a grouped one.
                find_national_ids(text, low, spans)
                if IBAN_GATE.search(text):
                    find_iban(text, spans)
            find_ips(text, spans)
            find_codice_fiscale(text, spans)
        if keyword:
            if len(low) != len(text):  # a few non-ASCII letters lower-case to two characters
                low = text.translate(ASCII_LOWER)
            hits = [m.start() for m in STEMS.finditer(low)]
            find_key_values(text, low, hits, spans)
            find_bearer(text, low, spans)
            find_high_entropy(text, hits, spans)
        if cli or not self.gate:
            find_cli_credentials(text, low, spans)
        if self.detect_secrets_scan:
            find_with_detect_secrets(text, spans, self.gate)
        return _resolve(text, spans) if spans else []

    def redact_text(self, text: str) -> RedactionResult:
        spans = self.find(text)
        if not spans:
            return RedactionResult(text, {})
        counts: dict[str, int] = {}
        # Some rules read the neighbourhood ("user@host:path" is not an email), and a placeholder
        # changes it; redacting until nothing is found makes the result idempotent by construction.
        # Each round only replaces text that is not a placeholder, so it ends; rarely a second round.
        for _ in range(_MAX_ROUNDS):
            parts, pos = [], 0
            for sp in spans:
                parts.append(text[pos : sp.start])
                parts.append(PLACEHOLDERS[sp.kind])
                counts[sp.kind] = counts.get(sp.kind, 0) + 1
                pos = sp.end
            parts.append(text[pos:])
            text = "".join(parts)
            spans = self.find(text)
            if not spans:
                break
        return RedactionResult(text, counts)

    def redact_json_text(self, raw: str) -> RedactionResult:
        """Redact JSON text as text (keeps its bytes where nothing is found), then check every string
        in it once more: one that still holds something (a JSON escape hid it from the text pass) is
        redacted too and the JSON is written back (compact, key order kept)."""
        first = self.redact_text(raw)
        try:
            obj = json.loads(first.text)
        except (ValueError, RecursionError):
            return first
        extra: dict[str, int] = {}
        obj = _redact_strings(obj, self, extra)
        if not extra:
            return first
        counts = dict(first.counts)
        _add(counts, extra)
        return RedactionResult(json.dumps(obj, ensure_ascii=False), counts)

    def redact_messages(self, messages: list[dict]) -> tuple[list[dict], dict[str, int]]:
        """New message dicts with `content` (string or text parts) and tool-call arguments redacted."""
        counts: dict[str, int] = {}
        out = []
        for message in messages:
            if not isinstance(message, dict):
                out.append(message)
                continue
            new = dict(message)
            content = message.get("content")
            if isinstance(content, str):
                r = self.redact_text(content)
                new["content"] = r.text
                _add(counts, r.counts)
            elif isinstance(content, list):
                new["content"] = [self._redact_part(part, counts) for part in content]
            if isinstance(message.get("tool_calls"), list):
                new["tool_calls"] = [self._redact_call(call, counts) for call in message["tool_calls"]]
            if isinstance(message.get("function_call"), dict):  # the pre-tools OpenAI form
                new["function_call"] = self._redact_function(message["function_call"], counts)
            out.append(new)
        return out, counts

    def _redact_part(self, part: Any, counts: dict[str, int]) -> Any:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            r = self.redact_text(part["text"])
            _add(counts, r.counts)
            return {**part, "text": r.text}
        if isinstance(part, str):
            r = self.redact_text(part)
            _add(counts, r.counts)
            return r.text
        return part

    def _redact_call(self, call: Any, counts: dict[str, int]) -> Any:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            return {**call, "function": self._redact_function(call["function"], counts)}
        return call

    def _redact_function(self, function: dict, counts: dict[str, int]) -> dict:
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            return function
        r = self.redact_json_text(arguments)
        _add(counts, r.counts)
        return {**function, "arguments": r.text}


def _add(counts: dict[str, int], more: dict[str, int]) -> None:
    for kind, n in more.items():
        counts[kind] = counts.get(kind, 0) + n


def _redact_strings(obj: Any, redactor: Redactor, counts: dict[str, int]) -> Any:
    if isinstance(obj, str):
        r = redactor.redact_text(obj)
        _add(counts, r.counts)
        return r.text
    if isinstance(obj, list):
        return [_redact_strings(v, redactor, counts) for v in obj]
    if isinstance(obj, dict):
        return {k: _redact_strings(v, redactor, counts) for k, v in obj.items()}
    return obj


_DEFAULT = Redactor()


def redact_text(text: str) -> RedactionResult:
    """Replace secrets and personal data in `text` by typed placeholders; count them per type."""
    return _DEFAULT.redact_text(text)


def redact_messages(messages: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """Redact OpenAI-style messages (content, text parts, tool-call arguments); the input is not changed."""
    return _DEFAULT.redact_messages(messages)


def redact_value(value: Any) -> tuple[Any, dict[str, int]]:
    """Redact every string inside a JSON value (tool definitions, feedback comments); the input is not changed."""
    counts: dict[str, int] = {}
    return _redact_strings(value, _DEFAULT, counts), counts


def redact_line(raw: str) -> str:
    """Redact a raw log line for quarantine. It may not be JSON; when it is, strings hidden from the
    text pass by JSON escapes are caught too."""
    return _DEFAULT.redact_json_text(raw).text
