#!/usr/bin/env bash
# The GPU check, in one run on a fresh GPU machine: build the extension, run the CUDA tests,
# run compute-sanitizer memcheck and racecheck over every kernel in every dtype, run the
# benchmark. Logs go to $OUT (the device tool's output folder) or ./gpu_check_logs; a summary
# is printed last. Exits non-zero if any step failed.
#
#   bash tools/gpu_check.sh            # about 5 minutes on one H200
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/gpu_check_logs}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
summary=()
failed=0

step() {  # step NAME COMMAND...: runs it, logs to $out/NAME.log, records the outcome
  local name=$1 start result
  shift
  start=$(date +%s)
  if "$@" >"$out/$name.log" 2>&1; then result=ok; else result="FAILED (exit $?)"; failed=1; fi
  summary+=("$(printf '%-10s %-18s %4d s   %s' "$name" "$result" $(($(date +%s) - start)) \
    "$(grep -E '[0-9]+ (passed|failed)|ERROR SUMMARY|mismatches|error:' "$out/$name.log" \
       | tail -n 1 | cut -c1-100)")")
  echo "== $name: $result"
  tail -n 15 "$out/$name.log"
}

sanitizer=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}"/bin/compute-sanitizer \
  /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
step build env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 NVCC_FLAGS="-Xptxas -v" \
  "$python" setup.py build_ext --inplace
if [ $failed -eq 0 ]; then
  step tests "$python" -m pytest -m cuda -q -p no:cacheprovider
  # Without torch's caching allocator every tensor is its own allocation, so that memcheck
  # sees an access past a tensor's end instead of a read of the cached block next to it.
  step memcheck env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "${sanitizer:-compute-sanitizer}" \
    --tool memcheck --error-exitcode 1 "$python" tools/exercise_kernels.py
  step racecheck "${sanitizer:-compute-sanitizer}" --tool racecheck --error-exitcode 1 \
    "$python" tools/exercise_kernels.py
  # The kernels against the fallback and the naive snippet, forward and forward+backward, in
  # float32 and bfloat16 (the kernels issue's bar). The full harness (every method, dtype and
  # direction, torch.compile and JAX included) takes longer: run benchmarks/bench.py alone.
  step bench "$python" benchmarks/bench.py --dtypes float32 bfloat16 \
    --methods lc_cuda lc_cuda_unfold naive_snippet --directions forward forward+backward \
    --out "$PWD/gpu_check_bench"
  cp gpu_check_bench/results.json "$out/bench_results.json" 2>/dev/null
fi
# On request, the CPU emulation of the kernels with all its checks and ThreadSanitizer on every
# case (CI runs a reduced set): LC_GPU_CHECK_EMULATION=1. Last, so that it never holds up the GPU
# steps; it takes minutes even on many cores.
if [ "${LC_GPU_CHECK_EMULATION:-0}" = 1 ]; then
  step emulation env LC_EMULATION_TSAN_CASES=all "$python" -m pytest -q -p no:cacheprovider \
    tests/test_kernel_emulation.py
fi
echo
echo "== summary"
printf '%s\n' "${summary[@]}"
grep -A 30 "geometric means over the cases" "$out/bench.log" 2>/dev/null | grep -E "lc_cuda "
exit $failed
