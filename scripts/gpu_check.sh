#!/usr/bin/env bash
# GPU readiness in one run, sized for about 8 minutes on one GPU; CI dry-runs it on CPU (--device cpu --quick).
#
#   scripts/gpu_check.sh [--device cuda|cpu] [--quick] [--wheels DIR] [--output-path DIR]
#
# 1. transformers as pyproject.toml requires: used as is when the Python in use has it (.venv/bin/python, else python3, or $PYTHON);
#    otherwise installed without network from a folder of wheels (--wheels, $OPRM_WHEELS or ./wheels, made by
#    scripts/fetch_wheels.sh; its SOURCE.txt, printed here, says where it comes from).
# 2. The exactness suite on the device in fp32 (tests/test_exactness.py with OPRM_TEST_DEVICE, the scan tests of
#    tests/test_mamba_scan.py) and the bf16 sanity test.
# 3. oprm bench on the device at 32K and 128K tokens: falcon-mamba-7b-2l (Falcon-Mamba-7B's widths, 2 layers,
#    random weights) with mamba_ssm's kernel when it is installed and with the PyTorch scan, peak memory included;
#    then tiny Mamba, Mamba2 and Zamba2 (timing only).
# --quick: CPU sizes (512-token inputs, tiny-falcon-mamba for falcon-mamba-7b-2l, the Mamba tests only, no memory
# cells: the test suite covers those), about 30 s.
# Every step has a time limit (tests 120 s, the big model 240 s, each tiny one 45 s) and none runs past the budget
# ($OPRM_GPU_CHECK_BUDGET, default 470 s): a step over its limit is reported and the run goes on. Results:
# --output-path (default gpu_check_results/), one folder per bench.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda QUICK=0 WHEELS=${OPRM_WHEELS:-wheels} OUT=gpu_check_results BUDGET=${OPRM_GPU_CHECK_BUDGET:-470}
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --output-path) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error \
  PYTHONWARNINGS=ignore OPRM_TEST_DEVICE="$DEVICE" TQDM_DISABLE=1
[ "$DEVICE" = cpu ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
START=$SECONDS FAILED=()
step() { echo; echo "== [$((SECONDS - START))s] $*"; }
left() { echo $((BUDGET - (SECONDS - START))); }
# run "name" limit cmd...: the command in its own process group under a time limit (never past the budget); on
# timeout the whole group goes (bench cells are child processes), and failures are noted, not fatal
run() {
  local name=$1 limit=$2; shift 2
  local t; t=$(left); [ "$t" -lt "$limit" ] && limit=$t
  if [ "$limit" -le 5 ]; then echo "skipped: $name (budget spent)"; FAILED+=("$name: skipped"); return; fi
  local began=$SECONDS rc=0
  setsid "$@" &
  local pid=$!
  ( sleep "$limit"; kill -TERM -- "-$pid" 2>/dev/null; sleep 5; kill -KILL -- "-$pid" 2>/dev/null ) &
  local watchdog=$!
  wait "$pid" || rc=$?
  kill "$watchdog" 2>/dev/null || true
  if [ $rc -ne 0 ] && [ $((SECONDS - began)) -ge "$limit" ]; then FAILED+=("$name: over its ${limit}s")
  elif [ $rc -ne 0 ]; then FAILED+=("$name: exit $rc"); fi
}

step "environment"
"$PY" - <<'PY'
import platform, sys, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"python {platform.python_version()} ({sys.executable}), torch {torch.__version__}, GPU {gpu}")
PY
if [ "$DEVICE" != cpu ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: --device $DEVICE but torch sees no GPU here" >&2; exit 2
fi
# the transformers oprm requires (pyproject.toml's range, e.g. ">=5.24,<6"): as installed when it satisfies it
have=$("$PY" -c "import transformers; print(transformers.__version__)" 2>/dev/null || echo none)
if "$PY" - "$have" <<'PY'
import re, sys, tomllib
from packaging.specifiers import SpecifierSet
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
spec = SpecifierSet(next(re.sub(r"^transformers", "", d) for d in deps if re.match(r"transformers\b", d)))
sys.exit(0 if sys.argv[1] != "none" and sys.argv[1] in spec else 1)
PY
then
  echo "transformers $have is installed for $PY: no wheels needed"
else
  if [ ! -d "$WHEELS" ]; then
    echo "gpu_check: transformers $have here, pyproject.toml's range needed, and no wheel folder at $WHEELS" \
         "(make one with scripts/fetch_wheels.sh and carry it along)" >&2
    exit 2
  fi
  echo "transformers $have -> 5.24.0, from the wheel folder $(cd "$WHEELS" && pwd):"
  sed 's/^/    /' "$WHEELS/SOURCE.txt" 2>/dev/null || echo "    (no SOURCE.txt: its origin is unknown)"
  "$PY" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" "transformers==5.24.0"
fi
if ! "$PY" -c "import pytest" 2>/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" pytest
fi
KERNEL=$("$PY" -c "from oprm.adapters.selective_scan import kernel_available as k; print('installed' if k() else 'absent')")
echo "mamba_ssm: $KERNEL"

if [ $QUICK = 1 ]; then
  TESTS=(tests/test_exactness.py tests/test_mamba_scan.py -k "falcon_mamba or mamba2 or cuda")
  LENGTHS=512 TINY=(tiny-mamba2) BIG=tiny-falcon-mamba SIZE=(--chunk-size 256 --repeats 1 --max-new-tokens 4)
else
  TESTS=(tests/test_exactness.py tests/test_mamba_scan.py)
  LENGTHS=32768,131072 TINY=(tiny-mamba tiny-mamba2 tiny-zamba2) BIG=falcon-mamba-7b-2l SIZE=(--repeats 2)
fi
step "exactness suite on $DEVICE (fp32; bf16 sanity)"
run "exactness tests" 120 "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"

mkdir -p "$OUT"
kernels=off; [ "$KERNEL" = installed ] || [ $QUICK = 1 ] && kernels=both
step "oprm bench $BIG on $DEVICE, N=$LENGTHS, --mamba-kernels $kernels (mamba_ssm $KERNEL)"
memory=(); [ $QUICK = 1 ] && memory=(--no-memory)
run "bench $BIG" 240 "$PY" -m oprm bench --device "$DEVICE" --model "$BIG" --lengths "$LENGTHS" "${SIZE[@]}" \
  --repeats 1 --mamba-kernels "$kernels" "${memory[@]}" --output-path "$OUT/$BIG"
for model in "${TINY[@]}"; do
  step "oprm bench $model on $DEVICE, N=$LENGTHS"
  run "bench $model" 45 "$PY" -m oprm bench --device "$DEVICE" --model "$model" --lengths "$LENGTHS" "${SIZE[@]}" \
    --no-memory --output-path "$OUT/$model"
done

step "summary"
for md in "$OUT"/*/bench.md; do [ -f "$md" ] && { echo "$md"; tail -n +3 "$md" | sed -n '/^| model | N |/,$p'; }; done
echo "total $((SECONDS - START))s (budget ${BUDGET}s)"
if [ ${#FAILED[@]} -gt 0 ]; then printf 'not passed: %s\n' "${FAILED[@]}"; exit 1; fi
echo "gpu_check: all steps passed"
