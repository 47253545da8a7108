// How output locations group into weight regions, for the code that works region by region: the
// unfold fallback's products and the bias gradients.
//
// Along each dimension both sharing modes are strided: output position
//   r * region_step + m * member_step
// is member m of region r. Blocks of `share` neighbours: region_step = share, member_step = 1;
// a period `share` (tile): region_step = 1, member_step = share. Without sharing each position is
// its own region of one member. So a region-major view of any tensor over the output positions
// (or of the input patches at them) is a strided view, and regrouping costs no gather.
//
// A grid of regions x members may reach past the output: the last block along a dimension the
// share does not divide, or a period the output does not divide. Those slots are empty: callers
// extend their tensors with zeros to the grid's extent and clear what the empty slots computed.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <vector>

#include "geometry.h"

namespace lc_cuda {

struct RegionAxis {
  int64_t regions, members, region_step, member_step;
  // The output positions the grid covers (at least the output size).
  int64_t extent() const { return (regions - 1) * region_step + (members - 1) * member_step + 1; }
};

// Along (d, h, w).
std::array<RegionAxis, 3> region_axes(const Geometry& g);

// The members of a region: the grid's slots per region, empty ones included.
int64_t members_per_region(const Geometry& g);

// Whether some slot of the grid lies past the output.
bool has_empty_slots(const Geometry& g);

// (..., ext_d, ext_h, ext_w) -> (..., R_d, R_h, R_w, M_d, M_h, M_w): a view of a tensor whose
// last three dimensions are the grid's extents.
at::Tensor split_by_region(const at::Tensor& extended, const Geometry& g);

// (..., out_d, out_h, out_w) extended with zeros to the grid's extents (the tensor itself where
// the grid has no empty slots).
at::Tensor extend_to_grid(const at::Tensor& per_location, const Geometry& g);

// The rows of the empty slots in a (regions, groups, members) flattening, int64 on `device`
// (empty where there are none).
at::Tensor empty_slot_rows(const Geometry& g, at::Device device);

// (C, *regions) summed from (C, locations) values, in a fixed order on every device (ATen's
// reduction over each region's members, no atomics), as a fresh tensor. Only for geometries whose
// locations share regions.
at::Tensor sum_over_regions(const at::Tensor& per_location, const Geometry& g);

// The sizes of the weight's region dimensions in the caller's number of spatial dimensions.
std::vector<int64_t> region_sizes(const Geometry& g);

}  // namespace lc_cuda
