// Moving data between the (N, C, H, W) tensors and the dense matrices the CPU kernels' GEMMs take:
// one output location's patches as a (samples x K) matrix, K = C_in*KH*KW in the weight's
// (c, p, q) order (the gather the forward and grad_weight pack, and its adjoint, the scatter-add
// of grad_input), and a tile of grad_output.
#pragma once

#include <algorithm>
#include <cstdint>

#include "lc_conv2d.h"

namespace lc_cuda {
namespace cpu {

// Element strides of a 4-D (N, C, H, W) tensor, any layout.
struct Strides4 {
  int64_t n, c, h, w;
};

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

// patches[n][(c, p, q)] = padded input[n0 + n, c, i*sh + p*dh, j*sw + q*dw], for n < samples.
template <typename scalar_t>
void pack_patches(const scalar_t* input, const Strides4& s, const Geometry& g, int64_t i,
                  int64_t j, int64_t n0, int64_t samples, scalar_t* patches) {
  const ColumnRange cols = valid_columns(g, j);
  const int64_t top = i * g.stride_h - g.pad_h;
  const int64_t left = j * g.stride_w - g.pad_w;
  const int64_t step = g.dilation_w * s.w;
  const bool dense_run = step == 1;
  for (int64_t n = 0; n < samples; ++n) {
    scalar_t* row = patches + n * g.patch_size();
    for (int64_t c = 0; c < g.in_channels; ++c) {
      const scalar_t* plane = input + (n0 + n) * s.n + c * s.c;
      for (int64_t p = 0; p < g.kernel_h; ++p, row += g.kernel_w) {
        const int64_t y = top + p * g.dilation_h;
        if (y < 0 || y >= g.in_h) {
          std::fill(row, row + g.kernel_w, scalar_t(0));
          continue;
        }
        std::fill(row, row + cols.first, scalar_t(0));
        const scalar_t* source = plane + y * s.h + (left + cols.first * g.dilation_w) * s.w;
        if (dense_run) {
          std::copy(source, source + (cols.last - cols.first), row + cols.first);
        } else {
          for (int64_t q = cols.first; q < cols.last; ++q, source += step) row[q] = *source;
        }
        std::fill(row + cols.last, row + g.kernel_w, scalar_t(0));
      }
    }
  }
}

// The adjoint of pack_patches: grad_padded input[n, c, i*sh + p*dh, j*sw + q*dw] +=
// grad_patches[n][(c, p, q)] for n < samples, dropping what falls on the padding. grad_input is a
// contiguous (samples, C_in, H, W) block.
template <typename acc_t, typename patch_t>
void scatter_add_patches(const patch_t* grad_patches, const Geometry& g, int64_t i, int64_t j,
                         int64_t samples, acc_t* grad_input) {
  const ColumnRange cols = valid_columns(g, j);
  const int64_t top = i * g.stride_h - g.pad_h;
  const int64_t left = j * g.stride_w - g.pad_w;
  const int64_t plane_size = g.in_h * g.in_w;
  for (int64_t n = 0; n < samples; ++n) {
    const patch_t* row = grad_patches + n * g.patch_size();
    for (int64_t c = 0; c < g.in_channels; ++c) {
      acc_t* plane = grad_input + (n * g.in_channels + c) * plane_size;
      for (int64_t p = 0; p < g.kernel_h; ++p, row += g.kernel_w) {
        const int64_t y = top + p * g.dilation_h;
        if (y < 0 || y >= g.in_h) continue;
        const int64_t base = y * g.in_w + left;
        for (int64_t q = cols.first; q < cols.last; ++q) {
          plane[base + q * g.dilation_w] += static_cast<acc_t>(row[q]);
        }
      }
    }
  }
}

// Stages grad_output[n0 + n, o, i, j0 + t] as staged[t][n][o] (a tile of locations, each a
// column-major C_out x samples matrix). grad_output may have any strides.
template <typename scalar_t>
void stage_grad_output(const scalar_t* grad_output, const Strides4& s, const Geometry& g,
                       int64_t i, int64_t j0, int64_t width, int64_t n0, int64_t samples,
                       scalar_t* staged) {
  for (int64_t n = 0; n < samples; ++n) {
    for (int64_t o = 0; o < g.out_channels; ++o) {
      const scalar_t* run = grad_output + (n0 + n) * s.n + o * s.c + i * s.h + j0 * s.w;
      scalar_t* to = staged + n * g.out_channels + o;
      for (int64_t t = 0; t < width; ++t) to[t * samples * g.out_channels] = run[t * s.w];
    }
  }
}

}  // namespace cpu
}  // namespace lc_cuda
