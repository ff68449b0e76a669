#!/usr/bin/env bash
# Builds .venv/ from nothing (pinned requirements, audiocraft --no-deps) and the demo checkpoint.
# Safe to re-run: an existing venv is updated in place and the demo is rebuilt only when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
started=$(date +%s)
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
# The same locks `cog build` installs (requirements.txt) plus the test tools (requirements-dev.txt); see tools/lock.py.
"${pip[@]}" install -r requirements.txt -r requirements-dev.txt 2> >(grep -v "is ignored: it is neither" >&2)
"${pip[@]}" install --no-deps -r requirements-nodeps.txt 2> >(grep -v "is ignored: it is neither" >&2)
if [ ! -f weights/demo/state_dict.bin ]; then
  .venv/bin/python -m weights.demo
fi
echo "setup done in $(( $(date +%s) - started )) s; venv size: $(du -sh .venv | cut -f1)"
