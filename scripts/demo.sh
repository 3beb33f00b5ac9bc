#!/usr/bin/env bash
# Set up (if needed) and run the offline demo on the model that ships with oprm. Extra arguments go to `oprm demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/oprm demo "$@"
