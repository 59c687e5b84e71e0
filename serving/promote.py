"""Promotion to vLLM, and rollback: every step verified, any failure leaves the previous adapter serving.

    result = promote("agentloop-chat", "7", PromoteConfig(replica_urls=["http://127.0.0.1:8000"]))
    rollback("agentloop-chat", PromoteConfig(...))

promote(name, version):
 1. the version's adapter goes to the model store under an immutable path
    (<store>/<name>/v<version>/; a folder here, s3:// on the cluster). Writing the same content again
    is a no-op; different content under an existing version path is refused.
 2. on every replica URL: POST /v1/load_lora_adapter {lora_name: <served name>, lora_path, load_inplace: true}.
    The served name is the registered model's name and never changes, so clients never see a 404: an
    in-place load swaps the weights under the name (loading a loaded name without load_inplace is a 400).
    Each version has its own path, so vLLM's prefix cache never mixes old and new weights.
 3. GET /v1/models must list the served name with root = the new path;
 4. one untimed warm-up request (vLLM prepares a new adapter on its first use), then smoke requests through
    /v1/chat/completions on the served name: 200, non-empty, within the latency budget. When the version's eval
    set holds tool calls, one held-out tool question goes with its tools and tool_choice "auto": a reply with
    null content and structured tool_calls passes (serving/smoke.py says what passes).
    The budget is relative to the replica itself: the same prompts are timed on it just before the swap, on
    the adapter it serves under the name, and each smoke request may take at most `latency_multiple` times
    that (never less than `latency_floor_s`, never more than `latency_budget_s`). A replica busy with traffic
    is slow before and after alike; only a swap that makes it slower fails. A first promotion (nothing served
    under the name) has nothing like for like to compare with and gets the ceiling: on CPU a LoRA request
    costs several base-model ones (bench/promote_under_load.py).
    By default they are the first held-out conversations of the version's frozen eval set: traffic in the form
    the agents send it (their system prompt included), not a generic "Hello" a fine-tuned agent may not answer;
 5. only then aliases move: @previous <- old @champion, @champion <- version (and @challenger is dropped
    when it pointed at it); the serving manifest and the Kubernetes manifests are rewritten (restart safety).
If any replica fails at 2-4, every replica it reached is put back on what its own /v1/models listed
before the swap (the name is unloaded where it served nothing), the aliases do not move, and PromotionError
says which replica failed at which step and why.

rollback(name): the same procedure towards @previous; @champion <- previous, and @previous is removed (the
rolled-back version keeps tag agentloop.promotion.status=rolled_back), so a second rollback is refused
instead of re-promoting what was just taken down.

Bearer token: PromoteConfig.api_key_env names the environment variable holding the replicas' API key
(vLLM's --api-key / VLLM_API_KEY); the token is never part of a config, a tag or a log line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import requests

from features.home import agentloop_home
from serving.gate import TAG_DECISION
from serving.manifests import RenderConfig, render_to_dir, update_serving_manifest
from serving.registry import (
    ADAPTER_ARTIFACT,
    EVAL_SET_ARTIFACT,
    RegistryError,
    alias_version,
    client,
    download_version,
    get_version,
    version_artifact,
)
from serving.smoke import (
    SmokeRequest,
    bounded_conversation,
    eval_set_requests,
    reply_problem,
    reply_summary,
    smoke_budgets,
)
from training.eval_set import EvalSet

log = logging.getLogger(__name__)

STORE_MARKER = "agentloop-store.json"  # written last: a version folder without it is an unfinished copy
TAG_STATUS = "agentloop.promotion.status"


class PromotionError(RuntimeError):
    """Promotion or rollback failed and was undone; `.result` has each replica's outcome."""

    def __init__(self, message: str, result: "PromotionResult"):
        super().__init__(message)
        self.result = result


class ReplicaError(RuntimeError):
    """One replica refused or failed a step; the message names the URL, the step and what to do."""


# --- the model store ---------------------------------------------------------------------------------


def default_store() -> str:
    return str(agentloop_home() / "model-store")


