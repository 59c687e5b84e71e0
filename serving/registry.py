"""The MLflow registry: an adapter becomes a version of a registered model, with lineage and a description.

    version = register_adapter(RegisterRequest(adapter_dir=..., training_run_id=run_id, eval_set_dir=...))
    mlflow.pyfunc.load_model("models:/agentloop-chat@champion").predict(
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32})

One registered model per training scope: the default training uses every agent and registers
`agentloop-chat`; a training on one agent registers `agentloop-<agent>`. The registered model's name is
also the adapter's served name in vLLM (serving/promote.py), so a version, an alias and what answers
under a name are the same thing. Aliases: `challenger` (registered, not yet gated or promoted),
`champion` (serving), `previous` (what serving had before; `rollback` returns to it). Never stages.

What a version holds (a pyfunc ChatModel, OpenAI chat in and out, so the signature and input example
are MLflow's standard chat ones):
- artifacts/adapter: the PEFT adapter only (no base weights), with the tokenizer, its chat template
  and generation_config.json;
- artifacts/eval_set: the frozen evaluation set it was gated on (serving/gate.py); the champion's set
  is what the next challenger is measured on;
- model_config.base_model: the base model's identity (path or hub id, weights sha256). Loading
  verifies the sha256 of the folder it finds; AGENTLOOP_BASE_MODEL_DIR points elsewhere if the
  recorded path does not exist on the loading machine.
Loading needs this package importable (the pickled model is serving.registry.AdapterChatModel).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlflow.pyfunc import ChatModel
from mlflow.types.llm import ChatChoice, ChatCompletionResponse, ChatMessage, ChatParams, TokenUsageStats

from training.adapter import read_lineage
from training.base_model import resolve_base_model
from training.eval_set import EvalSet
from training.tool_format import TOOL_CALL_PARSER, template_sha256, template_text

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "agentloop-chat"
FEATURE_SERVICE = "training_v1"
ALIASES = ("challenger", "champion", "previous")
ADAPTER_ARTIFACT = "adapter"
EVAL_SET_ARTIFACT = "eval_set"
MODEL_ARTIFACT_PATH = "model"  # name of the logged model inside its run
REGISTRY_EXPERIMENT = "registry"

# Registered-model VERSION tags. Monitoring (issue #6) reads these from @champion: keep the keys.
TAG_DATA_START = "agentloop.data_start"
TAG_DATA_END = "agentloop.data_end"
TAG_AGENTS = "agentloop.agents"
TAG_SNAPSHOT = "dataset.snapshot_hash"
TAG_TRAINING_RUN = "agentloop.training_run_id"
TAG_FEATURE_SERVICE = "agentloop.feature_service"
# the Delta version of the interactions table the training set was read at (time travel; maintenance keeps it)
TAG_TABLE_VERSION = "agentloop.table_version"
TAG_FLYTE_EXECUTION = "flyte.execution_id"
TAG_GIT_COMMIT = "agentloop.git_commit"
TAG_BASE_SHA = "agentloop.base_model_sha256"
TAG_BASE_PATH = "agentloop.base_model"
TAG_EVAL_SET_SHA = "agentloop.eval_set_sha256"
# the one chat template (training/tool_format.py) the version was trained and packaged with, and the
# vLLM tool-call parser its format needs: vLLM applies one template and one parser per server
TAG_CHAT_TEMPLATE_SHA = "agentloop.chat_template_sha256"
TAG_TOOL_CALL_PARSER = "agentloop.tool_call_parser"

DEFAULT_INPUT_EXAMPLE = {
    "messages": [
        {"role": "system", "content": ""},
        {"role": "user", "content": "Hello! Can you tell me where my parcel is?"},
    ],
    "max_tokens": 16,
    "temperature": 0.0,
}


class RegistryError(RuntimeError):
    """A registry record is missing or inconsistent; the message names it and what to do."""


def model_name_for(agents: list[str] | tuple[str, ...] | str | None = None) -> str:
    """`agentloop-chat` for a training on all agents (empty), `agentloop-<agent>` for a single agent.

    Registered model names double as vLLM served names, so they are kept to [a-z0-9-]."""
    if isinstance(agents, str):
        agents = [a.strip() for a in agents.split(",") if a.strip()]
    agents = sorted(set(agents or []))
    if not agents:
        return DEFAULT_MODEL_NAME
    if len(agents) > 1:
        raise ValueError(
            f"agents {agents}: one registered model per training scope is either all agents (empty) "
            "or a single agent; name the model explicitly (RegisterRequest.model_name) for a subset"
        )
    slug = re.sub(r"[^a-z0-9]+", "-", agents[0].lower()).strip("-")
    if not slug:
        raise ValueError(f"agent {agents[0]!r} has no usable characters for a model name")
    return f"agentloop-{slug}"


def client(tracking_uri: str = ""):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri or None)


# --- the pyfunc model ---------------------------------------------------------------------------------


class AdapterChatModel(ChatModel):
    """OpenAI-style chat on CPU: the base model (found by identity) + the version's LoRA adapter."""

    def __init__(self):
        self._model = self._tokenizer = self._generation = None
        self._name = ""

    def __getstate__(self):  # MLflow loads the model once to validate it before pickling: keep weights out
        return {}

    def __setstate__(self, state):
        self.__init__()

    def load_context(self, context) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        config = context.model_config or {}
        adapter = context.artifacts[ADAPTER_ARTIFACT]
        base_path = locate_base_model(config.get("base_model", {}))
        self._tokenizer = AutoTokenizer.from_pretrained(adapter)
        model = AutoModelForCausalLM.from_pretrained(
            base_path, dtype=getattr(torch, config.get("dtype", "float32"))
        )
        self._model = PeftModel.from_pretrained(model, adapter).eval()
        try:
            self._generation = GenerationConfig.from_pretrained(adapter)
        except OSError:
            self._generation = GenerationConfig()
        self._name = config.get("served_name", "")

    def predict(self, context, messages: list[ChatMessage], params: ChatParams) -> ChatCompletionResponse:
        import torch

        tok = self._tokenizer
        chat = [
            {
                "role": m.role,
                "content": m.content
                if isinstance(m.content, str)
                else "".join(p.get("text", "") for p in (m.content or [])),
            }
            for m in messages
        ]
        enc = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        max_new = params.max_tokens or self._generation.max_new_tokens or 64
        temperature = params.temperature if params.temperature is not None else 0.0
        kwargs: dict[str, Any] = {
            "max_new_tokens": int(max_new),
            "pad_token_id": tok.pad_token_id or tok.eos_token_id,
            "eos_token_id": tok.eos_token_id,
        }
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=float(temperature), top_p=float(params.top_p or 1.0))
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self._model.generate(**enc, **kwargs)
        new = out[0, enc["input_ids"].shape[1] :]
        text = tok.decode(new, skip_special_tokens=True)
        finish = "length" if len(new) >= max_new and int(new[-1]) != tok.eos_token_id else "stop"
        for stop in params.stop or []:
            if stop and stop in text:
                text, finish = text[: text.index(stop)], "stop"
        prompt_tokens, completion_tokens = int(enc["input_ids"].shape[1]), int(len(new))
        return ChatCompletionResponse(
            choices=[
                ChatChoice(message=ChatMessage(role="assistant", content=text.strip()), finish_reason=finish)
            ],
            usage=TokenUsageStats(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
            model=self._name or None,
        )


def locate_base_model(identity: dict) -> str:
    """The folder (or hub id) of the base model a version was trained on, checked against its sha256.

    The recorded path first, then AGENTLOOP_BASE_MODEL_DIR; a local folder whose weights hash differs is
    refused (a LoRA adapter on the wrong base answers nonsense without any error)."""
    want = identity.get("weights_sha256", "")
    candidates = [p for p in (identity.get("path", ""), os.environ.get("AGENTLOOP_BASE_MODEL_DIR", "")) if p]
    seen = []
    for ref in candidates:
        path = Path(ref).expanduser()
        if path.is_dir():
            got = resolve_base_model(path).weights_sha256
            if want and got != want:
                seen.append(f"{path} (sha256 {got[:12]})")
                continue
            return str(path)
        if not ref.startswith(("/", ".", "~")):  # a hub id (cluster): recorded by name, not hashed
            return ref
    raise RegistryError(
        f"base model {identity.get('name', '?')} (weights sha256 {want[:12] or '?'}) not found: tried "
        f"{candidates or ['(no path recorded)']}; mismatches: {seen or 'none'}. Set AGENTLOOP_BASE_MODEL_DIR to a "
        "folder with exactly these weights (`python -m training.base_model` prepares the embedded one)"
    )


# --- registering -------------------------------------------------------------------------------------


@dataclass
class RegisterRequest:
    """An adapter to register. Simple types only (a Flyte task input)."""

    adapter_dir: str
    training_run_id: str  # the MLflow run that trained it: lineage, metrics and the description come from it
    eval_set_dir: str  # a saved EvalSet (training/eval_set.py): frozen with the version
    model_name: str = ""  # "" = model_name_for(agents)
    agents: list[str] = field(default_factory=list)  # [] = all agents
    data_start: str = ""  # ISO 8601 UTC, the training window [start, end)
    data_end: str = ""
    feature_service: str = ""  # "" = the training run's dataset.source.feature_service, else training_v1
    flyte_execution_id: str = ""
    git_commit: str = ""  # "" = `git rev-parse HEAD` of this checkout, when it is one
    base_model: str = ""  # "" = read from the adapter's lineage file (what it was trained on)
    input_example: dict = field(default_factory=lambda: dict(DEFAULT_INPUT_EXAMPLE))
    max_new_tokens: int = 64  # the version's generation_config default


@dataclass
class RegisteredVersion:
    model_name: str
    version: str
    model_uri: str  # models:/<name>/<version>
    run_id: str  # the run that holds the logged model (the training run)
    tags: dict[str, str]
    aliases: list[str]


def register_adapter(req: RegisterRequest) -> RegisteredVersion:
    """Log the adapter as a pyfunc ChatModel in its training run, register a version, tag it, alias it @challenger.

    Loading the model once is part of logging (MLflow validates a ChatModel by answering its input example),
    so a version that cannot answer is never registered."""
    import mlflow

    adapter = Path(req.adapter_dir)
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{adapter} is not a PEFT adapter (no adapter_config.json); pass the trainer's "
            "<output_dir>/adapter"
        )
    eval_set = EvalSet.load(req.eval_set_dir)
    name = req.model_name or model_name_for(req.agents)
    c = client()  # MLFLOW_TRACKING_URI: logging a model goes through MLflow's fluent API, which reads it
    try:
        run = c.get_run(req.training_run_id)
    except Exception as e:
        raise RegistryError(
            f"training run {req.training_run_id!r} not found on {c.tracking_uri}: register against "
            "the server that tracked the training (MLFLOW_TRACKING_URI)"
        ) from e
    lineage = _adapter_lineage(adapter)
    base_ref = req.base_model or lineage.get("base_model", {}).get("path", "")
    identity = resolve_base_model(base_ref or None)
    if lineage.get("base_model", {}).get("weights_sha256") not in (None, "", identity.weights_sha256):
        raise RegistryError(
            f"adapter {adapter} was trained on base weights {lineage['base_model']['weights_sha256'][:12]}"
            f", but base model {identity.path} has {identity.weights_sha256[:12]}: register with the "
            "base model it was trained on"
        )
    if eval_set.tokenizer_sha256 and run.data.params.get("dataset.tokenizer.sha256") not in (
        None,
        eval_set.tokenizer_sha256,
    ):
        raise RegistryError(
            f"eval set {req.eval_set_dir} was tokenized with another tokenizer than training run "
            f"{req.training_run_id}; build it from this training's snapshot"
        )

    with tempfile.TemporaryDirectory(prefix="agentloop-register-") as tmp:
        packaged = _package_adapter(adapter, Path(tmp) / ADAPTER_ARTIFACT, req.max_new_tokens)
        frozen = eval_set.save(Path(tmp) / EVAL_SET_ARTIFACT)  # the folder's name is its name in the version
        model_config = {"base_model": asdict(identity), "served_name": name, "dtype": "float32"}
        # a process that tracked other stages first (local `pyflyte run` runs every task in one process) has
        # another active experiment, and MLflow refuses to resume a run outside it
        mlflow.set_experiment(experiment_id=run.info.experiment_id)
        with mlflow.start_run(run_id=req.training_run_id, nested=mlflow.active_run() is not None):
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT_PATH,
                python_model=AdapterChatModel(),
                artifacts={ADAPTER_ARTIFACT: str(packaged), EVAL_SET_ARTIFACT: str(frozen)},
                model_config=model_config,
                input_example=req.input_example,
                pip_requirements=_pip_requirements(),
            )
    mv = mlflow.register_model(info.model_uri, name, tags={"agentloop.stage": "registered"})
    tags = {
        TAG_DATA_START: req.data_start or run.data.params.get("dataset.source.start", ""),
        TAG_DATA_END: req.data_end or run.data.params.get("dataset.source.end", ""),
        TAG_AGENTS: ",".join(sorted(req.agents)),
        TAG_SNAPSHOT: run.data.tags.get(TAG_SNAPSHOT, "") or lineage.get("dataset_snapshot_hash", ""),
        TAG_TRAINING_RUN: req.training_run_id,
        TAG_FEATURE_SERVICE: req.feature_service
        or run.data.params.get("dataset.source.feature_service", FEATURE_SERVICE),
        TAG_TABLE_VERSION: run.data.params.get("dataset.source.table_version", ""),
        TAG_FLYTE_EXECUTION: req.flyte_execution_id or run.data.tags.get(TAG_FLYTE_EXECUTION, ""),
        TAG_GIT_COMMIT: req.git_commit or git_commit(),
        TAG_BASE_SHA: identity.weights_sha256,
        TAG_BASE_PATH: identity.path,
        TAG_EVAL_SET_SHA: eval_set.sha256(),
        TAG_CHAT_TEMPLATE_SHA: template_sha256(),
        TAG_TOOL_CALL_PARSER: TOOL_CALL_PARSER,
    }
    for k, v in tags.items():
        c.set_model_version_tag(name, mv.version, k, str(v))
    c.update_model_version(
        name, mv.version, description=describe_version(c, name, mv.version, run, eval_set, tags)
    )
    c.set_registered_model_alias(name, "challenger", mv.version)
    if not c.get_registered_model(name).description:
        c.update_registered_model(
            name,
            description=(
                f"LoRA adapters on {identity.name}, served by vLLM under the name `{name}`. Aliases: @champion serves, "
                "@previous is what served before it (`agentloop rollback`), @challenger awaits the gate."
            ),
        )
    log.info("registered %s version %s from run %s (@challenger)", name, mv.version, req.training_run_id)
    return RegisteredVersion(
        name, str(mv.version), f"models:/{name}/{mv.version}", req.training_run_id, tags, ["challenger"]
    )


