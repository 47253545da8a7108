// The scratch budget of the CPU kernels and the block sizes that keep each pass inside it.
#include "cpu_blocking.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cmath>
#include <cstdlib>
#include <string>

namespace lc_cuda {
namespace cpu {

int64_t megabytes_setting(const char* name, double default_megabytes, bool zero_allowed) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0')
    return static_cast<int64_t>(default_megabytes * (1 << 20));
  char* end = nullptr;
  const double megabytes = std::strtod(value, &end);
  TORCH_CHECK(end != value && *end == '\0' && std::isfinite(megabytes) &&
                  (megabytes > 0 || (zero_allowed && megabytes == 0)),
              name, " must be a ", zero_allowed ? "non-negative" : "positive",
              " number of megabytes, got '", value, "'");
  // At most 2^62 bytes: a larger double would not convert to int64.
  const double bytes = std::min(megabytes * (1 << 20), 4.6e18);
  return static_cast<int64_t>(std::max(zero_allowed ? 0.0 : 1.0, bytes));
}

int64_t scratch_budget_bytes() {
  return megabytes_setting("LC_CUDA_CPU_SCRATCH_MB", 256, /*zero_allowed=*/false);
}

PassScratch plan_pass(const Geometry& g,
                      const std::function<int64_t(int64_t, int64_t)>& per_thread,
                      const std::function<int64_t(int64_t)>& shared, int64_t least_tile) {
  const int64_t budget = scratch_budget_bytes();
  const int64_t threads = at::get_num_threads();
  const auto shared_bytes = [&](int64_t samples) { return shared ? shared(samples) : 0; };
  const auto scratch_bytes = [&](int64_t samples, int64_t tile) {
    return threads * per_thread(samples, tile) + shared_bytes(samples);
  };
  // The largest sample count in [1, batch] that fits with this tile, 0 where one sample does not.
  const auto samples_that_fit = [&](int64_t tile) {
    int64_t low = 0, high = std::max<int64_t>(g.batch, 1);
    while (low < high) {
      const int64_t middle = (low + high + 1) / 2;
      if (scratch_bytes(middle, tile) <= budget)
        low = middle;
      else
        high = middle - 1;
    }
    return low;
  };
  const int64_t tile = std::min<int64_t>(g.out_w, kMaxTile);
  const int64_t least = std::min(tile, least_tile);
  const int64_t samples = samples_that_fit(tile);
  const Blocking block = samples > 0
                             ? Blocking{samples, tile}
                             : Blocking{std::max<int64_t>(samples_that_fit(least), 1), least};
  const int64_t thread_bytes = per_thread(block.samples, block.tile);
  const int64_t shared_part = shared_bytes(block.samples);
  return {block, thread_bytes, shared_part,
          at::empty({threads * thread_bytes + shared_part}, at::dtype(at::kByte))};
}

}  // namespace cpu
}  // namespace lc_cuda
