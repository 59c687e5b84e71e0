"""The offline store: accepted interactions and quarantine as day-partitioned parquet, plus a manifest.

Layout (a local folder or an fsspec URL such as s3://bucket/store):

    <store>/interactions/day=YYYY-MM-DD/part-<run>-<N>-<n>.parquet   INTERACTION_SCHEMA, by event day (UTC)
    <store>/quarantine/day=YYYY-MM-DD/part-<run>-<N>-<n>.parquet     QUARANTINE_SCHEMA, by quarantine day
    <store>/_manifest/<N>-<run>.json                                 commit N: its sources and files
    <store>/_guard/poison-state-<N>.json                             the poisoning detector's memory after commit N
    <store>/_staging/<run>/...                                       work in progress (never read)
    <store>/_lock                                                    local stores: an flock held by the writer

Commit protocol. The unit is a commit: one or more WHOLE sources (ingest groups consecutive sources
until about batch_size rows, so a run of many small files does not make many small parts), plus
the state that must move with those rows (the poisoning detector's memory). Commits are numbered
N = 1, 2, ... across all runs of a store (the order in which they happened; run ids are only labels).

1. stage   the commit's rows are written as parts, and its state files, under `_staging/<run>/<N>/`
           (temp file + fsync + rename on local disk, folders fsynced once; one PUT on S3, which is
           atomic per object).
2. intent  `_staging/<run>/commit-<N>.json` is written atomically: the manifest entries of the
           commit's sources plus the list of (staged, final) paths. THIS is the commit point.
3. publish each staged file is renamed to its final path (S3: copy + delete), the folders are
           fsynced; then `_manifest/<N>-<run>.json` is written atomically (so a manifest entry
           exists only once its rows are in place and durable); then the intent is deleted.

Recovery (`Store.recover`, run by every ingest before it reads the store): for every intent left in
`_staging`, roll forward: rename the parts still staged (a part already moved is skipped), write the
manifest file, delete the intent. Then delete everything else in `_staging`: the parts of commits
that never reached their intent. Every step is idempotent, so a crash during recovery is recovered
by the next one.

Hence after any SIGKILL plus a recovery, the store holds exactly the sources committed so far, each
completely: the same state an uninterrupted run had after the same sources (how sources are grouped
into commits changes file names only). Ingestion decides each source's records from that state
alone (sources in path order, records in file order, dedup against the store), so the re-run
writes exactly the rows the interrupted run had not committed.
Rows are therefore identical to an uninterrupted run's except for the run-dependent columns
(ingested_at, quarantined_at, the quarantine `day` derived from it) and file names.

A reader that lists `interactions/` while step 3 moves parts sees part of a commit: every row it
sees is final (never rolled back), so readers need no coordination.

Single writer: a local store is locked with flock (released by the kernel when the writer dies,
SIGKILL included). An object store has no lock: schedule at most one ingest per store at a time.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import secrets
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from features.home import agentloop_home
from features.readers import filesystem
from features.schema import INTERACTION_SCHEMA, QUARANTINE_SCHEMA, V2_COLUMNS, upgrade_v1_rows

INTERACTIONS = "interactions"
QUARANTINE = "quarantine"
MANIFEST = "_manifest"
GUARD = "_guard"
STAGING = "_staging"
LOCK = "_lock"
STORE_ENV = "AGENTLOOP_OFFLINE_STORE"
TABLES = {INTERACTIONS: INTERACTION_SCHEMA, QUARANTINE: QUARANTINE_SCHEMA}
# Test hook: SIGKILL this process at a point of the commit protocol, e.g. "after_intent:2" (the 2nd
# commit of the run), "staged:1", "published_part:3", "after_manifest:1". See _maybe_crash.
CRASH_ENV = "AGENTLOOP_INGEST_CRASH_AT"


def default_store() -> str:
    """$AGENTLOOP_OFFLINE_STORE, else $AGENTLOOP_HOME/store (the folder Feast's definitions read)."""
    if os.environ.get(STORE_ENV):
        return os.environ[STORE_ENV]
    home = agentloop_home()
    return str(home / "store")


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and unique: UTC time to the second plus 6 random hex digits."""
    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass
class ManifestEntry:
    """One committed source: what it was (to skip it next time if unchanged) and what it gave."""

    source: str
    size: int
    fingerprint: str  # etag:... or mtime:... as listed
    sha256: str  # of the file's bytes as read
    run_id: str
    seq: int  # the source's number in its run (sources are read in path order)
    committed_at: str
    commit: int = 0  # N of the commit that holds its rows
    counts: dict = field(default_factory=dict)
    parts: list = field(default_factory=list)  # final part paths, relative to the store

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "size": self.size,
            "fingerprint": self.fingerprint,
            "sha256": self.sha256,
            "run_id": self.run_id,
            "seq": self.seq,
            "committed_at": self.committed_at,
            "commit": self.commit,
            "counts": self.counts,
            "parts": self.parts,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ManifestEntry":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class RecoveryReport:
    """What Store.recover found left over by runs that did not finish."""

    rolled_forward: list[str] = field(default_factory=list)  # sources whose commit was completed
    discarded_runs: list[str] = field(default_factory=list)  # staging folders removed
    discarded_parts: int = 0  # staged parts of uncommitted sources, deleted


def _maybe_crash(point: str, n: int) -> None:
    """SIGKILL ourselves at `point` on its n-th occurrence when CRASH_ENV says so (tests only)."""
    want = os.environ.get(CRASH_ENV)
    if want and want == f"{point}:{n}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class Store:
    """An offline store at a local folder or fsspec URL."""

    def __init__(self, root: str | os.PathLike, options: dict | None = None, compression: str = "zstd"):
        self.url = os.fspath(root)
        self.compression = compression
        self.fs, self.root = filesystem(self.url, options)
        self.local = "://" not in self.url
        self._lock_file = None
        self._counters: dict[str, int] = {}

    # -- paths ------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def rel(self, path: str) -> str:
        return posixpath.relpath(path, self.root)

    # -- low-level atomic file operations ---------------------------------------------------------
    def _makedirs(self, folder: str) -> None:
        if self.local and not os.path.isdir(folder):
            os.makedirs(folder, exist_ok=True)
            _fsync_dir(os.path.dirname(folder))
        # Object stores have no folders.

    def write_bytes(self, path: str, data: bytes, sync_dir: bool = True) -> None:
        """Write a file so that it appears whole or not at all, and is durable when this returns
        (with sync_dir=False the caller fsyncs the folder: see sync_dirs)."""
        if not self.local:
            self.fs.pipe_file(path, data)
            return
        folder = os.path.dirname(path)
        self._makedirs(folder)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if sync_dir:
            _fsync_dir(folder)

    def sync_dirs(self, paths: Iterable[str]) -> None:
        """fsync the folders holding these files, once each (local disk; a no-op on object stores)."""
        if self.local:
            for folder in sorted({os.path.dirname(p) for p in paths}):
                _fsync_dir(folder)

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def rename(self, src: str, dst: str) -> None:
        """Move a file into place (local: atomic rename, the caller fsyncs the folder; S3: copy + delete)."""
        if self.local:
            self._makedirs(os.path.dirname(dst))
            os.replace(src, dst)
        else:
            self.fs.copy(src, dst)
            self.fs.rm_file(src)

    def remove_tree(self, path: str) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def ls(self, path: str) -> list[str]:
        """Names (full paths) directly under a folder; [] when it does not exist."""
        self.fs.invalidate_cache(path)
        try:
            return sorted(self.fs.ls(path, detail=False))
        except FileNotFoundError:
            return []

    # -- locking and recovery ---------------------------------------------------------------------
    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold the store's writer lock (local stores; object stores rely on scheduling)."""
        if not self.local:
            yield
            return
        import fcntl

        os.makedirs(self.root, exist_ok=True)
        f = open(self.path(LOCK), "a+b")
        try:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(
                    f"another ingest is writing the offline store {self.url} (it holds {self.path(LOCK)}); "
                    "wait for it to finish, or stop it"
                ) from None
            yield
        finally:
            f.close()

    def recover(self) -> RecoveryReport:
        """Finish the commits that reached their intent, discard the rest of _staging (idempotent)."""
        report = RecoveryReport()
        for run_dir in self.ls(self.path(STAGING)):
            names = self.ls(run_dir)
            for intent in sorted(n for n in names if posixpath.basename(n).startswith("commit-")):
                entries = self._publish(json.loads(self.read_bytes(intent)), intent)
                report.rolled_forward += [e.source for e in entries]
            for name in self.ls(run_dir):
                if not posixpath.basename(name).startswith("commit-"):
                    report.discarded_parts += sum(1 for f in self._find(name) if f.endswith(".parquet"))
            self.remove_tree(run_dir)
            report.discarded_runs.append(posixpath.basename(run_dir))
        if self.local:  # temp files of a manifest write that was killed (never read: dot-named)
            for name in self.ls(self.path(MANIFEST)):
                if posixpath.basename(name).startswith(".") and name.endswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name)
        return report

    def _find(self, path: str) -> list[str]:
        self.fs.invalidate_cache(path)
        if self.fs.isfile(path):
            return [path]
        return list(self.fs.find(path))

    def _publish(self, intent: dict, intent_path: str) -> list[ManifestEntry]:
        """Step 3 of the protocol, also recovery's roll-forward: move files, write the manifest, drop the intent."""
        finals = []
        for staged_rel, final_rel in intent["moves"]:
            staged, final = self.path(staged_rel), self.path(final_rel)
            finals.append(final)
            if self.exists(staged):
                self.rename(staged, final)
                _maybe_crash("published_part", self._bump("published_part"))
            elif not self.exists(final):
                raise RuntimeError(
                    f"offline store {self.url} is damaged: commit {intent_path} lists {final_rel}, which is "
                    f"neither staged ({staged_rel}) nor in place; restore it, or delete {intent_path} and re-ingest "
                    f"its sources: {[e['source'] for e in intent['entries']]}"
                )
        self.sync_dirs(finals)
        entries = [ManifestEntry.from_dict(e) for e in intent["entries"]]
        manifest = {k: intent[k] for k in ("number", "run_id", "files")}
        manifest["entries"] = [e.to_dict() for e in entries]
        self.write_bytes(
            self.path(MANIFEST, f"{intent['number']:010d}-{intent['run_id']}.json"), _json(manifest)
        )
        _maybe_crash("after_manifest", self._bump("after_manifest"))
        self.fs.rm_file(intent_path)
        return entries

    def _bump(self, point: str) -> int:
        self._counters[point] = self._counters.get(point, 0) + 1
        return self._counters[point]

    # -- the manifest -----------------------------------------------------------------------------
    def commits(self) -> list[dict]:
        """Every committed manifest file ({number, run_id, files, entries}), oldest first."""
        out = []
        for name in self.ls(self.path(MANIFEST)):
            base = posixpath.basename(name)
            if base.endswith(".json") and base[:1].isdigit():
                out.append(json.loads(self.read_bytes(name)))
        return sorted(out, key=lambda m: m["number"])

    def next_commit_number(self, commits: list[dict] | None = None) -> int:
        commits = self.commits() if commits is None else commits
        return commits[-1]["number"] + 1 if commits else 1

    def manifest(self, commits: list[dict] | None = None) -> dict[str, ManifestEntry]:
        """The latest committed entry per source path."""
        latest: dict[str, ManifestEntry] = {}
        for commit in self.commits() if commits is None else commits:
            for d in commit["entries"]:
                latest[d["source"]] = ManifestEntry.from_dict(d)
        return latest

    def latest_file(self, name: str, commits: list[dict] | None = None) -> str | None:
        """Full path of the newest committed state file called `name` (see StagedCommit.stage_file)."""
        for commit in reversed(self.commits() if commits is None else commits):
            if name in commit.get("files", {}):
                return self.path(commit["files"][name])
        return None

    def prune_files(self, name: str, keep: int = 2) -> None:
        """Delete the state files called `name` older than the `keep` newest commits that have one."""
        referenced = [c["files"][name] for c in self.commits() if name in c.get("files", {})]
        for old in referenced[:-keep] if keep else referenced:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path(old))

    # -- reading tables ---------------------------------------------------------------------------
    def part_files(self, table: str, start_day: str | None = None, end_day: str | None = None) -> list[str]:
        """Parquet parts of `interactions` or `quarantine`, optionally for days in [start_day, end_day]."""
        files = []
        for day_dir in self.ls(self.path(table)):
            name = posixpath.basename(day_dir)
            if not name.startswith("day="):
                continue
            day = name[4:]
            if (start_day and day < start_day) or (end_day and day > end_day):
                continue
            files += [
                f
                for f in self.ls(day_dir)
                if f.endswith(".parquet") and not posixpath.basename(f).startswith(".")
            ]
        return files

    def read_table(
        self,
        table: str,
        columns: list[str] | None = None,
        start_day: str | None = None,
        end_day: str | None = None,
    ) -> pa.Table:
        schema = TABLES[table]
        files = self.part_files(table, start_day, end_day)
        if not files:
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        # Explicit schema and file list: no hive discovery, whose dictionary-typed `day` would clash
        # with the `day` column the files carry.
        dataset = ds.dataset(
            files, schema=schema, format="parquet", filesystem=None if self.local else self.fs
        )
        if table == INTERACTIONS:
            # v1 parts lack the v2 columns (read as null): fill them as a v2 ingest would have.
            need = columns and [*columns, *(c for c in ("schema_version", "agent") if c not in columns)]
            rows = upgrade_v1_rows(dataset.to_table(columns=need))
            return rows.select(columns) if columns else rows
        return dataset.to_table(columns=columns)

    # -- migrating --------------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Rewrite the interaction parts written before schema v2 with its columns (hold writer_lock).

        Readers of this module read v1 parts as they are; Feast's file source and other readers of
        the folder need one schema in every part. Each part is rewritten in place (temp file +
        rename, so a reader sees the old part or the new one; the same name, so manifests stay
        true); rows keep their values and their `schema_version` 1. Idempotent: parts that have the
        v2 columns are not touched. Returns the parts rewritten (relative to the store).
        """
        done = []
        for part in self.part_files(INTERACTIONS):
            with self.fs.open(part, "rb") as f:
                names = set(pq.read_schema(f).names)
            if set(V2_COLUMNS) <= names:
                continue
            with self.fs.open(part, "rb") as f:
                old = pq.read_table(f)
            columns = {
                name: old.column(name) if name in names else pa.nulls(old.num_rows, field.type)
                for name, field in zip(INTERACTION_SCHEMA.names, INTERACTION_SCHEMA, strict=True)
            }
            table = upgrade_v1_rows(pa.table(columns).cast(INTERACTION_SCHEMA))
            if "day" not in names:  # a part that keeps its day in the folder name only stays so
                table = table.drop_columns(["day"])
            buf = io.BytesIO()
            pq.write_table(table, buf, compression=self.compression)
            self.write_bytes(part, buf.getvalue())
            done.append(self.rel(part))
        return done

    # -- writing ----------------------------------------------------------------------------------
    def begin_commit(self, run_id: str, number: int) -> "StagedCommit":
        return StagedCommit(self, run_id, number)

    def end_run(self, run_id: str) -> None:
        """Remove a finished run's (empty) staging folder."""
        self.remove_tree(self.path(STAGING, run_id))


