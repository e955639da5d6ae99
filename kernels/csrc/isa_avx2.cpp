// AVX2+FMA path. Every function here carries target("avx2,fma") via the pragma, so the binary
// still loads on CPUs without AVX2; dispatch.cpp only calls in after __builtin_cpu_supports.
#include "prelude.h"
#if defined(__x86_64__) || defined(_M_X64)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
#define KK_NS avx2
#define KK_W 8
#define KK_LEVEL 1
#include "body.inc"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
