#!/usr/bin/env bash
# The GPU check, in one run on a fresh GPU machine: build the extension in place, import it, run
# `python -m lc_cuda.selftest`, the benchmark, then the CUDA tests and compute-sanitizer memcheck
# and racecheck over the self-test (every kernel, dtype, tile width and launch variant) side by
# side. Exits non-zero if any step failed or ran out of time.
#
#   bash tools/gpu_check.sh                  # one H200: about 6 minutes, never more than the budget
#   bash tools/gpu_check.sh --only memcheck racecheck   # a rerun of some steps (after the build)
#   bash tools/gpu_check.sh --dry-run        # no GPU needed: uses the in-place build already there,
#                                            # and runs each step's script with --help
#                                            # (--collect-only for pytest), so that every import
#                                            # and option is checked
#
# Time: every step has a limit, and the whole run stays within LC_GPU_CHECK_BUDGET seconds
# (default 450), so that it fits one call of the device tool and its logs always come back. The
# steps that check correctness side by side get whatever the earlier steps left.
#
# Logs: one per step in gpu_check_logs/; where $OUT is set (the device tool's output folder) they
# are packed into $OUT/gpu_check_logs.tar.gz, beside summary.txt and bench_results.json, since
# that folder brings back only a few files. Needs python3 with torch (CUDA build), numpy, pytest
# and hypothesis, and nvcc: nothing is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dry_run=0
only=()
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    --only) shift; while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do only+=("$1"); shift; done; continue ;;
    *) echo "gpu_check.sh: unknown argument '$1' (expected --dry-run, --only STEP...)" >&2; exit 2 ;;
  esac
  shift
done
logs=$root/gpu_check_logs
rm -rf "$logs" && mkdir -p "$logs"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# The package is not installed: the in-place build (lc_cuda/_C*.so) is imported from here. A
# script's own folder, not the current one, comes first on sys.path, so the root is added.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
deadline=$(($(date +%s) + ${LC_GPU_CHECK_BUDGET:-450}))

wanted() {  # wanted STEP: whether --only (if given) names it
  [ ${#only[@]} -eq 0 ] && return 0
  local name
  for name in "${only[@]}"; do [ "$name" = "$1" ] && return 0; done
  return 1
}

# outcome NAME EXIT SECONDS: the verdict on a finished step, from its exit status and its log.
# compute-sanitizer that refuses the device (gVisor: "Device not supported", then error 999 at the
# first allocation) says nothing about the kernels, so it is told apart from an error it found.
outcome() {
  local name=$1 status=$2 log=$logs/$1.log
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then echo "TIMED OUT"
  elif grep -q "Device not supported" "$log" 2>/dev/null; then echo "SANITIZER REFUSED BY MACHINE"
  elif [ "$status" -ne 0 ]; then
    if grep -qE "ERROR SUMMARY: [1-9]" "$log"; then echo "SANITIZER ERRORS (exit $status)"
    else echo "FAILED (exit $status)"; fi
  else echo ok; fi
}

# step NAME LIMIT COMMAND...: runs the command for at most LIMIT seconds (and never past the
# deadline), logs to $logs/NAME.log and writes its summary line to $logs/NAME.summary.
step() {
  local name=$1 limit=$2 start status verdict
  shift 2
  local left=$((deadline - $(date +%s) - 10))  # 10 s kept for packing the logs
  [ "$limit" -gt "$left" ] && limit=$left
  start=$(date +%s)
  if [ "$limit" -le 0 ]; then
    echo "no time left in the budget" >"$logs/$name.log"; status=124
  else
    timeout -k 10 "$limit" "$@" >"$logs/$name.log" 2>&1
    status=$?
  fi
  verdict=$(outcome "$name" "$status")
  printf '%-10s %-28s %4d s   %s\n' "$name" "$verdict" $(($(date +%s) - start)) \
    "$(grep -E '[0-9]+ (passed|failed)|ERROR SUMMARY|error:|Error|no time left' "$logs/$name.log" \
       | tail -n 1 | cut -c1-100)" >"$logs/$name.summary"
  echo "== $name: $verdict (limit $limit s)"
  tail -n 15 "$logs/$name.log"
}

passed() { grep -q "^$1 *ok " "$logs/$1.summary" 2>/dev/null; }

pack_logs() {  # what the device tool brings back: at most 8 files, so the logs go as one archive
  [ -n "${OUT:-}" ] || return 0
  mkdir -p "$OUT"
  tar czf "$OUT/gpu_check_logs.tar.gz" -C "$logs" . 2>/dev/null
  cp "$logs/summary.txt" "$OUT/summary.txt" 2>/dev/null
  cp "$root/gpu_check_bench/results.json" "$OUT/bench_results.json" 2>/dev/null
}
trap pack_logs EXIT

help=()  # appended to each script's command line in a dry run
[ $dry_run -eq 1 ] && help=(--help)
sanitizer=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}"/bin/compute-sanitizer \
  /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
# Only lc_cuda's kernels are instrumented where the sanitizer can filter by name (torch's copies
# and the fallback's cuBLAS calls would multiply the run time): probed once, since the option's
# name has changed between releases.
kernel_filter=()
if [ $dry_run -eq 0 ] && [ -n "$sanitizer" ]; then
  for option in --kernel-name --kernel-regex; do
    if "$sanitizer" "$option" kns=lc_cuda /bin/true >/dev/null 2>&1; then
      kernel_filter=("$option" kns=lc_cuda); break
    fi
  done
fi
sanitize() {  # sanitize TOOL: the command line that runs the self-test under compute-sanitizer
  if [ $dry_run -eq 1 ]; then echo "$python" -m lc_cuda.selftest "${help[@]}"; return; fi
  echo "$sanitizer" --tool "$1" "${kernel_filter[@]}" --error-exitcode 1 "$python" -m lc_cuda.selftest
}
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
  echo "compute-sanitizer: ${sanitizer:-none} $("${sanitizer:-true}" --version 2>&1 | tail -n 1)"
  echo "kernel filter: ${kernel_filter[*]:-none}"
  nvcc --version | tail -n 2
} >"$logs/machine.log" 2>&1
cat "$logs/machine.log"

