"""Write tests/data/redaction_corpus.jsonl: the labeled corpus that tests/test_redact.py measures.

    .venv/bin/python tests/data/make_redaction_corpus.py   # rewrites the file; same seed, same bytes

One JSON object per line: `{"text": ..., "expect": {"<type>": count, ...}, "planted": [...]}`.
`expect` holds the number of placeholders of each type that redaction must produce (empty for a
negative); `planted` holds the exact strings that must not survive redaction.

Every secret here is random (a seeded generator) and only *format*-valid: no real credential, no
well-known documentation key. The tests build the same corpus in memory with `build_corpus()`, so
the .jsonl file is a readable copy, not a dependency: if a push-protection scanner objects to
format-valid fakes, the file can be dropped and the tests still run.
"""

from __future__ import annotations

import base64
import json
import random
import string
import sys
from pathlib import Path

SEED = 20250107
OUT = Path(__file__).with_name("redaction_corpus.jsonl")
PER_TYPE = 24  # positives per type; wrappers and snippets rotate so each appears in several contexts

ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"
UPPER_DIGITS = string.ascii_uppercase + "234567"  # AWS key ids are base32


def _s(rng: random.Random, alphabet: str, n: int, classes: bool = True) -> str:
    """Random string; with `classes`, it has a lower, an upper and a digit when the alphabet allows."""
    while True:
        v = "".join(rng.choice(alphabet) for _ in range(n))
        if not classes:
            return v
        need = [set(string.ascii_lowercase), set(string.ascii_uppercase), set(string.digits)]
        if all(not (cls & set(alphabet)) or (cls & set(v)) for cls in need):
            return v


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        digits = body + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch)
            if i % 2:
                d = d * 2 - 9 if d > 4 else d * 2
            total += d
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- secret generators
def aws_access_key(rng):
    return rng.choice(["AKIA", "AKIA", "ASIA"]) + _s(rng, UPPER_DIGITS, 16, classes=False)


def aws_secret_key(rng):
    return _s(rng, B64, 40)


def github_token(rng):
    if rng.random() < 0.25:
        return "github_pat_" + _s(rng, ALNUM, 22) + "_" + _s(rng, ALNUM, 59)
    return rng.choice(["ghp", "gho", "ghu", "ghs", "ghr"]) + "_" + _s(rng, ALNUM, 36)


def slack_token(rng):
    r = rng.random()
    if r < 0.3:
        return f"xoxb-{rng.randrange(10**11, 10**12)}-{rng.randrange(10**12, 10**13)}-{_s(rng, ALNUM, 24)}"
    if r < 0.5:
        return (
            f"xoxp-{rng.randrange(10**11, 10**12)}-{rng.randrange(10**11, 10**12)}-"
            f"{rng.randrange(10**12, 10**13)}-{_s(rng, '0123456789abcdef', 32)}"
        )
    if r < 0.7:
        return (
            f"xapp-1-A{_s(rng, string.ascii_uppercase + string.digits, 10)}-{rng.randrange(10**12, 10**13)}-"
            f"{_s(rng, '0123456789abcdef', 64)}"
        )
    return (
        f"https://hooks.slack.com/services/T{_s(rng, string.ascii_uppercase + string.digits, 8)}"
        f"/B{_s(rng, string.ascii_uppercase + string.digits, 10)}/{_s(rng, ALNUM, 24)}"
    )


def openai_key(rng):
    r = rng.random()
    if r < 0.4:
        return "sk-proj-" + _s(rng, B64URL, rng.choice([48, 64, 120, 156]))
    if r < 0.6:
        return "sk-svcacct-" + _s(rng, B64URL, 64)
    if r < 0.8:
        return "sk-" + _s(rng, ALNUM, 48)
    # The marked format detect-secrets knows (the marker is base64 of "OpenAI").
    return "sk-" + _s(rng, ALNUM, 20) + "T3Blbk" + "FJ" + _s(rng, ALNUM, 20)


def google_api_key(rng):
    return "AIza" + _s(rng, B64URL, 35)


def stripe_key(rng):
    prefix = rng.choice(["sk_live_", "sk_test_", "rk_live_", "rk_test_", "sk_live_", "whsec_"])
    return prefix + _s(rng, ALNUM, rng.choice([24, 32, 99]))


def jwt(rng):
    header = {"alg": rng.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}
    if rng.random() < 0.3:
        header["kid"] = _s(rng, ALNUM, 12)
    payload = {
        "sub": str(rng.randrange(10**6, 10**9)),
        "iat": rng.randrange(1_600_000_000, 1_800_000_000),
        "scope": rng.choice(["read", "read write", "admin"]),
    }
    sig = _b64url(bytes(rng.randrange(256) for _ in range(rng.choice([32, 64]))))
    return ".".join([_b64url(json.dumps(header).encode()), _b64url(json.dumps(payload).encode()), sig])


