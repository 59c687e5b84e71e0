"""The raw agent-interaction format, in code: constants, the CloudEvents envelope, validation.

docs/interaction-format.md is the prose twin of this module; change both together.
Stdlib only, so that any producer or consumer can import it without the rest of agentloop.
"""

from __future__ import annotations

import base64
import json
import math
import re
from datetime import datetime
from typing import Any

SPEC_VERSION = "1.0"
EVENT_TYPE = "dev.homelab.agent.interaction"
TRACE_EVENT_TYPE = (
    "dev.homelab.agent.trace"  # a CloudEvent carrying a trace payload (OTLP JSON, MLflow, OpenAI pair)
)
DATA_CONTENT_TYPE = "application/json"
SOURCE_PREFIX = "/agents/"

AGENTS = ("agent-bruno", "agent-auditor", "agent-jamie", "agent-mary-kay")
ROLES = ("system", "user", "assistant", "tool")

# Format version 2: only what training needs is required; model, latency and usage are optional
# (many loggers and tracers omit some of them), and tools, user_id and feedback scores are new.
FORMAT_VERSION = 2
REQUIRED_FIELDS = ("id", "agent", "session_id", "timestamp", "messages")
OPTIONAL_FIELDS = (
    "model",
    "latency_ms",
    "usage",
    "tools",
    "feedback",
    "error",
    "metadata",
    "user_id",
    "agent_name",
)
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")
# Other conventions' names for the same counts (OpenAI Responses, OTel GenAI, Anthropic): mapped on read.
USAGE_ALIASES = {
    "input_tokens": "prompt_tokens",
    "output_tokens": "completion_tokens",
    "prompt_token_count": "prompt_tokens",
    "completion_token_count": "completion_tokens",
}
THUMBS = ("up", "down")
SCORE_SOURCES = ("human", "llm_judge", "code")
DEDUP_KEY = "id"

# An agent name becomes a path segment of the CloudEvents source (/agents/<agent>) and a file name.
AGENT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# RFC 3339 section 5.6 date-time: the offset is mandatory; "T" and "Z" may be lower case.
_RFC3339 = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def parse_timestamp(value: Any) -> datetime | None:
    """Return the timezone-aware datetime of an RFC 3339 string, or None if it is not one."""
    if not isinstance(value, str):
        return None
    m = _RFC3339.match(value)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, offset = m.groups()
    # Normalise what fromisoformat is picky about: fraction length and a lower-case z.
    micro = (frac[1:] + "000000")[:6] if frac else "000000"
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{year}-{month}-{day}T{hour}:{minute}:{second}.{micro}{offset}")
    except ValueError:  # month 13, second 60 (leap seconds are not representable), offset +25:00...
        return None


def to_cloudevent(record: dict) -> dict:
    """Wrap a record as a CloudEvents 1.0 structured-mode event (data is the record itself, not a copy)."""
    for field in ("id", "agent", "session_id", "timestamp"):
        if not isinstance(record.get(field), str) or not record[field]:
            raise ValueError(
                f"cannot wrap record {record.get('id')!r} as a CloudEvent: field {field!r} must be a "
                "non-empty string; run validate_record(record) to see every problem"
            )
    return {
        "specversion": SPEC_VERSION,
        "type": EVENT_TYPE,
        "source": SOURCE_PREFIX + record["agent"],
        "id": record["id"],
        "time": record["timestamp"],
        "datacontenttype": DATA_CONTENT_TYPE,
        "subject": record["session_id"],
        "data": record,
    }


def is_cloudevent(obj: Any) -> bool:
    """True for a structured-mode CloudEvent; a plain record never has `specversion`."""
    return isinstance(obj, dict) and "specversion" in obj


def unwrap(obj: Any) -> dict:
    """Return the interaction record from a plain record or a structured CloudEvent.

    Also accepts producers that put the record in `data` as a JSON string or in `data_base64`.
    """
    if not isinstance(obj, dict):
        raise TypeError(f"expected a JSON object (record or CloudEvent), got {type(obj).__name__}")
    if not is_cloudevent(obj):
        return obj
    if "data" in obj:
        data = obj["data"]
        if isinstance(data, str):
            data = json.loads(data)
    elif "data_base64" in obj:
        data = json.loads(base64.b64decode(obj["data_base64"]))
    else:
        data = None
    if not isinstance(data, dict):
        raise ValueError(
            f"CloudEvent {obj.get('id')!r} from {obj.get('source')!r} carries no interaction record: "
            "`data` must be a JSON object (or a JSON string / data_base64 holding one)"
        )
    return data


