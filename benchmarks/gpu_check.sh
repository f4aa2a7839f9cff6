#!/usr/bin/env bash
# One call on a lent H100/H200, run from the repo root: build, test, benchmark. Everything lands
# in $OUT (the device tool brings back at most 8 files; this writes 8, the build log inside env.txt):
#   env.txt  pytest.log  bench.log  skill_ffn.jsonl  toksim.log  token_similarity.jsonl
#   tokred.log  token_reduce.jsonl
#
#   bash benchmarks/gpu_check.sh                  # skill_ffn bench (32 shapes x 3 modes x 5 providers,
#                                                 #   cut by its time budget), then the token_similarity
#                                                 #   bench (8 shapes x 3 modes x 5 providers + matmul peak),
#                                                 #   then the token_reduce bench (5 shapes x 3 modes x
#                                                 #   4 providers + a 1 GiB copy)
#   bash benchmarks/gpu_check.sh --quick-bench    # gpu-quick presets: 5 skill_ffn shapes, 4 token_similarity,
#                                                 #   2 token_reduce
#   bash benchmarks/gpu_check.sh --skip-build --skip-tests -- --modes fwd+bwd   # rest goes to the skill_ffn bench
#   bash benchmarks/gpu_check.sh --skip-tests --bench toksim    # only the token_similarity bench, whole budget
#   bash benchmarks/gpu_check.sh --skip-tests --bench tokred    # only the token_reduce bench, whole budget
#   TOKSIM_BENCH_ARGS="--shapes goal --providers lik,skillkern-triton" bash benchmarks/gpu_check.sh --bench toksim
#   TOKRED_BENCH_ARGS="--shapes goal --modes fwd+bwd" bash benchmarks/gpu_check.sh --bench tokred
#   bash benchmarks/gpu_check.sh --skip-tests --bench cli   # `skillkern bench` over every op (the
#       package's and benchmarks/bench_*.py such as bench_train_step.py), ceilings measured in the
#       run, equal time shares; writes cli.log, history.jsonl (copy its rows into
#       benchmarks/results/history.jsonl), bench.md (README's Benchmarks table) and results.tar
#       (plots/*.png and each op's raw rows)
#   CLI_BENCH_ARGS="--op skill_ffn --shapes gpu-quick" bash benchmarks/gpu_check.sh --skip-tests --bench cli
#
# Budget: the device tool stops a command at 10 minutes; this script aims at 9 (GPU_CHECK_BUDGET_S,
# default 540 s). Build and tests take what they take (pytest is capped at PYTEST_TIMEOUT_S, default
# 240 s); the benchmarks share what is left: skill_ffn first, leaving TOKSIM_BENCH_S (default 180 s)
# to token_similarity and TOKRED_BENCH_S (default 150 s) to token_reduce, which runs last. Each
# starts no new shape after its budget (its goal shapes run first) and is killed 30 s past it.
# Estimate for the skill_ffn bench on an H100: ~7 s per shape plus one-time torch.compile (~1 min)
# and Triton autotuning, so ~2-3 min for --quick-bench and 5-7 min for all 32.
# token_similarity: the fp32 reference, the naive providers (up to ~40 GB of similarities) and the
# peers' autotuning (~7 configs per kernel and key) make the first shape the slowest, ~1 min.
# token_reduce: torch.compile of the eager module (fwd + bwd, static shapes) costs ~15-30 s per
# shape; the rest (fp32 reference, 12 timings) a few seconds, so the 3 goal shapes fit in ~150 s.
#
# Peers (late-interaction-kernels, flash-maxsim for token_similarity; liger-kernel's fused MoE for
# skill_ffn, with --activation swiglu --no-bias) travel as wheels in the git-ignored .whl/ (name it
# in the device call's carry); downloaded here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl late-interaction-kernels==0.4.5 flash-maxsim==0.3.0 \
#       liger-kernel==0.8.5
# (pure Python + Triton; torch and triton are on the machine). Without them their rows say unavailable
# (or, for skill_ffn's liger-moe, are left out of the default providers).
#
# The device machine gets the tree without .git: pass the commit in, e.g.
#   BENCH_GIT_COMMIT=$(git rev-parse --short HEAD) written literally into the run command.
# Nothing here changes clocks, power or MIG; nvidia-smi is only queried.

set -u  # no -e: a failing build or test must not stop the rest of the check

QUICK=0
BUILD=1
TESTS=1
BENCH=all
BENCH_EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick-bench) QUICK=1 ;;
        --skip-build) BUILD=0 ;;
        --skip-tests) TESTS=0 ;;
        --bench) shift; BENCH=${1:-}
                 case "$BENCH" in all|ffn|toksim|tokred|cli) ;; *) echo "--bench takes all, ffn, toksim, tokred or cli"; exit 2 ;; esac ;;
        --) shift; BENCH_EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,49p' "$0"; exit 0 ;;
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

