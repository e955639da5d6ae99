// Sliced int8 layout: the CSR weights of 16 output rows x 64 inputs regrouped so that one
// 64-byte slice holds up to 4 non-zeros of each of the 16 rows, row j in bytes 4j..4j+3, with
// the position of each non-zero's input within the chunk in a parallel index slice. Batch 1 on
// AVX512_VBMI then needs no gather: vpermb picks the 64 activations of a slice from one zmm of
// inputs and vpdpbusd adds each row's 4 products into that row's own int32 lane (body.inc).
// Padding bytes carry weight 0. Built once per weight set (Python caches it), never saved.
#include "sliced.h"

#include <algorithm>
#include <vector>

namespace kk {
namespace {

inline int64_t column(const SlicedLayoutArgs& a, int64_t k) {
  return a.col16 ? static_cast<const uint16_t*>(a.col)[k] : static_cast<const int32_t*>(a.col)[k];
}

}  // namespace

int64_t sliced_i8_layout(const SlicedLayoutArgs& a) {
  const int64_t chunks = (a.in + kSliceCols - 1) / kSliceCols;
  const int64_t blocks = (a.out + kSliceRows - 1) / kSliceRows;
  const bool fill = a.idx != nullptr;
  std::vector<int32_t> n(chunks), first(chunks);
  if (!fill) a.block_off[0] = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* cnt = a.counts + b * chunks;
    if (!fill) {
      std::fill(cnt, cnt + chunks, 0);
      for (int64_t r = b * kSliceRows; r < std::min(a.out, (b + 1) * kSliceRows); ++r) {
        std::fill(n.begin(), n.end(), 0);
        for (int64_t k = a.row_ptr[r]; k < a.row_ptr[r + 1]; ++k) ++n[column(a, k) / kSliceCols];
        for (int64_t c = 0; c < chunks; ++c)
          cnt[c] = std::max<uint8_t>(cnt[c], (n[c] + kSliceDepth - 1) / kSliceDepth);
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
    for (int64_t r = b * kSliceRows; r < std::min(a.out, (b + 1) * kSliceRows); ++r) {
      const int64_t lane = (r - b * kSliceRows) * kSliceDepth;
      std::fill(n.begin(), n.end(), 0);
      for (int64_t k = a.row_ptr[r]; k < a.row_ptr[r + 1]; ++k) {
        const int64_t col = column(a, k), c = col / kSliceCols, rank = n[c]++;
        const int64_t pos = (first[c] + rank / kSliceDepth) * kSliceCols + lane + rank % kSliceDepth;
        a.idx[pos] = static_cast<uint8_t>(col % kSliceCols);
        a.w[pos] = a.val[k];
      }
    }
  }
  return a.block_off[blocks];
}

}  // namespace kk
