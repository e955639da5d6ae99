// Sliced layouts: the CSR weights of 16 output rows x one chunk of inputs regrouped so that a
// slice holds up to `depth` non-zeros of each of the 16 rows, row j in slots j*depth.., with
// the position of each non-zero's input within the chunk in a parallel index slice. The kernels
// (body.inc) then need no gather: a permute picks a slice's activations from registers holding
// the chunk, and each row's products land in that row's own lane. Padding slots carry weight 0.
// int8: 64-input chunks, depth 4 (vpermb + vpdpbusd); fp32: 32-input chunks, depth 1
// (vpermi2ps + FMA). Built once per weight set (Python caches it), never saved.
#include "sliced.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace kk {
namespace {

inline int64_t column(const SlicedLayoutArgs& a, int64_t k) {
  return a.col16 ? static_cast<const uint16_t*>(a.col)[k] : static_cast<const int32_t*>(a.col)[k];
}

}  // namespace

int64_t sliced_layout(const SlicedLayoutArgs& a) {
  const int64_t cols = a.f32 ? kSliceColsF32 : kSliceColsI8;
  const int64_t depth = a.f32 ? kSliceDepthF32 : kSliceDepthI8;
  const int64_t width = kSliceRows * depth, vsize = a.f32 ? 4 : 1;
  const int64_t chunks = (a.in + cols - 1) / cols;
  const int64_t blocks = (a.out + kSliceRows - 1) / kSliceRows;
  const bool fill = a.idx != nullptr;
  std::vector<int32_t> n(chunks), first(chunks);
  if (!fill) a.block_off[0] = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* cnt = a.counts + b * chunks;
    const int64_t r0 = b * kSliceRows, r1 = std::min(a.out, r0 + kSliceRows);
    if (!fill) {
      std::fill(cnt, cnt + chunks, 0);
      for (int64_t r = r0; r < r1; ++r) {
        std::fill(n.begin(), n.end(), 0);
        for (int64_t k = a.row_ptr[r]; k < a.row_ptr[r + 1]; ++k) ++n[column(a, k) / cols];
        for (int64_t c = 0; c < chunks; ++c)
          cnt[c] = std::max<uint8_t>(cnt[c], (uint8_t)((n[c] + depth - 1) / depth));
      }
      int32_t total = 0;
      for (int64_t c = 0; c < chunks; ++c) total += cnt[c];
      a.block_off[b + 1] = a.block_off[b] + total;
      continue;
    }
    int32_t s = a.block_off[b];
    for (int64_t c = 0; c < chunks; ++c) {
      first[c] = s;
      s += cnt[c];
    }
    for (int64_t r = r0; r < r1; ++r) {
      std::fill(n.begin(), n.end(), 0);
      for (int64_t k = a.row_ptr[r]; k < a.row_ptr[r + 1]; ++k) {
        const int64_t col = column(a, k), c = col / cols, rank = n[c]++;
        const int64_t pos = (first[c] + rank / depth) * width + (r - r0) * depth + rank % depth;
        a.idx[pos] = static_cast<uint8_t>(col % cols);
        std::memcpy(static_cast<char*>(a.w) + pos * vsize,
                    static_cast<const char*>(a.val) + k * vsize, vsize);
      }
    }
  }
  return a.block_off[blocks];
}

}  // namespace kk
