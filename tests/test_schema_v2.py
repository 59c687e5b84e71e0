"""Schema v2: optional usage, model and latency; tools, feedback and hashed users kept; v1 stores still read."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.aggregates import compute_agent_daily_stats
from features.ingest import IngestConfig, ingest
from features.schema import INTERACTION_SCHEMA, SCHEMA_VERSION, V2_COLUMNS
from features.store import read_interactions

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city; ops contact ops.person@example.org",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def record(i: int, **over) -> dict:
    rec = {
        "id": f"id-{i}",
        "agent": "agent-jamie",
        "session_id": f"sess-{i}",
        "timestamp": "2025-01-07T10:00:00Z",
        "messages": [
            {"role": "user", "content": f"hello {i}"},
            {"role": "assistant", "content": f"reply {i}"},
        ],
    }
    rec.update(over)
    return rec


def write(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def config(store: Path, **over) -> IngestConfig:
    return IngestConfig(store=str(store), progress=False, compression="none", **over)


def test_usage_model_and_latency_are_optional_and_a_missing_total_is_derived(tmp_path):
    write(
        tmp_path / "logs" / "a.jsonl",
        [
            record(1),
            record(2, usage={"prompt_tokens": 7, "completion_tokens": 3}, model="m", latency_ms=5),
            record(3, usage={"input_tokens": 4, "output_tokens": 1}),
        ],
    )
    report = ingest(str(tmp_path / "logs"), config(tmp_path / "store"))
    assert (report.accepted, report.quarantined_total) == (3, 0)
    rows = {r["interaction_id"]: r for r in read_interactions(tmp_path / "store").to_pylist()}
    assert [rows["id-1"][k] for k in ("model", "prompt_tokens", "total_tokens", "latency_ms")] == [None] * 4
    assert (rows["id-2"]["total_tokens"], rows["id-2"]["model"], rows["id-2"]["latency_ms"]) == (10, "m", 5.0)
    assert (
        rows["id-3"]["prompt_tokens"],
        rows["id-3"]["completion_tokens"],
        rows["id-3"]["total_tokens"],
    ) == (
        4,
        1,
        5,
    )
    assert {r["schema_version"] for r in rows.values()} == {SCHEMA_VERSION}


def test_tools_feedback_scores_and_hashed_user_ids_are_kept(tmp_path):
    fb = {"thumbs": "up", "scores": [{"name": "helpfulness", "value": 0.8, "source": "llm_judge"}]}
    write(
        tmp_path / "logs" / "a.jsonl",
        [
            record(1, tools=TOOLS, user_id="alice@example.org", feedback=fb),
            record(2, user_id="alice@example.org"),
        ],
    )
    ingest(str(tmp_path / "logs"), config(tmp_path / "store", user_id_salt="s1"))
    rows = read_interactions(tmp_path / "store").to_pylist()
    tools = orjson.loads(rows[0]["tools_json"])
    assert tools[0]["function"]["name"] == "get_weather"
    assert "<EMAIL>" in tools[0]["function"]["description"]  # redacted like the messages
    assert orjson.loads(rows[0]["feedback_json"]) == [
        {"name": "thumbs", "value": "up", "source": "human"},
        {"name": "helpfulness", "value": 0.8, "source": "llm_judge"},
    ]
    assert rows[0]["thumbs"] == "up"
    hashes = {r["user_id_hash"] for r in rows}
    assert len(hashes) == 1 and len(next(iter(hashes))) == 64  # one user, one hash
    stored = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*.parquet"))
    assert b"alice" not in stored and b"ops.person" not in stored


def test_a_store_written_at_v1_reads_back_and_dedups_against_v2(tmp_path):
    store = tmp_path / "store"
    v1 = {
        "interaction_id": "id-1",
        "agent": "agent-jamie",
        "session_id": "sess-1",
        "event_timestamp": datetime(2025, 1, 7, 10, tzinfo=timezone.utc),
        "model": "m",
        "messages_json": "[]",
        "n_turns": 2,
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "total_tokens": 2,
        "latency_ms": 3.0,
        "has_error": False,
        "content_hash": "0" * 64,
        "source": "old.jsonl",
        "source_line": 1,
        "ingested_at": datetime(2025, 1, 8, tzinfo=timezone.utc),
        "day": "2025-01-07",
        "schema_version": 1,
    }
    v1_schema = pa.schema([f for f in INTERACTION_SCHEMA if f.name not in V2_COLUMNS])
    part = store / "interactions" / "day=2025-01-07" / "part-old.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([v1], schema=v1_schema), part)
    write(tmp_path / "logs" / "a.jsonl", [record(1), record(2)])  # id-1 again: the stored copy wins
    report = ingest(str(tmp_path / "logs"), config(store))
    assert (report.accepted, report.quarantined) == (1, {"duplicate_id_conflict": 1})
    assert report.migrated_parts == ["interactions/day=2025-01-07/part-old.parquet"]
    # The store is Delta tables now; the old part is kept (migrated to v2) under _legacy/. Feast and dask
    # see one schema in every file of the table.
    parts = sorted((store / "interactions").rglob("*.parquet"))
    assert parts and all(set(V2_COLUMNS) <= set(pq.read_schema(p).names) for p in parts)
    assert (store / "interactions" / "_delta_log").is_dir()
    kept = store / "_legacy" / "interactions" / "day=2025-01-07" / "part-old.parquet"
    assert set(V2_COLUMNS) <= set(pq.read_schema(kept).names)
    rows = {r["interaction_id"]: r for r in read_interactions(store).to_pylist()}
    assert rows["id-1"]["schema_version"] == 1
    assert (rows["id-1"]["agent_name"], rows["id-1"]["source_format"]) == ("agent-jamie", "jsonl")
    assert rows["id-2"]["schema_version"] == SCHEMA_VERSION


def test_daily_aggregates_cope_with_unknown_latency_and_tokens():
    frame = pd.DataFrame(
        {
            "interaction_id": ["a", "b"],
            "agent": ["x", "x"],
            "day": ["2025-01-07"] * 2,
            "ingested_at": [datetime(2025, 1, 8, tzinfo=timezone.utc)] * 2,
            "rating": [None, 4],
            "has_error": [False, False],
            "latency_ms": [None, 100.0],
            "total_tokens": pd.array([None, 10], dtype="Int32"),
        }
    )
    stats = compute_agent_daily_stats(frame, datetime(2025, 1, 9, tzinfo=timezone.utc))
    assert stats.loc[0, "p95_latency_ms"] == 100.0 and stats.loc[0, "mean_total_tokens"] == 10.0


def test_a_quarantined_record_keeps_its_user_id_only_as_the_salted_hash(tmp_path):
    import hashlib
    import hmac

    from features.store import read_quarantine

    bad = record(1, user_id="bob-1234")
    del bad["messages"]
    pair = {"request": {"messages": [], "user": "bob-1234"}, "response": {"id": "r1", "choices": []}}
    write(tmp_path / "logs" / "a.jsonl", [bad, pair])
    ingest(str(tmp_path / "logs"), config(tmp_path / "store", user_id_salt="s1"))
    rows = read_quarantine(tmp_path / "store").to_pylist()
    assert len(rows) == 2
    expected = hmac.new(b"s1", b"bob-1234", hashlib.sha256).hexdigest()
    for row in rows:
        assert "bob-1234" not in row["raw_redacted"] and f"<USER:{expected}>" in row["raw_redacted"]
