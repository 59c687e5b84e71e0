"""Training data: Feast training frame -> chat-templated, loss-masked examples -> session split -> packed rows.

    frame = get_training_frame(feast_config, start, end)      # features/: the only way data comes in
    snapshot = build_snapshot(frame, tokenizer, DatasetConfig(max_seq_len=512))
    snapshot.save(dir); DatasetSnapshot.load(dir)              # Flyte caching, torchrun workers
    batch = collate(snapshot.splits["train"][:8])              # input_ids, labels, position_ids
    model(**batch, use_cache=False)                            # NO attention_mask: see `pack`

Masking. Loss falls on the tokens of each assistant turn's content and on the `<|im_end|>` that
closes it (the model must learn to end a turn), nowhere else: system, user and tool turns, the
`<|im_start|>assistant\\n` header and the newline after `<|im_end|>` are -100. Labels are chosen by
POSITION (character spans of the rendered template mapped through the tokenizer's offsets), never
by token id: for SmolLM2 pad = eos = `<|im_end|>`, and masking by pad id would mask every turn end.
Assistant turns that only call tools, or are empty, are context, not targets.

System prompt policy (`DatasetConfig.system_prompt_policy`). SmolLM2's chat template silently
inserts "You are a helpful AI assistant named SmolLM, trained by Hugging Face" whenever the first
message is not a system message. Training the agents' replies under a persona they never ran with
would teach the wrong association, so the template's default is never used:
  "record" (default): the record's own leading system message(s), verbatim. A record without one gets
      `default_system_prompt` as an explicit system message ("" by default: an empty system turn).
  "drop": records without a system message are dropped (counted in stats["dropped"]["no_system_prompt"]).
To train under SmolLM's persona on purpose, set default_system_prompt to it.

Documented drops (stats["dropped"], per reason): invalid_messages (messages_json is not a list of
role/content messages), error (the logged call failed, has_error; `drop_errors`), no_system_prompt,
special_token_text (a message contains a control token's text such as `<|im_end|>`: tokenizing it
would forge turn boundaries), duplicate (interaction id seen before), too_long (over_long="drop"),
no_loss_tokens (fewer than min_assistant_tokens loss tokens, e.g. no assistant reply at all).

Over-long conversations (`over_long`), cut only between exchanges (an exchange starts at a user
message and runs to the next one, so a tool call and its result stay together); every piece keeps
the system prompt:
  "split" (default): consecutive exchanges are grouped greedily into pieces that fit, one Example
      each (part 0, 1, ...; ids `<interaction_id>`, `<interaction_id>#1`, ...). No context overlaps.
  "truncate": the oldest exchanges are dropped until the rest fits (what a serving client does).
  "drop": the interaction is dropped.
An exchange that cannot fit even alone is cut at max_seq_len inside the turn (the only cut inside
a turn; counted in stats["cut_inside_turn"]).

Split: by sha256(split_salt + session_id), so every example of a session lands in one split, and a
session keeps its split as the data grows. Records without a session id are their own session.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from features.fsutil import atomic_write

log = logging.getLogger(__name__)

IGNORE = -100  # the label of a position that carries no loss (torch's CrossEntropyLoss ignore_index)
SPLITS = ("train", "validation", "test")
SNAPSHOT_FORMAT = 1
SNAPSHOT_FILE = "snapshot.json"
SYSTEM_PROMPT_POLICIES = ("record", "drop")
OVER_LONG_POLICIES = ("split", "truncate", "drop")
TRAIN_ON = ("all_assistant_turns", "last_assistant_turn")


@dataclass
class DatasetConfig:
    """How interactions become training rows. Simple types only: Flyte passes it as a task input."""

    max_seq_len: int = 512  # no example is longer
    pack_seq_len: int = 0  # length of a packed row; 0 = max_seq_len (larger packs more per row)
    val_fraction: float = 0.1  # of sessions
    test_fraction: float = 0.1  # of sessions
    split_salt: str = "agentloop"
    system_prompt_policy: str = "record"  # "record" | "drop"; see the module docstring
    default_system_prompt: str = ""  # policy "record": the system message of a record that has none
    train_on: str = "all_assistant_turns"  # or "last_assistant_turn": only the reply the interaction produced
    over_long: str = "split"  # "split" | "truncate" | "drop"
    min_assistant_tokens: int = 1  # an example with fewer loss tokens is dropped
    drop_errors: bool = True  # drop interactions whose call failed (has_error): their last reply is missing

    def __post_init__(self) -> None:
        if self.max_seq_len < 16:
            raise ValueError(f"DatasetConfig.max_seq_len must be at least 16, got {self.max_seq_len}")
        if self.pack_seq_len and self.pack_seq_len < self.max_seq_len:
            raise ValueError(
                f"DatasetConfig.pack_seq_len ({self.pack_seq_len}) must be 0 or >= max_seq_len "
                f"({self.max_seq_len}): an example must fit in a row"
            )
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"DatasetConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "DatasetConfig.val_fraction + test_fraction must leave sessions for training, "
                f"got {self.val_fraction} + {self.test_fraction}"
            )
        for name, allowed in (
            ("system_prompt_policy", SYSTEM_PROMPT_POLICIES),
            ("over_long", OVER_LONG_POLICIES),
            ("train_on", TRAIN_ON),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"DatasetConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if self.min_assistant_tokens < 1:
            raise ValueError(
                f"DatasetConfig.min_assistant_tokens must be >= 1, got {self.min_assistant_tokens}"
            )

    @property
    def row_len(self) -> int:
        return self.pack_seq_len or self.max_seq_len


@dataclass
class Example:
    """One training sequence: an interaction (or one piece of an over-long one), template applied."""

    interaction_id: str
    session_id: str
    agent: str
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss; else == input_ids at that position (the model shifts)
    part: int = 0  # > 0 for the later pieces of a split interaction

    @property
    def example_id(self) -> str:
        return self.interaction_id if self.part == 0 else f"{self.interaction_id}#{self.part}"

    @property
    def n_loss_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class PackedRow:
    """Examples laid end to end in one row of exactly seq_len tokens; the tail is padding.

    position_ids restart at 0 for every example and for the padding tail: with attention_mask=None
    and use_cache=False, transformers reads the restarts as sequence boundaries and builds a
    block-diagonal causal mask, so no example attends to another (test_packed_loss_equals_unpacked).
    """

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    example_ids: list[str]
    lengths: list[int]  # of each example, in order; the padding tail is seq_len - sum(lengths)

    @property
    def n_padding(self) -> int:
        return len(self.input_ids) - sum(self.lengths)


# --- chat template and masking ----------------------------------------------------------------------


class TemplateError(ValueError):
    """The tokenizer's chat template cannot be used for position-based masking."""