def dir_sha256(folder: str | Path) -> str:
    """One digest over every file of a local folder (relative path + content), in path order."""
    folder = Path(folder)
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def store_adapter(adapter_dir: str | Path, store: str, name: str, version: str | int) -> str:
    """Copy an adapter folder to <store>/<name>/v<version> (local folder or any fsspec URL, e.g. s3://).

    Immutable: when the version path already holds the same content (by sha256) this returns at once;
    different content is refused. The marker file is written last, so an interrupted copy is redone."""
    import fsspec

    sha = dir_sha256(adapter_dir)
    fs, root = fsspec.core.url_to_fs(store)
    target = f"{root.rstrip('/')}/{name}/v{version}"
    marker = f"{target}/{STORE_MARKER}"
    if fs.exists(marker):
        existing = json.loads(fs.cat_file(marker))
        if existing.get("sha256") != sha:
            raise FileExistsError(
                f"model store {store}: {name}/v{version} already holds different content (sha256 "
                f"{existing.get('sha256', '?')[:12]}, new {sha[:12]}). Versions are immutable: register a new "
                "version instead of overwriting this one"
            )
        return _url(store, target)
    if fs.exists(target):
        fs.rm(target, recursive=True)  # an unfinished copy (no marker)
    src = Path(adapter_dir)
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        dest = f"{target}/{f.relative_to(src).as_posix()}"
        fs.makedirs(str(PurePosixPath(dest).parent), exist_ok=True)
        fs.put_file(str(f), dest)
    with fs.open(marker, "w") as fh:
        fh.write(
            json.dumps(
                {
                    "name": name,
                    "version": str(version),
                    "sha256": sha,
                    "stored_at": datetime.now(timezone.utc).isoformat(),
                }
            )
        )
    return _url(store, target)


def _url(store: str, path: str) -> str:
    if "://" in store:
        return f"{store.split('://', 1)[0]}://{path}"
    return path


def replica_path(store_url: str, config: "PromoteConfig") -> str:
    """A stored version's path as the replicas see it: the config.store prefix replaced by config.replica_store."""
    if not config.replica_store:
        return store_url
    store = config.store.rstrip("/")
    if not store_url.startswith(store):
        raise ValueError(f"{store_url} is not under the model store {config.store}")
    return config.replica_store.rstrip("/") + store_url[len(store) :]


# --- replicas ------------------------------------------------------------------------------------


@dataclass
class PromoteConfig:
    """Where the replicas are and how to check them. Simple types only (a Flyte task input)."""

    replica_urls: list[str] = field(
        default_factory=lambda: ["http://127.0.0.1:8000"]
    )  # base URLs, without /v1
    api_key_env: str = "AGENTLOOP_VLLM_API_KEY"  # the variable holding the bearer token ("" or unset: none)
    store: str = field(
        default_factory=default_store
    )  # where adapters are copied (folder or s3://bucket/prefix)
    replica_store: str = ""  # the same store as the replicas see it (their mount), "" = same as store
    smoke_prompts: list[str] = field(
        default_factory=list
    )  # user messages; [] = the eval set's held-out prompts (its tool questions are sent either way)
    smoke_count: int = 2  # how many held-out prompts when smoke_prompts is empty
    smoke_max_tokens: int = 16
    smoke_tool_count: int = (
        1  # held-out tool-call questions sent with their tools, when the eval set has them
    )
    smoke_tool_max_tokens: int = 96  # room for a whole call (a cut call parses as no call)
    smoke_max_prompt_chars: int = (
        4000  # a smoke conversation keeps its system turn and its latest turns up to this
    )
    latency_multiple: float = (
        3.0  # a smoke request may take this many times the replica's own time before the swap
    )
    latency_floor_s: float = 2.0  # ...but is always allowed this long (timer noise on a fast replica)
    latency_budget_s: float = 60.0  # ...and never longer than this (absolute ceiling, per smoke request)
    request_timeout_s: float = 60.0
    require_gate: bool = True  # refuse versions whose agentloop.gate.decision is not "promote"
    manifest_path: str = ""  # serving manifest JSON; "" = <store>/serving-manifest.json for a local store
    k8s_dir: str = ""  # rendered Kubernetes manifests; "" = none written
    render_json: str = ""  # serving.manifests.RenderConfig fields as JSON, for the k8s manifests
    tracking_uri: str = ""


