"""Sample agent logs from chitchat-dataset, and the raw interaction format they follow."""

from __future__ import annotations

import copy
import gzip
import json
import re
import subprocess
import sys
from datetime import date, timedelta, timezone
from pathlib import Path

import pytest

from features.raw_format import (
    AGENTS,
    EVENT_TYPE,
    ROLES,
    SPEC_VERSION,
    is_cloudevent,
    normalise_usage,
    parse_timestamp,
    to_cloudevent,
    unwrap,
    validate_cloudevent,
    validate_record,
)
from features.sample_logs import (
    LATENCY_MAX_MS,
    LATENCY_MIN_MS,
    conversation_to_record,
    generate_sample_logs,
    load_conversations,
    ratings_to_feedback,
    reply_latency_ms,
)

REPO = Path(__file__).resolve().parents[1]
END = date(2025, 1, 7)
DAYS = 7


@pytest.fixture(scope="module")
def dataset():
    return load_conversations()


@pytest.fixture(scope="module")
def logs(tmp_path_factory, dataset):
    out = tmp_path_factory.mktemp("logs")
    report = generate_sample_logs(
        out, conversations=60, days=DAYS, seed=0, end_date=END, error_rate=0.05, dataset=dataset
    )
    return out, report


def read_lines(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def log_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def all_lines(root: Path) -> list[tuple[Path, dict]]:
    return [(path, obj) for path in log_files(root) for obj in read_lines(path)]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in log_files(root)}


def good_record() -> dict:
    return {
        "id": "r-1",
        "agent": "agent-jamie",
        "session_id": "s-1",
        "timestamp": "2025-01-07T10:00:00Z",
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello!"},
        ],
        "latency_ms": 812,
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        "feedback": {"rating": 5, "thumbs": "up"},
    }


# --- generated logs -----------------------------------------------------------------------------


def test_every_line_parses_and_validates_in_plain_cloudevents_and_gzip(logs):
    root, _ = logs
    lines = all_lines(root)
    assert any(p.name.endswith(".jsonl.gz") for p, _ in lines)
    assert any(p.name.endswith(".jsonl") for p, _ in lines)
    assert any(is_cloudevent(o) for _, o in lines) and any(not is_cloudevent(o) for _, o in lines)
    for path, obj in lines:
        assert validate_record(unwrap(obj)) == [], (path, obj.get("id"))


def test_cloudevent_lines_follow_the_documented_envelope(logs):
    root, _ = logs
    events = [o for _, o in all_lines(root) if is_cloudevent(o)]
    assert events
    for event in events:
        record = event["data"]
        assert validate_cloudevent(event) == []
        assert event["specversion"] == SPEC_VERSION == "1.0"
        assert event["type"] == EVENT_TYPE == "dev.homelab.agent.interaction"
        assert event["source"] == f"/agents/{record['agent']}"
        assert event["id"] == record["id"]
        assert event["time"] == record["timestamp"]
        assert event["subject"] == record["session_id"]
        assert event["datacontenttype"] == "application/json"


def test_files_are_one_per_agent_per_utc_day_inside_the_window(logs):
    root, report = logs
    window = {(END - timedelta(days=i)).isoformat() for i in range(DAYS)}
    files = log_files(root)
    assert len(files) == report.files
    for path in files:
        assert re.fullmatch(r"agent-[a-z-]+\.jsonl(\.gz)?", path.name)
        assert path.parent.name in window and path.parent.parent == root
        agent = path.name.split(".")[0]
        for obj in read_lines(path):
            record = unwrap(obj)
            assert record["agent"] == agent
            utc_day = parse_timestamp(record["timestamp"]).astimezone(timezone.utc).date().isoformat()
            assert utc_day == path.parent.name
    assert not [p for p in root.rglob(".*")], "temp files left behind"


def test_all_four_agents_appear(logs):
    root, report = logs
    assert set(report.per_agent) == set(AGENTS)
    assert {unwrap(o)["agent"] for _, o in all_lines(root)} == set(AGENTS)


