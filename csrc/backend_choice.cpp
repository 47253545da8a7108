#include "backend_choice.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/randn.h>
#include <c10/util/Exception.h>

#include <array>
#include <cstdlib>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "lc_cuda_build_config.h"
#include "regions.h"

namespace lc_cuda {
namespace {

enum class CheckMode { automatic, off, all, test_fault };

CheckMode check_mode() {
  const char* value = std::getenv("LC_CUDA_FIRST_USE_CHECK");
  const std::string name = value == nullptr ? "" : value;
  if (name.empty() || name == "auto") return CheckMode::automatic;
  if (name == "off" || name == "0") return CheckMode::off;
  if (name == "all") return CheckMode::all;
  if (name == "test_fault") return CheckMode::test_fault;
  TORCH_CHECK(false, "LC_CUDA_FIRST_USE_CHECK must be 'auto', 'off', 'all' or 'test_fault' (or "
              "unset), got '", name, "'");
}

// A path: the device, the dtype, kernels or ffma, and for float32 on CUDA whether TF32 may run.
using PathKey = std::tuple<c10::DeviceType, c10::DeviceIndex, at::ScalarType, Backend, bool>;

// One check geometry from its tensors' shapes and its arguments, through a call's own checks (on
// meta tensors: nothing is allocated), so that its derived sizes (output, regions) are worked out
// as a call's are, never by hand.
Geometry geometry_of(at::IntArrayRef input, at::IntArrayRef weight, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                     at::IntArrayRef share, c10::string_view share_mode) {
  const auto meta = at::TensorOptions().device(at::kMeta).dtype(at::kFloat);
  return check_forward_args(at::empty(input, meta), at::empty(weight, meta), std::nullopt, stride,
                            padding, dilation, groups, share, share_mode);
}

// The geometries of the check, each run where the path's kernels take it. First a plain 2D one:
// small, but wide enough for every kernel family to run, two channel tiles of the tensor-core
// kernels among them, a batch that is no multiple of 8, padding on every side and a dilation.
// Then the family's other index arithmetic: a 3D one with two groups, a stride and padding along
// the depth, and weights shared in blocks whose last ones are partial; and a 1D depthwise one
// with weights shared periodically.
std::vector<Geometry> check_geometries() {
  return {
      // 9 samples, 4 -> 18 channels, 5x10 -> 5x10, 3x3 kernel dilated (1, 2), padding (1, 2).
      geometry_of({9, 4, 5, 10}, {5, 10, 18, 4, 3, 3}, {1, 1}, {1, 1, 2, 2}, {1, 2}, 1, {1, 1},
                  "block"),
      // 5 samples, 4 -> 6 channels in 2 groups, 4x5x6 -> 4x5x3, 2x3x2 kernel, stride (1, 1, 2),
      // padding (1, 0), (1, 1), (0, 1); 2x2x2 blocks: 2x3x2 regions.
      geometry_of({5, 4, 4, 5, 6}, {2, 3, 2, 6, 2, 2, 3, 2}, {1, 1, 2}, {1, 0, 1, 1, 0, 1},
                  {1, 1, 1}, 2, {2, 2, 2}, "block"),
      // 3 samples, depthwise 3 -> 6 channels, 40 -> 36, kernel 5 dilated 2, padding 2; period 5.
      geometry_of({3, 3, 40}, {5, 6, 1, 5}, {1}, {2, 2}, {2}, 3, {5}, "tile"),
  };
}

// The largest difference the path may show against the fallback, relative to the fallback's
// largest value: a few roundings of the dtype (TF32: of its 10-bit mantissa). A wrong index or
// a lost stage gives differences of the order of 1.
double tolerance(at::ScalarType dtype, bool tf32) {
  switch (dtype) {
    case at::kDouble: return 1e-10;
    case at::kFloat: return tf32 ? 2e-2 : 1e-4;
    case at::kHalf: return 2e-2;
    default: return 8e-2;  // bfloat16
  }
}

double relative_difference(const at::Tensor& got, const at::Tensor& expected) {
  const at::Tensor reference = expected.to(at::kDouble);
  const double scale = reference.abs().max().item<double>();
  return got.to(at::kDouble).sub(reference).abs().max().item<double>() / std::max(scale, 1e-30);
}

std::string path_name(const PathKey& key) {
  std::ostringstream text;
  const auto& [type, index, dtype, backend, tf32] = key;
  text << (type == c10::DeviceType::CUDA ? "CUDA" : "CPU") << " kernels for " << dtype
       << (backend == Backend::ffma ? " (LC_CUDA_BACKEND=ffma)" : "") << (tf32 ? " with TF32" : "")
       << " on " << c10::Device(type, type == c10::DeviceType::CUDA ? index : -1);
  return text.str();
}

// Runs the path and the fallback on the check's inputs, for each check geometry the path's
// kernels take; returns the largest relative difference over the three passes and the name of
// the worst.
std::pair<double, const char*> compare_with_fallback(const at::Tensor& like,
                                                     const DeviceKernels& kernels,
                                                     Backend backend, bool perturb) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(20261204);
  const auto draw = [&](at::IntArrayRef shape) {
    return at::randn(shape, generator, at::TensorOptions().dtype(at::kDouble))
        .to(like.options());
  };
  static const char* passes[3] = {"forward", "grad_input", "grad_weight"};
  std::pair<double, const char*> worst{0.0, passes[0]};
  for (const Geometry& g : check_geometries()) {
    if (!kernels.takes(g)) continue;
    const at::Tensor input = draw(input_shape(g)), weight = draw(weight_shape(g));
    std::vector<int64_t> bias_shape{g.out_channels};
    for (const int64_t size : region_sizes(g)) bias_shape.push_back(size);
    const at::Tensor bias = draw(bias_shape);
    const at::Tensor grad_output = draw(output_shape(g));
    std::array<at::Tensor, 3> got{kernels.forward(input, weight, bias, g, backend),
                                  kernels.grad_input(grad_output, weight, g, backend),
                                  kernels.grad_weight(grad_output, input, g, backend)};
    if (perturb) {
      for (auto& result : got) result = result.mul(1.5);  // a kernel that computes the wrong thing
    }
    const std::array<at::Tensor, 3> expected{unfold_forward(input, weight, bias, g),
                                             unfold_grad_input(grad_output, weight, g),
                                             unfold_grad_weight(grad_output, input, g)};
    for (int pass = 0; pass < 3; ++pass) {
      const double difference = relative_difference(got[pass], expected[pass]);
      // NaN compares false either way: it is the worst there is.
      if (!(difference <= worst.first)) worst = {difference, passes[pass]};
    }
  }
  return worst;
}

// LC_CUDA_BACKEND's choice.
Backend requested_backend() {
  const char* value = std::getenv("LC_CUDA_BACKEND");
  const std::string name = value == nullptr ? "" : value;
  if (name.empty() || name == "auto") return Backend::kernels;
  if (name == "ffma") return Backend::ffma;
  if (name == "unfold") return Backend::unfold;
  TORCH_CHECK(false, "LC_CUDA_BACKEND must be 'auto', 'ffma' or 'unfold' (or unset), got '", name,
              "'");
}

// `chosen`, or Backend::unfold where the first-use check finds (or found earlier in this
// process) that the path disagrees with the fallback.
Backend checked_backend(Backend chosen, const at::Tensor& like, const DeviceKernels& kernels) {
  if (chosen == Backend::unfold) return chosen;
  const CheckMode mode = check_mode();
  if (mode == CheckMode::off) return chosen;
  const bool cuda = like.is_cuda();
  if (mode == CheckMode::automatic && (!cuda || LC_CUDA_BUILD_GPU_VERIFIED)) return chosen;
  const bool tf32 = cuda && like.scalar_type() == at::kFloat && chosen == Backend::kernels &&
                    at::globalContext().allowTF32CuBLAS();
  const PathKey key{like.device().type(), cuda ? like.device().index() : c10::DeviceIndex(-1),
                    like.scalar_type(), chosen, tf32};
  static std::mutex mutex;
  static std::map<PathKey, bool> agrees;
  const std::lock_guard<std::mutex> lock(mutex);  // a path is checked once, by one thread
  auto found = agrees.find(key);
  if (found == agrees.end() && kernels.capturing(like)) return Backend::unfold;
  if (found == agrees.end()) {
    const auto [difference, pass] =
        compare_with_fallback(like, kernels, chosen, mode == CheckMode::test_fault);
    const bool ok = difference <= tolerance(like.scalar_type(), tf32);
    if (!ok) {
      TORCH_WARN("lc_cuda: the ", path_name(key),
                 " disagreed with the unfold fallback on the first-use check's small input (",
                 pass, " relative difference ", difference, "). They are switched off for this "
                 "process: calls on this path take the fallback, which is correct but slower. "
                 "Please report it to the lc_cuda maintainers with the output of "
                 "`python -m lc_cuda.selftest` and lc_cuda.build_info(). "
                 "LC_CUDA_FIRST_USE_CHECK=off turns the check off.");
    }
    found = agrees.emplace(key, ok).first;
  }
  return found->second ? chosen : Backend::unfold;
}

}  // namespace

Backend choose_backend(bool force_unfold, const Geometry& g, const at::Tensor& like,
                       const DeviceKernels& kernels) {
  if (force_unfold) return Backend::unfold;
  const Backend requested = requested_backend();  // checked even where the fallback runs anyway
  if (!kernels.takes(g)) return Backend::unfold;
  return checked_backend(requested, like, kernels);
}

}  // namespace lc_cuda
