"""Secrets and personal data redaction: every text is redacted before anything is stored or logged.

    from features.redact import redact_text, redact_messages, redact_line
    redact_text("key AKIA... to bob@example.com").text  ->  "key <SECRET:aws_access_key> to <EMAIL>"

A found span is replaced by a typed placeholder (types fixed in features/schema.py):
`<SECRET:{type}>` for SECRET_TYPES, `<EMAIL>` `<PHONE>` `<CARD>` `<IP>` `<IBAN>` `<NATIONAL_ID>` for PII_TYPES. Only the span
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
    ETag, a publishable Stripe key), and it cuts throughput on chat text severalfold
    (bench/RESULTS.md, "Redaction").

Speed. Ordinary chat holds no secret, so the common case is a gate: lower-case once, look for a
digit, an `@`, a credential word or a 16-letter run (microseconds a chat line); only texts that pass
run the detectors, each behind its own cheap literal test. Keyword detectors run only at the
keywords found in the lower-cased text, never over the whole text. Every pattern is linear on
adversarial input (tests/test_redact.py feeds it repeated bait; bench/redact_bench.py times it).

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
  - Phone numbers (issue 14): libphonenumber's validity rules (`phonenumbers` PhoneNumberMatcher,
    leniency VALID): `+` numbers anywhere, the `00` international prefix, and national formats of
    `Redactor(phone_regions=...)` (default ("US",)). A match written as one bare digit run counts only
    right after a phone word (`call`, `phone`, `tel`, ...), and one glued to a longer id
    (`ORD-2024-000123`) never: so dates, versions, ranges, ISBNs and order ids stay.
  - IBANs and national identifiers (issue 14): python-stdnum validators (check digits, assigned
    ranges), `<IBAN>` and `<NATIONAL_ID>`: IBAN anywhere; US SSN as `123-45-6789`/`123 45 6789`
    anywhere or nine bare digits after an SSN word; Spanish DNI/NIE and Italian codice fiscale
    anywhere; Dutch BSN, Polish PESEL, German IdNr, French NIR, Belgian national number only after an
    identifier word (features/redact/validated.py says why).
  - Command lines (issue 14): the password arguments of redis-cli, mysql (glued `-pX` only), sshpass,
    docker/podman/helm login, curl -u, ldap* -w, smbclient -U, rabbitmqctl, htpasswd -b, keytool,
    skopeo; Kubernetes `name: X_PASSWORD` + `value:`; env-style `X_PASSWORD: value` in YAML takes any
    value. References stay: `$X`, `${X}`, `$(cmd)`, `<password>`, `--password-stdin`, `secretKeyRef`,
    also as a URL password (features/redact/cli.py lists each tool's flags).
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

The package: patterns (placeholders, spans, regexes), detectors (one per kind, with validators),
redactor (span resolution, Redactor, the functions below on a default Redactor).
"""

from __future__ import annotations

from features.redact.patterns import PLACEHOLDER_RE, RedactionResult, Span, placeholder
from features.redact.redactor import Redactor, redact_line, redact_messages, redact_text, redact_value

__all__ = [
    "RedactionResult",
    "Redactor",
    "Span",
    "placeholder",
    "redact_text",
    "redact_messages",
    "redact_line",
    "redact_value",
    "PLACEHOLDER_RE",
]
