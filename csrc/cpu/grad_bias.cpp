// The CPU grad_bias: per location and channel, the sum of grad_output over the batch in sample
// order (in float for float16 and bfloat16); for a shared bias, those sums added over the
// locations in order, and where locations share weight regions, over each region's locations.
// Threads take pieces of a channel's locations (at most kBiasColumns of them), so the order does
// not depend on the thread count, and a single channel (genomics_1d_50k's 50,000 locations)
// still goes to every thread.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>

#include "local_conv.h"
#include "regions.h"

namespace lc_cuda {
namespace {

// The most columns of an output row one piece of work sums: 16 KB of float sums, which stay in
// the L1 while the samples' rows go by.
constexpr int64_t kBiasColumns = 4096;

}  // namespace

at::Tensor cpu_grad_bias(const at::Tensor& grad_output, const Geometry& g, bool shared_bias) {
  const at::ScalarType dtype = grad_output.scalar_type();
  const int64_t locations = g.locations();
  // (N, C_out, D, H, W) strides, whatever the caller's number of spatial dimensions.
  const at::Tensor grads = as_5d(grad_output, g);
  // Per location in the caller's dimensions: returned as is where locations do not share.
  std::vector<int64_t> shape = output_shape(g);
  shape.erase(shape.begin());
  at::Tensor sums = at::zeros(shape, grad_output.options().dtype(at::toOpMathType(dtype)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "lc_cuda_cpu_grad_bias", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* go = grads.const_data_ptr<scalar_t>();
    const int64_t stride_n = grads.stride(0), stride_c = grads.stride(1);
    const int64_t stride_d = grads.stride(2), stride_h = grads.stride(3);
    const int64_t stride_w = grads.stride(4);
    opmath_t* s = sums.mutable_data_ptr<opmath_t>();
    // Pieces of work: up to kBiasColumns consecutive locations of one channel, within its
    // whole plane where the plane is dense (each sample's part one contiguous read), else
    // within one output row.
    const bool dense = stride_w == 1 && stride_h == g.out_w && stride_d == g.out_h * g.out_w;
    const int64_t run = dense ? locations : g.out_w, runs = locations / run;
    const int64_t run_pieces = ceil_div(run, kBiasColumns);
    at::parallel_for(0, g.out_channels * runs * run_pieces, 1, [&](int64_t begin, int64_t end) {
      for (int64_t piece = begin; piece < end; ++piece) {
        const int64_t o = piece / (runs * run_pieces), r = piece / run_pieces % runs;
        const int64_t x0 = piece % run_pieces * kBiasColumns;
        const int64_t columns = std::min(kBiasColumns, run - x0);
        opmath_t* to = s + o * locations + r * run + x0;
        const scalar_t* from = go + o * stride_c + (r / g.out_h) * stride_d +
                               (r % g.out_h) * stride_h + x0 * stride_w;
        for (int64_t n = 0; n < g.batch; ++n, from += stride_n) {
          if (stride_w == 1) {
            for (int64_t x = 0; x < columns; ++x) to[x] += static_cast<opmath_t>(from[x]);
          } else {
            for (int64_t x = 0; x < columns; ++x)
              to[x] += static_cast<opmath_t>(from[x * stride_w]);
          }
        }
      }
    });
  });
  return bias_grad_from_sums(sums, g, shared_bias, dtype);
}

at::Tensor bias_grad_from_sums(const at::Tensor& sums, const Geometry& g, bool shared_bias,
                               at::ScalarType dtype) {
  const int64_t locations = g.locations();
  if (shared_bias) {
    const at::Tensor sums_c = sums.contiguous();
    at::Tensor totals = at::empty({g.out_channels}, sums.options());
    AT_DISPATCH_FLOATING_TYPES(sums.scalar_type(), "lc_cuda_cpu_bias_totals", [&] {
      const scalar_t* s = sums_c.const_data_ptr<scalar_t>();
      scalar_t* t = totals.mutable_data_ptr<scalar_t>();
      // Added up in double and rounded once: in float, the rounding of a total over tens of
      // thousands of locations came to 1e-5 of a cancelling sum.
      for (int64_t o = 0; o < g.out_channels; ++o) {
        double total = 0;
        for (int64_t l = 0; l < locations; ++l) total += s[o * locations + l];
        t[o] = static_cast<scalar_t>(total);
      }
    });
    return totals.to(dtype);
  }
  if (g.shares_weights())
    return sum_over_regions(sums.view({g.out_channels, locations}), g).to(dtype);
  return sums.to(dtype);
}

}  // namespace lc_cuda
