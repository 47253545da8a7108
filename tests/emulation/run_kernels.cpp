// Runs lc_cuda's CUDA kernels on the CPU (cuda_on_cpu.h) for a set of geometries of the operator
// family (1 to 3 spatial dimensions, channel groups, weights per location or shared in blocks or
// periodically) and compares them with direct float64 sums written here independently
// (grad_input as a scatter, not a gather; grad_weight summed location by location): the FFMA
// kernels at every tile width in float, double, c10::Half and c10::BFloat16 with 32- and 64-bit
// indices; the tensor-core forward, grad_input and grad_weight in bfloat16, float16 and TF32 on
// the input packed as the launchers pack it, with each launch variant (output-channel tiles,
// paired weight loads and gradient stores, patch columns per stage). Prints one line per mismatch
// and a final count; exits 1 on any mismatch.
//
//   run_kernels immediate|late [CASE...]
// immediate or late: when cp.async copies land (CopyCompletion in cuda_on_cpu.h); CASE: indices
// into the case list below, all of them if none are given.
// First every header that the emulation and the kernel headers include, so that the anonymous
// namespace below holds only their own code. (A header first included inside it would break.)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

// The emulation and the kernels with internal linkage: GCC's AddressSanitizer puts no redzones
// around the static variables of functions with vague linkage, which every template
// instantiation has, so the kernels' __shared__ arrays would have none.
namespace {
#include "cuda_on_cpu.h"
#include "cuda/ffma_kernels.cuh"
#include "cuda/forward_tensor_core.cuh"
#include "cuda/grad_input_tensor_core.cuh"
#include "cuda/grad_weight_tensor_core.cuh"
}  // namespace

#ifdef WITH_C10_HALF
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#endif

using namespace lc_cuda::kernels;

enum Bias { no_bias, shared_bias, region_bias };
enum Share { no_sharing, block, tile };

// Sizes per dimension are (depth, height, width); a 2D case has depth 1, a 1D case height 1.
struct Case {
  int n, c_in;
  std::array<int, 3> size;
  int c_out;
  std::array<int, 3> kernel, stride, pad_before, pad_after, dilation;
  int groups;
  Share share_mode;
  std::array<int, 3> share;  // block size or period per dimension (no_sharing: unused)
  Bias bias;
  bool channels_last;  // input and grad_output stored (N, D, H, W, C)

  int out(int d) const {
    return (size[d] + pad_before[d] + pad_after[d] - dilation[d] * (kernel[d] - 1) - 1) /
               stride[d] +
           1;
  }
  long locations() const { return long(out(0)) * out(1) * out(2); }
  int regions(int d) const {
    if (share_mode == no_sharing) return out(d);
    return share_mode == tile ? share[d] : (out(d) + share[d] - 1) / share[d];
  }
  long region_count() const { return long(regions(0)) * regions(1) * regions(2); }
  // The region of output position i along dimension d, by the definition.
  int region(int d, int i) const {
    if (share_mode == no_sharing) return i;
    return share_mode == tile ? i % share[d] : i / share[d];
  }
  int group_in() const { return c_in / groups; }
  int group_out() const { return c_out / groups; }
  long patch_size() const { return long(group_in()) * kernel[0] * kernel[1] * kernel[2]; }
};

// The planar size helpers of a case's tensors.
long input_plane(const Case& c) { return long(c.size[0]) * c.size[1] * c.size[2]; }

struct Data {
  // input and grad_output are stored in their physical layout, channels-last where the case
  // says so, and read through their strides
  std::vector<double> input, weight, bias, grad_output;
  std::array<long, 5> input_strides, grad_strides;  // n, c, d, h, w
};

std::array<long, 5> strides_of(int channels, std::array<long, 3> size, bool channels_last) {
  const long plane = size[0] * size[1] * size[2];
  if (channels_last)
    return {plane * channels, 1, size[1] * size[2] * channels, size[2] * channels, channels};
  return {channels * plane, plane, size[1] * size[2], size[2], 1};
}

