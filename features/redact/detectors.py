"""Detectors: each finds the spans of one kind of secret or personal data (validators included)."""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import ipaddress
import json
import math
import re
from typing import Any, Iterable

from detect_secrets.filters.heuristic import is_potential_uuid, is_sequential_string, is_templated_secret
from detect_secrets.plugins.jwt import JwtTokenDetector

from features.redact.patterns import (
    AWS_NEAR,
    AWS_SECRET_DS,
    AWS_SECRET_KV,
    B64_40,
    B64_ENTROPY,
    BARE_PHONE,
    BEARER,
    CARD,
    CONTEXT_WORD,
    DIGIT_OR_AT,
    DOTTED,
    EMAIL,
    FILE_TLDS,
    FORMAT_PATTERNS,
    HEX,
    HEX_ENTROPY,
    IDENTIFIER,
    INTL,
    IPV4,
    IPV6,
    JWT,
    KEYWORDS,
    KV,
    KV_FLAG,
    KV_GLUED,
    KV_NETRC,
    KV_PASSWORD_WORDS,
    KV_PROSE,
    KV_STOP,
    KV_XML,
    LETTER_RUN,
    NANP,
    NOT_SECRET_WORD,
    OPENAI_BODY,
    PEM_BEGIN,
    PEM_BODY,
    PEM_END,
    PEM_MAX,
    PHONE_CONTEXT,
    PHONE_LAST_GROUP,
    PHONE_TAIL_1,
    R_ASSIGN,
    R_BLOCK,
    R_CONTEXT,
    R_ENTROPY,
    R_FORMAT,
    R_LOOSE,
    REFERENCE_WORDS,
    RUN,
    SCP_PATH,
    URL_PASSWORD,
    VERSION_CONTEXT,
    Span,
)


# ---------------------------------------------------------------- validators
def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_issuer_ok(d: str) -> bool:
    n = len(d)
    two, four = int(d[:2]), int(d[:4])
    if d[0] == "4":  # Visa
        return n in (13, 16, 19)
    if two in (34, 37):  # Amex
        return n == 15
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return n == 16
    if d.startswith("6011") or two == 65 or 644 <= int(d[:3]) <= 649 or two == 62:  # Discover, UnionPay
        return 16 <= n <= 19
    if 3528 <= four <= 3589:  # JCB
        return 16 <= n <= 19
    if two in (36, 38, 39) or 300 <= int(d[:3]) <= 305:  # Diners
        return 14 <= n <= 19
    if two in (50, 56, 57, 58, 63, 67):  # Maestro
        return 13 <= n <= 19
    return False


def _card_layout_ok(raw: str) -> bool:
    groups = re.split(r"[ -]", raw)
    if len(groups) == 1:
        return True
    if len({c for c in raw if c in " -"}) > 1:
        return False
    sizes = [len(g) for g in groups]
    if sizes in ([4, 6, 5], [4, 6, 4]):
        return True
    return all(s == 4 for s in sizes[:-1]) and 1 <= sizes[-1] <= 4


def _b64json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    try:
        return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


def _entropy_ok(s: str) -> bool:
    n = min(len(s), 64)
    if HEX.fullmatch(s):
        return HEX_ENTROPY.calculate_shannon_entropy(s) >= 0.75 * min(4.0, math.log2(n))
    return B64_ENTROPY.calculate_shannon_entropy(s) >= 0.8 * math.log2(n)


def _classes(s: str) -> int:
    return (any(c.islower() for c in s)) + (any(c.isupper() for c in s)) + (any(c.isdigit() for c in s))


def _credential_like(v: str) -> bool:
    """A value that is not a plain word: it has a digit or a symbol, or mixed case past the first letter."""
    return any(not c.isalpha() for c in v) or (
        any(c.isupper() for c in v[1:]) and any(c.islower() for c in v)
    )


# ---------------------------------------------------------------- detectors
def find_formats(text: str, out: list[Span]) -> None:
    for kind, regex, group in FORMAT_PATTERNS:
        for m in regex.finditer(text):
            s, e = m.span(group)
            if kind == "openai_key":
                prefix = OPENAI_BODY.match(text, s)
                if _classes(text[prefix.end() if prefix else s : e]) < 3:
                    continue  # "sk-this-is-not-a-key": real keys mix cases and digits
            out.append(Span(s, e, kind, R_FORMAT))


def find_jwts(text: str, out: list[Span]) -> None:
    for m in JWT.finditer(text):
        token = m.group(0)
        header = _b64json(token.split(".", 1)[0])
        if isinstance(header, dict) and "alg" in header and JwtTokenDetector.is_formally_valid(token):
            out.append(Span(m.start(), m.end(), "jwt", R_FORMAT))


