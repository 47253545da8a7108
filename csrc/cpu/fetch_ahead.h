// Software prefetches into the L2 that the vector kernels of every ISA share (vector_kernels_impl.h
// and avx512_bf16_kernels.cpp): a line by address, and a range of lines spread over a loop's
// steps. Plain SSE (no target attribute), so each translation unit's copy is the same code.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "geometry.h"

namespace lc_cuda {
namespace cpu {

constexpr int64_t kLine = 64;  // bytes of a cache line

// A fetch of the line at `at` into the L2, by address: it may lie outside every tensor (past the
// weight's last bank, past the end of an array), which a prefetch never faults on.
inline void fetch_into_l2(uintptr_t at) {
  _mm_prefetch(reinterpret_cast<const char*>(at), _MM_HINT_T1);
}

// A range of lines fetched into the L2 a share at a time: `steps` calls of step() fetch all
// `lines` from `from` on (each at most ceil(lines / steps)), never past the range's end. By
// address, which a prefetch never faults on, so the range may lie past either end of a tensor.
class FetchAhead {
 public:
  FetchAhead(uintptr_t from, int64_t lines, int64_t steps)
      : at_(from),
        end_(from + lines * kLine),
        per_step_(lines > 0 ? ceil_div(lines, std::max<int64_t>(steps, 1)) : 0) {}
  void step() {
    for (int64_t l = 0; l < per_step_ && at_ < end_; ++l, at_ += kLine) fetch_into_l2(at_);
  }

 private:
  uintptr_t at_;
  uintptr_t end_;
  int64_t per_step_;
};

// The heads (first `head` elements, at most the row) of `rows` rows of `row_size` elements from
// `first` on (nothing where first is null), fetched into the L2 a share at a time over `steps`
// calls of step(): the chunks of the next product's filter rows that the rows' own fetches, a
// few chunks ahead, do not cover. Only the heads: a whole bank can outgrow the L2 (YOLOv1's,
// 9 MB).
template <typename T>
class RowHeadsAhead {
 public:
  RowHeadsAhead(const T* first, int64_t row_size, int64_t rows, int64_t head, int64_t steps)
      : row_(first),
        row_size_(row_size),
        left_(first == nullptr ? 0 : rows),
        head_bytes_(std::min(head, row_size) * int64_t(sizeof(T))),
        per_step_(ceil_div(rows, std::max<int64_t>(steps, 1))) {}
  void step() {
    for (int64_t r = 0; r < per_step_ && left_ > 0; ++r, --left_, row_ += row_size_) {
      for (int64_t byte = 0; byte < head_bytes_; byte += kLine)
        fetch_into_l2(reinterpret_cast<uintptr_t>(row_) + byte);
    }
  }

 private:
  const T* row_;
  int64_t row_size_;
  int64_t left_;
  int64_t head_bytes_;
  int64_t per_step_;
};

}  // namespace cpu
}  // namespace lc_cuda
