#!/usr/bin/env bash
# One call on a lent H100/H200, run from the repo root: build, test, benchmark. Everything lands
# in $OUT (the device tool brings back at most 8 files; this writes 5):
#   env.txt  build.log  pytest.log  bench.log  skill_ffn.jsonl
#
#   bash benchmarks/gpu_check.sh                  # full bench: 32 shapes x 3 modes x 5 providers
#                                                 #   = 480 timings, cut by the time budget
#   bash benchmarks/gpu_check.sh --quick-bench    # gpu-quick: 5 shapes x 3 modes x 5 providers = 75
#   bash benchmarks/gpu_check.sh --skip-build --skip-tests -- --modes fwd+bwd   # rest goes to the bench
#
# Budget: the device tool stops a command at 10 minutes; this script aims at 9 (GPU_CHECK_BUDGET_S,
# default 540 s). Build and tests take what they take (pytest is capped at PYTEST_TIMEOUT_S, default
# 240 s); the benchmark gets what is left, starts no new shape after that (the goal shape runs
# first) and is killed 30 s past it. Estimate for the bench on an H100: ~7 s per shape plus one-time
# torch.compile (~1 min) and Triton autotuning, so ~2-3 min for --quick-bench and 5-7 min for all 32.
#
# The device machine gets the tree without .git: pass the commit in, e.g.
#   BENCH_GIT_COMMIT=$(git rev-parse --short HEAD) written literally into the run command.
# Nothing here changes clocks, power or MIG; nvidia-smi is only queried.

set -u  # no -e: a failing build or test must not stop the rest of the check

QUICK=0
BUILD=1
TESTS=1
BENCH_EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick-bench) QUICK=1 ;;
        --skip-build) BUILD=0 ;;
        --skip-tests) TESTS=0 ;;
        --) shift; BENCH_EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)"; exit 2 ;;
    esac
    shift
done

OUT=${OUT:-benchmarks/results/gpu_check}
mkdir -p "$OUT"
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-540}
elapsed() { echo $(( $(date +%s) - START )); }

# ---- environment (read-only queries)
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: ${BENCH_GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu,mig.mode.current --format=csv
    python3 -V
    python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); print('device', torch.cuda.get_device_name(), 'capability', torch.cuda.get_device_capability())"
    nvcc --version | tail -2
    python3 -m pip list 2>/dev/null | grep -iE '^(torch|triton|numpy|pytest|ninja|pybind11|skillkern) '
} > "$OUT/env.txt" 2>&1
echo "== env: $(grep -m1 '^device' "$OUT/env.txt")"

# ---- build (csrc with nvcc for sm_90)
BUILD_RC=skipped
if [ "$BUILD" = 1 ]; then
    echo "== build (log: $OUT/build.log)"
    TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 -m pip install --no-deps --no-build-isolation -e . > "$OUT/build.log" 2>&1
    BUILD_RC=$?
    [ "$BUILD_RC" = 0 ] || tail -30 "$OUT/build.log"
    echo "   build rc=$BUILD_RC ($(elapsed) s)"
fi
python3 -c "import skillkern as s; print('skillkern', s.__version__, '| skill_ffn backends on cuda:', s.available_backends('skill_ffn', 'cuda'), '| _C:', s.has_cuda_extension())" 2>&1 | tee -a "$OUT/env.txt"

# ---- tests
TEST_RC=skipped
if [ "$TESTS" = 1 ]; then
    echo "== pytest (log: $OUT/pytest.log)"
    timeout "${PYTEST_TIMEOUT_S:-240}" python3 -m pytest -q tests 2>&1 | tee "$OUT/pytest.log"
    TEST_RC=${PIPESTATUS[0]}
    [ "$TEST_RC" = 124 ] && echo "!!! pytest stopped at PYTEST_TIMEOUT_S=${PYTEST_TIMEOUT_S:-240} s !!!"
    echo "   pytest rc=$TEST_RC ($(elapsed) s)"
fi

# ---- benchmark, in what is left of the budget
LEFT=$(( BUDGET - $(elapsed) ))
[ "$LEFT" -lt 60 ] && LEFT=60  # at least the goal shape
SHAPES=()
[ "$QUICK" = 1 ] && SHAPES=(--shapes gpu-quick)
echo "== bench: time budget ${LEFT} s (log: $OUT/bench.log)"
PYTHONUNBUFFERED=1 timeout $(( LEFT + 30 )) python3 benchmarks/bench_skill_ffn.py \
    --out "$OUT/skill_ffn.jsonl" --time-budget "$LEFT" "${SHAPES[@]}" "${BENCH_EXTRA[@]}" 2>&1 | tee "$OUT/bench.log"
BENCH_RC=${PIPESTATUS[0]}
[ "$BENCH_RC" = 124 ] && echo "!!! bench killed at its time limit; rows of finished shapes are in $OUT/skill_ffn.jsonl !!!"

echo "== summary ($(elapsed) s): build rc=$BUILD_RC | pytest rc=$TEST_RC: $(tail -1 "$OUT/pytest.log" 2>/dev/null) | bench rc=$BENCH_RC"
grep -m1 '^GPU goal' "$OUT/bench.log" || echo "GPU goal: no goal line (bench did not finish)"
