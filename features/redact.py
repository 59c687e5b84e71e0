"""Secrets and personal data redaction: every text is redacted before anything is stored or logged.

    from features.redact import redact_text, redact_messages, redact_line
    redact_text("key AKIA... to bob@example.com").text  ->  "key <SECRET:aws_access_key> to <EMAIL>"

A found span is replaced by a typed placeholder (types fixed in features/schema.py):
`<SECRET:{type}>` for SECRET_TYPES, `<EMAIL>` `<PHONE>` `<CARD>` `<IP>` for PII_TYPES. Only the span
is replaced; for `scheme://user:pass@host` and `password=value` only the password/value is.

Where the detectors come from. detect-secrets 1.5.0 (Yelp) is used for what it does well, as
*regexes and validators*, not through its line scanner: its scanner returns secret values, not
spans, needs a settings singleton, and some detectors lose the span (its JWT regex stops before
the signature; its Stripe regex is fixed at 24 characters and would cut a longer key in two).
  - from detect-secrets: AWS access key ids (AWSKeyDetector regex 1), AWS secret keys in a quoted
    `aws...key = "..."` assignment (AWSKeyDetector regex 2), GitHub classic tokens, Slack tokens and
    webhooks, OpenAI keys with the T3BlbkFJ marker, Stripe sk/rk_live, the JWT validity check
    (JwtTokenDetector.is_formally_valid), Shannon entropy (Base64/HexHighEntropyString), the
    false-positive heuristics (is_sequential_string, is_potential_uuid, is_templated_secret), and
    the vendor formats that schema.py has no type for, reported as `generic_token`: GitLab,
    SendGrid, Square, Telegram bot, PyPI, Discord bot, Mailchimp.
  - own patterns, because detect-secrets misses them or is too narrow for text: GitHub
    fine-grained `github_pat_` and longer gh*_ tokens; Slack `xapp-`/`xoxe-` and other `xox?-`
    forms; OpenAI `sk-`/`sk-proj-`/`sk-svcacct-` keys without the marker; Google `AIza` keys;
    Stripe keys of any length, `*_test_` and `whsec_`; the JWT span (three segments, header
    decodes to JSON with "alg"); PEM/OpenSSH/PGP private-key *blocks* BEGIN..END (detect-secrets
    only flags the BEGIN line), also truncated ones and ones inside JSON strings (`\\n`); passwords
    in URLs including `!$&*()` and empty user names (its BasicAuth regex stops at those);
    unquoted `aws_secret_access_key = ...` and a 40-character secret next to an AKIA id;
    `key=value` / `key: value` / JSON for secret-ish keys (its KeywordDetector takes the rest of
    the line as the value when unquoted, which over-redacts chat text), `<password>x</password>`,
    .netrc lines and `--password x` flags; `Authorization: Bearer`
    and Hugging Face / Anthropic / npm tokens as `generic_token`; high-entropy strings next to
    credential words; all personal data (email, phone, card with Luhn and issuer prefix, IPv4/IPv6).
  - `Redactor(detect_secrets_scan=True)` additionally runs detect-secrets' own plugin scan
    (`analyze_string` of every plugin, on lines that pass the cheap gate) as a safety net and
    maps the values it returns back to spans. It is off by default: on the labeled corpus
    (tests/data) it finds no secret the patterns above miss and adds two false alarms (a quoted
    ETag, a publishable Stripe key), and it cuts throughput on chat text from ~175k to ~66k
    texts/s gated and ~8k ungated (bench/redact_bench.py, one CPU core).

Speed. Ordinary chat holds no secret, so the common case is a gate: lower-case once, look for a
digit, an `@`, a credential word or a 16-letter run (~4 us for a chat line); only texts that pass
run the detectors, each behind its own cheap literal test. Keyword detectors run only at the
keywords found in the lower-cased text, never over the whole text. Every pattern is linear on
adversarial input (tests and bench/redact_bench.py; 100 kB of repeated bait: < 0.3 s).

Decisions (a person will ask):
  - IP addresses: every valid IPv4/IPv6 address is PII, private ranges (10/8, 192.168/16, fc00::/7)
    included: they identify a home or office network. Kept: loopback (127/8, ::1), unspecified
    (0.0.0.0, ::) and 255.x.x.x (netmasks, broadcast); they are the same on every machine and code
    talk is full of them. A dotted quad right after `version`/`ver`/`v`/`release`/`build`/`rev`
    is a version, not an address; `v1.2.3.4` never matches (a letter is glued to it); five or more
    dotted parts (OIDs) never match.
  - Stripe: secret (`sk_`) and restricted (`rk_`) keys, live and test, and webhook secrets
    (`whsec_`) are redacted. Publishable keys (`pk_live_`, `pk_test_`) are public by design (they
    ship in web pages) and are kept.
  - Phone numbers: international numbers need the `+` (or `00`) prefix; North-American numbers
    need a separator layout (`(415) 555-2671`, `415-555-2671`, `415.555.2671`, `+1 415 555 2671`);
    ten bare digits count only right after a phone word (`call`, `phone`, `tel`, `mobile`, ...).
    So dates, versions, ranges, ISBNs and order ids stay.
  - Cards: 13-19 digits, optional spaces or dashes in a card layout, a known issuer prefix and
    a valid Luhn checksum.
  - Context-free long random strings (hashes, ids, base64 data) are kept: a high-entropy string
    is a secret only within 64 characters after a credential word (key, token, secret, password,
    bearer, credential, auth) and with no hash word (sha, hash, digest, checksum, commit, uuid)
    in the 64 characters before it or the 32 after it.
  - An address followed by `:path` (`git@github.com:org/repo.git`) or preceded by `//`
    (`https://git@host/...`) is a login, not an email.
  - `key: value` with an unquoted plain word after a colon ("Password: incorrect") is prose, not
    a secret: after a colon an unquoted value must look like a credential (a digit, a symbol, or
    mixed case), after `=` or in quotes any value of 3+ characters counts.

Overlaps: private-key blocks first, then format-specific secrets (vendor tokens, JWTs, URL
passwords), then contextual secrets and email/card, then key=value/bearer, then phone/IP, then
high-entropy; within a rank the longest span wins. Text already redacted is left alone: a span
that touches an existing placeholder is dropped. A few rules read the neighbourhood, which a
placeholder changes, so redact_text repeats until nothing more is found (rarely a second round):
redacting twice changes nothing and counts nothing.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import ipaddress
import json
import math
import re
import string
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

from detect_secrets.filters.heuristic import is_potential_uuid, is_sequential_string, is_templated_secret
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HexHighEntropyString
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector

from features.schema import PII_TYPES, SECRET_TYPES

__all__ = [
    "RedactionResult",
    "Redactor",
    "placeholder",
    "redact_text",
    "redact_messages",
    "redact_line",
    "PLACEHOLDER_RE",
]


def placeholder(kind: str) -> str:
    """The placeholder text for a redaction type: `<SECRET:jwt>`, `<EMAIL>`."""
    if kind in PII_TYPES:
        return f"<{kind.upper()}>"
    if kind in SECRET_TYPES:
        return f"<SECRET:{kind}>"
    raise ValueError(f"unknown redaction type {kind!r}; known: {SECRET_TYPES + PII_TYPES}")


_PLACEHOLDERS = {kind: placeholder(kind) for kind in SECRET_TYPES + PII_TYPES}
# Any placeholder, also of a type a later schema might add: redacted text is never redacted again.
PLACEHOLDER_RE = re.compile(r"<SECRET:[a-z0-9_]{1,40}>|<(?:EMAIL|PHONE|CARD|IP)>")


@dataclass
class RedactionResult:
    """Redacted text and how many spans of each type were replaced (types with 0 are absent)."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def secrets(self) -> int:
        return sum(n for kind, n in self.counts.items() if kind in SECRET_TYPES)