def test_written_count_matches_conversations_and_ids_are_unique(logs):
    root, report = logs
    records = [unwrap(o) for _, o in all_lines(root)]
    assert report.written == len(records) == 60
    assert sum(report.per_agent.values()) == 60
    assert len({r["id"] for r in records}) == 60
    assert len({r["session_id"] for r in records}) == 60


def test_conversations_without_a_reply_are_skipped_and_counted(logs):
    root, report = logs
    assert report.skipped_no_reply > 0  # ~44% of chitchat conversations have no reply
    for _, obj in all_lines(root):
        record = unwrap(obj)
        roles = [m["role"] for m in record["messages"]]
        assert roles[0] == "system" and roles[1] == "user"
        assert all(a != b for a, b in zip(roles[1:], roles[2:], strict=False)), "user and assistant alternate"
        if record.get("error") is None:
            assert roles[-1] == "assistant"


def test_failed_interactions_carry_an_error_and_no_reply_tokens(logs):
    root, report = logs
    failed = [unwrap(o) for _, o in all_lines(root) if unwrap(o).get("error")]
    assert len(failed) == report.errors == 3  # 5% of 60
    for record in failed:
        assert record["messages"][-1]["role"] == "user"
        assert record["usage"]["completion_tokens"] == 0
        assert "feedback" not in record


def test_shares_of_cloudevents_and_gzip_files_are_as_configured(logs):
    root, report = logs
    lines = all_lines(root)
    assert report.cloudevents == sum(is_cloudevent(o) for _, o in lines) == 18  # 30% of 60
    assert report.gzip_files == sum(p.name.endswith(".gz") for p in log_files(root))
    assert report.gzip_files == int(0.25 * report.files + 0.5)


def test_same_seed_is_byte_identical_on_rerun_and_rewrites_nothing(tmp_path, dataset, logs):
    root, _ = logs
    before = {p: p.stat().st_mtime_ns for p in log_files(root)}
    again = tmp_path / "again"
    generate_sample_logs(
        again, conversations=60, days=DAYS, seed=0, end_date=END, error_rate=0.05, dataset=dataset
    )
    assert tree_bytes(again) == tree_bytes(root)
    generate_sample_logs(
        root, conversations=60, days=DAYS, seed=0, end_date=END, error_rate=0.05, dataset=dataset
    )
    assert {p: p.stat().st_mtime_ns for p in log_files(root)} == before


def test_a_different_seed_gives_different_logs(tmp_path, dataset):
    a, b = tmp_path / "a", tmp_path / "b"
    generate_sample_logs(a, conversations=20, seed=0, end_date=END, dataset=dataset)
    generate_sample_logs(b, conversations=20, seed=1, end_date=END, dataset=dataset)
    assert tree_bytes(a) != tree_bytes(b)
    ids_a = {unwrap(o)["id"] for _, o in all_lines(a)}
    ids_b = {unwrap(o)["id"] for _, o in all_lines(b)}
    assert not ids_a & ids_b


def test_rerun_replaces_a_file_that_changed_compression(tmp_path, dataset):
    generate_sample_logs(tmp_path, conversations=30, seed=0, end_date=END, gzip_share=1.0, dataset=dataset)
    generate_sample_logs(tmp_path, conversations=30, seed=0, end_date=END, gzip_share=0.0, dataset=dataset)
    assert not list(tmp_path.rglob("*.gz"))


def test_timestamps_keep_the_real_time_of_day_of_the_reply(dataset):
    def ends_on_a_reply(conv):
        groups = conv["messages"]
        return (
            len(groups) > 1
            and groups[-1][0]["sender"] != groups[0][0]["sender"]
            and groups[-1][-1]["text"].strip()
        )

    cid = next(c for c in sorted(dataset) if ends_on_a_reply(dataset[c]))
    real = dataset[cid]["messages"][-1][-1]["timestamp"]  # e.g. 2018-05-02T19:41:34Z
    record = conversation_to_record(cid, dataset[cid], agent="agent-bruno", day=END, seed=0)
    assert record["timestamp"] == f"{END.isoformat()}T{real[11:]}"
    shifted = conversation_to_record(cid, dataset[cid], agent="agent-mary-kay", day=END, seed=0)
    assert parse_timestamp(shifted["timestamp"]) == parse_timestamp(record["timestamp"])


