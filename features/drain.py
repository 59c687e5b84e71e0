"""The live source: interaction CloudEvents from a RabbitMQ queue into durable landing files.

    python -m features.drain --landing DIR [--queue Q --batch-size 500 --max-messages N ...]
    python -m features.drain_publish --from DIR [--mode structured|binary|mixed]   # tests, samples

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

Modules: features/cloudevents.py turns a message into a structured event; features/drain_publish.py
publishes sample interactions (tests, demos).
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

from features.cloudevents import Rejected, event_day, json_line, rejected_line, rfc3339, to_structured
from features.fsutil import fsync_dir
from features.home import agentloop_home
from features.raw_format import (
    EVENT_TYPE,
    TRACE_EVENT_TYPE,
)

log = logging.getLogger(__name__)

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
AMQP_URL_ENV = "AGENTLOOP_AMQP_URL"
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


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# ---------------------------------------------------------------------------------------------
# Durable files


def _ensure_dir(path: Path) -> None:
    """mkdir -p, making each new directory entry durable (fsync of its parent)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        fsync_dir(folder.parent)


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
    fsync_dir(path.parent)


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
                    (method.delivery_tag, json_line(event))
                )
                if mode == "binary":
                    self.binary += 1
                else:
                    self.structured += 1
            except RecursionError:
                raise Rejected("not_json", "nested too deeply") from None
        except Exception as e:  # noqa: BLE001 - a poison message must neither stop the drain nor be lost
            rejection = e if isinstance(e, Rejected) else Rejected("drain_error", type(e).__name__)
            line = json_line(rejected_line(rejection, method, properties, body, self.queue, received_at))
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
            received_at = rfc3339(datetime.now(timezone.utc))
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
# CLI


def config_args(parser: argparse.ArgumentParser) -> None:
    d = DrainConfig(landing="")
    parser.add_argument(
        "--url",
        default=None,
        help=f"AMQP URL (default ${AMQP_URL_ENV} or {DEFAULT_AMQP_URL.replace('%', '%%')})",
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


def config_from(args: argparse.Namespace, **extra: Any) -> DrainConfig:
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
    config_args(parser)
    args = parser.parse_args(argv)
    try:
        config = config_from(
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
