#!/usr/bin/env bash
# The whole GPU check in one command, sized for about 8 minutes on a borrowed GPU machine
# (no internet, no TensorRT; python, torch, Triton and timm installed):
#
#     bash benchmarks/gpu_all.sh [WHEEL]
#
# 1. installs the clippy_rt wheel (WHEEL, else dist/clippy_rt-*.whl, else one built now
#    from this tree) with `pip install --no-deps --target` into a scratch folder;
# 2. runs the `gpu` tests from a copy of tests/ outside the source tree, so the installed
#    package is the one imported (the source clippy_rt/ cannot shadow it);
# 3. runs benchmarks/gpu_check.py (kernel timings) and benchmarks/gpu_pipeline.py
#    (frames -> labels, stream, tower vs timm), each under `timeout`.
# Logs, JSON and markdown land in $OUT (default: ./gpu-out); SUMMARY.md collects the
# tables and $OUT/RESULTS.md is benchmarks/RESULTS.md with both GPU sections filled in
# (copy it over benchmarks/RESULTS.md to keep them). The exit status is the first failing step's (0 when every step passed).
set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/gpu-out}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/clippy-rt-gpu.XXXXXX")"
STATUS=0

step() {  # step NAME SECONDS COMMAND...: run under timeout, log to $OUT/NAME.log
    local name="$1" limit="$2"
    shift 2
    echo "== $name (limit ${limit}s)" | tee -a "$OUT/SUMMARY.log"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - start))s" | tee -a "$OUT/SUMMARY.log"
    if [ "$rc" -ne 0 ] && [ "$STATUS" -eq 0 ]; then STATUS=$rc; fi
    return 0
}

WHEEL="${1:-}"
if [ -z "$WHEEL" ]; then
    WHEEL="$(ls -t "$REPO"/dist/clippy_rt-*.whl 2>/dev/null | head -n 1)"
fi
if [ -z "$WHEEL" ]; then
    step build-wheel 120 "$PYTHON" -m pip wheel --no-deps --no-build-isolation -w "$WORK/dist" "$REPO"
    WHEEL="$(ls "$WORK"/dist/clippy_rt-*.whl 2>/dev/null | head -n 1)"
fi
if [ -z "$WHEEL" ]; then
    echo "no wheel to install (see $OUT/build-wheel.log)" | tee -a "$OUT/SUMMARY.log"
    exit 1
fi
step install 120 "$PYTHON" -m pip install --no-deps --no-index --target "$WORK/site" "$WHEEL"

cp -r "$REPO/tests" "$REPO/pyproject.toml" "$WORK/"
mkdir -p "$WORK/benchmarks"
cp "$REPO"/benchmarks/*.py "$WORK/benchmarks/"
export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_INTERPRET=0
cd "$WORK"
"$PYTHON" -c "import clippy_rt, torch, sys; print('clippy_rt from', clippy_rt.__file__); \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available()); \
sys.exit(0 if clippy_rt.__file__.startswith('$WORK/site') else 3)" | tee -a "$OUT/SUMMARY.log"

step gpu-tests 240 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml" tests
cp "$REPO/benchmarks/RESULTS.md" "$OUT/RESULTS.md"
step gpu-check 150 "$PYTHON" benchmarks/gpu_check.py --skip-tests --write "$OUT/gpu_check.md"
step gpu-pipeline 200 "$PYTHON" benchmarks/gpu_pipeline.py --out "$OUT" --write "$OUT/RESULTS.md"
[ -f "$OUT/gpu_check.md" ] && "$PYTHON" - "$OUT/gpu_check.md" "$OUT/RESULTS.md" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from gpu_check import BEGIN, END, write_section
text = Path(sys.argv[1]).read_text()
if BEGIN in text and END in text:
    write_section(Path(sys.argv[2]), text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip("\n"))
PY

{
    echo "# GPU check"
    echo
    cat "$OUT/SUMMARY.log"
    echo
    tail -n 3 "$OUT/gpu-tests.log" 2>/dev/null
    echo
    [ -f "$OUT/gpu_check.md" ] && cat "$OUT/gpu_check.md"
    echo
    [ -f "$OUT/gpu_pipeline.md" ] && cat "$OUT/gpu_pipeline.md"
} >"$OUT/SUMMARY.md"
echo "results in $OUT (SUMMARY.md); exit $STATUS"
exit "$STATUS"
