#include "regions.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>

namespace lc_cuda {
namespace {

RegionAxis region_axis(int64_t out, int64_t share, int64_t regions, ShareMode mode) {
  if (mode == ShareMode::tile) return {regions, ceil_div(out, share), 1, share};
  // A block wider than the output is one region of the whole output.
  return {regions, std::min(share, out), share, 1};
}

}  // namespace

std::array<RegionAxis, 3> region_axes(const Geometry& g) {
  return {region_axis(g.out_d, g.share_d, g.regions_d, g.share_mode),
          region_axis(g.out_h, g.share_h, g.regions_h, g.share_mode),
          region_axis(g.out_w, g.share_w, g.regions_w, g.share_mode)};
}

int64_t members_per_region(const Geometry& g) {
  const auto axes = region_axes(g);
  return axes[0].members * axes[1].members * axes[2].members;
}

bool has_empty_slots(const Geometry& g) {
  const auto axes = region_axes(g);
  return axes[0].extent() != g.out_d || axes[1].extent() != g.out_h ||
         axes[2].extent() != g.out_w;
}

at::Tensor split_by_region(const at::Tensor& extended, const Geometry& g) {
  const auto axes = region_axes(g);
  const int64_t first = extended.dim() - 3;
  at::Tensor split = extended;
  std::vector<int64_t> order(first);
  for (int64_t i = 0; i < first; ++i) order[i] = i;
  std::array<int64_t, 3> region_dim{}, member_dim{};
  // Splitting dimension first + d into two: block (region, member), tile (member, region).
  for (int64_t d = 0; d < 3; ++d) {
    const RegionAxis& a = axes[d];
    const int64_t at_dim = first + 2 * d;
    const bool block = a.member_step == 1;
    split = split.unflatten(at_dim, block ? at::IntArrayRef({a.regions, a.members})
                                          : at::IntArrayRef({a.members, a.regions}));
    region_dim[d] = block ? at_dim : at_dim + 1;
    member_dim[d] = block ? at_dim + 1 : at_dim;
  }
  order.insert(order.end(), region_dim.begin(), region_dim.end());
  order.insert(order.end(), member_dim.begin(), member_dim.end());
  return split.permute(order);
}

at::Tensor extend_to_grid(const at::Tensor& per_location, const Geometry& g) {
  if (!has_empty_slots(g)) return per_location;
  const auto axes = region_axes(g);
  return at::constant_pad_nd(per_location, {0, axes[2].extent() - g.out_w, 0,
                                            axes[1].extent() - g.out_h, 0,
                                            axes[0].extent() - g.out_d});
}

at::Tensor empty_slot_rows(const Geometry& g, at::Device device) {
  const auto axes = region_axes(g);
  const std::array<int64_t, 3> out{g.out_d, g.out_h, g.out_w};
  // Per dimension (regions, members): whether the slot is an output position.
  std::array<at::Tensor, 3> real;
  for (int64_t d = 0; d < 3; ++d) {
    const RegionAxis& a = axes[d];
    const at::Tensor region_start = at::arange(a.regions, at::kLong).mul_(a.region_step);
    const at::Tensor member_offset = at::arange(a.members, at::kLong).mul_(a.member_step);
    const at::Tensor position = region_start.unsqueeze(1).add(member_offset);
    real[d] = position.lt(out[d]);
  }
  const auto shaped = [&](int64_t d) {
    std::vector<int64_t> shape(7, 1);
    shape[d] = axes[d].regions;
    shape[4 + d] = axes[d].members;
    return real[d].view(shape);
  };
  const at::Tensor slot_is_real =
      shaped(0)
          .logical_and(shaped(1))
          .logical_and(shaped(2))
          .expand({axes[0].regions, axes[1].regions, axes[2].regions, g.groups,
                   axes[0].members, axes[1].members, axes[2].members});
  return slot_is_real.logical_not().flatten().nonzero().squeeze(1).to(device);
}

at::Tensor sum_over_regions(const at::Tensor& per_location, const Geometry& g) {
  TORCH_INTERNAL_ASSERT(g.shares_weights(), "sum_over_regions: every location is its own region");
  const at::Tensor by_region = split_by_region(
      extend_to_grid(per_location.reshape({per_location.size(0), g.out_d, g.out_h, g.out_w}), g),
      g);
  std::vector<int64_t> shape{per_location.size(0)};
  const auto regions = region_sizes(g);
  shape.insert(shape.end(), regions.begin(), regions.end());
  // Summed into a tensor of the caller's shape: a reshaped sum would reach it as a view.
  at::Tensor sums = at::empty(shape, per_location.options());
  at::Tensor flat = sums.view({per_location.size(0), g.regions_d, g.regions_h, g.regions_w});
  at::sum_out(flat, by_region, {4, 5, 6});
  return sums;
}

std::vector<int64_t> region_sizes(const Geometry& g) {
  const std::array<int64_t, 3> regions{g.regions_d, g.regions_h, g.regions_w};
  return {regions.end() - g.spatial_dims, regions.end()};
}

}  // namespace lc_cuda
