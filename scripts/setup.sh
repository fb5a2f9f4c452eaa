#!/usr/bin/env sh
# Create .venv at the repository root and install rsa-service with the engine and dev extras into it.
# Idempotent and quick on a second run: it reinstalls only when pyproject.toml changed.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.rsa-installed
want="$(cat pyproject.toml | cksum)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[engine,dev]'
  printf '%s' "$want" > "$stamp"
fi
