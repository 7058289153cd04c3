#!/usr/bin/env bash
# The whole GPU check in one command, for a borrowed GPU machine (no internet, no TensorRT;
# python with torch, Triton, timm and pytest, cmake and nvcc installed):
#
#     bash benchmarks/gpu_all.sh [--deadline-s N] [WHEEL]   # the check, on the GPU machine
#     bash benchmarks/gpu_all.sh --dry-run [--build-wheel]  # the same script on a CPU machine
#     bash benchmarks/gpu_all.sh --plan-only [--deadline-s N]   # print the plan, run nothing
#
# Through a device tool that copies the checkout and runs one command, build the wheel
# here (python -m pip wheel --no-deps --no-build-isolation -w dist .), carry dist/ (it is
# git-ignored) and run `bash benchmarks/gpu_all.sh dist/clippy_rt-*.whl` there. A wheel
# argument that is not a file (dist/ not carried) leaves the wheel to be built there.
#
# Steps, each under `timeout`, all within one deadline (--deadline-s, else
# $GPU_ALL_DEADLINE_S, else 300 s: with a 2-3 minute machine start that leaves room for a
# rerun within 15 minutes of device time, far below a 10-minute limit on one command):
#
#   build-wheel   only without a wheel (WHEEL, else the newest dist/clippy_rt-*.whl) or
#                 with --build-wheel: `pip wheel` from a copy of the tree;
#   install       `pip install --no-deps --no-index --target` into a scratch folder;
#   import-check  clippy_rt (and its kernels / export packages) import from that folder,
#                 not from the source tree; torch sees the GPU (nvidia-smi is logged);
#   native        the CUDA C++ library, built once from this checkout's CMakeLists.txt and
#                 kernels/csrc for this GPU's architecture only, and its C++ test program;
#   gpu-tests     `pytest -m gpu` in a copy of the checkout without clippy_rt/, kernels/
#                 and export/ (so the installed package is the one imported), 4 workers
#                 (pytest-xdist) and a time limit per test (pytest-timeout) where those
#                 plugins are installed, the native library in CLIPPY_RT_NATIVE_LIB;
#   gpu-check     benchmarks/gpu_check.py (kernel timings) with that library, its budget
#                 what is left of the deadline minus gpu-pipeline's share;
#   gpu-pipeline  benchmarks/gpu_pipeline.py (frames -> labels, stream, tower vs timm).
#
# The plan, printed first, gives each step a share of the deadline: its minimum plus the
# rest in proportion to BASE below, 10 s kept for packaging. A step may also use what the
# earlier steps left, up to its cap; a step left with less than its minimum is skipped
# (exit status 124, as for a timeout), and the steps that need a failed or skipped one do
# not run. The exit status is the first failing step's (0 when every step passed).
#
# Logs, JUnit XML, JSON and markdown are written under a scratch folder; at the end,
# whatever happened (a failure, the deadline, a signal), $OUT (default ./gpu-out) gets
# gpu-check.tar.gz with all of them and at most six key files next to it: SUMMARY.md,
# RESULTS.md (benchmarks/RESULTS.md with both GPU sections filled in: copy it over
# benchmarks/RESULTS.md to keep them), gpu_check.md, gpu_pipeline.md, gpu_pipeline.json
# and gpu-tests.xml; at most 8 files in all, what a device tool brings back.
#
# --dry-run runs the same steps on a machine without a GPU as far as they go there: it
# builds (with --build-wheel, or without a wheel) and installs the wheel, checking that
# clippy_rt imports from the install; configures the native build without compiling it;
# collects the gpu tests (there must be some, and no module may fail to import); runs
# gpu_check.py and gpu_pipeline.py in their dry-run modes; checks the plan fits the
# deadline and packages the results. tests/bench/test_gpu_all.py runs it.
#
# Settings from the environment: OUT, PYTHON (default python3), GPU_ALL_DEADLINE_S,
# GPU_ALL_TEST_WORKERS (4), GPU_ALL_TEST_TIMEOUT_S (per gpu test, 60), GPU_ALL_KEEP_WORK=1
# (keep the scratch folder).
set -u

