#!/usr/bin/env bash
# Idempotent install of the pinned peer scanners used by bench/scan:
#   detect-secrets (PyPI) into bench/scan/.venv, hash-pinned by requirements.lock
#   secretlint + recommended preset (npm) into bench/scan/node_modules, pinned by package-lock.json
# Re-running is cheap: each half is skipped when its lock file has not changed since the last install.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
PYTHON="${PYTHON:-python3}"

lock_sum() { sha256sum "$@" | sha256sum | cut -c1-64; }

# --- detect-secrets -----------------------------------------------------------
want="$(lock_sum requirements.lock)"
if [[ -x .venv/bin/detect-secrets && -f .venv/.lock-sha256 && "$(cat .venv/.lock-sha256)" == "$want" ]]; then
  echo "setup: detect-secrets already installed ($(.venv/bin/detect-secrets --version))"
else
  rm -rf .venv
  "$PYTHON" -m venv .venv
  # --require-hashes: every distribution must match a hash in the lock; --no-deps: the lock is complete.
  .venv/bin/pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements.lock
  echo "$want" > .venv/.lock-sha256
  echo "setup: installed detect-secrets $(.venv/bin/detect-secrets --version)"
fi

# --- secretlint ---------------------------------------------------------------
want="$(lock_sum package.json package-lock.json)"
if [[ -x node_modules/.bin/secretlint && -f node_modules/.lock-sha256 && "$(cat node_modules/.lock-sha256)" == "$want" ]]; then
  echo "setup: secretlint already installed ($(node_modules/.bin/secretlint --version))"
else
  # secretlint 13 declares engines node>=22 but runs on node 20; npm only warns.
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > node_modules/.lock-sha256
  echo "setup: installed secretlint $(node_modules/.bin/secretlint --version)"
fi
