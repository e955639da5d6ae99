// Standard headers every ISA unit needs. Included *before* any target pragma so that library
// templates are not instantiated with AVX-512 code that the linker could then share with the
// portable unit (an illegal-instruction hazard on older CPUs).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#include "dispatch.h"  // kernels.h, and has_vbmi() for the AVX-512 unit
#include "sliced.h"    // the derived layouts' block, chunk and panel sizes

// For helpers that take register arrays by reference: out of line, GCC passes them through
// memory (a store and a reload per vector).
#define KK_INLINE inline __attribute__((always_inline))
