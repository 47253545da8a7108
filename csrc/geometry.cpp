// The argument checks every backend runs first, and the Geometry they return.
#include "geometry.h"

#include <string>

namespace lc_cuda {
namespace {

// Names of the spatial dimensions of a call with `dims` of them, for messages.
const char* dim_name(int64_t dims, int64_t dim) {
  static const char* names[3][3] = {{"length"}, {"height", "width"}, {"depth", "height", "width"}};
  return names[dims - 1][dim];
}

// "OH, OW" and the like: one name per spatial dimension, for messages.
std::string sizes_text(int64_t dims, const char* prefix) {
  static const char* letters[3][3] = {{"L"}, {"H", "W"}, {"D", "H", "W"}};
  std::string text;
  for (int64_t d = 0; d < dims; ++d) {
    text += (d ? ", " : "") + std::string(prefix) + letters[dims - 1][d];
  }
  return text;
}

// "(OH, OW, C_out, C_in / groups, KH, KW)" and the like: a weight layout for messages.
std::string layout(int64_t dims, const char* regions, const char* channels, const char* kernel) {
  return "(" + sizes_text(dims, regions) + ", " + channels + ", " + sizes_text(dims, kernel) + ")";
}

void check_dense_floating(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.layout() == at::kStrided, name, " must be a dense (strided) tensor, got layout ",
              tensor.layout());
  TORCH_CHECK(at::isFloatingType(tensor.scalar_type()), name,
              " must be a floating-point tensor (float64, float32, float16 or bfloat16), got dtype ",
              tensor.scalar_type());
}

void check_same_dtype_and_device(const at::Tensor& tensor, const char* name,
                                 const at::Tensor& input) {
  TORCH_CHECK(tensor.scalar_type() == input.scalar_type(), name,
              ".dtype must match input.dtype: got ", tensor.scalar_type(), ", expected ",
              input.scalar_type());
  TORCH_CHECK(tensor.device() == input.device(), name,
              ".device must match input.device: got ", tensor.device(), ", expected ",
              input.device());
}

void check_values(at::IntArrayRef values, const char* name, int64_t count, int64_t minimum,
                  const char* what) {
  TORCH_CHECK(static_cast<int64_t>(values.size()) == count, name, " must have ", count,
              " values (", what, "), got ", values);
  for (const int64_t value : values) {
    TORCH_CHECK(value >= minimum, name, " must be ", minimum == 0 ? "non-negative" : "positive",
                ", got ", values);
  }
}

// Output extent along one dimension; fails when the dilated kernel is wider than the padded input.
int64_t output_extent(int64_t in, int64_t kernel, int64_t stride, int64_t pad_before,
                      int64_t pad_after, int64_t dilation, const char* name) {
  const int64_t padded = in + pad_before + pad_after;
  const int64_t span = dilation * (kernel - 1) + 1;
  TORCH_CHECK(span <= padded, "kernel ", name, " does not fit the padded input: dilated kernel ",
              name, " ", span, " (dilation * (kernel - 1) + 1) > padded input ", name, " ", padded,
              " (input ", in, " + padding ", pad_before, " + ", pad_after, ")");
  return (padded - span) / stride + 1;
}

// The spatial values of a call, one per dimension, as the geometry's depth, height and width:
// the leading dimensions a call does not have get `trivial`.
std::array<int64_t, 3> spread(at::IntArrayRef values, int64_t dims, int64_t trivial) {
  std::array<int64_t, 3> out{trivial, trivial, trivial};
  for (int64_t d = 0; d < dims; ++d) out[3 - dims + d] = values[d];
  return out;
}

struct Arguments {
  int64_t dims;
  std::array<int64_t, 3> stride, pad_before, pad_after, dilation, share;
  ShareMode share_mode;
};

// Checks the non-tensor arguments for a call with `dims` spatial dimensions.
Arguments check_arguments(int64_t dims, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, int64_t groups, at::IntArrayRef share,
                          c10::string_view share_mode) {
  const char* what = dims == 1 ? "length" : dims == 2 ? "height, width" : "depth, height, width";
  check_values(stride, "stride", dims, 1, what);
  check_values(dilation, "dilation", dims, 1, what);
  check_values(padding, "padding", 2 * dims, 0,
               dims == 1   ? "before, after"
               : dims == 2 ? "top, bottom, left, right"
                           : "front, back, top, bottom, left, right");
  check_values(share, "share", dims, 1, what);
  TORCH_CHECK(groups >= 1, "groups must be positive, got ", groups);
  Arguments a{dims, spread(stride, dims, 1), {}, {}, spread(dilation, dims, 1),
              spread(share, dims, 1), parse_share_mode(share_mode)};
  std::vector<int64_t> before, after;
  for (int64_t d = 0; d < dims; ++d) {
    before.push_back(padding[2 * d]);
    after.push_back(padding[2 * d + 1]);
  }
  a.pad_before = spread(before, dims, 0);
  a.pad_after = spread(after, dims, 0);
  return a;
}

// Fills the geometry's arguments, and its regions from the output sizes already set.
void set_arguments(Geometry& g, const Arguments& a) {
  g.spatial_dims = a.dims;
  std::tie(g.stride_d, g.stride_h, g.stride_w) = std::tuple(a.stride[0], a.stride[1], a.stride[2]);
  std::tie(g.pad_d, g.pad_h, g.pad_w) =
      std::tuple(a.pad_before[0], a.pad_before[1], a.pad_before[2]);
  std::tie(g.pad_d_end, g.pad_h_end, g.pad_w_end) =
      std::tuple(a.pad_after[0], a.pad_after[1], a.pad_after[2]);
  std::tie(g.dilation_d, g.dilation_h, g.dilation_w) =
      std::tuple(a.dilation[0], a.dilation[1], a.dilation[2]);
  std::tie(g.share_d, g.share_h, g.share_w) = std::tuple(a.share[0], a.share[1], a.share[2]);
  g.share_mode = a.share_mode;
  const std::array<int64_t, 3> out{g.out_d, g.out_h, g.out_w};
  std::array<int64_t, 3> regions{};
  for (int64_t d = 0; d < 3; ++d) {
    if (a.share_mode == ShareMode::block) {
      regions[d] = (out[d] + a.share[d] - 1) / a.share[d];
    } else {
      TORCH_CHECK(a.share[d] <= out[d], "share (a period, share_mode 'tile') must be at most the "
                  "output size along each dimension: got share ",
                  at::IntArrayRef(a.share).slice(3 - a.dims), ", output size ",
                  at::IntArrayRef(out).slice(3 - a.dims));
      regions[d] = a.share[d];
    }
  }
  std::tie(g.regions_d, g.regions_h, g.regions_w) = std::tuple(regions[0], regions[1], regions[2]);
}

void check_groups(const Geometry& g) {
  TORCH_CHECK(g.in_channels % g.groups == 0 && g.out_channels % g.groups == 0,
              "groups must divide both C_in and C_out: got groups ", g.groups, ", C_in ",
              g.in_channels, ", C_out ", g.out_channels);
}

// weight's shape, and bias's where given, against the geometry.
void check_weight_and_bias(const Geometry& g, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, const at::Tensor& input,
                           at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, const std::string& weight_layout) {
  const auto expected = weight_shape(g);
  TORCH_CHECK(weight.sizes() == at::IntArrayRef(expected), "weight.shape is not valid: got ",
              weight.sizes(), ", expected ", at::IntArrayRef(expected), " ", weight_layout,
              " for input of shape ", input.sizes(), " with stride ", stride, ", padding ",
              padding, ", dilation ", dilation, ", groups ", g.groups,
              g.shares_weights() ? " and weight sharing" : "");
  if (!bias.has_value()) return;
  check_dense_floating(*bias, "bias");
  check_same_dtype_and_device(*bias, "bias", input);
  std::vector<int64_t> per_region{g.out_channels};
  const std::array<int64_t, 3> regions{g.regions_d, g.regions_h, g.regions_w};
  for (int64_t d = 3 - g.spatial_dims; d < 3; ++d) per_region.push_back(regions[d]);
  const std::array<int64_t, 1> shared{g.out_channels};
  TORCH_CHECK(bias->sizes() == at::IntArrayRef(shared) ||
                  bias->sizes() == at::IntArrayRef(per_region),
              "bias.shape is not valid: got ", bias->sizes(), ", expected ",
              at::IntArrayRef(per_region),
              g.shares_weights() ? " (C_out, one per weight region) or " : " (C_out, one per "
                                                                          "location) or ",
              at::IntArrayRef(shared), " (C_out,)");
}

}  // namespace

