#!/usr/bin/env bash
# One call on a lent H100/H200, run from the repo root: build, test, benchmark, sanitize.
# Everything lands in $OUT (the GPU machine brings back at most 8 files; this writes 8):
#   env.txt        versions, nvidia-smi, the build log
#   pytest.log     the test suite on CUDA tensors (Triton part, then the cuda-extension part)
#   sanitize.log   compute-sanitizer memcheck, one small script per CUDA kernel family
#   bench.log      the four op benchmarks' output, goal verdicts included, then the per-kernel
#                  profiles (skillkern profile, fwd+bwd of skillkern-triton at each goal shape)
#   skill_ffn.jsonl  token_similarity.jsonl  token_reduce.jsonl   result rows (commit these)
#   autotune.jsonl the autotuners' picks (skillkern inspect prices them)
#
#   BENCH_GIT_COMMIT=<sha> bash benchmarks/gpu_check.sh        # the whole check, ~9 min
#   STEPS="bench" bash benchmarks/gpu_check.sh                 # only some steps: any of
#                                                              #   build tests bench profile sanitize
#   FFN_PROVIDERS=skillkern-triton,grouped-mm RECOMPUTE_S=0 bash benchmarks/gpu_check.sh
#       # other providers (TOKSIM_PROVIDERS, TOKRED_PROVIDERS too); the --recompute run skipped
#
# Schedule (each step time-boxed, so a hang or crash leaves the others' results):
#   t=0     env; peer wheels (.whl/, see below) installed into /tmp/skillkern_peers
#   t=10    the extension builds in the background (sm_90, `setup.py build_ext --inplace`) while
#           the Triton half of the suite runs on CUDA tensors (pytest -n 8, cap TESTS_S=130 s)
#   ...     wait for the build (cap BUILD_S=180 s from its start)
#   bench   the goal shapes, skillkern first, then baselines and peers, torch.compile last (it
#           compiles for a minute): skill_ffn (FFN_S=150 s), the same with --recompute for
#           skillkern-triton (RECOMPUTE_S=35 s), token_similarity (TOKSIM_S=120 s), token_reduce
#           (TOKRED_S=90 s)
#   profile per-kernel device times of skillkern-triton's fwd+bwd at each op's goal shape
#           (torch.profiler; ~20 s per op, PROFILE_S=100 s in all): which kernel the time goes to
#   last    the extension's tests and compute-sanitizer memcheck run side by side, until
#           DEADLINE_S=580 s (25..70 s); nothing is timed then
# Every cap is also cut so that the later steps keep their share before DEADLINE_S (cap_for).
# A bench killed at its cap loses its rows (they are written per shape), not its printed lines.
# Seen on an H200 (2026-12-04): start-up ~30 s, the build 110-130 s (beside the tests), the
# skill_ffn bench 62 s for 7 providers, token_similarity > 75 s (its reference and LIK alone take
# ~40 s), token_reduce 46 s; the Triton half of the suite reached 15-20 % in 100-130 s when every
# test shape autotuned every config (now SKILLKERN_AUTOTUNE=first). With the default caps the
# whole call ends by ~520 s of a 600 s limit; a second call needs a fresh start.
#
# Peers (late-interaction-kernels, flash-maxsim; liger-kernel's fused MoE, used by the skill_ffn
# bench only with --activation swiglu --no-bias) travel as wheels in the git-ignored .whl/ (name it
# in the call's carry), fetched on the CPU machine with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl late-interaction-kernels==0.4.5 flash-maxsim==0.3.0 \
#       liger-kernel==0.8.5 nvidia-cutlass==4.2.0.0
# (nvidia-cutlass: the CUTLASS headers the sm_90 build needs; the GPU machine has no network.)
# The tree arrives without .git: pass the commit in BENCH_GIT_COMMIT.
# Afterwards, on the CPU machine: append the returned *.jsonl rows to benchmarks/results/, then
#   python -m skillkern.bench.auto_order benchmarks/results/*.jsonl --write
# and commit skillkern/_measured.py: backend="auto" follows it on that GPU model.
# Nothing here changes clocks, power or MIG; nvidia-smi is only queried.

set -u  # no -e: one failing step must not stop the others

OUT=${OUT:-benchmarks/results/gpu_check}
STEPS=${STEPS-build tests bench profile sanitize}
mkdir -p "$OUT"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
has() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export BENCH_GIT_COMMIT=${BENCH_GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}

