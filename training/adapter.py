"""A trained adapter's folder: PEFT weights, the tokenizer, and the lineage file the registry reads.

Torch-free, so serving/registry.py imports it at module level.
"""

from __future__ import annotations

import json
from pathlib import Path

from features.fsutil import atomic_dir

LINEAGE_FILE = "agentloop-adapter.json"


def save_adapter(model, tokenizer, adapter_dir: Path, lineage: dict) -> None:
    """Adapter (PEFT format) + tokenizer + lineage, renamed into place whole."""
    with atomic_dir(adapter_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / LINEAGE_FILE).write_text(json.dumps(lineage, indent=1, default=str))


def read_lineage(adapter_dir: str | Path) -> dict:
    """The lineage a trainer wrote beside the adapter ({} when the folder has none: an adapter from elsewhere)."""
    path = Path(adapter_dir) / LINEAGE_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text())
