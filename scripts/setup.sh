#!/usr/bin/env bash
# Builds the two virtual environments CRUX needs, idempotently:
#   .venv     the app: torch (the local CPU build, installed FIRST so nothing pulls a CUDA build),
#             then crux with its app, edge and dev extras;
#   .venv-ls  the Label Studio server, alone: it pins packages that break prefect.
# A stamp of the inputs makes a second run a no-op (about a second).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${CRUX_TORCH_SPEC:-torch==2.13.0}
LS_SPEC=${CRUX_LS_SPEC:-label-studio>=1.23,<1.24}
LOG=.crux/setup.log
mkdir -p .crux
export PIP_DISABLE_PIP_VERSION_CHECK=1

pip_quiet() {  # pip's output goes to the log; on failure show its tail
  if ! "$@" >>"$LOG" 2>&1; then
    echo "setup: '$*' failed; last lines of $LOG:" >&2
    grep -v "^WARNING: Location" "$LOG" | tail -n 30 >&2
    exit 1
  fi
}

app_stamp=$( (cat pyproject.toml scripts/setup.sh; echo "$TORCH_SPEC"; "$PYTHON" --version) | sha256sum | cut -c1-16)
if [[ -f .venv/.crux-stamp && "$(cat .venv/.crux-stamp)" == "$app_stamp" ]]; then
  echo "setup: app environment .venv is up to date"
else
  echo "setup: building the app environment .venv (a few minutes the first time)"
  [[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
  pip_quiet .venv/bin/python -m pip install -q --upgrade pip
  pip_quiet .venv/bin/python -m pip install -q "$TORCH_SPEC"
  pip_quiet .venv/bin/python -m pip install -q -e ".[app,edge,dev,postgres]"
  echo "$app_stamp" > .venv/.crux-stamp
fi

ls_stamp=$( (echo "$LS_SPEC"; "$PYTHON" --version) | sha256sum | cut -c1-16)
if [[ -f .venv-ls/.crux-stamp && "$(cat .venv-ls/.crux-stamp)" == "$ls_stamp" ]]; then
  echo "setup: Label Studio environment .venv-ls is up to date"
else
  echo "setup: building the Label Studio environment .venv-ls (a few minutes the first time)"
  [[ -x .venv-ls/bin/python ]] || "$PYTHON" -m venv .venv-ls
  pip_quiet .venv-ls/bin/python -m pip install -q --upgrade pip
  pip_quiet .venv-ls/bin/python -m pip install -q "$LS_SPEC"
  echo "$ls_stamp" > .venv-ls/.crux-stamp
fi

# Not a Python package: the browser the console's tests drive (says so and goes on when it cannot install it).
scripts/ensure-chromium.sh
