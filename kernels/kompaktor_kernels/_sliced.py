"""The sliced int8 layout that batch-1 calls use on AVX512_VBMI CPUs (kernels/csrc/sliced.cpp).

It regroups the CSR weights by 16 output rows × 64 inputs so the kernel needs no gather
(≈4× faster at 90 % sparsity). It is derived from the stored CSR, never saved, and built once
per weight set: cached per values tensor and its version counter, like the CSR validation."""

from __future__ import annotations

import weakref

import torch

from kompaktor_kernels import _native

ROWS, COLS = 16, 64  # csrc/sliced.h: kSliceRows, kSliceCols

Layout = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
_Refs = tuple[weakref.ref[torch.Tensor], ...]
_cache: dict[int, tuple[_Refs, tuple[object, ...], Layout]] = {}


def _build(row_ptr: torch.Tensor, col: torch.Tensor, values: torch.Tensor, in_f: int) -> Layout:
    out_f = row_ptr.numel() - 1
    blocks, chunks = -(-out_f // ROWS), -(-in_f // COLS)
    counts = torch.empty(blocks * chunks, dtype=torch.uint8)
    block_off = torch.empty(blocks + 1, dtype=torch.int32)
    head = (row_ptr.data_ptr(), col.data_ptr(), col.dtype == torch.uint16, values.data_ptr())
    dims = (out_f, in_f, counts.data_ptr(), block_off.data_ptr())
    slices = _native.sliced_i8_layout(*head, *dims, 0, 0)
    idx = torch.zeros(slices * COLS, dtype=torch.uint8)
    w = torch.zeros(slices * COLS, dtype=torch.int8)
    _native.sliced_i8_layout(*head, *dims, idx.data_ptr(), w.data_ptr())
    return counts, block_off, idx, w


def sliced_layout(
    row_ptr: torch.Tensor, col: torch.Tensor, values: torch.Tensor, in_features: int
) -> Layout | None:
    """The layout of validated int8 CSR weights, or None where it is not used: CPUs without
    AVX512_VBMI, empty layers, and inference tensors (no version counter to cache by)."""
    if not _native.has_vbmi() or in_features == 0 or row_ptr.numel() <= 1:
        return None
    if row_ptr.is_inference() or col.is_inference() or values.is_inference():
        return None
    tensors = (values, col, row_ptr)
    key = (
        *(t._version for t in tensors), *(t.data_ptr() for t in tensors), in_features,
    )  # fmt: skip
    hit = _cache.get(id(values))
    if hit is not None and hit[1] == key:
        refs, _, layout = hit
        if all(r() is t for r, t in zip(refs, tensors, strict=True)):
            return layout
    layout = _build(row_ptr, col, values, in_features)
    # The entry (the layout is ~1.3x the CSR's memory) goes when the values tensor does.
    slot = id(values)
    evict = weakref.ref(values, lambda _: _cache.pop(slot, None))
    _cache[slot] = ((evict, weakref.ref(col), weakref.ref(row_ptr)), key, layout)
    return layout
