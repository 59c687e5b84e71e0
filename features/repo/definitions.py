"""agentloop's Feast definitions: entities -> sources -> feature views -> feature services.

    feast -c features/repo plan|apply                                             # embedded world
    feast -c features/repo -f features/repo/cluster/feature_store.yaml apply      # the cluster

Definitions only: nothing here reads data. Python callers go through features/feast_store.py,
which loads this file with AGENTLOOP_OFFLINE_STORE pointing at the store it was given.

Where the data is: $AGENTLOOP_OFFLINE_STORE (a folder or s3://bucket/prefix), by default
$AGENTLOOP_HOME/store. Ingestion (features/ingest.py) writes the Delta table <store>/interactions/
(day=YYYY-MM-DD/ partitions),
features/aggregates.py writes <store>/agent_daily_stats/day=YYYY-MM-DD/. Text columns hold
redacted text only: redaction runs before anything is stored.
"""

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Bool, Float64, Int32, Int64, String

OWNER = "agentloop-features"

OFFLINE_STORE = os.environ.get("AGENTLOOP_OFFLINE_STORE") or str(
    Path(os.environ.get("AGENTLOOP_HOME") or Path.home() / ".cache" / "agentloop").expanduser() / "store"
)
# MinIO on the cluster: the usual AWS_ENDPOINT_URL. Only for s3:// paths (on a local path Feast would
# hand the endpoint to the local filesystem, which rejects it).
S3_ENDPOINT = os.environ.get("AWS_ENDPOINT_URL") if OFFLINE_STORE.startswith("s3://") else None
# The data files of the interactions table's day partitions (features.feast_store.INTERACTION_FILES).
INTERACTION_FILES = "day=*/*.parquet"


# --- Entities -----------------------------------------------------------------------------------

agent = Entity(
    name="agent",
    join_keys=["agent"],
    value_type=ValueType.STRING,
    description="One deployed agent (agent-bruno, agent-auditor, ...).",
    tags={"owner": OWNER},
)

# No view is keyed by session yet; training splits by session_id, which interaction_features carries.
session = Entity(
    name="session",
    join_keys=["session_id"],
    value_type=ValueType.STRING,
    description="One conversation session of an agent with a user.",
    tags={"owner": OWNER},
)

interaction = Entity(
    name="interaction",
    join_keys=["interaction_id"],
    value_type=ValueType.STRING,
    description="One accepted, redacted agent interaction (a request and the agent's reply).",
    tags={"owner": OWNER},
)


# --- Sources ------------------------------------------------------------------------------------

# A Delta Lake table partitioned by day (features/store.py), read here as the hive-partitioned parquet
# of its data files. The path is a glob of the day partitions, not the table's folder: dask's listing
# does not skip `_delta_log`, and from the table's 100th commit on delta-rs keeps a checkpoint there
# (`_delta_log/*.checkpoint.parquet`, no `day`), which failed every retrieval with KeyError 'day'
# (bench/feast_offline.py, issue 15). The folder holds the files of the current version and, after
# maintenance (features/store_maintenance.py), the files compaction replaced that are kept for time
# travel: those rows are exact copies, which the point-in-time join reduces to one row per entity.
# Feast's file offline store reads all of them with dask on every query (no partition pruning; its
# DeltaFormat changes nothing there, dask still reads parquet): the `day` partition is not a
# feature, and time windows are applied by the entity dataframe, which features/feast_store.py reads
# from the Delta table through its log, with pruning, at a recorded version if asked. Feast's DuckDB
# offline store with DeltaFormat reads through the log (measured in bench/RESULTS.md).
interactions_source = FileSource(
    name="interactions",
    path=f"{OFFLINE_STORE}/interactions/{INTERACTION_FILES}",
    timestamp_field="event_timestamp",
    # Re-ingesting an interaction writes a newer ingested_at: the newest copy wins point-in-time joins.
    created_timestamp_column="ingested_at",
    s3_endpoint_override=S3_ENDPOINT,
    description="Accepted interactions written by features/ingest.py (features/schema.py: INTERACTION_SCHEMA).",
    tags={"owner": OWNER, "pii": "redacted"},
)

# One row per agent and UTC day, computed by features.aggregates.write_agent_daily_stats because the
# file source cannot aggregate. event_timestamp is the END of the day (the next midnight, UTC): the
# moment the day's figures are final, so a point-in-time join never sees a day that is not over.
agent_daily_stats_source = FileSource(
    name="agent_daily_stats",
    path=f"{OFFLINE_STORE}/agent_daily_stats",
    timestamp_field="event_timestamp",
    created_timestamp_column="computed_at",
    s3_endpoint_override=S3_ENDPOINT,
    description="Per-agent daily aggregates of the interactions dataset.",
    tags={"owner": OWNER, "pii": "none"},
)


