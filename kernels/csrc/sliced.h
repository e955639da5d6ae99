// Sliced int8 layout for batch 1 on AVX512_VBMI CPUs (see sliced.cpp and body.inc).
#pragma once
#include <cstdint>

namespace kk {

constexpr int kSliceRows = 16;   // output rows per block: one int32 lane each in a zmm
constexpr int kSliceCols = 64;   // inputs per chunk: one zmm of u8 activations
constexpr int kSliceDepth = 4;   // non-zeros per row per slice: one vpdpbusd dword lane

struct SlicedLayoutArgs {
  const int32_t* row_ptr;  // CSR, validated by Python
  const void* col;         // uint16_t if col16 else int32_t, sorted within each row
  bool col16;
  const int8_t* val;
  int64_t out, in;
  uint8_t* counts;     // [blocks * chunks] slices of each (block, chunk)
  int32_t* block_off;  // [blocks + 1] first slice of each block
  uint8_t* idx;        // [slices * 64] input within the chunk per byte, or nullptr
  int8_t* w;           // [slices * 64] weight per byte (0 = padding), or nullptr
};

// Without idx/w: fills counts and block_off and returns the number of slices. With them
// (zero-filled, sized from that number): fills idx and w, returns the same number.
int64_t sliced_i8_layout(const SlicedLayoutArgs& a);

}  // namespace kk