Data make_data(const Case& c, unsigned seed) {
  std::mt19937 random(seed);
  std::normal_distribution<double> normal;
  auto fill = [&](size_t count) {
    std::vector<double> v(count);
    for (auto& x : v) x = normal(random);
    return v;
  };
  Data d;
  d.input = fill(size_t(c.n) * c.c_in * input_plane(c));
  d.weight = fill(size_t(c.region_count()) * c.c_out * c.patch_size());
  d.bias = fill(c.bias == no_bias       ? 0
                : c.bias == shared_bias ? c.c_out
                                        : size_t(c.c_out) * c.region_count());
  d.grad_output = fill(size_t(c.n) * c.c_out * c.locations());
  d.input_strides = strides_of(c.c_in, {c.size[0], c.size[1], c.size[2]}, c.channels_last);
  d.grad_strides = strides_of(c.c_out, {c.out(0), c.out(1), c.out(2)}, c.channels_last);
  return d;
}

double x_at(const Case& c, const Data& d, long n, long ch, long z, long y, long x) {
  if (z < 0 || z >= c.size[0] || y < 0 || y >= c.size[1] || x < 0 || x >= c.size[2]) return 0;
  const auto& s = d.input_strides;
  return d.input[n * s[0] + ch * s[1] + z * s[2] + y * s[3] + x * s[4]];
}

double gy_at(const Data& d, long n, long o, long z, long y, long x) {
  const auto& s = d.grad_strides;
  return d.grad_output[n * s[0] + o * s[1] + z * s[2] + y * s[3] + x * s[4]];
}

// weight[region, o, c within the group, a, p, q], contiguous.
long w_index(const Case& c, long region, long o, long ch, long a, long p, long q) {
  return ((((region * c.c_out + o) * c.group_in() + ch) * c.kernel[0] + a) * c.kernel[1] + p) *
             c.kernel[2] +
         q;
}

// The three reference results, by direct sums in float64: every output location's sum over its
// group's channels and its taps, with its region's filters; grad_input scattered from each
// (location, tap); grad_weight summed into the region, location by location.
void reference(const Case& c, const Data& d, std::vector<double>& out, std::vector<double>& gin,
               std::vector<double>& gw) {
  const long L = c.locations();
  out.assign(size_t(c.n) * c.c_out * L, 0);
  gin.assign(size_t(c.n) * c.c_in * input_plane(c), 0);
  gw.assign(d.weight.size(), 0);
  for (long n = 0; n < c.n; ++n)
    for (long o = 0; o < c.c_out; ++o)
      for (long oz = 0; oz < c.out(0); ++oz)
        for (long oy = 0; oy < c.out(1); ++oy)
          for (long ox = 0; ox < c.out(2); ++ox) {
            const long l = (oz * c.out(1) + oy) * c.out(2) + ox;
            const long r =
                (long(c.region(0, oz)) * c.regions(1) + c.region(1, oy)) * c.regions(2) +
                c.region(2, ox);
            double sum = c.bias == no_bias       ? 0
                         : c.bias == shared_bias ? d.bias[o]
                                                 : d.bias[o * c.region_count() + r];
            const double g = gy_at(d, n, o, oz, oy, ox);
            const long first_channel = (o / c.group_out()) * c.group_in();
            for (long ch = 0; ch < c.group_in(); ++ch)
              for (long a = 0; a < c.kernel[0]; ++a)
                for (long p = 0; p < c.kernel[1]; ++p)
                  for (long q = 0; q < c.kernel[2]; ++q) {
                    const long z = oz * c.stride[0] - c.pad_before[0] + a * c.dilation[0];
                    const long y = oy * c.stride[1] - c.pad_before[1] + p * c.dilation[1];
                    const long x = ox * c.stride[2] - c.pad_before[2] + q * c.dilation[2];
                    const long wi = w_index(c, r, o, ch, a, p, q);
                    const double value = x_at(c, d, n, first_channel + ch, z, y, x);
                    sum += d.weight[wi] * value;
                    gw[wi] += g * value;
                    if (z >= 0 && z < c.size[0] && y >= 0 && y < c.size[1] && x >= 0 &&
                        x < c.size[2])
                      gin[(((n * c.c_in + first_channel + ch) * c.size[0] + z) * c.size[1] + y) *
                              c.size[2] +
                          x] += g * d.weight[wi];
                  }
            out[(n * c.c_out + o) * L + l] = sum;
          }
}