ShareMode parse_share_mode(c10::string_view name) {
  if (name == "block") return ShareMode::block;
  if (name == "tile") return ShareMode::tile;
  TORCH_CHECK(false, "share_mode must be 'block' or 'tile', got '", std::string(name), "'");
}

Geometry check_forward_args(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            at::IntArrayRef share, c10::string_view share_mode) {
  TORCH_CHECK(input.dim() >= 3 && input.dim() <= 5,
              "input must be 3-D (N, C_in, L), 4-D (N, C_in, H, W) or 5-D (N, C_in, D, H, W), got ",
              input.dim(), "-D of shape ", input.sizes());
  const int64_t dims = input.dim() - 2;
  const std::string weight_layout = layout(dims, "O", "C_out, C_in / groups", "K");
  TORCH_CHECK(weight.dim() == 2 * dims + 2, "weight must be ", 2 * dims + 2, "-D ", weight_layout,
              " for ", input.dim(), "-D input, got ", weight.dim(), "-D of shape ", weight.sizes());
  check_dense_floating(input, "input");
  check_dense_floating(weight, "weight");
  check_same_dtype_and_device(weight, "weight", input);
  const Arguments a = check_arguments(dims, stride, padding, dilation, groups, share, share_mode);
  for (int64_t d = 1; d < input.dim(); ++d) {
    TORCH_CHECK(input.size(d) >= 1, "input's channels and sizes (dims 1 to ", input.dim() - 1,
                ") must be at least 1, got input.shape ", input.sizes());
  }
  for (int64_t d = dims; d < weight.dim(); ++d) {
    TORCH_CHECK(weight.size(d) >= 1, "weight's channels and kernel sizes (dims ", dims, " to ",
                weight.dim() - 1, ") must be at least 1, got weight.shape ", weight.sizes());
  }

  Geometry g{};
  g.batch = input.size(0);
  g.in_channels = input.size(1);
  g.out_channels = weight.size(dims);
  g.groups = groups;
  check_groups(g);
  // Channels before sizes: input in channels-last order would otherwise be blamed on its sizes.
  const int64_t expected_channels = weight.size(dims + 1) * groups;
  TORCH_CHECK(g.in_channels == expected_channels, "input.shape[1] is not valid: got ",
              g.in_channels, ", expected ", expected_channels, " input channels (C_in: ",
              groups == 1 ? "weight.shape[" + std::to_string(dims + 1) + "]"
                          : "weight.shape[" + std::to_string(dims + 1) + "] * groups",
              "); input of shape ", input.sizes(), ", weight of shape ", weight.sizes(),
              input.size(-1) == expected_channels
                  ? ". The input looks channels-last: pass input.movedim(-1, 1)"
                  : "");
  const auto in = spread(input.sizes().slice(2), dims, 1);
  const auto kernel = spread(weight.sizes().slice(dims + 2), dims, 1);
  std::tie(g.in_d, g.in_h, g.in_w) = std::tuple(in[0], in[1], in[2]);
  std::tie(g.kernel_d, g.kernel_h, g.kernel_w) = std::tuple(kernel[0], kernel[1], kernel[2]);
  std::array<int64_t, 3> out{};
  for (int64_t d = 0; d < 3; ++d) {
    out[d] = output_extent(in[d], kernel[d], a.stride[d], a.pad_before[d], a.pad_after[d],
                           a.dilation[d], d < 3 - dims ? "" : dim_name(dims, d - (3 - dims)));
  }
  std::tie(g.out_d, g.out_h, g.out_w) = std::tuple(out[0], out[1], out[2]);
  set_arguments(g, a);
  check_weight_and_bias(g, weight, bias, input, stride, padding, dilation,
                        g.shares_weights() ? layout(dims, "R", "C_out, C_in / groups", "K")
                                           : weight_layout);
  return g;
}

