// The unfold + batched-matmul fallback, written with ATen ops so that it runs on any device, for
// every geometry (1 to 3 spatial dimensions, groups, weight sharing, padding per side).
//
// Each weight region and group is one GEMM: the patches of the region's locations (members * N
// rows, K = C_in/groups * taps columns) times the region's transposed filter bank
// (K x C_out/groups); without sharing a region is one location. The patches of every region are
// gathered region by region by a single strided view of the padded input (regions.h: both
// sharing modes are strided) and a single copy, and all regions and groups go through one bmm,
// whose sum over a region's rows is the region's weight gradient: deterministic, and no weight
// copied per location. Where the region grid reaches past the output (a share that does not
// divide it) the empty slots compute on zeros or are cleared. The patches would
// grow with the batch without limit, so the batch goes through in blocks whose patches fit
// LC_CUDA_CPU_SCRATCH_MB (the CPU kernels' bound, on every device the fallback runs on); the
// layers' usual batches are one block.
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "cpu_blocking.h"
#include "local_conv.h"
#include "regions.h"

namespace lc_cuda {
namespace {

// The zeros after each dimension that keep a region-major view of the patches (gather_patches)
// inside the padded input: the padding's own, and more where the region grid reaches past the
// output.
std::array<int64_t, 3> end_padding(const Geometry& g) {
  const auto axes = region_axes(g);
  const std::array<int64_t, 3> in{g.in_d, g.in_h, g.in_w}, before{g.pad_d, g.pad_h, g.pad_w},
      after{g.pad_d_end, g.pad_h_end, g.pad_w_end}, stride{g.stride_d, g.stride_h, g.stride_w},
      dilation{g.dilation_d, g.dilation_h, g.dilation_w},
      kernel{g.kernel_d, g.kernel_h, g.kernel_w};
  std::array<int64_t, 3> end{};
  for (int64_t d = 0; d < 3; ++d) {
    const int64_t reach = (axes[d].extent() - 1) * stride[d] + (kernel[d] - 1) * dilation[d] + 1;
    end[d] = std::max(after[d], reach - in[d] - before[d]);
  }
  return end;
}

// Whether the padded input is larger than the input: padding before some dimension, or zeros
// after one (end_padding's `end`).
bool pads(const Geometry& g, const std::array<int64_t, 3>& end) {
  return g.pad_d != 0 || g.pad_h != 0 || g.pad_w != 0 || end != std::array<int64_t, 3>{};
}

at::Tensor padded_5d(const at::Tensor& input, const Geometry& g) {
  const at::Tensor input5 = as_5d(input, g);
  const auto end = end_padding(g);
  if (!pads(g, end)) return input5;
  return at::constant_pad_nd(input5, {g.pad_w, end[2], g.pad_h, end[1], g.pad_d, end[0]});
}

// Sizes and strides of a region-major view (R_d, R_h, R_w, groups, M_d, M_h, M_w, N, C_in/groups)
// of the patch origins in a padded (N, C_in, D, H, W) tensor with strides `s`.
std::pair<std::vector<int64_t>, std::vector<int64_t>> patch_origins(const Geometry& g,
                                                                     at::IntArrayRef s) {
  const auto axes = region_axes(g);
  const std::array<int64_t, 3> stride{g.stride_d, g.stride_h, g.stride_w};
  std::vector<int64_t> sizes, strides;
  for (int64_t d = 0; d < 3; ++d) {
    sizes.push_back(axes[d].regions);
    strides.push_back(axes[d].region_step * stride[d] * s[2 + d]);
  }
  sizes.push_back(g.groups);
  strides.push_back(s[1] * g.group_in_channels());
  for (int64_t d = 0; d < 3; ++d) {
    sizes.push_back(axes[d].members);
    strides.push_back(axes[d].member_step * stride[d] * s[2 + d]);
  }
  sizes.insert(sizes.end(), {g.batch, g.group_in_channels()});
  strides.insert(strides.end(), {s[0], s[1]});
  return {sizes, strides};
}

// Zeroes the rows that a (regions * groups, members * N, cols) tensor of its own (not a view of
// an input) holds for the grid's empty slots: whatever they read (zeros, or input that real
// locations also read) is not theirs.
void clear_empty_slots(at::Tensor& by_region, const Geometry& g) {
  if (!has_empty_slots(g)) return;
  by_region.view({g.regions() * g.groups * members_per_region(g), -1})
      .index_fill_(0, empty_slot_rows(g, by_region.device()), 0);
}

// (regions * groups, members * N, K) patches, region-major (regions.h): a view over the padded
// input's own strides (so channels_last, expanded and sliced inputs need no prior copy), then one
// copy by reshape (none where the view already has the shape's strides, as with 1x1 kernels),
// or always a tensor of its own where `own` is set (for clear_empty_slots: a view could be the
// caller's input). Without sharing a region is a location with one member.
at::Tensor gather_patches(const at::Tensor& input, const Geometry& g, bool own = false) {
  const at::Tensor padded = padded_5d(input, g);
  const auto s = padded.strides();
  auto [sizes, strides] = patch_origins(g, s);
  sizes.insert(sizes.end(), {g.kernel_d, g.kernel_h, g.kernel_w});
  strides.insert(strides.end(), {s[2] * g.dilation_d, s[3] * g.dilation_h, s[4] * g.dilation_w});
  const at::Tensor view = padded.as_strided(sizes, strides, padded.storage_offset());
  const std::vector<int64_t> shape{g.regions() * g.groups, members_per_region(g) * g.batch,
                                   g.patch_size()};
  if (!own) return view.reshape(shape);
  at::Tensor patches = at::empty(shape, view.options());
  patches.view(view.sizes()).copy_(view);
  return patches;
}

// The adjoint of gather_patches: sums region-major patch gradients back onto the input's shape.
// One strided add per kernel tap (each over the whole batch; the grid's slots are distinct
// positions, so no add overlaps itself) instead of a scatter with atomics, so the result is
// deterministic on every device. Reduced-precision gradients accumulate in float32.
at::Tensor scatter_patches(const at::Tensor& grad_patches, const Geometry& g,
                           at::ScalarType dtype) {
  const auto end = end_padding(g);
  const bool padded = pads(g, end);
  const auto opmath = grad_patches.options().dtype(at::toOpMathType(dtype));
  // Without padding, in the result's dtype, the sums go straight into the result (allocated in
  // the caller's dimensions and returned as is: outputs are fresh tensors, not views).
  const bool in_place = !padded && at::toOpMathType(dtype) == dtype;
  const at::Tensor result = in_place ? at::zeros(input_shape(g), opmath) : at::Tensor();
  auto grad_padded = in_place ? as_5d(result, g)
                              : at::zeros({g.batch, g.in_channels, g.pad_d + g.in_d + end[0],
                                           g.pad_h + g.in_h + end[1], g.pad_w + g.in_w + end[2]},
                                          opmath);
  const auto s = grad_padded.strides();
  const auto [sizes, strides] = patch_origins(g, s);
  const auto patches = grad_patches.view(
      {sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5], sizes[6], sizes[7], sizes[8],
       g.kernel_d, g.kernel_h, g.kernel_w});
  for (int64_t a = 0; a < g.kernel_d; ++a) {
    for (int64_t p = 0; p < g.kernel_h; ++p) {
      for (int64_t q = 0; q < g.kernel_w; ++q) {
        const int64_t tap =
            a * g.dilation_d * s[2] + p * g.dilation_h * s[3] + q * g.dilation_w * s[4];
        grad_padded.as_strided(sizes, strides, grad_padded.storage_offset() + tap)
            .add_(patches.select(11, q).select(10, p).select(9, a));
      }
    }
  }
  if (in_place) return result;
  // A fresh tensor even where the interior happens to be contiguous: outputs start at offset 0.
  const auto interior = grad_padded.slice(2, g.pad_d, g.pad_d + g.in_d)
                            .slice(3, g.pad_h, g.pad_h + g.in_h)
                            .slice(4, g.pad_w, g.pad_w + g.in_w);
  at::Tensor out = at::empty(input_shape(g), grad_patches.options().dtype(dtype));
  as_5d(out, g).copy_(interior);
  return out;
}

// (regions * groups, C_out/groups, K): the weight as the products take it.
at::Tensor filters_of(const at::Tensor& weight, const Geometry& g) {
  return weight.reshape({g.regions() * g.groups, g.group_out_channels(), g.patch_size()});
}


// The samples per block: as many as keep one block's patches within the budget, at least one.
int64_t samples_per_block(const Geometry& g, int64_t element_size) {
  // The grid's slots per sample: the locations, and the empty slots where it reaches past the
  // output.
  const int64_t slots = g.regions() * members_per_region(g);
  const int64_t sample_patches = slots * g.groups * g.patch_size() * element_size;
  return std::clamp<int64_t>(cpu::scratch_budget_bytes() / std::max<int64_t>(sample_patches, 1),
                             1, std::max<int64_t>(g.batch, 1));
}

Geometry with_batch(Geometry g, int64_t samples) {
  g.batch = samples;
  return g;
}

// A (samples, groups, C/groups, *grid extents) tensor as the products lay it out:
// (R_d, R_h, R_w, groups, M_d, M_h, M_w, samples, C/groups), a view.
at::Tensor region_major(const at::Tensor& grid, const Geometry& g) {
  return split_by_region(grid, g).permute({3, 4, 5, 1, 6, 7, 8, 0, 2});
}

// grad_output of block b's samples, region-major: (regions * groups, members * samples,
// C_out/groups), zeros in the grid's empty slots.
at::Tensor grads_by_region(const at::Tensor& grad_output, int64_t n0, const Geometry& b) {
  const at::Tensor block = as_5d(grad_output, b).narrow(0, n0, b.batch).unflatten(
      1, {b.groups, b.group_out_channels()});
  return region_major(extend_to_grid(block, b), b)
      .reshape({b.regions() * b.groups, -1, b.group_out_channels()});
}

// The bias as the products add it: (regions * groups, rows, C_out/groups), expanded.
at::Tensor bias_of(const at::Tensor& bias, const Geometry& g, int64_t rows) {
  const at::Tensor per_region =
      bias.dim() == 1 ? bias.view({1, g.groups, 1, g.group_out_channels()})
                      : bias.reshape({g.groups, g.group_out_channels(), g.regions()})
                            .permute({2, 0, 1})
                            .unsqueeze(2);
  return per_region.expand({g.regions(), g.groups, rows, g.group_out_channels()})
      .reshape({g.regions() * g.groups, rows, g.group_out_channels()});
}

}  // namespace

