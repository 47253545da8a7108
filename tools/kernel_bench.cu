// Times lc_cuda's kernels without torch, so that a kernel variant can be built in seconds and
// run on the GPU machine without rebuilding the extension.
//
//   nvcc -std=c++17 -O3 -arch=sm_90 -I csrc tools/kernel_bench.cu -o kernel_bench
//   ./kernel_bench [repeats]
//
// For each benchmark layer (benchmarks/cases.py, and issue 21's 3D volume and fMRI-decoder
// layers) in float32 and bfloat16, it prints the median time of the forward, grad_input and
// grad_weight kernels (CUDA events, after a warm-up) and the TFLOP/s and GB/s they reach, by the
// same counts as the harness; also the tensor-core kernels alone (the extension also packs the
// input, which is not timed here): in bfloat16 the forward (16- and 32-channel tiles, and with
// half the patch columns per stage, to weigh stage size against occupancy), grad_input and
// grad_weight, in float32 the same three on TF32. Stages are sized as the launchers size them
// (launch::plan_staging). It checks nothing: the tests and `python -m lc_cuda.selftest` do.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda/forward_tensor_core.cuh"
#include "cuda/grad_input_tensor_core.cuh"
#include "cuda/ffma_kernels.cuh"
#include "cuda/grad_weight_tensor_core.cuh"
#include "cuda/launch_policy.cuh"

using namespace lc_cuda::kernels;