def find_private_keys(text: str, out: list[Span]) -> None:
    ends = [m.end() for m in PEM_END.finditer(text)]
    pos = 0
    for m in PEM_BEGIN.finditer(text):
        if m.start() < pos:
            continue  # inside the previous block
        i = bisect.bisect_left(ends, m.end())
        if i < len(ends) and ends[i] - m.start() <= PEM_MAX:
            pos = ends[i]
        else:
            body = PEM_BODY.match(text, m.end())  # all optional: it always matches
            pos = body.end() if body else m.end()
        out.append(Span(m.start(), pos, "private_key", R_BLOCK))


def find_url_passwords(text: str, out: list[Span]) -> None:
    if "://" not in text:
        return
    for m in URL_PASSWORD.finditer(text):
        # After vendor formats: https://x-access-token:ghs_...@github.com is a github_token.
        value = m.group(1)
        if value[0] in "$%{<*" or is_templated_secret(value) or set(value) <= set("*xX."):
            continue  # a reference: postgres://app:${DB_PASSWORD}@db, redis://:$PASS@host, ****
        out.append(Span(m.start(1), m.end(1), "password_in_url", R_FORMAT + 5))


def find_aws_secrets(text: str, out: list[Span]) -> None:
    for m in AWS_SECRET_DS.finditer(text):
        out.append(Span(m.start(1), m.end(1), "aws_secret_key", R_CONTEXT))
    for m in AWS_SECRET_KV.finditer(text):
        out.append(Span(m.start(1), m.end(1), "aws_secret_key", R_CONTEXT))
    for m in B64_40.finditer(text):
        v = m.group(0)
        if _classes(v) < 3 or not _entropy_ok(v) or is_sequential_string(v):
            continue
        if AWS_NEAR.search(text, max(0, m.start() - 200), m.end() + 200):
            out.append(Span(m.start(), m.end(), "aws_secret_key", R_CONTEXT))


def _value_is_secret(value: str, op: str, word: str, quoted: bool, after: str) -> bool:
    v = value.strip()
    if len(v) < 3 or (not quoted and len(v) < 4):
        return False
    low = v.lower()
    if low in KV_STOP or low.strip("_-") in KV_STOP or v[0] in "$%{<*#[" or "://" in v:
        return False
    if len(set(v)) <= 2 or set(v) <= set("*xX.•-_ "):
        return False
    if is_templated_secret(v) or is_potential_uuid(v) and len(v) == 36:
        return False
    if not quoted and after.startswith(("(", ".", "[")):
        return False  # a call or attribute: password = get_password(), token = os.environ[...]
    if IDENTIFIER.fullmatch(v) and ("." in v or any(w in low for w in REFERENCE_WORDS)):
        return False  # a reference: password=self.password, api_key=settings.API_KEY
    if not quoted and op == ":" and not _credential_like(v) and not (word.isupper() and len(v) >= 6):
        # an env-style key (DB_PASSWORD: swordfish in compose/kube YAML) takes any value
        return False  # "Password: incorrect", "token: expired" are prose
    if (
        " " in v
        and not word.lower().startswith(KV_PASSWORD_WORDS)
        and not _credential_like(v.replace(" ", ""))
    ):
        return False
    return True


def _kv_matches(text: str, hits: list[int]) -> Iterable[re.Match]:
    """KV matched at each keyword; a key word starts at most 12 characters before its stem (encryption_key)."""
    seen = set()
    for h in hits:
        starts = [q for q in range(max(0, h - 12), h) if q == 0 or not text[q - 1].isalnum()]
        starts.append(h)
        for p in starts:
            if p in seen:
                continue
            m = KV.match(text, p)
            if m is None:
                continue
            if p and text[p - 1].isalnum() and not m.group("word").lower().startswith(KV_GLUED):
                if not (p >= 2 and text[p - 2] == "\\" and text[p - 1] in "nrt"):
                    continue  # "compass=north"; but "\\napi_key=..." in JSON text is a key
            seen.add(p)
            yield m


