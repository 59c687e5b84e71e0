"""The offline store's previous format, read only to convert it to Delta Lake (features/store.py).

Until issue 15 the store was hand-written day-partitioned parquet plus a manifest:

    <store>/interactions/day=YYYY-MM-DD/part-*.parquet     INTERACTION_SCHEMA (v1 parts lack the v2 columns)
    <store>/quarantine/day=YYYY-MM-DD/part-*.parquet       QUARANTINE_SCHEMA
    <store>/_manifest/<N>-<run>.json                       commit N: {number, run_id, files, entries}
    <store>/_guard/<name>-<N>.json                         state files named by a commit's `files`
    <store>/_staging/<run>/...                             work in progress of a run that died

This module reads such a folder (and rewrites its schema v1 parts in place, as every ingest of that
format did first) so that Store.convert can write the same rows, manifest entries and state into
Delta tables. Nothing here writes the old format's commits: there is no commit protocol left.
"""

from __future__ import annotations

import io
import json
import os
import posixpath

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from features.schema import INTERACTION_SCHEMA, QUARANTINE_SCHEMA, V2_COLUMNS, upgrade_v1_rows

INTERACTIONS = "interactions"
QUARANTINE = "quarantine"
MANIFEST = "_manifest"
STAGING = "_staging"
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
