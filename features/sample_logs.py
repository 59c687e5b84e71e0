"""Sample agent logs from the real conversations of the chitchat-dataset package.

    python -m features.sample_logs --out data/raw --conversations 500 --days 7 --seed 0

Each replied conversation becomes one interaction of one of the team's agents, written in the raw
format of docs/interaction-format.md to <out>/<YYYY-MM-DD>/<agent>.jsonl[.gz]. The text, the turn
structure, the time of day, the reply gaps and the ratings are real; the agent, the day, the model,
the token counts, the mix of CloudEvents lines and gzip files and the errors are simulated, all
decided by sha256 of (seed, conversation id), so a seed and an end date fix every output byte.

With --trace-share, that share of the interactions is written instead as the traces agents produce
(features/sample_traces.py), spread over the formats: <day>/<agent>.otlp.jsonl (GenAI spans, content
on the span or in <agent>.otlp-logs.jsonl), .openinference.jsonl, .mlflow.jsonl, .openai.jsonl.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from features.fsutil import progress as progress_bar
from features.raw_format import AGENTS, to_cloudevent
from features.sample_traces import TRACE_FORMATS, trace_files

SOURCE = "chitchat-dataset"
SESSION_PREFIX = "chitchat-"
# uuid5 namespace for interaction ids: ids depend on the seed and the conversation id only.
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://homelab.dev/agentloop/sample-logs")

AGENT_MODELS = {
    "agent-bruno": "meta-llama/Llama-3.1-8B-Instruct",
    "agent-auditor": "Qwen/Qwen2.5-7B-Instruct",
    "agent-jamie": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "agent-mary-kay": "mistralai/Mistral-7B-Instruct-v0.3",
}
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SYSTEM_PROMPTS = {
    "agent-bruno": "You are Bruno, a relaxed and friendly chat companion. Keep replies short and casual.",
    "agent-auditor": "You are Auditor, a polite assistant. Chat naturally, stay honest and never make things up.",
    "agent-jamie": "You are Jamie, an upbeat assistant who asks questions back and keeps the conversation going.",
    "agent-mary-kay": "You are Mary-Kay, a warm and witty assistant. Be kind, curious and brief.",
}
DEFAULT_SYSTEM_PROMPT = "You are a friendly assistant. Keep replies short and natural."
# Agents whose log lines carry a local offset instead of Z, so readers meet both forms of RFC 3339.
AGENT_UTC_OFFSETS = {"agent-mary-kay": timedelta(hours=2)}

# The final reply gap is a human typing, 1 s resolution, median 35 s but p90 5 min and up to days
# (the chat winding down): keep its shape, cap it at a client timeout (about a fifth of records hit it).
LATENCY_MIN_MS = 200
LATENCY_MAX_MS = 120_000
CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text
TOKENS_PER_MESSAGE = 4  # role and separators of the chat format
TOKENS_REPLY_PRIMING = 3  # the assistant header the server appends before generating
ERRORS = (
    ("APITimeoutError", "Request timed out after {latency} ms waiting for {model}."),
    ("RateLimitError", "Error code: 429 - rate limit reached for {model}; retry after 2 s."),
    ("APIConnectionError", "Connection error: upstream {model} endpoint reset the connection."),
)


@dataclass
class SampleLogsReport:
    """What generate_sample_logs wrote."""

    out_dir: str
    written: int = 0
    skipped_no_reply: int = 0
    files: int = 0
    gzip_files: int = 0
    cloudevents: int = 0
    errors: int = 0
    traces: dict[str, int] = field(default_factory=dict)  # trace format -> interactions written in it
    first_day: str = ""
    last_day: str = ""
    per_agent: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        agents = " ".join(f"{a}={n}" for a, n in sorted(self.per_agent.items()))
        return (
            f"wrote {self.written} interactions ({self.cloudevents} as CloudEvents, "
            f"{sum(self.traces.values())} as traces {dict(sorted(self.traces.items()))}, {self.errors} with error; "
            f"skipped {self.skipped_no_reply} conversations without a reply) to {self.files} files "
            f"({self.gzip_files} gzip) in {self.out_dir} for {self.first_day}..{self.last_day}: {agents}"
        )


def _digest(seed: int, *parts: Any) -> int:
    """A stable 64-bit hash; Python's hash() is salted per process."""
    key = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


