"""Read a small, deterministic sample of raw interaction records from a log folder.

A stop-gap for the foundation's demo: the real ingestion (validation, redaction, quarantine,
dedup) lives in features/ingest.py. This only reads `*.jsonl` / `*.jsonl.gz` lines, unwraps
CloudEvents and keeps records that end on an assistant reply.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Iterator

from features.raw_format import unwrap


def iter_raw_lines(raw_dir: str | Path) -> Iterator[tuple[Path, int, str]]:
    """(file, line number, line) for every non-blank line of every log file, in path order."""
    files = sorted(p for p in Path(raw_dir).rglob("*") if p.name.endswith((".jsonl", ".jsonl.gz")))
    if not files:
        raise FileNotFoundError(f"no *.jsonl or *.jsonl.gz files under {raw_dir}; run `make data` first")
    for path in files:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield path, lineno, line


def read_raw_sample(raw_dir: str | Path, n: int, seed: int = 0) -> list[dict]:
    """The n records with the smallest seeded hash of their id: a stable sample, spread over agents and days."""
    scored = []
    for path, lineno, line in iter_raw_lines(raw_dir):
        try:
            record = unwrap(json.loads(line))
        except (json.JSONDecodeError, ValueError) as e:
            raise ValueError(f"{path}:{lineno}: not a raw interaction record ({e})") from e
        messages = record.get("messages") or []
        if not messages or messages[-1].get("role") != "assistant":
            continue
        key = hashlib.sha256(f"{seed}:{record['id']}".encode()).hexdigest()
        scored.append((key, record))
    scored.sort(key=lambda kv: kv[0])
    return [record for _, record in scored[:n]]
