// The unfold + batched-matmul fallback, written with ATen ops so that it runs on any device.
//
// Each output location l = (i, j) is one GEMM: its patches (N x K, K = C_in*KH*KW) times its
// transposed filter bank (K x C_out). The patches of all locations are gathered by a single
// strided view of the padded input and a single copy, and all locations go through one bmm with
// the locations as the batch. Nothing loops over samples: F.unfold would, on CUDA.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

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

// (C_out, L) -> (L, 1, C_out) for per-location bias, (C_out,) -> (1, 1, C_out) for shared bias.
at::Tensor bias_per_location(const at::Tensor& bias, const Geometry& g) {
  if (bias.dim() == 1) return bias.view({1, 1, g.out_channels});
  return bias.reshape({g.out_channels, g.locations()}).t().unsqueeze(1);
}

}  // namespace

at::Tensor unfold_forward(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const Geometry& g) {
  const at::Tensor patches = gather_patches(input, g);
  const at::Tensor filters_t =
      weight.reshape({g.locations(), g.out_channels, g.patch_size()}).transpose(1, 2);
  const at::Tensor out_by_location =
      bias.has_value()
          ? at::baddbmm(
                bias_per_location(*bias, g).expand({g.locations(), g.batch, g.out_channels}),
                patches, filters_t)
          : at::bmm(patches, filters_t);
  // Outputs are fresh tensors, never views of a temporary: a view would reach the caller as
  // an autograd view of a tensor it never saw.
  auto out = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, out_by_location.options());
  out.view({g.batch, g.out_channels, g.locations()}).copy_(out_by_location.permute({1, 2, 0}));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> unfold_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const Geometry& g, bool shared_bias, std::array<bool, 3> output_mask) {
  const at::Tensor grad_by_location =
      grad_output.permute({2, 3, 0, 1}).reshape({g.locations(), g.batch, g.out_channels});
  const auto empty = [&] { return at::empty({0}, input.options()); };

  at::Tensor grad_input = empty();
  if (output_mask[0]) {
    const at::Tensor filters =
        weight.reshape({g.locations(), g.out_channels, g.patch_size()});
    grad_input = scatter_patches(at::bmm(grad_by_location, filters), g, input.scalar_type());
  }
  at::Tensor grad_weight = empty();
  if (output_mask[1]) {
    grad_weight = at::empty(weight.sizes(), weight.options());
    auto grad_filters = grad_weight.view({g.locations(), g.out_channels, g.patch_size()});
    at::bmm_out(grad_filters, grad_by_location.transpose(1, 2), gather_patches(input, g));
  }
  at::Tensor grad_bias = empty();
  if (output_mask[2]) {
    grad_bias = shared_bias ? grad_output.sum({0, 2, 3}) : grad_output.sum(0);
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace lc_cuda