def normalise_usage(usage: Any) -> dict[str, int | None] | None:
    """{prompt_tokens, completion_tokens, total_tokens} from a usage object in any known naming; None if absent.

    Aliases (input_tokens, output_tokens, ...) are mapped; a missing total is derived when both parts
    exist, a missing part when the total and the other part do. Values are returned as given (ints
    are checked by validate_record); a count nobody reported stays None.
    """
    if not isinstance(usage, dict):
        return None
    out: dict[str, Any] = {k: usage.get(k) for k in USAGE_FIELDS}
    for alias, name in USAGE_ALIASES.items():
        if out[name] is None and usage.get(alias) is not None:
            out[name] = usage[alias]
    p, c, t = (out[k] for k in USAGE_FIELDS)
    ints = [v is None or _is_int(v) for v in (p, c, t)]
    if all(ints):
        if t is None and p is not None and c is not None:
            out["total_tokens"] = p + c
        elif p is None and c is not None and t is not None and t >= c:
            out["prompt_tokens"] = t - c
        elif c is None and p is not None and t is not None and t >= p:
            out["completion_tokens"] = t - p
    if all(v is None for v in out.values()):
        return None
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _message_problems(i: int, msg: Any) -> list[str]:
    where = f"messages[{i}]"
    if not isinstance(msg, dict):
        return [f"bad_message:{where}"]
    problems = []
    role = msg.get("role")
    if role not in ROLES:
        problems.append(f"bad_role:{where}")
    tool_calls = msg.get("tool_calls")
    content = msg.get("content")
    # OpenAI-style: an assistant message that only calls tools may have null content.
    if not (isinstance(content, str) or (content is None and role == "assistant" and tool_calls)):
        problems.append(f"bad_content:{where}")
    if "name" in msg and not isinstance(msg["name"], str):
        problems.append(f"bad_name:{where}")
    if role == "tool" and not _nonempty_str(msg.get("tool_call_id")):
        problems.append(f"bad_tool_call_id:{where}")
    elif "tool_call_id" in msg and role != "tool":
        problems.append(f"bad_tool_call_id:{where}")
    if tool_calls is not None and not _valid_tool_calls(role, tool_calls):
        problems.append(f"bad_tool_calls:{where}")
    return problems


def _valid_tool_calls(role: Any, tool_calls: Any) -> bool:
    if role != "assistant" or not isinstance(tool_calls, list):
        return False
    for call in tool_calls:
        if not isinstance(call, dict) or not _nonempty_str(call.get("id")):
            return False
        if call.get("type", "function") != "function":
            return False
        fn = call.get("function")
        if not isinstance(fn, dict) or not _nonempty_str(fn.get("name")):
            return False
        if not isinstance(fn.get("arguments"), str):
            return False
    return True


def _feedback_problems(feedback: Any) -> list[str]:
    if not isinstance(feedback, dict):
        return ["bad_type:feedback"]
    problems = []
    rating, thumbs, scores = feedback.get("rating"), feedback.get("thumbs"), feedback.get("scores")
    if rating is None and thumbs is None and not scores:
        problems.append("bad_value:feedback")
    if rating is not None and not (_is_int(rating) and 1 <= rating <= 5):
        problems.append("bad_rating")
    if thumbs is not None and thumbs not in THUMBS:
        problems.append("bad_thumbs")
    if scores is not None:
        if not isinstance(scores, list):
            problems.append("bad_score:feedback.scores")
        for i, score in enumerate(scores if isinstance(scores, list) else []):
            value = score.get("value") if isinstance(score, dict) else None
            if not (
                isinstance(score, dict)
                and _nonempty_str(score.get("name"))
                and score.get("source") in SCORE_SOURCES
                and (
                    _is_number(value)
                    and math.isfinite(value)
                    or isinstance(value, bool)
                    or _nonempty_str(value)
                )
            ):
                problems.append(f"bad_score:feedback.scores[{i}]")
    return problems


def _valid_tools(tools: Any) -> bool:
    """OpenAI-style tool definitions: [{"type": "function", "function": {"name", "description"?, "parameters"?}}]."""
    if not isinstance(tools, list):
        return False
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            return False
        fn = tool.get("function")
        if not isinstance(fn, dict) or not _nonempty_str(fn.get("name")):
            return False
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            return False
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            return False
    return True