@dataclass
class ReplicaOutcome:
    url: str
    ok: bool = False
    step: str = (
        ""  # the step that failed: read (GET /v1/models before), baseline, load, models (after), smoke
    )
    error: str = ""
    before: str = ""  # the adapter path this replica served under the name before the swap
    load_s: float = 0.0  # the in-place load request, end to end
    smoke_latency_s: list[float] = field(default_factory=list)
    baseline_latency_s: list[float] = field(default_factory=list)  # the same prompts, just before the swap
    smoke_budget_s: list[float] = field(default_factory=list)  # what each smoke request was allowed
    smoke_replies: list[str] = field(default_factory=list)  # "<kind>: <summary>" per smoke reply, no content
    # after a failure: "previous" (re-loaded), "unloaded", "unchanged" (this one failed before swapping),
    # "untouched" (never reached), or "FAILED: ..." (could not be restored: a person must look)
    restored: str = ""


@dataclass
class PromotionResult:
    model_name: str
    served_name: str
    version: str  # the version now serving (on success) or that was attempted
    previous_version: str  # "" = none
    adapter_path: str  # as the replicas load it
    ok: bool
    replicas: list[ReplicaOutcome]
    action: str = "promote"  # or "rollback"
    manifest_path: str = ""
    k8s_files: list[str] = field(default_factory=list)


def replica_headers(config: PromoteConfig) -> dict[str, str]:
    token = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def _call(method: str, url: str, config: PromoteConfig, step: str, **kw) -> requests.Response:
    try:
        r = requests.request(
            method, url, headers=replica_headers(config), timeout=config.request_timeout_s, **kw
        )
    except requests.RequestException as e:
        raise ReplicaError(
            f"{step}: {method} {url} failed ({type(e).__name__}: {e}); is the replica up and the URL right?"
        ) from e
    if r.status_code == 401:
        raise ReplicaError(
            f"{step}: {method} {url} answered 401: set {config.api_key_env or 'PromoteConfig.api_key_env'}"
            " to the replica's API key"
        )
    return r


def load_adapter(base_url: str, served_name: str, lora_path: str, config: PromoteConfig) -> None:
    """Load (or swap in place) `lora_path` under `served_name` on one replica."""
    r = _call(
        "POST",
        f"{base_url.rstrip('/')}/v1/load_lora_adapter",
        config,
        "load",
        json={"lora_name": served_name, "lora_path": lora_path, "load_inplace": True},
    )
    if r.status_code != 200:
        hint = (
            (
                "the replica cannot read that path: check that the model store is mounted there "
                "(PromoteConfig.replica_store) and the version was stored"
            )
            if r.status_code in (400, 404, 500)
            else "check the replica's log"
        )
        raise ReplicaError(
            f"load: {base_url} refused adapter {lora_path!r} as {served_name!r} "
            f"(HTTP {r.status_code}: {r.text[:300]}); {hint}"
        )


def unload_adapter(base_url: str, served_name: str, config: PromoteConfig) -> None:
    r = _call(
        "POST",
        f"{base_url.rstrip('/')}/v1/unload_lora_adapter",
        config,
        "unload",
        json={"lora_name": served_name},
    )
    if r.status_code not in (200, 404):
        raise ReplicaError(
            f"unload: {base_url} could not unload {served_name!r} (HTTP {r.status_code}: {r.text[:300]})"
        )


def served_adapters(base_url: str, config: PromoteConfig) -> dict[str, str]:
    """Adapter name -> path (vLLM's `root`) as /v1/models lists them."""
    r = _call("GET", f"{base_url.rstrip('/')}/v1/models", config, "models")
    if r.status_code != 200:
        raise ReplicaError(f"models: GET {base_url}/v1/models answered HTTP {r.status_code}: {r.text[:300]}")
    return {m["id"]: m.get("root", "") for m in r.json()["data"] if m.get("parent")}


