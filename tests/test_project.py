"""Packaging facts the rest of the project relies on: pinned deps, cluster config, layout rules."""

import ast
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_every_dependency_is_pinned_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    loose = [d for d in deps if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+]+", d)]
    assert not loose, f"unpinned dependencies: {loose}"


def test_constraints_pin_what_pyproject_pins():
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)
    pins = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        name, version = dep.split("==")
        assert pins.get(name.lower()) == version, (
            f"{name}: pyproject {version} vs constraints {pins.get(name.lower())}"
        )


def test_flyte_config_points_at_the_forge_cluster_and_minio():
    cfg = yaml.safe_load((ROOT / "flyte.config.yaml").read_text())
    assert cfg["admin"]["endpoint"] == "dns:///flyte.flyte.svc.forge.remote:81"
    assert cfg["storage"]["type"] == "minio"
    assert "secret-key" not in cfg["storage"]["connection"], "secrets come from the environment"
    from flytekit.configuration import Config

    platform = Config.auto(str(ROOT / "flyte.config.yaml")).platform
    assert platform.endpoint == "flyte.flyte.svc.forge.remote:81"


def test_stage_imports_run_one_way():
    """features <- training <- serving <- workflows: no stage imports a later one."""
    order = ["features", "training", "serving", "workflows"]
    for i, stage in enumerate(order):
        later = set(order[i + 1 :])
        for path in (ROOT / stage).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                bad = [n for n in names if n.split(".")[0] in later]
                assert not bad, f"{path.relative_to(ROOT)} imports {bad}: stages import only earlier stages"
