#!/usr/bin/env bash
# Refresh requirements/lock-cpu.txt, the exact versions `scripts/setup.sh` installs (CPU path), from
# pyproject.toml. Run after changing a dependency in pyproject.toml, then run the tests and commit both
# (tests/test_install.py fails while the two disagree). requirements/constraints.txt pins torch to its
# CPU build (resolved from the local wheel folder when there is one, /opt/wheels on this project's
# machines, else from PyTorch's CPU index) and puts floors where the resolver would backtrack to relics.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
if ! command -v uv >/dev/null || [[ "$(uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]]; then
  python -m pip install -q "uv==$UV_VERSION"
fi
SOURCES=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
if [[ -d /opt/wheels ]]; then SOURCES=(--find-links /opt/wheels); fi
uv pip compile pyproject.toml --extra all --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  -c requirements/constraints.txt "${SOURCES[@]}" --no-header -o requirements/lock-cpu.txt.tmp --quiet
{ echo "# Exact versions for the CPU install path (scripts/setup.sh), compiled from pyproject.toml [all] for"
  echo "# Python 3.11 on x86_64 Linux. Refresh: bash scripts/lock.sh (uv $UV_VERSION). Do not edit by hand."
  cat requirements/lock-cpu.txt.tmp; } > requirements/lock-cpu.txt.new
rm requirements/lock-cpu.txt.tmp
mv requirements/lock-cpu.txt.new requirements/lock-cpu.txt
echo "requirements/lock-cpu.txt: $(grep -c '==' requirements/lock-cpu.txt) pins"