class Span(NamedTuple):
    start: int
    end: int
    kind: str
    rank: int  # lower wins an overlap; then the longer span


# Ranks (see the module docstring, "Overlaps").
R_BLOCK, R_FORMAT, R_CONTEXT, R_ASSIGN, R_LOOSE, R_ENTROPY = 0, 10, 20, 30, 35, 40

# Left/right token boundaries. Raw lines and tool-call arguments are JSON text, so a token may start
# right after an escape (`\nAKIA...`), and a backslash before a token is a boundary unless it makes
# an escape with the token's first letter (`\ntoken` is "\n" + "token", not "\" + "ntoken").
_ESC = r"|(?<=\\[nrt])|(?<=\\)(?![nrt])"
_L = r"(?:(?<![A-Za-z0-9_\\-])" + _ESC + ")"
_R = r"(?![A-Za-z0-9_-])"
_LA = r"(?:(?<![A-Za-z0-9\\])" + _ESC + ")"  # alphanumeric-only boundary, for ids like AKIA...
_RA = r"(?![A-Za-z0-9])"


def _wrap(pattern: re.Pattern, left: str = _L, right: str = _R) -> re.Pattern:
    """A detect-secrets regex with token boundaries added (its regexes match inside longer words)."""
    return re.compile(f"{left}(?:{pattern.pattern}){right}", pattern.flags)


