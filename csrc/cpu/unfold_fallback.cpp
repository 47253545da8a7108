// The unfold + batched-matmul fallback, written with ATen ops so that it runs on any device.
//
// Each output location l = (i, j) is one GEMM: its patches (N x K, K = C_in*KH*KW) times its
// transposed filter bank (K x C_out). The patches of all locations are gathered by a single
// strided view of the padded input and a single copy, and all locations go through one bmm with
// the locations as the batch. The patches (L x N x K) would grow with the batch without limit,
// so the batch goes through in blocks whose patches fit LC_CUDA_CPU_SCRATCH_MB (the CPU kernels'
// bound, on every device the fallback runs on); the layer's usual batches are one block.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "cpu_blocking.h"
#include "lc_conv2d.h"

namespace lc_cuda {
namespace {

at::Tensor pad_input(const at::Tensor& input, const Geometry& g) {
  if (g.pad_h == 0 && g.pad_w == 0) return input;
  return at::constant_pad_nd(input, {g.pad_w, g.pad_w, g.pad_h, g.pad_h});
}

// (L, N, K) patches of every location: a view over the padded input's own strides (so
// channels_last, expanded and sliced inputs need no prior copy), then one copy by reshape.
at::Tensor gather_patches(const at::Tensor& input, const Geometry& g) {
  const at::Tensor padded = pad_input(input, g);
  const auto s = padded.strides();
  return padded
      .as_strided({g.out_h, g.out_w, g.batch, g.in_channels, g.kernel_h, g.kernel_w},
                  {s[2] * g.stride_h, s[3] * g.stride_w, s[0], s[1], s[2] * g.dilation_h,
                   s[3] * g.dilation_w},
                  padded.storage_offset())
      .reshape({g.locations(), g.batch, g.patch_size()});
}

// The adjoint of gather_patches: sums (L, N, K) patch gradients back onto the (N, C_in, H, W)
// input. One strided add per kernel offset (KH*KW of them, each over the whole batch) instead of
// a scatter with atomics, so the result is deterministic on every device. Reduced-precision
// gradients accumulate in float32.
at::Tensor scatter_patches(const at::Tensor& grad_patches, const Geometry& g,
                           at::ScalarType dtype) {
  const auto patches = grad_patches.view(
      {g.out_h, g.out_w, g.batch, g.in_channels, g.kernel_h, g.kernel_w});
  auto grad_padded = at::zeros({g.batch, g.in_channels, g.in_h + 2 * g.pad_h, g.in_w + 2 * g.pad_w},
                               grad_patches.options().dtype(at::toOpMathType(dtype)));
  for (int64_t p = 0; p < g.kernel_h; ++p) {
    for (int64_t q = 0; q < g.kernel_w; ++q) {
      const int64_t top = p * g.dilation_h;
      const int64_t left = q * g.dilation_w;
      grad_padded.slice(2, top, top + g.stride_h * (g.out_h - 1) + 1, g.stride_h)
          .slice(3, left, left + g.stride_w * (g.out_w - 1) + 1, g.stride_w)
          .add_(patches.select(5, q).select(4, p).permute({2, 3, 0, 1}));
    }
  }
  if (g.pad_h == 0 && g.pad_w == 0 && grad_padded.scalar_type() == dtype) return grad_padded;
  // A fresh tensor even where the interior happens to be contiguous: outputs start at offset 0.
  const auto interior =
      grad_padded.slice(2, g.pad_h, g.pad_h + g.in_h).slice(3, g.pad_w, g.pad_w + g.in_w);
  return at::empty(interior.sizes(), interior.options().dtype(dtype)).copy_(interior);
}

// The samples per block: as many as keep one block's patches (L x samples x K elements) within
// the budget, at least one.
int64_t samples_per_block(const Geometry& g, int64_t element_size) {
  const int64_t sample_patches = g.locations() * g.patch_size() * element_size;
  return std::clamp<int64_t>(cpu::scratch_budget_bytes() / std::max<int64_t>(sample_patches, 1),
                             1, std::max<int64_t>(g.batch, 1));
}

// g for the block of `samples` samples.
Geometry with_batch(Geometry g, int64_t samples) {
  g.batch = samples;
  return g;
}

// (C_out, L) -> (L, 1, C_out) for per-location bias, (C_out,) -> (1, 1, C_out) for shared bias.
at::Tensor bias_per_location(const at::Tensor& bias, const Geometry& g) {
  if (bias.dim() == 1) return bias.view({1, 1, g.out_channels});
  return bias.reshape({g.out_channels, g.locations()}).t().unsqueeze(1);
}

}  // namespace

at::Tensor unfold_forward(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const Geometry& g) {
  const at::Tensor filters_t =
      weight.reshape({g.locations(), g.out_channels, g.patch_size()}).transpose(1, 2);
  // Outputs are fresh tensors, never views of a temporary: a view would reach the caller as
  // an autograd view of a tensor it never saw.
  auto out = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                       input.options());
  const int64_t block = samples_per_block(g, input.element_size());
  for (int64_t n0 = 0; n0 < g.batch; n0 += block) {
    const Geometry b = with_batch(g, std::min(block, g.batch - n0));
    const at::Tensor patches = gather_patches(input.narrow(0, n0, b.batch), b);
    const at::Tensor out_by_location =
        bias.has_value()
            ? at::baddbmm(
                  bias_per_location(*bias, b).expand({b.locations(), b.batch, b.out_channels}),
                  patches, filters_t)
            : at::bmm(patches, filters_t);
    out.narrow(0, n0, b.batch)
        .view({b.batch, b.out_channels, b.locations()})
        .copy_(out_by_location.permute({1, 2, 0}));
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> unfold_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const Geometry& g, bool shared_bias, std::array<bool, 3> output_mask) {
  const int64_t block = samples_per_block(g, input.element_size());
  // grad_output of block b's samples by location: (L, samples, C_out).
  const auto grad_by_location = [&](int64_t n0, const Geometry& b) {
    return grad_output.narrow(0, n0, b.batch)
        .permute({2, 3, 0, 1})
        .reshape({b.locations(), b.batch, b.out_channels});
  };
  const auto empty = [&] { return at::empty({0}, input.options()); };

  at::Tensor grad_input = empty();
  if (output_mask[0]) {
    const at::Tensor filters =
        weight.reshape({g.locations(), g.out_channels, g.patch_size()});
    if (block >= g.batch) {
      grad_input =
          scatter_patches(at::bmm(grad_by_location(0, g), filters), g, input.scalar_type());
    } else {
      grad_input = at::empty(input.sizes(), input.options());
      for (int64_t n0 = 0; n0 < g.batch; n0 += block) {
        const Geometry b = with_batch(g, std::min(block, g.batch - n0));
        grad_input.narrow(0, n0, b.batch)
            .copy_(scatter_patches(at::bmm(grad_by_location(n0, b), filters), b,
                                   input.scalar_type()));
      }
    }
  }
  at::Tensor grad_weight = empty();
  if (output_mask[1]) {
    grad_weight = g.batch == 0 ? at::zeros(weight.sizes(), weight.options())
                               : at::empty(weight.sizes(), weight.options());
    auto grad_filters = grad_weight.view({g.locations(), g.out_channels, g.patch_size()});
    // The blocks' products are added into grad_weight in block order (in its own dtype: a
    // float accumulator would be one more weight-sized tensor).
    for (int64_t n0 = 0; n0 < g.batch; n0 += block) {
      const Geometry b = with_batch(g, std::min(block, g.batch - n0));
      const at::Tensor grad_t = grad_by_location(n0, b).transpose(1, 2);
      const at::Tensor patches = gather_patches(input.narrow(0, n0, b.batch), b);
      if (n0 == 0)
        at::bmm_out(grad_filters, grad_t, patches);
      else
        grad_filters.baddbmm_(grad_t, patches);
    }
  }
  at::Tensor grad_bias = empty();
  if (output_mask[2]) {
    grad_bias = shared_bias ? grad_output.sum({0, 2, 3}) : grad_output.sum(0);
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace lc_cuda