def _adapter_lineage(adapter: Path) -> dict:
    try:
        return read_lineage(adapter)
    except (OSError, ValueError):  # unreadable lineage: register without it rather than refuse the adapter
        return {}


def _package_adapter(adapter: Path, out: Path, max_new_tokens: int) -> Path:
    """The adapter's files plus what a reader needs to answer: tokenizer (with chat template), generation config."""
    import shutil

    from transformers import AutoTokenizer, GenerationConfig

    shutil.copytree(adapter, out, ignore=shutil.ignore_patterns("checkpoint-*", ".*"))
    if not (out / "tokenizer_config.json").is_file():
        base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path", "")
        AutoTokenizer.from_pretrained(base).save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    # the pyfunc answers through the template training used, not the tokenizer's own
    tok.chat_template = template_text()
    tok.save_pretrained(out)
    if not getattr(tok, "chat_template", None):
        raise RegistryError(
            f"tokenizer saved with adapter {adapter} has no chat template; the version could not "
            "answer chat messages. Save the base model's tokenizer with the adapter"
        )
    if not (out / "generation_config.json").is_file():
        GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ).save_pretrained(out)
    return out


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "torch", "transformers", "peft", "accelerate")]


def git_commit() -> str:
    """HEAD of this checkout ("" outside a git checkout, e.g. in a container without .git)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            text=True,
            capture_output=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _fmt(v: Any) -> str:
    try:
        return f"{float(v):.4g}"
    except (TypeError, ValueError):
        return str(v) if v not in (None, "") else "-"


def describe_version(c, name: str, version: str, run, eval_set, tags: dict[str, str]) -> str:
    """The Markdown a reviewer reads in the MLflow UI: data, evaluation base vs adapter, sweep, lineage."""
    p, m = run.data.params, run.data.metrics
    lines = [
        f"## {name} v{version}",
        "",
        f"LoRA adapter on `{tags[TAG_BASE_PATH]}` (weights sha256 `{tags[TAG_BASE_SHA][:12]}`), "
        f"trained in run `{run.info.run_id}`.",
        "",
        "### Data",
        "",
        f"- window: `{tags[TAG_DATA_START] or '?'}` to `{tags[TAG_DATA_END] or '?'}` (end exclusive); agents: "
        f"{tags[TAG_AGENTS] or 'all'}; feature service `{tags[TAG_FEATURE_SERVICE]}`",
        f"- dataset snapshot `{tags[TAG_SNAPSHOT][:16]}`: {_fmt(p.get('dataset.examples'))} examples, "
        f"{_fmt(p.get('dataset.tokens'))} tokens",
    ]
    for split in ("train", "validation", "test"):
        if f"dataset.splits.{split}.examples" in p:
            lines.append(
                f"  - {split}: {p[f'dataset.splits.{split}.examples']} examples, "
                f"{p.get(f'dataset.splits.{split}.sessions', '?')} sessions"
            )
    lines.append(
        f"- frozen evaluation set `{tags[TAG_EVAL_SET_SHA][:12]}`: {len(eval_set.rows)} loss rows, "
        f"{len(eval_set.prompts)} prompts, {len(eval_set.canaries)} planted canaries"
    )
    lines += [
        "",
        "### Evaluation (training run, held-out split)",
        "",
        "| metric | base | adapter |",
        "| --- | --- | --- |",
    ]
    for label, base_key, ad_key in (
        ("test loss", "eval.base_test_loss", "eval.test_loss"),
        ("validation loss", "eval.base_validation_loss", "eval.validation_loss"),
        ("ROUGE-L", "eval.base_rouge_l", "eval.adapter_rouge_l"),
        ("empty replies", "eval.base_empty_share", "eval.adapter_empty_share"),
        ("refusals", "eval.base_refusal_share", "eval.adapter_refusal_share"),
    ):
        if base_key in m or ad_key in m:
            lines.append(f"| {label} | {_fmt(m.get(base_key))} | {_fmt(m.get(ad_key))} |")
    if "best_val_loss" in m:
        lines.append(f"\nbest validation loss during training: {_fmt(m['best_val_loss'])}")
    sweep_id = run.data.tags.get("agentloop.sweep_run_id", "")
    lines += ["", "### Sweep", ""]
    if sweep_id:
        try:
            s = c.get_run(sweep_id)
            sm = s.data.metrics
            lines.append(
                f"run `{sweep_id}`: {_fmt(sm.get('trials'))} trials ({_fmt(sm.get('trials_complete'))} "
                f"complete, {_fmt(sm.get('trials_pruned'))} pruned, {_fmt(sm.get('trials_failed'))} failed); "
                f"best trial {s.data.tags.get('optuna.best_trial', '?')} at validation loss "
                f"{_fmt(sm.get('best_val_loss'))} with `{s.data.tags.get('optuna.best_overrides', '{}')}`"
            )
        except Exception:  # noqa: BLE001 - a sweep run on another server: say so, do not fail registration
            lines.append(f"run `{sweep_id}` (not readable on this server)")
    else:
        lines.append("no sweep: trained with a fixed config")
    lines += [
        "",
        "### Lineage",
        "",
        *(f"- `{k}`: `{v}`" for k, v in tags.items() if v),
        "",
        f"registered {datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}",
    ]
    return "\n".join(lines)


# --- reading -----------------------------------------------------------------------------------------


def alias_version(name: str, alias: str, tracking_uri: str = ""):
    """The ModelVersion an alias points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client(tracking_uri).get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def get_version(name: str, version: str | int, tracking_uri: str = ""):
    from mlflow.exceptions import MlflowException

    try:
        return client(tracking_uri).get_model_version(name, str(version))
    except MlflowException as e:
        raise RegistryError(
            f"registered model {name!r} has no version {version} on "
            f"{client(tracking_uri).tracking_uri}: list them with `agentloop status {name}`"
        ) from e