# ---------------------------------------------------------------- format-specific secrets
_FORMAT_PATTERNS: list[tuple[str, re.Pattern, int]] = [  # (type, regex, group holding the secret)
    # AWS access key ids: detect-secrets' regex (AKIA, ASIA, ABIA, ACCA, A3T*).
    ("aws_access_key", _wrap(AWSKeyDetector.denylist[0], _LA, _RA), 0),
    # GitHub: detect-secrets' classic token regex, and own for longer and fine-grained tokens.
    ("github_token", _wrap(GitHubTokenDetector.denylist[0]), 0),
    ("github_token", re.compile(_L + r"gh[pousr]_[A-Za-z0-9_]{30,251}" + _R), 0),
    ("github_token", re.compile(_L + r"github_pat_[A-Za-z0-9_]{30,251}" + _R), 0),
    # Slack: detect-secrets' xox token and webhook regexes; own for xapp-, xoxe- and the rest.
    ("slack_token", _wrap(SlackDetector.denylist[0]), 0),
    ("slack_token", _wrap(SlackDetector.denylist[1], r"(?<![\w/.-])", r"(?![\w])"), 0),
    ("slack_token", re.compile(_L + r"(?:xox[a-z](?:\.xox[a-z])?|xapp)-[A-Za-z0-9-]{10,250}" + _R), 0),
    (
        "slack_token",
        re.compile(
            r"(?<![\w/.-])https://hooks\.slack\.com/(?:services|workflows|triggers)/"
            r"[A-Za-z0-9_/-]{10,200}(?![\w/])",
            re.I,
        ),
        0,
    ),
    # OpenAI: detect-secrets knows the T3BlbkFJ-marked format; own for sk-/sk-proj-/sk-svcacct- keys.
    ("openai_key", _wrap(OpenAIDetector.denylist[0]), 0),
    (
        "openai_key",
        re.compile(_L + r"sk-(?!ant-)(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,250}" + _R),
        0,
    ),
    # Google API keys (own: detect-secrets has none).
    ("google_api_key", re.compile(_L + r"AIza[0-9A-Za-z_-]{35}" + _R), 0),
    # Stripe: detect-secrets' sk/rk_live regex (24 chars); own for any length, test keys, webhook secrets.
    ("stripe_key", _wrap(StripeDetector.denylist[0]), 0),
    ("stripe_key", re.compile(_L + r"(?:sk|rk)_(?:live|test)_[0-9a-zA-Z]{16,247}" + _R), 0),
    ("stripe_key", re.compile(_L + r"whsec_[A-Za-z0-9+/=]{24,128}" + _R), 0),
    # Vendor formats without a type of their own.
    ("generic_token", _wrap(GitLabTokenDetector.denylist[0]), 0),
    ("generic_token", _wrap(SendGridDetector.denylist[0]), 0),
    ("generic_token", _wrap(SquareOAuthDetector.denylist[0]), 0),
    ("generic_token", _wrap(TelegramBotTokenDetector.denylist[0], r"(?<![\w:])", _R), 0),
    ("generic_token", _wrap(PypiTokenDetector.denylist[0]), 0),
    ("generic_token", _wrap(PypiTokenDetector.denylist[1]), 0),
    ("generic_token", _wrap(DiscordBotTokenDetector.denylist[0]), 0),
    ("generic_token", _wrap(MailchimpDetector.denylist[0]), 0),
    (
        "generic_token",
        re.compile(  # Hugging Face, npm, Anthropic
            _L
            + r"(?:hf_[A-Za-z0-9]{30,40}|npm_[A-Za-z0-9]{36}|sk-ant-[a-z]{2,10}\d{0,3}-[A-Za-z0-9_-]{20,250})"
            + _R
        ),
        0,
    ),
    ("generic_token", re.compile(r"AccountKey=([A-Za-z0-9+/]{86}==)"), 1),
]
# Literal fragments one of which every format above contains (the gate for the whole list).
_FORMAT_GATE = re.compile(
    r"A(?:KIA|SIA|BIA|CCA|3T)|gh[pousr]_|github_pat_|xox|xapp-|hooks\.slack|sk-|[sr]k_(?:live|test)_|whsec_|AIza"
    r"|gl[a-z]{2,6}-|GR1348941|SG\.|sq0csp-|\d{8}:|pypi-|\.[A-Za-z0-9_-]{6}\.|-us\d|hf_|npm_|AccountKey="
)
_OPENAI_BODY = re.compile(r"sk-(?:proj-|svcacct-|admin-|None-)?")

