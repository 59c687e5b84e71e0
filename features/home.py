"""Where agentloop keeps models, data, stores and local servers: $AGENTLOOP_HOME, else ~/.cache/agentloop."""

from __future__ import annotations

import os
from pathlib import Path


def agentloop_home() -> Path:
    """$AGENTLOOP_HOME (an empty value counts as unset) or ~/.cache/agentloop; never inside the repo."""
    return Path(os.environ.get("AGENTLOOP_HOME") or Path.home() / ".cache" / "agentloop").expanduser()
