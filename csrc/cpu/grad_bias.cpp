// The CPU grad_bias: per location and channel, the sum of grad_output over the batch in sample
// order (in float for float16 and bfloat16); for a shared bias, those sums added over the
// locations in order, and where locations share weight regions, over each region's locations.
// Threads take channels, so the order does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "local_conv.h"
#include "regions.h"

namespace lc_cuda {

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
    const int64_t stride_d = grads.stride(2), stride_h = grads.stride(3), stride_w = grads.stride(4);
    opmath_t* s = sums.mutable_data_ptr<opmath_t>();
    at::parallel_for(0, g.out_channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) {
        opmath_t* row = s + o * locations;
        for (int64_t n = 0; n < g.batch; ++n) {
          const scalar_t* plane = go + n * stride_n + o * stride_c;
          for (int64_t z = 0; z < g.out_d; ++z) {
            for (int64_t y = 0; y < g.out_h; ++y) {
              opmath_t* to = row + (z * g.out_h + y) * g.out_w;
              const scalar_t* from = plane + z * stride_d + y * stride_h;
              for (int64_t x = 0; x < g.out_w; ++x)
                to[x] += static_cast<opmath_t>(from[x * stride_w]);
            }
          }
        }
      }
    });
    if (shared_bias) {
      at::Tensor totals = at::empty({g.out_channels}, sums.options());
      opmath_t* t = totals.mutable_data_ptr<opmath_t>();
      for (int64_t o = 0; o < g.out_channels; ++o) {
        opmath_t total = 0;
        for (int64_t l = 0; l < locations; ++l) total += s[o * locations + l];
        t[o] = total;
      }
      sums = totals;
    } else if (g.shares_weights()) {
      sums = sum_over_regions(sums.view({g.out_channels, locations}), g);
    }
  });
  return sums.to(dtype);
}

}  // namespace lc_cuda