#define CHECK_CUDA(call)                                                               \
  do {                                                                                 \
    cudaError_t status = (call);                                                       \
    if (status != cudaSuccess) {                                                       \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(status)); \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

// One group, a filter bank per location; sizes (depth, height, width), padding on both sides.
struct Layer {
  const char* name;
  int batch, in_channels, depth, size, out_channels, kernel_depth, kernel, stride, padding;
};

// The cases of benchmarks/cases.py, then issue 21's 3D layers.
const Layer kLayers[] = {
    {"deepface_L4", 128, 16, 1, 63, 16, 1, 9, 1, 0},
    {"deepface_L5", 128, 16, 1, 55, 16, 1, 7, 2, 0},
    {"deepface_L6", 128, 16, 1, 25, 16, 1, 5, 1, 0},
    {"convnet_local3", 128, 64, 1, 6, 64, 1, 3, 1, 1},
    {"yolov1_local", 64, 1024, 1, 7, 256, 1, 3, 1, 1},
    {"lc_resnet_stem", 32, 3, 1, 224, 64, 1, 7, 2, 3},
    {"cunn232_c1", 64, 1, 1, 64, 16, 1, 3, 1, 1},
    {"mid_32x32_c64", 64, 64, 1, 32, 64, 1, 3, 1, 1},
    {"wide_16x16_c128_k1", 256, 128, 1, 16, 128, 1, 1, 1, 0},
    {"volume_32", 8, 4, 32, 32, 8, 3, 3, 1, 1},
    {"fmri_decoder", 16, 16, 15, 32, 8, 3, 3, 1, 1},
};

ConvShape<int32_t> shape_of(const Layer& l) {
  const int out = (l.size + 2 * l.padding - l.kernel) / l.stride + 1;
  const int depth_padding = l.kernel_depth > 1 ? l.padding : 0;
  const int out_depth = (l.depth + 2 * depth_padding - l.kernel_depth) / l.stride + 1;
  ConvShape<int32_t> s{};
  s.batch = l.batch, s.in_channels = l.in_channels, s.out_channels = l.out_channels;
  s.in_d = l.depth, s.in_h = s.in_w = l.size;
  s.out_d = out_depth, s.out_h = s.out_w = out;
  s.kernel_d = l.kernel_depth, s.kernel_h = s.kernel_w = l.kernel;
  s.stride_d = l.kernel_depth > 1 ? l.stride : 1, s.stride_h = s.stride_w = l.stride;
  s.pad_d = depth_padding, s.pad_h = s.pad_w = l.padding;
  s.dilation_d = s.dilation_h = s.dilation_w = 1;
  s.groups = 1, s.group_in_channels = l.in_channels, s.group_out_channels = l.out_channels;
  s.share_d = s.share_h = s.share_w = 1;
  s.regions_d = s.out_d, s.regions_h = s.out_h, s.regions_w = s.out_w;
  const int in_plane = l.depth * l.size * l.size, out_plane = out_depth * out * out;
  s.input_stride_n = l.in_channels * in_plane, s.input_stride_c = in_plane;
  s.input_stride_d = l.size * l.size, s.input_stride_h = l.size, s.input_stride_w = 1;
  s.grad_stride_n = l.out_channels * out_plane, s.grad_stride_c = out_plane;
  s.grad_stride_d = out * out, s.grad_stride_h = out, s.grad_stride_w = 1;
  return s;
}

template <typename Launch>
float median_ms(Launch launch, int repeats) {
  for (int i = 0; i < 3; ++i) launch();
  std::vector<cudaEvent_t> events(2 * repeats);
  for (auto& event : events) CHECK_CUDA(cudaEventCreate(&event));
  for (int i = 0; i < repeats; ++i) {
    CHECK_CUDA(cudaEventRecord(events[2 * i]));
    launch();
    CHECK_CUDA(cudaEventRecord(events[2 * i + 1]));
  }
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<float> times(repeats);
  for (int i = 0; i < repeats; ++i)
    CHECK_CUDA(cudaEventElapsedTime(&times[i], events[2 * i], events[2 * i + 1]));
  for (auto& event : events) CHECK_CUDA(cudaEventDestroy(event));
  std::sort(times.begin(), times.end());
  return times[repeats / 2];
}

template <typename scalar_t>
scalar_t* device_buffer(size_t count) {
  scalar_t* pointer = nullptr;
  CHECK_CUDA(cudaMalloc(&pointer, std::max<size_t>(count, 1) * sizeof(scalar_t)));
  // Small values, so that nothing overflows; the timing does not depend on them.
  CHECK_CUDA(cudaMemset(pointer, 0x11, count * sizeof(scalar_t)));
  return pointer;
}

template <typename scalar_t>
void run(const Layer& layer, const char* dtype, int repeats) {
  const auto s = shape_of(layer);
  const size_t input = size_t(s.batch) * s.in_channels * s.in_d * s.in_h * s.in_w;
  const size_t locations = size_t(s.locations());
  const size_t patch = size_t(s.patch_size());
  const size_t weight = locations * s.out_channels * patch;
  const size_t output = size_t(s.batch) * s.out_channels * locations;
  const size_t bias = size_t(s.out_channels) * locations;
  scalar_t *x = device_buffer<scalar_t>(input), *w = device_buffer<scalar_t>(weight);
  scalar_t *b = device_buffer<scalar_t>(bias), *y = device_buffer<scalar_t>(output);
  scalar_t *gx = device_buffer<scalar_t>(input), *gw = device_buffer<scalar_t>(weight);
  const double flops = 2.0 * s.batch * locations * s.out_channels * patch;
  const double bytes[3] = {double(input + weight + bias + output) * sizeof(scalar_t),
                           double(output + weight + input) * sizeof(scalar_t),
                           double(output + input + weight) * sizeof(scalar_t)};
  float ms[3];
  with_channel_tile(s.out_channels, [&](auto width) {
    using T = ForwardTiles<decltype(width)::value>;
    ms[0] = median_ms([&] {
      forward_kernel<scalar_t, int32_t, T><<<forward_grid<T>(s), T::THREADS>>>(x, w, b, false, y, s);
    }, repeats);
  });
  with_channel_tile(s.group_in_channels, [&](auto width) {
    using T = GradInputTiles<decltype(width)::value>;
    ms[1] = median_ms([&] {
      grad_input_kernel<scalar_t, int32_t, T><<<grad_input_grid<T>(s), T::THREADS>>>(y, w, gx, s);
    }, repeats);
  });
  with_channel_tile(s.out_channels, [&](auto width) {
    using T = GradWeightTiles<decltype(width)::value>;
    ms[2] = median_ms([&] {
      grad_weight_kernel<scalar_t, int32_t, T><<<grad_weight_grid<T>(s), T::THREADS>>>(y, x, gw, s);
    }, repeats);
  });
  const char* names[3] = {"forward", "grad_input", "grad_weight"};
  for (int i = 0; i < 3; ++i)
    std::printf("%-20s %-9s %-12s %10.1f us %8.2f TFLOP/s %8.1f GB/s\n", layer.name, dtype,
                names[i], ms[i] * 1e3, flops / ms[i] / 1e9, bytes[i] / ms[i] / 1e6);
  {
    // The input as the extension packs it for the tensor-core kernels: (C_in, D, H, W, N8).
    const int batch_padded = (s.batch + 7) / 8 * 8;
    scalar_t* packed = device_buffer<scalar_t>(input / s.batch * batch_padded);
    auto packed_shape = s;
    packed_shape.input_stride_n = 1;
    packed_shape.input_stride_w = batch_padded;
    packed_shape.input_stride_h = s.in_w * batch_padded;
    packed_shape.input_stride_d = s.in_h * s.in_w * batch_padded;
    packed_shape.input_stride_c = s.in_d * s.in_h * s.in_w * batch_padded;
    int shared_limit = 0;
    CHECK_CUDA(cudaDeviceGetAttribute(&shared_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
    // The launchers' staging (0 columns: no stage fits; the run is then skipped), or `halved`:
    // half as many columns per stage.
    auto staging = [&](auto tiles, auto shared_bytes, bool halved) {
      using T = decltype(tiles);
      const auto plan = lc_cuda::launch::plan_staging(T::STAGE_K, T::MIN_STAGE_K, shared_bytes,
                                                      shared_limit);
      const int stage_k = halved && plan.stage_k > T::MIN_STAGE_K ? plan.stage_k / 2
                                                                   : plan.stage_k;
      return std::pair{StripStaging<int32_t>{stage_k, batch_padded},
                       stage_k > 0 ? shared_bytes(stage_k) : int64_t(0)};
    };
    auto time_kernel = [&](auto kernel, dim3 grid, int threads, int64_t shared_bytes,
                           auto... args) {
      if (shared_bytes > shared_limit) return 0.f;  // too big: the launchers take FFMA
      CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      int(shared_bytes)));
      return median_ms([&] { kernel<<<grid, threads, shared_bytes>>>(args...); }, repeats);
    };
    struct TimedRun {
      const char* name;
      float ms;
      double bytes;
    };
    std::vector<TimedRun> tensor_core_runs;
    if constexpr (sizeof(scalar_t) == 2) {
      // Pairs of patch columns are one 32-bit access where K is even.
      auto forward_tc = [&](auto tiles, bool halved) {
        using T = decltype(tiles);
        const auto kernel = patch % 2 == 0
                                ? forward_tensor_core_kernel<scalar_t, true, true, int32_t, T>
                                : forward_tensor_core_kernel<scalar_t, true, false, int32_t, T>;
        const auto [stages, shared_bytes] = staging(
            tiles,
            [&](int k) { return tensor_core_forward_shared_bytes<T>(packed_shape, k); }, halved);
        return time_kernel(kernel, tensor_core_forward_grid<T>(packed_shape), T::THREADS,
                           shared_bytes, static_cast<const scalar_t*>(packed),
                           static_cast<const scalar_t*>(w), static_cast<const scalar_t*>(b),
                           false, y, packed_shape, stages);
      };
      using TW = TensorCoreGradWeightTiles;
      const auto [weight_stages, weight_shared] = staging(
          TW{}, [&](int k) { return tensor_core_grad_weight_shared_bytes<TW>(packed_shape, k); },
          false);
      const auto grad_weight_tc =
          patch % 2 == 0 ? grad_weight_tensor_core_kernel<scalar_t, true, true, int32_t, TW>
                         : grad_weight_tensor_core_kernel<scalar_t, true, false, int32_t, TW>;
      using TI = TensorCoreGradInputTiles;
      tensor_core_runs = {
          {"forward_tc16", forward_tc(TensorCoreForwardTiles<2>{}, false), bytes[0]},
          {"forward_tc16_half_k", forward_tc(TensorCoreForwardTiles<2>{}, true), bytes[0]},
          {"grad_input_tc",
           time_kernel(grad_input_tensor_core_kernel<scalar_t, true, int32_t, TI>,
                       tensor_core_grad_input_grid<TI>(s), TI::THREADS,
                       tensor_core_grad_input_shared_bytes<TI>(s),
                       static_cast<const scalar_t*>(y), static_cast<const scalar_t*>(w), gx, s),
           bytes[1]},
          {"forward_tc32", forward_tc(TensorCoreForwardTiles<4>{}, false), bytes[0]},
          {"grad_weight_tc",
           time_kernel(grad_weight_tc, tensor_core_grad_weight_grid<TW>(packed_shape),
                       TW::THREADS, weight_shared, static_cast<const scalar_t*>(y),
                       static_cast<const scalar_t*>(packed), gw, static_cast<float*>(nullptr),
                       packed_shape, weight_stages),
           bytes[2]},
      };
    } else {
      using T = TensorCoreTF32ForwardTiles<2>;
      using TW = TensorCoreTF32GradWeightTiles;
      const auto [forward_stages, forward_shared] = staging(
          T{}, [&](int k) { return tensor_core_forward_shared_bytes<T>(packed_shape, k); }, false);
      const auto [weight_stages, weight_shared] = staging(
          TW{}, [&](int k) { return tensor_core_grad_weight_shared_bytes<TW>(packed_shape, k); },
          false);
      tensor_core_runs = {
          {"forward_tf32",
           time_kernel(forward_tf32_kernel<int32_t, T>, tensor_core_forward_grid<T>(packed_shape),
                       T::THREADS, forward_shared, static_cast<const float*>(packed),
                       static_cast<const float*>(w), static_cast<const float*>(b), false, y,
                       packed_shape, forward_stages),
           bytes[0]},
          {"grad_input_tf32",
           time_kernel(grad_input_tensor_core_kernel<float, false, int32_t,
                                                     TensorCoreTF32GradInputTiles>,
                       tensor_core_grad_input_grid<TensorCoreTF32GradInputTiles>(s),
                       TensorCoreTF32GradInputTiles::THREADS,
                       tensor_core_grad_input_shared_bytes<TensorCoreTF32GradInputTiles>(s),
                       static_cast<const float*>(y), static_cast<const float*>(w), gx, s),
           bytes[1]},
          {"grad_weight_tf32",
           time_kernel(grad_weight_tensor_core_kernel<float, false, false, int32_t, TW>,
                       tensor_core_grad_weight_grid<TW>(packed_shape), TW::THREADS, weight_shared,
                       static_cast<const float*>(y), static_cast<const float*>(packed), gw,
                       static_cast<float*>(nullptr), packed_shape, weight_stages),
           bytes[2]},
      };
    }
    for (const auto& run : tensor_core_runs) {
      if (run.ms == 0) {
        std::printf("%-20s %-9s %-12s does not fit in shared memory\n", layer.name, dtype,
                    run.name);
        continue;
      }
      std::printf("%-20s %-9s %-12s %10.1f us %8.2f TFLOP/s %8.1f GB/s\n", layer.name, dtype,
                  run.name, run.ms * 1e3, flops / run.ms / 1e9, run.bytes / run.ms / 1e6);
    }
    CHECK_CUDA(cudaFree(packed));
  }
  for (scalar_t* pointer : {x, w, b, y, gx, gw}) CHECK_CUDA(cudaFree(pointer));
}

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 20;
  for (const Layer& layer : kLayers) run<float>(layer, "float32", repeats);
  for (const Layer& layer : kLayers) run<__nv_bfloat16>(layer, "bfloat16", repeats);
  return 0;
}