# JWT: span by own regex (detect-secrets' stops before the signature), validity by detect-secrets.
_JWT = re.compile(_L + r"eyJ[A-Za-z0-9_-]{8,}={0,2}\.[A-Za-z0-9_-]{2,}={0,2}\.[A-Za-z0-9_-]*={0,2}" + _R)

# Private keys: PEM (RSA, DSA, EC, OPENSSH, ENCRYPTED, PGP ... BLOCK), SSH2 and PuTTY files. A block
# with no END (pasted half) runs over its base64 lines. `\\n` is the same block inside a JSON string.
# The END is looked up in a list of END markers (a lazy `.*?END` from every BEGIN is quadratic).
_NL = r"(?:\r?\n|\\r\\n|\\n)"
_PEM_BEGIN = re.compile(
    r"-{4,5} ?BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)? ?-{4,5}|PuTTY-User-Key-File-\d: "
)
_PEM_END = re.compile(
    r"-{4,5} ?END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)? ?-{4,5}|Private-MAC: [0-9a-fA-F]{20,}"
)
_PEM_BODY = re.compile(  # what follows a BEGIN with no END: header lines, then base64 lines
    r"(?:"
    + _NL
    + r"[A-Za-z][A-Za-z-]{0,30}: [^\r\n\\]{0,200})*(?:(?:"
    + _NL
    + r"|[ \t])+[A-Za-z0-9+/=]{16,})*"
)
_PEM_MAX = 32_000  # a PEM block is at most a few kB (RSA-8192: ~6.5 kB); an END further away is another's

# Passwords in URLs: scheme://user:password@host, the user may be empty (redis://:pw@host).
_URL_PASSWORD = re.compile(
    r"(?i)(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{1,30}://[^\s:/?#@\"'<>\[\]\\]{0,128}"  # scheme://user
    r":([^\s/\"'<>\\@]{1,128})@(?=[A-Za-z0-9\[])"  # :password@host
)

# AWS secret access keys: in a quoted assignment (detect-secrets), unquoted (own), or a 40-character
# base64 string in the same text as an AWS key id or the word "aws" (own).
_AWS_SECRET_DS = AWSKeyDetector.denylist[1]
_AWS_SECRET_KV = re.compile(
    r"(?i)aws_?secret(?:_?access)?_?key[\"'\\]{0,2}\s{0,3}(?:=|:|=>)\s{0,3}[\"'\\]{0,2}"
    r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
)
_B64_40 = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_AWS_NEAR = re.compile(r"(?i)(?<![a-z])aws(?![a-z])|(?<![A-Za-z0-9])A(?:KIA|SIA)[0-9A-Z]{16}(?![A-Za-z0-9])")

# ---------------------------------------------------------------- key = value
_KV_WORDS = (
    r"pass(?:word|wd|phrase|code)?|pwd|client[_-]?secret|secret(?:[_-]?access)?(?:[_-]?key)?"
    r"|(?:access|refresh|auth|id|session|csrf|xsrf|bot|bearer|api)?[_-]?token"
    r"|api[_-]?key|apikey|access[_-]?key(?:[_-]?id)?|auth[_-]?key|private[_-]?key|signing[_-]?key"
    r"|encryption[_-]?key|master[_-]?key|auth|credentials?"
)
# Matched only at keywords that _STEMS found (scanning a whole text with it costs ~250 ns a
# character); whether the word may follow a letter is decided in Python (_kv_matches).
_KV = re.compile(
    r"(?i)(?P<word>" + _KV_WORDS + r")(?![A-Za-z0-9])"
    r"(?:\\?[\"'])?\]?\s{0,3}(?P<op>=>|:=|==|=|:)\s{0,3}"
    r"(?:\\\"(?P<v1>(?:[^\"\\\n]|\\[^\"\n]){1,256}?)\\\""
    r"|\"(?P<v2>(?:[^\"\\\n]|\\.){1,256}?)\""
    r"|'(?P<v3>(?:[^'\\\n]|\\.){1,256}?)'"
    r"|`(?P<v4>[^`\n]{1,256}?)`"
    r"|(?P<v5>[^\s'\"`,;&<>{}()\[\]\\]{1,256}))"
)
_KV_PROSE = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?:password|passcode|passphrase|pwd)\s{1,3}(?:is|was|will be)\s{1,3}[\"'“]?"
    r"([^\s\"'”]{4,128})"
)
# Other places a value sits: <password>x</password>, a .netrc line, a command-line flag.
_KV_XML = re.compile(
    r"(?i)<(?P<tag>(?:[A-Za-z0-9]{1,32}[_.:-]){0,3}"
    r"(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|client[_-]?secret))>(?P<v>[^<\n]{3,256})</(?P=tag)>"
)
_KV_NETRC = re.compile(r"(?<![\w-])machine\s+\S+\s+login\s+\S+\s+password\s+(?P<v>\S{1,256})")
_KV_FLAG = re.compile(
    r"-(?<![\w-]-)-?(?i:(?:[a-z0-9]+-){0,3}(?:password|passwd|pass|pwd|token|secret|api-?key|client-secret))"
    r"(?:\s{1,3}|=)(?P<v>[^\s'\"`;&|<>]{3,256})"
)
_KV_PASSWORD_WORDS = ("pass", "pwd")
_KV_GLUED = ("password", "passwd", "pwd", "token", "secret")  # may follow a letter: PGPASSWORD=, csrftoken=
# Keyword stems, searched in the lower-cased text (a literal alternation: the cheapest scan there
# is). Every key word and context word contains one, and so do "bearer" and "authorization".
_STEMS = re.compile(r"pass|pwd|secret|token|key|auth|cred|bearer")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_KV_STOP = frozenset(
    "none null nil true false undefined required optional empty redacted hidden masked removed str string "
    "int bytes any bool object dict list secret password token changed reset expired invalid incorrect "
    "wrong missing unknown example placeholder value here your yes no on off set unset bearer basic".split()
)
_REFERENCE_WORDS = ("pass", "pwd", "secret", "token", "key", "auth", "cred", "env")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")

