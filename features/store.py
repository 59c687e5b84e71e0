"""The offline store: accepted interactions and quarantine as Delta Lake tables partitioned by day.

Layout (a local folder or s3:// prefix; every table is a Delta table written by delta-rs, `deltalake`):

    <store>/interactions/   INTERACTION_SCHEMA, partitioned by `day` (the event's UTC day)
    <store>/quarantine/     QUARANTINE_SCHEMA, partitioned by `day` (the day it was quarantined)
    <store>/_keys/          (interaction_id, content_hash) of every accepted row: the dedup index
    <store>/_ledger/        LEDGER_SCHEMA: one row per committed source (the manifest), plus the
                            side state (poisoning memory, open-trace buffer) of each commit
    <store>/_meta/          the user-id salt
    <store>/_lock           an flock held by the writer (local folders)

Why Delta: each table's commit is atomic (a data file counts only once its `_delta_log` names it),
versions can be read back (time travel: a training set cites the version it read), and Spark, Ray,
DuckDB and Polars read the same folders.

A commit of ingest (numbered N = 1, 2, ... across all runs) is one or more whole sources. Delta
commits one table at a time, so the four tables are written in a fixed order, each commit tagged
with N in its commit info (`agentloop.commit`):

    quarantine(N) -> _keys(N) (a MERGE on interaction_id: it never inserts an id twice) ->
    interactions(N) -> _ledger(N)

The ledger's commit is THE commit point: it carries the sources' manifest entries and the side
state, so they move together with the rows. Recovery (`Store.recover`, run by every ingest under
the lock before it reads anything): a table whose latest commit is tagged with an (N, run) the ledger
does not hold is restored to its version before it (RESTORE, a Delta commit of its own), then every
table is vacuumed of files no version references (data files of writes killed before their log
entry, and the rolled-back ones), so that a plain parquet reader of the folder (Feast's file
source) sees exactly the table. Each step is idempotent. Hence after any SIGKILL plus a recovery the
store holds exactly the commits the ledger names, each completely, and the re-run writes exactly
what the interrupted run had not committed.

A reader between a table's commit and the ledger's may see rows of a commit that is then rolled
back; a stable view is a recorded version (read_interactions(version=...)).

Maintenance (features/store_maintenance.py) compacts and vacuums under the same lock and records in
_meta/retention.json the oldest version of each table it keeps readable: recovery's vacuum keeps the
files of those versions too (the data files compaction replaced), so the folder then holds more
than the current version; readers of the table go through its log.

Single writer: a local store is locked with flock (released by the kernel when the writer dies);
a second ingest fails at once with a message naming the lock. The ledger commit also checks that
no other commit N landed meanwhile. On an object store (s3://, MinIO) there is no lock: delta-rs commits with conditional PUTs and
the MERGEs into _keys and _ledger refuse the second of two writers (CommitConflict).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import posixpath
import secrets
import sys
import tempfile
from datetime import date, datetime, timedelta, timezone
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from features.home import agentloop_home
from features.readers import filesystem
from features.schema import INTERACTION_SCHEMA, QUARANTINE_SCHEMA
from features.store_legacy import CONVERTING, LegacyStore, convert
from features.store_tables import (
    COMMIT_KEY,
    INTERACTIONS,
    KEY_SCHEMA,
    KEYS,
    LEDGER,
    LEDGER_SCHEMA,
    PARTITIONED,
    QUARANTINE,
    RUN_KEY,
    TABLES,
    WRITE_ORDER,
    CommitConflict,
    ManifestEntry,
    RecoveryReport,
    delta_storage,
    ledger_row,
    utc,
)

log = logging.getLogger(__name__)

LOCK = "_lock"
STORE_ENV = "AGENTLOOP_OFFLINE_STORE"
RETENTION_FILE = ("_meta", "retention.json")  # {table: the oldest version kept readable}, by maintenance
# delta-rs would delete commit files older than 30 days at checkpoints, which ends time travel to the
# versions they describe (a training set's lineage may cite one for months); maintenance decides instead.
TABLE_CONFIGURATION = {"delta.enableExpiredLogCleanup": "false"}


def default_store() -> str:
    """$AGENTLOOP_OFFLINE_STORE, else $AGENTLOOP_HOME/store (the folder Feast's definitions read)."""
    if os.environ.get(STORE_ENV):
        return os.environ[STORE_ENV]
    return str(agentloop_home() / "store")


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and unique: UTC time to the second plus 6 random hex digits."""
    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


class Store:
    """The offline store at a local folder."""

    def __init__(self, root: str | os.PathLike, options: dict | None = None, compression: str = "zstd"):
        self.url = os.fspath(root)
        self.compression = compression
        self.fs, self.root = filesystem(self.url, options)
        self.local = "://" not in self.url
        # delta-rs's own object-store client: on S3 it commits with conditional PUTs (see delta_storage)
        self.storage = None if self.local else delta_storage(self.url, options)
        self.base = self.root if self.local else self.url.rstrip("/")

    # -- paths and small files ----------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def exists(self, path: str) -> bool:
        return os.path.exists(path) if self.local else self.fs.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path) if self.local else self.fs.isdir(path)

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a small file so that it appears whole or not at all (temp file + fsync + rename; one PUT)."""
        if not self.local:
            self.fs.pipe_file(path, data)
            return
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    # -- tables -------------------------------------------------------------------------------------
    def table_path(self, table: str, root: str | None = None) -> str:
        return posixpath.join(root or self.base, table)

    def delta(self, table: str, version: int | None = None):
        """The DeltaTable `table` (at `version`), or None when it was never written."""
        from deltalake import DeltaTable

        uri = self.table_path(table)
        # Not DeltaTable.is_deltatable: it holds the GIL while it lists, which deadlocks an in-process S3
        # server (moto in tests) until the request times out.
        if not self.isdir(self.path(table, "_delta_log")):
            if version is not None:
                raise ValueError(
                    f"offline store {self.url}: {table} has no version {version}: it is not a Delta table"
                )
            return None
        return DeltaTable(uri, version=version, storage_options=self.storage)

    def table_version(self, table: str = INTERACTIONS) -> int | None:
        """The current version of a table (None before its first write, or in the old format)."""
        dt = None if self.is_legacy() else self.delta(table)
        return None if dt is None else dt.version()

    def ensure_tables(self) -> None:
        """Create the empty tables (version 0) a first ingest writes into; an existing one is left alone."""
        from deltalake import write_deltalake

        for table, schema in TABLES.items():
            if self.delta(table) is None:
                write_deltalake(
                    self.table_path(table),
                    schema.empty_table(),
                    partition_by=["day"] if table in PARTITIONED else None,
                    mode="append",
                    configuration=TABLE_CONFIGURATION,
                    storage_options=self.storage,
                )

    def read_table(
        self,
        table: str,
        columns: list[str] | None = None,
        start_day: str | None = None,
        end_day: str | None = None,
        version: int | None = None,
    ) -> pa.Table:
        """Rows of a table (at `version`), optionally only the day partitions in [start_day, end_day]."""
        if self.is_legacy():
            if version is not None:
                raise ValueError(f"offline store {self.url} is in the old parquet format: it has no versions")
            return self._legacy().read_table(table, columns, start_day, end_day)
        schema = TABLES[table]
        dt = self.delta(table, version)
        if dt is None:
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        flt = None
        if table in PARTITIONED:  # a filter on the partition column: only those days' files are opened
            if start_day:
                flt = ds.field("day") >= start_day
            if end_day:
                upper = ds.field("day") <= end_day
                flt = upper if flt is None else flt & upper
        rows = dt.to_pyarrow_dataset().to_table(columns=columns, filter=flt)
        want = pa.schema([schema.field(n) for n in (columns or schema.names)])
        return rows.select(want.names).cast(want)

    # -- locking and recovery -----------------------------------------------------------------------
    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold the store's writer lock (flock: the kernel releases it when the writer dies).

        An object store has no lock: Delta's conflict checks (a MERGE into _keys and _ledger that
        read what they change) refuse the second of two writers instead.
        """
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
        """Undo table commits of an ingest commit the ledger never got; vacuum unreferenced files."""
        report = RecoveryReport()
        if self.is_legacy():
            return report
        committed = self._committed()
        for table in WRITE_ORDER:
            dt = self.delta(table)
            if dt is None:
                continue
            info = dt.history(limit=1)[0]
            n = int(info.get(COMMIT_KEY) or 0)
            if n and (n, info.get(RUN_KEY)) not in committed:
                dt.restore(dt.version() - 1)
                report.rolled_back[table] = n
        floors = self.retention_floors()
        for table in TABLES:
            dt = self.delta(table)
            if dt is not None:
                keep = None if table not in floors else self.kept_versions(dt, floors[table], committed)
                removed = dt.vacuum(
                    retention_hours=0,
                    dry_run=False,
                    enforce_retention_duration=False,
                    full=True,
                    keep_versions=keep,
                )
                report.vacuumed_files += len(removed)
        return report

    def retention_floors(self) -> dict[str, int]:
        """{table: oldest version kept readable}, as the last maintenance recorded it ({} before any)."""
        path = self.path(*RETENTION_FILE)
        return json.loads(self.read_bytes(path))["keep_from"] if self.exists(path) else {}

    def kept_versions(self, dt, floor: int, committed: set[tuple[int, str]] | None = None) -> list[int]:
        """The versions >= floor of a table whose files a vacuum must keep: all but rolled-back commits.

        A write of ingest commit N that the ledger never got was undone by RESTORE; its files belong to
        no version a reader may ask for, and a vacuum that kept them would leave them in the folder.
        """
        committed = self._committed() if committed is None else committed
        undone = {
            int(info["version"])
            for info in dt.history()
            if int(info.get(COMMIT_KEY) or 0)
            and (int(info[COMMIT_KEY]), info.get(RUN_KEY)) not in committed
            and int(info["version"]) >= floor
        }
        return [v for v in range(floor, dt.version() + 1) if v not in undone]

    # -- the ledger (manifest and side state) -------------------------------------------------------
    def _committed(self) -> set[tuple[int, str]]:
        """(N, run id) of every commit the ledger holds."""
        dt = self.delta(LEDGER)
        if dt is None:
            return set()
        t = dt.to_pyarrow_dataset().to_table(columns=["commit", "run_id"])
        return set(zip(t.column("commit").to_pylist(), t.column("run_id").to_pylist(), strict=True))

    def last_commit(self) -> int:
        dt = self.delta(LEDGER)
        if dt is None:
            return 0
        numbers = dt.to_pyarrow_dataset().to_table(columns=["commit"]).column("commit")
        return int(pc.max(numbers).as_py() or 0) if len(numbers) else 0

    def commits(self) -> list[dict]:
        """Every committed commit ({number, run_id, entries, state}), oldest first."""
        if self.is_legacy():
            legacy = self._legacy().commits()
            return [{**c, "state": {}} for c in legacy]
        rows = self.read_table(LEDGER).to_pylist()
        out: dict[int, dict] = {}
        for r in sorted(rows, key=lambda r: (r["commit"], r["seq"])):
            c = out.setdefault(
                r["commit"], {"number": r["commit"], "run_id": r["run_id"], "entries": [], "state": {}}
            )
            c["entries"].append(
                {
                    **{k: r[k] for k in ManifestEntry.__dataclass_fields__ if k in r},
                    "counts": json.loads(r["counts_json"]),
                }
            )
            c["entries"][-1]["commit"] = r["commit"]
            if r["state_json"]:
                c["state"].update(json.loads(r["state_json"]))
        return [out[n] for n in sorted(out)]

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

    def latest_state(self, name: str, commits: list[dict] | None = None) -> bytes | None:
        """The newest committed side state called `name` (see Commit.stage_file), or None."""
        for commit in reversed(self.commits() if commits is None else commits):
            if name in commit["state"]:
                return commit["state"][name].encode()
        return None

    # -- the old format -----------------------------------------------------------------------------
    def _legacy(self) -> LegacyStore:
        return LegacyStore(self.fs, self.root, self.url, self.compression)

    def is_legacy(self) -> bool:
        """True for a store (or a conversion) in the parquet + manifest format of before issue 15."""
        if self.isdir(self.path(CONVERTING)) or self.isdir(self.path("_manifest")):
            return True
        return any(
            self.isdir(self.path(t)) and not self.isdir(self.path(t, "_delta_log"))
            for t in (INTERACTIONS, QUARANTINE)
        )

    def migrate(self) -> list[str]:
        """Rewrite old-format interaction parts written before schema v2 with its columns (hold writer_lock).

        Only stores in the old format have such parts (Delta tables are written at v2); Feast's file
        source needs one schema in every part. Returns the parts rewritten (relative to the store).
        """
        return self._legacy().migrate() if self.is_legacy() else []

    def convert(self) -> dict | None:
        """Convert an old-format store to Delta tables in place (hold writer_lock); None if nothing to do.

        See features.store_legacy.convert: rows, manifest and side state become the Delta tables,
        the old files are kept under _legacy/.
        """
        if not self.is_legacy():
            return None
        if not self.local:
            raise NotImplementedError(
                f"offline store {self.url} is in the old parquet format: convert a local copy "
                "(python -m features.store migrate DIR), then upload it"
            )
        return convert(self, self._legacy())

    # -- writing ------------------------------------------------------------------------------------
    def begin_commit(self, run_id: str, number: int) -> "Commit":
        return Commit(self, run_id, number)


class Commit:
    """Ingest commit N: rows of one or more whole sources and side state, written as one commit per table."""

    def __init__(self, store: Store, run_id: str, number: int):
        self.store = store
        self.run_id = run_id
        self.number = number
        self.tables: dict[str, list[pa.Table]] = {INTERACTIONS: [], QUARANTINE: []}
        self.state: dict[str, str] = {}
        self.rows = {INTERACTIONS: 0, QUARANTINE: 0}

    def write(self, table: str, rows: pa.Table) -> None:
        """Add rows of one table to the commit (held in memory until commit: ingest bounds a commit's size)."""
        if rows.num_rows == 0:
            return
        schema = TABLES[table]
        self.tables[table].append(rows.cast(schema) if rows.schema != schema else rows)
        self.rows[table] += rows.num_rows

    def stage_file(self, name: str, data: bytes) -> None:
        """Side state committed with the rows (Store.latest_state reads it back)."""
        self.state[name] = data.decode()

    def _properties(self):
        from deltalake import CommitProperties

        return CommitProperties(custom_metadata={COMMIT_KEY: str(self.number), RUN_KEY: self.run_id})

    def commit(self, entries: list[ManifestEntry]) -> list[ManifestEntry]:
        """Write quarantine, keys and interactions, then the ledger rows: the commit point."""
        st = self.store
        quarantine = _concat(self.tables[QUARANTINE], QUARANTINE_SCHEMA)
        rows = _concat(self.tables[INTERACTIONS], INTERACTION_SCHEMA)
        if quarantine.num_rows:
            _write(st, QUARANTINE, quarantine, self._properties())
        if rows.num_rows:
            keys = rows.select(KEY_SCHEMA.names)
            inserted = _merge_keys(st, keys, self._properties())
            if inserted != keys.num_rows:
                raise CommitConflict(
                    f"offline store {st.url}: commit {self.number} would store {keys.num_rows - inserted} "
                    "interaction ids the store already holds (another writer, or a dedup index out of "
                    "date); nothing of this commit is kept"
                )
            _write(st, INTERACTIONS, rows, self._properties())
        for entry in entries:
            entry.commit = self.number
        ledger = [ledger_row(e, self.number) for e in entries]
        if ledger and self.state:
            ledger[-1]["state_json"] = json.dumps(self.state, sort_keys=True)
        if st.last_commit() != self.number - 1:
            raise CommitConflict(
                f"offline store {st.url}: another writer committed commit {st.last_commit()} while this run "
                f"wrote commit {self.number}; re-run the ingest (recovery undoes this run's partial commit)"
            )
        # A MERGE, not an append: it reads the ledger, so a concurrent commit to it fails this one.
        merged = (
            st.delta(LEDGER)
            .merge(
                pa.Table.from_pylist(ledger, schema=LEDGER_SCHEMA),
                "t.commit = s.commit",
                source_alias="s",
                target_alias="t",
                commit_properties=self._properties(),
            )
            .when_not_matched_insert_all()
            .execute()
        )
        if merged["num_target_rows_inserted"] != len(ledger):
            raise CommitConflict(
                f"offline store {st.url}: another writer committed commit {self.number} first"
            )
        return entries

    def abort(self) -> None:
        """Undo whatever of this commit reached a table (the ledger never got it)."""
        self.tables = {INTERACTIONS: [], QUARANTINE: []}
        self.store.recover()


def _concat(parts: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _merge_keys(store: Store, keys: pa.Table, properties) -> int:
    """MERGE the (id, content hash) of new rows into _keys, inserting only ids it lacks; returns how many."""
    merged = (
        store.delta(KEYS)
        .merge(
            keys,
            "t.interaction_id = s.interaction_id",
            source_alias="s",
            target_alias="t",
            commit_properties=properties,
        )
        .when_not_matched_insert_all()
        .execute()
    )
    return merged["num_target_rows_inserted"]


def _write(store: Store, table: str, rows: pa.Table, properties) -> None:
    from deltalake import WriterProperties, write_deltalake

    codec = None if store.compression == "none" else store.compression.upper()
    write_deltalake(
        store.table_path(table),
        rows,
        partition_by=["day"] if table in PARTITIONED else None,
        mode="append",
        writer_properties=WriterProperties(compression=codec or "UNCOMPRESSED"),
        commit_properties=properties,
        storage_options=store.storage,
    )


# ------------------------------------------------------------------------------------------------ readers


def _store(store: str | os.PathLike | Store, options: dict | None) -> Store:
    return store if isinstance(store, Store) else Store(store, options)


def read_interactions(
    store: str | os.PathLike | Store,
    start: date | datetime | str | None = None,
    end: date | datetime | str | None = None,
    *,
    columns: list[str] | None = None,
    options: dict | None = None,
    version: int | None = None,
) -> pa.Table:
    """Accepted interactions with start <= event_timestamp < end (a date means its midnight UTC), sorted.

    Only the day partitions that can hold such rows are read. `version`: the interactions table as
    it was at that Delta version (time travel; table_version gives the current one).
    """
    st = _store(store, options)
    lo = utc(start) if start is not None else None
    hi = utc(end) if end is not None else None
    start_day = lo.date().isoformat() if lo else None
    end_day = (hi - timedelta(microseconds=1)).date().isoformat() if hi else None
    need = None if columns is None else list(dict.fromkeys([*columns, "event_timestamp", "interaction_id"]))
    table = st.read_table(INTERACTIONS, need, start_day, end_day, version=version)
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


def read_quarantine(
    store: str | os.PathLike | Store, *, options: dict | None = None, version: int | None = None
) -> pa.Table:
    """Every quarantined record, sorted by source, line and reason."""
    table = _store(store, options).read_table(QUARANTINE, version=version)
    return table.sort_by([("source", "ascending"), ("line_number", "ascending"), ("reason", "ascending")])


def read_manifest(
    store: str | os.PathLike | Store, *, options: dict | None = None
) -> dict[str, ManifestEntry]:
    """The latest manifest entry of every committed source."""
    return _store(store, options).manifest()


def table_version(
    store: str | os.PathLike | Store, table: str = INTERACTIONS, *, options: dict | None = None
) -> int | None:
    """The current Delta version of a table of the store (None when it has none): what lineage records."""
    return _store(store, options).table_version(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m features.store", description="Offline store maintenance."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    migrate = sub.add_parser(
        "migrate", help="convert a store in the old parquet + manifest format to Delta tables"
    )
    migrate.add_argument("root", help="the store folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    store = Store(args.root)
    with store.writer_lock():
        summary = store.convert()
    print(json.dumps(summary) if summary else f"{args.root}: already Delta tables, nothing to convert")
    return 0


if __name__ == "__main__":
    sys.exit(main())
