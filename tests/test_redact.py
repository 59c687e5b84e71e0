"""features/redact.py: recall and precision per type on the labeled corpus, exact spans, idempotence,
messages and tool calls, raw lines, and properties over random text.

The corpus is built in memory by tests/data/make_redaction_corpus.py (seeded); the .jsonl next to it
is the same records written out, checked to be up to date when it is present.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from features.redact import PLACEHOLDER_RE, Redactor, placeholder, redact_line, redact_messages, redact_text
from features.schema import PII_TYPES, SECRET_TYPES

DATA = Path(__file__).parent / "data"

# Thresholds. The corpus is small (24-50 items a type), so a per-type bound of 0.95 tolerates one
# miss or one false alarm per type; secrets overall must stay at 0.99: a leak is the costly error.
SECRET_RECALL_OVERALL = 0.99
RECALL_PER_TYPE = 0.95
PRECISION_PER_TYPE = 0.95
PII_RECALL = 0.95
MIN_POSITIVES_PER_TYPE = 15


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_redaction_corpus", DATA / "make_redaction_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return GEN.build_corpus()


@pytest.fixture(scope="module")
def scored(corpus):
    """(tp, fn, fp) per type by counts, the redacted texts, and planted strings that survived."""
    tp, fn, fp = Counter(), Counter(), Counter()
    outputs, survivors, false_alarms = [], [], []
    for record in corpus:
        result = redact_text(record["text"])
        outputs.append(result)
        expect = record["expect"]
        for kind in set(expect) | set(result.counts):
            e, g = expect.get(kind, 0), result.counts.get(kind, 0)
            tp[kind] += min(e, g)
            fn[kind] += max(0, e - g)
            fp[kind] += max(0, g - e)
            if g > e:
                false_alarms.append((kind, record["text"][:120], result.text[:120]))
        survivors += [(s, record["text"][:120]) for s in record["planted"] if s in result.text]
    return tp, fn, fp, outputs, survivors, false_alarms


def _ratio(a: int, b: int) -> float:
    return a / b if b else 1.0


def test_corpus_has_enough_positives_and_negatives_for_every_type(corpus):
    positives = Counter(kind for r in corpus for kind in r["expect"])
    for kind in SECRET_TYPES + PII_TYPES:
        assert positives[kind] >= MIN_POSITIVES_PER_TYPE, f"only {positives[kind]} positives of {kind}"
    assert sum(not r["expect"] for r in corpus) >= 150


def test_corpus_file_matches_its_generator(corpus):
    path = DATA / "redaction_corpus.jsonl"
    if not path.exists():
        pytest.skip(
            f"{path} absent (it is a readable copy; regenerate with tests/data/make_redaction_corpus.py)"
        )
    on_disk = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert on_disk == corpus, f"{path} is stale: run .venv/bin/python tests/data/make_redaction_corpus.py"


def test_recall_and_precision_per_type_meet_the_thresholds(scored, capsys):
    tp, fn, fp, _, survivors, false_alarms = scored
    lines = [f"{'type':18s} {'n':>4s} {'tp':>4s} {'fn':>3s} {'fp':>3s} {'recall':>7s} {'precision':>9s}"]
    for kind in SECRET_TYPES + PII_TYPES:
        lines.append(
            f"{kind:18s} {tp[kind] + fn[kind]:4d} {tp[kind]:4d} {fn[kind]:3d} {fp[kind]:3d} "
            f"{_ratio(tp[kind], tp[kind] + fn[kind]):7.3f} {_ratio(tp[kind], tp[kind] + fp[kind]):9.3f}"
        )
    s_tp = sum(tp[k] for k in SECRET_TYPES)
    s_fn = sum(fn[k] for k in SECRET_TYPES)
    p_tp = sum(tp[k] for k in PII_TYPES)
    p_fn = sum(fn[k] for k in PII_TYPES)
    lines.append(
        f"{'secrets overall':18s} {s_tp + s_fn:4d} {s_tp:4d} {s_fn:3d} {sum(fp[k] for k in SECRET_TYPES):3d} "
        f"{_ratio(s_tp, s_tp + s_fn):7.3f}"
    )
    lines.append(
        f"{'pii overall':18s} {p_tp + p_fn:4d} {p_tp:4d} {p_fn:3d} {sum(fp[k] for k in PII_TYPES):3d} "
        f"{_ratio(p_tp, p_tp + p_fn):7.3f}"
    )
    with capsys.disabled():
        print("\n" + "\n".join(lines))
        for kind, text, out in false_alarms:
            print(f"false alarm {kind}: {text!r} -> {out!r}")

    assert _ratio(s_tp, s_tp + s_fn) >= SECRET_RECALL_OVERALL
    assert _ratio(p_tp, p_tp + p_fn) >= PII_RECALL
    for kind in SECRET_TYPES + PII_TYPES:
        assert _ratio(tp[kind], tp[kind] + fn[kind]) >= RECALL_PER_TYPE, f"recall of {kind}"
        assert _ratio(tp[kind], tp[kind] + fp[kind]) >= PRECISION_PER_TYPE, f"precision of {kind}"
    assert not survivors, f"planted strings survived redaction: {survivors[:5]}"


def test_redacting_twice_changes_nothing_and_counts_nothing(corpus, scored):
    for record, first in zip(corpus, scored[3], strict=True):
        second = redact_text(first.text)
        assert second.text == first.text, record["text"][:120]
        assert second.counts == {}, (record["text"][:120], second.counts)


def test_placeholders_of_every_type_are_left_alone():
    text = " ".join(placeholder(kind) for kind in SECRET_TYPES + PII_TYPES) + " <SECRET:some_future_type>"
    assert redact_text(text).text == text
    assert redact_text(text).counts == {}
    assert all(PLACEHOLDER_RE.fullmatch(placeholder(kind)) for kind in SECRET_TYPES + PII_TYPES)
    with pytest.raises(ValueError, match="unknown redaction type"):
        placeholder("ssn")


# ---------------------------------------------------------------- exact spans
def _fake(kind: str, seed: int = 7) -> str:
    return getattr(GEN, kind)(random.Random(seed))


@pytest.mark.parametrize(
    "kind",
    ["aws_access_key", "github_token", "google_api_key", "openai_key", "stripe_key", "jwt", "email", "card"],
)
def test_only_the_secret_span_is_replaced_and_the_text_around_it_is_kept(kind):
    secret = _fake(kind)
    for before, after in [
        ("", ""),
        ("see: ", "."),
        ("(", ")"),
        ('"', '",'),
        ("line1\n  ", "\nline3"),
        ("é ", " 🎉"),
    ]:
        result = redact_text(f"{before}{secret}{after}")
        assert result.text == f"{before}{placeholder(kind)}{after}"
        assert result.counts == {kind: 1}


def test_a_url_password_is_replaced_and_user_host_and_path_are_kept():
    result = redact_text("conn postgres://app_user:s3cr3t!Pw@db.internal.example:5432/orders?ssl=1 ok")
    assert (
        result.text
        == "conn postgres://app_user:<SECRET:password_in_url>@db.internal.example:5432/orders?ssl=1 ok"
    )
    assert (
        redact_text("redis://:hunter2pw@cache:6379/0").text
        == "redis://:<SECRET:password_in_url>@cache:6379/0"
    )


def test_a_key_value_secret_keeps_the_key_the_quotes_and_the_json_valid():
    raw = '{"user": "svc", "password": "p@ss\\"w0rd", "note": "hi"}'
    result = redact_text(raw)
    assert result.text == '{"user": "svc", "password": "<SECRET:key_value_secret>", "note": "hi"}'
    assert json.loads(result.text)["note"] == "hi"
    assert redact_text("DB_PASSWORD=hunter2 rest").text == "DB_PASSWORD=<SECRET:key_value_secret> rest"
    assert redact_text("password: hunter2.").text == "password: <SECRET:key_value_secret>."


def test_a_private_key_block_is_replaced_whole_and_what_follows_is_kept():
    key = _fake("private_key")
    result = redact_text(f"my key:\n{key}\nwhy does ssh reject it?")
    assert result.text == f"my key:\n{placeholder('private_key')}\nwhy does ssh reject it?"
    escaped = json.dumps({"file": key, "size": 3})  # the same block inside a JSON string (\\n escapes)
    assert json.loads(redact_text(escaped).text) == {"file": "<SECRET:private_key>", "size": 3}


def test_an_authorization_header_keeps_its_scheme():
    jwt = _fake("jwt")
    assert redact_text(f"Authorization: Bearer {jwt}").text == "Authorization: Bearer <SECRET:jwt>"
    assert (
        redact_text("Authorization: Basic dXNlcjpodW50ZXIy").text
        == "Authorization: Basic <SECRET:generic_token>"
    )


def test_overlapping_detections_keep_the_most_specific_type():
    gh = _fake("github_token")
    assert redact_text(f"GITHUB_TOKEN={gh}").counts == {"github_token": 1}  # not key_value_secret
    assert redact_text(f"https://x-access-token:{gh}@github.com/o/r").counts == {"github_token": 1}
    assert redact_text("https://u:pw12345@mail.example.com/").counts == {"password_in_url": 1}  # not an email


# ---------------------------------------------------------------- decisions
def test_loopback_unspecified_and_netmasks_stay_but_private_addresses_go():
    kept = "127.0.0.1:8000 0.0.0.0 255.255.255.0 ::1 :: version 1.2.3.4 v1.2.3.4 1.3.6.1.4.1"
    assert redact_text(kept).text == kept
    assert redact_text("10.1.2.3 192.168.0.7 fd00::1 8.8.8.8").text == "<IP> <IP> <IP> <IP>"


def test_stripe_publishable_keys_stay_and_secret_keys_go():
    rng = random.Random(3)
    body = "".join(
        rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(24)
    )
    assert redact_text(f"pk_live_{body}").counts == {}
    assert redact_text(f"sk_live_{body}").counts == {"stripe_key": 1}
    assert redact_text(f"rk_test_{body}").counts == {"stripe_key": 1}


def test_dates_versions_prices_and_ids_are_not_phones_or_cards():
    text = (
        "2024-01-15 10:30, v3.11.4, $1,299.99, ISBN 978-3-16-148410-0, order 1234567890, 4111 1111 1111 1112"
    )
    assert redact_text(text).counts == {}


# ---------------------------------------------------------------- messages, tool calls, raw lines
def test_messages_are_redacted_in_content_parts_and_tool_call_arguments_without_touching_the_input():
    mail, jwt, kid = _fake("email"), _fake("jwt"), _fake("aws_access_key")
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": f"I'm {mail}, my key is {kid}"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"token {jwt}"},
                {"type": "image_url", "image_url": {"url": "x"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "send", "arguments": json.dumps({"to": mail, "n": 2})},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "send", "content": f"sent to {mail}"},
    ]
    original = copy.deepcopy(messages)
    redacted, counts = redact_messages(messages)
    assert messages == original
    assert counts == {"email": 3, "aws_access_key": 1, "jwt": 1}
    assert redacted[0] == messages[0]
    assert redacted[1]["content"] == "I'm <EMAIL>, my key is <SECRET:aws_access_key>"
    assert redacted[2]["content"][0] == {"type": "text", "text": "token <SECRET:jwt>"}
    assert redacted[2]["content"][1] == messages[2]["content"][1]
    assert redacted[3]["content"] is None
    arguments = redacted[3]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"to": "<EMAIL>", "n": 2}
    assert redacted[4]["content"] == "sent to <EMAIL>"
    assert redact_messages(redacted) == (redacted, {})


def test_tool_call_arguments_are_checked_inside_json_escapes():
    kid = _fake("aws_access_key")
    arguments = json.dumps({"script": f"export K=1\\{kid}"})  # a backslash glued to the key in the text form
    redacted, counts = redact_messages(
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "run", "arguments": arguments}}
                ],
            }
        ]
    )
    assert kid not in redacted[0]["tool_calls"][0]["function"]["arguments"]
    assert counts == {"aws_access_key": 1}


def test_redact_line_handles_lines_that_are_not_json_and_keeps_clean_lines_byte_for_byte():
    mail = _fake("email")
    assert redact_line(f'{{"id": 1, "messages": [oops {mail}') == '{"id": 1, "messages": [oops <EMAIL>'
    clean = '{"id": "a",  "messages": [{"role": "user", "content": "hi"}]}'
    assert redact_line(clean) == clean
    escaped = json.dumps({"content": "a\n" + _fake("github_token")})
    assert "<SECRET:github_token>" in redact_line(escaped)


def test_the_detect_secrets_scan_finds_the_same_on_the_corpus_positives(corpus):
    deep = Redactor(detect_secrets_scan=True)
    for record in corpus[::25]:
        if record["expect"]:
            assert deep.redact_text(record["text"]).counts == redact_text(record["text"]).counts


# ---------------------------------------------------------------- properties
PLANTABLE = {
    "aws_access_key": "{s}",
    "github_token": "{s}",
    "slack_token": "{s}",
    "openai_key": "{s}",
    "google_api_key": "{s}",
    "stripe_key": "{s}",
    "jwt": "{s}",
    "private_key": "{s}",
    "email": "{s}",
    "card": "{s}",
    "ip": "{s}",
    "aws_secret_key": "aws_secret_access_key = {s}",
    "password_in_url": "postgres://app:{s}@db.example:5432/x",
    "key_value_secret": "password={s}",
}
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=120)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(PLANTABLE)), seed=st.integers(0, 2**32 - 1), before=_TEXT, after=_TEXT)
def test_a_planted_secret_never_survives_random_surroundings(kind, seed, before, after):
    generator = GEN.password if kind in ("password_in_url", "key_value_secret") else getattr(GEN, kind)
    secret = generator(random.Random(seed))
    text = f"{before} {PLANTABLE[kind].format(s=secret)} {after}"
    result = redact_text(text)
    assert secret not in result.text
    assert result.counts.get(kind, 0) >= 1, (kind, result.counts)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_never_raises_and_redaction_is_idempotent(text):
    first = redact_text(text)
    assert sum(first.counts.values()) == len(PLACEHOLDER_RE.findall(first.text)) - len(
        PLACEHOLDER_RE.findall(text)
    )
    assert redact_text(first.text).text == first.text
    redact_line(text)


_PIECES = st.sampled_from(
    [
        " ",
        "\n",
        ":",
        "=",
        "@",
        ".",
        "-",
        "/",
        '"',
        "'",
        "password",
        "token",
        "key",
        "Bearer",
        "aws",
        "AKIA",
        "https://",
        "u:p@h.io",
        "1",
        "415",
        "555-2671",
        "10.0.0.1",
        "::",
        "fe80",
        "4111",
        "eyJ",
        "sk-",
        "ghp_",
        "xoxb-",
        "-----BEGIN",
        "PRIVATE KEY",
        "-----",
        "<SECRET:jwt>",
        "<EMAIL>",
        "a@b.co",
        "abcDEF123456ghiJKL789mnoPQR",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=40).map("".join))
def test_redaction_is_idempotent_on_secret_like_fragments(text):
    first = redact_text(text)
    second = redact_text(first.text)
    assume(first.text)  # the empty text is trivially fine
    assert second.text == first.text and second.counts == {}, (text, first.text, second.text)


# ---------------------------------------------------------------- issue 14: validators, command lines
@pytest.mark.parametrize(
    "text, kind, secret",
    [
        ("redis-cli -h cache -a Zx81bLue ping", "key_value_secret", "Zx81bLue"),
        ("redis-cli --pass correcthorse --no-auth-warning", "key_value_secret", "correcthorse"),
        ("mysql -u root -pS3cretPass shop", "key_value_secret", "S3cretPass"),
        ("mysqldump -uroot -p'open sesame' all > dump.sql", "key_value_secret", "open sesame"),
        ("sshpass -p 'tr0ub4dor' ssh admin@h", "key_value_secret", "tr0ub4dor"),
        ("sshpass -pmysecret ssh admin@h", "key_value_secret", "mysecret"),
        ("docker login -u bob -p dckrpassw registry.io", "key_value_secret", "dckrpassw"),
        ("podman login --password=bluewhale quay.io", "key_value_secret", "bluewhale"),
        ("curl -u admin:Passw0rd https://x", "key_value_secret", "Passw0rd"),
        ("curl --user admin:opensesame https://x", "key_value_secret", "opensesame"),
        ("mongosh --username a --password swordfish", "key_value_secret", "swordfish"),
        ("ldapsearch -x -D cn=admin -w adminpass -b dc=x", "key_value_secret", "adminpass"),
        ("smbclient //srv/share -U alice%wonderland", "key_value_secret", "wonderland"),
        ("rabbitmqctl add_user bob bobsecret", "key_value_secret", "bobsecret"),
        ("htpasswd -bc .htpasswd alice wonderland", "key_value_secret", "wonderland"),
        ("keytool -list -keystore ks.jks -storepass changeit2", "key_value_secret", "changeit2"),
        ("skopeo copy --src-creds bob:hunter22 docker://a docker://b", "key_value_secret", "hunter22"),
        ("      - name: DB_PASSWORD\n        value: swordfish", "key_value_secret", "swordfish"),
        ("POSTGRES_PASSWORD: swordfish", "key_value_secret", "swordfish"),
        ("amqp://guest:rabbitpass@mq:5672/", "password_in_url", "rabbitpass"),
        ("IBAN GB82 WEST 1234 5698 7654 32, thanks", "iban", "GB82 WEST 1234 5698 7654 32"),
        ("iban de89370400440532013000", "iban", "de89370400440532013000"),
        ("ssn 536-90-4399", "national_id", "536-90-4399"),
        ("my social security number is 536904399", "national_id", "536904399"),
        ("DNI 12345678Z", "national_id", "12345678Z"),
        ("NIE X1234567L please", "national_id", "X1234567L"),
        ("codice fiscale RSSMRA85T10A562S", "national_id", "RSSMRA85T10A562S"),
        ("my BSN is 111222333", "national_id", "111222333"),
        ("PESEL: 44051401458", "national_id", "44051401458"),
        ("call me at +49 30 901820", "phone", "+49 30 901820"),
        ("ring 0044 20 7946 0958 tonight", "phone", "0044 20 7946 0958"),
        ("call 2125550123 after lunch", "phone", "2125550123"),
    ],
)
def test_cli_credentials_and_validated_identifiers_are_redacted(text, kind, secret):
    result = redact_text(text)
    assert secret not in result.text, result.text
    assert result.counts.get(kind, 0) == 1, result.counts


@pytest.mark.parametrize(
    "text",
    [
        "mysql -u root -p shop",
        "mysql -u root -P 3306 -p",
        'mysql -p"$MYSQL_PWD" db',
        "docker login -u ci --password-stdin < token.txt",
        "docker run -p 8080:80 nginx",
        "redis-cli -a $REDIS_PASSWORD ping",
        "postgres://app:${DB_PASSWORD}@db/app",
        "redis://:$REDIS_PASS@cache:6379/0",
        "export DB_PASSWORD=${DB_PASSWORD}",
        "sshpass -p <password> ssh admin@h",
        "sshpass -f ~/.pw ssh admin@h",
        'curl -u "$USER:$TOKEN" https://x',
        "curl -u admin https://x",
        "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD}",
        "- name: DB_PASSWORD\n  valueFrom:\n    secretKeyRef:\n      name: db\n      key: password",
        "ssh -p 2222 host && git log -p",
        "order 482913507 placed 2024-03-18",
        "tracking 1Z999AA10123456784 on 2024-03-18",
        "ticket 4155552671 reopened 03/18/2024",
        "ORD-2024-000123 is delayed",
        "SSN format 000-00-0000; 666-12-3456 is never issued",
        "IBAN DE00 1234 5678 9012 3456 78 has bad check digits",
        "build 12345678 finished, item 87654321 shipped",
        "+1 000 000 0000 is not a number",
    ],
)
def test_references_and_look_alikes_are_untouched(text):
    result = redact_text(text)
    assert result.counts == {}, (result.text, result.counts)
    assert result.text == text


def test_phone_regions_are_configurable():
    text = "ruf an: 030 901820 oder 0151 23456789"  # German national formats
    assert Redactor().redact_text(text).counts == {}
    result = Redactor(phone_regions=("US", "DE")).redact_text(text)
    assert result.counts == {"phone": 2}, result.text


def test_new_pii_types_have_placeholders_and_columns():
    from features.schema import INTERACTION_SCHEMA

    assert placeholder("iban") == "<IBAN>" and placeholder("national_id") == "<NATIONAL_ID>"
    names = INTERACTION_SCHEMA.names
    assert "redacted_iban" in names and "redacted_national_id" in names
    assert INTERACTION_SCHEMA.field("redacted_iban").nullable
    assert redact_text(redact_text("ssn 536-90-4399").text).counts == {}