template <typename index_t>
ConvShape<index_t> shape_of(const Case& c, const Data& d) {
  ConvShape<index_t> s{};
  s.batch = c.n, s.in_channels = c.c_in, s.out_channels = c.c_out;
  s.in_d = c.size[0], s.in_h = c.size[1], s.in_w = c.size[2];
  s.out_d = c.out(0), s.out_h = c.out(1), s.out_w = c.out(2);
  s.kernel_d = c.kernel[0], s.kernel_h = c.kernel[1], s.kernel_w = c.kernel[2];
  s.stride_d = c.stride[0], s.stride_h = c.stride[1], s.stride_w = c.stride[2];
  s.pad_d = c.pad_before[0], s.pad_h = c.pad_before[1], s.pad_w = c.pad_before[2];
  s.dilation_d = c.dilation[0], s.dilation_h = c.dilation[1], s.dilation_w = c.dilation[2];
  s.groups = c.groups, s.group_in_channels = c.group_in(), s.group_out_channels = c.group_out();
  // Without sharing: blocks of one, as the launchers pass it.
  s.share_tile = c.share_mode == tile;
  s.share_d = c.share_mode == no_sharing ? 1 : c.share[0];
  s.share_h = c.share_mode == no_sharing ? 1 : c.share[1];
  s.share_w = c.share_mode == no_sharing ? 1 : c.share[2];
  s.regions_d = c.regions(0), s.regions_h = c.regions(1), s.regions_w = c.regions(2);
  s.input_stride_n = index_t(d.input_strides[0]), s.input_stride_c = index_t(d.input_strides[1]);
  s.input_stride_d = index_t(d.input_strides[2]), s.input_stride_h = index_t(d.input_strides[3]);
  s.input_stride_w = index_t(d.input_strides[4]);
  s.grad_stride_n = index_t(d.grad_strides[0]), s.grad_stride_c = index_t(d.grad_strides[1]);
  s.grad_stride_d = index_t(d.grad_strides[2]), s.grad_stride_h = index_t(d.grad_strides[3]);
  s.grad_stride_w = index_t(d.grad_strides[4]);
  return s;
}

int mismatches = 0;

void compare(const char* what, int case_index, const std::vector<double>& got,
             const std::vector<double>& want, double tolerance) {
  double scale = 1e-30, error = 0;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    scale = std::max(scale, std::abs(want[i]));
    // NaN (shared memory read before written, an output never written) counts as infinite
    const double difference = std::abs(got[i] - want[i]);
    error = std::isnan(difference) ? INFINITY : std::max(error, difference);
  }
  if (got.size() != want.size() || !(error / scale <= tolerance)) {
    ++mismatches;
    std::printf("MISMATCH case %d %s: relative error %.3g (sizes %zu, %zu)\n", case_index, what,
                error / scale, got.size(), want.size());
  }
}

// Conversions between the test's float64 data and a kernel's element type (through float, which
// c10::Half and c10::BFloat16 convert from and to; exact for float and double values here).
template <typename scalar_t>
std::vector<scalar_t> narrow(const std::vector<double>& values) {
  std::vector<scalar_t> narrowed;
  for (double x : values) narrowed.push_back(static_cast<scalar_t>(x));
  return narrowed;
}

template <typename scalar_t>
std::vector<double> widen(const std::vector<scalar_t>& values) {
  std::vector<double> widened;
  for (const auto& x : values) widened.push_back(static_cast<double>(x));
  return widened;
}