def validate_record(record: Any) -> list[str]:
    """Return the record's problems as machine-readable codes; an empty list means valid.

    Codes: missing_field:<f>, bad_type:<f>, bad_value:<f>, bad_timestamp, bad_message:messages[i],
    bad_role:messages[i], bad_content:messages[i], bad_name:messages[i], bad_tool_call_id:messages[i],
    bad_tool_calls:messages[i], empty_conversation, no_reply, bad_rating, bad_thumbs,
    bad_score:feedback.scores[i], bad_tools, bad_error. Fields not in the format are ignored.
    """
    if not isinstance(record, dict):
        return ["not_an_object"]
    problems: list[str] = []
    for field in REQUIRED_FIELDS:
        if record.get(field) is None:
            problems.append(f"missing_field:{field}")

    for field in ("id", "agent", "session_id", "model"):
        value = record.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            problems.append(f"bad_type:{field}")
        elif not value.strip() or (field == "agent" and not AGENT_NAME.match(value)):
            problems.append(f"bad_value:{field}")

    if record.get("timestamp") is not None and parse_timestamp(record["timestamp"]) is None:
        problems.append("bad_timestamp")

    error = record.get("error")
    messages = record.get("messages")
    if messages is not None:
        if not isinstance(messages, list):
            problems.append("bad_type:messages")
        else:
            for i, msg in enumerate(messages):
                problems.extend(_message_problems(i, msg))
            roles = [m.get("role") for m in messages if isinstance(m, dict)]
            if "user" not in roles:
                problems.append("empty_conversation")
            # A failed call legitimately ends before the reply; a successful one ends on it.
            elif roles[-1] != "assistant" and error is None:
                problems.append("no_reply")

    latency = record.get("latency_ms")
    if latency is not None:
        if not _is_number(latency):
            problems.append("bad_type:latency_ms")
        elif not math.isfinite(latency) or latency < 0:
            problems.append("bad_value:latency_ms")

    usage = record.get("usage")
    if usage is not None:
        if not isinstance(usage, dict):
            problems.append("bad_type:usage")
        else:
            counts = normalise_usage(usage)
            if counts is None:
                problems.append("bad_value:usage")
            else:
                counts_ok = True
                for key in USAGE_FIELDS:
                    value = counts[key]
                    if value is None:
                        continue
                    if not _is_int(value):
                        problems.append(f"bad_type:usage.{key}")
                    elif value < 0:
                        problems.append(f"bad_value:usage.{key}")
                    else:
                        continue
                    counts_ok = False
                if (
                    counts_ok
                    and None not in counts.values()
                    and counts["total_tokens"] != counts["prompt_tokens"] + counts["completion_tokens"]
                ):
                    problems.append("bad_value:usage.total_tokens")

    feedback = record.get("feedback")
    if feedback is not None:
        problems.extend(_feedback_problems(feedback))

    tools = record.get("tools")
    if tools is not None and not _valid_tools(tools):
        problems.append("bad_tools")

    for field in ("user_id", "agent_name"):
        value = record.get(field)
        if value is not None and not _nonempty_str(value):
            problems.append(f"bad_type:{field}" if not isinstance(value, str) else f"bad_value:{field}")

    if error is not None and not (
        isinstance(error, dict) and _nonempty_str(error.get("type")) and isinstance(error.get("message"), str)
    ):
        problems.append("bad_error")

    if record.get("metadata") is not None and not isinstance(record["metadata"], dict):
        problems.append("bad_type:metadata")
    return problems


def validate_cloudevent(event: Any) -> list[str]:
    """Return the envelope's problems (missing_envelope:<attr>, bad_envelope:<attr>); [] means valid.

    Checks the structured-mode envelope and that it agrees with the record it carries; the record
    itself is checked by validate_record(unwrap(event)).
    """
    if not is_cloudevent(event):
        return ["missing_envelope:specversion"]
    problems = [
        f"missing_envelope:{attr}"
        for attr in ("id", "source", "type", "time", "datacontenttype", "subject")
        if not _nonempty_str(event.get(attr))
    ]
    if event["specversion"] != SPEC_VERSION:
        problems.append("bad_envelope:specversion")
    if "type" in event and event["type"] != EVENT_TYPE:
        problems.append("bad_envelope:type")
    if "datacontenttype" in event and event["datacontenttype"] != DATA_CONTENT_TYPE:
        problems.append("bad_envelope:datacontenttype")
    try:
        record = unwrap(event)
    except (ValueError, TypeError):
        return problems + ["bad_envelope:data"]
    expected = {
        "id": record.get("id"),
        "source": SOURCE_PREFIX + str(record.get("agent")),
        "time": record.get("timestamp"),
        "subject": record.get("session_id"),
    }
    for attr, value in expected.items():
        if attr in event and event[attr] != value:
            problems.append(f"bad_envelope:{attr}")
    return problems
