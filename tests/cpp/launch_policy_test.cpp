// Checks csrc/cuda/launch_policy.cuh on the CPU: which compiled architectures may run the
// tensor-core kernels, the grid and shared-memory limits every tensor-core launch must meet (the
// launchers fall back to the FFMA kernels otherwise), and the staging plan that sizes a
// tensor-core kernel's input stages by the tile: every benchmark layer, 2D and 3D, must fit an
// sm_90 CTA in every tensor-core kernel. Prints each failed check, and the plan of every layer;
// exits 1 on any failed check.
#include "cuda_on_cpu.h"

#include <array>
#include <cstdio>
#include <string>

#include "cuda/forward_tensor_core.cuh"
#include "cuda/grad_input_tensor_core.cuh"
#include "cuda/grad_weight_tensor_core.cuh"
#include "cuda/launch_policy.cuh"

using namespace lc_cuda;

int failures = 0;

void check(bool condition, const std::string& what) {
  if (!condition) {
    ++failures;
    std::printf("FAILED: %s\n", what.c_str());
  }
}

// A layer of one group, a filter bank per location, contiguous (unpacked) tensors. Sizes are
// (depth, height, width); padding the same on both sides.
struct Layer {
  const char* name;
  int batch, in_channels;
  std::array<int, 3> size;
  int out_channels;
  std::array<int, 3> kernel, stride, padding, dilation;
};

kernels::ConvShape<int64_t> shape_of(const Layer& l) {
  kernels::ConvShape<int64_t> s{};
  s.batch = l.batch, s.in_channels = l.in_channels, s.out_channels = l.out_channels;
  s.in_d = l.size[0], s.in_h = l.size[1], s.in_w = l.size[2];
  const auto out = [&](int d) {
    return (l.size[d] + 2 * l.padding[d] - l.dilation[d] * (l.kernel[d] - 1) - 1) / l.stride[d] +
           1;
  };
  s.out_d = out(0), s.out_h = out(1), s.out_w = out(2);
  s.kernel_d = l.kernel[0], s.kernel_h = l.kernel[1], s.kernel_w = l.kernel[2];
  s.stride_d = l.stride[0], s.stride_h = l.stride[1], s.stride_w = l.stride[2];
  s.pad_d = l.padding[0], s.pad_h = l.padding[1], s.pad_w = l.padding[2];
  s.dilation_d = l.dilation[0], s.dilation_h = l.dilation[1], s.dilation_w = l.dilation[2];
  s.groups = 1, s.group_in_channels = l.in_channels, s.group_out_channels = l.out_channels;
  s.share_d = s.share_h = s.share_w = 1;
  s.regions_d = s.out_d, s.regions_h = s.out_h, s.regions_w = s.out_w;
  return s;
}

Layer square(const char* name, int batch, int in_channels, int size, int out_channels, int kernel,
             int stride, int padding) {
  return {name,     batch,    in_channels,        {1, size, size},    out_channels,
          {1, kernel, kernel}, {1, stride, stride}, {0, padding, padding}, {1, 1, 1}};
}

// benchmarks/cases.py, issue 21's 3D and 1D layers, and the layer issue 21 found the TF32
// forward too big for.
const Layer kLayers[] = {
    square("deepface_L4", 128, 16, 63, 16, 9, 1, 0),
    square("deepface_L5", 128, 16, 55, 16, 7, 2, 0),
    square("deepface_L6", 128, 16, 25, 16, 5, 1, 0),
    square("convnet_local3", 128, 64, 6, 64, 3, 1, 1),
    square("yolov1_local", 64, 1024, 7, 256, 3, 1, 1),
    square("lc_resnet_stem", 32, 3, 224, 64, 7, 2, 3),
    square("cunn232_c1", 64, 1, 64, 16, 3, 1, 1),
    square("mid_32x32_c64", 64, 64, 32, 64, 3, 1, 1),
    square("wide_16x16_c128_k1", 256, 128, 16, 128, 1, 1, 0),
    // a medical-imaging volume: 4 channels, 32^3, kernel 3
    {"volume_32", 8, 4, {32, 32, 32}, 8, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}},
    // an fMRI decoder's layer at half the 64 x 64 x 30 resolution of an fMRI volume
    {"fmri_decoder", 16, 16, {15, 32, 32}, 8, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}},
    // a long 1D genomics layer: one channel, 50,000 positions, kernel 5
    {"genomics_1d", 32, 1, {1, 1, 50000}, 1, {1, 1, 5}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}},
    {"dilated_9x7", 6, 7, {1, 9, 7}, 8, {1, 3, 3}, {1, 1, 2}, {0, 0, 0}, {1, 3, 3}},
};

