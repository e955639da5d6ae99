// Sliced layouts of CSR weights for the AVX-512 kernels (sliced.cpp; spmm_f32.inc, spmm_i8.inc).
#pragma once
#include <cstdint>

namespace kk {

constexpr int kSliceRows = 16;  // output rows per block: one 32-bit lane each in a zmm

// int8 (AVX512_VBMI): chunks of 64 inputs (one zmm of u8 activations, picked by vpermb), 4
// non-zeros per row per slice (one vpdpbusd dword lane): 64-byte slices.
constexpr int kSliceColsI8 = 64;
constexpr int kSliceDepthI8 = 4;
// fp32 (AVX-512F, batch 1): chunks of 32 inputs (two zmm, picked by vpermi2ps), 1 non-zero per
// row per slice (one FMA lane): 16-float slices.
constexpr int kSliceColsF32 = 32;
constexpr int kSliceDepthF32 = 1;

struct SlicedLayoutArgs {
  const int32_t* row_ptr;  // CSR, validated by Python
  const void* col;         // uint16_t if col16 else int32_t
  bool col16;
  const void* val;         // int8_t (int8 layout) or float (fp32 layout)
  bool f32;
  int64_t out, in;
  uint8_t* counts;     // [blocks * chunks] slices of each (block, chunk)
  int32_t* block_off;  // [blocks + 1] first slice of each block
  uint8_t* idx;        // [slices * 16 * depth] input within the chunk per slot, or nullptr
  void* w;             // [slices * 16 * depth] weight per slot (0 = padding), or nullptr
};

// Without idx/w: fills counts and block_off and returns the number of slices. With them
// (zero-filled, sized from that number): fills idx and w, returns the same number.
int64_t sliced_layout(const SlicedLayoutArgs& a);

// Panel layout for batched fp32 (AVX-512 CPUs): inputs in panels whose transposed activations
// (32 bytes per input per 8 batch lanes) stay in L1 while the panel's weights stream past; output
// rows in blocks of 128 (the unit threads split); within each (block, panel) the rows sorted by
// their non-zero count in the panel and taken 8 at a time. A group runs its 8 rows in lockstep
// for as many steps as its longest row has non-zeros, so sorted rows of nearly equal length
// share one loop: ~3 % padding at 90 % sparsity (27 % unsorted), one loop exit per 8 segments.
// Panel 0 lists every row of its block once (the kernel stores there and adds later); lanes
// past a block's last row name row `nr` of that block, which the kernel allocates but never
// writes out.
//
// Each layer gets two panel layouts: fewer, wider panels mean fewer groups (each stores its sums
// once per panel), so a panel should be as wide as L1 allows. Tiles of up to 16 lanes use
// 512-input panels (32 KB at 16 lanes; 3-5 % faster there than 256), wider tiles 256 (32 KB at
// 32 lanes, where 512 is 10 % slower). kernels/README.md, "Panel layout"; the measurements:
// kernels/MEASUREMENTS.md, "Panel width".
constexpr int kPanelColsWide = 512;
constexpr int kPanelColsNarrow = 256;
constexpr int kPanelWideMaxLanes = 16;
constexpr int kPanelRows = 128;
constexpr int kPanelGroup = 8;
constexpr int kPanelLaneBytes = 32;  // one input's 8 batch lanes of fp32 activations

struct PanelLayoutArgs {
  const int32_t* row_ptr;  // CSR, validated by Python
  const void* col;         // uint16_t if col16 else int32_t
  bool col16;
  const float* val;
  int64_t out, in;
  int64_t cols;          // inputs per panel (kPanelColsWide or kPanelColsNarrow)
  int32_t* group_start;  // [blocks * panels + 1] first group of each (block, panel), block-major
  int32_t* step_off;     // [max groups + 1] first step of each group; at most
                         // kPanelRows / kPanelGroup groups per (block, panel)
  uint8_t* rows;         // [max groups * 8] row within the block of each group lane
  uint16_t* off;  // [steps * 8] input within the panel x kPanelLaneBytes per slot, or nullptr
  float* w;       // [steps * 8] weight per slot (0 = padding), or nullptr
};

// Without off/w: fills group_start, step_off and rows and returns the number of steps. With
// them (zero-filled, sized from that number): fills them too, returns the same number.
int64_t panel_layout(const PanelLayoutArgs& a);

}  // namespace kk
