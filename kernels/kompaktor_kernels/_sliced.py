"""Derived layouts of the CSR weights for the batched and AVX-512 kernels (csrc/sliced.cpp).

Sliced layouts regroup the weights by 16 output rows × one chunk of inputs so the kernels need
no gather: int8 on x86 (64-input chunks, ≈2–4× faster; every batch with AVX512_VBMI, up to batch
8 on other AVX-512 CPUs, up to 4 on AVX2), fp32 on AVX-512 at batch 1 (32-input chunks, ≈1.8×
faster). fp32 layers on every CPU also get two panel layouts for batches > 1 (input panels whose
activations stay in L1, rows sorted by length and run 8 in lockstep, ≈1.5× faster): 512-input
panels for tiles of up to 16 batch rows, 256 for wider ones. Derived from the stored CSR and
never saved. A layer builds each kind the first time a batch runs on it (the native plan names
the ones it lacks), so it holds only what its batch sizes use: a layer served at one batch size
keeps one layout beside the CSR, not three."""

from __future__ import annotations

from dataclasses import dataclass

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
# each panel layout's five, in PANEL_COLS order; None stands for parts not built.
Layout = tuple[torch.Tensor | None, ...]
ARGS = {torch.int8: 4, torch.float32: 4 + 5 * len(PANEL_COLS)}
# Layout kinds as bits (csrc/kernels.h kLayout*): the sliced layout, then the panel layouts in
# PANEL_COLS order.
SLICED, PANELS, WIDE_PANELS = 1, 2, 4
EVERY = SLICED | PANELS | WIDE_PANELS


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


@dataclass(frozen=True)
class Derived:
    """A layer's derived layouts built so far: the kernels' pointer arguments (`parts`) and the
    kinds built, every bit set where the layer never gets any (degenerate shapes, or buffers
    without version counters, whose layouts could not be kept current)."""

    parts: Layout
    built: int

    @classmethod
    def empty(cls, dtype: torch.dtype, final: bool) -> Derived:
        """Nothing built; `final` where nothing ever will be."""
        return cls((None,) * ARGS[dtype], EVERY if final else 0)

    def with_kinds(
        self, kinds: int, row_ptr: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
        in_features: int,
    ) -> Derived:  # fmt: skip
        """These layouts plus `kinds` (bits) built from validated CSR weights."""
        parts = list(self.parts)
        if kinds & SLICED:
            parts[:4] = _build(row_ptr, col, values, in_features)
        for i, cols in enumerate(PANEL_COLS):
            if kinds & (PANELS << i):
                parts[4 + 5 * i : 9 + 5 * i] = _build_panels(
                    row_ptr, col, values, in_features, cols
                )
        return Derived(tuple(parts), self.built | kinds)
