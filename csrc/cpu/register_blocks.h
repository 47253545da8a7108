// How the vector kernels cut one location's product into register blocks: near-equal blocks of
// rows, and tables of the block micro-kernels instantiated for every block size, so that a
// block's accumulators stay in registers whatever its size.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
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
