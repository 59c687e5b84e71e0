"""Sample interactions written as the traces agents produce: OTLP GenAI (span or log-record content),
OpenInference, MLflow 3 traces and OpenAI request/response pairs.

features.sample_logs uses these writers for a seeded share of its records, so that `make demo`
ingests every reader's format. Each writer follows the public spec its reader cites (see
docs/interaction-format.md), not the reader: the recorded fixtures in tests/data/traces are the
check that both agree with the real libraries.

Ids: a record's trace id is its uuid's hex, its chat span id the first 16 hex digits of
sha256(id), the agent span's the next 16; the interaction id ingestion derives is then
`<trace id>-<chat span id>` (features.canonical.derived_id).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timezone
from typing import Any

from features.raw_format import parse_timestamp

TRACE_FORMATS = ("otlp_span", "otlp_logs", "openinference", "mlflow", "openai")


def _ids(record: dict) -> tuple[str, str, str]:
    trace = (
        uuid.UUID(record["id"]).hex
        if _is_uuid(record["id"])
        else hashlib.sha256(record["id"].encode()).hexdigest()[:32]
    )
    h = hashlib.sha256(record["id"].encode()).hexdigest()
    return trace, h[:16], h[16:32]


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
        return True
    except ValueError:
        return False


def _times(record: dict) -> tuple[int, int]:
    end = parse_timestamp(record["timestamp"]).astimezone(timezone.utc)
    end_ns = int(end.timestamp()) * 1_000_000_000 + end.microsecond * 1000
    start_ns = end_ns - int(float(record.get("latency_ms") or 0) * 1e6)
    return start_ns, end_ns


def _av(v: Any) -> dict:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, dict):
        return {"kvlistValue": {"values": [{"key": k, "value": _av(x)} for k, x in v.items()]}}
    if isinstance(v, list):
        return {"arrayValue": {"values": [_av(x) for x in v]}}
    return {"stringValue": str(v)}


def _attrs(d: dict) -> list[dict]:
    return [{"key": k, "value": _av(v)} for k, v in d.items() if v is not None]


def _parts(message: dict) -> dict:
    """An OpenAI-style message as a GenAI semconv message of parts."""
    parts: list[dict] = []
    if message["role"] == "tool":
        return {
            "role": "tool",
            "parts": [
                {"type": "tool_call_response", "id": message["tool_call_id"], "response": message["content"]}
            ],
        }
    if isinstance(message.get("content"), str):
        parts.append({"type": "text", "content": message["content"]})
    for call in message.get("tool_calls") or []:
        try:
            arguments = json.loads(call["function"]["arguments"])
        except ValueError:
            arguments = call["function"]["arguments"]
        parts.append(
            {"type": "tool_call", "id": call["id"], "name": call["function"]["name"], "arguments": arguments}
        )
    return {"role": message["role"], "parts": parts}


def _split(record: dict) -> tuple[list[dict], list[dict]]:
    """(inputs, output) of a record: the reply is the last assistant message of a successful call."""
    messages = record["messages"]
    if messages and messages[-1]["role"] == "assistant" and not record.get("error"):
        return messages[:-1], messages[-1:]
    return messages, []


def _usage(record: dict) -> tuple[int | None, int | None]:
    usage = record.get("usage") or {}
    return usage.get("prompt_tokens"), usage.get("completion_tokens")


def _resource(agent: str) -> dict:
    return {"attributes": _attrs({"service.name": f"{agent}-svc"})}


def _agent_span(record: dict, trace: str, agent_span: str, start: int, end: int, extra: dict) -> dict:
    return {
        "traceId": trace,
        "spanId": agent_span,
        "name": f"invoke_agent {record['agent']}",
        "kind": 1,
        "startTimeUnixNano": str(start - 1_000_000),
        "endTimeUnixNano": str(end + 1_000_000),
        "attributes": _attrs(extra),
    }


def otlp_genai(record: dict, content: str = "span") -> tuple[list[dict], list[dict]]:
    """(spans, log records) of one interaction in the GenAI conventions; content on the span
    (gen_ai.input/output.messages, semconv 1.37+) or in log records (gen_ai.*.message events, 1.30)."""
    trace, chat_id, agent_id = _ids(record)
    start, end = _times(record)
    inputs, output = _split(record)
    prompt, completion = _usage(record)
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": record.get("model"),
        "gen_ai.response.model": record.get("model"),
        "gen_ai.usage.input_tokens": prompt,
        "gen_ai.usage.output_tokens": completion,
    }
    if record.get("error"):
        attrs["error.type"] = record["error"]["type"]
    logs: list[dict] = []
    if content == "span":
        system = [m for m in inputs if m["role"] == "system"]
        if system:
            attrs["gen_ai.system_instructions"] = json.dumps(
                [{"type": "text", "content": m["content"]} for m in system]
            )
        attrs["gen_ai.input.messages"] = json.dumps([_parts(m) for m in inputs if m["role"] != "system"])
        attrs["gen_ai.output.messages"] = json.dumps([{**_parts(m), "finish_reason": "stop"} for m in output])
    else:
        for i, m in enumerate(inputs):
            body: dict[str, Any] = {"content": m.get("content")} if m.get("content") is not None else {}
            if m.get("tool_calls"):
                body["tool_calls"] = m["tool_calls"]
            if m["role"] == "tool":
                body["id"] = m["tool_call_id"]
            logs.append(_log(trace, chat_id, start + i, f"gen_ai.{m['role']}.message", body))
        for m in output:
            logs.append(
                _log(
                    trace,
                    chat_id,
                    end,
                    "gen_ai.choice",
                    {"index": 0, "finish_reason": "stop", "message": {"content": m["content"]}},
                )
            )
    chat = {
        "traceId": trace,
        "spanId": chat_id,
        "parentSpanId": agent_id,
        "name": f"chat {record.get('model')}",
        "kind": 3,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(end),
        "attributes": _attrs(attrs),
        "status": {"code": 2, "message": record["error"]["message"]} if record.get("error") else {},
    }
    feedback = record.get("feedback") or {}
    if feedback.get("rating") is not None:
        logs.append(
            _log(
                trace,
                chat_id,
                end,
                "gen_ai.evaluation.result",
                None,
                {
                    "gen_ai.evaluation.name": "user_rating",
                    "gen_ai.evaluation.score.value": feedback["rating"],
                },
            )
        )
    agent = _agent_span(
        record,
        trace,
        agent_id,
        start,
        end,
        {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": record["agent"],
            "gen_ai.conversation.id": record["session_id"],
        },
    )
    return [agent, chat], logs


def _log(trace: str, span: str, ns: int, event: str, body: Any, attrs: dict | None = None) -> dict:
    rec = {
        "timeUnixNano": str(ns),
        "traceId": trace,
        "spanId": span,
        "eventName": event,
        "attributes": _attrs(attrs or {}),
    }
    if body is not None:
        rec["body"] = _av(body)
    return rec


def otlp_request(kind: str, agent: str, items: list[dict]) -> dict:
    """One ExportTraceServiceRequest (kind "spans") or ExportLogsServiceRequest ("logs") as OTLP/JSON."""
    if kind == "spans":
        return {
            "resourceSpans": [
                {
                    "resource": _resource(agent),
                    "scopeSpans": [{"scope": {"name": "agentloop.sample"}, "spans": items}],
                }
            ]
        }
    return {
        "resourceLogs": [
            {
                "resource": _resource(agent),
                "scopeLogs": [{"scope": {"name": "agentloop.sample"}, "logRecords": items}],
            }
        ]
    }


def openinference(record: dict) -> list[dict]:
    """The spans of one interaction in the OpenInference conventions (an AGENT span and its LLM span)."""
    trace, chat_id, agent_id = _ids(record)
    start, end = _times(record)
    inputs, output = _split(record)
    prompt, completion = _usage(record)
    attrs: dict[str, Any] = {
        "openinference.span.kind": "LLM",
        "llm.model_name": record.get("model"),
        "llm.token_count.prompt": prompt,
        "llm.token_count.completion": completion,
        "session.id": record["session_id"],
    }
    for side, messages in (("input", inputs), ("output", output)):
        for i, m in enumerate(messages):
            key = f"llm.{side}_messages.{i}.message"
            attrs[f"{key}.role"] = m["role"]
            if m.get("content") is not None:
                attrs[f"{key}.content"] = m["content"]
            if m.get("tool_call_id"):
                attrs[f"{key}.tool_call_id"] = m["tool_call_id"]
            for j, c in enumerate(m.get("tool_calls") or []):
                attrs[f"{key}.tool_calls.{j}.tool_call.id"] = c["id"]
                attrs[f"{key}.tool_calls.{j}.tool_call.function.name"] = c["function"]["name"]
                attrs[f"{key}.tool_calls.{j}.tool_call.function.arguments"] = c["function"]["arguments"]
    for i, tool in enumerate(record.get("tools") or []):
        attrs[f"llm.tools.{i}.tool.json_schema"] = json.dumps(tool)
    llm = {
        "traceId": trace,
        "spanId": chat_id,
        "parentSpanId": agent_id,
        "name": "ChatCompletion",
        "kind": 1,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(end),
        "attributes": _attrs(attrs),
        "status": {"code": 2, "message": record["error"]["message"]} if record.get("error") else {},
    }
    agent = _agent_span(
        record,
        trace,
        agent_id,
        start,
        end,
        {
            "openinference.span.kind": "AGENT",
            "agent.name": record["agent"],
            "session.id": record["session_id"],
        },
    )
    return [agent, llm]


def _chat_request(record: dict, inputs: list[dict]) -> dict:
    req: dict[str, Any] = {"model": record.get("model"), "messages": inputs}
    if record.get("tools"):
        req["tools"] = record["tools"]
    return req


def _chat_response(record: dict, output: list[dict], rid: str, created: int) -> dict:
    prompt, completion = _usage(record)
    resp: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": record.get("model"),
    }
    resp["choices"] = [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", **{k: v for k, v in m.items() if k != "role"}},
        }
        for m in output
    ]
    if prompt is not None:
        resp["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + (completion or 0),
        }
    return resp


def openai_pair(record: dict) -> dict:
    """A logging proxy's line for one interaction: the Chat Completions request and response."""
    inputs, output = _split(record)
    _, end = _times(record)
    pair: dict[str, Any] = {
        "timestamp": record["timestamp"],
        "latency_ms": record.get("latency_ms"),
        "agent": record["agent"],
        "session_id": record["session_id"],
        "request": _chat_request(record, inputs),
        "response": _chat_response(record, output, f"chatcmpl-{record['id']}", end // 1_000_000_000),
    }
    if record.get("feedback"):
        pair["feedback"] = record["feedback"]
    if record.get("error"):
        pair["error"] = record["error"]
    return pair


def mlflow_trace(record: dict) -> dict:
    """`Trace.to_dict()` of one interaction as mlflow.openai.autolog would record it (MLflow 3 data model)."""
    import base64

    trace, chat_id, agent_id = _ids(record)
    start, end = _times(record)
    inputs, output = _split(record)

    def b64(hexid: str) -> str:
        return base64.b64encode(bytes.fromhex(hexid)).decode()

    tid = f"tr-{trace}"
    request = _chat_request(record, inputs)
    response = _chat_response(record, output, f"chatcmpl-{record['id']}", end // 1_000_000_000)
    status = {
        "code": "STATUS_CODE_ERROR" if record.get("error") else "STATUS_CODE_OK",
        "message": (record.get("error") or {}).get("message", ""),
    }

    def span(span_id, parent, name, kind, inputs_, outputs_, s, e):
        return {
            "trace_id": b64(trace),
            "span_id": b64(span_id),
            "parent_span_id": b64(parent) if parent else None,
            "name": name,
            "start_time_unix_nano": s,
            "end_time_unix_nano": e,
            "events": [],
            "status": status,
            "attributes": {
                "mlflow.traceRequestId": json.dumps(tid),
                "mlflow.spanType": json.dumps(kind),
                "mlflow.spanInputs": json.dumps(inputs_),
                "mlflow.spanOutputs": json.dumps(outputs_),
            },
        }

    info: dict[str, Any] = {
        "trace_id": tid,
        "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": "0"}},
        "request_time": datetime.fromtimestamp(start / 1e9, tz=timezone.utc)
        .isoformat()
        .replace("+00:00", "Z"),
        "state": "ERROR" if record.get("error") else "OK",
        "trace_metadata": {"mlflow.trace.session": record["session_id"]},
        "tags": {},
    }
    feedback = record.get("feedback") or {}
    assessments = []
    if feedback.get("rating") is not None:
        assessments.append(
            {
                "assessment_name": "user_rating",
                "trace_id": tid,
                "source": {"source_type": "HUMAN", "source_id": "user"},
                "feedback": {"value": feedback["rating"]},
            }
        )
    if feedback.get("thumbs") is not None:
        assessments.append(
            {
                "assessment_name": "thumbs",
                "trace_id": tid,
                "source": {"source_type": "HUMAN", "source_id": "user"},
                "feedback": {"value": feedback["thumbs"]},
            }
        )
    if assessments:
        info["assessments"] = assessments
    spans = [
        span(
            agent_id,
            None,
            record["agent"],
            "AGENT",
            {"messages": inputs},
            (output[0]["content"] if output else None),
            start - 1_000_000,
            end + 1_000_000,
        ),
        span(chat_id, agent_id, "Completions", "CHAT_MODEL", request, response, start, end),
    ]
    return {"info": info, "data": {"spans": spans}}