def _content_text(content: Any) -> str:
    """OpenAI content: a string, None, or a list of parts ({"type": "text", "text": ...})."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def parse_messages(messages_json: Any) -> list[dict] | None:
    """[{"role", "content", "trainable"}] from a record's messages_json, or None when it is not messages.

    An assistant message is trainable when it has text and calls no tools; tool calls are kept as
    context (as compact JSON after the text, since the template knows no tools).
    """
    try:
        raw = json.loads(messages_json) if isinstance(messages_json, (str, bytes)) else messages_json
    except (TypeError, ValueError):
        return None
    if not isinstance(raw, list) or not raw:
        return None
    out = []
    for m in raw:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return None
        text = _content_text(m.get("content"))
        calls = m.get("tool_calls")
        if calls:
            text = (text + "\n" if text else "") + json.dumps(
                calls, ensure_ascii=False, separators=(",", ":")
            )
        trainable = m["role"] == "assistant" and not calls and bool(text.strip())
        out.append({"role": m["role"], "content": text, "trainable": trainable})
    return out


def _render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not plain and not generation_prompt:
        try:
            return tokenizer.apply_chat_template(plain, tokenize=False)
        except Exception:  # noqa: BLE001 - some templates refuse an empty conversation; it renders nothing
            return ""
    return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=generation_prompt)


@dataclass
class _Rendered:
    input_ids: list[int]
    labels: list[int]
    block_starts: list[int]  # token index where message i's block starts; one extra entry: the end


def _blocks_fast(tokenizer, messages: list[dict], text: str) -> tuple[list[int], list[int]] | None:
    """Block bounds and assistant content starts from each message rendered after the first alone.

    Linear in the conversation; valid only when the pieces add up to the full rendering (the block of
    a message does not depend on the messages around it), else None.
    """
    empty = _render(tokenizer, [])
    base = _render(tokenizer, messages[:1])
    header = _render(tokenizer, messages[:1], generation_prompt=True)
    if not base.startswith(empty) or not header.startswith(base):
        return None
    header = header[len(base) :]
    bounds, pieces = [len(empty), len(base)], [base]
    for m in messages[1:]:
        two = _render(tokenizer, [messages[0], m])
        if not two.startswith(base):
            return None
        pieces.append(two[len(base) :])
        bounds.append(bounds[-1] + len(pieces[-1]))
    if "".join(pieces) != text:
        return None
    starts = []
    for i, m in enumerate(messages):
        if m["trainable"]:
            if i == 0 or not text.startswith(header, bounds[i]):
                return None
            starts.append(bounds[i] + len(header))
    return bounds, starts


def _blocks_by_prefix(tokenizer, messages: list[dict], text: str) -> tuple[list[int], list[int]]:
    """The same from rendering every prefix of the conversation: quadratic, for context-dependent templates."""
    prefixes = [_render(tokenizer, messages[:i]) for i in range(len(messages))] + [text]
    bounds = [len(p) for p in prefixes]
    starts = []
    for i, m in enumerate(messages):
        prefix = prefixes[i]
        if not prefixes[i + 1].startswith(prefix) or not text.startswith(prefix):
            raise TemplateError(
                f"the chat template of {tokenizer.name_or_path!r} does not render messages "
                "as consecutive blocks; position-based masking needs one that does"
            )
        if m["trainable"]:
            header = _render(tokenizer, messages[:i], generation_prompt=True)
            if not header.startswith(prefix) or not text.startswith(header):
                raise TemplateError(
                    f"the chat template of {tokenizer.name_or_path!r}: the generation prompt is "
                    f"not how an assistant turn begins (message {i})"
                )
            starts.append(len(header))
    return bounds, starts


def render_and_mask(tokenizer, messages: list[dict]) -> _Rendered:
    """Token ids of the templated conversation and their labels, chosen by character position.

    The template must render a conversation as the concatenation of per-message blocks (each prefix of
    the conversation renders to a prefix of the text); SmolLM2's, Llama's and ChatML templates do.
    """
    eos = tokenizer.eos_token
    if not eos:
        raise TemplateError(f"tokenizer {tokenizer.name_or_path!r} has no eos token: cannot find turn ends")
    text = _render(tokenizer, messages)
    bounds, content_starts = _blocks_fast(tokenizer, messages, text) or _blocks_by_prefix(
        tokenizer, messages, text
    )
    spans = []  # character spans that carry loss: assistant content + the eos that closes it
    trainable = [i for i, m in enumerate(messages) if m["trainable"]]
    for i, start in zip(trainable, content_starts, strict=True):
        end = text.rfind(eos, start, bounds[i + 1])
        if end < 0:
            raise TemplateError(
                f"the chat template of {tokenizer.name_or_path!r} closes assistant turns without "
                f"the eos token {eos!r}: the model would never learn to stop"
            )
        spans.append((start, end + len(eos)))

    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    starts = [s for s, _ in offsets]
    block_starts = []
    for b in bounds:
        k = bisect.bisect_left(starts, b)
        if k > 0 and offsets[k - 1][1] > b:
            raise TemplateError(
                f"a token of {tokenizer.name_or_path!r} straddles a message boundary at character {b}"
            )
        block_starts.append(k)
    labels = [IGNORE] * len(ids)
    for lo, hi in spans:
        for k in range(bisect.bisect_left(starts, lo), len(ids)):
            s, e = offsets[k]
            if s >= hi:
                break
            if e <= hi:  # a token merged across the header/content boundary starts before lo: skipped
                labels[k] = ids[k]
    return _Rendered(ids, labels, block_starts)


def _exchanges(messages: list[dict], first: int) -> list[int]:
    """Message indices where an exchange starts (a user message, or `first`): the only cut points."""
    cuts = [first]
    cuts += [i for i in range(first + 1, len(messages)) if messages[i]["role"] == "user"]
    return cuts


def _windows(
    n_prefix: int, units: list[tuple[int, int]], max_len: int, policy: str
) -> tuple[list[list[tuple[int, int]]], int]:
    """Group token ranges of exchanges into windows that fit after the prefix; (windows, cuts inside a turn)."""
    room = max_len - n_prefix
    total = sum(hi - lo for lo, hi in units)
    if total <= room:
        return [units], 0
    if policy == "drop":
        return [], 0
    if policy == "truncate":
        kept, used = [], 0
        for lo, hi in reversed(units):
            if used + hi - lo > room:
                break
            kept.insert(0, (lo, hi))
            used += hi - lo
        if kept:
            return [kept], 0
        lo, hi = units[-1]
        return [[(lo, lo + room)]], 1
    windows, current, used, cut = [], [], 0, 0
    for lo, hi in units:
        n = hi - lo
        if n > room:  # cannot fit even alone: cut inside the turn, its own window
            if current:
                windows.append(current)
            windows.append([(lo, lo + room)])
            current, used, cut = [], 0, cut + 1
        elif used + n > room:
            windows.append(current)
            current, used = [(lo, hi)], n
        else:
            current.append((lo, hi))
            used += n
    if current:
        windows.append(current)
    return windows, cut


def _prepare_messages(messages: list[dict], config: DatasetConfig) -> tuple[list[dict] | None, str]:
    """Apply the system-prompt and train_on policies; (messages, drop reason)."""
    if messages[0]["role"] != "system":
        if config.system_prompt_policy == "drop":
            return None, "no_system_prompt"
        messages = [
            {"role": "system", "content": config.default_system_prompt, "trainable": False},
            *messages,
        ]
    last = max((i for i, m in enumerate(messages) if m["trainable"]), default=None)
    if last is None:
        return None, "no_loss_tokens"
    messages = messages[: last + 1]  # trailing turns after the last reply teach nothing
    if config.train_on == "last_assistant_turn":
        messages = [{**m, "trainable": i == last} for i, m in enumerate(messages)]
    return messages, ""


def build_examples(
    frame: pd.DataFrame, tokenizer, config: DatasetConfig | None = None, stats: dict | None = None
) -> list[Example]:
    """Examples from a training frame (features.feast_store.get_training_frame), in frame order.

    Needs columns interaction_id and messages_json; session_id, agent and has_error are used when
    present. Dropped records are counted per reason in stats["dropped"] when `stats` is given.
    """
    config = config or DatasetConfig()
    missing = {"interaction_id", "messages_json"} - set(frame.columns)
    if missing:
        raise KeyError(
            f"training frame lacks column(s) {sorted(missing)}; build it with "
            "features.feast_store.get_training_frame"
        )
    forbidden = [t for t in tokenizer.all_special_tokens if t]
    dropped: Counter = Counter()
    seen: set[str] = set()
    examples: list[Example] = []
    cut_inside_turn = split_interactions = 0
    has_error = frame["has_error"] if "has_error" in frame else pd.Series(False, index=frame.index)
    sessions = frame["session_id"] if "session_id" in frame else pd.Series("", index=frame.index)
    agents = frame["agent"] if "agent" in frame else pd.Series("", index=frame.index)
    for iid, raw, err, session, agent in zip(
        frame["interaction_id"], frame["messages_json"], has_error, sessions, agents, strict=True
    ):
        iid = str(iid)
        if iid in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(iid)
        if config.drop_errors and not pd.isna(err) and bool(err):
            dropped["error"] += 1
            continue
        messages = parse_messages(raw)
        if messages is None:
            dropped["invalid_messages"] += 1
            continue
        if any(t in m["content"] for m in messages for t in forbidden):
            dropped["special_token_text"] += 1
            continue
        messages, reason = _prepare_messages(messages, config)
        if messages is None:
            dropped[reason] += 1
            continue
        r = render_and_mask(tokenizer, messages)
        # _prepare_messages left a system prefix and a trainable assistant message after it
        n_system = next(i for i, m in enumerate(messages) if m["role"] != "system")
        prefix_end = r.block_starts[n_system]
        if prefix_end >= config.max_seq_len:
            dropped["too_long"] += 1  # the system prompt alone fills max_seq_len
            continue
        cuts = _exchanges(messages, n_system)
        units = [
            (r.block_starts[a], r.block_starts[b])
            for a, b in zip(cuts, [*cuts[1:], len(messages)], strict=True)
        ]
        windows, cut = _windows(prefix_end, units, config.max_seq_len, config.over_long)
        if not windows:
            dropped["too_long"] += 1
            continue
        cut_inside_turn += cut
        pieces = []
        for window in windows:
            keep = list(range(prefix_end))
            for lo, hi in window:
                keep.extend(range(lo, hi))
            labels = [r.labels[k] for k in keep]
            if sum(label != IGNORE for label in labels) < config.min_assistant_tokens:
                continue
            pieces.append(([r.input_ids[k] for k in keep], labels))
        if not pieces:
            dropped["no_loss_tokens"] += 1
            continue
        split_interactions += len(pieces) > 1
        session = "" if session is None or pd.isna(session) else str(session)
        for part, (ids, labels) in enumerate(pieces):
            # Examples are packed end to end: a first position with a label would be the target of
            # the previous example's last token.
            assert labels[0] == IGNORE and len(ids) <= config.max_seq_len, iid
            examples.append(
                Example(iid, session or iid, "" if pd.isna(agent) else str(agent), ids, labels, part)
            )
    if stats is not None:
        stats["interactions"] = stats.get("interactions", 0) + len(frame)
        stats["dropped"] = dict(sorted((Counter(stats.get("dropped", {})) + dropped).items()))
        stats["cut_inside_turn"] = stats.get("cut_inside_turn", 0) + cut_inside_turn
        stats["split_interactions"] = stats.get("split_interactions", 0) + split_interactions
    if dropped:
        log.info(
            "build_examples: %d examples from %d records; dropped %s",
            len(examples),
            len(frame),
            dict(dropped),
        )
    return examples


# --- split and packing -----------------------------------------------------------------------------


def session_bucket(session_id: str, salt: str) -> float:
    """A session's fixed place in [0, 1): sha256 of salt + session id."""
    digest = hashlib.sha256(f"{salt}\x00{session_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_session(
    examples: Sequence[Example], config: DatasetConfig | None = None
) -> dict[str, list[Example]]:
    """{"train", "validation", "test"}: each session wholly in one, by hash of session id and salt."""
    config = config or DatasetConfig()
    out: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for ex in examples:
        u = session_bucket(ex.session_id or ex.interaction_id, config.split_salt)
        name = (
            "test"
            if u < config.test_fraction
            else ("validation" if u < config.test_fraction + config.val_fraction else "train")
        )
        out[name].append(ex)
    return out


