// Moving data between the (N, C, D, H, W) tensors (every call viewed with three spatial
// dimensions, geometry.h) and the dense matrices the CPU kernels' products take: one output
// location's patches over one channel group as a (samples x K) matrix, K = C_in/groups*KD*KH*KW
// in the weight's (c, a, p, q) order (the gather the forward and grad_weight pack, and its
// adjoint, the scatter-add of grad_input), and a tile of grad_output.
#pragma once

#include <algorithm>
#include <cstdint>

#include "local_conv.h"

namespace lc_cuda {
namespace cpu {

// Element strides of a 5-D (N, C, D, H, W) tensor, any layout.
struct Strides5 {
  int64_t n, c, d, h, w;
};

inline Strides5 strides5(const at::Tensor& tensor) {
  return {tensor.stride(0), tensor.stride(1), tensor.stride(2), tensor.stride(3),
          tensor.stride(4)};
}

// The rows of one group's patch: (c, a, p) over the group's channels and the kernel's depth and
// height; each row holds kernel_w columns.
inline int64_t patch_row_count(const Geometry& g) {
  return g.group_in_channels() * g.kernel_d * g.kernel_h;  // patch_size / kernel_w, no division
}

// The kernel columns q whose input column j*stride_w + q*dilation_w - pad_w lies inside the input:
// [first, last); the others read the zero padding.
struct ColumnRange {
  int64_t first, last;
};

inline ColumnRange valid_columns(const Geometry& g, int64_t j) {
  const int64_t left = j * g.stride_w - g.pad_w;
  int64_t first = 0;
  while (first < g.kernel_w && left + first * g.dilation_w < 0) ++first;
  int64_t last = g.kernel_w;
  while (last > first && left + (last - 1) * g.dilation_w >= g.in_w) --last;
  return {first, last};
}

// One (c, a, p) row of the patch of one output location: its kernel columns q in [first, last) read
// the input, starting at element `source` of a sample (the element column `first` reads); the
// other columns, and the whole row where first == last, read the zero padding. The rows depend on
// the location alone, so they are worked out once per location and used for every sample.
struct PatchRow {
  int64_t source, first, last;
};

// Calls visit(r, start) for each (c, a, p) row r of a channel group's patch at output row
// (z, i), in the weight's (c, a, p) order: `start` is the element of input column 0 of the row
// read, counted from the group's first channel of a sample with strides s, or -1 where the row
// lies in the padding (every column of it reads zeros).
template <typename Visit>
void for_each_patch_row(const Geometry& g, const Strides5& s, int64_t z, int64_t i,
                        Visit&& visit) {
  int64_t r = 0;
  const int64_t channels = g.group_in_channels();  // a division: not once per iteration
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t a = 0; a < g.kernel_d; ++a) {
      const int64_t x_d = z * g.stride_d - g.pad_d + a * g.dilation_d;
      for (int64_t p = 0; p < g.kernel_h; ++p, ++r) {
        const int64_t y = i * g.stride_h - g.pad_h + p * g.dilation_h;
        const bool inside = x_d >= 0 && x_d < g.in_d && y >= 0 && y < g.in_h;
        visit(r, inside ? c * s.c + x_d * s.d + y * s.h : int64_t(-1));
      }
    }
  }
}

// The destinations of the patch rows of output row (z, i) and channel group `group`: the input
// row each adds onto, in a contiguous block of samples (-1: the row lies in the padding).
inline void grad_input_row_destinations(const Geometry& g, int64_t z, int64_t i, int64_t group,
                                        int64_t* dest) {
  const int64_t sample_size = g.input_sample();
  const Strides5 block{sample_size, g.in_d * g.in_h * g.in_w, g.in_h * g.in_w, g.in_w, 1};
  const int64_t group_start = group * g.group_in_channels() * block.c;
  for_each_patch_row(g, block, z, i, [&](int64_t r, int64_t start) {
    dest[r] = start < 0 ? -1 : group_start + start;
  });
}

// The patch_row_count rows of the patch of channel group `group` at output location (z, i, j),
// in the weight's (c, a, p) order, for an input with strides s.
inline void patch_rows(const Geometry& g, const Strides5& s, int64_t z, int64_t i, int64_t j,
                       int64_t group, PatchRow* rows) {
  const ColumnRange cols = valid_columns(g, j);
  const int64_t offset = group * g.group_in_channels() * s.c +
                         (j * g.stride_w - g.pad_w + cols.first * g.dilation_w) * s.w;
  for_each_patch_row(g, s, z, i, [&](int64_t r, int64_t start) {
    rows[r] = start < 0 ? PatchRow{0, 0, 0} : PatchRow{start + offset, cols.first, cols.last};
  });
}

// The elements between the inputs two neighbouring kernel columns read.
inline int64_t column_step(const Geometry& g, const Strides5& s) { return g.dilation_w * s.w; }