# --- mapping choices ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratings", "feedback"),
    [
        ({"witty": 10, "upbeat": 10, "interesting": 10}, {"rating": 5, "thumbs": "up"}),
        ({"witty": 8, "upbeat": 7, "interesting": 7}, {"rating": 4, "thumbs": "up"}),
        ({"witty": 5, "upbeat": 5, "interesting": 5}, {"rating": 3}),
        ({"witty": 3, "upbeat": 4, "interesting": 3}, {"rating": 2, "thumbs": "down"}),
        ({"witty": 1, "upbeat": 1, "interesting": 1}, {"rating": 1, "thumbs": "down"}),
        (None, None),
    ],
)
def test_chitchat_ratings_map_to_feedback(ratings, feedback):
    assert ratings_to_feedback(ratings) == feedback


def test_latency_is_the_real_reply_gap_clamped():
    assert reply_latency_ms(17, 250) == 17_250
    assert reply_latency_ms(0, 0) == LATENCY_MIN_MS
    assert reply_latency_ms(3 * 86_400, 999) == LATENCY_MAX_MS


# --- the format ---------------------------------------------------------------------------------


def test_a_good_record_and_its_cloudevent_are_valid_and_unwrap_to_the_record():
    record = good_record()
    event = to_cloudevent(record)
    assert validate_record(record) == [] and validate_cloudevent(event) == []
    assert is_cloudevent(event) and not is_cloudevent(record)
    assert unwrap(event) == record and unwrap(record) is record
    assert unwrap({**event, "data": json.dumps(record)}) == record


def without(record: dict, *path: str) -> dict:
    record = copy.deepcopy(record)
    target = record
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return record


def with_(record: dict, value, *path) -> dict:
    record = copy.deepcopy(record)
    target = record
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return record


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (without(good_record(), "messages"), "missing_field:messages"),
        (with_(good_record(), {}, "usage"), "bad_value:usage"),
        (with_(good_record(), "12", "usage", "prompt_tokens"), "bad_type:usage.prompt_tokens"),
        (with_(good_record(), [{"type": "function", "function": {}}], "tools"), "bad_tools"),
        (
            with_(good_record(), [{"name": "x", "value": 1, "source": "crowd"}], "feedback", "scores"),
            "bad_score:feedback.scores[0]",
        ),
        (with_(good_record(), "2025-01-07T10:00:00", "timestamp"), "bad_timestamp"),  # no offset
        (with_(good_record(), "2025-13-07T10:00:00Z", "timestamp"), "bad_timestamp"),
        (with_(good_record(), "yesterday", "timestamp"), "bad_timestamp"),
        (with_(good_record(), 1736244000, "timestamp"), "bad_timestamp"),
        (with_(good_record(), "bot", "messages", 2, "role"), "bad_role:messages[2]"),
        (with_(good_record(), [], "messages"), "empty_conversation"),
        (with_(good_record(), [{"role": "system", "content": "x"}], "messages"), "empty_conversation"),
        (with_(good_record(), 6, "feedback", "rating"), "bad_rating"),
        (with_(good_record(), 0, "feedback", "rating"), "bad_rating"),
        (with_(good_record(), 4.5, "feedback", "rating"), "bad_rating"),
        (with_(good_record(), "meh", "feedback", "thumbs"), "bad_thumbs"),
        (with_(good_record(), "812", "latency_ms"), "bad_type:latency_ms"),
        (with_(good_record(), -1, "latency_ms"), "bad_value:latency_ms"),
        (with_(good_record(), 99, "usage", "total_tokens"), "bad_value:usage.total_tokens"),
        (with_(good_record(), 7, "messages", 1, "content"), "bad_content:messages[1]"),
        (with_(good_record(), "Agent Jamie", "agent"), "bad_value:agent"),
        (with_(good_record(), "timeout", "error"), "bad_error"),
        (with_(good_record(), good_record()["messages"][:2], "messages"), "no_reply"),
    ],
)
def test_validate_record_names_each_problem(bad, problem):
    assert problem in validate_record(bad)