# ---------------------------------------------------------------- generic tokens and entropy
_BEARER = re.compile(
    r"(?i)(?:(?<![A-Za-z0-9\\])" + _ESC + r")(?:authorization\\?[\"']?\s{0,3}[:=]\s{0,3}\\?[\"']?\s{0,3}"
    r"(?:(?P<scheme>bearer|basic|token|digest)\s{1,3})?|(?P<bare>bearer)\s{1,3})"
    r"(?P<tok>[A-Za-z0-9._~+/-]{8,2048}={0,2})(?![A-Za-z0-9._~+/=-])"
)
_RUN = re.compile(r"(?:(?<![A-Za-z0-9+/=_\\-])" + _ESC + r")[A-Za-z0-9+/_-][A-Za-z0-9+/=_-]{19,}")
_CONTEXT_WORD = re.compile(  # "<" before: the word SECRET of a placeholder is no context
    r"(?i)(?<![A-Za-z0-9<])(?:api[_ -]?key|keys?|tokens?|secrets?|credentials?|creds|bearer|passwords?|passwd|pwd"
    r"|auth|apikey)(?![a-z])"
)
_NOT_SECRET_WORD = re.compile(
    r"(?i)(?<![a-z])(?:sha-?\d*|hash(?:es|ed)?|digest|checksum|commit|md5|uuid|guid|etag|fingerprint)(?![a-z])"
)
_HEX = re.compile(r"[0-9a-fA-F]+")
_B64_ENTROPY = Base64HighEntropyString()
_HEX_ENTROPY = HexHighEntropyString()

# ---------------------------------------------------------------- personal data
_EMAIL = re.compile(
    r"(?:(?<![A-Za-z0-9._%+\\-])" + _ESC + r")[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.){1,8}[^\W\d_]{2,24}(?![\w-])"
)
_SCP_PATH = re.compile(r":[A-Za-z0-9_~./<-]")  # "<": a path already redacted stays a path
_FILE_TLDS = frozenset("png jpg jpeg gif svg webp ico bmp pdf tif tiff".split())

_NANP = re.compile(
    r"(?<![\w+.\-/])(?:(?P<cc>\+?1)(?P<s0>[ .-]?))?(?:\((?P<a1>\d{3})\)[ ]?|(?P<a2>\d{3})(?P<s1>[ .-]))"
    r"(?P<ex>\d{3})(?P<s2>[ .-])\d{4}(?![\w]|[.-]\d)"
)
_INTL = re.compile(r"(?<![\w+])(?:\+|00)[1-9]\d{0,2}(?:[ .-]?\(?\d{1,5}\)?){1,6}")
_PHONE_CONTEXT = re.compile(
    r"(?i)(?<![a-z])(?:phone|tel|telephone|call|mobile|cell|fax|sms|whatsapp|text me|reach me)"
    r"\W{0,12}(?:at|on|is|:)?\W{0,3}$"
)
_PHONE_TAIL_1 = re.compile(r"[ .-]\(?\d\)?$")
_PHONE_LAST_GROUP = re.compile(r"[ .-]?\(?\d+\)?$")
_BARE_PHONE = re.compile(r"(?<![\w+.-])1?[2-9]\d{9}(?![\w]|[.-]\d)")

