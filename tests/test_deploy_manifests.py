"""deploy/: plain Kubernetes YAML that parses, built by kustomize, with the values a user edits in values.env.

The kustomization is checked in Python (files exist, every replacement's source key is in values.env), and
the real `kustomize build` runs with kustomize or kubectl on the PATH, or the kustomize that
scripts/install-kustomize.sh puts in $AGENTLOOP_HOME/tools (.ci/run does). Without any, those tests skip
with the reason on a laptop and fail where AGENTLOOP_REQUIRE_SERVICES=1 (CI), like the services tests.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from features.home import agentloop_home
from tests.conftest import absent_or_fail

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
VALUES = DEPLOY / "values.env"


def read_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: line {line!r} is not KEY=VALUE"
            out[key] = value
    return out


def kustomizations() -> list[Path]:
    return sorted(DEPLOY.rglob("kustomization.yaml"))


def generator_files() -> set[Path]:
    """Files kustomize reads as data (ConfigMap contents, env files): not Kubernetes objects."""
    files = set()
    for k in kustomizations():
        spec = yaml.safe_load(k.read_text())
        for gen in (spec.get("configMapGenerator") or []) + (spec.get("secretGenerator") or []):
            for f in gen.get("files", []) + gen.get("envs", []):
                files.add((k.parent / f.split("=", 1)[-1]).resolve())
    return files


def manifest_files() -> list[Path]:
    data = generator_files()
    return sorted(
        p
        for p in DEPLOY.rglob("*.y*ml")
        if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml" and p.resolve() not in data
    )


def kustomize_cmd() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    installed = agentloop_home() / "tools" / "bin" / "kustomize"
    if installed.is_file():
        return [str(installed), "build"]
    return None


@pytest.fixture(scope="module")
def kustomize() -> list[str]:
    cmd = kustomize_cmd()
    if cmd is None:
        absent_or_fail(
            "neither kustomize nor kubectl on the PATH, nor $AGENTLOOP_HOME/tools/bin/kustomize: "
            "run scripts/install-kustomize.sh"
        )
    return cmd


def build(cmd: list[str], folder: Path) -> list[dict]:
    proc = subprocess.run([*cmd, str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"`{' '.join(cmd)} {folder}` failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def strings(node, skip_keys=("name", "key")):
    """Every string value in a manifest, except env-variable and ConfigMap key names."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in skip_keys and isinstance(v, str):
                continue
            yield from strings(v, skip_keys)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v, skip_keys)
    elif isinstance(node, str):
        yield node


# --- always ----------------------------------------------------------------------------------------


def test_every_manifest_parses_and_each_object_has_api_version_kind_and_name():
    files = manifest_files()
    assert files, "no manifests under deploy/"
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path.relative_to(ROOT)} holds no YAML document"
        for i, doc in enumerate(docs):
            where = f"{path.relative_to(ROOT)} document {i}"
            assert isinstance(doc, dict), f"{where} is not a mapping"
            assert doc.get("apiVersion") and doc.get("kind"), f"{where} lacks apiVersion or kind"
            assert (doc.get("metadata") or {}).get("name"), f"{where} ({doc['kind']}) has no metadata.name"


def test_every_kustomization_names_files_that_exist():
    for k in kustomizations():
        spec = yaml.safe_load(k.read_text())
        assert spec.get("kind") == "Kustomization", f"{k} is not a Kustomization"
        for res in spec.get("resources") or []:
            target = k.parent / res
            assert target.is_file() or (target / "kustomization.yaml").is_file(), (
                f"{k.relative_to(ROOT)} lists {res!r}, which is neither a file nor a folder with a kustomization.yaml"
            )
    for f in generator_files():
        assert f.is_file(), f"a configMapGenerator names {f}, which does not exist"


def test_every_value_used_by_the_kustomization_or_a_pod_is_defined_in_values_env():
    values = read_env(VALUES)
    spec = yaml.safe_load(KUSTOMIZATION.read_text())
    for r in spec.get("replacements") or []:
        src = r["source"]
        if src.get("name") == "agentloop-values":
            key = src["fieldPath"].removeprefix("data.")
            assert key in values, f"kustomization.yaml copies {key}, which deploy/values.env does not define"
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            for ref in _config_map_key_refs(doc):
                if ref.get("name") == "agentloop-values":
                    assert ref["key"] in values, (
                        f"{path.relative_to(ROOT)} reads {ref['key']} from ConfigMap "
                        "agentloop-values; add it to deploy/values.env"
                    )


def _config_map_key_refs(node):
    if isinstance(node, dict):
        if "configMapKeyRef" in node:
            yield node["configMapKeyRef"]
        for v in node.values():
            yield from _config_map_key_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _config_map_key_refs(v)


def test_values_env_holds_no_secret():
    for key in read_env(VALUES):
        assert not any(w in key for w in ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY")), (
            f"deploy/values.env defines {key}: secrets belong in the Secret agentloop-credentials"
        )