def _chat(
    base_url: str, model: str, request: SmokeRequest, config: PromoteConfig, step: str
) -> tuple[dict, float]:
    """(the reply's message, seconds) for one smoke request."""
    t0 = time.perf_counter()
    r = _call(
        "POST",
        f"{base_url.rstrip('/')}/v1/chat/completions",
        config,
        step,
        json=request.body(model, config.smoke_max_tokens, config.smoke_tool_max_tokens),
    )
    dt = time.perf_counter() - t0
    if r.status_code != 200:
        hint = (
            "; a tool request needs the server started with --enable-auto-tool-choice --tool-call-parser"
            if request.tools and r.status_code == 400
            else ""
        )
        raise ReplicaError(
            f"{step}: {base_url} answered HTTP {r.status_code} for a {request.kind} request as {model!r}: "
            f"{r.text[:300]}{hint}"
        )
    return r.json()["choices"][0]["message"], dt


def baseline_latency(
    base_url: str, model: str, requests_: list[SmokeRequest], config: PromoteConfig
) -> list[float]:
    """The replica's latency on the smoke requests before the swap, as `model` (what it serves now)."""
    return [_chat(base_url, model, r, config, "baseline")[1] for r in requests_]


def smoke_test(
    base_url: str,
    served_name: str,
    requests_: list[SmokeRequest],
    config: PromoteConfig,
    budgets_s: list[float] | None = None,
    replies: list[str] | None = None,
) -> list[float]:
    """Each request answers 200 with a reply that passes serving.smoke.reply_problem (text, or well-formed calls
    to offered tools) within its budget (default: the absolute ceiling); returns the latencies and appends
    each reply's summary (no content) to `replies`."""
    budgets_s = budgets_s or [config.latency_budget_s] * len(requests_)
    latencies = []
    for request, budget in zip(requests_, budgets_s, strict=True):
        message, dt = _chat(base_url, served_name, request, config, "smoke")
        problem = reply_problem(message, request)
        if problem:
            raise ReplicaError(
                f"smoke: {base_url} answered {problem} as {served_name!r} to the {request.kind} request "
                f"{request.label()!r}"
            )
        if dt > budget:
            raise ReplicaError(
                f"smoke: {base_url} took {dt:.1f}s as {served_name!r} on the {request.kind} request (budget "
                f"{budget:.1f}s: {config.latency_multiple:g}x its own latency before the swap, within "
                f"[{config.latency_floor_s:g}s, {config.latency_budget_s:g}s] of PromoteConfig)"
            )
        latencies.append(dt)
        if replies is not None:
            replies.append(f"{request.kind}: {reply_summary(message)}")
    return latencies


