"""Record the trace fixtures with the REAL instrumentation libraries against a local vLLM server.

    python3.11 -m venv ~/.cache/agentloop/record-venv
    ~/.cache/agentloop/record-venv/bin/pip install -r tests/data/record_traces.requirements.txt
    .venv/bin/python -m serving.vllm_server start --port 8011 --pidfile /tmp/rec-vllm.json
    ~/.cache/agentloop/record-venv/bin/python tests/data/record_traces.py --base-url http://127.0.0.1:8011/v1
    .venv/bin/python -m serving.vllm_server stop --pidfile /tmp/rec-vllm.json

Pinned versions: tests/data/record_traces.requirements.txt (openai 2.54.0, opentelemetry-sdk 1.45.2,
opentelemetry-instrumentation-openai-v2 2.4b0, openinference-instrumentation-openai 0.1.66,
mlflow 3.17.2). Writes tests/data/traces/<mode>/*.jsonl, one mode per subprocess (each library
reads its settings when it instruments):

    otel_default/   openai-v2, default conventions (v1.30), capture on: content in OTLP LOG records
    otel_latest/    openai-v2, OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental, SPAN_ONLY:
                    content on the span (gen_ai.input.messages / gen_ai.output.messages)
    otel_nocontent/ openai-v2, capture off (the library's default): spans and logs without content
    openinference/  openinference-instrumentation-openai, session/user/metadata via its context managers
    mlflow/         mlflow.openai.autolog, `Trace.to_json()` lines from mlflow.search_traces, with assessments
    openai_pairs/   the openai client's own HTTP request and response bodies (what a logging proxy keeps)

The OTLP files are written as the Collector's file exporter writes them: the SDK's spans and log
records encoded by opentelemetry-exporter-otlp-proto-common into ExportTraceServiceRequest /
ExportLogsServiceRequest protobufs, then the OTLP/JSON mapping (lowerCamelCase, hex trace and span
ids, 64-bit integers as strings), one request per line.

Each conversation is what an agent sends: a system prompt, the user's turn and, for the tool turn,
the tools offered plus an earlier tool call and its result in the history (SmolLM2-135M does not
call tools itself; vLLM runs without a tool parser, so tools go with tool_choice="none"). The
agent's own code opens the `invoke_agent` span (gen_ai.agent.name "Support Agent",
gen_ai.conversation.id, user.id) and emits a gen_ai.evaluation.result event for the chat span, as
an evaluator would; the chat spans and their content come from the instrumentation alone.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "traces"
MODES = ("otel_default", "otel_latest", "otel_nocontent", "openinference", "mlflow", "openai_pairs")
AGENT = "Support Agent"
USER = "user-4242"
SYSTEM = "You are Support Agent, a concise helpdesk assistant."
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name"}},
                "required": ["city"],
            },
        },
    }
]
CONVERSATIONS = [
    (
        "conv-weather-1",
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "What's the weather in Lisbon right now?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_lisbon_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Lisbon"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_lisbon_1", "content": '{"temp_c": 14, "sky": "clear"}'},
        ],
        True,
    ),
    (
        "conv-password-2",
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Hi! How do I reset my password?"},
        ],
        False,
    ),
]


def _client(base_url: str, **kw):
    import openai

    return openai.OpenAI(base_url=base_url, api_key="not-needed", **kw)


def _call(client, model: str, messages: list, tools: bool):
    extra = {"tools": TOOLS, "tool_choice": "none"} if tools else {}
    return client.chat.completions.create(
        model=model, messages=messages, max_tokens=24, temperature=0.0, **extra
    )


# ------------------------------------------------------------------------------------------ OTLP/JSON


def _hex_ids(obj):
    """protobuf's JSON mapping writes bytes as base64; OTLP/JSON (and the Collector) writes ids as hex."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str):
                out[k] = base64.b64decode(v).hex()
            else:
                out[k] = _hex_ids(v)
        return out
    if isinstance(obj, list):
        return [_hex_ids(v) for v in obj]
    return obj


def _otlp_json(message) -> str:
    from google.protobuf.json_format import MessageToDict

    return json.dumps(_hex_ids(MessageToDict(message)), separators=(",", ":"))


def _otel_setup(service: str):
    from opentelemetry import _logs, trace
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    resource = Resource.create({"service.name": service})
    spans, logs = InMemorySpanExporter(), InMemoryLogRecordExporter()
    tp = TracerProvider(resource=resource)
    tp.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(tp)
    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(SimpleLogRecordProcessor(logs))
    _logs.set_logger_provider(lp)
    return spans, logs


def _write_otlp(folder: Path, spans, logs) -> None:
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    folder.mkdir(parents=True, exist_ok=True)
    finished = spans.get_finished_spans()
    (folder / "spans.jsonl").write_text(_otlp_json(encode_spans(finished)) + "\n")
    records = logs.get_finished_logs()
    if records:
        (folder / "logs.jsonl").write_text(_otlp_json(encode_logs(records)) + "\n")


def _evaluate(logger, chat_span, score: float) -> None:
    """What an evaluator does: a gen_ai.evaluation.result event in the evaluated span's context."""
    from opentelemetry import trace

    ctx = trace.set_span_in_context(trace.NonRecordingSpan(chat_span.get_span_context()))
    logger.emit(
        event_name="gen_ai.evaluation.result",
        context=ctx,
        attributes={
            "gen_ai.evaluation.name": "relevance",
            "gen_ai.evaluation.score.value": score,
            "gen_ai.evaluation.score.label": "relevant",
            "gen_ai.evaluation.explanation": "answers the question asked",
        },
    )


