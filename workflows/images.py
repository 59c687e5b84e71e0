"""Container images of the tasks on the cluster: one for CPU work, one with CUDA for training.

Both are flytekit ImageSpecs built from this repository's full lock (constraints.txt: every package
at the version the tests passed with) on Python 3.11. They differ only in torch's build:
- CPU_IMAGE  torch from PyTorch's CPU index (no CUDA libraries: ~1 GB smaller); ingestion, Feast,
             dataset building, promotion, drift.
- TRAIN_IMAGE torch from PyPI, whose Linux wheels bundle CUDA, cuDNN and NCCL (flytekit's own advice:
             no CUDA base image is needed for a PyPI GPU library); the sweep, the Elastic 2×A100
             final training and the evaluation.

The code itself travels with registration (`pyflyte register` copies the loaded modules, fast
registration), so an image is rebuilt only when the lock changes: its tag is a hash of the spec and
of constraints.txt. `pyflyte register` (and `package`) builds and pushes whichever tag the registry
lacks, with Docker and buildx; where Docker cannot be reached flytekit assumes the tag exists. A local
`pyflyte run` never builds.

Registry: workflows/cluster.py (AGENTLOOP_IMAGE_REGISTRY overrides it).
"""

from __future__ import annotations

from pathlib import Path

from flytekit import ImageSpec

from workflows.cluster import image_registry

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK = REPO_ROOT / "constraints.txt"
PYTHON_VERSION = "3.11"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PYPI = "https://pypi.org/simple"

_COMMON_ENV = {
    "PYTHONUNBUFFERED": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}

CPU_IMAGE = ImageSpec(
    name="agentloop-cpu",
    registry=image_registry(),
    python_version=PYTHON_VERSION,
    requirements=str(LOCK),
    # torch==2.13.0 in the lock resolves to 2.13.0+cpu from this index; everything else from PyPI
    pip_index=TORCH_CPU_INDEX,
    pip_extra_index_url=[PYPI],
    env=dict(_COMMON_ENV),
)

TRAIN_IMAGE = ImageSpec(
    name="agentloop-train-cuda",
    registry=image_registry(),
    python_version=PYTHON_VERSION,
    requirements=str(LOCK),
    pip_index=PYPI,
    # what the NVIDIA container runtime exposes to the pod; NCCL says why when a collective fails
    env={**_COMMON_ENV, "NVIDIA_DRIVER_CAPABILITIES": "compute,utility", "NCCL_DEBUG": "WARN"},
)


if __name__ == "__main__":  # the names `pyflyte register` pushes (deploy/values.env: AGENTLOOP_CPU_IMAGE)
    print(f"cpu:  {CPU_IMAGE.image_name()}\ncuda: {TRAIN_IMAGE.image_name()}")