Geometry check_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                             const at::Tensor& weight, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                             at::IntArrayRef share, c10::string_view share_mode) {
  const Geometry g = check_forward_args(input, weight, std::nullopt, stride, padding, dilation,
                                        groups, share, share_mode);
  check_dense_floating(grad_output, "grad_output");
  check_same_dtype_and_device(grad_output, "grad_output", input);
  const auto expected = output_shape(g);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected),
              "grad_output.shape is not valid: got ", grad_output.sizes(), ", expected ",
              at::IntArrayRef(expected), " (N, C_out, ", sizes_text(g.spatial_dims, "O"),
              "), the forward's output");
  return g;
}

Geometry check_transpose_args(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef output_padding,
                              at::IntArrayRef dilation, int64_t groups, at::IntArrayRef share,
                              c10::string_view share_mode) {
  TORCH_CHECK(input.dim() >= 3 && input.dim() <= 5,
              "input must be 3-D (N, C_in, L), 4-D (N, C_in, H, W) or 5-D (N, C_in, D, H, W), got ",
              input.dim(), "-D of shape ", input.sizes());
  const int64_t dims = input.dim() - 2;
  const std::string weight_layout = layout(dims, "I", "C_in, C_out / groups", "K");
  TORCH_CHECK(weight.dim() == 2 * dims + 2, "weight must be ", 2 * dims + 2, "-D ", weight_layout,
              " for ", input.dim(), "-D input, got ", weight.dim(), "-D of shape ", weight.sizes());
  check_dense_floating(input, "input");
  check_dense_floating(weight, "weight");
  check_same_dtype_and_device(weight, "weight", input);
  const Arguments a = check_arguments(dims, stride, padding, dilation, groups, share, share_mode);
  const char* what = dims == 1 ? "length" : dims == 2 ? "height, width" : "depth, height, width";
  check_values(output_padding, "output_padding", dims, 0, what);
  const auto extra = spread(output_padding, dims, 0);
  for (int64_t d = 0; d < 3; ++d) {
    TORCH_CHECK(extra[d] < std::max(a.stride[d], a.dilation[d]),
                "output_padding must be smaller than stride or dilation along each dimension "
                "(as in ConvTranspose), got output_padding ",
                output_padding, ", stride ", stride, ", dilation ", dilation);
  }
  TORCH_CHECK(input.size(1) == weight.size(dims), "input.shape[1] is not valid: got ",
              input.size(1), ", expected ", weight.size(dims), " input channels (C_in: weight.shape[",
              dims, "]); input of shape ", input.sizes(), ", weight of shape ", weight.sizes(),
              input.size(-1) == weight.size(dims)
                  ? ". The input looks channels-last: pass input.movedim(-1, 1)"
                  : "");
  // The forward op's geometry, whose output is this op's input and whose input its result.
  Geometry g{};
  g.batch = input.size(0);
  g.out_channels = input.size(1);
  g.in_channels = weight.size(dims + 1) * groups;
  g.groups = groups;
  check_groups(g);
  const auto out = spread(input.sizes().slice(2), dims, 1);
  const auto kernel = spread(weight.sizes().slice(dims + 2), dims, 1);
  std::array<int64_t, 3> in{};
  for (int64_t d = 0; d < 3; ++d) {
    TORCH_CHECK(out[d] >= 1 && kernel[d] >= 1,
                "input sizes and kernel sizes must be at least 1, got input.shape ",
                input.sizes(), ", weight.shape ", weight.sizes());
    in[d] = (out[d] - 1) * a.stride[d] - a.pad_before[d] - a.pad_after[d] +
            a.dilation[d] * (kernel[d] - 1) + 1 + extra[d];
    TORCH_CHECK(in[d] >= 1, "the output would be empty along ",
                dim_name(dims, std::max<int64_t>(d - (3 - dims), 0)), ": size ", in[d],
                " = (input - 1) * stride - padding + dilation * (kernel - 1) + 1 + "
                "output_padding, for input of shape ", input.sizes(), ", padding ", padding);
  }
  std::tie(g.in_d, g.in_h, g.in_w) = std::tuple(in[0], in[1], in[2]);
  std::tie(g.out_d, g.out_h, g.out_w) = std::tuple(out[0], out[1], out[2]);
  std::tie(g.kernel_d, g.kernel_h, g.kernel_w) = std::tuple(kernel[0], kernel[1], kernel[2]);
  set_arguments(g, a);
  // The weight is the forward op's; the bias belongs to this op's output, the forward's input.
  const auto expected = weight_shape(g);
  TORCH_CHECK(weight.sizes() == at::IntArrayRef(expected), "weight.shape is not valid: got ",
              weight.sizes(), ", expected ", at::IntArrayRef(expected), " ",
              layout(dims, g.shares_weights() ? "R" : "I", "C_in, C_out / groups", "K"),
              " for input of shape ", input.sizes(), " with stride ", stride, ", padding ",
              padding, ", dilation ", dilation, ", groups ", groups);
  if (bias.has_value()) {
    check_dense_floating(*bias, "bias");
    check_same_dtype_and_device(*bias, "bias", input);
    std::vector<int64_t> per_location{g.in_channels};
    for (int64_t d = 3 - dims; d < 3; ++d) per_location.push_back(in[d]);
    const std::array<int64_t, 1> shared{g.in_channels};
    TORCH_CHECK(bias->sizes() == at::IntArrayRef(shared) ||
                    bias->sizes() == at::IntArrayRef(per_location),
                "bias.shape is not valid: got ", bias->sizes(), ", expected ",
                at::IntArrayRef(per_location), " (C_out, one per output location) or ",
                at::IntArrayRef(shared), " (C_out,)");
  }
  return g;
}

