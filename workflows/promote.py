"""Register -> gate -> promote only if the gate says so; and a rollback workflow.

    pyflyte run workflows/promote.py promote_wf --adapter_dir runs/final/adapter --training_run_id RUN \\
        --eval_set DIR --promote_config '{"replica_urls": ["http://127.0.0.1:8000"]}'
    pyflyte run workflows/promote.py rollback_wf --model_name agentloop-chat

MLFLOW_TRACKING_URI says which registry. The replicas' bearer token is read by the promote task from the
variable PromoteConfig.api_key_env names (a Flyte secret mounted as that variable on the cluster).
"""

from __future__ import annotations

from typing import NamedTuple

from flytekit import Resources, conditional, task, workflow
from flytekit.extras.accelerators import A100
from flytekit.types.directory import FlyteDirectory

from serving.gate import GateConfig, run_gate
from serving.promote import PromoteConfig, promote, rollback
from serving.registry import RegisterRequest, register_adapter
from workflows.context import execution_id
from workflows.images import CPU_IMAGE, TRAIN_IMAGE


class Registered(NamedTuple):
    model_name: str
    version: str


@task(requests=Resources(cpu="2", mem="4Gi"), container_image=CPU_IMAGE)
def register(
    adapter_dir: FlyteDirectory,
    training_run_id: str,
    eval_set: FlyteDirectory,
    model_name: str,
    agents: list[str],
    data_start: str,
    data_end: str,
) -> Registered:
    """The adapter as a new version of its registered model, tagged with lineage, aliased @challenger."""

    v = register_adapter(
        RegisterRequest(
            adapter_dir=adapter_dir.download(),
            training_run_id=training_run_id,
            eval_set_dir=eval_set.download(),
            model_name=model_name,
            agents=agents,
            data_start=data_start,
            data_end=data_end,
            flyte_execution_id=execution_id(),
        )
    )
    print(f"registered {v.model_name} v{v.version} from run {training_run_id}")
    return Registered(v.model_name, v.version)


class Gated(NamedTuple):
    decision: str  # "promote" | "reject"
    promote: bool
    reasons: list[str]


@task(requests=Resources(cpu="4", mem="16Gi", gpu="1"), accelerator=A100, container_image=TRAIN_IMAGE)
def gate(model_name: str, version: str, config: GateConfig) -> Gated:
    """Challenger vs base model and @champion on the frozen eval set; the decision goes to the version's tags."""

    d = run_gate(model_name, version, config)
    print(
        f"gate {model_name} v{version}: {d.decision}; " + ("; ".join(d.reasons) or "beats base and champion")
    )
    return Gated(d.decision, d.promote, d.reasons)


@task(requests=Resources(cpu="1", mem="2Gi"), container_image=CPU_IMAGE)
def promote_version(model_name: str, version: str, config: PromoteConfig) -> list[str]:
    """Serve the version on every replica (rolled back on any failure); returns the served names."""

    result = promote(model_name, version, config)
    print(
        f"{model_name} v{version} serving as {result.served_name!r} on {len(result.replicas)} replica(s); "
        f"previous: v{result.previous_version or '-'}"
    )
    return [result.served_name]


@task(requests=Resources(cpu="1", mem="512Mi"), container_image=CPU_IMAGE)
def not_promoted(model_name: str, version: str, reasons: list[str]) -> list[str]:
    print(f"{model_name} v{version} not promoted: " + "; ".join(reasons))
    return []


class PromoteOutputs(NamedTuple):
    decision: str
    version: str
    served_names: list[str]  # [] when the gate rejected the version


@workflow
def promote_wf(
    adapter_dir: FlyteDirectory,
    training_run_id: str,
    eval_set: FlyteDirectory,
    model_name: str = "",
    agents: list[str] = [],
    data_start: str = "",
    data_end: str = "",
    gate_config: GateConfig = GateConfig(),
    promote_config: PromoteConfig = PromoteConfig(),
) -> PromoteOutputs:
    """register -> gate -> promote when the gate says promote. Returns (decision, version, served names)."""
    reg = register(
        adapter_dir=adapter_dir,
        training_run_id=training_run_id,
        eval_set=eval_set,
        model_name=model_name,
        agents=agents,
        data_start=data_start,
        data_end=data_end,
    )
    g = gate(model_name=reg.model_name, version=reg.version, config=gate_config)
    served = (
        conditional("promote_if_the_gate_says_so")
        .if_(g.promote.is_true())
        .then(promote_version(model_name=reg.model_name, version=reg.version, config=promote_config))
        .else_()
        .then(not_promoted(model_name=reg.model_name, version=reg.version, reasons=g.reasons))
    )
    return PromoteOutputs(g.decision, reg.version, served)


class RolledBack(NamedTuple):
    version: str  # now serving
    served_names: list[str]


@task(requests=Resources(cpu="1", mem="2Gi"), container_image=CPU_IMAGE)
def rollback_version(model_name: str, config: PromoteConfig) -> RolledBack:
    """Serve @previous again everywhere; returns (the version now serving, served names)."""

    result = rollback(model_name, config)
    print(f"rolled back {model_name}: v{result.version} serving again (was v{result.previous_version})")
    return RolledBack(result.version, [result.served_name])


@workflow
def rollback_wf(model_name: str = "agentloop-chat", config: PromoteConfig = PromoteConfig()) -> RolledBack:
    return rollback_version(model_name=model_name, config=config)


__all__ = ["promote_wf", "rollback_wf", "register", "gate", "promote_version", "rollback_version"]