def record_otel(mode: str, base_url: str, model: str) -> None:
    if mode == "otel_default":
        os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "true"
    elif mode == "otel_latest":
        os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "gen_ai_latest_experimental"
        os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "SPAN_ONLY"
    spans, logs = _otel_setup("support-svc")
    from opentelemetry import _logs, trace
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    OpenAIInstrumentor().instrument()
    tracer = trace.get_tracer("support-agent")
    logger = _logs.get_logger("support-agent.evaluator")
    client = _client(base_url)
    for conv_id, messages, tools in CONVERSATIONS:
        attrs = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": AGENT,
            "gen_ai.conversation.id": conv_id,
            "user.id": USER,
        }
        with tracer.start_as_current_span(f"invoke_agent {AGENT}", attributes=attrs):
            _call(client, model, messages, tools)
        chat = [s for s in spans.get_finished_spans() if s.attributes.get("gen_ai.operation.name") == "chat"][
            -1
        ]
        if mode != "otel_nocontent" and tools:
            _evaluate(logger, chat, 0.75)
    _write_otlp(OUT / mode, spans, logs)


def record_openinference(base_url: str, model: str) -> None:
    spans, logs = _otel_setup("support-svc")
    from openinference.instrumentation import using_attributes
    from openinference.instrumentation.openai import OpenAIInstrumentor
    from opentelemetry import trace

    OpenAIInstrumentor().instrument()
    tracer = trace.get_tracer("support-agent")
    client = _client(base_url)
    for conv_id, messages, tools in CONVERSATIONS:
        with using_attributes(session_id=conv_id, user_id=USER, metadata={"channel": "web"}):
            with tracer.start_as_current_span(
                AGENT, attributes={"openinference.span.kind": "AGENT", "agent.name": AGENT}
            ):
                _call(client, model, messages, tools)
    _write_otlp(OUT / "openinference", spans, logs)


def record_mlflow(base_url: str, model: str) -> None:
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"  # the traces exist before feedback is logged
    import mlflow
    from mlflow.entities import AssessmentSource

    tmp = tempfile.mkdtemp(prefix="record-mlflow-")
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    mlflow.set_experiment("support-agent")
    mlflow.openai.autolog()
    client = _client(base_url)
    trace_ids = []
    for conv_id, messages, tools in CONVERSATIONS:

        @mlflow.trace(name=AGENT, span_type="AGENT")
        def agent(messages=messages, tools=tools, conv_id=conv_id):
            mlflow.update_current_trace(metadata={"mlflow.trace.session": conv_id, "mlflow.trace.user": USER})
            return _call(client, model, messages, tools).choices[0].message.content

        agent()
        trace_ids.append(mlflow.get_last_active_trace_id())
    mlflow.log_feedback(
        trace_id=trace_ids[0],
        name="user_rating",
        value=4,
        source=AssessmentSource(source_type="HUMAN", source_id=USER),
    )
    mlflow.log_feedback(
        trace_id=trace_ids[0],
        name="relevance",
        value=0.75,
        rationale="answers the question asked",
        source=AssessmentSource(source_type="LLM_JUDGE", source_id="judge-v1"),
    )
    folder = OUT / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    traces = sorted(mlflow.search_traces(return_type="list"), key=lambda t: t.info.request_time)
    (folder / "traces.jsonl").write_text("".join(t.to_json() + "\n" for t in traces))


def record_pairs(base_url: str, model: str) -> None:
    """The request and response bodies exactly as they crossed the wire (httpx event hooks)."""
    import httpx

    lines = []
    pending = {}

    def on_request(request):
        pending["request"] = json.loads(request.content) if request.content else {}
        pending["t0"] = time.time()

    def on_response(response):
        response.read()
        lines.append(
            {
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "latency_ms": round((time.time() - pending["t0"]) * 1000, 1),
                "agent": AGENT,
                "session_id": pending["session"],
                "user": USER,
                "request": pending["request"],
                "response": response.json(),
            }
        )

    http = httpx.Client(event_hooks={"request": [on_request], "response": [on_response]})
    client = _client(base_url, http_client=http)
    for conv_id, messages, tools in CONVERSATIONS:
        pending["session"] = conv_id
        _call(client, model, messages, tools)
    try:  # the Responses API shape, where the server has it
        pending["session"] = "conv-responses-3"
        client.responses.create(
            model=model,
            instructions=SYSTEM,
            input=[
                {"role": "user", "content": "What's the weather in Lisbon right now?"},
                {
                    "type": "function_call",
                    "call_id": "call_lisbon_1",
                    "name": "get_weather",
                    "arguments": '{"city": "Lisbon"}',
                },
                {
                    "type": "function_call_output",
                    "call_id": "call_lisbon_1",
                    "output": '{"temp_c": 14, "sky": "clear"}',
                },
            ],
            tools=[{"type": "function", **TOOLS[0]["function"]}],
            tool_choice="none",
            max_output_tokens=24,
            temperature=0.0,
        )
    except Exception as exc:  # noqa: BLE001 - older servers lack /v1/responses
        print(f"responses API not recorded: {type(exc).__name__}: {exc}", file=sys.stderr)
    folder = OUT / "openai_pairs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8011/v1")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--mode", choices=MODES, help="one mode, in this process (default: each in its own)")
    args = parser.parse_args()
    if args.mode is None:
        for mode in MODES:
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--base-url",
                    args.base_url,
                    "--model",
                    args.model,
                    "--mode",
                    mode,
                ],
                check=True,
            )
        return 0
    if args.mode.startswith("otel"):
        record_otel(args.mode, args.base_url, args.model)
    elif args.mode == "openinference":
        record_openinference(args.base_url, args.model)
    elif args.mode == "mlflow":
        record_mlflow(args.base_url, args.model)
    else:
        record_pairs(args.base_url, args.model)
    print(f"recorded {args.mode}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