def test_launch_plan_defaults_point_at_the_services_deploy_creates():
    from workflows.cluster import CLUSTER, NAMESPACE

    v = read_env(VALUES)
    expected = {
        "NAMESPACE": (NAMESPACE, v["NAMESPACE"]),
        "MLFLOW_TRACKING_URI": (CLUSTER.mlflow, v["MLFLOW_TRACKING_URI"]),
        "AWS_ENDPOINT_URL": (CLUSTER.s3_endpoint, v["AWS_ENDPOINT_URL"]),
        "AGENTLOOP_OFFLINE_STORE": (CLUSTER.store, v["AGENTLOOP_OFFLINE_STORE"]),
        "FEAST_REDIS_CONNECTION_STRING": (CLUSTER.redis, v["FEAST_REDIS_CONNECTION_STRING"]),
        "S3_BUCKET": (CLUSTER.bucket, v["S3_BUCKET"]),
        "POSTGRES_HOST/POSTGRES_USER/OPTUNA_DB": (
            CLUSTER.optuna_storage,
            f"postgresql://{v['POSTGRES_USER']}@{v['POSTGRES_HOST']}:5432/{v['OPTUNA_DB']}",
        ),
    }
    for key, (in_code, in_values) in expected.items():
        assert in_code == in_values, (
            f"workflows/cluster.py says {in_code!r} where deploy/values.env ({key}) says "
            f"{in_values!r}: make them agree"
        )
    assert v["MLFLOW_BACKEND_STORE_URI"].endswith(f"@{v['POSTGRES_HOST']}:5432/{v['MLFLOW_DB']}")
    assert v["MLFLOW_ARTIFACTS_DESTINATION"].startswith(f"s3://{v['S3_BUCKET']}/")
    assert v["FEAST_S3_ENDPOINT_URL"] == v["MLFLOW_S3_ENDPOINT_URL"] == v["AWS_ENDPOINT_URL"]


def test_feast_server_reads_the_repositorys_cluster_feature_store_yaml():
    assert (DEPLOY / "feast" / "feature_store.yaml").read_text() == (
        ROOT / "features" / "repo" / "cluster" / "feature_store.yaml"
    ).read_text(), (
        "deploy/feast/feature_store.yaml differs from features/repo/cluster/feature_store.yaml: copy it over"
    )


# --- kustomize build ----------------------------------------------------------------------------------


def test_kustomize_build_leaves_no_placeholder_and_puts_everything_in_the_two_namespaces(kustomize):
    values = read_env(VALUES)
    objects = build(kustomize, DEPLOY)
    kinds = {
        (
            o["kind"],
            o["metadata"]["name"].rsplit("-", 1)[0] if o["kind"] == "ConfigMap" else o["metadata"]["name"],
        )
        for o in objects
    }
    for needed in [
        ("Deployment", "mlflow"),
        ("StatefulSet", "postgres"),
        ("StatefulSet", "minio"),
        ("Deployment", "redis"),
        ("Deployment", "feast"),
        ("PodTemplate", "agentloop-task-defaults"),
    ]:
        assert needed in kinds, f"kustomize build has no {needed[0]} {needed[1]}"
    for o in objects:
        where = f"{o['kind']} {o['metadata']['name']}"
        leftovers = [s for s in strings(o) if s in values]
        assert not leftovers, f"{where} still holds the placeholder(s) {leftovers}: add a replacement"
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") in (
                values["NAMESPACE"],
                values["FLYTE_PROJECT_NAMESPACE"],
            ), f"{where} is in namespace {o['metadata'].get('namespace')!r}"
    mlflow = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == values["AGENTLOOP_CPU_IMAGE"]
    assert "--serve-artifacts" in container["command"]
    env = {e["name"] for e in container["env"]}
    assert {
        "MLFLOW_BACKEND_STORE_URI",
        "MLFLOW_ARTIFACTS_DESTINATION",
        "PGPASSWORD",
        "AWS_SECRET_ACCESS_KEY",
    } <= env


def test_a_value_edited_in_values_env_reaches_every_manifest_that_uses_it(kustomize, tmp_path):
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    values = (copy / "values.env").read_text()
    for old, new in [
        ("NAMESPACE=agentloop\n", "NAMESPACE=agents-prod\n"),
        ("POSTGRES_IMAGE=postgres:16.6", "POSTGRES_IMAGE=postgres:17.2"),
        ("MINIO_STORAGE=200Gi", "MINIO_STORAGE=1Ti"),
        ("FLYTE_PROJECT_NAMESPACE=agentloop-development", "FLYTE_PROJECT_NAMESPACE=agentloop-production"),
    ]:
        assert old in values, f"deploy/values.env no longer has {old.strip()!r}; update this test"
        values = values.replace(old, new)
    (copy / "values.env").write_text(values)
    objects = build(kustomize, copy)
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    assert ("Namespace", "agents-prod") in by_name
    assert {o["metadata"]["namespace"] for o in objects if o["kind"] not in ("Namespace",)} == {
        "agents-prod",
        "agentloop-production",
    }
    postgres = by_name[("StatefulSet", "postgres")]
    assert postgres["spec"]["template"]["spec"]["containers"][0]["image"] == "postgres:17.2"
    minio = by_name[("StatefulSet", "minio")]
    assert minio["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Ti"
    assert (
        by_name[("PodTemplate", "agentloop-task-defaults")]["metadata"]["namespace"] == "agentloop-production"
    )


def test_the_rendered_vllm_deployment_serves_tool_calls_with_agentloops_template():
    from serving.manifests import CHAT_TEMPLATE_KEY, CHAT_TEMPLATE_MOUNT, render
    from training.tool_format import TOOL_CALL_PARSER, template_text

    docs = render({"served": {}})
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert cm["data"][CHAT_TEMPLATE_KEY] == template_text()
    assert args[args.index("--chat-template") + 1] == f"{CHAT_TEMPLATE_MOUNT}/{CHAT_TEMPLATE_KEY}"
    assert (
        "--enable-auto-tool-choice" in args and args[args.index("--tool-call-parser") + 1] == TOOL_CALL_PARSER
    )
    [volume] = [v for v in pod["volumes"] if v["name"] == "chat-template"]
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["chat-template"] == CHAT_TEMPLATE_MOUNT