template <typename scalar_t, typename index_t, int WIDTH>
void run_case(const Case& c, int case_index, const Data& d) {
  const auto input = narrow<scalar_t>(d.input), weight = narrow<scalar_t>(d.weight);
  const auto bias = narrow<scalar_t>(d.bias), grad_output = narrow<scalar_t>(d.grad_output);
  // The reference sums the values the kernels see, rounded to scalar_t: what differs is the
  // kernels' accumulation order and precision, and the rounding of their outputs.
  Data rounded = d;
  rounded.input = widen(input), rounded.weight = widen(weight), rounded.bias = widen(bias);
  rounded.grad_output = widen(grad_output);
  std::vector<double> out, gin, gw;
  reference(c, rounded, out, gin, gw);
  const auto s = shape_of<index_t>(c, d);
  const double epsilon = static_cast<double>(std::numeric_limits<scalar_t>::epsilon());
  const double tolerance = sizeof(scalar_t) == 8 ? 1e-12 : std::max(1e-5, epsilon);

  // Every tile width runs for every case, not only the one the launchers would pick.
  using TF = ForwardTiles<WIDTH>;
  std::vector<scalar_t> got_out(out.size());
  launch_on_cpu(forward_grid<TF>(s), TF::THREADS, 0, forward_kernel<scalar_t, index_t, TF>,
                input.data(), weight.data(), c.bias ? bias.data() : nullptr,
                c.bias == shared_bias, got_out.data(), s);
  compare("forward", case_index, widen(got_out), out, tolerance);

  // grad_input writes a contiguous (N, C_in, D, H, W) tensor whatever the input's layout.
  using TI = GradInputTiles<WIDTH>;
  std::vector<scalar_t> got_gin(gin.size());
  launch_on_cpu(grad_input_grid<TI>(s), TI::THREADS, 0, grad_input_kernel<scalar_t, index_t, TI>,
                grad_output.data(), weight.data(), got_gin.data(), s);
  compare("grad_input", case_index, widen(got_gin), gin, tolerance);

  using TW = GradWeightTiles<WIDTH>;
  std::vector<scalar_t> got_gw(gw.size());
  launch_on_cpu(grad_weight_grid<TW>(s), TW::THREADS, 0, grad_weight_kernel<scalar_t, index_t, TW>,
                grad_output.data(), input.data(), got_gw.data(), s);
  compare("grad_weight", case_index, widen(got_gw), gw, tolerance);
}

#ifdef WITH_C10_HALF
// TF32 rounding written independently of the emulated cvt.rna.tf32.f32: to nearest, ties away
// from zero, at 11 significant bits.
double round_to_tf32(double value) {
  if (value == 0 || !std::isfinite(value)) return value;
  int exponent;
  const double mantissa = std::frexp(value, &exponent);  // 0.5 <= |mantissa| < 1
  return std::ldexp(std::round(std::ldexp(mantissa, 11)), exponent - 11);
}

long padded_batch(const Case& c) { return (c.n + 7) / 8 * 8; }

// The input as the launchers pack it for the tensor-core kernels: (C_in, D, H, W, N8), samples
// innermost, the batch padded with zeros to a multiple of 8. rounded.input gets the values the
// kernel multiplies: rounded to scalar_t, then by `round` where given (TF32).
template <typename scalar_t>
std::vector<scalar_t> pack_input(const Case& c, const Data& d, Data& rounded,
                                 double (*round)(double) = nullptr) {
  const long batch_padded = padded_batch(c);
  std::vector<scalar_t> packed(size_t(c.c_in) * input_plane(c) * batch_padded, scalar_t(0.f));
  const auto& s = d.input_strides;
  for (long n = 0; n < c.n; ++n)
    for (long ch = 0; ch < c.c_in; ++ch)
      for (long z = 0; z < c.size[0]; ++z)
        for (long y = 0; y < c.size[1]; ++y)
          for (long x = 0; x < c.size[2]; ++x) {
            const scalar_t value(static_cast<float>(x_at(c, d, n, ch, z, y, x)));
            packed[(((ch * c.size[0] + z) * c.size[1] + y) * c.size[2] + x) * batch_padded + n] =
                value;
            const double seen = static_cast<double>(static_cast<float>(value));
            rounded.input[n * s[0] + ch * s[1] + z * s[2] + y * s[3] + x * s[4]] =
                round ? round(seen) : seen;
          }
  return packed;
}

// The shape with the packed input's strides (n: 1).
template <typename index_t>
ConvShape<index_t> packed_shape_of(const Case& c, const Data& d) {
  const long batch_padded = padded_batch(c);
  auto s = shape_of<index_t>(c, d);
  s.input_stride_n = 1;
  s.input_stride_w = index_t(batch_padded);
  s.input_stride_h = index_t(c.size[2] * batch_padded);
  s.input_stride_d = index_t(long(c.size[1]) * c.size[2] * batch_padded);
  s.input_stride_c = index_t(input_plane(c) * batch_padded);
  return s;
}

