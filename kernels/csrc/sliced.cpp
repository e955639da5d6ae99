// Sliced layouts: the CSR weights of 16 output rows x one chunk of inputs regrouped so that a
// slice holds up to `depth` non-zeros of each of the 16 rows, row j in slots j*depth.., with
// the position of each non-zero's input within the chunk in a parallel index slice. The kernels
// (spmm_f32.inc, spmm_i8.inc) then need no gather: a permute picks a slice's activations from
// registers holding the chunk, and each row's products land in that row's own lane. Padding
// slots carry weight 0.
// int8: 64-input chunks, depth 4 (vpermb + vpdpbusd); fp32: 32-input chunks, depth 1
// (vpermi2ps + FMA). Built once per weight set (Python caches it), never saved.
#include "sliced.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace kk {
namespace {

inline int64_t column(const void* col, bool col16, int64_t k) {
  return col16 ? static_cast<const uint16_t*>(col)[k] : static_cast<const int32_t*>(col)[k];
}
inline int64_t column(const SlicedLayoutArgs& a, int64_t k) { return column(a.col, a.col16, k); }

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

int64_t panel_layout(const PanelLayoutArgs& a) {
  const int64_t panels = (a.in + a.cols - 1) / a.cols;
  const int64_t blocks = (a.out + kPanelRows - 1) / kPanelRows;
  const bool fill = a.w != nullptr;
  // Per block: each row's non-zeros per panel (len), and the block's non-zeros ordered by
  // (row, panel) (pos, from first), so a row's segment in a panel is one run of pos.
  std::vector<int32_t> len(kPanelRows * panels), first(kPanelRows * panels), cursor, pos;
  std::vector<int32_t> order(kPanelRows);
  int32_t g = 0, steps = 0;
  a.step_off[0] = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r0 = b * kPanelRows, nr = std::min<int64_t>(kPanelRows, a.out - r0);
    std::fill(len.begin(), len.end(), 0);
    for (int64_t i = 0; i < nr; ++i)
      for (int64_t k = a.row_ptr[r0 + i]; k < a.row_ptr[r0 + i + 1]; ++k)
        ++len[i * panels + column(a.col, a.col16, k) / a.cols];
    int32_t n = 0;
    for (int64_t s = 0; s < nr * panels; ++s) {
      first[s] = n;
      n += len[s];
    }
    if (fill) {
      cursor.assign(first.begin(), first.end());
      pos.resize(n);
      for (int64_t i = 0; i < nr; ++i)
        for (int64_t k = a.row_ptr[r0 + i]; k < a.row_ptr[r0 + i + 1]; ++k)
          pos[cursor[i * panels + column(a.col, a.col16, k) / a.cols]++] = (int32_t)k;
    }
    for (int64_t p = 0; p < panels; ++p) {
      a.group_start[b * panels + p] = g;
      auto seg = [&](int64_t i) { return len[i * panels + p]; };
      order.resize(nr);
      for (int64_t i = 0; i < nr; ++i) order[i] = (int32_t)i;
      std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return seg(x) > seg(y); });
      // Panel 0 takes every row, empty ones too, so that the kernel stores its sums (and the
      // bias) where later panels add theirs; later panels skip rows with no non-zeros there.
      for (int64_t g0 = 0; g0 < nr && (p == 0 || seg(order[g0]) > 0); g0 += kPanelGroup, ++g) {
        const int32_t steps_g = seg(order[g0]);  // sorted: the longest comes first
        for (int64_t c = 0; c < kPanelGroup; ++c) {
          // Lanes past the block's last row name the spare row nr (< kPanelRows: the kernel's
          // sum tile has kPanelRows rows per block) and carry zero weights.
          const bool real = g0 + c < nr;
          const int32_t i = real ? order[g0 + c] : (int32_t)nr;
          a.rows[g * kPanelGroup + c] = (uint8_t)i;
          if (!fill || !real) continue;
          for (int32_t t = 0; t < seg(i); ++t) {
            const int64_t k = pos[first[i * panels + p] + t];
            const int64_t slot = (int64_t)(steps + t) * kPanelGroup + c;
            a.off[slot] = (uint16_t)((column(a.col, a.col16, k) - p * a.cols) * kPanelLaneBytes);
            a.w[slot] = a.val[k];
          }
        }
        steps += steps_g;
        a.step_off[g + 1] = steps;
      }
    }
  }
  a.group_start[blocks * panels] = g;
  return steps;
}

}  // namespace kk