def _top_share(keys: Sequence[Any], share: float, seed: int, purpose: str) -> set:
    """The round(share * len(keys)) keys that rank first by hash: an exact, deterministic share."""
    n = int(share * len(keys) + 0.5)
    return set(sorted(keys, key=lambda k: (_digest(seed, purpose, k), str(k)))[:n])


def estimate_tokens(text: str) -> int:
    """Token estimate without a tokenizer: one token per 4 characters, at least one."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Estimated prompt size of a chat request: each message's text plus the chat-format overhead."""
    return sum(estimate_tokens(m["content"]) + TOKENS_PER_MESSAGE for m in messages) + TOKENS_REPLY_PRIMING


def ratings_to_feedback(ratings: Mapping[str, int] | None) -> dict | None:
    """Map chitchat's witty/upbeat/interesting ratings (1-10 each) to {rating 1-5, thumbs}.

    rating = the mean of the three mapped linearly from 1..10 onto 1..5, rounded half up
    (all 5s, the untouched default of half the rated conversations, become 3);
    thumbs = "up" for 4-5, "down" for 1-2, none for 3. No ratings, no feedback.
    """
    values = [v for v in (ratings or {}).values() if isinstance(v, (int, float))]
    if not values:
        return None
    mean = sum(values) / len(values)
    rating = min(5, max(1, math.floor(1 + (mean - 1) * 4 / 9 + 0.5)))
    feedback: dict[str, Any] = {"rating": rating}
    if rating >= 4:
        feedback["thumbs"] = "up"
    elif rating <= 2:
        feedback["thumbs"] = "down"
    return feedback


def reply_latency_ms(gap_seconds: float, jitter_ms: int) -> int:
    """Latency from the real gap between the last user utterance and the reply, clamped.

    Timestamps have 1 s resolution, so a deterministic jitter in [0, 1000) ms spreads the values.
    """
    return int(min(LATENCY_MAX_MS, max(LATENCY_MIN_MS, gap_seconds * 1000 + jitter_ms)))