def find_key_values(text: str, low: str, hits: list[int], out: list[Span]) -> None:
    for m in _kv_matches(text, hits):
        for g in ("v1", "v2", "v3", "v4", "v5"):
            if m.group(g) is not None:
                break
        s, e = m.span(g)
        value = m.group(g)
        after = text[e : e + 1]  # what follows the value as written: "(" or "[" make it code
        if g == "v5":
            # Sentence punctuation after an unquoted value is not part of it.
            stripped = value.rstrip(".!?:)")
            e -= len(value) - len(stripped)
            value = stripped
        if value and _value_is_secret(value, m.group("op"), m.group("word"), g != "v5", after):
            out.append(Span(s, e, "key_value_secret", R_ASSIGN))
    regexes = [KV_FLAG]
    if "</" in text:
        regexes.append(KV_XML)
    if "machine" in low:
        regexes.append(KV_NETRC)
    for regex in regexes:
        for m in regex.finditer(text):
            value = m.group("v")
            quoted = regex is KV_XML or regex is KV_NETRC
            if value[0] != "-" and _value_is_secret(value, "=" if quoted else ":", "password", quoted, ""):
                out.append(Span(m.start("v"), m.end("v"), "key_value_secret", R_ASSIGN))
    if not ("password" in low or "passcode" in low or "passphrase" in low or "pwd" in low):
        return
    for m in KV_PROSE.finditer(text):
        value = m.group(1).rstrip(".,!?;:)")
        if value.lower() not in KV_STOP and _credential_like(value) and value[0] not in "$%{<*":
            out.append(Span(m.start(1), m.start(1) + len(value), "key_value_secret", R_ASSIGN))


def find_bearer(text: str, low: str, out: list[Span]) -> None:
    if "bearer" not in low and "authorization" not in low:
        return
    for m in BEARER.finditer(text):
        tok = m.group("tok").rstrip(".")
        if m.group("bare") and (len(tok) < 16 or not any(c.isdigit() for c in tok)):
            continue  # "bearer" in prose: "a bearer bond"
        if tok.lower() in KV_STOP or is_templated_secret(tok):
            continue
        out.append(Span(m.start("tok"), m.start("tok") + len(tok), "generic_token", R_ASSIGN))


_ENTROPY_REACH = 64  # a context word must end at most this far before the candidate


def _entropy_candidates(text: str, hits: list[int]) -> Iterable[re.Match]:
    """Runs that start within _ENTROPY_REACH characters after a keyword stem."""
    windows: list[list[int]] = []  # [first start, last start] of candidates, merged
    for h in hits:
        if windows and h <= windows[-1][1]:
            windows[-1][1] = h + _ENTROPY_REACH
        else:
            windows.append([h, h + _ENTROPY_REACH])
    for first, last in windows:
        end = min(len(text), last + 300)
        for m in RUN.finditer(text, first, end):
            if m.start() > last:
                break
            # endpos hides what follows: measure a run that reaches it on the whole text.
            yield (RUN.match(text, m.start()) or m) if m.end() == end else m


def find_high_entropy(text: str, hits: list[int], out: list[Span]) -> None:
    for m in _entropy_candidates(text, hits):
        v = m.group(0)
        if not 20 <= len(v) <= 256 or not _entropy_ok(v) or is_potential_uuid(v) or is_sequential_string(v):
            continue
        if not (any(c.isdigit() for c in v) and any(c.isalpha() for c in v)):
            continue
        s = m.start()
        line_start = text.rfind("\n", 0, s) + 1
        window = text[max(line_start, s - 64) : s]
        line_end = text.find("\n", m.end())
        after = text[m.end() : min(m.end() + 32, line_end if line_end >= 0 else len(text))]
        if not CONTEXT_WORD.search(window) or NOT_SECRET_WORD.search(window) or NOT_SECRET_WORD.search(after):
            continue
        if "/" in v and sum(seg.isdigit() or (seg.isalpha() and seg.islower()) for seg in v.split("/")) >= 2:
            continue  # a path: uploads/2024/05/1338cb5d1c4759f8
        out.append(Span(s, m.end(), "high_entropy", R_ENTROPY))


def find_emails(text: str, out: list[Span]) -> None:
    for m in EMAIL.finditer(text):
        if m.group(0).rsplit(".", 1)[1].lower() in FILE_TLDS:
            continue  # icon@2x.png
        if text.endswith("//", 0, m.start()) or SCP_PATH.match(text, m.end()):
            continue  # the user of a URL (https://git@host/...) or of an scp path (git@github.com:org/repo)
        out.append(Span(m.start(), m.end(), "email", R_CONTEXT))


def find_phones(text: str, out: list[Span]) -> None:
    for m in NANP.finditer(text):
        area = m.group("a1") or m.group("a2")
        if area[0] in "01" or m.group("ex")[0] in "01":
            continue
        if m.group("s1") and m.group("s1") != m.group("s2"):
            continue  # 555-123.4567 is not a layout anyone writes
        out.append(Span(m.start(), m.end(), "phone", R_LOOSE))
    for m in INTL.finditer(text):
        raw = m.group(0).split("\n", 1)[0]
        # A trailing 1-digit group is the next number ("+1 415 555 2671 2 times"), not the phone's;
        # so are trailing groups past 15 digits ("+44 20 7946 0958 4111 1111 ...").
        raw = PHONE_TAIL_1.sub("", raw)
        while sum(c.isdigit() for c in raw) > 15:
            cut = PHONE_LAST_GROUP.search(raw)
            if cut is None:
                break
            raw = raw[: cut.start()]
        if 8 <= sum(c.isdigit() for c in raw) <= 15:
            out.append(Span(m.start(), m.start() + len(raw), "phone", R_LOOSE))
    for m in BARE_PHONE.finditer(text):
        if PHONE_CONTEXT.search(text, max(0, m.start() - 24), m.start()):
            out.append(Span(m.start(), m.end(), "phone", R_LOOSE))


