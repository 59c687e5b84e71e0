"""OTLP JSON, as the OpenTelemetry Collector's file exporter writes it, into plain span and log dicts.

One line is one `ExportTraceServiceRequest` (`resourceSpans` -> `scopeSpans` -> `spans`) or one
`ExportLogsServiceRequest` (`resourceLogs` -> `scopeLogs` -> `logRecords`), per the OTLP/JSON
encoding of opentelemetry-proto 1.x (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding):
lowerCamelCase keys (snake_case accepted too), trace and span ids as hex (base64, the plain proto3
JSON mapping, accepted too), 64-bit integers as strings or numbers, attribute values typed
(`{"stringValue": ...}`, `intValue`, `doubleValue`, `boolValue`, `arrayValue`, `kvlistValue`,
`bytesValue`), enums as integers or names.

The dicts are JSON-able (the trace buffer persists them) and carry their `origin` (source, line,
index in the line), so that whatever becomes of a span later names where it was read.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

SPAN_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


class OtlpError(ValueError):
    """A span or log record that cannot be read; `field` names what was wrong (for `bad_span:<field>`)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def is_otlp(obj: Any) -> bool:
    return isinstance(obj, dict) and (
        "resourceSpans" in obj or "resourceLogs" in obj or "resource_spans" in obj or "resource_logs" in obj
    )


def _get(obj: Any, camel: str) -> Any:
    if not isinstance(obj, dict):
        return None
    if camel in obj:
        return obj[camel]
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    return obj.get(snake)


def _list(obj: Any, *names: str) -> list:
    """The list under the first of `names` present (absent: []); anything else is a bad request."""
    for name in names:
        value = _get(obj, name)
        if value is None:
            continue
        if not isinstance(value, list):
            raise OtlpError(name, f"{name} must be a JSON array, got {type(value).__name__}")
        return value
    return []


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def any_value(value: Any) -> Any:
    """An OTLP AnyValue as a plain JSON value (kvlist -> dict, array -> list, bytes -> base64 text).

    Raises OtlpError("attributes") for a value that is not what its type says."""
    if not isinstance(value, dict) or not value:
        return None
    key, inner = next(iter(value.items()))
    try:
        if key in ("stringValue", "string_value"):
            return inner if isinstance(inner, str) else str(inner)
        if key in ("intValue", "int_value"):
            if isinstance(inner, bool) or not isinstance(inner, (int, str)):
                raise ValueError(inner)
            return int(inner)
        if key in ("doubleValue", "double_value"):
            if isinstance(inner, bool) or not isinstance(inner, (int, float, str)):
                raise ValueError(inner)
            return float(inner)
        if key in ("boolValue", "bool_value"):
            return bool(inner)
        if key in ("arrayValue", "array_value"):
            return [any_value(v) for v in _list(inner, "values")]
        if key in ("kvlistValue", "kvlist_value"):
            return attributes(_list(inner, "values"))
        if key in ("bytesValue", "bytes_value"):
            return inner
    except (TypeError, ValueError):
        raise OtlpError("attributes", f"an attribute's {key} does not hold one") from None
    return None


def attributes(items: Any) -> dict[str, Any]:
    """OTLP `attributes` (a list of {key, value}) as a dict."""
    if not isinstance(items, list):
        return {}
    out = {}
    for kv in items:
        if isinstance(kv, dict) and isinstance(kv.get("key"), str):
            out[kv["key"]] = any_value(kv.get("value"))
    return out


def _id(value: Any, n_bytes: int, field: str, required: bool = True) -> str | None:
    """A trace or span id as lower-case hex; OTLP/JSON writes hex, plain proto3 JSON base64."""
    if value in (None, ""):
        if required:
            raise OtlpError(field, f"{field} is missing")
        return None
    if not isinstance(value, str):
        raise OtlpError(field, f"{field} must be a string, got {type(value).__name__}")
    if len(value) == 2 * n_bytes:
        try:
            bytes.fromhex(value)
            return value.lower()
        except ValueError:
            pass
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) == n_bytes:
        return raw.hex()
    raise OtlpError(field, f"{field} is neither {2 * n_bytes} hex digits nor base64 of {n_bytes} bytes")


def _nanos(value: Any, field: str) -> int | None:
    if value in (None, "", 0, "0"):
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(value)
        ns = int(value)
    except (TypeError, ValueError):
        raise OtlpError(field, f"{field} is not an integer of nanoseconds") from None
    if not 0 < ns < 2**63:
        raise OtlpError(field, f"{field} is out of range")
    return ns


