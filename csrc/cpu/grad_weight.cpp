// The CPU grad_weight. Per output location one product (location_products.h): the transposed
// patches (K x samples) times the location's grad_output (samples x C_out), summed over the sample
// blocks in order. Threads take tiles of neighbouring locations of one output row and write
// disjoint parts of grad_weight. The vector kernels' products add each sample's term in sample
// order whatever the sample blocks, so their result does not depend on the thread count (bar
// bfloat16 on AVX512-BF16, which adds the samples two at a time: a block of odd size shifts the
// pairs, and the rounding with them, where the batch is larger than one block). The BLAS
// groups the sum over the batch by sample block, whose size follows from the scratch budget and
// the thread count: there, where the batch is larger than one block, the result depends on the
// thread count by floating-point reassociation (and only there).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <type_traits>

#include "cpu_blocking.h"
#include "huge_pages.h"
#include "location_products.h"
#include "patches.h"

namespace lc_cuda {

at::Tensor cpu_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                           const Geometry& g, ProductIsa isa) {
  auto grad_weight = cpu::empty_on_huge_pages(weight_shape(g), input.options());
  if (g.batch == 0) return grad_weight.zero_();
  const cpu::Strides4 in_strides{input.stride(0), input.stride(1), input.stride(2),
                                 input.stride(3)};
  const cpu::Strides4 go_strides{grad_output.stride(0), grad_output.stride(1),
                                 grad_output.stride(2), grad_output.stride(3)};
  const int64_t patch_size = g.patch_size(), out_channels = g.out_channels;
  const int64_t filter_size = out_channels * patch_size;
  const int64_t row_count = g.in_channels * g.kernel_h;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "lc_cuda_cpu_grad_weight", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    // float and double sum straight into grad_weight; float16 and bfloat16 into float sums per
    // location of the tile, which the last sample block's product writes to grad_weight rounded,
    // once (with one sample block the sums are never written).
    constexpr bool in_place = std::is_same_v<scalar_t, opmath_t>;
    // Per thread: a tile's staged grad_output, one location's patch rows and patches, the tile's
    // float sums.
    const auto per_thread = [&](int64_t samples, int64_t tile) {
      return cpu::line_bytes(tile * cpu::staged_stride(samples, out_channels, sizeof(scalar_t)),
                             sizeof(scalar_t)) +
             cpu::line_bytes(row_count, sizeof(cpu::PatchRow)) +
             cpu::line_bytes(samples * patch_size, sizeof(scalar_t)) +
             (in_place ? 0 : cpu::line_bytes(tile * filter_size, sizeof(opmath_t)));
    };
    const cpu::PassScratch pass = cpu::plan_pass(g, per_thread);
    const cpu::Blocking& block = pass.block;
    const int64_t row_tiles = cpu::tiles_per_row(g, block.tile);
    const int64_t staged_stride =
        cpu::staged_stride(block.samples, out_channels, sizeof(scalar_t));

    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();

    at::parallel_for(0, g.out_h * row_tiles, 1, [&](int64_t begin, int64_t end) {
      const cpu::SingleThreadedBlas one_thread;
      cpu::ScratchSlice slice(pass);
      scalar_t* staged = slice.take<scalar_t>(block.tile * staged_stride);
      cpu::PatchRow* rows = slice.take<cpu::PatchRow>(row_count);
      scalar_t* patches = slice.take<scalar_t>(block.samples * patch_size);
      opmath_t* tile_sums = in_place ? nullptr : slice.take<opmath_t>(block.tile * filter_size);
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t i = unit / row_tiles, j0 = (unit % row_tiles) * block.tile;
        const int64_t width = std::min(block.tile, g.out_w - j0);
        const int64_t first_location = i * g.out_w + j0;
        for (int64_t n0 = 0; n0 < g.batch; n0 += block.samples) {
          const int64_t samples = std::min(block.samples, g.batch - n0);
          cpu::stage_grad_output(go, go_strides, g, i, j0, width, n0, samples, staged_stride,
                                 staged);
          for (int64_t t = 0; t < width; ++t) {
            cpu::patch_rows(g, in_strides, i, j0 + t, rows);
            cpu::pack_location(isa, in + n0 * in_strides.n, in_strides, rows, g,
                               samples, patches);
            scalar_t* filters = gw + (first_location + t) * filter_size;
            opmath_t* sums = in_place ? reinterpret_cast<opmath_t*>(filters)
                                      : tile_sums + t * filter_size;
            const bool last_block = n0 + samples >= g.batch;
            cpu::location_grad_filters(isa, out_channels, samples, patch_size, patches,
                                       staged + t * staged_stride, /*accumulate=*/n0 > 0, sums,
                                       /*rounded=*/in_place || !last_block ? nullptr : filters);
          }
        }
      }
    });
  });
  return grad_weight;
}

}  // namespace lc_cuda