def find_cards(text: str, out: list[Span]) -> None:
    for m in CARD.finditer(text):
        raw = m.group(0)
        if _card_ok(raw):
            out.append(Span(m.start(), m.end(), "card", R_CONTEXT))
            continue
        # "call 555-2671 4111 1111 1111 1111 2 items": neighbouring numbers joined the run. A card is
        # at most 5 groups (4-4-4-4-3), so scan the run's groups with windows of 5 down to 1.
        groups = [g.span() for g in _DIGITS.finditer(raw)]
        i = 0
        while i < len(groups):
            for size in range(min(5, len(groups) - i), 0, -1):
                a, b = groups[i][0], groups[i + size - 1][1]
                if _card_ok(raw[a:b]):
                    out.append(Span(m.start() + a, m.start() + b, "card", R_CONTEXT))
                    i += size
                    break
            else:
                i += 1


_DIGITS = re.compile(r"\d+")


def _card_ok(raw: str) -> bool:
    digits = raw.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and _card_layout_ok(raw) and _card_issuer_ok(digits) and _luhn(digits)


def find_ips(text: str, out: list[Span]) -> None:
    if DOTTED.search(text):
        for m in IPV4.finditer(text):
            first = int(m.group(0).split(".", 1)[0])
            if first in (0, 127, 255):
                continue
            if VERSION_CONTEXT.search(text, max(0, m.start() - 16), m.start()):
                continue
            out.append(Span(m.start(), m.end(), "ip", R_LOOSE))
    if "::" in text or text.count(":") >= 7:
        for m in IPV6.finditer(text):
            raw = m.group(0)
            if raw.endswith(":") and not raw.endswith("::"):
                raw = raw[:-1]  # "at fe80::1: ..." - the colon is punctuation
            if not any(c.isdigit() for c in raw):
                continue
            try:
                addr = ipaddress.IPv6Address(raw)
            except ValueError:
                continue
            if addr.is_loopback or addr.is_unspecified:
                continue
            out.append(Span(m.start(), m.start() + len(raw), "ip", R_LOOSE))


# ---------------------------------------------------------------- detect-secrets' own scanner
_DS_TYPE_MAP = {
    "AWS Access Key": "aws_access_key",
    "GitHub Token": "github_token",
    "Slack Token": "slack_token",
    "OpenAI Token": "openai_key",
    "Stripe Access Key": "stripe_key",
    "JSON Web Token": "jwt",
    "Basic Auth Credentials": "password_in_url",
    "Secret Keyword": "key_value_secret",
    "Base64 High Entropy String": "high_entropy",
    "Hex High Entropy String": "high_entropy",
}
_DS_SKIP = {"Private Key", "Public IP (ipv4)"}  # block spans and IPs are handled above


@functools.lru_cache(maxsize=1)
def _detect_secrets_plugins() -> tuple[Any, ...]:
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    classes: dict[str, Any] = get_mapping_from_secret_type_to_class()
    return tuple(cls() for name, cls in classes.items() if name not in _DS_SKIP)


def find_with_detect_secrets(text: str, out: list[Span], gate: bool = True) -> None:
    """detect-secrets' plugins on each line (values, mapped back to spans). No verification calls."""
    offset = 0
    for line in text.splitlines(keepends=True):
        lower = line.lower()
        if (
            not gate
            or DIGIT_OR_AT.search(line)
            or LETTER_RUN.search(line)
            or any(k in lower for k in KEYWORDS)
        ):
            for plugin in _detect_secrets_plugins():
                for value in plugin.analyze_string(line):
                    if not value or len(value) < 4:
                        continue
                    entropy_limit = getattr(plugin, "entropy_limit", None)
                    if entropy_limit is not None and plugin.calculate_shannon_entropy(value) <= entropy_limit:
                        continue
                    if is_potential_uuid(value) or is_sequential_string(value) or is_templated_secret(value):
                        continue
                    kind = _DS_TYPE_MAP.get(plugin.secret_type, "generic_token")
                    start = line.find(value)
                    while start >= 0:
                        out.append(Span(offset + start, offset + start + len(value), kind, R_ENTROPY + 5))
                        start = line.find(value, start + len(value))
        offset += len(line)
