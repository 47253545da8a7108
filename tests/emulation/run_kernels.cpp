// Runs lc_cuda's CUDA kernels on the CPU (cuda_on_cpu.h) for a set of geometries and compares
// them with direct float64 sums written here independently (grad_input as a scatter, not a
// gather): the FFMA kernels at every tile width in float, double, c10::Half and c10::BFloat16
// with 32- and 64-bit indices; the tensor-core forward and grad_weight in bfloat16 and float16
// on the input packed as the launchers pack it. Prints one line per mismatch and a final count;
// exits 1 on any mismatch.
//
//   run_kernels immediate|late [CASE...]
// immediate or late: when cp.async copies land (CopyCompletion in cuda_on_cpu.h); CASE: indices
// into the case list below, all of them if none are given.
// First every header that the emulation and the kernel headers include, so that the anonymous
// namespace below holds only their own code. (A header first included inside it would break.)
#include <sanitizer/asan_interface.h>

#include <algorithm>
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
#include "cuda/forward_tensor_core.cuh"
#include "cuda/grad_input_tensor_core.cuh"
#include "cuda/grad_weight_tensor_core.cuh"
#include "cuda/local_conv2d_kernels.cuh"
}  // namespace

#ifdef WITH_C10_HALF
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#endif

using namespace lc_cuda::kernels;

struct Case {
  int n, c_in, h, w, c_out, kh, kw, sh, sw, ph, pw, dh, dw;
  int bias;  // 0 none, 1 shared, 2 per location
  bool channels_last;
  int out_h() const { return (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1; }
  int out_w() const { return (w + 2 * pw - dw * (kw - 1) - 1) / sw + 1; }
};

struct Data {
  // input and grad_output are stored in their physical layout, channels-last where the case
  // says so, and read through their strides
  std::vector<double> input, weight, bias, grad_output;
  long sn, sc, sh, sw;      // input strides
  long gsn, gsc, gsh, gsw;  // grad_output strides
};

Data make_data(const Case& c, unsigned seed) {
  std::mt19937 random(seed);
  std::normal_distribution<double> normal;
  auto fill = [&](size_t count) {
    std::vector<double> v(count);
    for (auto& x : v) x = normal(random);
    return v;
  };
  Data d;
  const long L = long(c.out_h()) * c.out_w();
  d.input = fill(size_t(c.n) * c.c_in * c.h * c.w);
  d.weight = fill(size_t(L) * c.c_out * c.c_in * c.kh * c.kw);
  d.bias = fill(c.bias == 0 ? 0 : c.bias == 1 ? c.c_out : size_t(c.c_out) * L);
  d.grad_output = fill(size_t(c.n) * c.c_out * L);
  const long OW = c.out_w();
  if (c.channels_last) {
    d.sn = long(c.h) * c.w * c.c_in, d.sc = 1, d.sh = long(c.w) * c.c_in, d.sw = c.c_in;
    d.gsn = L * c.c_out, d.gsc = 1, d.gsh = OW * c.c_out, d.gsw = c.c_out;
  } else {
    d.sn = long(c.c_in) * c.h * c.w, d.sc = long(c.h) * c.w, d.sh = c.w, d.sw = 1;
    d.gsn = L * c.c_out, d.gsc = L, d.gsh = OW, d.gsw = 1;
  }
  return d;
}

double x_at(const Case& c, const Data& d, long n, long ch, long y, long x) {
  if (y < 0 || y >= c.h || x < 0 || x >= c.w) return 0;
  return d.input[n * d.sn + ch * d.sc + y * d.sh + x * d.sw];
}

long w_index(const Case& c, long l, long o, long ch, long p, long q) {
  return (((l * c.c_out + o) * c.c_in + ch) * c.kh + p) * c.kw + q;
}

// The three reference results, by direct sums in float64.
void reference(const Case& c, const Data& d, std::vector<double>& out, std::vector<double>& gin,
               std::vector<double>& gw) {
  const long OH = c.out_h(), OW = c.out_w(), L = OH * OW;
  out.assign(size_t(c.n) * c.c_out * L, 0);
  gin.assign(size_t(c.n) * c.c_in * c.h * c.w, 0);
  gw.assign(d.weight.size(), 0);
  for (long n = 0; n < c.n; ++n)
    for (long o = 0; o < c.c_out; ++o)
      for (long i = 0; i < OH; ++i)
        for (long j = 0; j < OW; ++j) {
          const long l = i * OW + j;
          double sum = c.bias == 0 ? 0 : c.bias == 1 ? d.bias[o] : d.bias[o * L + l];
          const double g = d.grad_output[n * d.gsn + o * d.gsc + i * d.gsh + j * d.gsw];
          for (long ch = 0; ch < c.c_in; ++ch)
            for (long p = 0; p < c.kh; ++p)
              for (long q = 0; q < c.kw; ++q) {
                const long y = i * c.sh - c.ph + p * c.dh, x = j * c.sw - c.pw + q * c.dw;
                const long wi = w_index(c, l, o, ch, p, q);
                sum += d.weight[wi] * x_at(c, d, n, ch, y, x);
                gw[wi] += g * x_at(c, d, n, ch, y, x);
                if (y >= 0 && y < c.h && x >= 0 && x < c.w)
                  gin[((n * c.c_in + ch) * c.h + y) * c.w + x] += g * d.weight[wi];
              }
          out[(n * c.c_out + o) * L + l] = sum;
        }
}

template <typename index_t>
ConvShape<index_t> shape_of(const Case& c, const Data& d) {
  return {index_t(c.n),  index_t(c.c_in), index_t(c.h),  index_t(c.w),  index_t(c.c_out),
          index_t(c.out_h()), index_t(c.out_w()), index_t(c.kh), index_t(c.kw), index_t(c.sh),
          index_t(c.sw), index_t(c.ph), index_t(c.pw), index_t(c.dh), index_t(c.dw),
          index_t(d.sn), index_t(d.sc), index_t(d.sh), index_t(d.sw), index_t(d.gsn),
          index_t(d.gsc), index_t(d.gsh), index_t(d.gsw)};
}

int mismatches = 0;

void compare(const char* what, const Case& c, int case_index, const std::vector<double>& got,
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
                input.data(), weight.data(), c.bias ? bias.data() : nullptr, c.bias == 1,
                got_out.data(), s);
  compare("forward", c, case_index, widen(got_out), out, tolerance);

