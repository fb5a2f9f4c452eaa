#!/usr/bin/env sh
# Create .venv at the repository root and install rsa-service with the engine and dev extras into it.
# Idempotent and quick on a second run: it reinstalls only when pyproject.toml or the torch pin changed.
# TORCH names the torch to install first (default: the release the engine's CPU kernels and inductor hooks are
# checked against; empty: keep the torch the venv already sees), from TORCH_INDEX_URL if set; scripts/gpu-check.sh
# uses both for a CUDA build. .ci/run installs through this script too, so CI and a newcomer get the same torch.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.rsa-installed
want="$(cat pyproject.toml | cksum) $TORCH ${TORCH_INDEX_URL:-}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch first, pinned: the editable install below then finds its engine extra's torch already satisfied.
  if [ -z "$TORCH" ]; then
    :
  elif [ -n "${TORCH_INDEX_URL:-}" ]; then
    .venv/bin/python -m pip install --quiet "$TORCH" --index-url "$TORCH_INDEX_URL"
  else
    .venv/bin/python -m pip install --quiet "$TORCH"
  fi
  .venv/bin/python -m pip install --quiet -e '.[engine,dev]'
  printf '%s' "$want" > "$stamp"
fi
