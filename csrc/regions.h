// Which output locations share each weight region, for the code that works region by region: the
// unfold fallback's products and the bias gradients.
#pragma once

#include <ATen/core/Tensor.h>

#include "geometry.h"

namespace lc_cuda {

// The locations of every region as (regions x members) slots, members = the most locations a
// region has. A region that has fewer (the last block along a dimension that the share does not
// divide, or a period the output does not divide) leaves empty slots: they hold location 0, and
// `empty_slots` lists them, for the callers to fill with zeros.
struct RegionSlots {
  int64_t members;
  at::Tensor location_of_slot;  // (regions * members,) int64
  at::Tensor empty_slots;       // int64, possibly empty
  at::Tensor slot_of_location;  // (locations,) int64: the inverse, for every real location
};

RegionSlots region_slots(const Geometry& g, at::Device device);

// (C, *regions) summed from (C, locations) values, in a fixed order on every device (a gather and
// a sum, no atomics), as a fresh tensor. Only for geometries whose locations share regions.
at::Tensor sum_over_regions(const at::Tensor& per_location, const Geometry& g);

// The sizes of the weight's region dimensions in the caller's number of spatial dimensions.
std::vector<int64_t> region_sizes(const Geometry& g);

}  // namespace lc_cuda
