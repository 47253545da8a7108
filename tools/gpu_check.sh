#!/usr/bin/env bash
# The GPU check, in one run on a fresh GPU machine: build the extension in place, import it, run
# `python -m lc_cuda.selftest`, the CUDA tests, compute-sanitizer memcheck and racecheck over the
# self-test (every kernel, dtype, tile width and launch variant), and the benchmark. Logs go to
# $OUT (the device tool's output folder) or ./gpu_check_logs; a summary is printed last. Exits
# non-zero if any step failed. Needs only python3 with torch (CUDA build), numpy, pytest and
# hypothesis, and nvcc: nothing is installed.
#
#   bash tools/gpu_check.sh              # about 5 minutes on one H200 (estimated)
#   bash tools/gpu_check.sh --dry-run    # no GPU needed: uses the in-place build already there,
#                                        # and runs each step's script with --help (--collect-only
#                                        # for pytest), so that every import and option is checked
set -uo pipefail
cd "$(dirname "$0")/.."
dry_run=0
[ "${1:-}" = "--dry-run" ] && dry_run=1
out=${OUT:-$PWD/gpu_check_logs}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# The package is not installed: the in-place build (lc_cuda/_C*.so) is imported from here. A
# script's own folder, not the current one, comes first on sys.path, so the root is added.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
summary=()
failed=0

step() {  # step NAME COMMAND...: runs it, logs to $out/NAME.log, records the outcome
  local name=$1 start result
  shift
  start=$(date +%s)
  if "$@" >"$out/$name.log" 2>&1; then result=ok; else result="FAILED (exit $?)"; failed=1; fi
  summary+=("$(printf '%-10s %-18s %4d s   %s' "$name" "$result" $(($(date +%s) - start)) \
    "$(grep -E '[0-9]+ (passed|failed)|ERROR SUMMARY|error:|Error' "$out/$name.log" \
       | tail -n 1 | cut -c1-100)")")
  echo "== $name: $result"
  tail -n 15 "$out/$name.log"
}

sanitize() {  # sanitize TOOL COMMAND...: compute-sanitizer, or the command alone in a dry run
  local tool=$1
  shift
  if [ $dry_run -eq 1 ]; then "$@"; else
    "${sanitizer:-compute-sanitizer}" --tool "$tool" --error-exitcode 1 "$@"; fi
}

help=()  # appended to each script's command line in a dry run
[ $dry_run -eq 1 ] && help=(--help)
sanitizer=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}"/bin/compute-sanitizer \
  /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
if [ $dry_run -eq 0 ]; then
  step build env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 NVCC_FLAGS="-Xptxas -v" \
    "$python" setup.py build_ext --inplace
fi
if [ $failed -eq 0 ]; then
  step import "$python" -c "import lc_cuda, torch
print('lc_cuda from', lc_cuda.__file__, 'torch', torch.__version__)
print(lc_cuda.build_info())
assert lc_cuda.__file__.startswith('$PWD/'), 'not the in-place build'"
fi
if [ $failed -eq 0 ]; then
  step selftest "$python" -m lc_cuda.selftest "${help[@]}"
  collect=()
  [ $dry_run -eq 1 ] && collect=(--collect-only)
  step tests "$python" -m pytest -m cuda -q -p no:cacheprovider "${collect[@]}"
  # Without torch's caching allocator every tensor is its own allocation, so that memcheck
  # sees an access past a tensor's end instead of a read of the cached block next to it.
  # (An assignment before a function call is exported to the commands the function runs.)
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 step memcheck \
    sanitize memcheck "$python" -m lc_cuda.selftest "${help[@]}"
  step racecheck sanitize racecheck "$python" -m lc_cuda.selftest "${help[@]}"
  # The kernels against the fallback and the naive snippet, forward and forward+backward, in
  # float32 and bfloat16 (the kernels issue's bar). The full harness (every method, dtype and
  # direction, torch.compile and JAX included) takes longer: run benchmarks/bench.py alone.
  step bench "$python" benchmarks/bench.py --dtypes float32 bfloat16 \
    --methods lc_cuda lc_cuda_unfold naive_snippet --directions forward forward+backward \
    --out "$PWD/gpu_check_bench" "${help[@]}"
  cp gpu_check_bench/results.json "$out/bench_results.json" 2>/dev/null
fi
# The CPU pre-flight, before a GPU session: `LC_GPU_CHECK_EMULATION=1 bash tools/gpu_check.sh
# --dry-run` adds the CPU emulation of the kernels with all its checks and ThreadSanitizer on
# every case (CI runs a reduced set; about 10 CPU-minutes). It needs no GPU, so it is not meant
# for the GPU machine's scarce time; it runs last so that it never holds up the GPU steps.
if [ "${LC_GPU_CHECK_EMULATION:-0}" = 1 ]; then
  step emulation env LC_EMULATION_TSAN_CASES=all "$python" -m pytest -q -p no:cacheprovider \
    tests/test_kernel_emulation.py
fi
echo
echo "== summary$([ $dry_run -eq 1 ] && echo ' (dry run: imports and options only, no GPU used)')"
printf '%s\n' "${summary[@]}"
grep -A 30 "geometric means over the cases" "$out/bench.log" 2>/dev/null | grep -E "lc_cuda "
exit $failed
