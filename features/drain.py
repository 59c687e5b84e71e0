"""The live source: interaction CloudEvents from a RabbitMQ queue into durable landing files.

    python -m features.drain --landing DIR [--queue Q --batch-size 500 --max-messages N ...]
    python -m features.drain publish --from DIR [--mode structured|binary|mixed]

On the cluster agents publish interaction CloudEvents to a RabbitMQ broker (Knative Eventing's
RabbitMQ broker or source); a drain (a Flyte task: drain, then exit) consumes a queue bound to
them, writes each batch durably and only then acks it. The files it writes are an ordinary JSONL
source for features/ingest.py:

    <landing>/<YYYY-MM-DD>/drain-<queue>-<run>-<first delivery tag>-<n>.jsonl
        one structured-mode CloudEvent JSON object per line; the folder day is the UTC date of
        the event's `time` (else its record's `timestamp`, else the day it was drained), as in
        docs/interaction-format.md; <run> is random per drain run (delivery tags restart at 1
        on every connection), <n> the number of lines.
    <rejected>/<YYYY-MM-DD>/rejected-<queue>-<run>-<first delivery tag>-<n>.jsonl
        (default <rejected> = <landing>/_rejected, outside the day folders ingestion reads; the
        folder day is the day it was drained) one JSON object per message that is not an
        interaction CloudEvent: `reason`, the AMQP envelope (exchange, routing key, properties,
        headers) and the exact body as `body_base64`. Nothing consumed is ever dropped.

Both CloudEvents content modes are accepted and land in structured mode:
- structured: content-type `application/cloudevents+json` (or no content-type and a JSON body
  with `specversion`); the body is the event.
- binary: the attributes are message headers, the body is the record. Header names as the
  CloudEvents AMQP binding spells them (`cloudEvents:type`; also `cloudEvents_type`), as the
  RabbitMQ binding of eventing-rabbitmq spells them (`ce-type`; also Kafka's `ce_type`), or
  unprefixed (`type`, `specversion`: what eventing-rabbitmq's broker actually publishes, see
  CloudEventToRabbitMQMessage). `datacontenttype` is the AMQP content-type property.

Trace payloads are accepted too (features/traces): a CloudEvent of any type whose data is an OTLP
JSON export request, an MLflow trace or an OpenAI request/response pair, and such a payload sent
bare (no CloudEvent: an OTLP exporter posting to a queue) lands wrapped in a structured event of
type `dev.homelab.agent.trace` (id: the body's sha256, so a redelivery is the same event).

The drain does not validate records: an interaction event with a bad record lands and the
ingestion quarantines it with its reason codes. It only sorts out what is not an interaction
event at all (reason codes: not_json, not_cloudevent, wrong_type, unsupported_format,
drain_error). Bodies and headers may contain secrets: they go to files, never to logs or errors.

Crash safety. A batch is written as temp file + fsync + rename + fsync(dir), every file of the
batch, and only then acked with basic_ack(multiple=True). Killed before a rename: nothing is
visible (a dot-named `.tmp` file at most, which readers skip) and nothing acked, so the broker
redelivers everything. Killed after the files are written but before the ack: the messages are
redelivered and written again into another file. Such duplicates are expected, and harmless only
because the ingestion dedups on interaction id (+ content hash): a reader of landing files must
never count lines as interactions.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import itertools
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from features.home import agentloop_home
from features.raw_format import (
    DATA_CONTENT_TYPE,
    EVENT_TYPE,
    TRACE_EVENT_TYPE,
    is_cloudevent,
    parse_timestamp,
    to_cloudevent,
    unwrap,
)
from features.traces import detect

log = logging.getLogger(__name__)

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
AMQP_URL_ENV = "AGENTLOOP_AMQP_URL"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
# Header prefixes of binary mode, lower-cased: AMQP binding, its JMS-style variant, RabbitMQ binding, Kafka.
HEADER_PREFIXES = ("cloudevents:", "cloudevents_", "ce-", "ce_")
# CloudEvents attribute names are lower-case letters and digits; anything else is transport metadata.
ATTRIBUTE_NAME = re.compile(r"^[a-z0-9]+$")
ATTRIBUTE_ORDER = ("specversion", "type", "source", "id", "time", "datacontenttype", "subject")
# Test hook: "after_write:N" or "before_rename:N" SIGKILLs the drain in its N-th batch (1-based).
CRASH_ENV = "AGENTLOOP_DRAIN_CRASH_AT"


def _default_landing() -> str:
    home = agentloop_home()
    return str(home / "data" / "landing")


@dataclass
class DrainConfig:
    """Where to drain from and to, and when to stop. Defaults: the embedded world's RabbitMQ."""

    landing: str = field(default_factory=_default_landing)
    amqp_url: str = field(default_factory=lambda: os.environ.get(AMQP_URL_ENV, DEFAULT_AMQP_URL))
    exchange: str = "agent-events"
    exchange_type: str = "topic"  # a Knative RabbitMQ broker's exchange is `headers`: use binding_headers
    queue: str = "agentloop-drain"
    binding_keys: list[str] = field(default_factory=lambda: [EVENT_TYPE, TRACE_EVENT_TYPE])
    binding_headers: dict[str, str] = field(default_factory=dict)  # headers exchange: x-match=all on these
    declare_exchange: bool = True  # False where someone else (Knative) owns the exchange
    declare_queue: bool = True  # declare the queue and its bindings
    durable: bool = True
    batch_size: int = 500
    prefetch: int = 0  # 0: batch_size; less would stall every batch until max_wait_s
    max_wait_s: float = 2.0  # a partial batch is written and acked this long after its first message
    idle_exit_s: float | None = 5.0  # stop after this long without a message (None: never)
    max_messages: int | None = None  # stop after consuming this many (the rest stays queued)
    max_seconds: float | None = None  # stop after this long (the current batch is flushed first)
    rejected_dir: str = ""  # default <landing>/_rejected
    log_every_s: float = 10.0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"DrainConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.prefetch and self.prefetch < self.batch_size:
            raise ValueError(
                f"DrainConfig.prefetch ({self.prefetch}) is below batch_size ({self.batch_size}): the broker would "
                "stop delivering before a batch fills; set prefetch >= batch_size, or 0 for batch_size"
            )
        if self.max_wait_s <= 0:
            raise ValueError(f"DrainConfig.max_wait_s must be > 0, got {self.max_wait_s}")
        if not self.queue:
            raise ValueError(
                "DrainConfig.queue must name a queue (a server-named queue would vanish with the drain)"
            )

    @property
    def rejected_root(self) -> Path:
        return Path(self.rejected_dir) if self.rejected_dir else Path(self.landing) / "_rejected"

    def safe_url(self) -> str:
        return redact_url(self.amqp_url)


