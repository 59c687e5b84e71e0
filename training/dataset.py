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

Modules: training/chat_template.py (rendering and the loss mask), training/examples.py (DatasetConfig,
policies, examples), training/packing.py (split and packing), this one (the snapshot; it re-exports the
others' public names).

Split: by sha256(split_salt + session_id), so every example of a session lands in one split, and a
session keeps its split as the data grows. Records without a session id are their own session.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from features.fsutil import atomic_write
from training.chat_template import IGNORE, TemplateError, parse_messages, render_and_mask
from training.examples import (
    OVER_LONG_POLICIES,
    SNAPSHOT_FILE,
    SNAPSHOT_FORMAT,
    SPLITS,
    SYSTEM_PROMPT_POLICIES,
    TRAIN_ON,
    DatasetConfig,
    Example,
    PackedRow,
    build_examples,
)
from training.packing import collate, pack, session_bucket, split_by_session

log = logging.getLogger(__name__)

__all__ = [
    "IGNORE",
    "OVER_LONG_POLICIES",
    "SNAPSHOT_FILE",
    "SNAPSHOT_FORMAT",
    "SPLITS",
    "SYSTEM_PROMPT_POLICIES",
    "TRAIN_ON",
    "DatasetConfig",
    "DatasetSnapshot",
    "Example",
    "PackedRow",
    "TemplateError",
    "build_examples",
    "build_snapshot",
    "collate",
    "compute_snapshot_hash",
    "load_training_snapshot",
    "pack",
    "parse_messages",
    "render_and_mask",
    "session_bucket",
    "split_by_session",
    "tokenizer_identity",
]


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
