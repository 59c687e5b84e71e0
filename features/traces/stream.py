"""Stream an OTLP JSON line too long to hold: split it into one small export request per span or log record.

OTLP batches are routinely larger than ingest's line limit (max_line_bytes, 1 MiB). Such a line
is scanned in chunks, never held whole: a byte-level tokenizer (JSON strings, brackets, colons,
commas; a string cut by a chunk boundary is carried over) tracks where it is in
`{"resourceSpans": [{"resource": ..., "scopeSpans": [{"scope": ..., "spans": [SPAN, ...]}]}]}`
(or resourceLogs / scopeLogs / logRecords), keeps the bytes of the current resource, scope and
element only, and yields for each element a request of its own:
`{"resourceSpans": [{"resource": R, "scopeSpans": [{"scope": S, "spans": [SPAN]}]}]}`.
Memory is bounded by the largest single span (plus its resource and scope), not the line.

The resource and scope must come before their list (the Collector and protobuf's JSON mapping
write fields in that order); one that comes after is not known to the elements before it.
A line that does not have this shape yields one error (`invalid_json` in ingest).
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

_TOKENS = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{}:,]|"', re.DOTALL)
LISTS = {b"resourceSpans": (b"scopeSpans", b"spans"), b"resourceLogs": (b"scopeLogs", b"logRecords")}
MAX_ELEMENT_BYTES = 64 << 20  # one span larger than this is not a span: the line is refused


class StreamError(ValueError):
    pass


def looks_like_otlp(head: bytes) -> bool:
    """The first bytes of a line are those of an OTLP export request."""
    head = head.lstrip()[:40]
    return head.startswith(
        (b'{"resourceSpans"', b'{"resourceLogs"', b'{"resource_spans"', b'{"resource_logs"')
    )


def split_otlp(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Small export requests, one per span or log record, from the chunks of one huge OTLP line."""
    stack: list[bytes | None] = []  # per open container: its key in the parent (None in arrays)
    brackets: list[int] = []
    key: bytes | None = None  # the key whose value comes next
    pending: bytes | None = None  # a key read, before its colon
    top: bytes | None = None  # resourceSpans | resourceLogs
    captures: dict[str, bytearray] = {}  # resource / scope / element bytes being collected
    resource = scope = b"{}"
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        carry = b""
        pos = 0
        for m in _TOKENS.finditer(data):
            tok = m.group()
            if tok == b'"':  # a string cut by the end of the chunk: read it with the next one
                carry = data[m.start() :]
                break
            for body in captures.values():
                body += data[pos : m.end()]
            pos = m.end()
            c = tok[0]
            if c == 0x22:  # a string: a key when an object expects one
                if brackets and brackets[-1] == 0x7B and key is None and pending is None:
                    pending = tok[1:-1]
            elif c == 0x3A:  # :
                key, pending = pending, None
            elif c == 0x2C:  # ,
                key = pending = None
            elif c in (0x7B, 0x5B):  # { [
                path = [*stack[1:], key] if stack else [None]
                if not stack and c != 0x7B:
                    raise StreamError("an OTLP line must be a JSON object")
                if len(stack) == 1 and key in LISTS:
                    top = key
                role = _role(path, c, top)
                stack.append(key)
                brackets.append(c)
                if role is not None:
                    captures[role] = bytearray(tok)
                key = None
            else:  # } ]
                if not stack:
                    raise StreamError("unbalanced brackets in an OTLP line")
                stack.pop()
                brackets.pop()
                key = None
                depth = len(stack)
                for role in [r for r in captures if _DEPTH[r] == depth]:
                    body = bytes(captures.pop(role))
                    if role == "resource":
                        resource = body
                    elif role == "scope":
                        scope = body
                    else:
                        yield _request(top, resource, scope, body)
                if depth == 2:  # a resource's entry ended
                    resource = b"{}"
                elif depth == 4:  # a scope's entry ended
                    scope = b"{}"
        rest = data[pos : len(data) - len(carry)]
        for body in captures.values():  # numbers, literals, blanks: bytes as they are
            body += rest
            if len(body) > MAX_ELEMENT_BYTES:
                raise StreamError(f"one OTLP element is over {MAX_ELEMENT_BYTES} bytes")
    if carry or stack or top is None:
        raise StreamError(
            "an OTLP line ended before its request did" if top else "not an OTLP export request"
        )


# The stack depth at which each kept object closes: resourceSpans[ {resource} scopeSpans[ {scope} spans[ {span}
_DEPTH = {"resource": 3, "scope": 5, "element": 6}


def _role(path: list, bracket: int, top) -> str | None:
    """What an opening bracket at `path` (keys from the top object down) starts, if we keep it."""
    if top is None or bracket != 0x7B:
        return None
    scopes, elements = LISTS[top]
    if path == [top, None, b"resource"]:
        return "resource"
    if path == [top, None, scopes, None, b"scope"]:
        return "scope"
    if path == [top, None, scopes, None, elements, None]:
        return "element"
    return None


def _request(top: bytes, resource: bytes, scope: bytes, element: bytes) -> bytes:
    scopes, elements = LISTS[top]
    return (
        b'{"'
        + top
        + b'":[{"resource":'
        + resource
        + b',"'
        + scopes
        + b'":[{"scope":'
        + scope
        + b',"'
        + elements
        + b'":['
        + element
        + b"]}]}]}"
    )