@dataclass
class DrainReport:
    """What one drain run consumed, wrote and acked. consumed = structured + binary + rejected."""

    landing: str
    queue: str
    run_id: str = ""
    consumed: int = 0
    written: int = 0  # interaction events landed (structured + binary)
    structured: int = 0
    binary: int = 0
    rejected: int = 0  # messages kept in rejected files
    files: int = 0  # landing files
    rejected_files: int = 0
    batches: int = 0
    acked: int = 0
    redelivered: int = 0  # delivered before (to a drain that died before acking): likely duplicates
    seconds: float = 0.0
    stopped_by: str = ""  # idle, max_messages, max_seconds, stop
    flushes: dict[str, int] = field(default_factory=dict)  # why each batch was flushed: full, max_wait, stop
    reasons: dict[str, int] = field(default_factory=dict)  # rejected messages by reason
    paths: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.consumed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        reasons = " ".join(f"{r}={n}" for r, n in sorted(self.reasons.items())) or "none"
        return (
            f"drained {self.consumed} messages from {self.queue} in {self.seconds:.1f}s ({self.rate:.0f}/s): "
            f"{self.written} events landed ({self.structured} structured, {self.binary} binary) in {self.files} "
            f"files, {self.rejected} rejected ({reasons}) in {self.rejected_files} files; {self.batches} batches, "
            f"{self.acked} acked, {self.redelivered} redelivered; stopped by {self.stopped_by} -> {self.landing}"
        )


