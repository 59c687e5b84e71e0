"""The offline store's previous format, read only to convert it to Delta Lake (features/store.py).

Until issue 15 the store was hand-written day-partitioned parquet plus a manifest:

    <store>/interactions/day=YYYY-MM-DD/part-*.parquet     INTERACTION_SCHEMA (v1 parts lack the v2 columns)
    <store>/quarantine/day=YYYY-MM-DD/part-*.parquet       QUARANTINE_SCHEMA
    <store>/_manifest/<N>-<run>.json                       commit N: {number, run_id, files, entries}
    <store>/_guard/<name>-<N>.json                         state files named by a commit's `files`
    <store>/_staging/<run>/...                             work in progress of a run that died

This module reads such a folder (and rewrites its schema v1 parts in place, as every ingest of that
format did first) and `convert` writes the same rows, manifest entries and state into Delta tables. Nothing here writes the old format's commits: there is no commit protocol left.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import secrets
import shutil

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from features.schema import INTERACTION_SCHEMA, QUARANTINE_SCHEMA, V2_COLUMNS, upgrade_v1_rows
from features.store_tables import (
    INTERACTIONS,
    KEY_SCHEMA,
    KEYS,
    LEDGER,
    LEDGER_SCHEMA,
    PARTITIONED,
    QUARANTINE,
    ManifestEntry,
    ledger_row,
)
from features.store_tables import TABLES as DELTA_TABLES

log = logging.getLogger(__name__)

MANIFEST = "_manifest"
STAGING = "_staging"
CONVERTING = "_converting"  # convert writes the Delta tables here first
LEGACY = "_legacy"  # where convert keeps the old format's files
LEGACY_DIRS = (INTERACTIONS, QUARANTINE, MANIFEST, "_guard", STAGING)
TABLES = {INTERACTIONS: INTERACTION_SCHEMA, QUARANTINE: QUARANTINE_SCHEMA}


class LegacyStore:
    """A store folder in the pre-Delta layout, on the fsspec filesystem `fs` at `root`."""

    def __init__(self, fs, root: str, url: str, compression: str = "zstd"):
        self.fs, self.root, self.url, self.compression = fs, root, url, compression

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def ls(self, path: str) -> list[str]:
        self.fs.invalidate_cache(path)
        try:
            return sorted(self.fs.ls(path, detail=False))
        except FileNotFoundError:
            return []

    def unfinished_commits(self) -> list[str]:
        """Intents a run of the old format left in _staging: commits it had decided but not published."""
        return [
            name
            for run_dir in self.ls(self.path(STAGING))
            for name in self.ls(run_dir)
            if posixpath.basename(name).startswith("commit-")
        ]

    def commits(self) -> list[dict]:
        """Every committed manifest file ({number, run_id, files, entries}), oldest first."""
        out = []
        for name in self.ls(self.path(MANIFEST)):
            base = posixpath.basename(name)
            if base.endswith(".json") and base[:1].isdigit():
                out.append(json.loads(self.fs.cat_file(name)))
        return sorted(out, key=lambda m: m["number"])

    def latest_file(self, name: str, commits: list[dict]) -> bytes | None:
        """The newest committed state file called `name`, or None."""
        for commit in reversed(commits):
            if name in commit.get("files", {}):
                return self.fs.cat_file(self.path(commit["files"][name]))
        return None

    def part_files(self, table: str, start_day: str | None = None, end_day: str | None = None) -> list[str]:
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
        local = "://" not in self.url
        dataset = ds.dataset(files, schema=schema, format="parquet", filesystem=None if local else self.fs)
        if table == INTERACTIONS:
            # v1 parts lack the v2 columns (read as null): fill them as a v2 ingest would have.
            need = columns and [*columns, *(c for c in ("schema_version", "agent") if c not in columns)]
            rows = upgrade_v1_rows(dataset.to_table(columns=need))
            return rows.select(columns) if columns else rows
        return dataset.to_table(columns=columns)

    def migrate(self) -> list[str]:
        """Rewrite the interaction parts written before schema v2 with its columns, in place.

        Feast's file source and other readers of the folder need one schema in every part. Each part
        is rewritten under its own name (temp file + rename: a reader sees the old part or the new
        one); rows keep their values and their `schema_version` 1. Idempotent. Returns the parts
        rewritten (relative to the store).
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
            tmp = posixpath.join(posixpath.dirname(part), f".{posixpath.basename(part)}.{os.getpid()}.tmp")
            self.fs.pipe_file(tmp, buf.getvalue())
            self.fs.mv(tmp, part)
            done.append(posixpath.relpath(part, self.root))
        return done


