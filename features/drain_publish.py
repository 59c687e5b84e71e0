"""Publishing interactions to the broker as CloudEvents, for tests and sample data (the agents publish their
own in production).

    python -m features.drain_publish --from DIR [--mode structured|binary|mixed] [--limit N]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import itertools
import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from features.cloudevents import STRUCTURED_CONTENT_TYPE, carries_trace, json_line, rfc3339, trace_event
from features.drain import (
    DrainConfig,
    config_args,
    config_from,
    connect,
    declare_topology,
)
from features.raw_format import (
    DATA_CONTENT_TYPE,
    is_cloudevent,
    to_cloudevent,
)

log = logging.getLogger(__name__)


def _message_for(record: Mapping[str, Any], mode: str, header_prefix: str) -> tuple[Any, bytes, str]:
    import pika

    if is_cloudevent(record):
        event = dict(record)
    elif carries_trace(record):  # a trace payload from the sample logs (OTLP, MLflow, OpenAI pair)
        body = json_line(record).encode("utf-8")
        event = trace_event(dict(record), body, rfc3339(datetime.now(timezone.utc)))
    else:
        event = to_cloudevent(dict(record))
    if mode == "structured":
        props = pika.BasicProperties(
            content_type=STRUCTURED_CONTENT_TYPE, delivery_mode=2, message_id=str(event.get("id"))
        )
        return props, json_line(event).encode("utf-8"), str(event.get("type"))
    if mode != "binary":
        raise ValueError(f"mode must be 'structured' or 'binary', got {mode!r}")
    data = event.get("data")
    if "data_base64" in event:
        body = base64.b64decode(event["data_base64"])
    elif isinstance(data, str):
        body = data.encode("utf-8")
    else:
        body = json_line(data).encode("utf-8")
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


def iter_log_records(root: str | Path) -> Iterator[dict]:
    from features.raw_sample import iter_raw_lines

    for path, lineno, line in iter_raw_lines(root):
        try:
            yield json.loads(line)
        except ValueError as e:
            raise ValueError(
                f"{path}:{lineno}: not JSON ({e.msg} at column {e.colno}); fix or remove the line"
            ) from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(
        prog="python -m features.drain_publish",
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
    config_args(parser)
    args = parser.parse_args(argv)
    config = config_from(args)
    records: Iterable[dict] = iter_log_records(args.source)
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


if __name__ == "__main__":
    sys.exit(main())
