"""Per-agent daily aggregates of the interactions dataset, written as a parquet dataset Feast serves.

    python -m features.aggregates --store $AGENTLOOP_HOME/store [--day 2025-01-07 ...]

Feast's file source cannot aggregate, so the `agent_daily_stats` feature view
(features/repo/definitions.py) reads what write_agent_daily_stats writes:
<store>/agent_daily_stats/day=YYYY-MM-DD/part-0.parquet, one row per agent that served that day.
Each row's event_timestamp is the end of its day (the next midnight, UTC): a day's figures are
final then, so neither a point-in-time join nor materialization shows a day that is not over.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

INTERACTIONS_DIR = "interactions"
STATS_DIR = "agent_daily_stats"
# Hive partitioning with the partition's type fixed: `day` stays a string whether or not the
# writer also stored it inside the files.
DAY_PARTITIONING = ds.partitioning(pa.schema([("day", pa.string())]), flavor="hive")

STATS_SCHEMA = pa.schema(
    [
        ("agent", pa.string()),
        ("day", pa.string()),
        ("event_timestamp", pa.timestamp("us", tz="UTC")),  # end of `day`: when its figures are final
        ("computed_at", pa.timestamp("us", tz="UTC")),
        ("n_interactions", pa.int64()),
        ("n_rated", pa.int64()),
        ("mean_rating", pa.float64()),  # null when nothing was rated that day
        ("error_rate", pa.float64()),
        ("p95_latency_ms", pa.float64()),
        ("mean_total_tokens", pa.float64()),
    ],
    metadata={"agentloop.schema": "agent_daily_stats", "agentloop.schema_version": "1"},
)

_COLUMNS = [
    "interaction_id",
    "agent",
    "day",
    "ingested_at",
    "rating",
    "has_error",
    "latency_ms",
    "total_tokens",
]


@dataclass
class DailyStatsReport:
    """What write_agent_daily_stats wrote."""

    out_dir: str
    days: list[str] = field(default_factory=list)
    rows: int = 0
    removed_days: list[str] = field(default_factory=list)


def filesystem_and_path(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local folder or an s3:// prefix (AWS_* variables apply)."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def interactions_dataset(store_dir: str | os.PathLike) -> ds.Dataset:
    """The interactions dataset of an offline store (hive-partitioned by day) as a pyarrow dataset.

    A Delta table is read at its current version, through its log: after maintenance the folder
    also holds the files compaction replaced (kept for time travel), which a plain folder read would
    count twice.
    """
    from features.store import Store

    dt = Store(str(store_dir)).delta(INTERACTIONS_DIR)
    if dt is not None:
        return dt.to_pyarrow_dataset()
    fs, root = filesystem_and_path(str(store_dir))
    path = f"{root.rstrip('/')}/{INTERACTIONS_DIR}"
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise FileNotFoundError(
            f"no interactions dataset at {store_dir}/{INTERACTIONS_DIR}: ingest logs first "
            "(features.ingest writes <store>/interactions/day=YYYY-MM-DD/part-*.parquet)"
        )
    return ds.dataset(path, filesystem=fs, format="parquet", partitioning=DAY_PARTITIONING)


def compute_agent_daily_stats(interactions: pd.DataFrame, computed_at: datetime) -> pd.DataFrame:
    """One row per (agent, day) of STATS_SCHEMA from interaction rows (INTERACTION_SCHEMA columns).

    An interaction stored twice (re-ingested) counts once, as its most recently ingested copy.
    p95 latency interpolates linearly between the two nearest interactions.
    """
    if interactions.empty:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in STATS_SCHEMA.names})
    rows = interactions.sort_values("ingested_at", kind="stable").drop_duplicates(
        "interaction_id", keep="last"
    )
    grouped = rows.groupby(["agent", "day"], sort=True, observed=True)
    stats = grouped.agg(
        n_interactions=("interaction_id", "size"),
        n_rated=("rating", "count"),
        mean_rating=("rating", "mean"),
        error_rate=("has_error", "mean"),
        p95_latency_ms=("latency_ms", lambda s: s.quantile(0.95)),
        mean_total_tokens=("total_tokens", "mean"),
    ).reset_index()
    stats["event_timestamp"] = [
        datetime.combine(date.fromisoformat(d), time(), tzinfo=timezone.utc) + timedelta(days=1)
        for d in stats["day"]
    ]
    stats["computed_at"] = computed_at
    return stats[STATS_SCHEMA.names]


def write_agent_daily_stats(
    store_dir: str | os.PathLike,
    days: Iterable[str | date] | None = None,
    *,
    computed_at: datetime | None = None,
) -> DailyStatsReport:
    """Recompute the daily stats of `days` (default: every day in the store) and replace their partitions.

    Run it after each ingestion of those days and before materializing. A requested day that has
    no interactions any more loses its partition. Each partition is written to a hidden temporary
    file and renamed, so a reader sees the old file or the new one.
    """
    computed_at = computed_at or datetime.now(timezone.utc)
    dataset = interactions_dataset(store_dir)
    wanted = (
        None if days is None else sorted({d.isoformat() if isinstance(d, date) else str(d) for d in days})
    )
    columns = [c for c in _COLUMNS if c in dataset.schema.names]
    missing = sorted(set(_COLUMNS) - set(columns))
    if missing:
        raise ValueError(
            f"interactions dataset at {store_dir} lacks columns {missing} (see features/schema.py)"
        )
    if wanted is not None and not wanted:
        return DailyStatsReport(out_dir=f"{store_dir}/{STATS_DIR}")
    flt = None if wanted is None else ds.field("day").isin(wanted)
    frame = dataset.to_table(columns=columns, filter=flt).to_pandas()
    stats = compute_agent_daily_stats(frame, computed_at)

    fs, root = filesystem_and_path(str(store_dir))
    out = f"{root.rstrip('/')}/{STATS_DIR}"
    report = DailyStatsReport(out_dir=f"{store_dir}/{STATS_DIR}")
    written = set()
    for day, rows in stats.groupby("day", sort=True):
        table = pa.Table.from_pandas(rows, schema=STATS_SCHEMA, preserve_index=False)
        _write_partition(fs, f"{out}/day={day}", table)
        written.add(day)
        report.days.append(day)
        report.rows += table.num_rows
    for day in wanted or []:
        folder = f"{out}/day={day}"
        if day not in written and fs.get_file_info(folder).type == pafs.FileType.Directory:
            fs.delete_dir(folder)
            report.removed_days.append(day)
    return report


def _write_partition(fs: pafs.FileSystem, folder: str, table: pa.Table) -> None:
    fs.create_dir(folder, recursive=True)
    # Readers skip names starting with "." (pyarrow and dask both do).
    tmp = f"{folder}/.part-0.parquet.{os.getpid()}.tmp"
    with fs.open_output_stream(tmp) as sink:
        pq.write_table(table, sink)
    fs.move(tmp, f"{folder}/part-0.parquet")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agentloop-daily-stats", description=write_agent_daily_stats.__doc__
    )
    parser.add_argument("--store", required=True, help="offline store root (folder or s3://bucket/prefix)")
    parser.add_argument(
        "--day", action="append", type=date.fromisoformat, help="YYYY-MM-DD; repeat; default: all days"
    )
    args = parser.parse_args(argv)
    report = write_agent_daily_stats(args.store, args.day)
    print(
        f"wrote {report.rows} rows for {len(report.days)} days to {report.out_dir}"
        + (f"; removed {report.removed_days}" if report.removed_days else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