template <typename scalar_t>
double half_tolerance() {
  return std::max(1e-5, double(std::numeric_limits<scalar_t>::epsilon()));
}

// The variant's name for the mismatch lines: the kernel and its patch columns per stage.
std::string named(const char* kernel, int stage_k) {
  return std::string(kernel) + " (" + std::to_string(stage_k) + " columns per stage)";
}

// The tensor-core forward, STAGE_K patch columns per pipeline stage.
template <typename scalar_t, bool BFLOAT16, int OUT_TILES, bool EVEN_K>
void run_tensor_core_forward(const Case& c, int case_index, const Data& d, int stage_k) {
  using T = TensorCoreForwardTiles<OUT_TILES>;
  Data rounded = d;
  const auto packed = pack_input<scalar_t>(c, d, rounded);
  const auto weight = narrow<scalar_t>(d.weight), bias = narrow<scalar_t>(d.bias);
  rounded.weight = widen(weight), rounded.bias = widen(bias);
  std::vector<double> out, gin, gw;
  reference(c, rounded, out, gin, gw);
  const auto s = packed_shape_of<int32_t>(c, d);
  const StripStaging<int32_t> staging{stage_k, int32_t(padded_batch(c))};
  std::vector<scalar_t> got(out.size(), scalar_t(NAN));
  launch_on_cpu(tensor_core_forward_grid<T>(s), T::THREADS,
                size_t(tensor_core_forward_shared_bytes<T>(s, stage_k)),
                forward_tensor_core_kernel<scalar_t, BFLOAT16, EVEN_K, int32_t, T>,
                packed.data(), weight.data(), c.bias ? bias.data() : nullptr,
                c.bias == shared_bias, got.data(), s, staging);
  compare(named(BFLOAT16 ? "tensor-core forward bf16" : "tensor-core forward f16", stage_k)
              .c_str(),
          case_index, widen(got), out, half_tolerance<scalar_t>());
}

// The TF32 forward, on float32 data: the reference sums the TF32-rounded input and weight (and
// the unrounded bias) in float64, so what differs is the float accumulation.
template <typename index_t>
void run_tf32_forward(const Case& c, int case_index, const Data& d, int stage_k) {
  using T = TensorCoreTF32ForwardTiles<2>;
  Data rounded = d;
  const auto packed = pack_input<float>(c, d, rounded, round_to_tf32);
  const auto weight = narrow<float>(d.weight), bias = narrow<float>(d.bias);
  rounded.weight = widen(weight), rounded.bias = widen(bias);
  for (auto& w : rounded.weight) w = round_to_tf32(w);
  std::vector<double> out, gin, gw;
  reference(c, rounded, out, gin, gw);
  const auto s = packed_shape_of<index_t>(c, d);
  const StripStaging<index_t> staging{index_t(stage_k), index_t(padded_batch(c))};
  std::vector<float> got(out.size(), NAN);
  launch_on_cpu(tensor_core_forward_grid<T>(s), T::THREADS,
                size_t(tensor_core_forward_shared_bytes<T>(s, index_t(stage_k))),
                forward_tf32_kernel<index_t, T>, packed.data(), weight.data(),
                c.bias ? bias.data() : nullptr, c.bias == shared_bias, got.data(), s, staging);
  compare(named("tf32 forward", stage_k).c_str(), case_index, widen(got), out, 1e-5);
}

