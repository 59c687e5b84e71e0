"""`pyflyte --pkgs workflows package` serialises every workflow and launch plan for the cluster.

The package (the .tgz `pyflyte register` would upload) is decoded with flyteidl's protobuf types and
read like flyteadmin would: the final training task asks for 2 A100 GPUs and runs torch elastic with
2 processes, the GPU tasks use the CUDA image and the data tasks the CPU one, and every schedule is
there with the cluster's default inputs.

Images are not built here: DOCKER_HOST points nowhere, so flytekit cannot look the tags up and
assumes they exist (what it does on any machine without Docker); the image names are still
computed from workflows/images.py exactly as `pyflyte register` computes them.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Launch plans the cluster must have, by the module that defines each. One whose module does not
# exist yet is not expected; one whose module exists must be in the package.
SCHEDULES = {
    "agentloop.ingest_daily": "workflows/ingest.py",
    "agentloop.retrain_weekly": "workflows/lifecycle.py",
    "agentloop.drift_hourly": "workflows/monitor.py",
    "agentloop.store_maintenance_weekly": "workflows/maintenance.py",
}


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> dict:
    """{"tasks"|"workflows"|"launch_plans": {name: protobuf}} decoded from a fresh package."""
    from flyteidl.admin import launch_plan_pb2, task_pb2, workflow_pb2

    out = tmp_path_factory.mktemp("flyte-package")
    tgz = out / "flyte-package.tgz"
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    for name in ("FLYTE_IMG_FAST_FAIL", "FLYTE_FORCE_PUSH_IMAGE_SPEC", "AGENTLOOP_IMAGE_REGISTRY"):
        env.pop(name, None)
    pyflyte = Path(sys.executable).parent / "pyflyte"
    proc = subprocess.run(
        [str(pyflyte), "--pkgs", "workflows", "package", "--output", str(tgz), "--force"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"pyflyte package failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    assert "not found. building" not in proc.stdout, (
        f"pyflyte package tried to build an image:\n{proc.stdout}"
    )
    kinds = {
        "1": ("tasks", task_pb2.TaskSpec),
        "2": ("workflows", workflow_pb2.WorkflowSpec),
        "3": ("launch_plans", launch_plan_pb2.LaunchPlan),
    }
    decoded: dict[str, dict] = {"tasks": {}, "workflows": {}, "launch_plans": {}}
    with tarfile.open(tgz) as tar:
        for member in tar.getmembers():
            if not member.name.endswith(".pb"):
                continue
            key, cls = kinds[member.name[:-3].rsplit("_", 1)[1]]
            msg = cls.FromString(tar.extractfile(member).read())
            name = msg.id.name if key == "launch_plans" else msg.template.id.name
            decoded[key][name] = msg
    return decoded


def _resources(container) -> tuple[dict, dict]:
    from flyteidl.core.tasks_pb2 import Resources

    names = {v: k.lower() for k, v in Resources.ResourceName.items()}
    return (
        {names[e.name]: e.value for e in container.resources.requests},
        {names[e.name]: e.value for e in container.resources.limits},
    )


def _task_location(container) -> tuple[str, str]:
    args = list(container.args)
    return args[args.index("task-module") + 1], args[args.index("task-name") + 1]


def _value(literal):
    """A launch-plan default as Python (strings, lists, dataclasses)."""
    import msgpack
    from google.protobuf.json_format import MessageToDict

    if literal.HasField("collection"):
        return [_value(x) for x in literal.collection.literals]
    scalar = literal.scalar
    if scalar.HasField("primitive"):
        p = scalar.primitive
        return getattr(p, p.WhichOneof("value"))
    if scalar.HasField("binary"):
        return msgpack.unpackb(scalar.binary.value)
    if scalar.HasField("generic"):
        return MessageToDict(scalar.generic)
    if scalar.HasField("none_type"):
        return None
    raise AssertionError(f"unexpected literal {literal}")


def test_final_training_asks_for_two_a100s_and_runs_torch_elastic_with_two_processes(package):
    from flytekitplugins.kfpytorch.task import PytorchElasticFunctionTask

    from workflows.images import TRAIN_IMAGE

    spec = package["tasks"]["workflows.train.final_train"].template
    requests, limits = _resources(spec.container)
    assert requests["gpu"] == "2" and limits["gpu"] == "2"
    assert spec.extended_resources.gpu_accelerator.device == "nvidia-tesla-a100"
    assert spec.extended_resources.HasField(
        "shared_memory"
    )  # NCCL needs more than the default 64 MB /dev/shm
    assert spec.container.image.startswith(f"{TRAIN_IMAGE.registry}/{TRAIN_IMAGE.name}:")
    # One node: flytekit serialises a plain pod (no Kubeflow PyTorchJob) whose entry point loads this
    # task object and starts torch elastic with its config; so the processes are the loaded task's.
    module, name = _task_location(spec.container)
    task = getattr(importlib.import_module(module), name)
    assert isinstance(task, PytorchElasticFunctionTask)
    assert (task.task_config.nnodes, task.task_config.nproc_per_node) == (1, 2)
    assert spec.type == "python-task"


def test_gpu_tasks_use_the_cuda_image_and_data_tasks_the_cpu_image(package):
    from workflows.images import CPU_IMAGE, TRAIN_IMAGE

    tasks = package["tasks"]
    for name in ("workflows.train.sweep", "workflows.train.evaluate", "workflows.promote.gate"):
        spec = tasks[name].template
        assert _resources(spec.container)[0]["gpu"] == "1", name
        assert spec.extended_resources.gpu_accelerator.device == "nvidia-tesla-a100", name
        assert spec.container.image.startswith(f"{TRAIN_IMAGE.registry}/{TRAIN_IMAGE.name}:"), name
    for name in ("workflows.train.fingerprint_training_data", "workflows.train.build_dataset"):
        spec = tasks[name].template
        assert "gpu" not in _resources(spec.container)[0], name
        assert spec.container.image.startswith(f"{CPU_IMAGE.registry}/{CPU_IMAGE.name}:"), name
    # no task falls back to flytekit's default image (it has none of Feast, MLflow, Evidently, PEFT)
    ours = (f"{CPU_IMAGE.registry}/{CPU_IMAGE.name}:", f"{TRAIN_IMAGE.registry}/{TRAIN_IMAGE.name}:")
    for name, t in tasks.items():
        if name.startswith("workflows.") and t.template.HasField("container"):
            assert t.template.container.image.startswith(ours), f"{name} runs in {t.template.container.image}"


def test_every_workflow_and_launch_plan_in_the_workflows_package_is_serialised(package):
    from flytekit import LaunchPlan
    from flytekit.core.workflow import WorkflowBase

    import workflows

    found_workflows, found_plans = set(), set()
    for mod in pkgutil.iter_modules(workflows.__path__):
        module = importlib.import_module(f"workflows.{mod.name}")
        for obj in vars(module).values():
            if isinstance(obj, WorkflowBase) and obj.name.startswith("workflows."):
                found_workflows.add(obj.name)
            elif isinstance(obj, LaunchPlan):
                found_plans.add(obj.name)
    assert {"workflows.ingest.ingest_wf", "workflows.train.train_wf"} <= found_workflows
    assert found_workflows <= set(package["workflows"]), sorted(found_workflows - set(package["workflows"]))
    assert found_plans <= set(package["launch_plans"]), sorted(found_plans - set(package["launch_plans"]))


def test_every_schedule_is_present_with_a_cron_and_the_scheduled_time_as_input(package):
    expected = [name for name, module in SCHEDULES.items() if (ROOT / module).exists()]
    assert {"agentloop.ingest_daily", "agentloop.retrain_weekly"} <= set(expected)
    for name in expected:
        assert name in package["launch_plans"], (
            f"launch plan {name} (from {SCHEDULES[name]}) is not in the package"
        )
        schedule = package["launch_plans"][name].spec.entity_metadata.schedule
        cron = schedule.cron_schedule.schedule or schedule.cron_expression
        assert cron or schedule.HasField("rate"), f"{name} has no schedule"
        assert schedule.kickoff_time_input_arg, f"{name} does not pass its scheduled time to the workflow"


def test_scheduled_runs_default_to_the_cluster_services(package):
    from workflows.cluster import CLUSTER

    def defaults(name):
        params = package["launch_plans"][name].spec.default_inputs.parameters
        return {k: _value(p.default) for k, p in params.items() if p.HasField("default")}

    ingest = defaults("agentloop.ingest_daily")
    assert ingest["sources"] == [CLUSTER.agent_logs]
    assert ingest["store"] == CLUSTER.store and ingest["online_store"] == CLUSTER.redis
    retrain = defaults("agentloop.retrain_weekly")
    assert retrain["store"] == CLUSTER.store and retrain["base_model"] == CLUSTER.base_model
    assert retrain["sweep_config"]["storage"] == CLUSTER.optuna_storage
    # the weekly round goes all the way: sources, Feast's Redis, the replicas it promotes to, the pushgateway
    assert retrain["sources"] == [CLUSTER.agent_logs] and retrain["online_store"] == CLUSTER.redis
    assert retrain["promote_config"]["replica_urls"] == list(CLUSTER.vllm_replicas)
    assert retrain["promote_config"]["store"] == CLUSTER.model_store
    assert retrain["metrics"]["pushgateway_url"] == CLUSTER.pushgateway
    assert (
        package["launch_plans"][
            "agentloop.retrain_weekly"
        ].spec.entity_metadata.schedule.cron_schedule.schedule
        == "0 3 * * 1"
    )
    if "agentloop.drift_hourly" in package["launch_plans"]:
        drift = defaults("agentloop.drift_hourly")
        assert drift["store"] == CLUSTER.store
        assert drift["metrics"]["pushgateway_url"] == CLUSTER.pushgateway
        assert drift["decision"]["state_path"] == CLUSTER.monitor_state
