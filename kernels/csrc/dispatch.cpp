// Runtime ISA selection: detect once, allow forcing a lower path (tests run every path).
#include "dispatch.h"

#include <atomic>

namespace kk {
namespace {
Isa detect() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::portable;
}
const Isa g_best = detect();
// AVX512_VBMI (vpermb, vpermi2b) gives the sliced int8 kernel its one-instruction byte
// permute and enables the register-gather batch-1 int8 kernel within the AVX-512 path; parts
// with VNNI but no VBMI (e.g. Cascade Lake) run the sliced kernel with the permute built from
// AVX512BW byte shuffles.
bool detect_vbmi() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  return g_best == Isa::avx512 && __builtin_cpu_supports("avx512vbmi");
#else
  return false;
#endif
}
const bool g_vbmi = detect_vbmi();
std::atomic<bool> g_use_vbmi{g_vbmi};
std::atomic<int> g_active{static_cast<int>(g_best)};
}  // namespace

Isa best_isa() { return g_best; }
bool has_vbmi() { return g_use_vbmi.load(std::memory_order_relaxed); }
bool set_vbmi(bool on) {
  if (on && !g_vbmi) return false;
  g_use_vbmi.store(on, std::memory_order_relaxed);
  return true;
}
Isa active_isa() { return static_cast<Isa>(g_active.load(std::memory_order_relaxed)); }
bool set_isa(Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(g_best)) return false;
  g_active.store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

#if defined(__x86_64__) || defined(_M_X64)
#define KK_DISPATCH(fn, args)                                      \
  switch (active_isa()) {                                          \
    case Isa::avx512: return avx512::fn(args);                     \
    case Isa::avx2: return avx2::fn(args);                         \
    default: return portable::fn(args);                            \
  }
#else
#define KK_DISPATCH(fn, args) return portable::fn(args);
#endif

void spmm_f32(const SpmmF32Args& a) {
#if defined(__x86_64__) || defined(_M_X64)
  // Batched fp32 is a broadcast-FMA stream; Zen 4 double-pumps 512-bit FMAs, so 8-lane tiles
  // do the same work with less lane padding and measured 1.2-2x faster. Without the panel
  // layout the AVX2 unit's CSR kernel runs; with it the AVX-512 unit's (32 registers; zmm rows
  // at 16 and 32 lanes, ymm at 8 and 24). AVX-512 keeps batch 1, int8 (VNNI) and the KD loss.
  if (active_isa() == Isa::avx512 && a.B > 1 && a.panels.w == nullptr &&
      a.wide_panels.w == nullptr)
    return avx2::spmm_f32(a);
#endif
  KK_DISPATCH(spmm_f32, a)
}
void spmm_i8(const SpmmI8Args& a) {
#if defined(__x86_64__) || defined(_M_X64)
  // When the batch fills at most half of the last 16-lane vector (e.g. batch 8), 8-lane AVX2
  // tiles waste nothing and measured ~1.4x faster than half-empty AVX-512 ones (Zen 4 splits
  // 512-bit ops anyway). The sliced layout has no lane padding and beats both.
  const bool sliced = a.sliced.idx != nullptr && a.B <= i8_sliced_max_batch(Isa::avx512, has_vbmi());
  if (active_isa() == Isa::avx512 && a.B > 1 && (a.B % 16) >= 1 && (a.B % 16) <= 8 && !sliced)
    return avx2::spmm_i8(a);
#endif
  KK_DISPATCH(spmm_i8, a)
}
double kd_loss(const KdArgs& a) { KK_DISPATCH(kd_loss, a) }
unsigned spmm_f32_layouts(int64_t B) { KK_DISPATCH(spmm_f32_layouts, B) }
unsigned spmm_i8_layouts(int64_t B) { KK_DISPATCH(spmm_i8_layouts, B) }

}  // namespace kk