# The first digit is matched before the lookbehind so that `re` can skip ahead to digits quickly.
_CARD = re.compile(r"\d(?<![\d.,-]\d)(?:[ -]?\d){12,200}(?![\d]|[.,-]\d)")  # a run of digit groups
# Cheap shapes: phones and cards need 7+ digits with separators, IPv4 addresses a dotted quad.
_NUMBERISH = re.compile(r"\d[\d \t().-]{5,}\d")
_DOTTED = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(r"(?<![\w.])" + _OCTET + r"(?:\." + _OCTET + r"){3}(?![\w]|\.\d)")
_VERSION_CONTEXT = re.compile(
    r"(?i)(?<![a-z])(?:version|ver|v|release|build|rev|revision|firmware|fw)\.?\s{0,2}[:=]?\s{0,2}$"
)
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|"
    + _OCTET
    + r"(?:\."
    + _OCTET
    + r"){3})?(?![\w:])"
)

# Cheap gate: a text that none of these touch cannot hold anything we redact (every format has a
# digit, an @, a credential word or a 16+ letter run; chat mostly has none of them). Substring tests
# on the lower-cased text: a case-insensitive regex costs ten times more on ordinary chat.
_DIGIT_OR_AT = re.compile(r"[0-9@]")
_LETTER_RUN = re.compile(r"[A-Za-z_-]{16}")
# Every vendor format has a 16+ run of these characters but for base64 ones (literal checks).
_TOKEN_RUN = re.compile(r"[A-Za-z0-9_-]{16}")
_KEYWORDS = ("key", "token", "secret", "pass", "pwd", "auth", "bearer", "cred")


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
    if _HEX.fullmatch(s):
        return _HEX_ENTROPY.calculate_shannon_entropy(s) >= 0.75 * min(4.0, math.log2(n))
    return _B64_ENTROPY.calculate_shannon_entropy(s) >= 0.8 * math.log2(n)


def _classes(s: str) -> int:
    return (any(c.islower() for c in s)) + (any(c.isupper() for c in s)) + (any(c.isdigit() for c in s))


def _credential_like(v: str) -> bool:
    """A value that is not a plain word: it has a digit or a symbol, or mixed case past the first letter."""
    return any(not c.isalpha() for c in v) or (
        any(c.isupper() for c in v[1:]) and any(c.islower() for c in v)
    )


# ---------------------------------------------------------------- detectors
def _find_formats(text: str, out: list[Span]) -> None:
    for kind, regex, group in _FORMAT_PATTERNS:
        for m in regex.finditer(text):
            s, e = m.span(group)
            if kind == "openai_key":
                prefix = _OPENAI_BODY.match(text, s)
                if _classes(text[prefix.end() if prefix else s : e]) < 3:
                    continue  # "sk-this-is-not-a-key": real keys mix cases and digits
            out.append(Span(s, e, kind, R_FORMAT))


def _find_jwts(text: str, out: list[Span]) -> None:
    for m in _JWT.finditer(text):
        token = m.group(0)
        header = _b64json(token.split(".", 1)[0])
        if isinstance(header, dict) and "alg" in header and JwtTokenDetector.is_formally_valid(token):
            out.append(Span(m.start(), m.end(), "jwt", R_FORMAT))


def _find_private_keys(text: str, out: list[Span]) -> None:
    ends = [m.end() for m in _PEM_END.finditer(text)]
    pos = 0
    for m in _PEM_BEGIN.finditer(text):
        if m.start() < pos:
            continue  # inside the previous block
        i = bisect.bisect_left(ends, m.end())
        if i < len(ends) and ends[i] - m.start() <= _PEM_MAX:
            pos = ends[i]
        else:
            body = _PEM_BODY.match(text, m.end())  # all optional: it always matches
            pos = body.end() if body else m.end()
        out.append(Span(m.start(), pos, "private_key", R_BLOCK))


def _find_url_passwords(text: str, out: list[Span]) -> None:
    if "://" not in text:
        return
    for m in _URL_PASSWORD.finditer(text):
        # After vendor formats: https://x-access-token:ghs_...@github.com is a github_token.
        out.append(Span(m.start(1), m.end(1), "password_in_url", R_FORMAT + 5))


def _find_aws_secrets(text: str, out: list[Span]) -> None:
    for m in _AWS_SECRET_DS.finditer(text):
        out.append(Span(m.start(1), m.end(1), "aws_secret_key", R_CONTEXT))
    for m in _AWS_SECRET_KV.finditer(text):
        out.append(Span(m.start(1), m.end(1), "aws_secret_key", R_CONTEXT))
    for m in _B64_40.finditer(text):
        v = m.group(0)
        if _classes(v) < 3 or not _entropy_ok(v) or is_sequential_string(v):
            continue
        if _AWS_NEAR.search(text, max(0, m.start() - 200), m.end() + 200):
            out.append(Span(m.start(), m.end(), "aws_secret_key", R_CONTEXT))