def convert(store, legacy: LegacyStore) -> dict:
    """Convert `legacy`, the old format of features.store.Store `store`, to its Delta tables in place.

    The rows, manifest entries and latest side state are written as Delta tables under
    _converting/ (one commit per table; the old manifest's commit numbers are kept), then the
    old folders move to _legacy/ (kept: lineage that cites their files stays readable) and the
    new tables into place. A conversion killed midway starts over (before its tables were
    complete) or finishes the moves (after): see the `.done` marker.
    """
    from deltalake import write_deltalake

    work = store.path(CONVERTING)
    done_marker = posixpath.join(work, ".done")
    if not os.path.exists(done_marker):
        unfinished = legacy.unfinished_commits()
        if unfinished:
            raise RuntimeError(
                f"offline store {store.url} holds commits a run of the old format decided but did not "
                f"publish ({unfinished[0]}, ...): run that version's ingest once to recover them, then convert"
            )
        legacy.migrate()
        shutil.rmtree(work, ignore_errors=True)
        commits = legacy.commits()
        rows = legacy.read_table(INTERACTIONS)
        quarantine = legacy.read_table(QUARANTINE)
        ids = rows.column("interaction_id").to_pylist()
        first = sorted({i: n for n, i in reversed(list(enumerate(ids)))}.values())  # the first copy wins
        keys = rows.select(KEY_SCHEMA.names).take(pa.array(first, pa.int64()))
        state = {}
        names = {n for c in commits for n in c.get("files", {})}
        for name in sorted(names):
            state[name] = legacy.latest_file(name, commits).decode()
        ledger = [
            ledger_row(ManifestEntry.from_dict({**e, "commit": c["number"]}), c["number"])
            for c in commits
            for e in c["entries"]
        ]
        if ledger and state:
            ledger[-1]["state_json"] = json.dumps(state, sort_keys=True)
        tables = {
            INTERACTIONS: rows,
            QUARANTINE: quarantine,
            KEYS: keys,
            LEDGER: pa.Table.from_pylist(ledger, schema=LEDGER_SCHEMA),
        }
        for table, data in tables.items():
            write_deltalake(
                store.table_path(table, work),
                data.cast(DELTA_TABLES[table]),
                partition_by=["day"] if table in PARTITIONED else None,
                mode="append",
            )
        n = {"interactions": rows.num_rows, "quarantine": quarantine.num_rows, "commits": len(commits)}
        store.write_bytes(done_marker, json.dumps(n).encode())
    summary = json.loads(store.read_bytes(done_marker))
    os.makedirs(store.path(LEGACY), exist_ok=True)
    for name in LEGACY_DIRS:
        old = store.path(name)
        if os.path.isdir(old) and not os.path.isdir(posixpath.join(old, "_delta_log")):
            target = store.path(LEGACY, name)
            if os.path.exists(target):
                target = f"{target}-{secrets.token_hex(3)}"
            os.replace(old, target)
    for table in DELTA_TABLES:
        staged = store.table_path(table, work)
        if os.path.isdir(staged):
            os.replace(staged, store.path(table))
    shutil.rmtree(work, ignore_errors=True)
    log.info("converted the offline store %s to Delta tables: %s", store.url, summary)
    return summary
