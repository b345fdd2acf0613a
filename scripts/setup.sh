#!/usr/bin/env bash
# One-command setup on a fresh Debian machine (CPU), into the active Python (a virtual environment: see
# README). Installs the CPU build of torch first, so that nothing that depends on torch pulls a multi-GB
# CUDA build, then the exact versions of requirements/lock-cpu.txt (refresh: bash scripts/lock.sh), then
# the package itself without re-resolving, and checks the result with `pip check`.
# System packages (GPAW for the first-principles engine, Chromium for browser tests) come from apt
# when this runs as root with apt-get available; pass --no-apt to skip them.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"  # password-less sudo (a CI runner that is not root)
fi
if [[ "${1:-}" != "--no-apt" ]] && command -v apt-get >/dev/null && { [[ $(id -u) -eq 0 ]] || [[ -n "$SUDO" ]]; }; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq gpaw gpaw-data chromium >/dev/null
fi
python -m pip install -q torch==2.13.0
python -m pip install -q -r requirements/lock-cpu.txt
python -m pip install -q --no-deps -e .
python -m pip check
# caches the dashboard's first page would otherwise compute on a fresh machine (docs/app.md, cold start)
if [[ -f precomputed/explore/manifest.json ]]; then mlcm app --prepare; fi