std::vector<int64_t> input_shape(const Geometry& g) {
  std::vector<int64_t> shape{g.batch, g.in_channels};
  const std::array<int64_t, 3> in{g.in_d, g.in_h, g.in_w};
  shape.insert(shape.end(), in.end() - g.spatial_dims, in.end());
  return shape;
}

std::vector<int64_t> output_shape(const Geometry& g) {
  std::vector<int64_t> shape{g.batch, g.out_channels};
  const std::array<int64_t, 3> out{g.out_d, g.out_h, g.out_w};
  shape.insert(shape.end(), out.end() - g.spatial_dims, out.end());
  return shape;
}

std::vector<int64_t> weight_shape(const Geometry& g) {
  const std::array<int64_t, 3> regions{g.regions_d, g.regions_h, g.regions_w};
  const std::array<int64_t, 3> kernel{g.kernel_d, g.kernel_h, g.kernel_w};
  std::vector<int64_t> shape(regions.end() - g.spatial_dims, regions.end());
  shape.push_back(g.out_channels);
  shape.push_back(g.group_in_channels());
  shape.insert(shape.end(), kernel.end() - g.spatial_dims, kernel.end());
  return shape;
}

at::Tensor as_5d(const at::Tensor& tensor, const Geometry& g) {
  at::Tensor view = tensor;
  for (int64_t d = g.spatial_dims; d < 3; ++d) view = view.unsqueeze(2);
  return view;
}

}  // namespace lc_cuda