at::Tensor unfold_forward(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const Geometry& g) {
  const at::Tensor filters_t = filters_of(weight, g).transpose(1, 2);
  // Outputs are fresh tensors, never views of a temporary: a view would reach the caller as
  // an autograd view of a tensor it never saw. Where the grid reaches past the output, the
  // products land in a grid-sized temporary first.
  auto out = at::empty(output_shape(g), input.options());
  const bool extended = has_empty_slots(g);
  const auto axes = region_axes(g);
  at::Tensor grid_out =
      extended ? at::empty({g.batch, g.out_channels, axes[0].extent(), axes[1].extent(),
                            axes[2].extent()},
                           input.options())
               : as_5d(out, g);
  const int64_t block = samples_per_block(g, input.element_size());
  for (int64_t n0 = 0; n0 < g.batch; n0 += block) {
    const Geometry b = with_batch(g, std::min(block, g.batch - n0));
    const at::Tensor patches = gather_patches(input.narrow(0, n0, b.batch), b);
    const at::Tensor result =
        bias.has_value() ? at::baddbmm(bias_of(*bias, b, patches.size(1)), patches, filters_t)
                         : at::bmm(patches, filters_t);
    const at::Tensor target = region_major(
        grid_out.narrow(0, n0, b.batch).unflatten(1, {b.groups, b.group_out_channels()}), b);
    target.copy_(result.view(target.sizes()));
  }
  if (extended) {
    as_5d(out, g).copy_(grid_out.narrow(2, 0, g.out_d).narrow(3, 0, g.out_h).narrow(4, 0, g.out_w));
  }
  return out;
}