def private_key(rng):
    kind = rng.choice(["RSA ", "EC ", "OPENSSH ", "", "ENCRYPTED ", "DSA "])
    n_lines = rng.randrange(3, 9)
    body = (
        "\n".join(_s(rng, B64, 64) for _ in range(n_lines)) + "\n" + _s(rng, B64, rng.randrange(8, 60)) + "=="
    )
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"


def password(rng):
    return _s(rng, ALNUM, rng.randrange(8, 14)) + rng.choice(["", "!", "#9", "$", "*x", "_"])


def high_entropy(rng):
    return _s(rng, rng.choice([ALNUM, ALNUM, B64URL]), rng.choice([24, 32, 40, 48]))


def generic_token(rng):
    r = rng.random()
    if r < 0.35:
        return _s(rng, ALNUM + "-._~", rng.choice([32, 40, 64]))  # opaque bearer token
    if r < 0.5:
        return "hf_" + _s(rng, ALNUM, 34)
    if r < 0.65:
        return "glpat-" + _s(rng, ALNUM + "_-", 20)
    if r < 0.8:
        return "SG." + _s(rng, B64URL, 22) + "." + _s(rng, B64URL, 43)
    return "npm_" + _s(rng, ALNUM, 36)


FIRST = [
    "alice",
    "bob",
    "maria.garcia",
    "j.smith",
    "chen_wei",
    "o'neil",
    "Priya.Patel",
    "tom+news",
    "a.b.c",
    "lena-k",
]
DOMAINS = [
    "example.com",
    "mail.example.org",
    "corp.example.co.uk",
    "example.io",
    "uni.example.edu",
    "EXAMPLE.NET",
]


def email(rng):
    local = rng.choice(FIRST).replace("'", "")
    if rng.random() < 0.3:
        local += str(rng.randrange(1, 999))
    return f"{local}@{rng.choice(DOMAINS)}"


def phone(rng):
    # Assigned area codes only: redaction keeps numbers that libphonenumber does not call valid.
    area = rng.choice(["212", "415", "312", "617", "206", "303", "512", "702", "404", "213", "646", "718"])
    ex = f"{rng.randrange(2, 10)}{rng.randrange(0, 10)}{rng.randrange(1, 10)}"
    line = f"{rng.randrange(0, 10000):04d}"
    forms = [
        f"({area}) {ex}-{line}",
        f"{area}-{ex}-{line}",
        f"{area}.{ex}.{line}",
        f"+1 {area} {ex} {line}",
        f"+1-{area}-{ex}-{line}",
        f"1-{area}-{ex}-{line}",
        f"+1 ({area}) {ex}-{line}",
        f"+44 20 {rng.randrange(7000, 8000)} {rng.randrange(1000, 10000)}",
        f"+44 7400 {rng.randrange(100000, 999999)}",
        f"+49 30 {rng.randrange(10**7, 10**8)}",
        f"+33 1 {rng.randrange(10, 99)} {rng.randrange(10, 99)} {rng.randrange(10, 99)} {rng.randrange(10, 99)}",
        f"+91 {rng.randrange(70000, 99999)} {rng.randrange(10000, 99999)}",
        f"+81-3-{rng.randrange(1000, 9999)}-{rng.randrange(1000, 9999)}",
        f"+61 2 {rng.randrange(9000, 9999)} {rng.randrange(1000, 9999)}",
        f"+1{area}{ex}{line}",
        f"0044 20 {rng.randrange(7000, 8000)} {rng.randrange(1000, 10000)}",
    ]
    return rng.choice(forms)


def _mod97_check(country: str, bban: str) -> str:
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{98 - int(digits) % 97:02d}"


def iban(rng):
    country, bban = rng.choice(
        [
            ("DE", "".join(rng.choice(string.digits) for _ in range(18))),
            (
                "GB",
                "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
                + "".join(rng.choice(string.digits) for _ in range(14)),
            ),
            ("AT", "".join(rng.choice(string.digits) for _ in range(16))),
            ("CH", "".join(rng.choice(string.digits) for _ in range(17))),
        ]
    )
    value = country + _mod97_check(country, bban) + bban
    if rng.random() < 0.6:
        return " ".join(value[i : i + 4] for i in range(0, len(value), 4))
    return value


