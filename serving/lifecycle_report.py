"""What a person checks after a round of the loop: the model version in the MLflow UI, where the aliases
point, what vLLM serves, one reply of the promoted adapter next to the base model's, the drift report.

Everything is read back from the real systems (the registry, the vLLM replica), not from what the
workflow meant to do, so the text is also a check that the round took effect.
"""

from __future__ import annotations

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
