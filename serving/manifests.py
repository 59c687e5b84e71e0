"""What a restarted vLLM needs to serve the current champions: the serving manifest and the Kubernetes manifests.

Runtime-loaded adapters live only in the server's memory (vllm#12174): a restarted or rescheduled pod comes
back with the base model alone. So every promotion and rollback also writes
- the serving manifest (JSON): served name -> {model, version, path}, plus when it changed;
- the vLLM Deployment rendered from deploy/vllm/vllm.yaml: `--enable-lora` and one `--lora-modules`
  entry per served name pointing at the current champion's immutable store path, the model store volume,
  a ConfigMap holding the serving manifest, and an annotation with the manifest's sha256 (the pods roll
  when a champion changes, which is a no-op for adapters already loaded in place). Flux applies them.

    manifest = update_serving_manifest(path, "agentloop-chat", "7", "/model-store/agentloop-chat/v7")
    files = render_to_dir(manifest, RenderConfig(replicas=2), "deploy/rendered")
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from features.fsutil import atomic_write_text
from training.tool_format import TOOL_CALL_PARSER, template_text

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = REPO_ROOT / "deploy" / "vllm" / "vllm.yaml"
CHAT_TEMPLATE_KEY = "chat_template.jinja"
CHAT_TEMPLATE_MOUNT = "/etc/agentloop"  # deploy/vllm/vllm.yaml mounts the ConfigMap here
MANIFEST_FORMAT = 1


# --- the serving manifest -------------------------------------------------------------------------


def read_serving_manifest(path: str | Path) -> dict:
    """{"format", "updated_at", "served": {name: {"model", "version", "path", "since"}}}; empty when absent."""
    p = Path(path)
    if not p.is_file():
        return {"format": MANIFEST_FORMAT, "updated_at": "", "served": {}}
    data = json.loads(p.read_text())
    if data.get("format") != MANIFEST_FORMAT:
        raise ValueError(
            f"serving manifest {p}: format {data.get('format')}, this code reads {MANIFEST_FORMAT}"
        )
    return data


def update_serving_manifest(
    path: str | Path, served_name: str, version: str, lora_path: str, model: str = ""
) -> dict:
    """Set what `served_name` serves (the adapter path as the replicas see it), written atomically; returns it all."""
    manifest = read_serving_manifest(path)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["served"][served_name] = {
        "model": model or served_name,
        "version": str(version),
        "path": lora_path,
        "since": now,
    }
    manifest["updated_at"] = now
    atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def manifest_sha256(manifest: dict) -> str:
    served = manifest.get("served", {})
    return hashlib.sha256(json.dumps(served, sort_keys=True).encode()).hexdigest()


# --- Kubernetes -------------------------------------------------------------------------------------


@dataclass
class RenderConfig:
    """How the cluster's vLLM Deployment looks. Simple types only."""

    name: str = "agentloop-vllm"
    namespace: str = "agentloop"
    image: str = "vllm/vllm-openai:v0.32.0"
    replicas: int = 2
    base_model: str = (
        "/models/Llama-3.1-8B-Instruct"  # --model: the base model folder (workflows/cluster.py), or a hub id
    )
    base_served_name: str = "base"  # --served-model-name of the base model itself
    base_model_claim: str = (
        "agentloop-models"  # deploy/flyte-project.yaml's PVC, mounted at /models ("" = a hub id)
    )
    store_claim: str = (
        "agentloop-model-store"  # the model store (s3://agentloop/model-store through an S3 CSI driver)
    )
    store_mount: str = "/model-store"  # where the replicas see the store (PromoteConfig.replica_store)
    api_key_secret: str = "agentloop-vllm"  # Secret with key `api-key` ("" = no API key)
    max_loras: int = 4
    max_lora_rank: int = 16
    max_model_len: int = 4096
    extra_args: list[str] = field(default_factory=list)
    resources: dict = field(
        default_factory=lambda: {
            "limits": {"nvidia.com/gpu": "1"},
            "requests": {"cpu": "4", "memory": "24Gi"},
        }
    )


def _load_template() -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all(TEMPLATE.read_text()) if d]