def national_id(rng):
    r = rng.random()
    if r < 0.6:  # US SSN: area 001-899 but 666, group 01-99, serial 0001-9999
        area = rng.choice([a for a in range(1, 900) if a != 666])
        sep = rng.choice(["-", "-", " "])
        return f"{area:03d}{sep}{rng.randrange(1, 100):02d}{sep}{rng.randrange(1, 10000):04d}"
    n = rng.randrange(10**7, 10**8)  # Spanish DNI: 8 digits and the check letter
    return f"{n}{'TRWAGMYFPDXBNJZSQVHLCKE'[n % 23]}"


def card(rng):
    issuer = rng.choice(["visa", "visa", "mc", "mc2", "amex", "discover", "jcb"])
    prefix, length = {
        "visa": ("4", 16),
        "mc": (str(rng.randrange(51, 56)), 16),
        "mc2": (str(rng.randrange(2221, 2721)), 16),
        "amex": (rng.choice(["34", "37"]), 15),
        "discover": ("6011", 16),
        "jcb": (str(rng.randrange(3528, 3590)), 16),
    }[issuer]
    digits = _luhn_complete(prefix, length, rng)
    sep = rng.choice(["", " ", "-", " "])
    if not sep:
        return digits
    if length == 15:
        return sep.join([digits[:4], digits[4:10], digits[10:]])
    return sep.join(digits[i : i + 4] for i in range(0, length, 4))


def ip(rng):
    r = rng.random()
    if r < 0.55:
        first = rng.choice([8, 23, 45, 52, 81, 93, 104, 151, 172, 185, 203, 212, 10, 192])
        if first == 192:
            return f"192.168.{rng.randrange(0, 256)}.{rng.randrange(1, 255)}"
        return f"{first}.{rng.randrange(0, 256)}.{rng.randrange(0, 256)}.{rng.randrange(1, 255)}"
    groups = [f"{rng.randrange(0, 65536):x}" for _ in range(8)]
    if r < 0.7:
        return ":".join(["2001", "db8"] + groups[2:])
    if r < 0.85:
        return f"2001:db8::{groups[0]}:{rng.randrange(1, 9999)}"
    return f"fe80::{groups[1]}:{groups[2]}:{groups[3]}:{rng.randrange(1, 9999):x}"


# ---------------------------------------------------------------- where they appear
# Surroundings shared by all types: `{x}` is the type's snippet. The JSON wrapper escapes the
# snippet (quotes, newlines), the way a tool result or a raw log line holds it.
WRAPPERS = [
    "{x}",
    "Here it is: {x}",
    "can you check why this fails? {x} thanks!",
    "```\n{x}\n```",
    "({x})",
    '"{x}",',
    "2025-01-07T21:54:01Z INFO worker-3 request done {x}",
    "JSON",
    "> {x}\n\nWhat does this mean?",
    "I pasted the wrong thing earlier, sorry. {x}. Please ignore it.",
    "Subject: re: setup\n\nHi,\n{x}\nCheers",
    "- item one\n- {x}\n- item three",
]

