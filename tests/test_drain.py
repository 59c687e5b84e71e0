"""features/drain.py: interaction CloudEvents from RabbitMQ into durable landing files, acked only after."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from features.cloudevents import Rejected, to_structured
from features.drain import CRASH_ENV, DrainConfig, connect, declare_topology, drain, redact_url
from features.drain_publish import iter_log_records, publish_interaction, publish_interactions
from features.raw_format import EVENT_TYPE, to_cloudevent, unwrap, validate_cloudevent, validate_record

REPO = Path(__file__).resolve().parents[1]
rabbitmq = pytest.mark.services("rabbitmq")


def make_record(i: int, offset_hours: int = 0, secret: str = "") -> dict:
    tz = timezone(timedelta(hours=offset_hours))
    moment = datetime(2025, 1, 7, 23, 30, tzinfo=timezone.utc) + timedelta(minutes=7 * i)
    stamp = moment.astimezone(tz).isoformat().replace("+00:00", "Z")
    return {
        "id": str(uuid.uuid4()),
        "agent": "agent-bruno",
        "session_id": f"sess-{i // 3}",
        "timestamp": stamp,
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "messages": [
            {"role": "user", "content": f"hello {i} {secret}"},
            {"role": "assistant", "content": "hi"},
        ],
        "latency_ms": 120,
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }


def landed_events(landing: Path) -> list[dict]:
    """Every line of every landing file (the day folders only, as the ingestion reads them)."""
    return [
        json.loads(line)
        for path in sorted(landing.glob("????-??-??/*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def rejected_lines(config: DrainConfig) -> list[dict]:
    return [
        json.loads(line)
        for p in sorted(config.rejected_root.glob("*/*.jsonl"))
        for line in p.read_text().splitlines()
    ]


def queue_depth(config: DrainConfig) -> int:
    conn = connect(config)
    try:
        return conn.channel().queue_declare(config.queue, passive=True).method.message_count
    finally:
        conn.close()


def wait_for_depth(config: DrainConfig, expected: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while (depth := queue_depth(config)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return depth


@pytest.fixture
def config(tmp_path):
    """A DrainConfig on a fresh exchange and queue of this test's own, deleted afterwards.

    Tests that know how many messages to expect stop the drain with max_messages: a busy shared
    machine can pause the broker for seconds, and a drain that exits on a short idle would then
    stop early (nothing lost, but the test would see a partial drain).
    """
    tag = uuid.uuid4().hex[:10]
    cfg = DrainConfig(
        landing=str(tmp_path / "landing"),
        exchange=f"agentloop-test-{tag}",
        queue=f"agentloop-test-drain-{tag}",
        batch_size=10,
        max_wait_s=5,
        idle_exit_s=15,
    )
    conn = connect(cfg)
    declare_topology(conn.channel(), cfg)
    conn.close()
    yield cfg
    conn = connect(cfg)
    try:
        channel = conn.channel()
        channel.queue_delete(cfg.queue)
        channel.exchange_delete(cfg.exchange)
    finally:
        conn.close()


def publish_raw(
    config: DrainConfig, messages: list[tuple[dict, bytes]], routing_key: str = EVENT_TYPE
) -> None:
    """Publish (properties kwargs, body) pairs as they are: what a misbehaving producer sends."""
    import pika

    conn = connect(config)
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        for props, body in messages:
            channel.basic_publish(
                config.exchange, routing_key, body, properties=pika.BasicProperties(**props), mandatory=True
            )
    finally:
        conn.close()


def run_drain_process(config: DrainConfig, crash_at: str) -> subprocess.CompletedProcess:
    env = {**os.environ, CRASH_ENV: crash_at, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "features.drain",
        "--landing",
        config.landing,
        "--queue",
        config.queue,
        "--exchange",
        config.exchange,
        "--batch-size",
        str(config.batch_size),
        "--max-wait",
        "5",
        "--idle-exit",
        "3",
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


# --- normalization, no broker -----------------------------------------------------------------


def test_binary_headers_with_any_known_prefix_become_the_same_structured_event():
    record = make_record(1)
    expected = to_cloudevent(record)
    body = json.dumps(record).encode()
    for prefix in ("cloudEvents:", "cloudEvents_", "ce-", "ce_", ""):
        headers = {prefix + k: v for k, v in expected.items() if k not in ("data", "datacontenttype")}
        headers["x-death"] = [{"count": 1}]  # transport metadata is not an attribute
        event, mode = to_structured("application/json", headers, body)
        assert (event, mode) == (expected, "binary"), prefix
        assert validate_cloudevent(event) == []


def test_a_time_header_rerendered_in_utc_keeps_the_records_own_string():
    record = make_record(2, offset_hours=2)  # "...+02:00", as agent-mary-kay logs it
    attrs = {k: v for k, v in to_cloudevent(record).items() if k not in ("data", "datacontenttype")}
    instant = datetime.fromisoformat(record["timestamp"]).astimezone(timezone.utc)
    for time_header in (instant.isoformat().replace("+00:00", "Z"), instant):  # string, native AMQP timestamp
        headers = {f"ce-{k}": v for k, v in attrs.items()} | {"ce-time": time_header}
        event, _ = to_structured("application/json", headers, json.dumps(record).encode())
        assert event["time"] == record["timestamp"]
        assert validate_cloudevent(event) == []


@pytest.mark.parametrize(
    "content_type, headers, body, reason",
    [
        ("application/cloudevents+json", {}, b"\x00\xffnot json", "not_json"),
        (None, {}, b'{"id": "plain record, no envelope"}', "not_cloudevent"),
        (None, {}, b"[1, 2]", "not_cloudevent"),
        (
            "application/cloudevents+json",
            {},
            b'{"specversion": "1.0", "type": "dev.other", "id": "x"}',
            "wrong_type",
        ),
        ("application/json", {"ce-specversion": "1.0", "ce-type": "dev.other"}, b"{}", "wrong_type"),
        ("application/json", {"ce-specversion": "1.0", "ce-type": EVENT_TYPE}, b"NaN", "not_json"),
        ("application/cloudevents-batch+json", {}, b"[]", "unsupported_format"),
        ("text/plain", {}, b"hello", "not_json"),
    ],
)
def test_what_is_not_an_interaction_cloudevent_is_rejected_with_a_reason(content_type, headers, body, reason):
    with pytest.raises(Rejected) as info:
        to_structured(content_type, headers, body)
    assert info.value.reason == reason
    assert b"not json" not in str(info.value).encode() and b"plain record" not in str(info.value).encode()


def test_urls_in_messages_never_show_the_password():
    assert redact_url("amqp://user:s3cret@rabbit:5672/%2F") == "amqp://user:***@rabbit:5672/%2F"
    assert redact_url("amqp://rabbit/%2F") == "amqp://rabbit/%2F"


def test_prefetch_below_the_batch_size_is_refused():
    with pytest.raises(ValueError, match="prefetch"):
        DrainConfig(batch_size=100, prefetch=10)


# --- against the real broker ------------------------------------------------------------------


@rabbitmq
def test_structured_and_binary_events_both_land_as_valid_structured_events(config):
    records = [make_record(i, offset_hours=2 if i % 4 == 0 else 0) for i in range(24)]
    ids = publish_interactions(config, records[:8], "structured")
    ids += publish_interactions(config, records[8:14], "binary", header_prefix="cloudEvents:")
    ids += publish_interactions(config, records[14:19], "binary", header_prefix="ce-")
    ids += publish_interactions(
        config, records[19:], "binary", header_prefix=""
    )  # eventing-rabbitmq's broker
    config.max_messages = len(records)
    report = drain(config)

    events = landed_events(Path(config.landing))
    assert sorted(e["id"] for e in events) == sorted(ids) == sorted(r["id"] for r in records)
    for event in events:
        assert validate_cloudevent(event) == [], event["id"]
        assert validate_record(unwrap(event)) == [], event["id"]
    by_id = {r["id"]: r for r in records}
    assert all(unwrap(e) == by_id[e["id"]] for e in events)
    for path in Path(config.landing).glob("????-??-??/*.jsonl"):  # folder day = UTC day of the event time
        assert path.name.startswith(f"drain-{config.queue}-{report.run_id}-")
        for line in path.read_text().splitlines():
            moment = datetime.fromisoformat(json.loads(line)["time"].replace("Z", "+00:00"))
            assert moment.astimezone(timezone.utc).date().isoformat() == path.parent.name
    assert (report.consumed, report.written, report.structured, report.binary, report.rejected) == (
        24,
        24,
        8,
        16,
        0,
    )
    assert report.acked == report.consumed and report.batches == 3
    assert report.files == len(list(Path(config.landing).glob("????-??-??/*.jsonl")))
    assert queue_depth(config) == 0


@rabbitmq
def test_a_batch_is_acked_only_after_its_files_exist(config):
    records = [make_record(i) for i in range(45)]
    published = set(publish_interactions(config, records, "mixed"))

    crashed = run_drain_process(config, "after_write:2")  # SIGKILL after batch 2's files, before its ack
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    first = landed_events(Path(config.landing))
    assert len(first) == 20  # batches 1 and 2 are on disk...
    assert wait_for_depth(config, 35) == 35  # ...batch 1 was acked, batch 2 (written, not acked) came back

    config.max_messages = 35
    report = drain(config)
    second = landed_events(Path(config.landing))
    ids = Counter(e["id"] for e in second)
    assert set(ids) == published  # nothing lost
    assert sum(n == 2 for n in ids.values()) == 10  # batch 2 twice: harmless, the ingestion dedups on id
    assert report.consumed == 35 and report.acked == 35
    assert report.redelivered == 10  # the broker flags them: the report says duplicates are likely
    assert queue_depth(config) == 0


@rabbitmq
def test_a_drain_killed_before_the_rename_leaves_nothing_visible_and_nothing_acked(config):
    published = set(publish_interactions(config, [make_record(i) for i in range(15)], "structured"))

    crashed = run_drain_process(config, "before_rename:1")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert landed_events(Path(config.landing)) == []
    assert all(
        p.name.startswith(".") and p.name.endswith(".tmp")
        for p in Path(config.landing).rglob("*")
        if p.is_file()
    )
    assert wait_for_depth(config, 15) == 15

    config.max_messages = 15
    drain(config)
    assert Counter(e["id"] for e in landed_events(Path(config.landing))) == Counter(published)


@rabbitmq
def test_a_partial_batch_is_flushed_after_max_wait(config):
    config.batch_size, config.max_wait_s, config.idle_exit_s = 100, 0.3, None
    ids = publish_interactions(config, [make_record(i) for i in range(7)], "binary")
    stop, result = threading.Event(), {}
    worker = threading.Thread(target=lambda: result.update(report=drain(config, stop=stop)))
    worker.start()
    try:
        deadline = time.monotonic() + 5
        # The 7 records straddle midnight UTC: one batch, two day folders, two files.
        while len(landed_events(Path(config.landing))) < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.is_alive()  # written while the drain still runs: by max_wait, not by stopping
        assert sorted(e["id"] for e in landed_events(Path(config.landing))) == sorted(ids)
    finally:
        stop.set()
        worker.join(10)
    report = result["report"]
    assert report.flushes == {"max_wait": 1} and report.acked == 7 and report.stopped_by == "stop"


@rabbitmq
def test_non_interaction_and_non_json_messages_are_kept_durably_and_never_logged(config, caplog):
    config.binding_keys = ["#"]
    conn = connect(config)
    declare_topology(conn.channel(), config)  # adds the "#" binding
    conn.close()
    secret = "sk-live-0123456789abcdef"
    good = [make_record(i, secret=secret) for i in range(3)]
    other = dict(to_cloudevent(make_record(9)), type="dev.homelab.agent.heartbeat")
    junk = [
        ({"content_type": "application/cloudevents+json"}, f"\x00\xff{secret} not json".encode("latin-1")),
        (
            {"content_type": "application/json"},
            json.dumps(make_record(10, secret=secret)).encode(),
        ),  # no envelope
        ({"content_type": "application/cloudevents+json"}, json.dumps(other).encode()),
        (
            {
                "content_type": "application/json",
                "headers": {"ce-specversion": "1.0", "ce-type": EVENT_TYPE, "ce-id": "x"},
            },
            secret.encode(),
        ),
    ]
    publish_interaction(config, good[0], "structured")
    publish_raw(config, junk[:2])
    publish_interaction(config, good[1], "binary")
    publish_raw(config, junk[2:], routing_key="dev.homelab.agent.heartbeat")
    publish_interaction(config, good[2], "binary", header_prefix="ce-")

    config.max_messages = 7
    with caplog.at_level("DEBUG"):
        report = drain(config)

    assert sorted(e["id"] for e in landed_events(Path(config.landing))) == sorted(r["id"] for r in good)
    kept = rejected_lines(config)
    assert sorted(base64.b64decode(k["body_base64"]) for k in kept) == sorted(body for _, body in junk)
    assert Counter(k["reason"] for k in kept) == {"not_json": 2, "not_cloudevent": 1, "wrong_type": 1}
    assert report.reasons == {"not_json": 2, "not_cloudevent": 1, "wrong_type": 1}
    assert (
        report.consumed
        == report.written + report.rejected
        == report.structured + report.binary + report.rejected
        == 7
    )
    assert report.acked == 7 and report.rejected_files >= 1
    assert not list(Path(config.landing).glob("????-??-??/rejected-*"))  # outside the day folders
    assert secret not in caplog.text
    assert queue_depth(config) == 0


@rabbitmq
def test_max_messages_stops_the_run_and_leaves_the_rest_queued(config):
    config.batch_size, config.max_messages = 5, 12
    published = publish_interactions(config, [make_record(i) for i in range(30)], "mixed")
    report = drain(config)
    assert (report.consumed, report.acked, report.batches, report.stopped_by) == (12, 12, 3, "max_messages")
    assert report.flushes == {"full": 2, "stop": 1}
    assert wait_for_depth(config, 18) == 18  # the prefetched rest went back to the queue

    config.max_messages = 18
    again = drain(config)
    assert again.consumed == 18
    assert sorted(e["id"] for e in landed_events(Path(config.landing))) == sorted(published)


@rabbitmq
def test_a_drain_of_an_empty_queue_exits_when_idle_and_writes_nothing(config):
    config.idle_exit_s = 0.3
    report = drain(config)
    assert (report.stopped_by, report.consumed, report.batches, report.files) == ("idle", 0, 0, 0)
    assert not Path(config.landing).exists() or not any(Path(config.landing).rglob("*.jsonl"))


TRACES = REPO / "tests" / "data" / "traces"


def test_trace_payloads_are_accepted_bare_as_structured_events_and_as_binary_events(tmp_path):
    from features.ingest import IngestConfig, ingest

    otlp = (TRACES / "otel_latest" / "spans.jsonl").read_bytes().strip()
    bare, bare_mode = to_structured("application/json", None, otlp)
    assert (
        bare_mode == "plain"
        and bare["type"] == "dev.homelab.agent.trace"
        and bare["data"] == json.loads(otlp)
    )
    wrapped = {
        "specversion": "1.0",
        "type": "io.opentelemetry.traces",
        "source": "/otel-collector",
        "id": "b1",
        "data": json.loads(otlp),
    }
    structured, _ = to_structured("application/cloudevents+json", None, json.dumps(wrapped).encode())
    binary, mode = to_structured(
        "application/json",
        {"ce-specversion": "1.0", "ce-type": "io.opentelemetry.traces", "ce-id": "b2"},
        otlp,
    )
    assert mode == "binary" and binary["data"] == json.loads(otlp)
    with pytest.raises(Rejected):  # another event type without a trace payload is still not ours
        to_structured(
            "application/cloudevents+json", None, json.dumps({**wrapped, "data": {"x": 1}}).encode()
        )
    landing = tmp_path / "landing" / "2026-12-07"
    landing.mkdir(parents=True)
    (landing / "drain.jsonl").write_text("".join(json.dumps(e) + "\n" for e in (bare, structured, binary)))
    report = ingest(str(tmp_path / "landing"), IngestConfig(store=str(tmp_path / "store"), progress=False))
    assert (report.accepted, report.duplicates, report.quarantined_total) == (2, 4, 0)


@rabbitmq
def test_sample_traces_published_to_the_queue_land_and_ingest_as_their_interactions(config, tmp_path):
    from features.ingest import IngestConfig, ingest
    from features.sample_logs import generate_sample_logs

    raw = tmp_path / "raw"
    generate_sample_logs(raw, conversations=30, seed=4, end_date="2025-01-07", trace_share=1.0)
    payloads = list(iter_log_records(raw))
    publish_interactions(config, payloads[: len(payloads) // 2], "structured")
    publish_interactions(config, payloads[len(payloads) // 2 :], "binary", header_prefix="ce-")
    config.max_messages = len(payloads)
    report = drain(config)
    assert (report.consumed, report.rejected) == (len(payloads), 0)
    result = ingest(config.landing, IngestConfig(store=str(tmp_path / "store"), progress=False))
    assert (result.accepted, result.quarantined_total) == (30, 0)