def swap_everywhere(
    served_name: str, new_path: str, old_path: str, smoke: list[SmokeRequest], config: PromoteConfig
) -> tuple[bool, list[ReplicaOutcome]]:
    """Load new_path on every replica, verify, smoke-test; on any failure put every touched replica back.

    Each replica is put back on what its own /v1/models said it served before the swap (old_path when it
    served nothing readable), or the name is unloaded when it served nothing: a replica that drifted is
    restored to its own state, not to what the registry believes."""
    outcomes = [ReplicaOutcome(url) for url in config.replica_urls]
    failed = None
    for o in outcomes:
        try:
            o.step = "read"
            o.before = served_adapters(o.url, config).get(served_name, "")
            o.step = "baseline"
            if o.before:  # like for like: the adapter it serves under the name now, on the same prompts
                o.baseline_latency_s = baseline_latency(o.url, served_name, smoke, config)
                o.smoke_budget_s = smoke_budgets(o.baseline_latency_s, config)
            else:  # a first promotion: nothing comparable (on CPU a LoRA request costs several base ones)
                o.smoke_budget_s = [config.latency_budget_s] * len(smoke)
            o.step = "load"
            t0 = time.perf_counter()
            load_adapter(o.url, served_name, new_path, config)
            o.load_s = time.perf_counter() - t0
            o.step = "models"
            listed = served_adapters(o.url, config)
            if listed.get(served_name) != new_path:
                raise ReplicaError(
                    f"models: {o.url}/v1/models lists {served_name!r} at {listed.get(served_name)!r}, "
                    f"expected {new_path!r}"
                )
            # vLLM prepares a newly loaded adapter on its first request; that one is not what clients will see
            o.step = "warmup"
            _chat(o.url, served_name, smoke[0], config, "warmup")
            o.step = "smoke"
            o.smoke_latency_s = smoke_test(
                o.url, served_name, smoke, config, o.smoke_budget_s, o.smoke_replies
            )
            o.ok, o.step = True, ""
        except ReplicaError as e:
            o.error = str(e)
            failed = o
            break
    if failed is None:
        return True, outcomes
    log.error(
        "replica %s failed at %s: %s; restoring every replica it touched",
        failed.url,
        failed.step,
        failed.error,
    )
    for o in outcomes:
        if o is failed and o.step in ("read", "baseline", "load"):
            o.restored = "unchanged"  # unreachable, or vLLM refused the load: nothing was swapped there
            continue
        if not (o.ok or o is failed):
            o.restored = "untouched"
            continue
        target = o.before or old_path
        try:
            if target:
                load_adapter(o.url, served_name, target, config)
                o.restored = "previous"
            else:
                unload_adapter(o.url, served_name, config)
                o.restored = "unloaded"
        except ReplicaError as e:
            o.restored = f"FAILED: {e}"  # this replica is down or broken now: a person must look (the error says which)
    return False, outcomes


# --- promote / rollback ------------------------------------------------------------------------


def _version_store_path(
    name: str, version: str, config: PromoteConfig, tmp: Path
) -> tuple[str, list[SmokeRequest]]:
    """Store the version's adapter (if not yet there); its path as the replicas see it, and its smoke requests
    (serving/smoke.py)."""
    model_dir = download_version(name, version, tmp / f"v{version}", config.tracking_uri)
    url = store_adapter(version_artifact(model_dir, ADAPTER_ARTIFACT), config.store, name, version)
    eval_set = EvalSet.load(version_artifact(model_dir, EVAL_SET_ARTIFACT))
    smoke = eval_set_requests(
        eval_set,
        0 if config.smoke_prompts else config.smoke_count,
        config.smoke_tool_count,
        config.smoke_max_prompt_chars,
    )
    if (
        config.smoke_prompts
    ):  # the given user messages replace the held-out conversations, not the tool questions
        smoke = [SmokeRequest([{"role": "user", "content": p}]) for p in config.smoke_prompts] + smoke
    if not smoke:
        raise ValueError(
            f"{name} v{version}: no smoke prompts (its eval set has no held-out prompts); set "
            "PromoteConfig.smoke_prompts"
        )
    return replica_path(url, config), smoke


def promote(model_name: str, version: str | int, config: PromoteConfig | None = None) -> PromotionResult:
    """Serve `version` under the model's name on every replica, then move the aliases. See the module doc."""
    config = config or PromoteConfig()
    version = str(version)
    mv = get_version(model_name, version, config.tracking_uri)
    if config.require_gate and mv.tags.get(TAG_DECISION) != "promote":
        raise RegistryError(
            f"{model_name} v{version} has {TAG_DECISION}={mv.tags.get(TAG_DECISION, '(not gated)')!r}: "
            "run the gate (`agentloop gate`) first, or promote with --force / require_gate=False"
        )
    champion = alias_version(model_name, "champion", config.tracking_uri)
    if champion is not None and champion.version == version:
        raise RegistryError(f"{model_name} v{version} is already @champion")
    return _move(model_name, version, champion.version if champion else "", config, action="promote")