usage() {
    sed -n '2,/^set -u$/{/^set -u$/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN=0
PLAN_ONLY=0
FORCE_WHEEL=0
DEADLINE_S="${GPU_ALL_DEADLINE_S:-300}"
WHEELS=()
MISSING_WHEEL=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --plan-only) PLAN_ONLY=1 ;;
        --build-wheel) FORCE_WHEEL=1 ;;
        --deadline-s) shift; DEADLINE_S="${1:-}" ;;
        --deadline-s=*) DEADLINE_S="${1#*=}" ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "gpu_all.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) if [ -f "$1" ]; then WHEELS+=("$1"); else MISSING_WHEEL="$1"; fi ;;
    esac
    shift
done
if ! [[ "$DEADLINE_S" =~ ^[0-9]+$ ]] || [ "$DEADLINE_S" -lt 1 ]; then
    echo "gpu_all.sh: --deadline-s takes a whole number of seconds, got '$DEADLINE_S'" >&2
    exit 2
fi
WHEEL_NOTE=""
if [ -n "$MISSING_WHEEL" ] && [ "${#WHEELS[@]}" -eq 0 ]; then
    # A device run should not end here: an uncarried dist/ leaves the glob unexpanded.
    WHEEL_NOTE="$MISSING_WHEEL is not a file; one is built from the tree instead"
    FORCE_WHEEL=1
fi
if [ "${#WHEELS[@]}" -gt 0 ]; then
    # A glob such as dist/clippy_rt-*.whl may match several: the newest is taken.
    WHEEL="$(ls -t "${WHEELS[@]}" | head -n 1)"
    [ "${#WHEELS[@]}" -gt 1 ] && WHEEL_NOTE="the newest of ${#WHEELS[@]} wheels given"
elif [ "$FORCE_WHEEL" -eq 0 ]; then
    WHEEL="$(ls -t "$REPO"/dist/clippy_rt-*.whl 2>/dev/null | head -n 1)"
    [ -n "$WHEEL" ] && WHEEL_NOTE="the newest in dist/; pass a wheel or --build-wheel to choose"
else
    WHEEL=""
fi
if [ -n "$WHEEL" ]; then  # the steps run in other folders
    WHEEL="$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")"
