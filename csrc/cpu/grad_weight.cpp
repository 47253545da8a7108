// The CPU grad_weight. Per output location and channel group one product (location_products.h):
// the transposed patches (K x samples) times the location's grad_output (samples x
// C_out/groups), summed over the sample blocks in order; in float without sharing, where the
// forward reads the input in place, the input read in place likewise (vector_kernels.h:
// grad_filters_in_place, the same sums), and the banks, written once, streamed past the caches
// (in bfloat16 by vdpbf16ps, the packed products' rounded banks too);
// in bfloat16 on AVX512-BF16 where it fits, the input read in place by pairs of samples from a
// paired copy of it (avx512_bf16::grad_filters_in_place, the same sums as its packed products
// where the sample blocks are even).
//
// A filter bank per location: threads take tiles of neighbouring locations of one output row and
// write disjoint parts of grad_weight. Where the geometry fits the row tiles (few filters or a
// short patch) and the budget a whole tile, a tile's products are vectorised over its locations
// instead (vector_kernels.h: grad_weight_row_tile), into float sums transposed into the banks at
// the end.
//
// Locations that share a bank: threads take units, each a region or a fixed part of one (a chunk
// of its member rows), and sum each member's product into the unit's sums in member order; the
// chunks of a region are added in order at the end. The chunks follow from the geometry (and the
// scratch budget) alone, never from the thread count.
//
// The vector kernels' products add each sample's term in sample order whatever the sample blocks,
// so without sharing their result does not depend on the thread count. Exceptions, where the
// batch is larger than one block (whose size follows from the scratch budget and the thread
// count): with sharing, a tile's members are summed block by block; bfloat16 on AVX512-BF16 adds
// the samples two at a time, so where it packs, a block of odd size shifts the pairs and the
// rounding with them (by pairs in place the blocks are even);
// and the BLAS groups the sum over the batch by sample block. There the result depends on the
// thread count by floating-point reassociation; and so does bfloat16 on AVX512-BF16 where a whole
// row tile fits the budget at one thread count and not at another (the row tiles add one sample
// at a time, the per-location product two).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <immintrin.h>

#include <type_traits>

#include "cpu_blocking.h"
#include "location_products.h"
#include "output_memory.h"
#include "patches.h"
#include "regions.h"

