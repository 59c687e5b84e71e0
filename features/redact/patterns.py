"""The redaction patterns: placeholders, spans, and the regexes every detector is built from."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import NamedTuple

from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HexHighEntropyString
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector

from features.schema import PII_TYPES, SECRET_TYPES


def placeholder(kind: str) -> str:
    """The placeholder text for a redaction type: `<SECRET:jwt>`, `<EMAIL>`."""
    if kind in PII_TYPES:
        return f"<{kind.upper()}>"
    if kind in SECRET_TYPES:
        return f"<SECRET:{kind}>"
    raise ValueError(f"unknown redaction type {kind!r}; known: {SECRET_TYPES + PII_TYPES}")


PLACEHOLDERS = {kind: placeholder(kind) for kind in SECRET_TYPES + PII_TYPES}
# Any placeholder, also of a type a later schema might add: redacted text is never redacted again.
PLACEHOLDER_RE = re.compile(r"<SECRET:[a-z0-9_]{1,40}>|<(?:EMAIL|PHONE|CARD|IP|IBAN|NATIONAL_ID)>")


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
FORMAT_PATTERNS: list[tuple[str, re.Pattern, int]] = [  # (type, regex, group holding the secret)
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
FORMAT_GATE = re.compile(
    r"A(?:KIA|SIA|BIA|CCA|3T)|gh[pousr]_|github_pat_|xox|xapp-|hooks\.slack|sk-|[sr]k_(?:live|test)_|whsec_|AIza"
    r"|gl[a-z]{2,6}-|GR1348941|SG\.|sq0csp-|\d{8}:|pypi-|\.[A-Za-z0-9_-]{6}\.|-us\d|hf_|npm_|AccountKey="
)
OPENAI_BODY = re.compile(r"sk-(?:proj-|svcacct-|admin-|None-)?")

# JWT: span by own regex (detect-secrets' stops before the signature), validity by detect-secrets.
JWT = re.compile(_L + r"eyJ[A-Za-z0-9_-]{8,}={0,2}\.[A-Za-z0-9_-]{2,}={0,2}\.[A-Za-z0-9_-]*={0,2}" + _R)

# Private keys: PEM (RSA, DSA, EC, OPENSSH, ENCRYPTED, PGP ... BLOCK), SSH2 and PuTTY files. A block
# with no END (pasted half) runs over its base64 lines. `\\n` is the same block inside a JSON string.
# The END is looked up in a list of END markers (a lazy `.*?END` from every BEGIN is quadratic).
_NL = r"(?:\r?\n|\\r\\n|\\n)"
PEM_BEGIN = re.compile(
    r"-{4,5} ?BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)? ?-{4,5}|PuTTY-User-Key-File-\d: "
)
PEM_END = re.compile(
    r"-{4,5} ?END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)? ?-{4,5}|Private-MAC: [0-9a-fA-F]{20,}"
)
PEM_BODY = re.compile(  # what follows a BEGIN with no END: header lines, then base64 lines
    r"(?:"
    + _NL
    + r"[A-Za-z][A-Za-z-]{0,30}: [^\r\n\\]{0,200})*(?:(?:"
    + _NL
    + r"|[ \t])+[A-Za-z0-9+/=]{16,})*"
)
PEM_MAX = 32_000  # a PEM block is at most a few kB (RSA-8192: ~6.5 kB); an END further away is another's

# Passwords in URLs: scheme://user:password@host, the user may be empty (redis://:pw@host).
URL_PASSWORD = re.compile(
    r"(?i)(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{1,30}://[^\s:/?#@\"'<>\[\]\\]{0,128}"  # scheme://user
    r":([^\s/\"'<>\\@]{1,128})@(?=[A-Za-z0-9\[])"  # :password@host
)

# AWS secret access keys: in a quoted assignment (detect-secrets), unquoted (own), or a 40-character
# base64 string in the same text as an AWS key id or the word "aws" (own).
AWS_SECRET_DS = AWSKeyDetector.denylist[1]
AWS_SECRET_KV = re.compile(
    r"(?i)aws_?secret(?:_?access)?_?key[\"'\\]{0,2}\s{0,3}(?:=|:|=>)\s{0,3}[\"'\\]{0,2}"
    r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
)
B64_40 = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
AWS_NEAR = re.compile(r"(?i)(?<![a-z])aws(?![a-z])|(?<![A-Za-z0-9])A(?:KIA|SIA)[0-9A-Z]{16}(?![A-Za-z0-9])")

# ---------------------------------------------------------------- key = value
_KV_WORDS = (
    r"pass(?:word|wd|phrase|code)?|pwd|client[_-]?secret|secret(?:[_-]?access)?(?:[_-]?key)?"
    r"|(?:access|refresh|auth|id|session|csrf|xsrf|bot|bearer|api)?[_-]?token"
    r"|api[_-]?key|apikey|access[_-]?key(?:[_-]?id)?|auth[_-]?key|private[_-]?key|signing[_-]?key"
    r"|encryption[_-]?key|master[_-]?key|auth|credentials?"
)
# Matched only at keywords that STEMS found (scanning a whole text with it costs ~250 ns a
# character); whether the word may follow a letter is decided in Python (_kv_matches).
KV = re.compile(
    r"(?i)(?P<word>" + _KV_WORDS + r")(?![A-Za-z0-9])"
    r"(?:\\?[\"'])?\]?\s{0,3}(?P<op>=>|:=|==|=|:)\s{0,3}"
    r"(?:\\\"(?P<v1>(?:[^\"\\\n]|\\[^\"\n]){1,256}?)\\\""
    r"|\"(?P<v2>(?:[^\"\\\n]|\\.){1,256}?)\""
    r"|'(?P<v3>(?:[^'\\\n]|\\.){1,256}?)'"
    r"|`(?P<v4>[^`\n]{1,256}?)`"
    r"|(?P<v5>[^\s'\"`,;&<>{}()\[\]\\]{1,256}))"
)
KV_PROSE = re.compile(
    r"(?i)(?<![A-Za-z0-9])(?:password|passcode|passphrase|pwd)\s{1,3}(?:is|was|will be)\s{1,3}[\"'“]?"
    r"([^\s\"'”]{4,128})"
)
# Other places a value sits: <password>x</password>, a .netrc line, a command-line flag.
KV_XML = re.compile(
    r"(?i)<(?P<tag>(?:[A-Za-z0-9]{1,32}[_.:-]){0,3}"
    r"(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|client[_-]?secret))>(?P<v>[^<\n]{3,256})</(?P=tag)>"
)
KV_NETRC = re.compile(r"(?<![\w-])machine\s+\S+\s+login\s+\S+\s+password\s+(?P<v>\S{1,256})")
KV_FLAG = re.compile(
    r"-(?<![\w-]-)-?(?i:(?:[a-z0-9]+-){0,3}(?:password|passwd|pass|pwd|token|secret|api-?key|client-secret))"
    r"(?:\s{1,3}|=)(?P<v>[^\s'\"`;&|<>]{3,256})"
)
KV_PASSWORD_WORDS = ("pass", "pwd")
KV_GLUED = ("password", "passwd", "pwd", "token", "secret")  # may follow a letter: PGPASSWORD=, csrftoken=
# Keyword stems, searched in the lower-cased text (a literal alternation: the cheapest scan there
# is). Every key word and context word contains one, and so do "bearer" and "authorization".
STEMS = re.compile(r"pass|pwd|secret|token|key|auth|cred|bearer")
ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
KV_STOP = frozenset(
    "none null nil true false undefined required optional empty redacted hidden masked removed str string "
    "int bytes any bool object dict list secret password token changed reset expired invalid incorrect "
    "wrong missing unknown example placeholder value here your yes no on off set unset bearer basic".split()
)
REFERENCE_WORDS = ("pass", "pwd", "secret", "token", "key", "auth", "cred", "env")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")

# ---------------------------------------------------------------- generic tokens and entropy
BEARER = re.compile(
    r"(?i)(?:(?<![A-Za-z0-9\\])" + _ESC + r")(?:authorization\\?[\"']?\s{0,3}[:=]\s{0,3}\\?[\"']?\s{0,3}"
    r"(?:(?P<scheme>bearer|basic|token|digest)\s{1,3})?|(?P<bare>bearer)\s{1,3})"
    r"(?P<tok>[A-Za-z0-9._~+/-]{8,2048}={0,2})(?![A-Za-z0-9._~+/=-])"
)
RUN = re.compile(r"(?:(?<![A-Za-z0-9+/=_\\-])" + _ESC + r")[A-Za-z0-9+/_-][A-Za-z0-9+/=_-]{19,}")
CONTEXT_WORD = re.compile(  # "<" before: the word SECRET of a placeholder is no context
    r"(?i)(?<![A-Za-z0-9<])(?:api[_ -]?key|keys?|tokens?|secrets?|credentials?|creds|bearer|passwords?|passwd|pwd"
    r"|auth|apikey)(?![a-z])"
)
NOT_SECRET_WORD = re.compile(
    r"(?i)(?<![a-z])(?:sha-?\d*|hash(?:es|ed)?|digest|checksum|commit|md5|uuid|guid|etag|fingerprint)(?![a-z])"
)
HEX = re.compile(r"[0-9a-fA-F]+")
B64_ENTROPY = Base64HighEntropyString()
HEX_ENTROPY = HexHighEntropyString()

# ---------------------------------------------------------------- personal data
EMAIL = re.compile(
    r"(?:(?<![A-Za-z0-9._%+\\-])" + _ESC + r")[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.){1,8}[^\W\d_]{2,24}(?![\w-])"
)
SCP_PATH = re.compile(r":[A-Za-z0-9_~./<-]")  # "<": a path already redacted stays a path
FILE_TLDS = frozenset("png jpg jpeg gif svg webp ico bmp pdf tif tiff".split())

NANP = re.compile(
    r"(?<![\w+.\-/])(?:(?P<cc>\+?1)(?P<s0>[ .-]?))?(?:\((?P<a1>\d{3})\)[ ]?|(?P<a2>\d{3})(?P<s1>[ .-]))"
    r"(?P<ex>\d{3})(?P<s2>[ .-])\d{4}(?![\w]|[.-]\d)"
)
INTL = re.compile(r"(?<![\w+])(?:\+|00)[1-9]\d{0,2}(?:[ .-]?\(?\d{1,5}\)?){1,6}")
PHONE_CONTEXT = re.compile(
    r"(?i)(?<![a-z])(?:phone|tel|telephone|call|mobile|cell|fax|sms|whatsapp|text me|reach me)"
    r"\W{0,12}(?:at|on|is|:)?\W{0,3}$"
)
PHONE_TAIL_1 = re.compile(r"[ .-]\(?\d\)?$")
PHONE_LAST_GROUP = re.compile(r"[ .-]?\(?\d+\)?$")
BARE_PHONE = re.compile(r"(?<![\w+.-])1?[2-9]\d{9}(?![\w]|[.-]\d)")

# The first digit is matched before the lookbehind so that `re` can skip ahead to digits quickly.
CARD = re.compile(r"\d(?<![\d.,-]\d)(?:[ -]?\d){12,200}(?![\d]|[.,-]\d)")  # a run of digit groups
# Cheap shapes: phones and cards need 7+ digits with separators, IPv4 addresses a dotted quad.
NUMBERISH = re.compile(r"\d[\d \t().-]{5,}\d")
DOTTED = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(r"(?<![\w.])" + _OCTET + r"(?:\." + _OCTET + r"){3}(?![\w]|\.\d)")
VERSION_CONTEXT = re.compile(
    r"(?i)(?<![a-z])(?:version|ver|v|release|build|rev|revision|firmware|fw)\.?\s{0,2}[:=]?\s{0,2}$"
)
IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|"
    + _OCTET
    + r"(?:\."
    + _OCTET
    + r"){3})?(?![\w:])"
)

# Cheap gate: a text that none of these touch cannot hold anything we redact (every format has a
# digit, an @, a credential word or a 16+ letter run; chat mostly has none of them). Substring tests
# on the lower-cased text: a case-insensitive regex costs ten times more on ordinary chat.
DIGIT_OR_AT = re.compile(r"[0-9@]")
LETTER_RUN = re.compile(r"[A-Za-z_-]{16}")
# Every vendor format has a 16+ run of these characters but for base64 ones (literal checks).
TOKEN_RUN = re.compile(r"[A-Za-z0-9_-]{16}")
KEYWORDS = ("key", "token", "secret", "pass", "pwd", "auth", "bearer", "cred")
