"""CloudEvents as the drain lands them: one AMQP message (structured or binary mode, any common header
prefix) becomes one structured event, or a Rejected with its reason; the publisher builds the same messages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Mapping

from features.raw_format import (
    DATA_CONTENT_TYPE,
    EVENT_TYPE,
    TRACE_EVENT_TYPE,
    is_cloudevent,
    parse_timestamp,
    unwrap,
)
from features.traces import detect

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
# Header prefixes of binary mode, lower-cased: AMQP binding, its JMS-style variant, RabbitMQ binding, Kafka.
HEADER_PREFIXES = ("cloudevents:", "cloudevents_", "ce-", "ce_")
# CloudEvents attribute names are lower-case letters and digits; anything else is transport metadata.
ATTRIBUTE_NAME = re.compile(r"^[a-z0-9]+$")
ATTRIBUTE_ORDER = ("specversion", "type", "source", "id", "time", "datacontenttype", "subject")


class Rejected(Exception):
    """A message that is not an interaction CloudEvent; `reason` is its code in the rejected file."""

    def __init__(self, reason: str, detail: str = "", event_type: str | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.event_type = reason, detail, event_type


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN/Infinity; JSON does not


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        # The position only: the message would quote the body.
        raise Rejected("not_json", type(e).__name__) from None


def _attr_value(value: Any) -> Any:
    """A header value as its CloudEvents JSON form (native AMQP types or canonical strings)."""
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Decimal):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def binary_attributes(headers: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """CloudEvents attributes from binary-mode headers, or None when the headers carry no specversion.

    Prefixed names (cloudEvents:, cloudEvents_, ce-, ce_) win; unprefixed ones (eventing-rabbitmq's
    broker) are read only when no prefixed specversion exists, and only names that are valid
    attribute names (so x-death, content-type and friends stay transport metadata).
    """
    if not headers:
        return None
    prefixed: dict[str, Any] = {}
    plain: dict[str, Any] = {}
    for key, value in headers.items():
        name = str(key).lower()
        for prefix in HEADER_PREFIXES:
            if name.startswith(prefix):
                attr = name[len(prefix) :]
                if ATTRIBUTE_NAME.match(attr):
                    prefixed[attr] = value
                break
        else:
            if ATTRIBUTE_NAME.match(name):
                plain[name] = value
    attrs = prefixed if "specversion" in prefixed else plain if "specversion" in plain else None
    if attrs is None:
        return None
    return {name: _attr_value(value) for name, value in attrs.items()}


def carries_trace(data: Any) -> bool:
    """A payload ingestion reads as traces (OTLP JSON, an MLflow trace, an OpenAI pair), whatever its event type."""
    return detect(data) != "jsonl"


def trace_event(payload: Any, body: bytes, received_at: str) -> dict:
    """A structured CloudEvent around a trace payload that came without one (an OTLP exporter's POST body)."""
    return {
        "specversion": "1.0",
        "type": TRACE_EVENT_TYPE,
        "source": f"/traces/{detect(payload)}",
        "id": hashlib.sha256(body).hexdigest(),
        "time": received_at,
        "datacontenttype": DATA_CONTENT_TYPE,
        "data": payload,
    }


def _binary_event(
    attrs: dict[str, Any], content_type: str | None, headers: Mapping[str, Any], body: bytes
) -> dict:
    event_type = attrs.get("type")
    data = _loads(body) if event_type != EVENT_TYPE else None
    if event_type != EVENT_TYPE and not carries_trace(data):
        raise Rejected("wrong_type", event_type=_short(event_type))
    datacontenttype = (
        content_type or attrs.get("datacontenttype") or headers.get("content-type") or DATA_CONTENT_TYPE
    )
    attrs["datacontenttype"] = _attr_value(datacontenttype)
    data = data if data is not None else _loads(body)
    # A hop (the Knative broker, a native AMQP timestamp) may re-render `time` in UTC; where it names
    # the same instant as the record's timestamp, keep the record's string so the envelope agrees with it.
    stamp = data.get("timestamp") if isinstance(data, dict) else None
    when, recorded = parse_timestamp(attrs.get("time")), parse_timestamp(stamp)
    if when is not None and recorded is not None and when == recorded:
        attrs["time"] = stamp
    event = {name: attrs[name] for name in ATTRIBUTE_ORDER if name in attrs}
    event.update((name, attrs[name]) for name in sorted(attrs) if name not in event and name != "data")
    event["data"] = data
    return event


def _short(value: Any, limit: int = 200) -> str | None:
    return None if value is None else str(value)[:limit]


def to_structured(
    content_type: str | None, headers: Mapping[str, Any] | None, body: bytes
) -> tuple[dict, str]:
    """Normalize one AMQP message to (structured interaction CloudEvent, "structured" | "binary").

    Raises Rejected for anything that is not an interaction CloudEvent. The record inside is not
    validated here: that is the ingestion's job, with its quarantine and reason codes.
    """
    headers = headers or {}
    ctype = (content_type or "").strip().lower()
    if ctype.startswith("application/cloudevents"):
        if not ctype.startswith(STRUCTURED_CONTENT_TYPE) or ctype[len(STRUCTURED_CONTENT_TYPE) :][:1] not in (
            "",
            ";",
            " ",
        ):
            raise Rejected("unsupported_format", _short(ctype) or "")
        mode = "structured"
    else:
        attrs = binary_attributes(headers)
        if attrs is not None:
            return _binary_event(attrs, content_type, headers, body), "binary"
        mode = "structured"  # no content-type and no headers: a JSON body with specversion still is one
    event = _loads(body)
    if not is_cloudevent(event):
        if carries_trace(event):  # an OTLP/JSON export request (or MLflow trace, OpenAI pair) as it is
            return trace_event(event, body, rfc3339(datetime.now(timezone.utc))), "plain"
        raise Rejected(
            "not_cloudevent", "no specversion" if isinstance(event, dict) else f"JSON {type(event).__name__}"
        )
    if event.get("type") != EVENT_TYPE and not carries_trace(_event_data(event)):
        raise Rejected("wrong_type", event_type=_short(event.get("type")))
    return event, mode


def _event_data(event: dict) -> Any:
    try:
        return unwrap(event)
    except (ValueError, TypeError):
        return None


def event_day(event: Mapping[str, Any], fallback: str) -> str:
    """The landing folder day: UTC date of the event's time, else of its record's timestamp."""
    moment = parse_timestamp(event.get("time"))
    if moment is None:
        data = event.get("data")
        moment = parse_timestamp(data.get("timestamp")) if isinstance(data, dict) else None
    return moment.astimezone(timezone.utc).date().isoformat() if moment is not None else fallback


def json_line(obj: Any) -> str:
    line = json.dumps(obj, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape: keep it escaped
        line = json.dumps(obj)
    return line


def _jsonable(value: Any, depth: int = 0) -> Any:
    if depth > 20:
        return str(value)[:200]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    return _attr_value(value)


def rejected_line(
    rejection: Rejected, method: Any, properties: Any, body: bytes, queue: str, received_at: str
) -> dict:
    """Everything needed to inspect or republish a message that did not land: envelope and exact body."""
    props = {}
    for name in (
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
    ):
        value = getattr(properties, name, None)
        if value is not None:
            props[name] = _jsonable(value)
    return {
        "reason": rejection.reason,
        "detail": rejection.detail,
        "event_type": rejection.event_type,
        "queue": queue,
        "exchange": getattr(method, "exchange", None),
        "routing_key": getattr(method, "routing_key", None),
        "redelivered": bool(getattr(method, "redelivered", False)),
        "received_at": received_at,
        "properties": props,
        "headers": _jsonable(getattr(properties, "headers", None) or {}),
        "body_base64": base64.b64encode(body).decode("ascii"),
    }
