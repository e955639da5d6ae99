// Raw-pointer kernel interface shared by every ISA translation unit.
// Python validates shapes/dtypes before anything here runs; these functions trust their inputs.
#pragma once
#include <cstdint>

namespace kk {

// Optional sliced layout of the same weights (sliced.h), built by Python; all null when absent.
struct SlicedView {
  const uint8_t* counts = nullptr;
  const int32_t* block_off = nullptr;
  const uint8_t* idx = nullptr;
  const void* w = nullptr;  // int8_t or float, as the layer
};

// Optional panel layout of fp32 weights (sliced.h), built by Python; all null when absent.
struct PanelView {
  const int32_t* group_start = nullptr;
  const int32_t* step_off = nullptr;
  const uint8_t* rows = nullptr;
  const uint16_t* off = nullptr;
  const float* w = nullptr;
  int64_t cols = 0;  // inputs per panel
};

enum class Isa : int { portable = 0, avx2 = 1, avx512 = 2 };

// The derived layouts (sliced.h), as bits: which ones a call at batch B runs on (spmm_*_layouts),
// so a layer builds them on first need rather than all up front (_sliced.py mirrors these).
enum : unsigned { kLayoutSliced = 1, kLayoutPanels = 2, kLayoutWidePanels = 4 };

// The largest int8 batch that runs on the sliced layout. With VBMI every batch does; with
// AVX512BW's five-shuffle permute the cost grows with the batch, and from batch 16 the CSR
// kernels' shared activation loads win (Zen 4 with VBMI disabled, kernel only: 768x3072 at 90 %
// took 13 / 47 / 94 / 188 us at batch 1 / 4 / 8 / 16 against the CSR kernels' 46 / 130 / 123 /
// 166). The AVX2 unit runs it a batch row at a time (26 / 53 / 105 / 130 / 208 us at batch 1 /
// 2 / 4 / 5 / 8 against 47 / 122 / 126 / 129 / 123), so up to batch 4.
inline int64_t i8_sliced_max_batch(Isa isa, bool vbmi) {
  if (isa == Isa::avx512) return vbmi ? INT64_MAX : 8;
  return isa == Isa::avx2 ? 4 : 0;
}

// Column indices are uint16 when in <= 65536 (col16), else int32 (validated non-negative).
struct SpmmF32Args {
  const float* x;  // [B, in] row-major, or [in, B] if x_feature_major
  int64_t B, in, out;
  const int32_t* row_ptr;  // [out + 1]
  const void* col;         // [nnz] uint16_t if col16 else int32_t
  bool col16;
  const float* val;        // [nnz]
  const float* bias;       // [out] or nullptr
  float* y;                // [B, out], or [out, B] if y_feature_major
  int nthreads;
  SlicedView sliced;       // used at batch 1 on AVX-512
  PanelView panels;        // used at batch > 1: tiles of more than 16 lanes
  PanelView wide_panels;   // and tiles of up to 16 (wider panels; sliced.h)
  // Whether x and y hold each feature's batch lanes contiguously, each on its own: a chain
  // of sparse layers hands its activations on in that layout, with no transposes between.
  bool x_feature_major = false, y_feature_major = false;
};

struct SpmmI8Args {
  const float* x;  // [B, in], or [in, B] if x_feature_major
  int64_t B, in, out;
  const int32_t* row_ptr;
  const void* col;
  bool col16;
  const int8_t* val;      // per-channel symmetric s8
  const float* wscale;    // [out]
  const int32_t* rowsum;  // [out] sum of s8 weights per row (zero-point correction)
  const float* bias;
  float* y;        // [B, out], or [out, B] if y_feature_major
  int nthreads;
  SlicedView sliced;  // used at every batch on AVX512_VBMI
  bool x_feature_major = false, y_feature_major = false;  // as for SpmmF32Args
};

struct KdArgs {
  const float* s;  // [N, V] student logits
  const float* t;  // [N, V] teacher logits
  const int64_t* labels;  // [N], in [0, V) or ignore_index
  int64_t N, V;
  float T, alpha;
  int64_t ignore_index;  // rows with this label count for nothing, in the loss or the mean
  float* grad;           // [N, V] d(mean loss)/ds (0 in ignored rows), or nullptr
  int nthreads;
};

#define KK_DECLARE_ISA(ns)                     \
  namespace ns {                               \
  void spmm_f32(const SpmmF32Args& a);         \
  void spmm_i8(const SpmmI8Args& a);           \
  double kd_loss(const KdArgs& a); /* mean */  \
  unsigned spmm_f32_layouts(int64_t B);        \
  unsigned spmm_i8_layouts(int64_t B);         \
  }

KK_DECLARE_ISA(portable)
#if defined(__x86_64__) || defined(_M_X64)
KK_DECLARE_ISA(avx2)
KK_DECLARE_ISA(avx512)
#endif

}  // namespace kk
