"""What a person checks after a round of the loop: the model version in the MLflow UI, where the aliases
point, what vLLM serves, one reply of the promoted adapter next to the base model's, base vs adapter
tool-call accuracy on the held-out calls with one held-out call side by side (base, adapter, truth),
the drift report.

Everything is read back from the real systems (the registry, the vLLM replica), not from what the
workflow meant to do, so the text is also a check that the round took effect.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from features.mlflow_experiments import ui_link
from serving.promote import replica_headers
from serving.registry import get_version, status
from training.eval_set import EvalSet

TAG_GATE_PREFIX = "agentloop.gate."


def ui_base() -> str:
    import mlflow

    return mlflow.get_tracking_uri().rstrip("/")


def served_models(base_url: str, headers: dict[str, str], timeout: float = 10.0) -> tuple[str, list[str]]:
    """(the base model's served name, the LoRA adapters' served names) of one vLLM replica."""
    r = requests.get(f"{base_url.rstrip('/')}/v1/models", headers=headers, timeout=timeout)
    r.raise_for_status()
    models = r.json().get("data", [])
    base = next((m["id"] for m in models if not m.get("parent")), "")
    return base, [m["id"] for m in models if m.get("parent")]


def chat(
    base_url: str,
    model: str,
    messages: list[dict],
    headers: dict[str, str],
    max_tokens: int = 48,
    timeout: float = 120.0,
) -> tuple[str, float]:
    """One greedy chat completion: (reply, seconds)."""
    t0 = time.perf_counter()
    r = requests.post(
        f"{base_url.rstrip('/')}/v1/chat/completions",
        headers=headers,
        timeout=timeout,
        json={"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0},
    )
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"] or "", time.perf_counter() - t0


def tool_call_lines(eval_metrics: dict, eval_set: EvalSet, run_id: str, tracking_uri: str = "") -> list[str]:
    """Base vs adapter tool-call accuracy (overall, per category) and one held-out call side by side.

    The generations are the evaluation's own (the training run's tool-call table): what was scored."""
    import json

    from training.evaluate import load_tool_outcomes
    from training.tool_format import format_tool_calls

    if "tool_adapter_accuracy" not in eval_metrics:
        return []
    n = int(eval_metrics.get("tool_n", 0))
    lines = [
        f"tool calls ({n} held-out BFCL calls): base {eval_metrics['tool_base_accuracy']:.3f}, "
        f"adapter {eval_metrics['tool_adapter_accuracy']:.3f}"
    ]
    cats = sorted(
        k[len("tool_adapter_accuracy_") :] for k in eval_metrics if k.startswith("tool_adapter_accuracy_")
    )
    if cats:
        lines.append(
            "  per category (base/adapter, n): "
            + ", ".join(
                f"{c} {eval_metrics.get(f'tool_base_accuracy_{c}', 0):.2f}/{eval_metrics[f'tool_adapter_accuracy_{c}']:.2f}"
                f" ({int(eval_metrics.get(f'tool_n_{c}', 0))})"
                for c in cats
            )
        )
    if not run_id:
        return lines
    client_tables = {}
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri or None)
        with tempfile.TemporaryDirectory() as tmp:
            key = json.loads(
                Path(client.download_artifacts(run_id, "evaluation/tool_calls_key.json", tmp)).read_text()
            )
        client_tables = load_tool_outcomes(run_id, key, tracking_uri)
    except Exception as e:  # noqa: BLE001 - the report must not hide the rest: say what failed
        lines.append(f"  (no per-call table in run {run_id}: {type(e).__name__})")
    base, adapter = client_tables.get("base"), client_tables.get("adapter")
    if base is None or adapter is None:
        return lines
    by_id = {str(e["id"]): e for e in eval_set.tool_examples}
    merged = base.merge(adapter, on="id", suffixes=("_base", "_adapter"))
    merged = merged[merged["id"].astype(str).isin(by_id) & (merged["expected_base"] == "call")]
    if merged.empty:
        return lines
    # the most telling example: one the two sides disagree on, else the first
    differ = merged[merged["correct_base"] != merged["correct_adapter"]]
    row = (differ if len(differ) else merged).iloc[0]
    ex = by_id[str(row["id"])]
    question = next((m["content"] for m in reversed(ex["messages"]) if m.get("role") == "user"), "")
    truth = [
        {"name": name, "arguments": {k: v[0] if isinstance(v, list) and v else v for k, v in args.items()}}
        for call in ex.get("possible_answer") or []
        for name, args in call.items()
    ]
    lines.append(f"held-out call {row['id']} ({row['category_base']}), user: {_short(question)!r}")
    lines.append(
        f"  base model ({'right' if row['correct_base'] else 'wrong'}):    {_short(row['output_base'], 240)!r}"
    )
    lines.append(
        f"  adapter ({'right' if row['correct_adapter'] else 'wrong'}):       {_short(row['output_adapter'], 240)!r}"
    )
    lines.append(f"  truth (first possible answer): {_short(format_tool_calls(truth), 240)!r}")
    return lines


def _short(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def render_report(
    model_name: str,
    version: str,
    decision: str,
    served_names: list[str],
    eval_metrics: dict,
    drift_run_id: str,
    drift_retrain: bool,
    promote_config: Any,
    eval_set_dir: str | Path,
) -> str:
    """The text `make demo` ends with. Reads the registry and the first replica; never raises on a replica."""
    ui = ui_base()
    st = status(model_name)
    mv = get_version(model_name, version)
    lines = [
        f"== agentloop round: {model_name} v{version}, gate decision: {decision.upper()}",
        f"MLflow UI, this version:  {ui_link(ui, f'models/{model_name}/versions/{version}')}",
        "aliases now:              "
        + (", ".join(f"@{a} -> v{v}" for a, v in sorted(st["aliases"].items())) or "none"),
    ]
    gate = {k[len(TAG_GATE_PREFIX) :]: v for k, v in (mv.tags or {}).items() if k.startswith(TAG_GATE_PREFIX)}
    if gate:
        lines.append(
            "gate numbers:             "
            + ", ".join(f"{k}={v}" for k, v in sorted(gate.items()) if k != "decision")[:600]
        )
    if eval_metrics:
        lines.append(
            "evaluation (base vs new): "
            + ", ".join(
                f"{k}={v:.4g}" for k, v in sorted(eval_metrics.items()) if isinstance(v, (int, float))
            )[:600]
        )
    url = (promote_config.replica_urls or [""])[0]
    headers = replica_headers(promote_config)
    try:
        base_name, adapters = served_models(url, headers)
        lines.append(f"vLLM {url}: base {base_name!r}, adapters {adapters}")
        prompt = EvalSet.load(eval_set_dir).prompts[0]
        question = next((m["content"] for m in reversed(prompt.messages) if m.get("role") == "user"), "")
        lines.append(f"example ({prompt.agent}), user: {_short(question)!r}")
        for name in [n for n in served_names if n in adapters] + [base_name]:
            reply, seconds = chat(url, name, prompt.messages, headers)
            who = "base model" if name == base_name else f"adapter {name}"
            lines.append(f"  {who:<28} ({seconds:.1f}s): {_short(reply)!r}")
        lines.append(f"  what the agent said:         {_short(prompt.reference)!r}")
    except Exception as e:  # noqa: BLE001 - the report must not hide the rest: say what failed and where
        lines.append(f"vLLM {url}: could not be asked ({type(e).__name__}: {_short(str(e), 200)})")
    try:
        lines += tool_call_lines(eval_metrics, EvalSet.load(eval_set_dir), mv.run_id or "")
    except Exception as e:  # noqa: BLE001 - as above
        lines.append(f"tool calls: could not be shown ({type(e).__name__}: {_short(str(e), 200)})")
    if not served_names:
        lines.append(
            "nothing was promoted: the champion (if any) keeps serving; reasons are in the version's "
            "description and agentloop.gate.* tags"
        )
    if drift_run_id:
        import mlflow

        run = mlflow.get_run(drift_run_id)
        lines.append(
            f"drift report:             {ui_link(ui, f'experiments/{run.info.experiment_id}/runs/{drift_run_id}')} "
            f"(retrain recommended: {'yes' if drift_retrain else 'no'})"
        )
        lines.append(f"drift report artifacts:   {run.info.artifact_uri}")
    return "\n".join(lines)