# ---- environment (read-only queries)
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $BENCH_GIT_COMMIT"
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu,mig.mode.current --format=csv
    python3 -V
    python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); p = torch.cuda.get_device_properties(0); print('device', p.name, 'capability', (p.major, p.minor), 'SMs', p.multi_processor_count, 'L2 MB', p.L2_cache_size / 2**20)"
    nvcc --version | tail -2
    which compute-sanitizer ncu
} > "$OUT/env.txt" 2>&1
echo "== env ($(elapsed) s): $(grep -m1 '^device' "$OUT/env.txt")"

PEER_SITE=/tmp/skillkern_peers
if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$PEER_SITE" .whl/*.whl >> "$OUT/env.txt" 2>&1 && echo "peers: $(cd .whl && ls *.whl | tr '\n' ' ')" \
        || echo "peers: install FAILED (see env.txt)"
fi

# ---- build (background) + the Triton half of the suite
BUILD_LOG=/tmp/skillkern_build.log
BUILD_RC=skipped
if has build; then
    ( PYTHONPATH="$PEER_SITE:$PYTHONPATH" TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=8 timeout "${BUILD_S:-180}" python3 setup.py build_ext --inplace \
        > "$BUILD_LOG" 2>&1; echo $? > /tmp/skillkern_build.rc ) &
    BUILD_PID=$!
fi
# the suite checks results, not speed: one autotune config per kernel (SKILLKERN_AUTOTUNE=first),
# else compiling and timing every config of every test shape takes most of the window
PYTEST=(env SKILLKERN_AUTOTUNE=first python3 -m pytest -q -p no:cacheprovider --timeout 120 -n 8)
TEST_RC=skipped
if has tests; then
    echo "== pytest, Triton half ($(elapsed) s)"
    # SIGINT at the cap: pytest then still prints the failures it has seen
    timeout -s INT -k 20 "${TESTS_S:-130}" "${PYTEST[@]}" --tb=short tests --ignore-glob='tests/test_extension_*' \
        --ignore=tests/test_emulation.py --ignore=tests/test_inspect.py --ignore=tests/test_inspect_extension.py \
        --ignore=tests/test_bench_cpu.py > "$OUT/pytest.log" 2>&1
    TEST_RC=$?
    echo "   rc=$TEST_RC: $(tail -1 "$OUT/pytest.log")"
fi
if has build; then
    wait "$BUILD_PID"
    BUILD_RC=$(cat /tmp/skillkern_build.rc 2>/dev/null || echo lost)
    { echo; echo "==== build log (rc=$BUILD_RC)"; cat "$BUILD_LOG"; } >> "$OUT/env.txt"
    echo "== build rc=$BUILD_RC ($(elapsed) s)"; [ "$BUILD_RC" = 0 ] || tail -15 "$BUILD_LOG"
fi
python3 -c "import skillkern as s; print('skillkern', s.__version__, '| _C:', s.has_cuda_extension())" 2>&1 | tee -a "$OUT/env.txt"

# ---- benchmarks at the goal shapes (the GPU is theirs alone)
# a step's cap: what it asks for, cut so that `reserve` seconds stay for the steps after it
# before DEADLINE_S (580 s: the device machine stops a command at 600)
cap_for() {  # cap_for <want s> <reserve s>
    local c=$(( ${DEADLINE_S:-580} - $(elapsed) - $2 ))
    [ "$c" -gt "$1" ] && c=$1
    [ "$c" -lt 20 ] && c=20
    echo "$c"
}
bench() {  # bench <cap s> <op> <args...>
    local cap=$1; shift
    echo "== bench $* ($(elapsed) s, cap ${cap} s)" | tee -a "$OUT/bench.log"
    PYTHONPATH="$PEER_SITE:$PYTHONPATH" timeout "$cap" python3 benchmarks/bench.py "$@" --shapes goal \
        >> "$OUT/bench.log" 2>&1
    echo "   rc=$?" | tee -a "$OUT/bench.log"
}
if has bench; then
    bench "$(cap_for "${FFN_S:-150}" 300)" skill_ffn --out "$OUT/skill_ffn.jsonl" --providers \
        "${FFN_PROVIDERS:-skillkern-triton,skillkern-cuda,dense-cublas,grouped-mm,skill-loop,skillkern-torch,torch-compile-ref}"
    [ "${RECOMPUTE_S:-35}" -gt 0 ] && bench "$(cap_for "${RECOMPUTE_S:-35}" 260)" skill_ffn --out "$OUT/skill_ffn.jsonl" \
        --providers skillkern-triton,dense-cublas --recompute --peak-size 0
    bench "$(cap_for "${TOKSIM_S:-120}" 160)" token_similarity --out "$OUT/token_similarity.jsonl" --providers \
        "${TOKSIM_PROVIDERS:-skillkern-triton,skillkern-cuda,lik,naive,flash-maxsim,chunked-naive}"
    bench "$(cap_for "${TOKRED_S:-90}" 100)" token_reduce --out "$OUT/token_reduce.jsonl" --providers \
        "${TOKRED_PROVIDERS:-skillkern-triton,skillkern-cuda,eager-wukong,skillkern-torch,compiled-wukong}"
    bench "$(cap_for "${MAXSIM_S:-45}" 70)" maxsim --out "$OUT/maxsim.jsonl" --providers \
        "${MAXSIM_PROVIDERS:-skillkern-triton,einsum,lik,flash-maxsim}"
    cp benchmarks/results/autotune.jsonl "$OUT/" 2>/dev/null || true