# ---- build (csrc with nvcc for sm_90); its log is appended to env.txt (8 files come back at most)
BUILD_RC=skipped
if [ "$BUILD" = 1 ]; then
    echo "== build (log: end of $OUT/env.txt)"
    BUILD_LOG=$(mktemp)
    TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python3 -m pip install --no-deps --no-build-isolation -e . > "$BUILD_LOG" 2>&1
    BUILD_RC=$?
    [ "$BUILD_RC" = 0 ] || tail -30 "$BUILD_LOG"
    { echo; echo "==== build log (rc=$BUILD_RC)"; cat "$BUILD_LOG"; } >> "$OUT/env.txt"
    rm -f "$BUILD_LOG"
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

# ---- benchmarks, in what is left of the budget: skill_ffn, then token_similarity, then token_reduce
TOKSIM_S=${TOKSIM_BENCH_S:-180}
TOKRED_S=${TOKRED_BENCH_S:-150}
BENCH_RC=skipped
if [ "$BENCH" = all ] || [ "$BENCH" = ffn ]; then
    RESERVE=0
    # the later benches' budgets + their kill margins
    [ "$BENCH" = all ] && RESERVE=$(( TOKSIM_S + 30 + TOKRED_S + 30 ))
    LEFT=$(( BUDGET - $(elapsed) - RESERVE ))
    [ "$LEFT" -lt 60 ] && LEFT=60  # at least the goal shape
    SHAPES=()
    [ "$QUICK" = 1 ] && SHAPES=(--shapes gpu-quick)
    echo "== bench skill_ffn: time budget ${LEFT} s (log: $OUT/bench.log)"
    PYTHONUNBUFFERED=1 timeout $(( LEFT + 30 )) python3 benchmarks/bench.py skill_ffn \
        --out "$OUT/skill_ffn.jsonl" --time-budget "$LEFT" "${SHAPES[@]}" "${BENCH_EXTRA[@]}" 2>&1 | tee "$OUT/bench.log"
    BENCH_RC=${PIPESTATUS[0]}
    [ "$BENCH_RC" = 124 ] && echo "!!! bench killed at its time limit; rows of finished shapes are in $OUT/skill_ffn.jsonl !!!"
fi

