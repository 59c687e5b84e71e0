"""Foundation demo: sample interactions -> base model replies -> MLflow run.

    pyflyte run workflows/demo.py base_model_demo --raw_dir ~/.cache/agentloop/data/raw --n 3

Until the lifecycle workflow lands, this is `make demo`'s main job. MLFLOW_TRACKING_URI says
which MLflow server receives the run (the Makefile points it at the local one).
"""

from __future__ import annotations

import os

from flytekit import Resources, task, workflow

from features.raw_sample import read_raw_sample
from training.sample_replies import SampleReply, log_sample_replies, reply_to_records, run_url
from workflows.context import execution_id
from workflows.images import CPU_IMAGE


@task(requests=Resources(cpu="1", mem="1Gi"), container_image=CPU_IMAGE)
def read_sample(raw_dir: str, n: int, seed: int) -> list[dict]:
    return read_raw_sample(os.path.expanduser(raw_dir), n=n, seed=seed)


@task(requests=Resources(cpu="2", mem="4Gi"), container_image=CPU_IMAGE)
def reply_and_log(records: list[dict], base_model: str, max_new_tokens: int, experiment: str) -> str:
    replies, identity = reply_to_records(records, model_ref=base_model or None, max_new_tokens=max_new_tokens)
    run_id = log_sample_replies(replies, identity, experiment=experiment, flyte_execution_id=execution_id())
    for r in replies:
        print(f"[{r.agent}] user: {r.prompt[:80]!r}\n    base model: {r.model_reply[:120]!r}")
    url = run_url(run_id)
    print(f"MLflow run {run_id}: {url}")
    return f"run_id={run_id} url={url}"


@workflow
def base_model_demo(
    raw_dir: str = "~/.cache/agentloop/data/raw",
    n: int = 3,
    seed: int = 0,
    base_model: str = "",
    max_new_tokens: int = 48,
    experiment: str = "agentloop-demo",
) -> str:
    """Ask the base model to answer n real agent interactions and log the comparison to MLflow."""
    records = read_sample(raw_dir=raw_dir, n=n, seed=seed)
    return reply_and_log(
        records=records, base_model=base_model, max_new_tokens=max_new_tokens, experiment=experiment
    )


__all__ = ["base_model_demo", "SampleReply"]