// patches[n][(c, a, p, q)] = padded input[n, c, z*sd + a*dd, i*sh + p*dh, j*sw + q*dw] for
// n < samples: sample n starts at input + n*sample_stride, `rows` are the location's patch_rows.
// For `locations` locations at once: location u's patch_rows at rows + u * patch_row_count, its
// patches at patches + u * samples * K.
template <typename scalar_t>
void pack_patches(const scalar_t* input, int64_t sample_stride, int64_t step,
                  const PatchRow* rows, int64_t locations, const Geometry& g, int64_t samples,
                  scalar_t* patches) {
  const int64_t row_count = patch_row_count(g), kernel_w = g.kernel_w;
  const int64_t patch_size = g.patch_size();
  for (int64_t n = 0; n < samples; ++n) {
    const scalar_t* sample = input + n * sample_stride;
    for (int64_t r = 0; r < row_count; ++r) {
      // The locations' copies of one row one after another, as the vector kernels pack them.
      for (int64_t u = 0; u < locations; ++u) {
        const PatchRow& row = rows[u * row_count + r];
        scalar_t* to = patches + (u * samples + n) * patch_size + r * kernel_w;
        std::fill(to, to + row.first, scalar_t(0));
        const scalar_t* from = sample + row.source;
        for (int64_t q = row.first; q < row.last; ++q, from += step) to[q] = *from;
        std::fill(to + row.last, to + kernel_w, scalar_t(0));
      }
    }
  }
}

// The adjoint of pack_patches into a contiguous (samples, C_in, D, H, W) block:
// grad_input[n, ...] += grad_patches[n][(c, a, p, q)] for the columns that read the input
// (`rows` worked out for the block's strides), dropping what falls on the padding.
template <typename acc_t, typename patch_t>
void scatter_add_patches(const patch_t* grad_patches, const PatchRow* rows, const Geometry& g,
                         int64_t samples, acc_t* grad_input) {
  const int64_t row_count = patch_row_count(g), kernel_w = g.kernel_w;
  const int64_t sample_size = g.input_sample();
  for (int64_t n = 0; n < samples; ++n) {
    acc_t* sample = grad_input + n * sample_size;
    const patch_t* from = grad_patches + n * g.patch_size();
    for (int64_t r = 0; r < row_count; ++r, from += kernel_w) {
      const PatchRow& row = rows[r];
      acc_t* to = sample + row.source;
      for (int64_t q = row.first; q < row.last; ++q, to += g.dilation_w)
        *to += static_cast<acc_t>(from[q]);
    }
  }
}

// The elements between the staged (samples x C_out) matrices of neighbouring locations of a tile:
// the matrix rounded up to whole cache lines, plus one line. Moving a tile between NCHW and the
// staged matrices touches every matrix of the tile at the same offset; at a power-of-two matrix
// size (cunn232_c1: 64 samples x 16 channels, 4 KiB) those would all fall in one L1 set.
inline int64_t staged_stride(int64_t samples, int64_t out_channels, int64_t element_size) {
  constexpr int64_t line = 64;
  return ((samples * out_channels * element_size + line - 1) / line + 1) * line / element_size;
}

// Where output channel o of a location's staged (samples x C_out) values lies: the matrix is
// group-major, one (samples x C_out/groups) matrix per channel group, which the group's product
// reads or writes whole (row n at n*C_out/groups). With one group, row n at n*C_out.
inline int64_t staged_offset(const Geometry& g, int64_t samples, int64_t n, int64_t o) {
  // Without groups, no divisions: they cost as much as the copies around the calls on
  // cunn232_c1's short rows.
  if (g.groups == 1) return n * g.out_channels + o;
  const int64_t group_size = g.group_out_channels();
  return (o / group_size * samples + n) * group_size + o % group_size;
}

// Stages grad_output[n0 + n, o, z, i, j0 + t*step] as a tile of locations, each a group-major
// samples x C_out matrix (staged_offset) starting at staged + t*stride (`stride` from
// staged_stride). grad_output may have any strides. Each (n, o) run is a cache line or two a whole
// plane away from the next, which no hardware prefetcher follows: the run the next tile of the
// row needs is fetched now.
template <typename scalar_t>
void stage_grad_output(const scalar_t* grad_output, const Strides5& s, const Geometry& g,
                       int64_t z, int64_t i, int64_t j0, int64_t step, int64_t width, int64_t n0,
                       int64_t samples, int64_t stride, scalar_t* staged) {
  const int64_t column_stride = step * s.w;
  for (int64_t n = 0; n < samples; ++n) {
    for (int64_t o = 0; o < g.out_channels; ++o) {
      const scalar_t* run = grad_output + (n0 + n) * s.n + o * s.c + z * s.d + i * s.h + j0 * s.w;
      __builtin_prefetch(run + width * column_stride);
      scalar_t* to = staged + staged_offset(g, samples, n, o);
      for (int64_t t = 0; t < width; ++t) to[t * stride] = run[t * column_stride];
    }
  }
}

}  // namespace cpu
}  // namespace lc_cuda
