#!/usr/bin/env bash
# Fill a folder with the wheels scripts/gpu_check.sh installs on a GPU machine without network: transformers 5.24.0
# and pytest with their dependencies, for this machine's Python and (binary ones) for 3.10 and 3.12 too; numpy and
# torch are left out (a machine with torch has them). The folder's SOURCE.txt says where and when it was made.
#
#   scripts/fetch_wheels.sh [DIR]          # default ./wheels (git-ignored; carry it to the GPU machine)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-wheels}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
mkdir -p "$DIR"
want=("transformers==5.24.0" pytest)
"$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: -d "$DIR" "${want[@]}" 2>&1 \
  | { grep -v "is ignored" || true; }
for v in 3.10 3.12; do  # compiled dependencies for other Pythons the GPU machine may run (best effort)
  "$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: --no-deps --python-version "$v" \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d "$DIR" regex pyyaml pydantic-core \
    >/dev/null 2>&1 || echo "note: no binary wheels of regex/pyyaml/pydantic-core for Python $v"
done
rm -f "$DIR"/numpy-*.whl "$DIR"/torch-*.whl
{
  echo "pip download of ${want[*]} (and their dependencies) by scripts/fetch_wheels.sh"
  echo "made on $(hostname) at $(date -u +%Y-%m-%dT%H:%MZ) with $("$PY" --version 2>&1), $("$PY" -m pip --version | cut -d' ' -f1-2)"
  echo "indexes: $("$PY" -m pip config list 2>/dev/null | grep -E 'index-url|find-links' | tr '\n' ' ' || true)"
} > "$DIR/SOURCE.txt"
echo "$(ls "$DIR"/*.whl | wc -l) wheels, $(du -sh "$DIR" | cut -f1) in $DIR"
