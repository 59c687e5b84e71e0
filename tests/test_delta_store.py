"""The offline store on Delta Lake (features/store.py): concurrent writers, time travel, migration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.guard import PoisonState
from features.ingest import IngestConfig, ingest
from features.schema import INTERACTION_SCHEMA, QUARANTINE_SCHEMA, V2_COLUMNS
from features.store import (
    INTERACTIONS,
    LEDGER,
    CommitConflict,
    ManifestEntry,
    Store,
    read_interactions,
    read_manifest,
    read_quarantine,
    table_version,
)

REPO = Path(__file__).resolve().parents[1]


def record(i, day: str = "2025-01-07", text: str | None = None) -> dict:
    return {
        "id": f"id-{i}",
        "agent": "agent-jamie",
        "session_id": f"sess-{i}",
        "timestamp": f"{day}T10:00:00Z",
        "messages": [
            {"role": "user", "content": text or f"question {i}"},
            {"role": "assistant", "content": f"reply {i}"},
        ],
        "feedback": {"rating": 4},
    }


def write(path: Path, lines: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines))
    return path


def config(store: Path, **over) -> IngestConfig:
    return IngestConfig(store=str(store), progress=False, **over)


def stored(store) -> tuple[list, list]:
    rows = read_interactions(store).drop_columns(["ingested_at"]).to_pylist()
    q = read_quarantine(store).drop_columns(["quarantined_at", "day"]).to_pylist()
    return (
        sorted(rows, key=lambda r: r["interaction_id"]),
        sorted(q, key=lambda r: json.dumps(r, sort_keys=True, default=str)),
    )


# ------------------------------------------------------------------------------------------------ writers


def test_a_second_ingest_while_one_is_committing_fails_clearly_and_the_first_commits(tmp_path):
    logs = tmp_path / "logs"
    for n in range(4):
        write(logs / f"{n}.jsonl", [record(f"{n}-{i}") for i in range(30)] + [b"{bad"])
    ingest(str(logs), config(tmp_path / "baseline", batch_size=30))
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_hook", "hold:1", str(logs), str(store), "30"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not (store / LEDGER / "_delta_log" / f"{1:020d}.json").exists():  # its commit 1 is in
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    second = subprocess.run(
        [sys.executable, "-m", "features.ingest", "--store", str(store), "--no-progress", str(logs)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert second.returncode != 0 and "another ingest is writing the offline store" in second.stderr
    Path(f"{store}.release").touch()
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out.decode(errors="replace")[-2000:]
    assert stored(store) == stored(tmp_path / "baseline")
    assert len(Store(store).commits()) == 4


def test_a_writer_that_bypasses_the_lock_is_refused_at_the_ledger_and_undone(tmp_path):
    """Two commits numbered N from stale views (an object store has no flock): the second is refused."""
    store = Store(tmp_path / "store")
    store.ensure_tables()

    def entry(name: str) -> ManifestEntry:
        return ManifestEntry(name, 1, "mtime:1", "0" * 64, "run", 1, "now", counts={"read": 1})

    def rows(i: int) -> pa.Table:
        row = {f.name: None for f in INTERACTION_SCHEMA}
        row.update(
            interaction_id=f"id-{i}",
            agent="a",
            session_id="s",
            event_timestamp=datetime(2025, 1, 7, tzinfo=timezone.utc),
            messages_json="[]",
            n_turns=1,
            has_error=False,
            content_hash=f"{i:064d}",
            source="x",
            source_line=i,
            day="2025-01-07",
            schema_version=2,
        )
        return pa.Table.from_pylist([row], schema=INTERACTION_SCHEMA)

    a, b = store.begin_commit("run-a", 1), store.begin_commit("run-b", 1)
    a.write(INTERACTIONS, rows(1))
    b.write(INTERACTIONS, rows(2))
    a.commit([entry("a.jsonl")])
    with pytest.raises(CommitConflict, match="another writer committed commit 1"):
        b.commit([entry("b.jsonl")])
    b.abort()
    assert read_interactions(store).column("interaction_id").to_pylist() == ["id-1"]
    assert set(read_manifest(store)) == {"a.jsonl"}
    assert store.read_table("_keys").column("interaction_id").to_pylist() == ["id-1"]
    # The same id committed again (a dedup index out of date) is refused by the MERGE on the keys.
    c = store.begin_commit("run-c", 2)
    c.write(INTERACTIONS, rows(1))
    with pytest.raises(CommitConflict, match="ids the store already holds"):
        c.commit([entry("c.jsonl")])
    c.abort()
    assert read_interactions(store).num_rows == 1


# ------------------------------------------------------------------------------------------------ versions


def test_a_training_frame_rebuilt_from_its_recorded_table_version_has_identical_rows(tmp_path):
    from features.feast_store import FeastConfig, apply, get_training_frame

    store = tmp_path / "store"
    write(tmp_path / "a" / "a.jsonl", [record(i, day=f"2025-01-0{5 + i % 3}") for i in range(12)])
    ingest(str(tmp_path / "a"), config(store))
    feast = FeastConfig(offline_store=str(store))
    apply(feast)
    start, end = date(2025, 1, 5), date(2025, 1, 8)
    before = get_training_frame(feast, start, end)
    version = before.attrs["table_version"]
    assert version == table_version(store) and len(before) == 12
    first_rows = read_interactions(store, start, end)

    # More data lands in the same window (and a re-sent copy under a new id, a duplicate).
    write(tmp_path / "b" / "b.jsonl", [record(i, day="2025-01-06") for i in range(100, 105)])
    assert ingest(str(tmp_path / "b"), config(store)).accepted == 5
    assert table_version(store) > version
    assert len(get_training_frame(feast, start, end)) == 17

    again = get_training_frame(feast, start, end, table_version=version)
    assert again.attrs["table_version"] == version
    assert again.equals(before)
    assert read_interactions(store, start, end, version=version).equals(first_rows)


def test_same_content_under_a_new_id_is_found_in_the_key_table(tmp_path):
    store = tmp_path / "store"
    write(tmp_path / "a" / "a.jsonl", [record(1)])
    ingest(str(tmp_path / "a"), config(store))
    resent = {**record(1), "id": "id-resent"}
    conflict = {
        **record(1),
        "messages": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "x"}],
    }
    write(tmp_path / "b" / "b.jsonl", [resent, conflict])
    report = ingest(str(tmp_path / "b"), config(store))
    assert report.duplicates == 1 and report.sources[0].duplicate_kinds == {"same_content": 1}
    assert report.quarantined == {"duplicate_id_conflict": 1}
    keys = Store(store).read_table("_keys")
    assert keys.num_rows == 1 and keys.column("interaction_id").to_pylist() == ["id-1"]


# ------------------------------------------------------------------------------------------------ migration


def _old_store(root: Path) -> dict:
    """A store in the format of before issue 15: parts, a manifest, a poisoning state file."""
    rows = []
    for i in range(6):
        row = {f.name: None for f in INTERACTION_SCHEMA}
        row.update(
            interaction_id=f"old-{i}",
            agent="agent-jamie",
            session_id=f"s{i}",
            event_timestamp=datetime(2025, 1, 5 + i % 2, 9, tzinfo=timezone.utc),
            messages_json="[]",
            n_turns=2,
            has_error=False,
            content_hash=f"{i:064x}",
            source=str(root / "logs" / "a.jsonl"),
            source_line=i + 1,
            ingested_at=datetime(2025, 1, 8, tzinfo=timezone.utc),
            day=f"2025-01-0{5 + i % 2}",
            schema_version=1,
        )
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=INTERACTION_SCHEMA)
    v1 = pa.schema([f for f in INTERACTION_SCHEMA if f.name not in V2_COLUMNS])
    for day in ("2025-01-05", "2025-01-06"):
        part = root / "interactions" / f"day={day}" / "part-r1-0000000001-0000.parquet"
        part.parent.mkdir(parents=True)
        pq.write_table(table.filter(pa.compute.equal(table["day"], day)).select(v1.names).cast(v1), part)
    q = {f.name: None for f in QUARANTINE_SCHEMA}
    q.update(source=str(root / "logs" / "a.jsonl"), line_number=7, reason="invalid_json", detail="x")
    q.update(raw_redacted="{", raw_sha256="f" * 64, raw_bytes=1, day="2025-01-08")
    q.update(quarantined_at=datetime(2025, 1, 8, tzinfo=timezone.utc))
    qpart = root / "quarantine" / "day=2025-01-08" / "part-r1-0000000001-0001.parquet"
    qpart.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([q], schema=QUARANTINE_SCHEMA), qpart)
    entry = ManifestEntry(str(root / "logs" / "a.jsonl"), 10, "mtime:1", "a" * 64, "r1", 1, "2025-01-08")
    entry.commit, entry.counts = (
        1,
        {"read": 7, "accepted": 6, "duplicates": 0, "quarantined": {"invalid_json": 1}},
    )
    state = root / "_guard" / "poison-state-0000000001.json"
    state.parent.mkdir()
    state.write_text(PoisonState(batches=3).to_json())
    manifest = {
        "number": 1,
        "run_id": "r1",
        "files": {"poison-state": "_guard/poison-state-0000000001.json"},
        "entries": [{**entry.to_dict(), "parts": []}],
    }
    (root / "_manifest").mkdir()
    (root / "_manifest" / "0000000001-r1.json").write_text(json.dumps(manifest))
    return {"rows": 6, "entry": entry}


def test_an_old_parquet_store_converts_in_place_with_the_command(tmp_path):
    root = tmp_path / "store"
    old = _old_store(root)
    assert Store(root).is_legacy()
    before = read_interactions(root)  # the old format still reads (v1 parts upgraded on the fly)
    cmd = [sys.executable, "-m", "features.store", "migrate", str(root)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"interactions": 6, "quarantine": 1, "commits": 1}
    st = Store(root)
    assert not st.is_legacy() and (root / INTERACTIONS / "_delta_log").is_dir()
    after = read_interactions(root)
    assert after.drop_columns(["ingested_at"]).equals(before.drop_columns(["ingested_at"]))
    assert after.num_rows == old["rows"] and set(after.column("schema_version").to_pylist()) == {1}
    assert read_quarantine(root).num_rows == 1
    assert read_manifest(root) == {old["entry"].source: old["entry"]}
    assert PoisonState.from_json(st.latest_state("poison-state").decode()).batches == 3
    assert st.next_commit_number() == 2
    # Kept, not deleted: lineage that names the old files still finds them.
    assert (root / "_legacy" / "_manifest" / "0000000001-r1.json").exists()
    assert len(list((root / "_legacy" / "interactions").rglob("*.parquet"))) == 2
    # Feast's readers see one schema in every file of the table.
    assert all(
        set(V2_COLUMNS) <= set(pq.read_schema(p).names) for p in (root / INTERACTIONS).rglob("*.parquet")
    )
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert "nothing to convert" in out.stdout

    # An ingest after it dedups against the converted rows and keys, and numbers its commit 2.
    dup = {**record(0), "id": "old-0"}
    write(tmp_path / "logs2" / "b.jsonl", [dup, record(9)])
    report = ingest(str(tmp_path / "logs2"), config(root))
    assert (report.accepted, report.quarantined) == (1, {"duplicate_id_conflict": 1})
    assert [c["number"] for c in Store(root).commits()] == [1, 2]


def test_a_conversion_killed_after_its_tables_were_written_finishes_on_the_next_try(tmp_path, monkeypatch):
    root = tmp_path / "store"
    _old_store(root)
    st = Store(root)
    real = os.replace
    moves = []

    def flaky(src, dst):
        moves.append(dst)
        if len(moves) == 3:
            raise OSError("killed here")
        real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="killed here"):
        st.convert()
    monkeypatch.setattr(os, "replace", real)
    assert st.is_legacy()
    assert st.convert() == {"interactions": 6, "quarantine": 1, "commits": 1}
    assert read_interactions(root).num_rows == 6 and not (root / "_converting").exists()
    assert st.convert() is None