def _parse_utc(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _rfc3339(moment: datetime) -> str:
    if moment.utcoffset() == timedelta(0):
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.isoformat(timespec="seconds")


def _turns(conversation: Mapping[str, Any]) -> list[tuple[str, list[str], datetime, datetime]]:
    """(role, texts, first time, last time) per turn; the first sender is the user.

    Blank utterances are dropped and same-role neighbours merged, so roles strictly alternate.
    """
    turns: list[tuple[str, list[str], datetime, datetime]] = []
    user = None
    for group in conversation.get("messages") or []:
        for utterance in group:
            text = (utterance.get("text") or "").strip()
            if not text:
                continue
            user = utterance["sender"] if user is None else user
            role = "user" if utterance["sender"] == user else "assistant"
            at = _parse_utc(utterance["timestamp"])
            if turns and turns[-1][0] == role:
                turns[-1][1].append(text)
                turns[-1] = (role, turns[-1][1], turns[-1][2], at)
            else:
                turns.append((role, [text], at, at))
    if turns and turns[-1][0] == "user":
        turns.pop()
    return turns


def conversation_to_record(
    conversation_id: str, conversation: Mapping[str, Any], *, agent: str, day: date, seed: int
) -> dict | None:
    """One interaction record for a conversation, or None when nobody replied."""
    turns = _turns(conversation)
    if not turns:
        return None
    model = AGENT_MODELS.get(agent, DEFAULT_MODEL)
    messages = [{"role": "system", "content": SYSTEM_PROMPTS.get(agent, DEFAULT_SYSTEM_PROMPT)}]
    messages += [{"role": role, "content": "\n".join(texts)} for role, texts, _, _ in turns]

    last_user, reply = turns[-2], turns[-1]
    gap = (reply[2] - last_user[3]).total_seconds()
    # Logged when the reply is complete: the real UTC time of day of the reply's last utterance.
    moment = datetime.combine(day, reply[3].astimezone(timezone.utc).time(), tzinfo=timezone.utc)
    local = moment.astimezone(timezone(AGENT_UTC_OFFSETS.get(agent, timedelta(0))))

    completion = estimate_tokens(messages[-1]["content"])
    prompt = prompt_tokens(messages[:-1])
    record: dict[str, Any] = {
        "id": str(uuid.uuid5(ID_NAMESPACE, f"{seed}:{conversation_id}")),
        "agent": agent,
        "session_id": SESSION_PREFIX + conversation_id,
        "timestamp": _rfc3339(local),
        "model": model,
        "messages": messages,
        "latency_ms": reply_latency_ms(gap, _digest(seed, "jitter", conversation_id) % 1000),
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
    feedback = ratings_to_feedback(conversation.get("ratings"))
    if feedback:
        record["feedback"] = feedback
    metadata: dict[str, Any] = {"source": SOURCE, "conversation_id": conversation_id}
    if conversation.get("prompt"):
        metadata["prompt"] = conversation["prompt"]
    if conversation.get("ratings"):
        metadata["ratings"] = dict(conversation["ratings"])
    record["metadata"] = metadata
    return record


def make_failed(record: dict, seed: int) -> dict:
    """Turn a record into the log of a failed call: the final reply is missing and `error` says why."""
    kind, template = ERRORS[_digest(seed, "error-kind", record["id"]) % len(ERRORS)]
    messages = record["messages"][:-1]
    if kind == "APITimeoutError":
        latency = LATENCY_MAX_MS
    else:
        latency = 200 + _digest(seed, "error-latency", record["id"]) % 2800
    prompt = prompt_tokens(messages)
    failed = {k: v for k, v in record.items() if k not in ("feedback", "metadata")}
    failed.update(
        messages=messages,
        latency_ms=latency,
        usage={"prompt_tokens": prompt, "completion_tokens": 0, "total_tokens": prompt},
        error={"type": kind, "message": template.format(latency=latency, model=record["model"])},
        metadata=record["metadata"],
    )
    return failed


def load_conversations() -> dict[str, Any]:
    """The chitchat-dataset conversations (conversation id -> conversation), ~40 MB of JSON."""
    import chitchat_dataset

    return dict(chitchat_dataset.Dataset())


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file and rename; leave an identical file untouched (mtime too)."""
    if path.exists() and path.read_bytes() == data:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the logs from the ingesting user
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _check_share(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")


def generate_sample_logs(
    out_dir: str | os.PathLike,
    conversations: int | None = 500,
    days: int = 7,
    seed: int = 0,
    end_date: date | str | None = None,
    cloudevents_share: float = 0.3,
    gzip_share: float = 0.25,
    error_rate: float = 0.01,
    trace_share: float = 0.0,
    *,
    agents: Sequence[str] = AGENTS,
    dataset: Mapping[str, Any] | None = None,
    progress: bool | None = None,
) -> SampleLogsReport:
    """Write `conversations` interactions (0 or None: every replied conversation) as sample agent logs.

    Conversations are taken in seeded hash order; those without a reply are skipped, counted, and do
    not count toward `conversations`. Shares (CloudEvents lines, gzip files, errors) are exact after
    rounding. Records keep their real time of day, so the default end date is yesterday (UTC):
    no record lies in the future. A file `<agent>.jsonl` replaces a stale `<agent>.jsonl.gz` and vice versa.
    """
    if conversations is not None and conversations < 0:
        raise ValueError(f"conversations must be >= 0 (0 means all), got {conversations}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    if not agents:
        raise ValueError("agents must name at least one agent")
    shares = {
        "cloudevents_share": cloudevents_share,
        "gzip_share": gzip_share,
        "error_rate": error_rate,
        "trace_share": trace_share,
    }
    for name, value in shares.items():
        _check_share(name, value)
    if end_date is None:
        end_date = datetime.now(timezone.utc).date() - timedelta(days=1)
    elif isinstance(end_date, str):
        end_date = date.fromisoformat(end_date)
    wanted = conversations or None

    data = load_conversations() if dataset is None else dataset
    order = sorted(data, key=lambda cid: (_digest(seed, "order", cid), cid))
    report = SampleLogsReport(out_dir=str(out_dir))
    records: list[dict] = []
    show = progress if progress is not None else (wanted or len(order)) >= 2000
    bar = progress_bar(
        total=wanted, desc="sample logs", unit="conv", show=show
    )  # counts written interactions; no total when writing all
    for cid in order:
        if wanted is not None and len(records) >= wanted:
            break
        agent = agents[_digest(seed, "agent", cid) % len(agents)]
        day = end_date - timedelta(days=_digest(seed, "day", cid) % days)
        record = conversation_to_record(cid, data[cid], agent=agent, day=day, seed=seed)
        if record is None:
            report.skipped_no_reply += 1
        else:
            records.append(record)
            bar.update(1)
    bar.close()

    failing = _top_share([r["id"] for r in records], error_rate, seed, "error")
    records = [make_failed(r, seed) if r["id"] in failing else r for r in records]
    as_trace = _top_share([r["id"] for r in records], trace_share, seed, "trace")
    traced = {
        r["id"]: TRACE_FORMATS[_digest(seed, "format", r["id"]) % len(TRACE_FORMATS)]
        for r in records
        if r["id"] in as_trace
    }
    plain_records = [r for r in records if r["id"] not in traced]
    as_events = _top_share([r["id"] for r in plain_records], cloudevents_share, seed, "cloudevents")

    by_trace_file: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for r in records:
        if r["id"] in traced:
            utc_day = _parse_utc(r["timestamp"]).astimezone(timezone.utc).date().isoformat()
            by_trace_file.setdefault((utc_day, r["agent"]), []).append((traced[r["id"]], r))
    by_file: dict[tuple[str, str], list[dict]] = {}
    for r in plain_records:
        utc_day = _parse_utc(r["timestamp"]).astimezone(timezone.utc).date().isoformat()
        by_file.setdefault((utc_day, r["agent"]), []).append(r)
    gzipped = _top_share(sorted(by_file), gzip_share, seed, "gzip")

    root = Path(out_dir)
    for key in sorted(by_file):
        day_name, agent = key
        lines = sorted(by_file[key], key=lambda r: (_parse_utc(r["timestamp"]), r["id"]))
        text = "".join(
            json.dumps(to_cloudevent(r) if r["id"] in as_events else r, ensure_ascii=False) + "\n"
            for r in lines
        )
        folder = root / day_name
        folder.mkdir(parents=True, exist_ok=True)
        plain, packed = folder / f"{agent}.jsonl", folder / f"{agent}.jsonl.gz"
        if key in gzipped:
            _write_atomic(packed, gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0))
            plain.unlink(missing_ok=True)
        else:
            _write_atomic(plain, text.encode("utf-8"))
            packed.unlink(missing_ok=True)

    trace_file_count = 0
    for (day_name, agent), pairs in sorted(by_trace_file.items()):
        pairs.sort(key=lambda p: (_parse_utc(p[1]["timestamp"]), p[1]["id"]))
        folder = root / day_name
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in sorted(trace_files(agent, pairs).items()):
            _write_atomic(folder / name, data)
            trace_file_count += 1
    report.traces = dict(sorted(Counter(traced.values()).items()))

    report.written = len(records)
    report.files = len(by_file) + trace_file_count
    report.gzip_files = len(gzipped)
    report.cloudevents = len(as_events)
    report.errors = len(failing)
    report.per_agent = dict(sorted(Counter(r["agent"] for r in records).items()))
    if by_file:
        report.first_day = min(k[0] for k in by_file)
        report.last_day = max(k[0] for k in by_file)
    return report


def _conversations_arg(value: str) -> int:
    if value.strip().lower() == "all":
        return 0
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0 or 'all'")
    return n


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agentloop-sample-logs",
        description="Write sample agent interaction logs from the real chitchat-dataset conversations.",
    )
    parser.add_argument(
        "--out", required=True, help="root folder; files go to <out>/<YYYY-MM-DD>/<agent>.jsonl[.gz]"
    )
    parser.add_argument(
        "--conversations",
        type=_conversations_arg,
        default=500,
        help="interactions to write; 'all' or 0 = every conversation with a reply (default 500)",
    )
    parser.add_argument("--days", type=int, default=7, help="days in the window (default 7)")
    parser.add_argument(
        "--end-date",
        type=date.fromisoformat,
        default=None,
        help="last day of the window, YYYY-MM-DD (default yesterday, UTC: no record in the future)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cloudevents-share", type=float, default=0.3, help="share of lines as CloudEvents (0.3)"
    )
    parser.add_argument("--gzip-share", type=float, default=0.25, help="share of files gzipped (0.25)")
    parser.add_argument(
        "--error-rate", type=float, default=0.01, help="share of interactions that failed (0.01)"
    )
    parser.add_argument(
        "--trace-share",
        type=float,
        default=0.0,
        help="share of interactions written as traces, spread over "
        + ", ".join(TRACE_FORMATS)
        + " (default 0: the JSONL format only)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: for 2000+ conversations)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        report = generate_sample_logs(
            args.out,
            conversations=args.conversations,
            days=args.days,
            seed=args.seed,
            end_date=args.end_date,
            cloudevents_share=args.cloudevents_share,
            gzip_share=args.gzip_share,
            error_rate=args.error_rate,
            trace_share=args.trace_share,
            progress=args.progress,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(f"{report.summary()} in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