SNIPPETS = {
    "aws_access_key": [
        "{s}",
        "aws_access_key_id = {s}",
        "my access key id is {s}",
        "export AWS_ACCESS_KEY_ID={s}",
        '"AccessKeyId": "{s}"',
        "key={s};",
    ],
    "aws_secret_key": [
        "aws_secret_access_key = {s}",
        'AWS_SECRET_ACCESS_KEY="{s}"',
        "aws configure set aws_secret_access_key {s}",
        "AWS secret for the deploy user: {s}",
        "aws_key = '{s}'",
    ],
    "github_token": [
        "{s}",
        "GITHUB_TOKEN={s}",
        "git clone https://{s}@github.com/org/repo.git",
        "token: {s}",
        "Authorization: token {s}",
        "use {s} for the CI",
    ],
    "slack_token": [
        "{s}",
        "SLACK_BOT_TOKEN={s}",
        "post to {s} when it finishes",
        "slack token is {s}",
        "curl -X POST {s} -d '{{}}'",
    ],
    "openai_key": [
        "{s}",
        "OPENAI_API_KEY={s}",
        'client = OpenAI(api_key="{s}")',
        "my key: {s}",
        "openai.api_key = '{s}'",
    ],
    "google_api_key": [
        "{s}",
        "https://maps.googleapis.com/maps/api/geocode/json?address=Lisbon&key={s}",
        "GOOGLE_API_KEY={s}",
        "the maps key {s} stopped working",
    ],
    "stripe_key": [
        "{s}",
        "STRIPE_SECRET_KEY={s}",
        'stripe.api_key = "{s}"',
        "curl https://api.stripe.com/v1/charges -u {s}:",
    ],
    "jwt": [
        "{s}",
        "Authorization: Bearer {s}",
        "id_token={s}",
        "here's the token {s}",
        "Cookie: session={s}; Path=/",
    ],
    "private_key": ["{s}", "id_rsa contents:\n{s}", 'key = """{s}"""'],
    "password_in_url": [
        "postgres://app_user:{s}@db.internal.example:5432/orders",
        "redis://:{s}@cache.example.com:6379/0",
        "mongodb+srv://admin:{s}@cluster0.example.net/test?retryWrites=true",
        "https://deploy:{s}@git.example.com/team/repo.git",
        "amqp://guest:{s}@broker.example:5672/",
        "DATABASE_URL=mysql://root:{s}@127.0.0.1:3306/app",
    ],
    "key_value_secret": [
        "password={s}",
        '"password": "{s}"',
        "DB_PASSWORD={s}",
        'client_secret = "{s}"',
        "api_key: '{s}'",
        "my password is {s}",
        "SECRET_KEY = '{s}'",
        "passwd: {s}",
        "--set auth.token={s}",
        '{{"username": "svc", "pwd": "{s}"}}',
    ],
    "high_entropy": [
        "my API key is {s}",
        "here's the secret {s} for staging",
        "use this token {s} to log in",
        "the key {s} expired yesterday",
        "credentials for the vendor portal — {s}",
        "Bearer-ish secret {s}",
    ],
    "generic_token": [
        "Authorization: Bearer {s}",
        "-H 'Authorization: Bearer {s}'",
        'headers = {{"Authorization": "Bearer {s}"}}',
        "bearer {s}",
        "HF token {s}",
        "{s}",
    ],
    "email": [
        "{s}",
        "mail me at {s}.",
        "<{s}>",
        "mailto:{s}",
        '"email": "{s}"',
        "From: Jane Doe <{s}>",
        "contact: {s}, or call",
    ],
    "phone": [
        "call me at {s}",
        "{s}",
        "Phone: {s}",
        "my number is {s}.",
        "tel. {s} (after 6pm)",
        '"phone": "{s}"',
    ],
    "iban": [
        "{s}",
        "IBAN: {s}",
        "please wire it to {s} by Friday",
        '"iban": "{s}"',
        "account {s} (Sparkasse)",
    ],
    "national_id": [
        "SSN {s}",
        "my social security number is {s}.",
        '"ssn": "{s}"',
        "ID {s}",
        "{s}",
    ],
    "card": [
        "{s}",
        "card number {s}, exp 04/27",
        "my visa is {s}",
        '"pan": "{s}"',
        "charged to {s} yesterday",
    ],
    "ip": [
        "{s}",
        "ssh into {s} and restart",
        "client={s} status=200",
        "connect to [{s}]:443",
        "from {s}:8080",
        "host {s}.",
    ],
}
GENERATORS = {
    "aws_access_key": aws_access_key,
    "aws_secret_key": aws_secret_key,
    "github_token": github_token,
    "slack_token": slack_token,
    "openai_key": openai_key,
    "google_api_key": google_api_key,
    "stripe_key": stripe_key,
    "jwt": jwt,
    "private_key": private_key,
    "password_in_url": password,
    "key_value_secret": password,
    "high_entropy": high_entropy,
    "generic_token": generic_token,
    "email": email,
    "phone": phone,
    "card": card,
    "iban": iban,
    "national_id": national_id,
    "ip": ip,
}


def _wrap(wrapper: str, x: str) -> str:
    if wrapper == "JSON":
        return json.dumps({"tool": "read_file", "result": x})
    return wrapper.replace("{x}", x)


def _fits(kind: str, snippet: str, value: str) -> bool:
    if kind == "ip" and ":" in value and "{s}:" in snippet:
        return False  # an IPv6 address with a port needs the brackets
    if kind == "ip" and ":" not in value and "[{s}]" in snippet:
        return False
    if (
        kind == "generic_token"
        and value[:3] not in ("hf_", "glp", "SG.", "npm")
        and snippet in ("{s}", "HF token {s}")
    ):
        return False  # an opaque token is a token only after Bearer
    if kind == "generic_token" and value[:3] in ("hf_", "glp", "SG.", "npm") and "earer" in snippet:
        return False
    if kind == "generic_token" and snippet == "bearer {s}" and not any(c.isdigit() for c in value):
        return False
    return True


def positives(rng: random.Random) -> list[dict]:
    records = []
    for kind, snippets in SNIPPETS.items():
        made = 0
        i = 0
        while made < PER_TYPE:
            snippet = snippets[i % len(snippets)]
            wrapper = WRAPPERS[(i * 7 + len(kind)) % len(WRAPPERS)]
            i += 1
            value = GENERATORS[kind](rng)
            if not _fits(kind, snippet, value):
                continue
            if kind == "private_key" and wrapper in ("({x})", '"{x}",'):
                wrapper = "{x}"
            x = snippet.format(s=value)
            expect = {kind: 1}
            records.append({"text": _wrap(wrapper, x), "expect": expect, "planted": [value]})
            made += 1
    return records