def _value_is_secret(value: str, op: str, word: str, quoted: bool, after: str) -> bool:
    v = value.strip()
    if len(v) < 3 or (not quoted and len(v) < 4):
        return False
    low = v.lower()
    if low in _KV_STOP or low.strip("_-") in _KV_STOP or v[0] in "$%{<*#[" or "://" in v:
        return False
    if len(set(v)) <= 2 or set(v) <= set("*xX.•-_ "):
        return False
    if is_templated_secret(v) or is_potential_uuid(v) and len(v) == 36:
        return False
    if not quoted and after.startswith(("(", ".", "[")):
        return False  # a call or attribute: password = get_password(), token = os.environ[...]
    if _IDENTIFIER.fullmatch(v) and ("." in v or any(w in low for w in _REFERENCE_WORDS)):
        return False  # a reference: password=self.password, api_key=settings.API_KEY
    if not quoted and op == ":" and not _credential_like(v):
        return False  # "Password: incorrect", "token: expired" are prose
    if (
        " " in v
        and not word.lower().startswith(_KV_PASSWORD_WORDS)
        and not _credential_like(v.replace(" ", ""))
    ):
        return False
    return True


def _kv_matches(text: str, hits: list[int]) -> Iterable[re.Match]:
    """_KV matched at each keyword; a key word starts at most 12 characters before its stem (encryption_key)."""
    seen = set()
    for h in hits:
        starts = [q for q in range(max(0, h - 12), h) if q == 0 or not text[q - 1].isalnum()]
        starts.append(h)
        for p in starts:
            if p in seen:
                continue
            m = _KV.match(text, p)
            if m is None:
                continue
            if p and text[p - 1].isalnum() and not m.group("word").lower().startswith(_KV_GLUED):
                if not (p >= 2 and text[p - 2] == "\\" and text[p - 1] in "nrt"):
                    continue  # "compass=north"; but "\\napi_key=..." in JSON text is a key
            seen.add(p)
            yield m


def _find_key_values(text: str, low: str, hits: list[int], out: list[Span]) -> None:
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
    regexes = [_KV_FLAG]
    if "</" in text:
        regexes.append(_KV_XML)
    if "machine" in low:
        regexes.append(_KV_NETRC)
    for regex in regexes:
        for m in regex.finditer(text):
            value = m.group("v")
            quoted = regex is _KV_XML or regex is _KV_NETRC
            if value[0] != "-" and _value_is_secret(value, "=" if quoted else ":", "password", quoted, ""):
                out.append(Span(m.start("v"), m.end("v"), "key_value_secret", R_ASSIGN))
    if not ("password" in low or "passcode" in low or "passphrase" in low or "pwd" in low):
        return
    for m in _KV_PROSE.finditer(text):
        value = m.group(1).rstrip(".,!?;:)")
        if value.lower() not in _KV_STOP and _credential_like(value) and value[0] not in "$%{<*":
            out.append(Span(m.start(1), m.start(1) + len(value), "key_value_secret", R_ASSIGN))


def _find_bearer(text: str, low: str, out: list[Span]) -> None:
    if "bearer" not in low and "authorization" not in low:
        return
    for m in _BEARER.finditer(text):
        tok = m.group("tok").rstrip(".")
        if m.group("bare") and (len(tok) < 16 or not any(c.isdigit() for c in tok)):
            continue  # "bearer" in prose: "a bearer bond"
        if tok.lower() in _KV_STOP or is_templated_secret(tok):
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
        for m in _RUN.finditer(text, first, end):
            if m.start() > last:
                break
            # endpos hides what follows: measure a run that reaches it on the whole text.
            yield (_RUN.match(text, m.start()) or m) if m.end() == end else m


def _find_high_entropy(text: str, hits: list[int], out: list[Span]) -> None:
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
        if (
            not _CONTEXT_WORD.search(window)
            or _NOT_SECRET_WORD.search(window)
            or _NOT_SECRET_WORD.search(after)
        ):
            continue
        if "/" in v and sum(seg.isdigit() or (seg.isalpha() and seg.islower()) for seg in v.split("/")) >= 2:
            continue  # a path: uploads/2024/05/1338cb5d1c4759f8
        out.append(Span(s, m.end(), "high_entropy", R_ENTROPY))


