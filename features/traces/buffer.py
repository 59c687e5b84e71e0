"""The buffer of open traces: chat spans wait here for their ancestors and their content, across files.

A chat span becomes one interaction once (1) its content is known (on the span, or in the OTLP log
records joined to it by trace and span id) and (2) every ancestor up to the trace's root has
arrived, so that agent and session come from the `invoke_agent` span or whatever ancestor names
them. Until then it waits, with the log records that arrived before their span.

Time is data time, not wall time, so that a re-run decides exactly as the first run did: the
watermark is the latest span end / log time seen so far, and at the end of each ingest run a trace
whose latest activity is more than `wait_s` (default 600 s) behind it is closed. Closing quarantines what is still waiting, with
its reason: `no_content:<setting>` (the span never got content: capture off), `incomplete_trace:
missing_parent` (an ancestor never arrived), `incomplete_trace:span_never_arrived` (log records
whose span never came); traces that only ever held non-chat spans are reported (no chat span
arrived). Ingest commits the buffer's state with the rows (like the poisoning memory), redacted:
secrets never rest in it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from features.canonical import LINEAGE, derived_id, feedback_from_scores, with_agent
from features.traces import genai, openinference

DEFAULT_WAIT_S = 600.0
_ERROR = (2, "STATUS_CODE_ERROR", "ERROR")
OTEL_SETTING_HINT = (
    "set OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true (with the latest experimental "
    "conventions, OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental: SPAN_ONLY or SPAN_AND_EVENT) "
    "and export the logs pipeline too"
)
OI_SETTING_HINT = (
    "unset OPENINFERENCE_HIDE_INPUTS / OPENINFERENCE_HIDE_OUTPUTS (TraceConfig hide_inputs=False)"
)


@dataclass
class Outcome:
    """What became of one chat span or log record: a record in the format, or a quarantine reason."""

    origin: list  # [source, line, index in the line]
    raw: dict  # the span or log dict (the quarantine copy)
    record: dict | None = None
    reason: str = ""
    detail: str = ""


def _iso(ns: int | None) -> str | None:
    if not ns:
        return None
    dt = datetime.fromtimestamp(ns // 1_000_000_000, tz=timezone.utc).replace(
        microsecond=(ns // 1000) % 1_000_000
    )
    return dt.isoformat().replace("+00:00", "Z")


def _first(*values: Any) -> Any:
    return next((v for v in values if isinstance(v, str) and v.strip()), None)


USER_KEYS = ("user.id", "enduser.id", "gen_ai.user.id")


def _compact(span: dict, hash_user) -> dict:
    """What a span tells its descendants: parent, agent, session, user (kept for as long as its trace).

    The user id is kept only as its salted hash (`hash_user`): the buffer is stored state."""
    a = span["attrs"]
    user = _first(*(a.get(k) for k in USER_KEYS))
    agent = a.get("gen_ai.agent.name") or openinference.agent_name(span)
    return {
        "parent_id": span["parent_id"],
        "agent": agent if isinstance(agent, str) else None,
        "session": _first(a.get("gen_ai.conversation.id"), a.get("session.id")),
        "user": hash_user(user) if user else None,
        "service": span["resource"].get("service.name"),
    }


def is_chat(span: dict) -> bool:
    return (
        openinference.is_chat_span(span) if openinference.is_openinference(span) else genai.is_chat_span(span)
    )


@dataclass
class TraceBuffer:
    wait_s: float = DEFAULT_WAIT_S
    traces: dict[str, dict] = field(default_factory=dict)
    watermark_ns: int = 0
    context: int = 0  # units used up as context (non-chat spans, joined or non-GenAI log records)
    reported: list[dict] = field(default_factory=list)  # traces closed without any chat span
    resent: int = 0  # chat spans received again while waiting (duplicates)
    touched: set = field(default_factory=set)
    # user id -> its salted hash (features.canonical.hash_user_id with the store's salt); set by ingest
    hash_user: Any = field(default=None, repr=False)  # traces with new spans or logs since the last resolve()

    # -- state ----------------------------------------------------------------------------------------
    def pending(self) -> int:
        """Units still waiting: chat spans and log records not yet joined."""
        return sum(len(t["chat"]) + sum(len(v) for v in t["logs"].values()) for t in self.traces.values())

    def to_json(self, redact) -> str:
        """The buffer as JSON, every waiting span and log redacted (`redact(value) -> (value, counts)`)."""
        traces = {}
        for tid, t in self.traces.items():
            chat = {sid: _redacted(s, redact) for sid, s in t["chat"].items()}
            logs = {sid: [_redacted(r, redact) for r in rs] for sid, rs in t["logs"].items()}
            traces[tid] = {**t, "chat": chat, "logs": logs}
        return json.dumps({"version": 1, "watermark_ns": self.watermark_ns, "traces": traces}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, wait_s: float = DEFAULT_WAIT_S, hash_user=None) -> "TraceBuffer":
        doc = json.loads(text)
        return cls(wait_s=wait_s, traces=doc["traces"], watermark_ns=doc["watermark_ns"], hash_user=hash_user)

    def _trace(self, trace_id: str) -> dict:
        return self.traces.setdefault(trace_id, {"ctx": {}, "chat": {}, "logs": {}, "done": [], "last_ns": 0})

    def _touch(self, t: dict, *times: int | None) -> None:
        latest = max([x for x in times if x] or [0])
        t["last_ns"] = max(t["last_ns"], latest)
        self.watermark_ns = max(self.watermark_ns, latest)

    # -- input ----------------------------------------------------------------------------------------
    def add_span(self, span: dict) -> list[Outcome]:
        t = self._trace(span["trace_id"])
        self._touch(t, span["end_ns"], span["start_ns"])
        sid = span["span_id"]
        t["ctx"][sid] = _compact(span, self.hash_user)
        if sid in t["chat"]:
            self.resent += 1  # the same span again while it waits (a re-sent batch): a duplicate
            return []
        if sid in t["done"]:
            t["done"].remove(sid)  # decided already: read again, dedup finds its interaction
        self.touched.add(span["trace_id"])
        if not is_chat(span):
            self.context += 1
            return []
        t["chat"][sid] = span
        return []

    def add_log(self, log: dict) -> list[Outcome]:
        name = log["event_name"] or ""
        if not name.startswith("gen_ai."):
            self.context += 1  # an application's own log line: not ours to read
            return []
        if not log["trace_id"] or not log["span_id"]:
            return [
                Outcome(
                    log["origin"],
                    log,
                    reason="bad_span:spanId",
                    detail=f"{name} log record has no trace/span id to join",
                )
            ]
        t = self._trace(log["trace_id"])
        self._touch(t, log["time_ns"])
        sid = log["span_id"]
        if sid in t["done"] or (sid in t["ctx"] and sid not in t["chat"]):
            self.context += 1  # late, or about a non-chat span (an agent's evaluation): nothing waits on it
            return []
        t["logs"].setdefault(sid, []).append(log)
        self.touched.add(log["trace_id"])
        return []

    def forget(self, unit: dict) -> None:
        """Take back a unit that failed half-way into the buffer (it is quarantined instead)."""
        t = self.traces.get(unit.get("trace_id") or "")
        if t is None:
            return
        t["chat"].pop(unit.get("span_id"), None)
        logs = t["logs"].get(unit.get("span_id"), [])
        if unit in logs:
            logs.remove(unit)

    def resolve(self) -> list[Outcome]:
        """Decide the chat spans of the traces touched since the last call (call it once per batch,
        so that a line's log records are all joined before its spans are judged)."""
        touched, self.touched = self.touched, set()
        out = []
        for tid in sorted(touched):
            if tid in self.traces:
                out += self._resolve(tid)
        return out

    # -- deciding -------------------------------------------------------------------------------------
    def _ancestors(self, t: dict, span: dict) -> list[dict] | None:
        """The span's ancestors, nearest first; None while one of them has not arrived."""
        chain, seen = [], {span["span_id"]}
        parent = span["parent_id"]
        while parent:
            node = t["ctx"].get(parent)
            if node is None or parent in seen:
                return None if node is None else chain
            seen.add(parent)
            chain.append(node)
            parent = node["parent_id"]
        return chain

    def _content(self, t: dict, span: dict) -> tuple[list, list, bool]:
        if openinference.is_openinference(span):
            return openinference.conversation(span)
        return genai.conversation(span, t["logs"].get(span["span_id"], []))

    def _resolve(self, trace_id: str) -> list[Outcome]:
        t = self.traces[trace_id]
        out = []
        for sid, span in list(t["chat"].items()):
            try:
                outcome = self._decide(trace_id, t, sid, span)
            except Exception as exc:  # noqa: BLE001 - one odd span must not stop the run: see _failed
                outcome = self._close(t, sid, _failed(span, exc))
            if outcome is not None:
                out.append(outcome)
        return out

    def _decide(self, trace_id: str, t: dict, sid: str, span: dict) -> Outcome | None:
        """The outcome of a waiting chat span, or None while it must wait."""
        inputs, outputs, seen = self._content(t, span)
        chain = self._ancestors(t, span)
        if not seen:
            logs_came = bool(t["logs"].get(sid))
            if openinference.is_openinference(span) or logs_came:
                return self._close(t, sid, self._no_content(span))
            return None
        complete = outputs and any(m.get("role") == "user" for m in inputs)
        if not (complete or span["status"] in _ERROR) and openinference.is_openinference(span):
            # OpenInference has no log records to wait for: a half-hidden span stays half-hidden.
            return self._close(t, sid, self._no_content(span))
        if chain is None or not (complete or span["status"] in _ERROR):
            return None  # an ancestor, the reply or the user's turn has not arrived yet
        return self._close(t, sid, None, self._record(trace_id, span, chain, inputs, outputs, t))

    def _close(self, t: dict, sid: str, failed: Outcome | None, record: dict | None = None) -> Outcome:
        span = t["chat"].pop(sid)
        self.context += len(t["logs"].pop(sid, []))
        t["done"].append(sid)
        return failed if failed is not None else Outcome(span["origin"], span, record=record)

    def _no_content(self, span: dict) -> Outcome:
        if openinference.is_openinference(span):
            setting, hint = openinference.HIDE_SETTING, OI_SETTING_HINT
        else:
            setting, hint = genai.CAPTURE_SETTING, OTEL_SETTING_HINT
        return Outcome(
            span["origin"],
            span,
            reason=f"no_content:{setting}",
            detail=f"chat span {span['span_id']} of trace {span['trace_id']} was recorded without message content: {hint}",
        )

    def prune(self) -> None:
        """Drop the traces with nothing waiting that are idle for wait_s behind the watermark.

        Run after every source, so that memory and the committed state hold the open window of
        data time, not every trace a run has seen; a span of a dropped trace that still comes
        later finds no ancestors (and waits for them until its own trace is closed).
        """
        limit = self.watermark_ns - int(self.wait_s * 1e9)
        for tid in [
            tid for tid, t in self.traces.items() if t["last_ns"] < limit and not t["chat"] and not t["logs"]
        ]:
            t = self.traces.pop(tid)
            self._report(tid, t)

    def _report(self, tid: str, t: dict) -> None:
        if not t["done"] and t["ctx"]:
            agents = sorted({c["agent"] for c in t["ctx"].values() if c["agent"]})
            self.reported.append({"trace_id": tid, "spans": len(t["ctx"]), "agents": agents})

    def expire(self, flush: bool = False) -> list[Outcome]:
        """Close the traces idle for longer than wait_s behind the watermark (every trace when flush)."""
        out = self.resolve()
        limit = self.watermark_ns - int(self.wait_s * 1e9)
        for tid in [tid for tid, t in self.traces.items() if flush or t["last_ns"] < limit]:
            t = self.traces.pop(tid)
            for sid, span in list(t["chat"].items()):
                try:
                    inputs, outputs, seen = self._content(t, span)
                    chain = self._ancestors(t, span)
                    record = (
                        self._record(tid, span, chain, inputs, outputs, t)
                        if seen and chain is not None
                        else None
                    )
                except Exception as exc:  # noqa: BLE001 - see _failed
                    out.append(self._close(t, sid, _failed(span, exc)))
                    continue
                if not seen:
                    out.append(self._close(t, sid, self._no_content(span)))
                elif chain is None:
                    out.append(
                        self._close(
                            t,
                            sid,
                            Outcome(
                                span["origin"],
                                span,
                                reason="incomplete_trace:missing_parent",
                                detail=f"chat span {sid} of trace {tid}: its parent span {span['parent_id']} never "
                                f"arrived within {self.wait_s:g}s of the latest data",
                            ),
                        )
                    )
                else:
                    out.append(self._close(t, sid, None, record))
            for sid, logs in t["logs"].items():
                for log in logs:
                    out.append(
                        Outcome(
                            log["origin"],
                            log,
                            reason="incomplete_trace:span_never_arrived",
                            detail=f"{log['event_name']} log record for span {sid} of trace {tid}: the span never "
                            f"arrived within {self.wait_s:g}s of the latest data",
                        )
                    )
            self._report(tid, t)
        return out

    # -- the record -----------------------------------------------------------------------------------
    def _record(self, tid: str, span: dict, chain: list[dict], inputs: list, outputs: list, t: dict) -> dict:
        a = span["attrs"]
        oi = openinference.is_openinference(span)
        me = t["ctx"].get(span["span_id"]) or _compact(span, self.hash_user)
        nodes = [me, *chain]
        agent = next((n["agent"] for n in nodes if n["agent"]), None)
        session = next((n["session"] for n in nodes if n["session"]), None)
        user = next((n["user"] for n in nodes if n["user"]), None)
        service = span["resource"].get("service.name")
        record: dict[str, Any] = {
            "id": derived_id(tid, span["span_id"]),
            "session_id": session or tid,
            "timestamp": _iso(span["end_ns"] or span["start_ns"]),
            "messages": inputs + outputs[:1],
        }
        with_agent(record, agent, service if isinstance(service, str) and service else "unknown-agent")
        reader = openinference if oi else genai
        for key, value in (
            ("model", reader.model(a)),
            ("usage", reader.usage(a)),
            ("tools", reader.tools(a)),
        ):
            if value is not None:
                record[key] = value
        if span["start_ns"] and span["end_ns"] and span["end_ns"] >= span["start_ns"]:
            record["latency_ms"] = (span["end_ns"] - span["start_ns"]) / 1e6
        if user:  # already the salted hash: ingest stores it as it is
            lineage_user = user
        else:
            lineage_user = None
        if not oi:
            feedback = feedback_from_scores(genai.evaluations(span, t["logs"].get(span["span_id"], [])))
            if feedback:
                record["feedback"] = feedback
        if span["status"] in _ERROR:
            record["error"] = {
                "type": a.get("error.type") or "span_error",
                "message": span.get("status_message") or "",
            }
        metadata = {"trace_id": tid, "span_id": span["span_id"], "scope": span["scope"]}
        if oi and openinference.metadata(a):
            metadata["metadata"] = openinference.metadata(a)
        record["metadata"] = metadata
        redactions: dict[str, int] = {}
        for part in [span, *t["logs"].get(span["span_id"], [])]:
            for k, n in (part.get("_redactions") or {}).items():
                redactions[k] = redactions.get(k, 0) + n
        record[LINEAGE] = {
            "format": "openinference" if oi else "otlp",
            "trace_id": tid,
            "span_id": span["span_id"],
            "redactions": redactions,
            "user_id_hash": lineage_user,
        }
        return record


def _failed(span: dict, exc: Exception) -> Outcome:
    """A span our reader could not turn into a record (a bug of ours): kept in quarantine, the run goes on."""
    return Outcome(
        span["origin"], span, reason="internal_error", detail=f"{type(exc).__name__} while reading this span"
    )


def _redacted(unit: dict, redact) -> dict:
    if "_redactions" in unit:
        return unit
    out = dict(unit)
    if isinstance(out.get("attrs"), dict):  # user ids live on as hashes in the trace's ctx only
        out["attrs"] = {k: v for k, v in out["attrs"].items() if k not in USER_KEYS}
    counts: dict[str, int] = {}
    for key in ("attrs", "events", "body"):
        if key in out:
            out[key], more = redact(out[key])
            for k, n in more.items():
                counts[k] = counts.get(k, 0) + n
    out["_redactions"] = counts
    return out
