"""Ingestion: raw agent logs -> the offline store (accepted interactions) and quarantine, exactly once.

    python -m features.ingest --store DIR_OR_URL SOURCE [SOURCE ...]

Per record (a line, or one element of a CloudEvents batch line):
decode (UTF-8, else `encoding`) -> parse (orjson, else `invalid_json`; over max_line_bytes: `oversized`)
-> unwrap CloudEvents (a bad envelope: `bad_cloudevent`) -> validate (raw_format.validate_record: the
first code is the reason, e.g. `missing_field:messages`) -> redact (features.redact) -> dedup ->
guard (features.guard: per record, then corpus-level poisoning per batch: `guard:<rule>`) -> the
canonical row (features.schema.INTERACTION_SCHEMA) -> features.store (Delta Lake tables; a commit of
whole sources at a time, see its docstring for how a killed run is undone).

Traces (OTLP GenAI spans and log records, OpenInference, MLflow 3 traces, OpenAI request/response
pairs; detected per record, or forced with IngestConfig.format) are routed by features/ingest_traces.py:
each span or log record is a record of its own, chat spans wait in the committed trace buffer
(features/traces/buffer.py) for their content and ancestors, and each becomes a record of the
format that takes the same path from validation on. Before anything, a store in the old parquet
format is migrated (schema v1 parts to v2, Store.migrate) and converted to Delta (Store.convert).

Every record read ends in exactly one place: accepted, quarantined (one reason), or counted as a
duplicate; each source's counts are checked (read == accepted + duplicates + quarantined) before
it is committed, and the IngestReport carries them.

Dedup, across runs (the index is read back from the store's `_keys` table at the start of every run):
- content hash = sha256 of (agent, session_id, redacted messages with every string NFC-normalised
  and whitespace-collapsed; key order irrelevant); stored in the `content_hash` column.
- same id, same content hash: duplicate (`same_id`); different id, same content hash: duplicate
  (`same_content`; a retry logged under a new id).
- same id, DIFFERENT content: the first stored wins; the later one is quarantined as
  `duplicate_id_conflict`. Why: the store is append-only and idempotent. "Latest wins" would mean
  rewriting or shadowing rows that Feast may already have materialised and a training snapshot may
  already cite (lineage: interaction ids -> snapshot hash), and "latest" by producer timestamp is
  whatever a buggy or replaying producer says. The conflicting copy is kept, redacted, in quarantine
  for a person to look at.
- a quarantined record seen again at the same source, line and bytes (a changed file re-read) is a
  duplicate (`quarantine`), so re-ingesting a file adds nothing to quarantine either.
Records quarantined by validation or guard never enter the index: a later clean copy is accepted.

Poisoning (features.guard.find_poisoning) runs per batch of up to batch_size candidates, never across
two sources, with the detector's memory (PoisonState) of every earlier batch. That memory is
committed with the rows it has seen (a state file of the same store commit), so a run killed and
re-run judges every source with exactly the memory an uninterrupted run had. Stored interactions
that carry a trigger confirmed only later are listed in SourceReport.poisoning_earlier_ids: the
store is append-only, a person decides.

Secrets: rows hold redacted messages only (and only the format's message fields); the quarantine
copy of a record is its bytes decoded (errors replaced) through redact_line, which also looks inside
JSON escapes when the text parses; an oversized line keeps a short preview cut at a JSON delimiter
(never mid-token), then redacted. Logs, errors and `detail` hold counts, codes and
paths, never content.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import logging
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

import orjson
import pyarrow as pa

from features.canonical import LINEAGE, content_hash, feedback_items, hash_user_id, mask_user_ids
from features.fsutil import progress as progress_bar
from features.guard import GuardConfig, PoisonState, check_interaction, find_poisoning
from features.ingest_report import IngestReport, SourceReport
from features.ingest_traces import TRACE_STATE, TraceRouter, TraceUnit
from features.raw_format import (
    USAGE_FIELDS,
    is_cloudevent,
    normalise_usage,
    parse_timestamp,
    unwrap,
    validate_cloudevent,
    validate_record,
)
from features.readers import (
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_SUFFIXES,
    RawItem,
    ReadStats,
    SourceFile,
    list_sources,
    read_source,
)
from features.redact import redact_line, redact_messages, redact_text, redact_value
from features.schema import INTERACTION_SCHEMA, PII_TYPES, QUARANTINE_SCHEMA, SCHEMA_VERSION, SECRET_TYPES
from features.store import INTERACTIONS, KEYS, QUARANTINE, ManifestEntry, Store, default_store, new_run_id
from features.traces import FORMATS, detect
from features.traces.buffer import DEFAULT_WAIT_S

log = logging.getLogger(__name__)

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
MAX_SOURCES_PER_COMMIT = 500
POISON_STATE = "poison-state"  # side state committed with the rows (features.store: Commit.stage_file)
UTF8_BOM = b"\xef\xbb\xbf"
USER_SALT_ENV = "AGENTLOOP_USER_ID_SALT"
USER_SALT_FILE = ("_meta", "user-id-salt")
# Characters at which an oversized line's preview may be cut without splitting a token.
_CUT_AT = b' \t",:{}[]'
MESSAGE_KEYS = ("role", "content", "name", "tool_call_id", "tool_calls")


@dataclass
class IngestConfig:
    """Where to write and how to read. Defaults: the embedded world (a local store under $AGENTLOOP_HOME)."""

    store: str = field(default_factory=default_store)  # folder or fsspec URL (s3://bucket/store)
    sources: list[str] = field(
        default_factory=list
    )  # folders, files, globs or URLs; ingest() may pass them instead
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES  # longer lines are quarantined as `oversized`
    batch_size: int = 5000  # rows per staged part, and the unit of corpus-level poisoning checks
    guard: GuardConfig | None = None  # None: features.guard's defaults
    suffixes: list[str] = field(default_factory=lambda: list(DEFAULT_SUFFIXES))
    force: bool = False  # re-read sources the manifest says are unchanged (dedup still applies)
    storage_options: dict = field(
        default_factory=dict
    )  # fsspec options on top of the AWS_*/FSSPEC_* variables
    progress: bool | None = None  # None: a progress bar when stderr is a terminal
    run_id: str = ""  # default: new_run_id()
    compression: str = "zstd"  # parquet codec of the parts ("none" for byte-greppable files in tests)
    # The salt of user-id hashes; default: $AGENTLOOP_USER_ID_SALT, else a random salt kept in the store
    # (`_meta/user-id-salt`), so that one store's hashes join across runs and two stores' do not.
    user_id_salt: str = ""
    format: str = "auto"  # auto (detected per record) | jsonl | otlp | mlflow | openai: force one
    # Data time (seconds behind the latest span seen) after which an open trace is closed: what still
    # waits in it is quarantined with its reason (features/traces/buffer.py).
    trace_wait_s: float = DEFAULT_WAIT_S
    flush_traces: bool = False  # close every open trace at the end of the run (the data is complete)

    def __post_init__(self) -> None:
        if self.max_line_bytes < 64:
            raise ValueError(f"IngestConfig.max_line_bytes must be >= 64, got {self.max_line_bytes}")
        if self.batch_size < 1:
            raise ValueError(f"IngestConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.format not in FORMATS:
            raise ValueError(f"IngestConfig.format must be one of {FORMATS}, got {self.format!r}")


# ------------------------------------------------------------------------------------------------ helpers


def _qkey(source: str, line_number: int, raw_sha256: str) -> bytes:
    return hashlib.sha256(f"{source}\0{line_number}\0{raw_sha256}".encode("utf-8", "surrogatepass")).digest()[
        :16
    ]


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


def _clean_message(m: dict) -> dict:
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


def _carried_trace(event: dict) -> dict | None:
    """The trace payload a CloudEvent carries (OTLP, MLflow, OpenAI pair), else None: its envelope
    then only carries, so its attributes need not agree with an interaction record."""
    try:
        data = unwrap(event)
    except (ValueError, TypeError):
        return None
    return data if detect(data) != "jsonl" else None


def _add_counts(counts: dict, more: dict) -> None:
    for kind, n in more.items():
        counts[kind] = counts.get(kind, 0) + n


def _raw_copy(item: RawItem, hasher) -> str:
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


@dataclass
class _Candidate:
    """A record that passed validation, dedup and the per-record guard, waiting for its batch's poisoning check."""

    row: dict
    messages: list
    item: RawItem
    digest: bytes
    counts: dict