TRACE_FILES = {  # format -> file name suffix after <agent>; logs sort before spans ("-" < ".")
    "otlp_span": ".otlp.jsonl",
    "otlp_logs": ".otlp.jsonl",
    "openinference": ".openinference.jsonl",
    "mlflow": ".mlflow.jsonl",
    "openai": ".openai.jsonl",
}
OTLP_LOGS_FILE = ".otlp-logs.jsonl"
RECORDS_PER_REQUEST = 50  # interactions per OTLP export request (one line), as a collector batches


def trace_files(agent: str, records: list[tuple[str, dict]]) -> dict[str, bytes]:
    """{file name: content} for (format, record) pairs of one agent and day."""
    lines: dict[str, list[str]] = {}
    spans: list[dict] = []
    logs: list[dict] = []
    oi: list[dict] = []
    for fmt, record in records:
        if fmt in ("otlp_span", "otlp_logs"):
            s, lg = otlp_genai(record, "span" if fmt == "otlp_span" else "logs")
            spans += s
            logs += lg
        elif fmt == "openinference":
            oi += openinference(record)
        elif fmt == "mlflow":
            lines.setdefault(agent + TRACE_FILES["mlflow"], []).append(json.dumps(mlflow_trace(record)))
        elif fmt == "openai":
            lines.setdefault(agent + TRACE_FILES["openai"], []).append(json.dumps(openai_pair(record)))
        else:
            raise ValueError(f"unknown trace format {fmt!r}; one of {TRACE_FORMATS}")
    per = 2 * RECORDS_PER_REQUEST  # two spans per interaction
    for name, kind, items in (
        (agent + TRACE_FILES["otlp_span"], "spans", spans),
        (agent + TRACE_FILES["openinference"], "spans", oi),
        (agent + OTLP_LOGS_FILE, "logs", logs),
    ):
        for i in range(0, len(items), per):
            lines.setdefault(name, []).append(json.dumps(otlp_request(kind, agent, items[i : i + per])))
    return {name: ("\n".join(ls) + "\n").encode() for name, ls in lines.items()}