  // grad_input writes a contiguous (N, C_in, H, W) tensor whatever the input's layout.
  using TI = GradInputTiles<WIDTH>;
  std::vector<scalar_t> got_gin(gin.size());
  launch_on_cpu(grad_input_grid<TI>(s), TI::THREADS, 0, grad_input_kernel<scalar_t, index_t, TI>,
                grad_output.data(), weight.data(), got_gin.data(), s);
  compare("grad_input", c, case_index, widen(got_gin), gin, tolerance);

  using TW = GradWeightTiles<WIDTH>;
  std::vector<scalar_t> got_gw(gw.size());
  launch_on_cpu(grad_weight_grid<TW>(s), TW::THREADS, 0, grad_weight_kernel<scalar_t, index_t, TW>,
                grad_output.data(), input.data(), got_gw.data(), s);
  compare("grad_weight", c, case_index, widen(got_gw), gw, tolerance);
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

// The input as the launchers pack it for the tensor-core kernels: (C_in, H, W, N8), samples
// innermost, the batch padded with zeros to a multiple of 8. rounded.input gets the values the
// kernel multiplies: rounded to scalar_t, then by `round` where given (TF32).
template <typename scalar_t>
std::vector<scalar_t> pack_input(const Case& c, const Data& d, Data& rounded,
                                 double (*round)(double) = nullptr) {
  const long batch_padded = padded_batch(c);
  std::vector<scalar_t> packed(size_t(c.c_in) * c.h * c.w * batch_padded, scalar_t(0.f));
  for (long n = 0; n < c.n; ++n)
    for (long ch = 0; ch < c.c_in; ++ch)
      for (long y = 0; y < c.h; ++y)
        for (long x = 0; x < c.w; ++x) {
          const scalar_t value(static_cast<float>(x_at(c, d, n, ch, y, x)));
          packed[((ch * c.h + y) * c.w + x) * batch_padded + n] = value;
          const double seen = static_cast<double>(static_cast<float>(value));
          rounded.input[n * d.sn + ch * d.sc + y * d.sh + x * d.sw] = round ? round(seen) : seen;
        }
  return packed;
}

// The shape with the packed input's strides (n: 1).
template <typename index_t>
ConvShape<index_t> packed_shape_of(const Case& c, const Data& d) {
  const long batch_padded = padded_batch(c);
  auto s = shape_of<index_t>(c, d);
  s.input_stride_n = 1, s.input_stride_c = index_t(c.h * c.w * batch_padded);
  s.input_stride_h = index_t(c.w * batch_padded), s.input_stride_w = index_t(batch_padded);
  return s;
}

template <typename scalar_t>
double half_tolerance() {
  return std::max(1e-5, double(std::numeric_limits<scalar_t>::epsilon()));
}

// The tensor-core forward.
template <typename scalar_t, bool BFLOAT16, int OUT_TILES, bool EVEN_K>
void run_tensor_core_forward(const Case& c, int case_index, const Data& d) {
  using T = TensorCoreForwardTiles<OUT_TILES>;
  Data rounded = d;
  const auto packed = pack_input<scalar_t>(c, d, rounded);
  const auto weight = narrow<scalar_t>(d.weight), bias = narrow<scalar_t>(d.bias);
  rounded.weight = widen(weight), rounded.bias = widen(bias);
  std::vector<double> out, gin, gw;
  reference(c, rounded, out, gin, gw);
  const auto s = packed_shape_of<int32_t>(c, d);
  std::vector<scalar_t> got(out.size(), scalar_t(NAN));
  launch_on_cpu(tensor_core_forward_grid<T>(s), T::THREADS,
                size_t(tensor_core_forward_shared_bytes<T>(s)),
                forward_tensor_core_kernel<scalar_t, BFLOAT16, EVEN_K, int32_t, T>,
                packed.data(), weight.data(), c.bias ? bias.data() : nullptr, c.bias == 1,
                got.data(), s, int32_t(padded_batch(c)));
  compare(BFLOAT16 ? "tensor-core forward bf16" : "tensor-core forward f16", c, case_index,
          widen(got), out, half_tolerance<scalar_t>());
}

// The TF32 forward, on float32 data: the reference sums the TF32-rounded input and weight (and
// the unrounded bias) in float64, so what differs is the float accumulation.
template <typename index_t>
void run_tf32_forward(const Case& c, int case_index, const Data& d) {
  using T = TensorCoreTF32ForwardTiles<2>;
  Data rounded = d;
  const auto packed = pack_input<float>(c, d, rounded, round_to_tf32);
  const auto weight = narrow<float>(d.weight), bias = narrow<float>(d.bias);
  rounded.weight = widen(weight), rounded.bias = widen(bias);
  for (auto& w : rounded.weight) w = round_to_tf32(w);
  std::vector<double> out, gin, gw;
  reference(c, rounded, out, gin, gw);
  const auto s = packed_shape_of<index_t>(c, d);
  std::vector<float> got(out.size(), NAN);
  launch_on_cpu(tensor_core_forward_grid<T>(s), T::THREADS,
                size_t(tensor_core_forward_shared_bytes<T>(s)), forward_tf32_kernel<index_t, T>,
                packed.data(), weight.data(), c.bias ? bias.data() : nullptr, c.bias == 1,
                got.data(), s, index_t(padded_batch(c)));
  compare("tf32 forward", c, case_index, widen(got), out, 1e-5);
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
          c, case_index, widen(got), gin, kTF32 ? 1e-5 : half_tolerance<scalar_t>());
}

