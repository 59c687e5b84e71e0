"""Ingest, one record at a time: raw bytes -> a parsed record, then the canonical row or the quarantine row.

Plain functions with no state of their own: the ingestor (features/ingest.py) holds the dedup index,
the guard and the open commit, and calls these for the parts that depend on the record alone:

- parse_item: decode (UTF-8, else `encoding`) -> parse (orjson, else `invalid_json`; over max_line_bytes:
  `oversized`) -> unwrap CloudEvents (a bad envelope: `bad_cloudevent`) -> detect the format (a forced
  format that does not match: `unknown_format`). What fails is a Rejected (reason, detail).
- clean_message / range_problems: what validate_record lets through but the store does not keep or hold.
- canonical_row: a validated, redacted record -> a row of features.schema.INTERACTION_SCHEMA.
- quarantine_row: a rejected record -> a row of QUARANTINE_SCHEMA, whose copy of the record is its
  bytes decoded (errors replaced) through redact_line, which also looks inside JSON escapes when the
  text parses; an oversized line keeps a short preview cut at a JSON delimiter (never mid-token), then
  redacted. `detail` holds codes, positions and rule names, never content.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import orjson

from features.canonical import LINEAGE, feedback_items, hash_user_id, mask_user_ids
from features.ingest_traces import TraceUnit
from features.raw_format import (
    USAGE_FIELDS,
    is_cloudevent,
    normalise_usage,
    parse_timestamp,
    unwrap,
    validate_cloudevent,
)
from features.readers import RawItem
from features.redact import redact_line, redact_text, redact_value
from features.schema import PII_TYPES, SCHEMA_VERSION, SECRET_TYPES
from features.traces import detect

# ------------------------------------------------------------------------------------------------ reasons
ENCODING = "encoding"
INVALID_JSON = "invalid_json"
OVERSIZED = "oversized"
BAD_CLOUDEVENT = "bad_cloudevent"
UNKNOWN_FORMAT = "unknown_format"
DUPLICATE_ID_CONFLICT = "duplicate_id_conflict"
# A bug of ours (or of redact/guard) on one record: it is kept in quarantine, the run goes on.
INTERNAL_ERROR = "internal_error"
GUARD_PREFIX = "guard:"
INT32_MAX = 2**31 - 1
UTF8_BOM = b"\xef\xbb\xbf"
# Characters at which an oversized line's preview may be cut without splitting a token.
_CUT_AT = b' \t",:{}[]'
MESSAGE_KEYS = ("role", "content", "name", "tool_call_id", "tool_calls")


@dataclass
class Rejected:
    """Why a record goes to quarantine before validation; `obj` is what parsed (None if nothing did)."""

    reason: str
    detail: str
    obj: Any = None


# ------------------------------------------------------------------------------------------------ parse


def parse_item(item: RawItem, max_line_bytes: int, forced_format: str) -> Rejected | tuple[Any, Any, str]:
    """(obj as parsed, the record it carries, its format), or why it is rejected.

    A CloudEvent's envelope is checked unless it carries a trace payload (then it only carries).
    """
    if item.error is not None:
        return Rejected(ENCODING, item.error)
    if item.oversized:
        return Rejected(OVERSIZED, f"{item.size} bytes, over max_line_bytes={max_line_bytes}")
    raw = item.raw
    if item.line_number == 1 and raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM) :]
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return Rejected(ENCODING, f"invalid UTF-8 at byte {uexc.start}: {uexc.reason}")
        return Rejected(INVALID_JSON, str(exc))

    if is_cloudevent(obj):
        try:
            record = _carried_trace(obj)
            problems = [] if record is not None else validate_cloudevent(obj)
            if record is None and not problems:
                record = unwrap(obj)
            if record is not None and not isinstance(obj.get("data"), dict):
                # unwrap parses a `data` string or data_base64 with the stdlib, which lets NaN and lone
                # surrogates through: parse it again as strictly as a line.
                payload = obj["data"] if "data" in obj else base64.b64decode(obj["data_base64"])
                record = orjson.loads(payload)
        except Exception:  # noqa: BLE001 - e.g. a `data` string nested too deep for json.loads
            problems, record = ["bad_envelope:data"], None
        if problems:
            return Rejected(BAD_CLOUDEVENT, ",".join(problems), obj)
    else:
        record = obj

    fmt = detect(record)
    if forced_format != "auto" and fmt != forced_format:
        return Rejected(
            UNKNOWN_FORMAT, f"IngestConfig.format is {forced_format!r} but this record reads as {fmt!r}", obj
        )
    return obj, record, fmt


def _carried_trace(event: dict) -> dict | None:
    """The trace payload a CloudEvent carries (OTLP, MLflow, OpenAI pair), else None: its envelope
    then only carries, so its attributes need not agree with an interaction record."""
    try:
        data = unwrap(event)
    except (ValueError, TypeError):
        return None
    return data if detect(data) != "jsonl" else None


# ------------------------------------------------------------------------------------------------ the row


def clean_message(m: dict) -> dict:
    """A validated message with only the format's fields (a producer's extras are not stored)."""
    out = {k: m[k] for k in MESSAGE_KEYS if k in m}
    if out.get("tool_calls") is not None:
        out["tool_calls"] = [
            {
                "id": c["id"],
                "type": c.get("type", "function"),
                "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
            }
            for c in out["tool_calls"]
        ]
    return out


def range_problems(record: dict) -> list[str]:
    """What validate_record allows but the schema cannot hold: int32 counts, a UTC year outside 1..9999."""
    usage = normalise_usage(record.get("usage")) or {}
    problems = [f"bad_value:usage.{k}" for k, v in usage.items() if v is not None and v > INT32_MAX]
    try:
        parse_timestamp(record["timestamp"]).astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is in year 0 in UTC
        problems.insert(0, "bad_timestamp")
    return problems


def add_counts(counts: dict, more: dict) -> None:
    for kind, n in more.items():
        counts[kind] = counts.get(kind, 0) + n


def canonical_row(
    record: dict,
    messages: list,
    counts: dict,
    warnings: list[str],
    chash: str,
    item: RawItem,
    ingested_at: datetime,
    user_salt: Callable[[], bytes],
) -> dict:
    """The store's row of a validated record whose messages are already redacted.

    `counts` (redactions per type) grows by what the tools, feedback and lineage add; `user_salt` is
    called only when the record holds a user id that its lineage has not hashed already.
    """
    ts = parse_timestamp(record["timestamp"]).astimezone(timezone.utc)
    feedback = record.get("feedback") or {}
    error = record.get("error")
    last_user, reply, turns = "", "", 0
    for m in messages:
        role = m.get("role")
        if role == "user":
            last_user = m.get("content") or ""
            turns += 1
        elif role == "assistant":
            reply = m.get("content") or ""
            turns += 1
    if messages and messages[-1].get("role") != "assistant":
        reply = ""  # a failed call: the last assistant message is an earlier turn, not this reply
    usage = normalise_usage(record.get("usage")) or dict.fromkeys(USAGE_FIELDS)
    lineage = record.get(LINEAGE) or {}
    tools = record.get("tools")
    tools_json = None
    if tools:
        tools, tool_counts = redact_value(tools)
        add_counts(counts, tool_counts)
        tools_json = orjson.dumps(tools).decode()
    items = feedback_items(feedback)
    feedback_json = None
    if items:
        items, feedback_counts = redact_value(items)
        add_counts(counts, feedback_counts)
        feedback_json = orjson.dumps(items).decode()
    add_counts(counts, lineage.get("redactions") or {})
    user_id = record.get("user_id")
    latency = record.get("latency_ms")
    return {
        "interaction_id": record["id"],
        "agent": record["agent"],
        "session_id": record["session_id"],
        "event_timestamp": ts,
        "model": record.get("model"),
        "messages_json": orjson.dumps(messages).decode(),
        "last_user_message": last_user,
        "agent_reply": reply,
        "n_turns": turns,
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "total_tokens": usage["total_tokens"],
        "latency_ms": float(latency) if latency is not None else None,
        "rating": feedback.get("rating"),
        "thumbs": feedback.get("thumbs"),
        "error_type": error["type"] if error else None,
        "has_error": error is not None,
        "redacted_secrets": sum(n for t, n in counts.items() if t in SECRET_TYPES or t not in PII_TYPES),
        "redacted_email": counts.get("email", 0),
        "redacted_phone": counts.get("phone", 0),
        "redacted_iban": counts.get("iban", 0),
        "redacted_national_id": counts.get("national_id", 0),
        "redacted_card": counts.get("card", 0),
        "redacted_ip": counts.get("ip", 0),
        "redaction_counts_json": orjson.dumps(dict(sorted(counts.items()))).decode(),
        "guard_flags": ",".join(warnings),
        "content_hash": chash,
        "source": item.source,
        "source_line": item.line_number,
        "ingested_at": ingested_at,
        "day": ts.date().isoformat(),
        "schema_version": SCHEMA_VERSION,
        "agent_name": record.get("agent_name") or record["agent"],
        "tools_json": tools_json,
        "feedback_json": feedback_json,
        "user_id_hash": lineage.get("user_id_hash")
        or (hash_user_id(user_id, user_salt()) if user_id else None),
        "trace_id": lineage.get("trace_id"),
        "span_id": lineage.get("span_id"),
        "source_format": lineage.get("format", "jsonl"),
    }


# ------------------------------------------------------------------------------------------------ quarantine


def quarantine_key(source: str, line_number: int, raw_sha256: str) -> bytes:
    """The identity of a quarantined record: the same bytes at the same source and line are seen once."""
    return hashlib.sha256(f"{source}\0{line_number}\0{raw_sha256}".encode("utf-8", "surrogatepass")).digest()[
        :16
    ]


def quarantine_row(
    item: RawItem,
    reason: str,
    detail: str,
    obj: Any,
    raw_sha256: str,
    hasher: Callable[[str], str],
    quarantined_at: datetime,
    day: str,
) -> dict:
    """The quarantine row of a record: its redacted copy, the id it claims (redacted), one reason."""
    raw_redacted = raw_copy(item, hasher)
    iid = None
    record = obj
    if is_cloudevent(obj) and isinstance(obj.get("data"), dict):
        record = obj["data"]
    if isinstance(record, dict) and isinstance(record.get("id"), str):
        iid = redact_line(record["id"][:200])
    elif isinstance(obj, dict) and isinstance(obj.get("id"), str):
        iid = redact_line(obj["id"][:200])
    if item.index_in_line is not None and not isinstance(obj, TraceUnit):
        detail = f"batch element {item.index_in_line}: {detail}"
    return {
        "source": item.source,
        "line_number": item.line_number,
        "reason": reason,
        "detail": detail,  # built from codes, positions and rule names only: never content
        "raw_redacted": raw_redacted,
        "raw_sha256": raw_sha256,
        "raw_bytes": item.size,
        "interaction_id": iid,
        "quarantined_at": quarantined_at,
        "day": day,
    }


def raw_copy(item: RawItem, hasher: Callable[[str], str]) -> str:
    """The redacted quarantine copy of a record's bytes (redact_line also looks inside JSON escapes);
    user ids in it are replaced by their salted hash (features.canonical.mask_user_ids)."""
    if item.oversized:
        return _preview(item.raw, item.size)
    text = item.raw.decode("utf-8", "replace")
    if b"user" in item.raw:
        try:
            masked, n = mask_user_ids(orjson.loads(item.raw), hasher)
        except (orjson.JSONDecodeError, RecursionError, TypeError):
            n = 0
        if n:
            text = orjson.dumps(masked).decode()
    return _redact(text)


def _redact(text: str) -> str:
    """redact_line, or a text-only pass where the JSON is too deep for it; never the text unredacted."""
    try:
        return redact_line(text)
    except RecursionError:  # redact_line walks the parsed JSON recursively
        pass
    try:
        return redact_text(text).text
    except Exception:  # noqa: BLE001 - keep nothing rather than something unredacted
        return "<not kept: the redactor failed on this record>"


def _preview(raw: bytes, total: int) -> str:
    """A redacted, delimiter-cut preview of an oversized line's first bytes."""
    cut = max(raw.rfind(bytes([c])) for c in _CUT_AT)
    head = raw[: cut + 1] if cut > 0 else b""
    return _redact(head.decode("utf-8", "replace")) + f" ...[truncated: {total} bytes in all]"