class StagedCommit:
    """Commit N: the parts of one or more whole sources and state files, staged, then committed at once."""

    def __init__(self, store: Store, run_id: str, number: int):
        self.store = store
        self.run_id = run_id
        self.number = number
        self.rel_dir = posixpath.join(STAGING, run_id, f"{number:010d}")
        self.dir = store.path(self.rel_dir)
        self.moves: list[tuple[str, str]] = []  # (staged, final), relative to the store
        self.files: dict[str, str] = {}  # state file name -> final path, relative to the store
        self.rows = {INTERACTIONS: 0, QUARANTINE: 0}

    def write(self, table: str, rows: pa.Table) -> None:
        """Stage rows of one table, one part per day present in them (durable; folders synced at commit)."""
        if rows.num_rows == 0:
            return
        schema = TABLES[table]
        rows = rows.cast(schema) if rows.schema != schema else rows
        days = rows.column("day")
        distinct = sorted(set(days.to_pylist()))
        for day in distinct:
            part = rows.filter(pc.equal(days, day)) if len(distinct) > 1 else rows
            name = f"part-{self.run_id}-{self.number:010d}-{len(self.moves):04d}.parquet"
            final = posixpath.join(table, f"day={day}", name)
            staged = posixpath.join(self.rel_dir, table, f"day={day}", name)
            buf = io.BytesIO()
            pq.write_table(part, buf, compression=self.store.compression)
            self.store.write_bytes(self.store.path(staged), buf.getvalue(), sync_dir=False)
            self.moves.append((staged, final))
            self.rows[table] += part.num_rows
            _maybe_crash("staged", self.store._bump("staged"))

    def stage_file(self, name: str, data: bytes, folder: str = GUARD) -> None:
        """Stage a state file that becomes `<folder>/<name>-<N>.json` with this commit (Store.latest_file finds it)."""
        final = posixpath.join(folder, f"{name}-{self.number:010d}.json")
        staged = posixpath.join(self.rel_dir, folder, f"{name}.json")
        self.store.write_bytes(self.store.path(staged), data, sync_dir=False)
        self.moves.append((staged, final))
        self.files[name] = final

    def commit(self, entries: list[ManifestEntry]) -> list[ManifestEntry]:
        """Write the intent (the commit point), then publish the files and the manifest entries."""
        self.store.sync_dirs(self.store.path(staged) for staged, _ in self.moves)
        parts = [final for _, final in self.moves if final.endswith(".parquet")]
        for entry in entries:
            entry.parts = parts
            entry.commit = self.number
        intent = {
            "number": self.number,
            "run_id": self.run_id,
            "files": self.files,
            "entries": [e.to_dict() for e in entries],
            "moves": self.moves,
        }
        intent_path = self.store.path(STAGING, self.run_id, f"commit-{self.number:010d}.json")
        self.store.write_bytes(intent_path, _json(intent))
        _maybe_crash("after_intent", self.store._bump("after_intent"))
        published = self.store._publish(intent, intent_path)
        self.store.remove_tree(self.dir)  # empty folders by now (local disk)
        return published

    def abort(self) -> None:
        """Drop what was staged (an error in the middle of a source: nothing of the commit is kept)."""
        self.store.remove_tree(self.dir)


