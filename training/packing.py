"""The session split and packing of examples into fixed-length rows (training/dataset.py explains both)."""

from __future__ import annotations

import bisect
import hashlib
from typing import Sequence

from training.chat_template import IGNORE
from training.examples import SPLITS, DatasetConfig, Example, PackedRow

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