class Rejected(Exception):
    """A message that is not an interaction CloudEvent; `reason` is its code in the rejected file."""

    def __init__(self, reason: str, detail: str = "", event_type: str | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.event_type = reason, detail, event_type


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# ---------------------------------------------------------------------------------------------
# One message -> one structured event (or a Rejected)


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
        return _rfc3339(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Decimal):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _rfc3339(moment: datetime) -> str:
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


def _carries_trace(data: Any) -> bool:
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
    if event_type != EVENT_TYPE and not _carries_trace(data):
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
        if _carries_trace(event):  # an OTLP/JSON export request (or MLflow trace, OpenAI pair) as it is
            return trace_event(event, body, _rfc3339(datetime.now(timezone.utc))), "plain"
        raise Rejected(
            "not_cloudevent", "no specversion" if isinstance(event, dict) else f"JSON {type(event).__name__}"
        )
    if event.get("type") != EVENT_TYPE and not _carries_trace(_event_data(event)):
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


def _json_line(obj: Any) -> str:
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


# ---------------------------------------------------------------------------------------------
# Durable files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_dir(path: Path) -> None:
    """mkdir -p, making each new directory entry durable (fsync of its parent)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        _fsync_dir(folder.parent)


def write_durable(path: Path, lines: Sequence[str], *, _kill_before_rename: bool = False) -> None:
    """Write lines to path atomically and durably: temp file, fsync, rename, fsync of the folder."""
    _ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the file from the ingesting user
        with os.fdopen(fd, "wb") as f:
            f.write("".join(line + "\n" for line in lines).encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        if _kill_before_rename:  # test hook, see CRASH_ENV
            os.kill(os.getpid(), signal.SIGKILL)
        if path.exists():  # names are unique per run; refusing beats silently replacing acked data
            raise FileExistsError(f"landing file {path} already exists; refusing to replace it")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _safe_name(queue: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", queue)[:100] or "queue"


def _crash_hook() -> tuple[str, int] | None:
    value = os.environ.get(CRASH_ENV, "")
    if not value:
        return None
    point, _, n = value.partition(":")
    if point not in ("after_write", "before_rename") or not n.isdigit():
        raise ValueError(f"{CRASH_ENV}={value!r}: expected after_write:N or before_rename:N")
    return point, int(n)


# ---------------------------------------------------------------------------------------------
# The drain


def connect(config: DrainConfig):
    """A pika BlockingConnection to config.amqp_url; errors name the URL without its password."""
    import pika

    try:
        return pika.BlockingConnection(pika.URLParameters(config.amqp_url))
    except pika.exceptions.AMQPError as e:
        raise ConnectionError(
            f"cannot connect to RabbitMQ at {config.safe_url()} ({_describe(e)}); start the broker or set "
            f"{AMQP_URL_ENV} / DrainConfig.amqp_url"
        ) from None


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def declare_topology(channel: Any, config: DrainConfig) -> None:
    """Declare the exchange, the queue and its bindings as config says (idempotent)."""
    if config.declare_exchange and config.exchange:
        channel.exchange_declare(config.exchange, exchange_type=config.exchange_type, durable=config.durable)
    if not config.declare_queue:
        return
    channel.queue_declare(config.queue, durable=config.durable)
    if not config.exchange:
        return  # the default exchange routes by queue name
    if config.binding_headers:
        channel.queue_bind(
            config.queue, config.exchange, arguments={"x-match": "all", **config.binding_headers}
        )
    for key in config.binding_keys:
        channel.queue_bind(config.queue, config.exchange, routing_key=key)


class _Batch:
    """The messages in hand: landing lines and rejected lines by folder day, with their counts."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.landed: dict[str, list[tuple[int, str]]] = {}  # day -> [(delivery tag, line)]
        self.rejected: dict[str, list[tuple[int, str]]] = {}
        self.structured = self.binary = self.redelivered = 0
        self.reasons: dict[str, int] = {}
        self.size = 0
        self.last_tag = 0
        self.started = 0.0

    def add(self, method: Any, properties: Any, body: bytes, received_at: str) -> None:
        today = received_at[:10]
        try:
            try:
                event, mode = to_structured(properties.content_type, properties.headers, body)
                self.landed.setdefault(event_day(event, today), []).append(
                    (method.delivery_tag, _json_line(event))
                )
                if mode == "binary":
                    self.binary += 1
                else:
                    self.structured += 1
            except RecursionError:
                raise Rejected("not_json", "nested too deeply") from None
        except Exception as e:  # noqa: BLE001 - a poison message must neither stop the drain nor be lost
            rejection = e if isinstance(e, Rejected) else Rejected("drain_error", type(e).__name__)
            line = _json_line(rejected_line(rejection, method, properties, body, self.queue, received_at))
            self.rejected.setdefault(today, []).append((method.delivery_tag, line))
            self.reasons[rejection.reason] = self.reasons.get(rejection.reason, 0) + 1
        if self.size == 0:
            self.started = time.monotonic()
        self.size += 1
        self.last_tag = method.delivery_tag
        self.redelivered += bool(method.redelivered)

    def write(
        self, landing: Path, rejected_root: Path, name: str, report: DrainReport, crash: str | None
    ) -> None:
        """Write every file of the batch durably; file names: <prefix>-<name>-<first tag>-<lines>.jsonl."""
        for root, groups, prefix in (
            (landing, self.landed, "drain"),
            (rejected_root, self.rejected, "rejected"),
        ):
            for day, rows in sorted(groups.items()):
                path = root / day / f"{prefix}-{name}-{rows[0][0]}-{len(rows)}.jsonl"
                write_durable(path, [line for _, line in rows], _kill_before_rename=crash == "before_rename")
                report.paths.append(str(path))
                if prefix == "drain":
                    report.files += 1
                else:
                    report.rejected_files += 1

    def count_into(self, report: DrainReport, why: str) -> None:
        report.batches += 1
        report.acked += self.size
        report.structured += self.structured
        report.binary += self.binary
        report.written += self.structured + self.binary
        report.rejected += sum(self.reasons.values())
        report.redelivered += self.redelivered
        for reason, n in self.reasons.items():
            report.reasons[reason] = report.reasons.get(reason, 0) + n
        report.flushes[why] = report.flushes.get(why, 0) + 1


def drain(config: DrainConfig, *, stop: threading.Event | None = None) -> DrainReport:
    """Consume config.queue into landing files, acking each batch only once its files are durable.

    Stops when idle for idle_exit_s, after max_messages or max_seconds, or when `stop` is set,
    always after flushing (writing and acking) the batch in hand. Messages prefetched beyond
    max_messages stay unacked and go back to the queue when the connection closes. A lost
    connection raises ConnectionError: the batch in hand was not acked and will be redelivered.
    """
    import pika

    try:
        return _drain(config, stop)
    except pika.exceptions.AMQPError as e:
        raise ConnectionError(
            f"drain of queue {config.queue!r} on {config.safe_url()} failed ({_describe(e)}); nothing unacked is "
            "lost: the broker redelivers it to the next run"
        ) from None


def _drain(config: DrainConfig, stop: threading.Event | None) -> DrainReport:
    crash = _crash_hook()
    run_id = uuid.uuid4().hex[:12]
    report = DrainReport(landing=config.landing, queue=config.queue, run_id=run_id)
    landing, rejected_root, name = (
        Path(config.landing),
        config.rejected_root,
        f"{_safe_name(config.queue)}-{run_id}",
    )
    conn = connect(config)
    started = time.monotonic()
    inbox: deque[tuple[Any, Any, bytes]] = deque()
    try:
        channel = conn.channel()
        declare_topology(channel, config)
        channel.basic_qos(prefetch_count=config.prefetch or config.batch_size)
        channel.basic_consume(config.queue, lambda _ch, m, p, b: inbox.append((m, p, b)), auto_ack=False)
        log.info(
            "draining %s on %s into %s (batch %d, run %s)",
            config.queue,
            config.safe_url(),
            landing,
            config.batch_size,
            run_id,
        )
        batch, last_message, next_log = (
            _Batch(config.queue),
            time.monotonic(),
            time.monotonic() + config.log_every_s,
        )

        def flush(why: str) -> None:
            nonlocal batch, last_message
            if batch.size == 0:
                return
            point = crash[0] if crash and crash[1] == report.batches + 1 else None
            batch.write(landing, rejected_root, name, report, point)
            if point == "after_write":
                os.kill(os.getpid(), signal.SIGKILL)
            channel.basic_ack(delivery_tag=batch.last_tag, multiple=True)  # only now: every file is durable
            batch.count_into(report, why)
            batch, last_message = _Batch(config.queue), time.monotonic()  # writing is not idling

        while True:
            now = time.monotonic()
            if stop is not None and stop.is_set():
                report.stopped_by = "stop"
            elif config.max_seconds is not None and now - started >= config.max_seconds:
                report.stopped_by = "max_seconds"
            elif config.max_messages is not None and report.consumed >= config.max_messages:
                report.stopped_by = "max_messages"
            elif (
                config.idle_exit_s is not None
                and not batch.size
                and not inbox
                and now - last_message >= config.idle_exit_s
            ):
                report.stopped_by = "idle"
            if report.stopped_by:
                flush("stop")
                break
            if batch.size and now - batch.started >= config.max_wait_s:
                flush("max_wait")
                continue
            if now >= next_log:
                log.info(
                    "drain %s: %d consumed, %d acked, %.0f/s",
                    config.queue,
                    report.consumed,
                    report.acked,
                    report.consumed / max(now - started, 1e-9),
                )
                next_log = now + config.log_every_s
            if not inbox:  # wait for messages, at most until the next thing to do
                deadlines = [0.2] if stop is not None else []
                if batch.size:
                    deadlines.append(batch.started + config.max_wait_s - now)
                elif config.idle_exit_s is not None:
                    deadlines.append(last_message + config.idle_exit_s - now)
                if config.max_seconds is not None:
                    deadlines.append(started + config.max_seconds - now)
                conn.process_data_events(time_limit=max(0.0, min(deadlines)) if deadlines else None)
                continue
            received_at = _rfc3339(datetime.now(timezone.utc))
            while (
                inbox
                and batch.size < config.batch_size
                and report.consumed < (config.max_messages or sys.maxsize)
            ):
                batch.add(*inbox.popleft(), received_at)
                report.consumed += 1
            last_message = time.monotonic()
            if batch.size >= config.batch_size:
                flush("full")
        for tag in list(channel.consumer_tags):
            channel.basic_cancel(tag)  # what is prefetched and not taken goes back to the queue
    finally:
        report.seconds = time.monotonic() - started
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - already gone: the broker requeues every unacked message anyway
            pass
    log.info(report.summary())
    return report


# ---------------------------------------------------------------------------------------------
# Publishing (tests, sample data)


def _message_for(record: Mapping[str, Any], mode: str, header_prefix: str) -> tuple[Any, bytes, str]:
    import pika

    if is_cloudevent(record):
        event = dict(record)
    elif _carries_trace(record):  # a trace payload from the sample logs (OTLP, MLflow, OpenAI pair)
        body = _json_line(record).encode("utf-8")
        event = trace_event(dict(record), body, _rfc3339(datetime.now(timezone.utc)))
    else:
        event = to_cloudevent(dict(record))
    if mode == "structured":
        props = pika.BasicProperties(
            content_type=STRUCTURED_CONTENT_TYPE, delivery_mode=2, message_id=str(event.get("id"))
        )
        return props, _json_line(event).encode("utf-8"), str(event.get("type"))
    if mode != "binary":
        raise ValueError(f"mode must be 'structured' or 'binary', got {mode!r}")
    data = event.get("data")
    if "data_base64" in event:
        body = base64.b64decode(event["data_base64"])
    elif isinstance(data, str):
        body = data.encode("utf-8")
    else:
        body = _json_line(data).encode("utf-8")
    headers = {
        header_prefix + name: value
        for name, value in event.items()
        if name not in ("data", "data_base64", "datacontenttype")
    }
    props = pika.BasicProperties(
        content_type=event.get("datacontenttype") or DATA_CONTENT_TYPE,
        headers=headers,
        delivery_mode=2,
        message_id=str(event.get("id")),
    )
    return props, body, str(event.get("type"))


def publish_interaction(
    target: Any,
    record: Mapping[str, Any],
    mode: str = "structured",
    *,
    exchange: str | None = None,
    routing_key: str | None = None,
    header_prefix: str = "cloudEvents:",
) -> str:
    """Publish one interaction (a record or a structured CloudEvent) as a persistent CloudEvent; return its id.

    `target` is an open pika channel (exchange defaults to "agent-events") or a DrainConfig (a
    connection is opened, the drain's topology declared so the message has a queue to go to,
    and publisher confirms make the call return only once the broker has it). The routing key
    is the event type. header_prefix names binary-mode headers: "cloudEvents:" (AMQP binding),
    "ce-" (RabbitMQ binding) or "" (what eventing-rabbitmq's broker publishes).
    """
    return publish_interactions(
        target, [record], mode, exchange=exchange, routing_key=routing_key, header_prefix=header_prefix
    )[0]


def publish_interactions(
    target: Any,
    records: Iterable[Mapping[str, Any]],
    mode: str = "structured",
    *,
    exchange: str | None = None,
    routing_key: str | None = None,
    header_prefix: str = "cloudEvents:",
) -> list[str]:
    """publish_interaction for many records over one connection. mode "mixed" picks per id (stable)."""
    if isinstance(target, DrainConfig):
        conn = connect(target)
        try:
            channel = conn.channel()
            declare_topology(channel, target)
            channel.confirm_delivery()
            ex = target.exchange if exchange is None else exchange
            return _publish_all(channel, records, mode, ex, routing_key, header_prefix, mandatory=True)
        finally:
            conn.close()
    ex = "agent-events" if exchange is None else exchange
    return _publish_all(target, records, mode, ex, routing_key, header_prefix, mandatory=False)


def _publish_all(
    channel: Any,
    records: Iterable[Mapping[str, Any]],
    mode: str,
    exchange: str,
    routing_key: str | None,
    header_prefix: str,
    mandatory: bool,
) -> list[str]:
    ids = []
    for record in records:
        chosen = mode
        if mode == "mixed":
            key = str(record.get("id"))
            chosen = "binary" if binascii.crc32(key.encode("utf-8")) % 2 else "structured"
        props, body, event_type = _message_for(record, chosen, header_prefix)
        channel.basic_publish(
            exchange, routing_key or event_type, body, properties=props, mandatory=mandatory
        )
        ids.append(props.message_id)
    return ids


def _iter_log_records(root: str | Path) -> Iterator[dict]:
    from features.raw_sample import iter_raw_lines

    for path, lineno, line in iter_raw_lines(root):
        try:
            yield json.loads(line)
        except ValueError as e:
            raise ValueError(
                f"{path}:{lineno}: not JSON ({e.msg} at column {e.colno}); fix or remove the line"
            ) from None


# ---------------------------------------------------------------------------------------------
# CLI


def _config_args(parser: argparse.ArgumentParser) -> None:
    d = DrainConfig(landing="")
    parser.add_argument(
        "--url", default=None, help=f"AMQP URL (default ${AMQP_URL_ENV} or {DEFAULT_AMQP_URL})"
    )
    parser.add_argument("--exchange", default=d.exchange, help=f"exchange (default {d.exchange})")
    parser.add_argument(
        "--exchange-type", default=d.exchange_type, help=f"exchange type (default {d.exchange_type})"
    )
    parser.add_argument(
        "--no-declare-exchange", action="store_true", help="the exchange is someone else's (Knative)"
    )
    parser.add_argument("--queue", default=d.queue, help=f"queue (default {d.queue})")
    parser.add_argument(
        "--binding-key",
        action="append",
        default=None,
        help=f"binding key, repeatable (default {EVENT_TYPE}; '#' for everything)",
    )


def _config_from(args: argparse.Namespace, **extra: Any) -> DrainConfig:
    kwargs: dict[str, Any] = dict(
        exchange=args.exchange,
        exchange_type=args.exchange_type,
        queue=args.queue,
        declare_exchange=not args.no_declare_exchange,
        **extra,
    )
    if args.url:
        kwargs["amqp_url"] = args.url
    if args.binding_key:
        kwargs["binding_keys"] = args.binding_key
    return DrainConfig(**kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(
        logging.CRITICAL
    )  # pika narrates every socket; our errors say what failed
    if argv[:1] == ["publish"]:
        parser = argparse.ArgumentParser(
            prog="python -m features.drain publish",
            description="Publish sample agent logs to the broker as interaction CloudEvents.",
        )
        parser.add_argument(
            "--from", dest="source", required=True, help="log folder (<root>/<day>/<agent>.jsonl[.gz])"
        )
        parser.add_argument("--mode", choices=("structured", "binary", "mixed"), default="mixed")
        parser.add_argument(
            "--header-prefix",
            default="cloudEvents:",
            help="binary-mode header prefix: cloudEvents: (default), ce- or '' (Knative broker)",
        )
        parser.add_argument("--limit", type=int, default=None, help="publish at most this many")
        _config_args(parser)
        args = parser.parse_args(argv[1:])
        config = _config_from(args)
        records: Iterable[dict] = _iter_log_records(args.source)
        if args.limit is not None:
            records = itertools.islice(records, args.limit)
        started = time.perf_counter()
        try:
            records = itertools.chain(
                [next(iter(records))], records
            )  # a bad --from fails before any broker change
        except StopIteration:
            records = []
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        try:
            ids = publish_interactions(config, records, args.mode, header_prefix=args.header_prefix)
        except (ValueError, OSError) as e:  # ConnectionError and FileNotFoundError are OSErrors
            print(f"error: {e}", file=sys.stderr)
            return 1
        seconds = time.perf_counter() - started
        print(
            f"published {len(ids)} interactions ({args.mode}) to {config.exchange} on {config.safe_url()} "
            f"in {seconds:.1f}s ({len(ids) / max(seconds, 1e-9):.0f}/s); queue {config.queue} is bound to them"
        )
        return 0

    if argv[:1] == ["drain"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(
        prog="python -m features.drain",
        description="Drain interaction CloudEvents from RabbitMQ into durable landing files.",
    )
    parser.add_argument("--landing", required=True, help="landing root: <landing>/<YYYY-MM-DD>/drain-*.jsonl")
    parser.add_argument("--rejected-dir", default="", help="rejected messages (default <landing>/_rejected)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--prefetch", type=int, default=0, help="default: the batch size")
    parser.add_argument(
        "--max-wait", type=float, default=2.0, help="seconds before a partial batch is flushed (2)"
    )
    parser.add_argument(
        "--idle-exit", type=float, default=5.0, help="stop after this many idle seconds; <= 0: never"
    )
    parser.add_argument("--max-messages", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=None)
    _config_args(parser)
    args = parser.parse_args(argv)
    try:
        config = _config_from(
            args,
            landing=args.landing,
            rejected_dir=args.rejected_dir,
            batch_size=args.batch_size,
            prefetch=args.prefetch,
            max_wait_s=args.max_wait,
            idle_exit_s=args.idle_exit if args.idle_exit > 0 else None,
            max_messages=args.max_messages,
            max_seconds=args.max_seconds,
        )
    except ValueError as e:
        parser.error(str(e))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # a pod being stopped: flush, ack, exit
    try:
        report = drain(config, stop=stop)
    except ConnectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    print(json.dumps({k: v for k, v in asdict(report).items() if k != "paths"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
