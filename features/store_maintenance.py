"""Compact and vacuum the offline store's Delta tables, keeping every version a caller still needs.

    report = maintain_store("/data/store", keep_from_version=12, retention_hours=168)

Ingest appends one small file per day partition per commit; compaction (delta-rs optimize.compact)
rewrites each partition's small files into few large ones, as a new version with the same rows.
The files it replaced stay on disk for time travel until a vacuum deletes them. What may be deleted
is decided by a retention, never by a model registry (workflows/maintenance.py turns the registry's
lineage into one):

- keep_from_version: every version of the interactions table from this one on stays readable
  (the oldest version a registered model's training set was read at);
- retention_hours: and every version committed in the last retention_hours.

The two become one moment, the cutoff: the earlier of keep_from_version's commit time and
now - retention_hours. Every version of every table (interactions, quarantine, _keys, _ledger) that
was current at the cutoff or committed after it keeps all its files (vacuum's keep_versions), so
a read of the store "as of" any kept version sees what it saw then; older versions lose the files
only they referenced. The kept versions are recorded in <store>/_meta/retention.json before anything
is compacted, and the recovery that every ingest runs honours them.

Safety with ingest: everything runs under the store's writer lock (the ingest's), after the same
recovery an ingest runs first, so no commit is half-written while tables are compacted; recovery
only ever looks at a table's latest commit, hence it must not find a compaction on top of an
unfinished commit. On an object store (no lock) run it when no ingest is writing; its vacuum leaves
files younger than OBJECT_STORE_GRACE_HOURS (an in-flight writer's data files) alone.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

from features.store import RETENTION_FILE, TABLE_CONFIGURATION, Store
from features.store_tables import INTERACTIONS, TABLES

log = logging.getLogger(__name__)

MAINTENANCE_KEY = "agentloop.maintenance"  # commit info of the compaction commits (no ingest commit N)
OBJECT_STORE_GRACE_HOURS = 1
DEFAULT_RETENTION_HOURS = 168.0  # Delta's own default (delta.deletedFileRetentionDuration)


@dataclass
class TableMaintenance:
    """What maintenance did to one table."""

    table: str
    version_before: int
    version_after: int
    keep_from_version: int  # the oldest version still readable (time travel) afterwards
    active_files_before: int  # data files the current version references
    active_files_after: int
    stored_files_before: int  # data files in the table's folder (kept versions' files included)
    stored_files_after: int
    files_compacted: int = 0  # replaced by compaction (numFilesRemoved)
    files_written: int = 0  # written by compaction (numFilesAdded)
    files_vacuumed: int = 0


@dataclass
class MaintenanceReport:
    """What maintain_store did, table by table (a dict of plain values: asdict(report))."""

    store: str
    keep_from_version: int | None
    retention_hours: float
    cutoff: str  # ISO time: versions current at or committed after it stay readable
    recovered: dict = field(default_factory=dict)
    tables: list[TableMaintenance] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def maintain_store(
    store: str | os.PathLike | Store,
    keep_from_version: int | None = None,
    retention_hours: float = DEFAULT_RETENTION_HOURS,
    *,
    options: dict | None = None,
    target_size: int | None = None,
    now: datetime | None = None,
) -> MaintenanceReport:
    """Compact every table of the store, then vacuum the files no kept version references.

    keep_from_version: interactions versions >= it stay readable (None: only the retention counts).
    target_size: compaction's target file size in bytes (None: delta-rs's default, 100 MiB).
    Raises ValueError for a version the interactions table never had, or a store in the old format.
    """
    st = store if isinstance(store, Store) else Store(store, options)
    if retention_hours < 0:
        raise ValueError(f"retention_hours must be >= 0, got {retention_hours}")
    if st.is_legacy():
        raise ValueError(
            f"offline store {st.url} is in the old parquet format: convert it first "
            "(python -m features.store migrate DIR)"
        )
    now = now or datetime.now(timezone.utc)
    with st.writer_lock():
        recovered = st.recover()
        tables = {t: dt for t in TABLES if (dt := st.delta(t)) is not None}
        cutoff = now - timedelta(hours=retention_hours)
        if keep_from_version is not None:
            cutoff = min(cutoff, _version_time(tables.get(INTERACTIONS), keep_from_version, st.url))
        floors = {t: _version_before(dt, cutoff) for t, dt in tables.items()}
        if keep_from_version is not None:  # commits in the same millisecond: never above the one asked for
            floors[INTERACTIONS] = min(floors[INTERACTIONS], keep_from_version)
        older = {t: v for t, v in st.retention_floors().items() if t in floors and v > floors[t]}
        if older:
            log.warning(
                "offline store %s: an earlier maintenance kept only versions from %s; versions below "
                "those may have lost files already",
                st.url,
                older,
            )
        # Recorded first: an ingest's recovery after a maintenance that died mid-way keeps them too.
        _record_floors(st, floors, cutoff)
        report = MaintenanceReport(
            st.url, keep_from_version, retention_hours, cutoff.isoformat(), recovered=asdict(recovered)
        )
        # Nothing read since the cutoff (retention 0): the version compaction replaces need not stay.
        latest_only = {t for t, dt in tables.items() if cutoff >= now and floors[t] == dt.version()}
        for table, dt in tables.items():
            done = _maintain_table(st, table, dt, floors[table], table in latest_only, target_size)
            floors[table] = done.keep_from_version
            report.tables.append(done)
        _record_floors(st, floors, cutoff)
    log.info(
        "offline store %s: compacted and vacuumed %s (readable from %s)",
        st.url,
        ", ".join(t.table for t in report.tables),
        floors,
    )
    return report


def _maintain_table(
    st: Store, table: str, dt, floor: int, latest_only: bool, target_size: int | None
) -> TableMaintenance:
    from deltalake import CommitProperties, PostCommitHookProperties

    if dt.metadata().configuration.get("delta.enableExpiredLogCleanup") != "false":
        dt.alter.set_table_properties(TABLE_CONFIGURATION)  # before any commit of ours makes a checkpoint
    before_version, before_active = dt.version(), len(dt.file_uris())
    before_stored = _stored_files(st, table)
    hooks = PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=False)
    metrics = dt.optimize.compact(
        target_size=target_size,
        commit_properties=CommitProperties(custom_metadata={MAINTENANCE_KEY: "compact"}),
        post_commithook_properties=hooks,
    )
    dt = st.delta(table)
    if latest_only:
        floor = dt.version()
    removed = dt.vacuum(
        retention_hours=0 if st.local else OBJECT_STORE_GRACE_HOURS,
        dry_run=False,
        enforce_retention_duration=False,
        post_commithook_properties=hooks,
        full=True,
        keep_versions=st.kept_versions(dt, floor),
    )
    dt = st.delta(table)
    return TableMaintenance(
        table=table,
        version_before=before_version,
        version_after=dt.version(),
        keep_from_version=floor,
        active_files_before=before_active,
        active_files_after=len(dt.file_uris()),
        stored_files_before=before_stored,
        stored_files_after=_stored_files(st, table),
        files_compacted=int(metrics.get("numFilesRemoved", 0)),
        files_written=int(metrics.get("numFilesAdded", 0)),
        files_vacuumed=len(removed),
    )


def _version_time(dt, version: int, where: str) -> datetime:
    """The commit time of a version of the interactions table."""
    if dt is None or version < 0 or version > dt.version():
        raise ValueError(
            f"offline store {where}: the interactions table has no version {version} "
            f"(current: {None if dt is None else dt.version()}); is this the store the lineage names?"
        )
    for info in dt.history():
        if int(info["version"]) == version:
            return datetime.fromtimestamp(info["timestamp"] / 1000, tz=timezone.utc)
    raise ValueError(f"offline store {where}: the log of interactions version {version} is gone")


def _version_before(dt, cutoff: datetime) -> int:
    """The newest version committed strictly before cutoff (0 if none): the one current at the cutoff.

    Strictly: of two commits in one millisecond the older counts, which keeps one version more.
    """
    ms = cutoff.timestamp() * 1000
    older = [int(i["version"]) for i in dt.history() if i["timestamp"] < ms]
    return max(older, default=0)


def _stored_files(st: Store, table: str) -> int:
    root = st.path(table)
    if not st.exists(root):
        return 0
    return sum(
        1
        for p in st.fs.find(root)
        if p.endswith(".parquet") and "_delta_log" not in posixpath.relpath(p, root).split("/")
    )


def _record_floors(st: Store, floors: dict[str, int], cutoff: datetime) -> None:
    """Store.retention_floors reads it back (every ingest's recovery)."""
    data = {"keep_from": floors, "cutoff": cutoff.isoformat()}
    st.write_bytes(st.path(*RETENTION_FILE), json.dumps(data, sort_keys=True).encode())