// The tensor-core grad_weight, on grad_output in its physical layout and the packed input;
// scalar_t float runs it on TF32 (the reference then sums TF32-rounded operands).
template <typename scalar_t, bool BFLOAT16, bool EVEN_K, typename index_t>
void run_tensor_core_grad_weight(const Case& c, int case_index, const Data& d) {
  constexpr bool kTF32 = std::is_same_v<scalar_t, float>;
  using T = std::conditional_t<kTF32, TensorCoreTF32GradWeightTiles, TensorCoreGradWeightTiles>;
  Data rounded = d;
  const auto packed = pack_input<scalar_t>(c, d, rounded, kTF32 ? round_to_tf32 : nullptr);
  const auto grad_output = narrow<scalar_t>(d.grad_output);
  rounded.grad_output = widen(grad_output);
  // The per-location bias gradient it computes on the side: sums of grad_output over the batch
  // (in the staged precision, not TF32).
  const long locations = long(c.out_h()) * c.out_w();
  std::vector<double> bias_sums(size_t(c.c_out) * locations, 0);
  for (long n = 0; n < c.n; ++n)
    for (long o = 0; o < c.c_out; ++o)
      for (long l = 0; l < locations; ++l)
        bias_sums[o * locations + l] += rounded.grad_output[n * d.gsn + o * d.gsc +
                                                            (l / c.out_w()) * d.gsh +
                                                            (l % c.out_w()) * d.gsw];
  if (kTF32)
    for (auto& g : rounded.grad_output) g = round_to_tf32(g);
  std::vector<double> out, gin, gw;
  reference(c, rounded, out, gin, gw);
  const auto s = packed_shape_of<index_t>(c, d);
  std::vector<scalar_t> got(gw.size(), scalar_t(NAN));
  std::vector<float> got_sums(bias_sums.size(), NAN);
  launch_on_cpu(tensor_core_grad_weight_grid<T>(s), T::THREADS,
                size_t(tensor_core_grad_weight_shared_bytes<T>(s)),
                grad_weight_tensor_core_kernel<scalar_t, BFLOAT16, EVEN_K, index_t, T>,
                grad_output.data(), packed.data(), got.data(), got_sums.data(), s,
                index_t(padded_batch(c)));
  compare(kTF32      ? "tf32 grad_weight"
          : BFLOAT16 ? "tensor-core grad_weight bf16"
                     : "tensor-core grad_weight f16",
          c, case_index, widen(got), gw, kTF32 ? 1e-5 : half_tolerance<scalar_t>());
  compare("tensor-core grad_weight's bias sums", c, case_index, widen(got_sums), bias_sums,
          1e-5);
}