TOKSIM_RC=skipped
if [ "$BENCH" = all ] || [ "$BENCH" = toksim ]; then
    # Peer wheels (see the top): installed into a folder only this bench puts on its path.
    PEER_SITE=/tmp/skillkern_peers
    PEERS="none (no .whl/*.whl)"
    if ls .whl/*.whl > /dev/null 2>&1; then
        if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target "$PEER_SITE" .whl/*.whl >> "$OUT/env.txt" 2>&1; then
            PEERS=$(cd .whl && ls *.whl | tr '\n' ' ')
        else
            PEERS="install FAILED (see env.txt)"
        fi
    fi
    echo "   peer wheels: $PEERS" | tee -a "$OUT/env.txt"
    RESERVE=0
    [ "$BENCH" = all ] && RESERVE=$(( TOKRED_S + 30 ))  # token_reduce's budget + its kill margin
    LEFT=$(( BUDGET - $(elapsed) - 30 - RESERVE ))
    [ "$LEFT" -lt 60 ] && LEFT=60  # at least the goal shape
    SHAPES=()
    [ "$QUICK" = 1 ] && SHAPES=(--shapes gpu-quick)
    # shellcheck disable=SC2206  # TOKSIM_BENCH_ARGS is split into words on purpose
    TOKSIM_EXTRA=(${TOKSIM_BENCH_ARGS:-})
    echo "== bench token_similarity: time budget ${LEFT} s (log: $OUT/toksim.log)"
    PYTHONPATH="$PEER_SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 timeout $(( LEFT + 30 )) \
        python3 benchmarks/bench.py token_similarity --out "$OUT/token_similarity.jsonl" --time-budget "$LEFT" \
        "${SHAPES[@]}" "${TOKSIM_EXTRA[@]}" 2>&1 | tee "$OUT/toksim.log"
    TOKSIM_RC=${PIPESTATUS[0]}
    [ "$TOKSIM_RC" = 124 ] && echo "!!! token_similarity bench killed at its time limit; rows of finished shapes are in $OUT/token_similarity.jsonl !!!"
fi

TOKRED_RC=skipped
if [ "$BENCH" = all ] || [ "$BENCH" = tokred ]; then
    LEFT=$(( BUDGET - $(elapsed) - 30 ))
    [ "$LEFT" -lt 60 ] && LEFT=60  # at least the first goal shape
    SHAPES=()
    [ "$QUICK" = 1 ] && SHAPES=(--shapes gpu-quick)
    # shellcheck disable=SC2206  # TOKRED_BENCH_ARGS is split into words on purpose
    TOKRED_EXTRA=(${TOKRED_BENCH_ARGS:-})
    echo "== bench token_reduce: time budget ${LEFT} s (log: $OUT/tokred.log)"
    PYTHONUNBUFFERED=1 timeout $(( LEFT + 30 )) \
        python3 benchmarks/bench.py token_reduce --out "$OUT/token_reduce.jsonl" --time-budget "$LEFT" \
        "${SHAPES[@]}" "${TOKRED_EXTRA[@]}" 2>&1 | tee "$OUT/tokred.log"
    TOKRED_RC=${PIPESTATUS[0]}
    [ "$TOKRED_RC" = 124 ] && echo "!!! token_reduce bench killed at its time limit; rows of finished shapes are in $OUT/token_reduce.jsonl !!!"
fi

CLI_RC=skipped
if [ "$BENCH" = cli ]; then
    # Peers as for the token_similarity bench: installed into a folder put on the path.
    PEER_SITE=/tmp/skillkern_peers
    if ls .whl/*.whl > /dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$PEER_SITE" .whl/*.whl >> "$OUT/env.txt" 2>&1 || echo "peer wheels: install FAILED (see env.txt)"
    fi
    LEFT=$(( BUDGET - $(elapsed) - 90 ))  # each op may overrun its share by up to 60 s
    [ "$LEFT" -lt 120 ] && LEFT=120
    RAW=$(mktemp -d)
    # shellcheck disable=SC2206  # CLI_BENCH_ARGS is split into words on purpose
    CLI_EXTRA=(${CLI_BENCH_ARGS:-})
    SHAPES=()
    [ "$QUICK" = 1 ] && SHAPES=(--shapes gpu-quick)
    PASS=()  # what follows -- goes to every op benchmark
    [ ${#BENCH_EXTRA[@]} -gt 0 ] && PASS=(-- "${BENCH_EXTRA[@]}")
    # the static model's predictions, printed beside the measurements (skillkern inspect --record)
    cp benchmarks/results/static.jsonl "$RAW/" 2>/dev/null || true
    echo "== skillkern bench: time budget ${LEFT} s (log: $OUT/cli.log)"
    SKILLKERN_RESULTS_DIR="$RAW" PYTHONPATH="$PEER_SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 \
        timeout $(( LEFT + 90 )) python3 -m skillkern.cli bench --time-budget "$LEFT" "${SHAPES[@]}" \
        --history "$OUT/history.jsonl" --plot "$RAW/plots" --markdown "$OUT/bench.md" "${CLI_EXTRA[@]}" \
        "${PASS[@]}" 2>&1 | tee "$OUT/cli.log"
    CLI_RC=${PIPESTATUS[0]}
    # the project's goal verdicts on the op benchmarks' raw rows (benchmarks/goals.py)
    python3 benchmarks/goals.py $(ls "$RAW"/*.jsonl | grep -v -e /static.jsonl -e /autotune.jsonl) 2>&1 \
        | tee -a "$OUT/cli.log"
    tar -cf "$OUT/results.tar" -C "$RAW" . 2>/dev/null
    rm -rf "$RAW"
fi

# the autotuners' picks of the op benchmarks (skillkern inspect prices them): commit this file
cp benchmarks/results/autotune.jsonl "$OUT/" 2>/dev/null || true
echo "== summary ($(elapsed) s): build rc=$BUILD_RC | pytest rc=$TEST_RC: $(tail -1 "$OUT/pytest.log" 2>/dev/null) | bench rc=$BENCH_RC | toksim rc=$TOKSIM_RC | tokred rc=$TOKRED_RC | cli rc=$CLI_RC"
case "$BENCH" in all|ffn) grep -m1 '^GPU goal' "$OUT/bench.log" || echo "GPU goal (skill_ffn): no goal line (bench did not finish)" ;; esac
case "$BENCH" in all|toksim) grep -m1 '^GPU goal' "$OUT/toksim.log" || echo "GPU goal (token_similarity): no goal line (bench did not finish)" ;; esac
# token_reduce: one line per goal shape, then the verdict
case "$BENCH" in all|tokred) grep '^GPU goal' "$OUT/tokred.log" || echo "GPU goal (token_reduce): no goal line (bench did not finish)" ;; esac
case "$BENCH" in cli) grep '^GPU goal' "$OUT/cli.log" || echo "GPU goal: no goal line in cli.log (bench did not finish)" ;; esac
exit 0
