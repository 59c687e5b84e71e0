"""Ingestion: raw agent logs -> the offline store (accepted interactions) and quarantine, exactly once.

    python -m features.ingest --store DIR_OR_URL SOURCE [SOURCE ...]

Per record (a line, or one element of a CloudEvents batch line):
decode (UTF-8, else `encoding`) -> parse (orjson, else `invalid_json`; over max_line_bytes: `oversized`)
-> unwrap CloudEvents (a bad envelope: `bad_cloudevent`) -> validate (raw_format.validate_record: the
first code is the reason, e.g. `missing_field:messages`) -> redact (features.redact) -> dedup ->
guard (features.guard: per record, then corpus-level poisoning per batch: `guard:<rule>`) -> the
canonical row (features.schema.INTERACTION_SCHEMA) -> features.store (Delta Lake tables; a commit of
whole sources at a time, see its docstring for how a killed run is undone). The steps that depend on
the record alone (parsing, the canonical row, the quarantine row) are features/ingest_record.py;
this module holds what spans records: the dedup index, the guard's batches, the commits, the run.

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
copy of a record is redacted too (features/ingest_record.py says how). Logs, errors and `detail` hold
counts, codes and paths, never content.
"""

from __future__ import annotations

import argparse
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

from features.canonical import content_hash, hash_user_id
from features.fsutil import progress as progress_bar
from features.guard import GuardConfig, PoisonState, check_interaction, find_poisoning
from features.ingest_record import (
    DUPLICATE_ID_CONFLICT,
    GUARD_PREFIX,
    INTERNAL_ERROR,
    Rejected,
    canonical_row,
    clean_message,
    parse_item,
    quarantine_key,
    quarantine_row,
    range_problems,
)
from features.ingest_report import IngestReport, SourceReport
from features.ingest_traces import TRACE_STATE, TraceRouter
from features.raw_format import validate_record
from features.readers import (
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_SUFFIXES,
    RawItem,
    ReadStats,
    SourceFile,
    list_sources,
    read_source,
)
from features.redact import redact_messages
from features.schema import INTERACTION_SCHEMA, QUARANTINE_SCHEMA
from features.store import INTERACTIONS, KEYS, QUARANTINE, ManifestEntry, Store, default_store, new_run_id
from features.traces import FORMATS
from features.traces.buffer import DEFAULT_WAIT_S

log = logging.getLogger(__name__)

MAX_SOURCES_PER_COMMIT = 500
POISON_STATE = "poison-state"  # side state committed with the rows (features.store: Commit.stage_file)
USER_SALT_ENV = "AGENTLOOP_USER_ID_SALT"
USER_SALT_FILE = ("_meta", "user-id-salt")


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

    def hash_user(self, user_id: str) -> str:
        return hash_user_id(user_id, self.user_salt())

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
            self.qkeys.add(quarantine_key(src, line, sha))

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
        parsed = parse_item(item, self.config.max_line_bytes, self.config.format)
        if isinstance(parsed, Rejected):
            self.quarantine(item, parsed.reason, parsed.detail, parsed.obj)
            return
        obj, record, fmt = parsed
        if fmt != "jsonl":
            self.traces.handle(item, record, fmt)
            return
        self.accept(item, record, obj)

    def accept(self, item: RawItem, record: dict, obj: Any) -> None:
        """Validate, redact, dedup and guard one record in the format; it joins the batch or quarantine."""
        problems = validate_record(record)
        if not problems:
            problems = range_problems(record)
        if problems:
            self.quarantine(item, problems[0], ",".join(problems), obj)
            return

        # Only the fields of the format: whatever else a producer put in a message is not stored.
        messages, counts = redact_messages([clean_message(m) for m in record["messages"]])
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

        # may raise: before the index changes
        row = canonical_row(record, messages, counts, warnings, chash, item, self.now, self.user_salt)
        self.ids[iid] = digest
        self.hashes.add(digest)
        self.pending.append(_Candidate(row, messages, item, digest, counts))

    # -- outcomes -------------------------------------------------------------------------------------
    def duplicate(self, kind: str) -> None:
        self.rep.duplicates += 1
        self.rep.duplicate_kinds[kind] = self.rep.duplicate_kinds.get(kind, 0) + 1

    def quarantine(self, item: RawItem, reason: str, detail: str, obj: Any = None) -> None:
        raw_sha = item.sha256 or hashlib.sha256(item.raw).hexdigest()
        key = quarantine_key(item.source, item.line_number, raw_sha)
        if key in self.qkeys:
            self.duplicate("quarantine")
            return
        self.qkeys.add(key)
        self.qrows.append(
            quarantine_row(item, reason, detail, obj, raw_sha, self.hash_user, self.now, self.today)
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