fi
DEADLINE_AT=$((SECONDS + DEADLINE_S))
PYTHON="${PYTHON:-python3}"
if [[ "$PYTHON" == */* ]]; then  # the steps run in other folders
    PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
fi
OUT="${OUT:-$REPO/gpu-out}"
KILL_GRACE_S=5          # timeout sends TERM this long before the limit, then KILL at the limit
RESERVE_S=$((DEADLINE_S < 10 ? DEADLINE_S : 10))  # kept for the packaging at the end
MAX_FILES=8             # what a device tool brings back from $OUT
KEY_FILES=(SUMMARY.md RESULTS.md gpu_check.md gpu_pipeline.md gpu_pipeline.json gpu-tests.xml)
ARCHIVE=gpu-check.tar.gz

# Shares at the default deadline (they scale with the deadline), caps, minimums; seconds.
declare -A BASE=([build-wheel]=30 [install]=15 [import-check]=15 [native]=50 [gpu-tests]=70
                 [gpu-check]=80 [gpu-pipeline]=60)
declare -A CAP=([build-wheel]=120 [install]=60 [import-check]=60 [native]=150 [gpu-tests]=240
                [gpu-check]=200 [gpu-pipeline]=200)
declare -A MIN=([build-wheel]=10 [install]=10 [import-check]=10 [native]=20 [gpu-tests]=20
                [gpu-check]=20 [gpu-pipeline]=30)
declare -A PLANNED=()
declare -A RESULT=()

STEPS=()
if [ -z "$WHEEL" ]; then
    STEPS+=(build-wheel)
fi
STEPS+=(install import-check native gpu-tests gpu-check gpu-pipeline)

# The plan: each step's share of the deadline less the packaging reserve: its minimum, plus
# the rest of the time in proportion to BASE - MIN, at most its cap; when the minimums do
# not all fit, the first steps get theirs and the others none. The shares never add up to
# more than the deadline.
plan() {
    local avail=$((DEADLINE_S - RESERVE_S)) name share sum=0 minimums=0 spread=0 line
    for name in "${STEPS[@]}"; do
        minimums=$((minimums + MIN[$name]))
        spread=$((spread + BASE[$name] - MIN[$name]))
    done
    for name in "${STEPS[@]}"; do
        if [ "$minimums" -le "$avail" ]; then
            share=$((MIN[$name] + (BASE[$name] - MIN[$name]) * (avail - minimums) / spread))
            [ "$share" -gt "${CAP[$name]}" ] && share=${CAP[$name]}
        elif [ $((sum + MIN[$name])) -le "$avail" ]; then
            share=${MIN[$name]}
        else
            share=0
        fi
        PLANNED[$name]=$share
        sum=$((sum + share))
    done
    line="gpu_all plan ($([ "$DRY_RUN" -eq 1 ] && echo "dry run" || echo "GPU run")): deadline ${DEADLINE_S} s ="
    for name in "${STEPS[@]}"; do
        line+=" $name ${PLANNED[$name]} s"
        [ "${PLANNED[$name]}" -eq 0 ] && line+=" (skipped: needs ${MIN[$name]} s)"
        line+=" +"
    done
    line+=" packaging ${RESERVE_S} s; a step may also use what earlier steps left, up to its cap"
    PLAN_LINE="$line"
    PLAN_SUM=$((sum + RESERVE_S))
}
plan
if [ "$PLAN_ONLY" -eq 1 ]; then
    echo "$PLAN_LINE"
    exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/clippy-rt-gpu.XXXXXX")"
TREE="$WORK/tree"       # the checkout without the package sources: tests and benchmarks run here
LOGS="$WORK/gpu-check"
SITE="$WORK/site"
NATIVE_BUILD="$WORK/native-build"
NATIVE_LIB="$NATIVE_BUILD/libclippy_rt_native.so"
STATUS=0
mkdir -p "$LOGS" "$OUT"
OUT="$(cd "$OUT" && pwd)"
OUT_EXCLUDE=""
case "$OUT/" in "$REPO"/*) OUT_EXCLUDE="--exclude=./${OUT#"$REPO"/}" ;; esac
for name in "${KEY_FILES[@]}" "$ARCHIVE"; do rm -f "$OUT/$name"; done

note() {  # a line for the console and for steps.log (no pipe: nothing can swallow a status)
    echo "$*"
    echo "$*" >>"$LOGS/steps.log"
}

fail() {  # fail STATUS: keep the first failing step's status
    if [ "$STATUS" -eq 0 ]; then STATUS="$1"; fi
}

summary() {  # SUMMARY.md in $LOGS, from the plan, the step lines and the tables
    {
        echo "# GPU check$([ "$DRY_RUN" -eq 1 ] && echo " (dry run)")"
        echo
        echo "$PLAN_LINE"
        echo
        echo "## Steps"
        echo
        sed 's/^/    /' "$LOGS/steps.log"
        if [ -f "$LOGS/import-check.log" ]; then
            echo
            echo "## Machine"
            echo
            grep -E '^(torch|triton|gpu|python|clippy_rt|nvidia-smi:)' "$LOGS/import-check.log" | sed 's/^/    /'
        fi
        if [ -f "$LOGS/gpu-tests.log" ]; then
            echo
            echo "## gpu tests"
            echo
            { grep -E '^(FAILED|ERROR)' "$LOGS/gpu-tests.log" | head -n 40; tail -n 3 "$LOGS/gpu-tests.log"; } \
                | sed '/^[[:space:]]*$/d; s/^/    /'
        fi
        for name in gpu_check.md gpu_pipeline.md; do
            if [ -f "$LOGS/$name" ]; then
                echo
                cat "$LOGS/$name"
            fi
        done
        echo
        echo "## Files"
        echo
        echo "$OUT/$ARCHIVE holds:"
        (cd "$LOGS" && ls -1) | sed 's/^/    /'
        echo "    SUMMARY.md"
    } >"$WORK/SUMMARY.md.partial"
    mv "$WORK/SUMMARY.md.partial" "$LOGS/SUMMARY.md"
}

finish() {  # on every exit: summary, archive, key files, at most MAX_FILES in $OUT
    local rc=$? name count
    trap - EXIT INT TERM HUP
    if [ "$rc" -ne 0 ]; then fail "$rc"; fi
    cd /
    note "== packaging (exit status so far $STATUS, at $((SECONDS)) s of the ${DEADLINE_S} s deadline)"
    summary
    if ! tar -czf "$OUT/$ARCHIVE" -C "$WORK" gpu-check; then
        echo "packaging: could not write $OUT/$ARCHIVE" >&2
        fail 1
    fi
    for name in "${KEY_FILES[@]}"; do
        if [ -f "$LOGS/$name" ]; then cp "$LOGS/$name" "$OUT/$name"; fi
    done
    count=$(find "$OUT" -mindepth 1 -maxdepth 1 | wc -l)
    if [ "$count" -gt "$MAX_FILES" ]; then
        echo "packaging: $OUT holds $count entries, more than the $MAX_FILES a device tool brings back:" >&2
        ls -1 "$OUT" >&2
        fail 1
    else
        echo "packaging: $count files in $OUT (at most $MAX_FILES): $(cd "$OUT" && ls -1 | tr '\n' ' ')"
    fi
    if [ "${GPU_ALL_KEEP_WORK:-0}" = 1 ]; then
        echo "scratch folder kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    echo "results in $OUT (SUMMARY.md, $ARCHIVE); exit $STATUS after $SECONDS s"
    exit "$STATUS"
}
trap finish EXIT
trap 'fail 130; exit 130' INT
trap 'fail 143; exit 143' TERM HUP

# ---------------------------------------------------------------------------------------
# Steps: each a function run as `timeout ... bash -c step_NAME`, its output in $LOGS/NAME.log;
# STEP_LIMIT is its limit in seconds.
# ---------------------------------------------------------------------------------------

copy_tree() {  # copy_tree DEST [TAR OPTION...]: the checkout without VCS data, environments, builds, outputs
    local dest="$1"
    shift
    mkdir -p "$dest"
    tar -C "$REPO" --exclude-vcs --exclude='./.venv*' --exclude=./build --exclude='./build-*' --exclude=./dist \
        --exclude=./gpu-out --exclude=./out --exclude=./runs --exclude=./demo-out --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=.pytest_cache --exclude='*.partial' "$@" -cf - . | tar -C "$dest" -xf -
    local statuses=("${PIPESTATUS[@]}")
    [ "${statuses[0]}" -eq 0 ] && [ "${statuses[1]}" -eq 0 ]
}

step_build_wheel() {
    set -e
    # From a copy, so that a stale build/ or *.egg-info in the tree cannot leak into the wheel.
    copy_tree "$WORK/src" $OUT_EXCLUDE
    "$PYTHON" -m pip wheel --no-deps --no-build-isolation --no-index --disable-pip-version-check \
        -w "$WORK/dist" "$WORK/src"
}

step_install() {
    set -e
    echo "wheel: $WHEEL"
    "$PYTHON" -m pip install --no-deps --no-index --disable-pip-version-check --target "$SITE" "$WHEEL"
}

step_import_check() {
    set -e
    cd "$TREE"
    if [ "$DRY_RUN" -eq 0 ]; then
        if command -v nvidia-smi >/dev/null; then
            echo "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
                --format=csv,noheader 2>&1 | head -n 1)"
        else
            echo "nvidia-smi: not found"
        fi
    fi
    "$PYTHON" - <<'PY'
import importlib.metadata
import importlib.util
import os
import platform
import sys

site = os.path.realpath(os.environ["SITE"])
repo = os.path.realpath(os.environ["REPO"])
problems = []
print("python", platform.python_version(), sys.executable)
for name in ("clippy_rt", "clippy_rt.kernels", "clippy_rt.kernels.native", "clippy_rt.export"):
    spec = importlib.util.find_spec(name)
    places = [spec.origin] if spec is not None and spec.origin not in (None, "namespace") else []
    places += list(spec.submodule_search_locations or []) if spec is not None else []
    print(f"clippy_rt: {name} from {', '.join(places) or 'nowhere'}")
    if not places or not all(os.path.realpath(place).startswith(site + os.sep) for place in places):
        problems.append(f"{name} does not import from {site}")
import clippy_rt  # noqa: E402  (after the checks above, which do not import it)
import torch  # noqa: E402

print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
elif os.environ["DRY_RUN"] != "1":
    problems.append("torch sees no CUDA device")
try:
    print("triton", importlib.metadata.version("triton"))
except importlib.metadata.PackageNotFoundError:
    print("triton not installed")
if "TRITON_INTERPRET" in os.environ:
    problems.append("TRITON_INTERPRET is set; the gpu steps need compiled kernels")
for problem in problems:
    print("problem:", problem)
sys.exit(3 if problems else 0)
PY
}

step_native() {
    set -e
    for needed in CMakeLists.txt kernels/csrc/seg_head.cu kernels/csrc/seg_head.h kernels/csrc/test_seg_head.cu; do
        if [ ! -f "$REPO/$needed" ]; then echo "missing $REPO/$needed: the native library cannot be built"; exit 1; fi
    done
    if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
        export PATH="/usr/local/cuda/bin:$PATH"
    fi
    echo "cmake: $(command -v cmake || echo missing) $(cmake --version 2>/dev/null | head -n 1)"
    if ! command -v cmake >/dev/null && [ "$DRY_RUN" -eq 1 ]; then
        echo "note: no cmake on this machine; the configure check is left out of this dry run"
        exit 0
    fi
    echo "nvcc: $(command -v nvcc || echo missing) $(nvcc --version 2>/dev/null | tail -n 1)"
    local arch
    arch="$("$PYTHON" -c 'import torch
if torch.cuda.is_available():
    major, minor = torch.cuda.get_device_capability()
    print(f"{major}{minor}-real")
else:
    print("90-real")')"
    echo "architecture: $arch"
    cmake -S "$REPO" -B "$NATIVE_BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$arch"
    if ! grep -Eq '^CMAKE_CUDA_COMPILER:[A-Z]+=.+' "$NATIVE_BUILD/CMakeCache.txt" \
            || grep -Eq '^CMAKE_CUDA_COMPILER:[A-Z]+=.*NOTFOUND' "$NATIVE_BUILD/CMakeCache.txt"; then
        if [ "$DRY_RUN" -eq 1 ]; then
            echo "configured; CMake found no CUDA compiler here, so the library would not be built (dry run: fine)"
            exit 0
        fi
        echo "CMake found no CUDA compiler (is nvcc on PATH?)"
        exit 1
    fi
    if [ "$DRY_RUN" -eq 1 ]; then
        echo "configured for $arch with a CUDA compiler (dry run: not compiled)"
        exit 0
    fi
    cmake --build "$NATIVE_BUILD" -j "$(nproc 2>/dev/null || echo 4)"
    ls -l "$NATIVE_LIB"
    "$NATIVE_BUILD/test_seg_head"
}

step_gpu_tests() {
    set -e
    cd "$TREE"
    local options=(-q -m gpu -p no:cacheprovider -rfE --junitxml="$LOGS/gpu-tests.xml")
    local per_test=$((GPU_ALL_TEST_TIMEOUT_S < STEP_LIMIT / 2 ? GPU_ALL_TEST_TIMEOUT_S : STEP_LIMIT / 2))
    if "$PYTHON" -c "import xdist" 2>/dev/null; then
        options+=(-n "$GPU_ALL_TEST_WORKERS")
    else
        echo "note: pytest-xdist is not installed; the tests run in one process"
    fi
    if "$PYTHON" -c "import pytest_timeout" 2>/dev/null; then
        options+=(--timeout="$per_test")
    else
        echo "note: pytest-timeout is not installed; no limit per test (the step's limit still holds)"
    fi
    if [ -n "${CLIPPY_RT_NATIVE_LIB:-}" ]; then echo "CLIPPY_RT_NATIVE_LIB=$CLIPPY_RT_NATIVE_LIB"; fi
    if [ "$DRY_RUN" -eq 0 ]; then
        # A module that cannot be imported here is reported (and fails the step) without
        # stopping the others; the dry run stops at it.
        options+=(--continue-on-collection-errors)
        echo "pytest ${options[*]} tests"
        "$PYTHON" -m pytest "${options[@]}" tests
        return
    fi
    echo "pytest --collect-only ${options[*]} tests"
    local rc=0 count
    "$PYTHON" -m pytest --collect-only "${options[@]}" tests >"$LOGS/gpu-tests.collect.txt" 2>&1 || rc=$?
    cat "$LOGS/gpu-tests.collect.txt"
    count="$(grep -Eo '^[0-9]+(/[0-9]+)? tests? collected' "$LOGS/gpu-tests.collect.txt" | grep -Eo '^[0-9]+' \
        | tail -n 1)"
    rm -f "$LOGS/gpu-tests.collect.txt"
    if [ "$rc" -ne 0 ]; then echo "collection failed (exit $rc)"; exit "$rc"; fi
    if [ "${count:-0}" -eq 0 ]; then echo "no gpu tests collected"; exit 1; fi
    echo "collected $count gpu tests"
}

step_gpu_check() {
    set -e
    cd "$TREE"
    local budget=$((STEP_LIMIT - KILL_GRACE_S - 3))
    local options=(benchmarks/gpu_check.py --skip-tests --budget-s "$budget"
                   --write "$LOGS/gpu_check.md" --write "$LOGS/RESULTS.md")
    if [ "$DRY_RUN" -eq 1 ]; then
        options+=(--dry-run --native-lib "$NATIVE_LIB")
    elif [ -f "$NATIVE_LIB" ]; then
        options+=(--native-lib "$NATIVE_LIB")
    else
        echo "note: no native library was built; the check runs without it"
        options+=(--skip-native)
    fi
    echo "$PYTHON ${options[*]}"
    "$PYTHON" "${options[@]}"
}

step_gpu_pipeline() {
    set -e
    cd "$TREE"
    # No row starts later than this, so the last one and the writing fit in the limit.
    local budget=$((STEP_LIMIT - KILL_GRACE_S - 15))
    [ "$budget" -lt 1 ] && budget=1
    local options=(benchmarks/gpu_pipeline.py --out "$LOGS" --write "$LOGS/RESULTS.md" --budget-s "$budget")
    [ "$DRY_RUN" -eq 1 ] && options+=(--dry-run)
    echo "$PYTHON ${options[*]}"
    "$PYTHON" "${options[@]}"
}

export -f copy_tree step_build_wheel step_install step_import_check step_native step_gpu_tests step_gpu_check \
    step_gpu_pipeline
export PYTHON REPO WORK TREE LOGS SITE NATIVE_BUILD NATIVE_LIB DRY_RUN KILL_GRACE_S WHEEL OUT_EXCLUDE
export GPU_ALL_TEST_WORKERS="${GPU_ALL_TEST_WORKERS:-4}" GPU_ALL_TEST_TIMEOUT_S="${GPU_ALL_TEST_TIMEOUT_S:-60}"

run_step() {  # run_step NAME [NEEDED...]: step_NAME under its limit, unless a needed step did not pass
    local name="$1" needed other later=0 seen=0
    shift
    for needed in "$@"; do
        if [ "${RESULT[$needed]:-}" != ok ]; then
            note "== $name: skipped: needs $needed, which did not pass"
            RESULT[$name]=skipped
            fail 1
            return
        fi
    done
    for other in "${STEPS[@]}"; do
        if [ "$seen" -eq 1 ]; then later=$((later + PLANNED[$other])); fi
        if [ "$other" = "$name" ]; then seen=1; fi
    done
    local left=$((DEADLINE_AT - SECONDS))
    local limit=$((left - RESERVE_S - later))
    if [ "$limit" -gt "${CAP[$name]}" ]; then limit=${CAP[$name]}; fi
    if [ "$limit" -lt "${MIN[$name]}" ]; then
        note "== $name: skipped: deadline: ${left} s left, ${RESERVE_S} s kept for packaging and ${later} s for" \
             "the later steps, less than the ${MIN[$name]} s this step needs"
        RESULT[$name]=skipped
        fail 124
        return
    fi
    note "== $name: limit ${limit} s (at ${SECONDS} s of the ${DEADLINE_S} s deadline)"
    local start=$SECONDS rc=0
    STEP_LIMIT=$limit timeout --kill-after="$KILL_GRACE_S" "$((limit - KILL_GRACE_S))" \
        bash -c "step_${name//-/_}" >"$LOGS/$name.log" 2>&1 || rc=$?
    local took=$((SECONDS - start))
    case "$rc" in
        0) RESULT[$name]=ok; note "   $name: ok in ${took} s" ;;
        124|137) RESULT[$name]=failed; note "   $name: timed out after ${took} s (limit ${limit} s)" ;;
        *) RESULT[$name]=failed; note "   $name: exit $rc after ${took} s" ;;
    esac
    if [ "$rc" -ne 0 ]; then
        fail "$rc"
        echo "   --- last lines of $name.log ---"
        tail -n 25 "$LOGS/$name.log" | sed 's/^/   | /'
    elif [ "$name" = gpu-tests ]; then
        tail -n 1 "$LOGS/$name.log" | sed 's/^/   | /'
    fi
}

note "$PLAN_LINE"
if [ "$PLAN_SUM" -gt "$DEADLINE_S" ]; then
    note "plan check: the shares and packaging add up to $PLAN_SUM s, more than the ${DEADLINE_S} s deadline"
    fail 1
elif [ "$DRY_RUN" -eq 1 ]; then
    note "plan check: the shares and packaging add up to $PLAN_SUM s, within the ${DEADLINE_S} s deadline"
fi
if [ "$DEADLINE_S" -gt 590 ]; then
    note "warning: the deadline is over 590 s; a device tool stops one command at 600 s"
fi
note "repo $REPO, scratch $WORK, results to $OUT, python $PYTHON"
if [ -n "${TRITON_INTERPRET+set}" ]; then
    note "TRITON_INTERPRET was set to '$TRITON_INTERPRET'; unset here (the gpu steps need compiled kernels)"
    unset TRITON_INTERPRET
fi

# Tests and benchmarks run from a copy of the checkout without clippy_rt/, kernels/ and
# export/, so the installed package is the one imported.
if ! copy_tree "$TREE" $OUT_EXCLUDE --exclude=./clippy_rt --exclude=./kernels --exclude=./export \
        || [ ! -d "$TREE/tests" ]; then
    note "could not copy the checkout to $TREE"
    fail 1
    exit
fi
cp "$REPO/benchmarks/RESULTS.md" "$LOGS/RESULTS.md"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

if [[ " ${STEPS[*]} " == *" build-wheel "* ]]; then
    if [ -n "$WHEEL_NOTE" ]; then note "wheel: $WHEEL_NOTE"; fi
    run_step build-wheel
    WHEEL="$(ls "$WORK"/dist/clippy_rt-*.whl 2>/dev/null | head -n 1)"
    if [ -z "$WHEEL" ] && [ "${RESULT[build-wheel]}" = ok ]; then
        note "   build-wheel: no clippy_rt wheel in $WORK/dist"
        RESULT[build-wheel]=failed
        fail 1
    fi
    run_step install build-wheel
else
    note "wheel: $WHEEL${WHEEL_NOTE:+ ($WHEEL_NOTE)}"
    RESULT[build-wheel]=ok
    run_step install
fi
run_step import-check install
run_step native import-check
if [ -f "$NATIVE_LIB" ]; then export CLIPPY_RT_NATIVE_LIB="$NATIVE_LIB"; fi
run_step gpu-tests import-check
run_step gpu-check import-check
run_step gpu-pipeline import-check
exit "$STATUS"
