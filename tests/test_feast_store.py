"""Feast over the offline store: definitions, apply, materialize, online reads, point-in-time frames.

The store is built here from sample logs (real chitchat conversations) mapped to INTERACTION_SCHEMA,
so these tests do not depend on features/ingest.py.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.aggregates import STATS_DIR, write_agent_daily_stats
from features.feast_store import (
    CLUSTER_YAML,
    REPO_DIR,
    FeastConfig,
    OfflineStoreLayoutError,
    apply,
    feature_store,
    get_monitoring_frame,
    get_training_frame,
    load_definitions,
    materialize_incremental,
    online_agent_stats,
    redis_connection_string,
    repo_config_dict,
)
from features.raw_format import parse_timestamp, unwrap
from features.sample_logs import generate_sample_logs
from features.schema import INTERACTION_SCHEMA
from features.store import Store

END = date(2025, 1, 7)
DAYS = 5
FIRST = END - timedelta(days=DAYS - 1)
MATERIALIZE_END = datetime(2025, 1, 8, tzinfo=timezone.utc)  # the end of END: its stats are final
GUARDED = 4  # interactions given a warn-level guard flag
STATS = ["n_interactions", "n_rated", "mean_rating", "error_rate", "p95_latency_ms", "mean_total_tokens"]


# --- a store like the one features/ingest.py writes -----------------------------------------------


def record_to_row(record: dict, source: str, line: int) -> dict:
    """One INTERACTION_SCHEMA row from a raw record (simple values for redaction/guard columns)."""
    messages = record["messages"]
    at = parse_timestamp(record["timestamp"]).astimezone(timezone.utc)
    feedback, error = record.get("feedback") or {}, record.get("error")
    users = [m["content"] for m in messages if m["role"] == "user"]
    messages_json = json.dumps(messages, ensure_ascii=False)
    return {
        "interaction_id": record["id"],
        "agent": record["agent"],
        "session_id": record["session_id"],
        "event_timestamp": at,
        "model": record["model"],
        "messages_json": messages_json,
        "last_user_message": users[-1] if users else "",
        "agent_reply": messages[-1]["content"] if messages[-1]["role"] == "assistant" else "",
        "n_turns": sum(m["role"] in ("user", "assistant") for m in messages),
        "prompt_tokens": record["usage"]["prompt_tokens"],
        "completion_tokens": record["usage"]["completion_tokens"],
        "total_tokens": record["usage"]["total_tokens"],
        "latency_ms": float(record["latency_ms"]),
        "rating": feedback.get("rating"),
        "thumbs": feedback.get("thumbs"),
        "error_type": error["type"] if error else None,
        "has_error": error is not None,
        "redacted_secrets": 0,
        "redacted_email": 0,
        "redacted_phone": 0,
        "redacted_card": 0,
        "redacted_ip": 0,
        "redaction_counts_json": "{}",
        "guard_flags": "",
        "content_hash": hashlib.sha256(messages_json.encode()).hexdigest(),
        "source": source,
        "source_line": line,
        "ingested_at": at + timedelta(minutes=5),
        "day": at.date().isoformat(),
        "schema_version": 1,
    }


def read_sample_rows(raw_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(raw_dir.rglob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            rows += [record_to_row(unwrap(json.loads(line)), str(path), i) for i, line in enumerate(f, 1)]
    return rows


def write_store(store: Path, rows: list[dict], physical_day: bool | None = True) -> None:
    """<store>/interactions/day=.../part-0.parquet; physical_day None alternates the layouts by day."""
    frame = pd.DataFrame(rows)
    for i, (day, part) in enumerate(sorted(frame.groupby("day"), key=lambda kv: kv[0])):
        keep_day = physical_day if physical_day is not None else i % 2 == 0
        # The rows are schema v1 (a store written before v2): the v2 columns are absent from the files.
        schema = pa.schema([f for f in INTERACTION_SCHEMA if f.name in part.columns])
        table = pa.Table.from_pandas(part, schema=schema, preserve_index=False)
        if not keep_day:
            table = table.drop_columns(["day"])
        folder = store / "interactions" / f"day={day}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "part-0.parquet")
    # What every ingest does first: parts of a store written before schema v2 get its columns.
    assert len(Store(store).migrate()) == len(frame.groupby("day"))
    assert Store(store).migrate() == []


@pytest.fixture(scope="module")
def sample_rows(tmp_path_factory) -> list[dict]:
    raw = tmp_path_factory.mktemp("raw")
    generate_sample_logs(raw, conversations=60, days=DAYS, seed=0, end_date=END, error_rate=0.05)
    rows = sorted(read_sample_rows(raw), key=lambda r: (r["event_timestamp"], r["interaction_id"]))
    for row in rows[5 : 5 + GUARDED]:
        row["guard_flags"] = "injection_suspect"
    return rows


@pytest.fixture(scope="module")
def revised(sample_rows) -> dict:
    """A later copy of one interaction (feedback changed an hour after): it must never leak backwards."""
    original = next(r for r in sample_rows if r["rating"] is not None and r["event_timestamp"].hour < 22)
    return {
        **original,
        "event_timestamp": original["event_timestamp"] + timedelta(hours=1),
        "ingested_at": original["ingested_at"] + timedelta(hours=1),
        "rating": 6 - original["rating"],
        "agent_reply": "LATER REVISION",
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory, sample_rows, revised) -> tuple[Path, FeastConfig]:
    """A store with daily stats, applied and materialized on the real SQLite online store."""
    root = tmp_path_factory.mktemp("store")
    write_store(root, [*sample_rows, revised])
    write_agent_daily_stats(root, computed_at=datetime(2025, 1, 8, 1, tzinfo=timezone.utc))
    config = FeastConfig(offline_store=str(root))
    apply(config)
    materialize_incremental(config, MATERIALIZE_END)
    return root, config


def expected_daily_stats(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows).sort_values("ingested_at").drop_duplicates("interaction_id", keep="last")
    return (
        frame.groupby(["agent", "day"])
        .agg(
            n_interactions=("interaction_id", "size"),
            n_rated=("rating", "count"),
            mean_rating=("rating", "mean"),
            error_rate=("has_error", "mean"),
            p95_latency_ms=("latency_ms", lambda s: s.quantile(0.95)),
            mean_total_tokens=("total_tokens", "mean"),
        )
        .reset_index()
    )


# --- definitions ----------------------------------------------------------------------------------


def test_interaction_features_match_the_offline_store_schema():
    repo = load_definitions(FeastConfig(offline_store="/nonexistent-store"))
    view = next(v for v in repo.feature_views if v.name == "interaction_features")
    feast_to_arrow = {
        "String": pa.string(),
        "Int32": pa.int32(),
        "Int64": pa.int64(),
        "Float64": pa.float64(),
        "Bool": pa.bool_(),
    }
    for f in [*view.features, *view.entity_columns]:
        assert f.name in INTERACTION_SCHEMA.names, f"{f.name} is not a column of INTERACTION_SCHEMA"
        assert INTERACTION_SCHEMA.field(f.name).type == feast_to_arrow[str(f.dtype)], f.name
    assert not view.online, "interaction text must stay offline"
    assert view.batch_source.path == "/nonexistent-store/interactions/day=*/*.parquet"
    assert {fs.name for fs in repo.feature_services} == {"training_v1", "monitoring_v1"}
    assert all(o.tags.get("owner") and o.tags.get("pii") for o in [*repo.feature_views, *repo.data_sources])


def test_the_cluster_yaml_takes_redis_and_s3_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTLOOP_OFFLINE_STORE", "s3://agentloop/store")
    monkeypatch.setenv("FEAST_REDIS_CONNECTION_STRING", "redis.agentloop.svc:6379,db=2")
    from feast.repo_config import load_repo_config

    loaded = load_repo_config(REPO_DIR, CLUSTER_YAML)  # exactly what the feast CLI does with -f
    assert loaded.online_store.type == "redis"
    assert loaded.online_store.connection_string == "redis.agentloop.svc:6379,db=2"
    assert loaded.registry.path == "s3://agentloop/store/_feast/registry.db"

    config = FeastConfig(
        feature_store_yaml=str(CLUSTER_YAML),
        online_store="redis://:pw@10.0.0.5:6380/3",
        work_dir=str(tmp_path),
    )
    effective = repo_config_dict(config)
    assert effective["online_store"] == {
        "type": "redis",
        "connection_string": "10.0.0.5:6380,db=3,password=pw",
        "key_ttl_seconds": 604800,
    }
    assert effective["registry"]["path"] == "s3://agentloop/store/_feast/registry.db"

    monkeypatch.delenv("FEAST_REDIS_CONNECTION_STRING")
    with pytest.raises(ValueError, match="FEAST_REDIS_CONNECTION_STRING"):
        repo_config_dict(FeastConfig(feature_store_yaml=str(CLUSTER_YAML), work_dir=str(tmp_path)))
    assert redis_connection_string("127.0.0.1:6379,db=0") == "127.0.0.1:6379,db=0"


def test_feast_cli_applies_the_definitions(tmp_path, sample_rows):
    """`feast -c features/repo apply` with the embedded yaml registers everything python's apply does."""
    home = tmp_path / "home"
    write_store(home / "store", sample_rows[:10])
    env = {**os.environ, "AGENTLOOP_HOME": str(home)}
    env.pop("AGENTLOOP_OFFLINE_STORE", None)
    feast = Path(sys.executable).with_name("feast")
    result = subprocess.run(
        [str(feast), "-c", str(REPO_DIR), "apply"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not list(REPO_DIR.rglob("*.db")), "feast apply must not write state into the source tree"
    registered = feature_store(FeastConfig(offline_store=str(home / "store")))
    registered.refresh_registry()
    assert {s.name for s in registered.list_feature_services()} == {"training_v1", "monitoring_v1"}
    assert (
        registered.get_feature_view("interaction_features").batch_source.path
        == f"{home}/store/interactions/day=*/*.parquet"
    )


# --- online ---------------------------------------------------------------------------------------


def test_online_read_returns_each_agents_latest_daily_stats(store, sample_rows, revised):
    _, config = store
    expected = expected_daily_stats([*sample_rows, revised])
    for agent, per_agent in expected.groupby("agent"):
        latest = per_agent.sort_values("day").iloc[-1]
        got = online_agent_stats(config, agent)
        assert got["agent"] == agent and got["day"] == latest["day"]
        for name in STATS:
            want = latest[name]
            assert (got[name] is None) if pd.isna(want) else got[name] == pytest.approx(want), (agent, name)
    assert all(v is None for k, v in online_agent_stats(config, "agent-nobody").items() if k != "agent")


def test_materialize_continues_where_the_last_run_ended(store):
    _, config = store
    assert materialize_incremental(config, MATERIALIZE_END) == {}
    later = MATERIALIZE_END + timedelta(days=1)
    assert materialize_incremental(config, later) == {"agent_daily_stats": (MATERIALIZE_END, later)}


@pytest.mark.services("redis")
def test_redis_online_store_materializes_and_serves(store, tmp_path, sample_rows, revised):
    import redis

    root, sqlite_config = store
    project = f"agentloop_test_{uuid.uuid4().hex[:12]}"  # Redis keys end with the project: ours alone
    config = FeastConfig(
        offline_store=str(root),
        online_store="127.0.0.1:6379,db=0",
        project=project,
        work_dir=str(tmp_path / "feast"),
        registry=str(tmp_path / "feast" / "registry.db"),
    )
    client = redis.Redis(host="127.0.0.1", port=6379, db=0)
    try:
        apply(config)
        materialize_incremental(config, MATERIALIZE_END)
        assert any(True for _ in client.scan_iter(match=f"*{project}", count=1000))
        for agent in sorted({r["agent"] for r in sample_rows}):
            assert online_agent_stats(config, agent) == online_agent_stats(sqlite_config, agent)
    finally:
        feature_store(config).teardown()
    assert not any(True for _ in client.scan_iter(match=f"*{project}", count=1000)), (
        "teardown left keys behind"
    )


# --- offline: point-in-time frames ----------------------------------------------------------------


def test_training_frame_rows_are_the_interactions_themselves(store, sample_rows, revised):
    _, config = store
    frame = get_training_frame(config, FIRST, END + timedelta(days=1), exclude_guard_flags=False)
    by_id = {r["interaction_id"]: r for r in sample_rows}
    assert sorted(frame["interaction_id"]) == sorted(by_id), (
        "one row per interaction, the revision is no new row"
    )
    for row in frame.itertuples(index=False):
        source = by_id[row.interaction_id]
        assert row.event_timestamp == source["event_timestamp"]
        for name in (
            "agent",
            "session_id",
            "agent_reply",
            "last_user_message",
            "messages_json",
            "guard_flags",
        ):
            assert getattr(row, name) == source[name], (row.interaction_id, name)
        assert (pd.isna(row.rating) and source["rating"] is None) or row.rating == source["rating"]
    # The later copy exists in the store but lies after the interaction's own timestamp.
    joined = frame.set_index("interaction_id").loc[revised["interaction_id"]]
    assert joined["agent_reply"] != "LATER REVISION" and joined["rating"] == 6 - revised["rating"]
    assert frame.attrs["feature_service"] == "training_v1"
    assert frame["event_timestamp"].is_monotonic_increasing


def test_training_frame_filters_by_agent_rating_and_guard(store, sample_rows):
    _, config = store
    window = (FIRST, END + timedelta(days=1))
    agents = sorted({r["agent"] for r in sample_rows})[:2]
    frame = get_training_frame(config, *window, agents=agents, min_rating=4)
    want = {
        r["interaction_id"]
        for r in sample_rows
        if r["agent"] in agents and r["rating"] is not None and r["rating"] >= 4 and not r["guard_flags"]
    }
    assert set(frame["interaction_id"]) == want and len(frame) == len(want) > 0
    assert (frame["rating"] >= 4).all() and (frame["guard_flags"] == "").all()

    everything = get_training_frame(config, *window, exclude_guard_flags=False)
    unguarded = get_training_frame(config, *window)
    assert len(everything) - len(unguarded) == GUARDED


def test_frames_respect_the_window_bounds(store, sample_rows):
    _, config = store
    pivot = sample_rows[len(sample_rows) // 2]["event_timestamp"]
    before = get_training_frame(config, FIRST, pivot, exclude_guard_flags=False)
    after = get_training_frame(config, pivot, END + timedelta(days=1), exclude_guard_flags=False)
    assert (before["event_timestamp"] < pivot).all() and (after["event_timestamp"] >= pivot).all()
    assert len(before) + len(after) == len(sample_rows)
    assert pivot in set(after["event_timestamp"]), "start is inclusive"

    monitoring = get_monitoring_frame(config, END, END + timedelta(days=1))
    assert set(monitoring["interaction_id"]) == {
        r["interaction_id"] for r in sample_rows if r["day"] == END.isoformat()
    }
    assert "messages_json" not in monitoring and {"latency_ms", "agent_reply", "thumbs"} <= set(monitoring)
    empty = get_training_frame(config, date(2024, 1, 1), date(2024, 1, 2))
    assert empty.empty and "agent_reply" in empty


def test_a_store_without_the_day_column_in_its_files_reads_the_same(tmp_path, sample_rows):
    rows = sample_rows[:12]
    write_store(tmp_path, rows, physical_day=False)
    config = FeastConfig(offline_store=str(tmp_path))
    apply(config)
    frame = get_training_frame(config, FIRST, END + timedelta(days=1), exclude_guard_flags=False)
    assert sorted(frame["interaction_id"]) == sorted(r["interaction_id"] for r in rows)
    write_agent_daily_stats(tmp_path)
    assert (tmp_path / STATS_DIR).is_dir()


def test_a_store_mixing_both_layouts_is_refused_with_the_files_named(tmp_path, sample_rows):
    write_store(tmp_path, sample_rows, physical_day=None)
    with pytest.raises(OfflineStoreLayoutError, match=r"day=.*part-0.parquet stores the `day`"):
        apply(FeastConfig(offline_store=str(tmp_path)))


@pytest.mark.slow
@pytest.mark.services("redis")
def test_the_cluster_setup_runs_on_s3_and_redis(tmp_path, monkeypatch, sample_rows):
    """The cluster yaml end to end: parquet and registry on S3 (moto standing in for MinIO), Redis online."""
    import boto3
    import redis
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    project = f"agentloop_test_{uuid.uuid4().hex[:12]}"
    for name, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "FEAST_S3_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AGENTLOOP_HOME": str(tmp_path / "home"),
        "AGENTLOOP_OFFLINE_STORE": "s3://agentloop/store",
        "FEAST_REDIS_CONNECTION_STRING": "127.0.0.1:6379,db=0",
    }.items():
        monkeypatch.setenv(name, value)
    rows = sample_rows[-12:]  # the last days: their stats fall in the first materialization window
    local = tmp_path / "local"
    write_store(local, rows)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="agentloop")
    for path in local.rglob("*.parquet"):
        s3.upload_file(str(path), "agentloop", f"store/{path.relative_to(local)}")

    config = FeastConfig(feature_store_yaml=str(CLUSTER_YAML), project=project)
    try:
        write_agent_daily_stats("s3://agentloop/store")
        apply(config)
        materialize_incremental(config, MATERIALIZE_END)
        agent = rows[-1]["agent"]
        assert online_agent_stats(config, agent)["n_interactions"] > 0
        frame = get_training_frame(config, FIRST, END + timedelta(days=1), exclude_guard_flags=False)
        assert sorted(frame["interaction_id"]) == sorted(r["interaction_id"] for r in rows)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="agentloop", Prefix="store/_feast/")["Contents"]]
        assert keys == ["store/_feast/registry.db"]
    finally:
        feature_store(config).teardown()
        server.stop()
    client = redis.Redis(host="127.0.0.1", port=6379, db=0)
    assert not any(True for _ in client.scan_iter(match=f"*{project}", count=1000)), (
        "teardown left keys behind"
    )


def test_historical_retrieval_works_once_the_delta_log_holds_a_checkpoint(tmp_path):
    """delta-rs writes _delta_log/*.checkpoint.parquet every 100 commits; Feast's dask reader must not read it."""
    from deltalake import DeltaTable

    from features.ingest import ingest
    from tests.test_delta_store import config, record, write

    store = tmp_path / "store"
    write(tmp_path / "a" / "a.jsonl", [record(i, day=f"2025-01-0{5 + i % 3}") for i in range(9)])
    ingest(str(tmp_path / "a"), config(store))
    DeltaTable(str(store / "interactions")).create_checkpoint()
    assert list((store / "interactions" / "_delta_log").glob("*.checkpoint.parquet"))
    feast = FeastConfig(offline_store=str(store))
    apply(feast)
    frame = get_training_frame(feast, date(2025, 1, 5), date(2025, 1, 8))
    assert len(frame) == 9 and frame["agent_reply"].notna().all()