# ------------------------------------------------------------------------------------------------ helpers


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n"


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _utc(value: date | datetime | str) -> datetime:
    if isinstance(value, str):
        value = (
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            if "T" in value or " " in value
            else date.fromisoformat(value)
        )
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)


def read_interactions(
    store: str | os.PathLike | Store,
    start: date | datetime | str | None = None,
    end: date | datetime | str | None = None,
    *,
    columns: list[str] | None = None,
    options: dict | None = None,
) -> pa.Table:
    """Accepted interactions with start <= event_timestamp < end (a date means its midnight UTC), sorted.

    Only the day partitions that can hold such rows are read.
    """
    st = store if isinstance(store, Store) else Store(store, options)
    lo = _utc(start) if start is not None else None
    hi = _utc(end) if end is not None else None
    start_day = lo.date().isoformat() if lo else None
    end_day = (hi - timedelta(microseconds=1)).date().isoformat() if hi else None
    need = None if columns is None else list(dict.fromkeys([*columns, "event_timestamp", "interaction_id"]))
    table = st.read_table(INTERACTIONS, need, start_day, end_day)
    if lo is not None or hi is not None:
        ts = table.column("event_timestamp")
        mask = None
        if lo is not None:
            mask = pc.greater_equal(ts, pa.scalar(lo, pa.timestamp("us", tz="UTC")))
        if hi is not None:
            upper = pc.less(ts, pa.scalar(hi, pa.timestamp("us", tz="UTC")))
            mask = upper if mask is None else pc.and_(mask, upper)
        table = table.filter(mask)
    table = table.sort_by([("event_timestamp", "ascending"), ("interaction_id", "ascending")])
    return table.select(columns) if columns else table


def read_quarantine(store: str | os.PathLike | Store, *, options: dict | None = None) -> pa.Table:
    """Every quarantined record, sorted by source, line and reason."""
    st = store if isinstance(store, Store) else Store(store, options)
    table = st.read_table(QUARANTINE)
    return table.sort_by([("source", "ascending"), ("line_number", "ascending"), ("reason", "ascending")])


def read_manifest(
    store: str | os.PathLike | Store, *, options: dict | None = None
) -> dict[str, ManifestEntry]:
    """The latest manifest entry of every committed source."""
    st = store if isinstance(store, Store) else Store(store, options)
    return st.manifest()
