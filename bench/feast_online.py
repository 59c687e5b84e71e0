"""Online lookup latency of one agent's daily stats through Feast: SQLite, and Redis when reachable.

    .venv/bin/python bench/feast_online.py [--n 1000] [--store DIR] [--redis 127.0.0.1:6379,db=0]

Without --store it builds a throwaway store (4 agents x 7 days of synthetic interactions, only the
columns the daily stats need), writes the daily stats, applies and materializes. Each store gets
N warm-up lookups, then N timed ones of features.feast_store.online_agent_stats (what monitoring
calls) and N of the bare FeatureStore.get_online_features, one agent per call. Redis runs under
a unique project (keys end with it) and is torn down afterwards.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.aggregates import write_agent_daily_stats
from features.feast_store import (
    FeastConfig,
    _stats_refs,
    _store_key,
    apply,
    feature_store,
    materialize_incremental,
    online_agent_stats,
)

AGENTS = ("agent-bruno", "agent-auditor", "agent-jamie", "agent-mary-kay")
END = date(2025, 1, 7)


def synthetic_store(root: Path, days: int = 7, per_day: int = 50, seed: int = 0) -> None:
    """The columns write_agent_daily_stats reads, hive-partitioned like features/ingest.py writes them."""
    rng = np.random.default_rng(seed)
    for d in range(days):
        day = END - timedelta(days=d)
        n = per_day * len(AGENTS)
        start = datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc)
        ts = [start + timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 86_400, n))]
        rating = rng.integers(1, 6, n).astype(float)
        rating[rng.random(n) < 0.5] = np.nan
        table = pa.table(
            {
                "interaction_id": [str(uuid.UUID(int=int(rng.integers(0, 2**63)))) for _ in range(n)],
                "agent": [AGENTS[i % len(AGENTS)] for i in range(n)],
                "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
                "ingested_at": pa.array([t + timedelta(minutes=5) for t in ts], pa.timestamp("us", tz="UTC")),
                "rating": pa.array(rating, pa.int32(), from_pandas=True),
                "has_error": rng.random(n) < 0.02,
                "latency_ms": rng.lognormal(7, 1, n),
                "total_tokens": pa.array(rng.integers(20, 800, n), pa.int32()),
                "day": [day.isoformat()] * n,
            }
        )
        folder = root / "interactions" / f"day={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "part-0.parquet")


def percentiles(samples_ns: list[int]) -> str:
    ms = sorted(s / 1e6 for s in samples_ns)

    def p(q):
        return ms[min(len(ms) - 1, int(q * len(ms)))]

    return f"p50 {p(0.50):.3f} ms  p99 {p(0.99):.3f} ms  mean {statistics.fmean(ms):.3f} ms"


def time_lookups(config: FeastConfig, agent: str, n: int) -> dict[str, str]:
    store = feature_store(config)
    refs = _stats_refs(_store_key(config))
    assert online_agent_stats(config, agent)["n_interactions"], f"{agent} has no stats online"
    wrapped, bare = [], []
    for _ in range(n):  # warm-up: registry cache, sqlite/redis connection, code paths
        online_agent_stats(config, agent)
    for _ in range(n):
        t = time.perf_counter_ns()
        online_agent_stats(config, agent)
        wrapped.append(time.perf_counter_ns() - t)
    for _ in range(n):
        t = time.perf_counter_ns()
        store.get_online_features(features=refs, entity_rows=[{"agent": agent}]).to_dict()
        bare.append(time.perf_counter_ns() - t)
    return {"online_agent_stats": percentiles(wrapped), "get_online_features": percentiles(bare)}


def reachable(connection: str) -> bool:
    host, _, port = connection.split(",")[0].partition(":")
    try:
        with socket.create_connection((host, int(port or 6379)), timeout=1):
            return True
    except OSError:
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="timed lookups per store and API (default 1000)")
    parser.add_argument(
        "--store", help="an existing offline store with daily stats (default: a synthetic one)"
    )
    parser.add_argument(
        "--redis", default="127.0.0.1:6379,db=0", help="Feast Redis connection string; '' skips"
    )
    parser.add_argument("--agent", default="agent-bruno")
    args = parser.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="feast-bench-")
    root = Path(args.store) if args.store else Path(tmp.name) / "store"
    if not args.store:
        synthetic_store(root)
        write_agent_daily_stats(root)
    end = datetime.combine(END + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc)

    results = {}
    sqlite = FeastConfig(offline_store=str(root), work_dir=str(Path(tmp.name) / "sqlite"))
    apply(sqlite)
    materialize_incremental(sqlite, end)
    results["sqlite"] = time_lookups(sqlite, args.agent, args.n)

    if args.redis and reachable(args.redis):
        redis_cfg = FeastConfig(
            offline_store=str(root),
            online_store=args.redis,
            work_dir=str(Path(tmp.name) / "redis"),
            registry=str(Path(tmp.name) / "redis" / "registry.db"),
            project=f"agentloop_bench_{uuid.uuid4().hex[:8]}",
        )
        try:
            apply(redis_cfg)
            materialize_incremental(redis_cfg, end)
            results["redis"] = time_lookups(redis_cfg, args.agent, args.n)
        finally:
            feature_store(redis_cfg).teardown()
    else:
        results["redis"] = {"skipped": f"not reachable at {args.redis!r}"}

    print(f"\nFeast online lookup, 1 agent ({args.agent}), agent_daily_stats (8 features), n={args.n}")
    for backend, rows in results.items():
        for api, figures in rows.items():
            print(f"  {backend:7s} {api:20s} {figures}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