def pack(examples: Sequence[Example], seq_len: int, pad_id: int = 0) -> list[PackedRow]:
    """Best-fit decreasing: each example, longest first, goes to the row it fills most tightly.

    Deterministic (ties broken by example id). Rows are returned longest-examples-first: shuffle them
    for training. The padding tail (pad_id, label IGNORE) is a segment of its own (positions from 0).
    """
    order = sorted(examples, key=lambda e: (-len(e), e.example_id))
    bins: list[list[Example]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for ex in order:
        n = len(ex)
        if n > seq_len:
            raise ValueError(
                f"example {ex.example_id} has {n} tokens, more than the row length {seq_len}; "
                "build examples with max_seq_len <= seq_len"
            )
        if n == 0:
            continue
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
            bins[b].append(ex)
        else:
            room, b = seq_len, len(bins)
            bins.append([ex])
        if room - n > 0:
            bisect.insort(free, (room - n, b))
    rows = []
    for members in bins:
        ids, labels, pos = [], [], []
        for ex in members:
            ids += ex.input_ids
            labels += ex.labels
            pos += range(len(ex))
        pad = seq_len - len(ids)
        rows.append(
            PackedRow(
                ids + [pad_id] * pad,
                labels + [IGNORE] * pad,
                pos + list(range(pad)),
                [ex.example_id for ex in members],
                [len(ex) for ex in members],
            )
        )
    return rows


def collate(rows: Sequence[PackedRow]) -> dict:
    """Stack rows into int64 tensors input_ids, labels, position_ids. No attention_mask, on purpose."""
    import torch

    return {
        "input_ids": torch.tensor([r.input_ids for r in rows], dtype=torch.long),
        "labels": torch.tensor([r.labels for r in rows], dtype=torch.long),
        "position_ids": torch.tensor([r.position_ids for r in rows], dtype=torch.long),
    }


# --- the snapshot ------------------------------------------------------------------------------------


def tokenizer_identity(tokenizer) -> dict[str, str]:
    """What tokenization depends on: the full tokenizer spec, the chat template, the special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    h = hashlib.sha256(spec.encode())
    h.update(str(getattr(tokenizer, "chat_template", "") or "").encode())
    h.update(json.dumps([tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token]).encode())
    return {
        "name_or_path": str(tokenizer.name_or_path),
        "class": type(tokenizer).__name__,
        "sha256": h.hexdigest(),
    }


def _example_record(ex: Example) -> dict:
    digest = hashlib.sha256(np.asarray(ex.input_ids + ex.labels, dtype=np.int64).tobytes()).hexdigest()
    return {
        "example_id": ex.example_id,
        "interaction_id": ex.interaction_id,
        "session_id": ex.session_id,
        "agent": ex.agent,
        "part": ex.part,
        "n_tokens": len(ex),
        "n_loss_tokens": ex.n_loss_tokens,
        "sha256": digest,
    }


def compute_snapshot_hash(index: dict[str, list[dict]], tokenizer_sha256: str, config: DatasetConfig) -> str:
    """sha256 over each split's exact examples (ids, token counts, token digest), the tokenizer and config."""
    keys = ("example_id", "n_tokens", "n_loss_tokens", "sha256")
    body = {
        "format": SNAPSHOT_FORMAT,
        "splits": {name: sorted([r[k] for k in keys] for r in index[name]) for name in SPLITS},
        "tokenizer": tokenizer_sha256,
        "config": asdict(config),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class DatasetSnapshot:
    """Packed rows per split, what they hold, and the hash that names them."""

    snapshot_hash: str
    config: DatasetConfig
    tokenizer: dict[str, str]  # tokenizer_identity
    splits: dict[str, list[PackedRow]]
    index: dict[str, list[dict]]  # per split: one record per example (ids, session, agent, token counts)
    stats: dict = field(default_factory=dict)
    source: dict = field(
        default_factory=dict
    )  # where the frame came from (Feast service, window); not hashed

    @property
    def seq_len(self) -> int:
        return self.config.row_len

    def interaction_ids(self, split: str) -> list[str]:
        return sorted({r["interaction_id"] for r in self.index[split]})

    def examples(self, split: str) -> list[Example]:
        """The unpacked examples of a split, cut back out of the packed rows (for evaluation)."""
        meta = {r["example_id"]: r for r in self.index[split]}
        out = []
        for row in self.splits[split]:
            at = 0
            for eid, n in zip(row.example_ids, row.lengths, strict=True):
                m = meta[eid]
                out.append(
                    Example(
                        m["interaction_id"],
                        m["session_id"],
                        m["agent"],
                        row.input_ids[at : at + n],
                        row.labels[at : at + n],
                        m["part"],
                    )
                )
                at += n
        return sorted(out, key=lambda e: (e.interaction_id, e.part))

    def save(self, directory: str | os.PathLike) -> Path:
        """<dir>/<split>.npz (int32 arrays [rows, seq_len]) + <dir>/snapshot.json, written last."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for name in SPLITS:
            rows = self.splits[name]
            arrays = {
                k: np.asarray([getattr(r, k) for r in rows], dtype=np.int32).reshape(len(rows), self.seq_len)
                for k in ("input_ids", "labels", "position_ids")
            }
            atomic_write(d / f"{name}.npz", lambda f, a=arrays: np.savez(f, **a))
        meta = {
            "format": SNAPSHOT_FORMAT,
            "snapshot_hash": self.snapshot_hash,
            "config": asdict(self.config),
            "tokenizer": self.tokenizer,
            "stats": self.stats,
            "source": self.source,
            "index": self.index,
            "rows": {name: [[r.example_ids, r.lengths] for r in self.splits[name]] for name in SPLITS},
        }
        atomic_write(d / SNAPSHOT_FILE, lambda f: f.write(json.dumps(meta, default=str).encode()))
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> DatasetSnapshot:
        """Read a saved snapshot; the hash and every example's token digest are checked against the data."""
        d = Path(directory)
        path = d / SNAPSHOT_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no dataset snapshot at {d} ({SNAPSHOT_FILE} missing): write one with DatasetSnapshot.save"
            )
        meta = json.loads(path.read_text())
        if meta.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(
                f"{path}: snapshot format {meta.get('format')}, this code reads {SNAPSHOT_FORMAT}"
            )
        config = DatasetConfig(**meta["config"])
        splits = {}
        for name in SPLITS:
            with np.load(d / f"{name}.npz", allow_pickle=False) as z:
                arrays = {k: z[k].tolist() for k in ("input_ids", "labels", "position_ids")}
            splits[name] = [
                PackedRow(ids, labels, pos, list(eids), list(lengths))
                for ids, labels, pos, (eids, lengths) in zip(
                    arrays["input_ids"],
                    arrays["labels"],
                    arrays["position_ids"],
                    meta["rows"][name],
                    strict=True,
                )
            ]
        snap = cls(
            meta["snapshot_hash"],
            config,
            meta["tokenizer"],
            splits,
            meta["index"],
            meta["stats"],
            meta.get("source", {}),
        )
        want = compute_snapshot_hash(snap.index, snap.tokenizer["sha256"], config)
        stored = {name: sorted(_example_record(e)["sha256"] for e in snap.examples(name)) for name in SPLITS}
        indexed = {name: sorted(r["sha256"] for r in snap.index[name]) for name in SPLITS}
        if want != snap.snapshot_hash or stored != indexed:
            raise ValueError(
                f"dataset snapshot at {d} is corrupt: its rows or index do not match hash "
                f"{snap.snapshot_hash}; rebuild it"
            )
        return snap


def _split_stats(examples: list[Example], rows: list[PackedRow], seq_len: int, max_seq_len: int) -> dict:
    tokens = sum(len(e) for e in examples)
    return {
        "sessions": len({e.session_id for e in examples}),
        "examples": len(examples),
        "tokens": tokens,
        "loss_tokens": sum(e.n_loss_tokens for e in examples),
        "rows": len(rows),
        "padding_share": 1 - tokens / (len(rows) * seq_len) if rows else 0.0,
        "padding_share_unpacked": 1 - tokens / (len(examples) * max_seq_len) if examples else 0.0,
    }


def build_snapshot(frame: pd.DataFrame, tokenizer, config: DatasetConfig | None = None) -> DatasetSnapshot:
    """Examples -> session split -> packed rows, with stats and the snapshot hash. Independent of row order."""
    config = config or DatasetConfig()
    t0 = time.perf_counter()
    stats: dict = {}
    examples = sorted(
        build_examples(frame, tokenizer, config, stats), key=lambda e: (e.interaction_id, e.part)
    )
    parts = split_by_session(examples, config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    splits = {name: pack(parts[name], config.row_len, pad_id) for name in SPLITS}
    index = {name: [_example_record(e) for e in parts[name]] for name in SPLITS}
    identity = tokenizer_identity(tokenizer)
    all_rows = [r for name in SPLITS for r in splits[name]]
    tokens = sum(len(e) for e in examples)
    loss_tokens = sum(e.n_loss_tokens for e in examples)
    stats.update(
        examples=len(examples),
        tokens=tokens,
        loss_tokens=loss_tokens,
        loss_token_share=loss_tokens / tokens if tokens else 0.0,
        seq_len=config.row_len,
        rows=len(all_rows),
        padding_share_packed=1 - tokens / (len(all_rows) * config.row_len) if all_rows else 0.0,
        # every example padded to max_seq_len, as a batch without packing would be
        padding_share_unpacked=1 - tokens / (len(examples) * config.max_seq_len) if examples else 0.0,
        splits={
            name: _split_stats(parts[name], splits[name], config.row_len, config.max_seq_len)
            for name in SPLITS
        },
    )
    snap_hash = compute_snapshot_hash(index, identity["sha256"], config)
    stats["build_seconds"] = round(time.perf_counter() - t0, 3)
    source = {k: v for k, v in getattr(frame, "attrs", {}).items()}
    log.info(
        "dataset snapshot %s: %d examples, %d tokens (%.1f%% loss), %d rows, padding %.1f%% packed vs "
        "%.1f%% unpacked",
        snap_hash[:12],
        len(examples),
        tokens,
        100 * stats["loss_token_share"],
        len(all_rows),
        100 * stats["padding_share_packed"],
        100 * stats["padding_share_unpacked"],
    )
    return DatasetSnapshot(snap_hash, config, identity, splits, index, stats, source)


def load_training_snapshot(
    feast_config,
    start: date | datetime,
    end: date | datetime,
    tokenizer,
    config: DatasetConfig | None = None,
    agents: Sequence[str] | None = None,
    min_rating: int | None = None,
) -> DatasetSnapshot:
    """The snapshot of the interactions in [start, end) as Feast's training_v1 service serves them.

    `tokenizer` is a tokenizer, or a base model reference (folder or hub id) whose tokenizer to load.
    Guard-flagged interactions are excluded by get_training_frame.
    """
    from features.feast_store import get_training_frame

    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        from training.base_model import resolve_base_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(tokenizer).path)
    frame = get_training_frame(feast_config, start, end, agents=agents, min_rating=min_rating)
    return build_snapshot(frame, tokenizer, config)
