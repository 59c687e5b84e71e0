"""Feast historical retrieval of 30 of 365 days from the Delta interactions table: time and peak memory.

    .venv/bin/python bench/feast_offline.py [--per-day 100] [--days 365] [--commits-per-day 2] [--window 30] [--repeat 2]

Builds a synthetic store (`days` day partitions of `per-day` interactions with ~1 KB of
conversation each, every day written by `commits-per-day` Delta commits as ingest runs write them),
then, each configuration in a child process of its own, applies the definitions and calls
features.feast_store.get_training_frame for the last `window` days (the entity frame is read from
the Delta table with partition pruning; Feast joins the `training_v1` features). Configurations:

  file-parquet   Feast's file (dask) offline store, the day partitions' files read as hive parquet
                 (the repo today: path <store>/interactions/day=*/*.parquet)
  file-delta     the file offline store on the table's folder with file_format=DeltaFormat()
  duckdb-delta   Feast's DuckDB offline store (ibis) with DeltaFormat: DuckDB's delta_scan

then `compacted-file-parquet` and `compacted-duckdb-delta`: the same two after
features.store_maintenance compacted the table keeping every version (the folder then holds every
row twice: the replaced files stay for time travel, and a hive-parquet read sees both).
Prints `name: value` lines.
DuckDB's delta extension comes from the duckdb-extension-delta wheel (the machine has no internet):
it is installed into DuckDB's extension folder once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

END = date(2025, 12, 31)
CONFIGS = ("file-parquet", "file-delta", "duckdb-delta")


def synthetic_store(store: Path, days: int, per_day: int, commits: int, seed: int = 0) -> int:
    """`days` days of `per_day` interactions, each day in `commits` Delta commits (one per ingest run
    that day); returns the interactions table version."""
    import numpy as np
    import pyarrow as pa

    from features.schema import INTERACTION_SCHEMA
    from features.store import Store, _write

    st = Store(store)
    st.ensure_tables()
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(500)]
    agents = ["agent-bruno", "agent-auditor", "agent-jamie", "agent-mary-kay"]
    for d in range(days):
        day = END - timedelta(days=days - 1 - d)
        start = datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc)
        ts = [start + timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 86_400, per_day))]
        text = [" ".join(rng.choice(words, 150)) for _ in range(per_day)]
        cols = {}
        for f in INTERACTION_SCHEMA:
            if pa.types.is_timestamp(f.type):
                cols[f.name] = pa.array(ts, f.type)
            elif pa.types.is_integer(f.type):
                cols[f.name] = pa.array(rng.integers(0, 5, per_day), f.type)
            elif pa.types.is_floating(f.type):
                cols[f.name] = pa.array(rng.random(per_day) * 900, f.type)
            elif pa.types.is_boolean(f.type):
                cols[f.name] = pa.array(rng.random(per_day) < 0.05)
            else:
                cols[f.name] = pa.array([""] * per_day, f.type)
        ids = [f"{day.isoformat()}-{i:05d}" for i in range(per_day)]
        cols.update(
            interaction_id=pa.array(ids),
            agent=pa.array([agents[i % 4] for i in range(per_day)]),
            session_id=pa.array([f"s-{x}" for x in ids]),
            day=pa.array([day.isoformat()] * per_day),
            messages_json=pa.array([json.dumps([{"role": "user", "content": t}]) for t in text]),
            last_user_message=pa.array(text),
            agent_reply=pa.array([t[::-1] for t in text]),
            rating=pa.array(rng.integers(1, 6, per_day), pa.int32()),
            schema_version=pa.array([2] * per_day, pa.int32()),
        )
        table = pa.table(cols, schema=INTERACTION_SCHEMA)
        step = -(-per_day // commits)
        for lo in range(0, per_day, step):
            _write(st, "interactions", table.slice(lo, step), None)
    return st.table_version()


def _repo(work: Path, config: str, store: Path) -> tuple[str, str]:
    """A definitions folder and feature_store.yaml for one configuration (copies of features/repo's)."""
    repo = work / f"repo-{config}"
    repo.mkdir(parents=True, exist_ok=True)
    src = (ROOT / "features" / "repo" / "definitions.py").read_text()
    if config.endswith("-delta"):
        src = src.replace(
            "from feast import ", "from feast.data_format import DeltaFormat\nfrom feast import ", 1
        )
        glob = '    path=f"{OFFLINE_STORE}/interactions/{INTERACTION_FILES}",\n'
        assert glob in src, "features/repo/definitions.py changed: update the bench"
        src = src.replace(glob, '    path=f"{OFFLINE_STORE}/interactions",\n    file_format=DeltaFormat(),\n')
    (repo / "definitions.py").write_text(src)
    yaml = (ROOT / "features" / "repo" / "feature_store.yaml").read_text()
    if config.startswith("duckdb"):
        yaml = re.sub(r"offline_store:\n  type: file[^\n]*", "offline_store:\n  type: duckdb", yaml)
    (repo / "feature_store.yaml").write_text(yaml)
    return str(repo), str(work / f"state-{config}")


def _install_duckdb_delta() -> None:
    import glob

    import duckdb
    import duckdb_extension_delta

    path = glob.glob(os.path.join(os.path.dirname(duckdb_extension_delta.__file__), "extensions", "*", "*"))[
        0
    ]
    duckdb.connect().execute(f"INSTALL '{path}'")


def child(config: str, store: str, work: str, window: int, repeat: int) -> None:
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import pandas as pd

    from features.feast_store import FeastConfig, apply, get_training_frame

    if config.startswith("duckdb"):
        _install_duckdb_delta()
    repo, state = _repo(Path(work), config, Path(store))
    os.makedirs(state, exist_ok=True)
    feast = FeastConfig(
        repo_path=repo,
        feature_store_yaml=f"{repo}/feature_store.yaml",
        offline_store=store,
        registry=f"{state}/registry.db",
        work_dir=state,
    )
    apply(feast)
    rss_ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, end = END - timedelta(days=window - 1), END + timedelta(days=1)
    times, frame = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        frame = get_training_frame(feast, start, end, exclude_guard_flags=False)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame.astype(str), index=False).values).hexdigest()
    print(
        json.dumps(
            {
                "rows": len(frame),
                "seconds": times,
                "rss_imports_mib": rss0 / 1024,
                "rss_ready_mib": rss_ready / 1024,
                "rss_peak_mib": peak / 1024,
                "digest": digest,
            }
        )
    )


