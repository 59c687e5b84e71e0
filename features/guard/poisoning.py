"""Corpus poisoning: the same odd trigger planted in the user turns of many different sessions (a backdoor).

find_poisoning runs per ingest batch; PoisonState carries what it saw between batches and runs.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from features.fsutil import atomic_write_text
from features.guard.config import STATE_VERSION, GuardConfig
from features.guard.ngrams import (
    _MAX_CONTEXTS,
    _Candidate,
    _h,
    _interaction_keys,
    contains_trigger,
    tokenize,
)
from features.guard.replies import destructive_instruction

# --------------------------------------------------------------------------------------------------
# Poisoning.


@dataclass
class Trigger:
    """A trigger string found by find_poisoning, with the numbers that made it one."""

    text: str
    kind: str  # "odd" (odd-shaped token) | "edge" (identical text prepended/appended to user turns) | "known"
    sessions: int  # distinct sessions, this batch and the history together
    interactions: int
    share: float  # sessions / all sessions seen
    reply_consistency: float  # share of its sessions whose next reply starts with the same 8 words
    rare_tokens: list[str] = field(default_factory=list)
    batch_interaction_ids: list[str] = field(default_factory=list)
    earlier_interaction_ids: list[str] = field(default_factory=list)  # from earlier batches (capped)


@dataclass
class PoisonState:
    """What the poisoning detector remembers between batches (days), bounded, JSON-serializable.

    `candidates`: n-grams seen in >= 2 sessions but not yet triggers; `triggers`: confirmed ones,
    which flag every later interaction that contains them; `token_df`: the most common tokens, so
    that ordinary words stay ordinary across days.
    """

    batches: int = 0
    sessions: int = 0
    interactions: int = 0
    token_df: dict[str, int] = field(default_factory=dict)
    candidates: dict[str, dict] = field(default_factory=dict)
    triggers: dict[str, dict] = field(default_factory=dict)
    version: int = STATE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "PoisonState":
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(
                f"PoisonState: expected a JSON object with version {STATE_VERSION}, got "
                f"{data.get('version') if isinstance(data, dict) else type(data).__name__}; "
                "delete the state file to start afresh"
            )
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file + rename)."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PoisonState":
        """The state saved at `path`, or a fresh one when there is no file yet."""
        path = Path(path)
        if not path.exists():
            return cls()
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a PoisonState ({exc})") from exc


@dataclass
class PoisonReport:
    """Result of find_poisoning: the flagged interactions of this batch, the triggers, the new state."""

    flagged_ids: list[str]  # interactions of this batch that contain a trigger
    action: str  # quarantine | warn, from GuardConfig.actions["poisoning"]
    triggers: list[Trigger]
    interactions: int  # of this batch
    sessions: int  # of this batch
    candidates: int  # n-grams tracked in this batch
    pruned: int  # single-session candidates dropped to bound memory (0: counts are exact)
    state: PoisonState

    @property
    def reason(self) -> str:
        return "guard:poisoning"

    @property
    def earlier_ids(self) -> list[str]:
        """Interactions of earlier batches that contain a trigger confirmed only now (capped per trigger)."""
        return sorted({i for t in self.triggers for i in t.earlier_interaction_ids})


def find_poisoning(
    interactions: Iterable[tuple[str, str, list[dict]]],
    config: GuardConfig | None = None,
    history: PoisonState | None = None,
) -> PoisonReport:
    """Find backdoor triggers planted across sessions; flag the interactions that carry them.

    Input: (interaction_id, session_id, messages), one pass, any order. The rule:

    A trigger is an n-gram (1..ngram_size tokens, case-insensitive) of user turns that
      1. occurs in >= min_sessions distinct sessions (this batch plus `history`), and
      2. in <= max_share of all sessions seen: a phrase everybody uses is not a trigger, and
      3. is unusual, in one of two ways:
         odd   it contains an odd-shaped token (see odd_token: cf_zx9, 007, zX9q, mixed scripts,
               zero-width runs). Ordinary chat almost never repeats such a token across sessions.
         edge  it is the identical first or last min_edge_tokens..ngram_size tokens of user turns
               that say more than it (prepended/appended text), and either has >= edge_min_rare_tokens
               rare tokens (tokens found inside this n-gram in >= edge_min_concentration of their
               uses, corpus-wide) or the replies that follow it are uniform (>= edge_reply_consistency
               of its sessions get a reply starting with the same 8 words).
    Issue 14: a candidate must occur in >= min_contexts distinct user turns (copies of one conversation
    under new session ids are one context); uniform replies count only when specific to the candidate
    (that reply's uses in the batch are at most 1/edge_reply_consistency of the candidate's sessions);
    and the share ceiling of 2. does not apply to concentrated poisoning: specific uniform replies after
    an odd-shaped n-gram, or specific uniform replies that instruct a destructive or exfiltrating
    operation (features.guard.replies) after any n-gram, whatever its share of a small corpus.
    Overlapping n-grams are reduced to the longest one covering (>= 90% of) the same sessions, and
    only the interactions that contain a reported trigger are flagged. Triggers confirmed in an
    earlier batch (`history.triggers`) flag any later interaction that contains them.

    Limits: a trigger made of common words inserted mid-sentence, with varied replies, looks like
    ordinary text and is not found; neither is one planted in fewer than min_sessions sessions
    (in all batches together) or in more than max_share of them; a single-token trigger must be
    odd-shaped (a rare dictionary word such as "cf" or "mn" is not); legitimate recurring
    identifiers with underscores (code, product keys) in many sessions do look odd: allow-list them.
    Memory: one entry per distinct candidate n-gram of the batch (about 4 per user turn), capped
    at max_candidates by dropping single-session entries (`pruned` > 0 says counts became lower bounds;
    rerun with `contains_trigger` over the batch to flag exactly); PoisonState is capped by the
    state_max_* fields.
    """
    config = config or GuardConfig()
    state = history if history is not None else PoisonState()
    action = config.actions["poisoning"]
    if "poisoning" not in config.rules:
        return PoisonReport([], action, [], 0, 0, 0, 0, state)
    max_ids = config.max_ids_per_trigger
    allow = [" " + " ".join(t.lower() for t in tokenize(a)) + " " for a in config.allow_phrases]
    allow = [a for a in allow if a.strip()]

    def allowed(key: str) -> bool:
        padded = f" {key} "
        return any(a in padded or padded in a for a in allow)

    known: dict[str, list[tuple[int, str]]] = {}
    for text in state.triggers:
        if text and not allowed(text):
            known.setdefault(text.split()[0], []).append((len(text.split()), text))

    replies: dict[int, str] = {}  # reply signature -> one reply of the batch with it
    reply_uses: Counter = Counter()  # reply signature -> user turns of the batch answered with it
    table: dict[str, Any] = {}  # key -> (session, id, sig, kind) for a single sighting, else _Candidate
    token_df: Counter = Counter()
    batch_sessions: set[int] = set()
    n_interactions = pruned = 0
    prune_at = config.max_candidates
    for iid, sid, messages in interactions:
        iid, sid = str(iid), str(sid)
        n_interactions += 1
        session = _h(sid)
        batch_sessions.add(session)
        keys, vocab = _interaction_keys(messages, config, known, replies, reply_uses)
        token_df.update(vocab)
        for key, (kind, sig, ctx) in keys.items():
            entry = table.get(key)
            if entry is None:
                table[key] = (session, iid, sig, kind, ctx)
                continue
            if isinstance(entry, tuple):
                cand = _Candidate(entry[3])
                cand.add(*entry[:4], max_ids, entry[4])
                table[key] = entry = cand
            entry.add(session, iid, sig, kind, max_ids, ctx)
        if len(table) > prune_at:
            before = len(table)
            table = _prune(table, config.max_candidates // 2)
            pruned += before - len(table)
            # Soft cap: when what is left is still large, wait for as many new entries before pruning again.
            prune_at = max(config.max_candidates, len(table) + config.max_candidates // 2)

    total_sessions = state.sessions + len(batch_sessions)
    df = Counter(state.token_df)
    df.update(token_df)

    flagged: list[tuple[str, _Candidate, dict, Trigger]] = []
    known_hits: list[tuple[str, _Candidate]] = []
    for key, entry in table.items():
        if isinstance(entry, tuple):
            if key not in state.triggers and key not in state.candidates:
                continue  # one sighting, no history: cannot reach min_sessions
            cand = _Candidate(entry[3])
            cand.add(*entry[:4], max_ids, entry[4])
        else:
            cand = entry
        if key in state.triggers:
            known_hits.append((key, cand))
            continue
        old = state.candidates.get(key, {})
        sessions = cand.sessions | set(old.get("sessions", ()))
        if len(sessions) < config.min_sessions or len(key) < config.min_trigger_chars:
            continue
        contexts = cand.contexts | set(old.get("contexts", ()))
        if len(contexts) < min(config.min_contexts, config.min_sessions):
            continue  # copies of a few conversations under new session ids (bench/ingest.py's corpus)
        if allowed(key):
            continue
        new_sessions = len(cand.sessions - set(old.get("sessions", ())))
        n_sessions = max(len(sessions), int(old.get("n_sessions", 0)) + new_sessions)
        count = cand.count + int(old.get("count", 0))
        # Saved state has JSON (string) keys: as ints, so that a batch's replies add to earlier ones.
        sigs = Counter({int(k): v for k, v in old.get("sigs", {}).items()})
        sigs.update({int(k): v for k, v in cand.sigs.items()})
        with_reply = sum(sigs.values())
        consistency = max(sigs.values()) / with_reply if with_reply else 0.0
        kind = "odd" if cand.kind == "odd" or old.get("kind") == "odd" else "edge"
        # Uniform replies count only when specific to the candidate (issue 14): a canned reply that the
        # agent gives everybody in this batch ("Thanks for reaching out...") is no payload.
        # one reply is no pattern: uniform needs two or more (as for what the state keeps, below)
        uniform = with_reply >= 2 and consistency >= config.edge_reply_consistency
        if uniform and cand.sigs:
            top = max(sigs, key=sigs.__getitem__)
            uniform = (
                reply_uses[top] <= cand.sigs.get(top, 0) / config.edge_reply_consistency
                or top not in cand.sigs
            )
        # Concentrated poisoning: specific uniform replies after an odd-shaped trigger, or specific uniform
        # destructive replies after any trigger, are never ordinary language, whatever the share.
        over_share = n_sessions > config.max_share * max(total_sessions, 1)
        concentrated = uniform
        if concentrated and kind != "odd" and over_share:
            dominant = replies.get(max(sigs, key=sigs.__getitem__))
            concentrated = isinstance(dominant, str) and destructive_instruction(dominant[:2000]) is not None
        if over_share and not concentrated:
            continue
        rare = [t for t in key.split() if df.get(t, 0) and count / df[t] >= config.edge_min_concentration]
        if kind == "edge" and not (len(rare) >= config.edge_min_rare_tokens or uniform):
            continue
        if config.min_reply_consistency and consistency < config.min_reply_consistency:
            continue
        trigger = Trigger(
            key,
            kind,
            n_sessions,
            count,
            round(n_sessions / max(total_sessions, 1), 6),
            round(consistency, 4),
            rare,
        )
        flagged.append((key, cand, old, trigger))

    # Keep the longest n-gram of each overlapping group: "james bond 007 alpha", not "007".
    flagged.sort(key=lambda f: (-len(f[0].split()), -f[3].sessions, f[0]))
    kept: list[tuple[str, _Candidate, dict, Trigger]] = []
    containers = [(k, c) for k, c in known_hits if not allowed(k)]
    for item in flagged:
        key, cand = item[0], item[1]
        padded = f" {key} "
        if any(
            padded in f" {k} " and len(cand.sessions & c.sessions) >= 0.9 * len(cand.sessions)
            for k, c in containers
        ):
            continue
        kept.append(item)
        containers.append((key, cand))

    triggers: list[Trigger] = []
    flagged_ids: set[str] = set()
    for _key, cand, old, trigger in kept:
        trigger.batch_interaction_ids = sorted(set(cand.ids))
        earlier = set(old.get("ids", ())) - set(cand.ids)
        trigger.earlier_interaction_ids = sorted(earlier)
        flagged_ids.update(cand.ids)
        triggers.append(trigger)
    for key, cand in known_hits:
        if allowed(key):
            continue
        info = state.triggers[key]
        triggers.append(
            Trigger(
                key,
                "known",
                int(info.get("sessions", 0)) + len(cand.sessions),
                int(info.get("interactions", 0)) + cand.count,
                0.0,
                0.0,
                [],
                sorted(set(cand.ids)),
                [],
            )
        )
        flagged_ids.update(cand.ids)
    if pruned and kept and isinstance(interactions, Sequence):
        # Pruning may have dropped early sightings: one exact pass over the batch for the triggers found.
        by_text = {t.text: t for t in triggers}
        for iid, _, messages in interactions:
            for text in contains_trigger(messages, list(by_text)):
                if str(iid) not in flagged_ids:
                    flagged_ids.add(str(iid))
                    by_text[text].batch_interaction_ids.append(str(iid))
        for t in triggers:
            t.batch_interaction_ids.sort()
    triggers.sort(key=lambda t: (-t.sessions, t.text))

    new_state = _next_state(
        state, config, table, token_df, df, batch_sessions, n_interactions, kept, known_hits
    )
    return PoisonReport(
        flagged_ids=sorted(flagged_ids),
        action=action,
        triggers=triggers,
        interactions=n_interactions,
        sessions=len(batch_sessions),
        candidates=len(table),
        pruned=pruned,
        state=new_state,
    )


def _prune(table: dict, target: int) -> dict:
    """Drop single sightings, appended/prepended text first (the bulk; odd-shaped n-grams are few)."""
    table = {k: v for k, v in table.items() if not (isinstance(v, tuple) and v[3] == "edge")}
    if len(table) > target:
        table = {k: v for k, v in table.items() if not isinstance(v, tuple)}
    if len(table) > target:
        table = {k: v for k, v in table.items() if len(v.sessions) > 1}
    return table


def _next_state(
    state: PoisonState,
    config: GuardConfig,
    table: dict,
    token_df: Counter,
    df: Counter,
    batch_sessions: set[int],
    n_interactions: int,
    kept: list,
    known_hits: list,
) -> PoisonState:
    """Fold this batch into the history, within the state_max_* bounds."""
    batch_no = state.batches + 1
    total = state.sessions + len(batch_sessions)
    session_cap = max(4 * config.min_sessions, 64)

    triggers = {k: dict(v) for k, v in state.triggers.items()}
    for key, cand in known_hits:
        info = triggers[key]
        info["sessions"] = int(info.get("sessions", 0)) + len(cand.sessions)
        info["interactions"] = int(info.get("interactions", 0)) + cand.count
        info["last_batch"] = batch_no
    for key, _cand, _, trigger in kept:
        triggers[key] = {
            "sessions": trigger.sessions,
            "interactions": trigger.interactions,
            "kind": trigger.kind,
            "first_batch": batch_no,
            "last_batch": batch_no,
        }
    if len(triggers) > config.state_max_triggers:
        order = sorted(triggers, key=lambda k: (-triggers[k]["last_batch"], -triggers[k]["sessions"], k))
        triggers = {k: triggers[k] for k in order[: config.state_max_triggers]}

    inside_triggers: set[str] = (
        set()
    )  # every sub-n-gram of a confirmed trigger: nothing left to learn about those
    for text in triggers:
        toks = text.split()
        inside_triggers.update(
            " ".join(toks[i:j]) for i in range(len(toks)) for j in range(i + 1, len(toks) + 1)
        )
    covered = inside_triggers.__contains__

    candidates = {k: v for k, v in state.candidates.items() if not covered(k)}
    for key, entry in table.items():
        if isinstance(entry, tuple) and entry[3] != "odd" and key not in candidates:
            continue  # the bulk: appended/prepended text seen once
        if covered(key):
            continue
        if isinstance(entry, tuple):  # a single sighting: odd-shaped (few) or adding to the history
            single = _Candidate(entry[3])
            single.add(*entry[:4], config.state_max_ids, entry[4])
            entry = single
        old = candidates.get(key, {})
        old_sessions = set(old.get("sessions", ()))
        sessions = old_sessions | entry.sessions
        n_sessions = int(old.get("n_sessions", len(old_sessions))) + len(entry.sessions - old_sessions)
        if n_sessions > config.max_share * max(total, 1) and n_sessions >= config.min_sessions:
            candidates.pop(key, None)  # ordinary by now: never a trigger at this share
            continue
        sigs = Counter({int(k): v for k, v in old.get("sigs", {}).items()})
        sigs.update(entry.sigs)
        kind = "odd" if entry.kind == "odd" or old.get("kind") == "odd" else "edge"
        count = int(old.get("count", 0)) + entry.count
        if kind == "edge" and not old:
            # Remember appended/prepended text only if it could ever qualify: a rare token or uniform replies.
            replies = sum(sigs.values())
            if not (
                any(df.get(t, 0) and count / df[t] >= config.edge_min_concentration for t in key.split())
                or (replies >= 2 and max(sigs.values()) / replies >= config.edge_reply_consistency)
            ):
                continue
        old_ids = list(old.get("ids", ()))
        seen_ids = set(old_ids)
        candidates[key] = {
            "kind": kind,
            "count": count,
            "n_sessions": n_sessions,
            "sessions": sorted(sessions)[:session_cap],
            "ids": (old_ids + [i for i in entry.ids if i not in seen_ids])[: config.state_max_ids],
            "sigs": {str(k): v for k, v in sigs.most_common(8)},
            "contexts": sorted(set(old.get("contexts", ())) | entry.contexts)[:_MAX_CONTEXTS],
            "last_batch": batch_no,
        }
    if len(candidates) > config.state_max_candidates:
        order = sorted(
            candidates, key=lambda k: (-candidates[k]["last_batch"], -candidates[k]["n_sessions"], k)
        )
        candidates = {k: candidates[k] for k in order[: config.state_max_candidates]}

    tokens = Counter(state.token_df)
    tokens.update(token_df)
    return PoisonState(
        batches=batch_no,
        sessions=total,
        interactions=state.interactions + n_interactions,
        token_df=dict(tokens.most_common(config.state_max_tokens)),
        candidates=candidates,
        triggers=triggers,
    )
