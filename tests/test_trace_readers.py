"""Reading the traces agents already produce: recorded OTel GenAI (logs and span modes), OpenInference,
MLflow 3 and OpenAI-pair fixtures read back from the store as the agent sent them."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.ingest import IngestConfig, ingest
from features.raw_format import to_cloudevent
from features.store import read_interactions, read_quarantine
from tests.data.record_traces import AGENT, CONVERSATIONS, TOOLS, USER

FIXTURES = Path(__file__).resolve().parent / "data" / "traces"
SALT = "test-salt"
MODEL = "SmolLM2-135M-Instruct"


def config(store: Path, **over) -> IngestConfig:
    over.setdefault("flush_traces", True)
    return IngestConfig(store=str(store), progress=False, user_id_salt=SALT, **over)


def conserved(report) -> None:
    for s in report.sources:
        assert s.conserved(), s


def _walk(obj, key: str) -> list:
    """Every OTLP attribute value named `key`, or every dict value under `key`, anywhere in a JSON document."""
    out = []
    if isinstance(obj, dict):
        if obj.get("key") == key and isinstance(obj.get("value"), dict):
            out.append(next(iter(obj["value"].values())))
        for k, v in obj.items():
            if k == key and not isinstance(v, (dict, list)):
                out.append(v)
            out += _walk(v, key)
    elif isinstance(obj, list):
        for v in obj:
            out += _walk(v, key)
    return out


def _docs(folder: Path) -> list:
    return [json.loads(line) for p in sorted(folder.glob("*.jsonl")) for line in p.read_text().splitlines()]


def _source_tokens(fmt: str) -> set[tuple[int, int]]:
    """(prompt, completion) token pairs as the fixture holds them, read without the readers."""
    docs = _docs(FIXTURES / fmt)
    if fmt.startswith("otel"):
        ins, outs = _walk(docs, "gen_ai.usage.input_tokens"), _walk(docs, "gen_ai.usage.output_tokens")
    elif fmt == "openinference":
        ins, outs = _walk(docs, "llm.token_count.prompt"), _walk(docs, "llm.token_count.completion")
    elif fmt == "mlflow":
        usage = [json.loads(u) for u in _walk(docs, "mlflow.chat.tokenUsage")]
        ins, outs = [u["input_tokens"] for u in usage], [u["output_tokens"] for u in usage]
    else:
        usage = [d["response"]["usage"] for d in docs]
        ins = [u.get("prompt_tokens", u.get("input_tokens")) for u in usage]
        outs = [u.get("completion_tokens", u.get("output_tokens")) for u in usage]
    return {(int(i), int(o)) for i, o in zip(ins, outs, strict=True)}


def _normal(messages: list[dict]) -> list[dict]:
    """Messages compared by meaning: tool-call arguments as parsed JSON, absent keys and None alike."""
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if v is not None and k != "name"}
        if "tool_calls" in m:
            m["tool_calls"] = [
                {**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
                for c in m["tool_calls"]
            ]
        out.append(m)
    return out


def _rows(store: Path) -> dict[str, dict]:
    return {r["session_id"]: r for r in read_interactions(store).to_pylist()}


SOURCES = ["otel_default", "otel_latest", "openinference", "mlflow", "openai_pairs"]


@pytest.mark.parametrize("fmt", SOURCES)
def test_each_recorded_source_reads_back_as_the_agent_sent_it(tmp_path, fmt):
    report = ingest(str(FIXTURES / fmt), config(tmp_path / "store"))
    conserved(report)
    assert report.quarantined_total == 0
    rows = _rows(tmp_path / "store")
    sent = {conv: messages for conv, messages, _ in CONVERSATIONS}
    if fmt == "openai_pairs":  # the Responses API turn of the same weather conversation
        sent["conv-responses-3"] = sent["conv-weather-1"]
    assert set(rows) == set(sent)
    raw_text = "".join(p.read_text() for p in (FIXTURES / fmt).glob("*.jsonl"))
    user_hash = hmac.new(SALT.encode(), USER.encode(), hashlib.sha256).hexdigest()
    for session, row in rows.items():
        messages = json.loads(row["messages_json"])
        assert _normal(messages[:-1]) == _normal(sent[session])  # history incl. tool call and tool result
        reply = messages[-1]
        assert reply["role"] == "assistant" and reply["content"]
        assert json.dumps(reply["content"])[1:-1] in raw_text  # the reply the server gave, as recorded
        assert (row["agent"], row["agent_name"]) == ("support-agent", AGENT)
        assert row["model"] == MODEL
        assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]
        assert row["latency_ms"] > 0
        assert row["user_id_hash"] == user_hash
        assert row["source_format"] == {
            "otel_default": "otlp",
            "otel_latest": "otlp",
            "openai_pairs": "openai",
        }.get(fmt, fmt)
    assert {(r["prompt_tokens"], r["completion_tokens"]) for r in rows.values()} == _source_tokens(fmt)
    weather = rows["conv-weather-1"]
    # Tools offered: the OTel instrumentation does not record them; the others do.
    expected_tools = None if fmt.startswith("otel") else TOOLS
    assert (json.loads(weather["tools_json"]) if weather["tools_json"] else None) == expected_tools
    feedback = json.loads(weather["feedback_json"]) if weather["feedback_json"] else []
    if fmt.startswith("otel"):
        assert feedback == [
            {
                "name": "relevance",
                "value": 0.75,
                "source": "llm_judge",
                "label": "relevant",
                "comment": "answers the question asked",
            }
        ]
    elif fmt == "mlflow":
        assert {(f["name"], f["value"], f["source"]) for f in feedback} == {
            ("user_rating", 4.0, "human"),
            ("relevance", 0.75, "llm_judge"),
        }
        assert weather["rating"] == 4
    else:
        assert feedback == []
    assert rows["conv-password-2"]["feedback_json"] is None


def test_content_in_log_records_joins_its_span_whichever_file_comes_first(tmp_path):
    logs_last = tmp_path / "logs"
    logs_last.mkdir()
    shutil.copy(FIXTURES / "otel_default" / "spans.jsonl", logs_last / "a-spans.jsonl")
    shutil.copy(FIXTURES / "otel_default" / "logs.jsonl", logs_last / "z-logs.jsonl")
    report = ingest(str(logs_last), config(tmp_path / "store", flush_traces=False))
    conserved(report)
    spans_first = report.sources[0]
    assert (spans_first.accepted, spans_first.buffered) == (0, 2)  # two chat spans wait for their content
    assert (report.accepted, report.sources[-1].buffered) == (2, 0)
    reference = tmp_path / "reference"
    ingest(str(FIXTURES / "otel_default"), config(reference))
    drop = ["ingested_at", "source", "source_line"]
    assert read_interactions(tmp_path / "store").drop_columns(drop) == read_interactions(
        reference
    ).drop_columns(drop)


def test_a_trace_split_across_two_files_and_two_runs_joins(tmp_path):
    doc = json.loads((FIXTURES / "otel_latest" / "spans.jsonl").read_text())
    spans = [s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    chat = [s for s in spans if s["name"].startswith("chat")]
    agents = [s for s in spans if not s["name"].startswith("chat")]
    assert len(chat) == 2 and len(agents) == 2

    def one_request(part):
        return {
            "resourceSpans": [
                {**doc["resourceSpans"][0], "scopeSpans": [{"scope": {"name": "x"}, "spans": part}]}
            ]
        }

    (tmp_path / "day1").mkdir()
    (tmp_path / "day2").mkdir()
    (tmp_path / "day1" / "chat.jsonl").write_bytes(orjson.dumps(one_request(chat)) + b"\n")
    (tmp_path / "day2" / "agent.jsonl").write_bytes(orjson.dumps(one_request(agents)) + b"\n")
    store = tmp_path / "store"
    first = ingest(str(tmp_path / "day1"), config(store, flush_traces=False))
    conserved(first)
    assert (first.accepted, first.sources[0].buffered) == (0, 2)  # no ancestors yet: agent unknown
    second = ingest(
        str(tmp_path / "day2"), config(store, flush_traces=False)
    )  # a new run: the buffer was committed
    conserved(second)
    assert (second.accepted, second.sources[0].carried_in, second.sources[0].buffered) == (2, 2, 0)
    rows = _rows(store)
    assert set(rows) == {"conv-weather-1", "conv-password-2"}
    assert {r["agent"] for r in rows.values()} == {"support-agent"}
    assert {r["source"] for r in rows.values()} == {str(tmp_path / "day1" / "chat.jsonl")}


def test_a_span_recorded_without_content_is_quarantined_naming_the_capture_setting(tmp_path):
    report = ingest(str(FIXTURES / "otel_nocontent"), config(tmp_path / "store"))
    conserved(report)
    assert report.accepted == 0
    assert report.quarantined == {"no_content:OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": 2}
    q = read_quarantine(tmp_path / "store").to_pylist()
    assert all("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true" in r["detail"] for r in q)
    assert {r["source"].rsplit("/", 1)[-1] for r in q} == {"spans.jsonl"}
    assert all(r["interaction_id"] and "-" in r["interaction_id"] for r in q)


def test_spans_without_content_and_without_logs_wait_then_close_when_the_data_moves_on(tmp_path):
    (tmp_path / "logs").mkdir()
    shutil.copy(FIXTURES / "otel_nocontent" / "spans.jsonl", tmp_path / "logs" / "spans.jsonl")
    store = tmp_path / "store"
    report = ingest(str(tmp_path / "logs"), config(store, flush_traces=False))
    assert (report.quarantined_total, report.sources[0].buffered) == (0, 2)  # the logs may still come
    later = _otlp_line([_span("a" * 32, "1" * 16, None, "unrelated", {}, start=2_000_000_000_000_000_000)])
    (tmp_path / "logs2").mkdir()
    (tmp_path / "logs2" / "later.jsonl").write_bytes(later + b"\n")
    report = ingest(str(tmp_path / "logs2"), config(store, flush_traces=False))
    conserved(report)
    assert report.quarantined == {"no_content:OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": 2}


def test_reingesting_recorded_traces_adds_nothing(tmp_path):
    store = tmp_path / "store"
    ingest(str(FIXTURES), config(store))
    before = read_interactions(store).num_rows
    again = ingest(str(FIXTURES), config(store, force=True))
    conserved(again)
    assert again.accepted == 0 and read_interactions(store).num_rows == before


# ------------------------------------------------------------------------------- hand-written forms


def _av(v):
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": v}


def _attrs(d: dict) -> list:
    return [{"key": k, "value": _av(v)} for k, v in d.items()]


def _span(trace, span, parent, name, attrs, start=1_736_244_000_000_000_000, events=()):
    s = {
        "traceId": trace,
        "spanId": span,
        "name": name,
        "kind": 3,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + 250_000_000),
        "attributes": _attrs(attrs),
        "events": [{"name": n, "timeUnixNano": str(start), "attributes": _attrs(a)} for n, a in events],
    }
    if parent:
        s["parentSpanId"] = parent
    return s


def _otlp_line(spans, service="legacy-svc") -> bytes:
    resource = {"attributes": _attrs({"service.name": service})}
    return orjson.dumps(
        {"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": {"name": "t"}, "spans": spans}]}]}
    )


T1, T2, T3 = "1" * 32, "2" * 32, "3" * 32


def test_legacy_forms_no_installable_library_emits_read_like_the_current_one(tmp_path):
    # OpenLLMetry / semantic-conventions <= 1.26 indexed attributes (gen_ai.prompt.N.*, gen_ai.completion.N.*),
    # legacy usage names, tools as llm.request.functions.N.*; no parent: agent = service.name, session = trace.
    indexed = _span(
        T1,
        "a" * 16,
        None,
        "openai.chat",
        {
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.prompt.0.role": "user",
            "gen_ai.prompt.0.content": "weather?",
            "gen_ai.prompt.1.role": "assistant",
            "gen_ai.prompt.1.tool_calls.0.id": "c1",
            "gen_ai.prompt.1.tool_calls.0.name": "get_weather",
            "gen_ai.prompt.1.tool_calls.0.arguments": '{"city": "Lisbon"}',
            "gen_ai.prompt.2.role": "tool",
            "gen_ai.prompt.2.tool_call_id": "c1",
            "gen_ai.prompt.2.content": "14 C",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": "It is 14 C.",
            "gen_ai.usage.prompt_tokens": 9,
            "gen_ai.usage.completion_tokens": 4,
            "llm.request.functions.0.name": "get_weather",
            "llm.request.functions.0.parameters": '{"type": "object"}',
        },
    )
    # semantic-conventions 1.28: message events on the span (gen_ai.user.message, gen_ai.choice).
    events = _span(
        T2,
        "b" * 16,
        None,
        "chat gpt-4o",
        {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "gen_ai.conversation.id": "s-2"},
        events=[
            ("gen_ai.system.message", {"content": "be brief"}),
            ("gen_ai.user.message", {"content": "hi"}),
            ("gen_ai.choice", {"index": 0, "finish_reason": "stop", "message.content": "x"}),
        ],
    )
    # semantic-conventions 1.27: gen_ai.content.prompt / gen_ai.content.completion events with JSON attributes.
    content = _span(
        T3,
        "c" * 16,
        None,
        "chat gpt-4o",
        {"gen_ai.operation.name": "chat", "gen_ai.response.model": "gpt-4o-2024"},
        events=[
            ("gen_ai.content.prompt", {"gen_ai.prompt": json.dumps([{"role": "user", "content": "hello"}])}),
            (
                "gen_ai.content.completion",
                {"gen_ai.completion": json.dumps([{"role": "assistant", "content": "hey"}])},
            ),
        ],
    )
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "legacy.jsonl").write_bytes(
        _otlp_line([indexed, events, content], service="Legacy Svc") + b"\n"
    )
    report = ingest(str(tmp_path / "logs"), config(tmp_path / "store"))
    conserved(report)
    rows = {r["trace_id"]: r for r in read_interactions(tmp_path / "store").to_pylist()}
    q = read_quarantine(tmp_path / "store").to_pylist()
    assert set(rows) == {T1, T3}, q  # the 1.28 events span has a choice without content: see below
    one = rows[T1]
    assert (one["agent"], one["agent_name"], one["session_id"]) == ("legacy-svc", "Legacy Svc", T1)
    assert json.loads(one["messages_json"]) == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Lisbon"}'},
                }
            ],
        },
        {"role": "tool", "content": "14 C", "tool_call_id": "c1"},
        {"role": "assistant", "content": "It is 14 C."},
    ]
    assert (one["prompt_tokens"], one["completion_tokens"], one["total_tokens"], one["model"]) == (
        9,
        4,
        13,
        "gpt-4o",
    )
    assert json.loads(one["tools_json"])[0]["function"]["name"] == "get_weather"
    assert json.loads(rows[T3]["messages_json"])[-1] == {"role": "assistant", "content": "hey"}
    assert rows[T3]["model"] == "gpt-4o-2024" and rows[T3]["prompt_tokens"] is None  # usage not reported
    assert [r["reason"] for r in q] == ["no_reply"]  # user message, but the choice body had no content


def test_bad_spans_are_quarantined_alone_and_a_cloudevent_may_carry_otlp(tmp_path):
    good = _span(
        T1,
        "a" * 16,
        None,
        "chat",
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.input.messages": json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]
            ),
            "gen_ai.output.messages": json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": "hey"}]}]
            ),
        },
    )
    bad = {**good, "spanId": "not-hex"}
    line = _otlp_line([good, bad])
    event = {
        "specversion": "1.0",
        "type": "io.opentelemetry.otlp.traces",
        "source": "/collector",
        "id": "batch-1",
        "datacontenttype": "application/json",
        "data": json.loads(line),
    }
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.jsonl").write_bytes(line + b"\n")
    (tmp_path / "logs" / "b.jsonl").write_bytes(orjson.dumps(event) + b"\n")
    report = ingest(str(tmp_path / "logs"), config(tmp_path / "store"))
    conserved(report)
    assert report.accepted == 1 and report.duplicates == 1  # the CloudEvent carried the same span
    assert report.quarantined == {"bad_span:spanId": 2}
    assert read_quarantine(tmp_path / "store").column("detail").to_pylist()[0].startswith("OTLP record 1")


def test_a_forced_format_quarantines_what_is_not_that_format(tmp_path):
    record = {
        "id": "r1",
        "agent": "a",
        "session_id": "s",
        "timestamp": "2025-01-07T10:00:00Z",
        "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
    }
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.jsonl").write_bytes(orjson.dumps(to_cloudevent(record)) + b"\n")
    report = ingest(str(tmp_path / "logs"), config(tmp_path / "store", format="otlp"))
    assert report.quarantined == {"unknown_format": 1}


def test_an_incomplete_trace_is_quarantined_with_its_reason_and_a_trace_without_chat_is_reported(tmp_path):
    orphan = _span(
        T1,
        "a" * 16,
        "f" * 16,
        "chat",
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.input.messages": json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]
            ),
            "gen_ai.output.messages": json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": "hey"}]}]
            ),
        },
    )
    agent_only = _span(
        T2,
        "b" * 16,
        None,
        "invoke_agent Bot",
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "Bot"},
    )
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.jsonl").write_bytes(_otlp_line([orphan, agent_only]) + b"\n")
    report = ingest(str(tmp_path / "logs"), config(tmp_path / "store"))
    conserved(report)
    assert report.quarantined == {"incomplete_trace:missing_parent": 1}
    assert report.sources[0].incomplete_traces == [{"trace_id": T2, "spans": 1, "agents": ["Bot"]}]


def _chat(i: int, trace: str) -> dict:
    return _span(
        trace,
        f"{i + 1:016x}",
        None,
        "chat m",
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.conversation.id": f"s-{i}",
            "gen_ai.input.messages": json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": f"q {i} ]}}\\"}]}]
            ),
            "gen_ai.output.messages": json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": f"a {i}"}]}]
            ),
        },
    )


def test_an_otlp_line_over_the_line_limit_streams_span_by_span(tmp_path):
    line = _otlp_line([_chat(i, f"{i + 1:032x}") for i in range(300)])
    assert len(line) > 40 * 4096
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "big.jsonl.gz").write_bytes(__import__("gzip").compress(line + b"\n"))
    small = ingest(str(tmp_path / "logs"), config(tmp_path / "small", max_line_bytes=4096))
    conserved(small)
    assert (small.accepted, small.quarantined_total, small.sources[0].lines) == (300, 0, 1)
    assert ingest(str(tmp_path / "logs"), config(tmp_path / "large")).accepted == 300
    drop = ["ingested_at"]
    assert read_interactions(tmp_path / "small").drop_columns(drop) == read_interactions(
        tmp_path / "large"
    ).drop_columns(drop)
    # A huge line that is not a well-formed request is quarantined whole, as oversized.
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cut.jsonl").write_bytes(line[: len(line) // 2] + b"\n")
    cut = ingest(str(tmp_path / "bad"), config(tmp_path / "cut", max_line_bytes=4096))
    conserved(cut)
    assert cut.quarantined.get("oversized") == 1


AWS_KEY = "AKIAQ7ZP4XN2M5KJ3WYR"


def test_a_waiting_span_rests_redacted_in_the_committed_buffer_and_keeps_its_redaction_counts(tmp_path):
    chat = _span(
        T1,
        "a" * 16,
        "b" * 16,
        "chat m",
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.input.messages": json.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": f"my key is {AWS_KEY}"}]}]
            ),
            "gen_ai.output.messages": json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": "ok"}]}]
            ),
            "user.id": "alice-77",
        },
    )
    parent = _span(
        T1,
        "b" * 16,
        None,
        "invoke_agent Bot",
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "Bot"},
    )
    for day, span in (("d1", chat), ("d2", parent)):
        (tmp_path / day).mkdir()
        (tmp_path / day / "t.jsonl").write_bytes(_otlp_line([span]) + b"\n")
    store = tmp_path / "store"
    first = ingest(str(tmp_path / "d1"), config(store, flush_traces=False, compression="none"))
    assert first.sources[0].buffered == 1
    at_rest = b"".join(p.read_bytes() for p in store.rglob("*") if p.is_file())
    assert AWS_KEY.encode() not in at_rest and b"alice-77" not in at_rest  # the user only as its hash
    second = ingest(str(tmp_path / "d2"), config(store, flush_traces=False, compression="none"))
    assert second.accepted == 1 and second.sources[0].redactions == {"aws_access_key": 1}
    row = read_interactions(store).to_pylist()[0]
    assert row["agent"] == "bot" and "<SECRET:aws_access_key>" in row["messages_json"]
    assert row["redacted_secrets"] == 1
    assert row["user_id_hash"] == hmac.new(SALT.encode(), b"alice-77", hashlib.sha256).hexdigest()


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


_RECORDED = [
    json.loads(line)
    for p in sorted(FIXTURES.rglob("*.jsonl"))
    for line in p.read_text().splitlines()
    if line.strip()
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_trace_lines_are_conserved_and_never_an_internal_error(tmp_path_factory, data):
    lines = []
    for _ in range(data.draw(st.integers(1, 6))):
        doc = json.loads(json.dumps(data.draw(st.sampled_from(_RECORDED))))
        for _ in range(data.draw(st.integers(1, 4))):
            paths = list(_paths(doc))[1:]
            if not paths:
                break
            path = data.draw(st.sampled_from(paths))
            parent = doc
            for key in path[:-1]:
                parent = parent[key]
            if data.draw(st.booleans()) and isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent[path[-1]] = data.draw(
                    st.sampled_from([None, 0, -1, 1.5, "", "x", "zz" * 20, True, [], {}, [1], {"a": 1}])
                )
            if not isinstance(doc, dict):
                break
        lines.append(orjson.dumps(doc))
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "logs").mkdir()
    (folder / "logs" / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    report = ingest(str(folder / "logs"), config(folder / "store"))  # raises if a count is lost
    conserved(report)
    assert "internal_error" not in report.quarantined, report.quarantined


def _stored(store: Path) -> tuple[list, list]:
    rows = read_interactions(store).drop_columns(["ingested_at"]).to_pylist()
    q = read_quarantine(store).drop_columns(["quarantined_at", "day"]).to_pylist()
    return rows, q


@pytest.mark.parametrize("crash_at", ["ledger:2", "interactions:4"])
def test_sigkill_mid_run_then_rerun_joins_traces_as_an_uninterrupted_run(tmp_path, crash_at):
    import os
    import signal
    import subprocess
    import sys

    from features.sample_logs import generate_sample_logs
    from features.store import Store

    logs = tmp_path / "logs"
    generate_sample_logs(logs, conversations=80, seed=2, end_date="2025-01-07", trace_share=1.0)
    baseline = ingest(
        str(logs), IngestConfig(store=str(tmp_path / "baseline"), batch_size=10, progress=False)
    )
    assert len(Store(tmp_path / "baseline").commits()) >= 4
    assert baseline.accepted == 80
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}  # tests/crash_hook.py kills the ingest at crash_at
    proc = subprocess.run(
        [sys.executable, "-m", "tests.crash_hook", crash_at, str(logs), str(tmp_path / "store"), "10"],
        cwd=repo,
        env=env,
        capture_output=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout.decode(errors="replace")[-2000:]
    report = ingest(str(logs), IngestConfig(store=str(tmp_path / "store"), batch_size=10, progress=False))
    conserved(report)
    assert _stored(tmp_path / "store") == _stored(tmp_path / "baseline")