def mixed(rng: random.Random) -> list[dict]:
    """Records holding several types at once: configs, logs, a support email."""
    out = []
    for _ in range(12):
        kid, sec, pw, mail, addr = (
            aws_access_key(rng),
            aws_secret_key(rng),
            password(rng),
            email(rng),
            ip(rng),
        )
        if ":" in addr:
            addr = "203.0.113." + str(rng.randrange(1, 255))
        text = (
            f"[default]\naws_access_key_id = {kid}\naws_secret_access_key = {sec}\n# owner: {mail}\n"
            f"DATABASE_URL=postgres://app:{pw}@{addr}:5432/app\n"
        )
        expect = {"aws_access_key": 1, "aws_secret_key": 1, "email": 1, "password_in_url": 1, "ip": 1}
        out.append({"text": text, "expect": expect, "planted": [kid, sec, mail, pw, addr]})
    for _ in range(8):
        tok, ph, cc, mail = jwt(rng), phone(rng), card(rng), email(rng)
        text = (
            f"Hi support, I'm {mail} (phone {ph}). My card {cc} was charged twice. The app showed "
            f"this in the console: Authorization: Bearer {tok}"
        )
        expect = {"email": 1, "phone": 1, "card": 1, "jwt": 1}
        out.append({"text": text, "expect": expect, "planted": [mail, ph, cc, tok]})
    for _ in range(6):
        gh, sl, ip1 = github_token(rng), slack_token(rng), ip(rng)
        if ":" in ip1:
            ip1 = "198.51.100." + str(rng.randrange(1, 255))
        text = json.dumps(
            {"env": {"GITHUB_TOKEN": gh, "SLACK_URL": sl}, "peer": ip1, "retries": 3, "version": "2.4.1"}
        )
        out.append(
            {"text": text, "expect": {"github_token": 1, "slack_token": 1, "ip": 1}, "planted": [gh, sl, ip1]}
        )
    return out