if [ $dry_run -eq 0 ]; then
  step build 240 env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS="$(nproc)" NVCC_FLAGS="-Xptxas -v" \
    "$python" setup.py build_ext --inplace
fi
if [ $dry_run -eq 1 ] || passed build; then
  step import 60 "$python" -c "import lc_cuda, torch
print('lc_cuda from', lc_cuda.__file__, 'torch', torch.__version__)
print(lc_cuda.build_info())
assert lc_cuda.__file__.startswith('$root/'), 'not the in-place build'"
fi
if passed import; then
  wanted selftest && step selftest 120 "$python" -m lc_cuda.selftest "${help[@]}"
  # Alone on the GPU, so that nothing else runs during the timings: lc_cuda against the fallback
  # and the naive snippet, forward and forward+backward, in float32 and bfloat16 (the GPU
  # issue's table). The full harness (every method, dtype and direction, torch.compile and JAX
  # included) takes longer: run benchmarks/bench.py alone.
  rm -rf gpu_check_bench
  wanted bench && step bench 180 "$python" benchmarks/bench.py --dtypes float32 bfloat16 \
    --methods lc_cuda lc_cuda_unfold naive_snippet --directions forward forward+backward \
    --out "$root/gpu_check_bench" "${help[@]}"
  # The correctness checks share the GPU, each in its own process, with what time is left.
  collect=()
  [ $dry_run -eq 1 ] && collect=(--collect-only)
  wanted tests && step tests 600 "$python" -m pytest -m cuda -q -p no:cacheprovider "${collect[@]}" &
  # Without torch's caching allocator every tensor is its own allocation, so that memcheck
  # sees an access past a tensor's end instead of a read of the cached block next to it.
  # shellcheck disable=SC2046  # the command line is split into words on purpose
  wanted memcheck && PYTORCH_NO_CUDA_MEMORY_CACHING=1 step memcheck 600 $(sanitize memcheck) &
  # shellcheck disable=SC2046
  wanted racecheck && step racecheck 600 $(sanitize racecheck) &
  wait
fi
# The CPU pre-flight, before a GPU session: `LC_GPU_CHECK_EMULATION=1 bash tools/gpu_check.sh
# --dry-run` adds the CPU emulation of the kernels with all its checks on every case of the family
# in every build, ThreadSanitizer's included (LC_EMULATION_CASES=all; CI runs reduced sets). It
# needs no GPU, so it is not meant for the GPU machine's scarce time; it runs last so that it
# never holds up the GPU steps.
if [ "${LC_GPU_CHECK_EMULATION:-0}" = 1 ]; then
  deadline=$(($(date +%s) + 3600))
  step emulation 3600 env LC_EMULATION_CASES=all "$python" -m pytest -q -p no:cacheprovider \
    tests/test_kernel_emulation.py
fi
{
  echo "== summary$([ $dry_run -eq 1 ] && echo ' (dry run: imports and options only, no GPU used)')"
  for name in build import selftest bench tests memcheck racecheck emulation; do
    cat "$logs/$name.summary" 2>/dev/null
  done
  grep -A 30 "geometric means over the cases" "$logs/bench.log" 2>/dev/null | grep -E "lc_cuda "
} >"$logs/summary.txt"
echo
cat "$logs/summary.txt"
# Failed: any step whose verdict is not ok (a sanitizer the machine refuses is reported, not
# counted: it says nothing about the kernels), or a step that should have run and did not.
failed=0
for name in build import selftest bench tests memcheck racecheck emulation; do
  [ -f "$logs/$name.summary" ] || continue
  passed "$name" || grep -q "REFUSED BY MACHINE" "$logs/$name.summary" || failed=1
done
passed import || failed=1
# A full pass on a GPU records the sources it passed on (tools/record_gpu_check.py): their builds
# then report build_info()["gpu_verified"] and skip the first-use check. Commit the record.
if [ $failed -eq 0 ] && [ $dry_run -eq 0 ] && [ ${#only[@]} -eq 0 ]; then
  "$python" tools/record_gpu_check.py "$(nvidia-smi --query-gpu=name,driver_version \
    --format=csv,noheader 2>/dev/null | head -n 1)"
  cp csrc/cuda/gpu_check_passed.txt "${OUT:-$logs}/" 2>/dev/null
fi
exit $failed
