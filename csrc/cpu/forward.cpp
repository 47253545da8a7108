// The CPU forward. Threads take tiles of up to 16 neighbouring locations of one output row, so
// each reads its own part of the weight once per sample block. Per location and channel group
// one product (location_products.h): the group's rows of the location's region's filter bank
// (C_out/groups x K, contiguous in the weight) times the group's packed patches (samples x K),
// or, where the batch is large against a patch row, times the input read in place (float, and
// bfloat16 on AVX512-BF16 by pairs of neighbouring kernel columns; vector_kernels.h:
// forward_in_place); the tile's results staged and written to the (N, C_out, D, H, W) output as
// contiguous runs (bfloat16 and float16 rounded by vectors, write_tile).
// Short patches on the vector kernels go by runs of whole tiles instead (forward_row_run: one
// vector over a tile's locations, written in place).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include "cpu_blocking.h"
#include "location_products.h"
#include "output_memory.h"
#include "patches.h"

namespace lc_cuda {

at::Tensor cpu_forward(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, const Geometry& g,
                       ProductIsa isa) {
  auto out = cpu::empty_output(output_shape(g), input.options());
  if (g.batch == 0) return out;
  const at::Tensor filters = weight.contiguous();
  const at::Tensor bias_values = bias.has_value() ? bias->contiguous() : at::Tensor();
  const bool shared_bias = bias_values.defined() && bias_values.dim() == 1;
  const cpu::Strides5 in_strides = cpu::strides5(input);
  const int64_t patch_size = g.patch_size(), out_channels = g.out_channels;
  const int64_t filter_size = out_channels * patch_size, group_size = g.group_out_channels();
  const int64_t locations = g.locations(), regions = g.regions();
  const int64_t row_count = cpu::patch_row_count(g);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "lc_cuda_cpu_forward", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    // Short patches on the vector kernels go by runs of row tiles, each tile's outputs computed
    // as vectors over its locations, where their scratch (a tile's filters, at least) fits the
    // budget.
    const int64_t threads = at::get_num_threads(), budget = cpu::scratch_budget_bytes();
    const auto run_bytes = [&](int64_t tiles) {
      return cpu::line_bytes(cpu::row_run_scratch(g, tiles), sizeof(float));
    };
    const bool by_row_tiles =
        cpu::forward_by_row_tiles<scalar_t>(isa, g, in_strides) && threads * run_bytes(1) <= budget;
    int64_t run_tiles =
        by_row_tiles ? cpu::forward_row_run_tiles(g, threads, cpu::row_tile_filters(isa)) : 1;
    while (run_tiles > 1 && threads * run_bytes(run_tiles) > budget) run_tiles /= 2;
    // Per location otherwise: packed patches, or reading the input in place.
    const bool reads_in_place =
        !by_row_tiles && cpu::forward_reads_input_in_place<scalar_t>(isa, g, in_strides, budget);
    // The vector kernels round a tile's staged results of bfloat16 and float16 into the output
    // (write_tile), the tile's bias as a row of kMaxTile per output channel: rounded one at a time
    // they had cost 15% of DeepFace L6's forward; float's plain copies gained nothing from it
    // (L6 1.00x, mid_32x32_c64 1.02x, convnet_local3's tiles of 6 1.13x slower).
    const bool writes_by_vectors = cpu::kVectorType<scalar_t> &&
                                   !std::is_same_v<scalar_t, float> && isa != ProductIsa::blas;
    const int64_t bias_row_floats =
        writes_by_vectors && bias_values.defined() ? out_channels * cpu::kMaxTile : 0;
    // Per thread: a run's patch rows and staged filters (by row tiles); otherwise the patch rows
    // of the locations packed at once and their patches (of one group) or one location's
    // transposed filters (in place), a tile's staged results and its bias rows.
    const auto per_thread = [&](int64_t samples, int64_t tile) {
      if (by_row_tiles) return run_bytes(run_tiles);
      const int64_t locations = cpu::packed_locations(!reads_in_place, tile);
      return cpu::line_bytes(locations * row_count, sizeof(cpu::PatchRow)) +
             cpu::line_bytes(bias_row_floats, sizeof(float)) +
             (reads_in_place ? cpu::line_bytes(cpu::in_place_filter_floats<scalar_t>(g),
                                               sizeof(float))
                       : cpu::line_bytes(locations * samples * patch_size, sizeof(scalar_t))) +
             cpu::line_bytes(tile * cpu::staged_stride(samples, out_channels, sizeof(opmath_t)),
                             sizeof(opmath_t));
    };
    const cpu::PassScratch pass = cpu::plan_pass(g, per_thread);
    const cpu::Blocking& block = pass.block;
    const int64_t pack_run = cpu::packed_locations(!reads_in_place, block.tile);
    // A unit of work: a run of row tiles, or a tile of the per-location path.
    const int64_t unit_width = by_row_tiles ? run_tiles * cpu::kRowTileLocations : block.tile;
    const int64_t row_tiles = cpu::tiles_per_row(g, unit_width);
    const int64_t staged_stride =
        cpu::staged_stride(block.samples, out_channels, sizeof(opmath_t));

    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const scalar_t* w = filters.const_data_ptr<scalar_t>();
    const scalar_t* b = bias_values.defined() ? bias_values.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();

    for (int64_t n0 = 0; n0 < g.batch; n0 += block.samples) {
      const int64_t samples = std::min(block.samples, g.batch - n0);
      at::parallel_for(0, g.out_d * g.out_h * row_tiles, 1, [&](int64_t begin, int64_t end) {
        const cpu::SingleThreadedBlas one_thread;
        cpu::ScratchSlice slice(pass);
        if (by_row_tiles) {
          float* run_scratch = slice.take<float>(cpu::row_run_scratch(g, run_tiles));
          for (int64_t unit = begin; unit < end; ++unit) {
            const int64_t row = unit / row_tiles, j0 = (unit % row_tiles) * unit_width;
            cpu::forward_row_run(isa, in + n0 * in_strides.n, in_strides, g, row / g.out_h,
                                 row % g.out_h, j0, std::min(unit_width, g.out_w - j0), samples,
                                 w, b, shared_bias, o + n0 * out_channels * locations,
                                 run_scratch);
          }
          return;
        }
        cpu::PatchRow* rows = slice.take<cpu::PatchRow>(pack_run * row_count);
        scalar_t* patches = reads_in_place
                                ? nullptr
                                : slice.take<scalar_t>(pack_run * block.samples * patch_size);
        float* filters_t =
            reads_in_place ? slice.take<float>(cpu::in_place_filter_floats<scalar_t>(g)) : nullptr;
        opmath_t* staged = slice.take<opmath_t>(block.tile * staged_stride);
        float* bias_rows = bias_row_floats > 0 ? slice.take<float>(bias_row_floats) : nullptr;
        for (int64_t unit = begin; unit < end; ++unit) {
          const int64_t row = unit / row_tiles, j0 = (unit % row_tiles) * block.tile;
          const int64_t z = row / g.out_h, i = row % g.out_h;
          const int64_t width = std::min(block.tile, g.out_w - j0);
          const int64_t first_location = row * g.out_w + j0;
          // Each location's weight region (itself where nothing is shared).
          int64_t tile_regions[cpu::kMaxTile];
          for (int64_t t = 0; t < width; ++t) tile_regions[t] = g.region_of(z, i, j0 + t);
          for (int64_t t0 = 0; t0 < width; t0 += pack_run) {
            const int64_t count = std::min(pack_run, width - t0);
            for (int64_t group = 0; group < g.groups; ++group) {
              const int64_t group_offset = group * group_size * patch_size;
              for (int64_t u = 0; u < count; ++u)
                cpu::patch_rows(g, in_strides, z, i, j0 + t0 + u, group, rows + u * row_count);
              if (reads_in_place) {  // one location at a time
                const scalar_t* group_filters = w + tile_regions[t0] * filter_size + group_offset;
                // The next product's filters are fetched meanwhile (none past the row).
                const scalar_t* next =
                    group + 1 < g.groups   ? group_filters + group_size * patch_size
                    : t0 + 1 < width       ? w + tile_regions[t0 + 1] * filter_size
                    : j0 + width < g.out_w ? w + g.region_of(z, i, j0 + width) * filter_size
                                           : nullptr;
                cpu::location_forward_in_place(
                    isa, group_size, samples, in + n0 * in_strides.n, in_strides, rows, g,
                    group_filters, filters_t, next,
                    staged + t0 * staged_stride + group * samples * group_size);
                continue;
              }
              cpu::pack_locations(isa, in + n0 * in_strides.n, in_strides, rows, count, g,
                                  samples, patches);
              for (int64_t u = 0; u < count; ++u) {
                cpu::location_forward(
                    isa, group_size, samples, patch_size,
                    w + tile_regions[t0 + u] * filter_size + group_offset,
                    patches + u * samples * patch_size,
                    staged + (t0 + u) * staged_stride + group * samples * group_size);
              }
            }
          }
          if (writes_by_vectors) {
            if (bias_rows != nullptr) {
              for (int64_t c = 0; c < out_channels; ++c)
                for (int64_t t = 0; t < width; ++t)
                  bias_rows[c * cpu::kMaxTile + t] =
                      static_cast<float>(shared_bias ? b[c] : b[c * regions + tile_regions[t]]);
            }
            cpu::write_tile(isa, staged, staged_stride, width, g, samples, bias_rows,
                            cpu::kMaxTile, o + n0 * out_channels * locations + first_location,
                            locations);
            continue;
          }
          // Each (n, c) run lies a whole plane from the next, which no hardware prefetcher
          // follows: the run of the row's next tile is fetched for writing now.
          for (int64_t n = 0; n < samples; ++n) {
            for (int64_t c = 0; c < out_channels; ++c) {
              scalar_t* run = o + ((n0 + n) * out_channels + c) * locations + first_location;
              __builtin_prefetch(run + width, /*write=*/1);
              const opmath_t* from = staged + cpu::staged_offset(g, samples, n, c);
              if (b == nullptr) {
                for (int64_t t = 0; t < width; ++t) run[t] = from[t * staged_stride];
              } else if (shared_bias) {
                const opmath_t offset = b[c];
                for (int64_t t = 0; t < width; ++t) run[t] = from[t * staged_stride] + offset;
              } else {
                const scalar_t* offsets = b + c * regions;
                for (int64_t t = 0; t < width; ++t)
                  run[t] = from[t * staged_stride] +
                           static_cast<opmath_t>(offsets[tile_regions[t]]);
              }
            }
          }
        }
      });
    }
  });
  return out;
}

}  // namespace lc_cuda