def negatives(rng: random.Random) -> list[str]:
    hexd = "0123456789abcdef"
    texts = [
        # hashes, ids, digests
        f"commit {_s(rng, hexd, 40)} fixed the flaky test",
        f"git checkout {_s(rng, hexd, 7)} && git log -1",
        f"sha256:{_s(rng, hexd, 64)}",
        f"the sha256 of the key file is {_s(rng, hexd, 64)}",
        f"docker pull python@sha256:{_s(rng, hexd, 64)}",
        f"md5 checksum {_s(rng, hexd, 32)} matches",
        f"request id 550e8400-e29b-41d4-a716-{_s(rng, hexd, 12)}",
        f'{{"id": "{_s(rng, hexd, 8)}-{_s(rng, hexd, 4)}-4{_s(rng, hexd, 3)}-a{_s(rng, hexd, 3)}-'
        f'{_s(rng, hexd, 12)}", "ok": true}}',
        f"session_id: chitchat-{_s(rng, hexd, 8)}-{_s(rng, hexd, 4)}-{_s(rng, hexd, 4)}-{_s(rng, hexd, 4)}-"
        f"{_s(rng, hexd, 12)}",
        f'ETag: "{_s(rng, hexd, 32)}"',
        f"object key uploads/2024/05/{_s(rng, hexd, 16)}.png",
        # base64 blobs of images and files (long, random, no credential word)
        "data:image/png;base64," + _s(rng, B64, 600) + "==",
        '<img src="data:image/jpeg;base64,' + _s(rng, B64, 400) + '">',
        "attachment: " + _s(rng, B64, 300) + "=",
        f"the file id is {_s(rng, ALNUM, 28)}",
        f"Your order {_s(rng, string.ascii_uppercase + string.digits, 20)} has shipped.",
        # versions, dates, times, numbers
        "version 1.2.3.4",
        "upgrade to v2.10.3 and then 3.11.4",
        "Python 3.11.4 (main, Jun  7 2023, 12:45:35)",
        "node 18.17.1 / npm 9.6.7",
        "OID 1.3.6.1.4.1.311.21.8 is the template oid",
        "release 10.0.19045.3693",
        "build 4.18.0.1 deployed",
        "2024-01-15 10:30:45",
        "15/01/2024 at 3:45 PM",
        "2024-01-15T10:30:45.123+02:00",
        "the meeting is 2019-2023 retrospective",
        "timestamp 1704067200000",
        "epoch 1704067200",
        "Order #1234567890 confirmed",
        "ORD-2024-000123 is delayed",
        "invoice INV-88231-22, total $1,299.99",
        "tracking number 1Z999AA10123456784",
        "2 + 2 = 4 and 12345 * 67890 = 838102050",
        "x = 3.14159, y = 2.71828",
        "prices: €49.00, £1,000.50, 1,000,000 users",
        "ISBN 978-3-16-148410-0",
        "ISBN-10: 0-306-40615-2",
        "call 911 or go to room 415",
        "extension 4821",
        "the score was 3-2",
        "I was born in 1987 and moved in 2004",
        "between 555 and 1234 people",
        "numbers 4111 1111 1111 1112 fail Luhn",
        "card ending in 4242",
        f"{_s(rng, string.digits, 16)} is a random 16-digit reference",
        "1234 5678 9012 3456",
        "0000 0000 0000 0000",
        "account 1234567890123",
        # words, urls, emails that are not
        "internationalization and antidisestablishmentarianism are long words",
        "ThisIsAVeryLongCamelCaseIdentifierName",
        "some_really_long_snake_case_function_name()",
        "https://example.com/path?query=1&page=2#top",
        "see https://docs.python.org/3/library/re.html",
        "https://user@github.com/org/repo",
        "git clone git@github.com:org/repo.git",
        "ssh://git@gitlab.example.com:2222/team/app.git",
        "http://localhost:8080/api/v1/health",
        "icon@2x.png and logo@3x.png",
        "npm i react@18.2.0 lodash@4.17.21",
        "follow me @spencer on insta",
        "user@localhost",
        "@app.route('/login')",
        "ping me @ the lab",
        # placeholders and masked values
        "<SECRET:aws_access_key> and <SECRET:jwt> were removed",
        "contact <EMAIL> or <PHONE>",
        "from <IP> with <CARD>",
        "postgres://app:<SECRET:password_in_url>@db:5432/x",
        "password=<SECRET:key_value_secret>",
        "password: ********",
        "token=xxxxxxxxxxxx",
        "api_key: <your-api-key-here>",
        "password: ${DB_PASSWORD}",
        "token: {{ secrets.GITHUB_TOKEN }}",
        'password = os.environ["DB_PASSWORD"]',
        "password = getpass()",
        "SECRET_KEY = settings.SECRET_KEY",
        "api_key=api_key",
        "token = get_token(user)",
        "password: str",
        "token: Optional[str] = None",
        # prose with credential words
        "Password: incorrect",
        "Enter your password:",
        "The password is incorrect, try again.",
        "the token expired",
        "token_count=512",
        "max_tokens: 256",
        "tokenizer=bert-base-uncased",
        "a bearer bond from 1920",
        "Bearer of bad news here",
        "the key to success is consistency",
        "secret: it's a surprise",
        "What's the secret to good bread?",
        "I forgot my password again lol",
        "Use a bearer token for auth.",
        "Authorization: Bearer <token>",
        "Authorization: Bearer $TOKEN",
        "pass: the ball to me",
        # public keys and certificates are not secrets
        "-----BEGIN PUBLIC KEY-----\n"
        + _s(rng, B64, 64)
        + "\n"
        + _s(rng, B64, 40)
        + "==\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\n" + _s(rng, B64, 64) + "\n-----END CERTIFICATE-----",
        "ssh-ed25519 " + _s(rng, B64, 68) + " laptop",
        # Stripe publishable keys are public by design (see features/redact.py)
        "pk_live_" + _s(rng, ALNUM, 24),
        "Stripe.setPublishableKey('pk_test_" + _s(rng, ALNUM, 24) + "')",
        # look-alike prefixes
        "sk-learn is not a package name, scikit-learn is",
        "task-management-system-for-teams",
        "sk-1234",
        "risk-assessment-framework-2024-final",
        "ghp_ is the GitHub prefix",
        "xoxb- tokens start like this",
        "AIza is how Google keys start",
        "AKIA is the AWS prefix",
        "eyJhbGciOiJIUzI1NiJ9 is only a header",
        "eyJ" + _s(rng, B64URL, 20) + "." + _s(rng, B64URL, 20) + "." + _s(rng, B64URL, 10),
        # addresses that stay (loopback, unspecified, netmask) and things that look like addresses
        "127.0.0.1:8000",
        "0.0.0.0",
        "listen on 0.0.0.0:80",
        "netmask 255.255.255.0",
        "::1",
        "localhost:5432",
        "MAC 00:1A:2B:3C:4D:5E",
        "at 12:30:45 sharp",
        "std::vector<int> v; a::b::c",
        "ratio 1:2:3",
        "1.2.3",
        "10.0",
        "section 4.2.1 of the spec",
        # ordinary chat (from the shape of the sample logs)
        "hahaha that's so true",
        "I'm in CS 142 and CS235 right now",
        "It's like 3 hours at the company building",
        "He is only at like 700000\nHe is barely above me",
        "waterproof sunscreen with 1000 spf",
        "What's the weather like in Lisbon right now?",
        "Clear skies in Lisbon, about 14 °C.",
        "Umm... accounting 200 and marketing!",
        "café, naïve, 東京, emoji 🎉🎉",
        "",
    ]
    return texts + generated_negatives(rng)


