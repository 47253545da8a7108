// The CPU grad_bias: per location and channel, the sum of grad_output over the batch in sample
// order (in float for float16 and bfloat16); for a shared bias, those sums added over the
// locations in order. Threads take channels, so the order does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "lc_conv2d.h"

namespace lc_cuda {

at::Tensor cpu_grad_bias(const at::Tensor& grad_output, const Geometry& g, bool shared_bias) {
  const at::ScalarType dtype = grad_output.scalar_type();
  const int64_t locations = g.locations();
  at::Tensor sums = at::zeros({g.out_channels, g.out_h, g.out_w},
                              grad_output.options().dtype(at::toOpMathType(dtype)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "lc_cuda_cpu_grad_bias", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    const int64_t stride_n = grad_output.stride(0), stride_c = grad_output.stride(1);
    const int64_t stride_h = grad_output.stride(2), stride_w = grad_output.stride(3);
    opmath_t* s = sums.mutable_data_ptr<opmath_t>();
    at::parallel_for(0, g.out_channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) {
        opmath_t* row = s + o * locations;
        for (int64_t n = 0; n < g.batch; ++n) {
          const scalar_t* plane = go + n * stride_n + o * stride_c;
          for (int64_t i = 0; i < g.out_h; ++i) {
            opmath_t* to = row + i * g.out_w;
            const scalar_t* from = plane + i * stride_h;
            for (int64_t j = 0; j < g.out_w; ++j) to[j] += static_cast<opmath_t>(from[j * stride_w]);
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
    }
  });
  return sums.to(dtype);
}

}  // namespace lc_cuda