def test_model_latency_and_usage_are_optional_and_a_missing_total_is_derived():
    record = without(without(without(good_record(), "model"), "latency_ms"), "usage", "total_tokens")
    assert validate_record(record) == []
    assert normalise_usage(record["usage"]) == {
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "total_tokens": 15,
    }
    assert normalise_usage({"input_tokens": 7, "output_tokens": 2}) == {
        "prompt_tokens": 7,
        "completion_tokens": 2,
        "total_tokens": 9,
    }
    assert validate_record(without(good_record(), "usage")) == []


def test_a_failed_call_may_end_before_the_reply():
    record = with_(good_record(), good_record()["messages"][:2], "messages")
    record["error"] = {"type": "APITimeoutError", "message": "Request timed out."}
    assert validate_record(record) == []


def test_tool_calls_in_the_openai_shape_are_valid():
    record = good_record()
    record["messages"][2:2] = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "now", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "10:00"},
    ]
    assert validate_record(record) == []
    del record["messages"][3]["tool_call_id"]
    assert validate_record(record) == ["bad_tool_call_id:messages[3]"]


def test_validate_cloudevent_catches_an_envelope_that_disagrees_with_its_record():
    event = to_cloudevent(good_record())
    assert validate_cloudevent({**event, "id": "other"}) == ["bad_envelope:id"]
    assert validate_cloudevent({**event, "source": "/agents/agent-bruno"}) == ["bad_envelope:source"]
    assert validate_cloudevent({**event, "type": "com.example.other"}) == ["bad_envelope:type"]
    assert "missing_envelope:time" in validate_cloudevent(without(event, "time"))


def test_the_examples_in_the_format_doc_are_valid():
    doc = (REPO / "docs" / "interaction-format.md").read_text()
    record, event = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", doc, re.S)]
    assert validate_record(record) == []
    assert validate_cloudevent(event) == [] and validate_record(unwrap(event)) == []
    assert set(ROLES) == {"system", "user", "assistant", "tool"}


# --- command line -------------------------------------------------------------------------------


def test_cli_writes_logs_and_prints_a_one_line_summary(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "features.sample_logs",
            "--out",
            str(out),
            "--conversations",
            "12",
            "--end-date",
            END.isoformat(),
            "--days",
            "3",
            "--seed",
            "7",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    assert result.stdout.startswith("wrote 12 interactions")
    records = [unwrap(o) for _, o in all_lines(out)]
    assert len(records) == 12
    assert {p.parent.name for p in log_files(out)} <= {"2025-01-05", "2025-01-06", "2025-01-07"}


def test_cli_rejects_a_share_outside_zero_to_one(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "features.sample_logs", "--out", str(tmp_path), "--error-rate", "1.5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2 and "error_rate" in result.stderr


def test_interactions_written_as_traces_read_back_as_the_same_interactions(tmp_path):
    """Every trace format of --trace-share carries what the JSONL line carries (ids aside)."""
    from features.ingest import IngestConfig, ingest
    from features.store import read_interactions

    keep = ["agent", "session_id", "event_timestamp", "model", "messages_json", "prompt_tokens"]
    keep += ["completion_tokens", "total_tokens", "rating", "error_type", "latency_ms"]
    tables = {}
    for share in (0.0, 1.0):
        out = tmp_path / f"raw-{share}"
        report = generate_sample_logs(out, conversations=60, seed=3, end_date="2025-01-07", trace_share=share)
        if share:
            assert set(report.traces) == {"otlp_span", "otlp_logs", "openinference", "mlflow", "openai"}
        result = ingest(str(out), IngestConfig(store=str(tmp_path / f"store-{share}"), progress=False))
        assert (result.accepted, result.quarantined_total) == (60, 0)
        rows = read_interactions(tmp_path / f"store-{share}").to_pylist()
        tables[share] = sorted(
            ({k: r[k] for k in [*keep, "source_format"]} for r in rows), key=lambda r: r["session_id"]
        )
    for plain, traced in zip(tables[0.0], tables[1.0], strict=True):
        expected = {
            **plain,
            "latency_ms": pytest.approx(plain["latency_ms"]),
            "source_format": traced["source_format"],
        }
        if (
            traced["source_format"] == "openinference"
        ):  # its spans carry no feedback (Phoenix keeps annotations apart)
            expected["rating"] = None
        assert traced == expected