def _luhn_failing(rng: random.Random) -> str:
    good = _luhn_complete("4", 16, rng)
    return good[:-1] + str((int(good[-1]) + rng.randrange(1, 10)) % 10)


def generated_negatives(rng: random.Random) -> list[str]:
    """Seeded look-alikes in rotating sentences: many of each kind, not one hand-picked example."""
    hexd = "0123456789abcdef"
    makers = [
        lambda: f"git show {_s(rng, hexd, 40)}",
        lambda: f"digest: sha256:{_s(rng, hexd, 64)}",
        lambda: (
            f"{_s(rng, hexd, 8)}-{_s(rng, hexd, 4)}-4{_s(rng, hexd, 3)}-8{_s(rng, hexd, 3)}-{_s(rng, hexd, 12)}"
        ),
        lambda: "data:image/gif;base64," + _s(rng, B64, rng.randrange(300, 900)),
        lambda: f"v{rng.randrange(0, 20)}.{rng.randrange(0, 40)}.{rng.randrange(0, 200)}",
        lambda: (
            f"version {rng.randrange(1, 20)}.{rng.randrange(0, 10)}.{rng.randrange(0, 10)}.{rng.randrange(0, 999)}"
        ),
        lambda: (
            f"{rng.randrange(2000, 2030)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d} "
            f"{rng.randrange(0, 24):02d}:{rng.randrange(0, 60):02d}"
        ),
        lambda: f"{_luhn_failing(rng)}",
        lambda: " ".join(_luhn_failing(rng)[i : i + 4] for i in range(0, 16, 4)),
        lambda: f"order #{rng.randrange(10**7, 10**10)}",
        lambda: f"${rng.randrange(1, 9999)}.{rng.randrange(0, 100):02d} for {rng.randrange(1, 12)} items",
        lambda: "pk_test_" + _s(rng, ALNUM, 24),
        lambda: f"{rng.randrange(1, 99)} + {rng.randrange(1, 99)} = {rng.randrange(2, 198)}",
    ]
    frames = ["{x}", "see {x} for details", "Result: {x}.", "```\n{x}\n```", "(ref {x})"]
    return [frames[i % len(frames)].format(x=makers[i % len(makers)]()) for i in range(4 * len(makers))]