def rollback(model_name: str, config: PromoteConfig | None = None) -> PromotionResult:
    """Serve @previous again on every replica (same checks as promote); @champion <- previous."""
    config = config or PromoteConfig()
    previous = alias_version(model_name, "previous", config.tracking_uri)
    champion = alias_version(model_name, "champion", config.tracking_uri)
    if previous is None:
        raise RegistryError(
            f"{model_name} has no @previous version to roll back to (the first champion, or a rollback "
            "already happened); promote a known-good version explicitly: agentloop promote "
            f"{model_name} VERSION --force"
        )
    return _move(
        model_name, previous.version, champion.version if champion else "", config, action="rollback"
    )


def _move(name: str, version: str, current: str, config: PromoteConfig, action: str) -> PromotionResult:
    c = client(config.tracking_uri)
    with tempfile.TemporaryDirectory(prefix=f"agentloop-{action}-") as tmp:
        new_path, smoke = _version_store_path(name, version, config, Path(tmp))
        old_path = _version_store_path(name, current, config, Path(tmp))[0] if current else ""
    ok, outcomes = swap_everywhere(name, new_path, old_path, smoke, config)
    result = PromotionResult(name, name, version, current, new_path, ok, outcomes, action)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if not ok:
        bad = next(o for o in outcomes if o.error)
        c.set_model_version_tag(name, version, TAG_STATUS, f"{action}_failed")
        c.set_model_version_tag(name, version, f"agentloop.{action}.error", f"{now} {bad.error}"[:4900])
        stuck = [o.url for o in outcomes if o.restored.startswith("FAILED")]
        raise PromotionError(
            f"{action} of {name} v{version} failed on {bad.url} at step {bad.step}: {bad.error}. Every replica it "
            f"reached was put back on what it served before ({'v' + current if current else 'no adapter'}); "
            "aliases unchanged."
            + (f" Could not restore {stuck}: check those replicas by hand." if stuck else ""),
            result,
        )
    if action == "promote":
        if current:
            c.set_registered_model_alias(name, "previous", current)
        c.set_registered_model_alias(name, "champion", version)
        mv = c.get_model_version(name, version)
        if "challenger" in (mv.aliases or []):
            c.delete_registered_model_alias(name, "challenger")
    else:
        c.set_registered_model_alias(name, "champion", version)
        c.delete_registered_model_alias(name, "previous")
        if current:
            c.set_model_version_tag(name, current, TAG_STATUS, "rolled_back")
            c.set_model_version_tag(name, current, "agentloop.rolled_back_at", now)
    c.set_model_version_tag(name, version, TAG_STATUS, "serving")
    c.set_model_version_tag(name, version, f"agentloop.{action}d_at", now)
    c.set_model_version_tag(name, version, "agentloop.served_name", name)
    c.set_model_version_tag(name, version, "agentloop.store_path", new_path)
    result.manifest_path, result.k8s_files = _write_manifests(name, version, new_path, config)
    log.info(
        "%s: %s v%s serving on %d replica(s) (was %s)",
        action,
        name,
        version,
        len(outcomes),
        current or "none",
    )
    return result


def _write_manifests(name: str, version: str, path: str, config: PromoteConfig) -> tuple[str, list[str]]:
    manifest_path = config.manifest_path or (
        str(Path(config.store) / "serving-manifest.json") if "://" not in config.store else ""
    )
    if not manifest_path:
        return "", []
    manifest = update_serving_manifest(manifest_path, name, version, path)
    render = RenderConfig(**json.loads(config.render_json)) if config.render_json else RenderConfig()
    files = render_to_dir(manifest, render, config.k8s_dir) if config.k8s_dir else []
    return manifest_path, [str(f) for f in files]


__all__ = [
    "PromoteConfig",
    "PromotionResult",
    "ReplicaOutcome",
    "PromotionError",
    "ReplicaError",
    "promote",
    "rollback",
    "store_adapter",
    "dir_sha256",
    "replica_path",
    "load_adapter",
    "unload_adapter",
    "served_adapters",
    "smoke_test",
    "smoke_budgets",
    "bounded_conversation",
    "swap_everywhere",
    "default_store",
]