namespace lc_cuda {
namespace {

// Units a shared-weight grad_weight aims at: enough for the threads of a large machine to share
// out, and fixed, so that the order of the sums does not depend on the thread count.
constexpr int64_t kSharedUnits = 16;

// The chunks each region's member rows are cut into: up to kSharedUnits units in all, at most one
// per member row, and the chunks' float sums (regions x chunks banks) within half the budget.
int64_t chunks_per_region(const Geometry& g, int64_t member_rows) {
  const int64_t wanted = (kSharedUnits + g.regions() - 1) / g.regions();
  const int64_t bank_bytes = g.out_channels * g.patch_size() * int64_t(sizeof(float));
  const int64_t fit = cpu::scratch_budget_bytes() / 2 / (g.regions() * bank_bytes);
  const int64_t chunks = std::min({wanted, member_rows, fit});
  return std::max<int64_t>(chunks, 1);
}

}  // namespace

at::Tensor cpu_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                           const Geometry& g, ProductIsa isa) {
  auto grad_weight = cpu::empty_output(weight_shape(g), input.options());
  if (g.batch == 0) return grad_weight.zero_();
  const cpu::Strides5 in_strides = cpu::strides5(input);
  const cpu::Strides5 go_strides = cpu::strides5(grad_output);
  const int64_t patch_size = g.patch_size(), out_channels = g.out_channels;
  const int64_t filter_size = out_channels * patch_size, group_size = g.group_out_channels();
  const int64_t group_filter_size = group_size * patch_size;
  const int64_t row_count = cpu::patch_row_count(g);
  const bool shares = g.shares_weights();
  const auto axes = region_axes(g);
  const int64_t member_rows = axes[0].members * axes[1].members;
  const int64_t chunks = shares ? chunks_per_region(g, member_rows) : 1;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "lc_cuda_cpu_grad_weight", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    // float and double sum straight into grad_weight (with sharing in chunks, into each chunk's
    // float sums); float16 and bfloat16 into float sums (per location of the tile, or the
    // unit's), which are rounded into grad_weight once: by the last sample block's product, or
    // after the unit's last member.
    constexpr bool sums_in_banks = std::is_same_v<scalar_t, opmath_t>;
    // Without sharing, float reads the input in place where the forward does (no packing), and
    // bfloat16 on AVX512-BF16 by pairs of samples (a paired copy of the input) where that fits.
    const int64_t budget = cpu::scratch_budget_bytes();
    const bool float_in_place = !shares && cpu::reads_input_in_place<scalar_t>(isa, g, budget);
    const bool pairs_fit = cpu::grad_weight_reads_pairs_in_place<scalar_t>(
        isa, g, in_strides, input.is_non_overlapping_and_dense(), budget);
    // Where the input may be read in place, one location at a time (location_products.h:
    // packed_locations), also where the pairs are not taken after all.
    const bool packs = !float_in_place && !pairs_fit;
    // Per thread: by row tiles (without sharing, vector_kernels.h: grad_weight_row_tile), the
    // tile's float sums and the kernel's scratch; per location, a tile's staged grad_output,
    // the patch rows of the locations packed at once and their patches (or in place, one
    // location's transposed sums, the columns that read the input and, by pairs, grad_output's
    // pairs: more than the patches of a sample, which they make room for where the pairs are not
    // taken after all), and the float sums (the tile's, or with sharing the unit's).
    const auto per_thread = [&](int64_t samples, int64_t tile) {
      if (cpu::grad_weight_by_row_tiles<scalar_t>(isa, g, in_strides, tile)) {
        return cpu::line_bytes(cpu::grad_weight_row_sums(g), sizeof(float)) +
               cpu::line_bytes(cpu::grad_weight_row_scratch(g, samples), sizeof(float));
      }
      const int64_t locations = cpu::packed_locations(packs, tile);
      return cpu::line_bytes(tile * cpu::staged_stride(samples, out_channels, sizeof(scalar_t)),
                             sizeof(scalar_t)) +
             cpu::line_bytes(locations * row_count, sizeof(cpu::PatchRow)) +
             (!packs
                  ? cpu::line_bytes(patch_size * group_size, sizeof(float)) +
                        cpu::line_bytes(2 * patch_size, sizeof(int64_t)) +
                        (pairs_fit ? cpu::line_bytes(ceil_div(samples, 2) * group_size,
                                                     sizeof(uint32_t))
                                   : 0)
                  : cpu::line_bytes(locations * samples * patch_size, sizeof(scalar_t))) +
             (sums_in_banks ? 0
                       : cpu::line_bytes((shares ? 1 : tile) * filter_size, sizeof(opmath_t)));
    };
    // With sharing in chunks, each unit's sums, added per region at the end; by pairs of
    // samples, the paired input.
    const int64_t chunk_sums = chunks > 1 ? g.regions() * chunks * filter_size : 0;
    const auto shared = [&](int64_t) {
      return cpu::line_bytes(chunk_sums, sizeof(opmath_t)) +
             (pairs_fit ? cpu::line_bytes(cpu::paired_input_words(g), sizeof(uint32_t)) : 0);
    };
    const cpu::PassScratch pass = cpu::plan_pass(g, per_thread, shared);
    cpu::Blocking block = pass.block;
    // By pairs, every sample block starts on an even sample, so that no pair is split: each
    // block but the last takes an even count (a block of one sample packs instead).
    bool pairs_in_place = pairs_fit;
    if (pairs_fit && block.samples < g.batch) {
      if (block.samples == 1)
        pairs_in_place = false;
      else
        block.samples -= block.samples % 2;
    }
    const bool reads_in_place = float_in_place || pairs_in_place;
    const int64_t pack_run = cpu::packed_locations(packs, block.tile);
    const int64_t row_tiles = cpu::tiles_per_row(g, block.tile);
    const int64_t staged_stride =
        cpu::staged_stride(block.samples, out_channels, sizeof(scalar_t));

    const scalar_t* in = input.const_data_ptr<scalar_t>();
    uint32_t* paired = pairs_in_place ? reinterpret_cast<uint32_t*>(pass.shared()) : nullptr;
    const scalar_t* go = grad_output.const_data_ptr<scalar_t>();
    scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();

    // The products of the `width` locations (z, i, j0 + t*step) over the whole batch, location
    // t's bank summed into sums + t*sums_step (accumulated over the sample blocks, and where
    // sums_step is 0, over the tile's locations, onto what sums held already if `onto`);
    // rounded_bank(t), where not null, takes the last block's sums rounded instead. Where
    // `stream_banks` (each location's bank written once here, and the caller fences them), the
    // kernels that can stream the last block's final sums past the caches do (float banks, and
    // the packed vdpbf16ps products' rounded ones; location_products.h: location_grad_filters).
    // `rows` holds pack_run locations' patch rows and `patches` their patches (pack_run at a
    // time, in order); where reads_in_place, sums_t and columns (and by pairs go_pairs) are the
    // kernel's scratch (and patches null).
    const auto tile_products = [&](int64_t z, int64_t i, int64_t j0, int64_t step, int64_t width,
                                   scalar_t* staged, cpu::PatchRow* rows, scalar_t* patches,
                                   float* sums_t, int64_t* columns, uint32_t* go_pairs,
                                   opmath_t* sums, int64_t sums_step, bool onto, bool stream_banks,
                                   const auto& rounded_bank) {
      for (int64_t n0 = 0; n0 < g.batch; n0 += block.samples) {
        const int64_t samples = std::min(block.samples, g.batch - n0);
        const bool last_block = n0 + samples >= g.batch, stream = stream_banks && last_block;
        cpu::stage_grad_output(go, go_strides, g, z, i, j0, step, width, n0, samples,
                               staged_stride, staged);
        for (int64_t t0 = 0; t0 < width; t0 += pack_run) {
          const int64_t count = std::min(pack_run, width - t0);
          for (int64_t group = 0; group < g.groups; ++group) {
            for (int64_t u = 0; u < count; ++u) {
              cpu::patch_rows(g, in_strides, z, i, j0 + (t0 + u) * step, group,
                              rows + u * row_count);
            }
            if (!reads_in_place) {
              cpu::pack_locations(isa, in + n0 * in_strides.n, in_strides, rows, count, g,
                                  samples, patches);
            }
            for (int64_t u = 0; u < count; ++u) {
              const int64_t t = t0 + u;
              scalar_t* rounded = last_block ? rounded_bank(t) : nullptr;
              scalar_t* group_rounded =
                  rounded == nullptr ? nullptr : rounded + group * group_filter_size;
              const bool accumulate = onto || n0 > 0 || (sums_step == 0 && t > 0);
              const scalar_t* group_go = staged + t * staged_stride + group * samples * group_size;
              opmath_t* group_sums = sums + t * sums_step + group * group_filter_size;
              if (pairs_in_place) {  // one location at a time
                cpu::location_grad_filters_pairs_in_place(
                    isa, group_size, samples, paired + n0 / 2 * in_strides.n, in_strides, rows,
                    g, group_go, accumulate, sums_t, columns, go_pairs, group_sums,
                    group_rounded);
              } else if (float_in_place) {  // one location at a time
                cpu::location_grad_filters_in_place(isa, group_size, samples,
                                                    in + n0 * in_strides.n, in_strides, rows, g,
                                                    group_go, accumulate, sums_t, columns,
                                                    group_sums, stream);
              } else {
                cpu::location_grad_filters(isa, group_size, samples, patch_size,
                                           patches + u * samples * patch_size, group_go,
                                           accumulate, group_sums, group_rounded, stream);
              }
            }
          }
        }
      }
    };

    if (cpu::grad_weight_by_row_tiles<scalar_t>(isa, g, in_strides, block.tile)) {
      at::parallel_for(0, g.out_d * g.out_h * row_tiles, 1, [&](int64_t begin, int64_t end) {
        cpu::ScratchSlice slice(pass);
        float* sums = slice.take<float>(cpu::grad_weight_row_sums(g));
        float* scratch = slice.take<float>(cpu::grad_weight_row_scratch(g, block.samples));
        for (int64_t unit = begin; unit < end; ++unit) {
          const int64_t row = unit / row_tiles, j0 = (unit % row_tiles) * block.tile;
          const int64_t width = std::min(block.tile, g.out_w - j0);
          for (int64_t n0 = 0; n0 < g.batch; n0 += block.samples) {
            cpu::grad_weight_row_tile(isa, in + n0 * in_strides.n, in_strides,
                                      go + n0 * go_strides.n, go_strides, g, row / g.out_h,
                                      row % g.out_h, j0, width,
                                      std::min(block.samples, g.batch - n0), n0 > 0, sums,
                                      scratch);
          }
          cpu::grad_weight_row_banks(isa, sums, g, width,
                                     gw + (row * g.out_w + j0) * filter_size);
        }
      });
      return;
    }

    if (!shares) {
      if (pairs_in_place) {
        at::parallel_for(0, ceil_div(g.batch, 2), 1, [&](int64_t begin, int64_t end) {
          cpu::pair_samples(in, g.input_sample(), g.batch, begin, end, paired);
        });
      }
      at::parallel_for(0, g.out_d * g.out_h * row_tiles, 1, [&](int64_t begin, int64_t end) {
        const cpu::SingleThreadedBlas one_thread;
        cpu::ScratchSlice slice(pass);
        scalar_t* staged = slice.take<scalar_t>(block.tile * staged_stride);
        cpu::PatchRow* rows = slice.take<cpu::PatchRow>(pack_run * row_count);
        scalar_t* patches = reads_in_place
                                ? nullptr
                                : slice.take<scalar_t>(pack_run * block.samples * patch_size);
        float* sums_t = reads_in_place ? slice.take<float>(patch_size * group_size) : nullptr;
        int64_t* columns = reads_in_place ? slice.take<int64_t>(2 * patch_size) : nullptr;
        uint32_t* go_pairs =
            pairs_in_place ? slice.take<uint32_t>(ceil_div(block.samples, 2) * group_size)
                           : nullptr;
        opmath_t* tile_sums =
            sums_in_banks ? nullptr : slice.take<opmath_t>(block.tile * filter_size);
        for (int64_t unit = begin; unit < end; ++unit) {
          const int64_t row = unit / row_tiles, j0 = (unit % row_tiles) * block.tile;
          scalar_t* banks = gw + (row * g.out_w + j0) * filter_size;
          tile_products(row / g.out_h, row % g.out_h, j0, /*step=*/1,
                        std::min(block.tile, g.out_w - j0), staged, rows, patches, sums_t,
                        columns, go_pairs,
                        sums_in_banks ? reinterpret_cast<opmath_t*>(banks) : tile_sums,
                        filter_size, /*onto=*/false, /*stream_banks=*/true,
                        [&](int64_t t) {
                          return sums_in_banks ? nullptr : banks + t * filter_size;
                        });
        }
        _mm_sfence();  // the streamed banks are ordered before whatever follows
      });
      return;
    }

    opmath_t* unit_results = reinterpret_cast<opmath_t*>(pass.shared());
    at::parallel_for(0, g.regions() * chunks, 1, [&](int64_t begin, int64_t end) {
      const cpu::SingleThreadedBlas one_thread;
      cpu::ScratchSlice slice(pass);
      scalar_t* staged = slice.take<scalar_t>(block.tile * staged_stride);
      cpu::PatchRow* rows = slice.take<cpu::PatchRow>(pack_run * row_count);
      scalar_t* patches = slice.take<scalar_t>(pack_run * block.samples * patch_size);
      opmath_t* float_sums = sums_in_banks ? nullptr : slice.take<opmath_t>(filter_size);
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t region = unit / chunks, chunk = unit % chunks;
        const int64_t r_w = region % g.regions_w, r_h = region / g.regions_w % g.regions_h;
        const int64_t r_d = region / (g.regions_w * g.regions_h);
        scalar_t* bank = gw + region * filter_size;
        // The unit's sums: its chunk's (float), or the bank itself (float, double), or float
        // sums rounded into the bank at the end.
        opmath_t* sums = chunks > 1  ? unit_results + unit * filter_size
                         : sums_in_banks ? reinterpret_cast<opmath_t*>(bank)
                                    : float_sums;
        bool started = false;
        // The chunk's member rows (m_d, m_h), then along each row the members in tiles, each
        // member's products summed onto the unit's sums in member order.
        for (int64_t m = chunk * member_rows / chunks; m < (chunk + 1) * member_rows / chunks;
             ++m) {
          const int64_t z = r_d * axes[0].region_step + m / axes[1].members * axes[0].member_step;
          const int64_t i = r_h * axes[1].region_step + m % axes[1].members * axes[1].member_step;
          if (z >= g.out_d || i >= g.out_h) continue;  // an empty slot of the region grid
          const int64_t j_first = r_w * axes[2].region_step, step = axes[2].member_step;
          const int64_t row_members =
              std::min(axes[2].members, ceil_div(g.out_w - j_first, step));
          for (int64_t m_w = 0; m_w < row_members; m_w += block.tile, started = true) {
            tile_products(z, i, j_first + m_w * step, step,
                          std::min(block.tile, row_members - m_w), staged, rows, patches,
                          /*sums_t=*/nullptr, /*columns=*/nullptr, /*go_pairs=*/nullptr, sums,
                          /*sums_step=*/0, /*onto=*/started, /*stream_banks=*/false,
                          [](int64_t) -> scalar_t* { return nullptr; });
          }
        }
        if (!started) std::fill(sums, sums + filter_size, opmath_t(0));
        if (chunks == 1 && !sums_in_banks) std::copy(sums, sums + filter_size, bank);
      }
    });
    if (chunks == 1) return;
    // Each region's chunks added in chunk order, rounded once.
    at::parallel_for(0, g.regions(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t region = begin; region < end; ++region) {
        const opmath_t* first = unit_results + region * chunks * filter_size;
        for (int64_t k = 0; k < filter_size; ++k) {
          opmath_t total = first[k];
          for (int64_t chunk = 1; chunk < chunks; ++chunk) total += first[chunk * filter_size + k];
          gw[region * filter_size + k] = static_cast<scalar_t>(total);
        }
      }
    });
  });
  return grad_weight;
}

}  // namespace lc_cuda