def _kind(value: Any) -> str:
    if isinstance(value, int):
        return SPAN_KINDS.get(value, "UNSPECIFIED")
    if isinstance(value, str):
        return value.removeprefix("SPAN_KIND_")
    return "UNSPECIFIED"


def spans(request: dict, origin: tuple[str, int]) -> list[dict | OtlpError]:
    """Every span of an ExportTraceServiceRequest, as a plain dict (or the OtlpError that span raised)."""
    out: list[dict | OtlpError] = []
    index = 0
    for rs in _list(request, "resourceSpans"):
        resource = attributes(_get(_dict(_get(rs, "resource")), "attributes"))
        for ss in _list(rs, "scopeSpans", "instrumentationLibrarySpans"):
            scope = _dict(_get(ss, "scope") or _get(ss, "instrumentationLibrary"))
            for span in _list(ss, "spans"):
                where = [origin[0], origin[1], index]
                index += 1
                try:
                    out.append(_span(span, resource, scope, where))
                except OtlpError as exc:
                    exc.origin = where  # type: ignore[attr-defined]
                    exc.raw = span  # type: ignore[attr-defined]
                    out.append(exc)
    return out


def _span(span: Any, resource: dict, scope: dict, where: list) -> dict:
    if not isinstance(span, dict):
        raise OtlpError("span", "a span is not a JSON object")
    status = _dict(_get(span, "status"))
    name = span.get("name")
    return {
        "trace_id": _id(_get(span, "traceId"), 16, "traceId"),
        "span_id": _id(_get(span, "spanId"), 8, "spanId"),
        "parent_id": _id(_get(span, "parentSpanId"), 8, "parentSpanId", required=False),
        "name": name if isinstance(name, str) else "",
        "kind": _kind(span.get("kind")),
        "start_ns": _nanos(_get(span, "startTimeUnixNano"), "startTimeUnixNano"),
        "end_ns": _nanos(_get(span, "endTimeUnixNano"), "endTimeUnixNano"),
        "attrs": attributes(span.get("attributes")),
        "events": [
            {
                "name": e["name"] if isinstance(e.get("name"), str) else "",
                "time_ns": _nanos(_get(e, "timeUnixNano"), "events.timeUnixNano"),
                "attrs": attributes(e.get("attributes")),
            }
            for e in _list(span, "events")
            if isinstance(e, dict)
        ],
        "resource": resource,
        "scope": scope["name"] if isinstance(scope.get("name"), str) else "",
        "status": status.get("code") if isinstance(status.get("code"), (int, str)) else None,
        "status_message": status["message"] if isinstance(status.get("message"), str) else None,
        "origin": where,
    }


def logs(request: dict, origin: tuple[str, int]) -> list[dict | OtlpError]:
    """Every log record of an ExportLogsServiceRequest, as a plain dict (or its OtlpError)."""
    out: list[dict | OtlpError] = []
    index = 0
    for rl in _list(request, "resourceLogs"):
        resource = attributes(_get(_dict(_get(rl, "resource")), "attributes"))
        for sl in _list(rl, "scopeLogs"):
            for rec in _list(sl, "logRecords"):
                where = [origin[0], origin[1], index]
                index += 1
                try:
                    out.append(_log(rec, resource, where))
                except OtlpError as exc:
                    exc.origin = where  # type: ignore[attr-defined]
                    exc.raw = rec  # type: ignore[attr-defined]
                    out.append(exc)
    return out


def _log(rec: Any, resource: dict, where: list) -> dict:
    if not isinstance(rec, dict):
        raise OtlpError("logRecord", "a log record is not a JSON object")
    attrs = attributes(rec.get("attributes"))
    # The event name: the LogRecord field since proto 1.5, the `event.name` attribute before.
    event_name = _get(rec, "eventName") or attrs.get("event.name") or ""
    event_name = event_name if isinstance(event_name, str) else ""
    return {
        "trace_id": _id(_get(rec, "traceId"), 16, "traceId", required=False),
        "span_id": _id(_get(rec, "spanId"), 8, "spanId", required=False),
        "time_ns": _nanos(_get(rec, "timeUnixNano"), "timeUnixNano")
        or _nanos(_get(rec, "observedTimeUnixNano"), "observedTimeUnixNano"),
        "event_name": event_name,
        "body": any_value(rec.get("body")),
        "attrs": attrs,
        "resource": resource,
        "origin": where,
    }
