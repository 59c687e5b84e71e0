"""Examples: an interaction's messages, after the system-prompt and over-long policies, rendered and masked
(training/dataset.py explains the policies)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from training.chat_template import IGNORE, parse_messages, parse_tools, render_and_mask, tool_use_problem

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SNAPSHOT_FORMAT = 1
SNAPSHOT_FILE = "snapshot.json"
SYSTEM_PROMPT_POLICIES = ("record", "drop")
OVER_LONG_POLICIES = ("split", "truncate", "drop")
TRAIN_ON = ("all_assistant_turns", "last_assistant_turn")


@dataclass
class DatasetConfig:
    """How interactions become training rows. Simple types only: Flyte passes it as a task input."""

    max_seq_len: int = 1024  # no example is longer (BFCL tool schemas: median 548 tokens, 85% <= 1024)
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

    Needs columns interaction_id and messages_json; session_id, agent, has_error and tools_json are used
    when present. Tools render in the system turn and tool calls carry loss (training/tool_format.py).
    Dropped records are counted per reason in stats["dropped"] when `stats` is given; a record whose tool
    use is broken (chat_template.TOOL_PROBLEMS) is never trained on.
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
    tools_col = frame["tools_json"] if "tools_json" in frame else pd.Series(None, index=frame.index)
    for iid, raw, err, session, agent, tools_json in zip(
        frame["interaction_id"], frame["messages_json"], has_error, sessions, agents, tools_col, strict=True
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
        tools = parse_tools(tools_json)
        problem = tool_use_problem(messages, tools)
        if problem:
            dropped[problem] += 1
            continue
        messages, reason = _prepare_messages(messages, config)
        if messages is None:
            dropped[reason] += 1
            continue
        r = render_and_mask(tokenizer, messages, tools or None)
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
        if not windows or (cut and tools):
            # a tool call cut inside its turn would teach a call that never closes
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
