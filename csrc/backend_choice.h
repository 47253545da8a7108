// Which implementation a call takes: LC_CUDA_BACKEND (read at every call, so that setting the
// variable in a running process takes effect): auto (or unset) the kernels of the device, ffma the
// kernels without tensor cores (on the CPU, without the hand-written products), unfold the
// fallback; the fallback also where the caller forces it (force_unfold, set by unfold_local_conv*)
// or the device's kernels do not take the geometry yet; and the first-use check's verdict.
//
// The first-use check: until this build's CUDA kernels have passed tools/gpu_check.sh on real
// hardware (setup.py records that in the build: build_info()["gpu_verified"]), the first call on
// each device that would take a kernel path first runs that path on a small input against the
// unfold fallback on the same device, once per process, device and path. A path that disagrees
// is switched off for the process, with one warning: its calls take the fallback.
//
// LC_CUDA_FIRST_USE_CHECK: auto (or unset): check the CUDA kernel paths of a build not verified
// on a GPU; off: no check; all: check every path, the CPU kernels' and a verified build's too;
// test_fault: as all, with the kernels' results perturbed inside the check, so that a test can see
// a path that disagrees switched off. Read at every call.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>

#include "local_conv.h"

namespace lc_cuda {

// One device's kernels: which geometries they take, and forward, grad_input and grad_weight of a
// geometry they take, on the path `backend` (kernels or ffma), as the first-use check runs them.
struct DeviceKernels {
  std::function<bool(const Geometry& g)> takes;
  // Whether the device's current stream is capturing a CUDA graph, where the check cannot run
  // (it synchronises): an unchecked path then takes the fallback for that call, and is checked
  // at its first call outside a capture.
  std::function<bool(const at::Tensor& like)> capturing;
  std::function<at::Tensor(const at::Tensor& input, const at::Tensor& weight,
                           const at::Tensor& bias, const Geometry& g, Backend backend)>
      forward;
  std::function<at::Tensor(const at::Tensor& grad_output, const at::Tensor& weight,
                           const Geometry& g, Backend backend)>
      grad_input;
  std::function<at::Tensor(const at::Tensor& grad_output, const at::Tensor& input,
                           const Geometry& g, Backend backend)>
      grad_weight;
};

// The backend a call of geometry g on `like`'s device and dtype takes.
Backend choose_backend(bool force_unfold, const Geometry& g, const at::Tensor& like,
                       const DeviceKernels& kernels);

}  // namespace lc_cuda