# ------------------------------------------------------------------------------------------------ the ingestor


class _Ingestor:
    def __init__(self, config: IngestConfig, store: Store, run_id: str, started: datetime):
        self.config = config
        self.store = store
        self.run_id = run_id
        self.now = started
        self.today = started.date().isoformat()
        self.ids: dict[str, bytes] = {}  # interaction id -> content digest, of accepted rows
        self.hashes: set[bytes] = set()  # content digests of accepted rows
        self.qkeys: set[bytes] = set()  # (source, line, raw sha256) of quarantined records
        self.guard = config.guard or GuardConfig()
        self.history = PoisonState()  # the poisoning detector's memory: committed with the rows it saw
        self.history_dirty = False
        self.rep = SourceReport(source="")
        self.pending: list[_Candidate] = []  # waiting for the batch's poisoning check
        self.rows: list[dict] = []  # accepted rows not yet staged
        self.qrows: list[dict] = []  # quarantine rows not yet staged
        self.commit = None  # the open features.store.Commit
        self.next_commit = 1
        self.commit_rows = 0
        self.entries: list[ManifestEntry] = []  # manifest entries of the open commit's sources
        self._salt: bytes | None = None
        self.traces = TraceRouter(self, config.trace_wait_s)

    def user_salt(self) -> bytes:
        """The salt of user-id hashes (see IngestConfig.user_id_salt), read or made once per run."""
        if self._salt is None:
            given = self.config.user_id_salt or os.environ.get(USER_SALT_ENV, "")
            if given:
                self._salt = given.encode()
            else:
                path = self.store.path(*USER_SALT_FILE)
                if not self.store.exists(path):
                    self.store.write_bytes(path, secrets.token_hex(32).encode())
                self._salt = self.store.read_bytes(path).strip()
        return self._salt

    # -- the dedup index, from the store --------------------------------------------------------------
    def load_state(self) -> None:
        """The dedup index from the store's rows, the poisoning memory from its last commit."""
        commits = self.store.commits()
        self.next_commit = self.store.next_commit_number(commits)
        state = self.store.latest_state(POISON_STATE, commits)
        if state is not None:
            self.history = PoisonState.from_json(state.decode())
        buffer = self.store.latest_state(TRACE_STATE, commits)
        if buffer is not None:
            self.traces.load(buffer.decode())
        self.load_index()

    def load_index(self) -> None:
        acc = self.store.read_table(KEYS)  # (id, content hash) only: no interaction partition is read
        for iid, h in zip(
            acc.column("interaction_id").to_pylist(), acc.column("content_hash").to_pylist(), strict=True
        ):
            digest = bytes.fromhex(h)
            self.ids.setdefault(iid, digest)
            self.hashes.add(digest)
        q = self.store.read_table(QUARANTINE, ["source", "line_number", "raw_sha256"])
        for src, line, sha in zip(
            *(q.column(c).to_pylist() for c in ("source", "line_number", "raw_sha256")), strict=True
        ):
            self.qkeys.add(_qkey(src, line, sha))

    # -- one source -----------------------------------------------------------------------------------
    def ingest_source(
        self, source: SourceFile, seq: int, status: str, bar: Any, last: bool = False
    ) -> SourceReport:
        """Read one source to its end; its rows join the open commit (see commit_if_due)."""
        if self.commit is None:
            self.commit = self.store.begin_commit(self.run_id, self.next_commit)
            self.next_commit += 1
        rep = self.rep = SourceReport(source=source.path, status=status)
        rep.carried_in = self.traces.buffer.pending()
        stats = ReadStats()
        seen_bytes = 0
        items = read_source(
            source,
            max_line_bytes=self.config.max_line_bytes,
            stats=stats,
            options=self.config.storage_options or None,
        )
        for n, item in enumerate(items, 1):
            rep.read += 1
            try:
                self.handle(item)
            except Exception as exc:  # noqa: BLE001 - one record must not stop the run; see INTERNAL_ERROR
                log.warning(
                    "internal error on %s line %d (%s); record quarantined",
                    item.source,
                    item.line_number,
                    type(exc).__name__,
                )
                self.quarantine(item, INTERNAL_ERROR, f"{type(exc).__name__} while ingesting this record")
            if len(self.pending) >= self.config.batch_size:
                self.check_batch()
            if len(self.rows) >= self.config.batch_size or len(self.qrows) >= self.config.batch_size:
                self.write_parts()
            if bar is not None and n % 256 == 0:
                bar.update(stats.bytes_read - seen_bytes)
                seen_bytes = stats.bytes_read
        if last:
            self.traces.close_idle(flush=self.config.flush_traces)
        self.traces.end_source()
        rep.buffered = self.traces.buffer.pending()
        # Poisoning batches never span sources: a source's verdicts depend on the store and itself only.
        self.check_batch()
        if bar is not None:
            bar.update(stats.bytes_read - seen_bytes)
        rep.lines, rep.blank_lines, rep.empty_batches = stats.lines, stats.blank_lines, stats.empty_batches
        rep.bytes, rep.sha256 = stats.bytes_read, stats.sha256
        rep.check()
        self.entries.append(
            ManifestEntry(
                source=source.path,
                size=source.size,
                fingerprint=source.fingerprint,
                sha256=stats.sha256,
                run_id=self.run_id,
                seq=seq,
                committed_at="",
                counts={
                    "read": rep.read,
                    "accepted": rep.accepted,
                    "duplicates": rep.duplicates,
                    "quarantined": dict(rep.quarantined),
                    "context": rep.context,
                    "carried_in": rep.carried_in,
                    "buffered": rep.buffered,
                },
            )
        )
        return rep

    def commit_if_due(self, last: bool) -> None:
        """Commit the open group of whole sources once it holds batch_size rows (or at the end)."""
        if self.commit is None:
            return
        if not (
            last or self.commit_rows >= self.config.batch_size or len(self.entries) >= MAX_SOURCES_PER_COMMIT
        ):
            return
        self.write_parts(everything=True)
        if self.history_dirty:
            self.commit.stage_file(POISON_STATE, self.history.to_json().encode())
        if self.traces.dirty:
            self.commit.stage_file(TRACE_STATE, self.traces.state())
        now = datetime.now(timezone.utc).isoformat()
        for entry in self.entries:
            entry.committed_at = now
        self.commit.commit(self.entries)
        self.commit, self.entries, self.commit_rows, self.history_dirty = None, [], 0, False
        self.traces.dirty = False

    def abort(self) -> None:
        """Drop the open commit's staged parts (the run is failing; recovery would drop them too)."""
        if self.commit is not None:
            self.commit.abort()
            self.commit = None

    def write_parts(self, everything: bool = False) -> None:
        if self.rows and (everything or len(self.rows) >= self.config.batch_size):
            rows, self.rows = self.rows, []
            self.commit.write(INTERACTIONS, pa.Table.from_pylist(rows, schema=INTERACTION_SCHEMA))
        if self.qrows and (everything or len(self.qrows) >= self.config.batch_size):
            qrows, self.qrows = self.qrows, []
            self.commit.write(QUARANTINE, pa.Table.from_pylist(qrows, schema=QUARANTINE_SCHEMA))

    # -- one record -----------------------------------------------------------------------------------
    def handle(self, item: RawItem) -> None:
        if item.error is not None:
            self.quarantine(item, ENCODING, item.error)
            return
        if item.oversized:
            self.quarantine(
                item, OVERSIZED, f"{item.size} bytes, over max_line_bytes={self.config.max_line_bytes}"
            )
            return
        raw = item.raw
        if item.line_number == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM) :]
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as uexc:
                self.quarantine(item, ENCODING, f"invalid UTF-8 at byte {uexc.start}: {uexc.reason}")
                return
            self.quarantine(item, INVALID_JSON, str(exc))
            return

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
                self.quarantine(item, BAD_CLOUDEVENT, ",".join(problems), obj)
                return
        else:
            record = obj

        fmt = detect(record)
        if self.config.format != "auto" and fmt != self.config.format:
            self.quarantine(
                item,
                UNKNOWN_FORMAT,
                f"IngestConfig.format is {self.config.format!r} but this record reads as {fmt!r}",
                obj,
            )
            return
        if fmt != "jsonl":
            self.traces.handle(item, record, fmt)
            return
        self.accept(item, record, obj)

    def accept(self, item: RawItem, record: dict, obj: Any) -> None:
        """Validate, redact, dedup and guard one record in the format; it joins the batch or quarantine."""
        problems = validate_record(record)
        if not problems:
            problems = self._range_problems(record)
        if problems:
            self.quarantine(item, problems[0], ",".join(problems), obj)
            return

        # Only the fields of the format: whatever else a producer put in a message is not stored.
        messages, counts = redact_messages([_clean_message(m) for m in record["messages"]])
        agent, session_id, iid = record["agent"], record["session_id"], record["id"]
        chash = content_hash(agent, session_id, messages)
        digest = bytes.fromhex(chash)

        known = self.ids.get(iid)
        if known is not None:
            if known == digest:
                self.duplicate("same_id")
            else:
                self.quarantine(
                    item,
                    DUPLICATE_ID_CONFLICT,
                    f"id already stored with other content (content_hash {known.hex()[:16]}..., this one "
                    f"{chash[:16]}...): the first stored copy wins",
                    obj,
                )
            return
        if digest in self.hashes:
            self.duplicate("same_content")
            return

        hits = check_interaction(messages, self.guard)
        blocking = [h for h in hits if h.action == "quarantine"]
        if blocking:
            rules = sorted({h.rule for h in blocking})
            self.quarantine(item, GUARD_PREFIX + blocking[0].rule, "guard rules: " + ",".join(rules), obj)
            return
        warnings = sorted({h.rule for h in hits})

        row = self._row(
            record, messages, counts, warnings, chash, item
        )  # may raise: before the index changes
        self.ids[iid] = digest
        self.hashes.add(digest)
        self.pending.append(_Candidate(row, messages, item, digest, counts))

    @staticmethod
    def _range_problems(record: dict) -> list[str]:
        """What validate_record allows but the schema cannot hold: int32 counts, a UTC year outside 1..9999."""
        usage = normalise_usage(record.get("usage")) or {}
        problems = [f"bad_value:usage.{k}" for k, v in usage.items() if v is not None and v > INT32_MAX]
        try:
            parse_timestamp(record["timestamp"]).astimezone(timezone.utc)
        except OverflowError:  # 0001-01-01T00:00:00+01:00 is in year 0 in UTC
            problems.insert(0, "bad_timestamp")
        return problems

    def _row(
        self, record: dict, messages: list, counts: dict, warnings: list[str], chash: str, item: RawItem
    ) -> dict:
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
            _add_counts(counts, tool_counts)
            tools_json = orjson.dumps(tools).decode()
        items = feedback_items(feedback)
        feedback_json = None
        if items:
            items, feedback_counts = redact_value(items)
            _add_counts(counts, feedback_counts)
            feedback_json = orjson.dumps(items).decode()
        _add_counts(counts, lineage.get("redactions") or {})
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
            "ingested_at": self.now,
            "day": ts.date().isoformat(),
            "schema_version": SCHEMA_VERSION,
            "agent_name": record.get("agent_name") or record["agent"],
            "tools_json": tools_json,
            "feedback_json": feedback_json,
            "user_id_hash": lineage.get("user_id_hash")
            or (hash_user_id(user_id, self.user_salt()) if user_id else None),
            "trace_id": lineage.get("trace_id"),
            "span_id": lineage.get("span_id"),
            "source_format": lineage.get("format", "jsonl"),
        }

    # -- outcomes -------------------------------------------------------------------------------------
    def duplicate(self, kind: str) -> None:
        self.rep.duplicates += 1
        self.rep.duplicate_kinds[kind] = self.rep.duplicate_kinds.get(kind, 0) + 1

    def quarantine(self, item: RawItem, reason: str, detail: str, obj: Any = None) -> None:
        raw_sha = item.sha256 or hashlib.sha256(item.raw).hexdigest()
        key = _qkey(item.source, item.line_number, raw_sha)
        if key in self.qkeys:
            self.duplicate("quarantine")
            return
        self.qkeys.add(key)
        raw_redacted = _raw_copy(item, lambda u: hash_user_id(u, self.user_salt()))
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
        self.qrows.append(
            {
                "source": item.source,
                "line_number": item.line_number,
                "reason": reason,
                "detail": detail,  # built from codes, positions and rule names only: never content
                "raw_redacted": raw_redacted,
                "raw_sha256": raw_sha,
                "raw_bytes": item.size,
                "interaction_id": iid,
                "quarantined_at": self.now,
                "day": self.today,
            }
        )
        self.rep.quarantined[reason] = self.rep.quarantined.get(reason, 0) + 1
        self.commit_rows += 1

    def check_batch(self) -> None:
        """The corpus-level guard (poisoning) over the pending candidates; the rest become rows."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        report = find_poisoning(
            [(c.row["interaction_id"], c.row["session_id"], c.messages) for c in pending],
            self.guard,
            self.history,
        )
        self.history, self.history_dirty = report.state, True
        flagged = set(report.flagged_ids)
        self.rep.poisoning_earlier_ids += report.earlier_ids
        for c in pending:
            iid = c.row["interaction_id"]
            if iid in flagged and report.action == "quarantine":
                # Not stored after all: forget it, so that the index stays what the store says.
                if self.ids.get(iid) == c.digest:
                    del self.ids[iid]
                self.hashes.discard(c.digest)
                self.quarantine(c.item, report.reason, "poisoning trigger (corpus-level)", {"id": iid})
                continue
            if iid in flagged:  # poisoning set to warn
                c.row["guard_flags"] = ",".join(
                    sorted({*filter(None, c.row["guard_flags"].split(",")), "poisoning"})
                )
            self.rows.append(c.row)
            self.commit_rows += 1
            self.rep.accepted += 1
            for t, n in c.counts.items():
                self.rep.redactions[t] = self.rep.redactions.get(t, 0) + n
            for w in filter(None, c.row["guard_flags"].split(",")):
                self.rep.guard_warnings[w] = self.rep.guard_warnings.get(w, 0) + 1


# ------------------------------------------------------------------------------------------------ entry point


def ingest(sources: str | Sequence[str] | None = None, config: IngestConfig | None = None) -> IngestReport:
    """Ingest new and changed log files into the offline store; returns the conserved per-source report.

    `sources` (folders, files, globs or URLs) default to config.sources. Sources the manifest holds
    with the same size and fingerprint are skipped (status `unchanged`) unless config.force. The
    store is first recovered from any run that died (see features/store.py), then read back to
    build the dedup index. Raises (after discarding the failing source's staged parts) on I/O
    errors; every source committed before stays committed.
    """
    config = config or IngestConfig()
    if sources is None:
        sources = config.sources
    if isinstance(sources, (str, os.PathLike)):
        sources = [os.fspath(sources)]
    if not sources:
        raise ValueError("ingest needs at least one source (a folder, file, glob or URL of agent logs)")
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    run_id = config.run_id or new_run_id(started)
    store = Store(config.store, config.storage_options or None, compression=config.compression)
    report = IngestReport(run_id=run_id, store=store.url, started_at=started.isoformat())

    with store.writer_lock():
        report.migrated_parts = store.migrate()  # an old-format store: schema v2, then Delta tables
        store.convert()
        recovered = store.recover()
        report.recovered = asdict(recovered)
        if recovered.rolled_back:
            log.info("recovered the store: undid the unfinished commit in %s", sorted(recovered.rolled_back))
        store.ensure_tables()
        manifest = store.manifest()
        files = list_sources(list(sources), suffixes=config.suffixes, options=config.storage_options or None)
        ingestor = _Ingestor(config, store, run_id, started)
        ingestor.load_state()

        todo: list[tuple[SourceFile, str]] = []
        for source in files:
            entry = manifest.get(source.path)
            if entry is None:
                todo.append((source, "new"))
            elif entry.size != source.size or entry.fingerprint != source.fingerprint:
                todo.append((source, "changed"))
            elif config.force:
                todo.append((source, "forced"))
            else:
                report.sources.append(SourceReport(source=source.path, status="unchanged"))

        show = config.progress if config.progress is not None else sys.stderr.isatty()
        bar = progress_bar(
            total=sum(s.size for s, _ in todo), desc="ingest", unit="B", unit_scale=True, show=show
        )
        try:
            for seq, (source, status) in enumerate(todo, 1):
                rep = ingestor.ingest_source(
                    source, seq, status, bar if show else None, last=seq == len(todo)
                )
                ingestor.commit_if_due(last=seq == len(todo))
                report.sources.append(rep)
                log.info(
                    "%s: read %d, accepted %d, duplicates %d, quarantined %d",
                    source.path,
                    rep.read,
                    rep.accepted,
                    rep.duplicates,
                    rep.quarantined_total,
                )
        except BaseException:
            # The open commit is dropped; the in-memory index may hold its records, but the run stops
            # here and the next one rebuilds the index from the store.
            with contextlib.suppress(Exception):
                ingestor.abort()
            raise
        finally:
            bar.close()

    report.sources.sort(key=lambda s: s.source)
    report.check()
    report.finished_at = datetime.now(timezone.utc).isoformat()
    report.seconds = time.perf_counter() - clock
    log.info(report.summary())
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agentloop-ingest", description="Ingest agent logs into the offline store."
    )
    parser.add_argument(
        "sources", nargs="+", help="folders, files, globs or URLs (s3://bucket/prefix) of agent logs"
    )
    parser.add_argument(
        "--store",
        default=None,
        help="offline store: folder or URL (default $AGENTLOOP_OFFLINE_STORE or $AGENTLOOP_HOME/store)",
    )
    parser.add_argument("--max-line-bytes", type=int, default=DEFAULT_MAX_LINE_BYTES)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument(
        "--force", action="store_true", help="re-read unchanged sources too (dedup still applies)"
    )
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="force one input format (default: detected per record)",
    )
    parser.add_argument(
        "--trace-wait-s",
        type=float,
        default=DEFAULT_WAIT_S,
        help="data time after which an open trace is closed at the end of the run (default 600)",
    )
    parser.add_argument(
        "--flush-traces", action="store_true", help="close every open trace at the end (the data is complete)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of markdown")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = IngestConfig(
        store=args.store or default_store(),
        max_line_bytes=args.max_line_bytes,
        batch_size=args.batch_size,
        force=args.force,
        progress=args.progress,
        format=args.format,
        trace_wait_s=args.trace_wait_s,
        flush_traces=args.flush_traces,
    )
    report = ingest(args.sources, config)
    if args.json:
        print(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(report.to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