// The tensor-core grad_input, on grad_output in its physical layout; scalar_t float runs it on
// TF32 (the reference then sums TF32-rounded operands).
template <typename scalar_t, bool BFLOAT16, typename index_t>
void run_tensor_core_grad_input(const Case& c, int case_index, const Data& d) {
  constexpr bool kTF32 = std::is_same_v<scalar_t, float>;
  using T = std::conditional_t<kTF32, TensorCoreTF32GradInputTiles, TensorCoreGradInputTiles>;
  const auto weight = narrow<scalar_t>(d.weight), grad_output = narrow<scalar_t>(d.grad_output);
  Data rounded = d;
  rounded.weight = widen(weight), rounded.grad_output = widen(grad_output);
  if (kTF32) {
    for (auto& w : rounded.weight) w = round_to_tf32(w);
    for (auto& g : rounded.grad_output) g = round_to_tf32(g);
  }
  std::vector<double> out, gin, gw;
  reference(c, rounded, out, gin, gw);
  const auto s = shape_of<index_t>(c, d);
  std::vector<scalar_t> got(gin.size(), scalar_t(NAN));
  launch_on_cpu(tensor_core_grad_input_grid<T>(s), T::THREADS,
                size_t(tensor_core_grad_input_shared_bytes<T>(s)),
                grad_input_tensor_core_kernel<scalar_t, BFLOAT16, index_t, T>,
                grad_output.data(), weight.data(), got.data(), s);
  compare(kTF32      ? "tf32 grad_input"
          : BFLOAT16 ? "tensor-core grad_input bf16"
                     : "tensor-core grad_input f16",
          case_index, widen(got), gin, kTF32 ? 1e-5 : half_tolerance<scalar_t>());
}

// The tensor-core grad_weight, on grad_output in its physical layout and the packed input;
// scalar_t float runs it on TF32 (the reference then sums TF32-rounded operands).
template <typename scalar_t, bool BFLOAT16, bool EVEN_K, typename index_t>
void run_tensor_core_grad_weight(const Case& c, int case_index, const Data& d, int stage_k) {
  constexpr bool kTF32 = std::is_same_v<scalar_t, float>;
  using T = std::conditional_t<kTF32, TensorCoreTF32GradWeightTiles, TensorCoreGradWeightTiles>;
  Data rounded = d;
  const auto packed = pack_input<scalar_t>(c, d, rounded, kTF32 ? round_to_tf32 : nullptr);
  const auto grad_output = narrow<scalar_t>(d.grad_output);
  rounded.grad_output = widen(grad_output);
  // The per-location bias gradient it computes on the side: sums of grad_output over the batch
  // (in the staged precision, not TF32).
  const long locations = c.locations();
  std::vector<double> bias_sums(size_t(c.c_out) * locations, 0);
  for (long n = 0; n < c.n; ++n)
    for (long o = 0; o < c.c_out; ++o)
      for (long l = 0; l < locations; ++l)
        bias_sums[o * locations + l] +=
            gy_at(rounded, n, o, l / (long(c.out(1)) * c.out(2)), (l / c.out(2)) % c.out(1),
                  l % c.out(2));
  if (kTF32)
    for (auto& g : rounded.grad_output) g = round_to_tf32(g);
  std::vector<double> out, gin, gw;
  reference(c, rounded, out, gin, gw);
  const auto s = packed_shape_of<index_t>(c, d);
  const StripStaging<index_t> staging{index_t(stage_k), index_t(padded_batch(c))};
  std::vector<scalar_t> got(gw.size(), scalar_t(NAN));
  std::vector<float> got_sums(bias_sums.size(), NAN);
  launch_on_cpu(tensor_core_grad_weight_grid<T>(s), T::THREADS,
                size_t(tensor_core_grad_weight_shared_bytes<T>(s, index_t(stage_k))),
                grad_weight_tensor_core_kernel<scalar_t, BFLOAT16, EVEN_K, index_t, T>,
                grad_output.data(), packed.data(), got.data(), got_sums.data(), s, staging);
  compare(named(kTF32      ? "tf32 grad_weight"
                : BFLOAT16 ? "tensor-core grad_weight bf16"
                           : "tensor-core grad_weight f16",
                stage_k)
              .c_str(),
          case_index, widen(got), gw, kTF32 ? 1e-5 : half_tolerance<scalar_t>());
  compare("tensor-core grad_weight's bias sums", case_index, widen(got_sums), bias_sums, 1e-5);
}