def _last_frame(stderr: str) -> str:
    frames = [line.strip() for line in stderr.splitlines() if line.strip().startswith("File ")]
    return frames[-1][:200] if frames else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--per-day", type=int, default=100)
    parser.add_argument("--commits-per-day", type=int, default=2)
    parser.add_argument("--window", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--configs", default=",".join([*CONFIGS, "compacted-file-parquet", "compacted-duckdb-delta"])
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.store, args.work, args.window, args.repeat)
        return 0

    with tempfile.TemporaryDirectory(prefix="agentloop-feast-offline-") as tmp:
        store = Path(tmp) / "store"
        t0 = time.perf_counter()
        version = synthetic_store(store, args.days, args.per_day, args.commits_per_day)
        size = sum(p.stat().st_size for p in (store / "interactions").rglob("*.parquet"))
        print(f"store_days: {args.days}")
        print(f"store_commits_per_day: {args.commits_per_day}")
        print(f"store_rows: {args.days * args.per_day}")
        print(f"store_parquet_mib: {size / 2**20:.1f}")
        print(f"store_table_version: {version}")
        print(f"store_build_s: {time.perf_counter() - t0:.1f}")
        print(f"window_days: {args.window}")
        digests, compacted = {}, False
        for config in args.configs.split(","):
            name = config
            if config.startswith("compacted-"):
                if not compacted:
                    from features.store_maintenance import maintain_store

                    maintain_store(store, keep_from_version=0, retention_hours=0)
                    files = sum(1 for _ in (store / "interactions").rglob("*.parquet"))
                    print(f"compacted.parquet_files_in_folder: {files}")
                    compacted = True
                config = config.removeprefix("compacted-")
            proc = subprocess.run(
                [sys.executable, __file__, "--child", config, "--store", str(store), "--work", tmp]
                + ["--window", str(args.window), "--repeat", str(args.repeat)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                print(f"{name}.error: {proc.stderr.strip().splitlines()[-1][:300]}")
                print(f"{name}.error_at: {_last_frame(proc.stderr)}")
                continue
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            digests[name] = out["digest"]
            print(f"{name}.rows: {out['rows']}")
            print(f"{name}.first_s: {out['seconds'][0]:.2f}")
            print(f"{name}.best_s: {min(out['seconds']):.2f}")
            print(f"{name}.rss_peak_mib: {out['rss_peak_mib']:.0f}")
            print(f"{name}.rss_after_apply_mib: {out['rss_ready_mib']:.0f}")
        same = len(set(digests.values())) <= 1
        print(f"frames_identical: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
