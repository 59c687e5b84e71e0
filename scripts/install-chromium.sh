#!/usr/bin/env bash
# Debian's chromium for the browser tests of the MLflow UI (tests/test_gate.py, tests/test_monitor.py):
# they open the model version page and the drift run headless (--dump-dom, --screenshot). Idempotent;
# .ci/run calls it so that CI runs those tests instead of skipping them.
set -euo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  echo "chromium: $(command -v chromium || command -v chromium-browser)"; exit 0
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null
}
chromium --version
