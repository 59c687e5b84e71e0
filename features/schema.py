"""The canonical Interaction record (schema v2) and the quarantine record, as dataclasses and pyarrow schemas.

Everything after ingestion (the offline store, Feast, training, monitoring) reads these columns.
Text columns hold REDACTED text only: redaction runs before anything is stored.
Bump SCHEMA_VERSION on any change a reader would notice, and keep readers of older versions.

v2 (from v1): `model`, `prompt_tokens`, `completion_tokens`, `total_tokens` and `latency_ms` may be
null (the source did not say); new columns `agent_name`, `tools_json`, `feedback_json`,
`user_id_hash`, `trace_id`, `span_id`, `source_format`. The change is additive, so a store holding
v1 parts needs no rewrite: readers pass this schema to pyarrow, which reads a v1 part's missing
columns as null, and each row keeps the `schema_version` it was written with (lineage that cites
v1 interaction ids finds the same ids, same content). `upgrade_v1_rows` fills the new columns the
way a v2 ingest would have (agent_name = agent, source_format = "jsonl").

Issue 14 added PII types `iban` and `national_id` (placeholders `<IBAN>`, `<NATIONAL_ID>`) and two
nullable count columns at the end, `redacted_iban` and `redacted_national_id`, without a version
bump: the change is additive like v1 -> v2, a reader passes this schema and reads an older part's
missing columns as null, and null means "not counted in its own column" (every count is also in
`redaction_counts_json`, which older rows have too). Rule for any later PII type: add it to
PII_TYPES, add a nullable `redacted_<type>` int32 column at the end, never reuse or reorder a
column; a change that alters an existing column's meaning bumps SCHEMA_VERSION instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa

SCHEMA_VERSION = 2
SCHEMA_VERSIONS_READ = (1, 2)

# Redaction types: placeholders are `<SECRET:{type}>` for secrets and `<{TYPE}>` for personal data.
SECRET_TYPES = (
    "aws_access_key",
    "aws_secret_key",
    "github_token",
    "slack_token",
    "openai_key",
    "google_api_key",
    "stripe_key",
    "jwt",
    "private_key",
    "password_in_url",
    "key_value_secret",
    "high_entropy",
    "generic_token",
)
PII_TYPES = ("email", "phone", "card", "ip", "iban", "national_id")

# Quarantine reasons (machine-readable). `missing_field:<name>`, `bad_type:<name>` and `guard:<rule>`
# carry a suffix. Trace readers add: `no_content:<setting>` (a span recorded with message capture off;
# the suffix names the setting that turns it on), `incomplete_trace:<what>` (a buffered trace whose
# chat span or content never arrived within the wait), `bad_span:<field>`, `unknown_format`.
QUARANTINE_REASONS = (
    "invalid_json",
    "not_an_object",
    "encoding",
    "oversized",
    "missing_field",
    "bad_type",
    "bad_value",
    "bad_timestamp",
    "bad_role",
    "bad_rating",
    "bad_thumbs",
    "bad_error",
    "bad_content",
    "bad_message",
    "bad_name",
    "bad_tool_call_id",
    "bad_tool_calls",
    "empty_conversation",
    "no_reply",
    "bad_cloudevent",
    "bad_score",
    "bad_tools",
    "bad_span",
    "unknown_format",
    "no_content",
    "incomplete_trace",
    "duplicate_id_conflict",
    "guard",
    "internal_error",
)


@dataclass
class Interaction:
    """One accepted agent interaction, redacted, as stored offline (one row)."""

    interaction_id: str
    agent: str
    session_id: str
    event_timestamp: datetime  # tz-aware UTC; Feast's event timestamp
    model: str | None  # None: the source did not name the model
    messages_json: str  # OpenAI-style messages, redacted, JSON text
    last_user_message: str
    agent_reply: str  # the last assistant message
    n_turns: int  # user + assistant messages
    prompt_tokens: int | None  # token counts: None when the source did not report them
    completion_tokens: int | None
    total_tokens: int | None  # derived from the parts when only they were reported
    latency_ms: float | None  # from span times for traces; None when unknown
    rating: int | None  # 1-5 from feedback, None when no feedback
    thumbs: str | None  # "up" | "down" | None
    error_type: str | None
    has_error: bool
    redacted_secrets: int  # sum over SECRET_TYPES
    redacted_email: int
    redacted_phone: int
    redacted_card: int
    redacted_ip: int
    redaction_counts_json: str  # {"aws_access_key": 1, "email": 2, ...}
    guard_flags: str  # comma-separated warn-level guard rules that did not quarantine ("" when none)
    content_hash: str  # sha256 of the normalized content (dedup key)
    source: str  # file path, URL or queue the record came from
    source_line: int
    ingested_at: datetime
    day: str  # YYYY-MM-DD of event_timestamp (UTC): the hive partition `day=...`
    agent_name: str | None = (
        None  # the agent's name as the source gave it ("Support Agent" -> agent "support-agent")
    )
    tools_json: str | None = None  # tool definitions offered to the model (OpenAI shape), redacted, JSON text
    feedback_json: str | None = None  # every feedback item, one shape: [{"name", "value", "source", ...}]
    user_id_hash: str | None = None  # HMAC-SHA256 of the source's user id with the store's salt; never the id
    trace_id: str | None = None  # hex, for interactions read from traces
    span_id: str | None = None
    source_format: str = "jsonl"  # jsonl | otlp | openinference | mlflow | openai
    schema_version: int = SCHEMA_VERSION
    redacted_iban: int | None = None  # issue 14; None in rows written before it (see the module docstring)
    redacted_national_id: int | None = None  # US SSN, Spanish DNI/NIE, ... (features/redact/validated.py)


INTERACTION_SCHEMA = pa.schema(
    [
        ("interaction_id", pa.string()),
        ("agent", pa.string()),
        ("session_id", pa.string()),
        ("event_timestamp", pa.timestamp("us", tz="UTC")),
        ("model", pa.string()),
        ("messages_json", pa.string()),
        ("last_user_message", pa.string()),
        ("agent_reply", pa.string()),
        ("n_turns", pa.int32()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("total_tokens", pa.int32()),
        ("latency_ms", pa.float64()),
        ("rating", pa.int32()),
        ("thumbs", pa.string()),
        ("error_type", pa.string()),
        ("has_error", pa.bool_()),
        ("redacted_secrets", pa.int32()),
        ("redacted_email", pa.int32()),
        ("redacted_phone", pa.int32()),
        ("redacted_card", pa.int32()),
        ("redacted_ip", pa.int32()),
        ("redaction_counts_json", pa.string()),
        ("guard_flags", pa.string()),
        ("content_hash", pa.string()),
        ("source", pa.string()),
        ("source_line", pa.int64()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
        ("day", pa.string()),
        ("schema_version", pa.int32()),
        ("agent_name", pa.string()),
        ("tools_json", pa.string()),
        ("feedback_json", pa.string()),
        ("user_id_hash", pa.string()),
        ("trace_id", pa.string()),
        ("span_id", pa.string()),
        ("source_format", pa.string()),
        ("redacted_iban", pa.int32()),
        ("redacted_national_id", pa.int32()),
    ],
    metadata={"agentloop.schema": "interaction", "agentloop.schema_version": str(SCHEMA_VERSION)},
)


V2_COLUMNS = (
    "agent_name",
    "tools_json",
    "feedback_json",
    "user_id_hash",
    "trace_id",
    "span_id",
    "source_format",
)


def upgrade_v1_rows(table: pa.Table) -> pa.Table:
    """Rows read with INTERACTION_SCHEMA, with the v2 columns of v1 rows filled as a v2 ingest would.

    Only the columns a v1 row could not have are touched; `schema_version` still says 1.
    """
    import pyarrow.compute as pc

    if "schema_version" not in table.column_names:
        return table
    v1 = pc.equal(table.column("schema_version"), 1)
    fills = {"agent_name": "agent", "source_format": pa.scalar("jsonl")}
    for name, fill in fills.items():
        if name not in table.column_names:
            continue
        value = table.column(fill) if isinstance(fill, str) else fill
        if isinstance(fill, str) and fill not in table.column_names:
            continue
        column = pc.if_else(pc.and_(v1, pc.is_null(table.column(name))), value, table.column(name))
        table = table.set_column(table.column_names.index(name), name, column)
    return table


@dataclass
class QuarantineRecord:
    """One rejected input record. `raw_redacted` is the raw line decoded (errors replaced) and redacted:
    quarantine is stored data too, so secrets never reach it; `raw_sha256` identifies the exact bytes."""

    source: str
    line_number: int
    reason: str  # one of QUARANTINE_REASONS, with its suffix
    detail: str
    raw_redacted: str
    raw_sha256: str
    raw_bytes: int
    interaction_id: str | None = None
    quarantined_at: datetime | None = None
    day: str = ""  # YYYY-MM-DD of quarantined_at: the hive partition
    extra: dict = field(default_factory=dict)


QUARANTINE_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("line_number", pa.int64()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw_redacted", pa.string()),
        ("raw_sha256", pa.string()),
        ("raw_bytes", pa.int64()),
        ("interaction_id", pa.string()),
        ("quarantined_at", pa.timestamp("us", tz="UTC")),
        ("day", pa.string()),
    ],
    metadata={"agentloop.schema": "quarantine", "agentloop.schema_version": str(SCHEMA_VERSION)},
)