def _find_emails(text: str, out: list[Span]) -> None:
    for m in _EMAIL.finditer(text):
        if m.group(0).rsplit(".", 1)[1].lower() in _FILE_TLDS:
            continue  # icon@2x.png
        if text.endswith("//", 0, m.start()) or _SCP_PATH.match(text, m.end()):
            continue  # the user of a URL (https://git@host/...) or of an scp path (git@github.com:org/repo)
        out.append(Span(m.start(), m.end(), "email", R_CONTEXT))


def _find_phones(text: str, out: list[Span]) -> None:
    for m in _NANP.finditer(text):
        area = m.group("a1") or m.group("a2")
        if area[0] in "01" or m.group("ex")[0] in "01":
            continue
        if m.group("s1") and m.group("s1") != m.group("s2"):
            continue  # 555-123.4567 is not a layout anyone writes
        out.append(Span(m.start(), m.end(), "phone", R_LOOSE))
    for m in _INTL.finditer(text):
        raw = m.group(0).split("\n", 1)[0]
        # A trailing 1-digit group is the next number ("+1 415 555 2671 2 times"), not the phone's;
        # so are trailing groups past 15 digits ("+44 20 7946 0958 4111 1111 ...").
        raw = _PHONE_TAIL_1.sub("", raw)
        while sum(c.isdigit() for c in raw) > 15:
            cut = _PHONE_LAST_GROUP.search(raw)
            if cut is None:
                break
            raw = raw[: cut.start()]
        if 8 <= sum(c.isdigit() for c in raw) <= 15:
            out.append(Span(m.start(), m.start() + len(raw), "phone", R_LOOSE))
    for m in _BARE_PHONE.finditer(text):
        if _PHONE_CONTEXT.search(text, max(0, m.start() - 24), m.start()):
            out.append(Span(m.start(), m.end(), "phone", R_LOOSE))


def _find_cards(text: str, out: list[Span]) -> None:
    for m in _CARD.finditer(text):
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


def _find_ips(text: str, out: list[Span]) -> None:
    if _DOTTED.search(text):
        for m in _IPV4.finditer(text):
            first = int(m.group(0).split(".", 1)[0])
            if first in (0, 127, 255):
                continue
            if _VERSION_CONTEXT.search(text, max(0, m.start() - 16), m.start()):
                continue
            out.append(Span(m.start(), m.end(), "ip", R_LOOSE))
    if "::" in text or text.count(":") >= 7:
        for m in _IPV6.finditer(text):
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


def _find_with_detect_secrets(text: str, out: list[Span], gate: bool = True) -> None:
    """detect-secrets' plugins on each line (values, mapped back to spans). No verification calls."""
    offset = 0
    for line in text.splitlines(keepends=True):
        lower = line.lower()
        if (
            not gate
            or _DIGIT_OR_AT.search(line)
            or _LETTER_RUN.search(line)
            or any(k in lower for k in _KEYWORDS)
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

    def __init__(self, detect_secrets_scan: bool = False, gate: bool = True):
        self.detect_secrets_scan = detect_secrets_scan
        self.gate = gate

    def find(self, text: str) -> list[Span]:
        """The spans that redact_text would replace, in order."""
        if not text:
            return []
        low = text.lower()
        keyword = any(w in low for w in _KEYWORDS)
        if self.gate and not (_DIGIT_OR_AT.search(text) or keyword or _LETTER_RUN.search(text)):
            return []
        if not self.gate:
            keyword = True
        spans: list[Span] = []
        if keyword and ("PRIVATE KEY" in text or "PuTTY-User-Key-File" in text):
            _find_private_keys(text, spans)
        if (_TOKEN_RUN.search(text) or "whsec_" in text or "AccountKey=" in text) and _FORMAT_GATE.search(
            text
        ):
            _find_formats(text, spans)
        if "eyJ" in text:
            _find_jwts(text, spans)
        if "@" in text:
            _find_url_passwords(text, spans)
            _find_emails(text, spans)
        if "aws" in low or "akia" in low or "asia" in low:
            _find_aws_secrets(text, spans)
        if _DIGIT.search(text):
            if _NUMBERISH.search(text):
                _find_cards(text, spans)
                _find_phones(text, spans)
            _find_ips(text, spans)
        if keyword:
            if len(low) != len(text):  # a few non-ASCII letters lower-case to two characters
                low = text.translate(_ASCII_LOWER)
            hits = [m.start() for m in _STEMS.finditer(low)]
            _find_key_values(text, low, hits, spans)
            _find_bearer(text, low, spans)
            _find_high_entropy(text, hits, spans)
        if self.detect_secrets_scan:
            _find_with_detect_secrets(text, spans, self.gate)
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
                parts.append(_PLACEHOLDERS[sp.kind])
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