# --- Feature views ------------------------------------------------------------------------------

# Offline only: per-interaction rows have no online reader, and the conversation text must never
# be copied into Redis. Training and drift monitoring read it with get_historical_features.
interaction_features = FeatureView(
    name="interaction_features",
    entities=[interaction],
    # Retrieval joins each interaction at its own timestamp; the TTL only bounds later lookups.
    ttl=timedelta(days=90),
    online=False,
    source=interactions_source,
    schema=[
        Field(name="interaction_id", dtype=String),
        # who and where
        Field(name="agent", dtype=String),
        Field(name="session_id", dtype=String),
        Field(name="model", dtype=String),
        # size and speed
        Field(name="n_turns", dtype=Int32),
        Field(name="prompt_tokens", dtype=Int32),
        Field(name="completion_tokens", dtype=Int32),
        Field(name="total_tokens", dtype=Int32),
        Field(name="latency_ms", dtype=Float64),
        # outcome and feedback (rating/thumbs are null when the user gave none)
        Field(name="rating", dtype=Int32),
        Field(name="thumbs", dtype=String),
        Field(name="has_error", dtype=Bool),
        Field(name="error_type", dtype=String),
        # what redaction and the guard did
        Field(name="redacted_secrets", dtype=Int32),
        Field(name="redacted_email", dtype=Int32),
        Field(name="redacted_phone", dtype=Int32),
        Field(name="redacted_card", dtype=Int32),
        Field(name="redacted_ip", dtype=Int32),
        Field(name="redaction_counts_json", dtype=String),
        Field(name="guard_flags", dtype=String),
        # schema v2: the tools offered (training renders them), every feedback item, where it came from
        Field(name="tools_json", dtype=String),
        Field(name="feedback_json", dtype=String),
        Field(name="source_format", dtype=String),
        # the conversation, redacted
        Field(name="messages_json", dtype=String),
        Field(name="last_user_message", dtype=String),
        Field(name="agent_reply", dtype=String),
    ],
    description="One accepted interaction: its numbers, its feedback, what redaction/guard did, its redacted text.",
    tags={"owner": OWNER, "pii": "redacted"},
)

agent_daily_stats = FeatureView(
    name="agent_daily_stats",
    entities=[agent],
    # A day's stats describe the agent for the day after; older ones are stale for joins.
    ttl=timedelta(days=2),
    online=True,
    source=agent_daily_stats_source,
    schema=[
        Field(name="agent", dtype=String),
        Field(name="day", dtype=String),  # the UTC day the figures describe
        Field(name="n_interactions", dtype=Int64),
        Field(name="n_rated", dtype=Int64),
        Field(name="mean_rating", dtype=Float64),  # null when nothing was rated
        Field(name="error_rate", dtype=Float64),
        Field(name="p95_latency_ms", dtype=Float64),
        Field(name="mean_total_tokens", dtype=Float64),
    ],
    description="Per agent per UTC day: volume, feedback, errors, latency and size of interactions.",
    tags={"owner": OWNER, "pii": "none"},
)


# --- Feature services ---------------------------------------------------------------------------

# What fine-tuning reads (training/ gets it only through features.feast_store.get_training_frame):
# the text to learn from, the feedback to filter and weight by, what redaction/guard found, and
# agent/session for lineage and the session-disjoint split.
training_v1 = FeatureService(
    name="training_v1",
    features=[
        interaction_features[
            [
                "agent",
                "session_id",
                "model",
                "messages_json",
                "tools_json",
                "last_user_message",
                "agent_reply",
                "rating",
                "thumbs",
                "has_error",
                "error_type",
                "guard_flags",
                "redacted_secrets",
                "redacted_email",
                "redacted_phone",
                "redacted_card",
                "redacted_ip",
            ]
        ],
    ],
    description="Training set v1: redacted conversations with feedback, guard and redaction signals.",
    tags={"owner": OWNER, "pii": "redacted", "consumer": "training"},
)

# What drift monitoring compares (reference = the champion's training window, current = recent):
# numeric, categorical and text columns. The raw JSON blobs are left out: they drift with every
# message and say nothing the text and count columns do not.
monitoring_v1 = FeatureService(
    name="monitoring_v1",
    features=[
        interaction_features[
            [
                "agent",
                "model",
                "n_turns",
                "prompt_tokens",
                "completion_tokens",
                "total_tokens",
                "latency_ms",
                "rating",
                "thumbs",
                "has_error",
                "error_type",
                "redacted_secrets",
                "redacted_email",
                "redacted_phone",
                "redacted_card",
                "redacted_ip",
                "guard_flags",
                "last_user_message",
                "agent_reply",
            ]
        ],
    ],
    description="Drift monitoring v1: numeric, categorical and text columns of interactions.",
    tags={"owner": OWNER, "pii": "redacted", "consumer": "monitoring"},
)