def download_version(name: str, version: str | int, dest: str | Path, tracking_uri: str = "") -> Path:
    """The version's logged model folder (MLmodel, artifacts/adapter, artifacts/eval_set) under dest."""
    import mlflow

    get_version(name, version, tracking_uri)
    Path(dest).mkdir(parents=True, exist_ok=True)
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version}",
        dst_path=str(dest),
        tracking_uri=tracking_uri or None,
        registry_uri=tracking_uri or None,
    )
    return Path(path)


def version_artifact(model_dir: Path, artifact: str) -> Path:
    """artifacts/<artifact> inside a downloaded pyfunc folder."""
    path = Path(model_dir) / "artifacts" / artifact
    if not path.exists():
        raise RegistryError(
            f"{model_dir} has no artifacts/{artifact}: it was not registered by serving.registry"
        )
    return path


def status(name: str, tracking_uri: str = "") -> dict:
    """Aliases, and per version: gate decision, promotion state and lineage, newest first (for `agentloop status`)."""
    c = client(tracking_uri)
    try:
        model = c.get_registered_model(name)
    except Exception as e:
        raise RegistryError(f"no registered model {name!r} on {c.tracking_uri}") from e
    versions = sorted(c.search_model_versions(f"name='{name}'"), key=lambda v: -int(v.version))
    return {
        "name": name,
        "aliases": dict(model.aliases or {}),
        "versions": [
            {
                "version": v.version,
                "aliases": list(v.aliases or []),
                "gate": v.tags.get("agentloop.gate.decision", ""),
                "promotion": v.tags.get("agentloop.promotion.status", ""),
                "run_id": v.run_id,
                "snapshot": v.tags.get(TAG_SNAPSHOT, "")[:12],
            }
            for v in versions
        ],
    }


__all__ = [
    "AdapterChatModel",
    "RegisterRequest",
    "RegisteredVersion",
    "RegistryError",
    "register_adapter",
    "model_name_for",
    "alias_version",
    "get_version",
    "download_version",
    "version_artifact",
    "locate_base_model",
    "status",
    "describe_version",
    "DEFAULT_MODEL_NAME",
    "ALIASES",
]