// Each output-tile width, both weight-load paths (pairs of 16-bit loads, or one 32-bit load
// where K is even), and stages of the most and of fewer patch columns (16-bit: 64, 32, 16; TF32
// down to 8), spread over the dtypes to keep the run short.
void run_tensor_core_variants(const Case& c, int case_index, const Data& d) {
  const bool even_k = c.patch_size() % 2 == 0;
  run_tensor_core_forward<c10::BFloat16, true, 2, false>(c, case_index, d, 64);
  if (even_k) {
    run_tensor_core_forward<c10::BFloat16, true, 4, true>(c, case_index, d, 32);
    run_tensor_core_forward<c10::Half, false, 2, true>(c, case_index, d, 16);
  } else {
    run_tensor_core_forward<c10::Half, false, 4, false>(c, case_index, d, 16);
  }
  if (even_k)
    run_tensor_core_grad_weight<c10::BFloat16, true, true, int32_t>(c, case_index, d, 64);
  run_tensor_core_grad_weight<c10::Half, false, false, int64_t>(c, case_index, d, 16);
  run_tf32_forward<int32_t>(c, case_index, d, 8);
  run_tensor_core_grad_weight<float, false, false, int64_t>(c, case_index, d, 32);
  run_tensor_core_grad_input<float, false, int32_t>(c, case_index, d);
  run_tensor_core_grad_input<c10::BFloat16, true, int32_t>(c, case_index, d);
  run_tensor_core_grad_input<c10::Half, false, int64_t>(c, case_index, d);
}
#endif

// Shorthands for the case list.
Case plain(int n, int c_in, int h, int w, int c_out, int kh, int kw, int sh, int sw, int ph,
           int pw, int dh, int dw, Bias bias, bool channels_last) {
  return {n,      c_in,      {1, h, w},   c_out, {1, kh, kw}, {1, sh, sw}, {0, ph, pw},
          {0, ph, pw}, {1, dh, dw}, 1, no_sharing, {1, 1, 1}, bias, channels_last};
}

