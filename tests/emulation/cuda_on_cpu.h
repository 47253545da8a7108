// Just enough of CUDA to run lc_cuda's kernels on the CPU, for testing their index arithmetic
// and tiling without a GPU. A CTA's threads are std::threads that meet at a std::barrier in
// __syncthreads; CTAs run one after another, so __shared__ can be a function-static array.
#pragma once

#include <barrier>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};

inline dim3 gridDim;
inline thread_local dim3 blockIdx, threadIdx;
inline std::barrier<>* cta_barrier = nullptr;

inline void __syncthreads() { cta_barrier->arrive_and_wait(); }

// The same `threads` threads run every CTA in turn, meeting at the barrier after each, so that
// no thread starts the next CTA (and reuses the static shared memory) before all are done.
template <typename Kernel, typename... Args>
void launch_on_cpu(dim3 grid, unsigned int threads, Kernel kernel, Args... args) {
  gridDim = grid;
  std::barrier<> barrier(threads);
  cta_barrier = &barrier;
  std::vector<std::thread> cta;
  for (unsigned int t = 0; t < threads; ++t)
    cta.emplace_back([&, t] {
      threadIdx = {t, 0, 0};
      for (unsigned int z = 0; z < grid.z; ++z)
        for (unsigned int y = 0; y < grid.y; ++y)
          for (unsigned int x = 0; x < grid.x; ++x) {
            blockIdx = {x, y, z};
            kernel(args...);
            barrier.arrive_and_wait();
          }
    });
  for (auto& thread : cta) thread.join();
}
