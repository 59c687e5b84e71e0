"""MLflow 3 traces: `Trace.to_json()` lines (what `mlflow.search_traces(return_type="list")` gives) as records.

Spec: MLflow 3 tracing data model (https://mlflow.org/docs/latest/genai/tracing/data-model/,
mlflow 3.x `Trace.to_dict`: `info` = TraceInfoV3 as proto JSON with snake_case keys, `data.spans` =
`Span.to_dict`: base64 ids, `*_unix_nano` times, attributes as JSON-encoded text).

Each span of type CHAT_MODEL or LLM becomes one interaction; its `mlflow.spanInputs` /
`mlflow.spanOutputs` hold the client call's arguments and result (for `mlflow.openai.autolog`, the
Chat Completions or Responses request and response, read as an OpenAI pair). Session and user come
from the trace metadata (`mlflow.trace.session`, `mlflow.trace.user`), the agent from the nearest
AGENT span (its name), else the `agent` tag or metadata, else the trace's experiment. Assessments
(`info.assessments`, feedback only: expectations are labels, not feedback) become feedback items
with their source (HUMAN, LLM_JUDGE, CODE).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime, timezone
from typing import Any

from features.canonical import LINEAGE, derived_id, feedback_from_scores, with_agent
from features.traces.openai_pairs import read_pair

CHAT_TYPES = ("CHAT_MODEL", "LLM")
_SOURCES = {"HUMAN": "human", "LLM_JUDGE": "llm_judge", "CODE": "code"}


def is_mlflow_trace(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("info"), dict)
        and isinstance(obj.get("data"), dict)
        and "spans" in obj["data"]
    )


def _d(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list:
    return value if isinstance(value, list) else []


def _s(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _attr(attrs: dict, key: str) -> Any:
    value = _d(attrs).get(key)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _hex(value: Any, n: int) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    if len(value) == 2 * n:
        try:
            bytes.fromhex(value)
            return value.lower()
        except ValueError:
            pass
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == n else None


def _iso(ns: Any) -> str | None:
    try:
        ns = int(ns)
    except (TypeError, ValueError):
        return None
    dt = datetime.fromtimestamp(ns // 1_000_000_000, tz=timezone.utc).replace(
        microsecond=(ns // 1000) % 1_000_000
    )
    return dt.isoformat().replace("+00:00", "Z")


def assessments(info: dict) -> list[dict]:
    """Feedback assessments of a trace as unified feedback items: {name, value, source, comment?, span_id?}."""
    out = []
    for a in _l(info.get("assessments")):
        if not isinstance(a, dict) or "feedback" not in a:
            continue
        value = _d(a.get("feedback")).get("value")
        source = _SOURCES.get(str(_d(a.get("source")).get("source_type", "")).upper(), "human")
        item: dict[str, Any] = {
            "name": _s(a.get("assessment_name")) or "feedback",
            "value": value,
            "source": source,
        }
        if _s(a.get("rationale")):
            item["comment"] = a["rationale"]
        if _s(a.get("span_id")):
            item["span_id"] = a["span_id"]
        out.append(item)
    return out


def read_trace(obj: dict, origin: tuple[str, int]) -> list[tuple[list, dict, dict | None]]:
    """(origin, span, record or None) per span of one trace; None for spans that are context only."""
    info = obj["info"]
    spans = [s for s in _l(obj["data"].get("spans")) if isinstance(s, dict)]
    meta = _d(info.get("trace_metadata") or info.get("request_metadata"))
    tags = _d(info.get("tags"))
    trace_id = _s(info.get("trace_id")) or _s(info.get("request_id")) or ""
    by_id = {_hex(s.get("span_id"), 8): s for s in spans}
    scores = assessments(info)
    location = _d(_d(info.get("trace_location")).get("mlflow_experiment"))
    experiment = location.get("experiment_id", "unknown")
    fallback_agent = _s(tags.get("agent")) or _s(meta.get("agent")) or f"mlflow-experiment-{experiment}"
    out = []
    for index, span in enumerate(spans):
        where = [origin[0], origin[1], index]
        attrs = _d(span.get("attributes"))
        if _attr(attrs, "mlflow.spanType") not in CHAT_TYPES:
            out.append((where, span, None))
            continue
        span_id = _hex(span.get("span_id"), 8) or str(index)
        agent, parent = None, _hex(span.get("parent_span_id"), 8)
        seen = set()
        while parent and parent in by_id and parent not in seen:
            seen.add(parent)
            node = by_id[parent]
            if _attr(node.get("attributes"), "mlflow.spanType") == "AGENT":
                agent = _s(node.get("name"))
                break
            parent = _hex(node.get("parent_span_id"), 8)
        inputs = _attr(attrs, "mlflow.spanInputs")
        outputs = _attr(attrs, "mlflow.spanOutputs")
        pair = read_pair({"request": inputs if isinstance(inputs, dict) else {}, "response": outputs}, b"")
        record: dict[str, Any] = {
            "id": derived_id(trace_id, span_id),
            "session_id": _s(meta.get("mlflow.trace.session")) or trace_id,
            "timestamp": _iso(span.get("end_time_unix_nano") or span.get("start_time_unix_nano")),
            "messages": pair["messages"],
        }
        with_agent(record, agent, fallback_agent)
        model = _attr(attrs, "mlflow.llm.model") or pair.get("model")
        if isinstance(model, str) and model:
            record["model"] = model
        usage = _attr(attrs, "mlflow.chat.tokenUsage") or pair.get("usage")
        if isinstance(usage, dict):
            record["usage"] = {
                k: v for k, v in usage.items() if str(k).endswith("_tokens") and "cache" not in k
            }
        tools = pair.get("tools")
        if tools:
            record["tools"] = tools
        try:
            start, end = int(span["start_time_unix_nano"]), int(span["end_time_unix_nano"])
            if end >= start:
                record["latency_ms"] = (end - start) / 1e6
        except (KeyError, TypeError, ValueError):
            pass
        if _s(meta.get("mlflow.trace.user")):
            record["user_id"] = meta["mlflow.trace.user"]
        mine = [
            {k: v for k, v in s.items() if k != "span_id"}
            for s in scores
            if not s.get("span_id") or _hex(s["span_id"], 8) == span_id or s["span_id"] == span_id
        ]
        feedback = feedback_from_scores(mine)
        if feedback:
            record["feedback"] = feedback
        status = _d(span.get("status"))
        if status.get("code") in ("STATUS_CODE_ERROR", "ERROR", 2):
            record["error"] = {"type": "span_error", "message": _s(status.get("message")) or ""}
        record["metadata"] = {"trace_id": trace_id, "span_id": span_id, "span_name": _s(span.get("name"))}
        record[LINEAGE] = {"format": "mlflow", "trace_id": trace_id, "span_id": span_id}
        out.append((where, span, record))
    return out
