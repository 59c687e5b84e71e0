"""Readers for the traces agents already produce, one module per family, each yielding format records.

    otlp.py           OTLP JSON (Collector file exporter): spans and log records as plain dicts
    genai.py          OpenTelemetry GenAI semantic conventions (current and older forms)
    openinference.py  OpenInference (Arize Phoenix) span attributes
    buffer.py         the buffer of open traces: joins spans, logs and ancestors across files
    mlflow_traces.py  MLflow 3 `Trace.to_json()` lines
    openai_pairs.py   OpenAI request/response pairs as logging proxies keep them

`detect(obj)` names the family of one parsed line; features/ingest.py routes it.
"""

from __future__ import annotations

from typing import Any

from features.traces.mlflow_traces import is_mlflow_trace
from features.traces.openai_pairs import is_openai_pair
from features.traces.otlp import is_otlp

FORMATS = ("auto", "jsonl", "otlp", "mlflow", "openai")


def detect(obj: Any) -> str:
    """`otlp` | `mlflow` | `openai` | `jsonl` (the project's own record, also the fallback)."""
    if is_otlp(obj):
        return "otlp"
    if is_mlflow_trace(obj):
        return "mlflow"
    if is_openai_pair(obj):
        return "openai"
    return "jsonl"