def hard(rng: random.Random) -> list[dict]:
    """Cases written after the detectors, to measure them rather than fit them: some are expected misses."""
    pw, tok, kid = password(rng), _s(rng, ALNUM, 32), aws_access_key(rng)
    gh = "ghs_" + _s(rng, ALNUM, 36)
    pem_crlf = private_key(rng).replace("\n", "\r\n")
    pgp = (
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\n"
        + "\n".join(_s(rng, B64, 64) for _ in range(4))
        + "\n="
        + _s(rng, B64, 4)
        + "\n-----END PGP PRIVATE KEY BLOCK-----"
    )
    truncated = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(_s(rng, B64, 64) for _ in range(3))
    cases = [
        (
            f"git remote set-url origin https://x-access-token:{gh}@github.com/org/repo.git",
            {"github_token": 1},
            [gh],
        ),
        (f"<password>{pw}</password>", {"key_value_secret": 1}, [pw]),
        (f"machine api.example.com login deploy password {pw}", {"key_value_secret": 1}, [pw]),
        (f"mysql -u root --password={pw} app", {"key_value_secret": 1}, [pw]),
        (f"mysql -u root --password {pw} app", {"key_value_secret": 1}, [pw]),
        (f"Server=db;User Id=app;Password={pw};Encrypt=true", {"key_value_secret": 1}, [pw]),
        (
            f"curl -d 'user=app&password={pw}&remember=1' https://example.com/login",
            {"key_value_secret": 1},
            [pw],
        ),
        (f"PGPASSWORD={pw} psql -h db -U app", {"key_value_secret": 1}, [pw]),
        (f'{{"Password":"{pw}"}}', {"key_value_secret": 1}, [pw]),
        (f'secret = "{pw}"  # toml', {"key_value_secret": 1}, [pw]),
        (f"export API_TOKEN={tok}", {"key_value_secret": 1}, [tok]),
        (f"X-Api-Key: {tok}", {"key_value_secret": 1}, [tok]),
        (f"https://api.example.com/v1/items?api_key={tok}&page=2", {"key_value_secret": 1}, [tok]),
        (pem_crlf, {"private_key": 1}, [pem_crlf.split("\r\n")[1]]),
        (pgp, {"private_key": 1}, [pgp.split("\n")[3]]),
        (
            truncated + "\n\n(I cut it off, is the format right?)",
            {"private_key": 1},
            [truncated.split("\n")[2]],
        ),
        (
            f"https://bucket.s3.amazonaws.com/f.txt?AWSAccessKeyId={kid}&Expires=1700000000",
            {"aws_access_key": 1},
            [kid],
        ),
        ("IP: 8.8.8.8 and 1.1.1.1.", {"ip": 2}, ["8.8.8.8", "1.1.1.1"]),
        ("allow 203.0.113.0/24 and 10.12.0.0/16", {"ip": 2}, ["203.0.113.0", "10.12.0.0"]),
        ("X-Forwarded-For: 203.0.113.7, 198.51.100.3", {"ip": 2}, ["203.0.113.7", "198.51.100.3"]),
        (
            "mapped ::ffff:192.0.2.128 and 2001:0db8:0000:0000:0000:ff00:0042:8329",
            {"ip": 2},
            ["192.0.2.128", "ff00:0042:8329"],
        ),
        ("tel:+14155552671", {"phone": 1}, ["4155552671"]),
        ("+44 (0)20 7946 0958", {"phone": 1}, ["7946 0958"]),
        ("(415)555-2671 ext. 23", {"phone": 1}, ["555-2671"]),
        ("+1.415.555.2671", {"phone": 1}, ["555.2671"]),
        ("card:4111111111111111, cvv 123", {"card": 1}, ["4111111111111111"]),
        ("3782 822463 10005", {"card": 1}, ["822463"]),
        ("FIRST.LAST+tag@Sub.Example.co.uk", {"email": 1}, ["FIRST.LAST"]),
        ("user@bücher.example", {"email": 1}, ["user@b"]),
        (f"my token: {tok}", {"key_value_secret": 1}, [tok]),
        (f"token {tok}", {"high_entropy": 1}, [tok]),
        # negatives written after the fact
        ("C:\\Users\\me\\AppData and vim :wq and ratio 3:4:5", {}, []),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0.6099.109", {}, []),
        ("lat/long 38.7223, -9.1393", {}, []),
        ("1-800-FLOWERS and 10 000 000 and 100x200x300", {}, []),
        ("IDs 123456789, 987654321 and 79927398713", {}, []),
        ("Release 2023.10.05 and 05.10.2023", {}, []),
        ("The API key management page is at https://console.example.com/apikeys/management", {}, []),
        ("token id " + _s(rng, "0123456789abcdef", 40) + " is the commit", {}, []),
        ("I'm 25 and my zip is 94107, the flight is UA 1549", {}, []),
        ("use --password-stdin instead of --password", {}, []),
        ("the passwords.txt file and the tokens/ folder", {}, []),
        ("Secret Santa is on 12/20 at 6:30pm", {}, []),
        # Issue 14: order numbers next to dates, check-digit look-alikes, references to credentials.
        ("order 482913507 placed 2024-03-18, shipped 2024-03-20", {}, []),
        ("ticket 4155552671 reopened on 03/18/2024", {}, []),
        ("invoice DE00 1234 5678 9012 3456 78 (a test value, bad check digits)", {}, []),
        ("SSN format is 000-00-0000; 666-12-3456 and 900-12-3456 are never issued", {}, []),
        ("mysql -u root -p --database shop", {}, []),
        ("docker login -u ci --password-stdin < token.txt", {}, []),
        ("redis-cli -a $REDIS_PASSWORD ping", {}, []),
        ("postgres://app:${DB_PASSWORD}@db:5432/app", {}, []),
        ("      valueFrom:\n        secretKeyRef:\n          name: db\n          key: password", {}, []),
        ("sshpass -p <password> ssh admin@host", {}, []),
        ("export PGPASSWORD=$(cat /run/secrets/pg)", {}, []),
        ('curl -u "$USER:$TOKEN" https://api.example.com', {}, []),
    ]
    return [{"text": t, "expect": e, "planted": p} for t, e, p in cases]


def build_corpus(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    records = positives(rng) + mixed(rng) + hard(rng)
    records += [{"text": t, "expect": {}, "planted": []} for t in negatives(rng)]
    return records


def main() -> int:
    records = build_corpus()
    with open(OUT, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    n_pos = sum(bool(r["expect"]) for r in records)
    print(
        f"wrote {len(records)} records ({n_pos} positive, {len(records) - n_pos} negative) to {OUT}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