// Each output-tile width and both weight-load paths (pairs of 16-bit loads, or one 32-bit load
// where K is even), spread over the two dtypes to keep the run short.
void run_tensor_core_variants(const Case& c, int case_index, const Data& d) {
  run_tensor_core_forward<c10::BFloat16, true, 2, false>(c, case_index, d);
  if ((long(c.c_in) * c.kh * c.kw) % 2 == 0) {
    run_tensor_core_forward<c10::BFloat16, true, 4, true>(c, case_index, d);
    run_tensor_core_forward<c10::Half, false, 2, true>(c, case_index, d);
  } else {
    run_tensor_core_forward<c10::Half, false, 4, false>(c, case_index, d);
  }
  if ((long(c.c_in) * c.kh * c.kw) % 2 == 0)
    run_tensor_core_grad_weight<c10::BFloat16, true, true, int32_t>(c, case_index, d);
  run_tensor_core_grad_weight<c10::Half, false, false, int64_t>(c, case_index, d);
  run_tf32_forward<int32_t>(c, case_index, d);
  run_tensor_core_grad_weight<float, false, false, int64_t>(c, case_index, d);
  run_tensor_core_grad_input<float, false, int32_t>(c, case_index, d);
  run_tensor_core_grad_input<c10::BFloat16, true, int32_t>(c, case_index, d);
  run_tensor_core_grad_input<c10::Half, false, int64_t>(c, case_index, d);
}
#endif

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode != "immediate" && mode != "late") {
    std::fprintf(stderr, "usage: %s immediate|late [CASE...]\n", argv[0]);
    return 2;
  }
  copy_completion = mode == "late" ? CopyCompletion::late : CopyCompletion::immediate;
  const std::vector<Case> cases = {
      // n c_in h w c_out kh kw sh sw ph pw dh dw bias channels_last (input and grad_output)
      {3, 2, 7, 6, 3, 3, 2, 1, 2, 1, 0, 1, 1, 1, false},
      {5, 3, 9, 8, 4, 2, 3, 2, 1, 0, 1, 2, 1, 2, true},
      {2, 20, 5, 5, 20, 3, 3, 1, 1, 1, 1, 1, 1, 0, false},
      {67, 1, 4, 3, 2, 1, 1, 1, 1, 0, 0, 1, 1, 2, false},  // batch beyond one 64-sample tile
      {1, 2, 6, 7, 1, 3, 3, 3, 2, 2, 2, 1, 3, 1, true},    // stride > kernel: uncovered pixels
      {2, 3, 5, 5, 70, 2, 2, 1, 1, 0, 0, 1, 1, 2, false},  // C_out beyond one 64-wide tile
      {2, 70, 3, 3, 2, 1, 2, 1, 1, 0, 0, 1, 1, 1, false},  // patch beyond one 64-wide tile
      {2, 4, 5, 21, 18, 3, 3, 1, 1, 1, 1, 1, 2, 2, false},  // three groups of 8 columns
      {9, 16, 9, 9, 16, 5, 5, 1, 1, 0, 0, 1, 1, 2, true},  // DeepFace-like: 7 stages of 64
      {70, 3, 6, 12, 5, 3, 3, 1, 1, 1, 1, 1, 1, 0, false},  // full sample chunks, 2 batch tiles
  };
  std::vector<size_t> chosen;
  for (int a = 2; a < argc; ++a) chosen.push_back(std::stoul(argv[a]));
  if (chosen.empty())
    for (size_t i = 0; i < cases.size(); ++i) chosen.push_back(i);
  for (size_t i : chosen) {
    if (i >= cases.size()) {
      std::fprintf(stderr, "case %zu: there are %zu cases\n", i, cases.size());
      return 2;
    }
    const Data d = make_data(cases[i], unsigned(i));
    run_case<float, int32_t, 16>(cases[i], int(i), d);
    run_case<double, int64_t, 32>(cases[i], int(i), d);
    run_case<float, int64_t, 64>(cases[i], int(i), d);
    run_case<double, int32_t, 64>(cases[i], int(i), d);
#ifdef WITH_C10_HALF
    run_case<c10::Half, int32_t, 32>(cases[i], int(i), d);
    run_case<c10::BFloat16, int64_t, 16>(cases[i], int(i), d);
    run_tensor_core_variants(cases[i], int(i), d);
#endif
  }
  std::printf("%zu cases, cp.async %s: %d mismatches\n", chosen.size(), mode.c_str(),
              mismatches);
  return mismatches == 0 ? 0 : 1;
}