template <typename T>
launch::StagingPlan forward_plan(const kernels::ConvShape<int64_t>& s) {
  return launch::plan_staging(
      T::STAGE_K, T::MIN_STAGE_K,
      [&](int stage_k) {
        return kernels::tensor_core_forward_shared_bytes<T>(s, int64_t(stage_k));
      },
      launch::kSm90SharedBytesPerBlock);
}

template <typename T>
launch::StagingPlan grad_weight_plan(const kernels::ConvShape<int64_t>& s) {
  return launch::plan_staging(
      T::STAGE_K, T::MIN_STAGE_K,
      [&](int stage_k) {
        return kernels::tensor_core_grad_weight_shared_bytes<T>(s, int64_t(stage_k));
      },
      launch::kSm90SharedBytesPerBlock);
}

int main() {
  // ptxVersion of the code a device runs: 75 for a "7.5+PTX" build JIT-compiled on an H100
  check(!launch::compiled_with_tensor_cores(75), "sm_75 code has no tensor-core kernels");
  check(!launch::compiled_with_tensor_cores(70), "sm_70 code has no tensor-core kernels");
  check(launch::compiled_with_tensor_cores(80), "sm_80 code has them");
  check(launch::compiled_with_tensor_cores(90), "sm_90 code has them");
  check(launch::compiled_with_tensor_cores(120), "sm_120 code has them");

  const unsigned int limit = 65535;
  check(launch::grid_fits(dim3{1u << 30, limit, limit}), "y and z at the limit fit");
  check(!launch::grid_fits(dim3{1, limit + 1, 1}), "grid y past the limit");
  check(!launch::grid_fits(dim3{1, 1, limit + 1}), "grid z past the limit");

  const dim3 small{4, 8, 2};
  check(launch::tensor_core_launch_fits(48 * 1024, 227 * 1024, small), "fits");
  check(launch::tensor_core_launch_fits(227 * 1024, 227 * 1024, small), "shared memory at limit");
  check(!launch::tensor_core_launch_fits(227 * 1024 + 1, 227 * 1024, small), "too much shared");
  check(!launch::tensor_core_launch_fits(1024, 227 * 1024, dim3{1, 1, limit + 1}),
        "grid z past the limit falls back");
  check(!launch::tensor_core_launch_fits(1024, 227 * 1024, dim3{1, limit + 1, 1}),
        "grid y past the limit falls back");

  // The grid a huge channel count gives the tensor-core forward: z = C_out / 16 blocks.
  kernels::ConvShape<int64_t> shape{};
  shape.batch = 8;
  shape.out_d = 1;
  shape.out_h = shape.out_w = 2;
  shape.groups = 1;
  shape.out_channels = shape.group_out_channels = 16 * (int64_t(limit) + 1);
  const dim3 grid = kernels::tensor_core_forward_grid<kernels::TensorCoreForwardTiles<2>>(shape);
  check(grid.z == limit + 1, "forward grid z counts C_out tiles");
  check(!launch::tensor_core_launch_fits(1024, 227 * 1024, grid), "so that launch falls back");

  // The plan: the largest stage that fits, halving from 64 columns down to the smallest.
  const int64_t per_block = launch::kSm90SharedBytesPerBlock;
  const auto bytes = [](int stage_k) { return 100000 + int64_t(stage_k) * 3000; };  // 64: 292,000
  const auto plan = launch::plan_staging(64, 16, bytes, per_block);
  check(plan.stage_k == 32 && plan.shared_bytes == 196000, "32 columns fit, 64 do not");
  const auto fits =
      launch::plan_staging(64, 16, [](int k) { return int64_t(k) * 1000; }, per_block);
  check(fits.stage_k == 64 && fits.shared_bytes == 64000, "64 columns fit: kept");
  const auto none =
      launch::plan_staging(64, 8, [](int k) { return 240000 + int64_t(k); }, per_block);
  check(none.stage_k == 0 && none.shared_bytes == 240008, "nothing fits: stage 0, smallest size");

  using F16 = kernels::TensorCoreForwardTiles<2>;
  using TF32 = kernels::TensorCoreTF32ForwardTiles<2>;
  using W16 = kernels::TensorCoreGradWeightTiles;
  using WTF32 = kernels::TensorCoreTF32GradWeightTiles;
  using I16 = kernels::TensorCoreGradInputTiles;
  using ITF32 = kernels::TensorCoreTF32GradInputTiles;
  for (const Layer& layer : kLayers) {
    const auto s = shape_of(layer);
    const auto f16 = forward_plan<F16>(s), tf32 = forward_plan<TF32>(s);
    const auto w16 = grad_weight_plan<W16>(s), wtf32 = grad_weight_plan<WTF32>(s);
    const int64_t i16 = kernels::tensor_core_grad_input_shared_bytes<I16>(s);
    const int64_t itf32 = kernels::tensor_core_grad_input_shared_bytes<ITF32>(s);
    std::printf("%-20s forward f16 %2d cols %6lld B, tf32 %2d cols %6lld B; grad_weight f16 %2d "
                "cols %6lld B, tf32 %2d cols %6lld B; grad_input f16 %6lld B, tf32 %6lld B\n",
                layer.name, f16.stage_k, (long long)f16.shared_bytes, tf32.stage_k,
                (long long)tf32.shared_bytes, w16.stage_k, (long long)w16.shared_bytes,
                wtf32.stage_k, (long long)wtf32.shared_bytes, (long long)i16,
                (long long)itf32);
    const std::string name = layer.name;
    for (const auto& [plan, kernel] : {std::pair{f16, "forward f16"}, {tf32, "forward tf32"},
                                       {w16, "grad_weight f16"}, {wtf32, "grad_weight tf32"}}) {
      check(plan.stage_k > 0 && plan.shared_bytes <= per_block,
            name + ": the " + kernel + " staging fits an sm_90 CTA");
    }
    check(i16 <= per_block && itf32 <= per_block, name + ": the grad_input staging fits");
    check(launch::grid_fits(kernels::tensor_core_forward_grid<F16>(s)) &&
              launch::grid_fits(kernels::tensor_core_grad_weight_grid<W16>(s)) &&
              launch::grid_fits(kernels::tensor_core_grad_input_grid<I16>(s)),
          name + ": the tensor-core grids fit");
  }
  // Issue 21's numbers: the TF32 forward at 64 columns a stage asked 300,048 bytes on
  // wide_16x16_c128_k1 (a 1x1 kernel stages 65 kernel rows) and 254,544 on the dilated layer,
  // more than an sm_90 CTA has; sized by the tile they take fewer columns. (The float16 forward
  // there, 150,288 bytes at 64 columns, fits one CTA per SM and keeps them.)
  const auto wide_layer = shape_of(kLayers[8]), dilated = shape_of(kLayers[12]);
  check(kernels::tensor_core_forward_shared_bytes<TF32>(wide_layer, int64_t(64)) == 300048,
        "wide_16x16_c128_k1 TF32 forward at 64 columns: 300,048 bytes");
  check(kernels::tensor_core_forward_shared_bytes<TF32>(dilated, int64_t(64)) == 254544,
        "the dilated layer's TF32 forward at 64 columns: 254,544 bytes");
  check(kernels::tensor_core_forward_shared_bytes<F16>(wide_layer, int64_t(64)) == 150288,
        "wide_16x16_c128_k1 float16 forward at 64 columns: 150,288 bytes");
  check(forward_plan<TF32>(wide_layer).stage_k == 32, "wide_16x16_c128_k1 TF32: 32 columns");
  check(forward_plan<F16>(wide_layer).stage_k == 64, "wide_16x16_c128_k1 float16: 64 columns");
  check(forward_plan<TF32>(dilated).stage_k == 32, "the dilated layer's TF32: 32 columns");
  check(forward_plan<F16>(shape_of(kLayers[0])).stage_k == 64, "DeepFace L4 keeps 64 columns");
  check(forward_plan<TF32>(shape_of(kLayers[0])).stage_k == 64, "in TF32 too");

  // A dilation of 400 along the width: no stage fits, every pass takes its FFMA kernel.
  const auto too_wide = shape_of({"dilation_400", 4, 2, {1, 3, 820}, 8, {1, 1, 3}, {1, 1, 1},
                                  {0, 0, 0}, {1, 1, 400}});
  check(forward_plan<F16>(too_wide).stage_k == 0 && grad_weight_plan<W16>(too_wide).stage_k == 0 &&
            kernels::tensor_core_grad_input_shared_bytes<I16>(too_wide) > per_block,
        "a dilation of 400 fits no tensor-core kernel");

  std::printf("launch policy: %d failed checks\n", failures);
  return failures ? 1 : 0;
}
