"""Ask the base model to answer a few real interactions and log the comparison to MLflow.

The foundation's demo job: it proves the base model, the sample logs and the MLflow server work
together before any training exists. Each record's conversation is cut before its last assistant
turn; the model answers that prompt and the agent's real reply is kept beside it.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

from tqdm import tqdm

from features.mlflow_experiments import ui_link, use_experiment
from training.base_model import BaseModelIdentity, chat_reply, load_model_and_tokenizer


@dataclass
class SampleReply:
    interaction_id: str
    agent: str
    prompt: str  # the last user message
    agent_reply: str
    model_reply: str
    latency_s: float


def reply_to_records(
    records: list[dict], model_ref: str | None = None, max_new_tokens: int = 48
) -> tuple[list[SampleReply], BaseModelIdentity]:
    """Generate the base model's reply for each record's last user turn."""
    model, tokenizer, identity = load_model_and_tokenizer(model_ref)
    out = []
    for record in tqdm(records, desc="base model replies", unit="reply"):
        messages = record["messages"]
        cut = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:cut]]
        t0 = time.perf_counter()
        reply = chat_reply(model, tokenizer, prompt, max_new_tokens=max_new_tokens)
        out.append(
            SampleReply(
                interaction_id=record["id"],
                agent=record["agent"],
                prompt=next((m["content"] for m in reversed(prompt) if m["role"] == "user"), ""),
                agent_reply=messages[cut]["content"],
                model_reply=reply,
                latency_s=round(time.perf_counter() - t0, 3),
            )
        )
    return out, identity


def log_sample_replies(
    replies: list[SampleReply],
    identity: BaseModelIdentity,
    experiment: str = "agentloop-demo",
    flyte_execution_id: str = "",
) -> str:
    """Log params, metrics and the reply table to the MLflow server; return the run id."""
    import mlflow
    import pandas as pd

    use_experiment(experiment)
    with mlflow.start_run(run_name="base-model-sample-replies") as run:
        mlflow.log_params({**identity.as_params(), "sample.size": len(replies)})
        if flyte_execution_id:
            mlflow.set_tag("flyte.execution_id", flyte_execution_id)
        mlflow.set_tag("agentloop.stage", "foundation-demo")
        table = pd.DataFrame([asdict(r) for r in replies])
        mlflow.log_table(table, artifact_file="sample_replies.json")
        mlflow.log_metrics(
            {
                "mean_latency_s": float(table["latency_s"].mean()),
                "empty_reply_share": float((table["model_reply"].str.strip() == "").mean()),
                "mean_reply_chars": float(table["model_reply"].str.len().mean()),
            }
        )
        return run.info.run_id


def run_url(run_id: str) -> str:
    """The MLflow UI address of a run on the current tracking server."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    run = mlflow.get_run(run_id)
    base = uri if uri.startswith("http") else os.environ.get("MLFLOW_TRACKING_URI", uri)
    return ui_link(base, f"experiments/{run.info.experiment_id}/runs/{run_id}")
