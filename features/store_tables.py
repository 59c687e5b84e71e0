"""The offline store's table names, schemas and records (features/store.py writes and reads them).

Kept apart from features/store.py so that the store's logic stays readable; nothing here touches
a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import pyarrow as pa

from features.schema import INTERACTION_SCHEMA, QUARANTINE_SCHEMA

INTERACTIONS = "interactions"
QUARANTINE = "quarantine"
KEYS = "_keys"
LEDGER = "_ledger"
COMMIT_KEY = "agentloop.commit"  # commit info of every table write of ingest commit N
RUN_KEY = "agentloop.run"

KEY_SCHEMA = pa.schema([("interaction_id", pa.string()), ("content_hash", pa.string())])
LEDGER_SCHEMA = pa.schema(
    [
        ("commit", pa.int64()),
        ("run_id", pa.string()),
        ("source", pa.string()),
        ("size", pa.int64()),
        ("fingerprint", pa.string()),
        ("sha256", pa.string()),
        ("seq", pa.int64()),
        ("committed_at", pa.string()),
        ("counts_json", pa.string()),
        ("state_json", pa.string()),  # {name: text} of the commit's side state, on its last source's row
    ]
)
TABLES = {
    INTERACTIONS: INTERACTION_SCHEMA,
    QUARANTINE: QUARANTINE_SCHEMA,
    KEYS: KEY_SCHEMA,
    LEDGER: LEDGER_SCHEMA,
}
PARTITIONED = {INTERACTIONS, QUARANTINE}
WRITE_ORDER = (QUARANTINE, KEYS, INTERACTIONS)  # then LEDGER, the commit point


class CommitConflict(RuntimeError):
    """Another writer committed to the store while this one was writing its commit."""


@dataclass
class ManifestEntry:
    """One committed source: what it was (to skip it next time if unchanged) and what it gave."""

    source: str
    size: int
    fingerprint: str  # etag:... or mtime:... as listed
    sha256: str  # of the file's bytes as read
    run_id: str
    seq: int  # the source's number in its run (sources are read in path order)
    committed_at: str
    commit: int = 0  # N of the commit that holds its rows
    counts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> "ManifestEntry":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class RecoveryReport:
    """What Store.recover undid: tables restored past a commit the ledger never got, files vacuumed."""

    rolled_back: dict[str, int] = field(default_factory=dict)  # table -> the commit N undone
    vacuumed_files: int = 0


def ledger_row(entry: ManifestEntry, number: int) -> dict:
    return {
        "commit": number,
        "run_id": entry.run_id,
        "source": entry.source,
        "size": entry.size,
        "fingerprint": entry.fingerprint,
        "sha256": entry.sha256,
        "seq": entry.seq,
        "committed_at": entry.committed_at,
        "counts_json": json.dumps(entry.counts, sort_keys=True),
        "state_json": None,
    }


def utc(value: date | datetime | str) -> datetime:
    if isinstance(value, str):
        value = (
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            if "T" in value or " " in value
            else date.fromisoformat(value)
        )
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)


def delta_storage(url: str, options: dict | None = None) -> dict[str, str]:
    """delta-rs storage options for an s3:// store: the AWS_* variables, then fsspec-style `options`.

    delta-rs has its own S3 client (it does not read fsspec's options). Concurrent writers are made
    safe by conditional PUTs (AWS_CONDITIONAL_PUT=etag: MinIO and S3 both honour If-None-Match), so
    no DynamoDB lock is needed; a plain-http endpoint (MinIO in the cluster, moto in tests) needs
    AWS_ALLOW_HTTP.
    """
    import os

    if not url.startswith(("s3://", "s3a://")):
        raise NotImplementedError(
            f"offline store {url}: only local folders and s3:// prefixes hold Delta tables"
        )
    out = {
        k: os.environ[k]
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
        if k in os.environ
    }
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options = options or {}
    endpoint = (
        options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url") or endpoint
    )
    for key, name in (
        ("key", "AWS_ACCESS_KEY_ID"),
        ("secret", "AWS_SECRET_ACCESS_KEY"),
        ("token", "AWS_SESSION_TOKEN"),
    ):
        if options.get(key):
            out[name] = options[key]
    if region:
        out["AWS_REGION"] = region
    if endpoint:
        out["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            out["AWS_ALLOW_HTTP"] = "true"
    out["AWS_CONDITIONAL_PUT"] = "etag"
    return out
