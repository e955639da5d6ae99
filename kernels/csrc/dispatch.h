// Entry points that pick the ISA unit at call time.
#pragma once
#include "kernels.h"

namespace kk {
Isa best_isa();
Isa active_isa();
bool has_vbmi();  // AVX512_VBMI on an AVX-512 CPU, in use: vpermb in the sliced int8 kernel
bool set_vbmi(bool on);  // tests run the AVX512BW permute on VBMI parts too; false: no VBMI
bool set_isa(Isa isa);  // false if the CPU lacks `isa`

void spmm_f32(const SpmmF32Args& a);
void spmm_i8(const SpmmI8Args& a);
double kd_loss(const KdArgs& a);
// Which derived layouts (kLayout* bits) the active unit runs a batch of B on, where given.
unsigned spmm_f32_layouts(int64_t B);
unsigned spmm_i8_layouts(int64_t B);
}  // namespace kk