constexpr size_t kFirstFamilyCase = 10;
const std::vector<Case> kCases = {
    // 2D, one group, a filter bank per location:
    // n c_in h w c_out kh kw sh sw ph pw dh dw bias channels_last (input and grad_output)
    plain(3, 2, 7, 6, 3, 3, 2, 1, 2, 1, 0, 1, 1, shared_bias, false),
    plain(5, 3, 9, 8, 4, 2, 3, 2, 1, 0, 1, 2, 1, region_bias, true),
    plain(2, 20, 5, 5, 20, 3, 3, 1, 1, 1, 1, 1, 1, no_bias, false),
    plain(67, 1, 4, 3, 2, 1, 1, 1, 1, 0, 0, 1, 1, region_bias, false),  // beyond a 64-sample tile
    plain(1, 2, 6, 7, 1, 3, 3, 3, 2, 2, 2, 1, 3, shared_bias, true),  // stride > kernel: gaps
    plain(2, 3, 5, 5, 70, 2, 2, 1, 1, 0, 0, 1, 1, region_bias, false),  // C_out past 64
    plain(2, 70, 3, 3, 2, 1, 2, 1, 1, 0, 0, 1, 1, shared_bias, false),  // patch past 64
    plain(2, 4, 5, 21, 18, 3, 3, 1, 1, 1, 1, 1, 2, region_bias, false),  // 3 groups of 8 columns
    plain(9, 16, 9, 9, 16, 5, 5, 1, 1, 0, 0, 1, 1, region_bias, true),  // DeepFace-like, 7 stages
    plain(70, 3, 6, 12, 5, 3, 3, 1, 1, 1, 1, 1, 1, no_bias, false),  // 2 batch tiles
    // The family from kFirstFamilyCase on (n, c_in, (d, h, w), c_out, kernel, stride, pad
    // before, pad after, dilation, groups, sharing, share, bias, channels_last):
    // 10: 3D with stride, padding on one side and dilation along the depth; two groups; blocks
    // of 2 x 3 locations, the last partial along the height and the width (two blocks of 3
    // columns per CTA, the warps of each summed)
    {2, 4, {5, 3, 4}, 4, {2, 2, 3}, {2, 1, 1}, {1, 0, 1}, {0, 1, 1}, {2, 1, 1}, 2, block,
     {1, 2, 3}, region_bias, true},
    // 11: 1D depthwise (groups = C_in, two outputs per input channel), weights repeating every
    // 11 positions (more than a CTA's 8 region columns), causal padding
    {2, 3, {1, 1, 20}, 6, {1, 1, 4}, {1, 1, 1}, {0, 0, 3}, {0, 0, 0}, {1, 1, 2}, 3, tile,
     {1, 1, 11}, region_bias, false},
    // 12: 2D blocks of 10 columns (wider than a CTA: one region, two column steps, all warps
    // summed) and 3 rows, the last of each partial; groups with 20 output and 18 input channels
    // each (two channel tiles per group in every kernel)
    {2, 36, {1, 4, 12}, 40, {1, 2, 2}, {1, 1, 1}, {0, 1, 0}, {0, 0, 1}, {1, 1, 1}, 2, block,
     {1, 3, 10}, shared_bias, false},
    // 13: 3D tiled along all three dimensions (periods 2, 3, 2), one group, a 1x1x1 kernel with
    // stride 2 in depth; 3D channels-last
    {4, 5, {6, 5, 6}, 7, {1, 1, 1}, {2, 1, 1}, {0, 0, 0}, {0, 0, 0}, {1, 1, 1}, 1, tile,
     {2, 3, 2}, region_bias, true},
    // 14: 3D volume, no sharing, depthwise (two outputs per input channel) with a 3x3x3 kernel
    // and padding 1 on every side
    {2, 2, {3, 4, 5}, 4, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 2, no_sharing,
     {1, 1, 1}, region_bias, false},
    // 15: blocks of exactly 8 columns and of 4 depths; stride 2 and dilation 2 along the width
    {3, 2, {5, 2, 40}, 3, {2, 1, 3}, {1, 1, 2}, {0, 0, 2}, {1, 0, 2}, {1, 1, 2}, 1, block,
     {4, 1, 8}, shared_bias, false},
    // 16: a whole-output block (an ordinary convolution) with a batch beyond one 64-sample tile
    {66, 2, {1, 5, 6}, 3, {1, 3, 3}, {1, 1, 1}, {0, 1, 1}, {0, 1, 1}, {1, 1, 1}, 1, block,
     {1, 5, 6}, region_bias, false},
};

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode != "immediate" && mode != "late") {
    std::fprintf(stderr, "usage: %s immediate|late [CASE...]\n", argv[0]);
    return 2;
  }
  copy_completion = mode == "late" ? CopyCompletion::late : CopyCompletion::immediate;
  std::vector<size_t> chosen;
  for (int a = 2; a < argc; ++a) chosen.push_back(std::stoul(argv[a]));
  if (chosen.empty())
    for (size_t i = 0; i < kCases.size(); ++i) chosen.push_back(i);
  for (size_t i : chosen) {
    if (i >= kCases.size()) {
      std::fprintf(stderr, "case %zu: there are %zu cases\n", i, kCases.size());
      return 2;
    }
    const Case& c = kCases[i];
    const Data d = make_data(c, unsigned(i));
    // The FFMA kernels in every dtype, with both index types and at every tile width: all
    // combinations on the plain 2D cases; on the family's cases each dtype once, at the widths
    // that split a group's channels (16 and 32), so that the emulation's time stays in bounds.
    const bool family = i >= kFirstFamilyCase;
    run_case<float, int32_t, 16>(c, int(i), d);
    run_case<double, int64_t, 32>(c, int(i), d);
    if (!family) {
      run_case<float, int64_t, 64>(c, int(i), d);
      run_case<double, int32_t, 64>(c, int(i), d);
    }
#ifdef WITH_C10_HALF
    if (family) {
      run_case<c10::Half, int64_t, 16>(c, int(i), d);
      run_case<c10::BFloat16, int32_t, 32>(c, int(i), d);
    } else {
      run_case<c10::Half, int32_t, 32>(c, int(i), d);
      run_case<c10::BFloat16, int64_t, 16>(c, int(i), d);
    }
    run_tensor_core_variants(c, int(i), d);
#endif
  }
  std::printf("%zu cases, cp.async %s: %d mismatches\n", chosen.size(), mode.c_str(),
              mismatches);
  return mismatches == 0 ? 0 : 1;
}