at::Tensor unfold_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                             const Geometry& g) {
  const at::Tensor filters = filters_of(weight, g);
  const auto dtype = grad_output.scalar_type();
  const auto grad_patches = [&](int64_t n0, const Geometry& b) {
    at::Tensor grads = at::bmm(grads_by_region(grad_output, n0, b), filters);
    clear_empty_slots(grads, b);
    return grads;
  };
  const int64_t block = samples_per_block(g, grad_output.element_size());
  if (block >= g.batch) return scatter_patches(grad_patches(0, g), g, dtype);
  at::Tensor grad_input = at::empty(input_shape(g), grad_output.options());
  for (int64_t n0 = 0; n0 < g.batch; n0 += block) {
    const Geometry b = with_batch(g, std::min(block, g.batch - n0));
    grad_input.narrow(0, n0, b.batch).copy_(scatter_patches(grad_patches(n0, b), b, dtype));
  }
  return grad_input;
}

at::Tensor unfold_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                              const Geometry& g) {
  const auto shape = weight_shape(g);
  at::Tensor grad_weight = g.batch == 0 ? at::zeros(shape, input.options())
                                        : at::empty(shape, input.options());
  auto grad_filters =
      grad_weight.view({g.regions() * g.groups, g.group_out_channels(), g.patch_size()});
  const int64_t block = samples_per_block(g, input.element_size());
  // The blocks' products are added into grad_weight in block order (in its own dtype: a float
  // accumulator would be one more weight-sized tensor).
  for (int64_t n0 = 0; n0 < g.batch; n0 += block) {
    const Geometry b = with_batch(g, std::min(block, g.batch - n0));
    const at::Tensor grads_t = grads_by_region(grad_output, n0, b).transpose(1, 2);
    at::Tensor patches = gather_patches(input.narrow(0, n0, b.batch), b, has_empty_slots(b));
    clear_empty_slots(patches, b);
    if (n0 == 0)
      at::bmm_out(grad_filters, grads_t, patches);
    else
      grad_filters.baddbmm_(grads_t, patches);
  }
  return grad_weight;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> unfold_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const Geometry& g, bool shared_bias, std::array<bool, 3> output_mask) {
  const auto empty = [&] { return at::empty({0}, input.options()); };
  return {output_mask[0] ? unfold_grad_input(grad_output, weight, g) : empty(),
          output_mask[1] ? unfold_grad_weight(grad_output, input, g) : empty(),
          output_mask[2] ? unfold_grad_bias(grad_output, g, shared_bias) : empty()};
}

at::Tensor unfold_grad_bias(const at::Tensor& grad_output, const Geometry& g, bool shared_bias) {
  std::vector<int64_t> batch_and_locations{0};
  for (int64_t d = 2; d < grad_output.dim(); ++d) batch_and_locations.push_back(d);
  if (shared_bias) return grad_output.sum(batch_and_locations);
  if (!g.shares_weights()) return grad_output.sum(0);
  return sum_over_regions(grad_output.sum(0).reshape({g.out_channels, g.locations()}), g);
}

}  // namespace lc_cuda
