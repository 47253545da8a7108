// The geometry as lc_cuda's CUDA kernels read it (ConvShape: the device copy of csrc/geometry.h's
// Geometry, which launch.cuh builds in one place), and the index helpers every kernel shares:
// output locations and input pixels as (depth, height, width) positions, weight regions,
// channel tiles that stay inside one group, and the grid helpers.
//
// Every call is three-dimensional here, as in Geometry: a 2D call has depth 1 (and kernel,
// stride and dilation 1 along it, no padding), a 1D call also height 1. The kernels walk output
// "rows" (z, y) and kernel rows (c, a, p), so one source serves 1D, 2D and 3D.
//
// Torch-free, like the kernel headers, so that a standalone harness and the CPU emulation
// (tests/emulation/) build it.
#pragma once

#include <algorithm>
#include <cstdint>

namespace lc_cuda {
namespace kernels {

// Sizes in the kernel's index type: int32_t where every tensor's offsets fit (faster index
// arithmetic), int64_t otherwise.
template <typename index_t>
struct ConvShape {
  index_t batch, in_channels, in_d, in_h, in_w;
  index_t out_channels, out_d, out_h, out_w;
  index_t kernel_d, kernel_h, kernel_w;
  index_t stride_d, stride_h, stride_w;
  // Zeros before each dimension; those after need no field, since every tap is checked against
  // the input's extent (and the output sizes already count them).
  index_t pad_d, pad_h, pad_w;
  index_t dilation_d, dilation_h, dilation_w;
  // Channel groups: output channel o reads the group_in_channels input channels of group
  // o / group_out_channels. Both are stored, not divided out in every kernel.
  index_t groups, group_in_channels, group_out_channels;
  // Weight regions, per dimension: position i uses region i / share (block) or i % share
  // (share_tile); no sharing is a block of 1, every location its own region.
  bool share_tile;
  index_t share_d, share_h, share_w;
  index_t regions_d, regions_h, regions_w;
  // Element strides of the input and of grad_output, which may have any layout (channels_last,
  // expanded, sliced): autograd often hands over an expanded grad_output, and copying it would
  // cost a tensor of the output's size. weight and every output are contiguous.
  index_t input_stride_n, input_stride_c, input_stride_d, input_stride_h, input_stride_w;
  index_t grad_stride_n, grad_stride_c, grad_stride_d, grad_stride_h, grad_stride_w;

  __host__ __device__ index_t locations() const { return out_d * out_h * out_w; }
  __host__ __device__ index_t regions() const { return regions_d * regions_h * regions_w; }
  __host__ __device__ index_t taps() const { return kernel_d * kernel_h * kernel_w; }
  // K: the columns of one location's patch, (c, a, p, q) over its group's input channels; a
  // region's filters are a row-major C_out x K matrix of the weight.
  __host__ __device__ index_t patch_size() const { return group_in_channels * taps(); }

  // The region along one dimension of position i. Without sharing (a block of 1) the region is
  // the position, without a division: the test is uniform over the grid.
  __host__ __device__ index_t region_along(index_t i, index_t share) const {
    if (share_tile) return i % share;
    return share == 1 ? i : i / share;
  }
  // The flat region index (row-major over regions_d, regions_h, regions_w) of an output location,
  // as Geometry::region_of.
  __host__ __device__ index_t region_of(index_t z, index_t y, index_t x) const {
    return (region_along(z, share_d) * regions_h + region_along(y, share_h)) * regions_w +
           region_along(x, share_w);
  }
};

template <typename index_t>
__device__ index_t grad_output_offset(const ConvShape<index_t>& s, index_t n, index_t o,
                                      index_t out_z, index_t out_i, index_t out_j) {
  return n * s.grad_stride_n + o * s.grad_stride_c + out_z * s.grad_stride_d +
         out_i * s.grad_stride_h + out_j * s.grad_stride_w;
}

// The output positions of one region along one dimension: first, first + step, ... below end.
// A block holds consecutive positions (its last one may be partial); a period every share-th.
template <typename index_t>
struct RegionMembers {
  index_t first, end, step;
};

template <typename index_t>
__host__ __device__ inline RegionMembers<index_t> region_members(const ConvShape<index_t>& s,
                                                                 index_t region, index_t share,
                                                                 index_t out) {
  if (s.share_tile) return {region, out, share};
  const index_t end = (region + 1) * share;
  return {region * share, end < out ? end : out, 1};
}

// A tile of WIDTH channels inside one group: channels [first, first + WIDTH) that are below end,
// the group's end. Grids hold groups * ceil(group_channels / WIDTH) such tiles, group-major, so
// that no tile straddles two groups.
template <typename index_t>
struct ChannelTile {
  index_t group, first, end;
};

template <int WIDTH, typename index_t>
__host__ __device__ inline ChannelTile<index_t> channel_tile(index_t tile,
                                                             index_t group_channels) {
  const index_t tiles_per_group = (group_channels + WIDTH - 1) / WIDTH;
  const index_t group = tile / tiles_per_group;
  const index_t first = group * group_channels + (tile - group * tiles_per_group) * WIDTH;
  return {group, first, (group + 1) * group_channels};
}

// Grid y and z hold at most this many blocks. The FFMA kernels walk the batch by a grid-stride
// loop, so its block count is capped; the launchers check the others.
constexpr int64_t kMaxGridYZ = 65535;

inline unsigned int grid_blocks(int64_t count, int64_t tile, bool capped = false) {
  const int64_t blocks = (count + tile - 1) / tile;
  return static_cast<unsigned int>(capped ? std::min(blocks, kMaxGridYZ) : blocks);
}

// The blocks of the channel tiles of every group (channel_tile decodes one).
inline unsigned int channel_tile_blocks(int64_t groups, int64_t group_channels, int64_t width) {
  return static_cast<unsigned int>(groups * grid_blocks(group_channels, width));
}

// Grid y of the tensor-core kernels: one block per (row, group of WIDTH neighbouring columns),
// row-major, a row being a (depth, height) pair. row_segment_blocks sizes it; row_segment decodes
// a block's position, so that the two cannot disagree.
template <int WIDTH>
unsigned int row_segment_blocks(int64_t rows, int64_t columns) {
  return static_cast<unsigned int>(rows * grid_blocks(columns, WIDTH));
}

template <typename index_t>
struct RowSegment {
  index_t row, first_column;
};

template <int WIDTH, typename index_t>
__device__ inline RowSegment<index_t> row_segment(index_t columns) {
  const index_t segments = (columns + WIDTH - 1) / WIDTH;
  const index_t row = static_cast<index_t>(blockIdx.y) / segments;
  return {row, (static_cast<index_t>(blockIdx.y) - row * segments) * WIDTH};
}

}  // namespace kernels
}  // namespace lc_cuda
