// The unfold + batched-matmul fallback, written with ATen ops so that it runs on any device, for
// every geometry (1 to 3 spatial dimensions, groups, weight sharing, padding per side).
//
// Each output location l and group is one GEMM: its patches (N x K, K = C_in/groups * taps)
// times the location's transposed filter bank (K x C_out/groups). The patches of all locations
// are gathered by a single strided view of the padded input and a single copy, and all locations
// and groups go through one bmm. Where locations share weight regions, the patches are regrouped
// region by region (each region's locations side by side, a zero slot where a region has fewer
// than the others), so that the bmm runs over regions and its sum over a region's rows is the
// region's weight gradient: deterministic, and no weight copied per location. The patches would
// grow with the batch without limit, so the batch goes through in blocks whose patches fit
// LC_CUDA_CPU_SCRATCH_MB (the CPU kernels' bound, on every device the fallback runs on); the
// layers' usual batches are one block.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "cpu_blocking.h"
#include "local_conv.h"
#include "regions.h"

namespace lc_cuda {
namespace {

at::Tensor padded_5d(const at::Tensor& input, const Geometry& g) {
  const at::Tensor input5 = as_5d(input, g);
  if (g.pad_d == 0 && g.pad_d_end == 0 && g.pad_h == 0 && g.pad_h_end == 0 && g.pad_w == 0 &&
      g.pad_w_end == 0)
    return input5;
  return at::constant_pad_nd(input5,
                             {g.pad_w, g.pad_w_end, g.pad_h, g.pad_h_end, g.pad_d, g.pad_d_end});
}

// (L, groups, N, K) patches of every location: a view over the padded input's own strides (so
// channels_last, expanded and sliced inputs need no prior copy), then one copy by reshape.
at::Tensor gather_patches(const at::Tensor& input, const Geometry& g) {
  const at::Tensor padded = padded_5d(input, g);
  const auto s = padded.strides();
  const int64_t group_channels = g.group_in_channels();
  return padded
      .as_strided({g.out_d, g.out_h, g.out_w, g.groups, g.batch, group_channels, g.kernel_d,
                   g.kernel_h, g.kernel_w},
                  {s[2] * g.stride_d, s[3] * g.stride_h, s[4] * g.stride_w, s[1] * group_channels,
                   s[0], s[1], s[2] * g.dilation_d, s[3] * g.dilation_h, s[4] * g.dilation_w},
                  padded.storage_offset())
      .reshape({g.locations(), g.groups, g.batch, g.patch_size()});
}

// The adjoint of gather_patches: sums (L, groups, N, K) patch gradients back onto the input's
// shape. One strided add per kernel tap (each over the whole batch) instead of a scatter with
// atomics, so the result is deterministic on every device. Reduced-precision gradients
// accumulate in float32.
at::Tensor scatter_patches(const at::Tensor& grad_patches, const Geometry& g,
                           at::ScalarType dtype) {
  const auto patches =
      grad_patches.view({g.out_d, g.out_h, g.out_w, g.groups, g.batch, g.group_in_channels(),
                         g.kernel_d, g.kernel_h, g.kernel_w});
  const bool padded = g.pad_d || g.pad_d_end || g.pad_h || g.pad_h_end || g.pad_w || g.pad_w_end;
  const auto opmath = grad_patches.options().dtype(at::toOpMathType(dtype));
  // Without padding, in the result's dtype, the sums go straight into the result (allocated in
  // the caller's dimensions and returned as is: outputs are fresh tensors, not views).
  const bool in_place = !padded && at::toOpMathType(dtype) == dtype;
  const at::Tensor result = in_place ? at::zeros(input_shape(g), opmath) : at::Tensor();
  auto grad_padded =
      in_place ? as_5d(result, g)
               : at::zeros({g.batch, g.in_channels, g.in_d + g.pad_d + g.pad_d_end,
                            g.in_h + g.pad_h + g.pad_h_end, g.in_w + g.pad_w + g.pad_w_end},
                           opmath);
  for (int64_t a = 0; a < g.kernel_d; ++a) {
    for (int64_t p = 0; p < g.kernel_h; ++p) {
      for (int64_t q = 0; q < g.kernel_w; ++q) {
        const int64_t front = a * g.dilation_d, top = p * g.dilation_h, left = q * g.dilation_w;
        grad_padded.slice(2, front, front + g.stride_d * (g.out_d - 1) + 1, g.stride_d)
            .slice(3, top, top + g.stride_h * (g.out_h - 1) + 1, g.stride_h)
            .slice(4, left, left + g.stride_w * (g.out_w - 1) + 1, g.stride_w)
            .unflatten(1, {g.groups, g.group_in_channels()})
            .add_(patches.select(8, q).select(7, p).select(6, a).permute({4, 3, 5, 0, 1, 2}));
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

// How the products are batched: per location (no sharing: a region is a location), or per
// region, its locations' rows stacked (RegionSlots).
struct ProductLayout {
  bool by_region;
  RegionSlots slots;  // set where by_region

  ProductLayout(const Geometry& g, at::Device device) : by_region(g.shares_weights()) {
    if (by_region) slots = region_slots(g, device);
  }

  int64_t members() const { return by_region ? slots.members : 1; }

  // (L, groups, N, cols) per location -> (regions * groups, members * N, cols) per region.
  at::Tensor to_products(const at::Tensor& by_location, const Geometry& g) const {
    if (!by_region) {
      return by_location.reshape(
          {g.locations() * g.groups, by_location.size(2), by_location.size(3)});
    }
    at::Tensor members = by_location.index_select(0, slots.location_of_slot);
    members.index_fill_(0, slots.empty_slots, 0);
    // With one group the permutation moves a dimension of 1 only: the reshape is a view.
    return members
        .view({g.regions(), slots.members, g.groups, by_location.size(2), by_location.size(3)})
        .permute({0, 2, 1, 3, 4})
        .reshape({g.regions() * g.groups, slots.members * by_location.size(2),
                  by_location.size(3)});
  }

  // The inverse: (regions * groups, members * N, cols) -> (L, groups, N, cols).
  at::Tensor to_locations(const at::Tensor& products, const Geometry& g, int64_t batch) const {
    const int64_t cols = products.size(2);
    if (!by_region) return products.view({g.locations(), g.groups, batch, cols});
    return products.view({g.regions(), g.groups, slots.members, batch, cols})
        .permute({0, 2, 1, 3, 4})
        .reshape({g.regions() * slots.members, g.groups, batch, cols})
        .index_select(0, slots.slot_of_location);
  }
};

// (regions * groups, C_out/groups, K): the weight as the products take it.
at::Tensor filters_of(const at::Tensor& weight, const Geometry& g) {
  return weight.reshape({g.regions() * g.groups, g.group_out_channels(), g.patch_size()});
}

// The samples per block: as many as keep one block's patches within the budget, at least one.
// Regrouped by region the patches are copied once more (ProductLayout::to_products), and with
// several groups once more again (its permutation).
int64_t samples_per_block(const Geometry& g, int64_t element_size) {
  const int64_t copies = !g.shares_weights() ? 1 : g.groups == 1 ? 2 : 3;
  const int64_t sample_patches = copies * g.locations() * g.groups * g.patch_size() * element_size;
  return std::clamp<int64_t>(cpu::scratch_budget_bytes() / std::max<int64_t>(sample_patches, 1),
                             1, std::max<int64_t>(g.batch, 1));
}

Geometry with_batch(Geometry g, int64_t samples) {
  g.batch = samples;
  return g;
}

// grad_output of block b's samples by location: (L, groups, samples, C_out/groups).
at::Tensor grad_by_location(const at::Tensor& grad_output, int64_t n0, const Geometry& b) {
  return as_5d(grad_output, b)
      .narrow(0, n0, b.batch)
      .reshape({b.batch, b.groups, b.group_out_channels(), b.locations()})
      .permute({3, 1, 0, 2});
}

// The bias as the products add it: (regions * groups, rows, C_out/groups), expanded.
at::Tensor bias_of(const at::Tensor& bias, const Geometry& g, int64_t rows) {
  const at::Tensor by_region =
      bias.dim() == 1 ? bias.view({1, g.groups, 1, g.group_out_channels()})
                      : bias.reshape({g.groups, g.group_out_channels(), g.regions()})
                            .permute({2, 0, 1})
                            .unsqueeze(2);
  return by_region.expand({g.regions(), g.groups, rows, g.group_out_channels()})
      .reshape({g.regions() * g.groups, rows, g.group_out_channels()});
}

}  // namespace

at::Tensor unfold_forward(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const Geometry& g) {
  const at::Tensor filters_t = filters_of(weight, g).transpose(1, 2);
  const ProductLayout products(g, input.device());
  // Outputs are fresh tensors, never views of a temporary: a view would reach the caller as
  // an autograd view of a tensor it never saw.
  auto out = at::empty(output_shape(g), input.options());
  const int64_t block = samples_per_block(g, input.element_size());
  for (int64_t n0 = 0; n0 < g.batch; n0 += block) {
    const Geometry b = with_batch(g, std::min(block, g.batch - n0));
    const at::Tensor patches = products.to_products(gather_patches(input.narrow(0, n0, b.batch), b), b);
    const at::Tensor result =
        bias.has_value()
            ? at::baddbmm(bias_of(*bias, b, patches.size(1)), patches, filters_t)
            : at::bmm(patches, filters_t);
    // (L, groups, samples, C_out/groups) -> (samples, C_out, L)
    as_5d(out, g)
        .narrow(0, n0, b.batch)
        .view({b.batch, b.groups, b.group_out_channels(), b.locations()})
        .copy_(products.to_locations(result, b, b.batch).permute({2, 1, 3, 0}));
  }
  return out;
}

at::Tensor unfold_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                             const Geometry& g) {
  const at::Tensor filters = filters_of(weight, g);
  const ProductLayout products(g, grad_output.device());
  const auto dtype = grad_output.scalar_type();
  const auto grad_patches = [&](int64_t n0, const Geometry& b) {
    const at::Tensor grads = products.to_products(grad_by_location(grad_output, n0, b), b);
    return products.to_locations(at::bmm(grads, filters), b, b.batch);
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
  const ProductLayout products(g, input.device());
  const int64_t block = samples_per_block(g, input.element_size());
  // The blocks' products are added into grad_weight in block order (in its own dtype: a float
  // accumulator would be one more weight-sized tensor).
  for (int64_t n0 = 0; n0 < g.batch; n0 += block) {
    const Geometry b = with_batch(g, std::min(block, g.batch - n0));
    const at::Tensor grads_t =
        products.to_products(grad_by_location(grad_output, n0, b), b).transpose(1, 2);
    const at::Tensor patches =
        products.to_products(gather_patches(input.narrow(0, n0, b.batch), b), b);
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