def render(manifest: dict, config: RenderConfig | None = None) -> list[dict]:
    """The Kubernetes objects (ConfigMap, Deployment, Services) for the current serving manifest."""
    config = config or RenderConfig()
    docs = copy.deepcopy(_load_template())
    served = manifest.get("served", {})
    labels = {"app.kubernetes.io/name": config.name, "app.kubernetes.io/part-of": "agentloop"}
    for doc in docs:
        meta = doc["metadata"]
        meta["name"] = meta["name"].replace("NAME", config.name)
        meta["namespace"] = config.namespace
        meta["labels"] = dict(labels)
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    # the one chat template (training/tool_format.py), mounted where --chat-template reads it
    cm["data"] = {
        "serving-manifest.json": json.dumps(manifest, indent=1, sort_keys=True),
        CHAT_TEMPLATE_KEY: template_text(),
    }
    dep = next(d for d in docs if d["kind"] == "Deployment")
    spec = dep["spec"]
    spec["replicas"] = int(config.replicas)
    spec["selector"]["matchLabels"] = {"app.kubernetes.io/name": config.name}
    pod = spec["template"]
    pod["metadata"]["labels"] = dict(labels)
    pod["metadata"]["annotations"] = {
        "agentloop/serving-manifest-sha256": manifest_sha256(manifest),
        "agentloop/served": ",".join(f"{n}=v{s['version']}" for n, s in sorted(served.items())),
    }
    container = pod["spec"]["containers"][0]
    container["image"] = config.image
    args = [
        "--model",
        config.base_model,
        "--served-model-name",
        config.base_served_name,
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--max-model-len",
        str(config.max_model_len),
        "--enable-lora",
        "--max-loras",
        str(max(config.max_loras, len(served))),
        "--max-lora-rank",
        str(config.max_lora_rank),
        "--chat-template",
        f"{CHAT_TEMPLATE_MOUNT}/{CHAT_TEMPLATE_KEY}",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        TOOL_CALL_PARSER,
    ]
    if served:
        args.append("--lora-modules")
        args += [
            json.dumps(
                {"name": n, "path": s["path"], "base_model_name": config.base_served_name}, sort_keys=True
            )
            for n, s in sorted(served.items())
        ]
    container["args"] = args + list(config.extra_args)
    if not config.api_key_secret:
        container["env"] = [e for e in container["env"] if e["name"] != "VLLM_API_KEY"]
    else:
        for e in container["env"]:
            if e["name"] == "VLLM_API_KEY":
                e["valueFrom"]["secretKeyRef"]["name"] = config.api_key_secret
    container["resources"] = copy.deepcopy(config.resources)
    volumes = pod["spec"]["volumes"]
    for v in volumes:
        if v["name"] == "model-store":
            v["persistentVolumeClaim"]["claimName"] = config.store_claim
        if v["name"] == "base-model":
            v["persistentVolumeClaim"]["claimName"] = config.base_model_claim
        if v["name"] == "chat-template":
            v["configMap"]["name"] = cm["metadata"]["name"]
    for m in container["volumeMounts"]:
        if m["name"] == "model-store":
            m["mountPath"] = config.store_mount
    if not config.base_model_claim:
        pod["spec"]["volumes"] = [v for v in volumes if v["name"] != "base-model"]
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "base-model"]
    for d in docs:
        if d["kind"] == "Service":
            d["spec"]["selector"] = {"app.kubernetes.io/name": config.name}
    return docs


def render_to_dir(manifest: dict, config: RenderConfig | None, out_dir: str | Path) -> list[Path]:
    """Write one YAML file per object (<kind>-<name>.yaml) into out_dir, atomically per file."""
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for doc in render(manifest, config):
        path = out / f"{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"
        text = "# rendered by serving/manifests.py from deploy/vllm/vllm.yaml; do not edit by hand\n"
        atomic_write_text(path, text + yaml.safe_dump(doc, sort_keys=False))
        written.append(path)
    return written


__all__ = [
    "RenderConfig",
    "read_serving_manifest",
    "update_serving_manifest",
    "manifest_sha256",
    "render",
    "render_to_dir",
    "TEMPLATE",
]
