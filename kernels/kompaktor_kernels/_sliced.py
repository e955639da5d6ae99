"""Derived layouts of the CSR weights for the batched and AVX-512 kernels (csrc/sliced.cpp).

Sliced layouts regroup the weights by 16 output rows × one chunk of inputs so the kernels
need no gather: int8 on AVX512_VBMI CPUs at every batch (64-input chunks, ≈3–4× faster), fp32
on AVX-512 at batch 1 (32-input chunks, ≈1.8× faster). fp32 layers on every CPU also get two
panel layouts for batches > 1 (input panels whose activations stay in L1, rows sorted by length
and run 8 in lockstep, ≈1.5× faster): 512-input panels for tiles of up to 16 batch rows, 256
for wider ones. Derived from the stored CSR and never saved; sparse_linear builds them once per
weight set and caches them with the CSR validation."""

from __future__ import annotations

import torch

from kompaktor_kernels import _native

ROWS = 16  # csrc/sliced.h: kSliceRows
# Inputs per chunk and non-zeros per row per slice (kSliceCols*, kSliceDepth*).
GEOMETRY = {torch.int8: (64, 4), torch.float32: (32, 1)}
# Panel layouts: output rows per block, rows per lockstep group, and the two panel widths in
# inputs, in the order the kernel takes them (kPanelRows, kPanelGroup, kPanelCols*).
PANEL_ROWS, PANEL_GROUP = 128, 8
PANEL_COLS = (256, 512)

# The kernels' pointer arguments, in order: the sliced layout's four tensors, then (fp32 only)
# each panel layout's five; None in a layout and zeros past its end stand for absent parts.
Layout = tuple[torch.Tensor | None, ...]
ARGS = {torch.int8: 4, torch.float32: 4 + 5 * len(PANEL_COLS)}


def _build(row_ptr: torch.Tensor, col: torch.Tensor, values: torch.Tensor, in_f: int) -> Layout:
    out_f = row_ptr.numel() - 1
    cols, depth = GEOMETRY[values.dtype]
    blocks, chunks = -(-out_f // ROWS), -(-in_f // cols)
    counts = torch.empty(blocks * chunks, dtype=torch.uint8)
    block_off = torch.empty(blocks + 1, dtype=torch.int32)

    def run(idx: int, w: int) -> int:  # sizes the layout with idx = w = 0, else fills it
        return _native.sliced_layout(
            row_ptr.data_ptr(), col.data_ptr(), col.dtype == torch.uint16, values.data_ptr(),
            values.dtype == torch.float32, out_f, in_f, counts.data_ptr(), block_off.data_ptr(),
            idx, w,
        )  # fmt: skip

    slots = run(0, 0) * ROWS * depth
    idx = torch.zeros(slots, dtype=torch.uint8)
    w = torch.zeros(slots, dtype=values.dtype)
    run(idx.data_ptr(), w.data_ptr())
    return counts, block_off, idx, w


def _build_panels(
    row_ptr: torch.Tensor, col: torch.Tensor, values: torch.Tensor, in_f: int, cols: int
) -> Layout:
    out_f = row_ptr.numel() - 1
    blocks, panels = -(-out_f // PANEL_ROWS), -(-in_f // cols)
    groups = blocks * panels * (PANEL_ROWS // PANEL_GROUP)  # at most
    group_start = torch.empty(blocks * panels + 1, dtype=torch.int32)
    step_off = torch.zeros(groups + 1, dtype=torch.int32)
    rows = torch.zeros(groups * PANEL_GROUP, dtype=torch.uint8)

    def run(off: int, w: int) -> int:  # sizes the slots with off = w = 0, else fills them
        return _native.panel_layout(
            row_ptr.data_ptr(), col.data_ptr(), col.dtype == torch.uint16, values.data_ptr(),
            out_f, in_f, cols, group_start.data_ptr(), step_off.data_ptr(), rows.data_ptr(), off,
            w,
        )  # fmt: skip

    slots = run(0, 0) * PANEL_GROUP
    off = torch.zeros(slots, dtype=torch.uint16)
    w = torch.zeros(slots, dtype=torch.float32)
    run(off.data_ptr(), w.data_ptr())
    return group_start, step_off, rows, off, w


def sliced_layout(
    row_ptr: torch.Tensor, col: torch.Tensor, values: torch.Tensor, in_features: int
) -> Layout | None:
    """The derived layouts of validated CSR weights that this CPU's kernels use, or None where
    they use none (empty layers, int8 without AVX512_VBMI): int8 the sliced layout; fp32 the
    panel layouts (batches) everywhere and the sliced one (batch 1) on AVX-512, None standing
    for it elsewhere."""
    if in_features == 0 or row_ptr.numel() <= 1:
        return None
    if values.dtype == torch.int8:
        return _build(row_ptr, col, values, in_features) if _native.has_vbmi() else None
    avx512 = _native.best_isa() == 2
    layout: Layout = _build(row_ptr, col, values, in_features) if avx512 else (None,) * 4
    for cols in PANEL_COLS:
        layout += _build_panels(row_ptr, col, values, in_features, cols)
    return layout
