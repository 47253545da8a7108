#include "regions.h"

#include <ATen/ATen.h>

#include <array>
#include <vector>

namespace lc_cuda {
namespace {

// Along one dimension: the positions of each region's members, row-major (regions x members),
// -1 where a region has fewer members than the most any has.
struct AxisMembers {
  int64_t regions, members;
  std::vector<int64_t> position;
};

AxisMembers axis_members(int64_t out, int64_t share, int64_t regions, ShareMode mode) {
  // block: region r holds r*share + m; tile (a period): r + m*share.
  const int64_t members =
      mode == ShareMode::block ? std::min(share, out) : (out + share - 1) / share;
  AxisMembers axis{regions, members, std::vector<int64_t>(regions * members, -1)};
  for (int64_t r = 0; r < regions; ++r) {
    for (int64_t m = 0; m < members; ++m) {
      const int64_t i = mode == ShareMode::block ? r * share + m : r + m * share;
      if (i < out) axis.position[r * members + m] = i;
    }
  }
  return axis;
}

}  // namespace

RegionSlots region_slots(const Geometry& g, at::Device device) {
  const std::array<AxisMembers, 3> axes{
      axis_members(g.out_d, g.share_d, g.regions_d, g.share_mode),
      axis_members(g.out_h, g.share_h, g.regions_h, g.share_mode),
      axis_members(g.out_w, g.share_w, g.regions_w, g.share_mode)};
  const int64_t members = axes[0].members * axes[1].members * axes[2].members;
  const int64_t locations = g.locations();
  std::vector<int64_t> location_of_slot(g.regions() * members, 0);
  std::vector<int64_t> slot_of_location(locations, -1);
  std::vector<int64_t> empty_slots;
  int64_t slot = 0;
  for (int64_t rd = 0; rd < g.regions_d; ++rd)
    for (int64_t rh = 0; rh < g.regions_h; ++rh)
      for (int64_t rw = 0; rw < g.regions_w; ++rw)
        for (int64_t md = 0; md < axes[0].members; ++md)
          for (int64_t mh = 0; mh < axes[1].members; ++mh)
            for (int64_t mw = 0; mw < axes[2].members; ++mw, ++slot) {
              const int64_t z = axes[0].position[rd * axes[0].members + md];
              const int64_t y = axes[1].position[rh * axes[1].members + mh];
              const int64_t x = axes[2].position[rw * axes[2].members + mw];
              if (z < 0 || y < 0 || x < 0) {
                empty_slots.push_back(slot);
                continue;
              }
              const int64_t location = (z * g.out_h + y) * g.out_w + x;
              location_of_slot[slot] = location;
              slot_of_location[location] = slot;
            }
  const auto options = at::TensorOptions().dtype(at::kLong);
  return {members, at::tensor(location_of_slot, options).to(device),
          at::tensor(empty_slots, options).to(device),
          at::tensor(slot_of_location, options).to(device)};
}

std::vector<int64_t> region_sizes(const Geometry& g) {
  const std::array<int64_t, 3> regions{g.regions_d, g.regions_h, g.regions_w};
  return {regions.end() - g.spatial_dims, regions.end()};
}

at::Tensor sum_over_regions(const at::Tensor& per_location, const Geometry& g) {
  TORCH_INTERNAL_ASSERT(g.shares_weights(), "sum_over_regions: every location is its own region");
  std::vector<int64_t> shape{per_location.size(0)};
  const auto regions = region_sizes(g);
  shape.insert(shape.end(), regions.begin(), regions.end());
  const RegionSlots slots = region_slots(g, per_location.device());
  // Each region's members side by side (the empty slots zero), summed into a fresh tensor of
  // the result's shape.
  at::Tensor members = per_location.index_select(1, slots.location_of_slot);
  members.index_fill_(1, slots.empty_slots, 0);
  at::Tensor sums = at::empty(shape, per_location.options());
  at::Tensor flat = sums.view({shape[0], g.regions()});
  at::sum_out(flat, members.view({shape[0], g.regions(), slots.members}), 2);
  return sums;
}

}  // namespace lc_cuda
