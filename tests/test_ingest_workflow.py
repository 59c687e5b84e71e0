"""workflows/ingest.py under `pyflyte run`: logs -> store -> Feast, tracked in MLflow, with no secret anywhere."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from features.sample_logs import generate_sample_logs
from serving.mlflow_server import MLflowServerConfig, start

ROOT = Path(__file__).resolve().parents[1]
PLANTED_KEY = "AKIA" + "QX7T2PLANTED9KEY"[:16]
PLANTED_EMAIL = "planted.person@example-corp.test"


def _plant_secret(raw: Path) -> None:
    """Put the secret into a user turn of the first plain JSONL record we find."""
    for path in sorted(raw.rglob("*.jsonl")):
        lines = path.read_text().splitlines()
        record = json.loads(lines[0])
        data = record.get("data", record)
        user = next(m for m in data["messages"] if m["role"] == "user")
        user["content"] += f" my key is {PLANTED_KEY} and mail me at {PLANTED_EMAIL}"
        lines[0] = json.dumps(record)
        path.write_text("\n".join(lines) + "\n")
        return
    raise AssertionError("no plain JSONL file in the sample logs")


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
def test_ingest_workflow_tracks_the_report_and_no_secret_reaches_any_sink(tmp_path):
    home = tmp_path / "home"
    raw = tmp_path / "raw"
    generate_sample_logs(raw, conversations=80, seed=5)
    _plant_secret(raw)
    (raw / "2026-01-01").mkdir()
    (raw / "2026-01-01" / "agent-bruno.jsonl").write_text('{"id": "broken"\nnot json at all\n')

    with start(MLflowServerConfig(root=tmp_path / "mlflow", port=0)) as server:
        env = {**os.environ, "AGENTLOOP_HOME": str(home), "MLFLOW_TRACKING_URI": server.url}
        env.pop("AGENTLOOP_OFFLINE_STORE", None)
        proc = subprocess.run(
            [
                str(Path(sys.executable).with_name("pyflyte")),
                "run",
                "workflows/ingest.py",
                "ingest_wf",
                "--sources",
                json.dumps([str(raw)]),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        logs = proc.stdout + proc.stderr
        assert proc.returncode == 0, logs[-4000:]
        run = MlflowClient(server.url).search_runs(
            [MlflowClient(server.url).get_experiment_by_name("ingestion").experiment_id]
        )[0]
        assert run.data.metrics["read"] == 82
        assert run.data.metrics["accepted"] == 80
        assert run.data.metrics["quarantined"] == 2
        assert (
            run.data.metrics["accepted"] + run.data.metrics["duplicates"] + run.data.metrics["quarantined"]
            == 82
        )
        assert run.data.tags["flyte.execution_id"]
        artifacts = {a.path for a in MlflowClient(server.url).list_artifacts(run.info.run_id)}
        assert {"ingest_report.html", "ingest_sources.json", "ingest_quarantine_reasons.json"} <= artifacts

    store = home / "store"
    assert list((store / "interactions").glob("day=*/*.parquet"))
    online = list((store / "_feast").glob("*.db"))
    assert online, "Feast's SQLite online store was not created"
    for needle in (PLANTED_KEY.encode(), PLANTED_EMAIL.encode()):
        assert (
            _files_containing(store, needle) == []
        )  # offline store, quarantine, Feast registry + online store
        assert _files_containing(tmp_path / "mlflow", needle) == []  # MLflow db and artifacts
        assert needle.decode() not in logs
    # the redaction happened (not just a lost record): the placeholder is in the store
    import pyarrow.dataset as ds

    table = (
        ds.dataset(store / "interactions", format="parquet", partitioning="hive")
        .to_table(columns=["messages_json", "redacted_secrets", "redacted_email"])
        .to_pandas()
    )
    assert table["messages_json"].str.contains("<SECRET:aws_access_key>", regex=False).sum() == 1
    assert table["redacted_email"].sum() >= 1


def test_daily_launch_plan_is_scheduled_with_kickoff_time():
    from workflows.ingest import ingest_daily

    schedule = ingest_daily.schedule
    assert schedule.cron_schedule.schedule == "0 2 * * *"
    assert schedule.kickoff_time_input_arg == "kickoff_time"
    sources = ingest_daily.parameters.parameters["sources"].default.collection.literals
    assert re.match(r"s3://", sources[0].scalar.primitive.string_value), "cluster defaults read from MinIO"


@pytest.mark.services("rabbitmq")
def test_drain_then_ingest_lands_every_published_event_in_the_store(tmp_path, monkeypatch):
    import uuid

    import pyarrow.dataset as ds

    from features.drain import DrainConfig, connect
    from features.drain_publish import publish_interactions
    from features.raw_format import unwrap
    from workflows.ingest import drain_ingest_wf

    monkeypatch.setenv("AGENTLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = tmp_path / "raw"
    generate_sample_logs(raw, conversations=30, seed=9)
    records = [
        unwrap(json.loads(line)) for p in sorted(raw.rglob("*.jsonl")) for line in p.read_text().splitlines()
    ]
    queue = f"agentloop-test-{uuid.uuid4().hex[:8]}"
    config = DrainConfig(landing=str(tmp_path / "landing"), queue=queue, exchange=f"{queue}-x")
    published = publish_interactions(config, records, mode="mixed")
    try:
        report = drain_ingest_wf(
            landing=str(tmp_path / "landing"),
            queue=queue,
            store=str(tmp_path / "store"),
            max_messages=len(published),
            max_seconds=60.0,
        )
    finally:
        conn = connect(config)
        try:
            ch = conn.channel()
            ch.queue_delete(queue)
            ch.exchange_delete(f"{queue}-x")
        finally:
            conn.close()
    assert (
        report["read"]
        == len(published)
        == report["accepted"] + report["duplicates"] + report["quarantined_total"]
    )
    stored = (
        ds.dataset(tmp_path / "store" / "interactions", format="parquet", partitioning="hive")
        .to_table(columns=["interaction_id"])
        .column("interaction_id")
        .to_pylist()
    )
    assert sorted(stored) == sorted(r["id"] for r in records)
