// How the vector kernels cut one location's product into register blocks: near-equal blocks of
// rows, and tables of the block micro-kernels instantiated for every block size, so that a
// block's accumulators stay in registers whatever its size.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace lc_cuda {
namespace cpu {

// Splits `total` into ceil(total / most) blocks of near-equal size: block b starts at first(b)
// and holds size(b) rows, so that no block is left with one or two rows.
struct EvenBlocks {
  int64_t count, base, larger;
  EvenBlocks(int64_t total, int64_t most)
      : count((total + most - 1) / most), base(total / count), larger(total % count) {}
  int64_t first(int64_t b) const { return b * base + std::min(b, larger); }
  int64_t size(int64_t b) const { return base + (b < larger ? 1 : 0); }
};

// The forward in place (vector_kernels_impl.h's float, avx512_bf16_kernels.cpp's pairs) blocks
// the samples and the vectors of C_out alike.
// The samples of a block by `vectors` vectors of C_out of `lanes` floats, then fewer for the sample
// block's last ones. Chosen, not tuned: by 1 vector, 8 (8 chains of FMAs hide their latency, 8
// samples' addresses fit the general registers); by 2 and 4 vectors, 6 (24 of AVX-512's 32 vector
// registers hold 6 x 4 accumulators); AVX2 by 2 vectors, 5 (10 of its 16).
constexpr int in_place_samples(int lanes, int vectors) {
  return vectors == 1 ? 8 : lanes == 16 ? 6 : 5;
}

// The patch columns of an in-place grad_weight block by `vectors` vectors of C_out (float's and
// bfloat16's pairs of samples), then fewer for the last: 8 by 1 vector, and by 2 on AVX-512; 5
// otherwise (20 accumulators by 4 vectors; not tuned). At most 8: their input offsets stay in the
// general registers (12 had spilled them, a reload before each FMA: DeepFace L5's float
// grad_weight 0.99x the packed products' against 0.91x with 8, L6's 0.95x against 0.87x, in one
// process).
constexpr int in_place_columns(int lanes, int vectors) {
  return vectors == 1 || (vectors == 2 && lanes == 16) ? 8 : 5;
}

// Calls block(std::integral_constant<int, OB>{}, v) for the vectors [v, v + OB) of `vectors`
// vectors of C_out: blocks of Wide, then 2, then 1.
template <int Wide, typename Block>
void for_vector_blocks(int64_t vectors, Block&& block) {
  int64_t v = 0;
  for (; v + Wide <= vectors; v += Wide) block(std::integral_constant<int, Wide>{}, v);
  for (; v + 2 <= vectors; v += 2) block(std::integral_constant<int, 2>{}, v);
  for (; v < vectors; ++v) block(std::integral_constant<int, 1>{}, v);
}

template <typename Fn, int Row, typename Entry, int... C>
constexpr std::array<Fn, sizeof...(C)> block_table_row(std::integer_sequence<int, C...>) {
  return {Entry::template at<Row, C + 1>()...};
}
template <typename Fn, int Columns, typename Entry, int... R>
constexpr std::array<std::array<Fn, Columns>, sizeof...(R)> block_table(
    std::integer_sequence<int, R...>) {
  return {block_table_row<Fn, R + 1, Entry>(std::make_integer_sequence<int, Columns>{})...};
}

// table[rows - 1][columns - 1] = Entry::at<rows, columns>(), for rows <= Rows and
// columns <= Columns: a micro-kernel's instantiations by block size.
template <typename Fn, int Rows, int Columns, typename Entry>
constexpr std::array<std::array<Fn, Columns>, Rows> make_block_table() {
  return block_table<Fn, Columns, Entry>(std::make_integer_sequence<int, Rows>{});
}

}  // namespace cpu
}  // namespace lc_cuda