fi

# ---- per-kernel times (the totals alone cannot say which kernel misses its prediction)
if has profile; then
    PROFILE_END=$(( $(elapsed) + $(cap_for "${PROFILE_S:-100}" 40) ))
    for op in skill_ffn token_similarity token_reduce; do
        left=$(( PROFILE_END - $(elapsed) )); [ "$left" -lt 15 ] && break
        echo "== profile $op ($(elapsed) s, cap ${left} s)" | tee -a "$OUT/bench.log"
        timeout "$left" python3 -m skillkern.cli profile --op "$op" --provider skillkern-triton --no-trace \
            >> "$OUT/bench.log" 2>&1
        echo "   rc=$?" | tee -a "$OUT/bench.log"
    done
fi

# ---- the extension's tests and compute-sanitizer, side by side (correctness only)
if has sanitize; then
    echo "== extension tests + compute-sanitizer memcheck ($(elapsed) s)"
    cap=$(( ${DEADLINE_S:-580} - $(elapsed) )); [ "$cap" -gt 70 ] && cap=70; [ "$cap" -lt 25 ] && cap=25
    { echo; echo "==== extension tests"; } >> "$OUT/pytest.log"
    # test_skill_ffn's "cuda" cases: the extension was still building during the Triton half; on an
    # H100/H200 they run the CUTLASS forward and backward against the reference
    timeout "$cap" "${PYTEST[@]}" tests/test_extension_skill_ffn.py tests/test_extension_skill_route.py \
        tests/test_extension_token_reduce.py tests/test_extension_token_similarity.py \
        tests/test_skill_ffn.py -k "extension or cuda" >> "$OUT/pytest.log" 2>&1 &
    EXT_PID=$!
    for fam in skill_ffn token_similarity token_reduce; do
        extra=()
        [ "$fam" = token_reduce ] && extra=(--quick --backends cuda)
        [ "$fam" = token_similarity ] && extra=(--cuda-only)
        timeout "$cap" compute-sanitizer --tool memcheck --error-exitcode 1 python3 "csrc/$fam/sanitize.py" \
            "${extra[@]}" > "/tmp/san_$fam.log" 2>&1 &
        eval "SAN_$fam=\$!"
    done
    wait "$EXT_PID"; EXT_RC=$?
    echo "   extension tests rc=$EXT_RC: $(tail -1 "$OUT/pytest.log")"
    for fam in skill_ffn token_similarity token_reduce; do
        eval "pid=\$SAN_$fam"; wait "$pid"; rc=$?
        { echo "==== memcheck $fam rc=$rc"; tail -40 "/tmp/san_$fam.log"; } >> "$OUT/sanitize.log"
        echo "   memcheck $fam rc=$rc: $(grep -m1 -E 'ERROR SUMMARY|Error' "/tmp/san_$fam.log")"
    done
fi

echo "== summary ($(elapsed) s): build rc=$BUILD_RC | pytest rc=$TEST_RC: $(grep -m1 -E 'passed|failed' "$OUT/pytest.log" 2>/dev/null)"
grep -h '^GPU goal' "$OUT/bench.log" 2>/dev/null || echo "GPU goal: no goal line (a bench did not finish)"
exit 0
