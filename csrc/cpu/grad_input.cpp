// The CPU grad_input. Per output location one product (location_products.h) turns the location's
// grad_output (samples x C_out) into its patch gradients (samples x K), which are added onto the
// input positions the patch read. Windows of neighbouring rows overlap, so threads take blocks of
// output rows tall enough that blocks two apart never touch the same input row, and run in two
// phases (even blocks, then odd ones): no two threads write the same element, without atomics. The
// blocks follow from the geometry alone, so every input element sums its terms in the same order
// at any thread count: the result does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <type_traits>

#include "cpu_blocking.h"
#include "huge_pages.h"
#include "location_products.h"
#include "patches.h"

namespace lc_cuda {
at::Tensor cpu_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                          const Geometry& g, ProductIsa isa) {
  const at::Tensor filters = weight.contiguous();
  const cpu::Strides4 go_strides{grad_output.stride(0), grad_output.stride(1),
                                 grad_output.stride(2), grad_output.stride(3)};
  const int64_t patch_size = g.patch_size(), out_channels = g.out_channels;
  const int64_t sample_size = g.in_channels * g.in_h * g.in_w;
  const int64_t row_count = g.in_channels * g.kernel_h;
  // The strides of the contiguous block the patch gradients are added into.
  const cpu::Strides4 block_strides{sample_size, g.in_h * g.in_w, g.in_w, 1};
  // Output rows per block: blocks b and b + 2 read disjoint input rows when the kernel's span
  // fits in (rows + 1) strides.
  const int64_t span_h = g.dilation_h * (g.kernel_h - 1) + 1;
  const int64_t block_rows =
      std::max<int64_t>(1, (span_h + g.stride_h - 1) / g.stride_h - 1);
  const int64_t row_blocks = (g.out_h + block_rows - 1) / block_rows;

  at::Tensor grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                  "lc_cuda_cpu_grad_input", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    // float and double sum straight into grad_input; float16 and bfloat16 into a float block of
    // the scratch, rounded once at the end.
    constexpr bool in_place = std::is_same_v<scalar_t, opmath_t>;
    grad_input = cpu::empty_on_huge_pages(input_shape(g), grad_output.options());
    if (in_place) grad_input.zero_();
    if (g.batch == 0) return;
    // Per thread: a tile's staged grad_output, one location's patch rows and patch gradients.
    const auto per_thread = [&](int64_t samples, int64_t tile) {
      return cpu::line_bytes(tile * cpu::staged_stride(samples, out_channels, sizeof(scalar_t)),
                             sizeof(scalar_t)) +
             cpu::line_bytes(row_count, sizeof(cpu::PatchRow)) +
             cpu::line_bytes(samples * patch_size, sizeof(opmath_t));
    };
    const auto shared = [&](int64_t samples) {
      return in_place ? 0 : cpu::line_bytes(samples * sample_size, sizeof(opmath_t));
    };
    const cpu::PassScratch pass = cpu::plan_pass(g, per_thread, shared);
    const cpu::Blocking& block = pass.block;
    const int64_t row_tiles = cpu::tiles_per_row(g, block.tile);
    const int64_t staged_stride =
        cpu::staged_stride(block.samples, out_channels, sizeof(scalar_t));

    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* w = filters.const_data_ptr<scalar_t>();
    scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();

    for (int64_t n0 = 0; n0 < g.batch; n0 += block.samples) {
      const int64_t samples = std::min(block.samples, g.batch - n0);
      opmath_t* sums = in_place ? reinterpret_cast<opmath_t*>(gi + n0 * sample_size)
                                : reinterpret_cast<opmath_t*>(pass.shared());
      if (!in_place) std::fill(sums, sums + samples * sample_size, opmath_t(0));
      for (int64_t phase = 0; phase < 2; ++phase) {
        const int64_t phase_blocks = (row_blocks - phase + 1) / 2;
        at::parallel_for(0, phase_blocks, 1, [&](int64_t begin, int64_t end) {
          const cpu::SingleThreadedBlas one_thread;
          cpu::ScratchSlice slice(pass);
          scalar_t* staged = slice.take<scalar_t>(block.tile * staged_stride);
          cpu::PatchRow* rows = slice.take<cpu::PatchRow>(row_count);
          opmath_t* grad_patches = slice.take<opmath_t>(block.samples * patch_size);
          for (int64_t index = begin; index < end; ++index) {
            const int64_t first_row = (2 * index + phase) * block_rows;
            const int64_t last_row = std::min(first_row + block_rows, g.out_h);
            for (int64_t i = first_row; i < last_row; ++i) {
              for (int64_t tile = 0; tile < row_tiles; ++tile) {
                const int64_t j0 = tile * block.tile;
                const int64_t width = std::min(block.tile, g.out_w - j0);
                cpu::stage_grad_output(go, go_strides, g, i, j0, width, n0, samples,
                                       staged_stride, staged);
                for (int64_t t = 0; t < width; ++t) {
                  const int64_t location = i * g.out_w + j0 + t;
                  cpu::location_grad_patches(isa, out_channels, samples, patch_size,
                                             w + location * out_channels * patch_size,
                                             staged + t * staged_stride, grad_patches);
                  cpu::patch_rows(g, block_strides, i, j0 + t, rows);
                  cpu::scatter_location(isa, grad_patches, rows, g, samples, sums);
                }
              }
            }
          }
        });
      }
      if (!in_place) {
        grad_input.narrow(0, n0, samples)
            .view({-1})
            .copy_(at::from_blob(sums, {samples * sample_size}, at::dtype(at::kFloat)));
      }
    }
  });
  return grad_input;
}

}  // namespace lc_cuda
