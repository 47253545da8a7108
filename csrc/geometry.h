// The geometry of one call of lc_cuda's operators, the one description every backend and kernel
// reads: 1 to 3 spatial dimensions, channel groups, a filter bank per output location or shared
// by regions of locations (in blocks, or periodically), and zero padding per side.
//
// Every call is held as three spatial dimensions, depth, height and width: a 2D call has a
// trivial depth (size 1, kernel 1, stride 1, no padding), a 1D call a trivial depth and height.
// A kernel written for three dimensions therefore serves all three families.
//
//   input  (N, C_in, *in)                 in = (D, H, W) trimmed to the call's dimensions
//   weight (*regions, C_out, C_in / groups, *kernel)
//   bias   (C_out, *regions) one per weight region, or (C_out,) shared
//   out[n, o, z, y, x] = bias + sum over c in o's group, and the taps (a, p, q), of
//       weight[region(z, y, x), o, c - first channel of the group, a, p, q]
//       * input_padded[n, c, z*stride_d + a*dilation_d, y*stride_h + p*dilation_h,
//                           x*stride_w + q*dilation_w]
//   region along each dimension: block: i / share; tile: i % share (regions = ceil(out / share)
//   for block, share for tile). Without sharing (block of 1) the region is the location.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <c10/util/string_view.h>
#include <vector>

namespace lc_cuda {

// a / b rounded up (a >= 0, b > 0).
constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How output positions map to weight regions: in blocks of `share` neighbouring positions
// (locally-shared convolution), or periodically, position i using region i % share (tiled
// convolution).
enum class ShareMode { block, tile };

ShareMode parse_share_mode(c10::string_view name);

struct Geometry {
  int64_t batch, in_channels, out_channels, groups;
  int64_t in_d, in_h, in_w;
  int64_t out_d, out_h, out_w;
  int64_t kernel_d, kernel_h, kernel_w;
  int64_t stride_d, stride_h, stride_w;
  // Zeros before (front, top, left) and after each dimension; the kernels skip the taps that
  // fall on them, so no padded copy of the input is made.
  int64_t pad_d, pad_h, pad_w;
  int64_t pad_d_end, pad_h_end, pad_w_end;
  int64_t dilation_d, dilation_h, dilation_w;
  ShareMode share_mode;
  int64_t share_d, share_h, share_w;
  int64_t regions_d, regions_h, regions_w;
  int64_t spatial_dims;  // 1, 2 or 3: the dimensions the caller's tensors have

  int64_t locations() const { return out_d * out_h * out_w; }
  // The elements of one sample of the input (C_in, D, H, W).
  int64_t input_sample() const { return in_channels * in_d * in_h * in_w; }
  int64_t regions() const { return regions_d * regions_h * regions_w; }
  int64_t group_in_channels() const { return in_channels / groups; }
  int64_t group_out_channels() const { return out_channels / groups; }
  int64_t taps() const { return kernel_d * kernel_h * kernel_w; }
  // K: the columns of one location's patch, (c, a, p, q) over its group's channels.
  int64_t patch_size() const { return group_in_channels() * taps(); }
  // Whether locations share filter banks; otherwise each location has its own and its region is
  // itself (a block of 1, or a period of the whole output, which the checks allow at most).
  bool shares_weights() const { return regions() != locations(); }
  // The region along one dimension of output position i.
  int64_t region(int64_t i, int64_t share) const {
    return share_mode == ShareMode::block ? i / share : i % share;
  }
  // The flat region index (row-major over regions_d, regions_h, regions_w) of an output location.
  // Unshared, that is the location's own index, without the three divisions (a 64-bit idiv
  // each, which the CPU row kernels paid 16 times a tile: a sixth of genomics_1d_50k's forward).
  int64_t region_of(int64_t z, int64_t y, int64_t x) const {
    if (!shares_weights()) return (z * out_h + y) * out_w + x;
    return (region(z, share_d) * regions_h + region(y, share_h)) * regions_w + region(x, share_w);
  }
};

// Checks the tensors of a forward call against each other and the arguments (stride, dilation:
// one value per spatial dimension; padding: (before, after) per spatial dimension; share: one
// value per spatial dimension) and returns the geometry. Errors name the argument, with the
// value got and the one expected.
Geometry check_forward_args(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            at::IntArrayRef share, c10::string_view share_mode);

Geometry check_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                             const at::Tensor& weight, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                             at::IntArrayRef share, c10::string_view share_mode);

// The transposed op: input is (N, C_in, *out) shaped like the forward op's output, the result
// like its input, (N, C_out, *in) with in = (out - 1) * stride - pads + dilation * (kernel - 1)
// + 1 + output_padding. Returns the forward op's geometry, whose input is the result.
Geometry check_transpose_args(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef output_padding,
                              at::IntArrayRef dilation, int64_t groups, at::IntArrayRef share,
                              c10::string_view share_mode);

// Sizes of the tensors of a geometry, in the caller's number of spatial dimensions.
std::vector<int64_t> input_shape(const Geometry& g);
std::vector<int64_t> output_shape(const Geometry& g);
std::vector<int64_t> weight_shape(const Geometry& g);

// A tensor of the caller's spatial dimensions viewed with all three: (N, C, D, H, W).
at::Tensor as_5d(const at::Tensor& tensor, const Geometry& g);

}  // namespace lc_cuda
