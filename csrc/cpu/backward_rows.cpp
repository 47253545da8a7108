// The CPU backward in one pass over grad_output, where the geometry fits both row paths (the
// patch gradients by output rows, grad_weight by row tiles), one chunk covers an input row and
// grad_output is at least twice the input (vector_kernels.h: backward_row_fits): cunn232_c1,
// medvol_32cube_c2. Each output row's grad_output is staged once, a block of samples at a time
// (two rows of a plane together, vector_kernels.h: backward_row_rows), and serves its patch
// gradients, its grad_weight sums and its bias sums (vector_kernels.h: backward_row); the
// separate passes read it once each, as streams of a few lines per sample and filter
// (cunn232_c1: 16.8 MB three times, at about a third of the copy bandwidth).
//
// Threads take blocks of output rows in two phases (cpu_blocking.h: RowBlocks), each row whole:
// its grad_weight banks and bias sums are the thread's alone, and the patch gradients of rows in
// blocks two apart never meet. Each gradient sums its terms in the order of its separate pass
// (grad_input in the phases' order, grad_weight and the bias over the samples in order), so the
// results are those of cpu_grad_input, cpu_grad_weight and cpu_grad_bias to the bit.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>

#include <type_traits>

#include "cpu_blocking.h"
#include "location_products.h"
#include "output_memory.h"
#include "patches.h"

namespace lc_cuda {

std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> cpu_backward_by_rows(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const Geometry& g, ProductIsa isa, bool want_bias, bool shared_bias) {
  const cpu::Strides5 in_strides = cpu::strides5(input);
  const cpu::Strides5 go_strides = cpu::strides5(grad_output);
  if (g.batch == 0) return std::nullopt;
  const int64_t sample_size = g.input_sample();
  const int64_t filter_size = g.out_channels * g.patch_size();
  std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> result;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                  "lc_cuda_cpu_backward_by_rows", [&] {
    if (!cpu::backward_by_one_row<scalar_t>(isa, g, in_strides)) return;
    // float sums straight into grad_input; float16 and bfloat16 into a float block of the
    // scratch (the whole batch), rounded once at the end.
    constexpr bool in_place = std::is_same_v<scalar_t, float>;
    // Room for the rows backward_row may take at once.
    constexpr int64_t rows_at_once = cpu::kBackwardRowsAtOnce;
    const auto per_thread = [&](int64_t, int64_t) {
      return cpu::line_bytes(rows_at_once * cpu::backward_row_scratch(g), sizeof(float)) +
             cpu::line_bytes(rows_at_once * cpu::backward_row_weight_sums(g), sizeof(float)) +
             cpu::line_bytes(rows_at_once * cpu::patch_row_count(g), sizeof(int64_t));
    };
    const auto shared = [&](int64_t samples) {
      return in_place ? 0 : cpu::line_bytes(samples * sample_size, sizeof(float));
    };
    // Only where the whole batch fits the budget at once.
    if (at::get_num_threads() * per_thread(g.batch, 0) + shared(g.batch) >
        cpu::scratch_budget_bytes()) {
      return;
    }
    const cpu::PassScratch pass = cpu::plan_pass(g, per_thread, shared);

    at::Tensor grad_input = cpu::empty_output(input_shape(g), grad_output.options());
    at::Tensor grad_weight = cpu::empty_output(weight_shape(g), input.options());
    // Per location (C_out, *output sizes), as cpu_grad_bias sums them.
    std::vector<int64_t> bias_shape = output_shape(g);
    bias_shape.erase(bias_shape.begin());
    // (In float32 the bias gradient itself: an output like the others.)
    at::Tensor bias_sums =
        want_bias ? cpu::empty_output(bias_shape, grad_output.options().dtype(at::kFloat))
                  : at::Tensor();
    float* sums = in_place ? reinterpret_cast<float*>(grad_input.mutable_data_ptr<scalar_t>())
                           : reinterpret_cast<float*>(pass.shared());
    at::Tensor sums_block = at::from_blob(sums, {g.batch * sample_size}, at::dtype(at::kFloat));
    sums_block.zero_();  // by every thread

    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const at::Tensor filters = weight.contiguous();
    const scalar_t* w = filters.const_data_ptr<scalar_t>();
    scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
    float* bias = want_bias ? bias_sums.mutable_data_ptr<float>() : nullptr;

    const cpu::RowBlocks row_blocks(g);
    for (int64_t phase = 0; phase < 2; ++phase) {
      at::parallel_for(0, row_blocks.in_phase(phase), 1, [&](int64_t begin, int64_t end) {
        cpu::ScratchSlice slice(pass);
        float* scratch = slice.take<float>(rows_at_once * cpu::backward_row_scratch(g));
        float* weight_sums = slice.take<float>(rows_at_once * cpu::backward_row_weight_sums(g));
        int64_t* dest = slice.take<int64_t>(rows_at_once * cpu::patch_row_count(g));
        for (int64_t index = 2 * begin + phase; index < 2 * end + phase; index += 2) {
          for (int64_t row = row_blocks.begin(index); row < row_blocks.end(index);) {
            // The block's next row too, where it is the next of the same plane.
            const int64_t rows = cpu::backward_row_rows(
                g, go_strides.h, sizeof(scalar_t),
                row + 1 < row_blocks.end(index) && (row + 1) % g.out_h != 0);
            cpu::backward_row(isa, go, go_strides, in, in_strides, g, row / g.out_h,
                              row % g.out_h, rows, w, sums, weight_sums, bias, scratch, dest);
            for (int64_t r = 0; r < rows; ++r, ++row) {
              for (int64_t j0 = 0; j0 < g.out_w; j0 += cpu::kRowTileLocations) {
                cpu::grad_weight_row_banks(
                    isa,
                    weight_sums + r * cpu::backward_row_weight_sums(g) +
                        j0 / cpu::kRowTileLocations * cpu::grad_weight_row_sums(g),
                    g, std::min(cpu::kRowTileLocations, g.out_w - j0),
                    gw + (row * g.out_w + j0) * filter_size);
              }
            }
          }
        }
      });
    }
    if (!in_place) {
      grad_input.view({-1}).copy_(sums_block);
    }
    result.emplace(grad_input, grad_weight,
                   want_bias ? bias_grad_from_sums(bias_sums, g, shared_bias,
                                                   grad_output.scalar_type())
                             : at::Tensor());
  });
  return result;
}

}  // namespace lc_cuda
