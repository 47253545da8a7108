// The CPU grad_input. Per output location and channel group one product (location_products.h)
// turns the location's grad_output (samples x C_out/groups) into its patch gradients
// (samples x K), which are added onto the input positions the patch read (on the vector ISAs,
// those of up to 4 neighbouring locations at once: scatter_run); or, where the geometry
// fits the row tiles and a location's products are too small to pay for its scatter (few filters
// or a short patch: fmri_decoder_3d, depthwise, genomics), per output row and group, vectorised
// over the input columns it adds onto (vector_kernels.h: grad_input_row). Windows of neighbouring
// output rows (of a 3D output, output planes) overlap, so threads take blocks of rows (planes) in
// two phases (cpu_blocking.h: RowBlocks): no two threads write the same element, without
// atomics. Where the batch gives each thread enough samples, threads take ranges of samples
// instead, which write disjoint samples. Either way every input element sums its terms in the
// same order (the locations' order, the blocks following from the geometry alone), so the result
// does not depend on the thread count; except where the rows' staging fits the scratch budget at
// one thread count and not at another, which changes the path, and the rounding with it.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>

#include <type_traits>

#include "cpu_blocking.h"
#include "location_products.h"
#include "output_memory.h"
#include "patches.h"

namespace lc_cuda {
namespace {

// The fewest samples per thread for which grad_input splits the batch between threads.
constexpr int64_t kSamplesPerThread = 8;
// The fewest float sums a thread zeroes (256 KiB).
constexpr int64_t kZeroGrain = 1 << 16;

}  // namespace

at::Tensor cpu_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                          const Geometry& g, ProductIsa isa) {
  const at::Tensor filters = weight.contiguous();
  const cpu::Strides5 go_strides = cpu::strides5(grad_output);
  const int64_t patch_size = g.patch_size(), out_channels = g.out_channels;
  const int64_t filter_size = out_channels * patch_size, group_size = g.group_out_channels();
  const int64_t sample_size = g.input_sample();
  const int64_t row_count = cpu::patch_row_count(g);
  // The strides of the contiguous block the patch gradients are added into.
  const cpu::Strides5 block_strides{sample_size, g.in_d * g.in_h * g.in_w, g.in_h * g.in_w,
                                    g.in_w, 1};
  const cpu::RowBlocks row_blocks(g);

  at::Tensor grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                  "lc_cuda_cpu_grad_input", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    // float and double sum straight into grad_input; float16 and bfloat16 into a float block of
    // the scratch, rounded once at the end.
    constexpr bool in_place = std::is_same_v<scalar_t, opmath_t>;
    grad_input = cpu::empty_output(input_shape(g), grad_output.options());
    if (in_place) grad_input.zero_();
    if (g.batch == 0) return;
    // Once: float16 and bfloat16's float sums.
    const auto shared = [&](int64_t samples) {
      return in_place ? 0 : cpu::line_bytes(samples * sample_size, sizeof(opmath_t));
    };
    // By output rows (vector_kernels.h: grad_input_row) where the geometry fits and a row
    // chunk's staging for one sample on every thread, with one sample's sums, fits the budget;
    // else per location.
    const bool by_rows =
        cpu::backward_by_rows<scalar_t>(isa, g) &&
        at::get_num_threads() *
                    (cpu::line_bytes(cpu::grad_input_row_scratch(g, 1), sizeof(float)) +
                     cpu::line_bytes(row_count, sizeof(int64_t))) +
                shared(1) <=
            cpu::scratch_budget_bytes();
    // Per location, the patch gradients of `run` neighbouring locations at a time, added onto
    // the sums together (scatter_run) where one or two of the ISA's vectors span their rows: one
    // load-add-store of grad_input per vector, patch row and sample for the run, not one per
    // location.
    const int64_t run = std::is_same_v<opmath_t, float> ? cpu::scatter_run_length(isa, g) : 1;
    // Per thread: by rows, the staged filters and grad_output and the patch rows' destinations;
    // per location, a tile's staged grad_output, the patch rows (by runs, every group's
    // destinations) and a run's patch gradients.
    const auto per_thread = [&](int64_t samples, int64_t tile) {
      if (by_rows) {
        return cpu::line_bytes(cpu::grad_input_row_scratch(g, samples), sizeof(float)) +
               cpu::line_bytes(row_count, sizeof(int64_t));
      }
      return cpu::line_bytes(tile * cpu::staged_stride(samples, out_channels, sizeof(scalar_t)),
                             sizeof(scalar_t)) +
             (run > 1 ? cpu::line_bytes(g.groups * row_count, sizeof(int64_t))
                      : cpu::line_bytes(row_count, sizeof(cpu::PatchRow))) +
             cpu::line_bytes(run * samples * patch_size, sizeof(opmath_t));
    };
    // Where even one sample's tile of kMaxTile locations exceeds the budget, tiles of one run:
    // runs then start where they would in whole tiles.
    const cpu::PassScratch pass =
        cpu::plan_pass(g, per_thread, shared, /*least_tile=*/by_rows ? 1 : run);
    const cpu::Blocking& block = pass.block;
    const int64_t row_tiles = cpu::tiles_per_row(g, block.tile);
    const int64_t staged_stride =
        cpu::staged_stride(block.samples, out_channels, sizeof(scalar_t));

    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* w = filters.const_data_ptr<scalar_t>();
    scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();

    // Samples [first, first + count) of the block, at the output rows (z, i) row_begin ..
    // row_end (flattened over depth and height), every location and group, into sums; the
    // thread's scratch slice carved as per_thread says.
    const auto rows_into = [&](int64_t n0, int64_t first, int64_t count, int64_t row_begin,
                               int64_t row_end, opmath_t* sums, cpu::ScratchSlice& slice) {
      if (by_rows) {
        float* staging = slice.take<float>(cpu::grad_input_row_scratch(g, block.samples));
        int64_t* dest = slice.take<int64_t>(row_count);
        for (int64_t row = row_begin; row < row_end; ++row) {
          for (int64_t group = 0; group < g.groups; ++group) {
            // (by_rows holds for float sums alone: the cast names their type for double, whose
            // dispatch compiles this branch too.)
            cpu::grad_input_row(isa, go + (n0 + first) * go_strides.n, go_strides, g,
                                row / g.out_h, row % g.out_h, group, count, w,
                                reinterpret_cast<float*>(sums + first * sample_size), staging,
                                dest);
          }
        }
        return;
      }
      scalar_t* staged = slice.take<scalar_t>(block.tile * staged_stride);
      cpu::PatchRow* rows = run > 1 ? nullptr : slice.take<cpu::PatchRow>(row_count);
      // By runs, every group's patch-row destinations, once per output row.
      int64_t* dest = run > 1 ? slice.take<int64_t>(g.groups * row_count) : nullptr;
      opmath_t* grad_patches = slice.take<opmath_t>(run * block.samples * patch_size);
      for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t z = row / g.out_h, i = row % g.out_h;
        if (run > 1) {
          for (int64_t group = 0; group < g.groups; ++group)
            cpu::grad_input_row_destinations(g, z, i, group, dest + group * row_count);
        }
        for (int64_t tile = 0; tile < row_tiles; ++tile) {
          const int64_t j0 = tile * block.tile;
          const int64_t width = std::min(block.tile, g.out_w - j0);
          cpu::stage_grad_output(go, go_strides, g, z, i, j0, /*step=*/1, width, n0 + first,
                                 count, staged_stride, staged);
          // Runs start at multiples of `run` in the output row (the tile, of kMaxTile, of the
          // whole row or of one run, starts at one): every element's sum in the same order at
          // any thread count and budget.
          for (int64_t t0 = 0; t0 < width; t0 += run) {
            const int64_t locations = std::min(run, width - t0);
            for (int64_t group = 0; group < g.groups; ++group) {
              for (int64_t u = 0; u < locations; ++u) {
                const int64_t j = j0 + t0 + u;
                const scalar_t* filters =
                    w + g.region_of(z, i, j) * filter_size + group * group_size * patch_size;
                // The next product's filters are fetched meanwhile (none past the row):
                // otherwise each location's first chunks of K stall on memory.
                const scalar_t* next =
                    u + 1 < locations ? w + g.region_of(z, i, j + 1) * filter_size +
                                            group * group_size * patch_size
                    : group + 1 < g.groups
                        ? w + g.region_of(z, i, j0 + t0) * filter_size +
                              (group + 1) * group_size * patch_size
                    : j + 1 < g.out_w ? w + g.region_of(z, i, j + 1) * filter_size
                                      : nullptr;
                cpu::location_grad_patches(
                    isa, group_size, count, patch_size, filters,
                    staged + (t0 + u) * staged_stride + group * count * group_size, next,
                    grad_patches + u * count * patch_size);
              }
              if (run > 1) {
                // (run > 1 for float sums alone: the casts name their type for double, whose
                // dispatch compiles this branch too.)
                cpu::scatter_run(isa, reinterpret_cast<const float*>(grad_patches),
                                 dest + group * row_count, g, j0 + t0, locations, count,
                                 reinterpret_cast<float*>(sums + first * sample_size));
                continue;
              }
              cpu::patch_rows(g, block_strides, z, i, j0 + t0, group, rows);
              cpu::scatter_location(isa, grad_patches, rows, g, count,
                                    sums + first * sample_size);
            }
          }
        }
      }
    };
    // Where the block gives every thread kSamplesPerThread samples or more, threads take ranges
    // of samples instead of blocks of rows: they write disjoint samples, with no phases (whose
    // few blocks of a short output leave a thread idle), and each sample's sums run in the same
    // location order either way.
    const int64_t threads = at::get_num_threads();

    for (int64_t n0 = 0; n0 < g.batch; n0 += block.samples) {
      const int64_t samples = std::min(block.samples, g.batch - n0);
      opmath_t* sums = in_place ? reinterpret_cast<opmath_t*>(gi + n0 * sample_size)
                                : reinterpret_cast<opmath_t*>(pass.shared());
      // Zeroed by every thread, not by one while the others wait (bfloat16's grad_input, one
      // process, 2 threads: mid_32x32_c64 0.94-0.95x, DeepFace L5 0.96-0.98x, YOLOv1 0.97x).
      if (!in_place) {
        at::parallel_for(0, samples * sample_size, kZeroGrain, [&](int64_t begin, int64_t end) {
          std::fill(sums + begin, sums + end, opmath_t(0));
        });
      }
      if (threads > 1 && samples >= threads * kSamplesPerThread) {
        at::parallel_for(0, samples, ceil_div(samples, threads),
                         [&](int64_t begin, int64_t end) {
          const cpu::SingleThreadedBlas one_thread;
          // The rows in the phases' order (even blocks, then odd ones), which fixes the order
          // of every element's sum: the same as at one thread.
          for (int64_t phase = 0; phase < 2; ++phase) {
            for (int64_t index = phase; index < row_blocks.count(); index += 2) {
              cpu::ScratchSlice slice(pass);
              rows_into(n0, begin, end - begin, row_blocks.begin(index), row_blocks.end(index),
                        sums, slice);
            }
          }
        });
      } else {
        for (int64_t phase = 0; phase < 2; ++phase) {
          at::parallel_for(0, row_blocks.in_phase(phase), 1, [&](int64_t begin, int64_t end) {
            const cpu::SingleThreadedBlas one_thread;
            for (int64_t index = 2 * begin + phase; index < 2 * end + phase; index += 2) {
              cpu::ScratchSlice slice(pass);
              rows_into(n0, 0, samples, row_blocks.begin(index), row_blocks.end(index), sums,
                        slice);
            }
          });
        }
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
