"""Ingest's router for trace payloads: OTLP spans and logs (GenAI, OpenInference), MLflow traces, OpenAI pairs.

A trace line holds many units (spans, log records, MLflow spans): each is counted on its own, and
every unit ends in exactly one place. Per source:

    read + carried_in == accepted + duplicates + quarantined + context + buffered

`read` counts units (an OTLP line of 40 spans reads 40), `context` the units used up without
becoming a row (non-chat spans, log records joined to their span, non-GenAI log lines),
`carried_in` / `buffered` the units waiting in the trace buffer (features/traces/buffer.py) when
the source began / ended: a chat span read in one file can become a row (or a quarantine row) in a
later one, or in a later run. The buffer is committed with the rows, like the poisoning memory.
Idle traces are closed at the end of a run only (counted in its last source).
"""

from __future__ import annotations

from typing import Any

import orjson

from features.canonical import hash_user_id
from features.readers import RawItem
from features.redact import redact_value
from features.traces import mlflow_traces, otlp
from features.traces.buffer import DEFAULT_WAIT_S, Outcome, TraceBuffer
from features.traces.openai_pairs import read_pair

TRACE_STATE = "trace-buffer"  # the state file committed with the rows (features.store: Commit.stage_file)


def unit_item(origin: list, raw: Any) -> RawItem:
    """A RawItem standing for one unit of a line: its quarantine copy is the unit as read (normalised)."""
    if isinstance(raw, dict):
        raw = {k: v for k, v in raw.items() if k not in ("origin", "_redactions")}
    data = orjson.dumps(raw, default=str)
    return RawItem(origin[0], origin[1], origin[2], data, len(data))


class TraceUnit(dict):
    """A span or log record as the `obj` of a quarantine: its detail already says which one it is."""


def _as_unit(obj: Any) -> dict:
    return TraceUnit(obj if isinstance(obj, dict) else {})


class TraceRouter:
    """Routes a parsed trace line's units to the ingestor's accept/quarantine, through the trace buffer."""

    def __init__(self, ingestor: Any, wait_s: float = DEFAULT_WAIT_S):
        self.ing = ingestor
        self.buffer = TraceBuffer(wait_s=wait_s, hash_user=self._hash_user)
        self.dirty = False
        self._context = 0

    # -- state ----------------------------------------------------------------------------------------
    def load(self, text: str) -> None:
        self.buffer = TraceBuffer.from_json(text, wait_s=self.buffer.wait_s, hash_user=self._hash_user)
        self._context = self.buffer.context

    def _hash_user(self, user_id: str) -> str:
        return hash_user_id(user_id, self.ing.user_salt())

    def state(self) -> bytes:
        return self.buffer.to_json(redact_value).encode()

    # -- one line -------------------------------------------------------------------------------------
    def handle(self, item: RawItem, obj: dict, fmt: str) -> None:
        rep = self.ing.rep
        if fmt == "openai":
            self.ing.accept(item, read_pair(obj, item.raw), obj)
            return
        if fmt == "mlflow":
            units = mlflow_traces.read_trace(obj, (item.source, item.line_number))
            rep.read += max(len(units), 1) - 1
            rep.spans += len(units)
            if not units:
                self._count_context(1)  # a trace without spans
            for origin, span, record in units:
                if record is None:
                    self._count_context(1)
                else:
                    self._accept(unit_item(origin, span), record)
            return
        origin = (item.source, item.line_number)
        try:
            units = otlp.spans(obj, origin) + otlp.logs(obj, origin)
        except otlp.OtlpError as exc:  # the request itself is malformed: the line is one record
            self.ing.quarantine(item, f"bad_span:{exc.field}", f"OTLP request: {exc}", obj)
            return
        rep.read += max(len(units), 1) - 1
        if not units:
            self._count_context(1)  # an empty export request: nothing in it
            return
        self.dirty = True
        for unit in units:
            if isinstance(unit, otlp.OtlpError):
                self.ing.quarantine(
                    unit_item(unit.origin, unit.raw),
                    f"bad_span:{unit.field}",
                    f"OTLP record {unit.origin[2]} of the line: {unit}",
                    _as_unit(unit.raw),
                )
                continue
            is_span = "parent_id" in unit
            if is_span:
                rep.spans += 1
            else:
                rep.log_records += 1
            try:
                outcomes = self.buffer.add_span(unit) if is_span else self.buffer.add_log(unit)
            except Exception as exc:  # noqa: BLE001 - one odd unit must not stop the run
                self.buffer.forget(unit)
                outcomes = [
                    Outcome(
                        unit["origin"],
                        unit,
                        reason="internal_error",
                        detail=f"{type(exc).__name__} while reading this record",
                    )
                ]
            self.settle(outcomes)
        self.settle(self.buffer.resolve())

    def end_source(self) -> None:
        """After each source: forget the settled traces that are out of the wait window."""
        if self.buffer.traces:
            self.buffer.prune()
            self.dirty = True
            self._count_context(0)

    def close_idle(self, flush: bool = False) -> None:
        """At the end of a run: close the traces idle for wait_s behind the latest data (every open trace
        when flush: IngestConfig.flush_traces, the data is known to be complete). Only then, so that
        the order in which a run reads its files (all logs files before all span files) never matters."""
        if self.buffer.traces:
            self.dirty = True
            self.settle(self.buffer.expire(flush=flush))

    def settle(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            item = unit_item(o.origin, o.raw)
            if o.record is not None:
                self._accept(item, o.record)
            else:
                ids = o.raw if isinstance(o.raw, dict) else {}
                iid = f"{ids.get('trace_id')}-{ids.get('span_id')}" if ids.get("span_id") else None
                self.ing.quarantine(item, o.reason, o.detail, _as_unit({"id": iid} if iid else {}))
        self._count_context(0)

    def _accept(self, item: RawItem, record: dict) -> None:
        """ingest's accept for one unit's record; a bug of ours on it quarantines that unit, not the line."""
        try:
            self.ing.accept(item, record, record)
        except Exception as exc:  # noqa: BLE001 - see features.ingest.INTERNAL_ERROR
            self.ing.quarantine(
                item, "internal_error", f"{type(exc).__name__} while ingesting this record", _as_unit({})
            )

    def _count_context(self, extra: int) -> None:
        rep = self.ing.rep
        rep.context += extra + self.buffer.context - self._context
        self._context = self.buffer.context
        for _ in range(self.buffer.resent):
            self.ing.duplicate("same_span")
        self.buffer.resent = 0
        if self.buffer.reported:
            rep.incomplete_traces += self.buffer.reported
            self.buffer.reported = []
